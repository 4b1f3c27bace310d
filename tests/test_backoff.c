/* Backoff: capped exponential delays with full jitter, and when to give up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backoff.h"
#include "calpost/err.h"

#define NOW 1800000000000LL
#define SEC 1000LL
#define MIN (60 * SEC)

/* A random source that returns what the test put in ctx. */
static uint64_t fixed(void *ctx) {
  return *(uint64_t *)ctx;
}

static uint64_t xorshift(void *ctx) {
  uint64_t *x = ctx;
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  return *x;
}

static void ceilings_double_up_to_the_cap(void **state) {
  struct cp_backoff b = {.base_ms = SEC, .cap_ms = MIN, .max_lateness_ms = -1};
  assert_int_equal(cp_backoff_ceiling_ms(&b, 1), SEC);
  assert_int_equal(cp_backoff_ceiling_ms(&b, 2), 2 * SEC);
  assert_int_equal(cp_backoff_ceiling_ms(&b, 3), 4 * SEC);
  assert_int_equal(cp_backoff_ceiling_ms(&b, 6), 32 * SEC);
  assert_int_equal(cp_backoff_ceiling_ms(&b, 7), MIN);
  assert_int_equal(cp_backoff_ceiling_ms(&b, 1000000), MIN); /* no overflow */
  assert_int_equal(cp_backoff_ceiling_ms(&b, 0), CP_EINVAL);
  struct cp_backoff bad = {.base_ms = MIN, .cap_ms = SEC};
  assert_int_equal(cp_backoff_ceiling_ms(&bad, 1), CP_EINVAL);
}

static void delays_cover_zero_to_the_ceiling(void **state) {
  uint64_t seed = 88172645463325252ULL;
  struct cp_backoff b = {.base_ms = SEC,
                         .cap_ms = 10 * MIN,
                         .max_lateness_ms = -1,
                         .rand = xorshift,
                         .rand_ctx = &seed};
  for (int attempts = 1; attempts <= 12; attempts++) {
    int64_t ceiling = cp_backoff_ceiling_ms(&b, attempts), lo = INT64_MAX, hi = -1;
    for (int i = 0; i < 5000; i++) {
      int64_t at = 0;
      assert_int_equal(cp_backoff_next(&b, attempts, NOW, NOW, 0, &at), 0);
      int64_t d = at - NOW;
      assert_true(d >= 0 && d <= ceiling);
      lo = d < lo ? d : lo;
      hi = d > hi ? d : hi;
    }
    /* Full jitter: the draws reach both ends, not just the upper half. */
    assert_true(lo <= ceiling / 20);
    assert_true(hi >= ceiling - ceiling / 20);
  }
  uint64_t top = 1000; /* 1000 % (1000 + 1): the ceiling itself is reachable */
  b.rand = fixed;
  b.rand_ctx = &top;
  int64_t at;
  assert_int_equal(cp_backoff_next(&b, 1, NOW, NOW, 0, &at), 0);
  assert_int_equal(at, NOW + SEC);
  /* The default source stays in bounds too. */
  b.rand = NULL;
  for (int i = 0; i < 1000; i++) {
    assert_int_equal(cp_backoff_next(&b, 3, NOW, NOW, 0, &at), 0);
    assert_true(at >= NOW && at <= NOW + 4 * SEC);
  }
}

static void gives_up_after_max_attempts(void **state) {
  uint64_t r = 0;
  struct cp_backoff b = {.base_ms = SEC,
                         .cap_ms = MIN,
                         .max_attempts = 3,
                         .max_lateness_ms = -1,
                         .rand = fixed,
                         .rand_ctx = &r};
  int64_t at = -1;
  assert_int_equal(cp_backoff_next(&b, 1, NOW, NOW, 0, &at), 0);
  assert_int_equal(cp_backoff_next(&b, 2, NOW, NOW, 0, &at), 0);
  at = -1;
  assert_int_equal(cp_backoff_next(&b, 3, NOW, NOW, 0, &at), CP_ELIMIT);
  assert_int_equal(at, -1);
}

static void gives_up_when_too_late(void **state) {
  uint64_t r;
  struct cp_backoff b = {.base_ms = MIN,
                         .cap_ms = 60 * MIN,
                         .max_lateness_ms = 60 * MIN,
                         .rand = fixed,
                         .rand_ctx = &r};
  int64_t due = NOW - 50 * MIN, at = -1;
  r = 20 * MIN; /* attempts 6: ceiling 32 min, delay 20 min: 70 min late */
  assert_int_equal(cp_backoff_next(&b, 6, NOW, due, 0, &at), CP_ELIMIT);
  assert_int_equal(at, -1);
  r = 5 * MIN; /* 55 min late: still fine */
  assert_int_equal(cp_backoff_next(&b, 6, NOW, due, 0, &at), 0);
  assert_int_equal(at, NOW + 5 * MIN);
  r = 10 * MIN; /* exactly at the limit is still allowed */
  assert_int_equal(cp_backoff_next(&b, 6, NOW, due, 0, &at), 0);
  assert_int_equal(at, due + 60 * MIN);
  b.max_lateness_ms = -1; /* no limit */
  r = 20 * MIN;
  assert_int_equal(cp_backoff_next(&b, 6, NOW, due, 0, &at), 0);
}

static void server_hints_push_the_retry_later(void **state) {
  uint64_t r = 0;
  struct cp_backoff b = {
      .base_ms = SEC, .cap_ms = MIN, .max_lateness_ms = 60 * MIN, .rand = fixed, .rand_ctx = &r};
  int64_t at;
  assert_int_equal(cp_backoff_next(&b, 1, NOW, NOW, NOW + 30 * MIN, &at), 0);
  assert_int_equal(at, NOW + 30 * MIN);
  assert_int_equal(cp_backoff_next(&b, 1, NOW, NOW, NOW - MIN, &at), 0); /* a past hint */
  assert_int_equal(at, NOW);
  /* A reset after the lateness limit: give up now instead of waiting for nothing. */
  assert_int_equal(cp_backoff_next(&b, 1, NOW, NOW, NOW + 61 * MIN, &at), CP_ELIMIT);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(ceilings_double_up_to_the_cap),
      cmocka_unit_test(delays_cover_zero_to_the_ceiling),
      cmocka_unit_test(gives_up_after_max_attempts),
      cmocka_unit_test(gives_up_when_too_late),
      cmocka_unit_test(server_hints_push_the_retry_later),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
