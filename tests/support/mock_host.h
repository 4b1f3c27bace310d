/* A mock connector host for tests: a real HTTP client (scheduler/http.c) on a private loop, a
 * fixed wall clock, a log captured in memory with secrets redacted, and completions recorded and
 * checked (exactly once, never from inside publish). Header-only; include after <cmocka.h>.
 *
 *   struct mock_host mh;
 *   mock_host_init(&mh, &cp_connector_webhook);
 *   const char *kv[] = {"url", "http://...", NULL};
 *   assert_int_equal(mock_host_connect(&mh, kv), 0);
 *   struct cp_result res = mock_host_publish(&mh, &post);
 *   mock_host_close(&mh);   // frees the instance, closes the loop (asserts uv_loop_close == 0)
 */
#ifndef CALPOST_TEST_MOCK_HOST_H
#define CALPOST_TEST_MOCK_HOST_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "connector_registry.h"
#include "http.h"
#include "media.h"

#define MOCK_WALL_MS 1700000000000LL /* Tue, 14 Nov 2023 22:13:20 GMT */

struct mock_host {
  struct cp_host host;
  uv_loop_t loop;
  struct cp_http *http;
  const struct cp_connector *conn;
  void *instance;
  int64_t wall_ms;
  char log[32768];
  size_t log_len;
  char *secrets[8]; /* copies of what secret() handed out, for redaction */
  size_t n_secrets;
  bool in_publish;
  int completions;
  int reentrant_completions;
  struct cp_result last;
  unsigned attempt;    /* attempt number of the next mock_host_publish (0 means 1) */
  char progress[4096]; /* what save_progress stored; passed to the next publish */
  int progress_saves;
  struct cp_media_opts media; /* allow_local is true: the test servers are on 127.0.0.1 */
};

struct mock_conf {
  struct cp_connector_conf conf;
  const char *const *kv; /* key, value, key, value, ..., NULL */
};

static inline const char *mock_conf_get(const struct cp_connector_conf *conf, const char *key,
                                        int *line) {
  const struct mock_conf *mc = (const struct mock_conf *)conf;
  for (size_t i = 0; mc->kv[i]; i += 2)
    if (!strcmp(mc->kv[i], key)) {
      if (line)
        *line = conf->line + 1 + (int)(i / 2);
      return mc->kv[i + 1];
    }
  return NULL;
}

static inline const char *mock_conf_key_at(const struct cp_connector_conf *conf, size_t i) {
  const struct mock_conf *mc = (const struct mock_conf *)conf;
  for (size_t j = 0; mc->kv[j]; j += 2)
    if (j / 2 == i)
      return mc->kv[j];
  return NULL;
}

static inline void mock_conf_init(struct mock_conf *mc, const char *type, const char *const *kv) {
  memset(mc, 0, sizeof *mc);
  mc->conf.type = type;
  mc->conf.name = "test";
  mc->conf.file = "/etc/calpost/calpost.ini";
  mc->conf.line = 10;
  mc->conf.get = mock_conf_get;
  mc->conf.key_at = mock_conf_key_at;
  mc->kv = kv;
}

static inline struct mock_host *mock_of(const struct cp_host *host) {
  return (struct mock_host *)host; /* host is the first member */
}

static inline int mock_http_request(const struct cp_host *host, const struct cp_http_req *req,
                                    cp_http_cb cb, void *data) {
  return cp_http_request(mock_of(host)->http, req, cb, data);
}

/* Replaces every secret that secret() handed out by "***", as the daemon does. */
static inline void mock_redact(const struct mock_host *mh, char *line) {
  for (size_t i = 0; i < mh->n_secrets; i++) {
    size_t sl = strlen(mh->secrets[i]);
    for (char *p = sl ? strstr(line, mh->secrets[i]) : NULL; p; p = strstr(p + 3, mh->secrets[i])) {
      memmove(p + 3, p + sl, strlen(p + sl) + 1);
      memcpy(p, "***", 3);
    }
  }
}

/* With $CP_TEST_OUTPUT set (ctest sets it), appends what the daemon would log or store, redacted
 * the same way, to $CP_TEST_OUTPUT/mock-host.log: tests/secrets_sweep.py greps it for the test
 * secrets, which catches a secret that reached a log line or a message in a form the host cannot
 * redact (a part of it, or one the connector did not get from secret()). */
