// ctest-labels: connector
// ctest-connector: slack
/* The slack connector against tests/support/testserver.py standing in for an incoming webhook:
 * the exact JSON (mrkdwn escaping, links, unfurl flags, image blocks), Slack's plain-text error
 * codes, 429 with Retry-After, the one-message-per-second pacing, validate, and the webhook URL
 * (the secret) never showing up in a log line or a result. */
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

#include "calpost/err.h"
#include "calpost/text.h"
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_SLACK

#define HOOK_PATH "/services/T0001/B0002/slackSECRETtoken123"
#define TOKEN "slackSECRETtoken123"
#define OK_ANSWER                                                                                  \
  "{\"status\": 200, \"headers\": {\"Content-Type\": \"text/plain\"}, \"body\": \"ok\"}"

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char urlfile[96];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  char url[160];
  testserver_start(&f->ts);
  testserver_url(&f->ts, HOOK_PATH, url, sizeof url);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-slack-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->urlfile, sizeof f->urlfile, "%s/hook.url", f->dir);
  FILE *fp = fopen(f->urlfile, "w");
  fprintf(fp, "%s\n", url);
  fclose(fp);
  assert_int_equal(chmod(f->urlfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_slack);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  assert_null(strstr(f->mh.log, TOKEN)); /* the secret never reached the log */
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  unlink(f->urlfile);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void connect_kv(struct fixture *f, const char *k1, const char *v1) {
  const char *kv[] = {"url_file", f->urlfile, k1, v1, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static struct cp_post text_post(const char *id, const char *text) {
  struct cp_post p = mock_post(id, text);
  p.n_media = 0;
  return p;
}

/* The JSON body of the only request the server got. */
static json_t *only_body(struct fixture *f) {
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
  assert_string_equal(json_string_value(json_object_get(r, "path")), HOOK_PATH);
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json; charset=utf-8");
  json_t *b = json_loads(json_string_value(json_object_get(r, "body")), 0, NULL);
  assert_non_null(b);
  json_decref(reqs);
  return b;
}

static void escapes_mrkdwn_and_keeps_links(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL);
  struct cp_post post = text_post(
      "0123456789abcdef",
      "Tom & Jerry <b>bold?</b> 3 > 2, *stars* stay. See https://example.org/?a=1&b=2. <!channel>");

  testserver_script(&f->ts, "[" OK_ANSWER "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "");
  assert_string_equal(res.message, "");
  json_t *got = only_body(f);
  json_t *want = json_pack("{s:s}", "text",
                           "Tom &amp; Jerry &lt;b&gt;bold?&lt;/b&gt; 3 &gt; 2, *stars* stay. See "
                           "<https://example.org/?a=1&amp;b=2>. &lt;!channel&gt;");
  if (!json_equal(got, want))
    fail_msg("got %s", json_dumps(got, 0));
  json_decref(got);
  json_decref(want);
}

static void link_preview_sets_unfurl(void **state) {
  struct fixture *f = *state;
  connect_kv(f, "link_preview", "no");
  struct cp_post post = text_post("0123456789abcde1", "https://example.org");
  testserver_script(&f->ts, "[" OK_ANSWER "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *got = only_body(f);
  json_t *want = json_pack("{s:s, s:b, s:b}", "text", "<https://example.org>", "unfurl_links", 0,
                           "unfurl_media", 0);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
}

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring */
};

#define PLAIN(st, code)                                                                            \
  "[{\"status\": " #st ", \"headers\": {\"Content-Type\": \"text/plain\"}, \"body\": \"" code "\"" \
  "}]"

static const struct answer answers[] = {
    {PLAIN(400, "invalid_payload"), CP_OUTCOME_PERMANENT, 400, -1,
     "HTTP 400: invalid_payload (Slack could not read"},
    {PLAIN(400, "user_not_found"), CP_OUTCOME_PERMANENT, 400, -1, "user_not_found"},
    {PLAIN(403, "action_prohibited"), CP_OUTCOME_PERMANENT, 403, -1,
     "action_prohibited (a workspace admin"},
    {PLAIN(403, "posting_to_general_channel_denied"), CP_OUTCOME_PERMANENT, 403, -1,
     "only admins may post in #general"},
    {PLAIN(404, "channel_not_found"), CP_OUTCOME_PERMANENT, 404, -1, "channel_not_found"},
    {PLAIN(410, "channel_is_archived"), CP_OUTCOME_PERMANENT, 410, -1,
     "channel_is_archived (the channel is archived"},
    /* The webhook itself is dead: every post would fail, so the channel pauses (AUTH). */
    {PLAIN(403, "invalid_token"), CP_OUTCOME_AUTH, 403, -1,
     "invalid_token (the webhook was revoked"},
    {PLAIN(404, "no_service"), CP_OUTCOME_AUTH, 404, -1, "no_service (the webhook was disabled"},
    {PLAIN(410, "no_active_hooks"), CP_OUTCOME_AUTH, 410, -1, "no_active_hooks"},
    {PLAIN(404, "team_disabled"), CP_OUTCOME_AUTH, 404, -1, "team_disabled"},
    {PLAIN(400, "no_team"), CP_OUTCOME_AUTH, 400, -1, "no_team"},
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"30\"}, \"body\": \"rate_limited\"}]",
     CP_OUTCOME_RATE_LIMITED, 429, 30000, "HTTP 429: rate_limited"},
    {PLAIN(500, "rollup_error"), CP_OUTCOME_RETRY, 500, -1, "rollup_error (Slack failed"},
    {"[{\"status\": 503, \"body\": \"<html>unavailable</html>\"}]", CP_OUTCOME_RETRY, 503, -1,
     "HTTP 503"},
    /* A 200 that is not "ok" did not come from Slack's webhook. */
    {"[{\"status\": 200, \"json\": {}}]", CP_OUTCOME_UNKNOWN, 200, -1, "not Slack's answer"},
    {"[{\"reset\": true}]", CP_OUTCOME_UNKNOWN, 0, -1, "reset"},
    {"[{\"status\": 418, \"body\": \"teapot\"}]", CP_OUTCOME_PERMANENT, 418, -1,
     "HTTP 418: teapot"},
};

static void each_error_class(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL);
  struct cp_post post = text_post("0123456789abcdef", "hello");

  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    assert_null(strstr(res.message, TOKEN));
    json_t *reqs = testserver_requests(&f->ts);
    assert_int_equal(json_array_size(reqs), 1);
    json_decref(reqs);
  }
}

