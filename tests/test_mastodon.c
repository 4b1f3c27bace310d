// ctest-labels: connector
// ctest-connector: mastodon
/* The Mastodon connector against tests/support/testserver.py playing an instance: the exact
 * requests (paths, headers, JSON and multipart bodies) as docs.joinmastodon.org documents them,
 * the instance's character limit, threads and their resumption, media with processing, and the
 * outcome of each kind of answer. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "calpost/err.h"
#include "calpost/text.h"
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_MASTODON

#define TOKEN "tok-Zm9vYmFyYmF6cXV4"
#define POST_ID "0123456789abcdef"
#define KEY "calpost-" POST_ID

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char tokfile[96];
  char base[128];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "", f->base, sizeof f->base);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-mastodon-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->tokfile, sizeof f->tokfile, "%s/token", f->dir);
  FILE *fp = fopen(f->tokfile, "w");
  fputs(TOKEN "\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->tokfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_mastodon);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  unlink(f->tokfile);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* Connects with instance and token plus the extra key/value pairs (NULL-terminated). */
static void connect_with(struct fixture *f, const char *const *extra) {
  const char *kv[32] = {"type", "mastodon", "instance", f->base, "token_file", f->tokfile};
  size_t n = 6;
  for (size_t i = 0; extra && extra[i]; i++)
    kv[n++] = extra[i];
  kv[n] = NULL;
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

/* The answer of GET /api/v2/instance with the given limits, as a script entry. */
static void instance_entry(char *buf, size_t size, int max_chars, int url_len) {
  snprintf(buf, size,
           "{\"path\": \"/api/v2/instance\", \"json\": {\"domain\": \"example.social\", "
           "\"configuration\": {\"statuses\": {\"max_characters\": %d, "
           "\"max_media_attachments\": 4, \"characters_reserved_per_url\": %d}}}}",
           max_chars, url_len);
}

/* A login check that reads the instance's limits; asserts both requests. */
static void login(struct fixture *f, int max_chars, int url_len) {
  char inst[512], script[1024];
  instance_entry(inst, sizeof inst, max_chars, url_len);
  snprintf(script, sizeof script,
           "[%s, {\"path\": \"/api/v1/accounts/verify_credentials\", \"json\": {\"id\": \"42\", "
           "\"username\": \"calpost\", \"acct\": \"calpost\"}}]",
           inst);
  testserver_script(&f->ts, script);
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(json_string_value(json_object_get(r, "path")), "/api/v2/instance");
  r = json_array_get(reqs, 1);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(json_string_value(json_object_get(r, "path")),
                      "/api/v1/accounts/verify_credentials");
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  json_decref(reqs);
}

/* A post without media, with options. */
static struct cp_post text_post(const char *text, const struct cp_post_option *opts, size_t n) {
  struct cp_post p = mock_post(POST_ID, text);
  p.media = NULL;
  p.n_media = 0;
  p.options = opts;
  p.n_options = n;
  return p;
}

/* Publishes as a fresh post (no progress from an earlier test step). */
static struct cp_result publish_fresh(struct fixture *f, const struct cp_post *post) {
  f->mh.progress[0] = '\0';
  return mock_host_publish(&f->mh, post);
}

static json_t *body_json(json_t *req) {
  json_t *b = json_loads(json_string_value(json_object_get(req, "body")), 0, NULL);
  assert_non_null(b);
  return b;
}

/* The requests recorded for path (query excluded), in order, as a new array. */
static json_t *requests_to(struct fixture *f, const char *method, const char *path) {
  json_t *all = testserver_requests(&f->ts), *out = json_array(), *r;
  size_t i;
  json_array_foreach(all, i, r) {
    const char *p = json_string_value(json_object_get(r, "path"));
    if (!strcmp(json_string_value(json_object_get(r, "method")), method) &&
        !strncmp(p, path, strlen(path)) && (p[strlen(path)] == '\0' || p[strlen(path)] == '?'))
      json_array_append(out, r);
  }
  json_decref(all);
  return out;
}

static size_t n_requests_to(struct fixture *f, const char *method, const char *path) {
  json_t *reqs = requests_to(f, method, path);
  size_t n = json_array_size(reqs);
  json_decref(reqs);
  return n;
}

/* A test media file's path, copied (mock_media_path reuses one buffer). */
static char *media_file(const char *name) {
  static char paths[4][512];
  static int next;
  char *p = paths[next++ % 4];
  snprintf(p, sizeof paths[0], "%s", mock_media_path(name));
  return p;
}

static size_t n_requests(struct fixture *f) {
  json_t *all = testserver_requests(&f->ts);
  size_t n = json_array_size(all);
  json_decref(all);
  return n;
}

/* ---- statuses ------------------------------------------------------------------------------- */

static void publishes_a_status_with_its_options(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"visibility", "unlisted", "language", "EN", NULL};
  connect_with(f, extra);
  char inst[512], script[2048];
  instance_entry(inst, sizeof inst, 500, 23);
  /* The first publish reads the limit, then posts. */
  snprintf(script, sizeof script,
           "[%s, {\"path\": \"/api/v1/statuses\", \"json\": {\"id\": \"109876543210\", "
           "\"url\": \"https://example.social/@calpost/109876543210\", "
           "\"uri\": \"https://example.social/users/calpost/statuses/109876543210\"}}]",
           inst);
  testserver_script(&f->ts, script);
  struct cp_post_option opts[] = {{"visibility", "private"},
                                  {"cw", "Spoilers \xe2\x80\x94 season 2"},
                                  {"language", "de"},
                                  {"sensitive", "yes"},
                                  {"tags", "for another channel"}};
  struct cp_post post =
      text_post("Staffel 2 ist da! \xf0\x9f\x8e\x89 https://example.org/s2", opts, 5);
  struct cp_result res = publish_fresh(f, &post);

  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "109876543210");
  assert_string_equal(res.remote_url, "https://example.social/@calpost/109876543210");
  assert_string_equal(res.message, "");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "path")), "/api/v2/instance");
  r = json_array_get(reqs, 1);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
  assert_string_equal(json_string_value(json_object_get(r, "path")), "/api/v1/statuses");
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  assert_string_equal(testserver_header(r, "Idempotency-Key"), KEY);
  json_t *got = body_json(r);
  json_t *want =
      json_pack("{s:s, s:s, s:s, s:s, s:b}", "status", post.text, "visibility", "private",
                "spoiler_text", "Spoilers \xe2\x80\x94 season 2", "language", "de", "sensitive", 1);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  json_decref(reqs);
  /* What is published is on record, for a retry after a crash. */
  assert_string_equal(
      f->mh.progress,
      "1=109876543210;url=https%3A%2F%2Fexample.social%2F%40calpost%2F109876543210");

  /* Without options: the channel's defaults, no spoiler_text, no sensitive; the limit is cached
   * (no second instance request). */
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"7\"}}]");
  post = text_post("plain", NULL, 0);
  res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "7");
  assert_string_equal(res.remote_url, "");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  got = body_json(json_array_get(reqs, 0));
  want =
      json_pack("{s:s, s:s, s:s}", "status", "plain", "visibility", "unlisted", "language", "en");
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  json_decref(reqs);
  assert_null(strstr(f->mh.log, TOKEN)); /* the token never reaches a log */
}

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int err;
  int64_t retry_at_ms; /* 0: no hint */
  const char *message; /* substring */
};

