// ctest-labels: connector
/* The HTTP client on the libuv loop, against tests/support/testserver.py over 127.0.0.1. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <uv.h>

#include "calpost/err.h"
#include "http.h"
#include "support/testserver.h"

struct fixture {
  struct testserver ts;
  uv_loop_t loop;
  struct cp_http *http;
};

/* What a callback saw, copied out of the borrowed response. */
struct got {
  int calls;
  int err;
  long status;
  bool sent;
  char body[256];
  size_t body_len;
  char retry_after[64];
  char ratelimit[64];
  char errmsg[256];
  int64_t elapsed_ms;
};

static void on_resp(const struct cp_http_resp *r, void *data) {
  struct got *g = data;
  const char *v;
  g->calls++;
  g->err = r->err;
  g->status = r->status;
  g->sent = r->sent;
  g->body_len = r->body_len;
  g->elapsed_ms = r->elapsed_ms;
  snprintf(g->body, sizeof g->body, "%s", r->body);
  snprintf(g->errmsg, sizeof g->errmsg, "%s", r->errmsg);
  v = cp_http_header(r, "retry-after");
  snprintf(g->retry_after, sizeof g->retry_after, "%s", v ? v : "");
  v = cp_http_header(r, "X-RATELIMIT-REMAINING");
  snprintf(g->ratelimit, sizeof g->ratelimit, "%s", v ? v : "");
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
  if (f->http)
    cp_http_close(f->http, closed, &n);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  if (f->http)
    assert_int_equal(n, 1);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  testserver_stop(&f->ts);
  free(f);
  return 0;
}

/* Runs one request to completion. */
static struct got run(struct fixture *f, const struct cp_http_req *req) {
  struct got g = {0};
  assert_int_equal(cp_http_request(f->http, req, on_resp, &g), 0);
  assert_int_equal(g.calls, 0); /* never from inside the call */
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(g.calls, 1);
  return g;
}

static void get_with_headers_and_body(void **state) {
  struct fixture *f = *state;
  char url[128];
  testserver_script(&f->ts, "[{\"status\": 200, \"headers\": {\"X-RateLimit-Remaining\": \"5\"},"
                            " \"body\": \"hello\"}]");
  struct cp_http_req req = {.url = testserver_url(&f->ts, "/feed?x=1", url, sizeof url)};
  struct got g = run(f, &req);
  assert_int_equal(g.err, 0);
  assert_int_equal(g.status, 200);
  assert_true(g.sent);
  assert_string_equal(g.body, "hello");
  assert_int_equal(g.body_len, 5);
  assert_string_equal(g.ratelimit, "5");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_string_equal(json_string_value(json_object_get(r, "path")), "/feed?x=1");
  assert_string_equal(json_string_value(json_object_get(r, "body")), "");
  assert_non_null(strstr(testserver_header(r, "User-Agent"), "calpost/"));
  json_decref(reqs);
}

static void post_and_put_send_exact_body_and_headers(void **state) {
  struct fixture *f = *state;
  char url[128];
  static const char body[] = "{\"text\":\"h\xc3\xa9llo\"}";
  struct cp_http_header hdrs[] = {{"Content-Type", "application/json"}, {"X-Empty", ""}};
  testserver_script(&f->ts, "[{\"status\": 201, \"json\": {\"id\": \"7\"}}, {\"status\": 204}]");

  struct cp_http_req req = {.method = "POST",
                            .url = testserver_url(&f->ts, "/hook", url, sizeof url),
                            .headers = hdrs,
                            .n_headers = 2,
                            .body = body,
                            .body_len = strlen(body)};
  struct got g = run(f, &req);
  assert_int_equal(g.status, 201);
  assert_string_equal(g.body, "{\"id\": \"7\"}");
  req.method = "PUT";
  g = run(f, &req);
  assert_int_equal(g.status, 204);
  assert_int_equal(g.body_len, 0);

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  const char *methods[] = {"POST", "PUT"};
  for (size_t i = 0; i < 2; i++) {
    json_t *r = json_array_get(reqs, i);
    assert_string_equal(json_string_value(json_object_get(r, "method")), methods[i]);
    assert_string_equal(json_string_value(json_object_get(r, "path")), "/hook");
    assert_string_equal(json_string_value(json_object_get(r, "body")), body);
    assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
    assert_string_equal(testserver_header(r, "X-Empty"), "");
    assert_null(testserver_header(r, "Expect")); /* no 100-continue round trip */
  }
  json_decref(reqs);
}

static void refused_connection_is_not_sent(void **state) {
  struct fixture *f = *state;
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", testserver_dead_port());
  struct cp_http_req req = {.url = url, .body = "x", .body_len = 1};
  struct got g = run(f, &req);
  assert_int_equal(g.err, -ECONNREFUSED);
  assert_int_equal(g.status, 0);
  assert_false(g.sent);
  assert_true(g.errmsg[0] != '\0');
}

