/* `calpost report`'s numbers: read-only queries over the state database. See report.h. */
#include "report.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "calpost/err.h"
#include "daemon.h"
#include "plan.h"
#include "tz.h"

/* The daemon holds the write lock for milliseconds; a report may wait a little. */
#define BUSY_TIMEOUT_MS 5000
#define DEFAULT_MIN_SLOT_POSTS 3

static const char *const metric_names[CP_METRIC_N] = {"replies", "reposts", "likes", "quotes",
                                                      "views"};
static const char *const weekday_names[7] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};

const char *cp_report_metric_name(enum cp_report_metric m) {
  return (unsigned)m < CP_METRIC_N ? metric_names[m] : "?";
}

const char *cp_report_weekday_name(int weekday) {
  return weekday >= 0 && weekday < 7 ? weekday_names[weekday] : "?";
}

/* Formats a message with one string into err; returns code. */
static int fail(char *err, size_t errlen, int code, const char *fmt, const char *detail)
    __attribute__((format(printf, 4, 0)));
static int fail(char *err, size_t errlen, int code, const char *fmt, const char *detail) {
  snprintf(err, errlen, fmt, detail);
  return code;
}

/* ---- the database ------------------------------------------------------------------------- */

/* Appends path to buf as the path of an SQLite URI: everything but unreserved characters and
 * '/' percent-encoded (a '?' or '#' in a folder name must not end the path). */
static int uri_path(const char *path, char *buf, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = strlen(buf);
  for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
    bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 strchr("/-._~", *p);
    if (o + 4 >= len)
      return CP_ETOOBIG;
    if (plain) {
      buf[o++] = (char)*p;
    } else {
      buf[o++] = '%';
      buf[o++] = hex[*p >> 4];
      buf[o++] = hex[*p & 15];
    }
  }
  buf[o] = '\0';
  return 0;
}

/* 1 if db has table name, 0 if not, or an SQLite error code (negated). */
static int has_table(sqlite3 *db, const char *name) {
  sqlite3_stmt *st;
  int rc = sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                              -1, &st, NULL);
  if (rc != SQLITE_OK)
    return -rc;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -rc;
}

bool cp_report_db_has_engagement(sqlite3 *db) {
  return has_table(db, "engagement") == 1;
}

int cp_report_db_open(const struct cp_config *cfg, sqlite3 **db, char *err, size_t errlen) {
  char path[4096], uri[4096 * 3 + 32] = "file:";
  *db = NULL;
  if (snprintf(path, sizeof path, "%s/calpost.db", cfg->state_dir) >= (int)sizeof path ||
      uri_path(path, uri, sizeof uri - 16) < 0) {
    snprintf(err, errlen, "the state directory %s: path too long", cfg->state_dir);
    return CP_EINVAL;
  }
  strcat(uri, "?mode=ro");
  struct stat st;
  if (stat(path, &st) < 0) {
    int e = errno;
    if (e == ENOENT) {
      snprintf(err, errlen,
               "no state database at %s: nothing was published with this state_dir yet "
               "(`calpost run` creates it)",
               path);
      return CP_ENOTFOUND;
    }
    snprintf(err, errlen, "cannot read the state database %s: %s", path, strerror(e));
    return CP_EDB;
  }
  int rc = sqlite3_open_v2(uri, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_busy_timeout(*db, BUSY_TIMEOUT_MS);
  int posts = rc == SQLITE_OK ? has_table(*db, "posts") : 0;
  int attempts = posts == 1 ? has_table(*db, "attempts") : 0;
  if (rc == SQLITE_OK && (posts < 0 || attempts < 0))
    rc = -(posts < 0 ? posts : attempts);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "cannot read the state database %s: %s", path,
             *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
    sqlite3_close(*db);
    *db = NULL;
    return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED ? CP_EBUSY : CP_EDB;
  }
  if (!posts || !attempts) {
    snprintf(err, errlen, "%s is not a calpost state database (no posts or attempts table)", path);
    sqlite3_close(*db);
    *db = NULL;
    return CP_EDB;
  }
  return 0;
}

