// ctest-labels: connector
// ctest-connector: x
/* The X connector against tests/support/testserver.py: the exact requests (POST /2/tweets JSON,
 * media uploads as multipart, alt text, STATUS polling), each OAuth 1.0a Authorization header
 * recomputed from the recorded request, the outcome of each kind of answer (duplicate content,
 * auth problems, the 15-minute and 24-hour limit headers), threads that resume after a failure
 * without posting a part twice, login_check, config and validate. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "calpost/err.h"
#include "calpost/text.h"
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_X

#include "../connectors/x/oauth1.h"

#define CK "ck-Consumer-KEY"
#define CS "cs-consumer-s3cret+/="
#define AT "1234-access-token"
#define AS "as-access-s3cret"
#define TS_NOW "1700000000" /* MOCK_WALL_MS in seconds */

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char files[4][128];
  char api[128], up[128];
};

/* What the connector asked the host to send, beside what the server received. */
static struct {
  int n;
  bool idempotent[64];
} spy;

static int spy_http_request(const struct cp_host *host, const struct cp_http_req *req,
                            cp_http_cb cb, void *data) {
  if (spy.n < 64)
    spy.idempotent[spy.n] = req->idempotent;
  spy.n++;
  return mock_http_request(host, req, cb, data);
}

static void write_secret(const char *path, const char *value) {
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  fprintf(fp, "%s\n", value);
  fclose(fp);
  assert_int_equal(chmod(path, 0600), 0);
}

static int setup(void **state) {
  static const char *const names[] = {"ck", "cs", "at", "as"};
  static const char *const values[] = {CK, CS, AT, AS};
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "", f->api, sizeof f->api);
  testserver_url(&f->ts, "/up", f->up, sizeof f->up);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-x-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  for (int i = 0; i < 4; i++) {
    snprintf(f->files[i], sizeof f->files[i], "%s/%s", f->dir, names[i]);
    write_secret(f->files[i], values[i]);
  }
  mock_host_init(&f->mh, &cp_connector_x);
  f->mh.host.http_request = spy_http_request;
  memset(&spy, 0, sizeof spy);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  for (int i = 0; i < 4; i++)
    unlink(f->files[i]);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* Connects with the extra key/value pairs (NULL-terminated; they come first, so they win),
 * then the test server as api_base and upload_base (.../up) and the four secrets from files. */
static int connect_x(struct fixture *f, ...) {
  const char *dflt[] = {"type",
                        "x",
                        "api_base",
                        f->api,
                        "upload_base",
                        f->up,
                        "consumer_key_file",
                        f->files[0],
                        "consumer_secret_file",
                        f->files[1],
                        "access_token_file",
                        f->files[2],
                        "access_token_secret_file",
                        f->files[3]};
  const char *kv[40];
  size_t n = 0;
  va_list ap;
  va_start(ap, f);
  for (const char *s = va_arg(ap, const char *); s && n < 24; s = va_arg(ap, const char *))
    kv[n++] = s;
  va_end(ap);
  for (size_t i = 0; i < sizeof dflt / sizeof dflt[0]; i++)
    kv[n++] = dflt[i];
  kv[n] = NULL;
  return mock_host_connect(&f->mh, kv);
}

static struct cp_post text_post(const char *id, const char *text) {
  struct cp_post p = mock_post(id, text);
  p.n_media = 0;
  return p;
}

/* ---- checking recorded requests ------------------------------------------------------------- */

static char *unescape(const char *s, size_t len) {
  int n = 0;
  char *d = curl_easy_unescape(NULL, s, (int)len, &n);
  assert_non_null(d);
  char *out = strdup(d);
  curl_free(d);
  return out;
}

/* The Authorization header of r must be OAuth 1.0a over the recorded method and URL (query
 * included; no body parameters), by our keys, at the mock clock; its signature is recomputed
 * from its own nonce and timestamp and must match, and so must the whole header. */
static void assert_signed(struct fixture *f, json_t *r) {
  const char *auth = testserver_header(r, "Authorization");
  char *nonce = NULL, *ts = NULL, *sig = NULL, *ck = NULL, *tok = NULL, *meth = NULL, *ver = NULL;
  assert_non_null(auth);
  assert_memory_equal(auth, "OAuth ", 6);
  for (const char *p = auth + 6; *p;) {
    const char *eq = strchr(p, '=');
    assert_non_null(eq);
    assert_int_equal(eq[1], '"');
    const char *close = strchr(eq + 2, '"');
    assert_non_null(close);
    size_t nl = (size_t)(eq - p);
    char *v = unescape(eq + 2, (size_t)(close - eq - 2));
    char **slot = NULL;
    if (nl == 11 && !strncmp(p, "oauth_nonce", nl))
      slot = &nonce;
    else if (nl == 15 && !strncmp(p, "oauth_timestamp", nl))
      slot = &ts;
    else if (nl == 15 && !strncmp(p, "oauth_signature", nl))
      slot = &sig;
    else if (nl == 18 && !strncmp(p, "oauth_consumer_key", nl))
      slot = &ck;
    else if (nl == 11 && !strncmp(p, "oauth_token", nl))
      slot = &tok;
    else if (nl == 22 && !strncmp(p, "oauth_signature_method", nl))
      slot = &meth;
    else if (nl == 13 && !strncmp(p, "oauth_version", nl))
      slot = &ver;
    assert_non_null(slot); /* no other parameter belongs in the header */
    assert_null(*slot);
    *slot = v;
    p = close + 1;
    if (!strncmp(p, ", ", 2))
      p += 2;
    else
      assert_int_equal(*p, '\0');
  }
  assert_non_null(nonce);
  assert_true(strlen(nonce) >= 16);
  assert_string_equal(ts, TS_NOW);
  assert_string_equal(ck, CK);
  assert_string_equal(tok, AT);
  assert_string_equal(meth, "HMAC-SHA1");
  assert_string_equal(ver, "1.0");

  char url[1024], want[CP_OAUTH1_SIG_SIZE], *header = NULL;
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->ts.port,
           json_string_value(json_object_get(r, "path")));
  const struct cp_oauth1_creds creds = {CK, CS, AT, AS};
  assert_int_equal(cp_oauth1_authorization(&creds, json_string_value(json_object_get(r, "method")),
                                           url, NULL, 0, nonce, ts, "1.0", &header, want),
                   0);
  assert_string_equal(sig, want);
  assert_string_equal(auth, header);
  free(header);
  free(nonce);
  free(ts);
  free(sig);
  free(ck);
  free(tok);
  free(meth);
  free(ver);
}

