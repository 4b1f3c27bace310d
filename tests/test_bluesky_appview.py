#!/usr/bin/python3
# ctest-labels: peer
# ctest-connector: bluesky
"""Engagement of Bluesky posts, read by the real `calpost run` ($CALPOST) through the reference
PDS (@atproto/pds 0.4.217) from the reference AppView (@atproto/bsky, which indexes the PDS's
firehose into PostgreSQL), with a local PLC directory: all on 127.0.0.1.

    /usr/bin/python3 tests/test_bluesky_appview.py      (CALPOST=build/calpost)

The packages pinned in tests/support/appview (package.json + package-lock.json: @atproto/dev-env,
whose TestPlc, TestBsky and TestPds start.js puts together) are installed with `npm ci` into
$CP_SRC/.cache/appview (once; reused while the lock file is unchanged). PostgreSQL is Debian's
(`apt-get install postgresql`): a throw-away cluster (initdb into a temporary folder, as the
`postgres` user when the test runs as root) on a free port of 127.0.0.1, removed at the end.

What is checked, with `engagement_ages = 3s, 30s`:
 1. the daemon publishes a post of alice.test (app password); its first sample, taken before
    anyone reacted, stores zeros;
 2. bob.test (a second account) likes, reposts, replies to and quotes it through the PDS; once
    the AppView shows that, the sample at 30 s stores replies 1, reposts 1, likes 1, quotes 1
    (views: none, Bluesky counts none), and `calpost report --format json` and `calpost status
    --json` show them;
 3. a second post, deleted by its owner right after it went out: its samples are stored without
    counts ("the post was deleted": getPosts leaves it out), not retried;
 4. the app password never appears in the daemon's log.

Exits 77 (a skip, where ctest is told so) only when the npm registry cannot be reached to
install the packages; fails with the reason when anything else is missing (node, npm,
PostgreSQL). Cleans up its processes and the PostgreSQL cluster whatever happens; keeps its
folder when it failed."""

import glob
import json
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "support"))
import npm_peer  # noqa: E402
from daemon_harness import (KEEP, SANITIZER_MARKS, SCALE, Daemon, calendar_text,  # noqa: E402
                            Event, kept_dir, post_id, register_secret, wait_for)

SRC = os.environ.get("CP_SRC") or os.path.dirname(HERE)
PKG = os.path.join(HERE, "support", "appview")
CACHE = os.path.join(SRC, ".cache", "appview")
SKIP = 77
AGES = (3, 30)  # engagement_ages, seconds
COUNTS = ("replies", "reposts", "likes", "quotes", "views")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def die(msg):
    sys.stderr.write("test_bluesky_appview: FAILED: %s\n" % msg)
    print("0 passed, 1 failed: test_bluesky_appview", flush=True)
    sys.exit(1)


# --- the packages ----------------------------------------------------------------------------

def install():
    """npm ci of the pinned packages into .cache/appview, unless that install is current."""
    try:
        npm_peer.install(PKG, CACHE, "@atproto/dev-env")
    except npm_peer.NpmError as e:
        if not e.unreachable:
            die(str(e))
        sys.stderr.write("test_bluesky_appview: SKIPPED: %s\n" % e)
        print("0 passed, 0 failed, 1 skipped: test_bluesky_appview", flush=True)
        sys.exit(SKIP)


