// ctest-labels: connector
/* The connector registry (built-ins, dlopen of external modules with the ABI check) and the
 * host-side helpers: default classification, Retry-After, secrets. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "calpost/err.h"
#include "support/mock_host.h"
#include "support/testserver.h"

/* Modules are built into <build>/connectors/example_external/; this test runs from
 * <build>/tests/. */
static void module_path(const char *file, char *out, size_t size) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  assert_true(n > 0);
  exe[n] = '\0';
  snprintf(out, size, "%s/../connectors/example_external/%s", dirname(exe), file);
}

static int dummy_init(const struct cp_host *h, const struct cp_connector_conf *c, void **inst) {
  return 0;
}

static void builtins_are_registered(void **state) {
  struct cp_connector_registry *reg;
  assert_int_equal(cp_connector_registry_new(&reg), 0);
  size_t builtins = 0;
#ifdef CP_BUILTIN_OUTBOX
  const struct cp_connector *o = cp_connector_registry_find(reg, "outbox");
  assert_ptr_equal(o, &cp_connector_outbox);
  assert_true(o->caps & CP_CAP_IDEMPOTENT);
  builtins++;
#endif
#ifdef CP_BUILTIN_WEBHOOK
  const struct cp_connector *w = cp_connector_registry_find(reg, "webhook");
  assert_ptr_equal(w, &cp_connector_webhook);
  assert_true(w->caps & CP_CAP_IDEMPOTENT);
  builtins++;
#endif
#ifdef CP_BUILTIN_MASTODON
  assert_ptr_equal(cp_connector_registry_find(reg, "mastodon"), &cp_connector_mastodon);
  builtins++;
#endif
#ifdef CP_BUILTIN_BLUESKY
  assert_ptr_equal(cp_connector_registry_find(reg, "bluesky"), &cp_connector_bluesky);
  builtins++;
#endif
#ifdef CP_BUILTIN_X
  assert_ptr_equal(cp_connector_registry_find(reg, "x"), &cp_connector_x);
  builtins++;
#endif
#ifdef CP_BUILTIN_LINKEDIN
  assert_ptr_equal(cp_connector_registry_find(reg, "linkedin"), &cp_connector_linkedin);
  builtins++;
#endif
#ifdef CP_BUILTIN_FACEBOOK
  assert_ptr_equal(cp_connector_registry_find(reg, "facebook"), &cp_connector_facebook);
  builtins++;
#endif
#ifdef CP_BUILTIN_TELEGRAM
  assert_ptr_equal(cp_connector_registry_find(reg, "telegram"), &cp_connector_telegram);
  builtins++;
#endif
#ifdef CP_BUILTIN_DISCORD
  assert_ptr_equal(cp_connector_registry_find(reg, "discord"), &cp_connector_discord);
  builtins++;
#endif
#ifdef CP_BUILTIN_SLACK
  assert_ptr_equal(cp_connector_registry_find(reg, "slack"), &cp_connector_slack);
  builtins++;
#endif
#ifdef CP_BUILTIN_MATRIX
  assert_ptr_equal(cp_connector_registry_find(reg, "matrix"), &cp_connector_matrix);
  builtins++;
#endif
#ifdef CP_BUILTIN_WORDPRESS
  assert_ptr_equal(cp_connector_registry_find(reg, "wordpress"), &cp_connector_wordpress);
  builtins++;
#endif
#ifdef CP_BUILTIN_EMAIL
  assert_ptr_equal(cp_connector_registry_find(reg, "email"), &cp_connector_email);
  builtins++;
#endif
  assert_null(cp_connector_registry_find(reg, "myspace"));
  size_t n = 0;
  while (cp_connector_registry_at(reg, n))
    n++;
  assert_int_equal(n, builtins);

  char err[256];
  const struct cp_connector *first = cp_connector_registry_at(reg, 0);
  if (first) {
    assert_int_equal(cp_connector_registry_add(reg, first, err, sizeof err), CP_EEXISTS);
    assert_non_null(strstr(err, "is already registered"));
  }
  static const struct cp_connector nopublish = {
      .abi_version = CP_CONNECTOR_ABI_VERSION, .name = "broken", .init = dummy_init};
  assert_int_equal(cp_connector_registry_add(reg, &nopublish, err, sizeof err), CP_EINVAL);
  assert_non_null(strstr(err, "lacks the publish callback"));
  cp_connector_registry_free(reg);
  cp_connector_registry_free(NULL);
}

