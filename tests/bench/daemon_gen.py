#!/usr/bin/python3
"""Writes a plan and a config for the daemon benchmark (tests/bench/daemon_bench.sh) into DIR:
DIR/plan.ics (single VEVENTs in UTC, a text of a few hundred bytes each) and DIR/calpost.ini
(state in DIR/state, plan zone UTC). Deterministic for given arguments.

usage: daemon_gen.py DIR single  N FIRST_UNIX PORT        N posts due FIRST_UNIX + i seconds,
                                                           one webhook channel to the sink
       daemon_gen.py DIR burst   N DUE_UNIX PORT CHANNELS  N posts all due at DUE_UNIX, spread
                                                           evenly over CHANNELS webhook channels
       daemon_gen.py DIR pending N FROM_UNIX DAYS          N posts spread over DAYS days from
                                                           FROM_UNIX, one outbox channel
Webhook channels sign with the key in $CP_BENCH_KEY (as a real receiver would want)."""
import os
import random
import sys
from datetime import datetime, timezone

WORDS = ("release feature update community event webinar tips docs blog launch team news "
         "meetup video podcast survey roadmap security patch thanks contributors").split()


def fold(line):
    b = line.encode()
    if len(b) <= 75:
        return line
    out, cur = [], ""
    for ch in line:
        if len((cur + ch).encode()) > (75 if not out else 74):
            out.append(cur)
            cur = ""
        cur += ch
    out.append(cur)
    return "\r\n ".join(out)


def stamp(unix):
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def event(rnd, i, due, channel):
    body = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(30, 45))).capitalize() + "."
    desc = f"{body}\\nRead more: https://example.org/posts/{i}\\n\\n[calpost]\\ncampaign = bench"
    return ["BEGIN:VEVENT", f"UID:bench-{i}@calpost", "DTSTAMP:20240101T000000Z",
            f"DTSTART:{stamp(due)}", fold(f"SUMMARY:Post {i}: {rnd.choice(WORDS)}"),
            fold(f"DESCRIPTION:{desc}"), f"X-CALPOST-CHANNELS:{channel}", "END:VEVENT"]


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    d, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rnd = random.Random(42)
    os.makedirs(d, exist_ok=True)
    cal = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calpost bench//daemon_gen//EN"]
    chans = []
    if mode == "single":
        first, port = int(sys.argv[4]), int(sys.argv[5])
        chans.append(("hook", f"type = webhook\nurl = http://127.0.0.1:{port}/hook\n"
                              "secret_env = CP_BENCH_KEY\n"))
        for i in range(n):
            cal += event(rnd, i, first + i, "hook")
    elif mode == "burst":
        due, port, nch = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        for c in range(nch):
            chans.append((f"hook{c:03d}", f"type = webhook\nurl = http://127.0.0.1:{port}/hook/{c}\n"
                                          "secret_env = CP_BENCH_KEY\n"))
        for i in range(n):
            cal += event(rnd, i, due, f"hook{i % nch:03d}")
    elif mode == "pending":
        start, days = int(sys.argv[4]), float(sys.argv[5])
        chans.append(("drafts", f"type = outbox\ndir = {d}/outbox\n"))
        span = int(days * 86400)
        for i in range(n):
            cal += event(rnd, i, start + span * i // n, "drafts")
    else:
        sys.exit(__doc__)
    cal.append("END:VCALENDAR")
    with open(f"{d}/plan.ics", "w", newline="") as f:
        f.write("\r\n".join(cal) + "\r\n")
    with open(f"{d}/calpost.ini", "w") as f:
        f.write(f"[calpost]\nstate_dir = {d}/state\ntimezone = UTC\nmax_file_size = 256M\n\n"
                f"[calendar bench]\nsource = {d}/plan.ics\n\n")
        for name, body in chans:
            f.write(f"[channel {name}]\n{body}\n")


if __name__ == "__main__":
    main()
