/* The control API: an HTTP/1.1 server on a Unix socket and, when configured, on loopback TCP
 * (libh2o, libuv binding); what it reads from the state database (/metrics, /v1/posts,
 * /v1/report, the dashboard); and its libcurl client. See control.h.
 *
 * Lifetime of the server. cp_control_start binds the socket itself (so that a failed start
 * leaves no libuv handle behind and the file's mode is under our control), then hands the fd to
 * a uv_pipe_t and sets up one h2o context on the caller's loop. cp_control_stop closes the
 * listeners, makes h2o close every connection, and once the last of them is closed disposes the
 * h2o context (whose timers and async handle are libuv handles) and waits two close phases
 * before it calls done, so that every handle h2o closed has run its close callback.
 *
 * Transports. One h2o context serves both. Each transport has a host configuration of its own,
 * handed to h2o as a hosts array of one entry (which h2o always picks, whatever the Host header
 * says), so the handler knows which transport a request came by. The Unix socket is mode 0600:
 * who can connect may do anything. Over TCP every request needs `Authorization: Bearer TOKEN`;
 * GET requests may instead carry the dashboard's session cookie, an HMAC of the token that /login
 * (or /?token=) sets HttpOnly and SameSite=Strict, so that the page and its scripts work in a
 * browser without the token in any URL it keeps. Tokens are compared as SHA-256 digests with
 * CRYPTO_memcmp (constant time, and no length leaks); the token itself is not kept.
 *
 * The state database. /metrics, /v1/posts and the dashboard read the daemon's SQLite file over a
 * read-only connection of their own (report.h's cp_report_db_open), in one read transaction per
 * request: WAL readers never block the daemon's writes. /v1/report is report.h's report. The
 * report, the feed and the store's part of /metrics are built on libuv's thread pool (see
 * "Off-loop answers"); /v1/posts reads a bounded page on the loop, since it asks the daemon for
 * titles. */
#include "control.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <h2o.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sqlite3.h>

#include "calpost/err.h"
#include "connector_registry.h"
#include "daemon.h"
#include "plan.h"
#include "feed.h"
#include "report.h"
#include "store.h"

#define MAX_BODY (64 * 1024)     /* request bodies we parse */
#define MAX_ENTITY (1024 * 1024) /* above this h2o itself answers 413 */
#define MAX_ANSWER (1024 * 1024) /* response bodies the client accepts */
#define MAX_CONNS 32             /* concurrent connections; more are closed at once */
#define CLIENT_TIMEOUT_MS 10000L
#define POSTS_DEFAULT 100 /* /v1/posts without limit= */
#define POSTS_MAX 5000
#define MIN_TOKEN 16
#define SESSION_COOKIE "calpost_session"
#define SESSION_LABEL "calpost dashboard session 1"

#define CONTAINER(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* The files of web/, compiled in by web/embed.cmake (the generated web_assets.c). */
struct cp__web_asset {
  const char *name; /* "index.html" */
  const unsigned char *data;
  size_t len;
};
extern const struct cp__web_asset cp__web_assets[]; /* ends with {NULL, NULL, 0} */

/* An accepted connection. The handle comes first: h2o's close callback hands us the handle. */
struct conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_pipe_t pipe;
    uv_tcp_t tcp;
  } u;
  struct cp_control *c;
  struct conn *prev, *next;
};

struct handler {
  h2o_handler_t super;
  struct cp_control *c;
  bool tcp; /* the TCP transport's handler: requests need the token */
};

struct cp_control {
  uv_loop_t *loop;
  const struct cp_control_ops *ops;
  void *d;
  char *path;
  uv_pipe_t listener;
  uv_tcp_t tcp;      /* the loopback TCP listener, once configured */
  bool tcp_open;     /* tcp is initialised and its close callback has not run */
  uv_idle_t barrier; /* closed twice after h2o's handles; see maybe_dispose() */
  int barrier_phase;
  bool disposed; /* the h2o context */
  h2o_globalconf_t config;
  h2o_context_t ctx;
  h2o_hostconf_t *unix_hosts[2], *tcp_hosts[2]; /* one host each, NULL-terminated */
  h2o_accept_ctx_t accept_ctx, tcp_accept_ctx;
  struct conn *conns;
  size_t n_conns;
  bool listening; /* the listener is open */
  size_t n_jobs;  /* requests being answered on the thread pool */
  bool stopping;
  void (*done)(void *arg);
  void *done_arg;
  /* Set by cp_control_configure. */
  const struct cp_config *cfg; /* NULL: no state database (and no dashboard) */
  bool has_token;
  unsigned char token_digest[SHA256_DIGEST_LENGTH];
  char session[2 * SHA256_DIGEST_LENGTH + 1]; /* the cookie's value, hex */
};

/* ---------------------------------------------------------------------------------------- */
/* Answers                                                                                   */

static const char *reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 303:
      return "See Other";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
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

static void add_header(h2o_req_t *req, const char *name, const char *value) {
  h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 1, NULL, value,
                        strlen(value));
}

/* Sends status and a body of type (copied into the request's pool). Answers are never cached
 * and never sniffed as another type. */
static void send_body(h2o_req_t *req, int status, const char *type, const void *body, size_t len) {
  req->res.status = status;
  req->res.reason = reason(status);
  req->res.content_length = len;
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                 H2O_STRLIT("no-store"));
  add_header(req, "x-content-type-options", "nosniff");
  h2o_send_inline(req, body, len);
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
  if (allow)
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
  send_body(req, status, "application/json", out, strlen(out));
  free(text);
}

/* 401: the request came over TCP without the token. */
static void unauthorized(h2o_req_t *req) {
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                 H2O_STRLIT("Bearer realm=\"calpost\""));
  respond(req, 401,
          error_json("this request needs the control token: send \"Authorization: Bearer "
                     "TOKEN\" with the token of [control] token_file or token_env"),
          NULL);
}

static void method_not_allowed(h2o_req_t *req, const char *want) {
  char m[32];
  quote_bytes(req->method.base, req->method.len, m, sizeof m);
  respond(req, 405, error_json("method %s is not allowed here; use %s", m, want), want);
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

/* The daemon's own endpoints (status, pause, resume, retry, skip, confirm). */
static void daemon_request(struct cp_control *c, h2o_req_t *req) {
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
    return;
  }
  const char *want = r == R_STATUS ? "GET" : "POST";
  if (!is_method(req, want)) {
    method_not_allowed(req, want);
    return;
  }
  if (bad_id) {
    respond(req, 400, error_json("invalid post id (expected letters, digits, '-', '_', '.')"),
            NULL);
    return;
  }
  json_t *obj = NULL, *out = NULL;
  const char *const *keys = r == R_PAUSE ? pause_keys : r == R_RESUME ? resume_keys : no_keys;
  int status = parse_body(req, keys, &obj, &out);
  if (status) {
    respond(req, status, out, NULL);
    return;
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
}

/* ---------------------------------------------------------------------------------------- */
/* Authentication (TCP only)                                                                 */

enum auth {
  AUTH_NONE,    /* no token, or a wrong one */
  AUTH_SESSION, /* the dashboard's cookie: GET requests only */
  AUTH_TOKEN,   /* the bearer token (or the Unix socket) */
};

static bool token_matches(const struct cp_control *c, const char *s, size_t len) {
  if (!c->has_token)
    return false;
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)s, len, d);
  return CRYPTO_memcmp(d, c->token_digest, sizeof d) == 0;
}

static bool session_matches(const struct cp_control *c, const char *s, size_t len) {
  /* The length of the session value is public (64 hex digits); its bytes are compared in
   * constant time. */
  return c->has_token && len == sizeof c->session - 1 && CRYPTO_memcmp(s, c->session, len) == 0;
}

/* Whether the request carries the token (Authorization: Bearer) or the session cookie. A wrong
 * bearer token is never rescued by a cookie. */