static void reset_after_request_is_sent(void **state) {
  struct fixture *f = *state;
  char url[128];
  testserver_script(&f->ts, "[{\"reset\": true}]");
  struct cp_http_req req = {
      .url = testserver_url(&f->ts, "/hook", url, sizeof url), .body = "x", .body_len = 1};
  struct got g = run(f, &req);
  assert_int_equal(g.err, -ECONNRESET);
  assert_int_equal(g.status, 0);
  assert_true(g.sent);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1); /* it did arrive */
  json_decref(reqs);
}

/* libcurl resends a request whose reused connection dies before any answer; for a POST that did
 * arrive that would be a duplicate post. */
static void post_is_never_resent_silently(void **state) {
  struct fixture *f = *state;
  char url[128];
  char script[1024] = "[";
  for (int i = 0; i < 10; i++)
    strcat(script,
           i ? ", {\"status\": 200}, {\"reset\": true}" : "{\"status\": 200}, {\"reset\": true}");
  strcat(script, "]");
  testserver_script(&f->ts, script);
  struct cp_http_req get = {.url = testserver_url(&f->ts, "/warm", url, sizeof url)};
  struct cp_http_req post = {.url = url, .body = "x", .body_len = 1};
  for (int i = 0; i < 10; i++) {
    struct got g = run(f, &get); /* leaves a kept-alive connection behind */
    assert_int_equal(g.status, 200);
    g = run(f, &post);
    assert_int_equal(g.err, -ECONNRESET);
    assert_true(g.sent);
  }
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 20);
  json_decref(reqs);
}

static void slow_server_times_out(void **state) {
  struct fixture *f = *state;
  char url[128];
  testserver_script(&f->ts, "[{\"delay\": 3, \"status\": 200}]");
  struct cp_http_req req = {.url = testserver_url(&f->ts, "/slow", url, sizeof url),
                            .timeout_ms = 300};
  struct got g = run(f, &req);
  assert_int_equal(g.err, -ETIMEDOUT);
  assert_int_equal(g.status, 0);
  assert_true(g.sent);
  assert_true(g.elapsed_ms >= 250 && g.elapsed_ms < 2000);
}

static void body_over_cap_is_cut(void **state) {
  struct fixture *f = *state;
  char url[128];
  /* With a Content-Length (refused up front) and chunked (stopped by the write callback). */
  testserver_script(&f->ts, "[{\"status\": 200, \"body_size\": 200000},"
                            " {\"status\": 200, \"body_size\": 200000, \"chunked\": true},"
                            " {\"status\": 200, \"body_size\": 9000, \"chunked\": true}]");
  struct cp_http_req req = {.url = testserver_url(&f->ts, "/big", url, sizeof url),
                            .max_response = 10000};
  struct got g = run(f, &req);
  assert_int_equal(g.err, CP_ETOOBIG);
  assert_int_equal(g.status, 200);
  g = run(f, &req);
  assert_int_equal(g.err, CP_ETOOBIG);
  assert_int_equal(g.status, 200);
  assert_true(g.body_len <= 10000);
  /* Under the cap, headers included, it all arrives. */
  g = run(f, &req);
  assert_int_equal(g.err, 0);
  assert_int_equal(g.body_len, 9000);
}

static void redirects_are_not_followed_to_http(void **state) {
  struct fixture *f = *state;
  char url[128], loc[160];
  snprintf(loc, sizeof loc,
           "[{\"status\": 302, \"headers\": {\"Location\": \"http://127.0.0.1:%d/elsewhere\"},"
           " \"repeat\": true, \"path\": \"/moved\"}]",
           f->ts.port);
  testserver_script(&f->ts, loc);
  struct cp_http_req req = {.url = testserver_url(&f->ts, "/moved", url, sizeof url)};
  struct got g = run(f, &req);
  assert_int_equal(g.err, 0);
  assert_int_equal(g.status, 302); /* off by default: the caller sees the redirect */
  req.follow_redirects = true;
  g = run(f, &req);
  assert_int_equal(g.err, CP_EINVAL); /* https only */
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2); /* /elsewhere was never asked for */
  json_decref(reqs);
}

static void bad_requests_fail_without_callback(void **state) {
  struct fixture *f = *state;
  struct got g = {0};
  struct cp_http_header crlf[] = {{"X-A", "b\r\nX-Injected: 1"}};
  struct cp_http_req bad[] = {
      {.url = "ftp://127.0.0.1/x"},
      {.url = "not a url"},
      {.url = "http://127.0.0.1/", .method = "get"},
      {.url = "http://127.0.0.1/", .headers = crlf, .n_headers = 1},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(cp_http_request(f->http, &bad[i], on_resp, &g), CP_EINVAL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(g.calls, 0);
}

static int chain_left;
static char chain_url[128];

static void on_chain(const struct cp_http_resp *r, void *data) {
  struct fixture *f = data;
  assert_int_equal(r->status, 200);
  if (--chain_left > 0) {
    struct cp_http_req req = {.url = chain_url};
    assert_int_equal(cp_http_request(f->http, &req, on_chain, f), 0);
  }
}

static void many_parallel_and_chained(void **state) {
  struct fixture *f = *state;
  char url[128];
  struct got g[20] = {{0}};
  testserver_script(&f->ts, "[]");
  struct cp_http_req req = {.url = testserver_url(&f->ts, "/p", url, sizeof url)};
  for (int i = 0; i < 20; i++)
    assert_int_equal(cp_http_request(f->http, &req, on_resp, &g[i]), 0);
  /* A request started from another's callback. */
  chain_left = 3;
  testserver_url(&f->ts, "/chain", chain_url, sizeof chain_url);
  struct cp_http_req creq = {.url = chain_url};
  assert_int_equal(cp_http_request(f->http, &creq, on_chain, f), 0);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 20; i++) {
    assert_int_equal(g[i].calls, 1);
    assert_int_equal(g[i].status, 200);
  }
  assert_int_equal(chain_left, 0);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 23);
  json_decref(reqs);
}

