// ctest-labels: connector
// ctest-connector: wordpress
/* The WordPress connector against tests/support/testserver.py: the exact requests of a publish
 * (Basic auth, slug lookup, term resolution, media upload, the post's JSON), a resend that finds
 * the post instead of creating "<slug>-2", resuming after the upload, and each error class with
 * the error bodies WordPress 6.1.9 sends (CONNECTORS-NOTES 1.11). */
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

#ifdef CP_BUILTIN_WORDPRESS

#define PASSWORD "abcd efgh ijkl mnop qrst uvwx"
/* base64("editor:" PASSWORD), computed with `printf %s ... | base64` */
#define AUTH "Basic ZWRpdG9yOmFiY2QgZWZnaCBpamtsIG1ub3AgcXJzdCB1dnd4"
#define POST_ID "0123456789abcdef"
#define MARKER "<!-- calpost:" POST_ID " -->"
#define LOOKUP_QUERY                                                                               \
  "?slug=calpost-" POST_ID "&status=publish,future,draft,pending,private&context=edit"             \
  "&_fields=id,link,status,content"

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char keyfile[96];
  char site[96];
  struct cp_media media[2];
  struct cp_post_option opts[8];
  struct cp_post post;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "", f->site, sizeof f->site);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-wordpress-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->keyfile, sizeof f->keyfile, "%s/wp.key", f->dir);
  FILE *fp = fopen(f->keyfile, "w");
  fputs(PASSWORD "\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->keyfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_wordpress);
  f->post = mock_post(POST_ID, "Launch day!");
  f->post.n_media = 0;
  f->post.options = f->opts;
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

/* Connects with the usual keys plus extra (key, value, ..., NULL). */
static void connect_with(struct fixture *f, const char *const *extra) {
  const char *kv[32] = {"type",   "wordpress",         "site",    f->site, "username",
                        "editor", "app_password_file", f->keyfile};
  size_t n = 8;
  for (size_t i = 0; extra && extra[i]; i++)
    kv[n++] = extra[i];
  kv[n] = NULL;
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static void set_option(struct fixture *f, const char *key, const char *value) {
  f->opts[f->post.n_options++] = (struct cp_post_option){key, value};
}

static void set_media(struct fixture *f, const char *name, const char *alt) {
  static char paths[2][512];
  size_t i = f->post.n_media;
  snprintf(paths[i], sizeof paths[i], "%s", mock_media_path(name));
  f->media[i] = (struct cp_media){paths[i], (char *)alt};
  f->post.media = f->media;
  f->post.n_media = i + 1;
}

/* A script written with ' for " (readable in C). */
static void script(struct fixture *f, const char *text) {
  char *s = strdup(text);
  for (char *p = s; *p; p++)
    if (*p == '\'')
      *p = '"';
  testserver_script(&f->ts, s);
  free(s);
}

static json_t *requests(struct fixture *f, size_t expect) {
  json_t *reqs = testserver_requests(&f->ts);
  if (json_array_size(reqs) != expect) {
    size_t i;
    json_t *r;
    json_array_foreach(reqs, i, r)
        print_message("request %zu: %s %s\n", i, json_string_value(json_object_get(r, "method")),
                      json_string_value(json_object_get(r, "path")));
  }
  assert_int_equal(json_array_size(reqs), expect);
  return reqs;
}

/* Asserts request i's method and path (with query), the Basic credentials and JSON Accept. */
static json_t *assert_req(json_t *reqs, size_t i, const char *method, const char *path) {
  json_t *r = json_array_get(reqs, i);
  assert_non_null(r);
  assert_string_equal(json_string_value(json_object_get(r, "method")), method);
  assert_string_equal(json_string_value(json_object_get(r, "path")), path);
  assert_string_equal(testserver_header(r, "Authorization"), AUTH);
  assert_string_equal(testserver_header(r, "Accept"), "application/json");
  return r;
}

static json_t *body_json(json_t *r) {
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  json_error_t jerr;
  json_t *b = json_loads(json_string_value(json_object_get(r, "body")), 0, &jerr);
  assert_non_null(b);
  return b;
}

static void assert_json(json_t *got, const char *want_text) {
  char *s = strdup(want_text);
  for (char *p = s; *p; p++)
    if (*p == '\'')
      *p = '"';
  json_error_t jerr;
  json_t *want = json_loads(s, 0, &jerr);
  if (!want)
    fail_msg("bad expected JSON %s: %s", s, jerr.text);
  if (!json_equal(got, want)) {
    char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);
    print_message("got  %s\nwant %s\n", g, w);
    free(g);
    free(w);
    fail();
  }
  json_decref(want);
  free(s);
}

static char *read_file(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
  fclose(fp);
  *len = (size_t)n;
  return buf;
}

/* ---- the full publish -------------------------------------------------------------------- */

static void publish_sends_the_documented_requests(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  f->post.text = "Our spring release is out: https://example.org/release?a=1&b=2.\n"
                 "Two <new> features.\n\nThanks!";
  set_option(f, "categories", "releases, News & Events");
  set_option(f, "tags", "Spring, new tag");
  set_option(f, "excerpt", "The spring release");
  set_media(f, "pixel.png", "A single pixel & more");
  script(f, "["
            "{'path': '/wp-json/wp/v2/posts', 'json': []},"
            /* the search finds longer names too: the exact one (here by slug) is taken */
            "{'path': '/wp-json/wp/v2/categories', 'json': ["
            "  {'id': 6, 'name': 'Old releases', 'slug': 'old-releases'},"
            "  {'id': 7, 'name': 'Releases', 'slug': 'releases'}]},"
            /* WordPress answers names HTML-escaped */
            "{'path': '/wp-json/wp/v2/categories', 'json': ["
            "  {'id': 9, 'name': 'News &amp; Events', 'slug': 'news-events'}]},"
            "{'path': '/wp-json/wp/v2/tags', 'json': ["
            "  {'id': 3, 'name': 'Spring cleaning', 'slug': 'spring-cleaning'},"
            "  {'id': 4, 'name': 'spring', 'slug': 'spring'}]},"
            "{'path': '/wp-json/wp/v2/tags', 'json': []},"
            "{'path': '/wp-json/wp/v2/tags', 'status': 201, 'json': "
            "  {'id': 12, 'name': 'new tag', 'slug': 'new-tag'}},"
            "{'path': '/wp-json/wp/v2/media', 'status': 201, 'json': "
            "  {'id': 55, 'source_url': 'http://blog/wp-content/uploads/pixel.png'}},"
            "{'path': '/wp-json/wp/v2/posts', 'status': 201, "
            "  'headers': {'Location': 'http://blog/wp-json/wp/v2/posts/101'}, 'json': "
            "  {'id': 101, 'link': 'https://blog.example.org/2024/01/launch/', "
            "   'status': 'publish'}}]");

  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_int_equal(res.http_status, 201);
  assert_string_equal(res.remote_id, "101");
  assert_string_equal(res.remote_url, "https://blog.example.org/2024/01/launch/");
  assert_string_equal(f->mh.progress, "media=55");

  json_t *reqs = requests(f, 8);
  assert_req(reqs, 0, "GET", "/wp-json/wp/v2/posts" LOOKUP_QUERY);
  assert_req(reqs, 1, "GET",
             "/wp-json/wp/v2/categories?search=releases&per_page=100&_fields=id,name,slug");
  assert_req(reqs, 2, "GET",
             "/wp-json/wp/v2/categories?search=News%20%26%20Events&per_page=100"
             "&_fields=id,name,slug");
  assert_req(reqs, 3, "GET", "/wp-json/wp/v2/tags?search=Spring&per_page=100&_fields=id,name,slug");
  assert_req(reqs, 4, "GET",
             "/wp-json/wp/v2/tags?search=new%20tag&per_page=100&_fields=id,name,slug");
  json_t *r = assert_req(reqs, 5, "POST", "/wp-json/wp/v2/tags?_fields=id,name,slug");
  json_t *b = body_json(r);
  assert_json(b, "{'name': 'new tag'}");
  json_decref(b);

  r = assert_req(reqs, 6, "POST",
                 "/wp-json/wp/v2/media?_fields=id,source_url"
                 "&alt_text=A%20single%20pixel%20%26%20more");
  assert_string_equal(testserver_header(r, "Content-Type"), "image/png");
  assert_string_equal(testserver_header(r, "Content-Disposition"),
                      "attachment; filename=\"pixel.png\"");
  size_t len;
  char *png = read_file(mock_media_path("pixel.png"), &len);
  const char *b64 = json_string_value(json_object_get(r, "body_b64"));
  size_t blen = strlen(b64);
  unsigned char *decoded = malloc(blen);
  int dlen = EVP_DecodeBlock(decoded, (const unsigned char *)b64, (int)blen);
  for (size_t i = blen; i > 0 && b64[i - 1] == '='; i--) /* EVP_DecodeBlock counts padding */
    dlen--;
  assert_int_equal((size_t)dlen, len);
  assert_memory_equal(decoded, png, len);
  free(decoded);
  free(png);

  r = assert_req(reqs, 7, "POST", "/wp-json/wp/v2/posts?_fields=id,link,status");
  b = body_json(r);
  assert_json(b, "{'title': 'Launch', 'status': 'publish', 'slug': 'calpost-" POST_ID "',"
                 " 'excerpt': 'The spring release', 'categories': [7, 9], 'tags': [4, 12],"
                 " 'featured_media': 55,"
                 " 'content': '<p>Our spring release is out: "
                 "<a href=\\'https://example.org/release?a=1&amp;b=2\\'>"
                 "https://example.org/release?a=1&amp;b=2</a>.<br>\\n"
                 "Two &lt;new&gt; features.</p>\\n<p>Thanks!</p>\\n" MARKER "'}");
  json_decref(b);
  json_decref(reqs);
  assert_null(strstr(f->mh.log, "abcd efgh")); /* the password never reaches a log */
}

static void future_status_sends_the_due_time(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"status", "future", NULL};
  connect_with(f, extra);
  f->post.title = "";
  f->post.text = "First line <b>bold</b> & more\nsecond line";
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/posts', 'status': 201, 'json': {'id': 5, 'link': 'L'}}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f, 2);
  json_t *b = body_json(json_array_get(reqs, 1));
  /* Text that looks like HTML is kept; without a SUMMARY the first line is the title. */
  assert_json(b, "{'title': 'First line &lt;b&gt;bold&lt;/b&gt; & more', 'status': 'future',"
                 " 'date_gmt': '2024-01-02T09:00:00', 'slug': 'calpost-" POST_ID "',"
                 " 'content': 'First line <b>bold</b> & more\\nsecond line\\n" MARKER "'}");
  json_decref(b);
  json_decref(reqs);
  assert_int_equal(f->mh.progress_saves, 0);
}