static enum auth authorize(const struct cp_control *c, h2o_req_t *req) {
  ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
  if (i >= 0) {
    h2o_iovec_t v = req->headers.entries[i].value;
    if (v.len <= 7 || strncasecmp(v.base, "Bearer ", 7))
      return AUTH_NONE;
    const char *t = v.base + 7;
    size_t n = v.len - 7;
    while (n && *t == ' ')
      t++, n--;
    while (n && t[n - 1] == ' ')
      n--;
    return token_matches(c, t, n) ? AUTH_TOKEN : AUTH_NONE;
  }
  static const char name[] = SESSION_COOKIE "=";
  for (i = -1; (i = h2o_find_header(&req->headers, H2O_TOKEN_COOKIE, i)) >= 0;) {
    h2o_iovec_t v = req->headers.entries[i].value;
    const char *p = v.base, *end = v.base + v.len;
    while (p < end) {
      const char *semi = memchr(p, ';', (size_t)(end - p));
      if (!semi)
        semi = end;
      while (p < semi && *p == ' ')
        p++;
      size_t n = (size_t)(semi - p);
      if (n >= sizeof name - 1 && !memcmp(p, name, sizeof name - 1)) {
        const char *val = p + sizeof name - 1;
        size_t vlen = (size_t)(semi - val);
        while (vlen && val[vlen - 1] == ' ')
          vlen--;
        if (session_matches(c, val, vlen))
          return AUTH_SESSION;
      }
      p = semi + 1;
    }
  }
  return AUTH_NONE;
}

/* ---------------------------------------------------------------------------------------- */
/* Query strings and forms                                                                   */

/* Decodes one application/x-www-form-urlencoded value ('+' and %XX, by libcurl). Returns a new
 * string, or NULL for bad encoding (an encoded NUL) or ENOMEM. */
static char *form_decode(const char *s, size_t len) {
  if (len > 4096)
    return NULL;
  char *tmp = malloc(len + 1);
  if (!tmp)
    return NULL;
  for (size_t i = 0; i < len; i++)
    tmp[i] = s[i] == '+' ? ' ' : s[i];
  tmp[len] = '\0';
  int outlen = 0;
  char *d = curl_easy_unescape(NULL, tmp, (int)len, &outlen);
  free(tmp);
  if (!d)
    return NULL;
  char *out = (size_t)outlen == strlen(d) ? strdup(d) : NULL;
  curl_free(d);
  return out;
}

struct param {
  const char *name;
  char *value; /* decoded; NULL when absent */
};

static void params_free(struct param *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(v[i].value);
    v[i].value = NULL;
  }
}

/* Reads "a=1&b=2" (len bytes) into v[]: known names only, each once. strict: an unknown name is
 * an error (a typo must not silently widen a query). Returns 0, or 400 with *err set. */
static int parse_form(const char *s, size_t len, struct param *v, size_t n, bool strict,
                      json_t **err) {
  const char *p = s, *end = s + len;
  while (p < end) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    if (!amp)
      amp = end;
    const char *eq = memchr(p, '=', (size_t)(amp - p));
    const char *kend = eq ? eq : amp;
    if (kend > p) {
      struct param *hit = NULL;
      for (size_t i = 0; i < n && !hit; i++)
        if ((size_t)(kend - p) == strlen(v[i].name) && !memcmp(p, v[i].name, (size_t)(kend - p)))
          hit = &v[i];
      char q[128];
      quote_bytes(p, (size_t)(kend - p), q, sizeof q);
      if (!hit && strict) {
        char known[256] = "";
        for (size_t i = 0; i < n; i++)
          snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                   v[i].name);
        *err = error_json("unknown parameter \"%s\" (known: %s)", q, known);
        return 400;
      }
      if (hit && hit->value) {
        *err = error_json("parameter \"%s\" is given twice", q);
        return 400;
      }
      if (hit && !(hit->value = eq ? form_decode(eq + 1, (size_t)(amp - eq - 1)) : strdup(""))) {
        *err = error_json("parameter \"%s\": invalid percent-encoding", q);
        return 400;
      }
    }
    p = amp + 1;
  }
  return 0;
}

static int parse_query(h2o_req_t *req, struct param *v, size_t n, bool strict, json_t **err) {
  if (req->query_at == SIZE_MAX || req->query_at >= req->path.len)
    return 0;
  return parse_form(req->path.base + req->query_at + 1, req->path.len - req->query_at - 1, v, n,
                    strict, err);
}

/* "now", a duration from now ("7d" or "+7d" ahead, "-7d" ago), a date (midnight UTC) or an ISO
 * 8601 date-time with Z or an offset. ago: a bare duration counts back from now (since=30d). */
static int parse_when(const char *s, int64_t now_ms, bool ago, int64_t *out_ms) {
  if (!strcmp(s, "now")) {
    *out_ms = now_ms;
    return 0;
  }
  const char *p = s;
  int64_t sign = ago ? -1 : 1;
  if (*p == '-' || *p == '+')
    sign = *p++ == '-' ? -1 : 1;
  int64_t d;
  if (isdigit((unsigned char)*p) && !strchr(p, '-') && !strchr(p, ':') &&
      cp_daemon_parse_duration(p, &d) == 0) {
    *out_ms = now_ms + sign * d;
    return 0;
  }
  int64_t t;
  if (cp_plan_parse_time(s, "UTC", now_ms / 1000, &t) == 0) {
    *out_ms = t * 1000;
    return 0;
  }
  return CP_EINVAL;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static json_t *time_json(int64_t ms) {
  char buf[40];
  int64_t s = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  cp_plan_format_time(s, 0, buf, sizeof buf);
  return json_string(buf);
}

/* ---------------------------------------------------------------------------------------- */
/* The state database                                                                        */

/* Opens the state database read-only and starts a read transaction (one snapshot). Returns 0,
 * or a status with *err set. */
static int db_begin(struct cp_control *c, sqlite3 **db, json_t **err) {
  char msg[512] = "";
  int rc = cp_report_db_open(c->cfg, db, msg, sizeof msg);
  if (rc < 0) {
    *err = error_json("%s", msg);
    return rc == CP_ENOTFOUND ? 404 : 500;
  }
  if (sqlite3_exec(*db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
    *err = error_json("state database: %s", sqlite3_errmsg(*db));
    sqlite3_close(*db);
    *db = NULL;
    return 500;
  }
  return 0;
}

static void db_end(sqlite3 *db) {
  if (db) {
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
  }
}

static json_t *column_json(sqlite3_stmt *st, int col) {
  switch (sqlite3_column_type(st, col)) {
    case SQLITE_NULL:
      return json_null();
    case SQLITE_INTEGER:
      return json_integer(sqlite3_column_int64(st, col));
    default: {
      const char *s = (const char *)sqlite3_column_text(st, col);
      /* Messages were truncated on a UTF-8 boundary when stored; anything else is replaced. */
      json_t *j = s ? json_string(s) : NULL;
      return j ? j : json_string("(not UTF-8)");
    }
  }
}

/* An engagement count: NULL or negative means the platform does not report it. */
static json_t *count_json(sqlite3_stmt *st, int col) {
  if (sqlite3_column_type(st, col) == SQLITE_NULL || sqlite3_column_int64(st, col) < 0)
    return json_null();
  return json_integer(sqlite3_column_int64(st, col));
}

/* ---------------------------------------------------------------------------------------- */
/* GET /v1/posts                                                                             */

static const char posts_sql[] =
    "SELECT p.id, p.channel, p.due_ms, p.state, p.attempts, p.remote_url,"
    " (SELECT CASE WHEN a.outcome = 'ok' THEN NULL ELSE coalesce(a.message, a.outcome) END"
    "  FROM attempts a WHERE a.post_id = p.id ORDER BY a.n DESC LIMIT 1),"
    " (SELECT a.outcome FROM attempts a WHERE a.post_id = p.id ORDER BY a.n DESC LIMIT 1),"
    " (SELECT min(a.at_ms) FROM attempts a WHERE a.post_id = p.id AND a.outcome = 'ok')"
    " FROM posts p"
    " WHERE (?1 IS NULL OR p.channel = ?1)"
    "  AND (?2 IS NULL OR instr(?2, ',' || p.state || ',') > 0)"
    "  AND p.due_ms >= ?3 AND p.due_ms < ?4"
    " ORDER BY p.due_ms, p.channel, p.id LIMIT ?5";

static const char engagement_sql[] =
    "SELECT age_s, sampled_ms, replies, reposts, likes, quotes, views FROM engagement"
    " WHERE post_id = ?1 ORDER BY sampled_ms DESC, age_s DESC LIMIT 1";

/* The latest engagement sample of post id, or null. */
static json_t *engagement_json(sqlite3_stmt *st, const char *id) {
  sqlite3_reset(st);
  sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
  if (sqlite3_step(st) != SQLITE_ROW)
    return json_null();
  return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:o}", "age_s",
                   (json_int_t)sqlite3_column_int64(st, 0), "sampled",
                   time_json(sqlite3_column_int64(st, 1)), "replies", count_json(st, 2), "reposts",
                   count_json(st, 3), "likes", count_json(st, 4), "quotes", count_json(st, 5),
                   "views", count_json(st, 6));
}

