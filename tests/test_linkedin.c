// ctest-labels: connector
// ctest-connector: linkedin
/* The LinkedIn connector against tests/support/testserver.py: the exact Posts API request, the
 * little-text escaping of the commentary, image uploads through the Images API (with resume from
 * saved progress), each error class, validation, configuration and the login check. */
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

#ifdef CP_BUILTIN_LINKEDIN

#define TOKEN "li-t0ken-SECRET"
#define ORG "urn:li:organization:2414183"

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
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-linkedin-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->tokfile, sizeof f->tokfile, "%s/li.token", f->dir);
  FILE *fp = fopen(f->tokfile, "w");
  fputs(TOKEN "\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->tokfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_linkedin);
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

static void connect_as(struct fixture *f, const char *author) {
  const char *kv[] = {"type",     "linkedin", "author", author, "token_file",
                      f->tokfile, "api_base", f->base,  NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static struct cp_post text_post(const char *text) {
  struct cp_post p = mock_post("0123456789abcdef", text);
  p.n_media = 0;
  return p;
}

/* The headers every call to LinkedIn's REST API carries. */
static void assert_api_headers(json_t *r, const char *version) {
  char bearer[64];
  snprintf(bearer, sizeof bearer, "Bearer %s", TOKEN);
  assert_string_equal(testserver_header(r, "Authorization"), bearer);
  assert_string_equal(testserver_header(r, "LinkedIn-Version"), version);
  assert_string_equal(testserver_header(r, "X-Restli-Protocol-Version"), "2.0.0");
}

static json_t *body_json(json_t *r) {
  json_error_t jerr;
  json_t *b = json_loads(json_string_value(json_object_get(r, "body")), 0, &jerr);
  assert_non_null(b);
  return b;
}

/* The commentary of the one post request the server got. */
static char *sent_commentary(struct fixture *f) {
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *b = body_json(json_array_get(reqs, 0));
  char *c = strdup(json_string_value(json_object_get(b, "commentary")));
  json_decref(b);
  json_decref(reqs);
  return c;
}

static void text_post_is_the_documented_request(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  struct cp_post post = text_post("Launch day! \xf0\x9f\x9a\x80 \"quoted\"");
  testserver_script(&f->ts, "[{\"path\": \"/rest/posts\", \"status\": 201, \"headers\": "
                            "{\"x-restli-id\": \"urn:li:share:6844785523593134080\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);

  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_int_equal(res.http_status, 201);
  assert_string_equal(res.remote_id, "urn:li:share:6844785523593134080");
  assert_string_equal(res.remote_url,
                      "https://www.linkedin.com/feed/update/urn:li:share:6844785523593134080/");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
  assert_string_equal(json_string_value(json_object_get(r, "path")), "/rest/posts");
  assert_api_headers(r, "202605");
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  json_t *got = body_json(r);
  json_t *want =
      json_pack("{s:s, s:s, s:s, s:{s:s, s:[], s:[]}, s:s, s:b}", "author", ORG, "commentary",
                "Launch day! \xf0\x9f\x9a\x80 \"quoted\"", "visibility", "PUBLIC", "distribution",
                "feedDistribution", "MAIN_FEED", "targetEntities", "thirdPartyDistributionChannels",
                "lifecycleState", "PUBLISHED", "isReshareDisabledByAuthor", 0);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  json_decref(reqs);
  assert_int_equal(f->mh.progress_saves, 0); /* nothing to resume for a text post */
  assert_null(strstr(f->mh.log, TOKEN));
}

static void options_and_version_reach_the_request(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"author",     "urn:li:person:782bbtaQ",
                      "token_file", f->tokfile,
                      "api_base",   f->base,
                      "version",    "202611",
                      NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post_option opts[] = {{"visibility", "connections"}};
  struct cp_post post = text_post("for my network");
  post.options = opts;
  post.n_options = 1;
  testserver_script(&f->ts, "[{\"status\": 201, \"headers\": {\"x-restli-id\": "
                            "\"urn:li:share:1\"}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  json_t *r = json_array_get(reqs, 0);
  assert_api_headers(r, "202611");
  json_t *b = body_json(r);
  assert_string_equal(json_string_value(json_object_get(b, "visibility")), "CONNECTIONS");
  assert_string_equal(json_string_value(json_object_get(b, "author")), "urn:li:person:782bbtaQ");
  json_decref(b);
  json_decref(reqs);
}

/* The "little" text format: reserved characters are escaped unless they make a hashtag or a
 * mention; URLs are escaped too, so '#' and '_' in them stay literal. */
static const struct {
  const char *in, *out;
} escapes[] = {
    {"plain text, 100% done: $4/month \"ok\" it's", "plain text, 100% done: $4/month \"ok\" it's"},
    {"129 of them (18%) hit", "129 of them \\(18%\\) hit"},
    {"a|b {c} [d] <e> *f* _g_ ~h~", "a\\|b \\{c\\} \\[d\\] \\<e\\> \\*f\\* \\_g\\_ \\~h\\~"},
    {"path\\to\\file", "path\\\\to\\\\file"},
    {"mail me: me@example.org or @handle", "mail me: me\\@example.org or \\@handle"},
    {"#launch day #2024 and C# or a#b", "#launch day #2024 and C\\# or a\\#b"},
    {"(#tag) ##x #_y #", "\\(#tag\\) \\#\\#x \\#\\_y \\#"},
    {"#caf\xc3\xa9 ok", "#caf\xc3\xa9 ok"},
    {"#snake_case", "#snake\\_case"},
    {"hello @[Acme Corp](urn:li:organization:1234)!",
     "hello @[Acme Corp](urn:li:organization:1234)!"},
    {"@[Eddy](urn:li:person:ab-C_1) hi", "@[Eddy](urn:li:person:ab-C_1) hi"},
    {"@[Bad](urn:li:group:1)", "\\@\\[Bad\\]\\(urn:li:group:1\\)"},
    {"@[Eddy] (urn:li:person:1)", "\\@\\[Eddy\\] \\(urn:li:person:1\\)"},
    {"see https://en.wikipedia.org/wiki/C_(language)#History now",
     "see https://en.wikipedia.org/wiki/C\\_\\(language\\)\\#History now"},
    {"(https://example.org/a_b)", "\\(https://example.org/a\\_b\\)"},
    {"{hashtag|#|mytag}", "\\{hashtag\\|\\#\\|mytag\\}"},
    {"line1\n\n#line2", "line1\n\n#line2"},
};

static void commentary_is_escaped_little_text(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
    print_message("escape %zu: %s\n", i, escapes[i].in);
    struct cp_post post = text_post(escapes[i].in);
    testserver_script(&f->ts, "[{\"status\": 201, \"headers\": {\"x-restli-id\": "
                              "\"urn:li:share:1\"}}]");
    assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
    char *c = sent_commentary(f);
    assert_string_equal(c, escapes[i].out);
    free(c);
  }
}

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring */
};

static const struct answer answers[] = {
    {"[{\"status\": 401, \"json\": {\"status\": 401, \"serviceErrorCode\": 65602, \"code\": "
     "\"EXPIRED_ACCESS_TOKEN\", \"message\": \"The token used in the request has expired\"}}]",
     CP_OUTCOME_AUTH, 401, -1, "renew the token"},
    {"[{\"status\": 403, \"json\": {\"status\": 403, \"serviceErrorCode\": 100, \"code\": "
     "\"ACCESS_DENIED\", \"message\": \"Not enough permissions to access: "
     "partnerApiPostsExternal.CREATE.20260501\"}}]",
     CP_OUTCOME_AUTH, 403, -1, "w_organization_social"},
    /* An expired token named in a 400 is still a token problem. */
    {"[{\"status\": 400, \"json\": {\"code\": \"REVOKED_ACCESS_TOKEN\", \"message\": "
     "\"The token used in the request has been revoked by the user\"}}]",
     CP_OUTCOME_AUTH, 400, -1, "revoked"},
    {"[{\"status\": 422, \"json\": {\"message\": \"ERROR :: /commentary :: Content is a "
     "duplicate of urn:li:share:7000\", \"errorDetails\": {\"inputErrors\": [{\"description\": "
     "\"Duplicate post\", \"input\": {\"inputPath\": {\"fieldPath\": \"/commentary\"}}, "
     "\"code\": \"DUPLICATE_POST\"}]}, \"status\": 422}}]",
     CP_OUTCOME_PERMANENT, 422, -1, "duplicate"},
    {"[{\"status\": 422, \"json\": {\"message\": \"/author :: invalid urn\", \"status\": 422}}]",
     CP_OUTCOME_PERMANENT, 422, -1, "HTTP 422: /author :: invalid urn"},
    {"[{\"status\": 426, \"json\": {\"status\": 426, \"code\": \"NONEXISTENT_VERSION\", "
     "\"message\": \"Requested version 202301 is not active\"}}]",
     CP_OUTCOME_PERMANENT, 426, -1, "set version"},
    /* LinkedIn's 429s carry no hint: the scheduler backs off. */
    {"[{\"status\": 429, \"json\": {\"status\": 429, \"message\": \"Resource level throttle "
     "APPLICATION DAY limit for calls to this resource is reached.\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, -1, "midnight UTC"},
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"60\"}}]", CP_OUTCOME_RATE_LIMITED, 429,
     60000, "HTTP 429"},
    {"[{\"status\": 500, \"json\": {\"message\": \"Internal Server Error\", \"status\": 500}}]",
     CP_OUTCOME_RETRY, 500, -1, "HTTP 500: Internal Server Error"},
    {"[{\"status\": 503, \"body\": \"<html><body>upstream</body></html>\"}]", CP_OUTCOME_RETRY, 503,
     -1, "HTTP 503"},
    {"[{\"status\": 400, \"body\": \"{not json\"}]", CP_OUTCOME_PERMANENT, 400, -1, "HTTP 400"},
    /* The create may have arrived: unknown, not a blind retry. */
    {"[{\"reset\": true}]", CP_OUTCOME_UNKNOWN, 0, -1, "reset"},
};

static void each_error_gives_its_outcome(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  struct cp_post post = text_post("hello");

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
    json_t *reqs = testserver_requests(&f->ts);
    assert_int_equal(json_array_size(reqs), 1); /* never repeated on its own */
    json_decref(reqs);
  }
  assert_null(strstr(f->mh.log, TOKEN));
}

static void created_without_id_is_still_published(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  struct cp_post post = text_post("hello");
  testserver_script(&f->ts, "[{\"status\": 201}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "");
  assert_non_null(strstr(f->mh.log, "without an x-restli-id"));
}

static void refused_connection_is_retried(void **state) {
  struct fixture *f = *state;
  char base[64];
  snprintf(base, sizeof base, "http://127.0.0.1:%d", testserver_dead_port());
  const char *kv[] = {"author", ORG, "token_file", f->tokfile, "api_base", base, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("hello");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_int_equal(res.err, -ECONNREFUSED);
}

/* ---- images --------------------------------------------------------------------------------- */

static char *file_b64(const char *path) {
  unsigned char buf[4096];
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  size_t n = fread(buf, 1, sizeof buf, fp);
  fclose(fp);
  char *out = malloc(4 * n / 3 + 8);
  EVP_EncodeBlock((unsigned char *)out, buf, (int)n);
  return out;
}

/* A script answering n initializeUpload calls (image URNs urn:li:image:IMG<k>, upload URLs on
 * upload_host), their PUTs, and the post. */
static void script_images(struct fixture *f, int first, int n, const char *upload_host) {
  char script[4096];
  size_t o = 0;
  o += (size_t)snprintf(script + o, sizeof script - o, "[");
  for (int k = first; k < first + n; k++)
    o += (size_t)snprintf(
        script + o, sizeof script - o,
        "{\"path\": \"/rest/images\", \"json\": {\"value\": {\"uploadUrlExpiresAt\":"
        " 1700000600000, \"uploadUrl\": \"http://%s:%d/dms-uploads/up%d\", "
        "\"image\": \"urn:li:image:IMG%d\"}}}, "
        "{\"path\": \"/dms-uploads/up%d\", \"status\": 201},",
        upload_host, f->ts.port, k, k, k);
  snprintf(script + o, sizeof script - o,
           "{\"path\": \"/rest/posts\", \"status\": 201, \"headers\": {\"x-restli-id\": "
           "\"urn:li:share:42\"}}]");
  testserver_script(&f->ts, script);
}

static void assert_init_request(json_t *r) {
  assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
  assert_string_equal(json_string_value(json_object_get(r, "path")),
                      "/rest/images?action=initializeUpload");
  assert_api_headers(r, "202605");
  json_t *b = body_json(r);
  json_t *want = json_pack("{s:{s:s}}", "initializeUploadRequest", "owner", ORG);
  assert_true(json_equal(b, want));
  json_decref(b);
  json_decref(want);
}

static void assert_upload_request(json_t *r, int k, const char *file, const char *type,
                                  bool with_token) {
  char path[64], bearer[64];
  snprintf(path, sizeof path, "/dms-uploads/up%d", k);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "PUT");
  assert_string_equal(json_string_value(json_object_get(r, "path")), path);
  assert_string_equal(testserver_header(r, "Content-Type"), type);
  char *b64 = file_b64(mock_media_path(file));
  assert_string_equal(json_string_value(json_object_get(r, "body_b64")), b64);
  free(b64);
  snprintf(bearer, sizeof bearer, "Bearer %s", TOKEN);
  if (with_token)
    assert_string_equal(testserver_header(r, "Authorization"), bearer);
  else
    assert_null(testserver_header(r, "Authorization"));
}

static void two_images_make_a_multi_image_post(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  char png[512], gif[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  struct cp_media media[] = {{png, "A red pixel"}, {gif, NULL}};
  struct cp_post post = text_post("two pixels");
  post.media = media;
  post.n_media = 2;
  script_images(f, 1, 2, "127.0.0.1");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(res.message, "");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "urn:li:share:42");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 5);
  assert_init_request(json_array_get(reqs, 0));
  assert_upload_request(json_array_get(reqs, 1), 1, "pixel.png", "image/png", true);
  assert_init_request(json_array_get(reqs, 2));
  assert_upload_request(json_array_get(reqs, 3), 2, "pixel.gif", "image/gif", true);
  json_t *b = body_json(json_array_get(reqs, 4));
  json_t *want =
      json_pack("{s:{s:[{s:s, s:s}, {s:s}]}}", "multiImage", "images", "id", "urn:li:image:IMG1",
                "altText", "A red pixel", "id", "urn:li:image:IMG2");
  assert_true(json_equal(json_object_get(b, "content"), want));
  assert_string_equal(json_string_value(json_object_get(b, "commentary")), "two pixels");
  json_decref(want);
  json_decref(b);
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "image1=urn:li:image:IMG1;image2=urn:li:image:IMG2");
}

static void one_image_is_content_media_and_foreign_hosts_get_no_token(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  char png[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  struct cp_media media[] = {{png, "Alt: (a) #pixel"}};
  struct cp_post post = text_post("");
  post.media = media;
  post.n_media = 1;
  /* "localhost" is not the API's host (127.0.0.1): the token stays home. */
  script_images(f, 1, 1, "localhost");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 3);
  assert_upload_request(json_array_get(reqs, 1), 1, "pixel.png", "image/png", false);
  json_t *b = body_json(json_array_get(reqs, 2));
  json_t *want =
      json_pack("{s:{s:s, s:s}}", "media", "id", "urn:li:image:IMG1", "altText", "Alt: (a) #pixel");
  assert_true(json_equal(json_object_get(b, "content"), want));
  assert_string_equal(json_string_value(json_object_get(b, "commentary")), "");
  json_decref(want);
  json_decref(b);
  json_decref(reqs);
}

static void failed_upload_resumes_without_uploading_again(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  char png[512], gif[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  struct cp_media media[] = {{png, NULL}, {gif, NULL}};
  struct cp_post post = text_post("resume");
  post.media = media;
  post.n_media = 2;

  /* First attempt: image 1 goes up, the second upload fails. */
  char script[1024];
  snprintf(script, sizeof script,
           "[{\"path\": \"/rest/images\", \"json\": {\"value\": {\"uploadUrl\": "
           "\"http://127.0.0.1:%d/dms-uploads/up1\", \"image\": \"urn:li:image:IMG1\"}}}, "
           "{\"path\": \"/dms-uploads/up1\", \"status\": 201}, "
           "{\"path\": \"/rest/images\", \"json\": {\"value\": {\"uploadUrl\": "
           "\"http://127.0.0.1:%d/dms-uploads/up2\", \"image\": \"urn:li:image:IMG2\"}}}, "
           "{\"path\": \"/dms-uploads/up2\", \"status\": 500}]",
           f->ts.port, f->ts.port);
  testserver_script(&f->ts, script);
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "uploading image 2"));
  assert_string_equal(f->mh.progress, "image1=urn:li:image:IMG1");

  /* Second attempt: only image 2, then the post with both. */
  f->mh.attempt = 2;
  script_images(f, 2, 1, "127.0.0.1");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 3);
  assert_upload_request(json_array_get(reqs, 1), 2, "pixel.gif", "image/gif", true);
  json_t *b = body_json(json_array_get(reqs, 2));
  json_t *imgs =
      json_object_get(json_object_get(json_object_get(b, "content"), "multiImage"), "images");
  assert_int_equal(json_array_size(imgs), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(imgs, 0), "id")),
                      "urn:li:image:IMG1");
  assert_string_equal(json_string_value(json_object_get(json_array_get(imgs, 1), "id")),
                      "urn:li:image:IMG2");
  json_decref(b);
  json_decref(reqs);
}

