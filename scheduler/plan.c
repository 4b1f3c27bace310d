/* The plan engine. A file is split into its components by line (which gives line numbers and
 * keeps memory low: each VEVENT is parsed by libical on its own, copied into a compact struct and
 * freed), then events are grouped by UID and expanded by our own layer on top of
 * icalrecur_iterator, which fixes what libical 3.0.16 gets wrong (see ICS-NOTES). */
#include "plan.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libical/ical.h>
#include <openssl/evp.h>

#include "calpost/err.h"
#include "calpost/text.h"
#include "tz.h"

/* ---------------------------------------------------------------------------------------- */
/* Values and events                                                                        */

#define N_WANTED_MAX 17 /* see wanted[] */

/* A DATE or DATE-TIME value as written, with its zone resolved. */
struct when {
  int64_t wall; /* local wall seconds in its zone; midnight for a DATE */
  int64_t utc;  /* the instant (for a DATE: midnight in the zone, rarely needed) */
  icaltimezone *zone;
  const char *tzname;
  bool is_date;
  bool is_utc;
  bool floating;
};

enum ev_status { EV_NONE, EV_TENTATIVE, EV_CONFIRMED, EV_CANCELLED };

struct cal; /* a calendar: one config [calendar] or one file/folder on the command line */

struct ev {
  struct cal *cal;
  struct cp_tz home; /* the file's zone: X-WR-TIMEZONE or the plan zone (all-day, UTC display) */
  const char *file;
  int line;
  uint16_t lines[N_WANTED_MAX]; /* where each wanted property starts, from the event's line */
  int order;                    /* position in the calendar, for "last one wins" ties */
  char *uid;
  int seq;
  enum ev_status status;
  char *summary;
  char *description;
  char *altdesc; /* X-ALT-DESC;FMTTYPE=text/html */
  char **cats;
  size_t n_cats;
  char **xchannels; /* X-CALPOST-CHANNELS */
  size_t n_xchannels;
  bool has_xchannels;
  struct cp_media *attach;
  size_t n_attach;
  bool has_dtstart;
  struct when dtstart;
  bool has_rid;
  struct when rid;
  bool thisandfuture;
  char *rrule;
  struct when *rdates;
  size_t n_rdates;
  struct when *exdates;
  size_t n_exdates;
  bool bad;        /* an error makes this event produce no posts */
  bool superseded; /* a duplicate master or an older override */
  /* Derived text, computed on first use. */
  bool text_ready;
  bool draft;
  bool thread, numbered;
  char *title;
  const char *body; /* desc->body or title */
  struct cp_desc *desc;
  struct cp_media *media; /* desc media + ATTACH, paths resolved */
  size_t n_media;
  const char **channels; /* borrowed from cfg, desc or the event */
  size_t n_channels;
  /* check mode: posts in [now, now + horizon), and whether any came before now */
  size_t n_future;
};

struct cal {
  char *name;
  const struct cp_calendar_conf *conf;
  struct cp_tz zone; /* the plan zone, or X-WR-TIMEZONE of the last file that set it */
  struct ev **evs;
  size_t n_evs, cap_evs;
};

struct cp__plan_priv {
  struct cal **cals;
  size_t n_cals;
  struct cp_tzset **tzsets; /* one per file; zones live as long as the plan */
  size_t n_tzsets;
  char **bufs; /* file contents; chunks point into them */
  size_t n_bufs;
  char **strings; /* other owned strings (file names, occurrence ids) */
  size_t n_strings, cap_strings;
  size_t cap_posts, cap_diags;
  const struct cp_plan_opts *opts;
  struct cp_tz plan_zone;
  char *scratch;      /* NUL-terminated copy of the chunk being parsed */
  struct rec *recs;   /* the posts, n_posts of them */
  EVP_MD_CTX *md_ctx; /* post ids */
  EVP_MD *sha256;
  size_t scratch_cap;
};

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */

static const char *keep(struct cp_plan *plan, char *s) {
  struct cp__plan_priv *p = plan->priv;
  if (!s)
    return NULL;
  if (p->n_strings == p->cap_strings) {
    size_t nc = p->cap_strings ? p->cap_strings * 2 : 64;
    char **nv = realloc(p->strings, nc * sizeof *nv);
    if (!nv) {
      free(s);
      return NULL;
    }
    p->strings = nv;
    p->cap_strings = nc;
  }
  p->strings[p->n_strings++] = s;
  return s;
}

static void diag(struct cp_plan *plan, const char *file, int line, bool error, const char *fmt,
                 ...) {
  struct cp__plan_priv *p = plan->priv;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  for (size_t i = 0; i < plan->n_diags; i++) /* the same problem once */
    if (plan->diags[i].line == line && !strcmp(plan->diags[i].msg, msg) &&
        !strcmp(plan->diags[i].file, file))
      return;
  if (plan->n_diags == p->cap_diags) {
    size_t nc = p->cap_diags ? p->cap_diags * 2 : 16;
    struct cp_diag *nv = realloc(plan->diags, nc * sizeof *nv);
    if (!nv)
      return;
    plan->diags = nv;
    p->cap_diags = nc;
  }
  struct cp_diag *d = &plan->diags[plan->n_diags];
  d->file = strdup(file);
  d->msg = strdup(msg);
  d->line = line;
  d->error = error;
  if (!d->file || !d->msg) {
    free(d->file);
    free(d->msg);
    return;
  }
  plan->n_diags++;
  if (error && (strstr(msg, "was not read") || strstr(msg, "cannot read the")))
    plan->n_unread++;
  if (error)
    plan->n_errors++;
  else
    plan->n_warnings++;
}

static int wanted_index(const char *s, size_t n);

/* The line of the first property called name in the event (the event's line if none). */
static int prop_line(const struct ev *e, const char *name) {
  int w = wanted_index(name, strlen(name));
  if (w < 0 || e->lines[w] == UINT16_MAX)
    return e->line;
  return e->line + e->lines[w];
}

static char *xstrdup(const char *s) {
  return s ? strdup(s) : NULL;
}

static bool starts_with_ci(const char *s, const char *prefix) {
  return !strncasecmp(s, prefix, strlen(prefix));
}

static void trim_inplace(char *s) {
  size_t n = strlen(s);
  while (n && isspace((unsigned char)s[n - 1]))
    s[--n] = 0;
  size_t k = 0;
  while (s[k] && isspace((unsigned char)s[k]))
    k++;
  if (k)
    memmove(s, s + k, n - k + 1);
}

static int push_str(char ***v, size_t *n, const char *s) {
  char **nv = realloc(*v, (*n + 1) * sizeof *nv);
  if (!nv)
    return CP_ENOMEM;
  *v = nv;
  if (!(nv[*n] = strdup(s)))
    return CP_ENOMEM;
  (*n)++;
  return 0;
}

/* Splits a comma-separated list into lowercased, trimmed items appended to v. */
static int push_list(char ***v, size_t *n, const char *list) {
  char *copy = strdup(list);
  if (!copy)
    return CP_ENOMEM;
  int rc = 0;
  char *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
    trim_inplace(tok);
    for (char *c = tok; *c; c++)
      *c = (char)tolower((unsigned char)*c);
    if (*tok)
      rc = push_str(v, n, tok);
  }
  free(copy);
  return rc;
}

/* iCalendar TEXT unescaping for X- properties, whose values libical keeps raw. */
static char *unescape_text(const char *s) {
  char *out = malloc(strlen(s) + 1), *o = out;
  if (!out)
    return NULL;
  for (; *s; s++) {
    if (*s == '\\' && s[1]) {
      s++;
      *o++ = (*s == 'n' || *s == 'N') ? '\n' : *s;
    } else {
      *o++ = *s;
    }
  }
  *o = 0;
  return out;
}

/* ---------------------------------------------------------------------------------------- */
/* Reading values                                                                           */

struct file_ctx {
  struct cp_plan *plan;
  struct cal *cal;
  const char *file;
  struct cp_tzset *tzset;
  struct cp_tz floating; /* X-WR-TIMEZONE or the plan zone */
  bool has_wr_tz;
};

/* Fills w from t (as libical parsed it) and the property's TZID. Returns 0 or CP_ETZ (after a
 * diagnostic naming the property). */
static int read_when(struct file_ctx *fc, struct ev *e, icalproperty *prop, const char *pname,
                     struct icaltimetype t, struct when *w) {
  memset(w, 0, sizeof *w);
  w->is_date = t.is_date;
  w->wall = cp_tz_wall_from_ical(t);
  icalparameter *tzp = icalproperty_get_first_parameter(prop, ICAL_TZID_PARAMETER);
  const char *tzid = tzp ? icalparameter_get_tzid(tzp) : NULL;
  if (t.is_date) {
    w->zone = fc->floating.zone;
    w->tzname = fc->floating.name;
    w->floating = true;
    w->utc = cp_tz_resolve(w->zone, w->wall, NULL);
    return 0;
  }
  if (icaltime_is_utc(t)) {
    w->is_utc = true;
    w->utc = w->wall;
    w->zone = NULL;
    w->tzname = "UTC";
    return 0;
  }
  if (tzid) {
    struct cp_tz z;
    if (cp_tz_lookup(fc->tzset, tzid, &z) < 0) {
      diag(fc->plan, fc->file, prop_line(e, pname), true,
           "%s: unknown time zone '%s' in event \"%s\" (UID %s): add a VTIMEZONE or use an IANA "
           "name such as Europe/Berlin; the event is not planned",
           pname, tzid, e->summary ? e->summary : "", e->uid ? e->uid : "?");
      return CP_ETZ;
    }
    w->zone = z.zone;
    w->tzname = z.name;
  } else {
    w->zone = fc->floating.zone;
    w->tzname = fc->floating.name;
    w->floating = true;
  }
  w->utc = cp_tz_resolve(w->zone, w->wall, NULL);
  return 0;
}

