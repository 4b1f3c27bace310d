#!/usr/bin/python3
"""Runs `calpost check --now 2024-03-01T00:00:00Z FILE` on every tests/data/check/*.ics and checks
the output against NAME.check:
  "exit: N"                         the exit status (1 if any error, else 0)
  "LINES: SEVERITY: PHRASES"        a diagnostic for this file with that severity, on one of LINES,
                                    whose message contains one of PHRASES (case-insensitive).
                                    LINES is "12", "4|9" (the VEVENT or the property line) or "*"
                                    (a whole-file problem, any line); PHRASES is "a|b".
  "not LINES: SEVERITY: PHRASES"    no such diagnostic (the boundary case next to a failing one).
  "none"                            no diagnostics at all.
Also: the whole directory in one run, and a file over max_file_size (generated, with -c).
Environment: CALPOST (the binary), CP_TEST_DATA (tests/data).
"""
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("CP_TEST_DATA", os.path.join(HERE, "data"))
CALPOST = os.environ.get("CALPOST", os.path.join(HERE, "..", "build", "calpost"))
CHECK = os.path.join(DATA, "check")
NOW = "2024-03-01T00:00:00Z"
DIAG_RE = re.compile(r"^(.+?):(?:(\d+):)? (error|warning): (.*)$")

failures = []


def fail(name, msg):
    failures.append((name, msg))
    print(f"FAIL {name}: {msg}")


