/* The control API: an HTTP/1.1 server on a Unix socket (libh2o, libuv binding) and its libcurl
 * client. See control.h.
 *
 * Lifetime of the server. cp_control_start binds the socket itself (so that a failed start
 * leaves no libuv handle behind and the file's mode is under our control), then hands the fd to
 * a uv_pipe_t and sets up one h2o context on the caller's loop. cp_control_stop closes the
 * listener, makes h2o close every connection, and once the last of them is closed disposes the
 * h2o context (whose timers and async handle are libuv handles) and waits two close phases
 * before it calls done, so that every handle h2o closed has run its close callback. */
#include "control.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <h2o.h>

#include "calpost/err.h"
#include "plan.h"

#define MAX_BODY (64 * 1024)     /* request bodies we parse */
#define MAX_ENTITY (1024 * 1024) /* above this h2o itself answers 413 */
#define MAX_ANSWER (1024 * 1024) /* response bodies the client accepts */
#define MAX_CONNS 32             /* concurrent connections; more are closed at once */
#define CLIENT_TIMEOUT_MS 10000L

#define CONTAINER(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* An accepted connection. The pipe comes first: h2o's close callback hands us the handle. */
struct conn {
  uv_pipe_t pipe;
  struct cp_control *c;
  struct conn *prev, *next;
};

struct handler {
  h2o_handler_t super;
  struct cp_control *c;
};

struct cp_control {
  uv_loop_t *loop;
  const struct cp_control_ops *ops;
  void *d;
  char *path;
  uv_pipe_t listener;
  uv_idle_t barrier; /* closed twice after h2o's handles; see maybe_dispose() */
  int barrier_phase;
  bool disposed; /* the h2o context */
  h2o_globalconf_t config;
  h2o_context_t ctx;
  h2o_accept_ctx_t accept_ctx;
  struct conn *conns;
  size_t n_conns;
  bool listening; /* the listener is open */
  bool stopping;
  void (*done)(void *arg);
  void *done_arg;
};

/* ---------------------------------------------------------------------------------------- */
/* Answers                                                                                   */

static const char *reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 501:
      return "Not Implemented";
    default:
      return status < 400 ? "OK" : status < 500 ? "Client Error" : "Internal Server Error";
  }
}

/* A copy of untrusted bytes (a path, a name) fit to quote in a message: printable ASCII only,
 * at most 80 characters. */
static void quote_bytes(const char *s, size_t len, char *buf, size_t buflen) {
  size_t j = 0;
  for (size_t i = 0; i < len && j + 4 < buflen; i++) {
    if (i == 80) {
      memcpy(buf + j, "...", 3);
      j += 3;
      break;
    }
    unsigned char ch = (unsigned char)s[i];
    buf[j++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
  }
  buf[j] = '\0';
}

static json_t *error_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *error_json(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return json_pack("{s:s}", "error", msg);
}

/* Sends status and body (consumed; NULL becomes {} or a generic error). allow, if not NULL, is
 * the Allow header of a 405. */
static void respond(h2o_req_t *req, int status, json_t *body, const char *allow) {
  if (status < 100 || status > 599) {
    json_decref(body);
    body = error_json("the daemon answered with an invalid status %d", status);
    status = 500;
  }
  if (!body)
    body = status < 400 ? json_object() : error_json("%s", reason(status));
  char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(body);
  static const char oom[] = "{\"error\":\"out of memory\"}";
  if (!text)
    status = 500;
  const char *out = text ? text : oom;
  size_t len = strlen(out);
  req->res.status = status;
  req->res.reason = reason(status);
  req->res.content_length = len;
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                 H2O_STRLIT("application/json"));
  if (allow)
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
  h2o_send_inline(req, out, len); /* copies the body into the request's pool */
  free(text);
}

/* ---------------------------------------------------------------------------------------- */
/* Requests                                                                                  */

/* Parses the request body into *obj (NULL when there is none). Allowed keys are checked so that
 * a typo ("untill") is an error, not a silent default. Returns 0, or 400 with *err set. */
