// ctest-labels: connector
// ctest-connector: bluesky
/* The Bluesky connector against tests/support/testserver.py playing a PDS: the exact XRPC
 * requests (session, handle resolution, blob upload, putRecord with its record), facets in UTF-8
 * byte offsets, the session's refresh, each error class, the stable record key, link cards,
 * images and threads resumed from their progress. */
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

#ifdef CP_BUILTIN_BLUESKY

#define PASSWORD "app-pass-1234-abcd"
#define P_SESSION "/xrpc/com.atproto.server.createSession"
#define P_REFRESH "/xrpc/com.atproto.server.refreshSession"
#define P_GETSESSION "/xrpc/com.atproto.server.getSession"
#define P_RESOLVE "/xrpc/com.atproto.identity.resolveHandle"
#define P_UPLOAD "/xrpc/com.atproto.repo.uploadBlob"
#define P_PUT "/xrpc/com.atproto.repo.putRecord"
#define P_GET "/xrpc/com.atproto.repo.getRecord"
#define DID "did:plc:alice"
#define URI(rkey) "at://did:plc:alice/app.bsky.feed.post/" rkey

/* Scripted answers. */
#define SESSION_OK                                                                                 \
  "{\"path\": \"" P_SESSION "\", \"json\": {\"accessJwt\": \"acc-1\", \"refreshJwt\": "            \
  "\"ref-1\", \"did\": \"" DID "\", \"handle\": \"alice.test\", \"active\": true}}"
#define REFRESH_OK                                                                                 \
  "{\"path\": \"" P_REFRESH "\", \"json\": {\"accessJwt\": \"acc-2\", \"refreshJwt\": "            \
  "\"ref-2\", \"did\": \"" DID "\", \"handle\": \"alice.test\"}}"
#define PUT_OK(rkey, cid)                                                                          \
  "{\"path\": \"" P_PUT                                                                            \
  "\", \"json\": {\"uri\": \"" URI(rkey) "\", \"cid\": \"" cid "\", "                              \
                                         "\"commit\": {\"cid\": \"bafyreicommit\", \"rev\": "      \
                                         "\"3l2abc\"}, \"validationStatus\": "                     \
                                         "\"valid\"}}"
#define EXPIRED(path)                                                                              \
  "{\"path\": \"" path "\", \"status\": 400, \"json\": {\"error\": \"ExpiredToken\", "             \
  "\"message\": \"Token has expired\"}}"

