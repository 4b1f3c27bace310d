#!/usr/bin/python3
"""`calpost channels`: lists the built-in connectors with their capabilities, then each configured
channel: authenticated after a dry login (that posts nothing), login refused for a revoked token,
config error for a missing secret; exit 1 unless every channel is ready. Uses the Mastodon
connector against tests/support/testserver.py on 127.0.0.1.
Environment: CALPOST (the binary), CP_TEST_DATA (tests/data).
"""
# ctest-labels: integration
# ctest-connector: mastodon
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "support"))
from daemon_harness import TestServer  # noqa: E402

CALPOST = os.environ.get("CALPOST", os.path.join(HERE, "..", "build", "calpost"))
TOKEN = "tok-5ecret-do-not-print"


def channels(cfg):
    p = subprocess.run([CALPOST, "channels", "-c", cfg], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout + p.stderr


def row(out, name):
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == name:
            return line
    return ""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        ts = TestServer(tmp)
        try:
            token = os.path.join(tmp, "token")
            with open(token, "w") as fh:
                fh.write(TOKEN + "\n")
            os.chmod(token, 0o600)
            cfg = os.path.join(tmp, "calpost.ini")
            with open(cfg, "w") as fh:
                fh.write(f"[calpost]\nstate_dir = {tmp}/state\n\n"
                         f"[calendar plan]\nsource = {tmp}/plan.ics\nchannels = files\n\n"
                         f"[channel toots]\ntype = mastodon\ninstance = {ts.base}\n"
                         f"token_file = {token}\n\n"
                         f"[channel files]\ntype = outbox\ndir = {tmp}/outbox\n")
            ok_answers = [
                {"path": "/api/v2/instance", "repeat": True,
                 "json": {"configuration": {"statuses": {"max_characters": 500,
                                                         "characters_reserved_per_url": 23}}}},
                {"path": "/api/v1/accounts/verify_credentials",
                 "json": {"id": "1", "acct": "editor", "username": "editor"}},
            ]
            ts.script(ok_answers, reset=True)
            status, out = channels(cfg)
            assert status == 0, out
            for name, caps in (("mastodon", "idempotent media threads"), ("outbox", "idempotent")):
                line = row(out, name)
                assert line and caps in line, "connector %s with %s not listed:\n%s" % (
                    name, caps, out)
            assert "authenticated" in row(out, "toots"), out
            assert "ready" in row(out, "files"), out
            reqs = ts.requests()
            assert [r["method"] for r in reqs if "statuses" in r["path"]] == [], \
                "the login check posted something: %s" % reqs
            creds = [r for r in reqs if r["path"] == "/api/v1/accounts/verify_credentials"]
            assert len(creds) == 1, reqs
            auth = [v for k, v in creds[0]["headers"] if k.lower() == "authorization"]
            assert auth == ["Bearer " + TOKEN], creds[0]["headers"]

            # A revoked token: login refused, exit 1, and the token is not printed.
            ts.script([ok_answers[0],
                       {"path": "/api/v1/accounts/verify_credentials", "status": 401,
                        "json": {"error": "The access token was revoked"}}], reset=True)
            status, out = channels(cfg)
            assert status == 1, out
            assert "login refused" in row(out, "toots") and "revoked" in out, out
            assert TOKEN not in out, out

            # A missing token file: the channel is not set up, and the error names the key.
            os.unlink(token)
            status, out = channels(cfg)
            assert status == 1, out
            assert "config error" in row(out, "toots"), out
            assert "token" in out and TOKEN not in out, out

            # --no-login contacts nobody.
            with open(token, "w") as fh:
                fh.write(TOKEN + "\n")
            os.chmod(token, 0o600)
            ts.script([], reset=True)
            p = subprocess.run([CALPOST, "channels", "-c", cfg, "--no-login"],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 0 and "ready" in row(p.stdout, "toots"), p.stdout + p.stderr
            assert ts.requests() == [], ts.requests()
        finally:
            ts.close()
    print("ok   calpost channels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
