#include "ratelimit.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "calpost/err.h"

static const struct {
  const char *name;
  int64_t ms;
} units[] = {{"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 86400 * 1000}};

static int parse_uint(const char **p, int64_t *out) {
  if (!isdigit((unsigned char)**p))
    return CP_EPARSE;
  errno = 0;
  char *end;
  long long v = strtoll(*p, &end, 10);
  if (errno == ERANGE)
    return CP_EPARSE;
  *p = end;
  *out = v;
  return 0;
}

int cp_ratelimit_parse(const char *s, int64_t *count, int64_t *interval_ms) {
  if (!s || !count || !interval_ms)
    return CP_EINVAL;
  const char *p = s;
  int64_t n, mult = 1;
  while (isspace((unsigned char)*p))
    p++;
  if (parse_uint(&p, &n) < 0 || n <= 0)
    return CP_EPARSE;
  while (isspace((unsigned char)*p))
    p++;
  if (*p++ != '/')
    return CP_EPARSE;
  while (isspace((unsigned char)*p))
    p++;
  if (isdigit((unsigned char)*p) && (parse_uint(&p, &mult) < 0 || mult <= 0))
    return CP_EPARSE;
  size_t len = 0;
  while (isalpha((unsigned char)p[len]))
    len++;
  const char *rest = p + len;
  while (isspace((unsigned char)*rest))
    rest++;
  if (*rest)
    return CP_EPARSE;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strlen(units[i].name) == len && !strncmp(p, units[i].name, len)) {
      if (mult > INT64_MAX / units[i].ms)
        return CP_EPARSE;
      *count = n;
      *interval_ms = mult * units[i].ms;
      return 0;
    }
  }
  return CP_EPARSE;
}

int cp_ratelimit_init(struct cp_ratelimit *rl, int64_t count, int64_t interval_ms, int64_t burst,
                      int64_t now_ms) {
  if (!rl || count < 0 || (count > 0 && interval_ms <= 0))
    return CP_EINVAL;
  if (burst <= 0)
    burst = 1;
  if (count > 0 && burst > INT64_MAX / interval_ms)
    return CP_EINVAL;
  *rl = (struct cp_ratelimit){.count = count,
                              .interval_ms = count > 0 ? interval_ms : 0,
                              .burst = burst,
                              .level = count > 0 ? burst * interval_ms : 0,
                              .last_ms = now_ms,
                              .hint_remaining = -1};
  return 0;
}

/* The bucket level at now_ms. Units: one token is interval_ms, and each millisecond adds
 * `count`, so refills need no division and never drift. */
static int64_t level_at(const struct cp_ratelimit *rl, int64_t now_ms) {
  int64_t cap = rl->burst * rl->interval_ms;
  int64_t elapsed = now_ms > rl->last_ms ? now_ms - rl->last_ms : 0; /* a clock going back */
  if (elapsed >= (cap - rl->level) / rl->count + 1)
    return cap;
  return rl->level + elapsed * rl->count;
}

int64_t cp_ratelimit_wait_ms(const struct cp_ratelimit *rl, int64_t now_ms) {
  int64_t wait = 0;
  if (rl->blocked_until_ms > now_ms)
    wait = rl->blocked_until_ms - now_ms;
  if (rl->hint_remaining == 0 && rl->hint_reset_ms > now_ms && rl->hint_reset_ms - now_ms > wait)
    wait = rl->hint_reset_ms - now_ms;
  if (rl->count > 0) {
    int64_t missing = rl->interval_ms - level_at(rl, now_ms);
    if (missing > 0) {
      int64_t bucket = (missing + rl->count - 1) / rl->count;
      if (bucket > wait)
        wait = bucket;
    }
  }
  return wait;
}

int64_t cp_ratelimit_take(struct cp_ratelimit *rl, int64_t now_ms) {
  int64_t wait = cp_ratelimit_wait_ms(rl, now_ms);
  if (wait > 0)
    return wait;
  if (rl->count > 0) {
    rl->level = level_at(rl, now_ms) - rl->interval_ms;
    if (now_ms > rl->last_ms)
      rl->last_ms = now_ms;
  }
  if (rl->hint_remaining > 0 && rl->hint_reset_ms > now_ms)
    rl->hint_remaining--;
  return 0;
}

void cp_ratelimit_hint_remaining(struct cp_ratelimit *rl, int64_t remaining, int64_t reset_ms,
                                 int64_t now_ms) {
  if (remaining < 0 || reset_ms <= now_ms)
    return;
  rl->hint_remaining = remaining;
  rl->hint_reset_ms = reset_ms;
}

void cp_ratelimit_block_until(struct cp_ratelimit *rl, int64_t until_ms) {
  if (until_ms > rl->blocked_until_ms)
    rl->blocked_until_ms = until_ms;
}
