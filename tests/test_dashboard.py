#!/usr/bin/python3
# ctest-labels: integration;browser
"""The dashboard in a real browser: the daemon ($CALPOST) serves it on 127.0.0.1 with a token;
headless Chromium from Debian (/usr/bin/chromium) driven by playwright-core (npm, installed by
this test into $CP_SRC/.cache/playwright from tests/support/dashboard/package-lock.json; no
browser is ever downloaded) signs in, and the test checks what a person sees: the posts of a
test plan under their channels with their states (published, failed, missed, scheduled), the
KPIs per channel, the engagement chart, and a phone-sized layout without sideways scrolling.
Screenshots are saved in the test's output folder (its path is printed).

    /usr/bin/python3 tests/test_dashboard.py        (CALPOST=build/calpost)

Needs: apt-get install chromium nodejs npm (Debian packages)."""

import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import SCALE, SRC, Event, next_second, run_tests, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SUPPORT = os.path.join(HERE, "support", "dashboard")
CACHE = os.path.join(os.environ.get("CP_SRC") or SRC, ".cache", "playwright")
CHROMIUM = "/usr/bin/chromium"
TOKEN = "dash-" + os.urandom(16).hex()
WRONG = "nope-" + os.urandom(16).hex()


def playwright_core():
    """Installs playwright-core from the lock file into CACHE (once; `npm ci`, scripts off so
    nothing downloads a browser). Returns the module's folder."""
    assert os.path.exists(CHROMIUM), "no %s: apt-get install chromium" % CHROMIUM
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "no node/npm: apt-get install nodejs npm"
    os.makedirs(CACHE, exist_ok=True)
    module = os.path.join(CACHE, "node_modules", "playwright-core")
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the normal and the ASan suite may run at once
        want = open(os.path.join(SUPPORT, "package-lock.json")).read()
        have_path = os.path.join(CACHE, "package-lock.json")
        have = open(have_path).read() if os.path.exists(have_path) else None
        if have != want or not os.path.exists(os.path.join(module, "package.json")):
            for name in ("package.json", "package-lock.json"):
                shutil.copy(os.path.join(SUPPORT, name), os.path.join(CACHE, name))
            env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
            p = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                               cwd=CACHE, capture_output=True, text=True, env=env,
                               timeout=600)
            assert p.returncode == 0, "npm ci in %s failed:\n%s%s" % (CACHE, p.stdout, p.stderr)
    return module


def output_dir():
    out = os.path.join(os.getcwd(), "test_dashboard-output")
    os.makedirs(out, exist_ok=True)
    return out


