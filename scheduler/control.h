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
 */
#ifndef CALPOST_CONTROL_H
#define CALPOST_CONTROL_H

#include <stdint.h>

#include <jansson.h>
#include <uv.h>

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
};

struct cp_control;

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
