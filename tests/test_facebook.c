// ctest-labels: connector
// ctest-connector: facebook
/* The Facebook Page connector against tests/support/testserver.py: the exact Graph API requests
 * (form fields decoded with libcurl, multipart parts split here), the error codes of the Graph
 * API's error object, throttling with the usage headers, code 2 after a post (UNKNOWN), photos
 * staged and attached with resume from saved progress, validation, configuration and the login
 * check. */
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
#include <openssl/hmac.h>

#include "calpost/err.h"
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_FACEBOOK

#define TOKEN "EAAB-page-t0ken-SECRET"
#define APP_SECRET "app-s3cret"
#define PAGE "1234567890"

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char tokfile[96];
  char secretfile[96];
  char base[128];
};

static void write_secret(const char *path, const char *value) {
  FILE *fp = fopen(path, "w");
  fprintf(fp, "%s\n", value);
  fclose(fp);
  assert_int_equal(chmod(path, 0600), 0);
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "", f->base, sizeof f->base);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-facebook-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->tokfile, sizeof f->tokfile, "%s/page.token", f->dir);
  snprintf(f->secretfile, sizeof f->secretfile, "%s/app.secret", f->dir);
  write_secret(f->tokfile, TOKEN);
  write_secret(f->secretfile, APP_SECRET);
  mock_host_init(&f->mh, &cp_connector_facebook);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  unlink(f->tokfile);
  unlink(f->secretfile);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void connect_page(struct fixture *f) {
  const char *kv[] = {"type",     "facebook",   "page_id", PAGE, "token_file",
                      f->tokfile, "graph_base", f->base,   NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static struct cp_post text_post(const char *text) {
  struct cp_post p = mock_post("0123456789abcdef", text);
  p.n_media = 0;
  return p;
}

/* ---- decoding what the server got ---------------------------------------------------------- */

/* The decoded value of field name in an x-www-form-urlencoded string, or NULL (free it). */
static char *form_get(const char *form, const char *name) {
  char *copy = strdup(form), *save = NULL, *found = NULL;
  for (char *pair = strtok_r(copy, "&", &save); pair && !found; pair = strtok_r(NULL, "&", &save)) {
    char *eq = strchr(pair, '=');
    if (!eq)
      continue;
    *eq = '\0';
    char *k = curl_easy_unescape(NULL, pair, 0, NULL);
    if (!strcmp(k, name)) {
      int len = 0;
      char *v = curl_easy_unescape(NULL, eq + 1, 0, &len);
      found = strndup(v, (size_t)len);
      curl_free(v);
    }
    curl_free(k);
  }
  free(copy);
  return found;
}

static size_t form_count(const char *form) {
  size_t n = *form ? 1 : 0;
  for (; *form; form++)
    n += *form == '&';
  return n;
}

static void assert_field(const char *form, const char *name, const char *want) {
  char *got = form_get(form, name);
  if (!want) {
    if (got)
      fail_msg("field %s is \"%s\", expected none", name, got);
    return;
  }
  if (!got)
    fail_msg("field %s missing in %s", name, form);
  assert_string_equal(got, want);
  free(got);
}

static unsigned char *b64_decode(const char *b64, size_t *len) {
  size_t n = strlen(b64);
  unsigned char *out = malloc(n / 4 * 3 + 4);
  int r = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
  assert_true(r >= 0);
  size_t pad = 0;
  while (n > 0 && b64[n - 1] == '=') {
    pad++;
    n--;
  }
  *len = (size_t)r - pad;
  return out;
}

/* One part of a multipart/form-data body. */
struct part {
  char name[64];
  char filename[64];
  char type[64];
  const unsigned char *data;
  size_t len;
};

static const unsigned char *find(const unsigned char *hay, size_t n, const char *needle,
                                 size_t nl) {
  return memmem(hay, n, needle, nl);
}

/* Splits body at the boundary from the request's Content-Type; returns the number of parts. */
static size_t split_multipart(json_t *r, unsigned char **raw, struct part *parts, size_t max) {
  const char *ct = testserver_header(r, "Content-Type");
  assert_non_null(ct);
  assert_true(!strncmp(ct, "multipart/form-data", 19));
  const char *b = strstr(ct, "boundary=");
  assert_non_null(b);
  char delim[128];
  snprintf(delim, sizeof delim, "\r\n--%s", b + 9);
  size_t len;
  *raw = b64_decode(json_string_value(json_object_get(r, "body_b64")), &len);
  const unsigned char *p = find(*raw, len, delim + 2, strlen(delim) - 2), *end = *raw + len;
  size_t n = 0;
  assert_non_null(p);
  p += strlen(delim) - 2;
  while (p < end && n < max && !(p[0] == '-' && p[1] == '-')) {
    p += 2; /* CRLF after the boundary */
    const unsigned char *hend = find(p, (size_t)(end - p), "\r\n\r\n", 4);
    assert_non_null(hend);
    char hdrs[512];
    snprintf(hdrs, sizeof hdrs, "%.*s", (int)(hend - p), p);
    struct part *pt = &parts[n++];
    memset(pt, 0, sizeof *pt);
    const char *nm = strstr(hdrs, "name=\"");
    assert_non_null(nm);
    snprintf(pt->name, sizeof pt->name, "%.*s", (int)strcspn(nm + 6, "\""), nm + 6);
    const char *fn = strstr(hdrs, "filename=\"");
    if (fn)
      snprintf(pt->filename, sizeof pt->filename, "%.*s", (int)strcspn(fn + 10, "\""), fn + 10);
    const char *ty = strcasestr(hdrs, "Content-Type: ");
    if (ty)
      snprintf(pt->type, sizeof pt->type, "%.*s", (int)strcspn(ty + 14, "\r\n"), ty + 14);
    pt->data = hend + 4;
    const unsigned char *next = find(pt->data, (size_t)(end - pt->data), delim, strlen(delim));
    assert_non_null(next);
    pt->len = (size_t)(next - pt->data);
    p = next + strlen(delim);
  }
  return n;
}

static const struct part *part_named(const struct part *parts, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(parts[i].name, name))
      return &parts[i];
  return NULL;
}

static void assert_part_text(const struct part *parts, size_t n, const char *name,
                             const char *want) {
  const struct part *p = part_named(parts, n, name);
  if (!want) {
    assert_null(p);
    return;
  }
  if (!p)
    fail_msg("part %s missing", name);
  assert_int_equal(p->len, strlen(want));
  assert_memory_equal(p->data, want, p->len);
}

static json_t *requests(struct fixture *f, size_t expect) {
  json_t *reqs = testserver_requests(&f->ts);
  if (json_array_size(reqs) != expect)
    fail_msg("%zu requests, expected %zu", json_array_size(reqs), expect);
  return reqs;
}

static const char *req_str(json_t *r, const char *key) {
  return json_string_value(json_object_get(r, key));
}

/* ---- text posts ----------------------------------------------------------------------------- */

static void text_post_is_the_documented_request(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  const char *text = "Read https://example.org/launch?a=1&b=2 today \xe2\x9c\xa8 100% + more";
  struct cp_post post = text_post(text);
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" PAGE "_555\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, PAGE "_555");
  assert_string_equal(res.remote_url, "https://www.facebook.com/" PAGE "_555");

  json_t *reqs = requests(f, 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(req_str(r, "method"), "POST");
  assert_string_equal(req_str(r, "path"), "/v24.0/" PAGE "/feed");
  assert_string_equal(testserver_header(r, "Content-Type"), "application/x-www-form-urlencoded");
  assert_null(testserver_header(r, "Authorization"));
  const char *body = req_str(r, "body");
  assert_int_equal(form_count(body), 3);
  assert_field(body, "message", text);
  assert_field(body, "link", "https://example.org/launch?a=1&b=2");
  assert_field(body, "access_token", TOKEN);
  assert_field(body, "appsecret_proof", NULL);
  json_decref(reqs);
  assert_int_equal(f->mh.progress_saves, 0);
  assert_null(strstr(f->mh.log, TOKEN));
}

static void link_option_overrides_the_first_url(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  struct cp_post_option opts[] = {{"link", "none"}};
  struct cp_post post = text_post("no preview for https://example.org/x");
  post.options = opts;
  post.n_options = 1;
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" PAGE "_1\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f, 1);
  assert_field(req_str(json_array_get(reqs, 0), "body"), "link", NULL);
  json_decref(reqs);

  opts[0].value = "https://shop.example.com/item?id=7";
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" PAGE "_2\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  reqs = requests(f, 1);
  assert_field(req_str(json_array_get(reqs, 0), "body"), "link",
               "https://shop.example.com/item?id=7");
  json_decref(reqs);

  /* No URL in the text, no option: no link. */
  struct cp_post plain = text_post("just words");
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" PAGE "_3\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &plain).outcome, CP_OUTCOME_OK);
  reqs = requests(f, 1);
  assert_field(req_str(json_array_get(reqs, 0), "body"), "link", NULL);
  assert_field(req_str(json_array_get(reqs, 0), "body"), "message", "just words");
  json_decref(reqs);
}

