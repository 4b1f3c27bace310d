// ctest-labels: integration
/* The control API end to end: the h2o server on a real loop in a second thread (the client
 * blocks), the libcurl client, raw HTTP for what the client never sends, and the CLI commands
 * with their output captured. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <uv.h>

#include "calpost/err.h"
#include "cli_control.h"
#include "control.h"

/* ---------------------------------------------------------------------------------------- */
/* The fake daemon                                                                           */

/* What the ops saw. Written on the server thread; read on the main thread after the answer
 * arrived (the answer is sent after the op returns), under the mutex all the same. */
struct fake {
  pthread_mutex_t mu;
  int calls;
  char op[16];
  char channel[64]; /* "(all)" for NULL */
  int64_t until_ms;
  char id[160];
};

static const char status_json[] =
    "{\"state\":\"running\",\"paused_all\":false,"
    "\"held_changes\":[{\"calendar\":\"editorial\",\"source\":\"plans/x.ics\","
    "\"reason\":\"would cancel 12 posts\"}],"
    "\"channels\":["
    "{\"name\":\"mastodon\",\"type\":\"mastodon\",\"paused\":false,\"paused_until\":null,"
    "\"queue_depth\":3,\"next\":{\"id\":\"3f9c2a7d41e0b6a1\",\"due\":\"2036-11-22T10:00:00Z\","
    "\"title\":\"Tip of the week\"},\"last_error\":null,\"sent\":10,\"failed\":1,\"missed\":0,"
    "\"unknown\":0},"
    "{\"name\":\"bluesky\",\"type\":\"bluesky\",\"paused\":true,"
    "\"paused_until\":\"2036-11-23T08:00:00Z\",\"queue_depth\":0,\"next\":null,"
    "\"last_error\":\"HTTP 503: \\u001b[31mdown\",\"sent\":0,\"failed\":2,\"missed\":1,"
    "\"unknown\":4}]}";

static void record(void *d, const char *op, const char *channel, int64_t until_ms, const char *id) {
  struct fake *f = d;
  pthread_mutex_lock(&f->mu);
  f->calls++;
  snprintf(f->op, sizeof f->op, "%s", op);
  snprintf(f->channel, sizeof f->channel, "%s", channel ? channel : "(all)");
  f->until_ms = until_ms;
  snprintf(f->id, sizeof f->id, "%s", id ? id : "");
  pthread_mutex_unlock(&f->mu);
}

static int fake_status(void *d, json_t **out) {
  record(d, "status", NULL, 0, NULL);
  *out = json_loads(status_json, 0, NULL);
  return 200;
}

static int fake_pause(void *d, const char *channel, int64_t until_ms, json_t **out) {
  record(d, "pause", channel, until_ms, NULL);
  *out = json_pack("{s:b,s:s}", "paused", 1, "channel", channel ? channel : "all");
  return 200;
}

static int fake_resume(void *d, const char *channel, json_t **out) {
  record(d, "resume", channel, 0, NULL);
  *out = json_pack("{s:b}", "paused", 0);
  return 200;
}

static int fake_retry(void *d, const char *id, json_t **out) {
  record(d, "retry", NULL, 0, id);
  if (!strcmp(id, "missing")) {
    *out = json_pack("{s:s}", "error", "no post with id missing");
    return 404;
  }
  *out = json_pack("{s:s,s:s}", "id", id, "state", "pending");
  return 200;
}

static int fake_skip(void *d, const char *id, json_t **out) {
  record(d, "skip", NULL, 0, id);
  if (!strcmp(id, "0000000000000001")) {
    *out = json_pack("{s:s}", "error", "only pending or unknown posts can be skipped");
    return 409;
  }
  *out = json_pack("{s:s,s:s}", "id", id, "state", "skipped");
  return 200;
}

static int fake_confirm(void *d, json_t **out) {
  record(d, "confirm", NULL, 0, NULL);
  *out = json_pack("{s:b}", "confirmed", 1);
  return 200;
}

static const struct cp_control_ops fake_ops = {
    .status = fake_status,
    .pause = fake_pause,
    .resume = fake_resume,
    .retry = fake_retry,
    .skip = fake_skip,
    .confirm = fake_confirm,
};

