/* The plan engine. A file is streamed and split into its components by line (which gives line
 * numbers and keeps memory low: the file is never held whole, each VEVENT is parsed by libical on
 * its own, copied into a struct and freed), then events are grouped by UID and expanded by our
 * own layer on top of icalrecur_iterator, which fixes what libical 3.0.16 gets wrong (see
 * ICS-NOTES). With a spill_dir (the daemon) events and texts wait in a file, not in memory (see
 * "Keeping texts out of memory"). */
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
  struct psrc *ps; /* the source of its posts, once it has one */
};

struct cal {
  char *name;
  const struct cp_calendar_conf *conf;
  struct cp_tz zone; /* the plan zone, or X-WR-TIMEZONE of the last file that set it */
  struct ev **evs;
  size_t n_evs, cap_evs;
  struct spilled_ev *spilled; /* spill mode: the events, in the spill file */
  size_t n_spilled, cap_spilled;
};

struct bytes {
  char *b;
  size_t n, cap;
};

struct chanset {
  const char **v;
  size_t n;
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
  /* spill mode (see "Keeping texts out of memory") */
  int spill_fd;       /* -1: texts stay in memory */
  uint64_t spill_end; /* bytes written to the file; sbuf follows */
  struct bytes sbuf, wbuf, rbuf;
  struct psrc **ps_chunks;
  size_t n_ps, n_chunks;
  struct chanset *chansets;
  size_t n_chansets;
  struct cp_media *dec_media;
  size_t dec_media_cap;
  struct cp_post_option *dec_opts;
  size_t dec_opts_cap;
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

/* buf (of *cap elements of size bytes) grown to hold n elements, and at least one and min_cap:
 * the buffer to use from now on, or NULL when out of memory (buf is then unchanged). */
static void *reserve(void *buf, size_t *cap, size_t n, size_t size, size_t min_cap) {
  if (n <= *cap && buf)
    return buf;
  size_t nc = n > min_cap ? n : min_cap;
  void *nb = realloc(buf, (nc ? nc : 1) * size);
  if (nb)
    *cap = nc;
  return nb;
}

/* Parses s[0..len) with libical. lines: NULL to parse all of it, else only the wanted properties
 * (their lines are noted there). */
static int parse_chunk_into(struct cp__plan_priv *p, const char *s, size_t len, uint16_t *lines,
                            icalcomponent **out) {
  char *scratch = reserve(p->scratch, &p->scratch_cap, len + 1, 1, 65536);
  if (!scratch)
    return CP_ENOMEM;
  p->scratch = scratch;
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

/* A plan file is read twice with a small buffer rather than held whole (a 50 MB plan would
 * otherwise cost 50 MB): the first pass checks the encoding and the structure and keeps the
 * calendar properties and VTIMEZONEs, the second hands each VEVENT to libical as it ends. */
struct reader {
  int fd;
  off_t limit; /* read at most this many bytes (the size fstat gave) */
  off_t got;   /* bytes read so far */
  char *buf;
  size_t cap, beg, end; /* unread lines are buf[beg..end) */
  bool eof;
  uint64_t sum; /* of every byte read, to notice a file that changed between the passes */
  char tail[8];
  size_t n_tail;
  /* encoding check (first pass): buf[chk..end) is not checked yet; chk >= beg is not needed */
  bool check;
  size_t chk;
  off_t chk_off;        /* file offset of buf[chk] */
  int chk_line;         /* '\n'-counted line of buf[chk] */
  off_t chk_line_at;    /* file offset where that line starts */
  off_t nul_at, bad_at; /* first NUL and first invalid UTF-8, -1: none */
  int nul_line, bad_line, nul_col, bad_col;
  unsigned char bad_byte;
};

/* A checksum of the bytes read, 8 at a time whatever the sizes of the reads. */
static void sum_word(struct reader *r, uint64_t w) {
  r->sum = (r->sum ^ w) * 0x9E3779B97F4A7C15ULL;
  r->sum ^= r->sum >> 29;
}

static void sum_bytes(struct reader *r, const char *s, size_t n) {
  while (n && r->n_tail) {
    r->tail[r->n_tail++] = *s++;
    n--;
    if (r->n_tail == 8) {
      uint64_t w;
      memcpy(&w, r->tail, 8);
      sum_word(r, w);
      r->n_tail = 0;
    }
  }
  for (; n >= 8; n -= 8, s += 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    sum_word(r, w);
  }
  memcpy(r->tail + r->n_tail, s, n);
  r->n_tail += n;
}

static uint64_t sum_final(struct reader *r) {
  uint64_t w = 0;
  memcpy(&w, r->tail, r->n_tail);
  sum_word(r, w ^ r->n_tail);
  return r->sum;
}

/* Checks buf[chk..upto) for NUL and invalid UTF-8, one '\n' line at a time (a UTF-8 sequence
 * never spans a newline, so this finds what a check of the whole file finds). */
static void reader_check(struct reader *r, size_t upto) {
  while (r->chk < upto) {
    const char *s = r->buf + r->chk;
    size_t avail = upto - r->chk;
    const char *nl = memchr(s, '\n', avail);
    size_t n = nl ? (size_t)(nl - s) + 1 : avail;
    if (r->nul_at < 0) {
      const char *z = memchr(s, 0, n);
      if (z) {
        r->nul_at = r->chk_off + (z - s);
        r->nul_line = r->chk_line;
        r->nul_col = (int)(r->nul_at - r->chk_line_at) + 1;
      }
    }
    size_t bad;
    if (r->bad_at < 0 && r->nul_at < 0 && cp_utf8_check(s, n, &bad) < 0) {
      r->bad_at = r->chk_off + (off_t)bad;
      r->bad_line = r->chk_line;
      r->bad_col = (int)(r->bad_at - r->chk_line_at) + 1;
      r->bad_byte = (unsigned char)s[bad];
    }
    r->chk += n;
    r->chk_off += (off_t)n;
    if (nl) {
      r->chk_line++;
      r->chk_line_at = r->chk_off;
    }
  }
}

/* Reads more into the buffer. Returns 0 or CP_ENOMEM. */
static int reader_fill(struct reader *r) {
  size_t keep = r->beg;
  if (r->check && r->chk < keep)
    keep = r->chk;
  if (keep) {
    memmove(r->buf, r->buf + keep, r->end - keep);
    r->end -= keep;
    r->beg -= keep;
    r->chk -= r->check ? keep : 0;
  }
  if (r->end + 65536 > r->cap) {
    size_t nc = r->cap ? r->cap * 2 : 262144;
    while (nc < r->end + 65536)
      nc *= 2;
    char *nb = realloc(r->buf, nc);
    if (!nb)
      return CP_ENOMEM;
    r->buf = nb;
    r->cap = nc;
  }
  size_t want = r->cap - r->end;
  if ((off_t)want > r->limit - r->got)
    want = (size_t)(r->limit - r->got);
  ssize_t n = want ? read(r->fd, r->buf + r->end, want) : 0;
  if (n <= 0) {
    r->eof = true;
  } else {
    sum_bytes(r, r->buf + r->end, (size_t)n);
    r->end += (size_t)n;
    r->got += n;
  }
  if (r->check) {
    /* Up to the last newline; all of it at the end of the file. */
    size_t upto = r->end;
    if (!r->eof) {
      while (upto > r->chk && r->buf[upto - 1] != '\n')
        upto--;
    }
    reader_check(r, upto);
  }
  return 0;
}

/* The next line: [*ls, *le) without its end, *next after it (\n, \r or \r\n, as the whole-file
 * splitter did). Pointers are valid until the next call. Returns 1, 0 at the end, or CP_ENOMEM. */
static int reader_line(struct reader *r, const char **ls, const char **le, const char **next) {
  for (;;) {
    if (!r->buf) {
      int rc = reader_fill(r);
      if (rc < 0)
        return rc;
      continue;
    }
    const char *s = r->buf + r->beg, *end = r->buf + r->end;
    const char *p = memchr(s, '\n', (size_t)(end - s));
    const char *cr = memchr(s, '\r', (size_t)((p ? p : end) - s));
    if (cr)
      p = cr;
    else if (!p)
      p = end;
    /* A line is complete at its end; a '\r' last needs the next byte (it may be "\r\n"). */
    if (p < end && !(*p == '\r' && p + 1 == end && !r->eof)) {
      *ls = s;
      *le = p;
      if (*p == '\r' && p + 1 < end && p[1] == '\n')
        p++;
      p++;
      *next = p;
      r->beg = (size_t)(p - r->buf);
      return 1;
    }
    if (r->eof) {
      if (s == end)
        return 0;
      *ls = s;
      *le = *next = end;
      r->beg = r->end;
      return 1;
    }
    int rc = reader_fill(r);
    if (rc < 0)
      return rc;
  }
}

/* The structure of a file, line by line (the same rules in both passes). */
struct walk {
  int depth, open_line, line, n_cal, comp_kind, comp_line;
  bool seen_content, broken, first;
  int broken_line;
  const char *broken_msg;
  char *comp; /* the text of the component being read, when it is wanted */
  size_t comp_len, comp_cap;
  bool want_comp;
  char *calprops; /* first pass */
  size_t calprops_len;
};

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t nc = *cap ? *cap : 4096;
    while (nc < *len + n + 1)
      nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb)
      return CP_ENOMEM;
    *buf = nb;
    *cap = nc;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = 0;
  return 0;
}

