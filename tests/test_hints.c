/* Rate-limit hints: one vector per header form the platforms send. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "calpost/err.h"
#include "hints.h"

#define NOW 1795350000000LL /* 2026-11-22T12:20:00Z */

static struct cp_hints feed(const char *const *headers, int64_t now) {
  struct cp_hints h;
  cp_hints_init(&h);
  for (size_t i = 0; headers[i]; i += 2) {
    int rc = cp_hints_header(&h, headers[i], headers[i + 1], now);
    if (rc != 0)
      fail_msg("%s: %s: %s", headers[i], headers[i + 1], cp_err_name(rc));
  }
  return h;
}

static void empty(void **state) {
  struct cp_hints h;
  cp_hints_init(&h);
  assert_int_equal(h.retry_at_ms, 0);
  assert_int_equal(h.remaining, -1);
  assert_int_equal(h.reset_ms, 0);
  assert_string_equal(h.scope, "");
  assert_int_equal(cp_hints_header(&h, "Content-Type", "text/html", NOW), 0);
  assert_int_equal(h.retry_at_ms, 0);
}

static void retry_after_delta_and_date(void **state) {
  const char *delta[] = {"Retry-After", "120", NULL};
  assert_int_equal(feed(delta, NOW).retry_at_ms, NOW + 120000);
  const char *frac[] = {"retry-after", " 1.5 ", NULL};
  assert_int_equal(feed(frac, NOW).retry_at_ms, NOW + 1500);
  /* RFC 9110's example IMF-fixdate, and the obsolete forms it still requires readers to take. */
  const char *dates[] = {"Wed, 21 Oct 2015 07:28:00 GMT", "Wednesday, 21-Oct-15 07:28:00 GMT",
                         "Wed Oct 21 07:28:00 2015"};
  for (int i = 0; i < 3; i++) {
    const char *date[] = {"RETRY-AFTER", dates[i], NULL};
    assert_int_equal(feed(date, NOW).retry_at_ms, 1445412480000LL);
  }
  struct cp_hints h;
  cp_hints_init(&h);
  assert_int_equal(cp_hints_header(&h, "Retry-After", "soon", NOW), CP_EPARSE);
  assert_int_equal(cp_hints_header(&h, "Retry-After", "-5", NOW), CP_EPARSE);
  /* A date in a year no clock reaches (found by fuzzing: the ms product overflowed). */
  assert_int_equal(cp_hints_header(&h, "Retry-After", "Sun Nov  6 08:49:37 1700086400", NOW),
                   CP_EPARSE);
  assert_int_equal(h.retry_at_ms, 0);
}

static void mastodon_iso8601_reset(void **state) {
  const char *h429[] = {
      "X-RateLimit-Limit",           "300", "X-RateLimit-Remaining", "0", "X-RateLimit-Reset",
      "2026-11-22T12:35:00.123456Z", NULL};
  struct cp_hints h = feed(h429, NOW);
  assert_int_equal(h.remaining, 0);
  assert_int_equal(h.reset_ms, 1795350900000LL + 124); /* microseconds round up */
  assert_int_equal(h.retry_at_ms, h.reset_ms);
  const char *ok[] = {"X-RateLimit-Remaining", "299", "X-RateLimit-Reset",
                      "2026-11-22T13:35:00+01:00", NULL};
  h = feed(ok, NOW);
  assert_int_equal(h.remaining, 299);
  assert_int_equal(h.reset_ms, 1795350900000LL);
  assert_int_equal(h.retry_at_ms, 0); /* room left: no reason to wait */
  struct cp_hints bad;
  cp_hints_init(&bad);
  assert_int_equal(cp_hints_header(&bad, "X-RateLimit-Reset", "2026-11-22T12:35:00", NOW),
                   CP_EPARSE); /* no offset: ambiguous */
  assert_int_equal(cp_hints_header(&bad, "X-RateLimit-Reset", "2026-13-45T12:35:00Z", NOW),
                   CP_EPARSE);
}

