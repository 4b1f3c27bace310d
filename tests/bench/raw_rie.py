#!/usr/bin/python3
"""Baseline: python3-recurring-ical-events (Debian 2.0.1) over the same window.
usage: raw_rie.py FILE FROM_UTC DAYS   (FROM_UTC like 2024-02-29T23:00:00Z); prints the instance count."""
import sys
from datetime import datetime, timedelta, timezone

import icalendar
import recurring_ical_events

path, start, days = sys.argv[1], sys.argv[2], int(sys.argv[3])
a = datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
b = a + timedelta(days=days)
cal = icalendar.Calendar.from_ical(open(path, "rb").read())
print(len(recurring_ical_events.of(cal).between(a, b)))