static int add_when(struct when **v, size_t *n, const struct when *w) {
  struct when *nv = realloc(*v, (*n + 1) * sizeof *nv);
  if (!nv)
    return CP_ENOMEM;
  *v = nv;
  nv[(*n)++] = *w;
  return 0;
}

static bool media_like(icalproperty *p, const char *url) {
  icalparameter *fp = icalproperty_get_first_parameter(p, ICAL_FMTTYPE_PARAMETER);
  const char *fmt = fp ? icalparameter_get_fmttype(fp) : NULL;
  if (fmt)
    return starts_with_ci(fmt, "image/") || starts_with_ci(fmt, "video/");
  (void)url;
  return true;
}

static const char *x_param(icalproperty *p, const char *name) {
  for (icalparameter *q = icalproperty_get_first_parameter(p, ICAL_X_PARAMETER); q;
       q = icalproperty_get_next_parameter(p, ICAL_X_PARAMETER))
    if (!strcasecmp(icalparameter_get_xname(q), name))
      return icalparameter_get_xvalue(q);
  return NULL;
}

/* X-LIC-ERRORs that libical inserted: an error on a scheduling property means libical dropped
 * it, so the event would silently change; empty properties are noise. */
static void classify_lic_errors(struct file_ctx *fc, struct ev *e, icalcomponent *c) {
  static const char *const fatal[] = {"RRULE",         "RDATE", "EXDATE",   "DTSTART",
                                      "RECURRENCE-ID", "DTEND", "DURATION", NULL};
  char *msgs[16];
  size_t n = 0;
  for (icalproperty *p = icalcomponent_get_first_property(c, ICAL_XLICERROR_PROPERTY); p && n < 16;
       p = icalcomponent_get_next_property(c, ICAL_XLICERROR_PROPERTY))
    msgs[n++] = xstrdup(icalproperty_get_xlicerror(p));
  for (size_t i = 0; i < n; i++) {
    const char *m = msgs[i];
    if (!m || strstr(m, "No value for"))
      goto next;
    for (size_t k = 0; fatal[k]; k++) {
      char needle[32];
      snprintf(needle, sizeof needle, " %s ", fatal[k]);
      if (strstr(m, needle)) {
        const char *val = strstr(m, "property: ");
        diag(fc->plan, fc->file, prop_line(e, fatal[k]), true,
             "%s: cannot be parsed ('%s'); the event \"%s\" is not planned", fatal[k],
             val ? val + 10 : m, e->summary ? e->summary : "");
        e->bad = true;
        goto next;
      }
    }
    diag(fc->plan, fc->file, e->line, false, "event \"%s\": %s", e->summary ? e->summary : "", m);
  next:
    free(msgs[i]);
  }
}

/* Copies what the engine needs out of a parsed VEVENT. Returns 0 or CP_ENOMEM. */
static int extract_event(struct file_ctx *fc, struct ev *e, icalcomponent *c) {
  icalproperty *dtstart = NULL, *rid = NULL, *allday = NULL;
  icalproperty *props[4096];
  size_t n = 0;
  /* Collect first, act after: accessors reset the component's one property iterator. */
  for (icalproperty *p = icalcomponent_get_first_property(c, ICAL_ANY_PROPERTY); p && n < 4096;
       p = icalcomponent_get_next_property(c, ICAL_ANY_PROPERTY))
    props[n++] = p;
  /* Summary and UID first: diagnostics name the event. */
  for (size_t i = 0; i < n; i++) {
    icalproperty_kind k = icalproperty_isa(props[i]);
    if (k == ICAL_UID_PROPERTY && !e->uid)
      e->uid = xstrdup(icalproperty_get_uid(props[i]));
    else if (k == ICAL_SUMMARY_PROPERTY && !e->summary)
      e->summary = xstrdup(icalproperty_get_summary(props[i]));
  }
  for (size_t i = 0; i < n; i++) {
    icalproperty *p = props[i];
    switch (icalproperty_isa(p)) {
      case ICAL_SEQUENCE_PROPERTY:
        e->seq = icalproperty_get_sequence(p);
        break;
      case ICAL_STATUS_PROPERTY: {
        enum icalproperty_status s = icalproperty_get_status(p);
        e->status = s == ICAL_STATUS_CANCELLED   ? EV_CANCELLED
                    : s == ICAL_STATUS_TENTATIVE ? EV_TENTATIVE
                                                 : EV_CONFIRMED;
        break;
      }
      case ICAL_DESCRIPTION_PROPERTY:
        if (!e->description)
          e->description = xstrdup(icalproperty_get_description(p));
        break;
      case ICAL_CATEGORIES_PROPERTY: {
        const char *v = icalproperty_get_categories(p);
        if (v && push_list(&e->cats, &e->n_cats, v))
          return CP_ENOMEM;
        break;
      }
      case ICAL_DTSTART_PROPERTY:
        dtstart = p;
        break;
      case ICAL_RECURRENCEID_PROPERTY:
        rid = p;
        break;
      case ICAL_RRULE_PROPERTY:
        if (!e->rrule)
          e->rrule = icalproperty_get_value_as_string_r(p);
        else
          diag(fc->plan, fc->file, e->line, false,
               "event \"%s\" has more than one RRULE; only the first is used",
               e->summary ? e->summary : "");
        break;
      case ICAL_ATTACH_PROPERTY: {
        icalattach *a = icalproperty_get_attach(p);
        const char *url = a && icalattach_get_is_url(a) ? icalattach_get_url(a) : NULL;
        if (url && media_like(p, url)) {
          struct cp_media *nv = realloc(e->attach, (e->n_attach + 1) * sizeof *nv);
          if (!nv)
            return CP_ENOMEM;
          e->attach = nv;
          const char *alt = x_param(p, "X-CALPOST-ALT");
          if (!alt)
            alt = x_param(p, "X-ALT-TEXT");
          nv[e->n_attach].src = strdup(url);
          nv[e->n_attach].alt = xstrdup(alt);
          e->n_attach++;
        }
        break;
      }
      case ICAL_X_PROPERTY: {
        const char *name = icalproperty_get_x_name(p);
        const char *v = icalproperty_get_x(p);
        if (!name || !v)
          break;
        if (!strcasecmp(name, "X-ALT-DESC")) {
          icalparameter *fp = icalproperty_get_first_parameter(p, ICAL_FMTTYPE_PARAMETER);
          if (fp && !strcasecmp(icalparameter_get_fmttype(fp), "text/html") && !e->altdesc)
            e->altdesc = unescape_text(v);
        } else if (!strcasecmp(name, "X-CALPOST-CHANNELS")) {
          char *u = unescape_text(v);
          if (!u || push_list(&e->xchannels, &e->n_xchannels, u)) {
            free(u);
            return CP_ENOMEM;
          }
          free(u);
          e->has_xchannels = true;
        } else if (!strcasecmp(name, "X-MICROSOFT-CDO-ALLDAYEVENT") && !strcasecmp(v, "TRUE")) {
          allday = p;
        }
        break;
      }
      default:
        break;
    }
  }
  classify_lic_errors(fc, e, c);
  if (rid) {
    e->has_rid = true;
    if (read_when(fc, e, rid, "RECURRENCE-ID", icalproperty_get_recurrenceid(rid), &e->rid) < 0)
      e->bad = true;
    icalparameter *rp = icalproperty_get_first_parameter(rid, ICAL_RANGE_PARAMETER);
    e->thisandfuture = rp && icalparameter_get_range(rp) == ICAL_RANGE_THISANDFUTURE;
  }
  if (dtstart) {
    e->has_dtstart = true;
    if (read_when(fc, e, dtstart, "DTSTART", icalproperty_get_dtstart(dtstart), &e->dtstart) < 0)
      e->bad = true;
    /* Outlook's all-day marker on a midnight DATE-TIME. */
    if (allday && !e->dtstart.is_date && e->dtstart.wall % 86400 == 0 && !e->dtstart.is_utc) {
      e->dtstart.is_date = true;
      e->dtstart.floating = true;
      e->dtstart.zone = fc->floating.zone;
      e->dtstart.tzname = fc->floating.name;
    }
    /* Google: a UTC DTSTART of a recurring event keeps its wall-clock time in X-WR-TIMEZONE. */
    if (e->dtstart.is_utc && fc->has_wr_tz && e->rrule) {
      e->dtstart.zone = fc->floating.zone;
      e->dtstart.tzname = fc->floating.name;
      e->dtstart.is_utc = false;
      e->dtstart.wall = e->dtstart.utc + cp_tz_offset_at(e->dtstart.zone, e->dtstart.utc);
    }
  } else if (!e->has_rid) {
    diag(fc->plan, fc->file, e->line, true,
         "missing DTSTART in event \"%s\" (UID %s): the event has no date; add DTSTART",
         e->summary ? e->summary : "", e->uid ? e->uid : "?");
    e->bad = true;
  }
  /* EXDATE and RDATE: libical splits comma lists into one property per value. */
  for (size_t i = 0; i < n; i++) {
    icalproperty *p = props[i];
    icalproperty_kind k = icalproperty_isa(p);
    struct when w;
    if (k == ICAL_EXDATE_PROPERTY) {
      if (read_when(fc, e, p, "EXDATE", icalproperty_get_exdate(p), &w) < 0) {
        e->bad = true;
        continue;
      }
      if (add_when(&e->exdates, &e->n_exdates, &w))
        return CP_ENOMEM;
    } else if (k == ICAL_RDATE_PROPERTY) {
      struct icaldatetimeperiodtype dp = icalproperty_get_rdate(p);
      struct icaltimetype t = icaltime_is_null_time(dp.time) ? dp.period.start : dp.time;
      if (icaltime_is_null_time(t))
        continue;
      if (read_when(fc, e, p, "RDATE", t, &w) < 0) {
        e->bad = true;
        continue;
      }
      if (add_when(&e->rdates, &e->n_rdates, &w))
        return CP_ENOMEM;
    }
  }
  if (!e->uid || !*e->uid) {
    diag(fc->plan, fc->file, e->line, false,
         "event \"%s\" has no UID: its identity (used to never post twice) is derived from its "
         "start time, so moving it will make a new post",
         e->summary ? e->summary : "");
    char buf[64];
    snprintf(buf, sizeof buf, "nouid-line%d-%lld", e->line,
             (long long)(e->has_dtstart ? e->dtstart.wall : 0));
    free(e->uid);
    e->uid = strdup(buf);
  }
  return e->uid ? 0 : CP_ENOMEM;
}

