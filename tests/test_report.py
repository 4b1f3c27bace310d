#!/usr/bin/python3
# ctest-labels: integration
"""`calpost report`: the real daemon publishes a scripted scenario through webhook channels to
tests/support/testserver.py (two posts on time on channel a, one answered 400, one missed; on
channel b one retried after a 503 and published 90 s late, one on time), engagement samples are
added to the state database with sqlite3 (as the daemon's sampler would), and every number of
the report, in text, CSV and JSON, is checked against what the scenario says happened.

    /usr/bin/python3 tests/test_report.py [TEST_NAME ...]     (CALPOST=build/calpost)
"""

import csv
import datetime
import io
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
import zoneinfo

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import (CALPOST, SCALE, Event, next_second, run_tests,  # noqa: E402
                            utc_iso)

ZONE = "Europe/Berlin"
TZ = zoneinfo.ZoneInfo(ZONE)
ON_TIME_MS = 60000
METRICS = ["replies", "reposts", "likes", "quotes", "views"]
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
STATES = ["pending", "sending", "sent", "failed", "missed", "cancelled", "skipped", "unknown"]
OUTCOMES = ["ok", "retry", "rate_limited", "auth", "permanent", "unknown"]


def ok_answer(channel, n):
    return {"path": "/" + channel, "status": 200,
            "json": {"id": "%s%d" % (channel, n), "url": "https://social.example/%s/%d" % (
                channel, n)}}


def report(env, *args, check=True):
    p = subprocess.run([CALPOST, "report", "-c", env.config] + list(args), capture_output=True,
                       text=True, timeout=60 * SCALE)
    if check and p.returncode != 0:
        raise AssertionError("calpost report %s exited %d:\n%s%s" % (
            " ".join(args), p.returncode, p.stdout, p.stderr))
    assert "runtime error" not in p.stderr and "Sanitizer" not in p.stderr, p.stderr
    return p


def report_json(env, *args):
    return json.loads(report(env, "--format", "json", *args).stdout)


# --- the scenario --------------------------------------------------------------------------------

class Post:
    """What the scenario says about one post; published_ms comes from the database (it is a
    measured time), everything else is known in advance."""

    def __init__(self, name, channel, due, state, outcomes, url=None):
        self.name, self.channel, self.due_ms, self.state = name, channel, int(due * 1000), state
        self.outcomes, self.url = outcomes, url
        self.id = None
        self.published_ms = None
        self.sample = None  # the latest engagement sample: {"age_s", "sampled_ms", counts...}


def local_9am(days_ago):
    d = datetime.datetime.now(TZ).date() - datetime.timedelta(days=days_ago)
    return datetime.datetime(d.year, d.month, d.day, 9, 0, tzinfo=TZ).timestamp()


def insert_history(env, post, published_delay_ms, counts):
    """A post published long ago (before this daemon ran), with an OK attempt and a sample:
    history the daemon would have written itself."""
    con = sqlite3.connect(env.db, timeout=10)
    with con:
        con.execute("INSERT INTO posts(id, calendar, uid, occurrence, channel, due_ms, next_ms,"
                    " state, hash, attempts, remote_id, remote_url, created_ms, updated_ms)"
                    " VALUES (?, 'plan', ?, 'single', ?, ?, ?, 'sent', ?, 1, 'h', ?, ?, ?)",
                    (post.id, post.name, post.channel, post.due_ms, post.due_ms, "0" * 64,
                     post.url, post.due_ms - 86400000, post.due_ms + published_delay_ms))
        con.execute("INSERT INTO attempts(post_id, n, at_ms, outcome, http_status, remote_url)"
                    " VALUES (?, 1, ?, 'ok', 200, ?)",
                    (post.id, post.due_ms + published_delay_ms, post.url))
    con.close()
    post.published_ms = post.due_ms + published_delay_ms
    add_samples(env, post, [(86400, post.published_ms + 86400000, counts)])