static const struct answer answers[] = {
    {"[{\"status\": 401, \"json\": {\"error\": \"The access token is invalid\"}}]", CP_OUTCOME_AUTH,
     401, 0, 0, "HTTP 401: The access token is invalid"},
    {"[{\"status\": 401, \"json\": {\"error\": \"The access token was revoked\"}}]",
     CP_OUTCOME_AUTH, 401, 0, 0, "revoked"},
    {"[{\"status\": 403, \"json\": {\"error\": \"This action is outside the authorized "
     "scopes\"}}]",
     CP_OUTCOME_AUTH, 403, 0, 0, "outside the authorized scopes"},
    {"[{\"status\": 403, \"json\": {\"error\": \"This action is not allowed\"}}]",
     CP_OUTCOME_PERMANENT, 403, 0, 0, "not allowed"},
    {"[{\"status\": 422, \"json\": {\"error\": \"Validation failed: Text can't be blank\"}}]",
     CP_OUTCOME_PERMANENT, 422, 0, 0, "HTTP 422: Validation failed: Text can't be blank"},
    {"[{\"status\": 404, \"json\": {\"error\": \"Record not found\"}}]", CP_OUTCOME_PERMANENT, 404,
     0, 0, "Record not found"},
    /* Mastodon's 429: no Retry-After; Reset is an ISO 8601 time (here 5 min after the mock
     * clock, 2023-11-14T22:13:20Z). */
    {"[{\"status\": 429, \"headers\": {\"X-RateLimit-Limit\": \"300\", \"X-RateLimit-Remaining\": "
     "\"0\", \"X-RateLimit-Reset\": \"2023-11-14T22:18:20.500000Z\"}, \"json\": {\"error\": "
     "\"Too many requests\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, MOCK_WALL_MS + 300500, "HTTP 429: Too many requests"},
    {"[{\"status\": 429, \"json\": {\"error\": \"Too many requests\"}}]", CP_OUTCOME_RATE_LIMITED,
     429, 0, 0, "Too many requests"},
    {"[{\"status\": 500, \"body\": \"Internal Server Error\"}]", CP_OUTCOME_RETRY, 500, 0, 0,
     "HTTP 500"},
    {"[{\"status\": 503, \"body\": \"<!DOCTYPE html><p>down for maintenance</p>\"}]",
     CP_OUTCOME_RETRY, 503, 0, 0, "HTTP 503"},
    /* The status may exist: the scheduler resends with the same Idempotency-Key. */
    {"[{\"reset\": true, \"repeat\": true}]", CP_OUTCOME_UNKNOWN, 0, -ECONNRESET, 0, "reset"},
    {"[{\"delay\": 3, \"status\": 200}]", CP_OUTCOME_UNKNOWN, 0, -ETIMEDOUT, 0, "timed out"},
    {"[{\"status\": 200, \"body\": \"<html>proxy page</html>\"}]", CP_OUTCOME_UNKNOWN, 0, 0, 0,
     "not a status"},
    {"[{\"status\": 200, \"json\": {\"id\": \"../../etc\"}}]", CP_OUTCOME_UNKNOWN, 0, 0, 0,
     "not a status"},
};

static void each_answer_gives_its_outcome(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"timeout", "800ms", NULL};
  connect_with(f, extra);
  login(f, 500, 23);
  struct cp_post post = text_post("Hello \"world\"", NULL, 0);

  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = publish_fresh(f, &post);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    if (a->status)
      assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_at_ms);
    assert_non_null(strstr(res.message, a->message));
    assert_string_equal(res.remote_id, "");
    /* A request with an Idempotency-Key may go on a kept-alive connection, and libcurl resends
     * it when that connection dies: always with the same key, so never a second status. */
    json_t *reqs = requests_to(f, "POST", "/api/v1/statuses"), *r;
    size_t k;
    assert_true(json_array_size(reqs) >= 1);
    json_array_foreach(reqs, k, r) {
      assert_string_equal(testserver_header(r, "Idempotency-Key"), KEY);
    }
    json_decref(reqs);
  }
  assert_null(strstr(f->mh.log, TOKEN));
}