def test_dashboard_shows_the_plan_kpis_and_engagement(ctx):
    module = playwright_core()
    env = ctx.env(channels={"a": {}, "b": {}},
                  extra="[control]\nlisten = 127.0.0.1:0\ntoken_file = control.token\n")
    tok = os.path.join(env.dir, "control.token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(tok, 0o600)
    env.server.script([{"path": "/b", "status": 422, "json": {"error": "too long for b"},
                        "repeat": True}])
    T = next_second(2.5)
    now = int(time.time())
    events = [Event("launch", T, "Launch day", ["a"]),
              Event("missed", now - 1200, "Missed webinar reminder", ["a"]),
              Event("tomorrow", now + 86400, "Tip of the week", ["a"]),
              Event("rejected", T, "Rejected on b", ["b"]),
              Event("later", now + 2 * 86400, "Blog digest", ["b"])]
    env.write_plan(events)
    d = env.start()
    log = d.wait_log("control: dashboard, API and /metrics on http://")
    port = int(re.search(r"on http://127\.0\.0\.1:(\d+)/", log).group(1))
    pid = env.pid
    wait_for(lambda: env.state(pid("launch")) == "sent"
             and env.state(pid("rejected", "b")) == "failed", 30, "launch sent, rejected failed")
    # Engagement sampling needs a platform that reports it; this plan's webhooks do not, so the
    # test stores one sample the way the daemon would, to see the chart draw it.
    con = sqlite3.connect("file:%s?mode=rw" % env.db, uri=True, timeout=10)
    with con:
        con.execute("INSERT INTO engagement(post_id, age_s, sampled_ms, replies, reposts, likes,"
                    " quotes, views) VALUES (?, 3600, ?, 2, 3, 7, NULL, NULL)",
                    (pid("launch"), int(time.time() * 1000)))
    con.close()

    out = output_dir()
    with tempfile.TemporaryDirectory(prefix="cp-dash-") as tmp:
        cfg = os.path.join(tmp, "drive.json")
        with open(cfg, "w") as f:
            json.dump({"module": module, "base": "http://127.0.0.1:%d" % port, "token": TOKEN,
                       "wrong": WRONG, "out": out, "profile": os.path.join(tmp, "profile")}, f)
        p = subprocess.run(["node", os.path.join(SUPPORT, "drive.js"), cfg], capture_output=True,
                           text=True, timeout=180 * SCALE)
    assert p.returncode == 0, "drive.js failed:\n%s%s" % (p.stdout, p.stderr[-4000:])
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    print("screenshots: %s, %s" % (seen["screenshot"], seen["phone_screenshot"]), flush=True)

    # Signing in: the form first, a wrong token refused, then a session cookie.
    assert seen["login_status"] == 401 and seen["login_form"] == 1, seen
    assert "not the token" in (seen["wrong_alert"] or ""), seen["wrong_alert"]
    assert seen["url_after_login"].endswith(":%d/" % port), seen["url_after_login"]
    assert {"name": "calpost_session", "httpOnly": True, "sameSite": "Strict"} in seen["cookies"]
    assert seen["ready"] == "1", seen
    page = seen["desktop"]
    assert page["problem"] is None, page["problem"]
    errors = [m for m in seen["console"] if m.startswith(("error", "pageerror"))]
    assert not errors, errors
    # Nothing but the daemon itself was asked for anything.
    others = [u for u in seen["requests"] if not u.startswith("http://127.0.0.1:%d/" % port)]
    assert not others, others

    # The timeline: each post under its channel with its state and title.
    chans = page["channels"]
    assert set(chans) == {"a", "b"}, chans
    posts = {q["id"]: q for ch in chans.values() for q in ch["posts"]}
    want = {pid("launch"): ("sent", "Launch day"),
            pid("missed"): ("missed", "Missed webinar reminder"),
            pid("tomorrow"): ("pending", "Tip of the week"),
            pid("rejected", "b"): ("failed", "Rejected on b"),
            pid("later", "b"): ("pending", "Blog digest")}
    for post_id, (state, title) in want.items():
        assert post_id in posts, "post %s (%s) not on the page: %s" % (post_id, title, posts)
        assert posts[post_id]["state"] == state, (title, posts[post_id])
        assert title in posts[post_id]["text"] and posts[post_id]["visible"], posts[post_id]
    assert {q["id"] for q in chans["a"]["posts"]} == {pid("launch"), pid("missed"),
                                                      pid("tomorrow")}
    assert chans["a"]["counts"] == "1 scheduled · 1 published · 1 missed", chans["a"]["counts"]
    assert chans["b"]["counts"] == "1 scheduled · 1 failed", chans["b"]["counts"]

    # The KPIs of the last 30 days.
    k = page["kpis"]
    assert k["a"]["published"] == "1" and k["a"]["on_time"] == "100 %", k["a"]
    assert k["a"]["missed"] == "1" and k["a"]["failed"] == "0", k["a"]
    assert k["b"]["published"] == "0" and k["b"]["failed"] == "1", k["b"]

    # The engagement chart: replies, reposts and likes of the sampled post.
    assert page["bars"] == {pid("launch"): 3}, page["bars"]

    # A phone: signed in with /?token=, which leaves the address without the token; the same
    # posts, and nothing wider than the screen.
    assert seen["phone_url"].endswith(":%d/" % port), seen["phone_url"]
    phone = seen["phone"]
    assert phone["innerWidth"] == 390 and phone["scrollWidth"] <= 390, phone
    assert {q["id"] for ch in phone["channels"].values() for q in ch["posts"]} == set(want)
    for f in (seen["screenshot"], seen["phone_screenshot"]):
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f
    d.stop()
    for dm in env.daemons:
        assert TOKEN not in dm.log() and WRONG not in dm.log(), "a token in %s" % dm.log_path


if __name__ == "__main__":
    run_tests([test_dashboard_shows_the_plan_kpis_and_engagement])