static void multipart_body_is_built_by_libcurl(void **state) {
  struct fixture *f = *state;
  char url[128];
  static const char png[] = "\x89PNG\r\n\x1a\n\x00\x01";
  struct cp_http_part parts[] = {
      {.name = "description", .data = "Alt t\xc3\xa9xt"},
      {.name = "file",
       .filename = "a.png",
       .content_type = "image/png",
       .data = png,
       .len = sizeof png - 1},
  };
  struct cp_http_req req = {
      .url = testserver_url(&f->ts, "/upload", url, sizeof url), .parts = parts, .n_parts = 2};
  struct got g = run(f, &req);
  assert_int_equal(g.status, 200);

  json_t *reqs = testserver_requests(&f->ts);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "POST");
  const char *ct = testserver_header(r, "Content-Type");
  assert_non_null(strstr(ct, "multipart/form-data; boundary="));
  const char *body = json_string_value(json_object_get(r, "body"));
  assert_non_null(strstr(body, "Content-Disposition: form-data; name=\"description\"\r\n\r\n"
                               "Alt t\xc3\xa9xt\r\n"));
  assert_non_null(strstr(body, "Content-Disposition: form-data; name=\"file\"; "
                               "filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"));
  json_decref(reqs);

  struct cp_http_req both = {.url = url, .parts = parts, .n_parts = 2, .body = "x", .body_len = 1};
  struct got g2 = {0};
  assert_int_equal(cp_http_request(f->http, &both, on_resp, &g2), CP_EINVAL);
}

static void public_only_refuses_local_addresses(void **state) {
  struct fixture *f = *state;
  char url[128];
  struct cp_http_req req = {.url = testserver_url(&f->ts, "/img.png", url, sizeof url),
                            .public_only = true};
  struct got g = run(f, &req);
  assert_int_not_equal(g.err, 0);
  assert_int_equal(g.status, 0);
  assert_false(g.sent);
  assert_non_null(strstr(g.errmsg, "local or private network"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0); /* nothing reached the server */
  json_decref(reqs);
  /* localhost by name resolves to loopback too, and is refused the same way. */
  snprintf(url, sizeof url, "http://localhost:%d/img.png", f->ts.port);
  g = run(f, &req);
  assert_non_null(strstr(g.errmsg, "local or private network"));
}

static void close_timer(uv_timer_t *t) {
  struct fixture *f = t->data;
  cp_http_close(f->http, NULL, NULL);
  f->http = NULL;
  uv_close((uv_handle_t *)t, NULL);
}

static void close_cancels_requests_in_flight(void **state) {
  struct fixture *f = *state;
  char url[128];
  struct got g = {0};
  uv_timer_t t;
  testserver_script(&f->ts, "[{\"delay\": 3}]");
  struct cp_http_req req = {.url = testserver_url(&f->ts, "/slow", url, sizeof url)};
  assert_int_equal(cp_http_request(f->http, &req, on_resp, &g), 0);
  uv_timer_init(&f->loop, &t);
  t.data = f;
  uv_timer_start(&t, close_timer, 200, 0);
  uint64_t start = uv_now(&f->loop);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(g.calls, 1);
  assert_int_equal(g.err, -ECANCELED);
  assert_true(uv_now(&f->loop) - start < 2000); /* nothing waited for the slow server */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(get_with_headers_and_body, setup, teardown),
      cmocka_unit_test_setup_teardown(post_and_put_send_exact_body_and_headers, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_not_sent, setup, teardown),
      cmocka_unit_test_setup_teardown(reset_after_request_is_sent, setup, teardown),
      cmocka_unit_test_setup_teardown(post_is_never_resent_silently, setup, teardown),
      cmocka_unit_test_setup_teardown(slow_server_times_out, setup, teardown),
      cmocka_unit_test_setup_teardown(body_over_cap_is_cut, setup, teardown),
      cmocka_unit_test_setup_teardown(redirects_are_not_followed_to_http, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_requests_fail_without_callback, setup, teardown),
      cmocka_unit_test_setup_teardown(many_parallel_and_chained, setup, teardown),
      cmocka_unit_test_setup_teardown(close_cancels_requests_in_flight, setup, teardown),
      cmocka_unit_test_setup_teardown(multipart_body_is_built_by_libcurl, setup, teardown),
      cmocka_unit_test_setup_teardown(public_only_refuses_local_addresses, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
