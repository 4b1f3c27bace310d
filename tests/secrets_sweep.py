#!/usr/bin/python3
"""The secrets sweep (README "Security": tokens never appear in logs, errors, `calpost status` or
crash output). ctest runs it after every other test (tests/CMakeLists.txt):

    secrets_sweep.py --reset OUT          before the run: removes what the previous run kept
    secrets_sweep.py OUT --log LASTTEST   after it: fails if a test secret appears anywhere

Every test runs with CP_TEST_KEEP=1 and CP_TEST_OUTPUT=OUT/<test>, through
tests/support/keep_output.sh, which copies its output (stdout and stderr) to OUT/<test>/output.log.
The Python harness keeps its temporary folders (daemon logs, `calpost status` and other CLI output
in cli.log, state databases, outbox files) and lists them in OUT/<test>/kept-dirs.txt; the cmocka
connector tests' mock host writes what the daemon would log or store to OUT/<test>/mock-host.log.
The sweep greps all of it, SQLite databases also as an SQL dump, and ctest's log of the run so
far (Testing/Temporary/LastTest.log.tmp while ctest runs, which holds only what ctest flushed; it
becomes LastTest.log at the end), for every test secret, raw and JSON- or URL-escaped.

The secrets: tests/data/test-secrets.txt (the literals in the tests' sources; a literal that looks
like a secret in tests/*.py, *.c, *.sh or tests/support but is not listed fails the sweep, so a
new test cannot slip past), the secrets tests made at run time (daemon_harness.register_secret,
OUT/<test>/secrets.registered), and the content of every secret file that a kept config names
(token_file, secret_file, app_password_file ...).

Not swept, because a secret belongs there: the secret files themselves, the configs (*.ini), and
what the receivers recorded (the test servers' requests*.jsonl, the SMTP sink's events.jsonl and
messages, the test PDS's log and data): a token sent to its platform is not a leak."""

import argparse
import ast
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
LIST = os.path.join(HERE, "data", "test-secrets.txt")
READ_MAX = 64 << 20
RUNTIME_MIN = 8  # a secret found at run time shorter than this is too likely to match by chance

# Names of variables, macros and keys whose string value is a secret.
NAME_RE = re.compile(r"(?i)(token|secret|passw|pwd|api_?key|(^|_)(ck|cs|at|as|ts|pw|pass|auth|"
                     r"creds?|key)(_|$))")
# Config keys whose value is a secret (not the *_file / *_env that name where it is).
KEY_RE = re.compile(r"^[a-z_]*(token|secret|password|passwd|api_key)[a-z_]*$(?<!_file)"
                    r"(?<!_env)")
SECRET_FILE_KEY_RE = re.compile(r"(?i)^\s*([a-z_]*(token|secret|password|passwd|key)[a-z_]*_file)"
                                r"\s*=\s*(.+?)\s*$")
# Files where a secret belongs: inputs the tests wrote, and what the receivers recorded.
RECEIVER_RE = re.compile(r"(^requests.*\.jsonl$|^events\.jsonl$|\.eml$|^pds\.log$)")
RECEIVER_DIRS = ("pds-data", "appview-data")


# --- the list and the cross-check ---------------------------------------------------------------

def load_list(path=LIST):
    """(swept, not_swept): the listed secrets, and literals listed as not secret or too common."""
    swept, not_swept = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.startswith("not-swept: "):
                not_swept.append(line[len("not-swept: "):])
            else:
                swept.append(line)
    return swept, not_swept


