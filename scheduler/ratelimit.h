/* A token bucket per channel, plus what the server said about its own limits. Pure: "now" is an
 * argument (milliseconds on any monotonic or wall clock, as long as it is always the same one).
 *
 * The bucket holds at most `burst` tokens and gains `count` tokens per `interval_ms`; a post
 * takes one. It starts full. Over any window of length W, the number of takes is at most
 * burst + count * W / interval_ms, and with burst = 1 (the default) at most `count` in any
 * window of `interval_ms`, which is how platforms state their limits ("300 per 3 hours").
 *
 * Server hints narrow the bucket, never widen it: "remaining N until R" allows at most N takes
 * before R, and "blocked until T" allows none before T. */
#ifndef CALPOST_RATELIMIT_H
#define CALPOST_RATELIMIT_H

#include <stdint.h>

struct cp_ratelimit {
  int64_t count; /* tokens gained per interval; 0 = no local limit (hints still apply) */
  int64_t interval_ms;
  int64_t burst; /* bucket capacity in tokens */
  /* private: */
  int64_t level;          /* tokens times interval_ms, so that refills are exact integers */
  int64_t last_ms;        /* time of the last refill */
  int64_t hint_remaining; /* -1: no hint */
  int64_t hint_reset_ms;  /* the hint holds until then */
  int64_t blocked_until_ms;
};

/* Parses a rate such as "30/5m", "1/s", "300/3h" or "1000/1d" (units ms, s, m, h, d; the
 * number before the unit defaults to 1). Returns 0 and sets *count and *interval_ms, or
 * CP_EPARSE and changes nothing. */
int cp_ratelimit_parse(const char *s, int64_t *count, int64_t *interval_ms);

/* Sets up rl with a full bucket. burst <= 0 means 1. Returns CP_EINVAL (rl unchanged) if count
 * is negative, or count > 0 with interval_ms <= 0, or the bucket would overflow. */
int cp_ratelimit_init(struct cp_ratelimit *rl, int64_t count, int64_t interval_ms, int64_t burst,
                      int64_t now_ms);

/* Milliseconds until a take would succeed: 0 if one would succeed now. Changes nothing. */
int64_t cp_ratelimit_wait_ms(const struct cp_ratelimit *rl, int64_t now_ms);

/* Takes one token: returns 0 if taken, else the milliseconds to wait (> 0) and takes nothing. */
int64_t cp_ratelimit_take(struct cp_ratelimit *rl, int64_t now_ms);

/* The server says `remaining` requests are left until reset_ms (absolute). Replaces an earlier
 * remaining-hint, since the server's latest count is the freshest. Ignored if reset_ms <= now_ms
 * or remaining < 0. */
void cp_ratelimit_hint_remaining(struct cp_ratelimit *rl, int64_t remaining, int64_t reset_ms,
                                 int64_t now_ms);

/* The server says no request before until_ms (absolute): Retry-After, a 429's reset time.
 * Blocks only get longer: an earlier until_ms than the current block is ignored. */
void cp_ratelimit_block_until(struct cp_ratelimit *rl, int64_t until_ms);

#endif
