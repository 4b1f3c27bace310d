/* Rate-limit hints from HTTP response headers: Retry-After (RFC 9110), X-RateLimit-* (Mastodon,
 * Discord, GitHub style), RateLimit-* (IETF draft; Bluesky), x-rate-limit-* and the 24-hour
 * x-user-limit-24hour-* / x-app-limit-24hour-* families (X). Pure: "now" is an argument, in Unix
 * milliseconds, because these headers carry wall-clock times.
 *
 * Feed every header of one response, in any order, then read the public fields. */
#ifndef CALPOST_HINTS_H
#define CALPOST_HINTS_H

#include <stddef.h>
#include <stdint.h>

/* Header families tracked separately, because one can be exhausted while another has room. */
#define CP__HINTS_WINDOWS 3

struct cp_hints {
  int64_t retry_at_ms; /* send nothing before this (Unix ms); 0 = no hint. The later of
                          Retry-After and the reset of any window with nothing remaining. */
  int64_t remaining;   /* requests left in the most constrained window; -1 = unknown */
  int64_t reset_ms;    /* when that window resets (Unix ms); 0 = unknown */
  char scope[16];      /* Discord's X-RateLimit-Scope ("user", "global", "shared"), or "" */
  /* private: */
  int64_t retry_after_ms;
  struct {
    int64_t remaining; /* -1 = not seen */
    int64_t reset_ms;  /* 0 = not seen */
  } win[CP__HINTS_WINDOWS];
};

/* Empties h: no hints. */
void cp_hints_init(struct cp_hints *h);

/* Takes one header (name case-insensitive, value without the line end). Headers that carry no
 * rate-limit hint are ignored and return 0. Returns CP_EPARSE if a rate-limit header has a value
 * that cannot be read; h is then unchanged, and the caller may log it and go on. */
int cp_hints_header(struct cp_hints *h, const char *name, const char *value, int64_t now_ms);

/* Takes one raw header line as libcurl's CURLOPT_HEADERFUNCTION delivers it ("Name: value\r\n",
 * not NUL-terminated). A status line ("HTTP/1.1 429 ...") starts a new response and empties h,
 * so hints of a redirect or a 100 Continue do not leak into the final response. Other lines
 * without a colon are ignored. Returns like cp_hints_header(). */
int cp_hints_line(struct cp_hints *h, const char *line, size_t len, int64_t now_ms);

/* Adds a "not before" time found elsewhere, such as a JSON body's retry_after. Only a later time
 * than the current retry_at_ms has an effect. */
void cp_hints_retry_at(struct cp_hints *h, int64_t at_ms);

#endif