static void summary_only_event_gets_no_duplicate_content(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"status", "draft", "api_path", "/?rest_route=", NULL};
  connect_with(f, extra);
  f->post.title = "Just a title";
  f->post.text = "Just a title";
  script(f, "[{'json': []}, {'status': 201, 'json': {'id': 6, 'link': 'https://b/?p=6'}}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_url, "https://b/?p=6");
  json_t *reqs = requests(f, 2);
  /* Without pretty permalinks the route is a query parameter, and the others follow it. */
  assert_req(reqs, 0, "GET",
             "/?rest_route=/wp/v2/posts&slug=calpost-" POST_ID
             "&status=publish,future,draft,pending,private&context=edit"
             "&_fields=id,link,status,content");
  json_t *r = assert_req(reqs, 1, "POST", "/?rest_route=/wp/v2/posts&_fields=id,link,status");
  json_t *b = body_json(r);
  assert_json(b, "{'title': 'Just a title', 'status': 'draft', 'slug': 'calpost-" POST_ID "',"
                 " 'content': '" MARKER "'}");
  json_decref(b);
  json_decref(reqs);
}

/* ---- idempotency ------------------------------------------------------------------------- */

static void resend_finds_the_post_and_creates_nothing(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  set_option(f, "tags", "spring");
  set_media(f, "pixel.png", NULL);
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': [{'id': 101, 'status': 'publish',"
            " 'link': 'https://blog.example.org/2024/01/calpost-" POST_ID "/',"
            " 'content': {'raw': '<p>Launch day!</p>\\n" MARKER "', 'rendered': 'x'}}]}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "101");
  assert_string_equal(res.remote_url, "https://blog.example.org/2024/01/calpost-" POST_ID "/");
  json_t *reqs = requests(f, 1); /* the lookup only: no term, media or post request */
  assert_req(reqs, 0, "GET", "/wp-json/wp/v2/posts" LOOKUP_QUERY);
  json_decref(reqs);
  assert_non_null(strstr(f->mh.log, "not sent again"));

  /* The post was edited on the site and lost its marker: the calpost slug is still ours. */
  script(f, "[{'json': [{'id': 101, 'link': 'L', 'content': {'raw': 'edited'}}]}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_decref(requests(f, 1));
}

static void chosen_slug_must_be_this_posts(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  set_option(f, "slug", "spring-release");
  /* A post of last year has that slug: not ours, and not silently "spring-release-2". */
  script(f, "[{'json': [{'id': 40, 'link': 'https://blog/spring-release/',"
            " 'content': {'raw': 'Last year'}}]}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "slug 'spring-release' is taken by WordPress post 40"));
  json_t *reqs = requests(f, 1);
  assert_req(reqs, 0, "GET",
             "/wp-json/wp/v2/posts?slug=spring-release&status=publish,future,draft,pending,"
             "private&context=edit&_fields=id,link,status,content");
  json_decref(reqs);

  /* Our own post under that slug (an earlier attempt): found, nothing sent. */
  script(f, "[{'json': [{'id': 41, 'link': 'https://blog/spring-release/',"
            " 'content': {'raw': '<p>x</p>\\n" MARKER "'}}]}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "41");
  json_decref(requests(f, 1));

  /* Free: created with that slug. */
  script(f, "[{'json': []}, {'status': 201, 'json': {'id': 42, 'link': 'L'}}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  reqs = requests(f, 2);
  json_t *b = body_json(json_array_get(reqs, 1));
  assert_string_equal(json_string_value(json_object_get(b, "slug")), "spring-release");
  json_decref(b);
  json_decref(reqs);
}

static void retry_after_upload_reuses_the_media(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  set_media(f, "pixel.gif", "A GIF");
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/media', 'status': 201, 'json': {'id': 77}},"
            "{'path': '/wp-json/wp/v2/posts', 'status': 500, 'json': {'code': 'db_insert_error',"
            " 'message': 'Could not insert post into the database.', 'data': {'status': 500}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_int_equal(res.http_status, 500);
  assert_non_null(strstr(res.message, "creating the post: HTTP 500 db_insert_error: Could not"));
  assert_string_equal(f->mh.progress, "media=77");
  json_t *reqs = requests(f, 3);
  json_t *r = assert_req(reqs, 1, "POST",
                         "/wp-json/wp/v2/media?_fields=id,source_url"
                         "&alt_text=A%20GIF");
  assert_string_equal(testserver_header(r, "Content-Type"), "image/gif");
  json_decref(reqs);

  /* The next attempt (after a restart as well: progress is durable) does not upload again. */
  f->mh.attempt = 2;
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/posts', 'status': 201, 'json': {'id': 102, 'link': 'L'}}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  reqs = requests(f, 2);
  assert_req(reqs, 0, "GET", "/wp-json/wp/v2/posts" LOOKUP_QUERY);
  json_t *b = body_json(assert_req(reqs, 1, "POST", "/wp-json/wp/v2/posts?_fields=id,link,status"));
  assert_int_equal(json_integer_value(json_object_get(b, "featured_media")), 77);
  json_decref(b);
  json_decref(reqs);
  assert_int_equal(f->mh.progress_saves, 1);
}

/* ---- terms ------------------------------------------------------------------------------- */

static void missing_category_is_permanent(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  set_option(f, "categories", "Nope");
  set_media(f, "pixel.png", NULL);
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/categories', 'json': [{'id': 3, 'name': 'Nopes',"
            " 'slug': 'nopes'}]}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "category 'Nope' does not exist on"));
  assert_non_null(strstr(res.message, "Posts > Categories"));
  json_decref(requests(f, 2)); /* nothing uploaded, nothing created */
}

static void tags_missing_or_refused(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"create_tags", "no", NULL};
  connect_with(f, extra);
  set_option(f, "tags", "brand new");
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/tags', 'json': []}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "tag 'brand new' does not exist"));
  assert_non_null(strstr(res.message, "create_tags = no"));
  json_decref(requests(f, 2));
}

static void tag_creation_races_and_refusals(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  set_option(f, "tags", "Café");
  /* Created by someone else between the search and the POST: WordPress names the term. */
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/tags', 'json': []},"
            "{'path': '/wp-json/wp/v2/tags', 'status': 400, 'json': {'code': 'term_exists',"
            " 'message': 'A term with the name provided already exists in this taxonomy.',"
            " 'data': {'status': 400, 'term_id': 31}}},"
            "{'path': '/wp-json/wp/v2/posts', 'status': 201, 'json': {'id': 9, 'link': 'L'}}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f, 4);
  assert_req(reqs, 1, "GET",
             "/wp-json/wp/v2/tags?search=Caf%C3%A9&per_page=100&_fields=id,name,slug");
  json_t *b = body_json(json_array_get(reqs, 3));
  assert_json(json_object_get(b, "tags"), "[31]");
  json_decref(b);
  json_decref(reqs);

  /* A name found with other case and accents composed differently is the same term. */
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/tags', 'json': [{'id': 32, 'name': 'CAFE\\u0301',"
            " 'slug': 'cafe'}]},"
            "{'path': '/wp-json/wp/v2/posts', 'status': 201, 'json': {'id': 10, 'link': 'L'}}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  reqs = requests(f, 3);
  b = body_json(json_array_get(reqs, 2));
  assert_json(json_object_get(b, "tags"), "[32]");
  json_decref(b);
  json_decref(reqs);

  /* A user who may not create tags: this post fails, the channel keeps going (not AUTH). */
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/tags', 'json': []},"
            "{'path': '/wp-json/wp/v2/tags', 'status': 403, 'json': {'code': 'rest_cannot_create',"
            " 'message': 'Sorry, you are not allowed to create terms in this taxonomy.',"
            " 'data': {'status': 403}}}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_string_equal(cp_outcome_name(res.outcome), "PERMANENT");
  assert_non_null(strstr(res.message, "creating tag 'Café' (create_tags = yes): HTTP 403 "
                                      "rest_cannot_create: Sorry, you are not allowed"));
  json_decref(requests(f, 3));
}

/* ---- media ------------------------------------------------------------------------------- */

static void media_failures(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  set_media(f, "not-an-image.png", NULL);
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []}]");
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "not-an-image.png"));
  json_decref(requests(f, 1)); /* nothing uploaded */

  f->post.n_media = 0;
  set_media(f, "pixel.png", NULL);
  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/media', 'status': 403, 'json': {'code': "
            "'rest_cannot_create', 'message': 'Sorry, you are not allowed to upload media as "
            "this user.', 'data': {'status': 403}}}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "uploading "));
  assert_non_null(strstr(res.message, "HTTP 403 rest_cannot_create: Sorry, you are not allowed "
                                      "to upload media"));
  json_t *reqs = requests(f, 2);
  assert_string_equal(testserver_header(json_array_get(reqs, 1), "Content-Disposition"),
                      "attachment; filename=\"pixel.png\"");
  json_decref(reqs);

  script(f, "[{'path': '/wp-json/wp/v2/posts', 'json': []},"
            "{'path': '/wp-json/wp/v2/media', 'reset': true}]");
  res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY); /* at worst an unused upload, never a post */
  assert_int_equal(f->mh.progress_saves, 0);
  json_decref(requests(f, 2));
}

