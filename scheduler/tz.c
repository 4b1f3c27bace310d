#include "tz.h"

#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "calpost/err.h"

/* Howard Hinnant's days_from_civil: exact for the proleptic Gregorian calendar. */
int64_t cp_tz_days_from_civil(int y, int m, int d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + (unsigned)d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

void cp_tz_civil_from_days(int64_t z, int *y, int *m, int *d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = (unsigned)(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t yy = (int64_t)yoe + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = (int)(yy + (*m <= 2));
}

int64_t cp_tz_wall_from_ical(struct icaltimetype t) {
  int64_t days = cp_tz_days_from_civil(t.year, t.month, t.day);
  if (t.is_date)
    return days * 86400;
  return days * 86400 + t.hour * 3600 + t.minute * 60 + t.second;
}

struct icaltimetype cp_tz_ical_from_wall(int64_t wall, bool is_date) {
  struct icaltimetype t = icaltime_null_time();
  int64_t days = wall >= 0 ? wall / 86400 : -((-wall + 86399) / 86400);
  int64_t secs = wall - days * 86400;
  cp_tz_civil_from_days(days, &t.year, &t.month, &t.day);
  t.is_date = is_date;
  if (!is_date) {
    t.hour = (int)(secs / 3600);
    t.minute = (int)(secs / 60 % 60);
    t.second = (int)(secs % 60);
  }
  return t;
}

static int raw_offset_at(icaltimezone *z, int64_t utc) {
  struct icaltimetype t = cp_tz_ical_from_wall(utc, false);
  t.zone = icaltimezone_get_utc_timezone();
  int is_daylight = 0;
  return icaltimezone_get_utc_offset_of_utc_time(z, &t, &is_daylight);
}

/* libical's offset lookup costs microseconds; a plan asks millions of times. Each zone gets a
 * table of its transitions over the years in use, found by sampling every 6 hours and bisecting
 * to the second (two transitions within 6 hours would be missed; no zone has them since 1900). */
struct zone_table {
  icaltimezone *zone;
  int64_t from, to; /* covered UTC range */
  int64_t *at;      /* at[i]: start of segment i */
  int *off;         /* off[i]: offset during segment i */
  size_t n;
};

#define TZ_TABLES 64
#define TZ_STEP (6 * 3600)
static struct zone_table tables[TZ_TABLES];
static size_t n_tables;
static pthread_mutex_t tables_mu = PTHREAD_MUTEX_INITIALIZER;

static int table_build(struct zone_table *t, int64_t from, int64_t to) {
  size_t cap = 16, n = 0;
  int64_t *at = malloc(cap * sizeof *at);
  int *off = malloc(cap * sizeof *off);
  if (!at || !off)
    goto fail;
  int prev = raw_offset_at(t->zone, from);
  at[n] = from;
  off[n++] = prev;
  for (int64_t u = from + TZ_STEP; u <= to; u += TZ_STEP) {
    int o = raw_offset_at(t->zone, u);
    if (o == prev)
      continue;
    int64_t lo = u - TZ_STEP, hi = u;
    while (hi - lo > 1) {
      int64_t mid = lo + (hi - lo) / 2;
      if (raw_offset_at(t->zone, mid) == prev)
        lo = mid;
      else
        hi = mid;
    }
    if (n == cap) {
      cap *= 2;
      int64_t *na = realloc(at, cap * sizeof *na);
      if (na)
        at = na;
      int *no = realloc(off, cap * sizeof *no);
      if (no)
        off = no;
      if (!na || !no)
        goto fail;
    }
    at[n] = hi;
    off[n++] = o;
    prev = o;
  }
  free(t->at);
  free(t->off);
  t->at = at;
  t->off = off;
  t->n = n;
  t->from = from;
  t->to = to;
  return 0;
fail:
  free(at);
  free(off);
  return CP_ENOMEM;
}

/* Years 1900..2200 are tabled on demand, two years around each first use; others go to libical. */
static bool table_offset(icaltimezone *z, int64_t utc, int *out) {
  static const int64_t lo_limit = -2208988800LL, hi_limit = 7258118400LL;
  if (utc < lo_limit || utc >= hi_limit)
    return false;
  pthread_mutex_lock(&tables_mu);
  struct zone_table *t = NULL;
  for (size_t i = 0; i < n_tables && !t; i++)
    if (tables[i].zone == z)
      t = &tables[i];
  if (!t && n_tables < TZ_TABLES) {
    t = &tables[n_tables++];
    memset(t, 0, sizeof *t);
    t->zone = z;
  }
  bool ok = t != NULL;
  if (ok && (!t->n || utc < t->from || utc >= t->to)) {
    int64_t from = t->n && t->from < utc ? t->from : utc - 2 * 366 * 86400LL;
    int64_t to = t->n && t->to > utc ? t->to : utc + 2 * 366 * 86400LL;
    from -= from % 86400;
    ok = table_build(t, from, to) == 0;
  }
  if (ok) {
    size_t lo = 0, hi = t->n; /* the last segment starting at or before utc */
    while (hi - lo > 1) {
      size_t mid = (lo + hi) / 2;
      if (t->at[mid] <= utc)
        lo = mid;
      else
        hi = mid;
    }
    *out = t->off[lo];
  }
  pthread_mutex_unlock(&tables_mu);
  return ok;
}

/* Drops the table of a zone that is about to be freed. */
static void table_forget(icaltimezone *z) {
  pthread_mutex_lock(&tables_mu);
  for (size_t i = 0; i < n_tables; i++)
    if (tables[i].zone == z) {
      free(tables[i].at);
      free(tables[i].off);
      tables[i] = tables[--n_tables];
      break;
    }
  pthread_mutex_unlock(&tables_mu);
}

int cp_tz_offset_at(icaltimezone *z, int64_t utc) {
  if (!z)
    return 0;
  int off;
  if (table_offset(z, utc, &off))
    return off;
  return raw_offset_at(z, utc);
}

int64_t cp_tz_resolve(icaltimezone *z, int64_t wall, bool *gap) {
  if (gap)
    *gap = false;
  if (!z)
    return wall;
  /* The offsets in force a day before and a day after bracket any single transition. */
  int before = cp_tz_offset_at(z, wall - 86400);
  int after = cp_tz_offset_at(z, wall + 86400);
  if (before == after)
    return wall - before;
  int64_t u1 = wall - before, u2 = wall - after;
  bool ok1 = cp_tz_offset_at(z, u1) == before;
  bool ok2 = cp_tz_offset_at(z, u2) == after;
  if (ok1 && ok2)
    return u1 < u2 ? u1 : u2; /* repeated hour: the first occurrence */
  if (ok1)
    return u1;
  if (ok2)
    return u2;
  if (gap)
    *gap = true;
  return wall - before; /* in a gap: the offset before the gap */
}

/* ---- zone sets ---- */

struct tz_entry {
  char *tzid;
  icaltimezone *zone; /* owned when from a VTIMEZONE */
  bool owned;
  const char *name; /* for cached lookups: the resolved name */
  int err;          /* cached failure */
};

struct cp_tzset {
  struct tz_entry *v; /* embedded VTIMEZONEs */
  size_t n, cap;
  struct tz_entry *cache; /* lookups by raw TZID */
  size_t n_cache, cap_cache;
};

struct cp_tzset *cp_tzset_new(void) {
  return calloc(1, sizeof(struct cp_tzset));
}

void cp_tzset_free(struct cp_tzset *set) {
  if (!set)
    return;
  for (size_t i = 0; i < set->n; i++) {
    free(set->v[i].tzid);
    if (set->v[i].owned) {
      table_forget(set->v[i].zone);
      icaltimezone_free(set->v[i].zone, 1);
    }
  }
  for (size_t i = 0; i < set->n_cache; i++)
    free(set->cache[i].tzid);
  free(set->v);
  free(set->cache);
  free(set);
}

static int push_entry(struct tz_entry **v, size_t *n, size_t *cap, struct tz_entry e) {
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 8;
    struct tz_entry *nv = realloc(*v, nc * sizeof *nv);
    if (!nv)
      return CP_ENOMEM;
    *v = nv;
    *cap = nc;
  }
  (*v)[(*n)++] = e;
  return 0;
}

int cp_tzset_add_vtimezone(struct cp_tzset *set, icalcomponent *vtz) {
  icalproperty *p = icalcomponent_get_first_property(vtz, ICAL_TZID_PROPERTY);
  const char *tzid = p ? icalproperty_get_tzid(p) : NULL;
  if (!tzid || !*tzid) {
    icalcomponent_free(vtz);
    return CP_EPARSE;
  }
  char *copy = strdup(tzid);
  icaltimezone *z = icaltimezone_new();
  if (!copy || !z || !icaltimezone_set_component(z, vtz)) {
    free(copy);
    if (z)
      icaltimezone_free(z, 1);
    icalcomponent_free(vtz);
    return copy && z ? CP_EPARSE : CP_ENOMEM;
  }
  struct tz_entry e = {.tzid = copy, .zone = z, .owned = true};
  int rc = push_entry(&set->v, &set->n, &set->cap, e);
  if (rc < 0) {
    free(copy);
    icaltimezone_free(z, 1);
  }
  return rc;
}

/* TZIDs go into a file path inside libical (zoneinfo dir + name): only plain IANA-like names. */
static bool safe_iana_name(const char *s) {
  if (!*s || *s == '/' || strstr(s, "..") || strlen(s) > 64)
    return false;
  for (const char *p = s; *p; p++)
    if (!isalnum((unsigned char)*p) && !strchr("_+-/", *p))
      return false;
  return true;
}

static icaltimezone *tzdata_zone(const char *name) {
  if (!strcmp(name, "UTC") || !strcmp(name, "Etc/UTC") || !strcmp(name, "Z") ||
      !strcmp(name, "GMT") || !strcmp(name, "Etc/GMT"))
    return icaltimezone_get_utc_timezone();
  if (!safe_iana_name(name))
    return NULL;
  return icaltimezone_get_builtin_timezone(name);
}

/* Zone names handed out live for the whole process: libical's own location strings can be
 * freed when a builtin zone loads lazily (ICS-NOTES 2e), so keep our own copies. */
static const char *intern(const char *name) {
  static char **names;
  static size_t n, cap;
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  const char *found = NULL;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < n && !found; i++)
    if (!strcmp(names[i], name))
      found = names[i];
  if (!found) {
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 32;
      char **nv = realloc(names, nc * sizeof *nv);
      if (nv) {
        names = nv;
        cap = nc;
      }
    }
    char *copy = n < cap ? strdup(name) : NULL;
    if (copy)
      names[n++] = copy;
    found = copy ? copy : "UTC";
  }
  pthread_mutex_unlock(&mu);
  return found;
}

