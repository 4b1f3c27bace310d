/* Fuzz target "desc": the description format (cp_desc_parse) on any bytes, and, on valid UTF-8
 * only (the plan engine rejects anything else before they run), the HTML conversion, the
 * per-platform counters, URL finding and thread splitting in every counting mode.
 *
 * Contracts checked: find_url returns URLs inside the text that start with http(s)://, in
 * order; split returns non-empty UTF-8 parts, and each part fits the limit when the text has no
 * URL (a URL longer than a part is the one thing the splitter may not cut). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "calpost/err.h"
#include "calpost/text.h"
#include "fuzz_util.h"

static void check_desc(const struct cp_desc *d) {
  if (!d->body)
    fuzz_fail("desc: body is NULL");
  for (size_t i = 0; i < d->n_variants; i++)
    if (!d->variants[i].channel || !d->variants[i].text)
      fuzz_fail("desc: variant %zu has a NULL channel or text", i);
  for (size_t i = 0; i < d->n_channels; i++)
    if (!d->channels[i] || !*d->channels[i])
      fuzz_fail("desc: channel %zu is NULL or empty", i);
  for (size_t i = 0; i < d->n_media; i++)
    if (!d->media[i].src)
      fuzz_fail("desc: media %zu has no src", i);
  for (size_t i = 0; i < d->n_options; i++) {
    if (!d->options[i].key || !d->options[i].value)
      fuzz_fail("desc: option %zu has a NULL key or value", i);
    for (size_t k = 0; k < i; k++)
      if (!strcmp(d->options[k].key, d->options[i].key))
        fuzz_fail("desc: option '%s' appears twice (keys are unique)", d->options[i].key);
  }
  for (size_t i = 0; i < d->n_diags; i++)
    if (!d->diags[i].msg || d->diags[i].line < 0)
      fuzz_fail("desc: diag %zu has no message or a negative line", i);
}

static void check_urls(const char *s) {
  const char *p = s, *end = s + strlen(s);
  size_t len = 0;
  for (const char *u; (u = cp_text_find_url(p, &len)); p = u + len) {
    if (u < p || len == 0 || u + len > end)
      fuzz_fail("find_url: [%td, %td) is not a URL after offset %td", u - s, u - s + (ptrdiff_t)len,
                p - s);
    if (strncasecmp(u, "http://", 7) && strncasecmp(u, "https://", 8)) /* "HTTPS://" too */
      fuzz_fail("find_url: the URL at offset %td does not start with http(s)://", u - s);
  }
}

/* The longest prefix of text of at most max bytes that ends at a character boundary. */
static char *prefix(const char *text, size_t max) {
  size_t len = strlen(text);
  if (len > max) {
    len = max;
    while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80)
      len--;
  }
  char *s = strndup(text, len);
  if (!s)
    fuzz_fail("out of memory");
  return s;
}

static void check_split(const char *text) {
  /* cp_text_split costs O(parts x length), and tiny limits make many parts: on a few KB one
   * input would take seconds with the fuzzer's instrumentation, so only a prefix is split. */
  static const struct {
    size_t limit, max_bytes;
  } runs[] = {{3, 100}, {8, 150}, {25, 400}, {60, 800}, {300, 1500}};
  for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
    char *s = prefix(text, runs[r].max_bytes);
    size_t limit = runs[r].limit;
    bool has_url = cp_text_find_url(s, &(size_t){0}) != NULL;
    for (int mode = CP_COUNT_GRAPHEMES; mode <= CP_COUNT_CODEPOINTS; mode++) {
      for (int numbered = 0; numbered < 2; numbered++) {
        char **parts = NULL;
        size_t n = 0;
        int rc = cp_text_split(s, limit, (enum cp_count)mode, numbered, &parts, &n);
        if (rc == CP_EINVAL)
          continue;
        if (rc < 0)
          fuzz_fail("split: %s", cp_err_name(rc));
        for (size_t i = 0; i < n; i++) {
          if (!parts[i])
            fuzz_fail("split: part %zu is NULL", i);
          if (n > 1 && !*parts[i])
            fuzz_fail("split: part %zu of %zu is empty", i + 1, n);
          if (cp_utf8_check(parts[i], strlen(parts[i]), NULL) < 0)
            fuzz_fail("split (mode %d, limit %zu, numbered %d): part %zu is not valid UTF-8", mode,
                      limit, numbered, i + 1);
          size_t c = cp_text_count(parts[i], (enum cp_count)mode);
          if (!has_url && n > 1 && c > limit)
            fuzz_fail("split (mode %d, limit %zu, numbered %d): part %zu of %zu counts %zu: '%s'",
                      mode, limit, numbered, i + 1, n, c, parts[i]);
        }
        cp_text_split_free(parts, n);
      }
    }
    free(s);
  }
}

static void text_functions(const char *s) {
  cp_text_codepoints(s);
  cp_text_utf16_len(s);
  cp_text_graphemes(s);
  cp_text_mastodon_len(s, 23);
  cp_text_x_len(s);
  size_t count;
  struct cp_text_limit lim;
  static const char *const types[] = {"mastodon", "bluesky", "x", "linkedin", "telegram", "nosuch"};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    cp_text_fits(types[i], s, i == 0 ? 500 : 0, &count, &lim);
  check_urls(s);
  check_split(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *s = fuzz_strndup(data, size);

  struct cp_desc *d = NULL;
  int rc = cp_desc_parse(s, &d);
  if (rc < 0 && rc != CP_ENOMEM)
    fuzz_fail("cp_desc_parse: unexpected error %s", cp_err_name(rc));
  if (rc == 0)
    check_desc(d);

  if (cp_utf8_check(s, strlen(s), NULL) == 0) {
    text_functions(s);
    if (cp_text_looks_like_html(s)) {
      char *plain = cp_text_from_html(s);
      if (plain && cp_utf8_check(plain, strlen(plain), NULL) < 0)
        fuzz_fail("cp_text_from_html made invalid UTF-8 from valid UTF-8");
      free(plain);
    }
    if (rc == 0) {
      if (cp_utf8_check(d->body, strlen(d->body), NULL) < 0)
        fuzz_fail("cp_desc_parse: body of valid UTF-8 is not valid UTF-8");
      /* Counting only: the input itself was split above. */
      cp_text_x_len(d->body);
      check_urls(d->body);
      for (size_t i = 0; i < d->n_variants; i++)
        cp_text_mastodon_len(d->variants[i].text, 23);
    }
  }
  cp_desc_free(d);
  free(s);
  return 0;
}
