#!/usr/bin/python3
# ctest-labels: integration
"""Secrets in what `calpost` prints (README "Security"): a daemon whose channels hold a webhook
signing key and a Mastodon token, and whose control listener has a bearer token, meets receivers
that echo those secrets back in their errors. Then `calpost status` (text and JSON), `calpost
channels` and `calpost check` run against it, and the daemon is crashed twice while it holds the
secrets: SIGABRT, and SIGSEGV (in the sanitizer build the sanitizer prints its crash report).
None of that output may contain a secret. tests/secrets_sweep.py greps the same files again,
with everything else the suite kept.

    /usr/bin/python3 tests/test_secrets_output.py          (CALPOST=build/calpost)"""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))
from daemon_harness import Daemon, Event, next_second, run_tests, wait_for  # noqa: E402

HOOK_KEY = "SENTINEL-status-hook-key-8d41e0"
MASTODON_TOKEN = "SENTINEL-status-mastodon-tok-27bc5"
CONTROL_TOKEN = "SENTINEL-status-control-tok-0f9a3c61d7e2"
SECRETS = (HOOK_KEY, MASTODON_TOKEN, CONTROL_TOKEN)


def secret_file(env, name, value):
    path = os.path.join(env.dir, name)
    with open(path, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)


def leaks(what, text):
    """[message] naming what shows which secret; [] if none does."""
    leaked = [s for s in SECRETS if s in text]
    return ["%s shows the secret(s) %s:\n%s" % (what, leaked, text[-3000:])] if leaked else []


def secrets_env(ctx):
    env = ctx.env(channels={"a": {"secret_file": "hook.key"},
                            "m": {"type": "mastodon", "instance": "PLACEHOLDER",
                                  "token_file": "masto.token"}},
                  settings={"grace": "1m"},
                  extra="[control]\nlisten = 127.0.0.1:0\ntoken_file = control.token\n")
    env.channels["m"]["instance"] = env.server.base
    env.write_config()
    secret_file(env, "hook.key", HOOK_KEY)
    secret_file(env, "masto.token", MASTODON_TOKEN)
    secret_file(env, "control.token", CONTROL_TOKEN)
    T = next_second(1.5)
    far = T + 3600
    env.write_plan([Event("a1", T, "rejected on a", ["a"]), Event("m1", T, "rejected on m", ["m"]),
                    Event("a2", far, "later on a", ["a"]), Event("m2", far, "later on m", ["m"])])
    # Careless receivers quote the credentials they rejected.
    env.server.script([
        {"path": "/a", "status": 400,
         "json": {"error": "bad signature: expected HMAC with key %s" % HOOK_KEY}},
        {"path": "/api/v1/statuses", "status": 401,
         "json": {"error": "The access token %s is invalid" % MASTODON_TOKEN}}],
        default={"status": 401, "json": {"error": "token %s revoked" % MASTODON_TOKEN}})
    return env


def crash(env, sig, n):
    """A daemon of its own (not in env.daemons: a sanitizer's crash report is expected here) that
    receives sig once it runs; returns (exit status, its output)."""
    d = Daemon(env, n)
    try:
        d.wait_running(30)
        d.signal(sig)
        rc = d.wait_exit(30)
    finally:
        if d.proc.poll() is None:
            d.kill()
    return rc, d.log()


def test_status_channels_and_crash_output_show_no_secret(ctx):
    env = secrets_env(ctx)
    d = env.start()
    wait_for(lambda: env.state(env.pid("a1", "a")) == "failed", 20, "a1 failed with the echo")
    wait_for(lambda: env.channel_status("m")["paused"], 20, "channel m paused after the 401")

    found = []
    _, text, err = env.cli("status")
    found += leaks("calpost status", text + err)
    assert "paused" in text, text
    _, js, err = env.cli("status", "--json")
    found += leaks("calpost status --json", js + err)
    assert "bad signature" in js and "***" in js, "the echoed errors are not in the status:\n" + js
    rc, out, err = env.cli("channels", check=False)
    found += leaks("calpost channels", out + err)
    assert rc == 1, "calpost channels exited %d with a rejected token:\n%s%s" % (rc, out, err)
    _, out, err = env.cli("check", check=False)
    found += leaks("calpost check", out + err)
    found += leaks("the daemon log", d.log())
    assert "***" in d.log(), "the echoed secrets were not logged redacted:\n" + d.log()[-3000:]

    # Crash output: a daemon that holds the secrets, killed by SIGABRT, then by SIGSEGV.
    d.stop()
    for n, sig in ((100, signal.SIGABRT), (101, signal.SIGSEGV)):
        rc, log = crash(env, sig, n)
        assert rc != 0, "calpost run exited 0 after %s" % sig.name
        found += leaks("the output of a daemon killed by %s" % sig.name, log)
    assert not found, "\n\n".join(found)

if __name__ == "__main__":
    run_tests([v for k, v in sorted(globals().items()) if k.startswith("test_")])