def c_unescape(lit):
    """The bytes of a C string literal's body, as UTF-8 text."""
    out = bytearray()
    i = 0
    while i < len(lit):
        c = lit[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        n = lit[i + 1]
        if n == "x":
            m = re.match(r"[0-9a-fA-F]{1,2}", lit[i + 2:])
            out.append(int(m.group(0), 16))
            i += 2 + len(m.group(0))
        else:
            out += {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0"}.get(n, n.encode())
            i += 2
    return out.decode("utf-8", errors="replace")


C_LITS = r'((?:\s*"(?:[^"\\]|\\.)*")+)'


def c_literal(text):
    return "".join(c_unescape(m) for m in re.findall(r'"((?:[^"\\]|\\.)*)"', text))


def c_candidates(path, text):
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*#\s*define\s+(\w+)" + C_LITS + r"\s*(/\*.*|//.*)?$", line)
        if not m:
            m = re.match(r"\s*(?:static\s+)?(?:const\s+)?char\s*(?:const\s*)?\*?\s*(\w+)"
                         r"\s*(?:\[\])?\s*=" + C_LITS + r"\s*;", line)
        if m and NAME_RE.search(m.group(1)):
            out.append((no, c_literal(m.group(2))))
        for m in re.finditer(r'setenv\(\s*"(\w+)"\s*,' + C_LITS, line):
            if NAME_RE.search(m.group(1)):
                out.append((no, c_literal(m.group(2))))
        for m in re.finditer(r'fputs\(\s*"((?:[^"\\]|\\.)*)\\n"\s*,', line):
            if "\\n" not in m.group(1) and "\\r" not in m.group(1):
                out.append((no, c_unescape(m.group(1))))
        for m in re.finditer(r'(?<!setenv\()"(\w+)"\s*,' + C_LITS, line):
            if KEY_RE.match(m.group(1)):
                out.append((no, c_literal(m.group(2))))
    return out


def py_candidates(path, text):
    out = []
    tree = ast.parse(text, path)

    def lit(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return None

    def name_of(t):
        if isinstance(t, ast.Name):
            return t.id
        if isinstance(t, ast.Attribute):
            return t.attr
        if isinstance(t, ast.Subscript):
            return lit(t.slice)
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and lit(node.value) is not None:
            for t in node.targets:
                n = name_of(t)
                if n and NAME_RE.search(n):
                    out.append((node.lineno, lit(node.value)))
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if k is not None and lit(k) and KEY_RE.match(lit(k)) and lit(v) is not None:
                    out.append((node.lineno, lit(v)))
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "write" and len(node.args) == 1:
                s = lit(node.args[0])
                if s and s.endswith("\n") and not re.search(r"[\r\n]", s[:-1]):
                    out.append((node.lineno, s[:-1]))
            for kw in node.keywords:
                if kw.arg and KEY_RE.match(kw.arg) and lit(kw.value) is not None:
                    out.append((node.lineno, lit(kw.value)))
    return out


def sh_candidates(path, text):
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*(?:export\s+)?(\w+)=(['\"])(.*?)\2\s*$", line)
        if m and NAME_RE.search(m.group(1)):
            out.append((no, m.group(3)))
    return out


def test_sources(root):
    names = []
    for folder in (root, os.path.join(root, "support")):
        for n in sorted(os.listdir(folder)):
            p = os.path.join(folder, n)
            if os.path.isfile(p) and re.search(r"\.(py|c|h|sh)$", n) and n != "secrets_sweep.py":
                names.append(p)
    return names


def cross_check(root, listed):
    """Literals in the tests' sources that look like secrets and are not in the list."""
    missing = []
    for path in test_sources(root):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if path.endswith(".py"):
            cands = py_candidates(path, text)
        elif path.endswith(".sh"):
            cands = sh_candidates(path, text)
        else:
            cands = c_candidates(path, text)
        for no, value in cands:
            value = value.strip()
            if value and value not in listed:
                missing.append("%s:%d: %r" % (os.path.relpath(path, os.path.dirname(root)), no,
                                              value))
    return missing


# --- what the tests kept ----------------------------------------------------------------------

def read_lines(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def kept_roots(out):
    """(test name, folder) for every test's output folder and every folder it kept."""
    roots = []
    for test in sorted(os.listdir(out)):
        d = os.path.join(out, test)
        if not os.path.isdir(d):
            continue
        roots.append((test, d))
        for k in read_lines(os.path.join(d, "kept-dirs.txt")):
            if os.path.isdir(k):
                roots.append((test, k))
    return roots


def walk(folder):
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in filenames:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                yield p


def harvest_secret_files(roots):
    """{secret file path: its secret} for every *_file key in a kept config naming a secret."""
    found = {}
    for _, root in roots:
        for p in walk(root):
            if not p.endswith(".ini"):
                continue
            for line in read_lines(p):
                m = SECRET_FILE_KEY_RE.match(line)
                if not m:
                    continue
                f = os.path.join(os.path.dirname(p), m.group(3))
                try:
                    with open(f, encoding="utf-8", errors="replace") as fh:
                        value = fh.readline().strip()
                except OSError:
                    continue
                if value:
                    found[os.path.realpath(f)] = value
    return found


def variants(secret):
    v = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
         urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    return [x.encode("utf-8") for x in v if x]


def sqlite_dump(path):
    """The database as SQL text, read from a copy (with its WAL, so the kept files stay as
    they are); None if it cannot be read."""
    tmp = tempfile.mkdtemp(prefix="cp-sweep-")
    try:
        copy = os.path.join(tmp, "db")
        shutil.copyfile(path, copy)
        for ext in ("-wal", "-journal"):
            if os.path.exists(path + ext):
                shutil.copyfile(path + ext, copy + ext)
        con = sqlite3.connect(copy)
        try:
            return "\n".join(con.iterdump())
        finally:
            con.close()
    except (sqlite3.Error, OSError):
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def skip_reason(path, secret_files, secrets):
    base = os.path.basename(path)
    if base in ("secrets.registered", "kept-dirs.txt", "failed-dirs.txt"):
        return "the sweep's own lists"
    if os.path.realpath(path) in secret_files:
        return "a secret file"
    if base.endswith(".ini"):
        return "a config the test wrote"
    if RECEIVER_RE.search(base) or any(part in RECEIVER_DIRS for part in path.split(os.sep)):
        return "what a receiver recorded"
    try:
        if os.path.getsize(path) < 4096:
            with open(path, "rb") as f:
                if f.read().strip() in {s.encode() for s in secrets}:
                    return "a secret file"
    except OSError:
        pass
    return None


def find(data, secrets):
    """[(secret, context)] for every secret in data (bytes)."""
    hits = []
    for s in secrets:
        for v in variants(s):
            i = data.find(v)
            if i >= 0:
                ctx = data[max(0, i - 80):i + len(v) + 80].decode("utf-8", errors="replace")
                hits.append((s, ctx.replace("\n", "\\n")))
                break
    return hits


def sweep(out, log, root):
    swept, not_swept = load_list()
    failures = []
    missing = cross_check(root, set(swept) | set(not_swept))
    for m in missing:
        failures.append("%s looks like a secret but is not in tests/data/test-secrets.txt "
                        "(list it, or list it as `not-swept: ` if it is none)" % m)
    if not os.path.isdir(out):
        os.makedirs(out)
    roots = kept_roots(out)
    secret_files = harvest_secret_files(roots)
    runtime = set()
    for test, d in roots:
        runtime.update(read_lines(os.path.join(d, "secrets.registered")))
    runtime.update(secret_files.values())
    runtime = {s for s in runtime if len(s) >= RUNTIME_MIN}
    secrets = sorted(set(swept) | runtime - set(not_swept))

    files, skipped, dbs, outputs = 0, 0, 0, 0
    seen = set()
    for test, r in roots:
        for p in walk(r):
            real = os.path.realpath(p)
            if real in seen:
                continue
            seen.add(real)
            if skip_reason(p, secret_files, secrets):
                skipped += 1
                continue
            try:
                with open(p, "rb") as f:
                    data = f.read(READ_MAX)
            except OSError:
                continue
            files += 1
            outputs += os.path.basename(p) == "output.log"
            for s, ctx in find(data, secrets):
                failures.append("[%s] %s contains the secret %r: ...%s..." % (test, p, s, ctx))
            if data.startswith(b"SQLite format 3\0"):
                dump = sqlite_dump(p)
                if dump is None:
                    failures.append("[%s] %s: cannot read the database" % (test, p))
                    continue
                dbs += 1
                for s, ctx in find(dump.encode(), secrets):
                    failures.append("[%s] %s (SQL dump) contains the secret %r: ...%s..." % (
                        test, p, s, ctx))
    log_bytes = 0
    if log and os.path.exists(log + ".tmp"):
        log += ".tmp"  # ctest writes this run's log there; LastTest.log is still the last run's
    if log:
        try:
            with open(log, "rb") as f:
                data = f.read()
        except OSError as e:
            failures.append("cannot read the tests' output %s: %s" % (log, e))
            data = b""
        log_bytes = len(data)
        for s, ctx in find(data, secrets):
            failures.append("the tests' output %s contains the secret %r: ...%s..." % (log, s, ctx))
    tests = len({t for t, _ in roots})
    print("secrets sweep: %d secrets (%d listed, %d found at run time) in %d files of %d tests "
          "(%d test outputs; %d SQLite databases also dumped) and %d bytes of ctest's log; %d "
          "files not swept (secret files, configs, what receivers recorded)" % (
              len(secrets), len(swept), len(runtime), files, tests, outputs, dbs, log_bytes,
              skipped))
    if files == 0:
        failures.append("nothing to sweep in %s: the sweep runs after the other tests (ctest)"
                        % out)
    for f in failures:
        print("FAIL: " + f)
    if failures:
        print("%d failure(s); every kept folder stays for a look" % len(failures))
        return 1
    # Nothing leaked: only the folders of failed tests are worth keeping.
    failed = set()
    for test, d in roots:
        failed.update(read_lines(os.path.join(d, "failed-dirs.txt")))
    removed = remove_kept(out, keep=failed)
    print("PASS (removed %d kept temporary folders of passed tests)" % removed)
    return 0


def remove_kept(out, keep=()):
    """Removes the temporary cp-* folders that out's tests kept, except those in keep; returns
    how many."""
    tmp = os.path.realpath(tempfile.gettempdir())
    n = 0
    for test in os.listdir(out) if os.path.isdir(out) else []:
        for k in read_lines(os.path.join(out, test, "kept-dirs.txt")):
            real = os.path.realpath(k)
            if (k not in keep and os.path.dirname(real) == tmp and
                    os.path.basename(real).startswith("cp-") and os.path.isdir(real)):
                shutil.rmtree(real, ignore_errors=True)
                n += 1
    return n


def reset(out):
    """Removes the folders the previous run kept (only temporary cp-* folders) and out."""
    remove_kept(out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    print("reset %s" % out)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="the folder of the tests' kept output (build/test-output)")
    ap.add_argument("--reset", action="store_true", help="empty it before a run")
    ap.add_argument("--log", help="ctest's Testing/Temporary/LastTest.log")
    a = ap.parse_args()
    if a.reset:
        return reset(a.out)
    return sweep(a.out, a.log, HERE)


if __name__ == "__main__":
    sys.exit(main())
