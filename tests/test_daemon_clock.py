#!/usr/bin/python3
# ctest-labels: integration
"""The system clock jumping while `calpost run` waits: the real daemon under libfaketime (Debian
package `faketime`, /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1), whose wall clock the
test moves at run time through FAKETIME_TIMESTAMP_FILE (re-read on every call:
FAKETIME_NO_CACHE=1), publishing through webhook channels to tests/support/faultserver.py.

Two kinds of jump:
- an NTP step (DONT_FAKE_MONOTONIC=1): CLOCK_REALTIME jumps, CLOCK_MONOTONIC does not, which is
  what a real step or an admin's `date -s` does;
- libfaketime's default, where CLOCK_MONOTONIC jumps with it (a suspend/resume looks alike).

What must hold, as a user sees it: after a jump forward past several posts' due times each is
published once (promptly, since it is overdue) or marked `missed` beyond its grace, and never
twice; after a jump back no sent post is published again and no pending post is skipped or
published before its (wall-clock) due time; `rate = N/T` holds in real time across a jump; a
daily post in Europe/Berlin is published at its local time, once, while the clock crosses the
March and October changes.

    /usr/bin/python3 tests/test_daemon_clock.py [TEST_NAME ...]     (CALPOST=build/calpost)"""

import calendar
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import (SCALE, Event, header, key_of, next_second, post_id,  # noqa: E402
                            run_tests, sleep_until, wait_for)
from faultserver import fault_env  # noqa: E402

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
FINAL = ("sent", "failed", "missed", "unknown", "skipped", "cancelled")
# How soon a post that a jump made overdue must go out (real seconds): one timer, one commit,
# one loopback request; generous for the sanitizer build, far below the waits a missed jump
# causes in these tests (40 s and more).
PROMPT = 6.0 * SCALE


def notify_clock_set():
    """A real NTP step both changes the time and tells the kernel's clock-set listeners
    (timerfd TFD_TIMER_CANCEL_ON_SET, which the daemon watches). libfaketime only does the first,
    for the daemon alone; setting the system clock to its own current value (a step of a few
    microseconds, harmless to everything else) does the second. False if not permitted."""
    try:
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))
        return True
    except PermissionError:
        return False


class FakeClock:
    """The daemon's wall clock: real time + offset, the offset in a file libfaketime reads on
    every clock call. set() replaces the file atomically (a half-written file would read as no
    offset: a spurious jump)."""

    def __init__(self, env, fake_monotonic=False):
        if not os.path.exists(LIBFAKETIME):
            raise AssertionError("%s is missing: apt-get install faketime" % LIBFAKETIME)
        self.path = os.path.join(env.dir, "faketime.rc")
        self.offset = 0.0
        self.set(0.0)
        env.daemon_env.update({"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": self.path,
                               "FAKETIME_NO_CACHE": "1", "NO_FAKE_STAT": "1"})
        if not fake_monotonic:
            env.daemon_env["DONT_FAKE_MONOTONIC"] = "1"
        # The sanitizer build wants its runtime first; libfaketime only wraps clock calls.
        asan = os.environ.get("ASAN_OPTIONS", "")
        env.daemon_env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + \
            "verify_asan_link_order=0"

    def set(self, offset):
        self.offset = float(offset)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%+.3f\n" % self.offset)
        os.replace(tmp, self.path)
        self.kernel_notified = notify_clock_set()


    def jump(self, delta):
        self.set(self.offset + delta)

    def set_now(self, fake_unix):
        """Makes the daemon's clock read fake_unix now."""
        self.set(fake_unix - time.time())

    def now(self):
        return time.time() + self.offset


def clock_env(ctx, channels, settings=None, fake_monotonic=False):
    s = {"grace": "5m", "retry_base": "200ms", "retry_cap": "1s"}
    s.update(settings or {})
    env = fault_env(ctx, channels=channels, settings=s)
    return env, FakeClock(env, fake_monotonic)


def stamp(r):
    """The daemon's wall clock (whole seconds) when it sent request r."""
    return int(header(r, "X-Calpost-Timestamp"))


def per_key(env):
    out = {}
    for r in env.server.requests():
        out.setdefault(r["key"], []).append(r)
    return out


def settle_quietly(seconds=1.0):
    """Lets time pass to show that nothing more arrives: absence cannot be polled."""
    sleep_until(time.time() + seconds)


def utc(s):
    """'2027-03-28T01:00:05Z' to Unix seconds."""
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


# --- 1. jump forward past several due times ----------------------------------------------------