static const char *req_path(json_t *r) {
  return json_string_value(json_object_get(r, "path"));
}

/* The JSON body of r, checked to be sent as application/json (new reference). */
static json_t *json_body(json_t *r) {
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  json_t *b = json_loads(json_string_value(json_object_get(r, "body")), 0, NULL);
  assert_non_null(b);
  return b;
}

/* A POST /2/tweets, signed, with exactly the JSON want_json. */
static void assert_create(struct fixture *f, json_t *r, const char *want_json) {
  assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
  assert_string_equal(req_path(r), "/2/tweets");
  assert_signed(f, r);
  json_t *got = json_body(r);
  json_t *want = json_loads(want_json, 0, NULL);
  assert_non_null(want);
  if (!json_equal(got, want)) {
    char *g = json_dumps(got, JSON_SORT_KEYS);
    print_error("body %s\nwant %s\n", g, want_json);
    free(g);
    fail();
  }
  json_decref(got);
  json_decref(want);
}

struct body {
  unsigned char *p;
  size_t len;
};

static struct body raw_body(json_t *r) {
  const char *b64 = json_string_value(json_object_get(r, "body_b64"));
  size_t n = strlen(b64);
  struct body b = {malloc(n / 4 * 3 + 4), 0};
  int len = EVP_DecodeBlock(b.p, (const unsigned char *)b64, (int)n);
  assert_true(len >= 0);
  b.len = (size_t)len - (n >= 1 && b64[n - 1] == '=') - (n >= 2 && b64[n - 2] == '=');
  return b;
}

/* The content of the multipart field name in r (a malloc'd copy and its length), or NULL. */
static char *part(json_t *r, const char *name, size_t *len) {
  const char *ct = testserver_header(r, "Content-Type");
  assert_non_null(ct);
  assert_non_null(strstr(ct, "multipart/form-data; boundary="));
  struct body b = raw_body(r);
  char key[128];
  snprintf(key, sizeof key, "name=\"%s\"", name);
  char *out = NULL;
  unsigned char *k = memmem(b.p, b.len, key, strlen(key));
  if (k) {
    unsigned char *start = memmem(k, b.len - (size_t)(k - b.p), "\r\n\r\n", 4);
    assert_non_null(start);
    start += 4;
    unsigned char *end = memmem(start, b.len - (size_t)(start - b.p), "\r\n--", 4);
    assert_non_null(end);
    *len = (size_t)(end - start);
    out = malloc(*len + 1);
    memcpy(out, start, *len);
    out[*len] = '\0';
  }
  free(b.p);
  return out;
}

static void assert_part(json_t *r, const char *name, const char *want) {
  size_t len = 0;
  char *v = part(r, name, &len);
  assert_non_null(v);
  assert_string_equal(v, want);
  free(v);
}

static void assert_part_file(json_t *r, const char *name, const char *file) {
  unsigned char want[4096];
  FILE *fp = fopen(mock_media_path(file), "rb");
  assert_non_null(fp);
  size_t n = fread(want, 1, sizeof want, fp);
  fclose(fp);
  size_t len = 0;
  char *v = part(r, name, &len);
  assert_non_null(v);
  assert_int_equal(len, n);
  assert_memory_equal(v, want, n);
  free(v);
}

/* ---- a single post -------------------------------------------------------------------------- */

static void publishes_a_post(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  struct cp_post post = text_post("0123456789abcdef", "Launch day! \xf0\x9f\x9a\x80 \"quoted\" "
                                                      "https://example.org/launch");
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": "
                            "\"1445880548472328192\", \"text\": \"Launch day!\"}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.http_status, 201);
  assert_string_equal(res.remote_id, "1445880548472328192");
  assert_string_equal(res.remote_url, "https://x.com/i/web/status/1445880548472328192");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_create(f, json_array_get(reqs, 0),
                "{\"text\": \"Launch day! \xf0\x9f\x9a\x80 \\\"quoted\\\" "
                "https://example.org/launch\"}");
  json_decref(reqs);
  /* No idempotency key exists on X: the create must never ride a reused connection. */
  assert_int_equal(spy.n, 1);
  assert_false(spy.idempotent[0]);
  assert_string_equal(f->mh.progress, "1=1445880548472328192");
  /* No secret reaches the log. */
  assert_null(strstr(f->mh.log, CS));
  assert_null(strstr(f->mh.log, AS));
}

static void post_options_reach_the_request(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  const struct cp_post_option opts[] = {
      {"reply_to", "https://x.com/someone/status/1700000000000000001?s=20"},
      {"quote", "1700000000000000002"},
      {"reply_settings", "mentionedusers"},
  };
  struct cp_post post = text_post("00000000000000a1", "with options");
  post.options = opts;
  post.n_options = 3;
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"5\"}}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_create(f, json_array_get(reqs, 0),
                "{\"text\": \"with options\", \"reply\": {\"in_reply_to_tweet_id\": "
                "\"1700000000000000001\"}, \"quote_tweet_id\": \"1700000000000000002\", "
                "\"reply_settings\": \"mentionedUsers\"}");
  json_decref(reqs);
}

/* ---- outcomes ------------------------------------------------------------------------------- */

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int err;
  const char *message; /* substring */
};