def add_samples(env, post, samples):
    """samples: [(age_s, sampled_ms, (replies, reposts, likes, quotes, views))]; None and -1
    mean the platform does not report that count."""
    con = sqlite3.connect(env.db, timeout=10)
    with con:
        for age, at, c in samples:
            con.execute("INSERT INTO engagement(post_id, age_s, sampled_ms, replies, reposts,"
                        " likes, quotes, views) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (post.id, age, at) + tuple(c))
    con.close()
    age, at, c = max(samples, key=lambda s: (s[1], s[0]))
    post.sample = {"age_s": age, "sampled_ms": at}
    post.sample.update({m: (v if v is not None and v >= 0 else None) for m, v in zip(METRICS, c)})


def scenario(ctx):
    """Runs the daemon through the scenario; returns (env, posts by name)."""
    env = ctx.env(channels={"a": {}, "b": {}},
                  settings={"timezone": ZONE, "grace": "5m", "retry_base": "500ms",
                            "retry_cap": "1s"})
    now = time.time()
    P = {}

    def post(name, channel, due, state, outcomes, n=None):
        url = "https://social.example/%s/%d" % (channel, n) if n else None
        P[name] = Post(name, channel, due, state, outcomes, url)
        P[name].id = env.pid(name, channel)
        return Event(name, due, "%s: first line, with a comma; and more\nsecond line" % name,
                     [channel])

    # Phase 1: what came due while calpost was down. "missed" is past the grace of 5 minutes;
    # "late" is within it, so it goes out at start, 90 s late, and needs a retry (503).
    past = [post("missed", "a", int(now) - 600, "missed", []),
            post("late", "b", int(now) - 90, "sent", ["retry", "ok"], 1)]
    env.write_plan(past)
    env.server.script([{"path": "/b", "status": 503, "json": {"error": "busy"}},
                       ok_answer("b", 1)])
    env.start()
    env.wait_state(P["late"].id, "sent", 20)
    env.wait_state(P["missed"].id, "missed", 20)

    # The daemon keeps running while the report reads: read-only, no lock held.
    j = report_json(env)
    b = [c for c in j["channels"] if c["name"] == "b"][0]
    assert b["published"] == 1 and b["attempts"]["retry"] == 1, b

    # Phase 2: posts due a few seconds from now, on time; one is refused with a 400.
    T = next_second(2)
    env.server.script([ok_answer("a", 1), ok_answer("a", 2),
                       {"path": "/a", "status": 400, "json": {"error": "text is too long"}},
                       ok_answer("b", 2)])
    env.write_plan(past + [post("on1", "a", T, "sent", ["ok"], 1),
                           post("on2", "a", T + 1, "sent", ["ok"], 2),
                           post("refused", "a", T + 2, "failed", ["permanent"]),
                           post("onb", "b", T, "sent", ["ok"], 2)], rename=True)
    for name in ("on1", "on2", "onb"):
        env.wait_state(P[name].id, "sent", 20)
    env.wait_state(P["refused"].id, "failed", 20)
    assert env.daemons[0].stop() == 0

    # What the database says happened agrees with the scenario; publish times are measured.
    for p in P.values():
        att = env.attempts(p.id)
        assert [a["outcome"] for a in att] == p.outcomes, (p.name, att)
        assert env.state(p.id) == p.state, (p.name, env.state(p.id))
        ok = [a["at_ms"] for a in att if a["outcome"] == "ok"]
        p.published_ms = ok[-1] if ok else None
    assert P["late"].published_ms - P["late"].due_ms > ON_TIME_MS, "the late post was on time"
    for name in ("on1", "on2", "onb"):
        assert P[name].published_ms - P[name].due_ms < ON_TIME_MS, name
    return env, P


def add_engagement(env, P):
    h, d = 3600, 86400
    on1 = P["on1"].published_ms
    # Two samples: the later one (1 d) counts.
    add_samples(env, P["on1"], [(h, on1 + h * 1000, (1, 2, 3, 0, 100)),
                                (d, on1 + d * 1000, (2, 4, 10, 1, 500))])
    add_samples(env, P["on2"], [(h, P["on2"].published_ms + h * 1000, (0, 1, 5, None, None))])
    add_samples(env, P["late"], [(h, P["late"].published_ms + h * 1000, (3, 3, 3, 0, -1))])
    # History: three posts at 09:00 on the same weekday 8, 15 and 22 days ago (one slot with
    # enough posts), and one 40 days ago (outside the default 30 days) with a huge score.
    for days, score in ((8, 30), (15, 40), (22, 50)):
        p = Post("hist%d" % days, "a", local_9am(days), "sent", ["ok"])
        p.url = "https://social.example/a/%d" % (90 + days)
        p.id = env.pid(p.name, "a")
        insert_history(env, p, 20000, (score // 2, score // 2, 0, None, 10 * score))
        P[p.name] = p
    p = Post("old", "a", local_9am(40), "sent", ["ok"])
    p.url = "https://social.example/a/old"
    p.id = env.pid("old", "a")
    insert_history(env, p, 5000, (500, 250, 250, 0, 99999))
    P["old"] = p


# --- the expected report, computed from the scenario ---------------------------------------------

def nearest_rank(values, p):
    v = sorted(values)
    return v[max(1, math.ceil(p * len(v) / 100)) - 1]


def score(p):
    return sum(p.sample[m] or 0 for m in ("likes", "reposts", "replies"))


def slot(p):
    t = datetime.datetime.fromtimestamp(p.due_ms / 1000, TZ)
    return WEEKDAYS[t.weekday()], t.hour


def expect_channel(name, posts, lists=True, min_posts=3):
    pub = [p for p in posts if p.state == "sent"]
    late = [max(0, p.published_ms - p.due_ms) for p in pub]
    sampled = [p for p in pub if p.sample]
    c = {"name": name, "posts": len(posts), "published": len(pub),
         "on_time": sum(1 for x in late if x <= ON_TIME_MS)}
    c["on_time_share"] = round(c["on_time"] / len(pub), 4) if pub else None
    c["lateness_ms"] = ({"p50": nearest_rank(late, 50), "p95": nearest_rank(late, 95),
                         "max": max(late)} if late else None)
    c["states"] = {s: sum(1 for p in posts if p.state == s) for s in STATES}
    c["attempts"] = {o: sum(p.outcomes.count(o) for p in posts) for o in OUTCOMES}
    total, per = {}, {}
    for m in METRICS:
        known = [p.sample[m] for p in sampled if p.sample[m] is not None]
        total[m] = sum(known) if known else None
        per[m] = round(sum(known) / len(known), 4) if known else None
    c["engagement"] = {"sampled_posts": len(sampled), "total": total, "per_post": per}
    if not lists:
        return c
    top = sorted(sampled, key=lambda p: (-score(p), p.published_ms, p.id))[:5]
    c["top_posts"] = [{"id": p.id, "due": utc_iso(p.due_ms // 1000),
                       "published": utc_iso(p.published_ms // 1000), "url": p.url,
                       "score": score(p), "age_s": p.sample["age_s"],
                       "sampled": utc_iso(p.sample["sampled_ms"] // 1000),
                       "counts": {m: p.sample[m] for m in METRICS}} for p in top]
    slots = {}
    for p in sampled:
        slots.setdefault(slot(p), []).append(score(p))
    c["slots"] = sorted(
        ({"weekday": k[0], "hour": k[1], "posts": len(v), "score": sum(v),
          "average": round(sum(v) / len(v), 4), "few": len(v) < min_posts}
         for k, v in slots.items()),
        key=lambda s: (s["few"], -s["average"], WEEKDAYS.index(s["weekday"]), s["hour"]))
    c["problems"] = []
    for p in sorted(posts, key=lambda p: (p.due_ms, p.id)):
        if p.state in ("failed", "missed", "unknown"):
            c["problems"].append({
                "id": p.id, "due": utc_iso(p.due_ms // 1000), "state": p.state,
                "attempts": len(p.outcomes),
                "outcome": p.outcomes[-1] if p.outcomes else None,
                "http_status": 400 if p.outcomes[-1:] == ["permanent"] else None,
                "message": None})
    return c


def expect(P, from_ms, to_ms, channels=("a", "b"), min_posts=3):
    inside = [p for p in P.values() if from_ms <= p.due_ms <= to_ms]
    chs = [expect_channel(n, sorted([p for p in inside if p.channel == n],
                                    key=lambda p: (p.due_ms, p.id)), min_posts=min_posts)
           for n in channels]
    total = expect_channel("total", [p for p in inside if p.channel in channels], lists=False)
    return {"calpost_report": 1, "from": utc_iso(from_ms // 1000), "to": utc_iso(to_ms // 1000),
            "timezone": ZONE, "on_time_ms": ON_TIME_MS, "min_slot_posts": min_posts,
            "channels": chs, "total": total}


def compare(got, want, where="report"):
    """Equal, except that a problem's message is only checked to be there when it should."""
    for c in got["channels"]:
        for q in c.get("problems", []):
            if q["outcome"] == "permanent":
                assert "text is too long" in (q["message"] or ""), q
            q["message"] = None
    if got != want:
        g, w = json.dumps(got, indent=1, sort_keys=True), json.dumps(want, indent=1,
                                                                        sort_keys=True)
        import difflib
        diff = "\n".join(difflib.unified_diff(w.splitlines(), g.splitlines(), "expected", "got",
                                              lineterm=""))
        raise AssertionError("%s differs from the scenario:\n%s" % (where, diff))


# --- the tests -----------------------------------------------------------------------------------

def test_report_numbers_match_the_scenario(ctx):
    env, P = scenario(ctx)
    now = int(time.time())
    to_ms = now * 1000
    at = ["--now", utc_iso(now)]

    # Before any sample: engagement is absent, not an error.
    j = report_json(env, *at)
    for c in j["channels"]:
        assert c["engagement"]["sampled_posts"] == 0 and c["top_posts"] == [] == c["slots"], c
        assert c["engagement"]["total"] == {m: None for m in METRICS}, c
    text = report(env, *at).stdout
    assert text.count("engagement     no samples") == 3, text  # a, b and the total

    add_engagement(env, P)
    before = env.dump_db()

    # JSON: every number.
    want = expect(P, to_ms - 30 * 86400000, to_ms)
    compare(report_json(env, *at), want, "report --format json")
    a = want["channels"][0]
    # The scenario itself, spelled out (the expectation above is computed; these are not).
    assert (a["posts"], a["published"], a["on_time"]) == (7, 5, 5), a
    assert a["states"]["missed"] == 1 and a["states"]["failed"] == 1, a
    assert a["attempts"]["permanent"] == 1 and a["attempts"]["ok"] == 5, a
    assert a["top_posts"][0]["id"] == P["hist22"].id and a["top_posts"][0]["score"] == 50, a
    assert not a["slots"][0]["few"] and a["slots"][0]["posts"] == 3, a["slots"]
    assert a["slots"][0]["hour"] == 9 and a["slots"][0]["average"] == 40, a["slots"]
    b = want["channels"][1]
    assert (b["posts"], b["published"], b["on_time"]) == (2, 2, 1), b
    assert b["attempts"]["retry"] == 1 and b["lateness_ms"]["p95"] > ON_TIME_MS, b
    assert b["engagement"]["total"]["views"] is None, b  # -1: not reported by the platform
    assert want["total"]["published"] == 7 and want["total"]["on_time"] == 6, want["total"]

    # --since: a longer window takes in the post of 40 days ago (and its score).
    want45 = expect(P, to_ms - 45 * 86400000, to_ms)
    got45 = report_json(env, "--since", "45d", *at)
    compare(got45, want45, "report --since 45d")
    assert got45["channels"][0]["top_posts"][0]["id"] == P["old"].id
    # --since as a date-time: after "missed" was due, before "late" was: a has no missed post.
    since = P["missed"].due_ms // 1000 + 60
    got = report_json(env, "--since", utc_iso(since), *at)
    compare(got, expect(P, since * 1000, to_ms), "report --since DATETIME")
    assert got["channels"][0]["states"]["missed"] == 0
    # --now before the on-time posts were due: only what was due by then.
    early = P["on1"].due_ms // 1000 - 1
    compare(report_json(env, "--now", utc_iso(early)),
            expect(P, (early - 30 * 86400) * 1000, early * 1000), "report --now")
    # --channel: one channel, and the total is that channel.
    got = report_json(env, "--channel", "b", *at)
    compare(got, expect(P, to_ms - 30 * 86400000, to_ms, channels=("b",)), "--channel b")
    # --min-posts: the slot of three posts is "few" when four are needed.
    compare(report_json(env, "--min-posts", "4", *at),
            expect(P, to_ms - 30 * 86400000, to_ms, min_posts=4), "--min-posts 4")

    # CSV, channels table: the same numbers, as a spreadsheet reads them.
    rows = list(csv.DictReader(io.StringIO(report(env, "--format", "csv", *at).stdout)))
    assert [r["channel"] for r in rows] == ["a", "b", "total"], rows
    for r, c in zip(rows, want["channels"] + [want["total"]]):
        num = lambda k: int(r[k]) if r[k] != "" else None  # noqa: E731
        assert (num("posts"), num("published"), num("on_time")) == (
            c["posts"], c["published"], c["on_time"]), (r, c)
        assert abs(float(r["on_time_share"]) - c["on_time_share"]) < 1e-3, r
        for k in ("p50", "p95", "max"):
            assert num("lateness_%s_ms" % k) == c["lateness_ms"][k], (k, r)
        for o in OUTCOMES:
            assert num("attempts_" + o) == c["attempts"][o], (o, r)
        for s in STATES:
            assert num(s) == c["states"][s], (s, r)
        assert num("sampled_posts") == c["engagement"]["sampled_posts"], r
        for m in METRICS:
            assert num(m) == c["engagement"]["total"][m], (m, r)
            per = c["engagement"]["per_post"][m]
            assert (r[m + "_per_post"] == "") == (per is None), (m, r)
            if per is not None:
                assert abs(float(r[m + "_per_post"]) - per) < 1e-3, (m, r)
    assert rows[0]["best_slot"] == "%s 09:00" % a["slots"][0]["weekday"], rows[0]
    assert float(rows[0]["best_slot_average"]) == 40, rows[0]
    assert rows[1]["best_slot"] == "", rows[1]  # b has one sampled post: too few

    # CSV, posts table: one row per post due in the window.
    rows = list(csv.DictReader(io.StringIO(
        report(env, "--format", "csv", "--table", "posts", *at).stdout)))
    inside = [p for p in P.values() if p.due_ms >= to_ms - 30 * 86400000]
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in inside), rows
    for r in rows:
        p = [q for q in inside if q.id == r["id"]][0]
        assert r["channel"] == p.channel and r["state"] == p.state, r
        assert r["due"] == utc_iso(p.due_ms // 1000), r
        assert (r["weekday"], int(r["hour"])) == slot(p), r
        assert int(r["attempts"]) == len(p.outcomes), r
        if p.state == "sent":
            assert int(r["lateness_ms"]) == max(0, p.published_ms - p.due_ms), r
            assert r["on_time"] == ("true" if p.published_ms - p.due_ms <= ON_TIME_MS
                                    else "false"), r
            assert r["url"] == p.url, r
        else:
            assert r["published"] == r["lateness_ms"] == r["url"] == "", r
        if p.sample:
            assert int(r["score"]) == score(p) and int(r["age_s"]) == p.sample["age_s"], r
            for m in METRICS:
                assert r[m] == ("" if p.sample[m] is None else str(p.sample[m])), (m, r)
        else:
            assert r["score"] == r["sampled"] == "", r

    # CSV, slots table.
    rows = list(csv.DictReader(io.StringIO(
        report(env, "--format", "csv", "--table", "slots", *at).stdout)))
    got = [(r["channel"], r["weekday"], int(r["hour"]), int(r["posts"]), int(r["score"]),
            r["few"]) for r in rows]
    assert got == [(c["name"], s["weekday"], s["hour"], s["posts"], s["score"],
                    "true" if s["few"] else "false")
                   for c in want["channels"] for s in c["slots"]], got

    # Text: the numbers a person reads.
    text = report(env, *at).stdout
    blocks = re.split(r"\n\n", text)
    assert blocks[0].startswith("calpost report: posts due ") and ZONE in blocks[0], blocks[0]
    for block, c in zip(blocks[1:], want["channels"] + [want["total"]]):
        head = "channel %s\n" % c["name"] if c["name"] != "total" else "all channels\n"
        assert block.startswith(head), block
        assert "published      %d of %d posts due, %d on time (%.0f%%)" % (
            c["published"], c["posts"], c["on_time"], 100 * c["on_time_share"]) in block, block
        at_ = c["attempts"]
        assert ("failures       attempts: %d retry, %d rate_limited, %d auth, %d permanent, "
                "%d unknown" % (at_["retry"], at_["rate_limited"], at_["auth"],
                                at_["permanent"], at_["unknown"])) in block, block
        st = c["states"]
        assert "posts: %d failed, %d missed, %d unknown" % (
            st["failed"], st["missed"], st["unknown"]) in block, block
        e = c["engagement"]
        line = "engagement     %d post%s sampled: %s" % (
            e["sampled_posts"], "" if e["sampled_posts"] == 1 else "s", ", ".join(
                "%s %s" % ("-" if e["total"][m] is None else e["total"][m], m) for m in METRICS))
        assert line in block, (line, block)
        assert re.search(r"lateness +p50 \S+ \S+, p95 \S+", block), block
    a_text = blocks[1]
    assert "1. score 50" in a_text and P["hist22"].id in a_text, a_text
    assert re.search(r"%s 09:00  average 40\.0 over 3 posts\n" % a["slots"][0]["weekday"],
                     a_text), a_text
    assert re.search(r"%s +missed\n" % P["missed"].id, a_text), a_text
    assert re.search(r"%s +failed after 1 attempt: permanent: HTTP 400: text is too long" %
                     P["refused"].id, a_text), a_text
    assert "lateness       p50" in blocks[2] and " min " in blocks[2].split("p95")[1], blocks[2]

    # Reading changed nothing.
    assert env.dump_db() == before, "calpost report changed the state database"


def test_report_errors_say_what_to_do(ctx):
    env = ctx.env(channels={"a": {}})
    p = report(env, check=False)
    assert p.returncode == 1 and "no state database at" in p.stderr, (p.returncode, p.stderr)
    assert os.path.join("state", "calpost.db") in p.stderr, p.stderr
    assert not os.path.exists(env.db), "report created the state database"
    # A daemon run on an empty plan makes an empty database: every channel with zeros.
    env.write_plan([])
    env.start().stop()
    j = report_json(env)
    assert [c["name"] for c in j["channels"]] == ["a"], j
    assert j["channels"][0]["posts"] == 0 and j["channels"][0]["lateness_ms"] is None, j
    assert j["channels"][0]["on_time_share"] is None, j
    for args, needle in ((["--channel", "nosuch"], "no channel 'nosuch'"),
                         (["--since", "yesterday-ish"], "--since"),
                         (["--format", "xml"], "--format"),
                         (["--table", "posts"], "--table goes with --format csv"),
                         (["--now", "soon"], "--now"),
                         (["--since", "2999-01-01"], "after the end")):
        p = report(env, *args, check=False)
        assert p.returncode == 2 and needle in p.stderr, (args, p.returncode, p.stderr)


def test_report_reads_a_database_without_engagement_table(ctx):
    """A state database from before engagement existed (schema 2) still reports."""
    env = ctx.env(channels={"a": {}})
    env.write_plan([Event("x", next_second(1), "hello")])
    d = env.start()
    env.wait_state(env.pid("x"), "sent", 20)
    d.stop()
    con = sqlite3.connect(env.db)
    con.execute("DROP TABLE engagement")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    j = report_json(env)
    c = j["channels"][0]
    assert c["published"] == 1 and c["engagement"]["sampled_posts"] == 0, c


if __name__ == "__main__":
    run_tests([test_report_numbers_match_the_scenario, test_report_errors_say_what_to_do,
               test_report_reads_a_database_without_engagement_table])