def jump_forward(ctx, fake_monotonic):
    env, clock = clock_env(ctx, {"a": {}, "b": {"grace": "10s"}}, fake_monotonic=fake_monotonic)
    S = next_second(2)
    events = [Event("a1", S + 60, "a one", ["a"]), Event("a2", S + 61, "a two", ["a"]),
              Event("a3", S + 62, "a three", ["a"]), Event("b1", S + 40, "b one", ["b"]),
              Event("b2", S + 41, "b two", ["b"]), Event("c1", S + 100, "after the jump", ["a"])]
    env.write_plan(events)
    pid = {e.uid: env.pid(e.uid, e.channels[0]) for e in events}
    d = env.start()
    sleep_until(S + 1)
    clock.jump(90)  # now S + 91 on the daemon's clock: a1-a3 overdue by ~30 s, b1/b2 by ~50 s
    t_jump = time.time()
    due_c1_real = S + 100 - clock.offset
    wait_for(lambda: all(env.state(p) in FINAL for p in pid.values()), 90,
             "every post settled after the jump (%s)" % env.states())
    settle_quietly(1.0)

    # Never twice, never a missed one published; within the grace published, beyond it missed.
    got = per_key(env)
    dup = {k: len(v) for k, v in got.items() if len(v) != 1}
    assert not dup, "posts delivered more than once after a jump forward: %s" % dup
    for u in ("a1", "a2", "a3", "c1"):
        assert env.state(pid[u]) == "sent", "%s is %s" % (u, env.states())
    for u in ("b1", "b2"):
        assert env.state(pid[u]) == "missed", "%s is %s (grace 10 s)" % (u, env.state(pid[u]))
        assert key_of(pid[u]) not in got, "%s was published past its grace" % u
    c1 = got[key_of(pid["c1"])][0]
    assert stamp(c1) >= S + 100, "c1 went out at %d on the daemon's clock, before its due %d" % (
        stamp(c1), S + 100)
    assert d.proc.poll() is None
    # The daemon's timers are monotonic delays; it watches the kernel's clock-set event (timerfd
    # TFD_TIMER_CANCEL_ON_SET) and re-arms them from the new wall time at once, so posts made
    # overdue by the step go out promptly instead of waiting out the old delay.
    if not clock.kernel_notified:
        print("NOTE: setting the system clock is not permitted here, so the kernel's clock-set "
              "event cannot be raised: promptness after the step is not checked")
        return
    late = {u: round(got[key_of(pid[u])][0]["time"] - t_jump, 1) for u in ("a1", "a2", "a3")}
    assert max(late.values()) <= PROMPT, (
        "posts made overdue by a clock step went out %s s after the step (expected within "
        "%.0f s)" % (late, PROMPT))
    assert c1["time"] - due_c1_real <= PROMPT, (
        "c1 went out %.1f s after its due time" % (c1["time"] - due_c1_real))


def test_ntp_step_forward_publishes_overdue_once_and_misses_past_grace(ctx):
    jump_forward(ctx, fake_monotonic=False)


def test_faked_monotonic_jump_forward_publishes_overdue_once(ctx):
    jump_forward(ctx, fake_monotonic=True)


# --- 2. jump back --------------------------------------------------------------------------------

def jump_back(ctx, fake_monotonic):
    env, clock = clock_env(ctx, {"a": {}, "r": {"rate": "1/4s"}}, fake_monotonic=fake_monotonic)
    S = next_second(2)
    events = [Event("p1", S + 1, "sent before the step", ["a"]),
              Event("p2", S + 8, "due after the step", ["a"]),
              Event("r1", S + 1, "rate one", ["r"]), Event("r2", S + 2, "rate two", ["r"])]
    env.write_plan(events)
    pid = {e.uid: env.pid(e.uid, e.channels[0]) for e in events}
    d = env.start()
    env.wait_state(pid["p1"], "sent", 15)
    env.wait_state(pid["r1"], "sent", 15)
    sleep_until(S + 3)
    clock.jump(-15)  # the daemon's clock reads S - 12: p2 is 20 s ahead again
    t_jump = time.time()
    wait_for(lambda: all(env.state(p) in FINAL for p in pid.values()), 60,
             "every post settled after the jump back (%s)" % env.states())
    settle_quietly(2.0)
    got = per_key(env)
    dup = {k: len(v) for k, v in got.items() if len(v) != 1}
    assert not dup, "posts delivered again after a jump back: %s" % dup
    assert set(env.states().values()) == {"sent"}, env.states()
    for u in ("p2", "r2"):
        r = got[key_of(pid[u])][0]
        due = [e.due for e in events if e.uid == u][0]
        assert stamp(r) >= due, "%s went out at %d on the daemon's clock, before its due %d" % (
            u, stamp(r), due)
    # p2 is due at S + 8 on the daemon's clock, 15 s later in real time than before the step.
    p2 = got[key_of(pid["p2"])][0]
    assert p2["time"] >= S + 8 + 15 - 1.0, "p2 went out %.1f s after the step" % (
        p2["time"] - t_jump)
    assert p2["time"] - (S + 8 + 15) <= PROMPT, "p2 came %.1f s after its due time" % (
        p2["time"] - (S + 8 + 15))
    assert d.proc.poll() is None


