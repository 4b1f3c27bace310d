/* calpost run: the daemon. main loop, top to bottom:
 *   lock the state dir -> open the store -> start the channels' connectors -> settle posts a
 *   crash left `sending` -> load the plan (held if it would cancel too much) -> reconcile ->
 *   mark posts past their grace as missed -> arm one timer for the next due post -> serve the
 *   control socket -> run until SIGTERM.
 * Nothing blocks the loop except SQLite, whose writes are the durable promise (a post is
 * `sending` on disk before its request leaves). */
#include "daemon.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libical/ical.h>
#include <uv.h>

#include "backoff.h"
#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "config.h"
#include "connector_registry.h"
#include "control.h"
#include "hints.h"
#include "http.h"
#include "media.h"
#include "utm.h"
#include "plan.h"
#include "ratelimit.h"
#include "store.h"
#include "sync.h"

/* ---------------------------------------------------------------------------------------- */
/* Logging: one line per event on stderr, secrets replaced by "***".                        */

static char **secrets;
static size_t n_secrets;

static void remember_secret(const char *s) {
  if (!s || strlen(s) < 4)
    return;
  char **nv = realloc(secrets, (n_secrets + 1) * sizeof *nv);
  if (!nv)
    return;
  secrets = nv;
  if ((nv[n_secrets] = strdup(s)))
    n_secrets++;
}

static void redact(char *line) {
  for (size_t i = 0; i < n_secrets; i++) {
    size_t sl = strlen(secrets[i]);
    for (char *p = strstr(line, secrets[i]); p; p = strstr(p + 3, secrets[i])) {
      memcpy(p, "***", 3);
      memmove(p + 3, p + sl, strlen(p + sl) + 1);
    }
  }
}

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static enum cp_log_level log_level = CP_LOG_INFO;

static void vlogf(enum cp_log_level level, const char *who, const char *fmt, va_list ap) {
  if (level > log_level)
    return;
  char msg[2048];
  vsnprintf(msg, sizeof msg, fmt, ap);
  for (char *c = msg; *c; c++)
    if (*c == '\n' || *c == '\r')
      *c = ' ';
  redact(msg);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s%s%s\n", tm.tm_year + 1900,
          tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
          level_names[level], who ? who : "", who ? ": " : "", msg);
}

__attribute__((format(printf, 2, 3))) static void logf_(enum cp_log_level level, const char *fmt,
                                                        ...) {
  va_list ap;
  va_start(ap, fmt);
  vlogf(level, NULL, fmt, ap);
  va_end(ap);
}

/* ---------------------------------------------------------------------------------------- */
/* Types                                                                                    */

struct daemon;

struct channel {
  struct daemon *d;
  /* This channel's copy of the host table (data is still the daemon): requests made through
   * it are known to be this channel's (see host_http_request). */
  struct cp_host host;
  const struct cp_channel_conf *conf;
  const struct cp_connector *conn;
  void *inst;
  struct cp_connector_conf cconf;
  struct cp_ratelimit rl; /* the server's hints (Retry-After, X-RateLimit-*) */
  /* The configured rate, `rate = N/T`: the completion times of the last N requests. A request
   * reaches the server before its answer comes back, so starting one no earlier than T after
   * the answer to the N-th previous one means the server never counts more than N in any T,
   * whatever the network's jitter. */
  int64_t *done_at;
  size_t rate_n, ring_pos, ring_len;
  int64_t rate_ms;
  struct inflight *armed; /* the claimed post waiting for its time (the daemon's fire timer) */
  int64_t grace_ms;
  bool busy;        /* a post of this channel is in flight: posts go out in due order */
  int64_t wake_ms;  /* when this channel wants to be looked at again; INT64_MAX: never */
  bool notify_only; /* used only for notifications */
  bool freed;       /* a request of this channel just finished */
  bool utm_on;      /* `utm = yes`: links get utm_* parameters */
  struct cp_utm utm;
  char **utm_domains;
  /* Posts held back by a rate limit, for /metrics; rl_waited is the post counted last, so that
   * a long wait counts once. */
  uint64_t rl_waits;
  char rl_waited[CP_POST_ID_LEN + 1];
  /* Engagement samples (see sample_channel): one at a time, after the channel's posts. */
  bool sampling;                 /* the connector reads engagement and the channel wants it */
  struct inflight *sample;       /* the sample in flight, or NULL */
  int64_t sample_wake_ms;        /* when to look at the samples again; INT64_MAX: on an event */
  int64_t sample_retry_ms;       /* the first sample failed: not before then */
  int sample_fails;              /* failed attempts of the first sample */
  int64_t sample_skip_ms;        /* when to record the samples that came too late, next */
  struct cp_ratelimit sample_rl; /* what the server said in answers to samples */
};

/* The current plan and an index from post id to its position. Plans are shared with posts in
 * flight, which borrow their strings. */
struct plan_ref {
  struct cp_plan *plan;
  int refs;
  uint32_t *slots; /* open addressing: index + 1, 0 = empty */
  size_t n_slots;
};

struct inflight {
  struct cp_publish_req req;
  struct cp_result res;       /* the outcome, while waiting for the flush */
  struct inflight *done_next; /* the flush queue */
  struct daemon *d;
  struct channel *ch;
  struct plan_ref *pr;
  struct cp_post post;
  char key[128];
  char *progress; /* what earlier attempts saved (req.progress points here) */
  char *utm_text; /* the text with UTM parameters (post.text points here), or NULL */
  void *post_mem; /* owns post's texts (cp_plan_post_dup) */
  int64_t due_ms;
  int64_t fire_at; /* when the request may leave: due (or the rate limit's), after the claim */
  int attempts;
  bool notification;
  char *note_text; /* owned text of a notification */
  bool sample;     /* an engagement sample of post.id at age_s, not a publish */
  int64_t age_s;
  char *remote_id; /* of the sample's post (owned) */
  char *remote_url;
};

struct held {
  char *why;
  int64_t since_ms;
};

struct daemon {
  uv_loop_t *loop;
  struct cp_config *cfg;
  struct cp_store *store;
  struct cp_http *http;
  struct cp_connector_registry *reg;
  struct cp_sync *sync;
  struct cp_control *control;
  struct cp_host host;
  struct channel *ch;
  size_t n_ch;
  struct plan_ref *plan;
  uv_timer_t timer;   /* the next due post (or rate-limit wake-up) */
  uv_timer_t horizon; /* the rolling horizon: re-expand recurring events */
  uv_timer_t stop_timer;
  uv_idle_t flush;        /* records finished attempts in one batch per loop iteration */
  uv_timer_t flush_timer; /* ... or just after an imminent send */
  struct inflight *done, *done_tail;
  uv_signal_t sig_hup, sig_term, sig_int;
  /* A timerfd armed with TFD_TIMER_CANCEL_ON_SET: readable when the wall clock is set (an NTP
   * step, a manual change), so the wall-clock timers are re-armed at once. */
  int clock_fd;
  uv_poll_t clock_watch;
  /* Sends claimed posts at their time: a timerfd on the wall clock, armed for the earliest
   * armed post at its exact time (a libuv timer counts whole milliseconds of loop time and wakes
   * up to 2 ms late). fire_timer only where no timerfd could be made. */
  int fire_fd;     /* -1: the libuv fallback is in use */
  int fire_fd_own; /* closed at exit */
  uv_poll_t fire_watch;
  uv_timer_t fire_timer;
  int lock_fd;
  bool stopping;
  size_t n_inflight;
  int exit_status;
  /* settings */
  int64_t horizon_ms, grace_ms, max_lateness_ms, stop_wait_ms;
  struct cp_media_opts media;
  int64_t claim_ahead_ms; /* claim (and sync to disk) this much before the request leaves */
  struct cp_backoff backoff;
  int hold_min;
  double hold_share;
  bool resend_unknown;
  struct channel *notify;
  struct cp_ratelimit notify_rl;
  struct held held; /* a plan change waiting for `calpost confirm` */
  bool held_active;
  bool good_only; /* read the last good copies, not the candidates waiting for review */
  int64_t horizon_refresh_ms;
  uv_timer_t sample_timer; /* the next engagement sample of any channel */
  int64_t ages_s[16];      /* engagement_ages in seconds, ascending */
  size_t n_ages;           /* 0: no samples */
  char sock_path[4096];
  struct cp_control_conf *control_conf;     /* [control]: TCP listener and token */
  uint64_t n_refreshes, n_refresh_failures; /* plan reloads and failed ones (/metrics) */
};

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds of a clock that never jumps (for durations and rate windows). */
static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Starts timer t to run cb at the wall-clock time at_ms (at once if it has passed). libuv adds
 * the delay to the loop time cached when the iteration began, and a disk sync may have happened
 * since: refresh it, or the timer fires early by that long. */
static void timer_at(struct daemon *d, uv_timer_t *t, uv_timer_cb cb, int64_t at_ms) {
  int64_t delay = at_ms - wall_ms();
  uv_update_time(d->loop);
  uv_timer_start(t, cb, delay > 0 ? (uint64_t)delay : 0, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Wall-clock steps                                                                          */

static void on_timer(uv_timer_t *t);
static void fire_arm(struct daemon *d);
static void sample_schedule(struct daemon *d);

/* Arms clock_fd: an absolute timer far in the future that the kernel cancels when the wall
 * clock is set. Returns 0 or -errno. */
static int clock_watch_arm(int fd) {
  struct itimerspec its = {.it_value = {.tv_sec = INT32_MAX}};
  return timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &its, NULL) < 0 ? -errno
                                                                                          : 0;
}

/* The wall clock was set: every timer that waits for a wall-clock time was armed with a delay
 * computed before the step, so re-arm them all from the new time. */
static void on_clock_set(uv_poll_t *w, int status, int events) {
  struct daemon *d = w->data;
  uint64_t n;
  if (read(d->clock_fd, &n, sizeof n) < 0 && errno != ECANCELED && errno != EAGAIN)
    return;
  clock_watch_arm(d->clock_fd);
  logf_(CP_LOG_INFO, "the wall clock was set: re-arming the timers");
  fire_arm(d);
  uv_timer_start(&d->timer, on_timer, 0, 0); /* a scheduling pass at the new time */
  sample_schedule(d);
}

/* ---------------------------------------------------------------------------------------- */
/* Settings                                                                                 */

int cp_daemon_parse_duration(const char *s, int64_t *ms) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || v < 0)
    return CP_EINVAL;
  while (*end == ' ')
    end++;
  double mul = 1000;
  if (!*end || !strcmp(end, "s"))
    mul = 1000;
  else if (!strcmp(end, "ms"))
    mul = 1;
  else if (!strcmp(end, "m") || !strcmp(end, "min"))
    mul = 60000;
  else if (!strcmp(end, "h"))
    mul = 3600000;
  else if (!strcmp(end, "d"))
    mul = 86400000;
  else
    return CP_EINVAL;
  *ms = (int64_t)(v * mul);
  return 0;
}

static const struct cp_section *section(const struct cp_config *cfg, const char *kind,
                                        const char *name) {
  for (size_t i = 0; i < cfg->n_sections; i++)
    if (!strcmp(cfg->sections[i].kind, kind) && !strcmp(cfg->sections[i].name, name))
      return &cfg->sections[i];
  return NULL;
}