/* ---- error classes ----------------------------------------------------------------------- */

struct answer {
  const char *script;
  size_t requests; /* 0: not checked */
  const char *outcome;
  long status;
  int err;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring */
  const char *id;
};

#define EMPTY "{'path': '/wp-json/wp/v2/posts', 'json': []}, "

static const struct answer answers[] = {
    /* A wrong application password (as WordPress 6.1.9 behind php -S answers it). */
    {"[{'status': 401, 'json': {'code': 'rest_not_logged_in', 'message': 'You are not currently"
     " logged in.', 'data': {'status': 401}}}]",
     1, "AUTH", 401, 0, -1,
     "looking for the post on the site: HTTP 401 rest_not_logged_in: You are not currently", ""},
    {"[{'status': 401, 'json': {'code': 'incorrect_password', 'message': '<strong>Error:</strong>"
     " The provided password is an invalid application password.', 'data': {'status': 401}}}]",
     1, "AUTH", 401, 0, -1,
     "HTTP 401 incorrect_password: Error: The provided password is an invalid application", ""},
    /* Without a login the lookup of drafts is refused as a bad parameter (verified). */
    {"[{'status': 400, 'json': {'code': 'rest_invalid_param', 'message': 'Invalid parameter(s): "
     "status', 'data': {'status': 400, 'params': {'status': 'Status is forbidden.'}, 'details': "
     "{'status': {'code': 'rest_forbidden_status', 'message': 'Status is forbidden.', 'data': "
     "{'status': 401}}}}}}]",
     1, "AUTH", 400, 0, -1,
     "HTTP 400 rest_invalid_param: Invalid parameter(s): status (status: Status is forbidden.)",
     ""},
    {"[" EMPTY "{'status': 401, 'json': {'code': 'rest_cannot_create', 'message': 'Sorry, you "
     "are not allowed to create posts as this user.', 'data': {'status': 401}}}]",
     2, "AUTH", 401, 0, -1, "creating the post: HTTP 401 rest_cannot_create", ""},
    {"[" EMPTY "{'status': 403, 'json': {'code': 'rest_cannot_publish', 'message': 'Sorry, you "
     "are not allowed to publish posts in this post type.', 'data': {'status': 403}}}]",
     2, "AUTH", 403, 0, -1, "rest_cannot_publish", ""},
    {"[" EMPTY "{'status': 400, 'json': {'code': 'rest_invalid_param', 'message': 'Invalid "
     "parameter(s): status', 'data': {'status': 400, 'params': {'status': 'status is not one of "
     "publish, future, draft, pending, and private.'}}}}]",
     2, "PERMANENT", 400, 0, -1,
     "creating the post: HTTP 400 rest_invalid_param: Invalid parameter(s): status (status: "
     "status is not one of",
     ""},
    {"[{'status': 404, 'json': {'code': 'rest_no_route', 'message': 'No route was found "
     "matching the URL and request method.', 'data': {'status': 404}}}]",
     1, "PERMANENT", 404, 0, -1, "HTTP 404 rest_no_route", ""},
    {"[{'status': 503, 'headers': {'Retry-After': '120'}, 'body': 'down for maintenance'}]", 1,
     "RETRY", 503, 0, 120000, "looking for the post on the site: HTTP 503: down for maintenance",
     ""},
    {"[" EMPTY "{'status': 500, 'body': '<html><body>There has been a critical error on this "
     "website.</body></html>'}]",
     2, "RETRY", 500, 0, -1, "creating the post: HTTP 500", ""},
    {"[{'status': 429, 'headers': {'Retry-After': '30'}, 'body': 'slow down'}]", 1, "RATE_LIMITED",
     429, 0, 30000, "HTTP 429", ""},
    /* No answer to the lookup: nothing can have been posted. */
    /* (A GET may go on a kept-alive connection, and libcurl resends it once when that
     * connection turns out dead: every try is reset, and the count is not checked.) */
    {"[{'reset': true, 'repeat': true}]", 0, "RETRY", 0, -ECONNRESET, -1,
     "looking for the post on the site", ""},
    /* No answer to the create: it may exist now (the next attempt's lookup will tell). */
    {"[" EMPTY "{'path': '/wp-json/wp/v2/posts', 'reset': true}]", 2, "UNKNOWN", 0, -ECONNRESET, -1,
     "creating the post", ""},
    /* A site where /wp-json is not routed answers with its home page. */
    {"[{'body': '<!DOCTYPE html><html><body>Blog</body></html>'}]", 1, "PERMANENT", 200, 0, -1,
     "is not WordPress REST JSON: check site and api_path", ""},
    /* Created, but the answer is not JSON: the Location header names the post. */
    {"[" EMPTY "{'status': 201, 'headers': {'Location': "
     "'http://b/wp-json/wp/v2/posts/333'}, 'body': 'garbage'}]",
     2, "OK", 201, 0, -1, "", "333"},
};