int cp_report_parse_window(const char *since, const char *now_s, const char *zone, int64_t *from_ms,
                           int64_t *to_ms, char *err, size_t errlen) {
  int64_t now = (int64_t)time(NULL), dur, t;
  if (now_s && cp_plan_parse_time(now_s, zone, now, &now) < 0)
    return fail(err, errlen, CP_EINVAL, "--now: '%s' is not a date-time", now_s);
  if (cp_daemon_parse_duration(since, &dur) == 0)
    t = now - dur / 1000;
  else if (cp_plan_parse_time(since, zone, now, &t) < 0)
    return fail(err, errlen, CP_EINVAL,
                "--since: '%s' is not a duration (30d, 12h), a date (YYYY-MM-DD) or a date-time",
                since);
  if (t > now)
    return fail(err, errlen, CP_EINVAL, "--since: '%s' is after the end of the window (--now)",
                since);
  *from_ms = t * 1000;
  *to_ms = now * 1000;
  return 0;
}

/* ---- building ------------------------------------------------------------------------------- */

static int dberr(sqlite3 *db, char *err, size_t errlen, const char *what) {
  snprintf(err, errlen, "state database: %s: %s", what, sqlite3_errmsg(db));
  int primary = sqlite3_errcode(db) & 0xff;
  return primary == SQLITE_BUSY || primary == SQLITE_LOCKED ? CP_EBUSY : CP_EDB;
}

static char *dup_text(sqlite3_stmt *st, int col, bool *oom) {
  const unsigned char *v = sqlite3_column_text(st, col);
  if (!v)
    return NULL;
  char *s = strdup((const char *)v);
  if (!s)
    *oom = true;
  return s;
}

static int parse_outcome(const char *name, enum cp_outcome *out) {
  for (int i = 0; i < CP_REPORT_OUTCOMES; i++)
    if (name && !strcmp(name, cp_store_outcome_name((enum cp_outcome)i))) {
      *out = (enum cp_outcome)i;
      return 0;
    }
  return CP_EINVAL;
}

static struct cp_report_channel *channel_add(struct cp_report *r, const char *name) {
  for (size_t i = 0; i < r->n_channels; i++)
    if (!strcmp(r->channels[i].name, name))
      return &r->channels[i];
  struct cp_report_channel *v = realloc(r->channels, (r->n_channels + 1) * sizeof *v);
  if (!v)
    return NULL;
  r->channels = v;
  struct cp_report_channel *c = &v[r->n_channels];
  memset(c, 0, sizeof *c);
  if (!(c->name = strdup(name)))
    return NULL;
  r->n_channels++;
  return c;
}

static int post_push(struct cp_report_channel *c, const struct cp_report_post *p) {
  if ((c->n & (c->n - 1)) == 0) { /* 0, 1, 2, 4, ...: grow to the next power of two */
    struct cp_report_post *v = realloc(c->v, (c->n ? 2 * c->n : 1) * sizeof *v);
    if (!v)
      return CP_ENOMEM;
    c->v = v;
  }
  c->v[c->n++] = *p;
  return 0;
}