/* ---------------------------------------------------------------------------------------- */
/* Splitting a file into components                                                         */

static bool line_is(const char *s, const char *end, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(end - s) < n || strncasecmp(s, word, n))
    return false;
  for (s += n; s < end; s++)
    if (*s != ' ' && *s != '\t')
      return false;
  return true;
}

/* The properties of a VEVENT the engine reads; libical is handed only these (and no VALARM),
 * which saves much of the parsing on real exports full of ATTENDEE, X-MICROSOFT-* and alarms. */
static const char *const wanted[] = {"BEGIN",
                                     "END",
                                     "UID",
                                     "SEQUENCE",
                                     "STATUS",
                                     "SUMMARY",
                                     "DESCRIPTION",
                                     "CATEGORIES",
                                     "DTSTART",
                                     "RECURRENCE-ID",
                                     "RRULE",
                                     "RDATE",
                                     "EXDATE",
                                     "ATTACH",
                                     "X-ALT-DESC",
                                     "X-CALPOST-CHANNELS",
                                     "X-MICROSOFT-CDO-ALLDAYEVENT",
                                     NULL};
#define N_WANTED (sizeof wanted / sizeof wanted[0] - 1)
_Static_assert(N_WANTED == N_WANTED_MAX, "N_WANTED_MAX must match wanted[]");

static int wanted_index(const char *s, size_t n) {
  for (size_t i = 0; wanted[i]; i++)
    if (strlen(wanted[i]) == n && !strncasecmp(s, wanted[i], n))
      return (int)i;
  return -1;
}

/* Copies the wanted lines of a VEVENT's text to dst (which has room for len + 1 bytes) and
 * notes in lines[] the line (from 0) where each wanted property first appears. */
static void copy_wanted(const char *s, size_t len, char *dst, uint16_t *lines) {
  int line = -1;
  const char *end = s + len;
  char *o = dst;
  bool keeping = true;
  int depth = 0; /* 1 inside the VEVENT, more inside a sub-component such as VALARM */
  while (s < end) {
    const char *ls = s;
    while (s < end && *s != '\n' && *s != '\r')
      s++;
    if (s < end) {
      if (*s == '\r' && s + 1 < end && s[1] == '\n')
        s++;
      s++;
    }
    line++;
    if (*ls == ' ' || *ls == '\t') { /* a continuation line goes with its property */
      if (keeping) {
        memcpy(o, ls, (size_t)(s - ls));
        o += s - ls;
      }
      continue;
    }
    size_t nl = 0;
    while (ls + nl < s && ls[nl] != ';' && ls[nl] != ':' && ls[nl] != '\r' && ls[nl] != '\n')
      nl++;
    bool begin = nl == 5 && !strncasecmp(ls, "BEGIN", 5);
    bool endl = nl == 3 && !strncasecmp(ls, "END", 3);
    if (begin)
      depth++;
    int w = depth <= 1 ? wanted_index(ls, nl) : -1;
    keeping = w >= 0;
    if (keeping && lines[w] == UINT16_MAX && line < UINT16_MAX)
      lines[w] = (uint16_t)line;
    if (endl)
      depth--;
    if (keeping) {
      memcpy(o, ls, (size_t)(s - ls));
      o += s - ls;
    }
  }
  *o = 0;
}

/* Parses s[0..len) with libical. lines: NULL to parse all of it, else only the wanted properties
 * (their lines are noted there). */
static int parse_chunk_into(struct cp__plan_priv *p, const char *s, size_t len, uint16_t *lines,
                            icalcomponent **out) {
  if (len + 1 > p->scratch_cap) {
    size_t nc = len + 1 > 65536 ? len + 1 : 65536;
    char *nb = realloc(p->scratch, nc);
    if (!nb)
      return CP_ENOMEM;
    p->scratch = nb;
    p->scratch_cap = nc;
  }
  if (lines) {
    copy_wanted(s, len, p->scratch, lines);
  } else {
    memcpy(p->scratch, s, len);
    p->scratch[len] = 0;
  }
  icalerror_clear_errno();
  *out = icalparser_parse_string(p->scratch);
  return 0;
}

static int add_event(struct cal *cal, struct ev *e) {
  if (cal->n_evs == cal->cap_evs) {
    size_t nc = cal->cap_evs ? cal->cap_evs * 2 : 64;
    struct ev **nv = realloc(cal->evs, nc * sizeof *nv);
    if (!nv)
      return CP_ENOMEM;
    cal->evs = nv;
    cal->cap_evs = nc;
  }
  e->order = (int)cal->n_evs;
  cal->evs[cal->n_evs++] = e;
  return 0;
}

static void ev_free(struct ev *e);

struct comp {
  const char *s;
  size_t len;
  int line;
  int kind; /* 1 VEVENT, 2 VTIMEZONE */
};

