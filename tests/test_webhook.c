// ctest-labels: connector
/* The webhook connector against tests/support/testserver.py: the exact request it sends (headers,
 * signature, body) and the outcome of each kind of answer. */
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
#include <openssl/hmac.h>

#include "calpost/err.h"
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_WEBHOOK

#define SECRET "s3cret-key-\xc3\xa9"

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char keyfile[96];
  char url[128];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "/hook", f->url, sizeof f->url);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-webhook-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->keyfile, sizeof f->keyfile, "%s/hook.key", f->dir);
  FILE *fp = fopen(f->keyfile, "w");
  fputs(SECRET "\n", fp); /* the line end is not part of the key */
  fclose(fp);
  assert_int_equal(chmod(f->keyfile, 0600), 0); /* others may not read secrets */
  mock_host_init(&f->mh, &cp_connector_webhook);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  unlink(f->keyfile);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void connect_signed(struct fixture *f) {
  const char *kv[] = {"type",     "webhook", "url",   f->url, "secret_file",
                      f->keyfile, "timeout", "800ms", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static void expected_signature(const char *key, const char *ts, const char *body, char *out) {
  unsigned char md[32];
  unsigned int len = 0;
  size_t n = strlen(ts) + 1 + strlen(body);
  char *msg = malloc(n + 1);
  snprintf(msg, n + 1, "%s.%s", ts, body);
  assert_non_null(HMAC(EVP_sha256(), key, (int)strlen(key), (unsigned char *)msg, n, md, &len));
  free(msg);
  assert_int_equal(len, 32);
  strcpy(out, "sha256=");
  for (unsigned i = 0; i < len; i++)
    sprintf(out + 7 + 2 * i, "%02x", md[i]);
}

/* The request the server got must be the signed post; up to max copies of it (libcurl's one
 * resend of a keyed request whose kept-alive connection died), each the same. */
static void assert_requests(struct fixture *f, const struct cp_post *post, const char *key,
                            size_t max) {
  char idem[64], sig[80], ts[24];
  json_t *reqs = testserver_requests(&f->ts);
  size_t n = json_array_size(reqs);
  assert_true(n >= 1 && n <= max);
  for (size_t i = 0; i < n; i++) {
    json_t *r = json_array_get(reqs, i);
    const char *body = json_string_value(json_object_get(r, "body"));

    assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(r, "path")), "/hook");
    assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
    snprintf(idem, sizeof idem, "calpost-%s", post->id);
    assert_string_equal(testserver_header(r, "Idempotency-Key"), idem);
    snprintf(ts, sizeof ts, "%lld", (long long)(f->mh.wall_ms / 1000));
    assert_string_equal(testserver_header(r, "X-Calpost-Timestamp"), ts);
    if (key) {
      expected_signature(key, ts, body, sig);
      assert_string_equal(testserver_header(r, "X-Calpost-Signature"), sig);
    } else {
      assert_null(testserver_header(r, "X-Calpost-Signature"));
    }
    json_t *got = json_loads(body, 0, NULL);
    json_t *want = cp_connector_post_json(post);
    assert_non_null(got);
    assert_true(json_equal(got, want));
    assert_string_equal(json_string_value(json_object_get(got, "text")), post->text);
    json_decref(got);
    json_decref(want);
  }
  json_decref(reqs);
}

/* The one request the server got must be the signed post. */
static void assert_request(struct fixture *f, const struct cp_post *post, const char *key) {
  assert_requests(f, post, key, 1);
}

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int err;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring, or "" for an empty message */
  const char *id;
  const char *url;
};