static int64_t floor_div(int64_t a, int64_t b) {
  return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Weekday (0 = Monday) and hour of utc_ms in zone. */
static void slot_of(icaltimezone *zone, int64_t utc_ms, int *weekday, int *hour) {
  int64_t t = floor_div(utc_ms, 1000);
  int64_t local = t + cp_tz_offset_at(zone, t);
  int64_t days = floor_div(local, 86400);
  *weekday = (int)(((days % 7) + 7 + 3) % 7); /* 1970-01-01 was a Thursday */
  *hour = (int)((local - days * 86400) / 3600);
}

/* The posts due in the window, each with its OK attempt, last attempt and latest sample. */
static int read_posts(sqlite3 *db, struct cp_report *r, const struct cp_report_opts *o,
                      icaltimezone *zone, char *err, size_t errlen) {
  bool eng = cp_report_db_has_engagement(db);
  char sql[2048];
  snprintf(sql, sizeof sql,
           "SELECT p.id, p.channel, p.due_ms, p.state, p.remote_url, p.updated_ms,\n"
           " (SELECT max(a.at_ms) FROM attempts a WHERE a.post_id = p.id AND a.outcome = 'ok'),\n"
           " (SELECT count(*) FROM attempts a WHERE a.post_id = p.id),\n"
           " la.outcome, la.http_status, la.message,\n"
           " %s\n"
           "FROM posts p\n"
           "LEFT JOIN attempts la ON la.post_id = p.id\n"
           " AND la.n = (SELECT max(a.n) FROM attempts a WHERE a.post_id = p.id)\n"
           "%s\n"
           "WHERE p.due_ms >= ?1 AND p.due_ms <= ?2 AND (?3 IS NULL OR p.channel = ?3)\n"
           "ORDER BY p.channel, p.due_ms, p.id",
           eng ? "e.age_s, e.sampled_ms, e.replies, e.reposts, e.likes, e.quotes, e.views"
               : "NULL, NULL, NULL, NULL, NULL, NULL, NULL",
           eng ? "LEFT JOIN engagement e ON e.post_id = p.id AND e.age_s = (SELECT e2.age_s\n"
                 " FROM engagement e2 WHERE e2.post_id = p.id\n"
                 " ORDER BY e2.sampled_ms DESC, e2.age_s DESC LIMIT 1)"
               : "");
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
    return dberr(db, err, errlen, "read posts");
  sqlite3_bind_int64(st, 1, o->from_ms);
  sqlite3_bind_int64(st, 2, o->to_ms);
  if (o->channel)
    sqlite3_bind_text(st, 3, o->channel, -1, SQLITE_STATIC);
  int rc = 0, step = SQLITE_DONE;
  while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
    struct cp_report_post p = {0};
    bool oom = false;
    const char *id = (const char *)sqlite3_column_text(st, 0);
    snprintf(p.id, sizeof p.id, "%s", id ? id : "");
    const char *ch = (const char *)sqlite3_column_text(st, 1);
    p.due_ms = sqlite3_column_int64(st, 2);
    const char *state = (const char *)sqlite3_column_text(st, 3);
    if (cp_store_state_parse(state, &p.state) < 0) {
      rc = fail(err, errlen, CP_EDB, "state database: a post has an unknown state \"%s\"",
                state ? state : "");
      break;
    }
    p.remote_url = dup_text(st, 4, &oom);
    if (p.state == CP_STORE_SENT) {
      /* A sent post always has its OK attempt; the update time stands in if it does not. */
      p.published_ms = sqlite3_column_type(st, 6) == SQLITE_NULL ? sqlite3_column_int64(st, 5)
                                                                 : sqlite3_column_int64(st, 6);
      p.lateness_ms = p.published_ms > p.due_ms ? p.published_ms - p.due_ms : 0;
    }
    p.n_attempts = sqlite3_column_int(st, 7);
    p.has_attempt = parse_outcome((const char *)sqlite3_column_text(st, 8), &p.last_outcome) == 0;
    p.last_http_status = sqlite3_column_int(st, 9);
    p.last_message = dup_text(st, 10, &oom);
    if (p.state == CP_STORE_SENT && sqlite3_column_type(st, 11) != SQLITE_NULL) {
      p.sampled = true;
      p.age_s = sqlite3_column_int64(st, 11);
      p.sampled_ms = sqlite3_column_int64(st, 12);
      for (int m = 0; m < CP_METRIC_N; m++) {
        bool null = sqlite3_column_type(st, 13 + m) == SQLITE_NULL;
        int64_t v = sqlite3_column_int64(st, 13 + m);
        p.counts[m] = null || v < 0 ? -1 : v;
      }
      for (int m = CP_METRIC_REPLIES; m <= CP_METRIC_LIKES; m++)
        p.score += p.counts[m] > 0 ? p.counts[m] : 0;
    }
    slot_of(zone, p.due_ms, &p.weekday, &p.hour);
    struct cp_report_channel *c = oom || !ch ? NULL : channel_add(r, ch);
    if (!c || post_push(c, &p) < 0) {
      free(p.remote_url);
      free(p.last_message);
      rc = ch ? fail(err, errlen, CP_ENOMEM, "%s", "out of memory")
              : fail(err, errlen, CP_EDB, "%s", "state database: a post without a channel");
    }
  }
  if (rc == 0 && step != SQLITE_DONE)
    rc = dberr(db, err, errlen, "read posts");
  sqlite3_finalize(st);
  return rc;
}