static void app_secret_adds_the_proof_and_version_the_path(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {
      "page_id",         PAGE,          "token_file", f->tokfile, "graph_base", f->base,
      "app_secret_file", f->secretfile, "version",    "v25.0",    NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  unsigned char md[32];
  unsigned int mdlen = 0;
  char proof[65];
  HMAC(EVP_sha256(), APP_SECRET, (int)strlen(APP_SECRET), (const unsigned char *)TOKEN,
       strlen(TOKEN), md, &mdlen);
  for (unsigned i = 0; i < mdlen; i++)
    sprintf(proof + 2 * i, "%02x", md[i]);

  struct cp_post post = text_post("proved");
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" PAGE "_9\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f, 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(req_str(r, "path"), "/v25.0/" PAGE "/feed");
  assert_field(req_str(r, "body"), "appsecret_proof", proof);
  json_decref(reqs);
  assert_null(strstr(f->mh.log, APP_SECRET));
}

/* ---- errors --------------------------------------------------------------------------------- */

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring */
};

#define GRAPH_ERR(code, sub, msg)                                                                  \
  "\"json\": {\"error\": {\"message\": \"" msg                                                     \
  "\", \"type\": \"OAuthException\", \"code\": " #code ", \"error_subcode\": " #sub                \
  ", \"fbtrace_id\": \"AbCdEf123\"}}"

