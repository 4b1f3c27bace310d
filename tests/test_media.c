/* Media loading for connectors: local files and URLs, with the type, size and address rules. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <uv.h>

#include "calpost/err.h"
#include "http.h"
#include "media.h"
#include "support/testserver.h"

struct fixture {
  struct testserver ts;
  uv_loop_t loop;
  struct cp_http *http;
};

struct got {
  int calls;
  int err;
  char errmsg[512];
  char type[64];
  char filename[64];
  char alt[64];
  size_t len;
  unsigned char head[8];
};

static void on_blob(const struct cp_media_blob *b, void *data) {
  struct got *g = data;
  g->calls++;
  g->err = b->err;
  snprintf(g->errmsg, sizeof g->errmsg, "%s", b->errmsg);
  snprintf(g->type, sizeof g->type, "%s", b->content_type ? b->content_type : "");
  snprintf(g->filename, sizeof g->filename, "%s", b->filename ? b->filename : "");
  snprintf(g->alt, sizeof g->alt, "%s", b->alt ? b->alt : "");
  g->len = b->len;
  if (b->data)
    memcpy(g->head, b->data, b->len < 8 ? b->len : 8);
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  assert_int_equal(cp_http_init(&f->loop, &f->http), 0);
  *state = f;
  return 0;
}

static void closed(void *data) {
  (*(int *)data)++;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  int n = 0;
  cp_http_close(f->http, closed, &n);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(n, 1);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  testserver_stop(&f->ts);
  free(f);
  return 0;
}

static struct got load(struct fixture *f, const struct cp_media_opts *o, const char *src,
                       const char *alt) {
  struct got g = {0};
  struct cp_media m = {(char *)src, (char *)alt};
  assert_int_equal(cp_media_load(&f->loop, f->http, o, &m, on_blob, &g), 0);
  assert_int_equal(g.calls, 0); /* never from inside the call */
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(g.calls, 1);
  return g;
}

static const char *data_path(const char *name) {
  static char buf[512];
  snprintf(buf, sizeof buf, "%s/media/%s", CP_TEST_DATA, name);
  return buf;
}

static void local_image_is_read_and_typed(void **state) {
  struct fixture *f = *state;
  struct cp_media_opts o = {0};
  struct got g = load(f, &o, data_path("pixel.png"), "A red pixel");
  assert_int_equal(g.err, 0);
  assert_string_equal(g.type, "image/png");
  assert_string_equal(g.filename, "pixel.png");
  assert_string_equal(g.alt, "A red pixel");
  assert_memory_equal(g.head, "\x89PNG", 4);
  g = load(f, &o, data_path("pixel.gif"), NULL);
  assert_int_equal(g.err, 0);
  assert_string_equal(g.type, "image/gif");
  assert_string_equal(g.alt, "");
}

static void local_file_that_is_not_an_image_is_refused(void **state) {
  struct fixture *f = *state;
  struct cp_media_opts o = {0};
  struct got g = load(f, &o, data_path("not-an-image.png"), NULL);
  assert_int_equal(g.err, CP_EINVAL);
  assert_non_null(strstr(g.errmsg, "not an image or a video"));
  assert_non_null(strstr(g.errmsg, "text/html"));
  g = load(f, &o, data_path("missing.png"), NULL);
  assert_int_equal(g.err, -ENOENT);
  assert_non_null(strstr(g.errmsg, "missing.png"));
  o.max_size = 10; /* pixel.png is larger */
  g = load(f, &o, data_path("pixel.png"), NULL);
  assert_int_equal(g.err, CP_ETOOBIG);
  assert_non_null(strstr(g.errmsg, "the limit is 10"));
}

static char png_b64[256];

static void script_png(struct fixture *f, const char *content_type, const char *path) {
  char script[1024];
  snprintf(script, sizeof script,
           "[{\"path\": \"%s\", \"headers\": {\"Content-Type\": \"%s\"}, \"body_b64\": \"%s\"}]",
           path, content_type, png_b64);
  testserver_script(&f->ts, script);
}

