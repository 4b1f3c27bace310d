#!/usr/bin/python3
# ctest-labels: integration
"""The control API over loopback TCP and what it measures: the real daemon ($CALPOST) publishing
through webhook channels to tests/support/testserver.py, with `[control] listen = 127.0.0.1:0`
and a token file. Asserts what an operator sees: 401 without the token (or with a wrong one),
200 with it; /metrics parsed by prometheus_client's text-format parser (Debian's
python3-prometheus-client) with values that match a scripted scenario (posts sent, one failed,
one held back by the channel's rate, one missed), /v1/posts and /v1/report; configuration
mistakes refused at start with the file, line and key; the token never in the logs.

    /usr/bin/python3 tests/test_control_tcp.py [TEST_NAME ...]      (CALPOST=build/calpost)
"""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import (CALPOST, SCALE, Event, next_second, run_tests,  # noqa: E402
                            wait_for)

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - reported as a failure with the package to install
    text_string_to_metric_families = None

TOKEN = "t0k3n-" + os.urandom(16).hex()
WRONG = "wrong-" + os.urandom(16).hex()
WEIRD = 'we"ird\\name'  # a channel name that needs escaping in a label value


def control_env(ctx, channels, token=TOKEN, listen="127.0.0.1:0", token_mode=0o600, extra="",
                settings=None):
    lines = ["[control]"]
    if listen is not None:
        lines.append("listen = %s" % listen)
    if token is not None:
        lines.append("token_file = control.token")
    env = ctx.env(channels=channels, extra="\n".join(lines) + "\n" + extra, settings=settings)
    if token is not None:
        path = os.path.join(env.dir, "control.token")
        with open(path, "w") as f:
            f.write(token + "\n")
        os.chmod(path, token_mode)
    return env


def tcp_port(daemon):
    log = daemon.wait_log("control: dashboard, API and /metrics on http://")
    m = re.search(r"on http://127\.0\.0\.1:(\d+)/", log)
    assert m, "no listening address in the log:\n" + log
    return int(m.group(1))