static const struct answer answers[] = {
    {"[{\"status\": 400, " GRAPH_ERR(190, 463,
                                     "Error validating access token: Session has "
                                     "expired") "}]",
     CP_OUTCOME_AUTH, 400, -1, "get a new one"},
    {"[{\"status\": 400, " GRAPH_ERR(102, 0, "Session key invalid") "}]", CP_OUTCOME_AUTH, 400, -1,
     "invalid or expired"},
    {"[{\"status\": 403, " GRAPH_ERR(200, 0, "(#200) Requires pages_manage_posts permission") "}]",
     CP_OUTCOME_AUTH, 403, -1, "lacks a permission"},
    /* Throttling: the usage headers say when access comes back. */
    {"[{\"status\": 400, \"headers\": {\"X-App-Usage\": \"{\\\"call_count\\\":100,"
     "\\\"total_cputime\\\":12,\\\"total_time\\\":20}\"}, " GRAPH_ERR(4, 0,
                                                                      "(#4) Application "
                                                                      "request limit "
                                                                      "reached") "}]",
     CP_OUTCOME_RATE_LIMITED, 400, -1, "backing off"},
    {"[{\"status\": 400, \"headers\": {\"X-Page-Usage\": \"{\\\"call_count\\\":100,"
     "\\\"total_cputime\\\":5,\\\"total_time\\\":5,\\\"estimated_time_to_regain_access\\\":5}\"},"
     " " GRAPH_ERR(32, 0, "(#32) Page request limit reached") "}]",
     CP_OUTCOME_RATE_LIMITED, 400, 5 * 60000, "usage headers"},
    {"[{\"status\": 400, \"headers\": {\"X-Business-Use-Case-Usage\": \"{\\\"" PAGE "\\\":"
     "[{\\\"type\\\":\\\"pages\\\",\\\"call_count\\\":100,\\\"total_cputime\\\":1,"
     "\\\"total_time\\\":1,\\\"estimated_time_to_regain_access\\\":30}]}\", \"X-App-Usage\": "
     "\"{\\\"call_count\\\":5,\\\"estimated_time_to_regain_access\\\":2}\"}, " GRAPH_ERR(
         80001, 0, "There have been too many calls to this Page account") "}]",
     CP_OUTCOME_RATE_LIMITED, 400, 30 * 60000, "throttling"},
    {"[{\"status\": 400, " GRAPH_ERR(17, 2446079, "(#17) User request limit reached") "}]",
     CP_OUTCOME_RATE_LIMITED, 400, -1, "[code 17/2446079, fbtrace_id AbCdEf123]"},
    {"[{\"status\": 400, " GRAPH_ERR(613, 0,
                                     "Calls to this api have exceeded the rate limit.") "}]",
     CP_OUTCOME_RATE_LIMITED, 400, -1, "code 613"},
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"120\"}, " GRAPH_ERR(4, 0, "limit") "}]",
     CP_OUTCOME_RATE_LIMITED, 429, 120000, "code 4"},
    /* A server error after the post arrived: it may exist. */
    {"[{\"status\": 500, " GRAPH_ERR(2, 0,
                                     "An unexpected error has occurred. Please retry your "
                                     "request later.") "}]",
     CP_OUTCOME_UNKNOWN, 500, -1, "may have been published"},
    {"[{\"status\": 500, " GRAPH_ERR(1, 0, "An unknown error occurred") "}]", CP_OUTCOME_UNKNOWN,
     500, -1, "check the Page"},
    {"[{\"status\": 503, \"body\": \"\"}]", CP_OUTCOME_RETRY, 503, -1, "HTTP 503"},
    {"[{\"status\": 400, " GRAPH_ERR(506, 0, "(#506) Duplicate status message") "}]",
     CP_OUTCOME_PERMANENT, 400, -1, "duplicate post"},
    {"[{\"status\": 400, " GRAPH_ERR(368, 1390008,
                                     "It looks like you were misusing this "
                                     "feature") "}]",
     CP_OUTCOME_PERMANENT, 400, -1, "blocked"},
    {"[{\"status\": 400, " GRAPH_ERR(100, 0, "(#100) Invalid parameter") "}]", CP_OUTCOME_PERMANENT,
     400, -1, "refused a parameter: HTTP 400: (#100) Invalid parameter"},
    {"[{\"status\": 400, \"body\": \"<html>bad gateway</html>\"}]", CP_OUTCOME_PERMANENT, 400, -1,
     "HTTP 400"},
    {"[{\"reset\": true}]", CP_OUTCOME_UNKNOWN, 0, -1, "reset"},
};