static const struct answer answers[] = {
    {"[{\"status\": 200, \"json\": {}}]", CP_OUTCOME_OK, 200, 0, -1, "", "", ""},
    {"[{\"status\": 201, \"json\": {\"id\": \"abc123\", \"url\": "
     "\"https://example.org/p/abc123\"}}]",
     CP_OUTCOME_OK, 201, 0, -1, "", "abc123", "https://example.org/p/abc123"},
    {"[{\"status\": 201, \"json\": {\"id\": 4711}}]", CP_OUTCOME_OK, 201, 0, -1, "", "4711", ""},
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"120\"},"
     " \"json\": {\"error\": \"Too many requests\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, 120000, "HTTP 429: Too many requests", "", ""},
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"Tue, 14 Nov 2023 22:23:20 GMT\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, 600000, "HTTP 429", "", ""},
    {"[{\"status\": 503, \"headers\": {\"Retry-After\": \"30\"}, \"body\": \"busy\\nmore\"}]",
     CP_OUTCOME_RETRY, 503, 0, 30000, "HTTP 503: busy", "", ""},
    {"[{\"status\": 500, \"body\": \"Internal Server Error\"}]", CP_OUTCOME_RETRY, 500, 0, -1,
     "HTTP 500: Internal Server Error", "", ""},
    {"[{\"status\": 401, \"json\": {\"error\": {\"message\": \"bad signature\"}}}]",
     CP_OUTCOME_AUTH, 401, 0, -1, "HTTP 401: bad signature", "", ""},
    {"[{\"status\": 403}]", CP_OUTCOME_AUTH, 403, 0, -1, "HTTP 403", "", ""},
    {"[{\"status\": 400, \"json\": {\"error\": \"text too long\"}}]", CP_OUTCOME_PERMANENT, 400, 0,
     -1, "HTTP 400: text too long", "", ""},
    {"[{\"status\": 404, \"body\": \"<!DOCTYPE html><p>gone</p>\"}]", CP_OUTCOME_PERMANENT, 404, 0,
     -1, "HTTP 404", "", ""},
    /* Twice: the request carries an idempotency key, so it may go on a kept-alive connection,
     * and libcurl resends once on a fresh one when a reused connection dies unanswered. */
    {"[{\"reset\": true}, {\"reset\": true}]", CP_OUTCOME_UNKNOWN, 0, -ECONNRESET, -1, "reset", "",
     ""},
    {"[{\"delay\": 3, \"status\": 200}]", CP_OUTCOME_UNKNOWN, 0, -ETIMEDOUT, -1, "timed out", "",
     ""},
    /* The receiver said 200 and then sent more than the 1 MiB cap: published all the same. */
    {"[{\"status\": 200, \"body_size\": 2000000}]", CP_OUTCOME_OK, 200, CP_ETOOBIG, -1,
     "HTTP 200, but reading the response failed", "", ""},
    {"[{\"status\": 500, \"body_size\": 2000000, \"chunked\": true}]", CP_OUTCOME_RETRY, 500,
     CP_ETOOBIG, -1, "HTTP 500", "", ""},
};

static void each_answer_gives_its_outcome(void **state) {
  struct fixture *f = *state;
  connect_signed(f);
  struct cp_post post = mock_post("0123456789abcdef", "Launch day! \xf0\x9f\x9a\x80 \"quoted\"");

  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (*a->message)
      assert_non_null(strstr(res.message, a->message));
    else
      assert_string_equal(res.message, "");
    assert_string_equal(res.remote_id, a->id);
    assert_string_equal(res.remote_url, a->url);
    assert_requests(f, &post, SECRET, strstr(a->script, "reset") ? 2 : 1);
  }
  assert_null(strstr(f->mh.log, "s3cret")); /* the key never reaches a log */
}

static void refused_connection_is_retried(void **state) {
  struct fixture *f = *state;
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", testserver_dead_port());
  const char *kv[] = {"url", url, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = mock_post("0123456789abcdef", "hello");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY); /* nothing left the machine */
  assert_int_equal(res.err, -ECONNREFUSED);
  assert_int_equal(res.http_status, 0);
}

