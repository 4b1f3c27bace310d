/* Fuzz target "hints": the rate-limit header parser on the input split into lines, each fed
 * three ways: as libcurl delivers a raw header line (cp_hints_line, exactly sized and not
 * NUL-terminated, so reading past its end is caught), as a parsed name and value
 * (cp_hints_header), and its value to cp_connector_retry_after.
 *
 * Contracts checked: a header refused with CP_EPARSE leaves the hints unchanged; the derived
 * fields stay consistent (remaining is -1 or not negative, no time before the epoch); a
 * Retry-After is never in the past, and a delta-seconds one never more than a year ahead. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "calpost/err.h"
#include "connector_registry.h"
#include "fuzz_util.h"
#include "hints.h"

#define NOW_MS 1700000000000LL /* Tue, 14 Nov 2023 22:13:20 GMT, as tests/support/mock_host.h */
#define YEAR_MS (366LL * 24 * 3600 * 1000)

static void check_hints(const struct cp_hints *h, const char *what) {
  if (h->remaining < -1 || h->retry_at_ms < 0 || h->reset_ms < 0)
    fuzz_fail("%s: remaining %lld, retry_at_ms %lld, reset_ms %lld", what, (long long)h->remaining,
              (long long)h->retry_at_ms, (long long)h->reset_ms);
  if (!memchr(h->scope, '\0', sizeof h->scope))
    fuzz_fail("%s: scope is not NUL-terminated", what);
}

/* Feeds one header as a name and a value; checks that a refusal changes nothing. */
static void feed_header(struct cp_hints *h, const char *name, const char *value) {
  struct cp_hints before = *h;
  int rc = cp_hints_header(h, name, value, NOW_MS);
  if (rc == CP_EPARSE && memcmp(&before, h, sizeof before))
    fuzz_fail("cp_hints_header('%s', '%s') refused the value but changed the hints", name, value);
  if (rc < 0 && rc != CP_EPARSE)
    fuzz_fail("cp_hints_header('%s', '%s'): unexpected %s", name, value, cp_err_name(rc));
  check_hints(h, "cp_hints_header");
}

/* cp_connector_retry_after(value), checked: 0, or not before now; delta-seconds at most a year
 * ahead (an HTTP-date is believed as far as it goes). */
static int64_t retry_after(const char *value) {
  int64_t at = cp_connector_retry_after(value, NOW_MS);
  const char *p = value + strspn(value, " \t");
  bool delta = *p >= '0' && *p <= '9';
  if (at != 0 && (at < NOW_MS || (delta && at > NOW_MS + YEAR_MS)))
    fuzz_fail("cp_connector_retry_after('%s') = %lld: before now or a delta over a year", value,
              (long long)at);
  return at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct cp_hints raw, parsed;
  cp_hints_init(&raw);
  cp_hints_init(&parsed);
  size_t off = 0;
  while (off < size) {
    const uint8_t *nl = memchr(data + off, '\n', size - off);
    size_t len = nl ? (size_t)(nl - (data + off)) + 1 : size - off;

    /* The raw line with its line end, in a buffer of exactly its size. */
    char *line = malloc(len ? len : 1);
    if (!line)
      fuzz_fail("out of memory");
    memcpy(line, data + off, len);
    struct cp_hints before = raw;
    int rc = cp_hints_line(&raw, line, len, NOW_MS);
    if (rc == CP_EPARSE && memcmp(&before, &raw, sizeof before))
      fuzz_fail("cp_hints_line refused the line but changed the hints");
    if (rc < 0 && rc != CP_EPARSE)
      fuzz_fail("cp_hints_line: unexpected %s", cp_err_name(rc));
    check_hints(&raw, "cp_hints_line");
    free(line);

    /* Name and value, trimmed as an HTTP client would. */
    char *copy = fuzz_strndup(data + off, len);
    copy[strcspn(copy, "\r\n")] = '\0';
    char *colon = strchr(copy, ':');
    if (colon) {
      *colon = '\0';
      char *value = colon + 1;
      while (*value == ' ' || *value == '\t')
        value++;
      feed_header(&parsed, copy, value);
      int64_t at = retry_after(value);
      cp_hints_retry_at(&parsed, at);
      check_hints(&parsed, "cp_hints_retry_at");
    } else {
      retry_after(copy);
    }
    free(copy);
    off += len;
  }
  return 0;
}