/* Attempt outcomes per channel, over the posts due in the window. */
static int read_attempts(sqlite3 *db, struct cp_report *r, const struct cp_report_opts *o,
                         char *err, size_t errlen) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db,
                         "SELECT p.channel, a.outcome, count(*) FROM attempts a\n"
                         "JOIN posts p ON p.id = a.post_id\n"
                         "WHERE p.due_ms >= ?1 AND p.due_ms <= ?2\n"
                         " AND (?3 IS NULL OR p.channel = ?3)\n"
                         "GROUP BY p.channel, a.outcome",
                         -1, &st, NULL) != SQLITE_OK)
    return dberr(db, err, errlen, "read attempts");
  sqlite3_bind_int64(st, 1, o->from_ms);
  sqlite3_bind_int64(st, 2, o->to_ms);
  if (o->channel)
    sqlite3_bind_text(st, 3, o->channel, -1, SQLITE_STATIC);
  int rc = 0, step = SQLITE_DONE;
  while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
    const char *ch = (const char *)sqlite3_column_text(st, 0);
    enum cp_outcome out;
    if (!ch || parse_outcome((const char *)sqlite3_column_text(st, 1), &out) < 0)
      continue; /* an outcome a newer calpost records: not one of ours to count */
    struct cp_report_channel *c = channel_add(r, ch);
    if (!c)
      rc = fail(err, errlen, CP_ENOMEM, "%s", "out of memory");
    else
      c->attempts[out] += (size_t)sqlite3_column_int64(st, 2);
  }
  if (rc == 0 && step != SQLITE_DONE)
    rc = dberr(db, err, errlen, "read attempts");
  sqlite3_finalize(st);
  return rc;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Nearest rank: the value at position ceil(p * n / 100) of sorted v (n > 0). */
static int64_t percentile(const int64_t *v, size_t n, unsigned p) {
  size_t rank = (p * n + 99) / 100;
  return v[rank ? rank - 1 : 0];
}

/* Sums c's posts into the counters of dst (c itself or the total); lateness values go to lat. */
static void count(const struct cp_report_channel *c, struct cp_report_channel *dst, int64_t *lat,
                  size_t *n_lat) {
  for (size_t i = 0; i < c->n; i++) {
    const struct cp_report_post *p = &c->v[i];
    dst->posts++;
    dst->states[p->state]++;
    if (p->state == CP_STORE_SENT) {
      lat[(*n_lat)++] = p->lateness_ms;
      dst->on_time += p->lateness_ms <= CP_REPORT_ON_TIME_MS;
    }
    if (!p->sampled)
      continue;
    dst->sampled++;
    for (int m = 0; m < CP_METRIC_N; m++) {
      if (p->counts[m] < 0)
        continue;
      dst->totals[m] = (dst->known[m] ? dst->totals[m] : 0) + p->counts[m];
      dst->known[m]++;
    }
  }
}

static void finish_lateness(struct cp_report_channel *c, int64_t *lat, size_t n) {
  if (!n)
    return;
  qsort(lat, n, sizeof *lat, cmp_i64);
  c->has_lateness = true;
  c->lateness_p50_ms = percentile(lat, n, 50);
  c->lateness_p95_ms = percentile(lat, n, 95);
  c->lateness_max_ms = lat[n - 1];
}

/* Orders indices into the channel's posts (arg) by score, best first. */
static int cmp_top(const void *a, const void *b, void *arg) {
  const struct cp_report_channel *c = arg;
  const struct cp_report_post *x = &c->v[*(const size_t *)a];
  const struct cp_report_post *y = &c->v[*(const size_t *)b];
  if (x->score != y->score)
    return x->score > y->score ? -1 : 1;
  if (x->published_ms != y->published_ms)
    return x->published_ms < y->published_ms ? -1 : 1;
  return strcmp(x->id, y->id);
}

static int cmp_slot(const void *a, const void *b) {
  const struct cp_report_slot *x = a, *y = b;
  if (x->few != y->few)
    return x->few ? 1 : -1;
  if (x->average != y->average)
    return x->average > y->average ? -1 : 1;
  if (x->weekday != y->weekday)
    return x->weekday - y->weekday;
  return x->hour - y->hour;
}