static void resend_keeps_the_idempotency_key(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  struct cp_post post = text_post("same post", NULL, 0);

  testserver_script(&f->ts, "[{\"status\": 502}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_RETRY);
  assert_string_equal(f->mh.progress, ""); /* nothing was published */
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"55\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_string_equal(testserver_header(json_array_get(reqs, 0), "Idempotency-Key"), KEY);
  json_decref(reqs);

  /* A third attempt (the host lost the result) posts nothing: progress says it is out. */
  testserver_script(&f->ts, "[]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "55");
  assert_int_equal(n_requests(f), 0);
}

static void refused_connection_is_retried(void **state) {
  struct fixture *f = *state;
  char base[64];
  snprintf(base, sizeof base, "http://127.0.0.1:%d/", testserver_dead_port());
  const char *kv[] = {"instance", base, "token_env", "CP_TEST_MASTODON_TOKEN", NULL};
  setenv("CP_TEST_MASTODON_TOKEN", "env-token", 1);
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  unsetenv("CP_TEST_MASTODON_TOKEN");
  struct cp_post post = text_post("hello", NULL, 0);
  struct cp_result res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY); /* nothing left the machine */
  assert_int_equal(res.err, -ECONNREFUSED);
  assert_non_null(strstr(f->mh.log, "cannot read the character limit"));
}

/* ---- the character limit -------------------------------------------------------------------- */

static int n_errors;
static char last_diag[512];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  snprintf(last_diag, sizeof last_diag, "%s", msg);
}

static int check(struct fixture *f, const struct cp_post *post) {
  n_errors = 0;
  last_diag[0] = '\0';
  int rc = cp_connector_mastodon.validate(f->mh.instance, post, on_diag, NULL);
  assert_int_equal(rc == 0, n_errors == 0);
  return rc;
}

/* "<url of 30 characters> " followed by letters up to n characters as Mastodon counts them (the
 * URL as 23). */
static char *text_with_url(size_t n) {
  const char *url = "https://example.org/abcdefghij"; /* 30 characters */
  assert_int_equal(strlen(url), 30);
  char *s = malloc(n + 64);
  size_t len = (size_t)sprintf(s, "%s ", url);
  for (size_t i = 24; i < n; i++)
    s[len++] = 'a' + (char)(i % 26);
  s[len] = '\0';
  return s;
}

static void limit_counts_links_as_23(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  /* Test vector 8 (CONNECTORS-NOTES 3): a 30-character URL counts 23, so URL + space + 476
   * letters = 500 fit and one more does not. No I/O: the default 500. */
  char *t500 = text_with_url(500), *t501 = text_with_url(501);
  assert_int_equal(cp_text_graphemes(t500), 507);
  struct cp_post post = text_post(t500, NULL, 0);
  assert_int_equal(check(f, &post), 0);
  post.text = t501;
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "501 characters"));
  assert_non_null(strstr(last_diag, "allows 500"));
  assert_non_null(strstr(last_diag, "thread = yes"));
  assert_non_null(strstr(last_diag, "max_chars"));
  /* The content warning counts in the same budget. */
  struct cp_post_option cw[] = {{"cw", "CW"}};
  post = text_post(t500, cw, 1);
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "502 characters with the content warning"));
  assert_int_equal(n_requests(f), 0);

  /* The instance allows 1000: after a login check validate knows it. */
  login(f, 1000, 23);
  post = text_post(t501, NULL, 0);
  assert_int_equal(check(f, &post), 0);
  /* An instance that reserves 30 per link: 507 > 500. */
  login(f, 500, 30);
  post.text = t500;
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "507 characters"));
  assert_non_null(strstr(last_diag, "links count 30"));

  /* publish refuses what the instance would refuse, without sending it. */
  testserver_script(&f->ts, "[]");
  struct cp_result res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "507 characters"));
  assert_int_equal(n_requests(f), 0);
  free(t500);
  free(t501);
}

static void max_chars_overrides_the_instance(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"max_chars", "20", NULL};
  connect_with(f, extra);
  login(f, 5000, 23);
  struct cp_post post = text_post("twenty-one characters", NULL, 0);
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "21 characters"));
  assert_non_null(strstr(last_diag, "allows 20 (max_chars)"));
  post.text = "twenty characters!!!";
  assert_int_equal(check(f, &post), 0);
}

static void instance_without_limits_uses_the_default(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  char *t501 = text_with_url(501);
  /* A server without v2 instance: the post goes out, the instance decides; not asked again. */
  testserver_script(&f->ts, "[{\"path\": \"/api/v2/instance\", \"status\": 404, \"json\": "
                            "{\"error\": \"Record not found\"}}, {\"json\": {\"id\": \"1\"}}]");
  struct cp_post post = text_post(t501, NULL, 0);
  assert_int_equal(publish_fresh(f, &post).outcome, CP_OUTCOME_OK);
  assert_non_null(strstr(f->mh.log, "cannot read the character limit"));
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"2\"}}]");
  assert_int_equal(publish_fresh(f, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_string_equal(json_string_value(json_object_get(json_array_get(reqs, 0), "path")),
                      "/api/v1/statuses");
  json_decref(reqs);
  free(t501);
}

/* ---- threads -------------------------------------------------------------------------------- */

/* About 1300 characters of sentences. */
static char *long_text(void) {
  char *s = malloc(4096);
  size_t n = 0;
  for (int i = 1; n < 1300; i++)
    n += (size_t)sprintf(s + n, "This is sentence number %d of the release notes. ", i);
  s[n - 1] = '\0'; /* no trailing space */
  return s;
}

/* The statuses answers for parts first..last: ids 100+k and URLs. */
static void status_answers(char *buf, size_t size, int first, int last) {
  size_t n = 0;
  for (int k = first; k <= last; k++)
    n += (size_t)snprintf(buf + n, size - n,
                          "%s{\"path\": \"/api/v1/statuses\", \"json\": {\"id\": \"%d\", \"url\": "
                          "\"https://example.social/@calpost/%d\"}}",
                          n ? ", " : "", 100 + k, 100 + k);
}

static void thread_posts_a_reply_chain(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  char *text = long_text();
  char **parts = NULL;
  size_t n = 0;
  struct cp_post_option opts[] = {{"cw", "Long read"}, {"visibility", "unlisted"}};
  size_t cw_len = cp_text_graphemes("Long read");
  assert_int_equal(cp_text_split(text, 500 - cw_len, CP_COUNT_MASTODON, true, &parts, &n), 0);
  assert_true(n >= 3);

  char answers_json[4096], script[4200];
  status_answers(answers_json, sizeof answers_json, 1, (int)n);
  snprintf(script, sizeof script, "[%s]", answers_json);
  testserver_script(&f->ts, script);
  struct cp_post post = text_post(text, opts, 2);
  post.thread = true;
  post.numbered = true;
  assert_int_equal(check(f, &post), 0);
  struct cp_result res = publish_fresh(f, &post);

  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "101"); /* the thread is known by its first part */
  assert_string_equal(res.remote_url, "https://example.social/@calpost/101");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), n);
  for (size_t k = 0; k < n; k++) {
    json_t *r = json_array_get(reqs, k);
    char key[64], prev[32];
    assert_string_equal(json_string_value(json_object_get(r, "path")), "/api/v1/statuses");
    snprintf(key, sizeof key, KEY "-%zu", k + 1);
    assert_string_equal(testserver_header(r, "Idempotency-Key"), key);
    json_t *b = body_json(r);
    const char *status = json_string_value(json_object_get(b, "status"));
    assert_string_equal(status, parts[k]);
    assert_true(cp_text_count(status, CP_COUNT_MASTODON) + cw_len <= 500);
    char num[48];
    snprintf(num, sizeof num, " %zu/%zu", k + 1, n);
    assert_non_null(strstr(status, num));
    /* Every part keeps the content warning and the visibility. */
    assert_string_equal(json_string_value(json_object_get(b, "spoiler_text")), "Long read");
    assert_string_equal(json_string_value(json_object_get(b, "visibility")), "unlisted");
    if (k == 0) {
      assert_null(json_object_get(b, "in_reply_to_id"));
    } else {
      snprintf(prev, sizeof prev, "%zu", 100 + k);
      assert_string_equal(json_string_value(json_object_get(b, "in_reply_to_id")), prev);
    }
    json_decref(b);
  }
  json_decref(reqs);
  cp_text_split_free(parts, n);
  free(text);
}