static void posts_request(struct cp_control *c, h2o_req_t *req) {
  struct param q[] = {
      {"state", NULL}, {"channel", NULL}, {"from", NULL}, {"to", NULL}, {"limit", NULL}};
  size_t nq = sizeof q / sizeof q[0];
  json_t *err = NULL, *posts = NULL, *out = NULL;
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL, *eng = NULL;
  int status = parse_query(req, q, nq, true, &err);
  if (status)
    goto out;
  /* state=sent,failed: checked names, as ",sent,failed," for instr() */
  char states[256] = "";
  if (q[0].value) {
    snprintf(states, sizeof states, ",");
    char *save = NULL;
    for (char *s = strtok_r(q[0].value, ", ", &save); s; s = strtok_r(NULL, ", ", &save)) {
      enum cp_store_state k;
      char name[64];
      quote_bytes(s, strlen(s), name, sizeof name);
      if (cp_store_state_parse(s, &k) < 0) {
        status = 400;
        err = error_json("state=%s: not a state (pending, sending, sent, failed, missed, "
                         "cancelled, skipped, unknown)",
                         name);
        goto out;
      }
      snprintf(states + strlen(states), sizeof states - strlen(states), "%s,",
               cp_store_state_name(k));
    }
  }
  int64_t now = now_ms(), from = INT64_MIN, to = INT64_MAX;
  for (int i = 2; i <= 3; i++) {
    char name[64];
    if (!q[i].value)
      continue;
    quote_bytes(q[i].value, strlen(q[i].value), name, sizeof name);
    if (parse_when(q[i].value, now, false, i == 2 ? &from : &to) < 0) {
      status = 400;
      err = error_json("%s=%s: not a time (now, -7d, 7d, 2026-11-22 or 2026-11-22T10:00:00Z)",
                       q[i].name, name);
      goto out;
    }
  }
  long limit = POSTS_DEFAULT;
  if (q[4].value) {
    char *end;
    errno = 0;
    limit = strtol(q[4].value, &end, 10);
    if (errno || end == q[4].value || *end || limit < 1 || limit > POSTS_MAX) {
      status = 400;
      err = error_json("limit must be a number from 1 to %d", POSTS_MAX);
      goto out;
    }
  }
  if ((status = db_begin(c, &db, &err)))
    goto out;
  if (sqlite3_prepare_v2(db, posts_sql, -1, &st, NULL) != SQLITE_OK ||
      (cp_report_db_has_engagement(db) &&
       sqlite3_prepare_v2(db, engagement_sql, -1, &eng, NULL) != SQLITE_OK)) {
    status = 500;
    err = error_json("state database: %s", sqlite3_errmsg(db));
    goto out;
  }
  if (q[1].value)
    sqlite3_bind_text(st, 1, q[1].value, -1, SQLITE_STATIC);
  if (*states)
    sqlite3_bind_text(st, 2, states, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, from);
  sqlite3_bind_int64(st, 4, to);
  sqlite3_bind_int64(st, 5, limit + 1); /* one more: was the list cut? */
  posts = json_array();
  bool truncated = false, ok = posts != NULL;
  int rc = SQLITE_DONE;
  for (long n = 0; ok && (rc = sqlite3_step(st)) == SQLITE_ROW; n++) {
    if (n == limit) {
      truncated = true;
      break;
    }
    const char *id = (const char *)sqlite3_column_text(st, 0);
    const char *state = (const char *)sqlite3_column_text(st, 3);
    const char *title = c->ops->title && id ? c->ops->title(c->d, id) : NULL;
    int64_t due = sqlite3_column_int64(st, 2);
    bool published = sqlite3_column_type(st, 8) != SQLITE_NULL;
    int64_t at = sqlite3_column_int64(st, 8);
    json_t *p =
        json_pack("{s:o,s:o,s:o,s:o,s:o,s:I,s:o,s:o,s:o,s:o,s:o,s:o}", "id", column_json(st, 0),
                  "channel", column_json(st, 1), "title", title ? json_string(title) : json_null(),
                  "due", time_json(due), "state", column_json(st, 3), "attempts",
                  (json_int_t)sqlite3_column_int64(st, 4), "remote_url", column_json(st, 5),
                  "last_error", column_json(st, 6), "last_outcome", column_json(st, 7), "published",
                  published ? time_json(at) : json_null(), "lateness_ms",
                  published ? json_integer(at > due ? at - due : 0) : json_null(), "engagement",
                  eng && state && !strcmp(state, "sent") ? engagement_json(eng, id) : json_null());
    ok = p && json_array_append_new(posts, p) == 0;
  }
  if (!ok || (rc != SQLITE_ROW && rc != SQLITE_DONE)) {
    status = 500;
    err = ok ? error_json("state database: %s", sqlite3_errmsg(db)) : error_json("out of memory");
    goto out;
  }
  out = json_pack("{s:o,s:o,s:b}", "now", time_json(now), "posts", posts, "truncated", truncated);
  posts = NULL;
  status = out ? 200 : 500;
out:
  sqlite3_finalize(st);
  sqlite3_finalize(eng);
  db_end(db);
  params_free(q, nq);
  json_decref(posts);
  respond(req, status, status == 200 ? out : err, NULL);
  if (status != 200)
    json_decref(out);
  else
    json_decref(err);
}

/* ---------------------------------------------------------------------------------------- */
/* Off-loop answers                                                                          */

/* Reports, the feed and the store's part of /metrics read the whole state database (and the
 * feed the plan): on libuv's thread pool, with a read-only connection of their own, so the loop
 * keeps publishing on time. A job holds only copies and the config (read-only while the daemon
 * runs); it answers on the loop. h2o disposes a request whose connection closes; the job hears
 * of it through a shared slot in the request's pool and then only frees what it holds. */
struct job {
  uv_work_t work;
  struct cp_control *c;
  h2o_req_t *req;                 /* NULL once h2o disposed the request */
  struct job **slot;              /* in req->pool; NULL once the request is gone */
  void (*run)(struct job *j);     /* on a worker thread: no h2o, no daemon state */
  void (*answer)(struct job *j);  /* on the loop, while the request is there */
  void (*release)(struct job *j); /* on the loop: frees the job */
};

static void job_request_gone(void *p) {
  struct job **slot = p;
  if (*slot) {
    (*slot)->req = NULL;
    (*slot)->slot = NULL;
  }
}

static void job_work(uv_work_t *w) {
  struct job *j = CONTAINER(w, struct job, work);
  j->run(j);
}

static void maybe_dispose(struct cp_control *c);
static void maybe_done(struct cp_control *c);