/* ---------------------------------------------------------------------------------------- */
/* The server thread                                                                         */

struct server {
  char dir[64];
  char path[128];
  struct fake fake;
  sem_t started, stopped;
  uv_loop_t loop;
  uv_async_t wake;
  struct cp_control *ctl;
  int start_rc;
  int done_calls;
  bool file_gone_at_done;
  int loop_close_rc;
};

static void on_done(void *arg) {
  struct server *s = arg;
  s->done_calls++;
  s->file_gone_at_done = access(s->path, F_OK) < 0 && errno == ENOENT;
}

static void on_wake(uv_async_t *a) {
  struct server *s = a->data;
  cp_control_stop(s->ctl, on_done, s);
  uv_close((uv_handle_t *)a, NULL);
}

/* The servers run one after the other on one long-lived thread, each on a fresh loop. One
 * thread, because h2o keeps per-thread caches of freed memory (thread-local, not reachable
 * through its API) that a thread takes with it when it exits, which LeakSanitizer reports; the
 * daemon runs its loop on the main thread, where they stay reachable. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct server *job;
  bool running;
} host = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, false};

static void *host_main(void *arg) {
  for (;;) {
    pthread_mutex_lock(&host.mu);
    while (!host.job)
      pthread_cond_wait(&host.cv, &host.mu);
    struct server *s = host.job;
    host.job = NULL;
    pthread_mutex_unlock(&host.mu);

    uv_loop_init(&s->loop);
    uv_async_init(&s->loop, &s->wake, on_wake);
    s->wake.data = s;
    s->start_rc = cp_control_start(&s->loop, s->path, &fake_ops, &s->fake, &s->ctl);
    sem_post(&s->started);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    s->loop_close_rc = uv_loop_close(&s->loop);
    sem_post(&s->stopped);
  }
  return NULL;
}

static void server_start(struct server *s) {
  if (!host.running) {
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, host_main, NULL), 0);
    pthread_detach(t); /* still waiting for work at exit */
    host.running = true;
  }
  sem_init(&s->started, 0, 0);
  sem_init(&s->stopped, 0, 0);
  pthread_mutex_lock(&host.mu);
  host.job = s;
  pthread_cond_signal(&host.cv);
  pthread_mutex_unlock(&host.mu);
  sem_wait(&s->started);
}

/* Stops the server and checks it left nothing behind. */
static void server_stop(struct server *s) {
  uv_async_send(&s->wake);
  sem_wait(&s->stopped);
  sem_destroy(&s->started);
  sem_destroy(&s->stopped);
  assert_int_equal(s->done_calls, s->ctl ? 1 : 0);
  assert_int_equal(s->loop_close_rc, 0);
  if (s->ctl)
    assert_true(s->file_gone_at_done);
}

static int setup(void **state) {
  struct server *s = calloc(1, sizeof *s);
  strcpy(s->dir, "/tmp/cp-control-XXXXXX");
  if (!mkdtemp(s->dir))
    return -1;
  snprintf(s->path, sizeof s->path, "%s/calpost.sock", s->dir);
  pthread_mutex_init(&s->fake.mu, NULL);
  server_start(s);
  if (s->start_rc != 0)
    return -1;
  *state = s;
  return 0;
}

static int teardown(void **state) {
  struct server *s = *state;
  server_stop(s);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", s->dir);
  if (system(cmd) != 0)
    return -1;
  pthread_mutex_destroy(&s->fake.mu);
  free(s);
  return 0;
}

static struct fake last(struct server *s) {
  pthread_mutex_lock(&s->fake.mu);
  struct fake f = s->fake;
  pthread_mutex_unlock(&s->fake.mu);
  return f;
}

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                   */

/* cp_control_call with the body given as JSON text. */
static int call(struct server *s, const char *method, const char *url, const char *body,
                json_t **out) {
  json_t *b = body ? json_loads(body, 0, NULL) : NULL;
  if (body)
    assert_non_null(b);
  char err[256];
  int rc = cp_control_call(s->path, method, url, b, out, err, sizeof err);
  json_decref(b);
  return rc;
}

static const char *error_of(json_t *o) {
  const char *e = json_string_value(json_object_get(o, "error"));
  return e ? e : "";
}