#define DUE_ISO "2024-01-02T09:00:00.000Z" /* mock_post's due time */

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char keyfile[96];
  char service[128];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "", f->service, sizeof f->service);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-bluesky-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->keyfile, sizeof f->keyfile, "%s/bsky.key", f->dir);
  FILE *fp = fopen(f->keyfile, "w");
  fputs(PASSWORD "\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->keyfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_bluesky);
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

static void connect_ok(struct fixture *f) {
  const char *kv[] = {"type",        "bluesky",           "service",  f->service, "handle",
                      "@alice.test", "app_password_file", f->keyfile, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

/* A post with no media (mock_post's media do not exist). */
static struct cp_post text_post(const char *id, const char *text) {
  struct cp_post p = mock_post(id, text);
  p.media = NULL;
  p.n_media = 0;
  return p;
}

static json_t *requests(struct fixture *f) {
  return testserver_requests(&f->ts);
}

static const char *rq_str(json_t *r, const char *key) {
  return json_string_value(json_object_get(r, key));
}

/* The JSON body of a recorded request (new reference). */
static json_t *rq_json(json_t *r) {
  json_error_t e;
  json_t *j = json_loads(rq_str(r, "body"), 0, &e);
  assert_non_null(j);
  return j;
}

static void assert_path(json_t *r, const char *method, const char *path) {
  assert_string_equal(rq_str(r, "method"), method);
  assert_string_equal(rq_str(r, "path"), path);
}

static void assert_json_equal(json_t *got, json_t *want) {
  if (!json_equal(got, want)) {
    char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
    char *w = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
    print_error("got  %s\nwant %s\n", g, w);
    free(g);
    free(w);
    fail();
  }
}

/* True if s is a TID: 13 base32-sortable characters, the first one from the lower half. */
static bool is_tid(const char *s) {
  static const char s32[] = "234567abcdefghijklmnopqrstuvwxyz";
  if (strlen(s) != 13 || !strchr("234567abcdefghij", s[0]))
    return false;
  for (int i = 0; i < 13; i++)
    if (!strchr(s32, s[i]) || !s[i])
      return false;
  return true;
}

/* The microseconds since the epoch that a TID encodes. */
static uint64_t tid_micros(const char *s) {
  static const char s32[] = "234567abcdefghijklmnopqrstuvwxyz";
  uint64_t v = 0;
  for (int i = 0; i < 13; i++)
    v = v << 5 | (uint64_t)(strchr(s32, s[i]) - s32);
  return v >> 10;
}

static json_t *facet(size_t start, size_t end, const char *type, const char *key,
                     const char *value) {
  char t[64];
  snprintf(t, sizeof t, "app.bsky.richtext.facet#%s", type);
  return json_pack("{s:{s:I,s:I},s:[{s:s,s:s}]}", "index", "byteStart", (json_int_t)start,
                   "byteEnd", (json_int_t)end, "features", "$type", t, key, value);
}

/* ---- the happy path -------------------------------------------------------------------------- */

/* Non-ASCII text before every facet: offsets must be UTF-8 bytes, not characters. */
#define FACET_TEXT                                                                                 \
  "Caf\xc3\xa9 \xe2\x98\x95 @alice.test: see https://example.com/a?b=1 #atproto #caf\xc3\xa9! "    \
  "and @nobody.example."

static void publishes_record_with_facets_and_link_card(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  struct cp_post post = text_post("0123456789abcdef", FACET_TEXT);
  testserver_script(&f->ts,
                    "[" SESSION_OK ","
                    "{\"path\": \"" P_RESOLVE "\", \"json\": {\"did\": \"" DID "\"}},"
                    "{\"path\": \"" P_RESOLVE "\", \"status\": 400, \"json\": {\"error\": "
                    "\"InvalidRequest\", \"message\": \"Unable to resolve handle\"}}," PUT_OK(
                        "3kabc2defgh22", "bafyreione") "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, URI("3kabc2defgh22"));
  assert_string_equal(res.remote_url, "https://bsky.app/profile/alice.test/post/3kabc2defgh22");

  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 4);
  /* 1. createSession with the handle (without '@') and the app password. */
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", P_SESSION);
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  assert_null(testserver_header(r, "Authorization"));
  json_t *body = rq_json(r);
  json_t *want = json_pack("{s:s,s:s}", "identifier", "alice.test", "password", PASSWORD);
  assert_json_equal(body, want);
  json_decref(body);
  json_decref(want);
  /* 2, 3. each mention resolved, without the session's token. */
  r = json_array_get(reqs, 1);
  assert_path(r, "GET", P_RESOLVE "?handle=alice.test");
  assert_null(testserver_header(r, "Authorization"));
  assert_path(json_array_get(reqs, 2), "GET", P_RESOLVE "?handle=nobody.example");
  /* 4. putRecord under a TID, create-only, with the due time as createdAt. */
  r = json_array_get(reqs, 3);
  assert_path(r, "POST", P_PUT);
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer acc-1");
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  body = rq_json(r);
  assert_string_equal(json_string_value(json_object_get(body, "repo")), DID);
  assert_string_equal(json_string_value(json_object_get(body, "collection")), "app.bsky.feed.post");
  const char *rkey = json_string_value(json_object_get(body, "rkey"));
  assert_non_null(rkey);
  assert_true(is_tid(rkey));
  assert_true(json_is_null(json_object_get(body, "swapRecord")));
  json_t *rec = json_object_get(body, "record");
  want = json_pack(
      "{s:s,s:s,s:s,s:[o,o,o,o],s:{s:s,s:{s:s,s:s,s:s}}}", "$type", "app.bsky.feed.post", "text",
      FACET_TEXT, "createdAt", DUE_ISO, "facets", facet(10, 21, "mention", "did", DID),
      facet(27, 52, "link", "uri", "https://example.com/a?b=1"),
      facet(53, 61, "tag", "tag", "atproto"), facet(62, 68, "tag", "tag", "caf\xc3\xa9"), "embed",
      "$type", "app.bsky.embed.external", "external", "uri", "https://example.com/a?b=1", "title",
      "Launch", "description", "");
  assert_json_equal(rec, want);
  json_decref(want);
  json_decref(body);
  json_decref(reqs);
  /* Neither the app password nor the tokens reach the log. */
  assert_null(strstr(f->mh.log, PASSWORD));
  assert_null(strstr(f->mh.log, "acc-1"));
  assert_null(strstr(f->mh.log, "ref-1"));
}

static void session_is_kept_and_language_sets_langs(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  struct cp_post post = text_post("00000000000000a1", "first");
  testserver_script(&f->ts, "[" SESSION_OK "," PUT_OK("3kaaaaaaaaa22", "bafyone") "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);

  struct cp_post_option opts[] = {{"language", "en, pt-BR"}};
  struct cp_post second = text_post("00000000000000a2", "second, no link: example.com");
  second.options = opts;
  second.n_options = 1;
  second.title = "";
  testserver_script(&f->ts, "[" PUT_OK("3kbbbbbbbbb22", "bafytwo") "]");
  assert_int_equal(mock_host_publish(&f->mh, &second).outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 1); /* no second createSession */
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", P_PUT);
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer acc-1");
  json_t *body = rq_json(r);
  json_t *want =
      json_pack("{s:s,s:s,s:s,s:[s,s]}", "$type", "app.bsky.feed.post", "text",
                "second, no link: example.com", "createdAt", DUE_ISO, "langs", "en", "pt-BR");
  assert_json_equal(json_object_get(body, "record"), want); /* no facets, no card */
  json_decref(want);
  json_decref(body);
  json_decref(reqs);
}

/* A link card's title is the post's title, or the URL when the event has none. */
static void link_card_title_falls_back_to_the_url(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  struct cp_post post =
      text_post("00000000000000a3", "(https://example.org/x) and https://b.example");
  post.title = "";
  testserver_script(&f->ts, "[" SESSION_OK "," PUT_OK("3kaaaaaaaaa22", "bafyone") "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f);
  json_t *body = rq_json(json_array_get(reqs, 1));
  json_t *rec = json_object_get(body, "record");
  json_t *want =
      json_pack("{s:s,s:{s:s,s:s,s:s}}", "$type", "app.bsky.embed.external", "external", "uri",
                "https://example.org/x", "title", "https://example.org/x", "description", "");
  assert_json_equal(json_object_get(rec, "embed"), want);
  json_decref(want);
  want = json_pack("[o,o]", facet(1, 22, "link", "uri", "https://example.org/x"),
                   facet(28, 45, "link", "uri", "https://b.example"));
  assert_json_equal(json_object_get(rec, "facets"), want);
  json_decref(want);
  json_decref(body);
  json_decref(reqs);
}

/* ---- the session ----------------------------------------------------------------------------- */

static void login(struct fixture *f) {
  struct cp_post post = text_post("00000000000000f0", "warm up");
  testserver_script(&f->ts, "[" SESSION_OK "," PUT_OK("3kaaaaaaaaa22", "bafyone") "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
}

static void expired_token_is_refreshed_and_the_request_repeated(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  struct cp_post post = text_post("00000000000000b1", "after two hours");
  testserver_script(&f->ts,
                    "[" EXPIRED(P_PUT) "," REFRESH_OK "," PUT_OK("3kccccccccc22", "bafythree") "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, URI("3kccccccccc22"));

  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 3);
  json_t *first = json_array_get(reqs, 0), *refresh = json_array_get(reqs, 1),
         *again = json_array_get(reqs, 2);
  assert_path(first, "POST", P_PUT);
  assert_string_equal(testserver_header(first, "Authorization"), "Bearer acc-1");
  assert_path(refresh, "POST", P_REFRESH);
  assert_string_equal(testserver_header(refresh, "Authorization"), "Bearer ref-1");
  assert_string_equal(rq_str(refresh, "body"), "");
  assert_path(again, "POST", P_PUT);
  assert_string_equal(testserver_header(again, "Authorization"), "Bearer acc-2");
  assert_string_equal(rq_str(first, "body"), rq_str(again, "body")); /* the same record */
  json_decref(reqs);

  /* The refreshed session serves the next post. */
  testserver_script(&f->ts, "[" PUT_OK("3kddddddddd22", "bafyfour") "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 1);
  assert_string_equal(testserver_header(json_array_get(reqs, 0), "Authorization"), "Bearer acc-2");
  json_decref(reqs);
  assert_null(strstr(f->mh.log, "acc-2"));
  assert_null(strstr(f->mh.log, "ref-2"));
}

static void failed_refresh_is_auth_and_the_next_attempt_logs_in(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  struct cp_post post = text_post("00000000000000b2", "after 90 days");
  testserver_script(&f->ts, "[" EXPIRED(P_PUT) "," EXPIRED(P_REFRESH) "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_int_equal(res.http_status, 400);
  assert_non_null(strstr(res.message, "com.atproto.server.refreshSession: HTTP 400 ExpiredToken"));
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 2);
  json_decref(reqs);

  /* Resumed: a fresh login, then the post. */
  testserver_script(&f->ts, "[" SESSION_OK "," PUT_OK("3kccccccccc22", "bafythree") "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 2);
  assert_path(json_array_get(reqs, 0), "POST", P_SESSION);
  json_decref(reqs);
}

static void token_rejected_after_refresh_is_auth(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  struct cp_post post = text_post("00000000000000b3", "still expired");
  /* Refreshed once; a second ExpiredToken for the same request is not refreshed again. */
  testserver_script(&f->ts, "[" EXPIRED(P_PUT) "," REFRESH_OK "," EXPIRED(P_PUT) "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_non_null(strstr(res.message, "putRecord: HTTP 400 ExpiredToken: Token has expired"));
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 3);
  json_decref(reqs);

  /* InvalidToken (not expired): one new login, then the request again. */
  testserver_script(&f->ts, "[" SESSION_OK ","
                            "{\"path\": \"" P_PUT "\", \"status\": 400, \"json\": {\"error\": "
                            "\"InvalidToken\", \"message\": \"Token could not be verified\"}},"
                            "{\"path\": \"" P_SESSION "\", \"json\": {\"accessJwt\": \"acc-3\", "
                            "\"refreshJwt\": \"ref-3\", \"did\": \"" DID "\", \"handle\": "
                            "\"alice.test\"}}," PUT_OK("3kaaaaaaaaa22", "bafyone") "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 4);
  assert_path(json_array_get(reqs, 2), "POST", P_SESSION);
  assert_string_equal(testserver_header(json_array_get(reqs, 3), "Authorization"), "Bearer acc-3");
  json_decref(reqs);
}

/* ---- outcomes -------------------------------------------------------------------------------- */

struct answer {
  const char *script; /* answers after a successful login */
  enum cp_outcome outcome;
  long status;
  int64_t retry_at_ms;
  const char *message; /* substring */
  size_t n_requests;   /* after the login; 0: at least one */
};

static const struct answer answers[] = {
    {"[{\"path\": \"" P_PUT "\", \"status\": 429, \"headers\": {\"RateLimit-Limit\": \"5000\", "
     "\"RateLimit-Remaining\": \"0\", \"RateLimit-Reset\": \"1700000600\", \"RateLimit-Policy\": "
     "\"5000;w=3600\"}, \"json\": {\"error\": \"RateLimitExceeded\", \"message\": \"Rate Limit "
     "Exceeded\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 1700000600000LL,
     "putRecord: HTTP 429 RateLimitExceeded: Rate Limit Exceeded", 1},
    {"[{\"path\": \"" P_PUT "\", \"status\": 500, \"json\": {\"error\": \"InternalServerError\", "
     "\"message\": \"Internal Server Error\"}}]",
     CP_OUTCOME_RETRY, 500, 0, "HTTP 500 InternalServerError", 1},
    {"[{\"path\": \"" P_PUT "\", \"status\": 502, \"body\": \"Bad Gateway\"}]", CP_OUTCOME_RETRY,
     502, 0, "putRecord: HTTP 502: Bad Gateway", 1},
    {"[{\"path\": \"" P_PUT "\", \"status\": 400, \"json\": {\"error\": \"InvalidRequest\", "
     "\"message\": \"Invalid app.bsky.feed.post record: Record/text must not be longer than 300 "
     "graphemes\"}}]",
     CP_OUTCOME_PERMANENT, 400, 0, "HTTP 400 InvalidRequest: Invalid app.bsky.feed.post record", 1},
    /* putRecord may ride a kept-alive connection, which libcurl resends on once when it died:
     * the same record key, so harmless; at least one request (n_requests 0). */
    {"[{\"path\": \"" P_PUT "\", \"reset\": true, \"repeat\": true}]", CP_OUTCOME_UNKNOWN, 0, 0,
     "putRecord: ", 0},
    /* 200 with something that is not a putRecord answer: written or not, unknown. */
    {"[{\"path\": \"" P_PUT "\", \"body\": \"<html>oops\"}]", CP_OUTCOME_UNKNOWN, 0, 0,
     "no uri and cid", 1},
    {"[{\"path\": \"" P_PUT "\", \"json\": {\"uri\": 7}}]", CP_OUTCOME_UNKNOWN, 0, 0,
     "no uri and cid", 1},
    /* A failed handle lookup is not a post: try again later, nothing was written. */
    {"[{\"path\": \"" P_RESOLVE "\", \"status\": 503, \"body\": \"busy\"}]", CP_OUTCOME_RETRY, 503,
     0, "resolveHandle: HTTP 503", 1},
};

static void each_answer_gives_its_outcome(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    struct cp_post post = text_post("00000000000000c1", i == 7 ? "hi @bob.example" : "hello");
    testserver_script(&f->ts, a->script);
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    if (a->status)
      assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.retry_at_ms, a->retry_at_ms);
    if (!strstr(res.message, a->message))
      print_error("message: %s\n", res.message);
    assert_non_null(strstr(res.message, a->message));
    json_t *reqs = requests(f);
    if (a->n_requests)
      assert_int_equal(json_array_size(reqs), a->n_requests);
    assert_true(json_array_size(reqs) >= 1);
    json_decref(reqs);
  }
}

static void login_failures(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  struct cp_post post = text_post("00000000000000c2", "hello");

  testserver_script(&f->ts, "[{\"path\": \"" P_SESSION "\", \"status\": 401, \"json\": {\"error\": "
                            "\"AuthenticationRequired\", \"message\": \"Invalid identifier or "
                            "password\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_non_null(strstr(res.message, "createSession: HTTP 401 AuthenticationRequired: Invalid "
                                      "identifier or password"));

  testserver_script(&f->ts, "[{\"path\": \"" P_SESSION "\", \"status\": 429, \"headers\": "
                            "{\"RateLimit-Reset\": \"1700000300\"}, \"json\": {\"error\": "
                            "\"RateLimitExceeded\"}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RATE_LIMITED");
  assert_int_equal(res.retry_at_ms, 1700000300000LL);

  testserver_script(&f->ts, "[{\"path\": \"" P_SESSION "\", \"body\": \"{\\\"accessJwt\\\":\"}]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY"); /* a malformed answer */
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 1); /* no putRecord without a session */
  json_decref(reqs);

  testserver_script(&f->ts, "[{\"path\": \"" P_SESSION "\", \"reset\": true}]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY"); /* a login posts nothing */
  assert_null(strstr(f->mh.log, PASSWORD));
}

static void refused_connection_is_retried(void **state) {
  struct fixture *f = *state;
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", testserver_dead_port());
  const char *kv[] = {"service",           url,        "handle", "alice.test",
                      "app_password_file", f->keyfile, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("00000000000000c3", "hello");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_int_equal(res.err, -ECONNREFUSED);
}

/* ---- idempotency ----------------------------------------------------------------------------- */

static void record_key_is_stable_across_attempts(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  struct cp_post post = text_post("00000000000000d1", "same record every time");
  testserver_script(&f->ts, "[{\"path\": \"" P_PUT "\", \"status\": 500, \"json\": {\"error\": "
                            "\"InternalServerError\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_RETRY);
  json_t *reqs = requests(f);
  json_t *first = rq_json(json_array_get(reqs, 0));
  json_decref(reqs);

  f->mh.wall_ms += 3600 * 1000; /* an hour later: the record must not change */
  f->mh.attempt = 2;
  testserver_script(&f->ts, "[" PUT_OK("3kaaaaaaaaa22", "bafyone") "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  reqs = requests(f);
  json_t *second = rq_json(json_array_get(reqs, 0));
  json_decref(reqs);
  assert_json_equal(second, first);
  const char *rkey = json_string_value(json_object_get(first, "rkey"));
  assert_true(is_tid(rkey));
  /* The TID's time is the due second. */
  assert_int_equal(tid_micros(rkey) / 1000000, post.due);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(first, "record"), "createdAt")), DUE_ISO);

  /* Another post, due the same second, gets another key. */
  struct cp_post other = text_post("00000000000000d2", "same record every time");
  testserver_script(&f->ts, "[" PUT_OK("3kaaaaaaaaa23", "bafytwo") "]");
  assert_int_equal(mock_host_publish(&f->mh, &other).outcome, CP_OUTCOME_OK);
  reqs = requests(f);
  json_t *third = rq_json(json_array_get(reqs, 0));
  json_decref(reqs);
  assert_string_not_equal(json_string_value(json_object_get(third, "rkey")), rkey);
  json_decref(first);
  json_decref(second);
  json_decref(third);
}

#define INVALID_SWAP                                                                               \
  "{\"path\": \"" P_PUT "\", \"status\": 400, \"json\": {\"error\": \"InvalidSwap\", "             \
  "\"message\": \"Record was at bafyold\"}}"

static void taken_record_key_is_checked_with_getRecord(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  struct cp_post post = text_post("00000000000000d3", "edited after the first attempt");
  /* The key holds this post as an earlier attempt wrote it (same createdAt): published. */
  testserver_script(&f->ts,
                    "[" INVALID_SWAP ",{\"path\": \"" P_GET "\", \"json\": {\"uri\": "
                    "\"" URI("3kold") "\", \"cid\": \"bafyold\", \"value\": {\"$type\": "
                                      "\"app.bsky.feed.post\", \"text\": \"the first text\", "
                                      "\"createdAt\": \"" DUE_ISO "\"}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, URI("3kold"));
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 2);
  json_t *put = rq_json(json_array_get(reqs, 0));
  char path[256];
  snprintf(path, sizeof path,
           P_GET "?repo=did%%3aplc%%3aalice&collection=app.bsky.feed.post&rkey=%s",
           json_string_value(json_object_get(put, "rkey")));
  assert_path(json_array_get(reqs, 1), "GET", path);
  json_decref(put);
  json_decref(reqs);

  /* Another post under the key (another createdAt): never overwritten, never reported sent. */
  testserver_script(&f->ts,
                    "[" INVALID_SWAP ",{\"path\": \"" P_GET "\", \"json\": {\"uri\": "
                    "\"" URI("3kold") "\", \"cid\": \"bafyold\", \"value\": {\"text\": "
                                      "\"x\", \"createdAt\": \"2023-05-01T10:00:00.000Z\"}}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "PERMANENT");
  assert_non_null(strstr(res.message, "already holds another post"));
}

/* ---- threads --------------------------------------------------------------------------------- */

static char *paragraph(char c, size_t n) {
  char *p = malloc(n + 1);
  for (size_t i = 0; i < n; i++)
    p[i] = (i % 10 == 9) ? ' ' : c;
  p[n - 1] = '.';
  p[n] = '\0';
  return p;
}

static void thread_is_a_reply_chain_resumed_from_progress(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  char *a = paragraph('a', 250), *b = paragraph('b', 250), *c = paragraph('c', 250);
  char text[1024];
  snprintf(text, sizeof text, "%s\n\n%s\n\n%s", a, b, c);
  struct cp_post post = text_post("00000000000000e1", text);
  post.thread = true;

  /* Attempt 1: the first part goes out, the second fails. */
  testserver_script(&f->ts,
                    "[" SESSION_OK
                    "," PUT_OK("3kpart1", "bafyp1") ","
                                                    "{\"path\": \"" P_PUT
                                                    "\", \"status\": 503, \"json\": {\"error\": "
                                                    "\"UpstreamFailure\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_string_equal(f->mh.progress, "1=" URI("3kpart1") "|bafyp1");
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 3);
  json_t *p1 = rq_json(json_array_get(reqs, 1)), *p2 = rq_json(json_array_get(reqs, 2));
  json_decref(reqs);
  assert_string_equal(json_string_value(json_object_get(json_object_get(p1, "record"), "text")), a);
  assert_null(json_object_get(json_object_get(p1, "record"), "reply"));

  /* Attempt 2: from the second part on, replying to the first; nothing is posted twice. */
  f->mh.attempt = 2;
  testserver_script(&f->ts, "[" PUT_OK("3kpart2", "bafyp2") "," PUT_OK("3kpart3", "bafyp3") "]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, URI("3kpart1")); /* the thread's root */
  assert_string_equal(res.remote_url, "https://bsky.app/profile/alice.test/post/3kpart1");
  assert_string_equal(f->mh.progress, "1=" URI("3kpart1") "|bafyp1;2=" URI(
                                          "3kpart2") "|bafyp2;3=" URI("3kpart3") "|bafyp3");
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 2);
  json_t *q2 = rq_json(json_array_get(reqs, 0)), *q3 = rq_json(json_array_get(reqs, 1));
  json_decref(reqs);
  assert_json_equal(q2, p2); /* the second part, as the first attempt sent it */
  json_t *r2 = json_object_get(q2, "record"), *r3 = json_object_get(q3, "record");
  assert_string_equal(json_string_value(json_object_get(r2, "text")), b);
  assert_string_equal(json_string_value(json_object_get(r3, "text")), c);
  json_t *want = json_pack("{s:{s:s,s:s},s:{s:s,s:s}}", "root", "uri", URI("3kpart1"), "cid",
                           "bafyp1", "parent", "uri", URI("3kpart1"), "cid", "bafyp1");
  assert_json_equal(json_object_get(r2, "reply"), want);
  json_decref(want);
  want = json_pack("{s:{s:s,s:s},s:{s:s,s:s}}", "root", "uri", URI("3kpart1"), "cid", "bafyp1",
                   "parent", "uri", URI("3kpart2"), "cid", "bafyp2");
  assert_json_equal(json_object_get(r3, "reply"), want);
  json_decref(want);
  /* One key per part; createdAt keeps the parts in order. */
  const char *k1 = json_string_value(json_object_get(p1, "rkey"));
  const char *k2 = json_string_value(json_object_get(q2, "rkey"));
  const char *k3 = json_string_value(json_object_get(q3, "rkey"));
  assert_true(is_tid(k1) && is_tid(k2) && is_tid(k3));
  assert_string_not_equal(k1, k2);
  assert_string_not_equal(k2, k3);
  assert_string_not_equal(k1, k3);
  assert_string_equal(json_string_value(json_object_get(r3, "createdAt")),
                      "2024-01-02T09:00:00.002Z");

  /* Attempt 3 (say, after a crash before the outcome was stored): nothing left to post. */
  f->mh.attempt = 3;
  testserver_script(&f->ts, "[]");
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, URI("3kpart1"));
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
  json_decref(p1);
  json_decref(p2);
  json_decref(q2);
  json_decref(q3);
  free(a);
  free(b);
  free(c);
}

/* ---- images ---------------------------------------------------------------------------------- */

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  unsigned char *buf = malloc(1 << 20);
  *len = fread(buf, 1, 1 << 20, fp);
  fclose(fp);
  return buf;
}

static void assert_upload(json_t *r, const char *file, const char *type) {
  size_t len;
  unsigned char *want = read_file(mock_media_path(file), &len);
  const char *b64 = rq_str(r, "body_b64");
  unsigned char *got = malloc(strlen(b64) + 4);
  int n = EVP_DecodeBlock(got, (const unsigned char *)b64, (int)strlen(b64));
  size_t pad = strlen(b64) >= 2 ? (b64[strlen(b64) - 1] == '=') + (b64[strlen(b64) - 2] == '=') : 0;
  assert_path(r, "POST", P_UPLOAD);
  assert_string_equal(testserver_header(r, "Content-Type"), type);
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer acc-1");
  assert_int_equal((size_t)n - pad, len);
  assert_memory_equal(got, want, len);
  free(got);
  free(want);
}

#define BLOB(cid, type, size)                                                                      \
  "{\"$type\": \"blob\", \"ref\": {\"$link\": \"" cid "\"}, \"mimeType\": \"" type "\", "          \
  "\"size\": " #size "}"

static void images_are_uploaded_as_blobs_with_alt_text(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  char png[512], gif[512]; /* mock_media_path reuses its buffer */
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  struct cp_media media[] = {{png, "A red pixel"}, {gif, NULL}};
  struct cp_post post = text_post("00000000000000e2", "Poster: https://example.com/launch");
  post.media = media;
  post.n_media = 2;
  testserver_script(&f->ts,
                    "[" SESSION_OK ",{\"path\": \"" P_UPLOAD "\", \"json\": {\"blob\": " BLOB(
                        "bafkpng", "image/png", 69) "}},{\"path\": \"" P_UPLOAD
                                                    "\", \"json\": {\"blob\": " BLOB(
                                                        "bafkgif", "image/gif",
                                                        43) "}}," PUT_OK("3kimg", "bafyimg") "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 4);
  assert_upload(json_array_get(reqs, 1), "pixel.png", "image/png");
  assert_upload(json_array_get(reqs, 2), "pixel.gif", "image/gif");
  json_t *body = rq_json(json_array_get(reqs, 3));
  json_t *embed = json_object_get(json_object_get(body, "record"), "embed");
  json_error_t e;
  json_t *want = json_loads(
      "{\"$type\": \"app.bsky.embed.images\", \"images\": [{\"alt\": \"A red pixel\", "
      "\"image\": " BLOB("bafkpng", "image/png", 69) "}, {\"alt\": \"\", \"image\": " BLOB(
          "bafkgif", "image/gif", 43) "}]}",
      0, &e);
  assert_non_null(want);
  assert_json_equal(embed, want); /* images instead of the link card */
  json_decref(want);
  json_decref(body);
  json_decref(reqs);
}

static void unusable_images_fail_without_upload(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  /* 1,000,001 bytes of PNG: one more than Bluesky takes. */
  char big[128];
  snprintf(big, sizeof big, "%s/big.png", f->dir);
  size_t len;
  unsigned char *png = read_file(mock_media_path("pixel.png"), &len);
  FILE *fp = fopen(big, "wb");
  fwrite(png, 1, len, fp);
  for (size_t i = len; i < 1000001; i++)
    fputc(0, fp);
  fclose(fp);
  free(png);
  char html[512];
  snprintf(html, sizeof html, "%s", mock_media_path("not-an-image.png"));

  struct {
    const char *src;
    const char *message;
  } cases[] = {
      {big, "1000001 bytes, Bluesky allows 1000000 bytes per image"},
      {html, "not an image"},
      {"/nonexistent/poster.png", "/nonexistent/poster.png"},
      {"http://example.org/poster.png", "cannot be loaded"}, /* https only */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct cp_media m = {(char *)cases[i].src, "alt"};
    struct cp_post post = text_post("00000000000000e3", "with an image");
    post.media = &m;
    post.n_media = 1;
    testserver_script(&f->ts, "[" SESSION_OK "]");
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_string_equal(cp_outcome_name(res.outcome), "PERMANENT");
    if (!strstr(res.message, cases[i].message))
      print_error("message: %s\n", res.message);
    assert_non_null(strstr(res.message, cases[i].message));
    json_t *reqs = requests(f);
    for (size_t k = 0; k < json_array_size(reqs); k++)
      assert_string_not_equal(rq_str(json_array_get(reqs, k), "path"), P_UPLOAD);
    json_decref(reqs);
  }
  unlink(big);
}

/* ---- validate, config, login check ---------------------------------------------------------- */

static int n_errors;
static char diags[2048];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  strncat(diags, msg, sizeof diags - strlen(diags) - 2);
  strcat(diags, "\n");
}

static int validate(struct fixture *f, const struct cp_post *post) {
  n_errors = 0;
  diags[0] = '\0';
  return cp_connector_bluesky.validate(f->mh.instance, post, on_diag, NULL);
}

static char *repeat(const char *unit, size_t n) {
  size_t ul = strlen(unit);
  char *s = malloc(ul * n + 1);
  for (size_t i = 0; i < n; i++)
    memcpy(s + i * ul, unit, ul);
  s[ul * n] = '\0';
  return s;
}

static void validate_checks_limits_without_io(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  char *a300 = repeat("a", 300), *a301 = repeat("a", 301);
  char *smile300 = repeat("\xf0\x9f\x98\x80", 300); /* 1200 bytes */
  /* 200 families (25 bytes each): 200 graphemes, 5000 bytes. */
  char *family = repeat("\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7"
                        "\xe2\x80\x8d\xf0\x9f\x91\xa6",
                        200);
  struct cp_post post = text_post("00000000000000f1", a300);
  assert_int_equal(validate(f, &post), 0);
  post.text = smile300;
  assert_int_equal(validate(f, &post), 0);
  post.text = a301;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "301 graphemes, Bluesky allows 300"));
  assert_non_null(strstr(diags, "thread = yes"));
  post.thread = true; /* a thread takes it */
  assert_int_equal(validate(f, &post), 0);
  post.thread = false;
  post.text = family;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "5000 bytes"));
  assert_non_null(strstr(diags, "3000"));

  post.text = "";
  assert_int_equal(validate(f, &post), CP_EINVAL); /* nothing to post */
  struct cp_media five[5] = {{"a.png", "x"},
                             {"b.jpg", NULL},
                             {"c.jpeg", NULL},
                             {"https://cdn.example/d.webp?w=1", NULL},
                             {"e", NULL}};
  post.media = five;
  post.n_media = 4;
  assert_int_equal(validate(f, &post), 0); /* images alone are a post */
  post.n_media = 5;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "5 images, Bluesky allows 4"));
  struct cp_media video[] = {{"clip.MP4", "x"}, {"https://example.org/doc.pdf?x=1.png", NULL}};
  post.media = video;
  post.n_media = 2;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_int_equal(n_errors, 2);
  assert_non_null(strstr(diags, "clip.MP4: videos are not supported"));
  assert_non_null(strstr(diags, "'.pdf' is not an image"));
  post.n_media = 0;
  post.text = "hello";

  struct cp_post_option bad[] = {{"language", "english"}};
  post.options = bad;
  post.n_options = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "language: 'english' is not a language tag"));
  struct cp_post_option four[] = {{"language", "en de fr it"}};
  post.options = four;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  struct cp_post_option good[] = {{"language", "en, pt-BR"}};
  post.options = good;
  assert_int_equal(validate(f, &post), 0);
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 0); /* no I/O */
  json_decref(reqs);
  assert_non_null(cp_connector_bluesky.post_options);
  assert_string_equal(cp_connector_bluesky.post_options[0], "language");
  free(a300);
  free(a301);
  free(smile300);
  free(family);
}

