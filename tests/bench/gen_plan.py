#!/usr/bin/python3
"""Writes a synthetic but realistic calpost plan: N events (20% recurring), Europe/Berlin with its
VTIMEZONE, SUMMARY, a DESCRIPTION of a few hundred bytes with a [channel] variant, 1-2 channels in
X-CALPOST-CHANNELS, EXDATEs on some series. Deterministic for a given seed.
usage: gen_plan.py N [SEED] > plan.ics"""
import random
import sys
from datetime import datetime, timedelta

VTIMEZONE = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
X-LIC-LOCATION:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE"""
WORDS = ("release feature update community event webinar tips docs blog launch team news "
         "meetup video podcast survey roadmap security patch thanks contributors").split()
CHANNELS = ["mastodon", "bluesky", "linkedin", "x", "telegram"]


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


def main():
    n = int(sys.argv[1])
    rnd = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 42)
    out = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calpost bench//gen_plan//EN",
           "X-WR-CALNAME:bench", "X-WR-TIMEZONE:Europe/Berlin"] + VTIMEZONE.split("\n")
    base = datetime(2024, 1, 1, 0, 0)
    for i in range(n):
        start = base + timedelta(days=rnd.randint(0, 330), hours=rnd.randint(7, 20),
                                 minutes=rnd.choice([0, 15, 30, 45]))
        chans = rnd.sample(CHANNELS, rnd.randint(1, 2))
        body = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(30, 45))).capitalize() + "."
        variant = " ".join(rnd.choice(WORDS) for _ in range(12)) + " #calpost"
        desc = (f"{body}\\nRead more: https://example.org/posts/{i}\\n\\n[{chans[0]}]\\n{variant}"
                f"\\n\\n[calpost]\\ncampaign = bench-{i % 17}")
        ev = ["BEGIN:VEVENT", f"UID:bench-{i}-{rnd.getrandbits(32):08x}@example.org",
              "DTSTAMP:20240101T000000Z", f"DTSTART;TZID=Europe/Berlin:{start:%Y%m%dT%H%M%S}",
              f"DTEND;TZID=Europe/Berlin:{start + timedelta(minutes=30):%Y%m%dT%H%M%S}"]
        if rnd.random() < 0.2:
            kind = rnd.random()
            if kind < 0.5:
                rule = "FREQ=WEEKLY;BYDAY=" + ",".join(rnd.sample(["MO", "TU", "WE", "TH", "FR"], rnd.randint(1, 2)))
            elif kind < 0.75:
                rule = f"FREQ=DAILY;INTERVAL={rnd.choice([1, 2, 3, 7])}"
            else:
                rule = "FREQ=MONTHLY;BYDAY=" + rnd.choice(["1", "2", "-1"]) + rnd.choice(["MO", "WE", "FR"])
            if rnd.random() < 0.4:
                rule += f";COUNT={rnd.randint(5, 60)}"
            ev.append("RRULE:" + rule)
            if "WEEKLY" in rule and "BYDAY" not in rule or rnd.random() < 0.3:
                for k in range(rnd.randint(1, 3)):
                    ex = start + timedelta(days=7 * rnd.randint(1, 20))
                    ev.append(f"EXDATE;TZID=Europe/Berlin:{ex:%Y%m%dT%H%M%S}")
        ev += [f"SUMMARY:{rnd.choice(WORDS).capitalize()} {rnd.choice(WORDS)} #{i}",
               fold("DESCRIPTION:" + desc), "X-CALPOST-CHANNELS:" + ",".join(chans), "END:VEVENT"]
        out += ev
    out.append("END:VCALENDAR")
    sys.stdout.write("\r\n".join(out) + "\r\n")


if __name__ == "__main__":
    main()