static int finish_channel(struct cp_report_channel *c, size_t min_slot_posts) {
  for (int m = 0; m < CP_METRIC_N; m++)
    c->totals[m] = -1;
  int64_t *lat = calloc(c->n + 1, sizeof *lat);
  size_t n_lat = 0;
  if (!lat)
    return CP_ENOMEM;
  count(c, c, lat, &n_lat);
  finish_lateness(c, lat, n_lat);
  free(lat);

  size_t *top = calloc(c->sampled + 1, sizeof *top);
  struct cp_report_slot slots[7 * 24] = {{0}};
  if (!top)
    return CP_ENOMEM;
  size_t n_top = 0;
  for (size_t i = 0; i < c->n; i++) {
    const struct cp_report_post *p = &c->v[i];
    if (!p->sampled)
      continue;
    top[n_top++] = i;
    struct cp_report_slot *s = &slots[p->weekday * 24 + p->hour];
    s->posts++;
    s->score += p->score;
  }
  qsort_r(top, n_top, sizeof *top, cmp_top, c);
  c->top = top;
  c->n_top = n_top < CP_REPORT_TOP_POSTS ? n_top : CP_REPORT_TOP_POSTS;

  size_t n_slots = 0;
  for (int i = 0; i < 7 * 24; i++)
    n_slots += slots[i].posts > 0;
  c->slots = calloc(n_slots + 1, sizeof *c->slots);
  if (!c->slots)
    return CP_ENOMEM;
  for (int i = 0; i < 7 * 24; i++) {
    if (!slots[i].posts)
      continue;
    struct cp_report_slot *s = &c->slots[c->n_slots++];
    *s = slots[i];
    s->weekday = i / 24;
    s->hour = i % 24;
    s->average = (double)s->score / (double)s->posts;
    s->few = s->posts < min_slot_posts;
  }
  qsort(c->slots, c->n_slots, sizeof *c->slots, cmp_slot);
  return 0;
}

static int finish_total(struct cp_report *r) {
  struct cp_report_channel *t = &r->total;
  size_t n = 0;
  for (size_t i = 0; i < r->n_channels; i++)
    n += r->channels[i].n;
  int64_t *lat = calloc(n + 1, sizeof *lat);
  if (!lat || !(t->name = strdup("total"))) {
    free(lat);
    return CP_ENOMEM;
  }
  for (int m = 0; m < CP_METRIC_N; m++)
    t->totals[m] = -1;
  size_t n_lat = 0;
  for (size_t i = 0; i < r->n_channels; i++) {
    count(&r->channels[i], t, lat, &n_lat);
    for (int k = 0; k < CP_REPORT_OUTCOMES; k++)
      t->attempts[k] += r->channels[i].attempts[k];
  }
  finish_lateness(t, lat, n_lat);
  free(lat);
  return 0;
}

static bool channel_in_db(sqlite3 *db, const char *name) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, "SELECT 1 FROM posts WHERE channel = ?1 LIMIT 1", -1, &st, NULL) !=
      SQLITE_OK)
    return false;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  bool found = sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  return found;
}

int cp_report_build(const struct cp_config *cfg, const struct cp_report_opts *o,
                    struct cp_report **out, char *err, size_t errlen) {
  *out = NULL;
  const char *zone_name = o->timezone ? o->timezone : cfg->timezone;
  struct cp_tz tz;
  if (cp_tz_lookup(NULL, zone_name, &tz) < 0)
    return fail(err, errlen, CP_ETZ,
                "unknown time zone '%s' (use an IANA name such as "
                "Europe/Berlin)",
                zone_name);
  struct cp_report *r = calloc(1, sizeof *r);
  if (!r)
    return fail(err, errlen, CP_ENOMEM, "%s", "out of memory");
  r->from_ms = o->from_ms;
  r->to_ms = o->to_ms;
  r->min_slot_posts = o->min_slot_posts ? o->min_slot_posts : DEFAULT_MIN_SLOT_POSTS;
  r->timezone = strdup(tz.name);
  int rc = r->timezone ? 0 : fail(err, errlen, CP_ENOMEM, "%s", "out of memory");

  /* Configured channels come first, in config order, even with nothing in the window. Without
   * a config file the "configured" channels are merely the known types: only the database's
   * channels are shown then. */
  for (size_t i = 0; rc == 0 && cfg->path && i < cfg->n_channels; i++) {
    const char *name = cfg->channels[i].name;
    if ((!o->channel || !strcmp(o->channel, name)) && !channel_add(r, name))
      rc = fail(err, errlen, CP_ENOMEM, "%s", "out of memory");
  }
  sqlite3 *db = NULL;
  if (rc == 0)
    rc = cp_report_db_open(cfg, &db, err, errlen);
  bool in_tx = false;
  if (rc == 0) {
    /* One read transaction: every number comes from the same snapshot. */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
      rc = dberr(db, err, errlen, "begin");
    else
      in_tx = true;
  }
  if (rc == 0 && o->channel && !cp_config_channel(cfg, o->channel) &&
      !channel_in_db(db, o->channel))
    rc = fail(err, errlen, CP_EINVAL,
              "--channel: no channel '%s' in the configuration or the state database", o->channel);
  if (rc == 0)
    rc = read_posts(db, r, o, tz.zone, err, errlen);
  if (rc == 0)
    rc = read_attempts(db, r, o, err, errlen);
  if (in_tx)
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  sqlite3_close(db);

  /* Channels found only in the database follow the configured ones, by name (the query
   * returned them sorted by name already). */
  for (size_t i = 0; rc == 0 && i < r->n_channels; i++)
    if (finish_channel(&r->channels[i], r->min_slot_posts) < 0)
      rc = fail(err, errlen, CP_ENOMEM, "%s", "out of memory");
  if (rc == 0 && finish_total(r) < 0)
    rc = fail(err, errlen, CP_ENOMEM, "%s", "out of memory");
  if (rc < 0) {
    cp_report_free(r);
    return rc;
  }
  *out = r;
  return 0;
}