static const struct answer answers[] = {
    {"[{\"status\": 401, \"json\": {\"title\": \"Unauthorized\", \"type\": \"about:blank\", "
     "\"status\": 401, \"detail\": \"Unauthorized\"}}]",
     CP_OUTCOME_AUTH, 401, 0, "post: HTTP 401: Unauthorized (check the consumer key"},
    {"[{\"status\": 403, \"json\": {\"detail\": \"You are not allowed to create a Tweet with "
     "duplicate content.\", \"type\": \"about:blank\", \"title\": \"Forbidden\", \"status\": "
     "403}}]",
     CP_OUTCOME_PERMANENT, 403, 0,
     "HTTP 403: You are not allowed to create a Tweet with duplicate content. (X refuses"},
    {"[{\"status\": 403, \"json\": {\"title\": \"Client Forbidden\", \"detail\": \"This request "
     "must be made using an approved developer account that is enrolled in the requested "
     "endpoint.\", \"reason\": \"client-not-enrolled\", \"type\": "
     "\"https://api.twitter.com/2/problems/client-forbidden\"}}]",
     CP_OUTCOME_AUTH, 403, 0, "approved developer account"},
    {"[{\"status\": 403, \"json\": {\"title\": \"Forbidden\", \"detail\": \"Your client app is "
     "not configured with the appropriate oauth1 app permissions for this endpoint.\", \"type\": "
     "\"https://api.twitter.com/2/problems/oauth1-permissions\", \"status\": 403}}]",
     CP_OUTCOME_AUTH, 403, 0, "Read and Write"},
    {"[{\"status\": 403, \"json\": {\"title\": \"Forbidden\", \"type\": \"about:blank\", "
     "\"status\": 403, \"detail\": \"Reply to this conversation is not allowed because you have "
     "not been mentioned or otherwise engaged by the author of the post you are replying to.\"}}]",
     CP_OUTCOME_PERMANENT, 403, 0, "HTTP 403: Reply to this conversation is not allowed"},
    {"[{\"status\": 400, \"json\": {\"errors\": [{\"parameters\": {\"text\": [\"\"]}, "
     "\"message\": \"Invalid text length\"}], \"title\": \"Invalid Request\", \"detail\": \"One "
     "or more parameters to your request was invalid.\", \"type\": "
     "\"https://api.twitter.com/2/problems/invalid-request\"}}]",
     CP_OUTCOME_PERMANENT, 400, 0, "HTTP 400: One or more parameters"},
    {"[{\"status\": 400, \"json\": {\"errors\": [{\"code\": 215, \"message\": \"Bad "
     "Authentication data.\"}]}}]",
     CP_OUTCOME_AUTH, 400, 0, "HTTP 400: Bad Authentication data."},
    {"[{\"status\": 429, \"json\": {\"errors\": [{\"code\": 88, \"message\": \"Rate limit "
     "exceeded\"}]}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, "HTTP 429: Rate limit exceeded"},
    {"[{\"status\": 503, \"json\": {\"title\": \"Service Unavailable\", \"detail\": \"Service "
     "Unavailable\", \"type\": \"about:blank\", \"status\": 503}}]",
     CP_OUTCOME_RETRY, 503, 0, "HTTP 503: Service Unavailable"},
    {"[{\"status\": 500, \"body\": \"Internal Server Error\"}]", CP_OUTCOME_RETRY, 500, 0,
     "HTTP 500"},
    {"[{\"reset\": true}]", CP_OUTCOME_UNKNOWN, 0, -ECONNRESET, "post: "},
    /* X said yes but the answer is unreadable: it is probably posted, so no blind retry. */
    {"[{\"status\": 201, \"body\": \"{not json\"}]", CP_OUTCOME_UNKNOWN, 201, 0,
     "without a post id"},
    {"[{\"status\": 200, \"json\": {\"data\": {\"text\": \"no id\"}}}]", CP_OUTCOME_UNKNOWN, 200, 0,
     "without a post id"},
};

static void each_answer_gives_its_outcome(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  struct cp_post post = text_post("0123456789abcdef", "same text");
  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %.80s\n", i, a->script);
    f->mh.progress[0] = '\0';
    testserver_script(&f->ts, a->script);
    struct cp_result res = mock_host_publish(&f->mh, &post);
    if (!strstr(res.message, a->message))
      print_error("message: %s\n", res.message);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_non_null(strstr(res.message, a->message));
    assert_string_equal(res.remote_id, "");
    assert_int_equal(res.retry_at_ms, 0);
    assert_string_equal(f->mh.progress, ""); /* nothing was published */
    json_t *reqs = testserver_requests(&f->ts);
    assert_int_equal(json_array_size(reqs), 1);
    assert_create(f, json_array_get(reqs, 0), "{\"text\": \"same text\"}");
    json_decref(reqs);
  }
}

static void refused_connection_is_retried(void **state) {
  struct fixture *f = *state;
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", testserver_dead_port());
  assert_int_equal(connect_x(f, "api_base", url, NULL), 0);
  struct cp_post post = text_post("0123456789abcdef", "hello");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_int_equal(res.err, -ECONNREFUSED);
}

/* ---- rate limits ---------------------------------------------------------------------------- */

struct limits {
  const char *headers; /* JSON object of response headers */
  int64_t retry_at_ms; /* 0: none */
  const char *message; /* substring */
};

#define NOW_S 1700000000LL

