/* HTTP client on the libuv loop: one libcurl multi handle per loop, driven by uv_poll_t per socket
 * and one uv_timer_t (the pattern of curl's docs/examples/multi-uv.c). Nothing here blocks the
 * loop: name resolution runs in libcurl's resolver thread.
 *
 * Every request has a connect timeout, a total timeout and a response size cap; TLS verification
 * stays on; only http and https are spoken; redirects are off unless asked for, and then limited
 * to https. Requests other than GET and HEAD use a fresh connection, so libcurl never resends
 * them on its own (it does so when a reused connection dies before an answer: a duplicate post).
 * The request and response types are the connector ABI's (calpost/connector.h). */
#ifndef CALPOST_HTTP_H
#define CALPOST_HTTP_H

#include <uv.h>

#include "calpost/connector.h"

#define CP_HTTP_CONNECT_TIMEOUT_MS 10000
#define CP_HTTP_TIMEOUT_MS 30000
#define CP_HTTP_MAX_RESPONSE (1024 * 1024)
#define CP_HTTP_MAX_REDIRECTS 5

struct cp_http;

/* Creates the HTTP client of loop in *out. Returns 0, or CP_ENOMEM / a libuv error as -errno,
 * changing nothing. Close it with cp_http_close before closing the loop. */
int cp_http_init(uv_loop_t *loop, struct cp_http **out);

/* Starts req (copied: nothing is borrowed after the return). Returns 0 and calls cb exactly once
 * later, from the loop, never from inside this call; or returns CP_EINVAL (bad method, URL or
 * closing client) / CP_ENOMEM and never calls cb. */
int cp_http_request(struct cp_http *h, const struct cp_http_req *req, cp_http_cb cb, void *data);

/* Closes the client asynchronously: requests in flight complete with err -ECANCELED (from the
 * loop, after this call returns), then every handle closes, then cb(data) runs and h is gone.
 * cb may be NULL. May be called from a request's callback. */
void cp_http_close(struct cp_http *h, void (*cb)(void *data), void *data);

/* The value of the first header called name (case-insensitive) in resp, or NULL. */
const char *cp_http_header(const struct cp_http_resp *resp, const char *name);

#endif