static inline void mock_keep(const char *what, const char *text) {
  const char *dir = getenv("CP_TEST_OUTPUT");
  char path[4096];
  if (!dir || !*dir)
    return;
  (void)mkdir(dir, 0755);
  snprintf(path, sizeof path, "%s/mock-host.log", dir);
  FILE *f = fopen(path, "a");
  if (f) {
    fprintf(f, "%s %s\n", what, text);
    fclose(f);
  }
}

static inline void mock_complete(const struct cp_publish_req *req, const struct cp_result *res) {
  struct mock_host *mh = req->host_data;
  if (mh->in_publish)
    mh->reentrant_completions++;
  mh->completions++;
  mh->last = *res;
  char kept[sizeof res->message + sizeof res->remote_id + sizeof res->remote_url + 8];
  snprintf(kept, sizeof kept, "%s | %s | %s", res->message, res->remote_id, res->remote_url);
  mock_redact(mh, kept);
  mock_keep("result", kept);
}

static inline void mock_log(const struct cp_host *host, enum cp_log_level level, const char *fmt,
                            ...) {
  struct mock_host *mh = mock_of(host);
  char line[2048];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  mock_redact(mh, line);
  mock_keep("log", line);
  int n =
      snprintf(mh->log + mh->log_len, sizeof mh->log - mh->log_len, "%d %s\n", (int)level, line);
  if (n > 0 && mh->log_len + (size_t)n < sizeof mh->log)
    mh->log_len += (size_t)n;
  if (getenv("CP_TEST_VERBOSE"))
    fprintf(stderr, "[host log %d] %s\n", (int)level, line);
}

static inline uint64_t mock_now_ms(const struct cp_host *host) {
  return uv_now(&mock_of(host)->loop);
}

static inline int64_t mock_wall_ms(const struct cp_host *host) {
  return mock_of(host)->wall_ms;
}

static inline int mock_secret(const struct cp_host *host, const struct cp_connector_conf *conf,
                              const char *key, char **out) {
  struct mock_host *mh = mock_of(host);
  char err[512] = "";
  int rc = cp_connector_secret_read(conf, key, out, err, sizeof err);
  if (rc && rc != CP_ENOTFOUND)
    host->log(host, CP_LOG_ERROR, "%s", err);
  if (rc == 0 && mh->n_secrets < 8)
    mh->secrets[mh->n_secrets++] = strdup(*out);
  return rc;
}

static inline int mock_idempotency_key(const struct cp_host *host, const struct cp_post *post,
                                       char *buf, size_t size) {
  return cp_connector_idempotency_key(post, buf, size);
}

static inline void mock_http_result(const struct cp_publish_req *req,
                                    const struct cp_http_resp *resp, struct cp_result *res) {
  struct mock_host *mh = req->host_data;
  cp_connector_http_result(mh->conn, mh->instance, resp, mh->wall_ms, res);
}

static inline int mock_media_load(const struct cp_publish_req *req, const struct cp_media *media,
                                  cp_media_cb cb, void *data) {
  struct mock_host *mh = req->host_data;
  return cp_media_load(&mh->loop, mh->http, &mh->media, media, cb, data);
}

static inline int mock_save_progress(const struct cp_publish_req *req, const char *progress) {
  struct mock_host *mh = req->host_data;
  if (strlen(progress) >= sizeof mh->progress)
    return CP_ELIMIT;
  snprintf(mh->progress, sizeof mh->progress, "%s", progress);
  mh->progress_saves++;
  return 0;
}

static inline void mock_host_init(struct mock_host *mh, const struct cp_connector *conn) {
  memset(mh, 0, sizeof *mh);
  assert_int_equal(uv_loop_init(&mh->loop), 0);
  assert_int_equal(cp_http_init(&mh->loop, &mh->http), 0);
  mh->conn = conn;
  mh->wall_ms = MOCK_WALL_MS;
  mh->host = (struct cp_host){
      .size = sizeof(struct cp_host),
      .version = CP_HOST_VERSION,
      .loop = &mh->loop,
      .data = mh,
      .http_request = mock_http_request,
      .complete = mock_complete,
      .log = mock_log,
      .now_ms = mock_now_ms,
      .wall_ms = mock_wall_ms,
      .secret = mock_secret,
      .secret_free = cp_connector_secret_free,
      .idempotency_key = mock_idempotency_key,
      .http_result = mock_http_result,
      .media_load = mock_media_load,
      .save_progress = mock_save_progress,
  };
  mh->media.allow_local = true;
}