static void ietf_delta_and_bluesky_epoch(void **state) {
  const char *ietf[] = {"RateLimit-Remaining", "0", "RateLimit-Reset", "30", NULL};
  struct cp_hints h = feed(ietf, NOW);
  assert_int_equal(h.reset_ms, NOW + 30000);
  assert_int_equal(h.retry_at_ms, NOW + 30000);
  const char *bsky[] = {"ratelimit-limit",
                        "3000",
                        "ratelimit-remaining",
                        "0",
                        "ratelimit-reset",
                        "1795350300",
                        "ratelimit-policy",
                        "3000;w=300",
                        NULL};
  h = feed(bsky, NOW);
  assert_int_equal(h.reset_ms, 1795350300000LL);
  assert_int_equal(h.retry_at_ms, 1795350300000LL);
  const char *ms[] = {"X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "1795350300250", NULL};
  assert_int_equal(feed(ms, NOW).reset_ms, 1795350300250LL);
}

static void discord(void **state) {
  const char *d[] = {"X-RateLimit-Limit",
                     "5",
                     "X-RateLimit-Remaining",
                     "0",
                     "X-RateLimit-Reset",
                     "1795350001.5",
                     "X-RateLimit-Reset-After",
                     "1.25",
                     "X-RateLimit-Bucket",
                     "abcd1234",
                     "X-RateLimit-Scope",
                     "shared",
                     NULL};
  struct cp_hints h = feed(d, NOW);
  assert_int_equal(h.remaining, 0);
  assert_int_equal(h.reset_ms, NOW + 1500); /* the later of the two, never the earlier */
  assert_int_equal(h.retry_at_ms, NOW + 1500);
  assert_string_equal(h.scope, "shared");
  const char *g[] = {"Retry-After", "3", "X-RateLimit-Global", "true", NULL};
  h = feed(g, NOW);
  assert_string_equal(h.scope, "global");
  assert_int_equal(h.retry_at_ms, NOW + 3000);
}

static void x_windows_and_24_hour_caps(void **state) {
  /* The 15-minute window has room, the 24-hour user cap does not. */
  const char *x[] = {"x-rate-limit-limit",
                     "200",
                     "x-rate-limit-remaining",
                     "150",
                     "x-rate-limit-reset",
                     "1795350900",
                     "x-user-limit-24hour-remaining",
                     "0",
                     "x-user-limit-24hour-reset",
                     "1795400000",
                     "x-app-limit-24hour-remaining",
                     "1200",
                     "x-app-limit-24hour-reset",
                     "1795410000",
                     NULL};
  struct cp_hints h = feed(x, NOW);
  assert_int_equal(h.remaining, 0);
  assert_int_equal(h.reset_ms, 1795400000000LL);
  assert_int_equal(h.retry_at_ms, 1795400000000LL);
  /* The same headers in another order give the same answer. */
  const char *y[] = {"x-user-limit-24hour-reset",
                     "1795400000",
                     "x-app-limit-24hour-reset",
                     "1795410000",
                     "x-rate-limit-reset",
                     "1795350900",
                     "x-app-limit-24hour-remaining",
                     "1200",
                     "x-rate-limit-remaining",
                     "150",
                     "x-user-limit-24hour-remaining",
                     "0",
                     NULL};
  struct cp_hints k = feed(y, NOW);
  assert_int_equal(k.remaining, h.remaining);
  assert_int_equal(k.reset_ms, h.reset_ms);
  assert_int_equal(k.retry_at_ms, h.retry_at_ms);
}

static void retry_after_and_reset_take_the_later(void **state) {
  const char *both[] = {"Retry-After", "10", "X-RateLimit-Remaining", "0", "X-RateLimit-Reset",
                        "60",          NULL};
  assert_int_equal(feed(both, NOW).retry_at_ms, NOW + 60000);
  struct cp_hints h = feed(both, NOW);
  cp_hints_retry_at(&h, NOW + 5000); /* earlier: no effect */
  assert_int_equal(h.retry_at_ms, NOW + 60000);
  cp_hints_retry_at(&h, NOW + 90000); /* a JSON body's retry_after */
  assert_int_equal(h.retry_at_ms, NOW + 90000);
}

static void malformed_values_change_nothing(void **state) {
  const char *good[] = {"X-RateLimit-Remaining", "3", "X-RateLimit-Reset", "60", NULL};
  struct cp_hints h = feed(good, NOW), before = h;
  assert_int_equal(cp_hints_header(&h, "X-RateLimit-Remaining", "many", NOW), CP_EPARSE);
  assert_int_equal(cp_hints_header(&h, "X-RateLimit-Remaining", "2.5", NOW), CP_EPARSE);
  assert_int_equal(cp_hints_header(&h, "X-RateLimit-Reset", "", NOW), CP_EPARSE);
  assert_int_equal(cp_hints_header(&h, "X-RateLimit-Reset-After", "1e3", NOW), CP_EPARSE);
  assert_int_equal(cp_hints_header(&h, "RateLimit-Reset", "99999999999999999999", NOW), CP_EPARSE);
  assert_memory_equal(&h, &before, sizeof h);
}

static void raw_lines_from_libcurl(void **state) {
  struct cp_hints h;
  cp_hints_init(&h);
  const char *lines[] = {"HTTP/1.1 301 Moved Permanently\r\n",
                         "Retry-After: 999\r\n",
                         "HTTP/2 429 \r\n", /* the final response starts afresh */
                         "content-type: application/json\r\n",
                         "x-ratelimit-remaining:0\r\n",
                         "X-RateLimit-Reset:   2026-11-22T12:35:00Z  \r\n",
                         "\r\n"};
  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
    assert_int_equal(cp_hints_line(&h, lines[i], strlen(lines[i]), NOW), 0);
  assert_int_equal(h.retry_at_ms, 1795350900000LL);
  assert_int_equal(h.remaining, 0);
  /* Not NUL-terminated: only len bytes count. */
  const char buf[] = "Retry-After: 7\r\nGARBAGE";
  assert_int_equal(cp_hints_line(&h, buf, 16, NOW), 0);
  assert_int_equal(h.retry_at_ms, 1795350900000LL); /* NOW + 7 s is earlier */
  char longline[600];
  memset(longline, 'a', sizeof longline);
  memcpy(longline, "X-Long: ", 8);
  assert_int_equal(cp_hints_line(&h, longline, sizeof longline, NOW), 0);
  memcpy(longline, "Retry-After: ", 13);
  assert_int_equal(cp_hints_line(&h, longline, sizeof longline, NOW), CP_EPARSE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(empty),
      cmocka_unit_test(retry_after_delta_and_date),
      cmocka_unit_test(mastodon_iso8601_reset),
      cmocka_unit_test(ietf_delta_and_bluesky_epoch),
      cmocka_unit_test(discord),
      cmocka_unit_test(x_windows_and_24_hour_caps),
      cmocka_unit_test(retry_after_and_reset_take_the_later),
      cmocka_unit_test(malformed_values_change_nothing),
      cmocka_unit_test(raw_lines_from_libcurl),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