static int from_tzdata(const char *name, struct cp_tz *out) {
  icaltimezone *z = tzdata_zone(name);
  if (!z)
    return CP_ETZ;
  if (z == icaltimezone_get_utc_timezone()) {
    out->zone = NULL;
    out->name = "UTC";
  } else {
    out->zone = z;
    out->name = intern(name);
  }
  return 0;
}

static int lookup_uncached(struct cp_tzset *set, const char *raw, struct cp_tz *out) {
  if (from_tzdata(raw, out) == 0)
    return 0;
  /* Windows names: CLDR maps them to tzdata, which is more exact than Exchange's rules. */
  const char *win = cp_tz_windows_to_iana(raw);
  if (win && from_tzdata(win, out) == 0)
    return 0;
  if (set)
    for (size_t i = 0; i < set->n; i++)
      if (!strcmp(set->v[i].tzid, raw)) {
        out->zone = set->v[i].zone;
        out->name = set->v[i].tzid;
        return 0;
      }
  /* Repairs: quotes, surrounding spaces, a trailing ':' and a trailing " 1". */
  char buf[256];
  size_t len = strlen(raw);
  if (len >= sizeof buf)
    return CP_ETZ;
  const char *s = raw;
  while (*s == ' ' || *s == '"')
    s++;
  snprintf(buf, sizeof buf, "%s", s);
  len = strlen(buf);
  while (len && (buf[len - 1] == ' ' || buf[len - 1] == '"' || buf[len - 1] == ':'))
    buf[--len] = 0;
  if (len > 2 && !strcmp(buf + len - 2, " 1"))
    buf[len -= 2] = 0;
  if (strcmp(buf, raw)) {
    if (from_tzdata(buf, out) == 0)
      return 0;
    if (set)
      for (size_t i = 0; i < set->n; i++)
        if (!strcmp(set->v[i].tzid, buf)) {
          out->zone = set->v[i].zone;
          out->name = set->v[i].tzid;
          return 0;
        }
  }
  /* '/prefix/America/New_York' forms: try each suffix after a '/'. */
  for (const char *p = strchr(buf, '/'); p; p = strchr(p + 1, '/'))
    if (p[1] && from_tzdata(p + 1, out) == 0)
      return 0;
  const char *iana = cp_tz_windows_to_iana(buf);
  if (iana && from_tzdata(iana, out) == 0)
    return 0;
  return CP_ETZ;
}