static void each_error_gives_its_outcome(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  struct cp_post post = text_post("hello fans");

  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message \"%s\" lacks \"%s\"", res.message, a->message);
    assert_string_equal(res.remote_id, "");
    json_t *reqs = requests(f, 1); /* never repeated on its own */
    json_decref(reqs);
  }
  assert_null(strstr(f->mh.log, TOKEN));
}

static void answer_without_id_is_still_published(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  struct cp_post post = text_post("hello");
  testserver_script(&f->ts, "[{\"status\": 200, \"body\": \"not json\"}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "");
  assert_non_null(strstr(f->mh.log, "without a post id"));
}

/* ---- photos --------------------------------------------------------------------------------- */

static void assert_staging(json_t *r, const char *file, const char *type, const char *alt) {
  struct part parts[8];
  unsigned char *raw = NULL;
  assert_string_equal(req_str(r, "method"), "POST");
  assert_string_equal(req_str(r, "path"), "/v24.0/" PAGE "/photos");
  size_t n = split_multipart(r, &raw, parts, 8);
  const struct part *src = part_named(parts, n, "source");
  assert_non_null(src);
  assert_string_equal(src->filename, file);
  assert_string_equal(src->type, type);
  unsigned char bytes[256];
  FILE *fp = fopen(mock_media_path(file), "rb");
  size_t blen = fread(bytes, 1, sizeof bytes, fp);
  fclose(fp);
  assert_int_equal(src->len, blen);
  assert_memory_equal(src->data, bytes, blen);
  assert_part_text(parts, n, "published", "false");
  assert_part_text(parts, n, "alt_text_custom", alt);
  assert_part_text(parts, n, "access_token", TOKEN);
  assert_int_equal(n, alt ? 4 : 3);
  free(raw);
}

static void photos_are_staged_then_attached(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  char png[512], gif[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  struct cp_media media[] = {{png, "A red pixel"}, {gif, NULL}};
  struct cp_post post = text_post("two pixels, see https://example.org/p");
  post.media = media;
  post.n_media = 2;
  testserver_script(&f->ts, "[{\"path\": \"/v24.0/" PAGE "/photos\", \"json\": {\"id\": "
                            "\"111\"}}, {\"path\": \"/v24.0/" PAGE "/photos\", \"json\": "
                            "{\"id\": \"222\"}}, {\"path\": \"/v24.0/" PAGE "/feed\", \"json\": "
                            "{\"id\": \"" PAGE "_777\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(res.message, "");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, PAGE "_777");

  json_t *reqs = requests(f, 3);
  assert_staging(json_array_get(reqs, 0), "pixel.png", "image/png", "A red pixel");
  assert_staging(json_array_get(reqs, 1), "pixel.gif", "image/gif", NULL);
  const char *body = req_str(json_array_get(reqs, 2), "body");
  assert_int_equal(form_count(body), 4);
  assert_field(body, "message", "two pixels, see https://example.org/p");
  assert_field(body, "attached_media[0]", "{\"media_fbid\":\"111\"}");
  assert_field(body, "attached_media[1]", "{\"media_fbid\":\"222\"}");
  assert_field(body, "link", NULL); /* photos, not a link preview */
  assert_field(body, "access_token", TOKEN);
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "photo1=111;photo2=222");
}

static void failed_staging_resumes_without_staging_again(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  char png[512], gif[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  struct cp_media media[] = {{png, NULL}, {gif, NULL}};
  struct cp_post post = text_post("");
  post.media = media;
  post.n_media = 2;

  /* Code 2 while staging: an unpublished photo cannot duplicate a post, so a plain retry. */
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"111\"}}, {\"status\": 500, " GRAPH_ERR(
                                2, 0, "An unexpected error has occurred.") "}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_non_null(strstr(res.message, "uploading photo 2"));
  assert_string_equal(f->mh.progress, "photo1=111");
  json_decref(requests(f, 2));

  f->mh.attempt = 2;
  testserver_script(&f->ts, "[{\"path\": \"/v24.0/" PAGE "/photos\", \"json\": {\"id\": "
                            "\"222\"}}, {\"path\": \"/v24.0/" PAGE "/feed\", \"json\": "
                            "{\"id\": \"" PAGE "_8\"}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f, 2);
  assert_staging(json_array_get(reqs, 0), "pixel.gif", "image/gif", NULL);
  const char *body = req_str(json_array_get(reqs, 1), "body");
  assert_field(body, "message", NULL); /* no text: photos only */
  assert_field(body, "attached_media[0]", "{\"media_fbid\":\"111\"}");
  assert_field(body, "attached_media[1]", "{\"media_fbid\":\"222\"}");
  json_decref(reqs);
}

static void bad_photo_is_permanent(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  char bad[512];
  snprintf(bad, sizeof bad, "%s", mock_media_path("not-an-image.png"));
  struct cp_media media[] = {{bad, NULL}};
  struct cp_post post = text_post("html in disguise");
  post.media = media;
  post.n_media = 1;
  testserver_script(&f->ts, "[]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "not-an-image.png"));
  json_decref(requests(f, 0)); /* nothing reached Facebook */
}

/* ---- validation and configuration ---------------------------------------------------------- */

static int n_errors, n_warnings;
static char diags[2048];
static void on_diag(void *arg, bool error, const char *msg) {
  (void)arg;
  n_errors += error;
  n_warnings += !error;
  strncat(diags, msg, sizeof diags - strlen(diags) - 2);
  strcat(diags, "\n");
}

static int validate(struct fixture *f, const struct cp_post *post) {
  n_errors = n_warnings = 0;
  diags[0] = '\0';
  return cp_connector_facebook.validate(f->mh.instance, post, on_diag, NULL);
}

static void validate_checks_without_io(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  size_t max = 63206;
  char *long_text = malloc(max + 2);
  memset(long_text, 'a', max + 1);
  long_text[max + 1] = '\0';
  struct cp_post post = text_post(long_text);
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "63207 characters, channel test allows 63206"));
  long_text[max] = '\0';
  assert_int_equal(validate(f, &post), 0);
  free(long_text);

  post.text = "";
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "no text and no photos"));

  struct cp_media media[11];
  for (int i = 0; i < 11; i++)
    media[i] = (struct cp_media){"img/p.jpeg", NULL};
  post.text = "pics";
  post.media = media;
  post.n_media = 10;
  assert_int_equal(validate(f, &post), 0);
  post.n_media = 11;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "at most 10"));
  media[0].src = "clip.MP4";
  post.n_media = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "media 1 (clip.MP4)"));
  assert_non_null(strstr(diags, "photos only"));

  struct cp_post_option opts[] = {{"link", "example.org"}};
  post.n_media = 0;
  post.options = opts;
  post.n_options = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "link = example.org"));
  opts[0].value = "https://example.org";
  assert_int_equal(validate(f, &post), 0);
  media[0].src = "a.png";
  post.n_media = 1;
  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_warnings, 1); /* the link gives way to the photo */

  json_decref(requests(f, 0));
  assert_string_equal(cp_connector_facebook.post_options[0], "link");
  assert_null(cp_connector_facebook.post_options[1]);
}