/* Reads one calendar file into cal. Returns 0 (problems become diagnostics) or CP_ENOMEM. */
/* Reads path; messages name it `name` (the source as the editor knows it). */
static int load_file(struct cp_plan *plan, struct cal *cal, const char *path, const char *name) {
  struct cp__plan_priv *p = plan->priv;
  const struct cp_plan_opts *o = p->opts;
  const char *file = keep(plan, strdup(name));
  if (!file)
    return CP_ENOMEM;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) {
    diag(plan, file, 0, true, "cannot read the plan: %s", strerror(errno));
    if (fd >= 0)
      close(fd);
    return 0;
  }
  if (st.st_size > o->cfg->max_file_size) {
    diag(plan, file, 0, true,
         "file too large: %lld bytes, more than max_file_size (%lld); it was not read",
         (long long)st.st_size, (long long)o->cfg->max_file_size);
    close(fd);
    return 0;
  }
  size_t size = (size_t)st.st_size;
  char *buf = malloc(size + 1);
  if (!buf) {
    close(fd);
    return CP_ENOMEM;
  }
  size_t got = 0;
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = 0;
  size = got;
  char **nb = realloc(p->bufs, (p->n_bufs + 1) * sizeof *nb);
  if (!nb) {
    free(buf);
    return CP_ENOMEM;
  }
  p->bufs = nb;
  nb[p->n_bufs++] = buf;

  if (size == 0) {
    diag(plan, file, 0, true, "not a calendar: the file is empty");
    return 0;
  }
  const char *nul = memchr(buf, 0, size);
  size_t bad;
  if (nul || cp_utf8_check(buf, size, &bad) < 0) {
    size_t at = nul ? (size_t)(nul - buf) : bad;
    int line = 1;
    const char *ls = buf;
    for (size_t i = 0; i < at; i++)
      if (buf[i] == '\n') {
        line++;
        ls = buf + i + 1;
      }
    if (nul)
      diag(plan, file, line, true, "not a calendar: NUL byte at column %d; the file was not read",
           (int)(buf + at - ls) + 1);
    else
      diag(plan, file, line, true,
           "invalid UTF-8 at column %d (byte 0x%02X): save the file as UTF-8; it was not read",
           (int)(buf + at - ls) + 1, (unsigned char)buf[at]);
    return 0;
  }

  /* Split into components, remembering calendar-level properties. */
  struct comp *comps = NULL;
  size_t n_comps = 0, cap_comps = 0;
  char *calprops = NULL;
  size_t calprops_len = 0;
  int depth = 0, open_line = 0, line = 0, n_cal = 0;
  const char *comp_start = NULL;
  int comp_kind = 0, comp_line = 0;
  bool seen_content = false;
  const char *s = buf, *end = buf + size;
  if (size >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3))
    s += 3;
  int rc = 0;
  bool broken = false;
  while (s < end && !broken) {
    const char *ls = s;
    while (s < end && *s != '\n' && *s != '\r')
      s++;
    const char *le = s;
    if (s < end) {
      if (*s == '\r' && s + 1 < end && s[1] == '\n')
        s++;
      s++;
    }
    line++;
    bool cont = ls < le && (*ls == ' ' || *ls == '\t');
    if (ls == le)
      continue;
    if (!cont && depth == 0) {
      if (line_is(ls, le, "BEGIN:VCALENDAR")) {
        depth = 1;
        open_line = line;
        n_cal++;
        continue;
      }
      if (!seen_content) {
        bool html = le - ls >= 5 && (starts_with_ci(ls, "<!DOC") || starts_with_ci(ls, "<html") ||
                                     starts_with_ci(ls, "<?xml") || starts_with_ci(ls, "<head"));
        diag(plan, file, line, true,
             html ? "not a calendar: this is an HTML page (a login page or an error page?), not "
                    "iCalendar data; the file was not read"
                  : "not a calendar: expected BEGIN:VCALENDAR; the file was not read");
        broken = true;
      }
      seen_content = true;
      continue;
    }
    seen_content = true;
    if (depth == 1) {
      if (!cont && starts_with_ci(ls, "BEGIN:")) {
        depth = 2;
        comp_start = ls;
        comp_line = line;
        comp_kind = line_is(ls, le, "BEGIN:VEVENT")      ? 1
                    : line_is(ls, le, "BEGIN:VTIMEZONE") ? 2
                                                         : 0;
      } else if (!cont && line_is(ls, le, "END:VCALENDAR")) {
        depth = 0;
      } else {
        char *np = realloc(calprops, calprops_len + (size_t)(s - ls) + 1);
        if (!np) {
          rc = CP_ENOMEM;
          break;
        }
        calprops = np;
        memcpy(calprops + calprops_len, ls, (size_t)(s - ls));
        calprops_len += (size_t)(s - ls);
        calprops[calprops_len] = 0;
      }
      continue;
    }
    if (depth >= 2 && !cont) {
      if (starts_with_ci(ls, "BEGIN:")) {
        depth++;
      } else if (starts_with_ci(ls, "END:")) {
        depth--;
        if (depth == 1 && comp_kind) {
          if (n_comps == cap_comps) {
            cap_comps = cap_comps ? cap_comps * 2 : 256;
            struct comp *nv = realloc(comps, cap_comps * sizeof *nv);
            if (!nv) {
              rc = CP_ENOMEM;
              break;
            }
            comps = nv;
          }
          comps[n_comps++] =
              (struct comp){comp_start, (size_t)(s - comp_start), comp_line, comp_kind};
        }
      }
    }
  }
  if (!broken && rc == 0) {
    if (depth > 0) {
      diag(plan, file, depth > 1 ? comp_line : open_line, true,
           "truncated: the %s that starts here has no END (an interrupted download or save?); "
           "the file was not read",
           depth > 1 ? "component" : "VCALENDAR");
      broken = true;
    } else if (!n_cal) {
      diag(plan, file, 1, true, "not a calendar: no BEGIN:VCALENDAR; the file was not read");
      broken = true;
    }
  }
  if (broken || rc < 0) {
    free(comps);
    free(calprops);
    return rc;
  }

  struct file_ctx fc = {.plan = plan, .cal = cal, .file = file, .floating = cal->zone};
  fc.tzset = cp_tzset_new();
  struct cp_tzset **nt = fc.tzset ? realloc(p->tzsets, (p->n_tzsets + 1) * sizeof *nt) : NULL;
  if (!nt) {
    cp_tzset_free(fc.tzset);
    free(comps);
    free(calprops);
    return CP_ENOMEM;
  }
  p->tzsets = nt;
  nt[p->n_tzsets++] = fc.tzset;

  /* Calendar properties: X-WR-TIMEZONE gives floating times their zone (Google). */
  if (calprops) {
    size_t need = calprops_len + 64;
    char *wrapped = malloc(need);
    if (wrapped) {
      snprintf(wrapped, need, "BEGIN:VCALENDAR\r\n%sEND:VCALENDAR\r\n", calprops);
      icalcomponent *vc = icalparser_parse_string(wrapped);
      for (icalproperty *q = vc ? icalcomponent_get_first_property(vc, ICAL_X_PROPERTY) : NULL; q;
           q = icalcomponent_get_next_property(vc, ICAL_X_PROPERTY)) {
        const char *xname = icalproperty_get_x_name(q);
        if (xname && !strcasecmp(xname, "X-WR-TIMEZONE") && icalproperty_get_x(q)) {
          struct cp_tz z;
          char *v = unescape_text(icalproperty_get_x(q));
          if (v) {
            trim_inplace(v);
            if (cp_tz_lookup(fc.tzset, v, &z) == 0) {
              fc.floating = z;
              fc.has_wr_tz = true;
            } else {
              diag(plan, file, open_line, true,
                   "X-WR-TIMEZONE: unknown time zone '%s'; floating times use %s", v,
                   cal->zone.name);
            }
          }
          free(v);
        }
      }
      if (vc)
        icalcomponent_free(vc);
      free(wrapped);
    }
    free(calprops);
  }
  /* Time zones before events: the RFC allows them anywhere. */
  for (size_t i = 0; i < n_comps && rc == 0; i++) {
    if (comps[i].kind != 2)
      continue;
    icalcomponent *c;
    if ((rc = parse_chunk_into(p, comps[i].s, comps[i].len, NULL, &c)) < 0)
      break;
    if (!c || icalcomponent_isa(c) != ICAL_VTIMEZONE_COMPONENT) {
      diag(plan, file, comps[i].line, true, "VTIMEZONE: cannot be parsed");
      if (c)
        icalcomponent_free(c);
      continue;
    }
    if (cp_tzset_add_vtimezone(fc.tzset, c) == CP_EPARSE)
      diag(plan, file, comps[i].line, true, "VTIMEZONE without TZID is ignored");
  }
  for (size_t i = 0; i < n_comps && rc == 0; i++) {
    if (comps[i].kind != 1)
      continue;
    icalcomponent *c;
    uint16_t lines[N_WANTED];
    memset(lines, 0xFF, sizeof lines);
    if ((rc = parse_chunk_into(p, comps[i].s, comps[i].len, lines, &c)) < 0)
      break;
    if (!c || icalcomponent_isa(c) != ICAL_VEVENT_COMPONENT) {
      diag(plan, file, comps[i].line, true, "VEVENT: cannot be parsed; the event is not planned");
      if (c)
        icalcomponent_free(c);
      continue;
    }
    struct ev *e = calloc(1, sizeof *e);
    if (!e) {
      icalcomponent_free(c);
      rc = CP_ENOMEM;
      break;
    }
    e->cal = cal;
    e->home = fc.floating;
    e->file = file;
    e->line = comps[i].line;
    memcpy(e->lines, lines, sizeof lines);
    rc = extract_event(&fc, e, c);
    icalcomponent_free(c);
    if (rc == 0)
      rc = add_event(cal, e);
    if (rc < 0)
      ev_free(e);
  }
  free(comps);
  /* The events keep what they need; the text goes. */
  free(p->bufs[--p->n_bufs]);
  return rc;
}

