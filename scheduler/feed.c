/* The published feed (feed.h): sent posts from the state database, titles from the plan,
 * written as iCalendar by libical. */
#include "feed.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libical/ical.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "calpost/err.h"
#include "plan.h"
#include "report.h"
#include "sync.h"

#define SUMMARY_MAX 120 /* bytes of the first line in SUMMARY */
#define TEXT_MAX 2000   /* bytes of the text in DESCRIPTION */

/* One sent post as the database has it. */
struct row {
  char id[CP_POST_ID_LEN + 1];
  char *channel;
  char *remote_url;
  int64_t due_ms, published_ms;
  bool sampled;
  int64_t age_s, sampled_ms;
  int64_t counts[CP_METRIC_N]; /* -1: unknown */
};

struct rows {
  struct row *v;
  size_t n, cap;
};

static void rows_free(struct rows *l) {
  for (size_t i = 0; i < l->n; i++) {
    free(l->v[i].channel);
    free(l->v[i].remote_url);
  }
  free(l->v);
}

static int read_rows(sqlite3 *db, int64_t since_ms, struct rows *l, char *err, size_t errlen) {
  bool eng = cp_report_db_has_engagement(db);
  char sql[2048];
  snprintf(sql, sizeof sql,
           "SELECT p.id, p.channel, p.remote_url, p.due_ms, ok.at_ms,\n"
           " %s\n"
           "FROM posts p\n"
           "JOIN (SELECT post_id, max(at_ms) AS at_ms FROM attempts WHERE outcome = 'ok'\n"
           "      GROUP BY post_id) ok ON ok.post_id = p.id\n"
           "%s\n"
           "WHERE p.state = 'sent' AND ok.at_ms >= ?1\n"
           "ORDER BY ok.at_ms, p.id",
           eng ? "e.age_s, e.sampled_ms, e.replies, e.reposts, e.likes, e.quotes, e.views"
               : "NULL, NULL, NULL, NULL, NULL, NULL, NULL",
           eng ? "LEFT JOIN engagement e ON e.post_id = p.id AND e.age_s = (SELECT e2.age_s\n"
                 " FROM engagement e2 WHERE e2.post_id = p.id\n"
                 " ORDER BY e2.sampled_ms DESC, e2.age_s DESC LIMIT 1)"
               : "");
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "state database: read sent posts: %s", sqlite3_errmsg(db));
    return CP_EDB;
  }
  sqlite3_bind_int64(st, 1, since_ms);
  int rc = 0, step = SQLITE_DONE;
  while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
    if (l->n == l->cap) {
      size_t cap = l->cap ? 2 * l->cap : 16;
      struct row *v = realloc(l->v, cap * sizeof *v);
      if (!v) {
        rc = CP_ENOMEM;
        break;
      }
      l->v = v;
      l->cap = cap;
    }
    struct row *r = &l->v[l->n];
    memset(r, 0, sizeof *r);
    const char *id = (const char *)sqlite3_column_text(st, 0);
    const char *ch = (const char *)sqlite3_column_text(st, 1);
    const char *url = (const char *)sqlite3_column_text(st, 2);
    snprintf(r->id, sizeof r->id, "%s", id ? id : "");
    r->channel = strdup(ch ? ch : "");
    r->remote_url = url && *url ? strdup(url) : NULL;
    r->due_ms = sqlite3_column_int64(st, 3);
    r->published_ms = sqlite3_column_int64(st, 4);
    if (sqlite3_column_type(st, 5) != SQLITE_NULL) {
      r->sampled = true;
      r->age_s = sqlite3_column_int64(st, 5);
      r->sampled_ms = sqlite3_column_int64(st, 6);
      for (int m = 0; m < CP_METRIC_N; m++) {
        int64_t v = sqlite3_column_int64(st, 7 + m);
        r->counts[m] = sqlite3_column_type(st, 7 + m) == SQLITE_NULL || v < 0 ? -1 : v;
      }
    }
    l->n++;
    if (!r->channel || (url && *url && !r->remote_url))
      rc = CP_ENOMEM;
  }
  if (rc == 0 && step != SQLITE_DONE) {
    snprintf(err, errlen, "state database: read sent posts: %s", sqlite3_errmsg(db));
    int primary = sqlite3_errcode(db) & 0xff;
    rc = primary == SQLITE_BUSY || primary == SQLITE_LOCKED ? CP_EBUSY : CP_EDB;
  }
  if (rc == CP_ENOMEM)
    snprintf(err, errlen, "out of memory");
  sqlite3_finalize(st);
  return rc;
}

