#include "hints.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "calpost/err.h"

enum kind { K_RETRY_AFTER, K_REMAINING, K_RESET, K_RESET_AFTER, K_SCOPE, K_GLOBAL };

static const struct {
  const char *name;
  enum kind kind;
  int win;
} headers[] = {
    {"retry-after", K_RETRY_AFTER, 0},
    {"x-ratelimit-remaining", K_REMAINING, 0},
    {"x-ratelimit-reset", K_RESET, 0},
    {"x-ratelimit-reset-after", K_RESET_AFTER, 0},
    {"x-ratelimit-scope", K_SCOPE, 0},
    {"x-ratelimit-global", K_GLOBAL, 0},
    {"ratelimit-remaining", K_REMAINING, 0},
    {"ratelimit-reset", K_RESET, 0},
    {"x-rate-limit-remaining", K_REMAINING, 0},
    {"x-rate-limit-reset", K_RESET, 0},
    {"x-user-limit-24hour-remaining", K_REMAINING, 1},
    {"x-user-limit-24hour-reset", K_RESET, 1},
    {"x-app-limit-24hour-remaining", K_REMAINING, 2},
    {"x-app-limit-24hour-reset", K_RESET, 2},
};

/* Seconds at or above this are a Unix time, below it a delta: 1e9 s is 2001-09-09, and no
 * server asks to wait 31 years. At or above 1e11 the number is Unix milliseconds (1e11 s would
 * be the year 5138). */
#define EPOCH_S_MIN 1000000000LL
#define EPOCH_MS_MIN 100000000000LL

void cp_hints_init(struct cp_hints *h) {
  memset(h, 0, sizeof *h);
  h->remaining = -1;
  for (int i = 0; i < CP__HINTS_WINDOWS; i++)
    h->win[i].remaining = -1;
}

static const char *skip_ws(const char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  return s;
}

/* "12", "12.5", "1470173023.123": non-negative decimal seconds to milliseconds, rounded up so
 * that a wait is never cut short. */
static int parse_seconds_ms(const char *s, int64_t *ms) {
  s = skip_ws(s);
  if (!isdigit((unsigned char)*s))
    return CP_EPARSE;
  int64_t sec = 0, frac = 0;
  int digits = 0;
  for (; isdigit((unsigned char)*s); s++) {
    if (++digits > 15)
      return CP_EPARSE;
    sec = sec * 10 + (*s - '0');
  }
  if (*s == '.') {
    s++;
    int n = 0;
    bool more = false;
    for (; isdigit((unsigned char)*s); s++, n++) {
      if (n < 3)
        frac = frac * 10 + (*s - '0');
      else if (*s != '0')
        more = true;
    }
    if (n == 0)
      return CP_EPARSE;
    for (; n < 3; n++)
      frac *= 10;
    frac += more;
  }
  if (*skip_ws(s))
    return CP_EPARSE;
  *ms = sec * 1000 + frac;
  return 0;
}

/* RFC 3339 / ISO 8601 with an offset: "2026-11-22T12:35:00.123456Z", "...+01:00". */
static int parse_iso8601_ms(const char *s, int64_t *ms) {
  struct tm tm = {0};
  const char *p = strptime(skip_ws(s), "%Y-%m-%d", &tm);
  if (!p || (*p != 'T' && *p != 't' && *p != ' '))
    return CP_EPARSE;
  p = strptime(p + 1, "%H:%M:%S", &tm);
  if (!p)
    return CP_EPARSE;
  int64_t frac = 0;
  if (*p == '.' || *p == ',') {
    int n = 0;
    bool more = false;
    for (p++; isdigit((unsigned char)*p); p++, n++) {
      if (n < 3)
        frac = frac * 10 + (*p - '0');
      else if (*p != '0')
        more = true;
    }
    if (n == 0)
      return CP_EPARSE;
    for (; n < 3; n++)
      frac *= 10;
    frac += more;
  }
  int64_t offset = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int sign = *p++ == '-' ? -1 : 1;
    if (!isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]))
      return CP_EPARSE;
    int hh = (p[0] - '0') * 10 + (p[1] - '0');
    p += 2;
    if (*p == ':')
      p++;
    if (!isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]))
      return CP_EPARSE;
    int mm = (p[0] - '0') * 10 + (p[1] - '0');
    p += 2;
    if (hh > 23 || mm > 59)
      return CP_EPARSE;
    offset = sign * (hh * 3600 + mm * 60);
  } else {
    return CP_EPARSE; /* without an offset the time is ambiguous */
  }
  if (*skip_ws(p))
    return CP_EPARSE;
  time_t t = timegm(&tm);
  if (t == (time_t)-1)
    return CP_EPARSE;
  *ms = ((int64_t)t - offset) * 1000 + frac;
  return 0;
}

/* A reset time in any of the forms servers send: ISO 8601 (Mastodon), Unix seconds (X, GitHub,
 * Bluesky, Discord with decimals), Unix milliseconds, or delta seconds (IETF draft). */