static void each_answer_gives_its_outcome(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    script(f, a->script);
    struct cp_result res = mock_host_publish(&f->mh, &f->post);
    assert_string_equal(cp_outcome_name(res.outcome), a->outcome);
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    assert_string_equal(res.remote_id, a->id);
    if (a->requests)
      json_decref(requests(f, a->requests));
  }
  assert_null(strstr(f->mh.log, "abcd efgh"));
}

static void refused_connection_is_retried(void **state) {
  struct fixture *f = *state;
  snprintf(f->site, sizeof f->site, "http://127.0.0.1:%d", testserver_dead_port());
  connect_with(f, NULL);
  struct cp_result res = mock_host_publish(&f->mh, &f->post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_int_equal(res.err, -ECONNREFUSED);
}

/* ---- login check ------------------------------------------------------------------------- */

static void login_check_asks_users_me(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  script(f, "[{'json': {'id': 1, 'username': 'editor', 'capabilities': {'edit_posts': true,"
            " 'publish_posts': true}}}]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f, 1);
  assert_req(reqs, 0, "GET",
             "/wp-json/wp/v2/users/me?context=edit&_fields=id,username,capabilities");
  json_decref(reqs);

  /* A Contributor: may write, not publish. */
  script(f, "[{'json': {'id': 2, 'username': 'editor', 'capabilities': {'edit_posts': true}}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "may not publish posts (no publish_posts capability)"));

  script(f, "[{'status': 401, 'json': {'code': 'rest_not_logged_in', 'message': 'You are not "
            "currently logged in.', 'data': {'status': 401}}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "checking the credentials: HTTP 401 rest_not_logged_in"));
}

static void login_check_for_drafts_needs_edit_posts(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"status", "draft", NULL};
  connect_with(f, extra);
  script(f, "[{'json': {'id': 2, 'username': 'editor', 'capabilities': {'edit_posts': true}}}]");
  assert_int_equal(mock_host_login_check(&f->mh).outcome, CP_OUTCOME_OK);
}

/* ---- configuration and validation -------------------------------------------------------- */

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *no_site[] = {"username", "editor", "app_password_file", f->keyfile, NULL};
  const char *ftp[] = {"site",     "ftp://blog", "username", "u", "app_password_file",
                       f->keyfile, NULL};
  const char *plain[] = {
      "site", "http://blog.example.org", "username", "u", "app_password_file", f->keyfile, NULL};
  const char *no_user[] = {"site", f->site, "app_password_file", f->keyfile, NULL};
  const char *no_pw[] = {"site", f->site, "username", "editor", NULL};
  const char *status[] = {"site",     f->site,  "username",  "u", "app_password_file",
                          f->keyfile, "status", "scheduled", NULL};
  const char *tags[] = {"site",     f->site,       "username", "u", "app_password_file",
                        f->keyfile, "create_tags", "maybe",    NULL};
  const char *api[] = {"site",     f->site, "api_path",          "wp-json",
                       "username", "u",     "app_password_file", f->keyfile,
                       NULL};
  const char *unset[] = {
      "site", f->site, "username", "u", "app_password_env", "CP_TEST_SURELY_UNSET_VARIABLE", NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_site), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'site = https://"));
  assert_int_equal(mock_host_connect(&f->mh, ftp), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] site: 'ftp://blog' is not"));
  assert_int_equal(mock_host_connect(&f->mh, plain), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "plain http to another machine"));
  assert_int_equal(mock_host_connect(&f->mh, no_user), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "needs 'username = ...'"));
  assert_int_equal(mock_host_connect(&f->mh, no_pw), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "needs app_password_file or app_password_env"));
  assert_int_equal(mock_host_connect(&f->mh, status), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:14: [channel test] status: 'scheduled' is not"));
  assert_int_equal(mock_host_connect(&f->mh, tags), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "create_tags: 'maybe' is not yes or no"));
  assert_int_equal(mock_host_connect(&f->mh, api), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:12: [channel test] api_path: 'wp-json' must"));
  assert_int_equal(mock_host_connect(&f->mh, unset), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "CP_TEST_SURELY_UNSET_VARIABLE"));
  assert_null(f->mh.instance);
}