static void max_chars_lowers_the_limit(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"page_id", PAGE, "token_file", f->tokfile, "max_chars", "5", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("sixsix");
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "6 characters, channel test allows 5 (max_chars)"));
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_page[] = {"token_file", f->tokfile, NULL};
  const char *bad_page[] = {"page_id", "my-page", "token_file", f->tokfile, NULL};
  const char *no_token[] = {"page_id", PAGE, NULL};
  const char *bad_base[] = {
      "page_id", PAGE, "token_file", f->tokfile, "graph_base", "http://graph.example.org", NULL};
  const char *bad_version[] = {"page_id", PAGE, "token_file", f->tokfile, "version", "24", NULL};
  const char *missing_secret[] = {
      "page_id", PAGE, "token_file", f->tokfile, "app_secret_file", "/nonexistent/app.secret",
      NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_page), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'page_id"));
  assert_int_equal(mock_host_connect(&f->mh, bad_page), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] page_id: 'my-page'"));
  assert_int_equal(mock_host_connect(&f->mh, no_token), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "token_file = PATH or token_env"));
  assert_int_equal(mock_host_connect(&f->mh, bad_base), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] graph_base"));
  assert_int_equal(mock_host_connect(&f->mh, bad_version), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] version: '24'"));
  assert_int_equal(mock_host_connect(&f->mh, missing_secret), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "/nonexistent/app.secret"));
  assert_null(f->mh.instance);
  assert_null(strstr(f->mh.log, TOKEN));
}

