/* The per-channel token bucket, on a simulated clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "calpost/err.h"
#include "ratelimit.h"

#define T0 1800000000000LL

static void parses_config_rates(void **state) {
  static const struct {
    const char *s;
    int64_t count, interval_ms;
  } ok[] = {
      {"30/5m", 30, 300000},       {"1/s", 1, 1000},    {"300/3h", 300, 10800000},
      {"1000/1d", 1000, 86400000}, {"5/10s", 5, 10000}, {"2/500ms", 2, 500},
      {" 30 / 5m ", 30, 300000},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    int64_t c = -1, iv = -1;
    assert_int_equal(cp_ratelimit_parse(ok[i].s, &c, &iv), 0);
    assert_int_equal(c, ok[i].count);
    assert_int_equal(iv, ok[i].interval_ms);
  }
  static const char *bad[] = {"",
                              "30",
                              "0/s",
                              "30/",
                              "30/5x",
                              "-1/s",
                              "30/0m",
                              "30/5m extra",
                              "a/s",
                              "30/m5",
                              "99999999999999999999/s",
                              "30/S"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int64_t c = -7, iv = -7;
    if (cp_ratelimit_parse(bad[i], &c, &iv) != CP_EPARSE)
      fail_msg("\"%s\" was accepted", bad[i]);
    assert_int_equal(c, -7); /* unchanged on error */
  }
}

static void refuses_bad_setups(void **state) {
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, -1, 1000, 1, T0), CP_EINVAL);
  assert_int_equal(cp_ratelimit_init(&rl, 5, 0, 1, T0), CP_EINVAL);
  assert_int_equal(cp_ratelimit_init(&rl, 5, INT64_MAX / 2, 3, T0), CP_EINVAL);
}

/* Drives the limiter for span_ms with a backlog of posts and returns the take times. A punctual
 * driver wakes exactly when told; otherwise it wakes early or late at random. */
static size_t drive(struct cp_ratelimit *rl, int64_t *times, size_t max, int64_t span_ms,
                    bool punctual) {
  size_t n = 0;
  uint64_t x = 88172645463325252ULL; /* xorshift: the same "random" clock every run */
  for (int64_t t = T0; t < T0 + span_ms && n < max;) {
    int64_t wait = cp_ratelimit_take(rl, t);
    if (wait == 0) {
      times[n++] = t;
      continue; /* try again at once: a backlog of posts */
    }
    assert_true(wait > 0);
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    /* Sometimes wake exactly when told, sometimes early, sometimes late. */
    int64_t step = punctual || x % 3 == 0 ? wait : 1 + (int64_t)(x % (uint64_t)(2 * wait));
    t += step;
  }
  return n;
}

static void never_exceeds_the_configured_rate(void **state) {
  int64_t count, interval;
  assert_int_equal(cp_ratelimit_parse("30/5m", &count, &interval), 0);
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, count, interval, 0, T0), 0);
  static int64_t times[20000];
  int64_t day = 86400000;
  size_t n = drive(&rl, times, 20000, day, false);
  assert_true(n > 1000);
  /* At most 30 in any window of 5 minutes: take i and take i + 30 are at least 5 min apart. */
  for (size_t i = 0; i + 30 < n; i++)
    if (times[i + 30] - times[i] < interval)
      fail_msg("31 posts within %lld ms", (long long)(times[i + 30] - times[i]));
  /* And not needlessly slow: woken on time, a backlog drains at exactly the rate. */
  assert_int_equal(cp_ratelimit_init(&rl, count, interval, 0, T0), 0);
  assert_int_equal(drive(&rl, times, 20000, day, true), 30 * 12 * 24);
}

static void burst_adds_exactly_burst_minus_one(void **state) {
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, 10, 60000, 5, T0), 0);
  /* The bucket starts full: 5 at once, not 6. */
  for (int i = 0; i < 5; i++)
    assert_int_equal(cp_ratelimit_take(&rl, T0), 0);
  assert_int_equal(cp_ratelimit_take(&rl, T0), 6000);
  assert_int_equal(cp_ratelimit_init(&rl, 10, 60000, 5, T0), 0);
  static int64_t times[5000];
  size_t n = drive(&rl, times, 5000, 6 * 3600000LL, false);
  assert_true(n > 1000);
  for (size_t i = 0; i + 14 < n; i++)
    assert_true(times[i + 14] - times[i] >= 60000); /* at most 5 - 1 + 10 per minute */
  assert_int_equal(cp_ratelimit_init(&rl, 10, 60000, 5, T0), 0);
  assert_int_equal(drive(&rl, times, 5000, 6 * 3600000LL, true), 5 + 10 * 60 * 6 - 1);
}

static void the_wait_is_exact_and_peeking_changes_nothing(void **state) {
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, 3, 1000, 1, T0), 0); /* one per 333.3 ms */
  assert_int_equal(cp_ratelimit_take(&rl, T0), 0);
  int64_t w = cp_ratelimit_wait_ms(&rl, T0);
  assert_int_equal(w, 334);
  assert_int_equal(cp_ratelimit_wait_ms(&rl, T0), 334);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + w - 1), 1);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + w), 0);
}

static void a_clock_going_back_mints_nothing(void **state) {
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, 1, 1000, 1, T0), 0);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 5000), 0);
  assert_true(cp_ratelimit_take(&rl, T0) > 0);
  assert_true(cp_ratelimit_take(&rl, T0 + 5500) > 0);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 6000), 0);
}

static void server_remaining_caps_the_bucket(void **state) {
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, 100, 1000, 100, T0), 0); /* generous locally */
  cp_ratelimit_hint_remaining(&rl, 2, T0 + 60000, T0);
  assert_int_equal(cp_ratelimit_take(&rl, T0), 0);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 1), 0);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 2), 60000 - 2);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 59999), 1);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 60000), 0); /* the window reset */
  /* A hint that has already expired is ignored. */
  cp_ratelimit_hint_remaining(&rl, 0, T0 + 60000, T0 + 60001);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 60002), 0);
}

static void the_bucket_still_applies_under_a_hint(void **state) {
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, 1, 10000, 1, T0), 0);
  cp_ratelimit_hint_remaining(&rl, 50, T0 + 60000, T0);
  assert_int_equal(cp_ratelimit_take(&rl, T0), 0);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 1), 9999);
}

static void blocks_only_grow(void **state) {
  struct cp_ratelimit rl;
  assert_int_equal(cp_ratelimit_init(&rl, 0, 0, 0, T0), 0); /* no local limit */
  for (int i = 0; i < 1000; i++)
    assert_int_equal(cp_ratelimit_take(&rl, T0), 0);
  cp_ratelimit_block_until(&rl, T0 + 30000);
  cp_ratelimit_block_until(&rl, T0 + 10000); /* earlier: ignored */
  assert_int_equal(cp_ratelimit_wait_ms(&rl, T0), 30000);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 29999), 1);
  assert_int_equal(cp_ratelimit_take(&rl, T0 + 30000), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(parses_config_rates),
      cmocka_unit_test(refuses_bad_setups),
      cmocka_unit_test(never_exceeds_the_configured_rate),
      cmocka_unit_test(burst_adds_exactly_burst_minus_one),
      cmocka_unit_test(the_wait_is_exact_and_peeking_changes_nothing),
      cmocka_unit_test(a_clock_going_back_mints_nothing),
      cmocka_unit_test(server_remaining_caps_the_bucket),
      cmocka_unit_test(the_bucket_still_applies_under_a_hint),
      cmocka_unit_test(blocks_only_grow),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