static void password_from_env_and_trailing_slashes(void **state) {
  struct fixture *f = *state;
  char site[128];
  snprintf(site, sizeof site, "%s/", f->site);
  setenv("CP_TEST_WP_PASSWORD", PASSWORD, 1);
  const char *kv[] = {"site",     site,     "api_path",         "/wp-json/",
                      "username", "editor", "app_password_env", "CP_TEST_WP_PASSWORD",
                      NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  script(f, "[{'json': {'id': 1, 'capabilities': {'publish_posts': true}}}]");
  assert_int_equal(mock_host_login_check(&f->mh).outcome, CP_OUTCOME_OK);
  json_t *reqs = requests(f, 1);
  assert_req(reqs, 0, "GET",
             "/wp-json/wp/v2/users/me?context=edit&_fields=id,username,capabilities");
  json_decref(reqs);
  unsetenv("CP_TEST_WP_PASSWORD");
}

static int n_errors, n_warnings;
static char diags[2048];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  n_warnings += !error;
  strncat(diags, msg, sizeof diags - strlen(diags) - 2);
  strcat(diags, "\n");
}

static void validate_without_io(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"max_chars", "20", NULL};
  connect_with(f, extra);
  const struct cp_connector *c = &cp_connector_wordpress;

  n_errors = n_warnings = 0;
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), 0);

  f->post.text = "This text is longer than twenty characters";
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(diags, "42 characters, channel test allows 20"));
  f->post.text = "short";

  f->media[0] = (struct cp_media){"clips/teaser.mp4", NULL};
  f->media[1] = (struct cp_media){"img/b.png", NULL};
  f->post.media = f->media;
  f->post.n_media = 2;
  n_errors = n_warnings = 0;
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), CP_EINVAL);
  assert_int_equal(n_errors, 1);
  assert_int_equal(n_warnings, 1);
  assert_non_null(strstr(diags, "clips/teaser.mp4: the first media item becomes the featured"));
  assert_non_null(strstr(diags, "the other 1 are not published"));
  f->post.n_media = 0;

  set_option(f, "categories", "News,,Events");
  set_option(f, "slug", "Spring Release");
  n_errors = 0;
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), CP_EINVAL);
  assert_int_equal(n_errors, 2);
  assert_non_null(strstr(diags, "categories = News,,Events: an empty name"));
  assert_non_null(strstr(diags, "slug = Spring Release: use 1 to"));

  /* WordPress counts characters: 150 "é" (300 bytes) fit, 201 "a" do not. */
  char accents[301], long_name[202];
  for (int i = 0; i < 150; i++)
    memcpy(accents + 2 * i, "\xc3\xa9", 2);
  accents[300] = '\0';
  memset(long_name, 'a', 201);
  long_name[201] = '\0';
  f->post.n_options = 0;
  set_option(f, "tags", accents);
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), 0);
  f->opts[0].value = long_name;
  n_errors = 0;
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(diags,
                         "tags: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' is longer than "
                         "WordPress's 200 characters"));

  f->post.n_options = 0;
  set_option(f, "slug", "spring-release");
  snprintf(f->post.occurrence, sizeof f->post.occurrence, "single");
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), 0);
  snprintf(f->post.occurrence, sizeof f->post.occurrence, "20240102T090000Z");
  n_errors = 0;
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(diags, "on a recurring event would give every occurrence the same"));

  f->post.n_options = 0;
  f->post.title = "";
  f->post.text = "";
  n_errors = 0;
  assert_int_equal(c->validate(f->mh.instance, &f->post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(diags, "no title, text or media"));

  json_decref(requests(f, 0)); /* validate never talks to the site */
  const char *const *o = c->post_options;
  assert_string_equal(o[0], "categories");
  assert_string_equal(o[1], "tags");
  assert_string_equal(o[2], "excerpt");
  assert_string_equal(o[3], "slug");
  assert_null(o[4]);
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
  int rc = cp_connector_wordpress.engagement(mh->instance, remote_id, "", &req);
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

static void engagement_counts_the_comments(void **state) {
  struct fixture *f = *state;
  assert_true(cp_connector_wordpress.caps & CP_CAP_ENGAGEMENT);
  connect_with(f, NULL);
  script(f, "[{'path': '/wp-json/wp/v2/comments', 'headers': {'X-WP-Total': '14', "
            "'X-WP-TotalPages': '14'}, 'json': [{'id': 88}]}]");
  struct cp_result res = engagement(f, "321");
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_true(res.has_engagement);
  assert_int_equal(res.http_status, 200);
  assert_int_equal(res.replies, 14);
  assert_int_equal(res.reposts, -1);
  assert_int_equal(res.likes, -1);
  assert_int_equal(res.quotes, -1);
  assert_int_equal(res.views, -1);
  json_t *reqs = requests(f, 1);
  json_t *r = assert_req(reqs, 0, "GET", "/wp-json/wp/v2/comments?post=321&per_page=1&_fields=id");
  assert_string_equal(json_string_value(json_object_get(r, "body")), "");
  assert_null(testserver_header(r, "Content-Type"));
  json_decref(reqs);
  assert_int_equal(f->mh.progress_saves, 0);

  /* No comments yet: an empty list and 0. */
  script(f, "[{'headers': {'X-WP-Total': '0', 'X-WP-TotalPages': '0'}, 'json': []}]");
  res = engagement(f, "322");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.replies, 0);
  json_decref(requests(f, 1));
}