/* ---- login check ---------------------------------------------------------------------------- */

static void login_check_asks_who_the_token_is(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" PAGE "\", \"name\": \"Acme Bakery\"}}]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_non_null(strstr(res.message, "Acme Bakery"));
  json_t *reqs = requests(f, 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(req_str(r, "method"), "GET");
  const char *path = req_str(r, "path");
  assert_true(!strncmp(path, "/v24.0/me?", 10));
  assert_int_equal(form_count(path + 10), 2);
  assert_field(path + 10, "fields", "id,name");
  assert_field(path + 10, "access_token", TOKEN);
  json_decref(reqs);

  /* A user token answers with the user. */
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"99\", \"name\": \"Jane Admin\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "not to Page " PAGE));

  testserver_script(&f->ts, "[{\"status\": 400, " GRAPH_ERR(190, 460,
                                                            "The session has been "
                                                            "invalidated") "}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "code 190/460"));
  assert_null(strstr(f->mh.log, TOKEN));
}

/* ---- engagement ----------------------------------------------------------------------------- */

/* Runs the connector's engagement read like the host does and the loop until it completes;
 * asserts it was accepted, completed exactly once and not from inside the call. */
static struct cp_result engagement(struct fixture *f, const char *remote_id) {
  struct mock_host *mh = &f->mh;
  struct cp_publish_req req = {
      .host = &mh->host, .attempt = 1, .idempotency_key = "", .host_data = mh, .progress = ""};
  int before = mh->completions;
  mh->in_publish = true;
  int rc = cp_connector_facebook.engagement(mh->instance, remote_id, "", &req);
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

#define ENGAGEMENT_FIELDS                                                                          \
  "shares,reactions.summary(total_count).limit(0),comments.summary(total_count).limit(0)"

/* The one request of an engagement read: a GET of the post with the fields and the token. */
static void assert_post_get(struct fixture *f, const char *post_id, const char *proof) {
  char prefix[128];
  json_t *reqs = requests(f, 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(req_str(r, "method"), "GET");
  snprintf(prefix, sizeof prefix, "/v24.0/%s?", post_id);
  const char *path = req_str(r, "path");
  if (strncmp(path, prefix, strlen(prefix)))
    fail_msg("path %s, expected %s...", path, prefix);
  const char *query = path + strlen(prefix);
  assert_int_equal(form_count(query), proof ? 3 : 2);
  assert_field(query, "fields", ENGAGEMENT_FIELDS);
  assert_field(query, "access_token", TOKEN);
  assert_field(query, "appsecret_proof", proof);
  assert_null(testserver_header(r, "Authorization"));
  assert_string_equal(req_str(r, "body"), "");
  json_decref(reqs);
}

static void engagement_reads_the_counts(void **state) {
  struct fixture *f = *state;
  assert_true(cp_connector_facebook.caps & CP_CAP_ENGAGEMENT);
  connect_page(f);
  /* What the Graph API answers for a Page post (limit(0): no data, just the summaries). */
  testserver_script(&f->ts,
                    "[{\"path\": \"/v24.0/" PAGE "_555\", \"json\": {\"shares\": {\"count\": 7}, "
                    "\"reactions\": {\"data\": [], \"summary\": {\"total_count\": 42, "
                    "\"viewer_reaction\": \"NONE\"}}, \"comments\": {\"data\": [], \"summary\": "
                    "{\"order\": \"ranked\", \"total_count\": 5, \"can_comment\": true}}, "
                    "\"id\": \"" PAGE "_555\"}}]");
  struct cp_result res = engagement(f, PAGE "_555");
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_true(res.has_engagement);
  assert_int_equal(res.http_status, 200);
  assert_int_equal(res.likes, 42);
  assert_int_equal(res.replies, 5);
  assert_int_equal(res.reposts, 7);
  assert_int_equal(res.quotes, -1);
  assert_int_equal(res.views, -1);
  assert_post_get(f, PAGE "_555", NULL);
  assert_int_equal(f->mh.progress_saves, 0);

  /* No shares yet: Facebook leaves the field out, which is 0; a summary that is missing is -1. */
  testserver_script(&f->ts, "[{\"json\": {\"reactions\": {\"data\": [], \"summary\": "
                            "{\"total_count\": 0}}, \"comments\": {\"data\": []}, "
                            "\"id\": \"" PAGE "_556\"}}]");
  res = engagement(f, PAGE "_556");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.likes, 0);
  assert_int_equal(res.replies, -1);
  assert_int_equal(res.reposts, 0);
  assert_post_get(f, PAGE "_556", NULL);
  assert_null(strstr(f->mh.log, TOKEN));
}

static void engagement_sends_the_proof(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"page_id",         PAGE,          "token_file",
                      f->tokfile,        "graph_base",  f->base,
                      "app_secret_file", f->secretfile, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  unsigned char md[32];
  unsigned int mdlen = 0;
  char proof[65];
  HMAC(EVP_sha256(), APP_SECRET, (int)strlen(APP_SECRET), (const unsigned char *)TOKEN,
       strlen(TOKEN), md, &mdlen);
  for (unsigned i = 0; i < mdlen; i++)
    sprintf(proof + 2 * i, "%02x", md[i]);
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" PAGE "_8\"}}]");
  struct cp_result res = engagement(f, PAGE "_8");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.reposts, 0);
  assert_int_equal(res.likes, -1);
  assert_post_get(f, PAGE "_8", proof);
}

struct engagement_answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int err;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring */
};