static void max_chars_overrides_the_limit(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"service",  f->service,  "handle", "alice.test", "app_password_file",
                      f->keyfile, "max_chars", "10",     NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("00000000000000f2", "eleven char");
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "11 graphemes, Bluesky allows 10"));
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_handle[] = {"app_password_file", f->keyfile, NULL};
  const char *no_password[] = {"handle", "alice.test", NULL};
  const char *plain[] = {"service",    "http://pds.example.org", "handle",
                         "alice.test", "app_password_file",      f->keyfile,
                         NULL};
  const char *ftp[] = {"handle",           "alice.test", "service", "ftp://pds.example.org",
                       "app_password_env", "HOME",       NULL};
  const char *bad_max[] = {"handle", "alice.test", "app_password_file", f->keyfile, "max_chars",
                           "lots",   NULL};
  const char *missing[] = {"handle", "alice.test", "app_password_file", "/nonexistent/key", NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_handle), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'handle"));
  assert_int_equal(mock_host_connect(&f->mh, no_password), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "needs 'app_password_file"));
  assert_int_equal(mock_host_connect(&f->mh, plain), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] service: "
                                    "'http://pds.example.org' is plain http"));
  assert_int_equal(mock_host_connect(&f->mh, ftp), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:12: [channel test] service: "
                                    "'ftp://pds.example.org' is not an http(s) URL"));
  assert_int_equal(mock_host_connect(&f->mh, bad_max), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] max_chars: 'lots'"));
  assert_int_equal(mock_host_connect(&f->mh, missing), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "/nonexistent/key"));
  assert_null(f->mh.instance);

  /* The default service is Bluesky's. */
  const char *dflt[] = {"handle", "alice.test", "app_password_file", f->keyfile, "colour",
                        "blue",   NULL};
  assert_int_equal(mock_host_connect(&f->mh, dflt), 0);
  assert_non_null(strstr(f->mh.log, "colour")); /* an unknown key is reported */
}

