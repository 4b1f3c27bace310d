#!/usr/bin/python3
# ctest-labels: integration;valgrind
# ctest-normal-build-only
"""The daemon's integration tests once more, with every `calpost` process (the daemon and the
short-lived `calpost status`, `pause`, `confirm`... calls) run under valgrind's memcheck. Passes
only when every test passed and no process reported an error: an invalid read or write, a jump
on an uninitialised value, an invalid free, or a definitely lost block at exit.

    /usr/bin/python3 tests/test_valgrind_daemon.py          (CALPOST=build/calpost)

$CALPOST is replaced by a wrapper script that runs
`valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite ... calpost "$@"`
with one log per process. memcheck is 20-50 times slower, so timeouts are scaled
(CP_TEST_TIMEOUT_SCALE, default 10 here), the default grace is two minutes (CP_TEST_GRACE: a post
that fell due while the daemon was starting is late, not missed), and only the test cases listed
in CASES run: those whose assertions are about what happened, not how quickly or before what
(the timing tests stay with the normal run). A listed case that no longer exists fails this
test, so a rename is noticed.

Daemons still running when their test ends are stopped with SIGTERM (CP_TEST_STOP_AT_CLOSE), so
memcheck reports their leaks. Logs of processes killed with SIGKILL (the crash test does that on
purpose, and a daemon that does not stop) end without memcheck's summary: they are still read
for the errors reported before the kill, and counted, but no leak verdict is possible for them.
A process that ended any other way must have written "ERROR SUMMARY: 0 errors". Only in the
normal build: valgrind cannot run an ASan binary.

$CP_VALGRIND_CASES ("file.py:test_a,test_b file2.py:test_c") replaces CASES, for a quick run."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "support"))
from daemon_harness import KEEP, kept_dir  # noqa: E402
CALPOST = os.environ.get("CALPOST") or os.path.join(SRC, "build", "calpost")
VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"
SCALE = os.environ.get("CP_VALGRIND_TIMEOUT_SCALE", "10")

# The daemon's paths that integration tests reach without assertions on timing: outcomes (2xx,
# 400, a reset), plan edits and held changes with `calpost confirm`, a second instance,
# SIGTERM with a request in flight, secret files; the crash test (SIGKILL at random moments, then
# recovery); fault injection (resets, huge, malformed and garbage answers, redirects, refused
# connections); the control listener on TCP (bearer token, dashboard session, config mistakes,
# IPv6). Left out: cases that assert how soon something happens or that the daemon is ready
# before a due time only seconds away (under valgrind a start takes seconds).
CASES = {
    "test_daemon.py": [
        "test_utm_parameters_on_links_of_listed_domains",
        "test_connection_reset_is_retried",
        "test_400_fails_at_once_with_the_server_message",
        "test_plan_edit_adds_an_event",
        "test_plan_replaced_by_an_html_page_is_held",
        "test_truncated_plan_is_held",
        "test_mass_cancellation_is_held_until_confirm",
        "test_second_instance_refuses_to_start",
        "test_sigterm_waits_for_the_request_in_flight",
        "test_secret_never_in_the_log_or_the_database",
        "test_secret_file_readable_by_others_is_refused",
    ],
    "test_daemon_crash.py": [
        "test_outbox_burst_survives_sigkill",
    ],
    "test_daemon_faults.py": [
        "test_reset_after_the_request_is_resent_with_the_same_key",
        "test_huge_answers_over_the_response_cap",
        "test_malformed_json_answers",
        "test_garbage_and_truncated_answers",
        "test_redirects_are_not_followed_and_fail_the_post",
        "test_connection_refused_is_retried_then_failed_after_max_attempts",
    ],
    "test_control_tcp.py": [
        "test_tcp_needs_the_token_unix_socket_does_not",
        "test_dashboard_session_cookie_reads_but_cannot_act",
        "test_config_mistakes_are_refused_with_file_line_and_key",
        "test_ipv6_loopback_and_a_port_in_use",
    ],
}

WRAPPER = """#!/bin/sh
# calpost under valgrind's memcheck, one log per process (written by test_valgrind_daemon.py).
exec {valgrind} --tool=memcheck --error-exitcode=97 --leak-check=full \\
  --errors-for-leak-kinds=definite --show-leak-kinds=definite --track-fds=no \\
  --num-callers=30 --log-file={logs}/vg.%p.log {calpost} "$@"
