#!/usr/bin/python3
# ctest-labels: integration
"""Crash test of `calpost run`: a burst of posts, the daemon killed with SIGKILL at random
(seeded) moments and restarted until every post is settled. What must hold, seen from the
receiver and from the state database:

- every post reached the receiver, and "posts delivered" (distinct Idempotency-Keys answered
  with a 2xx) is exactly the set of posts: none missing, none invented;
- a post sent more than once was always sent with its own key (the receiver can drop copies),
  and only because a kill found it `sending`: never after the daemon had recorded it `sent`;
- every post is `sent` in the database, with exactly one successful attempt;
- with an outbox channel (idempotent by file name) every post's file exists exactly once.

    /usr/bin/python3 tests/test_daemon_crash.py [TEST_NAME ...]   ($CP_CRASH_SEED, default 7)"""

import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import (Event, key_of, next_second, run_tests, sleep_until,  # noqa: E402
                            wait_for)

SEED = int(os.environ.get("CP_CRASH_SEED", "7"))
N = 60
CHANNELS = ("c1", "c2", "c3")
KILLS = 15
SETTINGS = {"grace": "5m", "retry_base": "200ms", "retry_cap": "1s", "max_attempts": "100"}


def burst(env, t0):
    """N posts due over four seconds from t0, spread over the three channels."""
    events = [Event("post%02d" % i, t0 + i % 4, "crash test post %d" % i, [CHANNELS[i % 3]])
              for i in range(N)]
    env.write_plan(events)
    return {env.pid(e.uid, e.channels[0]): e for e in events}


def kill_loop(env, posts, rng, t0):
    """Starts the daemon and SIGKILLs it at a random moment, KILLS times or until every post is
    sent; then one last run settles what is left. Returns the number of kills."""
    kills = 0
    sleep_until(t0 - 0.2)
    while kills < KILLS and not all(env.state(p) == "sent" for p in posts):
        d = env.spawn()
        if kills % 2:
            d.wait_running()  # a kill while publishing
            sleep_until(time.time() + rng.uniform(0.0, 0.5))
        else:
            sleep_until(time.time() + rng.uniform(0.0, 0.4))  # a kill anywhere, start-up too
        d.kill()
        kills += 1
    last = env.start()
    wait_for(lambda: all(env.state(p) == "sent" for p in posts), 60,
             "every post sent after the kills (states: %s)" % sorted(set(env.states().values())))
    last.kill()  # the stop is test_daemon.py's business
    return kills


def test_webhook_burst_survives_sigkill(ctx):
    rng = random.Random(SEED)
    env = ctx.env(channels={c: {} for c in CHANNELS}, settings=SETTINGS, seed=SEED)
    env.server.script([], default={"status": 200, "json": {}, "delay": 0, "delay_max": 0.05})
    t0 = next_second(1.5)
    posts = burst(env, t0)
    kills = kill_loop(env, posts, rng, t0)

    reqs = env.server.requests()
    keys = {key_of(p) for p in posts}
    # Each post travels under its own key only: a resend never invents a new one.
    for r in reqs:
        assert r["key"] == key_of(r["json"]["id"]), "post %s sent with key %s" % (
            r["json"]["id"], r["key"])
    got = {r["key"] for r in reqs}
    assert got == keys, "missing at the server: %s; unexpected: %s" % (
        sorted(keys - got), sorted(got - keys))
    delivered = {r["key"] for r in reqs if r["status"] is not None and 200 <= r["status"] < 300}
    assert delivered == keys, "posts delivered (2xx) %d of %d; missing %s" % (
        len(delivered), N, sorted(keys - delivered))

    states = env.states()
    assert all(states.get(p) == "sent" for p in posts), states
    attempts = {}
    for a in env.attempts():
        attempts.setdefault(a["post_id"], []).append(a)
    per_key = {}
    for r in reqs:
        per_key.setdefault(r["key"], []).append(r)
    rows = {r["id"]: r for r in env.query("SELECT id, attempts FROM posts")}
    resent = 0
    for p in posts:
        att = attempts.get(p, [])
        ok = [a for a in att if a["outcome"] == "ok"]
        assert len(ok) == 1, "post %s: %d successful attempts recorded: %s" % (p, len(ok), att)
        sent_at = ok[0]["at_ms"] / 1000.0
        sends = per_key[key_of(p)]
        # Never sent again once it was recorded sent (at_ms is in whole milliseconds).
        after = [r["time"] for r in sends if r["time"] >= sent_at + 0.001]
        assert not after, "post %s was sent at %s after it was recorded sent at %.3f" % (
            p, after, sent_at)
        # Every repeat is explained by a kill that found it `sending` (or a failed attempt).
        interrupted = [a for a in att if a["outcome"] == "unknown"]
        failed = [a for a in att if a["outcome"] not in ("ok", "unknown")]
        assert len(sends) - 1 <= len(interrupted) + len(failed), (
            "post %s reached the server %d times, but only %d interruption(s) and %d failure(s) "
            "were recorded: %s" % (p, len(sends), len(interrupted), len(failed), att))
        assert len(sends) <= rows[p]["attempts"], "post %s: %d requests, %d claims" % (
            p, len(sends), rows[p]["attempts"])
        resent += len(interrupted)
    logs = env.logs()
    # The daemon records a resend, then logs it: a SIGKILL between the two loses at most that one
    # log line per kill, never a database row.
    logged = logs.count("resending with the same idempotency key")
    assert logged <= resent <= logged + kills, (
        "the log reports %d resends, the database %d (%d kills)" % (logged, resent, kills))
    # The test proves something only if some kill hit a post in flight.
    assert resent > 0, "no kill of %d found a post `sending`: the crash path was not tested" % (
        kills)
    print("webhook: %d kills, %d requests for %d posts, %d resent after a crash, %d duplicate "
          "deliveries" % (kills, len(reqs), N, resent, len(reqs) - N), flush=True)


def test_outbox_burst_survives_sigkill(ctx):
    rng = random.Random(SEED + 1)
    env = ctx.env(channels={c: {"type": "outbox", "dir": "out-" + c} for c in CHANNELS},
                  settings=SETTINGS)
    t0 = next_second(1.5)
    posts = burst(env, t0)
    kills = kill_loop(env, posts, rng, t0)

    files = {}
    for c in CHANNELS:
        folder = os.path.join(env.dir, "out-" + c)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.startswith("."):
                continue  # a temporary file a kill left behind is not a post
            files.setdefault(name, []).append(c)
    want = {p + ".json" for p in posts}
    assert set(files) == want, "missing files %s; unexpected %s" % (
        sorted(want - set(files)), sorted(set(files) - want))
    for name, where in files.items():
        p = name[:-5]
        assert where == [posts[p].channels[0]], "%s is in %s" % (name, where)
        with open(os.path.join(env.dir, "out-" + where[0], name)) as f:
            body = json.load(f)
        assert body["id"] == p and body["text"] == posts[p].text, body
    states = env.states()
    assert all(states.get(p) == "sent" for p in posts), states
    leftovers = [n for c in CHANNELS for n in os.listdir(os.path.join(env.dir, "out-" + c))
                 if n.startswith(".")]
    print("outbox: %d kills, %d files, %d temporary files left by kills" % (
        kills, len(files), len(leftovers)), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("CP_TEST_JOBS", "2")
    run_tests([v for k, v in sorted(globals().items()) if k.startswith("test_")])