static void channel_free(struct cp_report_channel *c) {
  for (size_t i = 0; i < c->n; i++) {
    free(c->v[i].remote_url);
    free(c->v[i].last_message);
  }
  free(c->v);
  free(c->top);
  free(c->slots);
  free(c->name);
}

void cp_report_free(struct cp_report *r) {
  if (!r)
    return;
  for (size_t i = 0; i < r->n_channels; i++)
    channel_free(&r->channels[i]);
  free(r->channels);
  channel_free(&r->total);
  free(r->timezone);
  free(r);
}

/* ---- JSON --------------------------------------------------------------------------------- */

static json_t *time_json(int64_t ms) {
  char buf[40];
  cp_plan_format_time(floor_div(ms, 1000), 0, buf, sizeof buf);
  return json_string(buf);
}

/* A share or an average, rounded to 4 decimals so the JSON does not show binary noise. */
static json_t *real_json(double v) {
  return json_real(round(v * 10000) / 10000);
}

/* Sets key to v, taking v; a NULL v (out of memory) or a failed set clears *ok. */
static void put(json_t *o, const char *key, json_t *v, bool *ok) {
  if (json_object_set_new(o, key, v) < 0)
    *ok = false;
}

static void append(json_t *a, json_t *v, bool *ok) {
  if (json_array_append_new(a, v) < 0)
    *ok = false;
}

static json_t *counts_json(const int64_t *counts) {
  json_t *o = json_object();
  bool ok = o != NULL;
  for (int m = 0; ok && m < CP_METRIC_N; m++)
    put(o, metric_names[m], counts[m] < 0 ? json_null() : json_integer(counts[m]), &ok);
  if (!ok)
    json_decref(o);
  return ok ? o : NULL;
}

static json_t *top_json(const struct cp_report_post *p) {
  json_t *t = json_object();
  bool ok = t != NULL;
  if (ok) {
    put(t, "id", json_string(p->id), &ok);
    put(t, "due", time_json(p->due_ms), &ok);
    put(t, "published", time_json(p->published_ms), &ok);
    put(t, "url", p->remote_url ? json_string(p->remote_url) : json_null(), &ok);
    put(t, "score", json_integer(p->score), &ok);
    put(t, "age_s", json_integer(p->age_s), &ok);
    put(t, "sampled", time_json(p->sampled_ms), &ok);
    put(t, "counts", counts_json(p->counts), &ok);
  }
  if (!ok)
    json_decref(t);
  return ok ? t : NULL;
}

static json_t *problem_json(const struct cp_report_post *p) {
  json_t *q = json_object();
  bool ok = q != NULL;
  if (ok) {
    put(q, "id", json_string(p->id), &ok);
    put(q, "due", time_json(p->due_ms), &ok);
    put(q, "state", json_string(cp_store_state_name(p->state)), &ok);
    put(q, "attempts", json_integer(p->n_attempts), &ok);
    put(q, "outcome",
        p->has_attempt ? json_string(cp_store_outcome_name(p->last_outcome)) : json_null(), &ok);
    put(q, "http_status",
        p->has_attempt && p->last_http_status ? json_integer(p->last_http_status) : json_null(),
        &ok);
    put(q, "message", p->last_message ? json_string(p->last_message) : json_null(), &ok);
  }
  if (!ok)
    json_decref(q);
  return ok ? q : NULL;
}