static void login_check_logs_in_and_checks_the_session(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  testserver_script(&f->ts, "[" SESSION_OK "]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_non_null(strstr(res.message, "alice.test"));
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 1);
  assert_path(json_array_get(reqs, 0), "POST", P_SESSION);
  json_decref(reqs);

  /* With a session: getSession, refreshed when expired. */
  testserver_script(&f->ts, "[" EXPIRED(P_GETSESSION) "," REFRESH_OK ",{\"path\": \"" P_GETSESSION
                                                      "\", \"json\": {\"did\": \"" DID
                                                      "\", \"handle\": \"alice.test\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 3);
  assert_path(json_array_get(reqs, 0), "GET", P_GETSESSION);
  assert_string_equal(testserver_header(json_array_get(reqs, 0), "Authorization"), "Bearer acc-1");
  assert_path(json_array_get(reqs, 1), "POST", P_REFRESH);
  assert_string_equal(testserver_header(json_array_get(reqs, 2), "Authorization"), "Bearer acc-2");
  json_decref(reqs);

  /* Refresh refused: AUTH; then a wrong password: AUTH. */
  testserver_script(&f->ts, "[" EXPIRED(P_GETSESSION) "," EXPIRED(P_REFRESH) "]");
  assert_int_equal(mock_host_login_check(&f->mh).outcome, CP_OUTCOME_AUTH);
  testserver_script(&f->ts, "[{\"path\": \"" P_SESSION "\", \"status\": 401, \"json\": {\"error\": "
                            "\"AuthenticationRequired\", \"message\": \"Invalid identifier or "
                            "password\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_non_null(strstr(res.message, "Invalid identifier or password"));
}

/* ---- engagement ----------------------------------------------------------------------------- */

#define P_POSTS "/xrpc/app.bsky.feed.getPosts"
#define ROOT_URI URI("3kpart1")

/* An AppView's postView for ROOT_URI (abridged), with the given count fields. */
#define POSTS_OK(counts)                                                                           \
  "{\"path\": \"" P_POSTS "\", \"json\": {\"posts\": [{\"uri\": \"" ROOT_URI "\", \"cid\": "       \
  "\"bafyp1\", \"author\": {\"did\": \"" DID "\", \"handle\": \"alice.test\"}, \"record\": "       \
  "{\"$type\": \"app.bsky.feed.post\", \"text\": \"aaa\", \"createdAt\": \"" DUE_ISO               \
  "\"}, " counts                                                                                   \
  ", \"indexedAt\": \"2024-01-02T09:00:01.000Z\", \"viewer\": {}, \"labels\": []}]}}"

/* Runs the connector's engagement read like the host does and the loop until it completes;
 * asserts it was accepted, completed exactly once and not from inside the call. */
static struct cp_result engagement(struct fixture *f, const char *remote_id) {
  struct mock_host *mh = &f->mh;
  struct cp_publish_req req = {
      .host = &mh->host, .attempt = 1, .idempotency_key = "", .host_data = mh, .progress = ""};
  int before = mh->completions;
  mh->in_publish = true;
  int rc = cp_connector_bluesky.engagement(
      mh->instance, remote_id, "https://bsky.app/profile/alice.test/post/3kpart1", &req);
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

/* r is GET app.bsky.feed.getPosts with exactly one parameter, uris = uri, and token. */
static void assert_get_posts(json_t *r, const char *uri, const char *token) {
  const char *path = rq_str(r, "path");
  char auth[64];
  assert_string_equal(rq_str(r, "method"), "GET");
  assert_memory_equal(path, P_POSTS "?uris=", strlen(P_POSTS "?uris="));
  const char *v = path + strlen(P_POSTS "?uris=");
  assert_null(strchr(v, '&'));
  int n = 0;
  char *got = curl_easy_unescape(NULL, v, 0, &n);
  assert_non_null(got);
  assert_string_equal(got, uri);
  curl_free(got);
  snprintf(auth, sizeof auth, "Bearer %s", token);
  assert_string_equal(testserver_header(r, "Authorization"), auth);
  assert_string_equal(rq_str(r, "body"), "");
}

static void engagement_reads_the_counts_through_the_pds(void **state) {
  struct fixture *f = *state;
  assert_true(cp_connector_bluesky.caps & CP_CAP_ENGAGEMENT);
  connect_ok(f);
  /* No session yet: log in, then ask. */
  testserver_script(&f->ts,
                    "[" SESSION_OK "," POSTS_OK("\"replyCount\": 2, \"repostCount\": 5, "
                                                "\"likeCount\": 17, \"quoteCount\": 1") "]");
  struct cp_result res = engagement(f, ROOT_URI);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_true(res.has_engagement);
  assert_int_equal(res.http_status, 200);
  assert_int_equal(res.replies, 2);
  assert_int_equal(res.reposts, 5);
  assert_int_equal(res.likes, 17);
  assert_int_equal(res.quotes, 1);
  assert_int_equal(res.views, -1); /* Bluesky counts no views */
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 2);
  assert_path(json_array_get(reqs, 0), "POST", P_SESSION);
  assert_get_posts(json_array_get(reqs, 1), ROOT_URI, "acc-1");
  json_decref(reqs);
  assert_string_equal(f->mh.progress, ""); /* nothing written, nothing stored */

  /* The session is kept; counts the AppView leaves out (or sends as something else) are -1. */
  testserver_script(&f->ts, "[" POSTS_OK("\"replyCount\": 0, \"likeCount\": null, "
                                         "\"repostCount\": \"3\"") "]");
  res = engagement(f, ROOT_URI);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_true(res.has_engagement);
  assert_int_equal(res.replies, 0);
  assert_int_equal(res.reposts, -1);
  assert_int_equal(res.likes, -1);
  assert_int_equal(res.quotes, -1);
  assert_int_equal(res.views, -1);
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 1);
  assert_get_posts(json_array_get(reqs, 0), ROOT_URI, "acc-1");
  json_decref(reqs);
  assert_null(strstr(f->mh.log, PASSWORD));
  assert_null(strstr(f->mh.log, "acc-1"));
}

static void engagement_refreshes_an_expired_session(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  testserver_script(&f->ts, "[" EXPIRED(P_POSTS) "," REFRESH_OK "," POSTS_OK(
                                "\"replyCount\": 1, \"repostCount\": 1, \"likeCount\": 4, "
                                "\"quoteCount\": 0") "]");
  struct cp_result res = engagement(f, ROOT_URI);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_int_equal(res.likes, 4);
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 3);
  assert_get_posts(json_array_get(reqs, 0), ROOT_URI, "acc-1");
  assert_path(json_array_get(reqs, 1), "POST", P_REFRESH);
  assert_string_equal(testserver_header(json_array_get(reqs, 1), "Authorization"), "Bearer ref-1");
  assert_get_posts(json_array_get(reqs, 2), ROOT_URI, "acc-2");
  json_decref(reqs);

  /* The refresh refused as well: AUTH, and the next read logs in anew. */
  testserver_script(&f->ts, "[" EXPIRED(P_POSTS) "," EXPIRED(P_REFRESH) "]");
  res = engagement(f, ROOT_URI);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_false(res.has_engagement);
  assert_non_null(strstr(res.message, "refreshSession: HTTP 400 ExpiredToken"));
  testserver_script(&f->ts, "[" SESSION_OK "," POSTS_OK("\"likeCount\": 6") "]");
  res = engagement(f, ROOT_URI);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_int_equal(res.likes, 6);
  reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 2);
  assert_path(json_array_get(reqs, 0), "POST", P_SESSION);
  assert_get_posts(json_array_get(reqs, 1), ROOT_URI, "acc-1");
  json_decref(reqs);
}

