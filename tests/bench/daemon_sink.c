/* A fast HTTP sink for the daemon benchmark: libh2o on one libuv loop, HTTP/1.1 on 127.0.0.1.
 * Answers every request 200 {"id":"N"} and logs one line per request:
 *   <receive time, Unix microseconds> <due_unix from the JSON body, or 0> <Idempotency-Key or ->
 * The time is taken when h2o hands over the complete request (headers and body). Lines are kept
 * in memory and written to LOG every 100 ms and at SIGTERM/SIGINT, so logging costs no syscall
 * per request. With BODY, the first request body is saved there (wrk sends the same bytes).
 *
 *   daemon_sink PORT LOG [BODY]        PORT 0 picks a free port; prints "port N" on stdout
 *
 * Build: cc -O2 -o daemon_sink daemon_sink.c $(pkg-config --cflags --libs libh2o libuv) -lssl
 *        -lcrypto */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <h2o.h>
#include <uv.h>

static h2o_globalconf_t config;
static h2o_context_t ctx;
static h2o_accept_ctx_t accept_ctx;
static uv_tcp_t listener;
static uv_timer_t flusher;
static uv_signal_t sig_term, sig_int;
static FILE *log_file;
static char *buf; /* log lines not yet written */
static size_t buf_len, buf_cap;
static unsigned long long n_requests;
static const char *body_path;

static void flush_log(void) {
  if (!buf_len)
    return;
  fwrite(buf, 1, buf_len, log_file);
  fflush(log_file);
  buf_len = 0;
}

static void append(const char *s, size_t n) {
  if (buf_len + n > buf_cap) {
    size_t cap = buf_cap ? buf_cap * 2 : 1 << 20;
    while (cap < buf_len + n)
      cap *= 2;
    char *nb = realloc(buf, cap);
    if (!nb) {
      flush_log();
      if (n > buf_cap)
        return;
    } else {
      buf = nb;
      buf_cap = cap;
    }
  }
  memcpy(buf + buf_len, s, n);
  buf_len += n;
}

/* The integer after "due_unix": in a JSON body, or 0. */
static long long due_unix(const char *b, size_t len) {
  static const char key[] = "\"due_unix\":";
  const char *end = b + len;
  for (const char *p = b; p && p + sizeof key - 1 < end;) {
    p = memchr(p, '"', (size_t)(end - p));
    if (!p || p + sizeof key - 1 >= end)
      break;
    if (!memcmp(p, key, sizeof key - 1)) {
      long long v = 0;
      for (p += sizeof key - 1; p < end && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (*p - '0');
      return v;
    }
    p++;
  }
  return 0;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  n_requests++;
  ssize_t i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("idempotency-key"), -1);
  h2o_iovec_t key = i >= 0 ? req->headers.entries[i].value : h2o_iovec_init(H2O_STRLIT("-"));
  char line[256];
  int n = snprintf(
      line, sizeof line, "%lld %lld %.*s\n", (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
      due_unix(req->entity.base, req->entity.len), (int)(key.len > 128 ? 128 : key.len), key.base);
  append(line, (size_t)n);
  if (body_path && req->entity.len) {
    FILE *f = fopen(body_path, "wb");
    if (f) {
      fwrite(req->entity.base, 1, req->entity.len, f);
      fclose(f);
    }
    body_path = NULL;
  }
  char out[64];
  int len = snprintf(out, sizeof out, "{\"id\":\"%llu\"}", n_requests);
  req->res.status = 200;
  req->res.reason = "OK";
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                 H2O_STRLIT("application/json"));
  h2o_send_inline(req, out, (size_t)len);
  return 0;
}

static void on_closed(uv_handle_t *h) {
  free(h);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0)
    return;
  uv_tcp_t *conn = malloc(sizeof *conn);
  if (!conn)
    return;
  uv_tcp_init(server->loop, conn);
  if (uv_accept(server, (uv_stream_t *)conn) < 0) {
    uv_close((uv_handle_t *)conn, on_closed);
    return;
  }
  uv_tcp_nodelay(conn, 1);
  h2o_accept(&accept_ctx, h2o_uv_socket_create((uv_stream_t *)conn, on_closed));
}

static void on_flush(uv_timer_t *t) {
  flush_log();
}

static void on_signal(uv_signal_t *s, int signum) {
  flush_log();
  fclose(log_file);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: daemon_sink PORT LOG [BODY]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  log_file = fopen(argv[2], "w");
  if (!log_file) {
    perror(argv[2]);
    return 1;
  }
  body_path = argc > 3 ? argv[3] : NULL;
  uv_loop_t *loop = uv_default_loop();
  h2o_config_init(&config);
  config.http1.upgrade_to_http2 = 0;
  h2o_hostconf_t *host =
      h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
  h2o_handler_t *h = h2o_create_handler(path, sizeof *h);
  h->on_req = on_req;
  h2o_context_init(&ctx, loop, &config);
  accept_ctx.ctx = &ctx;
  accept_ctx.hosts = config.hosts;

  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
  uv_tcp_init(loop, &listener);
  int rc = uv_tcp_bind(&listener, (struct sockaddr *)&addr, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&listener, 4096, on_connection);
  if (rc < 0) {
    fprintf(stderr, "daemon_sink: listen on 127.0.0.1:%s: %s\n", argv[1], uv_strerror(rc));
    return 1;
  }
  struct sockaddr_in bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&listener, (struct sockaddr *)&bound, &blen);
  printf("port %d\n", ntohs(bound.sin_port));
  fflush(stdout);
  uv_timer_init(loop, &flusher);
  uv_timer_start(&flusher, on_flush, 100, 100);
  uv_signal_init(loop, &sig_term);
  uv_signal_init(loop, &sig_int);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  return uv_run(loop, UV_RUN_DEFAULT);
}