static const struct engagement_answer engagement_answers[] = {
    {"[{\"status\": 400, " GRAPH_ERR(100, 33,
                                     "Unsupported get request. Object with ID '" PAGE
                                     "_77' does not exist, cannot be loaded due to missing "
                                     "permissions, or does not support this operation") "}]",
     CP_OUTCOME_PERMANENT, 400, 0, -1, "post " PAGE "_77: the post was deleted"},
    {"[{\"status\": 404, \"body\": \"\"}]", CP_OUTCOME_PERMANENT, 404, 0, -1,
     "post " PAGE "_77: the post was deleted: HTTP 404"},
    {"[{\"status\": 400, " GRAPH_ERR(190, 463, "Error validating access token") "}]",
     CP_OUTCOME_AUTH, 400, 0, -1, "get a new one"},
    /* A token that may post but not read: PERMANENT, not AUTH (which pauses the posts). */
    {"[{\"status\": 403, " GRAPH_ERR(10, 0,
                                     "(#10) This endpoint requires the 'pages_read_engagement' "
                                     "permission") "}]",
     CP_OUTCOME_PERMANENT, 403, 0, -1, "needs the pages_read_engagement permission"},
    {"[{\"status\": 400, \"headers\": {\"X-Page-Usage\": \"{\\\"call_count\\\":100,"
     "\\\"estimated_time_to_regain_access\\\":7}\"}, " GRAPH_ERR(32, 0,
                                                                 "(#32) Page request limit "
                                                                 "reached") "}]",
     CP_OUTCOME_RATE_LIMITED, 400, 0, 7 * 60000, "throttling"},
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"90\"}, " GRAPH_ERR(4, 0, "limit") "}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, 90000, "code 4"},
    /* A read that failed changed nothing: RETRY, never UNKNOWN. */
    {"[{\"status\": 500, " GRAPH_ERR(2, 0, "An unexpected error has occurred.") "}]",
     CP_OUTCOME_RETRY, 500, 0, -1, "code 2"},
    {"[{\"status\": 503, \"body\": \"<html>down</html>\"}]", CP_OUTCOME_RETRY, 503, 0, -1,
     "HTTP 503"},
    {"[{\"reset\": true, \"repeat\": true}]", CP_OUTCOME_RETRY, 0, -ECONNRESET, -1, "reset"},
    {"[{\"status\": 200, \"body\": \"<html>proxy</html>\"}]", CP_OUTCOME_RETRY, 200, CP_EPARSE, -1,
     "not a post"},
};