/* Feeds one line to w. Returns 1 when a component of kind w->comp_kind has just ended (its
 * text is w->comp when w->want_comp), 0 otherwise, or CP_ENOMEM. pass1 also collects the
 * calendar properties. */
static int walk_line(struct walk *w, const char *ls, const char *le, const char *s, bool pass1,
                     int want_kind) {
  if (w->first) {
    w->first = false;
    if (le - ls >= 3 && !memcmp(ls, "\xEF\xBB\xBF", 3))
      ls += 3;
  }
  w->line++;
  bool cont = ls < le && (*ls == ' ' || *ls == '\t');
  if (w->depth >= 2 && w->want_comp &&
      append(&w->comp, &w->comp_len, &w->comp_cap, ls, (size_t)(s - ls)) < 0)
    return CP_ENOMEM;
  if (ls == le)
    return 0;
  if (!cont && w->depth == 0) {
    if (line_is(ls, le, "BEGIN:VCALENDAR")) {
      w->depth = 1;
      w->open_line = w->line;
      w->n_cal++;
      return 0;
    }
    if (!w->seen_content) {
      bool html = le - ls >= 5 && (starts_with_ci(ls, "<!DOC") || starts_with_ci(ls, "<html") ||
                                   starts_with_ci(ls, "<?xml") || starts_with_ci(ls, "<head"));
      w->broken_line = w->line;
      w->broken_msg =
          html ? "not a calendar: this is an HTML page (a login page or an error page?), not "
                 "iCalendar data; the file was not read"
               : "not a calendar: expected BEGIN:VCALENDAR; the file was not read";
      w->broken = true;
    }
    w->seen_content = true;
    return 0;
  }
  w->seen_content = true;
  if (w->depth == 1) {
    if (!cont && starts_with_ci(ls, "BEGIN:")) {
      w->depth = 2;
      w->comp_line = w->line;
      w->comp_kind = line_is(ls, le, "BEGIN:VEVENT")      ? 1
                     : line_is(ls, le, "BEGIN:VTIMEZONE") ? 2
                                                          : 0;
      w->want_comp = w->comp_kind && w->comp_kind == want_kind;
      w->comp_len = 0;
      if (w->want_comp && append(&w->comp, &w->comp_len, &w->comp_cap, ls, (size_t)(s - ls)) < 0)
        return CP_ENOMEM;
    } else if (!cont && line_is(ls, le, "END:VCALENDAR")) {
      w->depth = 0;
    } else if (pass1) {
      size_t cap = w->calprops_len + 1; /* exact growth, as before: calendar properties are few */
      if (append(&w->calprops, &w->calprops_len, &cap, ls, (size_t)(s - ls)) < 0)
        return CP_ENOMEM;
    }
    return 0;
  }
  if (w->depth >= 2 && !cont) {
    if (starts_with_ci(ls, "BEGIN:")) {
      w->depth++;
    } else if (starts_with_ci(ls, "END:")) {
      w->depth--;
      if (w->depth == 1 && w->comp_kind) {
        bool wanted_now = w->want_comp;
        w->want_comp = false;
        return wanted_now ? 1 : 0;
      }
    }
  }
  return 0;
}