static void external_module_loads_and_publishes(void **state) {
  struct cp_connector_registry *reg;
  const struct cp_connector *c = NULL;
  char path[PATH_MAX], err[512], url[128];
  struct testserver ts;
  struct mock_host mh;

  module_path("libcalpost_example_connector.so", path, sizeof path);
  assert_int_equal(cp_connector_registry_new(&reg), 0);
  int rc = cp_connector_registry_load(reg, path, &c, err, sizeof err);
  if (rc)
    print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_string_equal(c->name, "example");
  assert_ptr_equal(cp_connector_registry_find(reg, "example"), c);
  /* Twice is a name clash, refused; the first stays. */
  assert_int_equal(cp_connector_registry_load(reg, path, NULL, err, sizeof err), CP_EEXISTS);
  assert_ptr_equal(cp_connector_registry_find(reg, "example"), c);

  testserver_start(&ts);
  testserver_script(&ts, "[{\"status\": 202}]");
  mock_host_init(&mh, c);
  const char *kv[] = {"url", testserver_url(&ts, "/inbox", url, sizeof url), NULL};
  assert_int_equal(mock_host_connect(&mh, kv), 0);
  struct cp_post post = mock_post("0123456789abcdef", "from a module");
  struct cp_result res = mock_host_publish(&mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "example");
  json_t *reqs = testserver_requests(&ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "body")), "from a module");
  assert_string_equal(testserver_header(r, "Idempotency-Key"), "calpost-0123456789abcdef");
  json_decref(reqs);
  mock_host_close(&mh);
  testserver_stop(&ts);
  cp_connector_registry_free(reg);
}

static void wrong_abi_is_refused_loudly(void **state) {
  struct cp_connector_registry *reg;
  const struct cp_connector *c = NULL;
  char path[PATH_MAX], err[512];

  module_path("libcalpost_example_connector_abi999.so", path, sizeof path);
  assert_int_equal(cp_connector_registry_new(&reg), 0);
  assert_int_equal(cp_connector_registry_load(reg, path, &c, err, sizeof err), CP_EABI);
  assert_null(c);
  assert_non_null(strstr(err, path));
  assert_non_null(strstr(err, "connector ABI version 999"));
  assert_non_null(strstr(err, "loads only version 2"));
  assert_non_null(strstr(err, "rebuild"));
  assert_null(cp_connector_registry_find(reg, "example"));

  assert_int_equal(cp_connector_registry_load(reg, "/nonexistent/x.so", &c, err, sizeof err),
                   CP_ENOTFOUND);
  assert_non_null(strstr(err, "/nonexistent/x.so: cannot load connector module"));
  cp_connector_registry_free(reg);
}

static void default_classification(void **state) {
  static const struct {
    long status;
    int err;
    bool sent;
    enum cp_outcome want;
  } rows[] = {
      {200, 0, true, CP_OUTCOME_OK},
      {201, 0, true, CP_OUTCOME_OK},
      {204, 0, true, CP_OUTCOME_OK},
      {200, CP_ETOOBIG, true, CP_OUTCOME_OK},
      {302, 0, true, CP_OUTCOME_PERMANENT},
      {400, 0, true, CP_OUTCOME_PERMANENT},
      {404, 0, true, CP_OUTCOME_PERMANENT},
      {422, 0, true, CP_OUTCOME_PERMANENT},
      {408, 0, true, CP_OUTCOME_RETRY},
      {500, 0, true, CP_OUTCOME_RETRY},
      {503, 0, true, CP_OUTCOME_RETRY},
      {429, 0, true, CP_OUTCOME_RATE_LIMITED},
      {401, 0, true, CP_OUTCOME_AUTH},
      {403, 0, true, CP_OUTCOME_AUTH},
      {0, -ECONNREFUSED, false, CP_OUTCOME_RETRY},
      {0, -ETIMEDOUT, false, CP_OUTCOME_RETRY},
      {0, -ETIMEDOUT, true, CP_OUTCOME_UNKNOWN},
      {0, -ECONNRESET, true, CP_OUTCOME_UNKNOWN},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    struct cp_http_resp r = {.status = rows[i].status,
                             .err = rows[i].err,
                             .sent = rows[i].sent,
                             .errmsg = "",
                             .body = ""};
    assert_string_equal(cp_outcome_name(cp_connector_default_outcome(&r)),
                        cp_outcome_name(rows[i].want));
  }
}

/* A platform that says "expired token" with a 400 overrides the default. */
static enum cp_outcome expired_is_auth(void *inst, const struct cp_http_resp *r,
                                       enum cp_outcome dflt) {
  return r->status == 400 && strstr(r->body, "ExpiredToken") ? CP_OUTCOME_AUTH : dflt;
}

static void classify_override_and_messages(void **state) {
  static const struct cp_connector c = {
      .abi_version = CP_CONNECTOR_ABI_VERSION, .name = "expiring", .classify = expired_is_auth};
  static const char body[] = "{\"error\":\"ExpiredToken\",\"message\":\"Token has expired\"}";
  struct cp_http_header h[] = {{"retry-after", "5"}};
  struct cp_http_resp r = {.status = 400,
                           .errmsg = "",
                           .sent = true,
                           .body = body,
                           .body_len = strlen(body),
                           .headers = h,
                           .n_headers = 1};
  struct cp_result res;
  cp_connector_http_result(&c, NULL, &r, 1000000, &res);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_string_equal(res.message, "HTTP 400: Token has expired");
  assert_int_equal(res.retry_at_ms, 1005000);
  r.body = "{\"error\":\"InvalidRequest\"}";
  r.body_len = strlen(r.body);
  cp_connector_http_result(&c, NULL, &r, 1000000, &res);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_string_equal(res.message, "HTTP 400: InvalidRequest");

  /* A long message is cut at a character boundary, never inside one. */
  char big[1024];
  memset(big, 0, sizeof big);
  for (size_t i = 0; i + 2 < 600; i += 2)
    memcpy(big + i, "\xc3\xa9", 2);
  r.status = 500;
  r.body = big;
  r.body_len = strlen(big);
  cp_connector_http_result(NULL, NULL, &r, 0, &res);
  assert_true(strlen(res.message) < CP_RESULT_MESSAGE_MAX);
  size_t len = strlen(res.message);
  assert_true(((unsigned char)res.message[len - 1] & 0xC0) == 0x80); /* ends on a whole é */
  assert_int_equal((len - strlen("HTTP 500: ")) % 2, 0);
}

