#!/usr/bin/python3
# ctest-labels: integration
# ctest-connector: mastodon
"""`calpost run` publishing an over-long post as a Mastodon thread (the real binary, the Mastodon
connector, tests/support/testserver.py as the instance): the parts go out in order as a reply
chain; a part that fails is retried with its own Idempotency-Key while the parts before it are
not posted again; after the daemon is killed mid-thread, the restarted daemon continues the thread
from the progress kept in the state database instead of starting it over.

    /usr/bin/python3 tests/test_daemon_threads.py            (CALPOST=build/calpost)
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import SCALE, Event, run_tests, wait_for  # noqa: E402

STATUSES = "/api/v1/statuses"
TEXT = ("First paragraph of the release notes, long enough to need a part of its own. " * 2 +
        "\n\nSecond part: what changed for editors, in a few plain sentences. " * 2 +
        "\n\nThird part: thanks to everyone who tested the release candidates!")


def instance_answer():
    return {"path": "/api/v2/instance", "repeat": True,
            "json": {"configuration": {"statuses": {"max_characters": 200,
                                                    "characters_reserved_per_url": 23}}}}


def status_answer(n, delay=None):
    a = {"path": STATUSES, "json": {"id": str(100 + n), "url": "https://m.example/@e/%d" % (100 + n)}}
    if delay:
        a["delay"] = delay
    return a


def thread_env(ctx, extra_settings=None):
    env = ctx.env(channels={"t": {"type": "mastodon", "instance": "PLACEHOLDER",
                                  "token_file": "token"}},
                  settings=extra_settings)
    env.channels["t"]["instance"] = env.server.base
    env.write_config()
    token = os.path.join(env.dir, "token")
    with open(token, "w") as f:
        f.write("test-token\n")
    os.chmod(token, 0o600)
    return env


def statuses(env):
    return [r for r in env.server.requests(STATUSES) if r["method"] == "POST"]


def post_state(env, pid):
    rows = env.query("SELECT state, progress FROM posts WHERE id = ?", (pid,))
    return rows[0] if rows else {}


def plan_thread(env, due):
    text = TEXT + "\n\n[calpost]\nthread = yes\nnumbered = yes"
    env.write_plan([Event("notes", due, text, channels=("t",), summary="Release notes")])
    return env.pid("notes", "t")


def test_thread_parts_in_order_and_a_failed_part_retried_alone(ctx):
    env = thread_env(ctx)
    env.server.script([instance_answer(), status_answer(1),
                       {"path": STATUSES, "status": 503, "body": "busy"},
                       status_answer(2), status_answer(3)])
    pid = plan_thread(env, time.time() + 2 * SCALE)
    d = env.start()
    wait_for(lambda: post_state(env, pid).get("state") == "sent", 30 * SCALE, "the thread sent")
    d.stop()
    reqs = statuses(env)
    keys = [r["key"] for r in reqs]
    assert len(reqs) == 4, [r["json"] for r in reqs]
    # Part 2 failed once and was sent again with the same key; parts 1 and 3 went once.
    assert keys[1] == keys[2] and len(set(keys)) == 3, keys
    texts = [r["json"]["status"] for r in reqs]
    assert texts[0].endswith(" 1/3") and texts[2].endswith(" 2/3") and texts[3].endswith(" 3/3"), \
        texts
    assert all(len(t) <= 200 for t in texts), texts
    assert "in_reply_to_id" not in reqs[0]["json"], reqs[0]["json"]
    assert reqs[2]["json"]["in_reply_to_id"] == "101", reqs[2]["json"]
    assert reqs[3]["json"]["in_reply_to_id"] == "102", reqs[3]["json"]
    row = env.query("SELECT remote_id, remote_url FROM posts WHERE id = ?", (pid,))[0]
    assert row["remote_id"] == "101", row  # the thread is known by its first part


def test_killed_mid_thread_resumes_without_reposting(ctx):
    env = thread_env(ctx, {"on_unknown": "resend"})
    # Part 2 hangs: the daemon is killed while it is in flight.
    env.server.script([instance_answer(), status_answer(1), status_answer(2, delay=30),
                       status_answer(2), status_answer(3)])
    pid = plan_thread(env, time.time() + 2 * SCALE)
    d = env.start()
    wait_for(lambda: len(statuses(env)) >= 2, 30 * SCALE, "part 2 on its way")
    progress = post_state(env, pid).get("progress") or ""
    assert "1=101" in progress, progress  # part 1 is on disk before part 2 leaves
    d.kill()
    d2 = env.start()
    wait_for(lambda: post_state(env, pid).get("state") == "sent", 30 * SCALE, "the thread sent")
    d2.stop()
    reqs = statuses(env)
    texts = [r["json"]["status"] for r in reqs]
    firsts = [t for t in texts if t.endswith(" 1/3")]
    assert len(firsts) == 1, "part 1 was posted again after the restart: %s" % texts
    seconds = [r for r in reqs if r["json"]["status"].endswith(" 2/3")]
    assert len(seconds) == 2 and seconds[0]["key"] == seconds[1]["key"], \
        "part 2 resent with another key (the instance could not dedupe it): %s" % seconds
    assert reqs[-1]["json"]["status"].endswith(" 3/3"), texts
    assert reqs[-1]["json"]["in_reply_to_id"] == "102", reqs[-1]["json"]


if __name__ == "__main__":
    run_tests([test_thread_parts_in_order_and_a_failed_part_retried_alone,
               test_killed_mid_thread_resumes_without_reposting])