/* ---- the plan: titles ----------------------------------------------------------------------- */

/* The daemon's last good copy of a remote source: <state_dir>/calendars/<base>.ics (sync.h). */
static int resolve_cached(void *arg, const char *source, char *buf, size_t len) {
  const struct cp_config *cfg = arg;
  if (!strstr(source, "://"))
    return -1; /* a local file: its current text */
  const char *calendar = NULL;
  for (size_t i = 0; i < cfg->n_calendars && !calendar; i++)
    for (size_t k = 0; k < cfg->calendars[i].n_sources; k++)
      if (!strcmp(cfg->calendars[i].sources[k], source))
        calendar = cfg->calendars[i].name;
  if (!calendar)
    return -1;
  char base[192];
  cp_sync_base_name(calendar, source, base, sizeof base);
  int n = snprintf(buf, len, "%s/calendars/%s.ics", cfg->state_dir, base);
  struct stat st;
  return n > 0 && (size_t)n < len && stat(buf, &st) == 0 ? 0 : -1;
}

struct index_entry {
  const char *id;
  size_t i;
};

static int cmp_entry(const void *a, const void *b) {
  return strcmp(((const struct index_entry *)a)->id, ((const struct index_entry *)b)->id);
}

/* The plan over the due times of the rows, or NULL when there is nothing to look up or the plan
 * cannot be loaded (then there are no titles). Returns 0 or CP_ENOMEM. */
static int load_plan(const struct cp_config *cfg, const struct rows *l, struct cp_plan **plan) {
  *plan = NULL;
  if (!l->n)
    return 0;
  int64_t lo = l->v[0].due_ms, hi = l->v[0].due_ms;
  for (size_t i = 1; i < l->n; i++) {
    if (l->v[i].due_ms < lo)
      lo = l->v[i].due_ms;
    if (l->v[i].due_ms > hi)
      hi = l->v[i].due_ms;
  }
  struct cp_plan_opts o = {.cfg = cfg,
                           .from = lo / 1000 - 1,
                           .to = hi / 1000 + 1,
                           .now = hi / 1000,
                           .resolve = resolve_cached,
                           .resolve_arg = (void *)cfg};
  int rc = cp_plan_load(&o, plan);
  if (rc == CP_ENOMEM)
    return rc;
  if (rc < 0 || !(*plan)->n_posts) {
    cp_plan_free(*plan);
    *plan = NULL;
  }
  return 0;
}

/* ---- text ---------------------------------------------------------------------------------- */

/* Copies at most max bytes of the first non-empty line of s (trimmed) into buf, cut on a UTF-8
 * boundary with "…" when it is longer. */
static void first_line(const char *s, char *buf, size_t max) {
  while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
    s++;
  size_t n = strcspn(s, "\r\n");
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    n--;
  bool cut = n > max;
  if (cut) {
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
      n--;
  }
  memcpy(buf, s, n);
  strcpy(buf + n, cut ? "…" : "");
}

static void utc_time(int64_t ms, char *buf, size_t len) {
  int64_t t = ms / 1000;
  cp_plan_format_time(t - (ms < 0 && ms % 1000), 0, buf, len);
}

static void human_duration(int64_t s, char *buf, size_t len) {
  if (s >= 86400 && s % 86400 == 0)
    snprintf(buf, len, "%" PRId64 " d", s / 86400);
  else if (s >= 3600 && s % 3600 == 0)
    snprintf(buf, len, "%" PRId64 " h", s / 3600);
  else if (s >= 60 && s % 60 == 0)
    snprintf(buf, len, "%" PRId64 " min", s / 60);
  else
    snprintf(buf, len, "%" PRId64 " s", s);
}