static void engagement_with_rest_route(void **state) {
  struct fixture *f = *state;
  const char *extra[] = {"api_path", "/?rest_route=", NULL};
  connect_with(f, extra);
  script(f, "[{'headers': {'X-WP-Total': '3'}, 'json': [{'id': 1}]}]");
  struct cp_result res = engagement(f, "9");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.replies, 3);
  json_t *reqs = requests(f, 1);
  assert_req(reqs, 0, "GET", "/?rest_route=/wp/v2/comments&post=9&per_page=1&_fields=id");
  json_decref(reqs);
}

static const struct answer engagement_answers[] = {
    {"[{'status': 401, 'json': {'code': 'incorrect_password', 'message': 'The provided password "
     "is an invalid application password.', 'data': {'status': 401}}}]",
     1, "AUTH", 401, 0, -1, "reading the comments of post 77: HTTP 401 incorrect_password", ""},
    {"[{'status': 403, 'json': {'code': 'rest_cannot_read_post', 'message': 'Sorry, you are not "
     "allowed to read the post for this comment.', 'data': {'status': 403}}}]",
     1, "PERMANENT", 403, 0, -1, "HTTP 403 rest_cannot_read_post", ""},
    {"[{'status': 404, 'json': {'code': 'rest_no_route', 'message': 'No route was found "
     "matching the URL and request method.', 'data': {'status': 404}}}]",
     1, "PERMANENT", 404, 0, -1, "HTTP 404 rest_no_route", ""},
    {"[{'status': 429, 'headers': {'Retry-After': '45'}, 'body': 'slow down'}]", 1, "RATE_LIMITED",
     429, 0, 45000, "HTTP 429", ""},
    {"[{'status': 502, 'body': 'bad gateway'}]", 1, "RETRY", 502, 0, -1, "HTTP 502", ""},
    /* A read that got no answer changed nothing: RETRY, never UNKNOWN. */
    {"[{'reset': true, 'repeat': true}]", 0, "RETRY", 0, -ECONNRESET, -1,
     "reading the comments of post 77", ""},
    /* A cache that drops the header, or a page that is not the REST API. */
    {"[{'json': [{'id': 1}]}]", 1, "RETRY", 200, CP_EPARSE, -1, "X-WP-Total", ""},
    {"[{'headers': {'X-WP-Total': '5'}, 'body': '<html>Blog</html>'}]", 1, "RETRY", 200, CP_EPARSE,
     -1, "not WordPress's comment list", ""},
};