static void limit_headers_give_the_retry_time(void **state) {
  struct fixture *f = *state;
  char h[8][512];
  /* The 15-minute window exhausted. */
  snprintf(h[0], sizeof h[0],
           "{\"x-rate-limit-limit\": \"200\", \"x-rate-limit-remaining\": \"0\", "
           "\"x-rate-limit-reset\": \"%lld\"}",
           NOW_S + 600);
  /* The 24-hour user cap exhausted while the window still has room. */
  snprintf(h[1], sizeof h[1],
           "{\"x-rate-limit-limit\": \"200\", \"x-rate-limit-remaining\": \"150\", "
           "\"x-rate-limit-reset\": \"%lld\", \"x-user-limit-24hour-limit\": \"100\", "
           "\"x-user-limit-24hour-remaining\": \"0\", \"x-user-limit-24hour-reset\": \"%lld\"}",
           NOW_S + 600, NOW_S + 50000);
  /* Both exhausted: the later reset. */
  snprintf(h[2], sizeof h[2],
           "{\"x-rate-limit-remaining\": \"0\", \"x-rate-limit-reset\": \"%lld\", "
           "\"x-user-limit-24hour-remaining\": \"0\", \"x-user-limit-24hour-reset\": \"%lld\"}",
           NOW_S + 900, NOW_S + 300);
  /* The 24-hour cap has room: the window's reset. */
  snprintf(h[3], sizeof h[3],
           "{\"x-rate-limit-remaining\": \"0\", \"x-rate-limit-reset\": \"%lld\", "
           "\"x-user-limit-24hour-remaining\": \"12\", \"x-user-limit-24hour-reset\": \"%lld\"}",
           NOW_S + 120, NOW_S + 80000);
  /* The app's 24-hour cap. */
  snprintf(h[4], sizeof h[4],
           "{\"x-rate-limit-remaining\": \"10\", \"x-rate-limit-reset\": \"%lld\", "
           "\"x-app-limit-24hour-limit\": \"1667\", \"x-app-limit-24hour-remaining\": \"0\", "
           "\"x-app-limit-24hour-reset\": \"%lld\"}",
           NOW_S + 120, NOW_S + 7200);
  /* Only Retry-After. */
  snprintf(h[5], sizeof h[5], "{\"Retry-After\": \"45\"}");
  /* Nothing to go by. */
  snprintf(h[6], sizeof h[6], "{}");
  /* A 429 that names no exhausted limit: the window's reset all the same. */
  snprintf(h[7], sizeof h[7],
           "{\"x-rate-limit-remaining\": \"3\", \"x-rate-limit-reset\": \"%lld\"}", NOW_S + 60);
  const struct limits cases[] = {
      {h[0], (NOW_S + 600) * 1000, "15-minute limit reached, resets 2023-11-14T22:23:20Z"},
      {h[1], (NOW_S + 50000) * 1000, "24-hour user limit reached"},
      {h[2], (NOW_S + 900) * 1000, "15-minute limit"},
      {h[3], (NOW_S + 120) * 1000, "15-minute limit"},
      {h[4], (NOW_S + 7200) * 1000, "24-hour app limit reached"},
      {h[5], MOCK_WALL_MS + 45000, "HTTP 429"},
      {h[6], 0, "HTTP 429"},
      {h[7], (NOW_S + 60) * 1000, "15-minute limit"},
  };
  assert_int_equal(connect_x(f, NULL), 0);
  struct cp_post post = text_post("0123456789abcdef", "limited");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char script[1024];
    snprintf(script, sizeof script,
             "[{\"status\": 429, \"headers\": %s, \"json\": {\"title\": \"Too Many Requests\", "
             "\"detail\": \"Too Many Requests\", \"type\": \"about:blank\", \"status\": 429}}]",
             cases[i].headers);
    print_message("case %zu: %s\n", i, cases[i].headers);
    testserver_script(&f->ts, script);
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_int_equal(res.outcome, CP_OUTCOME_RATE_LIMITED);
    assert_int_equal(res.retry_at_ms, cases[i].retry_at_ms);
    if (!strstr(res.message, cases[i].message))
      print_error("message: %s\n", res.message);
    assert_non_null(strstr(res.message, cases[i].message));
  }
}

/* ---- threads -------------------------------------------------------------------------------- */

#define PARA                                                                                       \
  "This paragraph is long enough that two of them never fit into one post on X, "                  \
  "which allows 280 weighted characters; so the thread splits between them. "

static const char thread_text[] = PARA "One."
                                       "\n\n" PARA "Two."
                                       "\n\n" PARA "Three.";

static void expected_parts(const struct cp_post *post, char ***parts, size_t *n) {
  assert_int_equal(cp_text_split(post->text, 280, CP_COUNT_X, post->numbered, parts, n), 0);
  assert_int_equal(*n, 3);
  for (size_t i = 0; i < *n; i++)
    assert_true(cp_text_x_len((*parts)[i]) <= 280);
}

static void assert_part_create(struct fixture *f, json_t *r, const char *text,
                               const char *reply_to) {
  json_t *want = json_pack("{s:s}", "text", text);
  if (reply_to)
    json_object_set_new(want, "reply", json_pack("{s:s}", "in_reply_to_tweet_id", reply_to));
  char *w = json_dumps(want, 0);
  assert_create(f, r, w);
  free(w);
  json_decref(want);
}

static void thread_is_a_reply_chain(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  struct cp_post post = text_post("00000000000000b1", thread_text);
  post.thread = true;
  post.numbered = true;
  char **parts;
  size_t n;
  expected_parts(&post, &parts, &n);
  assert_non_null(strstr(parts[0], "1/3"));

  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"101\"}}},"
                            " {\"status\": 201, \"json\": {\"data\": {\"id\": \"102\"}}},"
                            " {\"status\": 201, \"json\": {\"data\": {\"id\": \"103\"}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "101"); /* the thread starts there */
  assert_string_equal(res.remote_url, "https://x.com/i/web/status/101");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 3);
  assert_part_create(f, json_array_get(reqs, 0), parts[0], NULL);
  assert_part_create(f, json_array_get(reqs, 1), parts[1], "101");
  assert_part_create(f, json_array_get(reqs, 2), parts[2], "102");
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "1=101;2=102;3=103");
  assert_int_equal(f->mh.progress_saves, 3);
  for (int i = 0; i < spy.n; i++)
    assert_false(spy.idempotent[i]);
  cp_text_split_free(parts, n);
}

static void thread_resumes_without_reposting(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  struct cp_post post = text_post("00000000000000b2", thread_text);
  post.thread = true;
  char **parts;
  size_t n;
  expected_parts(&post, &parts, &n);

  /* Attempt 1: part 1 is published, part 2 meets a 503. */
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"201\"}}},"
                            " {\"status\": 503, \"body\": \"over capacity\"}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "part 2/3: HTTP 503"));
  assert_string_equal(f->mh.progress, "1=201");

  /* Attempt 2: part 2 is published, part 3 hits the 24-hour cap. */
  char script[1024];
  snprintf(script, sizeof script,
           "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"202\"}}},"
           " {\"status\": 429, \"headers\": {\"x-rate-limit-remaining\": \"100\", "
           "\"x-rate-limit-reset\": \"%lld\", \"x-user-limit-24hour-remaining\": \"0\", "
           "\"x-user-limit-24hour-reset\": \"%lld\"}}]",
           NOW_S + 60, NOW_S + 40000);
  f->mh.attempt = 2;
  testserver_script(&f->ts, script);
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RATE_LIMITED);
  assert_int_equal(res.retry_at_ms, (NOW_S + 40000) * 1000);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  assert_part_create(f, json_array_get(reqs, 0), parts[1], "201");
  assert_part_create(f, json_array_get(reqs, 1), parts[2], "202");
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "1=201;2=202");

  /* Attempt 3: only part 3 is left. */
  f->mh.attempt = 3;
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"203\"}}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "201");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_part_create(f, json_array_get(reqs, 0), parts[2], "202");
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "1=201;2=202;3=203");

  /* Attempt 4 (say the daemon died before recording success): nothing is sent again, and the
   * completion still comes from the loop. */
  f->mh.attempt = 4;
  testserver_script(&f->ts, "[]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_url, "https://x.com/i/web/status/201");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
  cp_text_split_free(parts, n);
}

/* ---- media ---------------------------------------------------------------------------------- */