static const struct answer engagement_answers[] = {
    /* getPosts leaves out a post it cannot find: the post was deleted. */
    {"[{\"path\": \"" P_POSTS "\", \"json\": {\"posts\": []}}]", CP_OUTCOME_PERMANENT, 0, 0,
     "the post was deleted", 1},
    /* The reference PDS without an AppView (CONNECTORS-NOTES 2.1; seen on @atproto/pds 0.4.217). */
    {"[{\"path\": \"" P_POSTS "\", \"status\": 400, \"json\": {\"error\": \"InvalidRequest\", "
     "\"message\": \"No service configured for app.bsky.feed.getPosts\"}}]",
     CP_OUTCOME_PERMANENT, 400, 0, "this PDS has no AppView", 1},
    {"[{\"path\": \"" P_POSTS "\", \"status\": 429, \"headers\": {\"RateLimit-Limit\": \"3000\", "
     "\"RateLimit-Remaining\": \"0\", \"RateLimit-Reset\": \"1700000300\", \"RateLimit-Policy\": "
     "\"3000;w=300\"}, \"json\": {\"error\": \"RateLimitExceeded\", \"message\": \"Rate Limit "
     "Exceeded\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 1700000300000LL,
     "getPosts: HTTP 429 RateLimitExceeded: Rate Limit Exceeded", 1},
    {"[{\"path\": \"" P_POSTS "\", \"status\": 502, \"json\": {\"error\": \"UpstreamFailure\", "
     "\"message\": \"upstream server unavailable\"}}]",
     CP_OUTCOME_RETRY, 502, 0, "getPosts: HTTP 502 UpstreamFailure", 1},
    /* A read whose answer got lost changed nothing: RETRY, not UNKNOWN (libcurl may resend a GET
     * whose kept-alive connection died: harmless, and so at least one request). */
    {"[{\"path\": \"" P_POSTS "\", \"reset\": true, \"repeat\": true}]", CP_OUTCOME_RETRY, 0, 0,
     "getPosts: ", 0},
    {"[{\"path\": \"" P_POSTS "\", \"body\": \"<html>oops\"}]", CP_OUTCOME_RETRY, 0, 0,
     "the answer has no posts", 1},
};