static int load_path(struct cp_plan *plan, struct cal *cal, const char *path) {
  const struct cp_plan_opts *o = plan->priv->opts;
  char resolved[4096];
  if (o->resolve && o->resolve(o->resolve_arg, path, resolved, sizeof resolved) == 0) {
    struct stat rst;
    if (stat(resolved, &rst) == 0 && !S_ISDIR(rst.st_mode))
      return load_file(plan, cal, resolved, path);
  }
  struct stat st;
  if (strstr(path, "://")) {
    diag(plan, path, 0, false,
         "remote calendar: `calpost run` fetches it; plan and check read local files only");
    return 0;
  }
  if (stat(path, &st) < 0) {
    diag(plan, path, 0, true, "cannot read the plan: %s", strerror(errno));
    return 0;
  }
  if (!S_ISDIR(st.st_mode))
    return load_file(plan, cal, path, path);
  struct dirent **names = NULL;
  int n = scandir(path, &names, NULL, alphasort);
  if (n < 0) {
    diag(plan, path, 0, true, "cannot read the folder: %s", strerror(errno));
    return 0;
  }
  int rc = 0;
  for (int i = 0; i < n; i++) {
    size_t len = strlen(names[i]->d_name);
    if (rc == 0 && len > 4 && !strcasecmp(names[i]->d_name + len - 4, ".ics") &&
        names[i]->d_name[0] != '.') {
      char *full = malloc(strlen(path) + len + 2);
      if (!full) {
        rc = CP_ENOMEM;
      } else {
        sprintf(full, "%s/%s", path, names[i]->d_name);
        rc = load_file(plan, cal, full, full);
        free(full);
      }
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Text, channels, drafts                                                                   */

static char *resolve_media_path(const char *file, const char *src) {
  if (strstr(src, "://") || src[0] == '/')
    return strdup(src);
  if (!strncmp(src, "file:", 5))
    return strdup(src + 5);
  const char *slash = strrchr(file, '/');
  size_t dl = slash ? (size_t)(slash - file) : 1;
  char *out = malloc(dl + strlen(src) + 2);
  if (out)
    sprintf(out, "%.*s/%s", (int)dl, slash ? file : ".", src);
  return out;
}

static bool has_channel(const char **v, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(v[i], name))
      return true;
  return false;
}

static int add_channel(struct ev *e, const char *name) {
  if (has_channel(e->channels, e->n_channels, name))
    return 0;
  const char **nv = realloc(e->channels, (e->n_channels + 1) * sizeof *nv);
  if (!nv)
    return CP_ENOMEM;
  e->channels = nv;
  nv[e->n_channels++] = name;
  return 0;
}

/* Channels named by the event must exist; unknown ones are errors, not silently dropped. */
static int add_named_channel(struct cp_plan *plan, struct ev *e, const char *name,
                             const char *where, const char *prop) {
  const struct cp_channel_conf *ch = cp_config_channel(plan->priv->opts->cfg, name);
  if (!ch) {
    diag(plan, e->file, prop ? prop_line(e, prop) : e->line, true,
         "unknown channel '%s' (from %s) in event \"%s\": configure [channel %s] or fix the name",
         name, where, e->summary ? e->summary : "", name);
    return 0;
  }
  return add_channel(e, ch->name);
}

static int prepare_text(struct cp_plan *plan, struct ev *e) {
  if (e->text_ready)
    return 0;
  e->text_ready = true;
  const struct cp_config *cfg = plan->priv->opts->cfg;
  /* DESCRIPTION is what editors type; Outlook's X-ALT-DESC (HTML) only stands in for it. */
  char *plain = NULL;
  bool use_alt = e->altdesc && (!e->description || !*e->description);
  const char *raw = use_alt ? e->altdesc : e->description;
  if (raw && cp_text_looks_like_html(raw))
    plain = cp_text_from_html(raw);
  else
    plain = strdup(raw ? raw : "");
  if (!plain)
    return CP_ENOMEM;
  int rc = cp_desc_parse(plain, &e->desc);
  free(plain);
  if (rc < 0)
    return rc;
  const char *dprop = use_alt ? "X-ALT-DESC" : "DESCRIPTION";
  for (size_t i = 0; i < e->desc->n_diags; i++)
    diag(plan, e->file, prop_line(e, dprop), e->desc->diags[i].error, "DESCRIPTION line %d: %s",
         e->desc->diags[i].line, e->desc->diags[i].msg);
  /* Title and draft markers. */
  const char *t = e->summary ? e->summary : "";
  while (isspace((unsigned char)*t))
    t++;
  bool marker = false;
  if (starts_with_ci(t, "[draft]")) {
    t += 7;
    marker = true;
  } else if (starts_with_ci(t, "draft:")) {
    t += 6;
    marker = true;
  }
  if (!(e->title = strdup(t)))
    return CP_ENOMEM;
  trim_inplace(e->title);
  e->draft = marker || e->status == EV_TENTATIVE || e->desc->draft == 1;
  e->thread = e->desc->thread == 1;
  e->numbered = e->desc->numbered == 1;
  e->body = e->desc->body && *e->desc->body ? e->desc->body : e->title;
  free(e->description);
  free(e->altdesc);
  e->description = e->altdesc = NULL;
  /* Media: [calpost] media lines, then ATTACH. */
  size_t nm = e->desc->n_media + e->n_attach;
  if (nm) {
    e->media = calloc(nm, sizeof *e->media);
    if (!e->media)
      return CP_ENOMEM;
    const struct cp_media *srcs[2] = {e->desc->media, e->attach};
    size_t counts[2] = {e->desc->n_media, e->n_attach};
    for (int k = 0; k < 2; k++)
      for (size_t i = 0; i < counts[k]; i++) {
        struct cp_media *m = &e->media[e->n_media++];
        m->src = resolve_media_path(e->file, srcs[k][i].src);
        m->alt = xstrdup(srcs[k][i].alt);
        if (!m->src)
          return CP_ENOMEM;
      }
  }
  /* Channels: X-CALPOST-CHANNELS and [calpost] channels name them; CATEGORIES that name a
   * configured channel add to them (Outlook); otherwise the calendar's defaults apply. */
  for (size_t i = 0; i < e->n_xchannels; i++)
    if ((rc = add_named_channel(plan, e, e->xchannels[i], "X-CALPOST-CHANNELS",
                                "X-CALPOST-CHANNELS")) < 0)
      return rc;
  for (size_t i = 0; i < e->desc->n_channels; i++)
    if ((rc = add_named_channel(plan, e, e->desc->channels[i], "the description", dprop)) < 0)
      return rc;
  for (size_t i = 0; i < e->n_cats; i++) {
    const struct cp_channel_conf *ch = cp_config_channel(cfg, e->cats[i]);
    if (ch && (rc = add_channel(e, ch->name)) < 0)
      return rc;
  }
  bool named = e->has_xchannels || e->desc->n_channels;
  if (!e->n_channels && !named) {
    const struct cp_calendar_conf *cc = e->cal->conf;
    if (cc && cc->n_channels) {
      for (size_t i = 0; i < cc->n_channels; i++)
        if ((rc = add_named_channel(plan, e, cc->channels[i], "the calendar's channels", NULL)) < 0)
          return rc;
    } else if ((rc = add_named_channel(plan, e, "outbox", "the default channel", NULL)) < 0) {
      return rc;
    }
  }
  for (size_t i = 0; i < e->desc->n_variants; i++)
    if (!has_channel(e->channels, e->n_channels, e->desc->variants[i].channel))
      diag(plan, e->file, prop_line(e, dprop), false,
           "event \"%s\": the [%s] text is not used, the event does not post to '%s'", e->title,
           e->desc->variants[i].channel, e->desc->variants[i].channel);
  return 0;
}

static const char *text_for(const struct ev *e, const char *channel) {
  for (size_t i = 0; i < e->desc->n_variants; i++)
    if (!strcmp(e->desc->variants[i].channel, channel))
      return e->desc->variants[i].text;
  return e->body;
}

/* check: limits, empty text, media; once per event. */
static void check_event(struct cp_plan *plan, struct ev *e) {
  const struct cp_config *cfg = plan->priv->opts->cfg;
  for (size_t i = 0; i < e->n_channels; i++) {
    const struct cp_channel_conf *ch = cp_config_channel(cfg, e->channels[i]);
    const char *text = text_for(e, e->channels[i]);
    if (!*text) {
      diag(plan, e->file, e->line, true,
           "empty text: event (UID %s) has no SUMMARY or DESCRIPTION to post on '%s'", e->uid,
           e->channels[i]);
      continue;
    }
    size_t count;
    struct cp_text_limit lim;
    const struct cp_plan_opts *po = plan->priv->opts;
    if (po->validated && po->validated(po->validated_arg, e->channels[i]))
      continue; /* its connector's validate checks the length, per post */
    bool threadable = !strcmp(ch->type, "mastodon") || !strcmp(ch->type, "bluesky") ||
                      !strcmp(ch->type, "x") || !strcmp(ch->type, "telegram") ||
                      !strcmp(ch->type, "discord");
    if (!cp_text_fits(ch->type, text, ch->max_chars, &count, &lim) && !(e->thread && threadable))
      diag(plan, e->file, prop_line(e, "DESCRIPTION"), true,
           "text too long for %s: event \"%s\" (UID %s) has %zu %s, %s allows %zu%s",
           e->channels[i], e->title, e->uid, count, lim.unit, ch->type, lim.max,
           threadable ? " (shorten it, add a [channel] variant, or set thread = yes)"
                      : " (shorten it or add a [channel] variant)");
  }
  for (size_t i = 0; i < e->n_media; i++) {
    const char *src = e->media[i].src;
    if (strstr(src, "://")) {
      if (strncasecmp(src, "https://", 8))
        diag(plan, e->file, e->line, true,
             "media '%s' in event \"%s\": only https:// addresses or local files are allowed", src,
             e->title);
    } else if (access(src, R_OK) < 0) {
      diag(plan, e->file, e->line, true, "media not found: '%s' in event \"%s\" (%s)", src,
           e->title, strerror(errno));
    }
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Expansion                                                                                */

struct slot {
  int64_t wall; /* original start, wall time in the series zone */
  int64_t utc;  /* original start instant */
  bool is_date;
};

static int64_t local_date(int64_t wall) {
  return wall >= 0 ? wall / 86400 : -((-wall + 86399) / 86400);
}

static void occurrence_id(const struct slot *s, char *buf, size_t len) {
  int y, m, d;
  if (s->is_date) {
    cp_tz_civil_from_days(local_date(s->wall), &y, &m, &d);
    snprintf(buf, len, "%04d%02d%02d", y, m, d);
    return;
  }
  int64_t days = local_date(s->utc), secs = s->utc - days * 86400;
  cp_tz_civil_from_days(days, &y, &m, &d);
  if (len < 17 || y < 0 || y > 9999) {
    snprintf(buf, len, "%lld", (long long)s->utc);
    return;
  }
  /* By hand: this runs for every occurrence of every event. */
  int v[6] = {y, m, d, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60)};
  char *o = buf;
  for (int k = 0; k < 6; k++) {
    if (k == 3)
      *o++ = 'T';
    if (k == 0) {
      *o++ = (char)('0' + v[0] / 1000);
      *o++ = (char)('0' + v[0] / 100 % 10);
    }
    *o++ = (char)('0' + v[k] / 10 % 10);
    *o++ = (char)('0' + v[k] % 10);
  }
  *o++ = 'Z';
  *o = 0;
}

/* Does value w (EXDATE or RECURRENCE-ID) name slot s of a series in zone z? */
static bool names_slot(const struct when *w, const struct slot *s, icaltimezone *z) {
  if (w->is_date || s->is_date) {
    int64_t wd = w->is_utc ? local_date(w->utc + cp_tz_offset_at(z, w->utc)) : local_date(w->wall);
    return wd == local_date(s->wall);
  }
  return w->utc == s->utc;
}

static int cmp_slot(const void *a, const void *b) {
  const struct slot *x = a, *y = b;
  return x->utc < y->utc ? -1 : x->utc > y->utc;
}

struct group {
  struct ev *master;
  struct ev **ovr; /* live overrides */
  size_t n_ovr;
};

/* Emits the posts of one occurrence. src provides text and state; slot the identity. */
/* A post as the plan keeps it (a cp_post is made from it on demand: 159,000 posts of a 20,000
 * event plan then take 6 MB instead of 22). */
struct rec {
  struct ev *src;
  int64_t due;
  struct slot slot; /* the occurrence */
  int32_t utc_offset;
  uint16_t channel; /* index into src->channels */
  uint8_t state;
  uint8_t single : 1, all_day : 1;
};

/* Emits the posts of one occurrence. src provides text and state; slot the identity. */
static int emit(struct cp_plan *plan, struct ev *src, const struct slot *slot, bool single,
                int64_t due, bool all_day, bool cancelled, int64_t *count_in_window) {
  struct cp__plan_priv *p = plan->priv;
  const struct cp_plan_opts *o = p->opts;
  if (src->bad)
    return 0;
  if (o->check && due >= o->now && due < o->now + (int64_t)o->cfg->check_days * 86400)
    src->n_future++;
  if (due < o->from || due >= o->to)
    return 0;
  (*count_in_window)++;
  if ((int64_t)*count_in_window > o->cfg->max_occurrences)
    return 0;
  int rc = prepare_text(plan, src);
  if (rc < 0)
    return rc;
  const struct when *at = src->has_dtstart ? &src->dtstart : &src->rid;
  icaltimezone *z = all_day || at->is_utc ? src->home.zone : at->zone;
  int32_t off = cp_tz_offset_at(z, due);
  for (size_t i = 0; i < src->n_channels && i <= UINT16_MAX; i++) {
    if (plan->n_posts == p->cap_posts) {
      size_t nc = p->cap_posts ? p->cap_posts + p->cap_posts / 2 : 1024;
      struct rec *nv = realloc(p->recs, nc * sizeof *nv);
      if (!nv)
        return CP_ENOMEM;
      p->recs = nv;
      p->cap_posts = nc;
    }
    struct rec *r = &p->recs[plan->n_posts++];
    r->src = src;
    r->due = due;
    r->slot = *slot;
    r->utc_offset = off;
    r->channel = (uint16_t)i;
    r->state = cancelled ? CP_POST_CANCELLED : src->draft ? CP_POST_DRAFT : CP_POST_SCHEDULED;
    r->single = single;
    r->all_day = all_day;
  }
  return 0;
}

void cp_plan_post(const struct cp_plan *plan, size_t i, struct cp_post *post) {
  struct cp__plan_priv *p = plan->priv;
  const struct rec *r = &p->recs[i];
  const struct ev *src = r->src;
  memset(post, 0, sizeof *post);
  if (r->single)
    snprintf(post->occurrence, sizeof post->occurrence, "single");
  else
    occurrence_id(&r->slot, post->occurrence, sizeof post->occurrence);
  const struct when *at = src->has_dtstart ? &src->dtstart : &src->rid;
  const char *tzname = r->all_day || at->is_utc ? src->home.name : at->tzname;
  post->calendar = src->cal->name;
  post->uid = src->uid;
  post->channel = src->channels[r->channel];
  post->due = r->due;
  post->utc_offset = r->utc_offset;
  post->tzid = tzname ? tzname : "UTC";
  post->all_day = r->all_day;
  post->state = (enum cp_post_state)r->state;
  post->title = src->title;
  post->text = text_for(src, post->channel);
  post->media = src->media;
  post->n_media = src->n_media;
  post->thread = src->thread;
  post->numbered = src->numbered;
  post->campaign = src->desc->campaign;
  /* Else the first category that is not a channel name (Outlook's category colours). */
  for (size_t c = 0; !post->campaign && c < src->n_cats; c++)
    if (!cp_config_channel(p->opts->cfg, src->cats[c]))
      post->campaign = src->cats[c];
  post->options = src->desc->options;
  post->n_options = src->desc->n_options;
  post->file = src->file;
  post->line = src->line;
  /* The identity: calendar, UID, occurrence, channel. */
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_DigestInit_ex(p->md_ctx, p->sha256, NULL);
  const char *parts[4] = {post->calendar, post->uid, post->occurrence, post->channel};
  for (int k = 0; k < 4; k++)
    EVP_DigestUpdate(p->md_ctx, parts[k], strlen(parts[k]) + 1);
  EVP_DigestFinal_ex(p->md_ctx, md, &mdlen);
  static const char hex[] = "0123456789abcdef";
  for (int k = 0; k < CP_POST_ID_LEN / 2; k++) {
    post->id[2 * k] = hex[md[k] >> 4];
    post->id[2 * k + 1] = hex[md[k] & 15];
  }
  post->id[CP_POST_ID_LEN] = 0;
}

/* The due time of an occurrence that starts at wall time `wall` in zone z. */
static int64_t due_of(struct cp_plan *plan, struct ev *e, int64_t wall, bool is_date,
                      icaltimezone *z) {
  if (is_date) {
    struct cp_tz pz = e->home;
    return cp_tz_resolve(
        pz.zone, local_date(wall) * 86400 + (int64_t)plan->priv->opts->cfg->all_day_minutes * 60,
        NULL);
  }
  return cp_tz_resolve(z, wall, NULL);
}

/* A start for the iterator close before `target`, whole periods after w0, so that a series
 * that began years ago is not walked from its beginning. Instances of a rule without COUNT are
 * w0 + n * INTERVAL periods filtered by the BY* parts, so the same rule started k periods later
 * yields the same instances from there on. The new start itself need not be an instance: libical
 * 3.0.16 drops a start the rule does not match, and w0 is emitted separately anyway. Returns w0
 * where a shift would change the result (a month day the shifted month may not have). */
static int64_t rebase(const struct icalrecurrencetype *r, int64_t w0, int64_t target) {
  int64_t gap = target - w0 - 7 * 86400; /* stay a week early: BY* expansion within a period */
  if (gap <= 0 || r->interval < 1)
    return w0;
  int64_t unit;
  switch (r->freq) {
    case ICAL_SECONDLY_RECURRENCE:
      unit = 1;
      break;
    case ICAL_MINUTELY_RECURRENCE:
      unit = 60;
      break;
    case ICAL_HOURLY_RECURRENCE:
      unit = 3600;
      break;
    case ICAL_DAILY_RECURRENCE:
      unit = 86400;
      break;
    case ICAL_WEEKLY_RECURRENCE:
      unit = 7 * 86400;
      break;
    case ICAL_MONTHLY_RECURRENCE:
    case ICAL_YEARLY_RECURRENCE: {
      int y, m, d;
      int64_t days = w0 / 86400, tod = w0 - days * 86400;
      cp_tz_civil_from_days(days, &y, &m, &d);
      bool by_day = r->by_day[0] != ICAL_RECURRENCE_ARRAY_MAX ||
                    r->by_month_day[0] != ICAL_RECURRENCE_ARRAY_MAX ||
                    r->by_year_day[0] != ICAL_RECURRENCE_ARRAY_MAX ||
                    r->by_week_no[0] != ICAL_RECURRENCE_ARRAY_MAX;
      if (d > 28 && !by_day)
        return w0;
      int64_t months = r->freq == ICAL_MONTHLY_RECURRENCE ? r->interval : 12LL * r->interval;
      int64_t k = gap / (31 * 86400) / months; /* a month is at most 31 days */
      if (k <= 0)
        return w0;
      int64_t mi = (int64_t)y * 12 + (m - 1) + k * months;
      int ny = (int)(mi / 12), nm = (int)(mi % 12) + 1;
      /* With BY* day parts the start's day only anchors the period; the 1st is always valid. */
      int nd = by_day && r->freq == ICAL_MONTHLY_RECURRENCE ? 1 : d;
      if (by_day && r->freq == ICAL_YEARLY_RECURRENCE) {
        nm = 1;
        nd = 1;
      }
      return cp_tz_days_from_civil(ny, nm, nd) * 86400 + tod;
    }
    default:
      return w0;
  }
  int64_t period = unit * r->interval;
  return w0 + gap / period * period;
}

static int expand_master(struct cp_plan *plan, struct group *g) {
  struct cp__plan_priv *p = plan->priv;
  const struct cp_plan_opts *o = p->opts;
  struct ev *m = g->master;
  icaltimezone *z = m->dtstart.zone;
  bool is_date = m->dtstart.is_date;
  int64_t w0 = m->dtstart.wall;
  bool recurring = m->rrule || m->n_rdates;
  struct slot *slots = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  /* The window in wall time, widened for zone offsets and THISANDFUTURE shifts. */
  int64_t margin = 2 * 86400;
  for (size_t i = 0; i < g->n_ovr; i++)
    if (g->ovr[i]->thisandfuture && g->ovr[i]->has_dtstart) {
      int64_t d = g->ovr[i]->dtstart.utc - g->ovr[i]->rid.utc;
      margin += d < 0 ? -d : d;
    }
  int64_t lo = (o->check && o->now < o->from ? o->now : o->from) - margin;
  int64_t hi = (o->check && o->now + (int64_t)o->cfg->check_days * 86400 > o->to
                    ? o->now + (int64_t)o->cfg->check_days * 86400
                    : o->to) +
               margin;
#define PUSH_SLOT(W, U, D)                                                                         \
  do {                                                                                             \
    if (n == cap) {                                                                                \
      cap = cap ? cap * 2 : 64;                                                                    \
      struct slot *nv_ = realloc(slots, cap * sizeof *nv_);                                        \
      if (!nv_) {                                                                                  \
        rc = CP_ENOMEM;                                                                            \
        goto out;                                                                                  \
      }                                                                                            \
      slots = nv_;                                                                                 \
    }                                                                                              \
    slots[n++] = (struct slot){(W), (U), (D)};                                                     \
  } while (0)
  if (m->rrule) {
    struct icalrecurrencetype rule = icalrecurrencetype_from_string(m->rrule);
    if (rule.freq == ICAL_NO_RECURRENCE) {
      diag(plan, m->file, prop_line(m, "RRULE"), true,
           "RRULE: cannot be parsed ('%s'); the event \"%s\" is not planned", m->rrule,
           m->summary ? m->summary : "");
      m->bad = true;
      goto out;
    }
    /* Iterate in floating wall time; UNTIL in the same terms. */
    if (!icaltime_is_null_time(rule.until)) {
      int64_t until;
      if (rule.until.is_date)
        until = cp_tz_wall_from_ical(rule.until) + 86399;
      else if (icaltime_is_utc(rule.until))
        until =
            cp_tz_wall_from_ical(rule.until) + cp_tz_offset_at(z, cp_tz_wall_from_ical(rule.until));
      else
        until = cp_tz_wall_from_ical(rule.until);
      if (until < w0) {
        /* An UNTIL before DTSTART marks a deleted series (Confluence): nothing at all. */
        goto rdates;
      }
      rule.until = cp_tz_ical_from_wall(until, false);
    }
    int64_t wstart = rule.count ? w0 : rebase(&rule, w0, lo);
    struct icaltimetype start = cp_tz_ical_from_wall(wstart, false);
    icalrecur_iterator *it = icalrecur_iterator_new(rule, start);
    if (!it) {
      diag(plan, m->file, prop_line(m, "RRULE"), true,
           "RRULE: '%s' cannot be expanded; the event \"%s\" is not planned", m->rrule,
           m->summary ? m->summary : "");
      m->bad = true;
      goto out;
    }
    /* RFC 5545 3.8.5.3: DTSTART is always the first instance, and counts toward COUNT;
     * libical drops a DTSTART that the rule does not match. */
    int count = rule.count, made = 0;
    long raw = 0;
    PUSH_SLOT(w0, cp_tz_resolve(z, w0, NULL), is_date);
    made = 1;
    for (struct icaltimetype t = icalrecur_iterator_next(it); !icaltime_is_null_time(t);
         t = icalrecur_iterator_next(it)) {
      int64_t w = cp_tz_wall_from_ical(t);
      if (++raw > 5000000) {
        diag(plan, m->file, prop_line(m, "RRULE"), true,
             "RRULE makes too many occurrences before the window; the event \"%s\" is not planned",
             m->summary ? m->summary : "");
        m->bad = true;
        break;
      }
      if (w == w0)
        continue;
      if (count && made >= count)
        break;
      made++;
      if (w > hi)
        break;
      if (w < lo)
        continue;
      PUSH_SLOT(w, cp_tz_resolve(z, w, NULL), is_date);
      if (n > (size_t)o->cfg->max_occurrences * 4 + 16) {
        /* Far over the bound: no need to go on. */
        break;
      }
    }
    icalrecur_iterator_free(it);
    if (m->bad)
      goto out;
  } else {
    PUSH_SLOT(w0, cp_tz_resolve(z, w0, NULL), is_date);
  }
rdates:
  for (size_t i = 0; i < m->n_rdates; i++) {
    const struct when *r = &m->rdates[i];
    int64_t wall, utc;
    if (r->is_date) {
      wall = r->wall + (is_date ? 0 : w0 - local_date(w0) * 86400);
      utc = cp_tz_resolve(z, wall, NULL);
    } else {
      utc = r->utc;
      wall = utc + cp_tz_offset_at(z, utc);
    }
    PUSH_SLOT(wall, utc, is_date || r->is_date);
  }
  if (n) /* slots is NULL when nothing was pushed (qsort wants a valid pointer) */
    qsort(slots, n, sizeof *slots, cmp_slot);
  int64_t in_window = 0;
  bool cancelled_series = m->status == EV_CANCELLED;
  for (size_t i = 0; i < n; i++) {
    if (i > 0 && slots[i].utc == slots[i - 1].utc)
      continue; /* RDATE repeating an RRULE instance or DTSTART counts once */
    const struct slot *s = &slots[i];
    bool excluded = false;
    for (size_t k = 0; k < m->n_exdates && !excluded; k++)
      excluded = names_slot(&m->exdates[k], s, z);
    if (excluded)
      continue;
    /* An override for this very slot replaces it (it is emitted on its own). */
    bool overridden = false;
    struct ev *future = NULL;
    for (size_t k = 0; k < g->n_ovr; k++) {
      struct ev *ov = g->ovr[k];
      if (names_slot(&ov->rid, s, z)) {
        overridden = true;
        break;
      }
      if (ov->thisandfuture && ov->rid.utc <= s->utc && (!future || future->rid.utc < ov->rid.utc))
        future = ov;
    }
    if (overridden)
      continue;
    struct ev *src = m;
    int64_t due = due_of(plan, m, s->wall, s->is_date, z);
    if (future && !future->bad) {
      src = future;
      if (future->has_dtstart)
        due += future->dtstart.utc - future->rid.utc;
    }
    rc = emit(plan, src, s, !recurring, due, s->is_date,
              cancelled_series || src->status == EV_CANCELLED, &in_window);
    if (rc < 0)
      goto out;
  }
  if (in_window > o->cfg->max_occurrences) {
    diag(plan, m->file, prop_line(m, m->rrule ? "RRULE" : "RDATE"), true,
         "event \"%s\" would make %lld occurrences in the window, more than max_occurrences "
         "(%d); only the first %d are planned",
         m->summary ? m->summary : "", (long long)in_window, o->cfg->max_occurrences,
         o->cfg->max_occurrences);
  }
out:
#undef PUSH_SLOT
  free(slots);
  return rc;
}

static int cmp_ev_uid(const void *a, const void *b) {
  const struct ev *x = *(struct ev *const *)a, *y = *(struct ev *const *)b;
  int c = strcmp(x->uid, y->uid);
  if (c)
    return c;
  return x->order - y->order;
}

static int expand_group(struct cp_plan *plan, struct ev **evs, size_t n) {
  struct group g = {0};
  int rc = 0;
  /* The master: the highest SEQUENCE, the last one on a tie. */
  for (size_t i = 0; i < n; i++) {
    struct ev *e = evs[i];
    if (e->has_rid)
      continue;
    if (g.master) {
      struct ev *old = g.master;
      bool newer = e->seq >= old->seq;
      struct ev *keep_ev = newer ? e : old, *drop = newer ? old : e;
      if (e->seq == old->seq)
        diag(plan, e->file, e->line, false,
             "duplicate UID %s: also at %s:%d with the same SEQUENCE; only this later copy is "
             "used (give each event its own UID, or raise SEQUENCE on the newer copy)",
             e->uid, old->file, old->line);
      else
        diag(plan, drop->file, drop->line, false,
             "duplicate UID %s: the copy at %s:%d has a higher SEQUENCE (%d) and replaces this one",
             e->uid, keep_ev->file, keep_ev->line, keep_ev->seq);
      drop->superseded = true;
      g.master = keep_ev;
    } else {
      g.master = e;
    }
  }
  g.ovr = calloc(n, sizeof *g.ovr);
  if (!g.ovr)
    return CP_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    struct ev *e = evs[i];
    if (!e->has_rid || e->bad)
      continue;
    /* The newest override per RECURRENCE-ID. */
    size_t k;
    for (k = 0; k < g.n_ovr; k++)
      if (g.ovr[k]->rid.utc == e->rid.utc && g.ovr[k]->rid.is_date == e->rid.is_date)
        break;
    if (k < g.n_ovr) {
      if (e->seq >= g.ovr[k]->seq) {
        g.ovr[k]->superseded = true;
        g.ovr[k] = e;
      } else {
        e->superseded = true;
      }
      continue;
    }
    g.ovr[g.n_ovr++] = e;
  }
  /* Overrides of instances the master excludes are dead. */
  if (g.master && !g.master->bad) {
    struct slot s;
    size_t live = 0;
    for (size_t i = 0; i < g.n_ovr; i++) {
      struct ev *ov = g.ovr[i];
      s = (struct slot){ov->rid.wall, ov->rid.utc, ov->rid.is_date};
      bool dead = false;
      for (size_t k = 0; k < g.master->n_exdates && !dead; k++)
        dead = names_slot(&g.master->exdates[k], &s, g.master->dtstart.zone);
      if (dead)
        ov->superseded = true;
      else
        g.ovr[live++] = ov;
    }
    g.n_ovr = live;
    if (g.master->has_dtstart && (rc = expand_master(plan, &g)) < 0)
      goto out;
  }
  /* Overrides, with or without a master: each is one occurrence at its own DTSTART. */
  for (size_t i = 0; i < g.n_ovr; i++) {
    struct ev *ov = g.ovr[i];
    struct slot s = {ov->rid.wall, ov->rid.utc, ov->rid.is_date};
    if (g.master && !g.master->bad && ov->rid.is_date != g.master->dtstart.is_date) {
      s.is_date = g.master->dtstart.is_date;
      if (!s.is_date)
        s.utc = cp_tz_resolve(g.master->dtstart.zone, s.wall, NULL);
    }
    const struct when *at = ov->has_dtstart ? &ov->dtstart : &ov->rid;
    int64_t due = due_of(plan, ov, at->wall, at->is_date, at->zone);
    if (at->is_utc)
      due = at->utc;
    int64_t in_window = 0;
    /* An override's own STATUS wins; without one it shares the fate of a cancelled series. */
    bool cancelled = ov->status == EV_CANCELLED ||
                     (ov->status == EV_NONE && g.master && g.master->status == EV_CANCELLED);
    if ((rc = emit(plan, ov, &s, false, due, at->is_date, cancelled, &in_window)) < 0)
      goto out;
  }
out:
  free(g.ovr);
  return rc;
}

static int expand_calendar(struct cp_plan *plan, struct cal *cal) {
  if (!cal->n_evs)
    return 0;
  struct ev **sorted = malloc(cal->n_evs * sizeof *sorted);
  if (!sorted)
    return CP_ENOMEM;
  memcpy(sorted, cal->evs, cal->n_evs * sizeof *sorted);
  qsort(sorted, cal->n_evs, sizeof *sorted, cmp_ev_uid);
  int rc = 0;
  for (size_t i = 0; i < cal->n_evs && rc == 0;) {
    size_t j = i + 1;
    while (j < cal->n_evs && !strcmp(sorted[j]->uid, sorted[i]->uid))
      j++;
    rc = expand_group(plan, sorted + i, j - i);
    i = j;
  }
  free(sorted);
  return rc;
}

/* ---------------------------------------------------------------------------------------- */

static void ev_free(struct ev *e) {
  if (!e)
    return;
  free(e->uid);
  free(e->summary);
  free(e->description);
  free(e->altdesc);
  for (size_t i = 0; i < e->n_cats; i++)
    free(e->cats[i]);
  free(e->cats);
  for (size_t i = 0; i < e->n_xchannels; i++)
    free(e->xchannels[i]);
  free(e->xchannels);
  for (size_t i = 0; i < e->n_attach; i++) {
    free(e->attach[i].src);
    free(e->attach[i].alt);
  }
  free(e->attach);
  free(e->rrule);
  free(e->rdates);
  free(e->exdates);
  free(e->title);
  cp_desc_free(e->desc);
  for (size_t i = 0; i < e->n_media; i++) {
    free(e->media[i].src);
    free(e->media[i].alt);
  }
  free(e->media);
  free(e->channels);
  free(e);
}

void cp_plan_free(struct cp_plan *plan) {
  if (!plan)
    return;
  struct cp__plan_priv *p = plan->priv;
  if (p) {
    for (size_t i = 0; i < p->n_cals; i++) {
      struct cal *c = p->cals[i];
      for (size_t k = 0; k < c->n_evs; k++)
        ev_free(c->evs[k]);
      free(c->evs);
      free(c->name);
      free(c);
    }
    free(p->cals);
    for (size_t i = 0; i < p->n_tzsets; i++)
      cp_tzset_free(p->tzsets[i]);
    free(p->tzsets);
    for (size_t i = 0; i < p->n_bufs; i++)
      free(p->bufs[i]);
    free(p->bufs);
    for (size_t i = 0; i < p->n_strings; i++)
      free(p->strings[i]);
    free(p->strings);
    free(p->scratch);
    free(p->recs);
    EVP_MD_CTX_free(p->md_ctx);
    EVP_MD_free(p->sha256);
    free(p);
  }
  for (size_t i = 0; i < plan->n_diags; i++) {
    free(plan->diags[i].file);
    free(plan->diags[i].msg);
  }
  free(plan->diags);
  free(plan);
}

static int cmp_post(const void *a, const void *b) {
  const struct rec *x = a, *y = b;
  if (x->due != y->due)
    return x->due < y->due ? -1 : 1;
  if (x->src != y->src) {
    int c = strcmp(x->src->cal->name, y->src->cal->name);
    if (!c)
      c = strcmp(x->src->uid, y->src->uid);
    if (c)
      return c;
  }
  int c = strcmp(x->src->channels[x->channel], y->src->channels[y->channel]);
  if (!c)
    c = x->slot.utc < y->slot.utc ? -1 : x->slot.utc > y->slot.utc;
  return c;
}

static struct cal *new_cal(struct cp_plan *plan, const char *name,
                           const struct cp_calendar_conf *conf, struct cp_tz zone) {
  struct cp__plan_priv *p = plan->priv;
  struct cal **nv = realloc(p->cals, (p->n_cals + 1) * sizeof *nv);
  if (!nv)
    return NULL;
  p->cals = nv;
  struct cal *c = calloc(1, sizeof *c);
  if (!c || !(c->name = strdup(name))) {
    free(c);
    return NULL;
  }
  c->conf = conf;
  c->zone = zone;
  nv[p->n_cals++] = c;
  return c;
}

int cp_plan_load(const struct cp_plan_opts *opts, struct cp_plan **out) {
  *out = NULL;
  struct cp_plan *plan = calloc(1, sizeof *plan);
  if (!plan || !(plan->priv = calloc(1, sizeof *plan->priv))) {
    free(plan);
    return CP_ENOMEM;
  }
  struct cp__plan_priv *p = plan->priv;
  p->opts = opts;
  if (!(p->md_ctx = EVP_MD_CTX_new()) || !(p->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL))) {
    cp_plan_free(plan);
    return CP_ENOMEM;
  }
  const struct cp_config *cfg = opts->cfg;
  const char *zname = opts->timezone ? opts->timezone : cfg->timezone;
  if (cp_tz_lookup(NULL, zname, &p->plan_zone) < 0) {
    cp_plan_free(plan);
    return CP_ETZ;
  }
  int rc = 0;
  if (opts->n_files) {
    for (size_t i = 0; i < opts->n_files && rc == 0; i++) {
      const char *path = opts->files[i];
      /* A file the config names keeps that calendar's name and channels. */
      const struct cp_calendar_conf *conf = NULL;
      for (size_t c = 0; c < cfg->n_calendars && !conf; c++)
        for (size_t s = 0; s < cfg->calendars[c].n_sources; s++)
          if (!strcmp(cfg->calendars[c].sources[s], path))
            conf = &cfg->calendars[c];
      if (!conf && cfg->n_calendars)
        conf = &cfg->calendars[0];
      char name[256];
      const char *base = strrchr(path, '/');
      size_t bl = strlen(base = base && base[1] ? base + 1 : path);
      if (bl > 4 && !strcasecmp(base + bl - 4, ".ics"))
        bl -= 4;
      snprintf(name, sizeof name, "%.*s", (int)bl, base);
      struct cal *cal = new_cal(plan, name, conf, p->plan_zone);
      rc = cal ? load_path(plan, cal, path) : CP_ENOMEM;
    }
  } else {
    for (size_t c = 0; c < cfg->n_calendars && rc == 0; c++) {
      const struct cp_calendar_conf *conf = &cfg->calendars[c];
      struct cp_tz z = p->plan_zone;
      if (conf->timezone && cp_tz_lookup(NULL, conf->timezone, &z) < 0) {
        diag(plan, cfg->path ? cfg->path : "config", 0, true,
             "[calendar %s] timezone: unknown time zone '%s'", conf->name, conf->timezone);
        continue;
      }
      struct cal *cal = new_cal(plan, conf->name, conf, z);
      for (size_t s = 0; cal && s < conf->n_sources && rc == 0; s++)
        rc = load_path(plan, cal, conf->sources[s]);
      if (!cal)
        rc = CP_ENOMEM;
    }
  }
  for (size_t i = 0; i < p->n_cals && rc == 0; i++)
    rc = expand_calendar(plan, p->cals[i]);
  if (rc == 0 && opts->check) {
    for (size_t i = 0; i < p->n_cals && rc == 0; i++) {
      struct cal *c = p->cals[i];
      for (size_t k = 0; k < c->n_evs && rc == 0; k++) {
        struct ev *e = c->evs[k];
        if (e->bad || e->superseded)
          continue;
        if ((rc = prepare_text(plan, e)) < 0)
          break;
        check_event(plan, e);
        const struct when *at = e->has_dtstart ? &e->dtstart : &e->rid;
        if (!e->n_future && at->utc < opts->now && e->status != EV_CANCELLED && !e->draft)
          diag(plan, e->file, e->line, false,
               "event \"%s\" (UID %s) is in the past: it has no post after now, so nothing will "
               "be published",
               e->title, e->uid);
      }
    }
  }
  if (rc < 0) {
    cp_plan_free(plan);
    return rc;
  }
  if (plan->n_posts)
    qsort(p->recs, plan->n_posts, sizeof *p->recs, cmp_post);
  /* Diagnostics in file order. */
  for (size_t i = 1; i < plan->n_diags; i++) {
    struct cp_diag d = plan->diags[i];
    size_t j = i;
    while (j > 0 &&
           (strcmp(plan->diags[j - 1].file, d.file) > 0 ||
            (!strcmp(plan->diags[j - 1].file, d.file) && plan->diags[j - 1].line > d.line))) {
      plan->diags[j] = plan->diags[j - 1];
      j--;
    }
    plan->diags[j] = d;
  }
  *out = plan;
  return 0;
}

void cp_plan_format_time(int64_t t, int off, char *buf, size_t len) {
  int64_t local = t + off;
  int64_t days = local_date(local), secs = local - days * 86400;
  int y, m, d;
  cp_tz_civil_from_days(days, &y, &m, &d);
  int n = snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d", y, m, d, (int)(secs / 3600),
                   (int)(secs / 60 % 60), (int)(secs % 60));
  if (n < 0 || (size_t)n >= len)
    return;
  if (off == 0)
    snprintf(buf + n, len - (size_t)n, "Z");
  else
    snprintf(buf + n, len - (size_t)n, "%c%02d:%02d", off < 0 ? '-' : '+', abs(off) / 3600,
             abs(off) / 60 % 60);
}

