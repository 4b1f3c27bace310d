/* The control API: HTTP over a Unix socket (mode 0600) served on the daemon's libuv loop by
 * libh2o, and the client side used by `calpost status|pause|resume|retry|skip|confirm`.
 *
 * Endpoints (JSON bodies; every answer is a JSON object, errors {"error": "message"}):
 *   GET  /v1/status                      -> ops->status
 *   POST /v1/pause   {"channel": "x" | null (all), "until": "ISO 8601" | null}
 *   POST /v1/resume  {"channel": "x" | null (all)}
 *   POST /v1/posts/ID/retry
 *   POST /v1/posts/ID/skip
 *   POST /v1/confirm                     (accept a held plan change)
 * With a state database (cp_control_configure), also:
 *   GET  /metrics                        Prometheus text format (store + ops->stats)
 *   GET  /v1/posts?state=&channel=&from=&to=&limit=   posts from the store
 *   GET  /v1/report?since=30d            per channel: published, on-time share, lateness
 *   GET  /  (and /dashboard.css, /dashboard.js, POST /login)   the dashboard (web/)
 * and, with `[control] listen = 127.0.0.1:PORT`, the same over loopback TCP, where every request
 * needs `Authorization: Bearer TOKEN` (GET requests also accept the dashboard's session cookie).
 */
#ifndef CALPOST_CONTROL_H
#define CALPOST_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"

struct cp_control;

/* What the daemon offers the control API. Each call returns an HTTP status (200, 400, 404, 409,
 * 500) and sets *out to a new JSON object (the answer body; {"error": "..."} on failure). */
struct cp_control_ops {
  int (*status)(void *d, json_t **out);
  int (*pause)(void *d, const char *channel /* NULL: all */, int64_t until_ms /* 0: until
                                                                                   resumed */
               ,
               json_t **out);
  int (*resume)(void *d, const char *channel /* NULL: all */, json_t **out);
  int (*retry)(void *d, const char *post_id, json_t **out);
  int (*skip)(void *d, const char *post_id, json_t **out);
  int (*confirm)(void *d, json_t **out);
  /* Optional (NULL: left out of /metrics). The daemon's own counters: sets *out to
   * {"plan_refreshes": N, "plan_refresh_failures": N, "plan_held": bool,
   *  "channels": [{"name", "type", "rate_limit_waits": N}]} and returns 200. */
  int (*stats)(void *d, json_t **out);
  /* Optional: the title of post_id in the current plan, or NULL. Borrowed until the loop runs
   * again. */
  const char *(*title)(void *d, const char *post_id);
};

/* The [control] section: `listen` (a loopback address and port: 127.0.0.1:8787, [::1]:8787,
 * localhost:8787; port 0 picks a free one), `token_file` / `token_env` (required with listen),
 * and the state database that /metrics, /v1/posts, /v1/report and the dashboard read. */
struct cp_control_conf {
  const struct cp_config *cfg; /* borrowed: the state database and channels; must outlive the
                                  server */
  char *listen_host;           /* NULL: no TCP listener */
  int listen_port;
  char *token; /* secret; wiped by cp_control_conf_free */
  char *file;  /* the configuration file and the line of `listen`, for messages */
  int line;
};

/* Reads and checks [control] of cfg (unknown keys, a non-loopback address, listen without a
 * token, an unreadable token file or a group/world-readable one) and the token itself. Returns
 * 0 and a new conf in *out, or CP_ECONFIG / CP_ENOMEM with a message naming the file, line and
 * key in err. */
int cp_control_conf_read(const struct cp_config *cfg, struct cp_control_conf **out, char *err,
                         size_t errlen);
/* Wipes the token and frees conf. NULL is a no-op. */
void cp_control_conf_free(struct cp_control_conf *conf);

/* Gives a running server its state database (the endpoints above: conf->cfg must outlive the
 * server) and, if conf->listen_host is set, starts listening on loopback TCP; where (if not
 * NULL) receives "127.0.0.1:8787" with the port actually bound. The token is not kept (only its
 * digest). Returns 0, or a negative CP_E* / -errno with a message in err
 * (the Unix socket keeps working; nothing else is left behind). */
int cp_control_configure(struct cp_control *c, const struct cp_control_conf *conf, char *where,
                         size_t wherelen, char *err, size_t errlen);

/* Starts serving on a Unix socket at path (replacing a stale socket file; mode 0600 so that
 * only the daemon's user can connect). Returns 0 and the server in *out, or a negative CP_E* /
 * -errno (nothing is left behind). */
int cp_control_start(uv_loop_t *loop, const char *path, const struct cp_control_ops *ops, void *d,
                     struct cp_control **out);

/* Stops accepting, closes all handles and removes the socket file; done(arg) runs once every
 * handle is closed. c may be NULL (done runs at once). */
void cp_control_stop(struct cp_control *c, void (*done)(void *arg), void *arg);

/* Client: sends one request to the daemon's socket. body may be NULL. On success returns the
 * HTTP status and sets *out to the parsed JSON answer; on failure returns a negative CP_E* /
 * -errno (for example -ECONNREFUSED or -ENOENT when no daemon runs) and writes a message to
 * err. */
int cp_control_call(const char *path, const char *method, const char *url_path, const json_t *body,
                    json_t **out, char *err, size_t errlen);

#endif