static void thread_resumes_without_repeating_parts(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  char *text = long_text();
  char **parts = NULL;
  size_t n = 0;
  assert_int_equal(cp_text_split(text, 500, CP_COUNT_MASTODON, false, &parts, &n), 0);
  assert_true(n >= 3);
  struct cp_post post = text_post(text, NULL, 0);
  post.thread = true;

  /* Part 1 goes out, part 2 meets a server error. */
  char ans[4096], script[4200];
  status_answers(ans, sizeof ans, 1, 1);
  snprintf(script, sizeof script, "[%s, {\"path\": \"/api/v1/statuses\", \"status\": 500}]", ans);
  testserver_script(&f->ts, script);
  f->mh.progress[0] = '\0';
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "part 2 of"));
  assert_string_equal(f->mh.progress, "1=101;url=https%3A%2F%2Fexample.social%2F%40calpost%2F101");

  /* The next attempt starts at part 2, replying to part 1, with part 2's key. */
  status_answers(ans, sizeof ans, 2, (int)n);
  snprintf(script, sizeof script, "[%s]", ans);
  testserver_script(&f->ts, script);
  f->mh.attempt = 2;
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "101");
  assert_string_equal(res.remote_url, "https://example.social/@calpost/101");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), n - 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(testserver_header(r, "Idempotency-Key"), KEY "-2");
  json_t *b = body_json(r);
  assert_string_equal(json_string_value(json_object_get(b, "in_reply_to_id")), "101");
  assert_string_equal(json_string_value(json_object_get(b, "status")), parts[1]);
  json_decref(b);
  json_decref(reqs);

  /* After a crash between the last part and the result: nothing is posted again. */
  testserver_script(&f->ts, "[]");
  f->mh.attempt = 3;
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "101");
  assert_string_equal(res.remote_url, "https://example.social/@calpost/101");
  assert_int_equal(n_requests(f), 0);
  cp_text_split_free(parts, n);
  free(text);
}

