#include "backoff.h"

#include <stdlib.h>

#include "calpost/err.h"

static int valid(const struct cp_backoff *b) {
  return b && b->base_ms > 0 && b->cap_ms >= b->base_ms && b->max_attempts >= 0;
}

int64_t cp_backoff_ceiling_ms(const struct cp_backoff *b, int attempts) {
  if (!valid(b) || attempts < 1)
    return CP_EINVAL;
  int64_t ceiling = b->base_ms;
  /* Doubling stops at the cap, so the product never overflows. */
  for (int i = 1; i < attempts && ceiling < b->cap_ms; i++)
    ceiling = ceiling > b->cap_ms / 2 ? b->cap_ms : ceiling * 2;
  return ceiling < b->cap_ms ? ceiling : b->cap_ms;
}

static uint64_t default_rand(void *ctx) {
  (void)ctx;
  return (uint64_t)arc4random() << 32 | arc4random();
}

int cp_backoff_next(const struct cp_backoff *b, int attempts, int64_t now_ms, int64_t due_ms,
                    int64_t not_before_ms, int64_t *retry_at_ms) {
  if (!valid(b) || attempts < 1 || now_ms < 0 || !retry_at_ms)
    return CP_EINVAL;
  if (b->max_attempts > 0 && attempts >= b->max_attempts)
    return CP_ELIMIT;
  int64_t ceiling = cp_backoff_ceiling_ms(b, attempts);
  uint64_t r = b->rand ? b->rand(b->rand_ctx) : default_rand(NULL);
  /* The modulo bias is below 2^-40 for any ceiling that fits in a day of milliseconds. */
  int64_t delay = (int64_t)(r % ((uint64_t)ceiling + 1));
  int64_t at = now_ms + delay;
  if (not_before_ms > at)
    at = not_before_ms;
  if (b->max_lateness_ms >= 0 && at - due_ms > b->max_lateness_ms)
    return CP_ELIMIT;
  *retry_at_ms = at;
  return 0;
}