static void url_image_is_fetched_and_checked(void **state) {
  struct fixture *f = *state;
  struct cp_media_opts o = {.allow_local = true};
  char url[160];
  script_png(f, "image/png", "/img/launch.png");
  struct got g = load(f, &o, testserver_url(&f->ts, "/img/launch.png?v=2", url, sizeof url), "x");
  assert_int_equal(g.err, 0);
  assert_string_equal(g.type, "image/png");
  assert_string_equal(g.filename, "launch.png");
  assert_memory_equal(g.head, "\x89PNG", 4);

  /* A login page served instead of the image. */
  testserver_script(&f->ts, "[{\"headers\": {\"Content-Type\": \"text/html\"}, "
                            "\"body\": \"<html>sign in</html>\"}]");
  g = load(f, &o, url, NULL);
  assert_int_equal(g.err, CP_EINVAL);
  assert_non_null(strstr(g.errmsg, "text/html, not an image"));
  /* A server that says image/png about HTML. */
  testserver_script(&f->ts, "[{\"headers\": {\"Content-Type\": \"image/png\"}, "
                            "\"body\": \"<html>sign in</html>\"}]");
  g = load(f, &o, url, NULL);
  assert_int_equal(g.err, CP_EINVAL);
  assert_non_null(strstr(g.errmsg, "its content is text/html"));
  /* Not found. */
  testserver_script(&f->ts, "[{\"status\": 404}]");
  g = load(f, &o, url, NULL);
  assert_int_equal(g.err, -EIO);
  assert_non_null(strstr(g.errmsg, "HTTP 404"));
  /* Over the cap. */
  o.max_size = 1000;
  testserver_script(&f->ts, "[{\"headers\": {\"Content-Type\": \"image/png\"}, "
                            "\"body_size\": 200000}]");
  g = load(f, &o, url, NULL);
  assert_int_equal(g.err, CP_ETOOBIG);
}

static void url_rules_https_and_public_addresses(void **state) {
  struct fixture *f = *state;
  struct cp_media_opts o = {0};
  struct got g = {0};
  struct cp_media plain = {"http://example.org/a.png", NULL};
  struct cp_media file = {"file:///etc/passwd", NULL};
  assert_int_equal(cp_media_load(&f->loop, f->http, &o, &plain, on_blob, &g), CP_EINVAL);
  assert_int_equal(cp_media_load(&f->loop, f->http, &o, &file, on_blob, &g), CP_EINVAL);
  char url[160];
  /* Plain http to loopback only when local addresses are allowed (tests). */
  struct cp_media loop_http = {(char *)testserver_url(&f->ts, "/a.png", url, sizeof url), NULL};
  assert_int_equal(cp_media_load(&f->loop, f->http, &o, &loop_http, on_blob, &g), CP_EINVAL);
  /* https to a loopback address: refused before any byte is sent. */
  snprintf(url, sizeof url, "https://127.0.0.1:%d/a.png", f->ts.port);
  g = load(f, &o, url, NULL);
  assert_int_not_equal(g.err, 0);
  assert_non_null(strstr(g.errmsg, "local or private network"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
  assert_int_equal(g.calls, 1);
}

int main(void) {
  /* pixel.png as base64, for the server to send. */
  FILE *fp = fopen(data_path("pixel.png"), "rb");
  unsigned char raw[128];
  size_t n = fread(raw, 1, sizeof raw, fp);
  fclose(fp);
  EVP_EncodeBlock((unsigned char *)png_b64, raw, (int)n);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(local_image_is_read_and_typed, setup, teardown),
      cmocka_unit_test_setup_teardown(local_file_that_is_not_an_image_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(url_image_is_fetched_and_checked, setup, teardown),
      cmocka_unit_test_setup_teardown(url_rules_https_and_public_addresses, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