static int setting_duration(const struct cp_config *cfg, const struct cp_section *s,
                            const char *key, int64_t dflt, int64_t *out) {
  const char *v = cp_section_get(s, key);
  *out = dflt;
  if (!v)
    return 0;
  if (cp_daemon_parse_duration(v, out) < 0) {
    int line = 0;
    for (size_t i = 0; i < s->n_kv; i++)
      if (!strcmp(s->kv[i].key, key))
        line = s->kv[i].line;
    logf_(CP_LOG_ERROR, "%s:%d: %s: '%s' is not a duration (for example 15m, 30s, 1h)", cfg->path,
          line, key, v);
    return CP_ECONFIG;
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The connector host                                                                        */

static int host_http_request(const struct cp_host *host, const struct cp_http_req *req,
                             cp_http_cb cb, void *data) {
  struct daemon *d = host->data;
  if (host != &d->host && req->idempotent) {
    const struct channel *ch =
        (const struct channel *)(const void *)((const char *)host - offsetof(struct channel, host));
    /* libcurl silently resends a request whose kept-alive connection died before an answer:
     * harmless for the post (it is idempotent), but the server counts it, and on a channel with
     * a configured rate that could exceed it. A fresh connection is never resent. */
    if (ch->rate_n) {
      struct cp_http_req fresh = *req;
      fresh.idempotent = false;
      return cp_http_request(d->http, &fresh, cb, data);
    }
  }
  return cp_http_request(d->http, req, cb, data);
}

static void on_complete(const struct cp_publish_req *req, const struct cp_result *res);

static void host_complete(const struct cp_publish_req *req, const struct cp_result *res) {
  on_complete(req, res);
}

static void host_log(const struct cp_host *host, enum cp_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlogf(level, "connector", fmt, ap);
  va_end(ap);
}

static uint64_t host_now_ms(const struct cp_host *host) {
  struct daemon *d = host->data;
  return uv_now(d->loop);
}

static int64_t host_wall_ms(const struct cp_host *host) {
  return wall_ms();
}

static int host_secret(const struct cp_host *host, const struct cp_connector_conf *conf,
                       const char *key, char **out) {
  char err[512];
  int rc = cp_connector_secret_read(conf, key, out, err, sizeof err);
  if (rc == CP_ECONFIG)
    logf_(CP_LOG_ERROR, "%s", err);
  if (rc == 0)
    remember_secret(*out);
  return rc;
}

static void host_secret_free(char *s) {
  cp_connector_secret_free(s);
}

static int host_idempotency_key(const struct cp_host *host, const struct cp_post *post, char *buf,
                                size_t size) {
  return cp_connector_idempotency_key(post, buf, size);
}

/* Every response of a channel also feeds its rate-limit hints: X-RateLimit-Remaining/Reset
 * (epoch or ISO time), RateLimit-*, x-rate-limit-* and Retry-After, so the next request of the
 * channel waits for the server's window, not only the retry of this one. */
static int host_media_load(const struct cp_publish_req *req, const struct cp_media *media,
                           cp_media_cb cb, void *data) {
  struct inflight *f = req->host_data;
  return cp_media_load(f->d->loop, f->d->http, &f->d->media, media, cb, data);
}

/* Durable before it returns: the claim and outcome batches are never open while a connector
 * runs. A notification is not a post of the store: its progress lives as long as it does. */
static int host_save_progress(const struct cp_publish_req *req, const char *progress) {
  struct inflight *f = req->host_data;
  if (!progress || strlen(progress) > 4096)
    return CP_EINVAL;
  if (f->notification || f->sample)
    return 0;
  int rc = cp_store_set_progress(f->d->store, f->post.id, progress);
  if (rc < 0)
    logf_(CP_LOG_ERROR, "post %s: cannot save its progress: %s", f->post.id,
          cp_store_errmsg(f->d->store));
  return rc;
}

static void host_http_result(const struct cp_publish_req *req, const struct cp_http_resp *resp,
                             struct cp_result *res) {
  struct inflight *f = req->host_data;
  int64_t now = wall_ms();
  cp_connector_http_result(f->ch->conn, f->ch->inst, resp, now, res);
  struct cp_hints h;
  cp_hints_init(&h);
  for (size_t i = 0; i < resp->n_headers; i++)
    if (cp_hints_header(&h, resp->headers[i].name, resp->headers[i].value, now) < 0)
      logf_(CP_LOG_DEBUG, "channel %s: unreadable %s header ignored", f->ch->conf->name,
            resp->headers[i].name);
  /* What the server says in answer to a sample holds back the channel's samples, not its
   * posts. */
  struct cp_ratelimit *rl = f->sample ? &f->ch->sample_rl : &f->ch->rl;
  if (h.remaining >= 0 && h.reset_ms > now)
    cp_ratelimit_hint_remaining(rl, h.remaining, h.reset_ms, now);
  if (h.retry_at_ms > now) {
    cp_ratelimit_block_until(rl, h.retry_at_ms);
    if (res->retry_at_ms < h.retry_at_ms)
      res->retry_at_ms = h.retry_at_ms;
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Plans                                                                                     */

static uint64_t id_hash(const char *id) {
  uint64_t h = 0;
  for (int i = 0; i < 16 && id[i]; i++)
    h = h * 31 + (unsigned char)id[i];
  return h ^ (h >> 29);
}

static void plan_unref(struct plan_ref *pr) {
  if (pr && --pr->refs == 0) {
    cp_plan_free(pr->plan);
    free(pr->slots);
    free(pr);
  }
}

/* Finds post id in the plan; fills *post. Its texts are borrowed until the next lookup, or with
 * mem not NULL owned by the caller (free(*mem)). False also when the texts cannot be read. */
static bool plan_find(struct plan_ref *pr, const char *id, struct cp_post *post, void **mem) {
  if (mem)
    *mem = NULL;
  if (!pr || !pr->n_slots)
    return false;
  for (size_t i = id_hash(id) % pr->n_slots, k = 0; k < pr->n_slots;
       i = (i + 1) % pr->n_slots, k++) {
    uint32_t v = pr->slots[i];
    if (!v)
      return false;
    char pid[CP_POST_ID_LEN + 1];
    cp_plan_post_id(pr->plan, v - 1, pid);
    if (strcmp(pid, id))
      continue;
    int rc =
        mem ? cp_plan_post_dup(pr->plan, v - 1, post, mem) : cp_plan_post(pr->plan, v - 1, post);
    if (rc < 0)
      logf_(CP_LOG_ERROR, "post %s: cannot read its text back: %s", id, cp_strerror(rc));
    return rc == 0;
  }
  return false;
}

static int source_resolve(void *arg, const char *source, char *buf, size_t len) {
  struct daemon *d = arg;
  if (!d->sync)
    return -1;
  if (d->good_only)
    return cp_sync_good_path(d->sync, source, buf, len);
  return cp_sync_read_path(d->sync, source, buf, len);
}

/* Loads the plan over [now - lookback, now + horizon). */
static int plan_load(struct daemon *d, struct plan_ref **out) {
  *out = NULL;
  int64_t now = wall_ms() / 1000;
  int64_t lookback = (d->grace_ms > d->max_lateness_ms ? d->grace_ms : d->max_lateness_ms) / 1000;
  for (size_t i = 0; i < d->n_ch; i++)
    if (d->ch[i].grace_ms / 1000 > lookback)
      lookback = d->ch[i].grace_ms / 1000;
  struct cp_plan_opts o = {.cfg = d->cfg,
                           .from = now - lookback - 60,
                           .to = now + d->horizon_ms / 1000,
                           .now = now,
                           .resolve = source_resolve,
                           .resolve_arg = d,
                           .spill_dir = d->cfg->state_dir};
  struct plan_ref *pr = calloc(1, sizeof *pr);
  if (!pr)
    return CP_ENOMEM;
  int rc = cp_plan_load(&o, &pr->plan);
  if (rc < 0) {
    free(pr);
    return rc;
  }
  pr->refs = 1;
  pr->n_slots = pr->plan->n_posts * 2 + 1;
  pr->slots = calloc(pr->n_slots, sizeof *pr->slots);
  if (!pr->slots) {
    plan_unref(pr);
    return CP_ENOMEM;
  }
  for (size_t i = 0; i < pr->plan->n_posts; i++) {
    char id[CP_POST_ID_LEN + 1];
    cp_plan_post_id(pr->plan, i, id);
    size_t k = id_hash(id) % pr->n_slots;
    while (pr->slots[k])
      k = (k + 1) % pr->n_slots;
    pr->slots[k] = (uint32_t)(i + 1);
  }
  for (size_t i = 0; i < pr->plan->n_diags; i++) {
    const struct cp_diag *g = &pr->plan->diags[i];
    logf_(g->error ? CP_LOG_WARN : CP_LOG_INFO, "%s:%d: %s: %s", g->file, g->line,
          g->error ? "error" : "warning", g->msg);
  }
  *out = pr;
  return 0;
}

/* The store items of a plan: scheduled posts of configured channels. occ holds the
 * occurrence strings the items borrow. */
static int plan_items(struct daemon *d, struct plan_ref *pr, struct cp_store_item **items,
                      char (**occ)[24], size_t *n) {
  size_t np = pr->plan->n_posts;
  *items = calloc(np ? np : 1, sizeof **items);
  *occ = calloc(np ? np : 1, sizeof **occ);
  *n = 0;
  if (!*items || !*occ)
    return CP_ENOMEM;
  for (size_t i = 0; i < np; i++) {
    struct cp_post post;
    int rc = cp_plan_post(pr->plan, i, &post);
    if (rc < 0)
      return rc;
    memcpy((*occ)[*n], post.occurrence, sizeof post.occurrence);
    rc = cp_store_item_from_post(&(*items)[*n], &post);
    if (rc < 0)
      return rc;
    (*items)[*n].occurrence = (*occ)[*n];
    (*n)++;
  }
  return 0;
}

static void notify(struct daemon *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void schedule(struct daemon *d);

/* Applies a new plan: dry run first; a change that would cancel more than hold_min posts and
 * more than hold_share of the pending ones, or a plan with unreadable files, is held. */
static int apply_plan(struct daemon *d, struct plan_ref *pr, bool force) {
  struct cp_store_item *items = NULL;
  char(*occ)[24] = NULL;
  size_t n = 0;
  int rc = plan_items(d, pr, &items, &occ, &n);
  struct cp_store_counts counts = {0};
  int64_t now = wall_ms();
  if (rc == 0)
    rc = cp_store_reconcile(d->store, items, n, now, true, &counts);
  if (rc < 0)
    goto out;
  char why[512] = "";
  if (pr->plan->n_unread)
    snprintf(why, sizeof why,
             "%zu plan file(s) could not be read (see the log); the last good plan stays",
             pr->plan->n_unread);
  else if ((int)counts.cancelled > d->hold_min &&
           (double)counts.cancelled > d->hold_share * (double)counts.pending)
    snprintf(why, sizeof why,
             "the new plan would cancel %zu of %zu pending posts; the last good plan stays",
             counts.cancelled, counts.pending);
  if (*why && !force) {
    if (!d->held_active || strcmp(d->held.why, why)) {
      free(d->held.why);
      d->held.why = strdup(why);
      d->held.since_ms = now;
      d->held_active = d->held.why != NULL;
      logf_(CP_LOG_WARN, "plan change held: %s; run `calpost confirm` to accept it", why);
      notify(d, "calpost: plan change held: %s. Run `calpost confirm` to accept it.", why);
    }
    rc = CP_EBUSY;
    goto out;
  }
  rc = cp_store_reconcile(d->store, items, n, now, false, &counts);
  if (rc < 0) {
    logf_(CP_LOG_ERROR, "reconcile: %s", cp_store_errmsg(d->store));
    goto out;
  }
  logf_(CP_LOG_INFO, "plan: %zu posts in the horizon; %zu new, %zu updated, %zu cancelled", n,
        counts.added, counts.updated, counts.cancelled);
  /* Accept the candidates this plan was read from. */
  for (size_t c = 0; d->sync && !d->good_only && c < d->cfg->n_calendars; c++)
    for (size_t s = 0; s < d->cfg->calendars[c].n_sources; s++)
      if (cp_sync_pending(d->sync, d->cfg->calendars[c].sources[s]))
        cp_sync_accept(d->sync, d->cfg->calendars[c].sources[s]);
  if (d->held_active && !d->good_only) {
    free(d->held.why);
    d->held.why = NULL;
    d->held_active = false;
  }
  struct plan_ref *old = d->plan;
  d->plan = pr;
  pr->refs++;
  plan_unref(old);
out:
  free(items);
  free(occ);
  return rc;
}

/* Reloads the plan and applies it (sync changes, SIGHUP, the rolling horizon). */
static void reload(struct daemon *d, bool force) {
  struct plan_ref *pr;
  int rc = plan_load(d, &pr);
  d->n_refreshes++;
  if (rc < 0) {
    d->n_refresh_failures++;
    logf_(CP_LOG_ERROR, "plan: %s", cp_strerror(rc));
    return;
  }
  apply_plan(d, pr, force);
  plan_unref(pr);
  schedule(d);
}

/* ---------------------------------------------------------------------------------------- */
/* Notifications: failures, missed and unknown posts, auth problems, held plans.            */

static void count_error(void *arg, bool error, const char *msg) {
  (void)msg;
  if (error)
    ++*(int *)arg;
}

static bool note_valid(const struct channel *ch, const struct cp_post *p) {
  int errors = 0;
  if (ch->conn->validate)
    ch->conn->validate(ch->inst, p, count_error, &errors);
  return errors == 0;
}

/* Shortens a notification the notify channel would refuse (a 300-grapheme Bluesky post) to the
 * longest whole-grapheme prefix it accepts, ending in an ellipsis: a long message still tells
 * the operator what happened; the whole text is in the log. */
static void note_fit(const struct channel *ch, struct cp_post *p, char *text) {
  if (note_valid(ch, p))
    return;
  size_t full = strlen(text);
  char *orig = strdup(text);
  if (!orig)
    return;
  size_t lo = 0, hi = cp_text_graphemes(orig); /* the longest prefix that fits is in [lo, hi) */
  while (lo + 1 < hi) {
    size_t mid = lo + (hi - lo) / 2, n = cp_text_grapheme_prefix(orig, mid);
    snprintf(text, full + 1, "%.*s\u2026", (int)n, orig);
    if (note_valid(ch, p))
      lo = mid;
    else
      hi = mid;
  }
  size_t n = cp_text_grapheme_prefix(orig, lo);
  snprintf(text, full + 1, "%.*s\u2026", (int)n, orig);
  free(orig);
}

static void notify(struct daemon *d, const char *fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  size_t bad;
  if (cp_utf8_check(text, strlen(text), &bad) < 0) /* cut inside a character: drop its rest */
    text[bad] = 0;
  redact(text);
  logf_(CP_LOG_WARN, "notify: %s", text);
  struct channel *ch = d->notify;
  if (!ch || d->stopping)
    return;
  int64_t now = wall_ms();
  if (cp_ratelimit_take(&d->notify_rl, now) > 0) {
    logf_(CP_LOG_WARN, "notify: rate limit reached, not sent to %s", ch->conf->name);
    return;
  }
  struct inflight *f = calloc(1, sizeof *f);
  if (!f || !(f->note_text = strdup(text))) {
    free(f);
    return;
  }
  f->d = d;
  f->ch = ch;
  f->notification = true;
  struct cp_post *p = &f->post;
  /* A notification's id is unique per message and minute, so a receiver can dedupe. */
  unsigned h = 2166136261u;
  for (const char *c = text; *c; c++)
    h = (h ^ (unsigned char)*c) * 16777619u;
  snprintf(p->id, sizeof p->id, "%08x%08x", h, (unsigned)(now / 60000));
  snprintf(p->occurrence, sizeof p->occurrence, "single");
  p->calendar = "calpost";
  p->uid = "notification";
  p->channel = ch->conf->name;
  p->due = now / 1000;
  p->tzid = "UTC";
  p->title = "calpost notification";
  p->text = f->note_text;
  note_fit(ch, p, f->note_text);
  f->req.host = &ch->host;
  f->req.attempt = 1;
  cp_connector_idempotency_key(p, f->key, sizeof f->key);
  f->req.idempotency_key = f->key;
  f->req.host_data = f;
  f->req.progress = "";
  d->n_inflight++;
  if (ch->conn->publish(ch->inst, p, &f->req) < 0) {
    d->n_inflight--;
    free(f->note_text);
    free(f);
  }
}

/* ---------------------------------------------------------------------------------------- */
/* Publishing                                                                                */

static struct channel *find_channel(struct daemon *d, const char *name) {
  for (size_t i = 0; i < d->n_ch; i++)
    if (!strcmp(d->ch[i].conf->name, name))
      return &d->ch[i];
  return NULL;
}

static void record(struct daemon *d, const char *id, enum cp_outcome outcome, int http_status,
                   const char *msg, enum cp_store_state next, int64_t retry_at,
                   const char *remote_id, const char *remote_url) {
  struct cp_store_result r = {.at_ms = wall_ms(),
                              .outcome = outcome,
                              .http_status = http_status,
                              .message = msg,
                              .remote_id = remote_id,
                              .remote_url = remote_url,
                              .next = next,
                              .retry_at_ms = retry_at};
  if (cp_store_record_attempt(d->store, id, &r) < 0)
    logf_(CP_LOG_ERROR, "post %s: cannot record the attempt: %s", id, cp_store_errmsg(d->store));
}

static void finish(struct inflight *f) {
  struct daemon *d = f->d;
  d->n_inflight--;
  if (f->sample)
    f->ch->sample = NULL;
  else if (f->ch && !f->notification)
    f->ch->busy = false;
  free(f->remote_id);
  free(f->remote_url);
  plan_unref(f->pr);
  free(f->note_text);
  free(f->progress);
  free(f->utm_text);
  free(f->post_mem);
  free(f);
  if (d->stopping && d->n_inflight == 0)
    uv_stop(d->loop);
}

/* What to do after a failed attempt: retry later, or give up. */
static void retry_or_fail(struct inflight *f, const struct cp_result *res, int64_t not_before) {
  struct daemon *d = f->d;
  int64_t at;
  int64_t now = wall_ms();
  int rc = cp_backoff_next(&d->backoff, f->attempts, now, f->due_ms, not_before, &at);
  if (rc < 0) {
    record(d, f->post.id, res->outcome, (int)res->http_status, res->message, CP_STORE_FAILED, 0,
           NULL, NULL);
    logf_(CP_LOG_WARN, "post %s on %s failed after %d attempts: %s", f->post.id, f->ch->conf->name,
          f->attempts, res->message);
    notify(d, "calpost: post \"%s\" on %s failed after %d attempts: %s", f->post.title,
           f->ch->conf->name, f->attempts, res->message);
    return;
  }
  record(d, f->post.id, res->outcome, (int)res->http_status, res->message, CP_STORE_PENDING, at,
         NULL, NULL);
  logf_(CP_LOG_INFO, "post %s on %s: %s (%s), retry in %" PRId64 " s", f->post.id,
        f->ch->conf->name, cp_outcome_name(res->outcome), res->message, (at - now) / 1000);
}

static void settle(struct inflight *f, const struct cp_result *res);
static void on_flush(uv_idle_t *h);
static void schedule_where(struct daemon *d, bool (*pick)(struct channel *ch, int64_t now),
                           int64_t now, bool in_batch);
static void arm(struct daemon *d);
static void sample_schedule(struct daemon *d);
static void settle_sample(struct inflight *f, const struct cp_result *res);

/* A connector finished: results are recorded in groups, once per loop iteration, so a burst
 * of completions costs one disk sync. */
static void on_complete(const struct cp_publish_req *req, const struct cp_result *res) {
  struct inflight *f = req->host_data;
  struct daemon *d = f->d;
  if (f->notification) {
    if (res->outcome != CP_OUTCOME_OK)
      logf_(CP_LOG_WARN, "notify via %s failed: %s", f->ch->conf->name, res->message);
    finish(f);
    return;
  }
  struct channel *ch = f->ch;
  if (ch->rate_n) {
    ch->done_at[ch->ring_pos] = mono_ms(); /* real time: a wall-clock step must not age it */
    ch->ring_pos = (ch->ring_pos + 1) % ch->rate_n;
    if (ch->ring_len < ch->rate_n)
      ch->ring_len++;
  }
  f->res = *res;
  /* A server may echo a secret back (an error quoting the key it rejected): redact where the
   * result enters, so the database, status and notifications never see it. */
  redact(f->res.message);
  redact(f->res.remote_id);
  redact(f->res.remote_url);
  f->done_next = NULL;
  if (d->done_tail)
    d->done_tail->done_next = f;
  else
    d->done = f;
  d->done_tail = f;
  if (!uv_is_active((uv_handle_t *)&d->flush))
    uv_idle_start(&d->flush, on_flush);
}

static bool pick_freed(struct channel *ch, int64_t now) {
  return ch->freed;
}

/* The earliest time a claimed post of any channel is to leave, or INT64_MAX. */
static int64_t next_fire(struct daemon *d) {
  int64_t t = INT64_MAX;
  for (size_t i = 0; i < d->n_ch; i++)
    if (d->ch[i].armed && d->ch[i].armed->fire_at < t)
      t = d->ch[i].armed->fire_at;
  return t;
}

static void fire_due(struct daemon *d);

/* The time the next armed post leaves, for the callbacks that wait until it has left before
 * they sync to disk. An armed post whose time has passed leaves here first: its timerfd is
 * served in the loop's I/O phase, after the timers, and a timer that waited for a time already
 * past would run again at once, forever, and starve it. */
static int64_t next_fire_after_overdue(struct daemon *d, int64_t now) {
  if (next_fire(d) <= now)
    fire_due(d);
  return next_fire(d);
}

static void on_flush_timer(uv_timer_t *t) {
  struct daemon *d = t->data;
  if (!uv_is_active((uv_handle_t *)&d->flush))
    uv_idle_start(&d->flush, on_flush);
}

static void on_flush(uv_idle_t *h) {
  struct daemon *d = h->data;
  uv_idle_stop(&d->flush);
  /* Recording outcomes syncs to disk and blocks the loop: not while another post is about to
   * leave; right after it. */
  int64_t now = wall_ms(), soon = next_fire_after_overdue(d, now);
  if (soon != INT64_MAX && soon - now < 50 && !d->stopping) {
    timer_at(d, &d->flush_timer, on_flush_timer, soon + 2);
    return;
  }
  struct inflight *list = d->done;
  d->done = d->done_tail = NULL;
  /* One batch, so one disk sync, holds the outcomes and the claims of the posts that follow in
   * the freed channels: a burst costs one sync per loop iteration, not two. */
  bool batch = cp_store_batch_begin(d->store) == 0;
  for (struct inflight *f = list; f; f = f->done_next)
    settle(f, &f->res);
  for (struct inflight *f = list, *next; f; f = next) {
    next = f->done_next;
    f->ch->freed = true;
    finish(f);
  }
  if (!d->stopping && d->plan) {
    schedule_where(d, pick_freed, wall_ms(), batch);
    arm(d);
  } else if (batch && cp_store_batch_end(d->store, true) < 0) {
    logf_(CP_LOG_ERROR,
          "cannot save the outcomes: %s; those posts stay `sending` and are settled at the next "
          "start",
          cp_store_errmsg(d->store));
  }
  for (size_t i = 0; i < d->n_ch; i++)
    d->ch[i].freed = false;
}

/* Records the outcome of one attempt (inside the flush batch). */
static void settle(struct inflight *f, const struct cp_result *res) {
  if (f->sample) {
    settle_sample(f, res);
    return;
  }
  struct daemon *d = f->d;
  struct channel *ch = f->ch;
  int64_t now = wall_ms();
  switch (res->outcome) {
    case CP_OUTCOME_OK:
      record(d, f->post.id, res->outcome, (int)res->http_status, res->message, CP_STORE_SENT, 0,
             res->remote_id, res->remote_url);
      logf_(CP_LOG_INFO, "post %s published on %s%s%s (%" PRId64 " ms after due)", f->post.id,
            ch->conf->name, *res->remote_url ? ": " : "", res->remote_url, now - f->due_ms);
      break;
    case CP_OUTCOME_RATE_LIMITED: {
      int64_t until = res->retry_at_ms > now ? res->retry_at_ms : 0;
      ch->rl_waits++;
      if (until)
        cp_ratelimit_block_until(&ch->rl, until);
      retry_or_fail(f, res, until);
      break;
    }
    case CP_OUTCOME_RETRY:
      retry_or_fail(f, res, res->retry_at_ms > now ? res->retry_at_ms : 0);
      break;
    case CP_OUTCOME_AUTH:
      /* An expired token must not burn through the queue: the post waits, the channel pauses.
       * It keeps its place (next attempt at its due time): after `calpost resume` it goes before
       * the channel's later posts, even those that came due while the 401 was on its way. */
      record(d, f->post.id, res->outcome, (int)res->http_status, res->message, CP_STORE_PENDING,
             f->due_ms > 0 && f->due_ms < now ? f->due_ms : now, NULL, NULL);
      cp_store_channel_pause(d->store, ch->conf->name, 0, "credentials rejected");
      logf_(CP_LOG_ERROR, "channel %s paused: credentials rejected (%s)", ch->conf->name,
            res->message);
      notify(d,
             "calpost: channel %s is paused: its credentials were rejected (%s). Fix them, "
             "then `calpost resume %s`.",
             ch->conf->name, res->message, ch->conf->name);
      break;
    case CP_OUTCOME_PERMANENT:
      record(d, f->post.id, res->outcome, (int)res->http_status, res->message, CP_STORE_FAILED, 0,
             NULL, NULL);
      logf_(CP_LOG_WARN, "post %s on %s failed: %s", f->post.id, ch->conf->name, res->message);
      notify(d, "calpost: post \"%s\" on %s failed: %s", f->post.title, ch->conf->name,
             res->message);
      break;
    case CP_OUTCOME_UNKNOWN:
      if (ch->conn->caps & CP_CAP_IDEMPOTENT) {
        retry_or_fail(f, res, 0); /* the same key cannot make a second post */
      } else if (d->resend_unknown) {
        retry_or_fail(f, res, 0);
      } else {
        record(d, f->post.id, res->outcome, (int)res->http_status, res->message, CP_STORE_UNKNOWN,
               0, NULL, NULL);
        notify(d,
               "calpost: post \"%s\" on %s may or may not have been published (%s); check "
               "and `calpost retry %s` or `calpost skip %s`",
               f->post.title, ch->conf->name, res->message, f->post.id, f->post.id);
      }
      break;
  }
}

/* Claims one due post for ch inside the open batch: marks it sending (durable once the batch
 * commits). Returns the inflight to fire after the commit, or NULL. */
static struct inflight *claim(struct daemon *d, struct channel *ch, const struct cp_store_post *sp,
                              int64_t now) {
  struct inflight *f = calloc(1, sizeof *f);
  if (!f)
    return NULL;
  f->d = d;
  f->ch = ch;
  f->due_ms = sp->due_ms;
  f->attempts = sp->attempts + 1;
  bool claimed = false;
  if (!plan_find(d->plan, sp->id, &f->post, &f->post_mem)) {
    /* Reconcile cancels what leaves the plan, so this should not happen; never guess a text. */
    logf_(CP_LOG_ERROR, "post %s on %s is pending but not in the current plan", sp->id,
          ch->conf->name);
    free(f);
    return NULL;
  }
  if (cp_store_mark_sending(d->store, sp->id, now, &claimed) < 0 || !claimed) {
    logf_(CP_LOG_ERROR, "post %s: cannot mark it sending: %s", sp->id, cp_store_errmsg(d->store));
    free(f->post_mem);
    free(f);
    return NULL;
  }
  f->pr = d->plan;
  d->plan->refs++;
  f->req.host = &ch->host;
  f->req.attempt = (unsigned)f->attempts;
  cp_connector_idempotency_key(&f->post, f->key, sizeof f->key);
  f->req.idempotency_key = f->key;
  f->req.host_data = f;
  f->progress = sp->progress ? strdup(sp->progress) : NULL;
  f->req.progress = f->progress ? f->progress : "";
  if (ch->utm_on) {
    struct cp_utm u = ch->utm;
    u.campaign = f->post.campaign;
    u.content = f->post.id;
    if (cp_utm_apply(f->post.text, &u, &f->utm_text) == 0)
      f->post.text = f->utm_text;
  }
  ch->busy = true;
  d->n_inflight++;
  return f;
}

/* Sends a claimed post (its `sending` state is on disk). */
static void fire(struct inflight *f) {
  int rc = f->ch->conn->publish(f->ch->inst, &f->post, &f->req);
  if (rc < 0) {
    struct cp_result res = {.outcome = CP_OUTCOME_RETRY, .err = rc};
    snprintf(res.message, sizeof res.message, "could not start: %s", cp_strerror(rc));
    on_complete(&f->req, &res);
  }
}

static void on_timer(uv_timer_t *t);

/* Sends every armed post whose time has come, then arms the fire timer for the next one. */
static void fire_due(struct daemon *d) {
  int64_t now = wall_ms(); /* a timer fires at its time or later, never before it */
  for (size_t i = 0; i < d->n_ch; i++) {
    struct inflight *f = d->ch[i].armed;
    if (f && f->fire_at <= now) {
      d->ch[i].armed = NULL;
      fire(f);
    }
  }
  fire_arm(d);
}

static void on_fire_fd(uv_poll_t *w, int status, int events) {
  struct daemon *d = w->data;
  uint64_t n;
  if (read(d->fire_fd, &n, sizeof n) < 0 && errno != EAGAIN && errno != ECANCELED)
    logf_(CP_LOG_WARN, "fire timer: %s", strerror(errno));
  fire_due(d);
}

static void on_fire_timer(uv_timer_t *t) {
  fire_due(t->data);
}

/* Arms the fire timer for the earliest armed post: an absolute wall-clock time, so a step of
 * the wall clock moves it too (and never lets a post leave early). */
static void fire_arm(struct daemon *d) {
  int64_t at = next_fire(d);
  if (d->fire_fd < 0) {
    if (at == INT64_MAX)
      uv_timer_stop(&d->fire_timer);
    else
      timer_at(d, &d->fire_timer, on_fire_timer, at);
    return;
  }
  struct itimerspec its = {0}; /* all zero: disarmed */
  if (at != INT64_MAX) {
    if (at <= 0)
      at = 1; /* a zero it_value would disarm it */
    its.it_value.tv_sec = (time_t)(at / 1000);
    its.it_value.tv_nsec = (long)(at % 1000) * 1000000L;
  }
  if (timerfd_settime(d->fire_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
    logf_(CP_LOG_ERROR, "fire timer: %s; using a libuv timer", strerror(errno));
    uv_poll_stop(&d->fire_watch);
    d->fire_fd = -1;
    fire_arm(d);
  }
}

/* When the channel's configured rate (`rate = N/T`) lets a request start, with `pending`
 * requests in flight whose answers have not come back: the answer to the (N - pending)-th latest
 * finished request must be T old. 0: at once; INT64_MAX: only after a pending answer. */
static int64_t window_ready(const struct channel *ch, size_t pending) {
  if (!ch->rate_n)
    return 0;
  if (pending >= ch->rate_n)
    return INT64_MAX;
  size_t need = ch->rate_n - pending;
  if (ch->ring_len < need)
    return 0;
  /* The window is in monotonic time; callers compare wall-clock times, so translate. */
  int64_t left =
      ch->done_at[(ch->ring_pos + ch->rate_n - need) % ch->rate_n] + ch->rate_ms - mono_ms();
  return left <= 0 ? 0 : wall_ms() + left;
}

/* Looks at one channel inside the open batch: marks posts past their grace missed, claims the
 * first due post if the channel is free and its rate limit allows (returned, to be fired after
 * the commit), and sets ch->wake_ms. */
static struct inflight *schedule_channel(struct daemon *d, struct channel *ch, int64_t now) {
  ch->wake_ms = INT64_MAX;
  if (ch->busy || ch->notify_only || d->stopping)
    return NULL;
  struct cp_store_post *next = NULL;
  if (cp_store_next_due(d->store, ch->conf->name, &next) < 0)
    return NULL;
  /* Only when the first post is already past its grace is there anything to mark missed. */
  if (next->next_ms < now - ch->grace_ms) {
    cp_store_post_free(next);
    next = NULL;
    struct cp_store_posts *missed = NULL;
    if (cp_store_mark_missed(d->store, ch->conf->name, ch->grace_ms, now, &missed) == 0 && missed) {
      for (size_t i = 0; i < missed->n; i++)
        logf_(CP_LOG_WARN, "post %s on %s missed: due %" PRId64 " s ago, grace is %" PRId64 " s",
              missed->v[i].id, ch->conf->name, (now - missed->v[i].due_ms) / 1000,
              ch->grace_ms / 1000);
      if (missed->n)
        notify(d,
               "calpost: %zu post(s) on %s missed their time (calpost was not running or the "
               "channel was paused past the grace of %" PRId64 " minutes)",
               missed->n, ch->conf->name, ch->grace_ms / 60000);
      cp_store_posts_free(missed);
    }
    if (cp_store_next_due(d->store, ch->conf->name, &next) < 0)
      return NULL;
  }
  struct inflight *f = NULL;
  /* When the request may leave: its due (or retry) time, the server's hints, the rate window. */
  int64_t at = next->next_ms > now ? next->next_ms : now;
  int64_t hint = cp_ratelimit_wait_ms(&ch->rl, now);
  if (hint > 0 && now + hint > at)
    at = now + hint;
  int64_t ready = window_ready(ch, ch->sample ? 1 : 0); /* a sample in flight counts too */
  if (ready > at)
    at = ready;
  if (at == INT64_MAX) { /* `rate = 1/T` and a sample in flight: its answer looks again */
    cp_store_post_free(next);
    return NULL;
  }
  if (at > (next->next_ms > now ? next->next_ms : now) && strcmp(ch->rl_waited, next->id)) {
    ch->rl_waits++; /* once per post, however often the channel is looked at while it waits */
    snprintf(ch->rl_waited, sizeof ch->rl_waited, "%s", next->id);
  }
  /* The claim's disk sync happens ahead of time, so the request leaves at `at`. */
  if (at - now > d->claim_ahead_ms)
    ch->wake_ms = at - d->claim_ahead_ms;
  else if ((f = claim(d, ch, next, now)))
    f->fire_at = at;
  else
    ch->wake_ms = now + 60000; /* could not claim: look again later */
  cp_store_post_free(next);
  return f;
}

/* How late saving the claims must make a post before the log says so. */
#define SLOW_CLAIM_MS 50

/* Schedules the channels for which pick() is true: one batch (one disk sync) claims every due
 * post, then the requests leave. in_batch: the caller's batch is open (it holds outcomes to
 * save with the claims) and is ended here. */
static void schedule_where(struct daemon *d, bool (*pick)(struct channel *ch, int64_t now),
                           int64_t now, bool in_batch) {
  struct inflight **fired = calloc(d->n_ch ? d->n_ch : 1, sizeof *fired);
  size_t n = 0;
  if (!fired) {
    if (in_batch && cp_store_batch_end(d->store, true) < 0)
      logf_(CP_LOG_ERROR, "cannot save the outcomes: %s", cp_store_errmsg(d->store));
    return;
  }
  bool batch = in_batch || cp_store_batch_begin(d->store) == 0;
  int64_t began = now;
  for (size_t i = 0; i < d->n_ch; i++)
    if (pick(&d->ch[i], now)) {
      struct inflight *f = schedule_channel(d, &d->ch[i], now);
      if (f)
        fired[n++] = f;
    }
  if (batch && cp_store_batch_end(d->store, true) < 0) {
    /* Nothing was claimed on disk: send nothing, look again in a second. */
    if (in_batch)
      logf_(CP_LOG_ERROR,
            "cannot save the outcomes and claims: %s; the answered posts stay `sending` and are "
            "settled at the next start; not sending",
            cp_store_errmsg(d->store));
    else
      logf_(CP_LOG_ERROR, "cannot save the claims: %s; not sending", cp_store_errmsg(d->store));
    for (size_t i = 0; i < n; i++) {
      fired[i]->ch->wake_ms = now + 1000;
      fired[i]->ch->busy = false;
      d->n_inflight--;
      plan_unref(fired[i]->pr);
      free(fired[i]->utm_text);
      free(fired[i]->post_mem);
      free(fired[i]);
    }
    n = 0;
  }
  now = wall_ms();
  bool armed = false;
  for (size_t i = 0; i < n; i++) {
    struct inflight *f = fired[i];
    /* Say so when saving the claims is what makes a post late (it was not due when the save
     * began; a disk that stalls for longer than claim_ahead): the remedy is a longer one. */
    if (f->fire_at > began && now - f->fire_at >= SLOW_CLAIM_MS)
      logf_(CP_LOG_WARN,
            "post %s on %s leaves %" PRId64 " ms after its time: saving the claims took %" PRId64
            " ms (claim_ahead is %" PRId64 " ms; raise it if the disk is often this slow)",
            f->post.id, f->ch->conf->name, now - f->fire_at, now - began, d->claim_ahead_ms);
    if (f->fire_at > now) {
      f->ch->armed = f;
      armed = true;
    } else {
      fire(f);
    }
  }
  if (armed)
    fire_arm(d);
  free(fired);
}

/* Arms the one timer for the earliest channel wake-up; nothing runs while idle. */
static void arm(struct daemon *d) {
  sample_schedule(d); /* a post's answer, a new plan or a resume may free a sample too */
  int64_t wake = INT64_MAX;
  for (size_t i = 0; i < d->n_ch; i++)
    if (d->ch[i].wake_ms < wake)
      wake = d->ch[i].wake_ms;
  if (wake == INT64_MAX || d->stopping) {
    uv_timer_stop(&d->timer);
    return;
  }
  timer_at(d, &d->timer, on_timer, wake);
}

static bool pick_all(struct channel *ch, int64_t now) {
  return true;
}

static bool pick_due(struct channel *ch, int64_t now) {
  return ch->wake_ms <= now + 1;
}

static void schedule(struct daemon *d) {
  if (!d->plan)
    return; /* nothing applied yet: never publish from an unreviewed plan */
  schedule_where(d, pick_all, wall_ms(), false);
  arm(d);
}

static int64_t next_fire(struct daemon *d);

static void on_timer(uv_timer_t *t) {
  struct daemon *d = t->data;
  /* Claims sync to disk and block the loop; they run claim_ahead early, so they can wait until
   * a post that is about to leave has left. */
  int64_t now = wall_ms(), soon = next_fire_after_overdue(d, now);
  if (soon != INT64_MAX && soon - now < 50) {
    timer_at(d, &d->timer, on_timer, soon + 2);
    return;
  }
  if (d->plan)
    schedule_where(d, pick_due, now, false);
  arm(d);
}

/* ---------------------------------------------------------------------------------------- */
/* Engagement samples: the audience's response to each published post, read through the    */
/* connector at fixed ages after it went out (engagement_ages). Posts come first.           */

/* A sample's answer comes within this (the connectors' request timeouts are shorter). */
#define SAMPLE_GUARD_MS 60000
/* How often the samples that came too late are looked for (a walk over all sent posts). */
#define SAMPLE_SKIP_EVERY_MS 3600000
/* Samples settled at once without a request (no remote id) per look at a channel. */
#define SAMPLE_BURST 64

static void on_sample_timer(uv_timer_t *t);

/* "1h", "7d", "90s": an age for people. */
static void format_age(int64_t age_s, char *buf, size_t len) {
  if (age_s % 86400 == 0)
    snprintf(buf, len, "%" PRId64 "d", age_s / 86400);
  else if (age_s % 3600 == 0)
    snprintf(buf, len, "%" PRId64 "h", age_s / 3600);
  else if (age_s % 60 == 0)
    snprintf(buf, len, "%" PRId64 "m", age_s / 60);
  else
    snprintf(buf, len, "%" PRId64 "s", age_s);
}

/* Records a sample of ch (counts NULL: skipped for good). Returns whether it was recorded; if
 * not, the channel's samples wait a minute rather than ask the server again and again. */
static bool sample_record(struct daemon *d, struct channel *ch, const char *post_id, int64_t age_s,
                          const struct cp_store_engagement *counts) {
  if (cp_store_record_engagement(d->store, post_id, age_s, wall_ms(), counts) < 0) {
    logf_(CP_LOG_ERROR, "post %s: cannot record its engagement: %s", post_id,
          cp_store_errmsg(d->store));
    ch->sample_retry_ms = wall_ms() + 60000;
    return false;
  }
  ch->sample_fails = 0;
  ch->sample_retry_ms = 0;
  return true;
}

/* Starts sample s through the connector; its outcome comes back through on_complete. */
static void sample_start(struct daemon *d, struct channel *ch, const struct cp_store_sample *s) {
  struct inflight *f = calloc(1, sizeof *f);
  if (!f || !(f->remote_id = strdup(s->remote_id)) ||
      !(f->remote_url = strdup(s->remote_url ? s->remote_url : ""))) {
    if (f)
      free(f->remote_id);
    free(f);
    ch->sample_wake_ms = wall_ms() + 60000;
    return;
  }
  f->d = d;
  f->ch = ch;
  f->sample = true;
  f->age_s = s->age_s;
  f->due_ms = s->due_ms;
  f->attempts = ch->sample_fails + 1;
  memcpy(f->post.id, s->post_id, sizeof f->post.id);
  f->post.channel = ch->conf->name;
  f->req.host = &ch->host;
  f->req.attempt = (unsigned)f->attempts;
  f->req.idempotency_key = "";
  f->req.host_data = f;
  f->req.progress = "";
  ch->sample = f;
  d->n_inflight++;
  int rc = ch->conn->engagement(ch->inst, f->remote_id, f->remote_url, &f->req);
  if (rc < 0) {
    struct cp_result res = {.outcome = rc == CP_EINVAL ? CP_OUTCOME_PERMANENT : CP_OUTCOME_RETRY,
                            .err = rc};
    snprintf(res.message, sizeof res.message, "could not start: %s", cp_strerror(rc));
    on_complete(&f->req, &res);
  }
}

/* Looks at the samples of one channel and starts the first one if it is due and the channel can
 * take it: no post of the channel in flight or claimed, the rate window and the server's hints
 * allow a request now, and the window keeps room for the channel's next post at its time (a
 * sample waits for a post, a post never waits for a sample). Sets ch->sample_wake_ms; INT64_MAX
 * when only an event (a post's answer, a plan change, a resume) can change the picture. */
static void sample_channel(struct daemon *d, struct channel *ch, int64_t now) {
  ch->sample_wake_ms = INT64_MAX;
  if (!ch->sampling || ch->sample || d->stopping)
    return;
  const char *name = ch->conf->name;
  if (now >= ch->sample_skip_ms) {
    size_t n = 0;
    ch->sample_skip_ms = now + SAMPLE_SKIP_EVERY_MS;
    if (cp_store_skip_engagement(d->store, &name, 1, d->ages_s, d->n_ages, now, &n) < 0)
      logf_(CP_LOG_ERROR, "channel %s: cannot record the late engagement samples: %s", name,
            cp_store_errmsg(d->store));
    else if (n)
      logf_(CP_LOG_INFO,
            "channel %s: %zu engagement sample(s) skipped: more than %lld days past their time",
            name, n, CP_STORE_ENGAGEMENT_LATE_MS / 86400000);
  }
  for (int i = 0; i < SAMPLE_BURST; i++) {
    struct cp_store_sample *s = NULL;
    int rc = cp_store_next_engagement(d->store, &name, 1, d->ages_s, d->n_ages, now, &s);
    if (rc == CP_ENOTFOUND)
      return;
    if (rc < 0) {
      logf_(CP_LOG_ERROR, "channel %s: cannot read the engagement samples: %s", name,
            cp_store_errmsg(d->store));
      ch->sample_wake_ms = now + 60000;
      return;
    }
    int64_t at = s->next_ms > ch->sample_retry_ms ? s->next_ms : ch->sample_retry_ms;
    int64_t hint = cp_ratelimit_wait_ms(&ch->rl, now),
            own = cp_ratelimit_wait_ms(&ch->sample_rl, now);
    if (own > hint)
      hint = own;
    if (now + hint > at)
      at = now + hint;
    int64_t ready = window_ready(ch, 0);
    if (ready > at)
      at = ready;
    if (at > now || ch->busy) {
      ch->sample_wake_ms = ch->busy ? INT64_MAX : at; /* a busy channel's answer looks again */
      cp_store_sample_free(s);
      return;
    }
    if (!s->remote_id || !*s->remote_id) {
      char age[24];
      format_age(s->age_s, age, sizeof age);
      if (sample_record(d, ch, s->post_id, s->age_s, NULL))
        logf_(CP_LOG_INFO,
              "post %s on %s: engagement after %s skipped: the platform gave no id for the post",
              s->post_id, name, age);
      cp_store_sample_free(s);
      continue; /* if it could not be recorded, sample_retry_ms makes the next turn wait */
    }
    struct cp_store_post *next = NULL;
    if (cp_store_next_due(d->store, name, &next) == 0) {
      int64_t post_at = next->next_ms;
      hint = cp_ratelimit_wait_ms(&ch->rl, now);
      if (now + hint > post_at)
        post_at = now + hint;
      int64_t room_at = window_ready(ch, 1); /* when the window has room beside this sample */
      if (room_at == INT64_MAX)
        room_at = now + SAMPLE_GUARD_MS + ch->rate_ms; /* rate = 1/T: after the sample's answer */
      cp_store_post_free(next);
      if (room_at > post_at) {
        cp_store_sample_free(s); /* after the post: its answer looks again */
        return;
      }
    }
    sample_start(d, ch, s);
    cp_store_sample_free(s);
    return;
  }
  ch->sample_wake_ms = now; /* a burst of samples without ids: the rest on the next turn */
}

/* Looks at every channel's samples and arms the one sample timer for the earliest wake-up;
 * nothing runs while no sample is to come. */
static void sample_schedule(struct daemon *d) {
  int64_t now = wall_ms(), wake = INT64_MAX;
  for (size_t i = 0; i < d->n_ch; i++) {
    sample_channel(d, &d->ch[i], now);
    if (d->ch[i].sample_wake_ms < wake)
      wake = d->ch[i].sample_wake_ms;
  }
  if (wake == INT64_MAX || d->stopping) {
    uv_timer_stop(&d->sample_timer);
    return;
  }
  timer_at(d, &d->sample_timer, on_sample_timer, wake);
}

static void on_sample_timer(uv_timer_t *t) {
  struct daemon *d = t->data;
  /* Recording a sample syncs to disk: not while a post is about to leave. */
  int64_t now = wall_ms(), soon = next_fire_after_overdue(d, now);
  if (soon != INT64_MAX && soon - now < 50) {
    timer_at(d, &d->sample_timer, on_sample_timer, soon + 2);
    return;
  }
  sample_schedule(d);
}

/* Records the outcome of one sample (inside the flush batch) and logs one line. */
static void settle_sample(struct inflight *f, const struct cp_result *res) {
  struct daemon *d = f->d;
  struct channel *ch = f->ch;
  int64_t now = wall_ms();
  char age[24];
  format_age(f->age_s, age, sizeof age);
  enum cp_outcome outcome = res->outcome;
  const char *msg = res->message;
  if (outcome == CP_OUTCOME_OK && !res->has_engagement) {
    outcome = CP_OUTCOME_PERMANENT;
    msg = "the connector gave no counts";
  }
  switch (outcome) {
    case CP_OUTCOME_OK: {
      struct cp_store_engagement c = {res->replies, res->reposts, res->likes, res->quotes,
                                      res->views};
      const int64_t v[] = {c.replies, c.reposts, c.likes, c.quotes, c.views};
      static const char *const names[] = {"replies", "reposts", "likes", "quotes", "views"};
      char counts[256] = "";
      size_t len = 0;
      for (int i = 0; i < 5; i++)
        if (v[i] >= 0 && len < sizeof counts)
          len += (size_t)snprintf(counts + len, sizeof counts - len, "%s%s %" PRId64,
                                  len ? ", " : "", names[i], v[i]);
      if (sample_record(d, ch, f->post.id, f->age_s, &c))
        logf_(CP_LOG_INFO, "post %s on %s: engagement after %s: %s", f->post.id, ch->conf->name,
              age, len ? counts : "no counts");
      break;
    }
    case CP_OUTCOME_RATE_LIMITED:
    case CP_OUTCOME_RETRY:
    case CP_OUTCOME_UNKNOWN: { /* a read changes nothing: asking again is harmless */
      int64_t not_before = res->retry_at_ms > now ? res->retry_at_ms : 0, at;
      if (outcome == CP_OUTCOME_RATE_LIMITED && not_before)
        cp_ratelimit_block_until(&ch->sample_rl, not_before);
      struct cp_backoff b = d->backoff;
      b.max_lateness_ms = -1; /* samples have their own late limit */
      if (outcome == CP_OUTCOME_RATE_LIMITED)
        b.max_attempts = 0; /* the server works, it only asks for patience */
      if (cp_backoff_next(&b, ++ch->sample_fails, now, f->due_ms, not_before, &at) < 0) {
        if (sample_record(d, ch, f->post.id, f->age_s, NULL))
          logf_(CP_LOG_WARN, "post %s on %s: engagement after %s skipped after %d attempts: %s",
                f->post.id, ch->conf->name, age, f->attempts, msg);
        break;
      }
      ch->sample_retry_ms = at;
      logf_(CP_LOG_INFO, "post %s on %s: engagement after %s: %s (%s), retry in %" PRId64 " s",
            f->post.id, ch->conf->name, age, cp_outcome_name(outcome), msg,
            (at - now + 999) / 1000);
      break;
    }
    case CP_OUTCOME_AUTH:
      /* As for a post: the channel pauses; the sample is taken after `calpost resume`. */
      cp_store_channel_pause(d->store, ch->conf->name, 0, "credentials rejected");
      logf_(CP_LOG_ERROR, "channel %s paused: credentials rejected (%s)", ch->conf->name, msg);
      notify(d,
             "calpost: channel %s is paused: its credentials were rejected (%s). Fix them, "
             "then `calpost resume %s`.",
             ch->conf->name, msg, ch->conf->name);
      break;
    case CP_OUTCOME_PERMANENT:
      if (sample_record(d, ch, f->post.id, f->age_s, NULL))
        logf_(CP_LOG_INFO,
              "post %s on %s: engagement after %s cannot be read (%s); not asked again", f->post.id,
              ch->conf->name, age, msg);
      break;
  }
}

/* The line of key in section s, for messages (0 if absent). */
static int key_line(const struct cp_section *s, const char *key) {
  int line = 0;
  for (size_t i = 0; s && i < s->n_kv; i++)
    if (!strcmp(s->kv[i].key, key))
      line = s->kv[i].line;
  return line;
}

/* [calpost] engagement_ages: when to sample each published post, as a list of durations after
 * it went out ("1h, 1d, 7d", the default), or "none". Whole seconds, at most 16, each once. */
static int engagement_ages(struct daemon *d, const struct cp_section *s) {
  const char *v = cp_section_get(s, "engagement_ages");
  int line = key_line(s, "engagement_ages");
  char buf[512], *save = NULL;
  d->n_ages = 0;
  if (snprintf(buf, sizeof buf, "%s", v ? v : "1h, 1d, 7d") >= (int)sizeof buf) {
    logf_(CP_LOG_ERROR, "%s:%d: engagement_ages: the list is too long", d->cfg->path, line);
    return CP_ECONFIG;
  }
  for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    while (isspace((unsigned char)*tok))
      tok++;
    for (size_t n = strlen(tok); n && isspace((unsigned char)tok[n - 1]); n--)
      tok[n - 1] = '\0';
    if (!strcmp(tok, "none") && d->n_ages == 0 && !strtok_r(NULL, ",", &save))
      return 0;
    int64_t ms = 0;
    if (cp_daemon_parse_duration(tok, &ms) < 0 || ms < 1000 || ms % 1000 ||
        ms > 3650LL * 86400000) {
      logf_(CP_LOG_ERROR,
            "%s:%d: engagement_ages: '%s' is not an age of whole seconds up to ten years (for "
            "example: engagement_ages = 1h, 1d, 7d; or none)",
            d->cfg->path, line, tok);
      return CP_ECONFIG;
    }
    size_t at = 0;
    while (at < d->n_ages && d->ages_s[at] < ms / 1000)
      at++;
    if (at < d->n_ages && d->ages_s[at] == ms / 1000) {
      logf_(CP_LOG_ERROR, "%s:%d: engagement_ages: '%s' is listed twice", d->cfg->path, line, tok);
      return CP_ECONFIG;
    }
    if (d->n_ages == sizeof d->ages_s / sizeof d->ages_s[0]) {
      logf_(CP_LOG_ERROR, "%s:%d: engagement_ages: at most %zu ages", d->cfg->path, line,
            sizeof d->ages_s / sizeof d->ages_s[0]);
      return CP_ECONFIG;
    }
    memmove(&d->ages_s[at + 1], &d->ages_s[at], (d->n_ages - at) * sizeof d->ages_s[0]);
    d->ages_s[at] = ms / 1000;
    d->n_ages++;
  }
  if (d->n_ages == 0) {
    logf_(CP_LOG_ERROR, "%s:%d: engagement_ages: no ages (write none to take no samples)",
          d->cfg->path, line);
    return CP_ECONFIG;
  }
  return 0;
}

/* [channel] engagement = yes | no: whether the channel's posts are sampled (yes where the
 * connector can read engagement). */
static int engagement_setting(struct daemon *d, struct channel *ch) {
  const struct cp_section *s = ch->conf->section;
  const char *v = cp_section_get(s, "engagement");
  bool can = (ch->conn->caps & CP_CAP_ENGAGEMENT) && ch->conn->engagement, want = true;
  if (v) {
    if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on")) {
      want = true;
    } else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off")) {
      want = false;
    } else {
      logf_(CP_LOG_ERROR, "%s:%d: [channel %s] engagement: '%s' is neither yes nor no",
            d->cfg->path, key_line(s, "engagement"), ch->conf->name, v);
      return CP_ECONFIG;
    }
    if (want && !can)
      logf_(CP_LOG_WARN,
            "%s:%d: [channel %s] engagement = %s: the %s connector cannot read engagement; no "
            "samples are taken",
            d->cfg->path, key_line(s, "engagement"), ch->conf->name, v, ch->conf->type);
  }
  ch->sampling = can && want && !ch->notify_only && d->n_ages > 0;
  ch->sample_wake_ms = INT64_MAX;
  cp_ratelimit_init(&ch->sample_rl, 0, 1000, 1, wall_ms()); /* hints only */
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Crash recovery                                                                            */

static void recover(struct daemon *d) {
  struct cp_store_posts *l = NULL;
  if (cp_store_list(d->store, NULL, 1u << CP_STORE_SENDING, 0, &l) < 0)
    return;
  for (size_t i = 0; i < l->n; i++) {
    const struct cp_store_post *p = &l->v[i];
    struct channel *ch = find_channel(d, p->channel);
    bool idem = ch && (ch->conn->caps & CP_CAP_IDEMPOTENT);
    if (idem || d->resend_unknown) {
      record(d, p->id, CP_OUTCOME_UNKNOWN, 0, "interrupted while sending; resent with the same key",
             CP_STORE_PENDING, wall_ms(), NULL, NULL);
      logf_(CP_LOG_WARN,
            "post %s on %s was sending when calpost stopped: resending with the "
            "same idempotency key",
            p->id, p->channel);
    } else {
      record(d, p->id, CP_OUTCOME_UNKNOWN, 0, "interrupted while sending", CP_STORE_UNKNOWN, 0,
             NULL, NULL);
      notify(d,
             "calpost: post %s on %s was being sent when calpost stopped; it may or may not "
             "have been published. Check, then `calpost retry %s` or `calpost skip %s`.",
             p->id, p->channel, p->id, p->id);
    }
  }
  cp_store_posts_free(l);
}

/* ---------------------------------------------------------------------------------------- */
/* Control API                                                                               */

static json_t *err_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *err_json(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return json_pack("{s:s}", "error", msg);
}

static json_t *time_json(int64_t ms) {
  if (!ms)
    return json_null();
  char buf[40];
  cp_plan_format_time(ms / 1000, 0, buf, sizeof buf);
  return json_string(buf);
}

static int ctl_status(void *arg, json_t **out) {
  struct daemon *d = arg;
  json_t *chans = json_array();
  int64_t now = wall_ms();
  bool all_paused = d->n_ch > 0;
  for (size_t i = 0; i < d->n_ch; i++) {
    struct channel *ch = &d->ch[i];
    struct cp_store_channel_status *st = NULL;
    if (cp_store_channel_status(d->store, ch->conf->name, now, &st) < 0)
      continue;
    json_t *next = json_null();
    if (st->has_next) {
      struct cp_post post;
      bool found = plan_find(d->plan, st->next_id, &post, NULL);
      next = json_pack("{s:s,s:o,s:s}", "id", st->next_id, "due", time_json(st->next_ms), "title",
                       found ? post.title : "");
    }
    all_paused = all_paused && st->paused;
    json_array_append_new(
        chans,
        json_pack("{s:s,s:s,s:b,s:o,s:s?,s:I,s:o,s:s?,s:I,s:I,s:I,s:I}", "name", ch->conf->name,
                  "type", ch->conf->type, "paused", st->paused, "paused_until",
                  st->paused && st->paused_until_ms ? time_json(st->paused_until_ms) : json_null(),
                  "pause_reason", st->pause_reason, "queue_depth",
                  (json_int_t)st->counts[CP_STORE_PENDING], "next", next ? next : json_null(),
                  "last_error", st->has_error ? st->error_message : NULL, "sent",
                  (json_int_t)st->counts[CP_STORE_SENT], "failed",
                  (json_int_t)st->counts[CP_STORE_FAILED], "missed",
                  (json_int_t)st->counts[CP_STORE_MISSED], "unknown",
                  (json_int_t)st->counts[CP_STORE_UNKNOWN]));
    if (ch->sampling) /* the entry just appended */
      json_object_set_new(json_array_get(chans, json_array_size(chans) - 1), "engagement_samples",
                          json_integer((json_int_t)st->samples));
    cp_store_channel_status_free(st);
  }
  json_t *held = json_array();
  if (d->held_active)
    json_array_append_new(
        held, json_pack("{s:s,s:o}", "reason", d->held.why, "since", time_json(d->held.since_ms)));
  *out = json_pack("{s:s,s:b,s:o,s:o}", "state", d->stopping ? "stopping" : "running", "paused_all",
                   all_paused, "held_changes", held, "channels", chans);
  return 200;
}

static int ctl_pause(void *arg, const char *channel, int64_t until_ms, json_t **out) {
  struct daemon *d = arg;
  if (channel && !find_channel(d, channel)) {
    *out = err_json("unknown channel '%s'", channel);
    return 404;
  }
  for (size_t i = 0; i < d->n_ch; i++)
    if (!channel || !strcmp(channel, d->ch[i].conf->name))
      cp_store_channel_pause(d->store, d->ch[i].conf->name, until_ms, "paused by hand");
  logf_(CP_LOG_WARN, "paused %s%s", channel ? channel : "all channels",
        until_ms ? " until a time" : "");
  schedule(d);
  *out = json_pack("{s:b,s:s}", "paused", 1, "channel", channel ? channel : "all");
  return 200;
}

static int ctl_resume(void *arg, const char *channel, json_t **out) {
  struct daemon *d = arg;
  if (channel && !find_channel(d, channel)) {
    *out = err_json("unknown channel '%s'", channel);
    return 404;
  }
  for (size_t i = 0; i < d->n_ch; i++)
    if (!channel || !strcmp(channel, d->ch[i].conf->name))
      cp_store_channel_resume(d->store, d->ch[i].conf->name);
  logf_(CP_LOG_INFO, "resumed %s", channel ? channel : "all channels");
  schedule(d);
  *out = json_pack("{s:b,s:s}", "paused", 0, "channel", channel ? channel : "all");
  return 200;
}

static int ctl_post_op(struct daemon *d, const char *id, bool retry, json_t **out) {
  int rc = retry ? cp_store_retry(d->store, id, wall_ms()) : cp_store_skip(d->store, id, wall_ms());
  if (rc == CP_ENOTFOUND) {
    *out = err_json("no post with id %s", id);
    return 404;
  }
  if (rc < 0) {
    *out = err_json("%s", retry ? "only failed, missed, unknown or skipped posts can be retried"
                                : "only pending or unknown posts can be skipped");
    return 409;
  }
  logf_(CP_LOG_INFO, "post %s %s by hand", id, retry ? "queued again" : "skipped");
  schedule(d);
  *out = json_pack("{s:s,s:s}", "id", id, "state", retry ? "pending" : "skipped");
  return 200;
}

static int ctl_retry(void *arg, const char *id, json_t **out) {
  return ctl_post_op(arg, id, true, out);
}

static int ctl_skip(void *arg, const char *id, json_t **out) {
  return ctl_post_op(arg, id, false, out);
}

static int ctl_confirm(void *arg, json_t **out) {
  struct daemon *d = arg;
  if (!d->held_active) {
    *out = err_json("no plan change is waiting for confirmation");
    return 409;
  }
  struct plan_ref *pr;
  int rc = plan_load(d, &pr);
  if (rc == 0) {
    if (pr->plan->n_unread) {
      plan_unref(pr);
      *out = err_json("the plan still has files that cannot be read; fix them first");
      return 409;
    }
    rc = apply_plan(d, pr, true);
    plan_unref(pr);
  }
  if (rc < 0) {
    *out = err_json("could not apply the plan: %s", cp_strerror(rc));
    return 500;
  }
  schedule(d);
  *out = json_pack("{s:b}", "confirmed", 1);
  return 200;
}

/* The counters of /metrics that only the daemon knows. */
static int ctl_stats(void *arg, json_t **out) {
  struct daemon *d = arg;
  json_t *chans = json_array();
  for (size_t i = 0; chans && i < d->n_ch; i++)
    json_array_append_new(chans, json_pack("{s:s,s:s,s:I}", "name", d->ch[i].conf->name, "type",
                                           d->ch[i].conf->type, "rate_limit_waits",
                                           (json_int_t)d->ch[i].rl_waits));
  *out = json_pack("{s:I,s:I,s:b,s:o*}", "plan_refreshes", (json_int_t)d->n_refreshes,
                   "plan_refresh_failures", (json_int_t)d->n_refresh_failures, "plan_held",
                   d->held_active, "channels", chans);
  return *out ? 200 : 500;
}

static const char *ctl_title(void *arg, const char *id) {
  struct daemon *d = arg;
  struct cp_post post;
  return plan_find(d->plan, id, &post, NULL) ? post.title : NULL;
}

static const struct cp_control_ops control_ops = {
    .status = ctl_status,
    .pause = ctl_pause,
    .resume = ctl_resume,
    .retry = ctl_retry,
    .skip = ctl_skip,
    .confirm = ctl_confirm,
    .stats = ctl_stats,
    .title = ctl_title,
};

/* ---------------------------------------------------------------------------------------- */
/* Sync, signals, horizon                                                                    */

static void on_sync_changed(void *arg, const char *calendar, const char *source) {
  struct daemon *d = arg;
  logf_(CP_LOG_INFO, "calendar %s: %s changed, reloading the plan", calendar, source);
  reload(d, false);
}

static void on_sync_failed(void *arg, const char *calendar, const char *source, const char *why) {
  struct daemon *d = arg;
  d->n_refresh_failures++;
  logf_(CP_LOG_WARN, "calendar %s: refresh of %s failed: %s; the last good copy stays", calendar,
        source, why);
  notify(d, "calpost: calendar %s could not be refreshed from %s: %s. The last good copy stays.",
         calendar, source, why);
}

static void on_horizon(uv_timer_t *t) {
  reload(t->data, false);
}

static void on_stop_timeout(uv_timer_t *t) {
  struct daemon *d = t->data;
  logf_(CP_LOG_WARN,
        "%zu request(s) still in flight at the stop deadline; they stay `sending` "
        "and are settled at the next start",
        d->n_inflight);
  uv_stop(d->loop);
}

static void on_signal(uv_signal_t *s, int signum) {
  struct daemon *d = s->data;
  if (signum == SIGHUP) {
    logf_(CP_LOG_INFO, "SIGHUP: refreshing calendars and reloading the plan");
    if (d->sync)
      cp_sync_refresh(d->sync);
    reload(d, false);
    return;
  }
  if (d->stopping)
    return;
  logf_(CP_LOG_INFO, "%s: stopping after %zu request(s) in flight", strsignal(signum),
        d->n_inflight);
  d->stopping = true;
  uv_timer_stop(&d->timer);
  uv_timer_stop(&d->horizon);
  uv_timer_stop(&d->sample_timer);
  if (d->n_inflight == 0)
    uv_stop(d->loop);
  else
    uv_timer_start(&d->stop_timer, on_stop_timeout, (uint64_t)d->stop_wait_ms, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Start and stop                                                                            */

static int lock_state(struct daemon *d) {
  if (mkdir(d->cfg->state_dir, 0700) < 0 && errno != EEXIST) {
    logf_(CP_LOG_ERROR, "cannot create the state directory %s: %s", d->cfg->state_dir,
          strerror(errno));
    return -errno;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/calpost.lock", d->cfg->state_dir);
  d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (d->lock_fd < 0) {
    logf_(CP_LOG_ERROR, "cannot open %s: %s", path, strerror(errno));
    return -errno;
  }
  if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
    logf_(CP_LOG_ERROR,
          "another calpost is already running on the state directory %s; "
          "refusing to start a second one",
          d->cfg->state_dir);
    close(d->lock_fd);
    d->lock_fd = -1;
    return CP_EBUSY;
  }
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(d->lock_fd, 0) == 0 && write(d->lock_fd, pid, (size_t)n) < 0)
    logf_(CP_LOG_WARN, "cannot write %s", path);
  return 0;
}

/* `utm = yes` on a channel (or in [calpost] for all): utm_source (default: the channel name),
 * utm_medium (default: social; email for an email channel), utm_domains (only links to these
 * hosts; default: every link). The campaign is the post's, the content its id. */
static int utm_settings(struct daemon *d, struct channel *ch) {
  const struct cp_section *gs = section(d->cfg, "calpost", "");
  const struct cp_section *cs = ch->conf->section;
  const char *on = cp_section_get(cs, "utm");
  if (!on)
    on = cp_section_get(gs, "utm");
  if (!on || !strcmp(on, "no") || !strcmp(on, "false"))
    return 0;
  if (strcmp(on, "yes") && strcmp(on, "true")) {
    logf_(CP_LOG_ERROR, "%s: [channel %s] utm: '%s' is not yes or no", d->cfg->path, ch->conf->name,
          on);
    return CP_ECONFIG;
  }
  ch->utm_on = true;
  const char *src = cp_section_get(cs, "utm_source");
  const char *med = cp_section_get(cs, "utm_medium");
  ch->utm.source = src ? src : ch->conf->name;
  ch->utm.medium = med ? med : !strcmp(ch->conf->type, "email") ? "email" : "social";
  const char *doms = cp_section_get(cs, "utm_domains");
  if (!doms)
    doms = cp_section_get(gs, "utm_domains");
  if (doms) {
    size_t n = 0, cap = 4;
    char **v = calloc(cap + 1, sizeof *v);
    const char *p = doms;
    while (v && *p) {
      p += strspn(p, ", \t");
      size_t len = strcspn(p, ", \t");
      if (!len)
        break;
      if (n == cap) {
        char **nv = realloc(v, (2 * cap + 1) * sizeof *nv);
        if (!nv)
          break;
        v = nv;
        cap *= 2;
      }
      v[n++] = strndup(p, len);
      v[n] = NULL;
      p += len;
    }
    if (!v)
      return CP_ENOMEM;
    ch->utm_domains = v;
    ch->utm.domains = (const char *const *)v;
    ch->utm.n_domains = n;
  }
  return 0;
}

static int start_channels(struct daemon *d) {
  const struct cp_section *ns = section(d->cfg, "notify", "");
  const char *notify_name = cp_section_get(ns, "channel");
  d->ch = calloc(d->cfg->n_channels ? d->cfg->n_channels : 1, sizeof *d->ch);
  if (!d->ch)
    return CP_ENOMEM;
  for (size_t i = 0; i < d->cfg->n_channels; i++) {
    const struct cp_channel_conf *cc = &d->cfg->channels[i];
    const char *module = cp_section_get(cc->section, "module");
    const struct cp_connector *conn = NULL;
    char err[512];
    if (module && cp_connector_registry_load(d->reg, module, &conn, err, sizeof err) < 0) {
      logf_(CP_LOG_ERROR, "%s:%d: [channel %s] module: %s", d->cfg->path, cc->section->line,
            cc->name, err);
      return CP_ECONFIG;
    }
    if (!conn)
      conn = cp_connector_registry_find(d->reg, cc->type);
    if (!conn) {
      logf_(CP_LOG_ERROR, "%s:%d: [channel %s] type = %s: this build has no such connector",
            d->cfg->path, cc->section->line, cc->name, cc->type);
      return CP_ECONFIG;
    }
    struct channel *ch = &d->ch[d->n_ch];
    ch->d = d;
    ch->conf = cc;
    ch->conn = conn;
    cp_channel_connector_conf(d->cfg, cc, &ch->cconf);
    if (setting_duration(d->cfg, cc->section, "grace", d->grace_ms, &ch->grace_ms) < 0)
      return CP_ECONFIG;
    const char *rate = cp_section_get(cc->section, "rate");
    int64_t count = 0, interval = 1000;
    if (rate && cp_ratelimit_parse(rate, &count, &interval) < 0) {
      logf_(CP_LOG_ERROR, "%s:%d: [channel %s] rate: '%s' is not a rate (for example 30/5m)",
            d->cfg->path, cc->section->line, cc->name, rate);
      return CP_ECONFIG;
    }
    if (count > 0) {
      ch->rate_n = (size_t)count;
      ch->rate_ms = interval;
      if (!(ch->done_at = calloc(ch->rate_n, sizeof *ch->done_at)))
        return CP_ENOMEM;
    }
    cp_ratelimit_init(&ch->rl, 0, 1000, 1, wall_ms()); /* hints only */
    ch->host = d->host;
    if (conn->init(&ch->host, &ch->cconf, &ch->inst) < 0) {
      logf_(CP_LOG_ERROR, "[channel %s]: the %s connector refused its configuration", cc->name,
            cc->type);
      return CP_ECONFIG;
    }
    ch->wake_ms = INT64_MAX;
    ch->notify_only = cp_section_get(cc->section, "notify_only") != NULL;
    if (engagement_setting(d, ch) < 0)
      return CP_ECONFIG;
    if (utm_settings(d, ch) < 0)
      return CP_ECONFIG;
    if (notify_name && !strcmp(notify_name, cc->name))
      d->notify = ch;
    d->n_ch++;
  }
  if (notify_name && !d->notify) {
    logf_(CP_LOG_ERROR, "%s: [notify] channel = %s: no such [channel]", d->cfg->path, notify_name);
    return CP_ECONFIG;
  }
  const char *nrate = cp_section_get(ns, "rate");
  int64_t count = 10, interval = 3600000;
  if (nrate && cp_ratelimit_parse(nrate, &count, &interval) < 0)
    return CP_ECONFIG;
  cp_ratelimit_init(&d->notify_rl, count, interval, count, wall_ms());
  return 0;
}

/* [calpost] media_max_size (bytes, or with k/M) and allow_local_media (yes: media URLs may
 * reach loopback and private addresses, and plain http on loopback). */
static int media_settings(const struct cp_config *cfg, const struct cp_section *s,
                          struct cp_media_opts *o) {
  const char *v = cp_section_get(s, "media_max_size");
  *o = (struct cp_media_opts){0};
  if (v) {
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    if (*end == 'k' || *end == 'K')
      n <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
      n <<= 20, end++;
    if (end == v || *end || n == 0) {
      logf_(CP_LOG_ERROR, "%s: [calpost] media_max_size: '%s' is not a size (e.g. 8M)", cfg->path,
            v);
      return CP_ECONFIG;
    }
    o->max_size = (size_t)n;
  }
  v = cp_section_get(s, "allow_local_media");
  o->allow_local = v && (!strcmp(v, "yes") || !strcmp(v, "true"));
  return 0;
}

static int read_settings(struct daemon *d) {
  const struct cp_section *s = section(d->cfg, "calpost", "");
  int rc = 0;
  rc |= setting_duration(d->cfg, s, "horizon", 30LL * 86400000, &d->horizon_ms);
  rc |= setting_duration(d->cfg, s, "grace", 15 * 60000, &d->grace_ms);
  rc |= setting_duration(d->cfg, s, "max_lateness", 60 * 60000, &d->max_lateness_ms);
  rc |= setting_duration(d->cfg, s, "retry_base", 30000, &d->backoff.base_ms);
  rc |= setting_duration(d->cfg, s, "retry_cap", 15 * 60000, &d->backoff.cap_ms);
  rc |= setting_duration(d->cfg, s, "stop_wait", 10000, &d->stop_wait_ms);
  rc |= setting_duration(d->cfg, s, "claim_ahead", 500, &d->claim_ahead_ms);
  rc |= setting_duration(d->cfg, s, "horizon_refresh", 86400000, &d->horizon_refresh_ms);
  rc |= media_settings(d->cfg, s, &d->media);
  rc |= engagement_ages(d, s);
  if (d->horizon_refresh_ms < 60000)
    d->horizon_refresh_ms = 60000;
  if (rc)
    return CP_ECONFIG;
  const char *v = cp_section_get(s, "max_attempts");
  d->backoff.max_attempts = v ? atoi(v) : 8;
  d->backoff.max_lateness_ms = d->max_lateness_ms;
  if (d->backoff.cap_ms < d->backoff.base_ms)
    d->backoff.cap_ms = d->backoff.base_ms;
  v = cp_section_get(s, "hold_cancel_min");
  d->hold_min = v ? atoi(v) : 10;
  v = cp_section_get(s, "hold_cancel_share");
  d->hold_share = v ? atof(v) : 0.5;
  v = cp_section_get(s, "on_unknown");
  d->resend_unknown = v && !strcmp(v, "resend");
  return 0;
}

static void closed_cb(uv_handle_t *h) {
}

static void module_closed(void *arg) {
}

static void close_own(uv_handle_t *h) {
  if (h->loop && !uv_is_closing(h))
    uv_close(h, closed_cb);
}

int cp_daemon_run(const char *config_path) {
  icalerror_set_errors_are_fatal(0);
  struct daemon *d = calloc(1, sizeof *d);
  if (!d)
    return 1;
  d->lock_fd = -1;
  int status = 1;
  char err[1024];
  if (cp_config_load(config_path, &d->cfg, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    free(d);
    return 1;
  }
  const struct cp_section *gs = section(d->cfg, "calpost", "");
  const char *lv = cp_section_get(gs, "log_level");
  if (lv)
    for (int i = 0; i < 4; i++)
      if (!strcmp(lv, level_names[i]))
        log_level = (enum cp_log_level)i;
  d->loop = calloc(1, sizeof *d->loop);
  if (!d->loop || uv_loop_init(d->loop) < 0)
    goto out;
  d->host = (struct cp_host){.size = sizeof d->host,
                             .version = CP_HOST_VERSION,
                             .loop = d->loop,
                             .data = d,
                             .http_request = host_http_request,
                             .complete = host_complete,
                             .log = host_log,
                             .now_ms = host_now_ms,
                             .wall_ms = host_wall_ms,
                             .secret = host_secret,
                             .secret_free = host_secret_free,
                             .idempotency_key = host_idempotency_key,
                             .http_result = host_http_result,
                             .media_load = host_media_load,
                             .save_progress = host_save_progress};
  if (read_settings(d) < 0 || lock_state(d) < 0)
    goto out_loop;
  if (cp_control_conf_read(d->cfg, &d->control_conf, err, sizeof err) < 0) {
    logf_(CP_LOG_ERROR, "%s", err);
    goto out_loop;
  }
  remember_secret(d->control_conf->token);
  if (cp_store_open(NULL, d->cfg->state_dir, &d->store, err, sizeof err) < 0) {
    logf_(CP_LOG_ERROR, "state database: %s", err);
    goto out_loop;
  }
  if (cp_http_init(d->loop, &d->http) < 0 || cp_connector_registry_new(&d->reg) < 0)
    goto out_loop;
  if (start_channels(d) < 0)
    goto out_loop;
  uv_timer_init(d->loop, &d->timer);
  uv_timer_init(d->loop, &d->sample_timer);
  d->sample_timer.data = d;
  uv_timer_init(d->loop, &d->horizon);
  uv_timer_init(d->loop, &d->stop_timer);
  uv_idle_init(d->loop, &d->flush);
  uv_timer_init(d->loop, &d->flush_timer);
  d->flush_timer.data = d;
  d->timer.data = d->horizon.data = d->stop_timer.data = d->flush.data = d;
  uv_signal_init(d->loop, &d->sig_hup);
  uv_signal_init(d->loop, &d->sig_term);
  uv_signal_init(d->loop, &d->sig_int);
  d->sig_hup.data = d->sig_term.data = d->sig_int.data = d;
  uv_signal_start(&d->sig_hup, on_signal, SIGHUP);
  uv_signal_start(&d->sig_term, on_signal, SIGTERM);
  uv_signal_start(&d->sig_int, on_signal, SIGINT);
  /* A write past RLIMIT_FSIZE fails with EFBIG (reported like a full disk) instead of killing
   * the daemon with SIGXFSZ mid-transaction. */
  signal(SIGXFSZ, SIG_IGN);
  d->clock_fd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
  if (d->clock_fd >= 0 && clock_watch_arm(d->clock_fd) == 0 &&
      uv_poll_init(d->loop, &d->clock_watch, d->clock_fd) == 0) {
    d->clock_watch.data = d;
    uv_poll_start(&d->clock_watch, UV_READABLE, on_clock_set);
  }
  uv_timer_init(d->loop, &d->fire_timer);
  d->fire_timer.data = d;
  d->fire_fd = d->fire_fd_own = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
  if (d->fire_fd >= 0 && uv_poll_init(d->loop, &d->fire_watch, d->fire_fd) == 0) {
    d->fire_watch.data = d;
    uv_poll_start(&d->fire_watch, UV_READABLE, on_fire_fd);
  } else {
    d->fire_fd = -1;
  }

  /* Sources: watched and polled; their last good copies live in the state directory. */
  size_t n_src = 0;
  for (size_t c = 0; c < d->cfg->n_calendars; c++)
    n_src += d->cfg->calendars[c].n_sources;
  struct cp_sync_source *srcs = calloc(n_src ? n_src : 1, sizeof *srcs);
  if (!srcs)
    goto out_loop;
  n_src = 0;
  for (size_t c = 0; c < d->cfg->n_calendars; c++)
    for (size_t s = 0; s < d->cfg->calendars[c].n_sources; s++)
      srcs[n_src++] =
          (struct cp_sync_source){d->cfg->calendars[c].name, d->cfg->calendars[c].sources[s]};
  struct cp_sync_opts so = {.loop = d->loop,
                            .state_dir = d->cfg->state_dir,
                            .max_size = d->cfg->max_file_size,
                            .timeout_ms = 30000,
                            .changed = on_sync_changed,
                            .failed = on_sync_failed,
                            .arg = d};
  if (setting_duration(d->cfg, gs, "poll_interval", 5 * 60000, &so.poll_interval_ms) < 0) {
    free(srcs);
    goto out_loop;
  }
  const char *lb = cp_section_get(gs, "allow_loopback_http");
  so.allow_loopback_http = lb && (!strcmp(lb, "yes") || !strcmp(lb, "true"));
  const char *lc = cp_section_get(gs, "allow_local_calendars");
  so.allow_local_calendars = lc && (!strcmp(lc, "yes") || !strcmp(lc, "true"));
  int rc = cp_sync_start(&so, srcs, n_src, &d->sync);
  free(srcs);
  if (rc < 0) {
    logf_(CP_LOG_ERROR, "cannot watch the calendars: %s", cp_strerror(rc));
    goto out_loop;
  }

  recover(d);
  reload(d, false);
  if (!d->plan) {
    /* The change was held at start: publish from the last good copies meanwhile. */
    d->good_only = true;
    struct plan_ref *pr;
    if (plan_load(d, &pr) == 0) {
      apply_plan(d, pr, true);
      plan_unref(pr);
    }
    d->good_only = false;
    schedule(d);
  }
  /* The rolling horizon: recurring events are expanded again as time moves (a configured
   * poll, `horizon_refresh`, daily by default). */
  uv_timer_start(&d->horizon, on_horizon, (uint64_t)d->horizon_refresh_ms,
                 (uint64_t)d->horizon_refresh_ms);

  snprintf(d->sock_path, sizeof d->sock_path, "%s/calpost.sock", d->cfg->state_dir);
  if ((rc = cp_control_start(d->loop, d->sock_path, &control_ops, d, &d->control)) < 0)
    logf_(CP_LOG_WARN, "control socket %s: %s (status and pause will not work)", d->sock_path,
          cp_strerror(rc));
  char where[128] = "";
  if (d->control &&
      cp_control_configure(d->control, d->control_conf, where, sizeof where, err, sizeof err) < 0)
    logf_(CP_LOG_ERROR, "control: %s (the dashboard and /metrics over TCP will not work)", err);
  else if (where[0])
    logf_(CP_LOG_INFO, "control: dashboard, API and /metrics on http://%s/ (token required)",
          where);
  logf_(CP_LOG_INFO, "calpost %s running: %zu channel(s), state in %s", CALPOST_VERSION, d->n_ch,
        d->cfg->state_dir);
  uv_run(d->loop, UV_RUN_DEFAULT);
  status = 0;
  logf_(CP_LOG_INFO, "stopped");

out_loop:
  /* Every module closes its own handles; the loop runs until all are closed. */
  cp_control_stop(d->control, module_closed, NULL);
  cp_sync_stop(d->sync, module_closed, NULL);
  if (d->http)
    cp_http_close(d->http, module_closed, NULL);
  uv_handle_t *own[] = {(uv_handle_t *)&d->timer,      (uv_handle_t *)&d->horizon,
                        (uv_handle_t *)&d->stop_timer, (uv_handle_t *)&d->sig_hup,
                        (uv_handle_t *)&d->sig_term,   (uv_handle_t *)&d->sig_int,
                        (uv_handle_t *)&d->flush,      (uv_handle_t *)&d->flush_timer};
  for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
    close_own(own[i]);
  close_own((uv_handle_t *)&d->fire_timer);
  close_own((uv_handle_t *)&d->fire_watch);
  close_own((uv_handle_t *)&d->sample_timer);
  close_own((uv_handle_t *)&d->clock_watch);
  uv_run(d->loop, UV_RUN_DEFAULT);
  if (d->clock_fd > 0)
    close(d->clock_fd);
  if (d->fire_fd_own > 0)
    close(d->fire_fd_own);
  for (size_t i = 0; i < d->n_ch; i++) {
    if (d->ch[i].conn && d->ch[i].inst)
      d->ch[i].conn->free(d->ch[i].inst);
    free(d->ch[i].done_at);
    for (char **dm = d->ch[i].utm_domains; dm && *dm; dm++)
      free(*dm);
    free(d->ch[i].utm_domains);
  }
  free(d->ch);
  uv_loop_close(d->loop);
  plan_unref(d->plan);
  cp_store_close(d->store);
  cp_connector_registry_free(d->reg);
  free(d->held.why);
  cp_control_conf_free(d->control_conf);
out:
  free(d->loop);
  if (d->lock_fd >= 0)
    close(d->lock_fd);
  cp_config_free(d->cfg);
  free(d);
  for (size_t i = 0; i < n_secrets; i++) {
    memset(secrets[i], 0, strlen(secrets[i]));
    free(secrets[i]);
  }
  free(secrets);
  secrets = NULL;
  n_secrets = 0;
  return status;
}