static int parse_reset_ms(const char *s, int64_t now_ms, int64_t *ms) {
  if (strpbrk(s, "-:Tt"))
    return parse_iso8601_ms(s, ms);
  int64_t v;
  int err = parse_seconds_ms(s, &v);
  if (err < 0)
    return err;
  if (v >= EPOCH_MS_MIN * 1000)
    *ms = (v + 999) / 1000;
  else if (v >= EPOCH_S_MIN * 1000)
    *ms = v;
  else
    *ms = now_ms + v;
  return 0;
}

static int parse_count(const char *s, int64_t *n) {
  int64_t ms;
  s = skip_ws(s);
  /* A count is an integer; reuse the decimal reader and refuse fractions. */
  if (parse_seconds_ms(s, &ms) < 0 || ms % 1000 || strchr(s, '.'))
    return CP_EPARSE;
  *n = ms / 1000;
  return 0;
}

static void derive(struct cp_hints *h) {
  h->retry_at_ms = h->retry_after_ms;
  int best = -1;
  int64_t latest_reset = 0;
  for (int i = 0; i < CP__HINTS_WINDOWS; i++) {
    int64_t rem = h->win[i].remaining, reset = h->win[i].reset_ms;
    if (reset > latest_reset)
      latest_reset = reset;
    if (rem == 0 && reset > h->retry_at_ms)
      h->retry_at_ms = reset;
    if (rem < 0)
      continue;
    if (best < 0 || rem < h->win[best].remaining ||
        (rem == h->win[best].remaining && reset > h->win[best].reset_ms))
      best = i;
  }
  h->remaining = best < 0 ? -1 : h->win[best].remaining;
  h->reset_ms = best < 0 ? latest_reset : h->win[best].reset_ms;
}

static int find(const char *name) {
  for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++)
    if (!strcasecmp(name, headers[i].name))
      return (int)i;
  return -1;
}

int cp_hints_header(struct cp_hints *h, const char *name, const char *value, int64_t now_ms) {
  if (!h || !name || !value)
    return CP_EINVAL;
  int i = find(name);
  if (i < 0)
    return 0;
  int w = headers[i].win;
  int64_t v;
  switch (headers[i].kind) {
    case K_RETRY_AFTER:
      if (isdigit((unsigned char)*skip_ws(value))) {
        if (parse_seconds_ms(value, &v) < 0)
          return CP_EPARSE;
        v += now_ms;
      } else {
        time_t t = curl_getdate(value, NULL); /* HTTP-date, RFC 9110 section 5.6.7 */
        if (t == (time_t)-1 || t < 0 || (int64_t)t > INT64_MAX / 1000)
          return CP_EPARSE; /* a year no clock reaches is not a date */
        v = (int64_t)t * 1000;
      }
      if (v > h->retry_after_ms)
        h->retry_after_ms = v;
      break;
    case K_REMAINING:
      if (parse_count(value, &v) < 0)
        return CP_EPARSE;
      if (h->win[w].remaining < 0 || v < h->win[w].remaining)
        h->win[w].remaining = v;
      break;
    case K_RESET:
    case K_RESET_AFTER:
      if (headers[i].kind == K_RESET ? parse_reset_ms(value, now_ms, &v) < 0
                                     : parse_seconds_ms(value, &v) < 0)
        return CP_EPARSE;
      if (headers[i].kind == K_RESET_AFTER)
        v += now_ms;
      if (v > h->win[w].reset_ms)
        h->win[w].reset_ms = v;
      break;
    case K_SCOPE: {
      const char *s = skip_ws(value);
      size_t len = strcspn(s, " \t");
      if (len >= sizeof h->scope)
        len = sizeof h->scope - 1;
      memcpy(h->scope, s, len);
      h->scope[len] = '\0';
      break;
    }
    case K_GLOBAL:
      if (!strncasecmp(skip_ws(value), "true", 4) && !h->scope[0])
        strcpy(h->scope, "global");
      break;
  }
  derive(h);
  return 0;
}

int cp_hints_line(struct cp_hints *h, const char *line, size_t len, int64_t now_ms) {
  if (!h || !line)
    return CP_EINVAL;
  if (len >= 5 && !strncmp(line, "HTTP/", 5)) {
    cp_hints_init(h);
    return 0;
  }
  const char *colon = memchr(line, ':', len);
  if (!colon)
    return 0;
  char name[64], value[256];
  size_t nlen = (size_t)(colon - line);
  while (nlen > 0 && (line[nlen - 1] == ' ' || line[nlen - 1] == '\t'))
    nlen--;
  if (nlen == 0 || nlen >= sizeof name)
    return 0; /* longer than any name we know */
  memcpy(name, line, nlen);
  name[nlen] = '\0';
  const char *v = colon + 1;
  size_t vlen = len - (size_t)(v - line);
  while (vlen > 0 &&
         (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
    vlen--;
  if (vlen >= sizeof value)
    return find(name) < 0 ? 0 : CP_EPARSE; /* no hint of ours is that long */
  memcpy(value, v, vlen);
  value[vlen] = '\0';
  return cp_hints_header(h, name, value, now_ms);
}

void cp_hints_retry_at(struct cp_hints *h, int64_t at_ms) {
  if (at_ms > h->retry_after_ms) {
    h->retry_after_ms = at_ms;
    derive(h);
  }
}