static void job_after(uv_work_t *w, int status) {
  struct job *j = CONTAINER(w, struct job, work);
  struct cp_control *c = j->c;
  if (j->slot)
    *j->slot = NULL;
  if (j->req) {
    if (status == 0)
      j->answer(j);
    else
      respond(j->req, 503, error_json("not answered: %s", uv_strerror(status)), NULL);
  }
  j->release(j);
  c->n_jobs--;
  maybe_dispose(c);
  maybe_done(c);
}

/* Queues j for req. Returns 0, or a libuv error: then the caller answers and frees j. */
static int job_start(struct cp_control *c, h2o_req_t *req, struct job *j) {
  j->c = c;
  j->req = req;
  j->slot = h2o_mem_alloc_shared(&req->pool, sizeof *j->slot, job_request_gone);
  *j->slot = j;
  int rc = uv_queue_work(c->loop, &j->work, job_work, job_after);
  if (rc < 0) {
    *j->slot = NULL;
    return rc;
  }
  c->n_jobs++;
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* GET /v1/report                                                                            */

struct report_job {
  struct job j;
  int64_t from, to;
  char *channel;
  int rc;
  struct cp_report *r;
  char msg[512];
};

static void report_run(struct job *j) {
  struct report_job *rj = (struct report_job *)j;
  struct cp_report_opts o = {.from_ms = rj->from, .to_ms = rj->to, .channel = rj->channel};
  rj->rc = cp_report_build(j->c->cfg, &o, &rj->r, rj->msg, sizeof rj->msg);
}

static void report_answer(struct job *j) {
  struct report_job *rj = (struct report_job *)j;
  if (rj->rc < 0) {
    respond(j->req, rj->rc == CP_ENOTFOUND ? 404 : 500,
            error_json("%s", rj->msg[0] ? rj->msg : cp_strerror(rj->rc)), NULL);
    return;
  }
  json_t *out = cp_report_json(rj->r);
  respond(j->req, out ? 200 : 500, out, NULL);
}

static void report_release(struct job *j) {
  struct report_job *rj = (struct report_job *)j;
  cp_report_free(rj->r);
  free(rj->channel);
  free(rj);
}

static void report_request(struct cp_control *c, h2o_req_t *req) {
  struct param q[] = {{"since", NULL}, {"until", NULL}, {"channel", NULL}};
  size_t nq = sizeof q / sizeof q[0];
  json_t *err = NULL;
  int status = parse_query(req, q, nq, true, &err);
  if (status)
    goto out;
  int64_t now = now_ms(), from = now - 30LL * 86400000, to = now;
  for (int i = 0; i <= 1; i++) {
    char name[64];
    if (!q[i].value)
      continue;
    quote_bytes(q[i].value, strlen(q[i].value), name, sizeof name);
    if (parse_when(q[i].value, now, i == 0, i == 0 ? &from : &to) < 0) {
      status = 400;
      err = error_json("%s=%s: not a time (30d, 2026-11-01 or 2026-11-01T00:00:00Z)", q[i].name,
                       name);
      goto out;
    }
  }
  if (from > to) {
    status = 400;
    err = error_json("since is after until");
    goto out;
  }
  struct report_job *rj = calloc(1, sizeof *rj);
  if (!rj || (q[2].value && !(rj->channel = strdup(q[2].value)))) {
    free(rj);
    status = 500;
    err = error_json("out of memory");
    goto out;
  }
  rj->from = from;
  rj->to = to;
  rj->j.run = report_run;
  rj->j.answer = report_answer;
  rj->j.release = report_release;
  if (job_start(c, req, &rj->j) < 0) {
    report_run(&rj->j);
    rj->j.req = req;
    report_answer(&rj->j);
    report_release(&rj->j);
  }
  params_free(q, nq);
  return;
out:
  params_free(q, nq);
  respond(req, status, err, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* GET /metrics (Prometheus text exposition format 0.0.4)                                    */

static const double buckets[] = {0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300};
static const char *const bucket_names[] = {"0.005", "0.01", "0.05", "0.1", "0.5",
                                           "1",     "5",    "30",   "60",  "300"};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])

struct mchan {
  char *name;
  bool configured;
  uint64_t states[CP_STORE_NSTATES];
  uint64_t attempts[CP_REPORT_OUTCOMES];
  uint64_t le[N_BUCKETS]; /* not yet cumulative */
  uint64_t count;
  double sum;
  uint64_t samples;
  bool has_waits;
  uint64_t waits;
};

struct metrics {
  struct mchan *v;
  size_t n;
  bool oom;
};

static struct mchan *mchan_get(struct metrics *m, const char *name) {
  if (!name)
    return NULL;
  for (size_t i = 0; i < m->n; i++)
    if (!strcmp(m->v[i].name, name))
      return &m->v[i];
  struct mchan *nv = realloc(m->v, (m->n + 1) * sizeof *nv);
  if (!nv) {
    m->oom = true;
    return NULL;
  }
  m->v = nv;
  memset(&nv[m->n], 0, sizeof nv[m->n]);
  if (!(nv[m->n].name = strdup(name))) {
    m->oom = true;
    return NULL;
  }
  return &nv[m->n++];
}

/* A growing text buffer; on ENOMEM it stops growing and says so. */
struct text {
  char *p;
  size_t len, cap;
  bool oom;
};

static void tput(struct text *t, const char *s, size_t n) {
  if (t->oom)
    return;
  if (t->len + n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < t->len + n + 1)
      cap *= 2;
    char *p = realloc(t->p, cap);
    if (!p) {
      t->oom = true;
      return;
    }
    t->p = p;
    t->cap = cap;
  }
  memcpy(t->p + t->len, s, n);
  t->len += n;
  t->p[t->len] = '\0';
}

