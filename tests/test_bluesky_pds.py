#!/usr/bin/python3
# ctest-labels: peer
# ctest-connector: bluesky
# ctest-serial
"""The real `calpost run` ($CALPOST) publishing to the reference Bluesky PDS (@atproto/pds 0.4,
with a local PLC directory, both on 127.0.0.1; CONNECTORS-NOTES 2.1).

    /usr/bin/python3 tests/test_bluesky_pds.py          (CALPOST=build/calpost)

The packages pinned in tests/support/pds (package.json + package-lock.json) are installed with
`npm ci` into $CP_SRC/.cache/pds (once; reused while the lock file is unchanged). The PDS runs
with access tokens that expire after a few seconds (start.js, CP_PDS_ACCESS_TTL), so that the
session refresh meets the PDS's own ExpiredToken.

What is checked, on the records the PDS stores (com.atproto.repo.listRecords):
 1. a post with a link, a mention of the account itself, hashtags and non-ASCII text before
    them, and an image with alt text: text, facets (UTF-8 byte offsets, the DID), the blob;
    a post with a link card; a thread of three replies;
 2. an expired access token: refreshed, and the post published;
 3. a revoked app password: the refresh fails, the channel pauses (AUTH), nothing is posted;
 4. a resend of everything after the state database is wiped (what a crash at the worst moment
    amounts to): the same record keys, no second copy of any post, and the paused post goes out.

Fails (never skips: ctest would count exit code 77 as a failure anyway) with the reason when
node/npm or the packages cannot be had. Cleans up its processes whatever happens; keeps its
folder when it failed."""

import json
import os
import select
import shutil
import signal
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
from daemon_harness import (KEEP, SANITIZER_MARKS, SCALE, Daemon,  # noqa: E402
                            calendar_text, Event, kept_dir, post_id, register_secret, wait_for)

SRC = os.environ.get("CP_SRC") or os.path.dirname(HERE)
PKG = os.path.join(HERE, "support", "pds")
CACHE = os.path.join(SRC, ".cache", "pds")
TTL = 8  # seconds an access token lives on this PDS
HANDLE = "alice.test"
PIXEL = os.path.join(os.environ.get("CP_TEST_DATA") or os.path.join(HERE, "data"), "media",
                     "pixel.png")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def die(msg):
    sys.stderr.write("test_bluesky_pds: FAILED: %s\n" % msg)
    print("0 passed, 1 failed: test_bluesky_pds", flush=True)
    sys.exit(1)


# --- the packages ----------------------------------------------------------------------------

def install_pds():
    """npm ci of the pinned packages into .cache/pds, unless that install is current."""
    try:
        npm_peer.install(PKG, CACHE, "@atproto/pds")
    except npm_peer.NpmError as e:
        die(str(e))


# --- the servers -----------------------------------------------------------------------------