int cp_plan_parse_time(const char *s, const char *zone, int64_t now, int64_t *out) {
  if (!strcmp(s, "now")) {
    *out = now;
    return 0;
  }
  int y, mo, d, h = 0, mi = 0, se = 0, n = 0;
  if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || mo < 1 || mo > 12 || d < 1 || d > 31)
    return CP_EINVAL;
  const char *rest = s + n;
  bool has_time = *rest == 'T' || *rest == ' ';
  if (has_time) {
    int k = 0;
    if (sscanf(rest + 1, "%2d:%2d%n", &h, &mi, &k) != 2)
      return CP_EINVAL;
    rest += 1 + k;
    if (*rest == ':') {
      if (sscanf(rest + 1, "%2d%n", &se, &k) != 1)
        return CP_EINVAL;
      rest += 1 + k;
    }
  }
  int64_t wall = cp_tz_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
  if (!*rest) {
    struct cp_tz z;
    if (cp_tz_lookup(NULL, zone, &z) < 0)
      return CP_ETZ;
    *out = cp_tz_resolve(z.zone, wall, NULL);
    return 0;
  }
  if (!strcmp(rest, "Z")) {
    *out = wall;
    return 0;
  }
  int oh, om;
  char sign;
  if (sscanf(rest, "%c%2d:%2d", &sign, &oh, &om) == 3 && (sign == '+' || sign == '-')) {
    int off = (oh * 3600 + om * 60) * (sign == '-' ? -1 : 1);
    *out = wall - off;
    return 0;
  }
  return CP_EINVAL;
}