static void bad_media_fails_before_anything_is_posted(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  char bad[512];
  snprintf(bad, sizeof bad, "%s", mock_media_path("not-an-image.png"));
  struct cp_media media[] = {{bad, NULL}};
  struct cp_post post = text_post("html in disguise");
  post.media = media;
  post.n_media = 1;
  script_images(f, 1, 1, "127.0.0.1");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "not-an-image.png"));
  json_t *reqs = testserver_requests(&f->ts);
  for (size_t i = 0; i < json_array_size(reqs); i++)
    assert_string_not_equal(json_string_value(json_object_get(json_array_get(reqs, i), "path")),
                            "/rest/posts");
  json_decref(reqs);

  /* An initializeUpload answer without an upload URL is retried, not trusted. */
  char png[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  media[0].src = png;
  testserver_script(&f->ts, "[{\"path\": \"/rest/images\", \"json\": {\"value\": {}}}]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "uploadUrl"));
}

/* ---- validation and configuration ---------------------------------------------------------- */

static int n_errors;
static char diags[2048];
static void on_diag(void *arg, bool error, const char *msg) {
  (void)arg;
  n_errors += error;
  strncat(diags, msg, sizeof diags - strlen(diags) - 2);
  strcat(diags, "\n");
}

static int validate(struct fixture *f, const struct cp_post *post) {
  n_errors = 0;
  diags[0] = '\0';
  return cp_connector_linkedin.validate(f->mh.instance, post, on_diag, NULL);
}

static void validate_checks_without_io(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  char *long_text = malloc(3002);
  memset(long_text, 'a', 3001);
  long_text[3001] = '\0';
  struct cp_post post = text_post(long_text);
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "3001 characters, LinkedIn allows 3000"));
  post.thread = true;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "cannot be threaded"));
  long_text[3000] = '\0';
  post.thread = false;
  assert_int_equal(validate(f, &post), 0);
  free(long_text);

  post.text = "";
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "no text and no images"));

  struct cp_media media[21];
  for (int i = 0; i < 21; i++)
    media[i] = (struct cp_media){"img/p.JPG", NULL};
  post.text = "pics";
  post.media = media;
  post.n_media = 20;
  assert_int_equal(validate(f, &post), 0);
  post.n_media = 21;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "at most 20"));
  media[1].src = "https://example.org/clip.mp4?x=1";
  post.n_media = 2;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "media 2 (https://example.org/clip.mp4?x=1)"));
  assert_non_null(strstr(diags, "JPG, PNG and GIF"));
  post.n_media = 0;

  struct cp_post_option opts[] = {{"visibility", "connections"}};
  post.options = opts;
  post.n_options = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL); /* an organization has no connections */
  assert_non_null(strstr(diags, "only a member"));
  opts[0].value = "friends";
  assert_int_equal(validate(f, &post), CP_EINVAL);
  opts[0].value = "PUBLIC";
  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_errors, 0);

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
  const char *const *po = cp_connector_linkedin.post_options;
  assert_string_equal(po[0], "visibility");
  assert_null(po[1]);
}

