#!/usr/bin/python3
# ctest-labels: integration
"""`calpost feed`: the real daemon publishes a scripted scenario through webhook channels to
tests/support/testserver.py (posts published, one refused with a 400, one missed, one removed
from the plan after it went out), engagement samples are added with sqlite3, and the iCalendar
feed is parsed with python3-icalendar: one VEVENT per sent post, at its publish time, with its
URL, title and engagement; nothing for posts that did not go out.

    /usr/bin/python3 tests/test_feed.py [TEST_NAME ...]     (CALPOST=build/calpost)
"""

import datetime
import os
import sqlite3
import stat
import subprocess
import sys
import time

import icalendar  # python3-icalendar (Debian)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import (CALPOST, SCALE, Event, calendar_text, next_second,  # noqa: E402
                            run_tests)

UTC = datetime.timezone.utc
LONG = "Ünïcödé wörds " * 12  # 192 characters, 264 bytes: cut to 120 bytes in SUMMARY


def feed(env, *args, check=True):
    p = subprocess.run([CALPOST, "feed", "-c", env.config] + list(args), capture_output=True,
                       timeout=60 * SCALE)
    err = p.stderr.decode(errors="replace")
    if check and p.returncode != 0:
        raise AssertionError("calpost feed %s exited %d: %s" % (" ".join(args), p.returncode,
                                                                 err))
    assert "runtime error" not in err and "Sanitizer" not in err, err
    return p


def events_of(ics_bytes):
    """The VEVENTs by UID; also checks the calendar itself."""
    text = ics_bytes.decode("utf-8")  # valid UTF-8, also where a long line was cut
    assert text.startswith("BEGIN:VCALENDAR\r\n") and text.endswith("END:VCALENDAR\r\n"), text
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n")), "unfolded long line"
    cal = icalendar.Calendar.from_ical(ics_bytes)
    assert str(cal["VERSION"]) == "2.0" and "calpost" in str(cal["PRODID"]), cal
    assert str(cal["X-WR-CALNAME"]) == "calpost: published", cal
    out = {}
    for ev in cal.walk("VEVENT"):
        uid = str(ev["UID"])
        assert uid not in out, "two events with UID %s" % uid
        out[uid] = ev
    return out


def ok_answer(channel, n):
    return {"path": "/" + channel, "status": 200,
            "json": {"id": "%s%d" % (channel, n), "url": "https://social.example/%s/%d" % (
                channel, n)}}