"""


def cases():
    spec = os.environ.get("CP_VALGRIND_CASES")
    if not spec:
        return CASES
    out = {}
    for part in spec.split():
        f, _, names = part.partition(":")
        out[f] = [n for n in names.split(",") if n]
    return out


def read_logs(folder):
    """(complete, killed, reports): logs with memcheck's final summary, logs cut short by a kill,
    and (log, excerpt) for every error memcheck reported."""
    complete, killed, reports = [], [], []
    for name in sorted(os.listdir(folder)):
        if not name.startswith("vg."):
            continue
        path = os.path.join(folder, name)
        with open(path, errors="replace") as f:
            text = f.read()
        m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
        (complete if m else killed).append(path)
        if m and m.group(1) != "0":
            reports.append((path, text))
            continue
        # Errors are written when they happen: a killed process shows those it met before.
        if not m and re.search(r"^==\d+== (Invalid |Conditional jump|Use of uninitialised|"
                               r"Syscall param|Mismatched free|Source and destination overlap)",
                               text, re.M):
            reports.append((path, text))
    return complete, killed, reports


def main():
    if not os.access(VALGRIND, os.X_OK):
        print("FAIL: valgrind is not installed (Debian package valgrind)")
        return 1
    keep = tempfile.mkdtemp(prefix="cp-valgrind-")
    logs = os.path.join(keep, "logs")
    os.mkdir(logs)
    wrapper = os.path.join(keep, "calpost")
    with open(wrapper, "w") as f:
        f.write(WRAPPER.format(valgrind=VALGRIND, logs=logs, calpost=CALPOST))
    os.chmod(wrapper, 0o755)
    env = dict(os.environ, CALPOST=wrapper, CP_TEST_TIMEOUT_SCALE=SCALE, CP_TEST_GRACE="120s",
               CP_TEST_STOP_AT_CLOSE="1",
               CP_TEST_JOBS=os.environ.get("CP_VALGRIND_JOBS", "2"))
    failed = []
    for script, names in cases().items():
        t0 = time.time()
        p = subprocess.run(["/usr/bin/python3", os.path.join(HERE, script)] + names, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print("== %s under valgrind (%.0f s, exit %d)\n%s" % (script, time.time() - t0,
                                                             p.returncode, p.stdout), flush=True)
        passed = set(re.findall(r"^PASS (\S+)", p.stdout, re.M))
        missing = [n for n in names if n not in passed]
        if p.returncode != 0 or missing:
            failed.append("%s: did not pass: %s" % (script, ", ".join(missing) or "(see above)"))
    complete, killed, reports = read_logs(logs)
    print("memcheck: %d processes ran to their end, %d were killed (SIGKILL, no leak verdict), "
          "%d reported errors" % (len(complete), len(killed), len(reports)), flush=True)
    for path, text in reports:
        print("--- %s\n%s" % (path, text[-8000:]))
    if not complete:
        failed.append("no calpost process ran under valgrind to its end")
    if reports:
        failed.append("memcheck reported errors in %d process(es)" % len(reports))
    if failed:
        kept_dir(keep, failed=True)
        print("FAIL: " + "; ".join(failed) + " (logs kept in %s)" % keep)
        return 1
    if KEEP:
        kept_dir(keep)
        print("logs kept in %s" % keep)
    else:
        shutil.rmtree(keep, ignore_errors=True)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