static void images_upload_with_alt_text(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  static char png[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  const struct cp_media media[] = {{png, "A single pixel"}, {png, NULL}};
  struct cp_post post = text_post("00000000000000c1", "two pixels");
  post.media = media;
  post.n_media = 2;
  testserver_script(
      &f->ts,
      "[{\"path\": \"/up/2/media/upload\", \"status\": 200, \"json\": {\"data\": {\"id\": "
      "\"9001\", \"media_key\": \"3_9001\", \"size\": 70, \"expires_after_secs\": 86400}}},"
      " {\"path\": \"/up/2/media/metadata\", \"status\": 200, \"json\": {\"data\": "
      "{\"associated_metadata\": {\"alt_text\": {\"text\": \"A single pixel\"}}, \"id\": "
      "\"9001\"}}},"
      " {\"path\": \"/up/2/media/upload\", \"status\": 200, \"json\": {\"data\": {\"id\": "
      "\"9002\"}}},"
      " {\"path\": \"/2/tweets\", \"status\": 201, \"json\": {\"data\": {\"id\": \"301\"}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "301");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 4);
  json_t *up1 = json_array_get(reqs, 0), *meta = json_array_get(reqs, 1);
  json_t *up2 = json_array_get(reqs, 2);
  for (int i = 0; i < 3; i += 2) {
    json_t *up = json_array_get(reqs, (size_t)i);
    assert_string_equal(req_path(up), "/up/2/media/upload");
    assert_string_equal(json_string_value(json_object_get(up, "method")), "POST");
    assert_signed(f, up); /* the multipart fields are not signed */
    assert_part(up, "media_category", "tweet_image");
    assert_part(up, "media_type", "image/png");
    assert_part_file(up, "media", "pixel.png");
  }
  (void)up1;
  (void)up2;
  assert_string_equal(req_path(meta), "/up/2/media/metadata");
  assert_signed(f, meta);
  json_t *mb = json_body(meta);
  json_t *want = json_loads("{\"id\": \"9001\", \"metadata\": {\"alt_text\": {\"text\": \"A "
                            "single pixel\"}}}",
                            0, NULL);
  assert_true(json_equal(mb, want));
  json_decref(mb);
  json_decref(want);
  assert_create(f, json_array_get(reqs, 3),
                "{\"text\": \"two pixels\", \"media\": {\"media_ids\": [\"9001\", \"9002\"]}}");
  json_decref(reqs);
}

static void gif_uploads_in_chunks_and_waits_for_processing(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  static char gif[512];
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  const struct cp_media media[] = {{gif, "A tiny animation"}};
  struct cp_post post = text_post("00000000000000c2", "");
  post.media = media;
  post.n_media = 1;
  testserver_script(
      &f->ts,
      "[{\"path\": \"/up/2/media/upload\", \"json\": {\"data\": {\"id\": \"7001\", "
      "\"media_key\": \"16_7001\", \"expires_after_secs\": 86399}}},"
      " {\"path\": \"/up/2/media/upload\", \"status\": 204},"
      " {\"path\": \"/up/2/media/upload\", \"json\": {\"data\": {\"id\": \"7001\", "
      "\"processing_info\": {\"state\": \"pending\", \"check_after_secs\": 0}}}},"
      " {\"path\": \"/up/2/media/upload\", \"json\": {\"data\": {\"id\": \"7001\", "
      "\"processing_info\": {\"state\": \"in_progress\", \"check_after_secs\": 0, "
      "\"progress_percent\": 50}}}},"
      " {\"path\": \"/up/2/media/upload\", \"json\": {\"data\": {\"id\": \"7001\", "
      "\"processing_info\": {\"state\": \"succeeded\", \"progress_percent\": 100}}}},"
      " {\"path\": \"/up/2/media/metadata\", \"json\": {}},"
      " {\"path\": \"/2/tweets\", \"status\": 201, \"json\": {\"data\": {\"id\": \"401\"}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "401");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 7);
  json_t *init = json_array_get(reqs, 0);
  assert_string_equal(req_path(init), "/up/2/media/upload");
  assert_signed(f, init);
  assert_part(init, "command", "INIT");
  assert_part(init, "media_type", "image/gif");
  assert_part(init, "total_bytes", "43");
  assert_part(init, "media_category", "tweet_gif");
  json_t *app = json_array_get(reqs, 1);
  assert_signed(f, app);
  assert_part(app, "command", "APPEND");
  assert_part(app, "media_id", "7001");
  assert_part(app, "segment_index", "0");
  assert_part_file(app, "media", "pixel.gif");
  json_t *fin = json_array_get(reqs, 2);
  assert_signed(f, fin);
  assert_part(fin, "command", "FINALIZE");
  assert_part(fin, "media_id", "7001");
  for (size_t i = 3; i < 5; i++) {
    json_t *st = json_array_get(reqs, i);
    assert_string_equal(json_string_value(json_object_get(st, "method")), "GET");
    assert_string_equal(req_path(st), "/up/2/media/upload?command=STATUS&media_id=7001");
    assert_signed(f, st); /* the query parameters are part of the signature */
  }
  assert_string_equal(req_path(json_array_get(reqs, 5)), "/up/2/media/metadata");
  /* No text: only the media. */
  assert_create(f, json_array_get(reqs, 6), "{\"media\": {\"media_ids\": [\"7001\"]}}");
  json_decref(reqs);
}

static void media_failures(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  static char src[3][512];
  snprintf(src[0], sizeof src[0], "%s", mock_media_path("not-an-image.png"));
  snprintf(src[1], sizeof src[1], "%s", mock_media_path("pixel.gif"));
  snprintf(src[2], sizeof src[2], "%s", mock_media_path("pixel.png"));
  struct cp_media media = {src[0], NULL};
  struct cp_post post = text_post("00000000000000c3", "media trouble");
  post.media = &media;
  post.n_media = 1;

  /* HTML named .png: refused by the host's check, nothing reaches X. */
  testserver_script(&f->ts, "[]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "media 1"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);

  /* X could not process the GIF. */
  media.src = src[1];
  testserver_script(&f->ts,
                    "[{\"json\": {\"data\": {\"id\": \"7002\"}}}, {\"status\": 204},"
                    " {\"json\": {\"data\": {\"id\": \"7002\", \"processing_info\": {\"state\": "
                    "\"failed\", \"error\": {\"code\": 1, \"name\": \"InvalidMedia\", \"message\": "
                    "\"Unsupported video format\"}}}}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "media 1: X could not process it: Unsupported video"));

  /* The upload is refused: no post is created. */
  media.src = src[2];
  testserver_script(&f->ts, "[{\"status\": 400, \"json\": {\"title\": \"Invalid Request\", "
                            "\"detail\": \"One or more parameters to your request was "
                            "invalid.\", \"type\": "
                            "\"https://api.twitter.com/2/problems/invalid-request\"}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "media 1: HTTP 400: One or more parameters"));
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_decref(reqs);

  /* The alt text is refused: no post either. */
  media.alt = "alt";
  testserver_script(&f->ts, "[{\"json\": {\"data\": {\"id\": \"9003\"}}},"
                            " {\"status\": 503, \"body\": \"busy\"}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "alt text of media 1: HTTP 503"));
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "");
}

/* Media go with the first part; once it is out, a retry does not upload them again. */
static void thread_media_go_with_the_first_part(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  static char png[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  const struct cp_media media[] = {{png, NULL}};
  struct cp_post post = text_post("00000000000000c4", thread_text);
  post.thread = true;
  post.media = media;
  post.n_media = 1;
  char **parts;
  size_t n;
  expected_parts(&post, &parts, &n);

  testserver_script(&f->ts, "[{\"path\": \"/up/2/media/upload\", \"json\": {\"data\": {\"id\": "
                            "\"9101\"}}},"
                            " {\"status\": 201, \"json\": {\"data\": {\"id\": \"501\"}}},"
                            " {\"status\": 500, \"body\": \"Internal Server Error\"}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 3);
  assert_string_equal(req_path(json_array_get(reqs, 0)), "/up/2/media/upload");
  json_t *want = json_pack("{s:s, s:{s:[s]}}", "text", parts[0], "media", "media_ids", "9101");
  char *w = json_dumps(want, 0);
  assert_create(f, json_array_get(reqs, 1), w);
  free(w);
  json_decref(want);
  assert_part_create(f, json_array_get(reqs, 2), parts[1], "501");
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "1=501");

  f->mh.attempt = 2;
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"502\"}}},"
                            " {\"status\": 201, \"json\": {\"data\": {\"id\": \"503\"}}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "501");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  assert_part_create(f, json_array_get(reqs, 0), parts[1], "501");
  assert_part_create(f, json_array_get(reqs, 1), parts[2], "502");
  json_decref(reqs);
  cp_text_split_free(parts, n);
}

/* ---- login check ---------------------------------------------------------------------------- */

static void login_check_reads_the_user(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  testserver_script(&f->ts, "[{\"json\": {\"data\": {\"id\": \"2244994945\", \"name\": \"X "
                            "Dev\", \"username\": \"XDevelopers\"}}}]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_non_null(strstr(res.message, "@XDevelopers"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(req_path(r), "/2/users/me?user.fields=username");
  assert_signed(f, r);
  json_decref(reqs);

  testserver_script(&f->ts, "[{\"status\": 401, \"json\": {\"title\": \"Unauthorized\", "
                            "\"type\": \"about:blank\", \"status\": 401, \"detail\": "
                            "\"Unauthorized\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "login check: HTTP 401"));
  assert_null(strstr(f->mh.log, CS));
}

/* ---- config --------------------------------------------------------------------------------- */

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_key[] = {"type", "x", NULL};
  assert_int_equal(mock_host_connect(&f->mh, no_key), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "[channel test] needs consumer_key_file or consumer_key_env"));
  assert_int_equal(connect_x(f, "api_base", "http://api.example.com", NULL), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] api_base: "
                                    "'http://api.example.com' must be an https:// URL"));
  assert_int_equal(connect_x(f, "upload_base", "not a url", NULL), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "upload_base: 'not a url' is not a URL"));
  assert_int_equal(connect_x(f, "max_chars", "lots", NULL), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "max_chars: 'lots' is not a number"));
  const char *env_missing[] = {"consumer_key_env", "CP_TEST_SURELY_UNSET_X_KEY", NULL};
  assert_int_equal(mock_host_connect(&f->mh, env_missing), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "CP_TEST_SURELY_UNSET_X_KEY"));
  assert_null(f->mh.instance);

  /* Secrets from the environment work as well as from files; unknown keys are warned about. */
  setenv("CP_TEST_X_CK", CK, 1);
  const char *kv[] = {"consumer_key_env",
                      "CP_TEST_X_CK",
                      "consumer_secret_file",
                      f->files[1],
                      "access_token_file",
                      f->files[2],
                      "access_token_secret_file",
                      f->files[3],
                      "api_base",
                      f->api,
                      "visibility",
                      "public",
                      NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  assert_non_null(strstr(f->mh.log, "unknown key 'visibility'"));
  unsetenv("CP_TEST_X_CK");
  testserver_script(&f->ts, "[{\"json\": {\"data\": {\"id\": \"1\", \"username\": \"u\"}}}]");
  assert_int_equal(mock_host_login_check(&f->mh).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_signed(f, json_array_get(reqs, 0));
  json_decref(reqs);
}

/* ---- validate ------------------------------------------------------------------------------- */

static int n_errors, n_warnings;
static char diags[2048];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  n_warnings += !error;
  snprintf(diags + strlen(diags), sizeof diags - strlen(diags), "%s\n", msg);
}

static int validate(struct fixture *f, const struct cp_post *post) {
  n_errors = n_warnings = 0;
  diags[0] = '\0';
  return cp_connector_x.validate(f->mh.instance, post, on_diag, NULL);
}

static void validate_checks_without_io(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  char text[400];
  memset(text, 'a', 281);
  text[281] = '\0';
  struct cp_post post = text_post("00000000000000d1", text);
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "281 weighted characters, X allows 280"));
  text[280] = '\0';
  assert_int_equal(validate(f, &post), 0);
  /* URLs count 23 whatever their length; CJK counts 2. */
  snprintf(text, sizeof text, "https://example.org/%0200d", 0);
  assert_int_equal(validate(f, &post), 0);
  post.text = "\xe6\x97\xa5\xe6\x9c\xac"; /* 日本: 4 */
  assert_int_equal(validate(f, &post), 0);
  post.text = thread_text;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  post.thread = true;
  assert_int_equal(validate(f, &post), 0);
  post.thread = false;
  post.text = "";
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "no text and no media"));

  /* Media: count, kinds, alt text length. */
  static char alt[1100];
  memset(alt, 'x', 1001);
  alt[1001] = '\0';
  struct cp_media five[] = {
      {"a.png", NULL}, {"b.jpg", NULL}, {"c.jpeg", NULL}, {"d.webp", NULL}, {"e.png", NULL}};
  post.text = "media";
  post.media = five;
  post.n_media = 4;
  assert_int_equal(validate(f, &post), 0);
  post.n_media = 5;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "5 media, X allows at most 4"));
  struct cp_media mixed[] = {{"a.png", NULL}, {"https://example.org/anim.GIF?x=1", NULL}};
  post.media = mixed;
  post.n_media = 2;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "1 GIF, or 1 video"));
  struct cp_media pdf[] = {{"flyer.pdf", NULL}};
  post.media = pdf;
  post.n_media = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "media 1 (flyer.pdf)"));
  struct cp_media noext[] = {{"https://example.org/image?id=4", NULL}};
  post.media = noext;
  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_warnings, 1);
  struct cp_media longalt[] = {{"a.png", alt}};
  post.media = longalt;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "alt text of 1001 characters, X allows 1000"));
  alt[1000] = '\0';
  assert_int_equal(validate(f, &post), 0);
  struct cp_media video[] = {{"clip.mp4", "a clip"}};
  post.media = video;
  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_warnings, 1); /* alt text is not sent for videos */

  /* Options. */
  post.n_media = 0;
  const struct cp_post_option bad[] = {{"reply_to", "yesterday's post"},
                                       {"quote", "https://example.org/status/12"},
                                       {"reply_settings", "friends"}};
  post.options = bad;
  post.n_options = 3;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_int_equal(n_errors, 3);
  assert_non_null(strstr(diags, "reply_to = yesterday's post"));
  assert_non_null(strstr(diags, "reply_settings = friends"));
  const struct cp_post_option good[] = {{"reply_to", "https://twitter.com/a/status/20"},
                                        {"quote", "21"},
                                        {"reply_settings", "following"}};
  post.options = good;
  assert_int_equal(validate(f, &post), 0);
  post.media = five;
  post.n_media = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "quote and media"));
  assert_non_null(cp_connector_x.post_options);

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0); /* nothing was sent */
  json_decref(reqs);
}