/* A growing string for DESCRIPTION. */
struct buf {
  char *s;
  size_t n, cap;
  bool oom;
};

static void addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(struct buf *b, const char *fmt, ...) {
  if (b->oom)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = true;
      return;
    }
    if (b->s && b->n + (size_t)n < b->cap) {
      b->n += (size_t)n;
      return;
    }
    size_t cap = (b->cap ? b->cap : 256) * 2 + (size_t)n;
    char *s = realloc(b->s, cap);
    if (!s) {
      b->oom = true;
      return;
    }
    b->s = s;
    b->cap = cap;
  }
}

static void describe(struct buf *b, const struct row *r, const struct cp_post *post) {
  char pub[40], due[40], late[32];
  utc_time(r->published_ms, pub, sizeof pub);
  utc_time(r->due_ms, due, sizeof due);
  int64_t late_ms = r->published_ms - r->due_ms;
  addf(b, "Published %s on %s (due %s", pub, r->channel, due);
  if (late_ms >= 1000) {
    human_duration(late_ms / 1000, late, sizeof late);
    addf(b, ", %s late", late);
  }
  addf(b, ").\n");
  if (r->remote_url)
    addf(b, "%s\n", r->remote_url);
  if (r->sampled) {
    char age[32], at[40];
    human_duration(r->age_s, age, sizeof age);
    utc_time(r->sampled_ms, at, sizeof at);
    addf(b, "Engagement after %s (%s):", age, at);
    bool any = false;
    for (int m = 0; m < CP_METRIC_N; m++)
      if (r->counts[m] >= 0) {
        addf(b, "%s %" PRId64 " %s", any ? "," : "", r->counts[m],
             cp_report_metric_name((enum cp_report_metric)m));
        any = true;
      }
    addf(b, "%s\n", any ? "" : " none reported");
  }
  if (post) {
    const char *text = post->text && *post->text ? post->text : post->title;
    if (text && *text) {
      size_t n = strlen(text);
      bool cut = n > TEXT_MAX;
      if (cut) {
        n = TEXT_MAX;
        while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
          n--;
      }
      addf(b, "\n%.*s%s\n", (int)n, text, cut ? "…" : "");
    }
  }
  addf(b, "\nPost %s (calpost)", r->id);
}

/* ---- building -------------------------------------------------------------------------------- */

static struct icaltimetype utc_ical(int64_t ms) {
  return icaltime_from_timet_with_zone((time_t)(ms / 1000), 0, icaltimezone_get_utc_timezone());
}

/* Adds p to c; false when p is NULL (out of memory). */
static bool add(icalcomponent *c, icalproperty *p) {
  if (!p)
    return false;
  icalcomponent_add_property(c, p);
  return true;
}

static icalcomponent *event(const struct row *r, const struct cp_post *post) {
  char uid[CP_POST_ID_LEN + 16], summary[SUMMARY_MAX + 256], line[SUMMARY_MAX + 8];
  snprintf(uid, sizeof uid, "%s@calpost", r->id);
  line[0] = '\0';
  if (post && post->text)
    first_line(post->text, line, SUMMARY_MAX);
  if (post && !line[0] && post->title)
    first_line(post->title, line, SUMMARY_MAX);
  if (line[0])
    snprintf(summary, sizeof summary, "[%.100s] %s", r->channel, line);
  else
    snprintf(summary, sizeof summary, "[%.100s] post %s", r->channel, r->id);
  struct buf desc = {0};
  describe(&desc, r, post);
  int64_t stamp = r->sampled && r->sampled_ms > r->published_ms ? r->sampled_ms : r->published_ms;

  icalcomponent *ev = icalcomponent_new_vevent();
  bool ok = ev && !desc.oom && desc.s;
  ok = ok && add(ev, icalproperty_new_uid(uid));
  ok = ok && add(ev, icalproperty_new_dtstamp(utc_ical(stamp)));
  ok = ok && add(ev, icalproperty_new_dtstart(utc_ical(r->published_ms)));
  ok = ok && add(ev, icalproperty_new_summary(summary));
  ok = ok && add(ev, icalproperty_new_description(desc.s));
  ok = ok && (!r->remote_url || add(ev, icalproperty_new_url(r->remote_url)));
  ok = ok && add(ev, icalproperty_new_categories(r->channel));
  ok = ok && add(ev, icalproperty_new_transp(ICAL_TRANSP_TRANSPARENT));
  free(desc.s);
  if (!ok) {
    if (ev)
      icalcomponent_free(ev);
    return NULL;
  }
  return ev;
}