int cp_tz_lookup(struct cp_tzset *set, const char *tzid, struct cp_tz *out) {
  if (!tzid)
    return CP_ETZ;
  if (set)
    for (size_t i = 0; i < set->n_cache; i++)
      if (!strcmp(set->cache[i].tzid, tzid)) {
        if (set->cache[i].err)
          return set->cache[i].err;
        out->zone = set->cache[i].zone;
        out->name = set->cache[i].name;
        return 0;
      }
  int rc = lookup_uncached(set, tzid, out);
  if (set) {
    struct tz_entry e = {.tzid = strdup(tzid), .err = rc};
    if (rc == 0) {
      e.zone = out->zone;
      e.name = out->name;
    }
    if (e.tzid && push_entry(&set->cache, &set->n_cache, &set->cap_cache, e) < 0)
      free(e.tzid);
  }
  return rc;
}

/* ---- CLDR Windows zone map ---- */

struct win_map {
  char **other; /* Windows names */
  char **type;  /* first IANA name of territory 001 */
  size_t n;
};

static struct win_map win_map;
static pthread_once_t win_once = PTHREAD_ONCE_INIT;

static void load_windows_map(void) {
  const char *path = getenv("CALPOST_WINDOWS_ZONES");
  if (!path)
    path = CALPOST_CLDR_WINDOWS_ZONES;
  xmlDocPtr doc =
      xmlReadFile(path, NULL, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc)
    return;
  size_t cap = 0;
  /* Walk the tree: every <mapZone other= territory="001" type=>. */
  xmlNodePtr stack[64];
  int sp = 0;
  stack[sp++] = xmlDocGetRootElement(doc);
  while (sp > 0) {
    xmlNodePtr n = stack[--sp];
    for (; n; n = n->next) {
      if (n->type != XML_ELEMENT_NODE)
        continue;
      if (!xmlStrcmp(n->name, (const xmlChar *)"mapZone")) {
        xmlChar *terr = xmlGetProp(n, (const xmlChar *)"territory");
        xmlChar *other = xmlGetProp(n, (const xmlChar *)"other");
        xmlChar *type = xmlGetProp(n, (const xmlChar *)"type");
        if (terr && other && type && !xmlStrcmp(terr, (const xmlChar *)"001")) {
          if (win_map.n == cap) {
            cap = cap ? cap * 2 : 256;
            char **no = realloc(win_map.other, cap * sizeof(char *));
            if (no)
              win_map.other = no;
            char **nt = realloc(win_map.type, cap * sizeof(char *));
            if (nt)
              win_map.type = nt;
            if (!no || !nt)
              cap = win_map.n;
          }
          if (win_map.n < cap) {
            const char *t = (const char *)type;
            size_t tl = strcspn(t, " ");
            win_map.other[win_map.n] = strdup((const char *)other);
            win_map.type[win_map.n] = strndup(t, tl);
            win_map.n++;
          }
        }
        xmlFree(terr);
        xmlFree(other);
        xmlFree(type);
      } else if (n->children && sp < 63) {
        stack[sp++] = n->children;
      }
    }
  }
  xmlFreeDoc(doc);
}

const char *cp_tz_windows_to_iana(const char *windows_name) {
  pthread_once(&win_once, load_windows_map);
  for (size_t i = 0; i < win_map.n; i++)
    if (win_map.other[i] && !strcasecmp(win_map.other[i], windows_name))
      return win_map.type[i];
  return NULL;
}

const char *cp_tz_system_name(void) {
  static char name[128];
  const char *tz = getenv("TZ");
  if (tz && *tz == ':')
    tz++;
  if (tz && *tz && safe_iana_name(tz) && tzdata_zone(tz)) {
    snprintf(name, sizeof name, "%s", tz);
    return name;
  }
  char link[PATH_MAX];
  ssize_t n = readlink("/etc/localtime", link, sizeof link - 1);
  if (n > 0) {
    link[n] = 0;
    const char *p = strstr(link, "zoneinfo/");
    if (p && tzdata_zone(p + 9)) {
      snprintf(name, sizeof name, "%s", p + 9);
      return name;
    }
  }
  return "UTC";
}