def get(port, path, token=None, headers=None, method="GET", body=None):
    """One request over TCP; returns (status, headers dict (lower-case names), body text)."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = "Bearer " + token
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SCALE)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10 * SCALE)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10 * SCALE)
        self.sock.connect(self.unix_path)


def get_unix(env, path):
    c = UnixConnection(os.path.join(env.state_dir, "calpost.sock"))
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def parse_metrics(text):
    """{(sample name, frozenset of labels): value} and {family name: type}, by the reference
    parser; every family must have HELP and TYPE lines."""
    assert text_string_to_metric_families, (
        "prometheus_client is missing: apt-get install python3-prometheus-client")
    samples, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        assert fam.documentation, "family %s has no HELP text" % fam.name
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, "sample %s%s appears twice" % (s.name, dict(s.labels))
            samples[key] = s.value
    for name in re.findall(r"^# TYPE (\S+) ", text, re.M):
        assert re.search(r"^# HELP %s " % re.escape(name), text, re.M), name
    return samples, types


def metric(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, "no sample %s%s in /metrics; have: %s" % (
        name, labels, sorted(k[0] + str(dict(k[1])) for k in samples if k[0] == name))
    return samples[key]


def no_secret_in_logs(env, *secrets):
    for d in env.daemons:
        log = d.log()
        for s in secrets:
            assert s not in log, "a token appears in %s" % d.log_path


# --- 1. the token ---------------------------------------------------------------------------------

def test_tcp_needs_the_token_unix_socket_does_not(ctx):
    env = control_env(ctx, {"a": {}})
    env.write_plan([Event("later", int(time.time()) + 86400, "tomorrow", ["a"])])
    d = env.start()
    port = tcp_port(d)
    for path in ("/metrics", "/v1/status", "/v1/posts", "/v1/report", "/v1/feed.ics"):
        status, h, body = get(port, path)
        assert status == 401, "%s without a token answered %d" % (path, status)
        assert h.get("www-authenticate", "").startswith("Bearer"), h
        assert "token" in json.loads(body)["error"]
        status, _, _ = get(port, path, token=WRONG)
        assert status == 401, "%s with a wrong token answered %d" % (path, status)
        status, _, body = get(port, path, token=TOKEN)
        assert status == 200, "%s with the token answered %d: %s" % (path, status, body)
    # The scheme name is case-insensitive (RFC 7235); a prefix or a longer token is not the token.
    assert get(port, "/metrics", headers={"Authorization": "bearer " + TOKEN})[0] == 200
    assert get(port, "/metrics", token=TOKEN[:-1])[0] == 401
    assert get(port, "/metrics", token=TOKEN + "x")[0] == 401
    assert get(port, "/metrics", headers={"Authorization": "Basic " + TOKEN})[0] == 401
    # The daemon's own endpoints too: pausing over TCP needs the bearer token.
    body = json.dumps({"channel": "a"})
    assert get(port, "/v1/pause", method="POST", body=body)[0] == 401
    assert get(port, "/v1/pause", token=TOKEN, method="POST", body=body)[0] == 200
    assert env.channel_status("a")["paused"] is True
    assert get(port, "/v1/resume", token=TOKEN, method="POST", body=body)[0] == 200
    # The Unix socket (mode 0600) needs no token.
    status, text = get_unix(env, "/metrics")
    assert status == 200 and "calpost_posts" in text, text[:300]
    assert get_unix(env, "/v1/posts")[0] == 200
    d.stop()
    no_secret_in_logs(env, TOKEN, WRONG)


def test_dashboard_session_cookie_reads_but_cannot_act(ctx):
    env = control_env(ctx, {"a": {}})
    env.write_plan([Event("later", int(time.time()) + 86400, "tomorrow", ["a"])])
    d = env.start()
    port = tcp_port(d)
    status, h, body = get(port, "/")
    assert status == 401 and 'name="token"' in body, (status, body[:300])
    status, h, body = get(port, "/login", method="POST", body="token=" + WRONG,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401 and "not the token" in body, (status, body[:300])
    assert "set-cookie" not in h
    status, h, _ = get(port, "/login", method="POST", body="token=" + TOKEN,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303 and h["location"] == "/", (status, h)
    cookie = h["set-cookie"]
    for attr in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attr in cookie, cookie
    assert TOKEN not in cookie, "the cookie carries the token itself"
    session = cookie.split(";")[0]
    status, h, body = get(port, "/", headers={"Cookie": session})
    assert status == 200 and "dashboard.js" in body
    assert "script-src 'self'" in h.get("content-security-policy", ""), h
    assert get(port, "/v1/posts", headers={"Cookie": session})[0] == 200
    assert get(port, "/metrics", headers={"Cookie": "x=1; " + session + "; y=2"})[0] == 200
    # A cookie only reads: nothing that changes the queue.
    status, _, _ = get(port, "/v1/pause", method="POST", body=json.dumps({"channel": "a"}),
                       headers={"Cookie": session})
    assert status == 401
    assert env.channel_status("a")["paused"] is False
    tampered = session[:-1] + ("1" if session[-1] == "0" else "0")  # always a different cookie
    assert get(port, "/", headers={"Cookie": tampered})[0] == 401
    # /?token= signs in once and sends the browser on without the token in the address.
    status, h, _ = get(port, "/?token=" + TOKEN)
    assert status == 303 and h["location"] == "/" and h["set-cookie"].split(";")[0] == session
    d.stop()
    no_secret_in_logs(env, TOKEN, WRONG)


# --- 2. /metrics, /v1/posts and /v1/report against a scripted scenario ---------------------------

def test_metrics_posts_and_report_match_the_scenario(ctx):
    # Grace 10 min: c2, held by c's rate, must stay pending while the test looks (with the
    # harness's 5 s, a slow run saw it missed).
    env = control_env(ctx, {"a": {}, "b": {}, "c": {"rate": "1/1h"}}, settings={"grace": "10m"})
    # A channel whose name needs escaping in a label value; it has no posts.
    env.channels[WEIRD] = {"url": env.server.url("/weird")}
    env.write_config()
    env.server.script([{"path": "/b", "status": 400, "json": {"error": "text rejected"},
                        "repeat": True}])
    T = next_second(2.5)
    now = int(time.time())
    events = [Event("a1", T, "first on a", ["a"]), Event("a2", T + 1, "second on a", ["a"]),
              Event("a3", now + 86400, "tomorrow on a", ["a"]),
              Event("am", now - 1800, "half an hour ago on a", ["a"]),
              Event("b1", T, "rejected on b", ["b"]),
              Event("c1", T, "first on c", ["c"]), Event("c2", T + 1, "second on c", ["c"])]
    env.write_plan(events)
    d = env.start()
    port = tcp_port(d)
    pid = env.pid
    wait_for(lambda: env.state(pid("a1")) == "sent" and env.state(pid("a2")) == "sent"
             and env.state(pid("b1", "b")) == "failed"
             and env.state(pid("c1", "c")) == "sent", 30, "a1, a2, c1 sent and b1 failed")
    assert env.state(pid("am", "a")) == "missed"
    assert env.state(pid("c2", "c")) == "pending", "c2 must wait for c's rate (1 per hour)"

    def scrape():
        status, h, text = get(port, "/metrics", token=TOKEN)
        assert status == 200, text
        assert h["content-type"].startswith("text/plain; version=0.0.4"), h
        return parse_metrics(text)

    # c2's wait is counted once its channel was looked at after c1's answer.
    wait_for(lambda: scrape()[0].get(("calpost_rate_limit_waits_total",
                                      frozenset({"channel": "c"}.items()))) == 1, 15,
             "one rate-limit wait on c")
    samples, types = scrape()
    assert types["calpost_posts"] == "gauge"
    assert types["calpost_attempts"] == "counter"
    assert types["calpost_lateness_seconds"] == "histogram"
    assert types["calpost_rate_limit_waits"] == "counter"
    assert types["calpost_plan_refreshes"] == "counter"
    m = lambda name, **kw: metric(samples, name, **kw)  # noqa: E731
    # Posts by channel and state, every state present (zeros too), as the database has them.
    db = {(r["channel"], r["state"]): r["n"] for r in env.query(
        "SELECT channel, state, count(*) AS n FROM posts GROUP BY channel, state")}
    for ch in ("a", "b", "c", WEIRD):
        for st in ("pending", "sending", "sent", "failed", "missed", "cancelled", "skipped",
                   "unknown"):
            assert m("calpost_posts", channel=ch, state=st) == db.get((ch, st), 0), (ch, st)
    assert m("calpost_posts", channel="a", state="sent") == 2
    assert m("calpost_posts", channel="a", state="missed") == 1
    assert m("calpost_posts", channel="b", state="failed") == 1
    assert m("calpost_queue_depth", channel="a") == 1  # tomorrow's post
    assert m("calpost_queue_depth", channel="c") == 1  # held back by the rate
    assert m("calpost_queue_depth", channel=WEIRD) == 0
    # Attempts by outcome.
    assert m("calpost_attempts_total", channel="a", outcome="ok") == 2
    assert m("calpost_attempts_total", channel="b", outcome="permanent") == 1
    assert m("calpost_attempts_total", channel="b", outcome="ok") == 0
    assert m("calpost_attempts_total", channel="c", outcome="ok") == 1
    # Lateness: one observation per OK attempt; cumulative buckets ending at +Inf == count.
    les = ["0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "30", "60", "300", "+Inf"]
    for ch, n in (("a", 2), ("b", 0), ("c", 1)):
        counts = [m("calpost_lateness_seconds_bucket", channel=ch, le=le) for le in les]
        assert counts == sorted(counts), (ch, counts)
        assert counts[-1] == n == m("calpost_lateness_seconds_count", channel=ch), (ch, counts)
        assert counts[les.index("300")] == n, "%s: a post published more than 5 min late" % ch
        total = m("calpost_lateness_seconds_sum", channel=ch)
        assert 0 <= total <= 300 * n, (ch, total)
    lat = [r["late"] / 1000.0 for r in env.query(
        "SELECT max(a.at_ms - p.due_ms, 0) AS late FROM attempts a JOIN posts p "
        "ON p.id = a.post_id WHERE a.outcome = 'ok' AND p.channel = 'a'")]
    assert abs(m("calpost_lateness_seconds_sum", channel="a") - sum(lat)) < 0.01, lat
    # The daemon's counters.
    assert m("calpost_rate_limit_waits_total", channel="a") == 0
    assert m("calpost_rate_limit_waits_total", channel="c") == 1
    assert m("calpost_plan_refreshes_total") == 1
    assert m("calpost_plan_refresh_failures_total") == 0
    assert m("calpost_plan_change_held") == 0
    assert m("calpost_engagement_samples_total", channel="a") == 0
    assert m("calpost_store_up") == 1

    # A plan change is one more refresh.
    env.write_plan(events + [Event("a4", now + 2 * 86400, "the day after", ["a"])], rename=True)
    d.wait_log("changed, reloading the plan")
    wait_for(lambda: metric(scrape()[0], "calpost_plan_refreshes_total") == 2, 15,
             "a second plan refresh")
    assert metric(scrape()[0], "calpost_queue_depth", channel="a") == 2

    # /v1/posts: the posts with their state, attempts and the server's message.
    status, _, body = get(port, "/v1/posts?limit=100", token=TOKEN)
    assert status == 200, body
    posts = {p["id"]: p for p in json.loads(body)["posts"]}
    assert posts[pid("a1")]["state"] == "sent" and posts[pid("a1")]["attempts"] == 1
    assert posts[pid("a1")]["title"] == "first on a"
    assert posts[pid("a1")]["published"] and posts[pid("a1")]["lateness_ms"] >= 0
    assert posts[pid("b1", "b")]["state"] == "failed"
    assert "text rejected" in posts[pid("b1", "b")]["last_error"], posts[pid("b1", "b")]
    assert posts[pid("am")]["state"] == "missed"
    dues = [p["due"] for p in json.loads(body)["posts"]]
    assert dues == sorted(dues), "posts are not in due order"
    status, _, body = get(port, "/v1/posts?state=failed,missed", token=TOKEN)
    assert sorted(p["id"] for p in json.loads(body)["posts"]) == sorted(
        [pid("b1", "b"), pid("am")]), body
    status, _, body = get(port, "/v1/posts?channel=c&state=pending", token=TOKEN)
    assert [p["id"] for p in json.loads(body)["posts"]] == [pid("c2", "c")], body
    status, _, body = get(port, "/v1/posts?from=-1d&to=now&limit=2", token=TOKEN)
    j = json.loads(body)
    assert len(j["posts"]) == 2 and j["truncated"] is True, body
    status, _, body = get(port, "/v1/posts?from=%2B12h", token=TOKEN)  # "+12h": ahead only
    assert {p["id"] for p in json.loads(body)["posts"]} == {pid("a3"), pid("a4")}, body
    for bad in ("/v1/posts?state=sent,nope", "/v1/posts?limt=3", "/v1/posts?limit=0",
                "/v1/posts?from=yesterday"):
        status, _, body = get(port, bad, token=TOKEN)
        assert status == 400 and json.loads(body)["error"], (bad, status, body)

    # /v1/report: the same numbers as `calpost report`.
    status, _, body = get(port, "/v1/report?since=1d", token=TOKEN)
    assert status == 200, body
    rep = {c["name"]: c for c in json.loads(body)["channels"]}
    assert rep["a"]["published"] == 2 and rep["a"]["states"]["missed"] == 1
    assert rep["a"]["on_time"] == 2 and rep["a"]["on_time_share"] == 1.0
    assert rep["b"]["published"] == 0 and rep["b"]["states"]["failed"] == 1
    assert rep["a"]["lateness_ms"]["p50"] >= 0
    assert get(port, "/v1/report?since=soon", token=TOKEN)[0] == 400

    # /v1/feed.ics: the published feed, one VEVENT per sent post, with its UID and URL.
    status, h, body = get(port, "/v1/feed.ics?since=1d", token=TOKEN)
    assert status == 200, body
    text = body.decode() if isinstance(body, bytes) else body
    assert text.startswith("BEGIN:VCALENDAR"), text[:200]
    uids = [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("UID:")]
    sent = [r["id"] for r in env.query("SELECT id FROM posts WHERE state = 'sent'")]
    assert sorted(uids) == sorted(i + "@calpost" for i in sent), (uids, sent)
    assert get(port, "/v1/feed.ics")[0] == 401
    d.stop()
    no_secret_in_logs(env, TOKEN)


def test_a_429_counts_as_a_rate_limit_wait(ctx):
    env = control_env(ctx, {"a": {}})
    env.server.script([{"path": "/a", "status": 429, "headers": {"Retry-After": "1"},
                        "json": {"error": "slow down"}}])
    T = next_second(2.5)
    env.write_plan([Event("r1", T, "rate limited once", ["a"])])
    d = env.start()
    port = tcp_port(d)
    env.wait_state(env.pid("r1"), "sent", 30)
    status, _, text = get(port, "/metrics", token=TOKEN)
    samples, _ = parse_metrics(text)
    assert metric(samples, "calpost_rate_limit_waits_total", channel="a") == 1
    assert metric(samples, "calpost_attempts_total", channel="a", outcome="rate_limited") == 1
    assert metric(samples, "calpost_attempts_total", channel="a", outcome="ok") == 1
    d.stop()


def test_off_loop_answers_survive_clients_that_leave_and_a_stop(ctx):
    # /metrics, /v1/report and /v1/feed.ics are built on the thread pool. Clients that hang up
    # before the answer, and a SIGTERM while answers are being built, must neither crash the
    # daemon (the ASan build runs this too) nor keep it from stopping.
    # Grace 10 min: twenty posts due at once on one channel go one after another (a loaded run
    # had four of them past the harness's 5 s).
    env = control_env(ctx, {"a": {}}, settings={"grace": "10m"})
    T = next_second(2)
    env.write_plan([Event("p%d" % i, T, "post %d" % i, ["a"]) for i in range(20)])
    d = env.start()
    port = tcp_port(d)
    for i in range(20):
        env.wait_state(env.pid("p%d" % i), "sent", 30)
    request = ("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + "\r\n\r\n")
    paths = ("/metrics", "/v1/report?since=30d", "/v1/feed.ics")
    for round_ in range(10):
        for path in paths:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall((request % path).encode())
            s.close()  # gone before the answer
    for path in paths:  # the daemon still answers, correctly
        status, _, body = get(port, path, token=TOKEN)
        assert status == 200, (path, status, body[:300])
    assert "post 7" in get(port, "/v1/feed.ics", token=TOKEN)[2]
    pending = []
    for path in paths * 3:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall((request % path).encode())
        pending.append(s)
    rc = d.stop()
    assert rc == 0, "exit %s after a SIGTERM with answers in flight:\n%s" % (rc, d.log()[-2000:])
    for s in pending:
        s.close()
    no_secret_in_logs(env, TOKEN)


# --- 3. configuration mistakes are refused at start ---------------------------------------------

def refused(env, *needles):
    p = subprocess.run([CALPOST, "run", "-c", env.config], capture_output=True, text=True,
                       timeout=60 * SCALE)
    assert p.returncode == 1, "calpost run exited %d:\n%s" % (p.returncode, p.stderr)
    for n in needles:
        assert n in p.stderr, "%r not in:\n%s" % (n, p.stderr)
    assert TOKEN not in p.stderr
    return p.stderr


def test_config_mistakes_are_refused_with_file_line_and_key(ctx):
    e = control_env(ctx, {"a": {}}, listen="0.0.0.0:8787")
    refused(e, e.config + ":", "listen = 0.0.0.0:8787", "loopback")
    e = control_env(ctx, {"a": {}}, listen="192.168.1.10:8787")
    refused(e, "loopback")
    e = control_env(ctx, {"a": {}}, token=None)
    refused(e, "listen needs a token")
    e = control_env(ctx, {"a": {}}, token_mode=0o644)
    refused(e, "token_file", "chmod 600")
    e = control_env(ctx, {"a": {}}, token="short")
    refused(e, "at least 16")
    e = control_env(ctx, {"a": {}}, extra="lisen = 1\n")
    refused(e, "unknown key 'lisen'")
    # The line number is the one of the key in the file.
    e = control_env(ctx, {"a": {}}, listen="10.0.0.1:1")
    with open(e.config) as f:
        line = [i + 1 for i, t in enumerate(f) if t.startswith("listen =")][0]
    refused(e, "%s:%d:" % (e.config, line))


def test_ipv6_loopback_and_a_port_in_use(ctx):
    env = control_env(ctx, {"a": {}}, listen="[::1]:0")
    env.write_plan([])
    d = env.start()
    log = wait_for(lambda: ("control: dashboard" in d.log() or "will not work" in d.log())
                   and d.log(), 10, "the TCP listener's log line")
    m = re.search(r"on http://\[::1\]:(\d+)/", log)
    if m:  # a machine without IPv6 logs why instead, and keeps running
        c = http.client.HTTPConnection("::1", int(m.group(1)), timeout=10 * SCALE)
        c.request("GET", "/metrics", headers={"Authorization": "Bearer " + TOKEN})
        assert c.getresponse().status == 200
        c.close()
    # A port that is taken: the daemon says so and goes on publishing (the socket works).
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        env2 = control_env(ctx, {"a": {}}, listen="127.0.0.1:%d" % busy.getsockname()[1])
        env2.write_plan([])
        d2 = env2.start()
        log = d2.wait_log("the dashboard and /metrics over TCP will not work")
        assert "address already in use" in log.lower(), log
        assert get_unix(env2, "/metrics")[0] == 200
        d2.stop()
    finally:
        busy.close()
    d.stop()


if __name__ == "__main__":
    run_tests([test_tcp_needs_the_token_unix_socket_does_not,
               test_dashboard_session_cookie_reads_but_cannot_act,
               test_metrics_posts_and_report_match_the_scenario,
               test_a_429_counts_as_a_rate_limit_wait,
               test_off_loop_answers_survive_clients_that_leave_and_a_stop,
               test_config_mistakes_are_refused_with_file_line_and_key,
               test_ipv6_loopback_and_a_port_in_use])