static void thread_follows_the_instance_limit(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 200, 23); /* a small instance: more, shorter parts */
  char *text = long_text();
  struct cp_post post = text_post(text, NULL, 0);
  post.thread = true;
  char ans[8192], script[8300];
  status_answers(ans, sizeof ans, 1, 20);
  snprintf(script, sizeof script, "[%s]", ans);
  testserver_script(&f->ts, script);
  assert_int_equal(publish_fresh(f, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_true(json_array_size(reqs) >= 7);
  size_t i;
  json_t *r;
  json_array_foreach(reqs, i, r) {
    json_t *b = body_json(r);
    assert_true(cp_text_count(json_string_value(json_object_get(b, "status")), CP_COUNT_MASTODON) <=
                200);
    json_decref(b);
  }
  json_decref(reqs);
  free(text);
}

/* ---- media ---------------------------------------------------------------------------------- */

/* The raw body of a recorded request (it may hold NUL bytes), malloc'd; its length in *len. */
static unsigned char *raw_body(json_t *r, size_t *len) {
  const char *b64 = json_string_value(json_object_get(r, "body_b64"));
  size_t n = strlen(b64);
  unsigned char *out = malloc(n / 4 * 3 + 4);
  int got = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
  assert_true(got >= 0);
  while (n > 0 && b64[n - 1] == '=') { /* EVP_DecodeBlock counts the padding as zero bytes */
    n--;
    got--;
  }
  *len = (size_t)got;
  return out;
}

static void assert_contains(const unsigned char *body, size_t len, const void *what, size_t n) {
  if (!memmem(body, len, what, n))
    fail_msg("the body lacks '%.*s'", (int)n, (const char *)what);
}

/* A multipart upload to /api/v2/media: the file's exact bytes with its name and type, and the
 * alt text as `description`. */
static void assert_upload(json_t *r, const char *name, const char *type, const char *alt) {
  char want[256];
  size_t len, flen;
  assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
  assert_string_equal(json_string_value(json_object_get(r, "path")), "/api/v2/media");
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  assert_non_null(strstr(testserver_header(r, "Content-Type"), "multipart/form-data; boundary="));
  assert_null(testserver_header(r, "Idempotency-Key"));
  unsigned char *body = raw_body(r, &len);
  snprintf(want, sizeof want,
           "Content-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
           "Content-Type: %s\r\n\r\n",
           name, type);
  assert_contains(body, len, want, strlen(want));
  FILE *fp = fopen(mock_media_path(name), "rb");
  assert_non_null(fp);
  unsigned char file[65536];
  flen = fread(file, 1, sizeof file, fp);
  fclose(fp);
  assert_true(flen > 0);
  assert_contains(body, len, file, flen);
  if (alt) {
    snprintf(want, sizeof want,
             "Content-Disposition: form-data; name=\"description\"\r\n\r\n%s\r\n", alt);
    assert_contains(body, len, want, strlen(want));
  } else {
    assert_null(memmem(body, len, "name=\"description\"", 18));
  }
  free(body);
}

static void media_are_uploaded_and_attached(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  struct cp_media media[] = {{media_file("pixel.png"), "A red pixel \xe2\x80\x94 tiny"},
                             {media_file("pixel.gif"), NULL}};
  struct cp_post post = text_post("Two pictures", NULL, 0);
  post.media = media;
  post.n_media = 2;
  assert_int_equal(check(f, &post), 0);
  /* The PNG is processed at once (200), the GIF in the background (202, then 206, then 200). */
  testserver_script(
      &f->ts,
      "[{\"path\": \"/api/v2/media\", \"json\": {\"id\": \"9001\", \"type\": \"image\", \"url\": "
      "\"https://files.example.social/9001.png\"}},"
      " {\"path\": \"/api/v2/media\", \"status\": 202, \"json\": {\"id\": \"9002\", \"type\": "
      "\"gifv\", \"url\": null}},"
      " {\"path\": \"/api/v1/media/9002\", \"status\": 206, \"body\": \"\"},"
      " {\"path\": \"/api/v1/media/9002\", \"json\": {\"id\": \"9002\", \"url\": "
      "\"https://files.example.social/9002.mp4\"}},"
      " {\"path\": \"/api/v1/statuses\", \"json\": {\"id\": \"300\"}}]");
  struct cp_result res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "300");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 5);
  assert_upload(json_array_get(reqs, 0), "pixel.png", "image/png", "A red pixel \xe2\x80\x94 tiny");
  assert_upload(json_array_get(reqs, 1), "pixel.gif", "image/gif", NULL);
  for (size_t i = 2; i < 4; i++) {
    json_t *r = json_array_get(reqs, i);
    assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(r, "path")), "/api/v1/media/9002");
  }
  json_t *b = body_json(json_array_get(reqs, 4));
  json_t *want = json_pack("{s:s, s:s, s:[s,s]}", "status", "Two pictures", "visibility", "public",
                           "media_ids", "9001", "9002");
  assert_true(json_equal(b, want));
  json_decref(want);
  json_decref(b);
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "1=300");
}

static void media_go_on_the_first_part_only(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  char *text = long_text();
  struct cp_media media[] = {{media_file("pixel.png"), "Poster"}};
  struct cp_post post = text_post(text, NULL, 0);
  post.thread = true;
  post.media = media;
  post.n_media = 1;
  char ans[4096], script[4400];
  status_answers(ans, sizeof ans, 1, 6);
  snprintf(script, sizeof script,
           "[{\"path\": \"/api/v2/media\", \"json\": {\"id\": \"77\", \"url\": \"https://x/77\"}}, "
           "%s]",
           ans);
  testserver_script(&f->ts, script);
  assert_int_equal(publish_fresh(f, &post).outcome, CP_OUTCOME_OK);
  json_t *st = requests_to(f, "POST", "/api/v1/statuses");
  assert_true(json_array_size(st) >= 3);
  size_t i;
  json_t *r;
  json_array_foreach(st, i, r) {
    json_t *b = body_json(r);
    json_t *ids = json_object_get(b, "media_ids");
    if (i == 0) {
      assert_int_equal(json_array_size(ids), 1);
      assert_string_equal(json_string_value(json_array_get(ids, 0)), "77");
    } else {
      assert_null(ids);
    }
    json_decref(b);
  }
  json_decref(st);
  json_t *up = requests_to(f, "POST", "/api/v2/media");
  assert_int_equal(json_array_size(up), 1);
  json_decref(up);
  free(text);
}

static void media_processing_has_a_bounded_wait(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"media_timeout", "300ms", NULL};
  connect_with(f, extra);
  login(f, 500, 23);
  struct cp_media media[] = {{media_file("pixel.png"), "Alt"}};
  struct cp_post post = text_post("Video soon", NULL, 0);
  post.media = media;
  post.n_media = 1;
  testserver_script(&f->ts,
                    "[{\"path\": \"/api/v2/media\", \"status\": 202, \"json\": {\"id\": \"555\", "
                    "\"url\": null}},"
                    " {\"path\": \"/api/v1/media/555\", \"status\": 206, \"repeat\": true}]");
  f->mh.progress[0] = '\0';
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "still being processed"));
  assert_int_equal(n_requests_to(f, "POST", "/api/v1/statuses"), 0);
  json_t *polls = requests_to(f, "GET", "/api/v1/media/555");
  assert_true(json_array_size(polls) >= 2);
  assert_true(json_array_size(polls) <= 10); /* short waits first, not a busy loop */
  json_decref(polls);
  assert_string_equal(f->mh.progress, "m1=555"); /* the upload is on record */

  /* The next attempt checks the same attachment instead of uploading it again. */
  testserver_script(&f->ts,
                    "[{\"path\": \"/api/v1/media/555\", \"json\": {\"id\": \"555\", \"url\": "
                    "\"https://files.example.social/555.mp4\"}},"
                    " {\"path\": \"/api/v1/statuses\", \"json\": {\"id\": \"600\"}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(reqs, 0), "path")),
                      "/api/v1/media/555");
  json_t *b = body_json(json_array_get(reqs, 1));
  assert_string_equal(json_string_value(json_array_get(json_object_get(b, "media_ids"), 0)), "555");
  json_decref(b);
  json_decref(reqs);

  /* An attachment the server has dropped since is uploaded again. */
  snprintf(f->mh.progress, sizeof f->mh.progress, "m1=556");
  testserver_script(&f->ts,
                    "[{\"path\": \"/api/v1/media/556\", \"status\": 404, \"json\": {\"error\": "
                    "\"Record not found\"}},"
                    " {\"path\": \"/api/v2/media\", \"json\": {\"id\": \"557\", \"url\": "
                    "\"https://x/557\"}},"
                    " {\"path\": \"/api/v1/statuses\", \"json\": {\"id\": \"601\"}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  reqs = requests_to(f, "POST", "/api/v1/statuses");
  b = body_json(json_array_get(reqs, 0));
  assert_string_equal(json_string_value(json_array_get(json_object_get(b, "media_ids"), 0)), "557");
  json_decref(b);
  json_decref(reqs);
}

