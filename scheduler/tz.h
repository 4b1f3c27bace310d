/* Time zones for the plan engine: TZID lookup (tzdata first, then an embedded VTIMEZONE,
 * then repaired and Windows names through CLDR), and RFC 5545 3.3.5 local-to-UTC resolution. */
#ifndef CALPOST_TZ_H
#define CALPOST_TZ_H

#include <stdbool.h>
#include <stdint.h>

#include <libical/ical.h>

/* Days since 1970-01-01 of a proleptic Gregorian date. */
int64_t cp_tz_days_from_civil(int y, int m, int d);
/* Inverse of cp_tz_days_from_civil. */
void cp_tz_civil_from_days(int64_t days, int *y, int *m, int *d);

/* "Wall seconds": a local date-time counted as if it were UTC (days*86400 + h*3600 + ...). */
int64_t cp_tz_wall_from_ical(struct icaltimetype t);
struct icaltimetype cp_tz_ical_from_wall(int64_t wall, bool is_date);

/* UTC offset (seconds east) in zone z at the UTC instant utc. z == NULL means UTC. */
int cp_tz_offset_at(icaltimezone *z, int64_t utc);

/* Resolves a wall time in zone z to a UTC instant following RFC 5545 3.3.5: a time that occurs
 * twice (a repeated hour) is the first occurrence; a time in a gap is interpreted with the UTC
 * offset before the gap. z == NULL means UTC. If gap is not NULL, it is set when wall fell into a
 * gap. */
int64_t cp_tz_resolve(icaltimezone *z, int64_t wall, bool *gap);

/* A zone usable by the plan engine. */
struct cp_tz {
  icaltimezone *zone; /* NULL for UTC; borrowed (libical builtin or owned by a cp_tzset) */
  const char *name;   /* IANA name, "UTC", or a custom VTIMEZONE's TZID */
};

/* The zones one calendar file defines (its VTIMEZONEs), plus a cache of lookups. */
struct cp_tzset;

struct cp_tzset *cp_tzset_new(void);
void cp_tzset_free(struct cp_tzset *set);
/* Takes ownership of vtimezone (a parsed VTIMEZONE component) and adds it under its TZID.
 * Returns 0, or CP_EPARSE if it has no TZID (vtimezone is then freed). */
int cp_tzset_add_vtimezone(struct cp_tzset *set, icalcomponent *vtimezone);

/* Finds the zone for a TZID as found in a file: system tzdata for an IANA name (even if the file
 * embeds a VTIMEZONE for it, since exporters embed truncated rules), else the file's VTIMEZONE,
 * else a repaired name (quotes, spaces and a trailing ':' stripped, a '/prefix/' removed, a
 * trailing " 1" removed), else the CLDR Windows zone map. Returns 0 and fills *out, or CP_ETZ.
 * set may be NULL. */
int cp_tz_lookup(struct cp_tzset *set, const char *tzid, struct cp_tz *out);

/* Maps a Windows zone name ("W. Europe Standard Time") to an IANA name using CLDR's
 * windowsZones.xml (territory 001). Returns a static string or NULL. */
const char *cp_tz_windows_to_iana(const char *windows_name);

/* The zone of the machine: $TZ if it names an IANA zone, else /etc/timezone or the
 * /etc/localtime link, else "UTC". Returns a static string. */
const char *cp_tz_system_name(void);

#endif