static void refused_connection(void **state) {
  struct fixture *f = *state;
  char url[160];
  snprintf(url, sizeof url, "http://127.0.0.1:%d" HOOK_PATH, testserver_dead_port());
  setenv("CP_TEST_SLACK_URL", url, 1);
  const char *kv[] = {"url_env", "CP_TEST_SLACK_URL", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("0123456789abcdef", "hello");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_int_equal(res.err, -ECONNREFUSED);
  assert_null(strstr(res.message, TOKEN));
  unsetenv("CP_TEST_SLACK_URL");
}

/* Slack takes one message per second per webhook: a second delivery waits for the first. */
static void paces_one_message_per_second(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL);
  struct cp_post a = text_post("0123456789abcde2", "first");
  struct cp_post b = text_post("0123456789abcde3", "second");
  testserver_script(&f->ts, "[" OK_ANSWER ", " OK_ANSWER "]");
  assert_int_equal(mock_host_publish(&f->mh, &a).outcome, CP_OUTCOME_OK);
  uint64_t t0 = uv_now(&f->mh.loop);
  assert_int_equal(mock_host_publish(&f->mh, &b).outcome, CP_OUTCOME_OK);
  uv_update_time(&f->mh.loop);
  assert_true(uv_now(&f->mh.loop) - t0 >= 990);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  double gap = json_real_value(json_object_get(json_array_get(reqs, 1), "time")) -
               json_real_value(json_object_get(json_array_get(reqs, 0), "time"));
  assert_true(gap >= 0.98);
  json_decref(reqs);
}

static void images_as_blocks(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL);
  const struct cp_media media[] = {{"https://cdn.example.org/poster.png", "The <launch> poster"},
                                   {"https://cdn.example.org/img?id=3", NULL}};
  struct cp_post post = text_post("00000000000000b1", "Launch & more");
  post.media = media;
  post.n_media = 2;
  testserver_script(&f->ts, "[" OK_ANSWER "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *got = only_body(f);
  /* alt_text is plain text, so it is not escaped. */
  json_t *want =
      json_pack("{s:s, s:[{s:s, s:{s:s, s:s}}, {s:s, s:s, s:s}, {s:s, s:s, s:s}]}", "text",
                "Launch &amp; more", "blocks", "type", "section", "text", "type", "mrkdwn", "text",
                "Launch &amp; more", "type", "image", "image_url",
                "https://cdn.example.org/poster.png", "alt_text", "The <launch> poster", "type",
                "image", "image_url", "https://cdn.example.org/img?id=3", "alt_text", "image");
  if (!json_equal(got, want))
    fail_msg("got %s", json_dumps(got, 0));
  json_decref(got);
  json_decref(want);
}