static void max_chars_overrides_the_limit(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, "max_chars", "25000", NULL), 0);
  struct cp_post post = text_post("00000000000000d2", thread_text);
  assert_int_equal(validate(f, &post), 0);
  /* Sent whole, as one post. */
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"601\"}}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_part_create(f, json_array_get(reqs, 0), thread_text, NULL);
  json_decref(reqs);

  mock_host_close(&f->mh);
  mock_host_init(&f->mh, &cp_connector_x);
  assert_int_equal(connect_x(f, "max_chars", "100", NULL), 0);
  post.text = "This text has more than one hundred characters, so with max_chars = 100 it is "
              "too long for one post on this channel.";
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "X allows 100"));
}

/* ---- engagement ----------------------------------------------------------------------------- */

#define TWEET "1445880548472328192"
#define LOOKUP "/2/tweets/" TWEET "?tweet.fields=public_metrics"

/* Runs the connector's engagement read like the host does and the loop until it completes;
 * asserts it was accepted, completed exactly once and not from inside the call. */
static struct cp_result engagement(struct fixture *f, const char *remote_id,
                                   const char *remote_url) {
  struct mock_host *mh = &f->mh;
  struct cp_publish_req req = {
      .host = &mh->host, .attempt = 1, .idempotency_key = "", .host_data = mh, .progress = ""};
  int before = mh->completions;
  mh->in_publish = true;
  int rc = cp_connector_x.engagement(mh->instance, remote_id, remote_url, &req);
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

/* The recorded requests are exactly one signed GET of the post's public metrics. */
static void assert_lookup(struct fixture *f) {
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(req_path(r), LOOKUP);
  assert_signed(f, r); /* the query is part of the signature */
  assert_string_equal(testserver_header(r, "Accept"), "application/json");
  assert_null(testserver_header(r, "Content-Type"));
  assert_string_equal(json_string_value(json_object_get(r, "body")), "");
  json_decref(reqs);
}

static void engagement_reads_public_metrics(void **state) {
  struct fixture *f = *state;
  assert_true(cp_connector_x.caps & CP_CAP_ENGAGEMENT);
  assert_int_equal(connect_x(f, NULL), 0);
  /* What publish reported is what engagement gets. */
  struct cp_post post = text_post("0123456789abcdef", "Launch day!");
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"data\": {\"id\": \"" TWEET "\", "
                            "\"text\": \"Launch day!\"}}}]");
  struct cp_result pub = mock_host_publish(&f->mh, &post);
  assert_int_equal(pub.outcome, CP_OUTCOME_OK);

  testserver_script(
      &f->ts, "[{\"path\": \"/2/tweets/" TWEET "\", \"json\": {\"data\": {\"id\": \"" TWEET "\", "
              "\"text\": \"Launch day!\", \"edit_history_tweet_ids\": [\"" TWEET "\"], "
              "\"public_metrics\": {\"retweet_count\": 4, \"reply_count\": 2, \"like_count\": 31, "
              "\"quote_count\": 1, \"bookmark_count\": 3, \"impression_count\": 1520}}}}]");
  spy.n = 0;
  struct cp_result res = engagement(f, pub.remote_id, pub.remote_url);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_true(res.has_engagement);
  assert_int_equal(res.http_status, 200);
  assert_int_equal(res.replies, 2);
  assert_int_equal(res.reposts, 4);
  assert_int_equal(res.likes, 31);
  assert_int_equal(res.quotes, 1);
  assert_int_equal(res.views, 1520);
  assert_lookup(f);
  assert_int_equal(spy.n, 1);

  /* Counts X leaves out (older answers have no impression_count) are -1, not 0. */
  testserver_script(&f->ts, "[{\"json\": {\"data\": {\"id\": \"" TWEET "\", \"public_metrics\": "
                            "{\"retweet_count\": 0, \"reply_count\": 0, \"like_count\": null}}}}]");
  res = engagement(f, TWEET, "");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_true(res.has_engagement);
  assert_int_equal(res.replies, 0);
  assert_int_equal(res.reposts, 0);
  assert_int_equal(res.likes, -1);
  assert_int_equal(res.quotes, -1);
  assert_int_equal(res.views, -1);
  assert_lookup(f);
  /* Without public_metrics at all: every count unknown. */
  testserver_script(&f->ts, "[{\"json\": {\"data\": {\"id\": \"" TWEET "\", \"text\": \"x\"}}}]");
  res = engagement(f, TWEET, "");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.replies, -1);
  assert_int_equal(res.views, -1);
  assert_null(strstr(f->mh.log, CS));
  assert_null(strstr(f->mh.log, AS));
}

