/* Media loading for connectors (host->media_load): a local file, or an https URL fetched with the
 * rules from the config: https only, public addresses only unless allowed, a size cap, and a
 * content type that is an image or a video and agrees with the bytes (libmagic). */
#ifndef CALPOST_MEDIA_H
#define CALPOST_MEDIA_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "calpost/connector.h"
#include "http.h"

#define CP_MEDIA_DEFAULT_MAX_SIZE (16u << 20)

struct cp_media_opts {
  size_t max_size;  /* 0: CP_MEDIA_DEFAULT_MAX_SIZE */
  bool allow_local; /* allow loopback/private addresses (and plain http to loopback): tests */
  long timeout_ms;  /* 0: 60 s */
};

/* Loads media m: reads a local path off the loop (libuv's thread pool) or fetches an https URL
 * with http. Returns 0 and calls cb exactly once later, never from inside this call; or a
 * negative CP_E* and never calls cb. */
int cp_media_load(uv_loop_t *loop, struct cp_http *http, const struct cp_media_opts *opts,
                  const struct cp_media *m, cp_media_cb cb, void *data);

/* The content type of bytes by their signature ("image/png"), or NULL if unknown. */
const char *cp_media_sniff(const unsigned char *data, size_t len);

#endif