static void max_chars_lowers_the_limit(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"author", ORG, "token_file", f->tokfile, "max_chars", "10", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("eleven char");
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(diags, "11 characters, LinkedIn allows 10 (max_chars)"));
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_author[] = {"token_file", f->tokfile, NULL};
  const char *bad_author[] = {"author", "acme", "token_file", f->tokfile, NULL};
  const char *no_token[] = {"author", ORG, NULL};
  const char *bad_base[] = {
      "author", ORG, "token_file", f->tokfile, "api_base", "http://api.example.org", NULL};
  const char *bad_version[] = {"author", ORG, "token_file", f->tokfile, "version", "2024-05", NULL};
  const char *bad_month[] = {"author", ORG, "token_file", f->tokfile, "version", "202613", NULL};
  const char *unknown[] = {"author", ORG, "token_file", f->tokfile, "colour", "blue", NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_author), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'author = urn:li:"));
  assert_int_equal(mock_host_connect(&f->mh, bad_author), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] author: 'acme'"));
  assert_int_equal(mock_host_connect(&f->mh, no_token), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "token_file = PATH or token_env"));
  assert_int_equal(mock_host_connect(&f->mh, bad_base), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] api_base"));
  assert_int_equal(mock_host_connect(&f->mh, bad_version), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] version: '2024-05'"));
  assert_int_equal(mock_host_connect(&f->mh, bad_month), CP_ECONFIG);
  assert_null(f->mh.instance);
  assert_int_equal(mock_host_connect(&f->mh, unknown), 0);
  assert_non_null(strstr(f->mh.log, "unknown key 'colour'"));
  assert_null(strstr(f->mh.log, TOKEN));
}

