#!/usr/bin/python3
"""Runs `calpost plan --format json` on every tests/data/plans/*.ics and compares the posts with the
hand-derived NAME.expected next to it; then checks that post ids are stable when a plan is
re-exported with its events reordered and its texts edited.

NAME.expected format (all expectations derived by hand from RFC 5545, never from a tool's output):
  line 1            "# --from … --days … --timezone …": the window, passed to calpost as is
  "# …"             comments ("# why: …" explains a tricky entry)
  DUE STATE UID OCCURRENCE CHANNEL
                    one post, in the order of the JSON (due, then calendar, uid, channel)
  "! SEVERITY PHRASE"
                    a diagnostic with that severity whose message contains PHRASE (case-insensitive);
                    each "!" line needs its own diagnostic. A file without "! error" lines must
                    produce no error diagnostics.
  "= UID OCCURRENCE CHANNEL FIELD OP VALUE"
                    a field of that post: OP "~" contains, "!~" does not contain, "==" equals.
                    FIELD is a JSON post key; media is compared as "src | alt" lines, booleans as
                    true/false.
Environment: CALPOST (the binary), CP_TEST_DATA (tests/data).
"""
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("CP_TEST_DATA", os.path.join(HERE, "data"))
CALPOST = os.environ.get("CALPOST", os.path.join(HERE, "..", "build", "calpost"))
PLANS = os.path.join(DATA, "plans")

DUE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ID_RE = re.compile(r"^[0-9a-f]{16}$")
POST_KEYS = ["id", "calendar", "uid", "occurrence", "channel", "due", "due_local", "tzid", "all_day",
             "state", "title", "text", "media", "thread", "file", "line"]

failures = []


def fail(name, msg):
    failures.append((name, msg))
    print(f"FAIL {name}: {msg}")


def parse_expected(path):
    """Returns (args, posts, diags, fields, lint_errors)."""
    lines = open(path, encoding="utf-8").read().splitlines()
    if not lines or not lines[0].startswith("# --"):
        return None, [], [], [], ["first line must be '# --from … --days … --timezone …'"]
    args = lines[0][1:].split()
    posts, diags, fields, lint = [], [], [], []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("! "):
            sev, _, phrase = line[2:].partition(" ")
            diags.append((sev, phrase.strip()))
        elif line.startswith("= "):
            m = re.match(r"^= (\S+) (\S+) (\S+) (\S+) (==|~|!~) (.*)$", line)
            if not m:
                lint.append(f"line {n}: bad field check")
                continue
            fields.append(m.groups())
        else:
            parts = line.split()
            if len(parts) != 5 or not DUE_RE.match(parts[0]):
                lint.append(f"line {n}: bad post line {line!r}")
                continue
            if parts[1] not in ("scheduled", "draft", "cancelled"):
                lint.append(f"line {n}: bad state {parts[1]!r}")
            posts.append(tuple(parts))
    keys = [(p[0], p[2], p[4]) for p in posts]
    if keys != sorted(keys):
        lint.append("post lines are not sorted by (due, uid, channel)")
    return args, posts, diags, fields, lint


def window(args):
    """The window [from, to) the expectation's arguments describe, as UTC datetimes."""
    opts = dict(zip(args[0::2], args[1::2]))
    zone = ZoneInfo(opts.get("--timezone", "UTC"))
    start = datetime.strptime(opts["--from"], "%Y-%m-%d").replace(tzinfo=zone)
    start = start.astimezone(timezone.utc)
    return start, start + timedelta(seconds=int(opts["--days"]) * 86400)


def zulu(dt):
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_plan(args, files):
    cmd = [CALPOST, "plan", "--format", "json"] + args + files
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None, "timed out after 120 s"
    err = p.stderr.decode("utf-8", "replace")
    if "Sanitizer" in err or "runtime error:" in err:
        return None, f"sanitizer report: {err[-2000:]}"
    if p.returncode != 0:
        return None, f"exit {p.returncode}; stderr: {err[-2000:]}"
    try:
        return json.loads(p.stdout.decode("utf-8")), None
    except (ValueError, UnicodeDecodeError) as e:
        err = p.stderr.decode("utf-8", "replace").strip()[-2000:]
        return None, f"exit {p.returncode}, no JSON on stdout ({e}); stderr: {err}"


