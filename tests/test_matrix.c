// ctest-labels: connector
// ctest-connector: matrix
/* The Matrix connector against tests/support/testserver.py standing in for a homeserver: the
 * exact requests of the client-server API (send with a stable txnId, HTML formatted_body, alias
 * lookup, media upload then m.image, whoami), progress resume without a second upload, and the
 * outcome of each documented error. */
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
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_MATRIX

#define TOKEN "syt_c2VjcmV0_token_0123"
#define ROOM_ID "!AbCdEf:example.org"
#define ROOM_ESC "%21AbCdEf%3Aexample.org"
#define POST_ID "0123456789abcdef"
#define TXN "calpost-" POST_ID
#define SEND_PATH "/_matrix/client/v3/rooms/" ROOM_ESC "/send/m.room.message/"

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char tokenfile[96];
  char hs[128];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "", f->hs, sizeof f->hs);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-matrix-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->tokenfile, sizeof f->tokenfile, "%s/matrix.token", f->dir);
  FILE *fp = fopen(f->tokenfile, "w");
  fputs(TOKEN "\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->tokenfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_matrix);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  unlink(f->tokenfile);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void connect_room(struct fixture *f, const char *room) {
  char hs[160];
  snprintf(hs, sizeof hs, "%s/", f->hs); /* a trailing slash is dropped */
  const char *kv[] = {"homeserver", hs, "room", room, "token_file", f->tokenfile, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static json_t *req_json(json_t *r) {
  json_t *j = json_loads(json_string_value(json_object_get(r, "body")), 0, NULL);
  assert_non_null(j);
  return j;
}

static const char *jstr(json_t *o, const char *key) {
  const char *v = json_string_value(json_object_get(o, key));
  assert_non_null(v);
  return v;
}

static void assert_send(json_t *r, const char *txn) {
  char path[256];
  snprintf(path, sizeof path, "%s%s", SEND_PATH, txn);
  assert_string_equal(jstr(r, "method"), "PUT");
  assert_string_equal(jstr(r, "path"), path);
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
}

/* The decoded bytes of a recorded request body. */
static size_t req_bytes(json_t *r, unsigned char *out, size_t size) {
  const char *b64 = jstr(r, "body_b64");
  size_t n = strlen(b64);
  assert_true(n / 4 * 3 <= size);
  int len = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
  assert_true(len >= 0);
  while (n && b64[n - 1] == '=') {
    len--;
    n--;
  }
  return (size_t)len;
}

static size_t file_bytes(const char *path, unsigned char *out, size_t size) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  size_t n = fread(out, 1, size, fp);
  fclose(fp);
  return n;
}

static void text_is_sent_with_html_and_a_stable_txn(void **state) {
  struct fixture *f = *state;
  connect_room(f, ROOM_ID);
  struct cp_post post =
      mock_post(POST_ID, "Launch <today> & \"more\"\nSee https://example.org/a?b=1&c=2.");
  post.n_media = 0;

  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"event_id\": \"$ev1:example.org\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "$ev1:example.org");
  assert_string_equal(res.remote_url,
                      "https://matrix.to/#/" ROOM_ESC "/%24ev1%3Aexample.org?via=example.org");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_send(r, TXN);
  json_t *body = req_json(r);
  assert_int_equal(json_object_size(body), 4);
  assert_string_equal(jstr(body, "msgtype"), "m.text");
  assert_string_equal(jstr(body, "body"), post.text);
  assert_string_equal(jstr(body, "format"), "org.matrix.custom.html");
  assert_string_equal(jstr(body, "formatted_body"),
                      "Launch &lt;today&gt; &amp; &quot;more&quot;<br>See "
                      "<a href=\"https://example.org/a?b=1&amp;c=2\">"
                      "https://example.org/a?b=1&amp;c=2</a>.");
  json_decref(body);
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "t=$ev1:example.org");

  /* A second attempt of the same post (no progress kept: say it crashed before saving) sends
   * the same txnId, which the server answers with the first event. */
  f->mh.progress[0] = '\0';
  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"event_id\": \"$ev1:example.org\"}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_send(json_array_get(reqs, 0), TXN);
  json_decref(reqs);

  /* With the progress saved, nothing is sent again. */
  testserver_script(&f->ts, "[]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "$ev1:example.org");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
  assert_null(strstr(f->mh.log, TOKEN));
}

static void notice_msgtype(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"homeserver",       f->hs,     "room",   ROOM_ID, "token_env",
                      "CP_TEST_MX_TOKEN", "msgtype", "notice", NULL};
  setenv("CP_TEST_MX_TOKEN", "env-token", 1);
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = mock_post(POST_ID, "plain");
  post.n_media = 0;
  testserver_script(&f->ts, "[{\"json\": {\"event_id\": \"$n\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer env-token");
  json_t *body = req_json(r);
  assert_string_equal(jstr(body, "msgtype"), "m.notice");
  assert_string_equal(jstr(body, "formatted_body"), "plain");
  json_decref(body);
  json_decref(reqs);
  unsetenv("CP_TEST_MX_TOKEN");
}