def run_check(args):
    try:
        p = subprocess.run([CALPOST, "check"] + args, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None, [], "timed out after 120 s"
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    if "Sanitizer" in out or "runtime error:" in out:
        return None, [], "sanitizer report: " + out[-2000:]
    diags = []
    for line in out.splitlines():
        m = DIAG_RE.match(line)
        if m:
            diags.append((os.path.basename(m.group(1)), int(m.group(2) or 0), m.group(3), m.group(4)))
    return p.returncode, diags, out


def parse_check(path):
    exp = {"exit": None, "want": [], "not": [], "none": False}
    for n, line in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("exit:"):
            exp["exit"] = int(line[5:])
        elif line == "none":
            exp["none"] = True
        else:
            neg = line.startswith("not ")
            m = re.match(r"^(?:not )?([0-9|*]+): (error|warning): (.+)$", line)
            if not m:
                raise ValueError(f"{path}:{n}: cannot parse {line!r}")
            lines = None if m.group(1) == "*" else {int(x) for x in m.group(1).split("|") if x != "*"}
            if "*" in m.group(1).split("|"):
                lines = None
            phrases = [p.strip().lower() for p in m.group(3).split("|")]
            exp["not" if neg else "want"].append((lines, m.group(2), phrases, line))
    if exp["exit"] is None:
        raise ValueError(f"{path}: no 'exit:' line")
    return exp


def matches(diag, fname, lines, sev, phrases):
    f, ln, s, msg = diag
    return (f == fname and s == sev and (lines is None or ln in lines)
            and any(p in msg.lower() for p in phrases))


def verify(name, fname, exp, status, diags, out, check_exit=True):
    mine = [d for d in diags if d[0] == fname]
    for lines, sev, phrases, text in exp["want"]:
        if not any(matches(d, fname, lines, sev, phrases) for d in mine):
            fail(name, f"missing '{text}'")
    for lines, sev, phrases, text in exp["not"]:
        bad = [d for d in mine if matches(d, fname, lines, sev, phrases)]
        if bad:
            fail(name, f"unexpected {bad[0]} (expectation '{text}')")
    if exp["none"] and mine:
        fail(name, f"expected no diagnostics, got {mine}")
    if check_exit and status != exp["exit"]:
        fail(name, f"exit status {status}, expected {exp['exit']}")


def check_with_channels():
    """With a config, check sets up each channel and runs its connector's validate on every post:
    a missing secret, an over-long toot (the connector's count), an invalid option value and a
    misspelt option are reported with the plan file and line; a clean plan passes. Needs the
    mastodon connector (built by default)."""
    name = "check -c (connectors validate)"
    n = len(failures)
    with tempfile.TemporaryDirectory() as tmp:
        token = os.path.join(tmp, "token")
        with open(token, "w") as fh:
            fh.write("secret-token-123\n")
        os.chmod(token, 0o600)
        plan = os.path.join(tmp, "plan.ics")
        long_text = "word " * 120  # 600 characters: over Mastodon's 500
        ev = lambda uid, start, desc: (
            f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20240220T000000Z\r\n"
            f"DTSTART:{start}\r\nSUMMARY:{uid}\r\nDESCRIPTION:{desc}\r\nEND:VEVENT\r\n")
        with open(plan, "w") as fh:
            fh.write("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calpost tests//ch//EN\r\n")
            fh.write(ev("ok", "20240305T090000Z", "Fine toot https://example.org"))      # line 4
            fh.write(ev("long", "20240306T090000Z", long_text))                           # line 11
            fh.write(ev("lang", "20240307T090000Z", "Hallo\\n\\n[calpost]\\nlanguage = xx"))  # 18
            fh.write(ev("typo", "20240308T090000Z", "Hi\\n\\n[calpost]\\nvisibilty = unlisted"))  # 25
            fh.write(ev("threaded", "20240309T090000Z", long_text + "\\n\\n[calpost]\\nthread = yes"))
            fh.write("END:VCALENDAR\r\n")
        def config(token_key):
            cfg = os.path.join(tmp, "calpost.ini")
            with open(cfg, "w") as fh:
                fh.write(f"[calpost]\ntimezone = UTC\nstate_dir = {tmp}/state\n\n"
                         f"[calendar c]\nsource = {plan}\nchannels = toots\n\n"
                         f"[channel toots]\ntype = mastodon\ninstance = https://mastodon.example\n"
                         f"{token_key}\n")
            return cfg
        status, diags, out = run_check(["-c", config(f"token_file = {token}"), "--now", NOW])
        def has(line, sev, phrase):
            return any(d[0] == "plan.ics" and d[1] == line and d[2] == sev and phrase in d[3].lower()
                       for d in diags)
        if status != 1:
            fail(name, f"exit {status}, expected 1:\n{out[-1500:]}")
        if not has(11, "error", "[toots]") or not has(11, "error", "500"):
            fail(name, f"no connector error for the 600-character toot on line 11:\n{out[-1500:]}")
        if not has(18, "error", "language"):
            fail(name, f"no error for language = xx on line 18:\n{out[-1500:]}")
        if not has(25, "warning", "visibilty"):
            fail(name, f"no warning for the misspelt setting on line 25:\n{out[-1500:]}")
        if any(d[1] in (4, 32) for d in diags if d[0] == "plan.ics"):
            fail(name, f"a finding for a valid post (line 4) or a thread (line 32):\n{out[-1500:]}")
        if "secret-token-123" in out:
            fail(name, "the token appears in the output")
        # A missing token file: the channel is not set up, and check says so before due time.
        status, diags, out = run_check(["-c", config(f"token_file = {tmp}/nope"), "--now", NOW])
        if status != 1 or "nope" not in out or "toots" not in out:
            fail(name, f"a missing token file is not an error naming it:\n{out[-1500:]}")
    if len(failures) == n:
        print(f"ok   {name}")


def main():
    if not os.access(CALPOST, os.X_OK):
        print(f"calpost binary not found: {CALPOST}")
        return 1
    files = sorted(f for f in os.listdir(CHECK) if f.endswith(".ics"))
    exps = {}
    for f in files:
        cpath = os.path.join(CHECK, f[:-4] + ".check")
        if not os.path.exists(cpath):
            fail(f, "no .check file")
            continue
        exps[f] = parse_check(cpath)
        n = len(failures)
        status, diags, out = run_check(["--now", NOW, os.path.join(CHECK, f)])
        if status is None:
            fail(f, out)
            continue
        if status < 0 or status > 1:
            fail(f, f"exit status {status} (crash?); output:\n{out[-1500:]}")
        verify(f, f, exps[f], status, diags, out)
        if len(failures) == n:
            print(f"ok   {f}")
        else:
            print("     calpost said:\n" + "\n".join("       " + l for l in out.splitlines()[:20]))

    # The whole directory at once: every file's findings, exit 1 (some files have errors).
    status, diags, out = run_check(["--now", NOW, CHECK])
    n = len(failures)
    if status != 1:
        fail("check DIR", f"exit status {status}, expected 1")
    for f, exp in exps.items():
        verify(f"check DIR ({f})", f, dict(exp, none=False), status, diags, out, check_exit=False)
    if len(failures) == n:
        print("ok   check DIR")

    # A file over max_file_size: a valid 1.5 MB plan with [calpost] max_file_size = 1M is refused;
    # the same file with a 4M limit passes.
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "big.ics")
        with open(big, "w", encoding="utf-8") as fh:
            fh.write("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calpost tests//big//EN\r\n")
            i = 0
            while fh.tell() < 1536 * 1024:
                fh.write(f"BEGIN:VEVENT\r\nUID:big-{i}@example.org\r\nDTSTAMP:20240220T000000Z\r\n"
                         f"DTSTART:2024{4 + i % 8:02d}{1 + i % 28:02d}T{8 + i % 10:02d}{i % 60:02d}00Z\r\n"
                         f"SUMMARY:Post {i}\r\nDESCRIPTION:" + "Filler text for a big plan. " * 8 +
                         "\r\nEND:VEVENT\r\n")
                i += 1
            fh.write("END:VCALENDAR\r\n")
        for limit, want_big in (("1M", True), ("4M", False)):
            cfg = os.path.join(tmp, f"calpost-{limit}.ini")
            with open(cfg, "w") as fh:
                fh.write(f"[calpost]\ntimezone = UTC\nmax_file_size = {limit}\n\n"
                         f"[calendar big]\nsource = {big}\nchannels = outbox\n\n"
                         f"[channel outbox]\ntype = outbox\ndir = {tmp}/outbox\n")
            status, diags, out = run_check(["-c", cfg, "--now", NOW])
            name = f"max_file_size = {limit}"
            hit = [d for d in diags if d[0] == "big.ics" and d[2] == "error" and "too large" in d[3].lower()]
            n = len(failures)
            if want_big and (not hit or status != 1):
                fail(name, f"expected a 'too large' error and exit 1, got exit {status}:\n{out[-800:]}")
            if not want_big and (hit or status != 0):
                fail(name, f"expected no 'too large' and exit 0, got exit {status}:\n{out[-800:]}")
            if len(failures) == n:
                print(f"ok   {name}")

    check_with_channels()
    print(f"\n{len(files)} check files, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