/* ---- login check ---------------------------------------------------------------------------- */

static void login_check_reads_userinfo(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {
      "author", "urn:li:person:782bbtaQ", "token_file", f->tokfile, "api_base", f->base, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);

  testserver_script(&f->ts, "[{\"json\": {\"sub\": \"782bbtaQ\", \"name\": \"John Doe\", "
                            "\"given_name\": \"John\"}}]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_non_null(strstr(res.message, "John Doe"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(json_string_value(json_object_get(r, "path")), "/v2/userinfo");
  assert_string_equal(testserver_header(r, "Authorization"), "Bearer " TOKEN);
  json_decref(reqs);

  /* Somebody else's token. */
  testserver_script(&f->ts, "[{\"json\": {\"sub\": \"other\", \"name\": \"Jane\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "urn:li:person:other"));

  /* Expired. */
  testserver_script(&f->ts, "[{\"status\": 401, \"json\": {\"serviceErrorCode\": 65602, "
                            "\"code\": \"EXPIRED_ACCESS_TOKEN\", \"message\": \"The token used "
                            "in the request has expired\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "renew the token"));

  /* Valid, without the openid/profile scopes. */
  testserver_script(&f->ts, "[{\"status\": 403, \"json\": {\"serviceErrorCode\": 100, "
                            "\"code\": \"ACCESS_DENIED\", \"message\": \"Not enough "
                            "permissions\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_non_null(strstr(res.message, "not checked"));
  assert_null(strstr(f->mh.log, TOKEN));
}

/* ---- engagement ----------------------------------------------------------------------------- */

#define SHARE "urn:li:share:7132451278036172800"
#define SHARE_PATH "/rest/socialActions/urn%3Ali%3Ashare%3A7132451278036172800"

/* Runs the connector's engagement read like the host does and the loop until it completes;
 * asserts it was accepted, completed exactly once and not from inside the call. */
static struct cp_result engagement(struct fixture *f, const char *remote_id) {
  struct mock_host *mh = &f->mh;
  struct cp_publish_req req = {
      .host = &mh->host, .attempt = 1, .idempotency_key = "", .host_data = mh, .progress = ""};
  int before = mh->completions;
  mh->in_publish = true;
  int rc = cp_connector_linkedin.engagement(mh->instance, remote_id, "", &req);
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

/* The one request of an engagement read: a GET of the post's social actions. */
static void assert_social_actions_get(struct fixture *f, const char *path) {
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(json_string_value(json_object_get(r, "path")), path);
  assert_api_headers(r, "202605");
  assert_null(testserver_header(r, "Content-Type"));
  assert_string_equal(json_string_value(json_object_get(r, "body")), "");
  json_decref(reqs);
}

static void engagement_reads_the_counts(void **state) {
  struct fixture *f = *state;
  assert_true(cp_connector_linkedin.caps & CP_CAP_ENGAGEMENT);
  connect_as(f, ORG);
  /* The summary as LinkedIn documents it ("Retrieve a Summary of Social Actions"). */
  testserver_script(&f->ts, "[{\"path\": \"" SHARE_PATH "\", \"json\": {\"commentsSummary\": "
                            "{\"totalFirstLevelComments\": 4, \"aggregatedTotalComments\": 9}, "
                            "\"$URN\": \"urn:li:activity:6296748651834277888\", \"likesSummary\": "
                            "{\"likedByCurrentUser\": false, \"totalLikes\": 27}, \"target\": "
                            "\"" SHARE "\"}}]");
  struct cp_result res = engagement(f, SHARE);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_true(res.has_engagement);
  assert_int_equal(res.http_status, 200);
  assert_int_equal(res.likes, 27);
  assert_int_equal(res.replies, 9);
  assert_int_equal(res.reposts, -1);
  assert_int_equal(res.quotes, -1);
  assert_int_equal(res.views, -1);
  assert_social_actions_get(f, SHARE_PATH);
  assert_int_equal(f->mh.progress_saves, 0);

  /* Only first-level comments given: those; no likesSummary: -1. */
  testserver_script(&f->ts,
                    "[{\"json\": {\"commentsSummary\": {\"totalFirstLevelComments\": 2}}}]");
  res = engagement(f, "urn:li:ugcPost:6800");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.replies, 2);
  assert_int_equal(res.likes, -1);
  assert_social_actions_get(f, "/rest/socialActions/urn%3Ali%3AugcPost%3A6800");
  assert_null(strstr(f->mh.log, TOKEN));
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
    {"[{\"status\": 404, \"json\": {\"status\": 404, \"message\": \"Not Found\"}}]",
     CP_OUTCOME_PERMANENT, 404, 0, -1, "post " SHARE ": the post was deleted: HTTP 404"},
    {"[{\"status\": 401, \"json\": {\"status\": 401, \"serviceErrorCode\": 65601, \"code\": "
     "\"REVOKED_ACCESS_TOKEN\", \"message\": \"The token used in the request has been revoked\"}}]",
     CP_OUTCOME_AUTH, 401, 0, -1, "renew the token"},
    /* A token that may post but not read: PERMANENT, not AUTH (which pauses the posts). */
    {"[{\"status\": 403, \"json\": {\"status\": 403, \"serviceErrorCode\": 100, \"code\": "
     "\"ACCESS_DENIED\", \"message\": \"Not enough permissions to access: "
     "socialActions.GET.20260501\"}}]",
     CP_OUTCOME_PERMANENT, 403, 0, -1, "needs the r_organization_social scope"},
    {"[{\"status\": 403, \"json\": {\"status\": 403, \"code\": \"EXPIRED_ACCESS_TOKEN\", "
     "\"message\": \"The token used in the request has expired\"}}]",
     CP_OUTCOME_AUTH, 403, 0, -1, "renew the token"},
    {"[{\"status\": 429, \"json\": {\"status\": 429, \"message\": \"Resource level throttle "
     "APPLICATION DAY limit for calls to this resource is reached.\"}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 0, -1, "midnight UTC"},
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"60\"}}]", CP_OUTCOME_RATE_LIMITED, 429, 0,
     60000, "HTTP 429"},
    {"[{\"status\": 500, \"json\": {\"message\": \"Internal Server Error\", \"status\": 500}}]",
     CP_OUTCOME_RETRY, 500, 0, -1, "HTTP 500"},
    /* A read that got no answer changed nothing: RETRY, never UNKNOWN. */
    {"[{\"reset\": true, \"repeat\": true}]", CP_OUTCOME_RETRY, 0, -ECONNRESET, -1, "reset"},
    {"[{\"status\": 200, \"body\": \"<html>proxy</html>\"}]", CP_OUTCOME_RETRY, 200, CP_EPARSE, -1,
     "not a social actions summary"},
};

static void engagement_answers_give_their_outcome(void **state) {
  struct fixture *f = *state;
  connect_as(f, ORG);
  for (size_t i = 0; i < sizeof engagement_answers / sizeof engagement_answers[0]; i++) {
    const struct engagement_answer *a = &engagement_answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = engagement(f, SHARE);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_false(res.has_engagement);
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message \"%s\" lacks \"%s\"", res.message, a->message);
    json_t *reqs = testserver_requests(&f->ts), *r;
    size_t k;
    assert_true(json_array_size(reqs) >= 1);
    json_array_foreach(reqs, k, r) {
      assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
      assert_string_equal(json_string_value(json_object_get(r, "path")), SHARE_PATH);
    }
    json_decref(reqs);
  }
  assert_null(strstr(f->mh.log, TOKEN));

  /* A member's token is told about r_member_social. */
  cp_connector_linkedin.free(f->mh.instance);
  f->mh.instance = NULL;
  connect_as(f, "urn:li:person:8675309");
  testserver_script(&f->ts, "[{\"status\": 403, \"json\": {\"status\": 403, \"code\": "
                            "\"ACCESS_DENIED\", \"message\": \"Not enough permissions\"}}]");
  struct cp_result res = engagement(f, SHARE);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "r_member_social"));

  /* A URN publish cannot have reported is refused at once, without a request or completion. */
  testserver_script(&f->ts, "[]");
  struct cp_publish_req req = {.host = &f->mh.host,
                               .attempt = 1,
                               .idempotency_key = "",
                               .host_data = &f->mh,
                               .progress = ""};
  int before = f->mh.completions;
  assert_int_equal(
      cp_connector_linkedin.engagement(f->mh.instance, "7132451278036172800", "", &req), CP_EINVAL);
  assert_int_equal(
      cp_connector_linkedin.engagement(f->mh.instance, "urn:li:share:1/../x", "", &req), CP_EINVAL);
  assert_int_equal(cp_connector_linkedin.engagement(f->mh.instance, "", "", &req), CP_EINVAL);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, before);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(text_post_is_the_documented_request, setup, teardown),
      cmocka_unit_test_setup_teardown(options_and_version_reach_the_request, setup, teardown),
      cmocka_unit_test_setup_teardown(commentary_is_escaped_little_text, setup, teardown),
      cmocka_unit_test_setup_teardown(each_error_gives_its_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(created_without_id_is_still_published, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(two_images_make_a_multi_image_post, setup, teardown),
      cmocka_unit_test_setup_teardown(one_image_is_content_media_and_foreign_hosts_get_no_token,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(failed_upload_resumes_without_uploading_again, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(bad_media_fails_before_anything_is_posted, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_without_io, setup, teardown),
      cmocka_unit_test_setup_teardown(max_chars_lowers_the_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_reads_userinfo, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_reads_the_counts, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_answers_give_their_outcome, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the linkedin connector is not built (CALPOST_CONNECTOR_LINKEDIN=OFF): skipped");
  return 0;
}
#endif