bool cp_report_is_problem(const struct cp_report_post *p) {
  return p->state == CP_STORE_FAILED || p->state == CP_STORE_MISSED || p->state == CP_STORE_UNKNOWN;
}

static json_t *channel_json(const struct cp_report_channel *c, bool lists) {
  json_t *o = json_object();
  bool ok = o != NULL;
  if (!ok)
    return NULL;
  size_t published = c->states[CP_STORE_SENT];
  put(o, "name", json_string(c->name), &ok);
  put(o, "posts", json_integer((json_int_t)c->posts), &ok);
  put(o, "published", json_integer((json_int_t)published), &ok);
  put(o, "on_time", json_integer((json_int_t)c->on_time), &ok);
  put(o, "on_time_share",
      published ? real_json((double)c->on_time / (double)published) : json_null(), &ok);
  put(o, "lateness_ms",
      c->has_lateness
          ? json_pack("{s:I,s:I,s:I}", "p50", (json_int_t)c->lateness_p50_ms, "p95",
                      (json_int_t)c->lateness_p95_ms, "max", (json_int_t)c->lateness_max_ms)
          : json_null(),
      &ok);
  json_t *states = json_object(), *attempts = json_object();
  for (int s = 0; states && s < CP_STORE_NSTATES; s++)
    put(states, cp_store_state_name((enum cp_store_state)s), json_integer((json_int_t)c->states[s]),
        &ok);
  for (int k = 0; attempts && k < CP_REPORT_OUTCOMES; k++)
    put(attempts, cp_store_outcome_name((enum cp_outcome)k),
        json_integer((json_int_t)c->attempts[k]), &ok);
  put(o, "states", states, &ok);
  put(o, "attempts", attempts, &ok);

  json_t *eng = json_object(), *per = json_object();
  for (int m = 0; per && m < CP_METRIC_N; m++)
    put(per, metric_names[m],
        c->known[m] ? real_json((double)c->totals[m] / (double)c->known[m]) : json_null(), &ok);
  if (eng) {
    put(eng, "sampled_posts", json_integer((json_int_t)c->sampled), &ok);
    put(eng, "total", counts_json(c->totals), &ok);
    put(eng, "per_post", per, &ok);
  } else {
    json_decref(per);
  }
  put(o, "engagement", eng, &ok);

  if (lists) {
    json_t *top = json_array(), *slots = json_array(), *problems = json_array();
    for (size_t i = 0; top && i < c->n_top; i++)
      append(top, top_json(&c->v[c->top[i]]), &ok);
    for (size_t i = 0; slots && i < c->n_slots; i++) {
      const struct cp_report_slot *s = &c->slots[i];
      append(slots,
             json_pack("{s:s,s:i,s:I,s:I,s:o,s:b}", "weekday", weekday_names[s->weekday], "hour",
                       s->hour, "posts", (json_int_t)s->posts, "score", (json_int_t)s->score,
                       "average", real_json(s->average), "few", s->few),
             &ok);
    }
    for (size_t i = 0; problems && i < c->n; i++)
      if (cp_report_is_problem(&c->v[i]))
        append(problems, problem_json(&c->v[i]), &ok);
    put(o, "top_posts", top, &ok);
    put(o, "slots", slots, &ok);
    put(o, "problems", problems, &ok);
  }
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}

json_t *cp_report_json(const struct cp_report *r) {
  json_t *o = json_object(), *chs = json_array();
  bool ok = o && chs;
  if (ok) {
    put(o, "calpost_report", json_integer(1), &ok);
    put(o, "from", time_json(r->from_ms), &ok);
    put(o, "to", time_json(r->to_ms), &ok);
    put(o, "timezone", json_string(r->timezone), &ok);
    put(o, "on_time_ms", json_integer(CP_REPORT_ON_TIME_MS), &ok);
    put(o, "min_slot_posts", json_integer((json_int_t)r->min_slot_posts), &ok);
    for (size_t i = 0; i < r->n_channels; i++)
      append(chs, channel_json(&r->channels[i], true), &ok);
    put(o, "channels", chs, &ok);
    chs = NULL;
    put(o, "total", channel_json(&r->total, false), &ok);
  }
  json_decref(chs);
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}