def test_ntp_step_back_neither_republishes_nor_skips(ctx):
    jump_back(ctx, fake_monotonic=False)


def test_faked_monotonic_jump_back_neither_republishes_nor_skips(ctx):
    jump_back(ctx, fake_monotonic=True)


def test_step_back_while_a_claimed_post_waits_does_not_publish_early(ctx):
    """claim_ahead = 5s: the post is claimed (`sending`) 5 s before its due time and waits on a
    timer; a step back of 20 s in that window must not let it out 20 s early."""
    env, clock = clock_env(ctx, {"a": {}}, settings={"claim_ahead": "5s"})
    S = next_second(2)
    env.write_plan([Event("q1", S + 8, "claimed before the step", ["a"])])
    pid = env.pid("q1")
    d = env.start()
    env.wait_state(pid, "sending", 15)  # claimed at S + 3
    sleep_until(S + 5)
    assert env.state(pid) == "sending" and env.server.requests() == [], env.states()
    clock.jump(-20)
    wait_for(lambda: env.state(pid) in FINAL, 60, "q1 settled")
    settle_quietly(0.5)
    reqs = env.server.requests()
    assert len(reqs) == 1, "q1 sent %d times" % len(reqs)
    # The claimed post's fire timer is a monotonic delay; when it fires the daemon checks the
    # wall clock and waits for the rest, so it does not leave 20 s before its due time.
    assert stamp(reqs[0]) >= S + 8, (
        "q1 went out at %d on the daemon's clock, %d s before its due time %d" % (
            stamp(reqs[0]), S + 8 - stamp(reqs[0]), S + 8))
    assert d.proc.poll() is None


# --- 3. the rate limit across a jump ------------------------------------------------------------

def test_rate_limit_holds_in_real_time_across_a_step_forward(ctx):
    """rate = 2/10s as the server counts it (real time): a step forward of the daemon's wall
    clock must not shorten the window. Channel t's post wakes the scheduler after the step."""
    env, clock = clock_env(ctx, {"r": {"rate": "2/10s"}, "t": {}})
    S = next_second(2)
    events = [Event("r%d" % i, S + 1, "rate %d" % i, ["r"]) for i in range(4)]
    events.append(Event("t1", S + 4, "wakes the loop", ["t"]))
    env.write_plan(events)
    pids = [env.pid(e.uid, e.channels[0]) for e in events]
    d = env.start()
    wait_for(lambda: len(env.server.requests("/r")) >= 2, 15, "the first two posts on r")
    sleep_until(S + 2)
    clock.jump(30)
    wait_for(lambda: all(env.state(p) == "sent" for p in pids), 60, "all posts sent")
    settle_quietly(0.5)
    times = sorted(r["time"] for r in env.server.requests("/r"))
    assert len(times) == 4, times
    assert d.proc.poll() is None
    # The window is kept in monotonic time, so a step forward of the wall clock does not age it.
    for i in range(len(times) - 2):
        span = times[i + 2] - times[i]
        assert span >= 10.0 - 0.05, (
            "3 requests within %.2f s of real time on a channel with rate = 2/10s "
            "after a %+d s clock step: %s" % (span, 30, [round(t - S, 2) for t in times]))


# --- 4. daylight saving time in the plan's zone ------------------------------------------------

def berlin_daily(uid, start_local, text, channel="a"):
    """A daily event in Europe/Berlin (IANA name: the system's tzdata)."""
    return ["BEGIN:VEVENT", "UID:%s" % uid, "DTSTAMP:20260101T000000Z",
            "DTSTART;TZID=Europe/Berlin:%s" % start_local, "RRULE:FREQ=DAILY",
            "SUMMARY:%s" % text, "DESCRIPTION:%s" % text, "X-CALPOST-CHANNELS:%s" % channel,
            "END:VEVENT"]


def write_calendar(env, events):
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calpost//clock test//EN"]
    for e in events:
        lines += e
    lines.append("END:VCALENDAR")
    env.write_plan_text("\r\n".join(lines) + "\r\n")


def occurrence_pid(uid, due_utc):
    return post_id("plan", uid, "a", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(due_utc)))


def due_rows(env, uid):
    return {r["occurrence"]: (r["due_ms"] // 1000, r["state"]) for r in env.query(
        "SELECT occurrence, due_ms, state FROM posts WHERE uid = ?", (uid,))}