static void alias_is_resolved_once(void **state) {
  struct fixture *f = *state;
  connect_room(f, "#news:example.org");
  struct cp_post post = mock_post(POST_ID, "hello");
  post.n_media = 0;

  testserver_script(&f->ts,
                    "[{\"path\": \"/_matrix/client/v3/directory/room/%23news%3Aexample.org\","
                    "  \"json\": {\"room_id\": \"" ROOM_ID "\", \"servers\": [\"example.org\"]}},"
                    " {\"json\": {\"event_id\": \"$e\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  /* The link names the alias people know. */
  assert_string_equal(res.remote_url, "https://matrix.to/#/%23news%3Aexample.org/%24e");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(jstr(r, "method"), "GET");
  assert_string_equal(jstr(r, "path"), "/_matrix/client/v3/directory/room/%23news%3Aexample.org");
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  assert_send(json_array_get(reqs, 1), TXN);
  json_decref(reqs);

  struct cp_post other = mock_post("00000000000000aa", "again");
  other.n_media = 0;
  f->mh.progress[0] = '\0'; /* progress belongs to one post */
  testserver_script(&f->ts, "[{\"json\": {\"event_id\": \"$f\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &other).outcome, CP_OUTCOME_OK);
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1); /* no second lookup */
  assert_send(json_array_get(reqs, 0), "calpost-00000000000000aa");
  json_decref(reqs);
}

static void unknown_alias_is_permanent(void **state) {
  struct fixture *f = *state;
  connect_room(f, "#gone:example.org");
  struct cp_post post = mock_post(POST_ID, "hello");
  post.n_media = 0;
  testserver_script(&f->ts, "[{\"status\": 404, \"json\": {\"errcode\": \"M_NOT_FOUND\","
                            " \"error\": \"Room alias #gone:example.org not found\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "PERMANENT");
  assert_int_equal(res.http_status, 404);
  assert_non_null(strstr(res.message, "resolving the alias"));
  assert_non_null(strstr(res.message, "M_NOT_FOUND"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1); /* nothing was sent */
  json_decref(reqs);
}

static void image_is_uploaded_once_and_resumed(void **state) {
  struct fixture *f = *state;
  connect_room(f, ROOM_ID);
  static const struct cp_media media[1] = {{NULL, "A single \xc3\xa9 pixel"}};
  struct cp_media m0 = {(char *)mock_media_path("pixel.png"), media[0].alt};
  struct cp_post post = mock_post(POST_ID, "With a picture");
  post.media = &m0;
  post.n_media = 1;

  /* Text, upload, then the image event fails with a 502. */
  testserver_script(&f->ts,
                    "[{\"path\": \"" SEND_PATH TXN "\", \"json\": {\"event_id\": \"$text\"}},"
                    " {\"path\": \"/_matrix/media/v3/upload\","
                    "  \"json\": {\"content_uri\": \"mxc://example.org/AbC123\"}},"
                    " {\"path\": \"" SEND_PATH TXN
                    "-img1\", \"status\": 502, \"body\": \"Bad Gateway\"}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_int_equal(res.http_status, 502);
  assert_non_null(strstr(res.message, "sending media 1"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 3);
  assert_send(json_array_get(reqs, 0), TXN);
  json_t *up = json_array_get(reqs, 1);
  assert_string_equal(jstr(up, "method"), "POST");
  assert_string_equal(jstr(up, "path"), "/_matrix/media/v3/upload?filename=pixel.png");
  assert_string_equal(testserver_header(up, "Content-Type"), "image/png");
  assert_string_equal(testserver_header(up, "Authorization"), "Bearer " TOKEN);
  unsigned char got[256], want[256];
  size_t gl = req_bytes(up, got, sizeof got);
  size_t wl = file_bytes(m0.src, want, sizeof want);
  assert_int_equal(gl, wl);
  assert_memory_equal(got, want, wl);
  assert_send(json_array_get(reqs, 2), TXN "-img1");
  json_t *img = req_json(json_array_get(reqs, 2));
  json_decref(reqs);
  char prog[256];
  snprintf(prog, sizeof prog, "t=$text;u1=mxc://example.org/AbC123 image/png %zu", wl);
  assert_string_equal(f->mh.progress, prog);

  /* The retry sends only the image event, the same one, without uploading again. */
  testserver_script(&f->ts, "[{\"path\": \"" SEND_PATH TXN "-img1\","
                            "  \"json\": {\"event_id\": \"$img\"}}]");
  f->mh.attempt = 2;
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "$text");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_send(json_array_get(reqs, 0), TXN "-img1");
  json_t *img2 = req_json(json_array_get(reqs, 0));
  assert_true(json_equal(img, img2)); /* the same event as the first time */
  json_decref(reqs);
  assert_string_equal(jstr(img2, "msgtype"), "m.image");
  assert_string_equal(jstr(img2, "body"), "A single \xc3\xa9 pixel");
  assert_string_equal(jstr(img2, "url"), "mxc://example.org/AbC123");
  json_t *info = json_object_get(img2, "info");
  assert_string_equal(jstr(info, "mimetype"), "image/png");
  assert_int_equal(json_integer_value(json_object_get(info, "size")), (json_int_t)wl);
  json_decref(img);
  json_decref(img2);
  snprintf(prog, sizeof prog, "t=$text;u1=mxc://example.org/AbC123 image/png %zu;i1=$img", wl);
  assert_string_equal(f->mh.progress, prog);
}

static void media_only_post(void **state) {
  struct fixture *f = *state;
  connect_room(f, ROOM_ID);
  char gif[512], png[512];
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  struct cp_media m[2] = {{gif, NULL}, {png, ""}};
  struct cp_post post = mock_post(POST_ID, "");
  post.media = m;
  post.n_media = 2;
  testserver_script(&f->ts, "[{\"path\": \"/_matrix/media/v3/upload\","
                            "  \"json\": {\"content_uri\": \"mxc://example.org/g\"}},"
                            " {\"json\": {\"event_id\": \"$g\"}},"
                            " {\"path\": \"/_matrix/media/v3/upload\","
                            "  \"json\": {\"content_uri\": \"mxc://example.org/p\"}},"
                            " {\"json\": {\"event_id\": \"$p\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "$g");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 4);
  assert_string_equal(jstr(json_array_get(reqs, 0), "path"),
                      "/_matrix/media/v3/upload?filename=pixel.gif");
  assert_string_equal(testserver_header(json_array_get(reqs, 0), "Content-Type"), "image/gif");
  assert_send(json_array_get(reqs, 1), TXN "-img1");
  assert_send(json_array_get(reqs, 3), TXN "-img2");
  json_t *g = req_json(json_array_get(reqs, 1));
  assert_string_equal(jstr(g, "body"), "pixel.gif"); /* no alt text: the file name */
  assert_string_equal(jstr(json_object_get(g, "info"), "mimetype"), "image/gif");
  json_decref(g);
  json_decref(reqs);
}

static void media_failures(void **state) {
  struct fixture *f = *state;
  connect_room(f, ROOM_ID);
  struct cp_media m = {(char *)mock_media_path("pixel.png"), NULL};
  struct cp_post post = mock_post(POST_ID, "");
  post.media = &m;
  post.n_media = 1;

  testserver_script(&f->ts, "[{\"status\": 413, \"json\": {\"errcode\": \"M_TOO_LARGE\","
                            " \"error\": \"Cannot upload files larger than 1 B\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "PERMANENT");
  assert_non_null(strstr(res.message, "uploading media 1"));
  assert_non_null(strstr(res.message, "M_TOO_LARGE"));

  /* An upload cut off: the media is not visible anywhere, so uploading again is safe. */
  testserver_script(&f->ts, "[{\"reset\": true}]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_string_equal(f->mh.progress, "");

  /* HTML named .png: the host refuses it before anything is sent. */
  m.src = (char *)mock_media_path("not-an-image.png");
  testserver_script(&f->ts, "[]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "PERMANENT");
  assert_non_null(strstr(res.message, "media 1"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message;
};

static const struct answer answers[] = {
    {"[{\"status\": 429, \"json\": {\"errcode\": \"M_LIMIT_EXCEEDED\", \"error\": \"Too many "
     "requests\", \"retry_after_ms\": 2500}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 2500, "M_LIMIT_EXCEEDED: Too many requests"},
    /* Newer servers also send Retry-After, which wins. */
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"7\"}, \"json\": {\"errcode\": "
     "\"M_LIMIT_EXCEEDED\", \"retry_after_ms\": 6500}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 7000, "M_LIMIT_EXCEEDED"},
    {"[{\"status\": 401, \"json\": {\"errcode\": \"M_UNKNOWN_TOKEN\", \"error\": \"Invalid access "
     "token passed.\", \"soft_logout\": true}}]",
     CP_OUTCOME_AUTH, 401, -1,
     "M_UNKNOWN_TOKEN: Invalid access token passed. (the session was soft"},
    {"[{\"status\": 401, \"json\": {\"errcode\": \"M_MISSING_TOKEN\", \"error\": \"Missing access "
     "token\"}}]",
     CP_OUTCOME_AUTH, 401, -1, "M_MISSING_TOKEN"},
    {"[{\"status\": 403, \"json\": {\"errcode\": \"M_FORBIDDEN\", \"error\": \"User "
     "@bot:example.org not in room " ROOM_ID "\"}}]",
     CP_OUTCOME_PERMANENT, 403, -1, "HTTP 403 M_FORBIDDEN: User @bot:example.org not in room"},
    {"[{\"status\": 413, \"json\": {\"errcode\": \"M_TOO_LARGE\", \"error\": \"event too "
     "large\"}}]",
     CP_OUTCOME_PERMANENT, 413, -1, "M_TOO_LARGE"},
    {"[{\"status\": 400, \"json\": {\"errcode\": \"M_BAD_JSON\", \"error\": \"bad\"}}]",
     CP_OUTCOME_PERMANENT, 400, -1, "M_BAD_JSON"},
    {"[{\"status\": 500, \"json\": {\"errcode\": \"M_UNKNOWN\", \"error\": \"Internal server "
     "error\"}}]",
     CP_OUTCOME_RETRY, 500, -1, "HTTP 500 M_UNKNOWN: Internal server error"},
    {"[{\"status\": 502, \"body\": \"<html><body>Bad gateway</body></html>\"}]", CP_OUTCOME_RETRY,
     502, -1, "sending the text in " ROOM_ID ": HTTP 502"},
    /* Sent, no answer: the scheduler may resend, since the txnId makes that harmless. */
    /* libcurl resends an idempotent request once when a kept-alive connection dies: reset
     * both. */
    {"[{\"reset\": true, \"repeat\": true}]", CP_OUTCOME_UNKNOWN, 0, -1, "sending the text: "},
    {"[{\"status\": 200, \"body\": \"not json\"}]", CP_OUTCOME_RETRY, 0, -1,
     "HTTP 200 without an event_id"},
};

static void errors_give_their_outcome(void **state) {
  struct fixture *f = *state;
  connect_room(f, ROOM_ID);
  struct cp_post post = mock_post(POST_ID, "hello");
  post.n_media = 0;

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
    assert_string_equal(res.remote_id, "");
    assert_string_equal(f->mh.progress, "");
    json_t *reqs = testserver_requests(&f->ts);
    assert_true(json_array_size(reqs) >= 1 && json_array_size(reqs) <= 2);
    for (size_t k = 0; k < json_array_size(reqs); k++)
      assert_send(json_array_get(reqs, k), TXN); /* a resend carries the same txnId */
    json_decref(reqs);
  }
  assert_null(strstr(f->mh.log, TOKEN));
}

static void login_check_asks_whoami(void **state) {
  struct fixture *f = *state;
  connect_room(f, ROOM_ID);
  testserver_script(&f->ts, "[{\"json\": {\"user_id\": \"@bot:example.org\"}},"
                            " {\"status\": 401, \"json\": {\"errcode\": \"M_UNKNOWN_TOKEN\","
                            "  \"error\": \"Invalid access token passed.\"}}]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  res = mock_host_login_check(&f->mh);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_non_null(strstr(res.message, "M_UNKNOWN_TOKEN"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  for (size_t i = 0; i < 2; i++) {
    json_t *r = json_array_get(reqs, i);
    assert_string_equal(jstr(r, "method"), "GET");
    assert_string_equal(jstr(r, "path"), "/_matrix/client/v3/account/whoami");
    assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  }
  json_decref(reqs);
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_hs[] = {"room", ROOM_ID, "token_file", f->tokenfile, NULL};
  const char *plain[] = {
      "homeserver", "http://matrix.example.org", "room", ROOM_ID, "token_file", f->tokenfile, NULL};
  const char *no_room[] = {"homeserver", f->hs, "token_file", f->tokenfile, NULL};
  const char *bad_room[] = {"homeserver", f->hs,        "room", "general",
                            "token_file", f->tokenfile, NULL};
  const char *no_token[] = {"homeserver", f->hs, "room", ROOM_ID, NULL};
  const char *bad_type[] = {"homeserver", f->hs,     "room",  ROOM_ID, "token_file",
                            f->tokenfile, "msgtype", "emote", NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_hs), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'homeserver"));
  assert_int_equal(mock_host_connect(&f->mh, plain), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] homeserver: "));
  assert_int_equal(mock_host_connect(&f->mh, no_room), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "needs 'room = "));
  assert_int_equal(mock_host_connect(&f->mh, bad_room), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:12: [channel test] room: 'general'"));
  assert_int_equal(mock_host_connect(&f->mh, no_token), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "token_file"));
  assert_int_equal(mock_host_connect(&f->mh, bad_type), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:14: [channel test] msgtype: 'emote'"));
  assert_null(f->mh.instance);
}

static int n_errors;
static char last_diag[512];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  snprintf(last_diag, sizeof last_diag, "%s", msg);
}

static void validate_checks_without_io(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"homeserver", f->hs, "room", ROOM_ID, "token_file", f->tokenfile, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  const struct cp_connector *c = &cp_connector_matrix;
  struct cp_post post = mock_post(POST_ID, "fine");
  post.n_media = 0;

  n_errors = 0;
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), 0);
  post.text = "";
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "no text and no media"));

  /* 20000 '&' are 20000 bytes of body and 100000 of HTML: over the event size. */
  char *big = malloc(20001);
  memset(big, '&', 20000);
  big[20000] = '\0';
  post.text = big;
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "65536"));
  memset(big, 'a', 20000);
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), 0);
  free(big);

  struct cp_media m[11];
  for (int i = 0; i < 11; i++)
    m[i] = (struct cp_media){"pic.JPG", NULL};
  post.text = "x";
  post.media = m;
  post.n_media = 11;
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "at most 10"));
  post.n_media = 2;
  m[1].src = "https://example.org/doc.pdf?x=1.png";
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "media 2"));
  m[1].src = "https://example.org/img.webp?size=large";
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), 0);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