# --- PostgreSQL ------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throw-away cluster: initdb into its own temporary folder, trust authentication, TCP on
    127.0.0.1 only, its Unix socket in that folder. initdb refuses to run as root: then the
    cluster belongs to Debian's `postgres` user."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
        initdb = bins[-1] if bins else shutil.which("initdb")
        if not initdb:
            die("PostgreSQL is needed for the AppView (Debian: apt-get install postgresql)")
        self.bin = os.path.dirname(initdb)
        self.as_user = []
        pw = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                die("running as root, and there is no `postgres` user to run PostgreSQL as "
                    "(Debian's postgresql package makes it)")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # In /tmp: the postgres user can reach it, and the socket's path stays short.
        self.dir = tempfile.mkdtemp(prefix="cp-appview-pg-",
                                    dir="/tmp" if os.path.isdir("/tmp") else None)
        self.started = False
        if pw:
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.port = free_port()
        self.url = "postgresql://calpost@127.0.0.1:%d/postgres" % self.port

    def start(self):
        self._run("initdb", "-D", self.data, "-U", "calpost", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        opts = "-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s -c fsync=off " \
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100" % (
                   self.port, self.dir)
        self.started = True  # pg_ctl may fail after the server started: stop it all the same
        self._run("pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t", "60", "-o", opts,
                  "start")

    def _run(self, tool, *args):
        p = subprocess.run(self.as_user + [os.path.join(self.bin, tool)] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            log = ""
            if os.path.exists(self.log_path):
                with open(self.log_path, errors="replace") as f:
                    log = f.read()[-3000:]
            raise AssertionError("%s failed (exit %d): %s%s\n%s" % (tool, p.returncode, p.stdout,
                                                                   p.stderr, log))

    def close(self):
        try:
            if self.started and os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- PLC + PDS + AppView ---------------------------------------------------------------------

class Servers:
    """start.js as a child. Its stdin is a pipe, so it dies with us."""

    def __init__(self, folder, db_url):
        self.log_path = os.path.join(folder, "servers.log")
        self._log = open(self.log_path, "wb")
        tmp = os.path.join(folder, "node-tmp")  # the PDS's data and blobs
        os.makedirs(tmp)
        env = dict(os.environ, NODE_PATH=os.path.join(CACHE, "node_modules"), TMPDIR=tmp,
                   DB_POSTGRES_URL=db_url, NODE_NO_WARNINGS="1")
        self.proc = subprocess.Popen(["node", os.path.join(PKG, "start.js")], cwd=folder,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log)
        try:
            line = wait_for(self._first_line, 180, "the servers to start (%s)" % self.log_path,
                            0.1)
            info = json.loads(line)
        except BaseException:
            self.close()
            raise
        self._drain = threading.Thread(target=self._copy_stdout, daemon=True)
        self._drain.start()
        self.pds = "http://127.0.0.1:%d" % info["pds"]
        self.appview = "http://127.0.0.1:%d" % info["bsky"]

    def _first_line(self):
        if self.proc.poll() is not None:
            raise AssertionError("start.js exited with %s:\n%s" % (self.proc.returncode,
                                                                  self.log()[-3000:]))
        r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
        return self.proc.stdout.readline().decode() if r else None

    def _copy_stdout(self):
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def xrpc(self, nsid, body=None, token=None, query=None, base=None):
        url = "%s/xrpc/%s" % (base or self.pds, nsid)
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = "Bearer " + token
        req = urllib.request.Request(url, data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
        try:
            with _opener.open(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError("%s: HTTP %d %s" % (nsid, e.code, e.read()[:500])) from None

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdin.close()
        if getattr(self, "_drain", None):
            self._drain.join(10)
        self.proc.stdout.close()
        self._log.close()


class Account:
    def __init__(self, srv, handle):
        self.srv = srv
        self.handle = handle
        self.login = register_secret(secrets.token_urlsafe(18))
        acc = srv.xrpc("com.atproto.server.createAccount",
                       {"handle": handle, "email": "%s@example.test" % handle.split(".")[0],
                        "password": self.login})
        self.did = acc["did"]

    def session(self):
        """A fresh access token (they outlive this test, but a fresh one costs nothing)."""
        return self.srv.xrpc("com.atproto.server.createSession",
                             {"identifier": self.handle, "password": self.login})["accessJwt"]

    def create(self, collection, record):
        record = dict(record, **{"$type": collection,
                                 "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                            time.gmtime())})
        out = self.srv.xrpc("com.atproto.repo.createRecord",
                            {"repo": self.did, "collection": collection, "record": record},
                            token=self.session())
        return {"uri": out["uri"], "cid": out["cid"]}


# --- calpost ---------------------------------------------------------------------------------

class Setup:
    """A config, a plan and a state dir for `calpost run` (what Daemon needs: dir, config)."""

    def __init__(self, folder, srv, handle, app_password):
        self.dir = folder
        self.config = os.path.join(folder, "calpost.ini")
        self.plan = os.path.join(folder, "plan.ics")
        self.db = os.path.join(folder, "state", "calpost.db")
        key = os.path.join(folder, "sky.key")
        with open(key, "w") as f:
            f.write(app_password + "\n")
        os.chmod(key, 0o600)
        with open(self.config, "w") as f:
            f.write("\n".join([
                "[calpost]", "state_dir = state", "timezone = UTC", "grace = 10m",
                "retry_base = 500ms", "retry_cap = 2s", "log_level = debug",
                "allow_loopback_http = yes",
                "engagement_ages = %s" % ", ".join("%ds" % a for a in AGES), "",
                "[calendar plan]", "source = plan.ics", "channels = sky", "",
                "[channel sky]", "type = bluesky", "service = %s" % srv.pds,
                "handle = %s" % handle, "app_password_file = sky.key", ""]))
        self.daemons = []

    def write_plan(self, events):
        tmp = self.plan + ".tmp"
        with open(tmp, "w", newline="") as f:
            f.write(calendar_text(events))
        os.rename(tmp, self.plan)

    def start(self):
        d = Daemon(self, len(self.daemons))
        self.daemons.append(d)
        d.wait_running(30)
        return d

    def cli(self, *args):
        p = subprocess.run([os.environ.get("CALPOST", "calpost")] + list(args) +
                           ["-c", self.config], capture_output=True, text=True,
                           timeout=30 * SCALE)
        if p.returncode != 0:
            raise AssertionError("calpost %s: %s%s" % (" ".join(args), p.stdout, p.stderr))
        return p.stdout

    def query(self, sql, args=()):
        if not os.path.exists(self.db):
            return []
        con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(sql, args)]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def post(self, pid):
        rows = self.query("SELECT state, remote_id, remote_url FROM posts WHERE id = ?", (pid,))
        return rows[0] if rows else {}

    def samples(self, pid):
        return self.query("SELECT * FROM engagement WHERE post_id = ? ORDER BY age_s", (pid,))

    def wait_sent(self, pids, timeout=60):
        def done():
            st = {p: self.post(p).get("state") for p in pids}
            bad = [s for s in st.values() if s in ("failed", "missed", "unknown")]
            if bad:
                raise AssertionError("posts ended %s:\n%s" % (st, self.daemons[-1].log()[-4000:]))
            return all(s == "sent" for s in st.values())
        wait_for(done, timeout, "posts %s to be sent" % pids, 0.1)

    def wait_sample(self, pid, age, timeout):
        def got():
            rows = [r for r in self.samples(pid) if r["age_s"] == age]
            return rows[0] if rows else None
        return wait_for(got, timeout, "the engagement sample of %s at %d s" % (pid, age), 0.2)


def counts(row):
    return {k: row[k] for k in COUNTS}


def view_counts(view):
    return {"replies": view.get("replyCount"), "reposts": view.get("repostCount"),
            "likes": view.get("likeCount"), "quotes": view.get("quoteCount")}


# --- the test --------------------------------------------------------------------------------

def run(folder, db_url):
    srv = Servers(folder, db_url)
    setup = None
    try:
        alice = Account(srv, "alice.test")
        bob = Account(srv, "bob.test")
        app = srv.xrpc("com.atproto.server.createAppPassword", {"name": "calpost"},
                       token=alice.session())
        app_password = register_secret(app["password"])
        setup = Setup(folder, srv, alice.handle, app_password)

        # 1. Two posts a few seconds ahead; the daemon publishes them with the app password.
        T = int(time.time() + 4 * SCALE) + 1
        events = [Event("kept", T, "Launch day: tell us what you think.", ["sky"],
                        summary="Launch"),
                  Event("gone", T, "A post its owner deletes.", ["sky"], summary="Gone")]
        setup.write_plan(events)
        d = setup.start()
        kept, gone = (post_id("plan", e.uid, "sky") for e in events)
        setup.wait_sent([kept, gone])
        uri = setup.post(kept)["remote_id"]
        gone_uri = setup.post(gone)["remote_id"]
        assert uri.startswith("at://%s/app.bsky.feed.post/" % alice.did), uri
        assert setup.post(kept)["remote_url"] == "https://bsky.app/profile/alice.test/post/" + \
            uri.rsplit("/", 1)[1], setup.post(kept)

        # 3 (first half). The owner deletes the second post right away.
        srv.xrpc("com.atproto.repo.deleteRecord",
                 {"repo": alice.did, "collection": "app.bsky.feed.post",
                  "rkey": gone_uri.rsplit("/", 1)[1]}, token=alice.session())

        # The first sample of the kept post: taken before anyone reacted, so all zeros.
        first = setup.wait_sample(kept, AGES[0], 30)
        assert counts(first) == {"replies": 0, "reposts": 0, "likes": 0, "quotes": 0,
                                 "views": None}, first

        # 2. bob reacts through the PDS.
        rec = srv.xrpc("com.atproto.repo.getRecord",
                       query={"repo": alice.did, "collection": "app.bsky.feed.post",
                              "rkey": uri.rsplit("/", 1)[1]})
        ref = {"uri": uri, "cid": rec["cid"]}
        bob.create("app.bsky.feed.like", {"subject": ref})
        bob.create("app.bsky.feed.repost", {"subject": ref})
        bob.create("app.bsky.feed.post", {"text": "Congratulations!",
                                          "reply": {"root": ref, "parent": ref}})
        bob.create("app.bsky.feed.post", {"text": "Look at this.",
                                          "embed": {"$type": "app.bsky.embed.record",
                                                    "record": ref}})
        want = {"replies": 1, "reposts": 1, "likes": 1, "quotes": 1}

        # The AppView indexes the firehose: wait (bounded) until it shows bob's four records,
        # asking it directly, not through the daemon.
        def indexed():
            posts = srv.xrpc("app.bsky.feed.getPosts", query={"uris": [uri, gone_uri]},
                             base=srv.appview)["posts"]
            views = {p["uri"]: p for p in posts}
            return uri in views and gone_uri not in views and \
                view_counts(views[uri]) == want and views[uri]
        wait_for(indexed, 20, "the AppView to index bob's like, repost, reply and quote and "
                 "alice's deletion (%s)" % srv.log_path, 0.2)
        assert not [r for r in setup.samples(kept) if r["age_s"] == AGES[1]], \
            "the sample at %d s was taken before the AppView indexed bob's records: %s" % (
                AGES[1], setup.samples(kept))

        # The daemon's sample at 30 s: read with getPosts through the PDS, which asks the
        # AppView on the daemon's behalf.
        last = setup.wait_sample(kept, AGES[1], AGES[1] + 30)
        assert counts(last) == dict(want, views=None), last

        # 3. The deleted post: stored without counts at each age, not asked again.
        wait_for(lambda: len(setup.samples(gone)) == 2, 30, "both samples of the deleted post")
        gone_rows = setup.samples(gone)
        assert [r["age_s"] for r in gone_rows] == list(AGES), gone_rows
        assert all(v is None for v in counts(gone_rows[1]).values()), gone_rows
        log = d.log()
        assert "the post was deleted (%s is not found)" % gone_uri in log, log[-4000:]
        assert "engagement of %s not read" % uri not in log, log[-4000:]

        # What a user sees: the report and the status.
        rep = json.loads(setup.cli("report", "--format", "json"))
        ch = [c for c in rep["channels"] if c["name"] == "sky"]
        assert len(ch) == 1, rep
        eng = ch[0]["engagement"]
        assert eng["sampled_posts"] >= 1, eng
        assert eng["total"] == dict(want, views=None), eng
        top = ch[0]["top_posts"]
        assert top and top[0]["id"] == kept and top[0]["counts"] == dict(want, views=None), top
        assert top[0]["age_s"] == AGES[1], top
        status = json.loads(setup.cli("status", "--json"))
        sky = [c for c in status["channels"] if c["name"] == "sky"][0]
        # Samples with counts: the kept post's two; the deleted post's 30 s row holds none, and
        # its 3 s row holds zeros if the sample came before the AppView indexed the deletion
        # (a slow run: it did).
        with_counts = 2 + (counts(gone_rows[0])["likes"] is not None)
        assert sky["engagement_samples"] == with_counts, (sky, gone_rows)

        assert d.stop() == 0, "calpost run did not exit cleanly:\n" + d.log()[-3000:]
        log = d.log()
        for mark in SANITIZER_MARKS:
            assert mark not in log, "sanitizer report in %s" % d.log_path
        assert app_password not in log, "the app password reached the log"
        assert app_password.replace("-", "") not in log, "the app password reached the log"
    finally:
        if setup:
            for dd in setup.daemons:
                if dd.proc.poll() is None:
                    dd.kill()
        srv.close()


def main():
    if not os.environ.get("CALPOST"):
        die("set CALPOST to the calpost binary (ctest does)")
    install()
    pg = Postgres()
    folder = tempfile.mkdtemp(prefix="cp-bluesky-appview-")
    t = time.time()
    ok = False
    try:
        pg.start()
        run(folder, pg.url)
        ok = True
    except BaseException:  # noqa: B036 - reported with the logs, then the exit status says it
        traceback.print_exc()
        for name in sorted(os.listdir(folder)):
            if name.endswith(".log"):
                with open(os.path.join(folder, name), errors="replace") as f:
                    sys.stderr.write("--- %s (tail)\n%s\n" % (name, f.read()[-5000:]))
        if os.path.exists(pg.log_path):
            with open(pg.log_path, errors="replace") as f:
                sys.stderr.write("--- postgres.log (tail)\n%s\n" % f.read()[-3000:])
    finally:
        pg.close()
        # The PDS's databases and blobs: nothing of calpost's is in there.
        shutil.rmtree(os.path.join(folder, "node-tmp"), ignore_errors=True)
    if not ok:
        kept_dir(folder)
        sys.stderr.write("kept the files in %s\n" % folder)
        print("FAIL test_bluesky_appview (%.1f s)" % (time.time() - t))
        print("0 passed, 1 failed: test_bluesky_appview", flush=True)
        sys.exit(1)
    if KEEP:
        kept_dir(folder)  # for the secrets sweep (daemon log, state database, CLI output)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    print("PASS test_bluesky_appview (%.1f s)" % (time.time() - t))
    print("1 passed, 0 failed", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # ctest's timeout: clean up first
    main()