/* Runs the connector's init with the key/value pairs kv (NULL-terminated). */
static inline int mock_host_connect(struct mock_host *mh, const char *const *kv) {
  struct mock_conf mc;
  mock_conf_init(&mc, mh->conn->name, kv);
  return mh->conn->init(&mh->host, &mc.conf, &mh->instance);
}

/* Publishes post and runs the loop until it completes; returns the result. Asserts that publish
 * accepted the post, completed exactly once, and not from inside publish. */
static inline struct cp_result mock_host_publish(struct mock_host *mh, const struct cp_post *post) {
  char key[64];
  assert_int_equal(cp_connector_idempotency_key(post, key, sizeof key), 0);
  char progress[sizeof mh->progress];
  snprintf(progress, sizeof progress, "%s", mh->progress); /* the connector may save anew */
  struct cp_publish_req req = {.host = &mh->host,
                               .attempt = mh->attempt ? mh->attempt : 1,
                               .idempotency_key = key,
                               .host_data = mh,
                               .progress = progress};
  int before = mh->completions;

  mh->in_publish = true;
  int rc = mh->conn->publish(mh->instance, post, &req);
  mh->in_publish = false;
  assert_int_equal(rc, 0);
  assert_int_equal(mh->completions, before);
  while (mh->completions == before)
    uv_run(&mh->loop, UV_RUN_ONCE);
  /* Let anything wrongly scheduled after completion show up as a second completion. */
  uv_run(&mh->loop, UV_RUN_NOWAIT);
  assert_int_equal(mh->completions, before + 1);
  assert_int_equal(mh->reentrant_completions, 0);
  return mh->last;
}

static inline void mock_host_closed(void *data) {
  *(bool *)data = true;
}

static inline void mock_host_close(struct mock_host *mh) {
  bool closed = false;
  if (mh->conn && mh->conn->free)
    mh->conn->free(mh->instance);
  mh->instance = NULL;
  cp_http_close(mh->http, mock_host_closed, &closed);
  uv_run(&mh->loop, UV_RUN_DEFAULT);
  assert_true(closed);
  assert_int_equal(uv_loop_close(&mh->loop), 0);
  for (size_t i = 0; i < mh->n_secrets; i++)
    free(mh->secrets[i]);
  mh->n_secrets = 0;
}

/* Runs the connector's login_check and the loop until it completes; returns the result. */
static inline struct cp_result mock_host_login_check(struct mock_host *mh) {
  struct cp_publish_req req = {
      .host = &mh->host, .attempt = 1, .idempotency_key = "", .host_data = mh, .progress = ""};
  int before = mh->completions;
  mh->in_publish = true;
  int rc = mh->conn->login_check(mh->instance, &req);
  mh->in_publish = false;
  assert_int_equal(rc, 0);
  while (mh->completions == before)
    uv_run(&mh->loop, UV_RUN_ONCE);
  uv_run(&mh->loop, UV_RUN_NOWAIT);
  assert_int_equal(mh->completions, before + 1);
  assert_int_equal(mh->reentrant_completions, 0);
  return mh->last;
}

/* The path of a test media file under tests/data/media (pixel.png, pixel.gif). */
static inline const char *mock_media_path(const char *name) {
  static char buf[512];
  snprintf(buf, sizeof buf, "%s/media/%s", CP_TEST_DATA, name);
  return buf;
}

/* A post with every field set, for payload checks. */
static inline struct cp_post mock_post(const char *id, const char *text) {
  static const struct cp_media media[] = {{"img/launch.png", "The launch poster"}};
  struct cp_post p = {
      .calendar = "editorial",
      .uid = "launch-2024@example.org",
      .occurrence = "20240102T090000Z",
      .channel = "test",
      .due = 1704186000, /* 2024-01-02T09:00:00Z */
      .utc_offset = 3600,
      .tzid = "Europe/Berlin",
      .state = CP_POST_SCHEDULED,
      .title = "Launch",
      .text = text,
      .media = media,
      .n_media = 1,
      .campaign = "q1",
      .file = "plan.ics",
      .line = 42,
  };
  snprintf(p.id, sizeof p.id, "%s", id);
  return p;
}

#endif