static void media_errors_are_reported(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  struct cp_media bad[] = {{media_file("not-an-image.png"), "Fake"}};
  struct cp_post post = text_post("Broken media", NULL, 0);
  post.media = bad;
  post.n_media = 1;
  testserver_script(&f->ts, "[]");
  struct cp_result res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "media 1"));
  assert_int_equal(n_requests(f), 0); /* refused before anything was sent */

  struct cp_media good[] = {{media_file("pixel.png"), "Fine"}};
  post.media = good;
  testserver_script(&f->ts,
                    "[{\"path\": \"/api/v2/media\", \"status\": 422, \"json\": {\"error\": "
                    "\"Validation failed: File content type is invalid, File is invalid\"}}]");
  res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "media 1 ("));
  assert_non_null(strstr(res.message, "File content type is invalid"));
  assert_int_equal(n_requests_to(f, "POST", "/api/v1/statuses"), 0);

  /* An upload whose answer never came left at most an unattached file: retry. */
  testserver_script(&f->ts, "[{\"path\": \"/api/v2/media\", \"reset\": true}]");
  res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);

  testserver_script(
      &f->ts, "[{\"path\": \"/api/v2/media\", \"status\": 429, \"headers\": "
              "{\"X-RateLimit-Remaining\": \"0\", \"X-RateLimit-Reset\": "
              "\"2023-11-14T22:43:20.000Z\"}, \"json\": {\"error\": \"Too many requests\"}}]");
  res = publish_fresh(f, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RATE_LIMITED);
  assert_int_equal(res.retry_at_ms, MOCK_WALL_MS + 30 * 60000);
}

/* ---- login check, validate, config ---------------------------------------------------------- */

static void login_check_verifies_the_token(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  assert_non_null(strstr(f->mh.log, "as @calpost"));
  char inst[512], script[1024];
  instance_entry(inst, sizeof inst, 500, 23);
  snprintf(script, sizeof script,
           "[%s, {\"path\": \"/api/v1/accounts/verify_credentials\", \"status\": 401, \"json\": "
           "{\"error\": \"The access token is invalid\"}}]",
           inst);
  testserver_script(&f->ts, script);
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "The access token is invalid"));
  assert_int_equal(n_requests_to(f, "POST", "/api/v1/statuses"), 0);
  assert_null(strstr(f->mh.log, TOKEN));
}