static void engagement_answers_give_their_outcome(void **state) {
  struct fixture *f = *state;
  connect_ok(f);
  login(f);
  for (size_t i = 0; i < sizeof engagement_answers / sizeof engagement_answers[0]; i++) {
    const struct answer *a = &engagement_answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = engagement(f, ROOT_URI);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_false(res.has_engagement);
    if (a->status)
      assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.retry_at_ms, a->retry_at_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    json_t *reqs = requests(f), *r;
    size_t k;
    if (a->n_requests)
      assert_int_equal(json_array_size(reqs), a->n_requests);
    assert_true(json_array_size(reqs) >= 1);
    json_array_foreach(reqs, k, r) {
      assert_get_posts(r, ROOT_URI, "acc-1");
    }
    json_decref(reqs);
  }

  /* What publish cannot have reported is refused at once: no request, no completion. */
  static const char *const bad[] = {"",
                                    "3kpart1",
                                    "https://bsky.app/profile/alice.test/post/3k",
                                    "at://" DID "/app.bsky.feed.like/3kpart1",
                                    "at://" DID "/app.bsky.feed.post/",
                                    "at://" DID "/app.bsky.feed.post/3k?x=1"};
  testserver_script(&f->ts, "[]");
  struct cp_publish_req req = {.host = &f->mh.host,
                               .attempt = 1,
                               .idempotency_key = "",
                               .host_data = &f->mh,
                               .progress = ""};
  int before = f->mh.completions;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(cp_connector_bluesky.engagement(f->mh.instance, bad[i], "", &req), CP_EINVAL);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, before);
  json_t *reqs = requests(f);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(publishes_record_with_facets_and_link_card, setup, teardown),
      cmocka_unit_test_setup_teardown(session_is_kept_and_language_sets_langs, setup, teardown),
      cmocka_unit_test_setup_teardown(link_card_title_falls_back_to_the_url, setup, teardown),
      cmocka_unit_test_setup_teardown(expired_token_is_refreshed_and_the_request_repeated, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(failed_refresh_is_auth_and_the_next_attempt_logs_in, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(token_rejected_after_refresh_is_auth, setup, teardown),
      cmocka_unit_test_setup_teardown(each_answer_gives_its_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(login_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(record_key_is_stable_across_attempts, setup, teardown),
      cmocka_unit_test_setup_teardown(taken_record_key_is_checked_with_getRecord, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_is_a_reply_chain_resumed_from_progress, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(images_are_uploaded_as_blobs_with_alt_text, setup, teardown),
      cmocka_unit_test_setup_teardown(unusable_images_fail_without_upload, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_limits_without_io, setup, teardown),
      cmocka_unit_test_setup_teardown(max_chars_overrides_the_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_logs_in_and_checks_the_session, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_reads_the_counts_through_the_pds, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_refreshes_an_expired_session, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_answers_give_their_outcome, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the bluesky connector is not built (CALPOST_CONNECTOR_BLUESKY=OFF): skipped");
  return 0;
}
#endif