static icalcomponent *calendar(void) {
  icalcomponent *cal = icalcomponent_new_vcalendar();
  if (!cal)
    return NULL;
  bool ok = add(cal, icalproperty_new_version("2.0"));
  ok =
      ok && add(cal, icalproperty_new_prodid("-//calpost//published feed " CALPOST_VERSION "//EN"));
  ok = ok && add(cal, icalproperty_new_calscale("GREGORIAN"));
  /* The name Google, Apple and Thunderbird show for a subscribed calendar. */
  icalproperty *name = ok ? icalproperty_new_x("calpost: published") : NULL;
  if (name)
    icalproperty_set_x_name(name, "X-WR-CALNAME");
  ok = ok && add(cal, name);
  if (!ok) {
    icalcomponent_free(cal);
    return NULL;
  }
  return cal;
}

int cp_feed_build_msg(const struct cp_config *cfg, int64_t since_ms, char **ics_out, char *err,
                      size_t errlen) {
  *ics_out = NULL;
  sqlite3 *db;
  int rc = cp_report_db_open(cfg, &db, err, errlen);
  if (rc < 0)
    return rc;
  struct rows rows = {0};
  bool tx = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
  rc = read_rows(db, since_ms, &rows, err, errlen);
  if (tx)
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  sqlite3_close(db);

  struct cp_plan *plan = NULL;
  struct index_entry *index = NULL;
  struct cp_post *posts = NULL; /* the plan's posts, whose ids the index points at */
  if (rc == 0)
    rc = load_plan(cfg, &rows, &plan);
  if (rc == 0 && plan) {
    posts = malloc(plan->n_posts * sizeof *posts);
    index = malloc(plan->n_posts * sizeof *index);
    if (!posts || !index) {
      rc = CP_ENOMEM;
    } else {
      for (size_t i = 0; i < plan->n_posts; i++) {
        cp_plan_post(plan, i, &posts[i]);
        index[i].id = posts[i].id;
        index[i].i = i;
      }
      qsort(index, plan->n_posts, sizeof *index, cmp_entry);
    }
  }
  icalcomponent *cal = rc == 0 ? calendar() : NULL;
  if (rc == 0 && !cal)
    rc = CP_ENOMEM;
  for (size_t i = 0; rc == 0 && i < rows.n; i++) {
    const struct cp_post *post = NULL;
    if (plan) {
      struct index_entry key = {.id = rows.v[i].id};
      const struct index_entry *e = bsearch(&key, index, plan->n_posts, sizeof *index, cmp_entry);
      post = e ? &posts[e->i] : NULL;
    }
    icalcomponent *ev = event(&rows.v[i], post);
    if (!ev)
      rc = CP_ENOMEM;
    else
      icalcomponent_add_component(cal, ev);
  }
  if (rc == 0) {
    char *s = icalcomponent_as_ical_string_r(cal);
    *ics_out = s ? strdup(s) : NULL;
    icalmemory_free_buffer(s);
    if (!*ics_out)
      rc = CP_ENOMEM;
  }
  if (rc == CP_ENOMEM)
    snprintf(err, errlen, "out of memory");
  if (cal)
    icalcomponent_free(cal);
  free(posts);
  free(index);
  cp_plan_free(plan);
  rows_free(&rows);
  return rc;
}

int cp_feed_build(const struct cp_config *cfg, int64_t since_ms, char **ics_out) {
  char err[512];
  return cp_feed_build_msg(cfg, since_ms, ics_out, err, sizeof err);
}