class Pds:
    """start.js as a child: PLC + PDS on 127.0.0.1. Its stdin is a pipe, so it dies with us."""

    def __init__(self, folder):
        self.log_path = os.path.join(folder, "pds.log")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, NODE_PATH=os.path.join(CACHE, "node_modules"),
                   CP_PDS_ACCESS_TTL="%ds" % TTL, LOG_ENABLED="true")
        self.proc = subprocess.Popen(["node", os.path.join(PKG, "start.js"),
                                      os.path.join(folder, "pds-data")],
                                     cwd=folder, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log)
        line = wait_for(self._first_line, 180, "the PDS to start (%s)" % self.log_path, 0.1)
        info = json.loads(line)
        # The PDS logs to stdout: keep draining it, or it blocks once the pipe is full.
        self._drain = threading.Thread(target=self._copy_stdout, daemon=True)
        self._drain.start()
        self.port = info["pds"]
        self.base = "http://127.0.0.1:%d" % self.port

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

    def xrpc(self, nsid, body=None, token=None, query=None, raw=None, ctype=None):
        url = "%s/xrpc/%s" % (self.base, nsid)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = ctype
        if token:
            headers["Authorization"] = "Bearer " + token
        req = urllib.request.Request(url, data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
        try:
            with _opener.open(req, timeout=30) as r:
                out = r.read()
                return json.loads(out) if r.headers.get_content_type() == "application/json" \
                    else out
        except urllib.error.HTTPError as e:
            raise AssertionError("%s: HTTP %d %s" % (nsid, e.code, e.read()[:500])) from None

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdin.close()
        if getattr(self, "_drain", None):
            self._drain.join(10)
        self.proc.stdout.close()
        self._log.close()


class Setup:
    """A config, a plan and a state dir for `calpost run` (what Daemon needs: dir, config)."""

    def __init__(self, folder, pds, password):
        self.dir = folder
        self.config = os.path.join(folder, "calpost.ini")
        self.plan = os.path.join(folder, "plan.ics")
        self.db = os.path.join(folder, "state", "calpost.db")
        self.key = os.path.join(folder, "sky.key")
        self.set_password(password)
        shutil.copy(PIXEL, os.path.join(folder, "pixel.png"))
        with open(self.config, "w") as f:
            f.write("\n".join([
                "[calpost]", "state_dir = state", "timezone = UTC", "grace = 10m",
                "retry_base = 500ms", "retry_cap = 2s", "log_level = debug",
                "allow_loopback_http = yes", "",
                "[calendar plan]", "source = plan.ics", "channels = sky", "",
                "[channel sky]", "type = bluesky", "service = %s" % pds.base,
                "handle = %s" % HANDLE, "app_password_file = sky.key", ""]))
        self.daemons = []

    def set_password(self, password):
        with open(self.key, "w") as f:
            f.write(password + "\n")
        os.chmod(self.key, 0o600)

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

    def channel(self):
        for ch in json.loads(self.cli("status", "--json"))["channels"]:
            if ch["name"] == "sky":
                return ch
        raise AssertionError("no channel sky in calpost status")

    def states(self):
        if not os.path.exists(self.db):
            return {}
        con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=10)
        try:
            return {r[0]: r[1] for r in con.execute("SELECT id, state FROM posts")}
        except sqlite3.OperationalError:
            return {}
        finally:
            con.close()

    def wait_sent(self, pids, timeout=60):
        def done():
            st = self.states()
            bad = [st.get(p) for p in pids if st.get(p) in ("failed", "missed", "unknown")]
            if bad:
                raise AssertionError("posts ended %s:\n%s" % (st, self.daemons[-1].log()[-4000:]))
            return all(st.get(p) == "sent" for p in pids)
        wait_for(done, timeout, "posts %s to be sent" % pids, 0.1)

    def logs(self):
        return "".join(d.log() for d in self.daemons)


# --- the test --------------------------------------------------------------------------------

def utf8_span(text, part):
    """UTF-8 byte offsets of the first occurrence of part in text."""
    b, p = text.encode(), part.encode()
    i = b.index(p)
    return {"byteStart": i, "byteEnd": i + len(p)}


def records(pds, did):
    out = pds.xrpc("com.atproto.repo.listRecords",
                   query={"repo": did, "collection": "app.bsky.feed.post", "limit": 100})
    return {r["uri"]: r for r in out["records"]}


def by_text(recs, text):
    found = [r for r in recs.values() if r["value"]["text"] == text]
    assert len(found) == 1, "%d records with text %r: %s" % (len(found), text, list(recs))
    return found[0]


def rkey(uri):
    return uri.rsplit("/", 1)[1]