static int parse_body(h2o_req_t *req, const char *const *keys, json_t **obj, json_t **err) {
  *obj = NULL;
  if (!req->entity.base || !req->entity.len)
    return 0;
  if (req->entity.len > MAX_BODY) {
    *err = error_json("request body of %zu bytes is over the limit of 64 KiB", req->entity.len);
    return 400;
  }
  json_error_t jerr;
  json_t *j = json_loadb(req->entity.base, req->entity.len, JSON_REJECT_DUPLICATES, &jerr);
  if (!j) {
    *err = error_json("request body is not valid JSON: line %d, column %d: %s", jerr.line,
                      jerr.column, jerr.text);
    return 400;
  }
  if (!json_is_object(j)) {
    json_decref(j);
    *err = error_json("request body must be a JSON object");
    return 400;
  }
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    bool known = false;
    for (size_t i = 0; keys && keys[i]; i++)
      known = known || !strcmp(key, keys[i]);
    if (!known) {
      char q[128];
      quote_bytes(key, strlen(key), q, sizeof q);
      json_decref(j);
      *err = error_json("unknown field \"%s\" in the request body", q);
      return 400;
    }
  }
  *obj = j;
  return 0;
}

/* Reads the "channel" member: a name or null (all channels); it must be present so that an
 * empty body never means "all channels" by accident. */
static int get_channel(json_t *obj, const char **channel, json_t **err) {
  json_t *v = obj ? json_object_get(obj, "channel") : NULL;
  if (!v) {
    *err = error_json("the request body must name a channel: {\"channel\": \"NAME\"}, or "
                      "{\"channel\": null} for all channels");
    return 400;
  }
  if (json_is_null(v)) {
    *channel = NULL;
    return 0;
  }
  if (!json_is_string(v) || !json_string_length(v)) {
    *err = error_json("\"channel\" must be a channel name or null (all channels)");
    return 400;
  }
  *channel = json_string_value(v);
  return 0;
}

/* Reads the optional "until" member into *until_ms (0: until resumed). Only a date-time with Z
 * or an offset is accepted: a local time would need the plan zone, which the CLI applies. */
static int get_until(json_t *obj, int64_t *until_ms, json_t **err) {
  json_t *v = obj ? json_object_get(obj, "until") : NULL;
  *until_ms = 0;
  if (!v || json_is_null(v))
    return 0;
  const char *s = json_string_value(v);
  size_t n = s ? strlen(s) : 0;
  bool zoned = n > 0 && (s[n - 1] == 'Z' ||
                         (n > 6 && (s[n - 6] == '+' || s[n - 6] == '-') && s[n - 3] == ':'));
  int64_t t, now = (int64_t)time(NULL);
  if (!s || !zoned || !strchr(s, 'T') || cp_plan_parse_time(s, "UTC", now, &t) < 0) {
    char q[128];
    quote_bytes(s ? s : "", n, q, sizeof q);
    *err = error_json("\"until\": \"%s\" is not an ISO 8601 date-time with Z or an offset, such "
                      "as 2026-11-22T10:00:00Z",
                      q);
    return 400;
  }
  if (t <= now) {
    *err = error_json("\"until\": %s is in the past", s);
    return 400;
  }
  *until_ms = t * 1000;
  return 0;
}