static void validate_checks_options_and_media(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  struct cp_post post = text_post("ok", NULL, 0);
  assert_int_equal(check(f, &post), 0);

  struct cp_post_option vis[] = {{"visibility", "friends"}};
  post = text_post("ok", vis, 1);
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "visibility = friends"));
  struct cp_post_option lang[] = {{"language", "german"}};
  post = text_post("ok", lang, 1);
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "ISO 639-1"));
  struct cp_post_option lang2[] = {{"language", "xx"}};
  post = text_post("ok", lang2, 1);
  assert_int_equal(check(f, &post), CP_EINVAL);
  struct cp_post_option good[] = {
      {"language", "PT"}, {"visibility", "direct"}, {"sensitive", "no"}, {"cw", "x"}};
  post = text_post("ok", good, 4);
  assert_int_equal(check(f, &post), 0);
  struct cp_post_option sens[] = {{"sensitive", "maybe"}};
  post = text_post("ok", sens, 1);
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "yes or no"));

  post = text_post("", NULL, 0);
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "no text and no media"));

  struct cp_media five[] = {
      {"a.png", NULL}, {"b.png", NULL}, {"c.jpg", NULL}, {"d.gif", NULL}, {"e.webp", NULL}};
  post = text_post("", NULL, 0);
  post.media = five;
  post.n_media = 4;
  assert_int_equal(check(f, &post), 0); /* media alone are a post */
  post.n_media = 5;
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "at most 4"));
  struct cp_media mixed[] = {{"https://cdn.example.org/clip.MP4?sig=1", NULL}, {"a.png", NULL}};
  post.media = mixed;
  post.n_media = 2;
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "video must be the only media"));
  post.n_media = 1;
  assert_int_equal(check(f, &post), 0);
  struct cp_media pdf[] = {{"docs/flyer.pdf", NULL}, {"https://example.org/image?id=3", NULL}};
  post.media = pdf;
  post.n_media = 2;
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_int_equal(n_errors, 1); /* the URL without an extension is checked when loaded */
  assert_non_null(strstr(last_diag, ".pdf"));

  /* A thread: over-long text is fine, unless the content warning leaves no room. */
  char *text = long_text();
  post = text_post(text, NULL, 0);
  assert_int_equal(check(f, &post), CP_EINVAL);
  post.thread = true;
  assert_int_equal(check(f, &post), 0);
  char cw[600];
  memset(cw, 'w', 520);
  cw[520] = '\0';
  struct cp_post_option longcw[] = {{"cw", cw}};
  post = text_post(text, longcw, 1);
  post.thread = true;
  assert_int_equal(check(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "content warning"));
  free(text);
  assert_int_equal(n_requests(f), 0);

  const char *const *opts = cp_connector_mastodon.post_options;
  assert_non_null(opts);
  assert_string_equal(opts[0], "visibility");
  assert_string_equal(opts[1], "cw");
  assert_string_equal(opts[2], "language");
  assert_string_equal(opts[3], "sensitive");
  assert_null(opts[4]);
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_instance[] = {"token_file", f->tokfile, NULL};
  const char *bad_scheme[] = {"instance", "ftp://example.social", "token_file", f->tokfile, NULL};
  const char *plain_http[] = {"instance", "http://example.social", "token_file", f->tokfile, NULL};
  const char *no_token[] = {"instance", "https://example.social", NULL};
  const char *bad_vis[] = {
      "instance", "https://example.social", "token_file", f->tokfile, "visibility", "everyone",
      NULL};
  const char *bad_lang[] = {
      "instance", "https://example.social", "token_file", f->tokfile, "language", "english", NULL};
  const char *bad_max[] = {
      "instance", "https://example.social", "token_file", f->tokfile, "max_chars", "lots", NULL};
  const char *bad_wait[] = {"instance", "https://example.social", "token_file",
                            f->tokfile, "media_timeout",          "forever",
                            NULL};
  const char *both[] = {
      "instance", "https://example.social", "token_file", f->tokfile, "token_env", "HOME", NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_instance), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'instance"));
  assert_int_equal(mock_host_connect(&f->mh, bad_scheme), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] instance: 'ftp://"));
  assert_int_equal(mock_host_connect(&f->mh, plain_http), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "plain http"));
  assert_int_equal(mock_host_connect(&f->mh, no_token), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "needs token_file or token_env"));
  assert_int_equal(mock_host_connect(&f->mh, bad_vis), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] visibility: 'everyone'"));
  assert_int_equal(mock_host_connect(&f->mh, bad_lang), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] language: 'english'"));
  assert_int_equal(mock_host_connect(&f->mh, bad_max), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "max_chars: 'lots'"));
  assert_int_equal(mock_host_connect(&f->mh, bad_wait), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "media_timeout: 'forever'"));
  assert_int_equal(mock_host_connect(&f->mh, both), CP_ECONFIG);
  assert_null(f->mh.instance);
  assert_null(strstr(f->mh.log, TOKEN));

  /* A bare host name means https; a trailing slash is dropped; unknown keys are reported. */
  const char *bare[] = {"instance", "example.social/", "token_file", f->tokfile, "colour", "blue",
                        NULL};
  assert_int_equal(mock_host_connect(&f->mh, bare), 0);
  assert_non_null(strstr(f->mh.log, "unknown key 'colour'"));
  cp_connector_mastodon.free(f->mh.instance);
  f->mh.instance = NULL;
}

/* ---- engagement ----------------------------------------------------------------------------- */

/* Runs the connector's engagement read like the host does and the loop until it completes;
 * asserts it was accepted, completed exactly once and not from inside the call. */
static struct cp_result engagement(struct fixture *f, const char *remote_id,
                                   const char *remote_url) {
  struct mock_host *mh = &f->mh;
  struct cp_publish_req req = {
      .host = &mh->host, .attempt = 1, .idempotency_key = "", .host_data = mh, .progress = ""};
  int before = mh->completions;
  mh->in_publish = true;
  int rc = cp_connector_mastodon.engagement(mh->instance, remote_id, remote_url, &req);
  mh->in_publish = false;
  assert_int_equal(rc, 0);
  assert_int_equal(mh->completions, before);
  while (mh->completions == before)
    uv_run(&mh->loop, UV_RUN_ONCE);
  uv_run(&mh->loop, UV_RUN_NOWAIT);
  assert_int_equal(mh->completions, before + 1);
  assert_int_equal(mh->reentrant_completions, 0);
  return mh->last;
}

/* The one request of an engagement read: GET of the status, with the token, nothing posted. */
static void assert_status_get(struct fixture *f, const char *path) {
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(json_string_value(json_object_get(r, "path")), path);
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  assert_string_equal(testserver_header(r, "Accept"), "application/json");
  assert_null(testserver_header(r, "Idempotency-Key"));
  assert_string_equal(json_string_value(json_object_get(r, "body")), "");
  json_decref(reqs);
}

static void engagement_reads_the_counts(void **state) {
  struct fixture *f = *state;
  assert_true(cp_connector_mastodon.caps & CP_CAP_ENGAGEMENT);
  connect_with(f, NULL);
  /* A Mastodon 4.5 status (abridged), with quotes_count. */
  testserver_script(
      &f->ts, "[{\"path\": \"/api/v1/statuses/109876543210\", \"json\": {\"id\": \"109876543210\", "
              "\"url\": \"https://example.social/@calpost/109876543210\", \"visibility\": "
              "\"public\", \"replies_count\": 3, \"reblogs_count\": 12, \"favourites_count\": 45, "
              "\"quotes_count\": 2, \"content\": \"<p>Staffel 2</p>\"}}]");
  struct cp_result res =
      engagement(f, "109876543210", "https://example.social/@calpost/109876543210");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_true(res.has_engagement);
  assert_int_equal(res.http_status, 200);
  assert_int_equal(res.replies, 3);
  assert_int_equal(res.reposts, 12);
  assert_int_equal(res.likes, 45);
  assert_int_equal(res.quotes, 2);
  assert_int_equal(res.views, -1); /* Mastodon counts no views */
  assert_status_get(f, "/api/v1/statuses/109876543210");
  assert_string_equal(f->mh.progress, ""); /* an engagement read stores nothing */

  /* Before 4.5 there is no quotes_count; a count that is missing or not a number is -1, not 0. */
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"7\", \"replies_count\": 0, "
                            "\"reblogs_count\": null, \"favourites_count\": \"9\"}}]");
  res = engagement(f, "7", "");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_true(res.has_engagement);
  assert_int_equal(res.replies, 0);
  assert_int_equal(res.reposts, -1);
  assert_int_equal(res.likes, -1);
  assert_int_equal(res.quotes, -1);
  assert_int_equal(res.views, -1);
  assert_status_get(f, "/api/v1/statuses/7");
  assert_null(strstr(f->mh.log, TOKEN));
}