static void tprintf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tprintf(struct text *t, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n > 0)
    tput(t, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* A label value: backslash, double quote and line feed escaped, as the format requires. */
static void tlabel(struct text *t, const char *s) {
  for (const char *p = s; *p; p++) {
    if (*p == '\\')
      tput(t, "\\\\", 2);
    else if (*p == '"')
      tput(t, "\\\"", 2);
    else if (*p == '\n')
      tput(t, "\\n", 2);
    else
      tput(t, p, 1);
  }
}

static void family(struct text *t, const char *name, const char *type, const char *help) {
  tprintf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{channel="..."[,extra="value"]} */
static void sample_start(struct text *t, const char *name, const char *channel, const char *extra,
                         const char *value) {
  tprintf(t, "%s{channel=\"", name);
  tlabel(t, channel);
  tput(t, "\"", 1);
  if (extra) {
    tprintf(t, ",%s=\"", extra);
    tlabel(t, value);
    tput(t, "\"", 1);
  }
  tput(t, "} ", 2);
}

/* Reads the store's numbers into m. Returns 0, or -1 (the database cannot be read). */
static int metrics_from_store(struct cp_control *c, struct metrics *m, bool *has_engagement) {
  sqlite3 *db = NULL;
  json_t *err = NULL;
  *has_engagement = false;
  if (db_begin(c, &db, &err)) {
    json_decref(err);
    return -1;
  }
  *has_engagement = cp_report_db_has_engagement(db);
  static const char *const sql[] = {
      "SELECT channel, state, count(*) FROM posts GROUP BY channel, state ORDER BY channel",
      "SELECT p.channel, a.outcome, count(*) FROM attempts a JOIN posts p ON p.id = a.post_id"
      " GROUP BY p.channel, a.outcome",
      "SELECT p.channel, max(a.at_ms - p.due_ms, 0) FROM attempts a JOIN posts p"
      " ON p.id = a.post_id WHERE a.outcome = 'ok'",
      "SELECT p.channel, count(*) FROM engagement e JOIN posts p ON p.id = e.post_id"
      " GROUP BY p.channel",
  };
  int result = 0;
  for (size_t k = 0; k < 4 && !result; k++) {
    sqlite3_stmt *st;
    if (k == 3 && !*has_engagement)
      break;
    if (sqlite3_prepare_v2(db, sql[k], -1, &st, NULL) != SQLITE_OK) {
      result = -1;
      break;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      struct mchan *ch = mchan_get(m, (const char *)sqlite3_column_text(st, 0));
      if (!ch)
        continue;
      const char *s = (const char *)sqlite3_column_text(st, 1);
      int64_t v = sqlite3_column_int64(st, k == 3 ? 1 : 2);
      if (k == 0) {
        enum cp_store_state state;
        if (s && cp_store_state_parse(s, &state) == 0)
          ch->states[state] += (uint64_t)v;
      } else if (k == 1) {
        for (int o = 0; s && o < CP_REPORT_OUTCOMES; o++)
          if (!strcmp(s, cp_store_outcome_name((enum cp_outcome)o)))
            ch->attempts[o] += (uint64_t)v;
      } else if (k == 2) {
        double late = (double)sqlite3_column_int64(st, 1) / 1000.0;
        for (size_t b = 0; b < N_BUCKETS; b++)
          if (late <= buckets[b]) {
            ch->le[b]++;
            break;
          }
        ch->count++;
        ch->sum += late;
      } else {
        ch->samples += (uint64_t)v;
      }
    }
    if (rc != SQLITE_DONE)
      result = -1;
    sqlite3_finalize(st);
  }
  db_end(db);
  return result;
}

/* Reads the daemon's counters (ops->stats) into m. Returns whether there were any. */
static bool metrics_from_daemon(struct cp_control *c, struct metrics *m, json_int_t *refreshes,
                                json_int_t *failures, int *held) {
  json_t *st = NULL;
  if (!c->ops->stats || c->ops->stats(c->d, &st) != 200 || !json_is_object(st)) {
    json_decref(st);
    return false;
  }
  *refreshes = json_integer_value(json_object_get(st, "plan_refreshes"));
  *failures = json_integer_value(json_object_get(st, "plan_refresh_failures"));
  *held = json_is_true(json_object_get(st, "plan_held"));
  size_t i;
  json_t *ch;
  json_array_foreach(json_object_get(st, "channels"), i, ch) {
    struct mchan *mc = mchan_get(m, json_string_value(json_object_get(ch, "name")));
    if (mc) {
      mc->has_waits = true;
      mc->waits = (uint64_t)json_integer_value(json_object_get(ch, "rate_limit_waits"));
    }
  }
  json_decref(st);
  return true;
}

/* The daemon's counters are read on the loop when the request comes; the store's numbers on the
 * thread pool; the text is written on the loop. */
struct metrics_job {
  struct job j;
  struct metrics m;
  json_int_t refreshes, failures;
  int held;
  bool daemon, engagement, store;
};

static void metrics_run(struct job *j) {
  struct metrics_job *mj = (struct metrics_job *)j;
  mj->store = metrics_from_store(j->c, &mj->m, &mj->engagement) == 0;
}

static void metrics_answer(struct job *j);

static void metrics_release(struct job *j) {
  struct metrics_job *mj = (struct metrics_job *)j;
  for (size_t i = 0; i < mj->m.n; i++)
    free(mj->m.v[i].name);
  free(mj->m.v);
  free(mj);
}

static void metrics_request(struct cp_control *c, h2o_req_t *req) {
  struct metrics_job *mj = calloc(1, sizeof *mj);
  if (!mj) {
    respond(req, 500, error_json("out of memory"), NULL);
    return;
  }
  /* Configured channels first, so that a channel with nothing stored yet shows zeros. */
  for (size_t i = 0; i < c->cfg->n_channels; i++) {
    struct mchan *ch = mchan_get(&mj->m, c->cfg->channels[i].name);
    if (ch)
      ch->configured = true;
  }
  mj->daemon = metrics_from_daemon(c, &mj->m, &mj->refreshes, &mj->failures, &mj->held);
  mj->j.run = metrics_run;
  mj->j.answer = metrics_answer;
  mj->j.release = metrics_release;
  if (job_start(c, req, &mj->j) < 0) {
    metrics_run(&mj->j);
    metrics_answer(&mj->j);
    metrics_release(&mj->j);
  }
}

static void metrics_answer(struct job *j) {
  struct metrics_job *mj = (struct metrics_job *)j;
  struct metrics m = mj->m;
  h2o_req_t *req = j->req;
  json_int_t refreshes = mj->refreshes, failures = mj->failures;
  int held = mj->held;
  bool daemon = mj->daemon, engagement = mj->engagement, store = mj->store;
  struct text t = {0};

  family(&t, "calpost_build_info", "gauge", "The calpost version serving these metrics.");
  tprintf(&t, "calpost_build_info{version=\"%s\"} 1\n", CALPOST_VERSION);
  family(&t, "calpost_store_up", "gauge",
         "Whether the state database could be read for these metrics (1) or not (0).");
  tprintf(&t, "calpost_store_up %d\n", store ? 1 : 0);
  if (store) {
    family(&t, "calpost_posts", "gauge", "Posts in the state database by channel and state.");
    for (size_t i = 0; i < m.n; i++)
      for (int s = 0; s < CP_STORE_NSTATES; s++) {
        sample_start(&t, "calpost_posts", m.v[i].name, "state",
                     cp_store_state_name((enum cp_store_state)s));
        tprintf(&t, "%llu\n", (unsigned long long)m.v[i].states[s]);
      }
    family(&t, "calpost_queue_depth", "gauge",
           "Pending posts (waiting for their time or a retry) by channel.");
    for (size_t i = 0; i < m.n; i++) {
      sample_start(&t, "calpost_queue_depth", m.v[i].name, NULL, NULL);
      tprintf(&t, "%llu\n", (unsigned long long)m.v[i].states[CP_STORE_PENDING]);
    }
    family(&t, "calpost_attempts_total", "counter", "Publish attempts by channel and outcome.");
    for (size_t i = 0; i < m.n; i++)
      for (int o = 0; o < CP_REPORT_OUTCOMES; o++) {
        sample_start(&t, "calpost_attempts_total", m.v[i].name, "outcome",
                     cp_store_outcome_name((enum cp_outcome)o));
        tprintf(&t, "%llu\n", (unsigned long long)m.v[i].attempts[o]);
      }
    family(&t, "calpost_lateness_seconds", "histogram",
           "Seconds from a post's due time to its successful attempt, by channel.");
    for (size_t i = 0; i < m.n; i++) {
      uint64_t cum = 0;
      for (size_t b = 0; b < N_BUCKETS; b++) {
        cum += m.v[i].le[b];
        sample_start(&t, "calpost_lateness_seconds_bucket", m.v[i].name, "le", bucket_names[b]);
        tprintf(&t, "%llu\n", (unsigned long long)cum);
      }
      sample_start(&t, "calpost_lateness_seconds_bucket", m.v[i].name, "le", "+Inf");
      tprintf(&t, "%llu\n", (unsigned long long)m.v[i].count);
      sample_start(&t, "calpost_lateness_seconds_sum", m.v[i].name, NULL, NULL);
      tprintf(&t, "%.3f\n", m.v[i].sum);
      sample_start(&t, "calpost_lateness_seconds_count", m.v[i].name, NULL, NULL);
      tprintf(&t, "%llu\n", (unsigned long long)m.v[i].count);
    }
    if (engagement) {
      family(&t, "calpost_engagement_samples_total", "counter",
             "Engagement samples taken of published posts, by channel.");
      for (size_t i = 0; i < m.n; i++) {
        sample_start(&t, "calpost_engagement_samples_total", m.v[i].name, NULL, NULL);
        tprintf(&t, "%llu\n", (unsigned long long)m.v[i].samples);
      }
    }
  }
  if (daemon) {
    family(&t, "calpost_rate_limit_waits_total", "counter",
           "Posts held back by a rate limit (the channel's rate, the server's hints or a 429), "
           "by channel, since the daemon started.");
    for (size_t i = 0; i < m.n; i++)
      if (m.v[i].has_waits) {
        sample_start(&t, "calpost_rate_limit_waits_total", m.v[i].name, NULL, NULL);
        tprintf(&t, "%llu\n", (unsigned long long)m.v[i].waits);
      }
    family(&t, "calpost_plan_refreshes_total", "counter",
           "Times the plan was read again (start, a calendar changed, SIGHUP, the daily "
           "horizon) since the daemon started.");
    tprintf(&t, "calpost_plan_refreshes_total %lld\n", (long long)refreshes);
    family(&t, "calpost_plan_refresh_failures_total", "counter",
           "Calendar refreshes and plan reloads that failed since the daemon started (the last "
           "good plan stayed).");
    tprintf(&t, "calpost_plan_refresh_failures_total %lld\n", (long long)failures);
    family(&t, "calpost_plan_change_held", "gauge",
           "Whether a plan change waits for `calpost confirm` (1) or not (0).");
    tprintf(&t, "calpost_plan_change_held %d\n", held);
  }
  if (t.oom || m.oom || !t.p) {
    free(t.p);
    respond(req, 500, error_json("out of memory"), NULL);
    return;
  }
  send_body(req, 200, "text/plain; version=0.0.4; charset=utf-8", t.p, t.len);
  free(t.p);
}

/* ---------------------------------------------------------------------------------------- */
/* The dashboard                                                                             */

static const struct cp__web_asset *asset(const char *name) {
  for (const struct cp__web_asset *a = cp__web_assets; a->name; a++)
    if (!strcmp(a->name, name))
      return a;
  return NULL;
}

static const char *type_of(const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot)
    return "application/octet-stream";
  if (!strcmp(dot, ".html"))
    return "text/html; charset=utf-8";
  if (!strcmp(dot, ".css"))
    return "text/css; charset=utf-8";
  if (!strcmp(dot, ".js"))
    return "text/javascript; charset=utf-8";
  if (!strcmp(dot, ".svg"))
    return "image/svg+xml";
  return "application/octet-stream";
}

/* The page's own files only: no inline script or style, no other origin, no framing. */
static void page_headers(h2o_req_t *req) {
  add_header(req, "content-security-policy",
             "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
  add_header(req, "referrer-policy", "no-referrer");
  add_header(req, "x-frame-options", "DENY");
}

static void send_asset(h2o_req_t *req, int status, const struct cp__web_asset *a) {
  if (!a) {
    respond(req, 500, error_json("this build has no dashboard files"), NULL);
    return;
  }
  if (strstr(type_of(a->name), "html"))
    page_headers(req);
  send_body(req, status, type_of(a->name), a->data, a->len);
}

/* The login form (401), with a fixed message (never anything the request sent). */
static void send_login(h2o_req_t *req, const char *message) {
  const struct cp__web_asset *a = asset("login.html");
  static const char mark[] = "<!--message-->";
  const char *at = a ? memmem(a->data, a->len, mark, sizeof mark - 1) : NULL;
  if (!at || !message) {
    send_asset(req, 401, a);
    return;
  }
  size_t head = (size_t)(at - (const char *)a->data), ml = strlen(message);
  size_t tail = a->len - head - (sizeof mark - 1);
  char *buf = h2o_mem_alloc_pool(&req->pool, head + ml + tail);
  memcpy(buf, a->data, head);
  memcpy(buf + head, message, ml);
  memcpy(buf + head + ml, at + sizeof mark - 1, tail);
  page_headers(req);
  send_body(req, 401, "text/html; charset=utf-8", buf, head + ml + tail);
}

/* 303 to the dashboard; with set_cookie, the session cookie comes along. */
static void see_dashboard(struct cp_control *c, h2o_req_t *req, bool set_cookie) {
  if (set_cookie) {
    char cookie[160];
    snprintf(cookie, sizeof cookie, "%s=%s; Path=/; HttpOnly; SameSite=Strict", SESSION_COOKIE,
             c->session);
    /* h2o keeps the pointer until the answer is written: the value goes into the pool. */
    h2o_iovec_t v = h2o_strdup(&req->pool, cookie, strlen(cookie));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_SET_COOKIE, NULL, v.base, v.len);
    OPENSSL_cleanse(cookie, sizeof cookie);
  }
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, H2O_STRLIT("/"));
  send_body(req, 303, "text/plain; charset=utf-8", H2O_STRLIT("See /\n"));
}