static int raw_connect(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

static void send_all(int fd, const char *buf, size_t len) {
  while (len) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    assert_true(n > 0);
    buf += n;
    len -= (size_t)n;
  }
}

/* Sends a raw request with Connection: close, reads the answer to EOF; returns the status and
 * the parsed JSON body in *out. */
static int raw_request(struct server *s, const char *method, const char *url, const char *body,
                       size_t body_len, json_t **out) {
  int fd = raw_connect(s->path);
  assert_true(fd >= 0);
  char head[512];
  int n = snprintf(head, sizeof head,
                   "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                   method, url, body_len);
  send_all(fd, head, (size_t)n);
  if (body_len)
    send_all(fd, body, body_len);
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  ssize_t r;
  while ((r = recv(fd, buf + len, cap - len - 1, 0)) > 0) {
    len += (size_t)r;
    assert_true(len < cap - 1);
  }
  close(fd);
  buf[len] = '\0';
  int status = 0;
  assert_int_equal(sscanf(buf, "HTTP/1.1 %d", &status), 1);
  const char *b = strstr(buf, "\r\n\r\n");
  assert_non_null(b);
  *out = json_loads(b + 4, 0, NULL);
  free(buf);
  return status;
}

/* Runs a CLI command with stdout and stderr captured (NUL-terminated, at most 8 KiB each). */
static int run_cli(int (*fn)(int, char **), char *out, char *err, ...) {
  char *argv[16];
  int argc = 0;
  va_list ap;
  va_start(ap, err);
  const char *a;
  while ((a = va_arg(ap, const char *)) && argc < 15)
    argv[argc++] = (char *)a;
  va_end(ap);
  argv[argc] = NULL;
  FILE *fo = tmpfile(), *fe = tmpfile();
  fflush(stdout);
  fflush(stderr);
  int so = dup(1), se = dup(2);
  dup2(fileno(fo), 1);
  dup2(fileno(fe), 2);
  int rc = fn(argc, argv);
  fflush(stdout);
  fflush(stderr);
  dup2(so, 1);
  dup2(se, 2);
  close(so);
  close(se);
  FILE *files[2] = {fo, fe};
  char *bufs[2] = {out, err};
  for (int i = 0; i < 2; i++) {
    rewind(files[i]);
    size_t n = fread(bufs[i], 1, 8191, files[i]);
    bufs[i][n] = '\0';
    fclose(files[i]);
  }
  return rc;
}

static int64_t utc_ms(int y, int mo, int d, int h, int mi) {
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
  return (int64_t)timegm(&tm) * 1000;
}

/* ---------------------------------------------------------------------------------------- */
/* Endpoints                                                                                 */

static void status_returns_the_daemons_answer(void **state) {
  struct server *s = *state;
  json_t *out, *want = json_loads(status_json, 0, NULL);
  assert_int_equal(call(s, "GET", "/v1/status", NULL, &out), 200);
  assert_true(json_equal(out, want));
  assert_string_equal(last(s).op, "status");
  json_decref(out);
  json_decref(want);
}

static void pause_passes_channel_and_until(void **state) {
  struct server *s = *state;
  json_t *out;
  assert_int_equal(call(s, "POST", "/v1/pause",
                        "{\"channel\":\"mastodon\",\"until\":\"2036-11-22T10:00:00+01:00\"}", &out),
                   200);
  struct fake f = last(s);
  assert_string_equal(f.op, "pause");
  assert_string_equal(f.channel, "mastodon");
  assert_int_equal(f.until_ms, utc_ms(2036, 11, 22, 9, 0));
  assert_string_equal(json_string_value(json_object_get(out, "channel")), "mastodon");
  json_decref(out);

  assert_int_equal(call(s, "POST", "/v1/pause", "{\"channel\":null,\"until\":null}", &out), 200);
  f = last(s);
  assert_string_equal(f.channel, "(all)");
  assert_int_equal(f.until_ms, 0);
  json_decref(out);

  assert_int_equal(
      call(s, "POST", "/v1/pause", "{\"channel\":\"x\",\"until\":\"2036-01-02T03:04Z\"}", &out),
      200);
  assert_int_equal(last(s).until_ms, utc_ms(2036, 1, 2, 3, 4));
  json_decref(out);
}

static void resume_retry_skip_confirm_reach_their_ops(void **state) {
  struct server *s = *state;
  json_t *out;
  assert_int_equal(call(s, "POST", "/v1/resume", "{\"channel\":\"bluesky\"}", &out), 200);
  assert_string_equal(last(s).op, "resume");
  assert_string_equal(last(s).channel, "bluesky");
  json_decref(out);
  assert_int_equal(call(s, "POST", "/v1/resume", "{\"channel\":null}", &out), 200);
  assert_string_equal(last(s).channel, "(all)");
  json_decref(out);

  assert_int_equal(call(s, "POST", "/v1/posts/3f9c2a7d41e0b6a1/retry", NULL, &out), 200);
  assert_string_equal(last(s).op, "retry");
  assert_string_equal(last(s).id, "3f9c2a7d41e0b6a1");
  assert_string_equal(json_string_value(json_object_get(out, "state")), "pending");
  json_decref(out);

  assert_int_equal(call(s, "POST", "/v1/posts/abcdef0123456789/skip", "{}", &out), 200);
  assert_string_equal(last(s).op, "skip");
  assert_string_equal(last(s).id, "abcdef0123456789");
  json_decref(out);

  assert_int_equal(call(s, "POST", "/v1/confirm", NULL, &out), 200);
  assert_string_equal(last(s).op, "confirm");
  assert_true(json_is_true(json_object_get(out, "confirmed")));
  json_decref(out);

  /* The op's own status and message come through. */
  assert_int_equal(call(s, "POST", "/v1/posts/missing/retry", NULL, &out), 404);
  assert_string_equal(error_of(out), "no post with id missing");
  json_decref(out);
  assert_int_equal(call(s, "POST", "/v1/posts/0000000000000001/skip", NULL, &out), 409);
  assert_non_null(strstr(error_of(out), "can be skipped"));
  json_decref(out);
  assert_int_equal(last(s).calls, 7);
}

static void unknown_paths_are_404_wrong_methods_405(void **state) {
  struct server *s = *state;
  json_t *out;
  const char *paths[] = {"/",
                         "/v1",
                         "/v2/status",
                         "/v1/status/x",
                         "/v1/posts/abc/explode",
                         "/v1/posts/abc",
                         "/v1/posts//retry/x"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    assert_int_equal(call(s, "GET", paths[i], NULL, &out), 404);
    assert_non_null(strstr(error_of(out), "no such endpoint"));
    json_decref(out);
  }
  assert_int_equal(call(s, "GET", "/v1/pause", NULL, &out), 405);
  assert_non_null(strstr(error_of(out), "use POST"));
  json_decref(out);
  assert_int_equal(call(s, "POST", "/v1/status", NULL, &out), 405);
  assert_non_null(strstr(error_of(out), "use GET"));
  json_decref(out);
  assert_int_equal(call(s, "DELETE", "/v1/posts/abc/retry", NULL, &out), 405);
  json_decref(out);
  assert_int_equal(last(s).calls, 0);
}

static void bad_bodies_are_400_and_reach_no_op(void **state) {
  struct server *s = *state;
  json_t *out;
  static const char bad_json[] = "{\"channel\": \"mastodon\"";
  assert_int_equal(raw_request(s, "POST", "/v1/pause", bad_json, strlen(bad_json), &out), 400);
  assert_non_null(strstr(error_of(out), "not valid JSON"));
  json_decref(out);

  /* Valid JSON, but over 64 KiB. */
  size_t big = 70 * 1024;
  char *body = malloc(big + 1);
  memset(body, 'a', big);
  memcpy(body, "{\"channel\":\"", 12);
  memcpy(body + big - 2, "\"}", 2);
  body[big] = '\0';
  assert_int_equal(raw_request(s, "POST", "/v1/pause", body, big, &out), 400);
  assert_non_null(strstr(error_of(out), "64 KiB"));
  json_decref(out);
  free(body);

  struct {
    const char *url, *body, *msg;
  } cases[] = {
      {"/v1/pause", "[]", "JSON object"},
      {"/v1/pause", "{}", "must name a channel"},
      {"/v1/pause", "{\"channel\":\"x\",\"untill\":\"2036-01-01T00:00:00Z\"}", "unknown field"},
      {"/v1/pause", "{\"channel\":3}", "channel name or null"},
      {"/v1/pause", "{\"channel\":\"x\",\"until\":\"2036-01-01T10:00\"}", "with Z or an offset"},
      {"/v1/pause", "{\"channel\":\"x\",\"until\":\"tomorrow\"}", "ISO 8601"},
      {"/v1/pause", "{\"channel\":\"x\",\"until\":\"2001-01-01T00:00:00Z\"}", "in the past"},
      {"/v1/pause", "{\"channel\":\"x\",\"until\":17}", "ISO 8601"},
      {"/v1/resume", "{\"channel\":\"x\",\"until\":\"2036-01-01T00:00:00Z\"}", "unknown field"},
      {"/v1/confirm", "{\"force\":true}", "unknown field"},
      {"/v1/posts/a$b/retry", NULL, "invalid post id"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(call(s, "POST", cases[i].url, cases[i].body, &out), 400);
    if (!strstr(error_of(out), cases[i].msg))
      fail_msg("%s %s: '%s' lacks '%s'", cases[i].url, cases[i].body, error_of(out), cases[i].msg);
    json_decref(out);
  }
  assert_int_equal(last(s).calls, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* The socket                                                                                */

static void socket_is_mode_0600(void **state) {
  struct server *s = *state;
  struct stat st;
  assert_int_equal(lstat(s->path, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
  assert_int_equal(st.st_mode & 07777, 0600);
  assert_int_equal(st.st_uid, geteuid());
}

/* As user nobody, connects to path; the child's exit status is 0 on success, else the errno. */
static int connect_as_nobody(const char *path) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
      _exit(100);
    int fd = raw_connect(path);
    _exit(fd >= 0 ? 0 : -fd);
  }
  int ws;
  waitpid(pid, &ws, 0);
  return WIFEXITED(ws) ? WEXITSTATUS(ws) : 101;
}

static void another_user_cannot_connect(void **state) {
  struct server *s = *state;
  if (geteuid() != 0)
    skip();
  /* The folder lets everyone through, so only the socket's own mode stands in the way. */
  assert_int_equal(chmod(s->dir, 0755), 0);
  assert_int_equal(connect_as_nobody(s->path), EACCES);
  /* The check can fail: with the mode opened, the same user gets through. */
  assert_int_equal(chmod(s->path, 0666), 0);
  assert_int_equal(connect_as_nobody(s->path), 0);
  assert_int_equal(chmod(s->path, 0600), 0);
}

static void stop_closes_open_connections(void **state) {
  struct server *s = *state;
  /* One connection kept alive after an answer, one in the middle of its request line. */
  int idle = raw_connect(s->path), partial = raw_connect(s->path);
  assert_true(idle >= 0 && partial >= 0);
  static const char req[] = "GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n";
  send_all(idle, req, sizeof req - 1);
  char buf[4096] = "";
  size_t len = 0;
  while (!strstr(buf, "\"channels\"") || !strstr(buf, "]}")) {
    ssize_t n = recv(idle, buf + len, sizeof buf - len - 1, 0);
    assert_true(n > 0);
    len += (size_t)n;
    buf[len] = '\0';
  }
  assert_non_null(strstr(buf, "HTTP/1.1 200"));
  assert_non_null(strstr(buf, "keep-alive"));
  send_all(partial, "GET /v1/sta", 11);

  /* At once, not when h2o's 10 s request timeout would have closed them anyway. */
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  server_stop(s); /* asserts done ran once, the file is gone and uv_loop_close() == 0 */
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ssize_t idle_eof = recv(idle, buf, sizeof buf, 0),
          partial_eof = recv(partial, buf, sizeof buf, 0);
  close(idle);
  close(partial);
  int gone = access(s->path, F_OK);
  /* teardown stops again: give it a fresh server on the same path before any assertion. */
  s->done_calls = 0;
  server_start(s);
  assert_int_equal(s->start_rc, 0);
  assert_true((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 2000);
  assert_int_equal(idle_eof, 0);
  assert_int_equal(partial_eof, 0);
  assert_int_equal(gone, -1);
}

static void make_stale_socket(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  close(fd); /* the file stays, nobody listens */
}

static void count_done(void *arg) {
  (*(int *)arg)++;
}

static void start_replaces_stale_socket_only(void **state) {
  struct server *s = *state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  struct cp_control *c = NULL;
  char path[160];

  /* A live daemon on the path: refused, and the first one still answers. */
  assert_int_equal(cp_control_start(&loop, s->path, &fake_ops, NULL, &c), CP_EBUSY);
  assert_null(c);
  json_t *out;
  assert_int_equal(call(s, "GET", "/v1/status", NULL, &out), 200);
  json_decref(out);

  /* A file that is not a socket is never removed. */
  snprintf(path, sizeof path, "%s/notes.txt", s->dir);
  FILE *f = fopen(path, "w");
  fputs("keep me", f);
  fclose(f);
  assert_int_equal(cp_control_start(&loop, path, &fake_ops, NULL, &c), CP_EEXISTS);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_size, 7);

  /* Too long for sun_path. */
  char longp[200];
  memset(longp, 'a', sizeof longp - 1);
  longp[0] = '/';
  longp[sizeof longp - 1] = '\0';
  assert_int_equal(cp_control_start(&loop, longp, &fake_ops, NULL, &c), -ENAMETOOLONG);
  assert_int_equal(uv_loop_close(&loop), 0); /* failed starts left no handle */

  /* A stale socket file (its daemon died) is replaced. */
  snprintf(path, sizeof path, "%s/stale.sock", s->dir);
  make_stale_socket(path);
  assert_int_equal(raw_connect(path), -ECONNREFUSED);
  uv_loop_init(&loop);
  assert_int_equal(cp_control_start(&loop, path, &fake_ops, NULL, &c), 0);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  int fd = raw_connect(path);
  assert_true(fd >= 0);
  close(fd);
  int done = 0;
  cp_control_stop(c, count_done, &done);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(done, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(access(path, F_OK), -1);
}

static void count_open(uv_handle_t *h, void *arg) {
  *(int *)arg += !uv_is_closing(h);
}

/* A daemon that stops after its loop returned and then closes whatever is left (uv_walk) must
 * find nothing of ours still open, even with a client connected. */
static void stop_leaves_every_handle_closing(void **state) {
  struct server *s = *state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  struct cp_control *c;
  char path[160];
  snprintf(path, sizeof path, "%s/main.sock", s->dir);
  assert_int_equal(cp_control_start(&loop, path, &fake_ops, NULL, &c), 0);
  int fd = raw_connect(path);
  assert_true(fd >= 0);
  send_all(fd, "GET /v1/st", 10);
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT); /* accept, read the partial request */
  int done = 0, open = 0;
  cp_control_stop(c, count_done, &done);
  uv_walk(&loop, count_open, &open);
  int done_early = done;
  uv_run(&loop, UV_RUN_DEFAULT);
  char buf[64];
  ssize_t eof = recv(fd, buf, sizeof buf, 0);
  close(fd);
  assert_int_equal(open, 0);
  assert_int_equal(done_early, 0);
  assert_int_equal(done, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(eof, 0);
}

static void client_reports_no_server(void **state) {
  struct server *s = *state;
  char path[160], err[256];
  json_t *out = NULL;
  snprintf(path, sizeof path, "%s/none.sock", s->dir);
  assert_int_equal(cp_control_call(path, "GET", "/v1/status", NULL, &out, err, sizeof err),
                   -ENOENT);
  assert_null(out);
  assert_non_null(strstr(err, path));
  make_stale_socket(path);
  assert_int_equal(cp_control_call(path, "GET", "/v1/status", NULL, &out, err, sizeof err),
                   -ECONNREFUSED);
  assert_null(out);
}

/* ---------------------------------------------------------------------------------------- */
/* The commands                                                                              */

static char out_buf[8192], err_buf[8192];

static void status_command_prints_channels(void **state) {
  struct server *s = *state;
  assert_int_equal(run_cli(cp_cli_status, out_buf, err_buf, "status", "--socket", s->path, NULL),
                   0);
  assert_string_equal(err_buf, "");
  const char *want[] = {
      "calpost daemon: running",
      "editorial: plans/x.ics: would cancel 12 posts",
      "mastodon (mastodon): active, 3 queued; sent 10, failed 1, missed 0, unknown 0",
      "  next:       2036-11-22T10:00:00Z (in ",
      "3f9c2a7d41e0b6a1  Tip of the week",
      "bluesky (bluesky): paused until 2036-11-23T08:00:00Z",
      "0 queued; sent 0, failed 2, missed 1, unknown 4",
      "  next:       none",
      "  last error: HTTP 503: ?[31mdown",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(out_buf, want[i]))
      fail_msg("status output lacks '%s':\n%s", want[i], out_buf);
  assert_null(strchr(out_buf, '\x1b')); /* a daemon's text cannot drive the terminal */

  assert_int_equal(
      run_cli(cp_cli_status, out_buf, err_buf, "status", "--json", "--socket", s->path, NULL), 0);
  json_t *got = json_loads(out_buf, 0, NULL), *want_json = json_loads(status_json, 0, NULL);
  assert_true(json_equal(got, want_json));
  json_decref(got);
  json_decref(want_json);

  assert_int_equal(run_cli(cp_cli_status, out_buf, err_buf, "status", "--help", NULL), 0);
  assert_non_null(strstr(out_buf, "usage: calpost status"));
}

static void write_config(struct server *s, char *path, size_t len) {
  snprintf(path, len, "%s/calpost.ini", s->dir);
  FILE *f = fopen(path, "w");
  fprintf(f,
          "[calpost]\nstate_dir = %s\ntimezone = Europe/Berlin\n\n[calendar c]\nsource = p.ics\n"
          "channels = mastodon\n\n[channel mastodon]\ntype = mastodon\n",
          s->dir);
  fclose(f);
}

static void pause_and_resume_commands(void **state) {
  struct server *s = *state;
  assert_int_equal(run_cli(cp_cli_pause, out_buf, err_buf, "pause", "--socket", s->path, "mastodon",
                           "--until", "2036-11-22T10:00:00+01:00", NULL),
                   0);
  struct fake f = last(s);
  assert_string_equal(f.op, "pause");
  assert_string_equal(f.channel, "mastodon");
  assert_int_equal(f.until_ms, utc_ms(2036, 11, 22, 9, 0));
  assert_non_null(strstr(out_buf, "paused mastodon until 2036-11-22T09:00:00Z"));

  /* With -c the socket is STATE_DIR/calpost.sock and a local --until is in the plan zone. */
  char cfg[160];
  write_config(s, cfg, sizeof cfg);
  assert_int_equal(run_cli(cp_cli_pause, out_buf, err_buf, "pause", "-c", cfg, "--all", "--until",
                           "2036-07-01T12:00", NULL),
                   0);
  f = last(s);
  assert_string_equal(f.channel, "(all)");
  assert_int_equal(f.until_ms, utc_ms(2036, 7, 1, 10, 0)); /* CEST */
  setenv("CALPOST_CONFIG", cfg, 1);
  assert_int_equal(run_cli(cp_cli_resume, out_buf, err_buf, "resume", "--all", NULL), 0);
  unsetenv("CALPOST_CONFIG");
  assert_string_equal(last(s).op, "resume");
  assert_string_equal(last(s).channel, "(all)");
  assert_non_null(strstr(out_buf, "resumed all channels"));

  int calls = last(s).calls;
  assert_int_equal(run_cli(cp_cli_pause, out_buf, err_buf, "pause", "--socket", s->path, NULL), 2);
  assert_non_null(strstr(err_buf, "--all"));
  assert_int_equal(
      run_cli(cp_cli_pause, out_buf, err_buf, "pause", "--socket", s->path, "x", "--all", NULL), 2);
  assert_int_equal(run_cli(cp_cli_pause, out_buf, err_buf, "pause", "--socket", s->path, "x",
                           "--until", "2001-01-01", NULL),
                   2);
  assert_non_null(strstr(err_buf, "in the past"));
  assert_int_equal(run_cli(cp_cli_resume, out_buf, err_buf, "resume", "--socket", s->path, "x",
                           "--until", "2036-01-01", NULL),
                   2);
  assert_int_equal(last(s).calls, calls);
}

static void post_commands_and_errors(void **state) {
  struct server *s = *state;
  assert_int_equal(run_cli(cp_cli_retry, out_buf, err_buf, "retry", "--socket", s->path,
                           "3f9c2a7d41e0b6a1", NULL),
                   0);
  assert_string_equal(last(s).op, "retry");
  assert_string_equal(last(s).id, "3f9c2a7d41e0b6a1");
  assert_non_null(strstr(out_buf, "3f9c2a7d41e0b6a1 is queued again"));

  assert_int_equal(
      run_cli(cp_cli_skip, out_buf, err_buf, "skip", "--socket", s->path, "abcdef0123456789", NULL),
      0);
  assert_string_equal(last(s).op, "skip");

  assert_int_equal(run_cli(cp_cli_confirm, out_buf, err_buf, "confirm", "--socket", s->path, NULL),
                   0);
  assert_string_equal(last(s).op, "confirm");

  /* The daemon's refusal is shown and the exit status is 1. */
  assert_int_equal(
      run_cli(cp_cli_retry, out_buf, err_buf, "retry", "--socket", s->path, "missing", NULL), 1);
  assert_non_null(strstr(err_buf, "calpost retry: no post with id missing"));

  /* An id that would change the URL never leaves the CLI. */
  int calls = last(s).calls;
  assert_int_equal(
      run_cli(cp_cli_skip, out_buf, err_buf, "skip", "--socket", s->path, "../status", NULL), 2);
  assert_int_equal(run_cli(cp_cli_skip, out_buf, err_buf, "skip", "--socket", s->path, NULL), 2);
  assert_int_equal(last(s).calls, calls);
}

static void commands_without_daemon_say_how_to_start_it(void **state) {
  struct server *s = *state;
  char path[160], want[400];
  snprintf(path, sizeof path, "%s/none.sock", s->dir);
  int (*fns[])(int, char **) = {cp_cli_status, cp_cli_confirm};
  for (size_t i = 0; i < 2; i++) {
    assert_int_equal(run_cli(fns[i], out_buf, err_buf, "x", "--socket", path, NULL), 1);
    snprintf(want, sizeof want,
             "no calpost daemon is running on %s: start it with `calpost run -c CONFIG`", path);
    if (!strstr(err_buf, want))
      fail_msg("stderr '%s' lacks '%s'", err_buf, want);
  }
  /* With a config: its state dir and its path in the advice. */
  char cfg[160];
  write_config(s, cfg, sizeof cfg);
  server_stop(s);
  int rc = run_cli(cp_cli_status, out_buf, err_buf, "status", "-c", cfg, NULL);
  s->done_calls = 0;
  server_start(s); /* for teardown, before any assertion */
  assert_int_equal(rc, 1);
  snprintf(want, sizeof want,
           "no calpost daemon is running on %s/calpost.sock: start it with `calpost run -c %s`",
           s->dir, cfg);
  if (!strstr(err_buf, want))
    fail_msg("stderr '%s' lacks '%s'", err_buf, want);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  unsetenv("CALPOST_CONFIG");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(status_returns_the_daemons_answer, setup, teardown),
      cmocka_unit_test_setup_teardown(pause_passes_channel_and_until, setup, teardown),
      cmocka_unit_test_setup_teardown(resume_retry_skip_confirm_reach_their_ops, setup, teardown),
      cmocka_unit_test_setup_teardown(unknown_paths_are_404_wrong_methods_405, setup, teardown),
      cmocka_unit_test_setup_teardown(bad_bodies_are_400_and_reach_no_op, setup, teardown),
      cmocka_unit_test_setup_teardown(socket_is_mode_0600, setup, teardown),
      cmocka_unit_test_setup_teardown(another_user_cannot_connect, setup, teardown),
      cmocka_unit_test_setup_teardown(stop_closes_open_connections, setup, teardown),
      cmocka_unit_test_setup_teardown(start_replaces_stale_socket_only, setup, teardown),
      cmocka_unit_test_setup_teardown(stop_leaves_every_handle_closing, setup, teardown),
      cmocka_unit_test_setup_teardown(client_reports_no_server, setup, teardown),
      cmocka_unit_test_setup_teardown(status_command_prints_channels, setup, teardown),
      cmocka_unit_test_setup_teardown(pause_and_resume_commands, setup, teardown),
      cmocka_unit_test_setup_teardown(post_commands_and_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(commands_without_daemon_say_how_to_start_it, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