static void resend_keeps_the_idempotency_key(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"url", f->url, NULL}; /* no secret: unsigned */
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  assert_non_null(strstr(f->mh.log, "not signed"));
  struct cp_post post = mock_post("00000000000000aa", "same post");

  testserver_script(&f->ts, "[{\"status\": 500}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_RETRY);
  assert_request(f, &post, NULL);
  f->mh.wall_ms += 60000; /* a minute later: new timestamp, same key */
  testserver_script(&f->ts, "[{\"status\": 200}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(testserver_header(r, "Idempotency-Key"), "calpost-00000000000000aa");
  assert_string_equal(testserver_header(r, "X-Calpost-Timestamp"), "1700000060");
  json_decref(reqs);

  struct cp_post other = mock_post("00000000000000bb", "other post");
  testserver_script(&f->ts, "[]");
  assert_int_equal(mock_host_publish(&f->mh, &other).outcome, CP_OUTCOME_OK);
  assert_request(f, &other, NULL);
}

static void secret_from_env(void **state) {
  struct fixture *f = *state;
  setenv("CP_TEST_WEBHOOK_KEY", "env-key", 1);
  const char *kv[] = {"url", f->url, "secret_env", "CP_TEST_WEBHOOK_KEY", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = mock_post("00000000000000cc", "signed by env");
  testserver_script(&f->ts, "[]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  assert_request(f, &post, "env-key");
  unsetenv("CP_TEST_WEBHOOK_KEY");
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_url[] = {"type", "webhook", NULL};
  const char *bad_url[] = {"url", "ftp://example.org/x", NULL};
  const char *bad_timeout[] = {"url", f->url, "timeout", "soon", NULL};
  const char *both[] = {"url", f->url, "secret_file", f->keyfile, "secret_env", "HOME", NULL};
  const char *unset[] = {"url", f->url, "secret_env", "CP_TEST_SURELY_UNSET_VARIABLE", NULL};
  const char *missing[] = {"url", f->url, "secret_file", "/nonexistent/key", NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_url), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'url"));
  assert_int_equal(mock_host_connect(&f->mh, bad_url), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] url: 'ftp://"));
  assert_int_equal(mock_host_connect(&f->mh, bad_timeout), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:12: [channel test] timeout: 'soon'"));
  assert_int_equal(mock_host_connect(&f->mh, both), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "keep one"));
  assert_int_equal(mock_host_connect(&f->mh, unset), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "CP_TEST_SURELY_UNSET_VARIABLE is not set"));
  assert_int_equal(mock_host_connect(&f->mh, missing), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "/nonexistent/key"));
  assert_null(f->mh.instance);
}

static int n_errors;
static char last_diag[256];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  snprintf(last_diag, sizeof last_diag, "%s", msg);
}

static void validate_checks_length_without_io(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"url", f->url, "max_chars", "10", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = mock_post("00000000000000dd", "twelve chars");
  n_errors = 0;
  assert_int_equal(cp_connector_webhook.validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_int_equal(n_errors, 1);
  assert_non_null(strstr(last_diag, "12"));
  assert_non_null(strstr(last_diag, "allows 10"));
  post.text = "short";
  assert_int_equal(cp_connector_webhook.validate(f->mh.instance, &post, on_diag, NULL), 0);
  post.text = "";
  post.n_media = 0;
  assert_int_equal(cp_connector_webhook.validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_int_equal(n_errors, 2);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0); /* nothing was sent */
  json_decref(reqs);
}

static double m_published, m_failed;
static void on_metric(void *arg, const char *name, double v) {
  if (!strcmp(name, "published"))
    m_published = v;
  if (!strcmp(name, "failed"))
    m_failed = v;
}

static void metrics_count_outcomes(void **state) {
  struct fixture *f = *state;
  connect_signed(f);
  struct cp_post post = mock_post("00000000000000ee", "count me");
  testserver_script(&f->ts, "[{\"status\": 200}, {\"status\": 400}, {\"status\": 201}]");
  for (int i = 0; i < 3; i++)
    mock_host_publish(&f->mh, &post);
  assert_true(cp_connector_webhook.caps & CP_CAP_METRICS);
  cp_connector_webhook.metrics(f->mh.instance, on_metric, NULL);
  assert_true(m_published == 2.0);
  assert_true(m_failed == 1.0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(each_answer_gives_its_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(resend_keeps_the_idempotency_key, setup, teardown),
      cmocka_unit_test_setup_teardown(secret_from_env, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_length_without_io, setup, teardown),
      cmocka_unit_test_setup_teardown(metrics_count_outcomes, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the webhook connector is not built (CALPOST_CONNECTOR_WEBHOOK=OFF): skipped");
  return 0;
}
#endif