static void max_chars_limits_the_text(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"homeserver", f->hs,       "room", ROOM_ID, "token_file",
                      f->tokenfile, "max_chars", "5",    NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = mock_post(POST_ID, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
  post.n_media = 0;
  assert_int_equal(cp_connector_matrix.validate(f->mh.instance, &post, on_diag, NULL), 0);
  post.text = "123456";
  assert_int_equal(cp_connector_matrix.validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "6 characters"));
  assert_non_null(strstr(last_diag, "allows 5"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(text_is_sent_with_html_and_a_stable_txn, setup, teardown),
      cmocka_unit_test_setup_teardown(notice_msgtype, setup, teardown),
      cmocka_unit_test_setup_teardown(alias_is_resolved_once, setup, teardown),
      cmocka_unit_test_setup_teardown(unknown_alias_is_permanent, setup, teardown),
      cmocka_unit_test_setup_teardown(image_is_uploaded_once_and_resumed, setup, teardown),
      cmocka_unit_test_setup_teardown(media_only_post, setup, teardown),
      cmocka_unit_test_setup_teardown(media_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(errors_give_their_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_asks_whoami, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_without_io, setup, teardown),
      cmocka_unit_test_setup_teardown(max_chars_limits_the_text, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the matrix connector is not built (CALPOST_CONNECTOR_MATRIX=OFF): skipped");
  return 0;
}
#endif