struct eng_answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int err;
  int64_t retry_at_ms;
  const char *message; /* substring */
};

static const struct eng_answer engagement_answers[] = {
    {"[{\"status\": 401, \"json\": {\"title\": \"Unauthorized\", \"type\": \"about:blank\", "
     "\"status\": 401, \"detail\": \"Unauthorized\"}}]",
     CP_OUTCOME_AUTH, 401, 0, 0, "engagement of post " TWEET ": HTTP 401: Unauthorized"},
    /* An access level without post lookup: PERMANENT, not AUTH (which would pause the
     * channel's posts). */
    {"[{\"status\": 403, \"json\": {\"client_id\": \"1\", \"detail\": \"When authenticating "
     "requests to the Twitter API v2 endpoints, you must use keys and tokens from a Twitter "
     "developer App that is attached to a Project.\", \"reason\": \"client-not-enrolled\", "
     "\"title\": \"Client Forbidden\", \"type\": "
     "\"https://api.twitter.com/2/problems/client-forbidden\", \"required_enrollment\": "
     "\"Appropriate Level of API Access\"}}]",
     CP_OUTCOME_PERMANENT, 403, 0, 0,
     "HTTP 403: the app may not look posts up (it needs a project and an X API access level with "
     "post lookup): When authenticating"},
    {"[{\"status\": 429, \"headers\": {\"x-rate-limit-limit\": \"15\", \"x-rate-limit-remaining\": "
     "\"0\", \"x-rate-limit-reset\": \"1700000600\"}, \"json\": {\"title\": \"Too Many Requests\", "
     "\"detail\": \"Too Many Requests\", \"type\": \"about:blank\", \"status\": 429}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, 1700000600000LL, "15-minute limit reached"},
    /* A deleted post: 200 with only errors[]. */
    {"[{\"json\": {\"errors\": [{\"value\": \"" TWEET "\", \"detail\": \"Could not find tweet "
     "with id: [" TWEET "].\", \"title\": \"Not Found Error\", \"resource_type\": \"tweet\", "
     "\"parameter\": \"id\", \"resource_id\": \"" TWEET "\", \"type\": "
     "\"https://api.twitter.com/2/problems/resource-not-found\"}]}}]",
     CP_OUTCOME_PERMANENT, 200, 0, 0, "the post was deleted (Could not find tweet"},
    {"[{\"status\": 404, \"json\": {\"title\": \"Not Found Error\", \"type\": \"about:blank\", "
     "\"status\": 404, \"detail\": \"Not Found\"}}]",
     CP_OUTCOME_PERMANENT, 404, 0, 0, "(the post was deleted)"},
    {"[{\"json\": {\"errors\": [{\"value\": \"" TWEET "\", \"detail\": \"Sorry, you are not "
     "authorized to see the Tweet with id: [" TWEET "].\", \"title\": \"Authorization Error\", "
     "\"resource_type\": \"tweet\", \"parameter\": \"id\", \"type\": "
     "\"https://api.twitter.com/2/problems/not-authorized-for-resource\"}]}}]",
     CP_OUTCOME_PERMANENT, 200, 0, 0, "X does not show the post"},
    {"[{\"status\": 503, \"json\": {\"title\": \"Service Unavailable\", \"detail\": \"Service "
     "Unavailable\", \"type\": \"about:blank\", \"status\": 503}}]",
     CP_OUTCOME_RETRY, 503, 0, 0, "HTTP 503: Service Unavailable"},
    /* A read whose answer got lost changed nothing: RETRY, not UNKNOWN. */
    {"[{\"reset\": true, \"repeat\": true}]", CP_OUTCOME_RETRY, 0, -ECONNRESET, 0,
     "engagement of post " TWEET ": "},
    {"[{\"status\": 200, \"body\": \"{not json\"}]", CP_OUTCOME_RETRY, 200, CP_EPARSE, 0,
     "without the post in the answer"},
};

static void engagement_answers_give_their_outcome(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_x(f, NULL), 0);
  for (size_t i = 0; i < sizeof engagement_answers / sizeof engagement_answers[0]; i++) {
    const struct eng_answer *a = &engagement_answers[i];
    print_message("answer %zu: %.80s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = engagement(f, TWEET, "https://x.com/i/web/status/" TWEET);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_false(res.has_engagement);
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_at_ms);
    json_t *reqs = testserver_requests(&f->ts), *r;
    size_t k;
    assert_true(json_array_size(reqs) >= 1);
    json_array_foreach(reqs, k, r) {
      assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
      assert_string_equal(req_path(r), LOOKUP);
    }
    json_decref(reqs);
  }

  /* What publish cannot have reported is refused at once: no request, no completion. */
  testserver_script(&f->ts, "[]");
  struct cp_publish_req req = {.host = &f->mh.host,
                               .attempt = 1,
                               .idempotency_key = "",
                               .host_data = &f->mh,
                               .progress = ""};
  int before = f->mh.completions;
  assert_int_equal(cp_connector_x.engagement(f->mh.instance, "", "", &req), CP_EINVAL);
  assert_int_equal(cp_connector_x.engagement(f->mh.instance, "12/../../2/users/me", "", &req),
                   CP_EINVAL);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, before);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(publishes_a_post, setup, teardown),
      cmocka_unit_test_setup_teardown(post_options_reach_the_request, setup, teardown),
      cmocka_unit_test_setup_teardown(each_answer_gives_its_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(limit_headers_give_the_retry_time, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_is_a_reply_chain, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_resumes_without_reposting, setup, teardown),
      cmocka_unit_test_setup_teardown(images_upload_with_alt_text, setup, teardown),
      cmocka_unit_test_setup_teardown(gif_uploads_in_chunks_and_waits_for_processing, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(media_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_media_go_with_the_first_part, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_reads_the_user, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_without_io, setup, teardown),
      cmocka_unit_test_setup_teardown(max_chars_overrides_the_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_reads_public_metrics, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_answers_give_their_outcome, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the x connector is not built (CALPOST_CONNECTOR_X=OFF): skipped");
  return 0;
}
#endif
