/* What went out: per channel statistics over the state database (`calpost report`), and the
 * read-only access to that database that the report and the published feed (feed.h) share.
 *
 * The database is opened read-only (SQLite URI mode=ro, with a busy timeout): the daemon may be
 * writing while a report runs, and a report never changes the state. Everything is read in one
 * read transaction, so the numbers are one consistent snapshot. The engagement table may be
 * missing (a database older than schema 3) or empty: engagement is then absent, not an error.
 *
 * Definitions (README "calpost report"; the JSON below is stable):
 * - A post belongs to the report when its due time lies in [from, to].
 * - published: posts in state sent. Publish time: at_ms of the post's OK attempt. Lateness:
 *   publish time minus due time, 0 when earlier. On time: lateness <= CP_REPORT_ON_TIME_MS.
 *   p50/p95: nearest rank (the value at position ceil(p * n / 100) of the sorted latenesses).
 * - attempts: every recorded attempt of those posts, by outcome; ended: posts by final state.
 * - engagement: per published post its latest sample (largest sampled_ms, then largest age_s).
 *   A count that is NULL or negative is unknown (the platform does not report it). Totals sum
 *   the known counts; per post divides by the number of posts whose count is known.
 * - score: likes + reposts + replies of the latest sample (unknown counts as 0); top posts and
 *   slots use it. A slot is the weekday and hour of the due time in the report's zone; a slot
 *   with fewer than min_slot_posts sampled posts is flagged `few`. */
#ifndef CALPOST_REPORT_H
#define CALPOST_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <sqlite3.h>

#include "calpost/connector.h"
#include "config.h"
#include "store.h"

#define CP_REPORT_ON_TIME_MS 60000
#define CP_REPORT_TOP_POSTS 5

/* The engagement counts, in this order everywhere (JSON keys, CSV columns). */
enum cp_report_metric {
  CP_METRIC_REPLIES = 0,
  CP_METRIC_REPOSTS,
  CP_METRIC_LIKES,
  CP_METRIC_QUOTES,
  CP_METRIC_VIEWS,
  CP_METRIC_N
};
/* "replies", "reposts", ... Static storage. */
const char *cp_report_metric_name(enum cp_report_metric m);

/* The number of outcomes of enum cp_outcome (ok ... unknown). */
#define CP_REPORT_OUTCOMES 6

/* A post due in the window: its outcome and, when published, its latest engagement sample. */
struct cp_report_post {
  char id[CP_POST_ID_LEN + 1];
  enum cp_store_state state;
  int64_t due_ms;
  int weekday, hour;    /* of the due time in the report's zone; 0 = Monday */
  int64_t published_ms; /* sent: the time of its OK attempt; else 0 */
  int64_t lateness_ms;  /* sent: published_ms - due_ms, at least 0 */
  char *remote_url;     /* may be NULL */
  int n_attempts;       /* recorded attempts */
  bool has_attempt;     /* the last attempt: */
  enum cp_outcome last_outcome;
  int last_http_status; /* 0: no HTTP answer */
  char *last_message;   /* may be NULL */
  bool sampled;         /* sent and has an engagement sample; the fields below are valid */
  int64_t age_s;
  int64_t sampled_ms;
  int64_t counts[CP_METRIC_N]; /* -1: unknown */
  int64_t score;
};

struct cp_report_slot {
  int weekday; /* 0 = Monday ... 6 = Sunday */
  int hour;    /* 0 ... 23 */
  size_t posts;
  int64_t score; /* the sum */
  double average;
  bool few; /* fewer than min_slot_posts posts */
};

struct cp_report_channel {
  char *name;
  struct cp_report_post *v; /* the posts due in the window, by due time */
  size_t n;
  size_t posts;                    /* == n (for the total: of all channels) */
  size_t states[CP_STORE_NSTATES]; /* posts per state; states[CP_STORE_SENT] is published */
  size_t on_time;                  /* published within CP_REPORT_ON_TIME_MS of due */
  bool has_lateness;               /* false when nothing was published */
  int64_t lateness_p50_ms, lateness_p95_ms, lateness_max_ms;
  size_t attempts[CP_REPORT_OUTCOMES]; /* by enum cp_outcome */
  size_t sampled;                      /* published posts with an engagement sample */
  int64_t totals[CP_METRIC_N];         /* -1: no post reports this count */
  size_t known[CP_METRIC_N];           /* posts whose count is known */
  size_t *top;                         /* indices into v by score, best first */
  size_t n_top;                        /* at most CP_REPORT_TOP_POSTS */
  struct cp_report_slot *slots;        /* enough posts first, then by average, weekday, hour */
  size_t n_slots;
};

struct cp_report {
  int64_t from_ms, to_ms;
  char *timezone;
  size_t min_slot_posts;
  struct cp_report_channel *channels; /* configured channels first (config order), then others
                                         found in the database, by name */
  size_t n_channels;
  struct cp_report_channel total; /* all channels together: name "total", the counters only
                                     (no posts, top posts or slots) */
};

struct cp_report_opts {
  int64_t from_ms, to_ms;
  const char *channel;   /* NULL: every channel */
  const char *timezone;  /* the zone of the slots; NULL: the config's plan zone */
  size_t min_slot_posts; /* 0: 3 */
};

/* Opens cfg's state database (<state_dir>/calpost.db) read-only, with a busy timeout. Returns 0
 * and sets *db (close it with sqlite3_close), CP_ENOTFOUND when there is no database yet, or
 * CP_EDB; err says which file and why. */
int cp_report_db_open(const struct cp_config *cfg, sqlite3 **db, char *err, size_t errlen);

/* Whether db has the engagement table (schema 3 and later). */
bool cp_report_db_has_engagement(sqlite3 *db);

/* The window of `report` and `feed`: to = now_s (NULL: now; else a date-time as `--now` takes
 * it), from = since before it (a duration such as "30d") or since itself (a date, midnight in
 * zone, or an ISO 8601 date-time), in Unix ms. Returns 0, or CP_EINVAL with a message naming
 * the option in err. */
int cp_report_parse_window(const char *since, const char *now_s, const char *zone, int64_t *from_ms,
                           int64_t *to_ms, char *err, size_t errlen);

/* Builds the report. Returns 0 and a new report in *out, or CP_ENOTFOUND (no database yet),
 * CP_EINVAL (o->channel is neither configured nor in the database), CP_ETZ (unknown zone),
 * CP_EDB, CP_EBUSY or CP_ENOMEM, with a message in err. */
int cp_report_build(const struct cp_config *cfg, const struct cp_report_opts *o,
                    struct cp_report **out, char *err, size_t errlen);
void cp_report_free(struct cp_report *r);

/* The report as the stable JSON document of README "calpost report" (a new reference), or NULL
 * when out of memory. */
json_t *cp_report_json(const struct cp_report *r);

/* Whether p ended failed, missed or unknown (the report lists these). */
bool cp_report_is_problem(const struct cp_report_post *p);

/* Weekday names "Mon" ... "Sun". Static storage. */
const char *cp_report_weekday_name(int weekday);

#endif