def field_value(post, field):
    v = post.get(field)
    if field == "media":
        return "\n".join(f"{m.get('src')} | {m.get('alt')}" for m in (v or []))
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def check_structure(name, doc, args, path):
    ok = True
    start, end = window(args)
    opts = dict(zip(args[0::2], args[1::2]))
    if doc.get("calpost_plan") != 1:
        fail(name, f"calpost_plan is {doc.get('calpost_plan')!r}, expected 1")
        ok = False
    if doc.get("from") != zulu(start) or doc.get("to") != zulu(end):
        fail(name, f"window is [{doc.get('from')}, {doc.get('to')}), expected [{zulu(start)}, {zulu(end)})")
        ok = False
    if doc.get("timezone") != opts.get("--timezone", "UTC"):
        fail(name, f"timezone is {doc.get('timezone')!r}")
    posts = doc.get("posts")
    if not isinstance(posts, list) or not isinstance(doc.get("diagnostics"), list):
        fail(name, "posts/diagnostics missing")
        return False
    cal = os.path.basename(path)[:-4]
    ids = set()
    for p in posts:
        missing = [k for k in POST_KEYS if k not in p]
        if missing:
            fail(name, f"post {p.get('uid')} lacks {missing}")
            ok = False
            continue
        if p["calendar"] != cal:
            fail(name, f"calendar is {p['calendar']!r}, expected {cal!r}")
        if not ID_RE.match(p["id"]) or p["id"] in ids:
            fail(name, f"id {p['id']!r} malformed or not unique")
        ids.add(p["id"])
        if not DUE_RE.match(p["due"]):
            fail(name, f"due {p['due']!r} is not YYYY-MM-DDTHH:MM:SSZ")
            continue
        due = datetime.strptime(p["due"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        if not start <= due < end:
            fail(name, f"{p['uid']} due {p['due']} outside the window")
        try:
            local = datetime.fromisoformat(p["due_local"])
            if local.tzinfo is None or local != due:
                fail(name, f"{p['uid']} due_local {p['due_local']} is not the instant {p['due']}")
        except ValueError:
            fail(name, f"{p['uid']} due_local {p['due_local']!r} is not ISO 8601 with offset")
    order = [(p.get("due"), p.get("calendar"), p.get("uid"), p.get("channel")) for p in posts]
    if order != sorted(order):
        fail(name, "posts are not sorted by due, calendar, uid, channel")
    return ok


def check_file(path):
    name = os.path.basename(path)
    args, exp_posts, exp_diags, exp_fields, lint = parse_expected(path[:-4] + ".expected")
    for e in lint:
        fail(name, f"expectation file: {e}")
    if args is None:
        return None
    doc, err = run_plan(args, [path])
    if doc is None:
        fail(name, f"calpost plan: {err}")
        return None
    check_structure(name, doc, args, path)
    posts = doc.get("posts") or []
    got = [" ".join((p.get("due", "?"), p.get("state", "?"), p.get("uid", "?"),
                     p.get("occurrence", "?"), p.get("channel", "?"))) for p in posts]
    want = [" ".join(p) for p in exp_posts]
    if got != want:
        diff = "\n".join(difflib.unified_diff(want, got, "expected", "calpost", lineterm="", n=1))
        fail(name, "posts differ:\n" + diff)
    diags = list(doc.get("diagnostics") or [])
    for sev, phrase in exp_diags:
        hit = next((d for d in diags if d.get("severity") == sev
                    and phrase.lower() in str(d.get("message", "")).lower()), None)
        if hit is None:
            fail(name, f"no {sev} diagnostic containing {phrase!r}; got {json.dumps(diags)}")
        else:
            diags.remove(hit)
    if not any(sev == "error" for sev, _ in exp_diags):
        errs = [d for d in doc.get("diagnostics") or [] if d.get("severity") == "error"]
        if errs:
            fail(name, f"unexpected error diagnostics: {json.dumps(errs)}")
    by_key = {(p.get("uid"), p.get("occurrence"), p.get("channel")): p for p in posts}
    for uid, occ, chan, field, op, value in exp_fields:
        p = by_key.get((uid, occ, chan))
        if p is None:
            fail(name, f"field check: no post {uid} {occ} {chan}")
            continue
        v = field_value(p, field)
        good = {"==": v == value, "~": value in v, "!~": value not in v}[op]
        if not good:
            fail(name, f"{uid} {occ} {chan}: {field} {op} {value!r} is false; {field} = {v!r}")
    return args, doc


# --- stable ids --------------------------------------------------------------------------------

def unfold(text):
    return re.sub(r"\r?\n[ \t]", "", text).replace("\r\n", "\n").split("\n")


def reexport(path, out_path):
    """Writes the calendar at path to out_path with its VEVENTs in reverse order, SUMMARY and the
    start of DESCRIPTION edited, DTSTAMP/LAST-MODIFIED bumped: what a calendar app does when the
    plan is edited and exported again. Channels, times and recurrence stay the same."""
    lines = unfold(open(path, encoding="utf-8", newline="").read())
    head, events, tail, cur = [], [], [], None
    for line in lines:
        if line == "BEGIN:VEVENT":
            cur = [line]
        elif cur is not None:
            cur.append(line)
            if line == "END:VEVENT":
                events.append(cur)
                cur = None
        elif events:
            tail.append(line)
        else:
            head.append(line)
    edited = []
    for ev in reversed(events):
        new = []
        for line in ev:
            if line.startswith("SUMMARY"):
                line += " (edited)"
            elif line.startswith("DESCRIPTION"):
                k, _, v = line.partition(":")
                line = f"{k}:Edited. {v}"
            elif line.startswith(("DTSTAMP:", "LAST-MODIFIED:")):
                line = line.split(":")[0] + ":20240601T120000Z"
            new.append(line)
        edited.append(new)
    out = head + [l for ev in edited for l in ev] + tail
    with open(out_path, "w", encoding="utf-8", newline="") as f:
        f.write("\r\n".join(l for l in out if l) + "\r\n")


def check_stable_ids(name, args, doc, tmp):
    src = os.path.join(PLANS, name)
    key = lambda p: (p["uid"], p["occurrence"], p["channel"])
    before = {key(p): p for p in doc["posts"]}
    if not before:
        fail(name, "stable ids: the plan has no posts to compare")
        return
    same = os.path.join(tmp, "same")
    os.makedirs(same, exist_ok=True)
    if os.path.isdir(os.path.join(PLANS, "img")) and not os.path.exists(os.path.join(same, "img")):
        shutil.copytree(os.path.join(PLANS, "img"), os.path.join(same, "img"))
    reexport(src, os.path.join(same, name))
    doc2, err = run_plan(args, [os.path.join(same, name)])
    if doc2 is None:
        fail(name, f"stable ids: calpost plan on the re-export: {err}")
        return
    after = {key(p): p for p in doc2.get("posts", [])}
    if set(before) != set(after):
        fail(name, f"stable ids: re-export changed the post set: "
                   f"lost {sorted(set(before) - set(after))}, new {sorted(set(after) - set(before))}")
    changed = [k for k in before if k in after and before[k]["id"] != after[k]["id"]]
    if changed:
        fail(name, f"stable ids: {len(changed)} ids changed after reordering/editing, e.g. {changed[0]}")
    if not any(k in after and "(edited)" in after[k].get("title", "") for k in before):
        fail(name, "stable ids: the edit did not reach the posts, so the check proves nothing")
    # The id includes the calendar: the same events under another calendar name get other ids.
    other = os.path.join(tmp, "other")
    os.makedirs(other, exist_ok=True)
    shutil.copy(src, os.path.join(other, "renamed_" + name))
    doc3, err = run_plan(args, [os.path.join(other, "renamed_" + name)])
    if doc3 is None:
        fail(name, f"stable ids: calpost plan on the renamed copy: {err}")
        return
    clash = {p["id"] for p in doc3.get("posts", [])} & {p["id"] for p in doc["posts"]}
    if clash:
        fail(name, f"stable ids: {len(clash)} ids equal across calendars {name[:-4]!r} and 'renamed_…'")


def main():
    if not os.access(CALPOST, os.X_OK):
        print(f"calpost binary not found: {CALPOST}")
        return 1
    files = sorted(f for f in os.listdir(PLANS) if f.endswith(".ics"))
    results = {}
    for f in files:
        path = os.path.join(PLANS, f)
        if not os.path.exists(path[:-4] + ".expected"):
            fail(f, "no .expected file")
            continue
        n = len(failures)
        results[f] = check_file(path)
        if len(failures) == n:
            print(f"ok   {f}")
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("google_export.ics", "outlook_export.ics", "handwritten.ics", "moved_instance.ics",
                  "thisandfuture.ics", "count.ics"):
            if results.get(f):
                args, doc = results[f]
                check_stable_ids(f, args, doc, tempfile.mkdtemp(dir=tmp))
    print(f"\n{len(files)} plan files, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