struct tzcomp {
  char *text;
  int line;
};

static int keep_event(struct cp_plan *plan, struct cal *cal, struct ev *e);

/* Reads path; messages name it `name` (the source as the editor knows it). Returns 0 (problems
 * become diagnostics) or CP_ENOMEM. */
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

  /* First pass: encoding, structure, calendar properties, VTIMEZONEs. */
  struct reader r = {
      .fd = fd, .limit = st.st_size, .check = true, .chk_line = 1, .nul_at = -1, .bad_at = -1};
  struct walk w = {.first = true};
  struct tzcomp *tzs = NULL;
  size_t n_tzs = 0;
  int rc = 0;
  const char *ls, *le, *s;
  int got;
  while ((got = reader_line(&r, &ls, &le, &s)) > 0) {
    if (w.broken)
      continue; /* the encoding check reads on to the end */
    int k = walk_line(&w, ls, le, s, true, 2);
    if (k < 0) {
      rc = k;
      break;
    }
    if (k == 1) {
      struct tzcomp *nv = realloc(tzs, (n_tzs + 1) * sizeof *nv);
      if (!nv) {
        rc = CP_ENOMEM;
        break;
      }
      tzs = nv;
      tzs[n_tzs].line = w.comp_line;
      if (!(tzs[n_tzs].text = strdup(w.comp))) {
        rc = CP_ENOMEM;
        break;
      }
      n_tzs++;
    }
  }
  if (got < 0)
    rc = got;
  off_t size = r.got;
  uint64_t sum1 = sum_final(&r);
  bool ok = false;
  if (rc < 0) {
  } else if (size == 0) {
    diag(plan, file, 0, true, "not a calendar: the file is empty");
  } else if (r.nul_at >= 0) {
    diag(plan, file, r.nul_line, true,
         "not a calendar: NUL byte at column %d; the file was not read", r.nul_col);
  } else if (r.bad_at >= 0) {
    diag(plan, file, r.bad_line, true,
         "invalid UTF-8 at column %d (byte 0x%02X): save the file as UTF-8; it was not read",
         r.bad_col, r.bad_byte);
  } else if (w.broken) {
    diag(plan, file, w.broken_line, true, "%s", w.broken_msg);
  } else if (w.depth > 0) {
    diag(plan, file, w.depth > 1 ? w.comp_line : w.open_line, true,
         "truncated: the %s that starts here has no END (an interrupted download or save?); "
         "the file was not read",
         w.depth > 1 ? "component" : "VCALENDAR");
  } else if (!w.n_cal) {
    diag(plan, file, 1, true, "not a calendar: no BEGIN:VCALENDAR; the file was not read");
  } else {
    ok = true;
  }
  char *calprops = w.calprops;
  free(w.comp);
  w.comp = NULL;
  struct file_ctx fc = {.plan = plan, .cal = cal, .file = file, .floating = cal->zone};
  if (!ok)
    goto done;

  fc.tzset = cp_tzset_new();
  struct cp_tzset **nt = fc.tzset ? realloc(p->tzsets, (p->n_tzsets + 1) * sizeof *nt) : NULL;
  if (!nt) {
    cp_tzset_free(fc.tzset);
    rc = CP_ENOMEM;
    goto done;
  }
  p->tzsets = nt;
  nt[p->n_tzsets++] = fc.tzset;

  /* Calendar properties: X-WR-TIMEZONE gives floating times their zone (Google). */
  if (calprops) {
    size_t need = w.calprops_len + 64;
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
              diag(plan, file, w.open_line, true,
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
  }
  /* Time zones before events: the RFC allows them anywhere. */
  for (size_t i = 0; i < n_tzs && rc == 0; i++) {
    icalcomponent *c;
    if ((rc = parse_chunk_into(p, tzs[i].text, strlen(tzs[i].text), NULL, &c)) < 0)
      break;
    if (!c || icalcomponent_isa(c) != ICAL_VTIMEZONE_COMPONENT) {
      diag(plan, file, tzs[i].line, true, "VTIMEZONE: cannot be parsed");
      if (c)
        icalcomponent_free(c);
      continue;
    }
    if (cp_tzset_add_vtimezone(fc.tzset, c) == CP_EPARSE)
      diag(plan, file, tzs[i].line, true, "VTIMEZONE without TZID is ignored");
  }

  /* Second pass: the events, each parsed as soon as it ends. */
  if (rc == 0 && lseek(fd, 0, SEEK_SET) < 0) {
    diag(plan, file, 0, true, "cannot read the plan: %s; the file was not read", strerror(errno));
    goto done;
  }
  r = (struct reader){.fd = fd, .limit = size, .buf = r.buf, .cap = r.cap};
  w = (struct walk){.first = true};
  while (rc == 0 && (got = reader_line(&r, &ls, &le, &s)) > 0) {
    int k = walk_line(&w, ls, le, s, false, 1);
    if (k < 0) {
      rc = k;
      break;
    }
    if (k == 0)
      continue;
    icalcomponent *c;
    uint16_t lines[N_WANTED];
    memset(lines, 0xFF, sizeof lines);
    if ((rc = parse_chunk_into(p, w.comp, w.comp_len, lines, &c)) < 0)
      break;
    if (!c || icalcomponent_isa(c) != ICAL_VEVENT_COMPONENT) {
      diag(plan, file, w.comp_line, true, "VEVENT: cannot be parsed; the event is not planned");
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
    e->line = w.comp_line;
    memcpy(e->lines, lines, sizeof lines);
    rc = extract_event(&fc, e, c);
    icalcomponent_free(c);
    if (rc == 0)
      rc = keep_event(plan, cal, e);
    else
      ev_free(e);
  }
  if (rc == 0 && got < 0)
    rc = got;
  if (rc == 0 && (r.got != size || sum_final(&r) != sum1))
    diag(plan, file, 0, true,
         "the file changed while it was read; it was not read (the next change reads it again)");
done:
  free(w.comp);
  free(calprops);
  for (size_t i = 0; i < n_tzs; i++)
    free(tzs[i].text);
  free(tzs);
  free(r.buf);
  close(fd);
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
/* Keeping texts out of memory                                                              */

/* With opts->spill_dir (the daemon), a plan keeps little in memory: each event is written to
 * an unlinked file as soon as it is read (only its UID stays, to group events), read back when
 * its UID's group is expanded, and what its posts publish (title, texts, media, options) goes
 * back to that file; a post's source then holds just the file offset. 100,000 posts of 100,000
 * events take about 10 MB instead of 150. The file is the plan's own copy, so the text
 * published is the plan's whatever happens to the calendar file meanwhile. */

/* Where the posts of one event come from: what identifies them, and their texts (in memory, or
 * at off in the spill file). */
struct psrc {
  const char *uid;
  const struct cal *cal;
  const char **channels;
  struct ev *ev; /* the event, whose texts are in memory; NULL when they are in the file */
  uint64_t off;
  uint32_t len;
  uint16_t n_channels;
};

#define PSRC_CHUNK 4096 /* psrcs are allocated in chunks: posts point at them */

struct spilled_ev { /* an event in the spill file, until its group is expanded */
  char *uid;
  uint64_t off;
  uint32_t len;
  int order;
};

static int put(struct bytes *o, const void *s, size_t n) {
  if (o->n + n > o->cap) {
    size_t nc = o->cap ? o->cap : 1024;
    while (nc < o->n + n)
      nc *= 2;
    char *nb = realloc(o->b, nc);
    if (!nb)
      return CP_ENOMEM;
    o->b = nb;
    o->cap = nc;
  }
  if (s && n) /* s NULL: just make room */
    memcpy(o->b + o->n, s, n);
  o->n += n;
  return 0;
}

static int put_u32(struct bytes *o, uint32_t v) {
  return put(o, &v, sizeof v);
}

/* A string: its length (UINT32_MAX for NULL), its bytes and a NUL. */
static int put_str(struct bytes *o, const char *s) {
  if (!s)
    return put_u32(o, UINT32_MAX);
  size_t n = strlen(s);
  return n >= UINT32_MAX ? CP_ETOOBIG : put_u32(o, (uint32_t)n) || put(o, s, n + 1) ? CP_ENOMEM : 0;
}

struct cursor {
  const char *p, *end;
  bool bad;
};

static const void *get(struct cursor *c, size_t n) {
  if (c->bad || (size_t)(c->end - c->p) < n) {
    c->bad = true;
    return NULL;
  }
  const void *r = c->p;
  c->p += n;
  return r;
}

static uint32_t get_u32(struct cursor *c) {
  uint32_t v = 0;
  const void *s = get(c, sizeof v);
  if (s)
    memcpy(&v, s, sizeof v);
  return v;
}

/* A string put_str wrote, borrowed from the buffer (NULL for NULL). */
static const char *get_str(struct cursor *c) {
  uint32_t n = get_u32(c);
  if (n == UINT32_MAX || c->bad)
    return NULL;
  return get(c, (size_t)n + 1);
}

static int spill_flush(struct cp__plan_priv *p) {
  size_t done = 0;
  while (done < p->sbuf.n) {
    ssize_t w =
        pwrite(p->spill_fd, p->sbuf.b + done, p->sbuf.n - done, (off_t)(p->spill_end + done));
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return w < 0 ? -errno : -EIO;
    done += (size_t)w;
  }
  p->spill_end += p->sbuf.n;
  p->sbuf.n = 0;
  return 0;
}

/* Appends rec to the spill file; sets *off. */
static int spill_put(struct cp__plan_priv *p, const struct bytes *rec, uint64_t *off) {
  if (rec->n >= UINT32_MAX)
    return CP_ETOOBIG;
  *off = p->spill_end + p->sbuf.n;
  int rc = put(&p->sbuf, rec->b, rec->n);
  if (rc == 0 && p->sbuf.n >= (1u << 20))
    rc = spill_flush(p);
  return rc;
}

/* Reads len bytes at off into p->rbuf. */
static int spill_get(struct cp__plan_priv *p, uint64_t off, uint32_t len) {
  int rc;
  if (off + len > p->spill_end && (rc = spill_flush(p)) < 0)
    return rc;
  p->rbuf.n = 0;
  if ((rc = put(&p->rbuf, NULL, len)) < 0)
    return rc;
  size_t done = 0;
  while (done < len) {
    ssize_t r = pread(p->spill_fd, p->rbuf.b + done, len - done, (off_t)(off + done));
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return r < 0 ? -errno : -EIO;
    done += (size_t)r;
  }
  return 0;
}

/* Opens the spill file in dir: unlinked, so nothing is left behind. -1 when it cannot (the plan
 * then keeps its texts in memory). */
static int spill_open(const char *dir) {
  int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
  char path[4096];
  if (snprintf(path, sizeof path, "%s/.plan-XXXXXX", dir) >= (int)sizeof path)
    return -1;
  fd = mkostemp(path, O_CLOEXEC);
  if (fd >= 0)
    unlink(path);
  return fd;
}

/* Writes a just-read event to the spill file and frees it, keeping its UID (spill mode). */
static int spill_event(struct cp_plan *plan, struct cal *cal, struct ev *e) {
  struct cp__plan_priv *p = plan->priv;
  struct bytes *o = &p->wbuf;
  o->n = 0;
  int rc = put(o, e, sizeof *e);
  const char *strs[] = {e->summary, e->description, e->altdesc, e->rrule};
  for (size_t i = 0; rc == 0 && i < sizeof strs / sizeof strs[0]; i++)
    rc = put_str(o, strs[i]);
  for (size_t i = 0; rc == 0 && i < e->n_cats; i++)
    rc = put_str(o, e->cats[i]);
  for (size_t i = 0; rc == 0 && i < e->n_xchannels; i++)
    rc = put_str(o, e->xchannels[i]);
  for (size_t i = 0; rc == 0 && i < e->n_attach; i++)
    rc = put_str(o, e->attach[i].src) || put_str(o, e->attach[i].alt) ? CP_ENOMEM : 0;
  if (rc == 0 && e->n_rdates)
    rc = put(o, e->rdates, e->n_rdates * sizeof *e->rdates);
  if (rc == 0 && e->n_exdates)
    rc = put(o, e->exdates, e->n_exdates * sizeof *e->exdates);
  if (rc == 0 && cal->n_spilled == cal->cap_spilled) {
    size_t nc = cal->cap_spilled ? cal->cap_spilled * 2 : 256;
    struct spilled_ev *nv = realloc(cal->spilled, nc * sizeof *nv);
    if (!nv)
      rc = CP_ENOMEM;
    else {
      cal->spilled = nv;
      cal->cap_spilled = nc;
    }
  }
  struct spilled_ev st = {.uid = e->uid, .len = (uint32_t)o->n, .order = (int)cal->n_spilled};
  if (rc == 0)
    rc = spill_put(p, o, &st.off);
  if (rc == 0) {
    cal->spilled[cal->n_spilled++] = st;
    e->uid = NULL; /* the spilled record has it now */
  }
  ev_free(e);
  return rc;
}

static char *dup_got(struct cursor *c, bool *oom) {
  const char *s = get_str(c);
  char *d = s ? strdup(s) : NULL;
  if (s && !d)
    *oom = true;
  return d;
}

/* Reads an event spill_event wrote back into memory. */
static int unspill_event(struct cp__plan_priv *p, const struct spilled_ev *st, struct ev **out) {
  *out = NULL;
  int rc = spill_get(p, st->off, st->len);
  if (rc < 0)
    return rc;
  struct cursor c = {p->rbuf.b, p->rbuf.b + p->rbuf.n, false};
  const void *raw = get(&c, sizeof(struct ev));
  struct ev *e = raw ? malloc(sizeof *e) : NULL;
  if (!e)
    return raw ? CP_ENOMEM : -EIO;
  memcpy(e, raw, sizeof *e);
  size_t n_cats = e->n_cats, n_x = e->n_xchannels, n_att = e->n_attach;
  e->uid = e->summary = e->description = e->altdesc = e->rrule = NULL;
  e->cats = e->xchannels = NULL;
  e->attach = NULL;
  e->rdates = e->exdates = NULL;
  e->n_cats = e->n_xchannels = e->n_attach = 0;
  bool oom = false;
  e->uid = strdup(st->uid);
  oom |= !e->uid;
  e->summary = dup_got(&c, &oom);
  e->description = dup_got(&c, &oom);
  e->altdesc = dup_got(&c, &oom);
  e->rrule = dup_got(&c, &oom);
  if (n_cats && (e->cats = calloc(n_cats, sizeof *e->cats)))
    for (; e->n_cats < n_cats; e->n_cats++)
      e->cats[e->n_cats] = dup_got(&c, &oom);
  oom |= n_cats && !e->cats;
  if (n_x && (e->xchannels = calloc(n_x, sizeof *e->xchannels)))
    for (; e->n_xchannels < n_x; e->n_xchannels++)
      e->xchannels[e->n_xchannels] = dup_got(&c, &oom);
  oom |= n_x && !e->xchannels;
  if (n_att && (e->attach = calloc(n_att, sizeof *e->attach)))
    for (; e->n_attach < n_att; e->n_attach++) {
      e->attach[e->n_attach].src = dup_got(&c, &oom);
      e->attach[e->n_attach].alt = dup_got(&c, &oom);
    }
  oom |= n_att && !e->attach;
  size_t nr = e->n_rdates, nx = e->n_exdates;
  e->n_rdates = e->n_exdates = 0;
  const void *rd = get(&c, nr * sizeof(struct when));
  const void *xd = get(&c, nx * sizeof(struct when));
  if (nr && rd && (e->rdates = malloc(nr * sizeof *e->rdates))) {
    memcpy(e->rdates, rd, nr * sizeof *e->rdates);
    e->n_rdates = nr;
  }
  if (nx && xd && (e->exdates = malloc(nx * sizeof *e->exdates))) {
    memcpy(e->exdates, xd, nx * sizeof *e->exdates);
    e->n_exdates = nx;
  }
  oom |= (nr && !e->rdates) || (nx && !e->exdates);
  if (oom || c.bad) {
    ev_free(e);
    return oom ? CP_ENOMEM : -EIO;
  }
  *out = e;
  return 0;
}

/* Keeps a just-read event: in the calendar, or in the spill file. */
static int keep_event(struct cp_plan *plan, struct cal *cal, struct ev *e) {
  if (plan->priv->spill_fd >= 0)
    return spill_event(plan, cal, e);
  int rc = add_event(cal, e);
  if (rc < 0)
    ev_free(e);
  return rc;
}

/* The channel list of a spilled source: shared between events that post to the same channels
 * (the names are the config's). */
static const char **intern_channels(struct cp__plan_priv *p, const char **v, size_t n) {
  for (size_t i = 0; i < p->n_chansets && i < 64; i++)
    if (p->chansets[i].n == n && !memcmp(p->chansets[i].v, v, n * sizeof *v))
      return p->chansets[i].v;
  struct chanset *nv = realloc(p->chansets, (p->n_chansets + 1) * sizeof *nv);
  if (!nv)
    return NULL;
  p->chansets = nv;
  const char **copy = malloc((n ? n : 1) * sizeof *copy);
  if (!copy)
    return NULL;
  if (n)
    memcpy(copy, v, n * sizeof *v);
  nv[p->n_chansets++] = (struct chanset){copy, n};
  return copy;
}

static const char *campaign_of(const struct cp_plan *plan, const struct ev *e) {
  const char *campaign = e->desc->campaign;
  /* Else the first category that is not a channel name (Outlook's category colours). */
  for (size_t c = 0; !campaign && c < e->n_cats; c++)
    if (!cp_config_channel(plan->priv->opts->cfg, e->cats[c]))
      campaign = e->cats[c];
  return campaign;
}

/* The post source of e (after prepare_text), made on its first post. */
static int make_psrc(struct cp_plan *plan, struct ev *e) {
  struct cp__plan_priv *p = plan->priv;
  if (p->n_ps == p->n_chunks * PSRC_CHUNK) {
    struct psrc **nv = realloc(p->ps_chunks, (p->n_chunks + 1) * sizeof *nv);
    if (!nv)
      return CP_ENOMEM;
    p->ps_chunks = nv;
    if (!(nv[p->n_chunks] = calloc(PSRC_CHUNK, sizeof **nv)))
      return CP_ENOMEM;
    p->n_chunks++;
  }
  struct psrc *ps = &p->ps_chunks[p->n_ps / PSRC_CHUNK][p->n_ps % PSRC_CHUNK];
  ps->uid = e->uid;
  ps->cal = e->cal;
  ps->n_channels = (uint16_t)(e->n_channels > UINT16_MAX ? UINT16_MAX : e->n_channels);
  if (p->spill_fd < 0) {
    ps->channels = e->channels;
    ps->ev = e;
    p->n_ps++;
    e->ps = ps;
    return 0;
  }
  ps->uid = NULL; /* the group's end gives it the spilled record's (see expand_spilled) */
  if (!(ps->channels = intern_channels(p, e->channels, ps->n_channels)))
    return CP_ENOMEM;
  struct bytes *o = &p->wbuf;
  o->n = 0;
  const struct when *at = e->has_dtstart ? &e->dtstart : &e->rid;
  unsigned char flags[4] = {e->thread, e->numbered, at->is_utc, 0};
  int32_t line = e->line;
  const struct cp_desc *d = e->desc;
  int rc = put(o, flags, sizeof flags) || put(o, &line, sizeof line) ||
                   put(o, &e->file, sizeof e->file) || put(o, &at->tzname, sizeof at->tzname) ||
                   put(o, &e->home.name, sizeof e->home.name) || put_str(o, e->title) ||
                   put_str(o, e->body) || put_str(o, campaign_of(plan, e)) ||
                   put_u32(o, (uint32_t)d->n_variants)
               ? CP_ENOMEM
               : 0;
  for (size_t i = 0; rc == 0 && i < d->n_variants; i++)
    rc = put_str(o, d->variants[i].channel) || put_str(o, d->variants[i].text) ? CP_ENOMEM : 0;
  rc = rc || put_u32(o, (uint32_t)e->n_media) ? CP_ENOMEM : 0;
  for (size_t i = 0; rc == 0 && i < e->n_media; i++)
    rc = put_str(o, e->media[i].src) || put_str(o, e->media[i].alt) ? CP_ENOMEM : 0;
  rc = rc || put_u32(o, (uint32_t)d->n_options) ? CP_ENOMEM : 0;
  for (size_t i = 0; rc == 0 && i < d->n_options; i++)
    rc = put_str(o, d->options[i].key) || put_str(o, d->options[i].value) ? CP_ENOMEM : 0;
  if (rc == 0)
    rc = spill_put(p, o, &ps->off);
  if (rc < 0)
    return rc;
  ps->len = (uint32_t)o->n;
  p->n_ps++;
  e->ps = ps;
  return 0;
}

/* Fills post's texts from a spilled source (borrowed from p->rbuf and p->dec_*, valid until the
 * next call). */
static int unspill_texts(struct cp__plan_priv *p, const struct psrc *ps, bool all_day,
                         struct cp_post *post) {
  int rc = spill_get(p, ps->off, ps->len);
  if (rc < 0)
    return rc;
  struct cursor c = {p->rbuf.b, p->rbuf.b + p->rbuf.n, false};
  const unsigned char *flags = get(&c, 4);
  const void *line = get(&c, sizeof(int32_t));
  const void *file = get(&c, sizeof(const char *));
  const void *tz_at = get(&c, sizeof(const char *));
  const void *tz_home = get(&c, sizeof(const char *));
  if (c.bad)
    return -EIO;
  int32_t l;
  memcpy(&l, line, sizeof l);
  const char *tz[2];
  memcpy(&tz[0], tz_at, sizeof tz[0]);
  memcpy(&tz[1], tz_home, sizeof tz[1]);
  memcpy(&post->file, file, sizeof post->file);
  post->line = l;
  post->thread = flags[0];
  post->numbered = flags[1];
  post->tzid = all_day || flags[2] ? tz[1] : tz[0];
  if (!post->tzid)
    post->tzid = "UTC";
  post->title = get_str(&c);
  post->text = get_str(&c);
  post->campaign = get_str(&c);
  uint32_t nv = get_u32(&c);
  for (uint32_t i = 0; i < nv && !c.bad; i++) {
    const char *ch = get_str(&c), *text = get_str(&c);
    if (ch && text && !strcmp(ch, post->channel))
      post->text = text;
  }
  uint32_t nm = get_u32(&c);
  if (c.bad || nm > p->rbuf.n)
    return -EIO;
  struct cp_media *media = reserve(p->dec_media, &p->dec_media_cap, nm, sizeof *media, 0);
  if (!media)
    return CP_ENOMEM;
  p->dec_media = media;
  for (uint32_t i = 0; i < nm; i++) {
    p->dec_media[i].src = (char *)get_str(&c);
    p->dec_media[i].alt = (char *)get_str(&c);
  }
  uint32_t no = get_u32(&c);
  if (c.bad || no > p->rbuf.n)
    return -EIO;
  struct cp_post_option *opts = reserve(p->dec_opts, &p->dec_opts_cap, no, sizeof *opts, 0);
  if (!opts)
    return CP_ENOMEM;
  p->dec_opts = opts;
  for (uint32_t i = 0; i < no; i++) {
    p->dec_opts[i].key = get_str(&c);
    p->dec_opts[i].value = get_str(&c);
  }
  if (c.bad || !post->title || !post->text)
    return -EIO;
  post->media = nm ? p->dec_media : NULL;
  post->n_media = nm;
  post->options = no ? p->dec_opts : NULL;
  post->n_options = no;
  return 0;
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
  const struct psrc *src;
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
  if (rc == 0 && !src->ps)
    rc = make_psrc(plan, src);
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
    r->src = src->ps;
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

/* The occurrence and id of post r into post (calendar, uid and channel set). */
static void post_identity(const struct cp__plan_priv *p, const struct rec *r,
                          struct cp_post *post) {
  const struct psrc *ps = r->src;
  if (r->single)
    snprintf(post->occurrence, sizeof post->occurrence, "single");
  else
    occurrence_id(&r->slot, post->occurrence, sizeof post->occurrence);
  post->calendar = ps->cal->name;
  post->uid = ps->uid;
  post->channel = ps->channels[r->channel];
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

void cp_plan_post_id(const struct cp_plan *plan, size_t i, char id[CP_POST_ID_LEN + 1]) {
  struct cp_post post;
  post_identity(plan->priv, &plan->priv->recs[i], &post);
  memcpy(id, post.id, CP_POST_ID_LEN + 1);
}

int cp_plan_post(const struct cp_plan *plan, size_t i, struct cp_post *post) {
  struct cp__plan_priv *p = plan->priv;
  const struct rec *r = &p->recs[i];
  const struct psrc *ps = r->src;
  memset(post, 0, sizeof *post);
  post_identity(p, r, post);
  post->due = r->due;
  post->utc_offset = r->utc_offset;
  post->all_day = r->all_day;
  post->state = (enum cp_post_state)r->state;
  const struct ev *src = ps->ev;
  if (!src)
    return unspill_texts(p, ps, r->all_day, post);
  const struct when *at = src->has_dtstart ? &src->dtstart : &src->rid;
  const char *tzname = r->all_day || at->is_utc ? src->home.name : at->tzname;
  post->tzid = tzname ? tzname : "UTC";
  post->title = src->title;
  post->text = text_for(src, post->channel);
  post->media = src->media;
  post->n_media = src->n_media;
  post->thread = src->thread;
  post->numbered = src->numbered;
  post->campaign = campaign_of(plan, src);
  post->options = src->desc->options;
  post->n_options = src->desc->n_options;
  post->file = src->file;
  post->line = src->line;
  return 0;
}

int cp_plan_post_dup(const struct cp_plan *plan, size_t i, struct cp_post *post, void **mem) {
  *mem = NULL;
  int rc = cp_plan_post(plan, i, post);
  if (rc < 0)
    return rc;
  /* One block: the arrays first (aligned), then the strings. */
  size_t arrays =
      post->n_media * sizeof(struct cp_media) + post->n_options * sizeof(struct cp_post_option);
  size_t strs = strlen(post->title) + strlen(post->text) + 2 +
                (post->campaign ? strlen(post->campaign) + 1 : 0);
  for (size_t k = 0; k < post->n_media; k++)
    strs +=
        strlen(post->media[k].src) + 1 + (post->media[k].alt ? strlen(post->media[k].alt) + 1 : 0);
  for (size_t k = 0; k < post->n_options; k++)
    strs += strlen(post->options[k].key) + strlen(post->options[k].value) + 2;
  char *block = malloc(arrays + strs);
  if (!block)
    return CP_ENOMEM;
  struct cp_media *media = (struct cp_media *)block;
  struct cp_post_option *opts = (struct cp_post_option *)(media + post->n_media);
  char *o = block + arrays;
#define COPY(dst, s)                                                                               \
  do {                                                                                             \
    size_t n_ = strlen(s) + 1;                                                                     \
    memcpy(o, (s), n_);                                                                            \
    (dst) = o;                                                                                     \
    o += n_;                                                                                       \
  } while (0)
  COPY(post->title, post->title);
  COPY(post->text, post->text);
  if (post->campaign)
    COPY(post->campaign, post->campaign);
  for (size_t k = 0; k < post->n_media; k++) {
    COPY(media[k].src, post->media[k].src);
    media[k].alt = NULL;
    if (post->media[k].alt)
      COPY(media[k].alt, post->media[k].alt);
  }
  for (size_t k = 0; k < post->n_options; k++) {
    COPY(opts[k].key, post->options[k].key);
    COPY(opts[k].value, post->options[k].value);
  }
#undef COPY
  post->media = post->n_media ? media : NULL;
  post->options = post->n_options ? opts : NULL;
  *mem = block;
  return 0;
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

static int cmp_spilled(const void *a, const void *b) {
  const struct spilled_ev *x = a, *y = b;
  int c = strcmp(x->uid, y->uid);
  return c ? c : x->order - y->order;
}

/* expand_calendar in spill mode: one UID's events in memory at a time. */
static int expand_spilled(struct cp_plan *plan, struct cal *cal) {
  struct cp__plan_priv *p = plan->priv;
  struct spilled_ev *st = cal->spilled;
  size_t n = cal->n_spilled;
  if (n)
    qsort(st, n, sizeof *st, cmp_spilled);
  struct ev **evs = NULL;
  size_t cap = 0;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0;) {
    size_t j = i + 1;
    while (j < n && !strcmp(st[j].uid, st[i].uid))
      j++;
    if (j - i > cap) {
      struct ev **nv = realloc(evs, (j - i) * sizeof *nv);
      if (!nv) {
        rc = CP_ENOMEM;
        break;
      }
      evs = nv;
      cap = j - i;
    }
    size_t got = 0;
    for (size_t k = i; k < j && rc == 0; k++)
      if ((rc = unspill_event(p, &st[k], &evs[got])) == 0)
        got++;
    if (rc == 0)
      rc = expand_group(plan, evs, got);
    for (size_t k = 0; k < got; k++) {
      if (evs[k]->ps) { /* the post source keeps the UID */
        evs[k]->ps->uid = st[i + k].uid;
        st[i + k].uid = NULL;
      }
      ev_free(evs[k]);
    }
    i = j;
  }
  free(evs);
  for (size_t i = 0; i < n; i++)
    free(st[i].uid);
  free(cal->spilled);
  cal->spilled = NULL;
  cal->n_spilled = cal->cap_spilled = 0;
  return rc;
}

static int expand_calendar(struct cp_plan *plan, struct cal *cal) {
  if (plan->priv->spill_fd >= 0)
    return expand_spilled(plan, cal);
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
      for (size_t k = 0; k < c->n_spilled; k++)
        free(c->spilled[k].uid);
      free(c->spilled);
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
    for (size_t i = 0; i < p->n_ps; i++)
      if (p->spill_fd >= 0)
        free((char *)p->ps_chunks[i / PSRC_CHUNK][i % PSRC_CHUNK].uid);
    for (size_t i = 0; i < p->n_chunks; i++)
      free(p->ps_chunks[i]);
    free(p->ps_chunks);
    for (size_t i = 0; i < p->n_chansets; i++)
      free(p->chansets[i].v);
    free(p->chansets);
    free(p->sbuf.b);
    free(p->wbuf.b);
    free(p->rbuf.b);
    free(p->dec_media);
    free(p->dec_opts);
    if (p->spill_fd >= 0)
      close(p->spill_fd);
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
  p->spill_fd = opts->spill_dir && !opts->check ? spill_open(opts->spill_dir) : -1;
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
  if (p->spill_fd >= 0 && (rc = spill_flush(p)) < 0) {
    cp_plan_free(plan);
    return rc;
  }
  /* Loading is over: the buffers of the spill file go (cp_plan_post needs only a small one). */
  free(p->sbuf.b);
  free(p->wbuf.b);
  free(p->rbuf.b);
  p->sbuf = p->wbuf = p->rbuf = (struct bytes){0};
  if (plan->n_posts && plan->n_posts < p->cap_posts) { /* the growth's slack */
    struct rec *nv = realloc(p->recs, plan->n_posts * sizeof *nv);
    if (nv) {
      p->recs = nv;
      p->cap_posts = plan->n_posts;
    }
  }
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