static const char wrong_token[] =
    "<p class=\"error\" role=\"alert\">That is not the token of this daemon.</p>";

/* GET /: the dashboard; over TCP without a session, the login form. /?token=T logs in once and
 * sends the browser on to / (so the token does not stay in the address bar or history). */
static void index_request(struct cp_control *c, h2o_req_t *req, bool tcp, enum auth auth) {
  if (!is_method(req, "GET")) {
    method_not_allowed(req, "GET");
    return;
  }
  if (tcp) {
    struct param q[] = {{"token", NULL}};
    json_t *err = NULL;
    parse_query(req, q, 1, false, &err);
    json_decref(err);
    bool given = q[0].value != NULL;
    bool ok = given && token_matches(c, q[0].value, strlen(q[0].value));
    if (q[0].value)
      OPENSSL_cleanse(q[0].value, strlen(q[0].value));
    params_free(q, 1);
    if (given) {
      if (ok)
        see_dashboard(c, req, true);
      else
        send_login(req, wrong_token);
      return;
    }
    if (auth == AUTH_NONE) {
      send_login(req, NULL);
      return;
    }
  }
  send_asset(req, 200, asset("index.html"));
}

/* POST /login (token=T, a form): sets the session cookie and sends the browser to /. */
static void login_request(struct cp_control *c, h2o_req_t *req, bool tcp) {
  if (!is_method(req, "POST")) {
    if (is_method(req, "GET")) {
      see_dashboard(c, req, false);
      return;
    }
    method_not_allowed(req, "POST");
    return;
  }
  if (!tcp) {
    see_dashboard(c, req, false);
    return;
  }
  struct param q[] = {{"token", NULL}};
  json_t *err = NULL;
  if (req->entity.base && req->entity.len <= MAX_BODY)
    parse_form(req->entity.base, req->entity.len, q, 1, false, &err);
  json_decref(err);
  bool ok = q[0].value && token_matches(c, q[0].value, strlen(q[0].value));
  if (q[0].value)
    OPENSSL_cleanse(q[0].value, strlen(q[0].value));
  params_free(q, 1);
  if (ok)
    see_dashboard(c, req, true);
  else
    send_login(req, wrong_token);
}

/* GET /v1/feed.ics?since=90d: the published feed (feed.h), for editors to subscribe to next to
 * their plan. Built off the loop like /v1/report: it reads the state database and the plan. */
struct feed_job {
  struct job j;
  int64_t since;
  int rc;
  char *ics;
  char msg[512];
};

static void feed_run(struct job *j) {
  struct feed_job *fj = (struct feed_job *)j;
  fj->rc = cp_feed_build_msg(j->c->cfg, fj->since, &fj->ics, fj->msg, sizeof fj->msg);
}

static void feed_answer(struct job *j) {
  struct feed_job *fj = (struct feed_job *)j;
  if (fj->rc < 0)
    respond(j->req, fj->rc == CP_ENOTFOUND ? 404 : 500,
            error_json("%s", fj->msg[0] ? fj->msg : cp_strerror(fj->rc)), NULL);
  else
    send_body(j->req, 200, "text/calendar; charset=utf-8", fj->ics, strlen(fj->ics));
}

static void feed_release(struct job *j) {
  struct feed_job *fj = (struct feed_job *)j;
  free(fj->ics);
  free(fj);
}