static void long_text_with_image_uses_sections(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL);
  char *text = malloc(5000);
  for (int i = 0; i < 4990; i++)
    text[i] = i % 10 == 9 ? ' ' : (i % 10 == 4 ? '&' : 'w');
  text[4990] = '\0';
  const struct cp_media media[] = {{"https://cdn.example.org/p.gif", "alt"}};
  struct cp_post post = text_post("00000000000000b2", text);
  post.media = media;
  post.n_media = 1;
  testserver_script(&f->ts, "[" OK_ANSWER "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *got = only_body(f);
  json_t *blocks = json_object_get(got, "blocks");
  size_t n = json_array_size(blocks);
  assert_true(n >= 3);
  for (size_t i = 0; i + 1 < n; i++) {
    const char *t = json_string_value(
        json_object_get(json_object_get(json_array_get(blocks, i), "text"), "text"));
    assert_non_null(t);
    assert_true(cp_text_codepoints(t) <= 3000);
  }
  assert_string_equal(json_string_value(json_object_get(json_array_get(blocks, n - 1), "type")),
                      "image");
  json_decref(got);
  free(text);
}

static int n_errors;
static char last_diag[512];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  snprintf(last_diag, sizeof last_diag, "%s", msg);
}

static int validate(struct fixture *f, const struct cp_post *post) {
  n_errors = 0;
  last_diag[0] = '\0';
  return cp_connector_slack.validate(f->mh.instance, post, on_diag, NULL);
}

static void validate_limits(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL);
  char *text = malloc(40010);
  memset(text, 'a', 40000);
  text[40000] = '\0';
  struct cp_post post = text_post("00000000000000a1", text);
  assert_int_equal(validate(f, &post), 0);
  text[39999] = '&'; /* &amp;: 40004 characters as sent */
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "40004 characters (with &, < and > escaped"));
  assert_non_null(strstr(last_diag, "allows 40000"));
  free(text);

  post.text = "x";
  const struct cp_media local[] = {{"img/poster.png", NULL}};
  post.media = local;
  post.n_media = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "cannot upload files"));
  const struct cp_media video[] = {{"https://example.org/clip.mp4", NULL}};
  post.media = video;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "images (.png, .jpg, .gif) only"));
  struct cp_media many[51];
  for (size_t i = 0; i < 51; i++)
    many[i] = (struct cp_media){"https://example.org/p.png", NULL};
  post.media = many;
  post.n_media = 50; /* one section and 50 images: 51 blocks */
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "51 blocks, Slack allows 50"));
  post.n_media = 49;
  assert_int_equal(validate(f, &post), 0);
  post.n_media = 0;
  post.text = "";
  assert_int_equal(validate(f, &post), CP_EINVAL);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

static void no_login_check(void **state) {
  /* An incoming webhook has no call that posts nothing. */
  assert_null(cp_connector_slack.login_check);
  assert_false(cp_connector_slack.caps & CP_CAP_IDEMPOTENT);
}

static void config_errors(void **state) {
  struct fixture *f = *state;
  char other[128];
  snprintf(other, sizeof other, "%s/remote.url", f->dir);
  FILE *fp = fopen(other, "w");
  fputs("http://hooks.example.org/services/T1/B2/" TOKEN "\n", fp);
  fclose(fp);
  chmod(other, 0600);
  const char *none[] = {"link_preview", "yes", NULL};
  const char *plain_http[] = {"url_file", other, NULL};
  const char *bad_preview[] = {"url_file", f->urlfile, "link_preview", "perhaps", NULL};
  const char *bad_max[] = {"url_file", f->urlfile, "max_chars", "50000", NULL};
  const char *unknown[] = {"url_file", f->urlfile, "channel", "#general", NULL};

  assert_int_equal(mock_host_connect(&f->mh, none), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs the incoming webhook"));
  assert_int_equal(mock_host_connect(&f->mh, plain_http), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "is not an https URL"));
  assert_int_equal(mock_host_connect(&f->mh, bad_preview), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:12: [channel test] link_preview: 'perhaps'"));
  assert_int_equal(mock_host_connect(&f->mh, bad_max), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "max_chars: '50000'"));
  assert_null(f->mh.instance);
  assert_int_equal(mock_host_connect(&f->mh, unknown), 0);
  assert_non_null(strstr(f->mh.log, "unknown key 'channel'"));
  unlink(other);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(escapes_mrkdwn_and_keeps_links, setup, teardown),
      cmocka_unit_test_setup_teardown(link_preview_sets_unfurl, setup, teardown),
      cmocka_unit_test_setup_teardown(each_error_class, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection, setup, teardown),
      cmocka_unit_test_setup_teardown(paces_one_message_per_second, setup, teardown),
      cmocka_unit_test_setup_teardown(images_as_blocks, setup, teardown),
      cmocka_unit_test_setup_teardown(long_text_with_image_uses_sections, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_limits, setup, teardown),
      cmocka_unit_test(no_login_check),
      cmocka_unit_test_setup_teardown(config_errors, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the slack connector is not built (CALPOST_CONNECTOR_SLACK=OFF): skipped");
  return 0;
}
#endif
