/* Retry delays: capped exponential backoff with full jitter, bounded by a number of attempts and
 * by how late a post may still go out. Pure: "now" is an argument and the random source can be
 * replaced, so tests are deterministic. */
#ifndef CALPOST_BACKOFF_H
#define CALPOST_BACKOFF_H

#include <stdint.h>

/* Returns a uniformly distributed 64-bit value. */
typedef uint64_t (*cp_backoff_rand_cb)(void *ctx);

struct cp_backoff {
  int64_t base_ms;         /* ceiling of the first retry's delay; > 0 */
  int64_t cap_ms;          /* no delay is longer than this; >= base_ms */
  int max_attempts;        /* attempts in total, the first one included; 0 = no limit */
  int64_t max_lateness_ms; /* give up when a retry would be later than due + this; < 0 = no limit */
  cp_backoff_rand_cb rand; /* NULL: arc4random() */
  void *rand_ctx;
};

/* The upper bound of the delay after `attempts` failed attempts (>= 1):
 * min(cap, base * 2^(attempts - 1)), without overflow. Returns CP_EINVAL for a bad struct or
 * attempts < 1. */
int64_t cp_backoff_ceiling_ms(const struct cp_backoff *b, int attempts);

/* Decides when to retry after `attempts` attempts (>= 1) have failed. The delay is uniform in
 * [0, cp_backoff_ceiling_ms()] ("full jitter"); the retry time is now + delay, or not_before_ms
 * if that is later (a server's Retry-After or reset time; 0 = none).
 * Returns 0 and sets *retry_at_ms; CP_ELIMIT (give up) when attempts >= max_attempts or the
 * retry time is later than due_ms + max_lateness_ms; CP_EINVAL for bad arguments. On error
 * *retry_at_ms is unchanged. */
int cp_backoff_next(const struct cp_backoff *b, int attempts, int64_t now_ms, int64_t due_ms,
                    int64_t not_before_ms, int64_t *retry_at_ms);

#endif