static void feed_request(struct cp_control *c, h2o_req_t *req) {
  struct param q[] = {{"since", NULL}};
  json_t *err = NULL;
  int status = parse_query(req, q, 1, true, &err);
  int64_t now = now_ms(), since = now - 90LL * 86400000;
  if (!status && q[0].value && parse_when(q[0].value, now, true, &since) < 0) {
    status = 400;
    err = error_json("since: not a time (90d, 2026-11-01 or 2026-11-01T00:00:00Z)");
  }
  params_free(q, 1);
  if (status) {
    respond(req, status, err, NULL);
    return;
  }
  struct feed_job *fj = calloc(1, sizeof *fj);
  if (!fj) {
    respond(req, 500, error_json("out of memory"), NULL);
    return;
  }
  fj->since = since;
  fj->j.run = feed_run;
  fj->j.answer = feed_answer;
  fj->j.release = feed_release;
  if (job_start(c, req, &fj->j) < 0) {
    feed_run(&fj->j);
    feed_answer(&fj->j);
    feed_release(&fj->j);
  }
}

/* The endpoints that need the state database. Returns false for other paths. */
static bool web_request(struct cp_control *c, h2o_req_t *req, bool tcp, enum auth auth) {
  h2o_iovec_t p = req->path_normalized;
  if (is_path(p, "/") || is_path(p, "/index.html")) {
    index_request(c, req, tcp, auth);
    return true;
  }
  if (is_path(p, "/login")) {
    login_request(c, req, tcp);
    return true;
  }
  bool metrics = is_path(p, "/metrics"), posts = is_path(p, "/v1/posts"),
       report = is_path(p, "/v1/report"), feed = is_path(p, "/v1/feed.ics");
  if (metrics || posts || report || feed) {
    if (auth == AUTH_NONE)
      unauthorized(req);
    else if (!is_method(req, "GET"))
      method_not_allowed(req, "GET");
    else if (metrics)
      metrics_request(c, req);
    else if (posts)
      posts_request(c, req);
    else if (feed)
      feed_request(c, req);
    else
      report_request(c, req);
    return true;
  }
  /* The page's script, style and icon: nothing secret, served to anyone who can connect. */
  char name[64];
  if (p.len > 1 && p.len < sizeof name && !memchr(p.base + 1, '/', p.len - 1)) {
    memcpy(name, p.base + 1, p.len - 1);
    name[p.len - 1] = '\0';
    const struct cp__web_asset *a = strstr(name, ".html") ? NULL : asset(name);
    if (a) {
      if (!is_method(req, "GET"))
        method_not_allowed(req, "GET");
      else
        send_asset(req, 200, a);
      return true;
    }
  }
  return false;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  struct handler *h = (struct handler *)self;
  struct cp_control *c = h->c;
  enum auth auth = h->tcp ? authorize(c, req) : AUTH_TOKEN;
  if (c->cfg && web_request(c, req, h->tcp, auth))
    return 0;
  /* The session cookie only reads: a page of another site cannot pause or skip anything. */
  if (auth == AUTH_NONE || (auth == AUTH_SESSION && !is_method(req, "GET"))) {
    unauthorized(req);
    return 0;
  }
  daemon_request(c, req);
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Connections and shutdown                                                                  */

/* Stopping: (1) the listeners and every connection are closed (h2o lets go of a connection when
 * it calls h2o_socket_close, before the handle's close callback); (2) once h2o uses no
 * connection, its context is disposed, which closes its own handles, and the barrier starts;
 * (3) done runs when the listeners, the connections and the barrier (two close phases after
 * h2o's handles) have all run their close callbacks. With no connection busy writing, steps 1
 * and 2 happen inside cp_control_stop, so every handle of ours is closing when it returns. */

static void on_barrier_closed(uv_handle_t *h);

static void maybe_done(struct cp_control *c) {
  if (c->listening || c->tcp_open || c->n_conns || c->n_jobs || c->barrier_phase < 2)
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
  if (!c->stopping || c->disposed || c->n_jobs)
    return;
  for (struct conn *k = c->conns; k; k = k->next)
    if (!uv_is_closing(&k->u.handle))
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

static void accept_conn(struct cp_control *c, uv_stream_t *server, bool tcp) {
  if (c->stopping)
    return;
  struct conn *k = calloc(1, sizeof *k);
  if (!k)
    return; /* the client waits in the backlog and is accepted on the next connection */
  k->c = c;
  if (tcp)
    uv_tcp_init(c->loop, &k->u.tcp);
  else
    uv_pipe_init(c->loop, &k->u.pipe, 0);
  if (uv_accept(server, &k->u.stream) < 0 || c->n_conns >= MAX_CONNS) {
    uv_close(&k->u.handle, free_handle);
    return;
  }
  k->next = c->conns;
  if (c->conns)
    c->conns->prev = k;
  c->conns = k;
  c->n_conns++;
  h2o_socket_t *sock = h2o_uv_socket_create(&k->u.stream, on_conn_closed);
  h2o_accept(tcp ? &c->tcp_accept_ctx : &c->accept_ctx, sock);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status >= 0)
    accept_conn(CONTAINER(server, struct cp_control, listener), server, false);
}

static void on_tcp_connection(uv_stream_t *server, int status) {
  if (status >= 0)
    accept_conn(CONTAINER(server, struct cp_control, tcp), server, true);
}

static void on_listener_closed(uv_handle_t *h) {
  struct cp_control *c = CONTAINER(h, struct cp_control, listener);
  c->listening = false;
  maybe_done(c);
}

static void on_tcp_closed(uv_handle_t *h) {
  struct cp_control *c = CONTAINER(h, struct cp_control, tcp);
  c->tcp_open = false;
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
  if (c->tcp_open && !uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
  /* Connections waiting for a request sit in the request timeout: expiring it now makes h2o
   * close them at once. The others are writing an answer; shutting the socket down makes their
   * write or their next read fail, and h2o closes them through its own error path. */
  h2o_timeout_run(c->loop, &c->ctx.http1.req_timeout, UINT64_MAX);
  for (struct conn *k = c->conns; k; k = k->next) {
    uv_os_fd_t fd;
    if (!uv_is_closing(&k->u.handle) && uv_fileno(&k->u.handle, &fd) == 0)
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

static h2o_hostconf_t *add_host(struct cp_control *c, const char *name, bool tcp) {
  h2o_hostconf_t *host =
      h2o_config_register_host(&c->config, h2o_iovec_init(name, strlen(name)), 65535);
  h2o_pathconf_t *pathconf = h2o_config_register_path(host, "/", 0);
  struct handler *h = (struct handler *)h2o_create_handler(pathconf, sizeof *h);
  h->super.on_req = on_req;
  h->c = c;
  h->tcp = tcp;
  return host;
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
  c->unix_hosts[0] = add_host(c, "unix", false);
  c->tcp_hosts[0] = add_host(c, "tcp", true);
  h2o_context_init(&c->ctx, loop, &c->config);
  c->accept_ctx.ctx = &c->ctx;
  c->accept_ctx.hosts = c->unix_hosts;
  c->tcp_accept_ctx.ctx = &c->ctx;
  c->tcp_accept_ctx.hosts = c->tcp_hosts;
  *out = c;
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Configuration: [control]                                                                  */

static const char *section_get(const struct cp_connector_conf *conf, const char *key, int *line) {
  const struct cp_section *s = conf->data;
  const char *v = NULL;
  for (size_t i = 0; i < s->n_kv; i++)
    if (!strcmp(s->kv[i].key, key)) {
      v = s->kv[i].value;
      if (line)
        *line = s->kv[i].line;
    }
  return v;
}

static const char *section_key_at(const struct cp_connector_conf *conf, size_t i) {
  const struct cp_section *s = conf->data;
  return i < s->n_kv ? s->kv[i].key : NULL;
}

/* Splits "HOST:PORT" / "[V6]:PORT" and accepts loopback hosts only. Returns 0 and a new host
 * (numeric) in *host, or -1. */
static int parse_listen(const char *v, char **host, int *port) {
  const char *colon;
  char h[64];
  if (v[0] == '[') {
    const char *close = strchr(v, ']');
    if (!close || close[1] != ':' || (size_t)(close - v - 1) >= sizeof h)
      return -1;
    memcpy(h, v + 1, (size_t)(close - v - 1));
    h[close - v - 1] = '\0';
    colon = close + 1;
  } else {
    colon = strrchr(v, ':');
    if (!colon || (size_t)(colon - v) >= sizeof h)
      return -1;
    memcpy(h, v, (size_t)(colon - v));
    h[colon - v] = '\0';
  }
  char *end;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (errno || end == colon + 1 || *end || p < 0 || p > 65535 || !isdigit((unsigned char)colon[1]))
    return -1;
  if (!strcmp(h, "localhost"))
    snprintf(h, sizeof h, "127.0.0.1");
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, h, &a4) == 1) {
    if ((ntohl(a4.s_addr) >> 24) != 127)
      return -1;
  } else if (inet_pton(AF_INET6, h, &a6) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&a6))
      return -1;
  } else {
    return -1;
  }
  if (!(*host = strdup(h)))
    return -1;
  *port = (int)p;
  return 0;
}

#define CONF_FAIL(...)                                                                             \
  do {                                                                                             \
    snprintf(err, errlen, __VA_ARGS__);                                                            \
    cp_control_conf_free(cc);                                                                      \
    return CP_ECONFIG;                                                                             \
  } while (0)

int cp_control_conf_read(const struct cp_config *cfg, struct cp_control_conf **out, char *err,
                         size_t errlen) {
  *out = NULL;
  if (errlen)
    err[0] = '\0';
  struct cp_control_conf *cc = calloc(1, sizeof *cc);
  if (!cc || !(cc->file = strdup(cfg->path ? cfg->path : "(built-in defaults)"))) {
    free(cc);
    return CP_ENOMEM;
  }
  cc->cfg = cfg;
  const struct cp_section *s = NULL;
  for (size_t i = 0; i < cfg->n_sections; i++) {
    const struct cp_section *x = &cfg->sections[i];
    if (strcmp(x->kind, "control"))
      continue;
    if (*x->name)
      CONF_FAIL("%s:%d: [control %s]: the section takes no name; write [control]", cc->file,
                x->line, x->name);
    if (s)
      CONF_FAIL("%s:%d: a second [control] section (the first is on line %d); keep one", cc->file,
                x->line, s->line);
    s = x;
  }
  if (!s) {
    *out = cc;
    return 0;
  }
  static const char *const known[] = {"listen", "token_file", "token_env", NULL};
  for (size_t i = 0; i < s->n_kv; i++) {
    bool found = false;
    for (size_t j = 0; known[j] && !found; j++)
      found = !strcmp(s->kv[i].key, known[j]);
    if (!found)
      CONF_FAIL("%s:%d: [control] unknown key '%s' (known: listen, token_file, token_env)",
                cc->file, s->kv[i].line, s->kv[i].key);
  }
  struct cp_connector_conf conf = {.type = "control",
                                   .name = "control",
                                   .file = cc->file,
                                   .line = s->line,
                                   .get = section_get,
                                   .key_at = section_key_at,
                                   .data = s};
  int line = s->line, lf = s->line, le = s->line;
  const char *listen = section_get(&conf, "listen", &line);
  if (listen && parse_listen(listen, &cc->listen_host, &cc->listen_port) < 0)
    CONF_FAIL("%s:%d: [control] listen = %s: expected a loopback address and port such as "
              "127.0.0.1:8787, [::1]:8787 or localhost:8787 (the control API is never exposed "
              "beyond this machine: reach it from elsewhere through an SSH tunnel or a reverse "
              "proxy with TLS)",
              cc->file, line, listen);
  cc->line = line;
  const char *tf = section_get(&conf, "token_file", &lf);
  const char *te = section_get(&conf, "token_env", &le);
  if (tf && te)
    CONF_FAIL("%s:%d: [control] sets both token_file and token_env: keep one", cc->file,
              lf > le ? lf : le);
  char *token = NULL;
  int rc = cp_connector_secret_read(&conf, "token", &token, err, errlen);
  if (rc == CP_ENOTFOUND) {
    if (listen)
      CONF_FAIL("%s:%d: [control] listen needs a token: set token_file (a file of mode 0600 "
                "holding a random token, e.g. from `openssl rand -hex 32`) or token_env",
                cc->file, line);
  } else if (rc < 0) {
    cp_control_conf_free(cc);
    return rc;
  } else {
    cc->token = token;
    size_t n = strlen(token);
    bool printable = true;
    for (size_t i = 0; i < n; i++)
      printable = printable && token[i] > 0x20 && token[i] < 0x7f;
    if (n < MIN_TOKEN || !printable)
      CONF_FAIL("%s:%d: [control] %s: the token must be at least %d printable characters "
                "without spaces (for example from `openssl rand -hex 32`)",
                cc->file, tf ? lf : le, tf ? "token_file" : "token_env", MIN_TOKEN);
  }
  *out = cc;
  return 0;
}

void cp_control_conf_free(struct cp_control_conf *conf) {
  if (!conf)
    return;
  cp_connector_secret_free(conf->token);
  free(conf->listen_host);
  free(conf->file);
  free(conf);
}

int cp_control_configure(struct cp_control *c, const struct cp_control_conf *conf, char *where,
                         size_t wherelen, char *err, size_t errlen) {
  if (where && wherelen)
    where[0] = '\0';
  if (errlen)
    err[0] = '\0';
  if (!c || !conf || !conf->cfg || c->stopping) {
    snprintf(err, errlen, "the control server is not running");
    return CP_EINVAL;
  }
  if (conf->listen_host && (c->tcp_open || !conf->token)) {
    snprintf(err, errlen, "%s:%d: [control] listen: %s", conf->file, conf->line,
             c->tcp_open ? "already listening" : "no token");
    return CP_EINVAL;
  }
  c->cfg = conf->cfg;
  if (conf->token) {
    size_t n = strlen(conf->token);
    unsigned char mac[SHA256_DIGEST_LENGTH];
    unsigned int maclen = 0;
    SHA256((const unsigned char *)conf->token, n, c->token_digest);
    if (!HMAC(EVP_sha256(), conf->token, (int)n, (const unsigned char *)SESSION_LABEL,
              sizeof SESSION_LABEL - 1, mac, &maclen) ||
        maclen != sizeof mac) {
      snprintf(err, errlen, "cannot derive the dashboard session (HMAC-SHA256 failed)");
      return CP_EINVAL;
    }
    for (size_t i = 0; i < sizeof mac; i++)
      snprintf(c->session + 2 * i, 3, "%02x", mac[i]);
    OPENSSL_cleanse(mac, sizeof mac);
    c->has_token = true;
  }
  if (!conf->listen_host)
    return 0;
  struct sockaddr_storage ss;
  bool v6 = strchr(conf->listen_host, ':') != NULL;
  int rc = v6 ? uv_ip6_addr(conf->listen_host, conf->listen_port, (struct sockaddr_in6 *)&ss)
              : uv_ip4_addr(conf->listen_host, conf->listen_port, (struct sockaddr_in *)&ss);
  if (rc == 0 && (rc = uv_tcp_init(c->loop, &c->tcp)) == 0) {
    c->tcp_open = true;
    rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&ss, v6 ? UV_TCP_IPV6ONLY : 0);
    if (rc == 0)
      rc = uv_listen((uv_stream_t *)&c->tcp, 64, on_tcp_connection);
    if (rc < 0)
      uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
  }
  if (rc < 0) {
    snprintf(err, errlen, "%s:%d: [control] listen = %s%s%s:%d: %s", conf->file, conf->line,
             v6 ? "[" : "", conf->listen_host, v6 ? "]" : "", conf->listen_port, uv_strerror(rc));
    return rc;
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  int port = conf->listen_port;
  if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&bound, &len) == 0)
    port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                             : ((struct sockaddr_in *)&bound)->sin_port);
  if (where && wherelen)
    snprintf(where, wherelen, "%s%s%s:%d", v6 ? "[" : "", conf->listen_host, v6 ? "]" : "", port);
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