static void retry_after_values(void **state) {
  const int64_t now = 1700000000000LL; /* Tue, 14 Nov 2023 22:13:20 GMT */
  assert_int_equal(cp_connector_retry_after("120", now), now + 120000);
  assert_int_equal(cp_connector_retry_after(" 0 ", now), now);
  assert_int_equal(cp_connector_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", now), now + 60000);
  assert_int_equal(cp_connector_retry_after("Tue, 14 Nov 2023 20:00:00 GMT", now), now); /* past */
  assert_int_equal(cp_connector_retry_after("soon", now), 0);
  assert_int_equal(cp_connector_retry_after("12abc", now), 0);
  assert_int_equal(cp_connector_retry_after("99999999999", now), now + 366LL * 24 * 3600 * 1000);
}

static void secrets_from_file_and_env(void **state) {
  char dir[] = "/tmp/cp-secret-XXXXXX", ini[PATH_MAX], key[PATH_MAX], err[512];
  char *s = NULL;
  struct mock_conf mc;
  assert_non_null(mkdtemp(dir));
  snprintf(ini, sizeof ini, "%s/calpost.ini", dir);
  snprintf(key, sizeof key, "%s/token", dir);
  FILE *f = fopen(key, "w");
  fputs("tok-123\r\nsecond line ignored\n", f);
  fclose(f);

  const char *rel[] = {"token_file", "token", NULL}; /* relative to the config file */
  mock_conf_init(&mc, "x", rel);
  mc.conf.file = ini;
  /* A secret file that others can read is refused, as ssh refuses such keys. */
  assert_int_equal(chmod(key, 0644), 0);
  assert_int_equal(cp_connector_secret_read(&mc.conf, "token", &s, err, sizeof err), CP_ECONFIG);
  assert_non_null(strstr(err, "can be read by other users (mode 0644)"));
  assert_null(strstr(err, "tok-123"));
  assert_int_equal(chmod(key, 0640), 0);
  assert_int_equal(cp_connector_secret_read(&mc.conf, "token", &s, err, sizeof err), CP_ECONFIG);
  assert_int_equal(chmod(key, 0600), 0);
  assert_int_equal(cp_connector_secret_read(&mc.conf, "token", &s, err, sizeof err), 0);
  assert_string_equal(s, "tok-123");
  cp_connector_secret_free(s);

  setenv("CP_TEST_TOKEN", "from-env", 1);
  const char *env[] = {"token_env", "CP_TEST_TOKEN", NULL};
  mock_conf_init(&mc, "x", env);
  assert_int_equal(cp_connector_secret_read(&mc.conf, "token", &s, err, sizeof err), 0);
  assert_string_equal(s, "from-env");
  cp_connector_secret_free(s);
  unsetenv("CP_TEST_TOKEN");

  const char *none[] = {"url", "x", NULL};
  mock_conf_init(&mc, "x", none);
  assert_int_equal(cp_connector_secret_read(&mc.conf, "token", &s, err, sizeof err), CP_ENOTFOUND);

  f = fopen(key, "w");
  fputs("\n", f);
  fclose(f);
  mock_conf_init(&mc, "x", rel);
  mc.conf.file = ini;
  assert_int_equal(cp_connector_secret_read(&mc.conf, "token", &s, err, sizeof err), CP_ECONFIG);
  assert_non_null(strstr(err, "calpost.ini:11: token_file:"));
  assert_non_null(strstr(err, "is empty"));
  unlink(key);
  rmdir(dir);
}

static void idempotency_key_from_post_id(void **state) {
  struct cp_post p = mock_post("0123456789abcdef", "x");
  char buf[32], tiny[8];
  assert_int_equal(cp_connector_idempotency_key(&p, buf, sizeof buf), 0);
  assert_string_equal(buf, "calpost-0123456789abcdef");
  assert_int_equal(cp_connector_idempotency_key(&p, tiny, sizeof tiny), CP_ELIMIT);
  assert_string_equal(tiny, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(builtins_are_registered),
      cmocka_unit_test(external_module_loads_and_publishes),
      cmocka_unit_test(wrong_abi_is_refused_loudly),
      cmocka_unit_test(default_classification),
      cmocka_unit_test(classify_override_and_messages),
      cmocka_unit_test(retry_after_values),
      cmocka_unit_test(secrets_from_file_and_env),
      cmocka_unit_test(idempotency_key_from_post_id),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
