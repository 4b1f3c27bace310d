"""Drives the real `calpost run` against tests/support/testserver.py on 127.0.0.1.

    env = Env("name", channels={"a": {}}, settings={"grace": "5s"})
    env.write_plan([Event("u1", due, "hello", channels=["a"])])
    d = env.start()                       # waits until the daemon says it is running
    env.wait_for(lambda: len(env.server.requests()) == 1, 10, "one request")
    d.stop()                              # SIGTERM, waits, returns the exit status
    env.close()

Everything lives in one temporary folder (config, plan, state dir, logs, the server's request
log); it is removed when the test passed and kept (and named) when it failed. Conditions are
polled with generous timeouts (the ASan build is slow); nothing sleeps a fixed time where a
condition can be watched. Timeouts are multiplied by $CP_TEST_TIMEOUT_SCALE (default 1).
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
CALPOST = os.environ.get("CALPOST") or os.path.join(SRC, "build", "calpost")
TESTSERVER = os.path.join(HERE, "testserver.py")
SCALE = float(os.environ.get("CP_TEST_TIMEOUT_SCALE", "1"))
# Under valgrind a daemon needs seconds to start: $CP_TEST_GRACE widens the default grace so that
# a post that fell due during the start is published late, not missed (tests that set a grace
# keep theirs). tests/test_valgrind_daemon.py sets it.
GRACE = os.environ.get("CP_TEST_GRACE", "5s")
# ctest sets $CP_TEST_KEEP and $CP_TEST_OUTPUT (tests/CMakeLists.txt): every temporary folder is
# kept and listed in $CP_TEST_OUTPUT/kept-dirs.txt for tests/secrets_sweep.py, which greps all of
# it for the test secrets after the other tests ran.
KEEP = bool(os.environ.get("CP_TEST_KEEP"))
OUTPUT = os.environ.get("CP_TEST_OUTPUT")
# With $CP_TEST_STOP_AT_CLOSE a daemon still running when its test ends gets SIGTERM (SIGKILL only
# if it does not stop), so that valgrind can report its leaks (tests/test_valgrind_daemon.py).
STOP_AT_CLOSE = bool(os.environ.get("CP_TEST_STOP_AT_CLOSE"))


def _output_append(name, line):
    if not OUTPUT:
        return
    os.makedirs(OUTPUT, exist_ok=True)
    with open(os.path.join(OUTPUT, name), "a") as f:
        f.write(line + "\n")


def kept_dir(path, failed=False):
    """Lists path for the secrets sweep (with $CP_TEST_KEEP), which removes it after a clean
    sweep unless the test failed; returns path."""
    if KEEP:
        _output_append("kept-dirs.txt", os.path.abspath(path))
        if failed:
            _output_append("failed-dirs.txt", os.path.abspath(path))
    return path


def register_secret(value):
    """Names a secret made while the test runs (a random token, one a server issued) for the
    secrets sweep; the fixed ones are listed in tests/data/test-secrets.txt."""
    _output_append("secrets.registered", value)
    return value


_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_for(cond, timeout, what, interval=0.02):
    """Polls cond() until it returns something truthy; returns that. Fails naming `what`."""
    deadline = time.time() + timeout * SCALE
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout * SCALE, what))
        time.sleep(interval)


def sleep_until(t):
    """Waits for a wall-clock time: used only where the test must let time pass (a due time, a
    grace window running out), never in place of a condition."""
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def next_second(lead):
    """A whole second at least `lead` seconds from now (DTSTART has one-second resolution)."""
    return int(time.time() + lead) + 1


def ics_time(t):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def http_date(t):
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(t))


def _escape(text):
    return (text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\n", "\\n"))


def post_id(calendar_name, uid, channel, occurrence="single"):
    """The post id the plan engine gives (README "Identity")."""
    data = b"".join(p.encode() + b"\0" for p in (calendar_name, uid, occurrence, channel))
    return hashlib.sha256(data).hexdigest()[:16]


class Event:
    def __init__(self, uid, due, text, channels=("a",), status=None, summary=None):
        self.uid, self.due, self.text = uid, due, text
        self.channels, self.status, self.summary = list(channels), status, summary

    def ics(self):
        lines = ["BEGIN:VEVENT", "UID:%s" % self.uid, "DTSTAMP:20260101T000000Z",
                 "DTSTART:%s" % ics_time(self.due),
                 "SUMMARY:%s" % _escape(self.summary or self.text[:40]),
                 "DESCRIPTION:%s" % _escape(self.text),
                 "X-CALPOST-CHANNELS:%s" % ",".join(self.channels)]
        if self.status:
            lines.append("STATUS:%s" % self.status)
        lines.append("END:VEVENT")
        return lines


def calendar_text(events):
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calpost//daemon test//EN"]
    for e in events:
        lines += e.ics()
    lines.append("END:VCALENDAR")
    return "\r\n".join(lines) + "\r\n"


class TestServer:
    """tests/support/testserver.py as a child process; its stdin is a pipe, so it dies with us."""

    def __init__(self, folder, seed=None, name="requests"):
        self.log = os.path.join(folder, name + ".jsonl")
        argv = ["/usr/bin/python3", TESTSERVER, "--log", self.log]
        if seed is not None:
            argv += ["--seed", str(seed)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())
        self.base = "http://127.0.0.1:%d" % self.port

    def url(self, path="/hook"):
        return self.base + path

    def _control(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     method="POST")
        with _no_proxy.open(req, timeout=10) as r:
            assert r.status == 200

    def script(self, responses, default=None, reset=False):
        """Replaces the queue of answers (see testserver.py); keeps the request log unless
        reset."""
        if reset:
            self._control("/__control/reset", {})
        body = {"responses": responses}
        if default is not None:
            body["default"] = default
        self._control("/__control/script", body)

    def requests(self, path=None):
        """Every request received (oldest first), each with "key" (the Idempotency-Key) and
        "json" (the parsed body) added."""
        out = []
        with open(self.log) as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                r["key"] = header(r, "Idempotency-Key")
                try:
                    r["json"] = json.loads(r["body"])
                except ValueError:
                    r["json"] = None
                if path is None or r["path"] == path:
                    out.append(r)
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


def header(req, name):
    for k, v in req["headers"]:
        if k.lower() == name.lower():
            return v
    return None


def key_of(pid):
    return "calpost-" + pid


# How much later than the client's start a test server may stamp a request: it stamps after
# reading the whole request, and on a loaded machine (CI, the sanitizer build) that has lagged
# libcurl's own start by more than 100 ms.
SERVER_STAMP_LAG = 0.5


def assert_resent_after_timeout(log, reqs, timeout_s, what="the request"):
    """The resend in reqs[1] came only after the first request's timeout of timeout_s.

    The exact check is libcurl's own clock, which the daemon logs with the failure ("timed out
    after N milliseconds", counted from the transfer's start): N must be at least the timeout.
    The server's stamps can only confirm it loosely (SERVER_STAMP_LAG), since the first stamp is
    taken when the server has read the request, not when libcurl started it."""
    took = [int(m) for m in re.findall(r"timed out after (\d+) milliseconds", log)]
    assert took, "%s: no libcurl timeout in the daemon log" % what
    assert min(took) >= timeout_s * 1000, "%s: libcurl gave up after %d ms, before the %g s " \
        "timeout" % (what, min(took), timeout_s)
    gap = reqs[1]["time"] - reqs[0]["time"]
    assert gap >= timeout_s - SERVER_STAMP_LAG, "%s: resent %.3f s after the first request, " \
        "before the %g s timeout" % (what, gap, timeout_s)


class Daemon:
    """One run of `calpost run`; stderr goes to its own log file."""

    def __init__(self, env, n):
        self.env = env
        self.log_path = os.path.join(env.dir, "daemon-%d.log" % n)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([CALPOST, "run", "-c", env.config], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, needle, timeout=10, count=1):
        """Waits until needle appears count times in this run's log; returns the log."""
        return wait_for(lambda: self.log().count(needle) >= count and self.log(), timeout,
                        "%r in the daemon log %s" % (needle, self.log_path))

    def wait_running(self, timeout=15):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("calpost run exited with %s before it was running:\n%s"
                                     % (self.proc.returncode, self.log()))
            return " running: " in self.log()
        wait_for(ready, timeout, "the daemon to start (%s)" % self.log_path)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=20):
        """Waits for the process to end; returns its exit status, fails after timeout."""
        try:
            rc = self.proc.wait(timeout * SCALE)
        except subprocess.TimeoutExpired:
            raise AssertionError("calpost run (pid %d) still running %.0f s later:\n%s"
                                 % (self.proc.pid, timeout * SCALE, self.log()[-3000:])) from None
        self._log.close()
        return rc

    def stop(self, timeout=20):
        """SIGTERM; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()


class Env:
    """A config, a plan, a state dir and a test server in one temporary folder."""

    def __init__(self, name, channels=None, settings=None, seed=None, extra=""):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="cp-daemon-%s-" % name)
        self.server = TestServer(self.dir, seed=seed)
        self.config = os.path.join(self.dir, "calpost.ini")
        self.plan = os.path.join(self.dir, "plan.ics")
        self.state_dir = os.path.join(self.dir, "state")
        self.db = os.path.join(self.state_dir, "calpost.db")
        self.daemons = []
        self.channels = channels if channels is not None else {"a": {}}
        self.settings = {"state_dir": "state", "timezone": "UTC", "grace": GRACE,
                         "retry_base": "500ms", "retry_cap": "2s", "stop_wait": "10s",
                         "log_level": "debug"}
        self.settings.update(settings or {})
        self.extra = extra
        self.write_config()

    # --- files ---------------------------------------------------------------------------------

    def write_config(self):
        out = ["[calpost]"]
        out += ["%s = %s" % kv for kv in self.settings.items()]
        out += ["", "[calendar plan]", "source = plan.ics", "channels = %s" % next(iter(
            self.channels)), ""]
        for name, keys in self.channels.items():
            keys = dict(keys)
            keys.setdefault("type", "webhook")
            if keys["type"] == "webhook":
                keys.setdefault("url", self.server.url("/" + name))
                keys.setdefault("timeout", "5s")
            out.append("[channel %s]" % name)
            out += ["%s = %s" % kv for kv in keys.items()]
            out.append("")
        out.append(self.extra)
        with open(self.config, "w") as f:
            f.write("\n".join(out) + "\n")

    def write_plan(self, events, rename=False):
        """Writes the plan; rename=True saves the way vim does: a new file renamed over."""
        self.write_plan_text(calendar_text(events), rename)

    def write_plan_text(self, text, rename=False):
        if rename:
            tmp = os.path.join(self.dir, ".plan.ics.swp")
            with open(tmp, "w", newline="") as f:
                f.write(text)
            os.rename(tmp, self.plan)
        else:
            with open(self.plan, "w", newline="") as f:
                f.write(text)

    def pid(self, uid, channel="a"):
        return post_id("plan", uid, channel)

    # --- the daemon ------------------------------------------------------------------------------

    def spawn(self):
        d = Daemon(self, len(self.daemons))
        self.daemons.append(d)
        return d

    def start(self):
        d = self.spawn()
        d.wait_running()
        return d

    def logs(self):
        return "".join(d.log() for d in self.daemons)

    def cli(self, *args, check=True):
        """Runs `calpost ARGS -c CONFIG`; returns (exit status, stdout, stderr)."""
        p = subprocess.run([CALPOST] + list(args) + ["-c", self.config], capture_output=True,
                           text=True, timeout=30 * SCALE)
        # What the user saw, for the secrets sweep (removed with the folder unless kept).
        with open(os.path.join(self.dir, "cli.log"), "a") as f:
            f.write("$ calpost %s\n%s%s[exit %d]\n" % (" ".join(args), p.stdout, p.stderr,
                                                       p.returncode))
        if check and p.returncode != 0:
            raise AssertionError("calpost %s exited %d: %s%s" % (" ".join(args), p.returncode,
                                                                  p.stdout, p.stderr))
        return p.returncode, p.stdout, p.stderr

    def status(self):
        return json.loads(self.cli("status", "--json")[1])

    def channel_status(self, name):
        for ch in self.status()["channels"]:
            if ch["name"] == name:
                return ch
        raise AssertionError("no channel %s in calpost status" % name)

    # --- the state database -----------------------------------------------------------------------

    def _connect(self):
        # mode=rw: never create the file before the daemon does.
        return sqlite3.connect("file:%s?mode=rw" % self.db, uri=True, timeout=10)

    def query(self, sql, args=()):
        """Rows as dicts; [] while the daemon has not created the database yet."""
        if not os.path.exists(self.db):
            return []
        con = self._connect()
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, args)]
        except sqlite3.OperationalError as e:
            # A daemon killed between creating the file and creating its tables (the crash
            # test does that) leaves a database without a schema: nothing is planned yet.
            if "no such table" in str(e):
                return []
            raise
        finally:
            con.close()

    def states(self):
        return {r["id"]: r["state"] for r in self.query("SELECT id, state FROM posts")}

    def state(self, pid):
        return self.states().get(pid)

    def attempts(self, pid=None):
        if pid is None:
            return self.query("SELECT * FROM attempts ORDER BY post_id, n")
        return self.query("SELECT * FROM attempts WHERE post_id = ? ORDER BY n", (pid,))

    def dump_db(self):
        """Every table of the state database as SQL text (sqlite3's iterdump)."""
        con = self._connect()
        try:
            return "\n".join(con.iterdump())
        finally:
            con.close()

    # --- waiting ---------------------------------------------------------------------------------

    def wait_for(self, cond, timeout, what):
        return wait_for(cond, timeout, what)

    def wait_state(self, pid, state, timeout=15):
        return wait_for(lambda: self.state(pid) == state, timeout,
                        "post %s to be %s (it is %s)" % (pid, state, self.state(pid)))

    def wait_requests(self, n, timeout=15, path=None):
        return wait_for(lambda: len(self.server.requests(path)) >= n and self.server.requests(path),
                        timeout, "%d request(s) at the server" % n)

    def close(self, keep=False):
        for d in self.daemons:
            if d.proc.poll() is None and STOP_AT_CLOSE:
                try:
                    d.stop()
                except AssertionError:
                    pass
            if d.proc.poll() is None:
                d.kill()
        self.server.close()
        if keep:
            sys.stderr.write("kept the files of %s in %s\n" % (self.name, self.dir))
        if keep or KEEP:
            kept_dir(self.dir, failed=keep)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- a small runner: test functions in parallel, the timing-sensitive ones alone first ----------

def exclusive(fn):
    """Marks a test that measures timing: it runs alone, before the others."""
    fn.exclusive = True
    return fn


class Ctx:
    """What a test function gets: env() makes environments that are closed after the test."""

    def __init__(self, name):
        self.name = name
        self.envs = []
        self.failed = False

    def env(self, **kw):
        e = Env(self.name, **kw)
        self.envs.append(e)
        return e

    def close(self):
        for e in self.envs:
            e.close(keep=self.failed)


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer")


def sanitizer_reports(ctx):
    """Fails the test if a daemon run printed an ASan/UBSan report (the -DCALPOST_SANITIZE
    build): a report is a bug even when the behaviour looked right."""
    for e in ctx.envs:
        for d in e.daemons:
            log = d.log()
            for mark in SANITIZER_MARKS:
                if mark in log:
                    i = log.index(mark)
                    raise AssertionError("sanitizer report in %s:\n%s" % (d.log_path,
                                                                            log[i:i + 3000]))


def run_tests(tests, argv=None):
    """Runs test functions test_*(ctx); argv may name some. Exits 0 when all passed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        tests = [t for t in tests if t.__name__ in argv]
    jobs = int(os.environ.get("CP_TEST_JOBS", "4"))
    lock = threading.Lock()
    results = {}

    def one(t):
        ctx = Ctx(t.__name__[5:] if t.__name__.startswith("test_") else t.__name__)
        start = time.time()
        try:
            t(ctx)
            sanitizer_reports(ctx)
            ok, msg = True, ""
        except BaseException:  # noqa: B036 - a test's failure is reported, whatever it is
            ok, msg = False, traceback.format_exc()
            ctx.failed = True
            for e in ctx.envs:
                msg += "\n--- daemon logs of %s (%s)\n" % (e.name, e.dir)
                for d in e.daemons:
                    msg += "[%s]\n%s" % (d.log_path, d.log()[-6000:])
        finally:
            ctx.close()
        with lock:
            results[t.__name__] = ok
            print("%s %s (%.1f s)%s" % ("PASS" if ok else "FAIL", t.__name__, time.time() - start,
                                       "\n" + msg if msg else ""), flush=True)

    alone = [t for t in tests if getattr(t, "exclusive", False)]
    rest = [t for t in tests if not getattr(t, "exclusive", False)]
    for t in alone:
        one(t)
    pending = list(rest)
    threads = []
    while pending or threads:
        threads = [th for th in threads if th.is_alive()]
        while pending and len(threads) < jobs:
            th = threading.Thread(target=one, args=(pending.pop(0),))
            th.start()
            threads.append(th)
        time.sleep(0.05)
    failed = [n for n, ok in results.items() if not ok]
    print("%d passed, %d failed%s" % (len(results) - len(failed), len(failed),
                                      (": " + ", ".join(failed)) if failed else ""), flush=True)
    sys.exit(1 if failed or not results else 0)


def utc_iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")