def run(folder):
    pds = Pds(folder)
    setup = None
    try:
        acc = pds.xrpc("com.atproto.server.createAccount",
                       {"handle": HANDLE, "email": "alice@example.test",
                        "password": "alice-login-123"})
        did = acc["did"]

        def owner():
            """A fresh access token of the account's owner (they live TTL seconds here)."""
            return pds.xrpc("com.atproto.server.createSession",
                            {"identifier": HANDLE, "password": "alice-login-123"})["accessJwt"]

        app = pds.xrpc("com.atproto.server.createAppPassword", {"name": "calpost"},
                       token=acc["accessJwt"])
        setup = Setup(folder, pds, register_secret(app["password"]))

        # 1. Three posts a few seconds ahead.
        T = int(time.time() + 4 * SCALE) + 1
        rich = ("Caf\u00e9 \u2615 launch day, @alice.test! See https://example.com/launch?x=1 "
                "#calpost #caf\u00e9.")
        card = "Release notes: https://example.org/notes"
        paras = [(c * 9 + " ") * 25 for c in "abc"]
        paras = [p.strip() + "." for p in paras]
        thread = "\n\n".join(paras)
        events = [
            Event("rich", T, rich + "\n\n[calpost]\nmedia = pixel.png | A red pixel on white",
                  ["sky"], summary="Launch"),
            Event("card", T, card, ["sky"], summary="Notes"),
            Event("thread", T + 1, thread + "\n\n[calpost]\nthread = yes", ["sky"],
                  summary="Long"),
        ]
        setup.write_plan(events)
        d = setup.start()
        pids = [post_id("plan", e.uid, "sky") for e in events]
        setup.wait_sent(pids)
        recs = records(pds, did)
        assert len(recs) == 5, "expected 5 records (1 + 1 + a thread of 3): %s" % list(recs)

        r = by_text(recs, rich)["value"]
        want_facets = [
            {"index": utf8_span(rich, "@alice.test"),
             "features": [{"$type": "app.bsky.richtext.facet#mention", "did": did}]},
            {"index": utf8_span(rich, "https://example.com/launch?x=1"),
             "features": [{"$type": "app.bsky.richtext.facet#link",
                           "uri": "https://example.com/launch?x=1"}]},
            {"index": utf8_span(rich, "#calpost"),
             "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "calpost"}]},
            {"index": utf8_span(rich, "#caf\u00e9"),
             "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "caf\u00e9"}]},
        ]
        assert r["facets"] == want_facets, "facets %s\nwant %s" % (r["facets"], want_facets)
        assert want_facets[0]["index"] == {"byteStart": 22, "byteEnd": 33}  # bytes, not chars
        emb = r["embed"]
        assert emb["$type"] == "app.bsky.embed.images", emb
        assert len(emb["images"]) == 1 and emb["images"][0]["alt"] == "A red pixel on white", emb
        blob = emb["images"][0]["image"]
        with open(PIXEL, "rb") as f:
            pixel = f.read()
        assert blob["mimeType"] == "image/png" and blob["size"] == len(pixel), blob
        got = pds.xrpc("com.atproto.sync.getBlob", query={"did": did, "cid": blob["ref"]["$link"]})
        assert got == pixel, "the stored blob differs from pixel.png"
        created = r["createdAt"]
        assert created == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(T)), created

        c = by_text(recs, card)
        assert c["value"]["embed"] == {
            "$type": "app.bsky.embed.external",
            "external": {"uri": "https://example.org/notes", "title": "Notes",
                         "description": ""}}, c["value"]["embed"]

        parts = [by_text(recs, p) for p in paras]
        assert "reply" not in parts[0]["value"]
        root = {"uri": parts[0]["uri"], "cid": parts[0]["cid"]}
        for i in (1, 2):
            parent = {"uri": parts[i - 1]["uri"], "cid": parts[i - 1]["cid"]}
            want = {"root": root, "parent": parent}
            assert parts[i]["value"]["reply"] == want, parts[i]["value"]
        first_round = {u: rec["cid"] for u, rec in recs.items()}

        # calpost's view: sent, with the post's bsky.app URL.
        con = sqlite3.connect("file:%s?mode=ro" % setup.db, uri=True, timeout=10)
        urls = dict(con.execute("SELECT id, remote_url FROM posts").fetchall())
        con.close()
        rich_uri = by_text(recs, rich)["uri"]
        assert urls[pids[0]] == "https://bsky.app/profile/%s/post/%s" % (HANDLE, rkey(rich_uri)), \
            urls
        assert urls[pids[2]].endswith("/post/" + rkey(parts[0]["uri"])), urls

        # 2. Wait until the daemon's access token has expired, then post again.
        time.sleep(TTL + 1)
        T2 = int(time.time() + 3 * SCALE) + 1
        later = Event("later", T2, "After the token expired.", ["sky"], summary="Later")
        setup.write_plan(events + [later])
        later_pid = post_id("plan", "later", "sky")
        setup.wait_sent([later_pid])
        log = d.log()
        assert "ExpiredToken; refreshing the session" in log, log[-3000:]
        recs = records(pds, did)
        assert len(recs) == 6, list(recs)
        by_text(recs, later.text)

        # 3. The app password revoked: its refresh token dies with it. The next post, with an
        # expired access token, cannot refresh: AUTH, the channel pauses, nothing is posted.
        pds.xrpc("com.atproto.server.revokeAppPassword", {"name": "calpost"}, token=owner())
        time.sleep(TTL + 1)
        T3 = int(time.time() + 3 * SCALE) + 1
        revoked = Event("revoked", T3, "Posted once the account is back.", ["sky"],
                        summary="Revoked")
        setup.write_plan(events + [later, revoked])
        wait_for(lambda: setup.channel()["paused"], 40, "channel sky paused after the refresh "
                 "failed", 0.2)
        assert "credentials" in (setup.channel()["pause_reason"] or ""), setup.channel()
        revoked_pid = post_id("plan", "revoked", "sky")
        assert setup.states()[revoked_pid] == "pending", setup.states()
        assert len(records(pds, did)) == 6
        assert d.stop() == 0, "calpost run did not exit cleanly:\n" + d.log()[-3000:]

        # 4. A new app password, and the state database wiped: every post due within `grace` is
        # published again. The record keys are the same, so the PDS keeps one copy of each.
        app2 = pds.xrpc("com.atproto.server.createAppPassword", {"name": "calpost-2"},
                        token=owner())
        setup.set_password(register_secret(app2["password"]))
        shutil.rmtree(os.path.join(folder, "state"))
        d2 = setup.start()
        setup.wait_sent(pids + [later_pid, revoked_pid], 90)
        recs = records(pds, did)
        assert len(recs) == 7, "after the resend: %d records (want 6 + 1): %s" % (len(recs),
                                                                                 list(recs))
        for uri, cid in first_round.items():
            assert uri in recs and recs[uri]["cid"] == cid, "record %s changed or vanished" % uri
        by_text(recs, revoked.text)
        assert d2.stop() == 0, "calpost run did not exit cleanly:\n" + d2.log()[-3000:]

        for dd in setup.daemons:
            log = dd.log()
            for mark in SANITIZER_MARKS:
                assert mark not in log, "sanitizer report in %s" % dd.log_path
            assert app["password"] not in log and app2["password"] not in log, \
                "the app password reached the log"
    finally:
        if setup:
            for dd in setup.daemons:
                if dd.proc.poll() is None:
                    dd.kill()
        pds.close()


def main():
    if not os.environ.get("CALPOST"):
        die("set CALPOST to the calpost binary (ctest does)")
    install_pds()
    folder = tempfile.mkdtemp(prefix="cp-bluesky-pds-")
    t = time.time()
    try:
        run(folder)
    except BaseException:  # noqa: B036 - reported with the logs, then the exit status says it
        traceback.print_exc()
        for name in sorted(os.listdir(folder)):
            if name.endswith(".log"):
                with open(os.path.join(folder, name), errors="replace") as f:
                    sys.stderr.write("--- %s (tail)\n%s\n" % (name, f.read()[-5000:]))
        sys.stderr.write("kept the files in %s\n" % folder)
        print("FAIL test_bluesky_pds (%.1f s)" % (time.time() - t))
        print("0 passed, 1 failed: test_bluesky_pds", flush=True)
        sys.exit(1)
    if KEEP:
        kept_dir(folder)  # for tests/secrets_sweep.py
    else:
        shutil.rmtree(folder, ignore_errors=True)
    print("PASS test_bluesky_pds (%.1f s)" % (time.time() - t))
    print("1 passed, 0 failed", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # ctest's timeout: clean up first
    main()