static bool is_method(h2o_req_t *req, const char *m) {
  return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

static bool is_path(h2o_iovec_t p, const char *s) {
  return h2o_memis(p.base, p.len, s, strlen(s));
}

/* Post ids are 16 hex digits today; anything printable without '/' is passed on to the daemon,
 * which answers 404 for ids it does not know. */
static bool valid_id(const char *s, size_t len) {
  if (!len || len > 128)
    return false;
  for (size_t i = 0; i < len; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
          (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '-' || s[i] == '_' || s[i] == '.'))
      return false;
  return true;
}

enum route { R_NONE, R_STATUS, R_PAUSE, R_RESUME, R_CONFIRM, R_RETRY, R_SKIP };

/* Maps the path to an endpoint; for posts/ID/..., copies ID into id (at least 129 bytes).
 * Returns R_NONE for unknown paths, and sets *bad_id for a posts path with an invalid id. */
static enum route route_of(h2o_iovec_t p, char *id, bool *bad_id) {
  *bad_id = false;
  if (is_path(p, "/v1/status"))
    return R_STATUS;
  if (is_path(p, "/v1/pause"))
    return R_PAUSE;
  if (is_path(p, "/v1/resume"))
    return R_RESUME;
  if (is_path(p, "/v1/confirm"))
    return R_CONFIRM;
  static const char posts[] = "/v1/posts/";
  size_t n = sizeof posts - 1;
  if (p.len <= n || memcmp(p.base, posts, n))
    return R_NONE;
  const char *s = p.base + n, *end = p.base + p.len;
  const char *slash = memchr(s, '/', (size_t)(end - s));
  if (!slash)
    return R_NONE;
  h2o_iovec_t verb = h2o_iovec_init(slash, (size_t)(end - slash));
  enum route r = is_path(verb, "/retry") ? R_RETRY : is_path(verb, "/skip") ? R_SKIP : R_NONE;
  if (r == R_NONE)
    return R_NONE;
  size_t len = (size_t)(slash - s);
  if (!valid_id(s, len)) {
    *bad_id = true;
    return r;
  }
  memcpy(id, s, len);
  id[len] = '\0';
  return r;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  struct cp_control *c = ((struct handler *)self)->c;
  const struct cp_control_ops *ops = c->ops;
  static const char *const no_keys[] = {NULL};
  static const char *const resume_keys[] = {"channel", NULL};
  static const char *const pause_keys[] = {"channel", "until", NULL};
  char id[130];
  bool bad_id;
  enum route r = route_of(req->path_normalized, id, &bad_id);
  if (r == R_NONE) {
    char m[32], p[128];
    quote_bytes(req->method.base, req->method.len, m, sizeof m);
    quote_bytes(req->path_normalized.base, req->path_normalized.len, p, sizeof p);
    respond(req, 404, error_json("no such endpoint: %s %s", m, p), NULL);
    return 0;
  }
  const char *want = r == R_STATUS ? "GET" : "POST";
  if (!is_method(req, want)) {
    char m[32];
    quote_bytes(req->method.base, req->method.len, m, sizeof m);
    respond(req, 405, error_json("method %s is not allowed here; use %s", m, want), want);
    return 0;
  }
  if (bad_id) {
    respond(req, 400, error_json("invalid post id (expected letters, digits, '-', '_', '.')"),
            NULL);
    return 0;
  }
  json_t *obj = NULL, *out = NULL;
  const char *const *keys = r == R_PAUSE ? pause_keys : r == R_RESUME ? resume_keys : no_keys;
  int status = parse_body(req, keys, &obj, &out);
  if (status) {
    respond(req, status, out, NULL);
    return 0;
  }
  const char *channel = NULL;
  int64_t until_ms = 0;
  switch (r) {
    case R_STATUS:
      status = ops->status ? ops->status(c->d, &out) : 501;
      break;
    case R_PAUSE:
      if (!(status = get_channel(obj, &channel, &out)) &&
          !(status = get_until(obj, &until_ms, &out)))
        status = ops->pause ? ops->pause(c->d, channel, until_ms, &out) : 501;
      break;
    case R_RESUME:
      if (!(status = get_channel(obj, &channel, &out)))
        status = ops->resume ? ops->resume(c->d, channel, &out) : 501;
      break;
    case R_RETRY:
      status = ops->retry ? ops->retry(c->d, id, &out) : 501;
      break;
    case R_SKIP:
      status = ops->skip ? ops->skip(c->d, id, &out) : 501;
      break;
    case R_CONFIRM:
      status = ops->confirm ? ops->confirm(c->d, &out) : 501;
      break;
    case R_NONE:
      break;
  }
  if (status == 501 && !out)
    out = error_json("this daemon does not support %.*s", (int)req->path_normalized.len,
                     req->path_normalized.base);
  json_decref(obj); /* after the op: channel pointed into it */
  respond(req, status, out, NULL);
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Connections and shutdown                                                                  */

/* Stopping: (1) the listener and every connection are closed (h2o lets go of a connection when
 * it calls h2o_socket_close, before the handle's close callback); (2) once h2o uses no connection,
 * its context is disposed, which closes its own handles, and the barrier starts; (3) done runs
 * when the listener, the connections and the barrier (two close phases after h2o's handles) have
 * all run their close callbacks. With no connection busy writing, steps 1 and 2 happen inside
 * cp_control_stop, so every handle of ours is closing when it returns. */

static void on_barrier_closed(uv_handle_t *h);

static void maybe_done(struct cp_control *c) {
  if (c->listening || c->n_conns || c->barrier_phase < 2)
    return;
  void (*done)(void *) = c->done;
  void *arg = c->done_arg;
  free(c->path);
  free(c);
  if (done)
    done(arg);
}

/* h2o_context_dispose() ends with a nested uv_run(UV_RUN_NOWAIT), which libuv forbids inside a
 * callback (and cp_control_stop is usually called from one); with the loop's stop flag set that
 * call returns at once, so we set it and restore the caller's own uv_stop() afterwards. The
 * handles it closed finish through the ordinary loop, and the barrier waits for them. */
static void maybe_dispose(struct cp_control *c) {
  if (!c->stopping || c->disposed)
    return;
  for (struct conn *k = c->conns; k; k = k->next)
    if (!uv_is_closing((uv_handle_t *)&k->pipe))
      return;
  c->disposed = true;
  bool was_stopped = c->loop->stop_flag != 0;
  uv_stop(c->loop);
  h2o_context_dispose(&c->ctx);
  if (was_stopped)
    uv_stop(c->loop);
  h2o_config_dispose(&c->config);
  uv_idle_init(c->loop, &c->barrier);
  uv_close((uv_handle_t *)&c->barrier, on_barrier_closed);
}

static void on_barrier_closed(uv_handle_t *h) {
  struct cp_control *c = CONTAINER(h, struct cp_control, barrier);
  if (++c->barrier_phase == 1) {
    /* The handles h2o closed went into the same close phase as the barrier, in an order libuv
     * does not promise; one more phase and they have all run their close callbacks. */
    uv_idle_init(c->loop, &c->barrier);
    uv_close((uv_handle_t *)&c->barrier, on_barrier_closed);
    return;
  }
  maybe_done(c);
}

static void on_conn_closed(uv_handle_t *h) {
  struct conn *k = (struct conn *)h;
  struct cp_control *c = k->c;
  if (k->prev)
    k->prev->next = k->next;
  else
    c->conns = k->next;
  if (k->next)
    k->next->prev = k->prev;
  free(k);
  c->n_conns--;
  maybe_dispose(c);
  maybe_done(c);
}

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void on_connection(uv_stream_t *server, int status) {
  struct cp_control *c = CONTAINER(server, struct cp_control, listener);
  if (status < 0 || c->stopping)
    return;
  struct conn *k = calloc(1, sizeof *k);
  if (!k)
    return; /* the client waits in the backlog and is accepted on the next connection */
  k->c = c;
  uv_pipe_init(c->loop, &k->pipe, 0);
  if (uv_accept(server, (uv_stream_t *)&k->pipe) < 0 || c->n_conns >= MAX_CONNS) {
    uv_close((uv_handle_t *)&k->pipe, free_handle);
    return;
  }
  k->next = c->conns;
  if (c->conns)
    c->conns->prev = k;
  c->conns = k;
  c->n_conns++;
  h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&k->pipe, on_conn_closed);
  h2o_accept(&c->accept_ctx, sock);
}

static void on_listener_closed(uv_handle_t *h) {
  struct cp_control *c = CONTAINER(h, struct cp_control, listener);
  c->listening = false;
  maybe_done(c);
}

static void on_failed_closed(uv_handle_t *h) {
  struct cp_control *c = CONTAINER(h, struct cp_control, listener);
  free(c->path);
  free(c);
}

void cp_control_stop(struct cp_control *c, void (*done)(void *arg), void *arg) {
  if (!c) {
    if (done)
      done(arg);
    return;
  }
  if (c->stopping)
    return;
  c->stopping = true;
  c->done = done;
  c->done_arg = arg;
  unlink(c->path);
  uv_close((uv_handle_t *)&c->listener, on_listener_closed);
  /* Connections waiting for a request sit in the request timeout: expiring it now makes h2o
   * close them at once. The others are writing an answer; shutting the socket down makes their
   * write or their next read fail, and h2o closes them through its own error path. */
  h2o_timeout_run(c->loop, &c->ctx.http1.req_timeout, UINT64_MAX);
  for (struct conn *k = c->conns; k; k = k->next) {
    uv_os_fd_t fd;
    if (!uv_is_closing((uv_handle_t *)&k->pipe) && uv_fileno((uv_handle_t *)&k->pipe, &fd) == 0)
      shutdown(fd, SHUT_RDWR);
  }
  maybe_dispose(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Start                                                                                     */

/* Binds and listens on path, replacing a stale socket file but never another file or a live
 * socket. Returns the fd, or CP_EBUSY (a daemon answers there), CP_EEXISTS (not a socket),
 * -ENAMETOOLONG or -errno. */
static int bind_socket(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path)
    return -ENAMETOOLONG;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return CP_EEXISTS;
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe < 0)
      return -errno;
    int rc = connect(probe, (struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    close(probe);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
      return CP_EBUSY;
    if (err != ECONNREFUSED)
      return -err;
    if (unlink(path) < 0 && errno != ENOENT)
      return -errno;
  } else if (errno != ENOENT) {
    return -errno;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -errno;
  /* bind() creates the file with the umask applied: 077 leaves no moment in which another user
   * could connect; the chmod makes the mode exact whatever the process umask was. */
  mode_t old = umask(077);
  int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  int err = errno;
  umask(old);
  if (rc < 0) {
    close(fd);
    return -err;
  }
  if (chmod(path, 0600) < 0 || listen(fd, 64) < 0) {
    err = errno;
    unlink(path);
    close(fd);
    return -err;
  }
  return fd;
}

int cp_control_start(uv_loop_t *loop, const char *path, const struct cp_control_ops *ops, void *d,
                     struct cp_control **out) {
  *out = NULL;
  if (!loop || !path || !*path || !ops)
    return CP_EINVAL;
  /* A client that hangs up before its answer is written must not kill the daemon. */
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  struct cp_control *c = calloc(1, sizeof *c);
  if (!c || !(c->path = strdup(path))) {
    free(c);
    return CP_ENOMEM;
  }
  int fd = bind_socket(path);
  if (fd < 0) {
    free(c->path);
    free(c);
    return fd;
  }
  int rc = uv_pipe_init(loop, &c->listener, 0);
  if (rc < 0) {
    close(fd);
    unlink(path);
    free(c->path);
    free(c);
    return rc;
  }
  if ((rc = uv_pipe_open(&c->listener, fd)) < 0)
    close(fd); /* the handle did not take it */
  else
    rc = uv_listen((uv_stream_t *)&c->listener, 64, on_connection);
  if (rc < 0) {
    unlink(path);
    /* An initialised handle is freed through its close callback, when the loop runs. */
    uv_close((uv_handle_t *)&c->listener, on_failed_closed);
    return rc;
  }
  c->loop = loop;
  c->ops = ops;
  c->d = d;
  c->listening = true;

  h2o_config_init(&c->config);
  c->config.server_name = h2o_iovec_init(H2O_STRLIT("calpost/" CALPOST_VERSION));
  c->config.max_request_entity_size = MAX_ENTITY;
  c->config.http1.upgrade_to_http2 = 0; /* HTTP/1.1 only: one protocol to close on stop */
  h2o_hostconf_t *host =
      h2o_config_register_host(&c->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *pathconf = h2o_config_register_path(host, "/", 0);
  struct handler *h = (struct handler *)h2o_create_handler(pathconf, sizeof *h);
  h->super.on_req = on_req;
  h->c = c;
  h2o_context_init(&c->ctx, loop, &c->config);
  c->accept_ctx.ctx = &c->ctx;
  c->accept_ctx.hosts = c->config.hosts;
  *out = c;
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Client                                                                                    */

struct answer {
  char *buf;
  size_t len;
  bool over;
};

static size_t on_data(char *ptr, size_t size, size_t n, void *arg) {
  struct answer *a = arg;
  size_t len = size * n;
  if (a->len + len > MAX_ANSWER) {
    a->over = true;
    return 0;
  }
  char *p = realloc(a->buf, a->len + len + 1);
  if (!p)
    return 0;
  memcpy(p + a->len, ptr, len);
  a->buf = p;
  a->len += len;
  a->buf[a->len] = '\0';
  return len;
}

int cp_control_call(const char *path, const char *method, const char *url_path, const json_t *body,
                    json_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (errlen)
    err[0] = '\0';
  if (!path || !method || !url_path || url_path[0] != '/') {
    snprintf(err, errlen, "invalid control request");
    return CP_EINVAL;
  }
  if (strlen(path) >= sizeof((struct sockaddr_un *)0)->sun_path) {
    snprintf(err, errlen, "%s: socket path too long (at most %zu bytes)", path,
             sizeof((struct sockaddr_un *)0)->sun_path - 1);
    return -ENAMETOOLONG;
  }
  char *payload = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  char url[1024];
  snprintf(url, sizeof url, "http://localhost%s", url_path);
  struct answer a = {0};
  struct curl_slist *hdrs = NULL, *tmp;
  CURL *easy = curl_easy_init();
  int rc = CP_ENOMEM;
  if (!easy || (body && !payload))
    goto out;
  static const char *const headers[] = {"Content-Type: application/json",
                                        "Accept: application/json", "Expect:"};
  for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
    if (!(tmp = curl_slist_append(hdrs, headers[i])))
      goto out;
    hdrs = tmp;
  }
  char cerr[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(easy, CURLOPT_UNIX_SOCKET_PATH, path);
  curl_easy_setopt(easy, CURLOPT_URL, url);
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, CLIENT_TIMEOUT_MS);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, CLIENT_TIMEOUT_MS);
  curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)MAX_ANSWER);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &a);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, cerr);
  if (!strcmp(method, "GET")) {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  } else {
    if (strcmp(method, "POST"))
      curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, payload ? payload : "");
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)(payload ? strlen(payload) : 0));
  }
  CURLcode cc = curl_easy_perform(easy);
  if (cc != CURLE_OK) {
    long oserr = 0;
    curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &oserr);
    if (cc == CURLE_COULDNT_CONNECT) {
      rc = oserr ? -(int)oserr : -ECONNREFUSED;
      snprintf(err, errlen, "cannot connect to %s: %s", path, strerror(-rc));
    } else if (cc == CURLE_OPERATION_TIMEDOUT) {
      rc = -ETIMEDOUT;
      snprintf(err, errlen, "%s: no answer within %ld s", path, CLIENT_TIMEOUT_MS / 1000);
    } else if (a.over || cc == CURLE_FILESIZE_EXCEEDED) {
      rc = CP_ETOOBIG;
      snprintf(err, errlen, "%s: answer larger than %d bytes", path, MAX_ANSWER);
    } else if (cc == CURLE_OUT_OF_MEMORY || cc == CURLE_WRITE_ERROR) {
      rc = CP_ENOMEM;
      snprintf(err, errlen, "out of memory");
    } else {
      rc = -ECONNRESET;
      snprintf(err, errlen, "%s: %s", path, cerr[0] ? cerr : curl_easy_strerror(cc));
    }
    goto out;
  }
  long status = 0;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  json_error_t jerr;
  json_t *j = a.len ? json_loadb(a.buf, a.len, 0, &jerr) : NULL;
  if (!json_is_object(j)) {
    json_decref(j);
    if (status >= 200 && status < 300) {
      rc = CP_EPARSE;
      snprintf(err, errlen, "%s: the answer is not a JSON object (HTTP %ld)", path, status);
      goto out;
    }
    /* An error h2o wrote itself (413, a malformed request): keep its text as the message. */
    char q[128];
    quote_bytes(a.buf ? a.buf : "", a.len, q, sizeof q);
    j = json_pack("{s:s}", "error", q[0] ? q : reason((int)status));
    if (!j)
      goto out;
  }
  *out = j;
  rc = (int)status;
out:
  if (rc == CP_ENOMEM && errlen && !err[0])
    snprintf(err, errlen, "out of memory");
  curl_slist_free_all(hdrs);
  if (easy)
    curl_easy_cleanup(easy);
  free(payload);
  free(a.buf);
  return rc;
}