static void engagement_of_a_thread_reads_its_first_part(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  login(f, 500, 23);
  char *text = long_text();
  char answers_json[4096], script[4200];
  status_answers(answers_json, sizeof answers_json, 1, 3);
  snprintf(script, sizeof script, "[%s]", answers_json);
  testserver_script(&f->ts, script);
  struct cp_post post = text_post(text, NULL, 0);
  post.thread = true;
  struct cp_result pub = publish_fresh(f, &post);
  assert_int_equal(pub.outcome, CP_OUTCOME_OK);
  assert_int_equal(n_requests_to(f, "POST", "/api/v1/statuses"), 3);

  /* What publish reported is what engagement gets: the thread's first part. */
  testserver_script(&f->ts, "[{\"path\": \"/api/v1/statuses/101\", \"json\": {\"id\": \"101\", "
                            "\"replies_count\": 1, \"reblogs_count\": 2, \"favourites_count\": 3, "
                            "\"quotes_count\": 0}}]");
  struct cp_result res = engagement(f, pub.remote_id, pub.remote_url);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.likes, 3);
  assert_int_equal(res.quotes, 0);
  assert_status_get(f, "/api/v1/statuses/101");
  free(text);
}

static const struct answer engagement_answers[] = {
    {"[{\"status\": 401, \"json\": {\"error\": \"The access token is invalid\"}}]", CP_OUTCOME_AUTH,
     401, 0, 0, "HTTP 401: The access token is invalid"},
    /* A token made with write scopes only may post but not read: PERMANENT, not AUTH (which
     * would pause the channel's posts). */
    {"[{\"status\": 403, \"json\": {\"error\": \"This action is outside the authorized "
     "scopes\"}}]",
     CP_OUTCOME_PERMANENT, 403, 0, 0, "needs a token with the read:statuses scope"},
    {"[{\"status\": 404, \"json\": {\"error\": \"Record not found\"}}]", CP_OUTCOME_PERMANENT, 404,
     0, 0, "status 55: the post was deleted: HTTP 404: Record not found"},
    {"[{\"status\": 429, \"headers\": {\"X-RateLimit-Limit\": \"300\", \"X-RateLimit-Remaining\": "
     "\"0\", \"X-RateLimit-Reset\": \"2023-11-14T22:18:20.500000Z\"}, \"json\": {\"error\": "
     "\"Too many requests\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, MOCK_WALL_MS + 300500, "Too many requests"},
    {"[{\"status\": 503, \"body\": \"<!DOCTYPE html><p>down for maintenance</p>\"}]",
     CP_OUTCOME_RETRY, 503, 0, 0, "HTTP 503"},
    /* A read that got no answer changed nothing: RETRY, never UNKNOWN. */
    {"[{\"reset\": true, \"repeat\": true}]", CP_OUTCOME_RETRY, 0, -ECONNRESET, 0, "reset"},
    {"[{\"delay\": 3, \"status\": 200}]", CP_OUTCOME_RETRY, 0, -ETIMEDOUT, 0, "timed out"},
    {"[{\"status\": 200, \"body\": \"<html>proxy page</html>\"}]", CP_OUTCOME_RETRY, 200, CP_EPARSE,
     0, "not a status"},
};

static void engagement_answers_give_their_outcome(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"timeout", "800ms", NULL};
  connect_with(f, extra);

  for (size_t i = 0; i < sizeof engagement_answers / sizeof engagement_answers[0]; i++) {
    const struct answer *a = &engagement_answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = engagement(f, "55", "https://example.social/@calpost/55");
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_false(res.has_engagement);
    if (a->status)
      assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_at_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    json_t *reqs = testserver_requests(&f->ts), *r;
    size_t k;
    assert_true(json_array_size(reqs) >= 1);
    json_array_foreach(reqs, k, r) {
      assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
      assert_string_equal(json_string_value(json_object_get(r, "path")), "/api/v1/statuses/55");
    }
    json_decref(reqs);
  }
  assert_null(strstr(f->mh.log, TOKEN));

  /* An id publish cannot have reported is refused at once, without a request or completion. */
  testserver_script(&f->ts, "[]");
  struct cp_publish_req req = {.host = &f->mh.host,
                               .attempt = 1,
                               .idempotency_key = "",
                               .host_data = &f->mh,
                               .progress = ""};
  int before = f->mh.completions;
  assert_int_equal(cp_connector_mastodon.engagement(f->mh.instance, "../admin", "", &req),
                   CP_EINVAL);
  assert_int_equal(cp_connector_mastodon.engagement(f->mh.instance, "", "", &req), CP_EINVAL);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, before);
  assert_int_equal(n_requests(f), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(publishes_a_status_with_its_options, setup, teardown),
      cmocka_unit_test_setup_teardown(each_answer_gives_its_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(resend_keeps_the_idempotency_key, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(limit_counts_links_as_23, setup, teardown),
      cmocka_unit_test_setup_teardown(max_chars_overrides_the_instance, setup, teardown),
      cmocka_unit_test_setup_teardown(instance_without_limits_uses_the_default, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_posts_a_reply_chain, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_resumes_without_repeating_parts, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_follows_the_instance_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(media_are_uploaded_and_attached, setup, teardown),
      cmocka_unit_test_setup_teardown(media_go_on_the_first_part_only, setup, teardown),
      cmocka_unit_test_setup_teardown(media_processing_has_a_bounded_wait, setup, teardown),
      cmocka_unit_test_setup_teardown(media_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_verifies_the_token, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_options_and_media, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_reads_the_counts, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_of_a_thread_reads_its_first_part, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_answers_give_their_outcome, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the mastodon connector is not built (CALPOST_CONNECTOR_MASTODON=OFF): skipped");
  return 0;
}
#endif