static void engagement_answers_give_their_outcome(void **state) {
  struct fixture *f = *state;
  connect_with(f, NULL);
  for (size_t i = 0; i < sizeof engagement_answers / sizeof engagement_answers[0]; i++) {
    const struct answer *a = &engagement_answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    script(f, a->script);
    struct cp_result res = engagement(f, "77");
    assert_string_equal(cp_outcome_name(res.outcome), a->outcome);
    assert_false(res.has_engagement);
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.err, a->err);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    json_t *reqs = testserver_requests(&f->ts), *r;
    size_t k;
    if (a->requests)
      assert_int_equal(json_array_size(reqs), a->requests);
    json_array_foreach(reqs, k, r) {
      assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
      assert_string_equal(json_string_value(json_object_get(r, "path")),
                          "/wp-json/wp/v2/comments?post=77&per_page=1&_fields=id");
    }
    json_decref(reqs);
  }
  assert_null(strstr(f->mh.log, "abcd efgh"));

  /* An id publish cannot have reported is refused at once, without a request or completion. */
  script(f, "[]");
  struct cp_publish_req req = {.host = &f->mh.host,
                               .attempt = 1,
                               .idempotency_key = "",
                               .host_data = &f->mh,
                               .progress = ""};
  int before = f->mh.completions;
  assert_int_equal(cp_connector_wordpress.engagement(f->mh.instance, "12&status=all", "", &req),
                   CP_EINVAL);
  assert_int_equal(cp_connector_wordpress.engagement(f->mh.instance, "", "", &req), CP_EINVAL);
  assert_int_equal(cp_connector_wordpress.engagement(f->mh.instance, "0", "", &req), CP_EINVAL);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, before);
  json_decref(requests(f, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(publish_sends_the_documented_requests, setup, teardown),
      cmocka_unit_test_setup_teardown(future_status_sends_the_due_time, setup, teardown),
      cmocka_unit_test_setup_teardown(summary_only_event_gets_no_duplicate_content, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(resend_finds_the_post_and_creates_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(chosen_slug_must_be_this_posts, setup, teardown),
      cmocka_unit_test_setup_teardown(retry_after_upload_reuses_the_media, setup, teardown),
      cmocka_unit_test_setup_teardown(missing_category_is_permanent, setup, teardown),
      cmocka_unit_test_setup_teardown(tags_missing_or_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(tag_creation_races_and_refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(media_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(each_answer_gives_its_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_asks_users_me, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_for_drafts_needs_edit_posts, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(password_from_env_and_trailing_slashes, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_without_io, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_counts_the_comments, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_with_rest_route, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_answers_give_their_outcome, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the wordpress connector is not built (CALPOST_CONNECTOR_WORDPRESS=OFF): skipped");
  return 0;
}
#endif