static void engagement_answers_give_their_outcome(void **state) {
  struct fixture *f = *state;
  connect_page(f);
  for (size_t i = 0; i < sizeof engagement_answers / sizeof engagement_answers[0]; i++) {
    const struct engagement_answer *a = &engagement_answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = engagement(f, PAGE "_77");
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_false(res.has_engagement);
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message \"%s\" lacks \"%s\"", res.message, a->message);
    assert_null(strstr(res.message, TOKEN));
    json_t *reqs = testserver_requests(&f->ts), *r;
    size_t k;
    assert_true(json_array_size(reqs) >= 1);
    json_array_foreach(reqs, k, r) {
      assert_string_equal(req_str(r, "method"), "GET");
      assert_true(!strncmp(req_str(r, "path"), "/v24.0/" PAGE "_77?", strlen(PAGE) + 11));
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
  assert_int_equal(cp_connector_facebook.engagement(f->mh.instance, "../me", "", &req), CP_EINVAL);
  assert_int_equal(cp_connector_facebook.engagement(f->mh.instance, "", "", &req), CP_EINVAL);
  assert_int_equal(cp_connector_facebook.engagement(f->mh.instance, "1_2_3", "", &req), CP_EINVAL);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, before);
  json_decref(requests(f, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(text_post_is_the_documented_request, setup, teardown),
      cmocka_unit_test_setup_teardown(link_option_overrides_the_first_url, setup, teardown),
      cmocka_unit_test_setup_teardown(app_secret_adds_the_proof_and_version_the_path, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(each_error_gives_its_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(answer_without_id_is_still_published, setup, teardown),
      cmocka_unit_test_setup_teardown(photos_are_staged_then_attached, setup, teardown),
      cmocka_unit_test_setup_teardown(failed_staging_resumes_without_staging_again, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(bad_photo_is_permanent, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_without_io, setup, teardown),
      cmocka_unit_test_setup_teardown(max_chars_lowers_the_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_asks_who_the_token_is, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_reads_the_counts, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_sends_the_proof, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_answers_give_their_outcome, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the facebook connector is not built (CALPOST_CONNECTOR_FACEBOOK=OFF): skipped");
  return 0;
}
#endif
