#!/usr/bin/python3
# ctest-labels: integration
# ctest-connector: mastodon
"""`calpost run` sampling the engagement of published posts (the real binary, the Mastodon
connector, tests/support/testserver.py as the instance), with `engagement_ages = 2s, 4s`: each
sent post's status is read with GET /api/v1/statuses/<id> once at each age and the counts land in
the engagement table; a 429 on a sample holds back the samples, never a post that is due; a 404
(the post was deleted) is recorded without counts and not asked again; samples more than two
days late are skipped; `engagement = no` turns a channel's samples off.

    /usr/bin/python3 tests/test_daemon_engagement.py         (CALPOST=build/calpost)
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import Event, next_second, run_tests, sleep_until, wait_for  # noqa: E402

STATUSES = "/api/v1/statuses"


def instance_answer():
    return {"path": "/api/v2/instance", "repeat": True,
            "json": {"configuration": {"statuses": {"max_characters": 500}}}}


def status_answer(n):
    return {"path": STATUSES, "json": {"id": str(n), "url": "https://m.example/@e/%d" % n}}


def counts_answer(n, replies, reblogs, favourites, quotes, repeat=False):
    a = {"path": "%s/%d" % (STATUSES, n),
         "json": {"id": str(n), "replies_count": replies, "reblogs_count": reblogs,
                  "favourites_count": favourites, "quotes_count": quotes}}
    if repeat:
        a["repeat"] = True
    return a


def masto_env(ctx, settings=None, channel=None):
    keys = {"type": "mastodon", "instance": "PLACEHOLDER", "token_file": "token"}
    keys.update(channel or {})
    s = {"engagement_ages": "2s, 4s"}
    s.update(settings or {})
    env = ctx.env(channels={"t": keys}, settings=s)
    env.channels["t"]["instance"] = env.server.base
    env.write_config()
    token = os.path.join(env.dir, "token")
    with open(token, "w") as f:
        f.write("test-token\n")
    os.chmod(token, 0o600)
    return env


def posts(env):
    return [r for r in env.server.requests(STATUSES) if r["method"] == "POST"]


def reads(env, n=None):
    """The GET requests for statuses (of status n, if given)."""
    return [r for r in env.server.requests() if r["method"] == "GET" and
            r["path"].startswith(STATUSES + "/") and
            (n is None or r["path"] == "%s/%d" % (STATUSES, n))]


def samples(env):
    return env.query("SELECT * FROM engagement ORDER BY post_id, age_s")


def sent_at(env, pid):
    """When the post was published (its OK attempt), in seconds."""
    rows = env.query("SELECT at_ms FROM attempts WHERE post_id = ? AND outcome = 'ok'", (pid,))
    return rows[0]["at_ms"] / 1000 if rows else None


def test_samples_at_their_ages_land_in_the_table(ctx):
    env = masto_env(ctx)
    env.server.script([instance_answer(), status_answer(101),
                       counts_answer(101, 1, 2, 3, 4), counts_answer(101, 5, 6, 7, 8)])
    due = next_second(2)
    env.write_plan([Event("launch", due, "We launched!", channels=("t",))])
    pid = env.pid("launch", "t")
    d = env.start()
    env.wait_state(pid, "sent", 30)
    sent = sent_at(env, pid)
    wait_for(lambda: len(samples(env)) == 2, 30, "two engagement samples in the database")
    # Nothing more is asked once every age is sampled.
    sleep_until(sent + 6)
    st = env.channel_status("t")
    log = d.log()
    d.stop()
    got = reads(env)
    assert [r["path"] for r in got] == [STATUSES + "/101"] * 2, got
    assert all(r["time"] >= sent + age - 0.05 for r, age in zip(got, (2, 4))), \
        "a sample was read before its age: sent %.3f, reads %s" % (sent, [r["time"] for r in got])
    assert all(h[1] == "Bearer test-token" for r in got for h in r["headers"]
               if h[0].lower() == "authorization"), got
    rows = samples(env)
    assert [(r["post_id"], r["age_s"]) for r in rows] == [(pid, 2), (pid, 4)], rows
    assert [(r["replies"], r["reposts"], r["likes"], r["quotes"], r["views"]) for r in rows] == \
        [(1, 2, 3, 4, None), (5, 6, 7, 8, None)], rows
    assert "engagement after 2s: replies 1, reposts 2, likes 3, quotes 4" in log, log
    assert "engagement after 4s: replies 5, reposts 6, likes 7, quotes 8" in log, log
    assert st.get("engagement_samples") == 2, st
    assert len(posts(env)) == 1


def test_rate_limited_sample_waits_and_the_next_post_does_not(ctx):
    env = masto_env(ctx)
    env.server.script([instance_answer(), status_answer(101), status_answer(102),
                       {"path": STATUSES + "/101", "status": 429, "headers": {"Retry-After": "6"},
                        "json": {"error": "Too many requests"}},
                       counts_answer(101, 1, 1, 1, 1, repeat=True),
                       counts_answer(102, 2, 2, 2, 2, repeat=True)])
    due = next_second(2)
    # The second post is due a second after the first one's 2 s sample got its 429.
    env.write_plan([Event("one", due, "First post", channels=("t",)),
                    Event("two", due + 3, "Second post", channels=("t",))])
    one, two = env.pid("one", "t"), env.pid("two", "t")
    d = env.start()
    wait_for(lambda: len(samples(env)) == 4, 60, "four engagement samples in the database")
    d.stop()
    limited = [r for r in reads(env, 101) if r["status"] == 429]
    assert len(limited) == 1, reads(env)
    posted = posts(env)
    assert len(posted) == 2, posted
    # The post went out at its time, not after the sample's Retry-After.
    assert posted[1]["time"] < limited[0]["time"] + 5, \
        "the second post waited for the sample's Retry-After: 429 at %.3f, post at %.3f" % (
            limited[0]["time"], posted[1]["time"])
    assert env.state(two) == "sent"
    # The sample, and the channel's other samples, waited for the Retry-After.
    later = [r for r in reads(env) if r["time"] > limited[0]["time"]]
    assert len(later) == 4, reads(env)
    assert all(r["time"] >= limited[0]["time"] + 6 - 0.05 for r in later), \
        "a sample was read before the Retry-After: 429 at %.3f, reads at %s" % (
            limited[0]["time"], [r["time"] for r in later])
    rows = samples(env)
    assert sorted((r["post_id"], r["age_s"], r["likes"]) for r in rows) == \
        sorted([(one, 2, 1), (one, 4, 1), (two, 2, 2), (two, 4, 2)]), rows


def test_samples_count_in_the_rate_window_after_the_posts(ctx):
    # rate = 2/10s: a sample two seconds after the first post would use the window's second
    # place, and the second post (due two seconds later) would have to wait for the first post's
    # place: so the sample waits for the posts, then for its own place in the window.
    env = masto_env(ctx, settings={"engagement_ages": "2s"}, channel={"rate": "2/10s"})
    env.server.script([instance_answer(), status_answer(101), status_answer(102),
                       counts_answer(101, 1, 1, 1, 1, repeat=True),
                       counts_answer(102, 2, 2, 2, 2, repeat=True)])
    due = next_second(2)
    env.write_plan([Event("one", due, "First post", channels=("t",)),
                    Event("two", due + 4, "Second post", channels=("t",))])
    two = env.pid("two", "t")
    d = env.start()
    wait_for(lambda: len(samples(env)) == 2 or env.state(two) == "missed", 60,
             "two engagement samples in the database")
    d.stop()
    assert env.state(two) == "sent", "the second post was held back: %s" % env.state(two)
    posted = posts(env)
    got = reads(env)
    assert len(posted) == 2 and len(got) == 2, (posted, got)
    # The second post went first: the sample of the first one did not take its place.
    assert posted[1]["time"] < got[0]["time"], (posted, got)
    assert posted[1]["time"] < posted[0]["time"] + 10 - 1, \
        "the second post waited for the window: posts at %.3f, %.3f" % (posted[0]["time"],
                                                                        posted[1]["time"])
    # Each request waited until the one two places before it was 10 s old.
    times = sorted([r["time"] for r in posted] + [r["time"] for r in got])
    assert all(times[i] >= times[i - 2] + 10 - 0.05 for i in range(2, len(times))), times


def test_deleted_post_is_recorded_without_counts_and_not_asked_again(ctx):
    env = masto_env(ctx)
    env.server.script([instance_answer(), status_answer(101),
                       {"path": STATUSES + "/101", "status": 404, "repeat": True,
                        "json": {"error": "Record not found"}}])
    due = next_second(2)
    env.write_plan([Event("gone", due, "Soon deleted", channels=("t",))])
    pid = env.pid("gone", "t")
    d = env.start()
    env.wait_state(pid, "sent", 30)
    sent = sent_at(env, pid)
    wait_for(lambda: len(samples(env)) == 2, 30, "two empty engagement samples")
    sleep_until(sent + 7)  # long enough for a retry with retry_base = 500ms to show
    log = d.log()
    d.stop()
    assert len(reads(env)) == 2, reads(env)  # one per age, none again
    rows = samples(env)
    assert [r["age_s"] for r in rows] == [2, 4], rows
    assert all(r[k] is None for r in rows for k in ("replies", "reposts", "likes", "quotes",
                                                     "views")), rows
    assert "the post was deleted" in log, log
    assert env.state(pid) == "sent"


def test_samples_two_days_late_are_skipped(ctx):
    env = masto_env(ctx, settings={"engagement_ages": "30s, 1d"})
    env.server.script([instance_answer(), status_answer(101),
                       counts_answer(101, 1, 1, 1, 1, repeat=True)])
    due = next_second(2)
    env.write_plan([Event("old", due, "An old post", channels=("t",))])
    pid = env.pid("old", "t")
    d = env.start()
    env.wait_state(pid, "sent", 30)
    d.stop()
    assert not reads(env)
    # As if calpost had been stopped for three days since.
    con = env._connect()
    with con:
        con.execute("UPDATE posts SET sent_ms = sent_ms - 3 * 86400000 WHERE id = ?", (pid,))
    con.close()
    d = env.start()
    wait_for(lambda: len(samples(env)) == 2, 30, "two skipped samples")
    log = d.wait_log("engagement sample(s) skipped")
    d.stop()
    assert not reads(env), reads(env)
    rows = samples(env)
    assert all(r["replies"] is None and r["likes"] is None for r in rows), rows
    assert "2 engagement sample(s) skipped" in log, log


def test_channel_with_engagement_off_is_not_sampled(ctx):
    env = masto_env(ctx, settings={"engagement_ages": "1s"}, channel={"engagement": "no"})
    env.server.script([instance_answer(), status_answer(101),
                       counts_answer(101, 1, 1, 1, 1, repeat=True)])
    due = next_second(2)
    env.write_plan([Event("quiet", due, "No numbers please", channels=("t",))])
    pid = env.pid("quiet", "t")
    d = env.start()
    env.wait_state(pid, "sent", 30)
    sleep_until(sent_at(env, pid) + 3)
    d.stop()
    assert not reads(env), reads(env)
    assert not samples(env)


def test_bad_engagement_ages_are_refused(ctx):
    env = masto_env(ctx, settings={"engagement_ages": "1h, soon"})
    d = env.spawn()
    rc = d.wait_exit()
    assert rc == 1, rc
    log = d.log()
    assert "calpost.ini:" in log and "engagement_ages: 'soon'" in log, log


if __name__ == "__main__":
    run_tests([test_samples_at_their_ages_land_in_the_table,
               test_rate_limited_sample_waits_and_the_next_post_does_not,
               test_samples_count_in_the_rate_window_after_the_posts,
               test_deleted_post_is_recorded_without_counts_and_not_asked_again,
               test_samples_two_days_late_are_skipped,
               test_channel_with_engagement_off_is_not_sampled,
               test_bad_engagement_ages_are_refused])