def published_at(env, pid):
    ok = [a["at_ms"] for a in env.attempts(pid) if a["outcome"] == "ok"]
    assert len(ok) == 1, (pid, env.attempts(pid))
    return datetime.datetime.fromtimestamp(ok[0] // 1000, UTC)


def add_sample(env, pid, age, at_ms, counts):
    con = sqlite3.connect(env.db, timeout=10)
    with con:
        con.execute("INSERT INTO engagement(post_id, age_s, sampled_ms, replies, reposts, likes,"
                    " quotes, views) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (pid, age, at_ms) + tuple(counts))
    con.close()


def insert_old_post(env, pid, published_ms):
    con = sqlite3.connect(env.db, timeout=10)
    with con:
        con.execute("INSERT INTO posts(id, calendar, uid, occurrence, channel, due_ms, next_ms,"
                    " state, hash, attempts, remote_url, created_ms, updated_ms) VALUES"
                    " (?, 'plan', 'old', 'single', 'a', ?, ?, 'sent', ?, 1, ?, ?, ?)",
                    (pid, published_ms - 1000, published_ms - 1000, "0" * 64,
                     "https://social.example/a/old", published_ms - 2000, published_ms))
        con.execute("INSERT INTO attempts(post_id, n, at_ms, outcome, http_status, remote_url)"
                    " VALUES (?, 1, ?, 'ok', 200, 'https://social.example/a/old')",
                    (pid, published_ms))
    con.close()


def test_feed_lists_each_published_post_once(ctx):
    env = ctx.env(channels={"a": {}, "b": {}}, settings={"grace": "5m"})
    now = int(time.time())
    T = next_second(2)
    ev = {
        "p1": Event("p1", T, "Spring release, finally; out now\nDetails: https://example.org",
                    ["a"], summary="Release"),
        "p2": Event("p2", T, "", ["b"], summary="Only a title, nothing else"),
        "p3": Event("p3", T + 1, "refused by the server", ["a"]),
        "p4": Event("p4", now - 600, "missed while calpost was down", ["a"]),
        "p5": Event("p5", T + 1, "removed from the plan later", ["b"]),
        "p6": Event("p6", T + 2, LONG + "\nsecond line", ["a"]),
    }
    pid = {k: env.pid(k, e.channels[0]) for k, e in ev.items()}
    env.server.script([ok_answer("a", 1),
                       {"path": "/a", "status": 400, "json": {"error": "no"}},
                       ok_answer("a", 6), ok_answer("b", 2), ok_answer("b", 5)])
    env.write_plan(list(ev.values()))
    d = env.start()
    for k, state in (("p1", "sent"), ("p2", "sent"), ("p3", "failed"), ("p4", "missed"),
                     ("p5", "sent"), ("p6", "sent")):
        env.wait_state(pid[k], state, 20)
    # p5 leaves the plan after it went out: the feed still lists it, without its text.
    env.write_plan([e for k, e in ev.items() if k != "p5"], rename=True)
    d.wait_log("plan: ", count=2)
    d.stop()

    t1 = published_at(env, pid["p1"])
    ms1 = int(t1.timestamp() * 1000)
    add_sample(env, pid["p1"], 3600, ms1 + 3600000, (1, 1, 1, 0, 10))
    add_sample(env, pid["p1"], 86400, ms1 + 86400000, (4, 7, 42, None, 1234))
    insert_old_post(env, "00000000000000aa", (now - 100 * 86400) * 1000)

    out = feed(env)
    got = events_of(out.stdout)
    sent = ["p1", "p2", "p5", "p6"]
    assert sorted(got) == sorted(pid[k] + "@calpost" for k in sent), sorted(got)
    urls = {"p1": "https://social.example/a/1", "p2": "https://social.example/b/2",
            "p5": "https://social.example/b/5", "p6": "https://social.example/a/6"}
    for k in sent:
        e = got[pid[k] + "@calpost"]
        start = e.decoded("DTSTART")
        assert start == published_at(env, pid[k]), (k, start, published_at(env, pid[k]))
        assert start.tzinfo is not None and start.utcoffset() == datetime.timedelta(0), start
        assert str(e["URL"]) == urls[k], (k, e["URL"])
        desc = str(e["DESCRIPTION"])
        assert urls[k] in desc and pid[k] in desc, desc
        ch = ev[k].channels[0]
        assert str(e["SUMMARY"]).startswith("[%s] " % ch), e["SUMMARY"]
        assert e["CATEGORIES"].to_ical().decode() == ch, e["CATEGORIES"]
        assert str(e["TRANSP"]) == "TRANSPARENT", e["TRANSP"]
    summary = {k: str(got[pid[k] + "@calpost"]["SUMMARY"]) for k in sent}
    assert summary["p1"] == "[a] Spring release, finally; out now", summary
    assert summary["p2"] == "[b] Only a title, nothing else", summary
    assert summary["p5"] == "[b] post %s" % pid["p5"], summary
    cut = summary["p6"][len("[a] "):]
    assert cut.endswith("…") and LONG.startswith(cut[:-1]), cut
    assert len(cut[:-1].encode()) <= 120 and len(cut[:-1].encode()) > 110, cut
    d1 = str(got[pid["p1"] + "@calpost"]["DESCRIPTION"])
    assert "Engagement after 1 d" in d1, d1
    assert "4 replies, 7 reposts, 42 likes, 1234 views" in d1, d1  # quotes unknown: left out
    assert "Spring release, finally; out now\nDetails: https://example.org" in d1, d1
    assert "Engagement" not in str(got[pid["p2"] + "@calpost"]["DESCRIPTION"])
    # DTSTAMP: when the event last changed, the sample of 1 d for p1.
    assert got[pid["p1"] + "@calpost"].decoded("DTSTAMP") == t1 + datetime.timedelta(days=1)
    # Ordered by publish time.
    starts = [e.decoded("DTSTART") for e in icalendar.Calendar.from_ical(out.stdout).walk(
        "VEVENT")]
    assert starts == sorted(starts), starts

    # --since: 120 days take in the post published 100 days ago (no longer in any plan).
    old = events_of(feed(env, "--since", "120d").stdout)
    assert len(old) == 5 and "00000000000000aa@calpost" in old, sorted(old)
    assert str(old["00000000000000aa@calpost"]["SUMMARY"]) == "[a] post 00000000000000aa"
    # --since as a date-time: the second in which p6 went out. p6 is due 2 s after p1 and p2
    # and 1 s after p5, but a loaded machine can publish p5 late, in p6's second (CI did: p5
    # 1003 ms after its time). So the posts expected are those the database says went out in
    # that second or later.
    t6 = published_at(env, pid["p6"])
    later = events_of(feed(env, "--since", t6.strftime("%Y-%m-%dT%H:%M:%SZ")).stdout)
    want = sorted(pid[k] + "@calpost" for k in sent if published_at(env, pid[k]) >= t6)
    assert sorted(later) == want and pid["p6"] + "@calpost" in want, (sorted(later), want)
    # The bound is exact to the second, shown on the old post, whose time the test chose: its
    # second is in, the next second is out.
    t_old = datetime.datetime.fromtimestamp(now - 100 * 86400, UTC)
    for at, n in ((t_old, 5), (t_old + datetime.timedelta(seconds=1), 4)):
        got_n = events_of(feed(env, "--since", at.strftime("%Y-%m-%dT%H:%M:%SZ")).stdout)
        assert len(got_n) == n and ("00000000000000aa@calpost" in got_n) == (n == 5), (at, got_n)

    # -o: the same bytes, in a file replaced atomically, readable by a web server.
    path = os.path.join(env.dir, "site", "published.ics")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("old content")
    assert feed(env, "-o", path).stdout == b""
    with open(path, "rb") as f:
        assert f.read() == out.stdout
    assert os.listdir(os.path.dirname(path)) == ["published.ics"], "temporary file left"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o644 & ~umask, oct(mode)
    # The same database gives the same feed.
    assert feed(env).stdout == out.stdout


def test_feed_titles_from_the_cached_copy_of_a_remote_calendar(ctx):
    """A calendar fetched over HTTP: the feed reads its titles from the daemon's last good copy
    in state_dir/calendars, not from the network."""
    env = ctx.env(channels={"a": {}})
    T = next_second(2)
    plan = calendar_text([Event("r1", T, "From the remote calendar\nmore", ["a"])])
    env.server.script([{"path": "/cal.ics", "status": 200, "body": plan, "repeat": True,
                        "headers": {"Content-Type": "text/calendar"}},
                       ok_answer("a", 1)])
    with open(env.config) as f:
        cfg = f.read()
    cfg = cfg.replace("source = plan.ics", "source = %s" % env.server.url("/cal.ics"))
    cfg = cfg.replace("[calpost]\n", "[calpost]\nallow_loopback_http = yes\n")
    with open(env.config, "w") as f:
        f.write(cfg)
    d = env.start()
    env.wait_state(env.pid("r1"), "sent", 20)
    d.stop()
    env.server.script([], default={"status": 500}, reset=True)  # the network is gone
    got = events_of(feed(env).stdout)
    e = got[env.pid("r1") + "@calpost"]
    assert str(e["SUMMARY"]) == "[a] From the remote calendar", e["SUMMARY"]
    assert env.server.requests() == [], "calpost feed went to the network"


def test_feed_without_posts_and_without_database(ctx):
    env = ctx.env(channels={"a": {}})
    p = feed(env, check=False)
    assert p.returncode == 1 and b"no state database at" in p.stderr, p.stderr
    env.write_plan([])
    env.start().stop()
    assert events_of(feed(env).stdout) == {}
    p = feed(env, "--since", "tomorrowish", check=False)
    assert p.returncode == 2 and b"--since" in p.stderr, p.stderr
    p = feed(env, "-o", os.path.join(env.dir, "no", "such", "dir", "f.ics"), check=False)
    assert p.returncode == 1 and b"cannot write" in p.stderr, p.stderr


if __name__ == "__main__":
    run_tests([test_feed_lists_each_published_post_once,
               test_feed_titles_from_the_cached_copy_of_a_remote_calendar,
               test_feed_without_posts_and_without_database])