def test_dst_spring_forward_in_berlin(ctx):
    """28 March 2027, 02:00 CET becomes 03:00 CEST (01:00 UTC). A daily post at 03:00:05 local
    is due at 01:00:05 UTC that day (02:00:05 UTC the day before), and one at 02:30, a time that
    does not exist that night, at 01:30 UTC (README: the offset before the gap). The daemon's
    clock starts before the change and crosses it while the daemon waits."""
    env, clock = clock_env(ctx, {"a": {}}, settings={"timezone": "Europe/Berlin",
                                                     "grace": "5s"})
    write_calendar(env, [berlin_daily("after-change", "20270320T030005", "daily at 03:00:05"),
                         berlin_daily("in-gap", "20270320T023000", "daily at 02:30")])
    first, gap = utc("2027-03-28T01:00:05Z"), utc("2027-03-28T01:30:00Z")
    clock.set_now(utc("2027-03-28T00:59:52Z"))  # 01:59:52 CET
    d = env.start()
    rows = due_rows(env, "after-change")
    assert rows.get("20270328T010005Z") == (first, "pending"), rows
    assert rows.get("20270329T010005Z", (None,))[0] == utc("2027-03-29T01:00:05Z"), rows
    assert due_rows(env, "in-gap").get("20270328T013000Z") == (gap, "pending"), due_rows(
        env, "in-gap")
    reqs = env.wait_requests(1, 30)
    env.wait_state(occurrence_pid("after-change", first), "sent", 15)
    settle_quietly(1.0)
    reqs = env.server.requests()
    assert len(reqs) == 1, "published %s" % [(r["json"]["uid"], r["json"]["due_unix"]) for r in
                                             reqs]
    r = reqs[0]
    assert (r["json"]["uid"], r["json"]["due_unix"]) == ("after-change", first), r["json"]
    assert first <= stamp(r) <= first + PROMPT, "published at %s on the daemon's clock" % stamp(r)
    d.stop()

    # Half an hour later (a restart after the change): the 02:30 post goes at 03:30 CEST.
    clock.set_now(gap - 6)
    d2 = env.start()
    env.wait_state(occurrence_pid("in-gap", gap), "sent", 30)
    settle_quietly(1.0)
    reqs = env.server.requests()
    assert len(reqs) == 2, "published %s" % [(r["json"]["uid"], r["json"]["due_unix"]) for r in
                                             reqs]
    r = reqs[1]
    assert (r["json"]["uid"], r["json"]["due_unix"]) == ("in-gap", gap), r["json"]
    assert gap <= stamp(r) <= gap + PROMPT, "published at %s on the daemon's clock" % stamp(r)
    assert d2.proc.poll() is None


def test_dst_fall_back_in_berlin_publishes_the_repeated_hour_once(ctx):
    """31 October 2027, 03:00 CEST becomes 02:00 CET (01:00 UTC): 02:00:05 local happens twice.
    The daily post at 02:00:05 goes at the first (00:00:05 UTC) only; the clock is then stepped
    to just before the change and crosses it, past the second 02:00:05 (01:00:05 UTC)."""
    env, clock = clock_env(ctx, {"a": {}}, settings={"timezone": "Europe/Berlin",
                                                     "grace": "5s"})
    write_calendar(env, [berlin_daily("repeat", "20271025T020005", "daily at 02:00:05"),
                         berlin_daily("nine", "20271025T090000", "daily at 09:00")])
    first, repeat = utc("2027-10-31T00:00:05Z"), utc("2027-10-31T01:00:05Z")
    # 01:59:57 CEST in the normal build; earlier in a slow one, so that the post is still pending
    # when the daemon has started.
    clock.set_now(first - 8 * SCALE)
    d = env.start()
    rows = due_rows(env, "repeat")
    assert rows.get("20271031T000005Z") == (first, "pending"), rows
    assert rows.get("20271101T010005Z", (None,))[0] == utc("2027-11-01T01:00:05Z"), rows
    nine = due_rows(env, "nine")
    assert nine.get("20271031T080000Z", (None,))[0] == utc("2027-10-31T08:00:00Z"), nine
    assert nine.get("20271101T080000Z", (None,))[0] == utc("2027-11-01T08:00:00Z"), nine
    env.wait_state(occurrence_pid("repeat", first), "sent", 30)
    r = env.server.requests()[0]
    assert first <= stamp(r) <= first + PROMPT, "published at %s on the daemon's clock" % stamp(r)
    clock.set_now(repeat - 8)  # 02:59:57 CEST, an NTP step of an hour
    sleep_until(time.time() + 8 + 3)  # the daemon's clock passes 02:00:05 CET
    assert clock.now() > repeat + 2
    reqs = env.server.requests()
    assert len(reqs) == 1, "the repeated hour published again: %s" % [
        (x["json"]["uid"], x["json"]["due_unix"], stamp(x)) for x in reqs]
    assert d.proc.poll() is None


if __name__ == "__main__":
    os.environ.setdefault("CP_TEST_JOBS", "4")
    run_tests([v for k, v in sorted(globals().items()) if k.startswith("test_")])
