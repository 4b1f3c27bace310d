/* Counting by platform and splitting an over-long text into a thread. See calpost/text.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "calpost/err.h"
#include "calpost/text.h"

size_t cp_text_count(const char *text, enum cp_count mode) {
  switch (mode) {
    case CP_COUNT_GRAPHEMES:
      return cp_text_graphemes(text);
    case CP_COUNT_MASTODON:
      return cp_text_mastodon_len(text, 23);
    case CP_COUNT_X:
      return cp_text_x_len(text);
    case CP_COUNT_UTF16:
      return cp_text_utf16_len(text);
    case CP_COUNT_CODEPOINTS:
    default:
      return cp_text_codepoints(text);
  }
}

/* Counts the bytes [s, s + len) as mode does. */
static size_t count_span(const char *s, size_t len, enum cp_count mode) {
  char small[512];
  char *buf = len < sizeof small ? small : malloc(len + 1);
  if (!buf)
    return SIZE_MAX;
  memcpy(buf, s, len);
  buf[len] = '\0';
  size_t n = cp_text_count(buf, mode);
  if (buf != small)
    free(buf);
  return n;
}

static bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Byte offsets of the grapheme boundaries after s (each the end of a cluster), up to end. */
static size_t *grapheme_ends(const char *s, const char *end, size_t *n) {
  size_t cap = 64, k = 0;
  size_t *v = malloc(cap * sizeof *v);
  utf8proc_int32_t prev = -1, state = 0;
  const char *p = s;
  while (v && p < end) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t len = utf8proc_iterate((const utf8proc_uint8_t *)p, end - p, &cp);
    if (len <= 0) { /* not valid UTF-8: treat the byte as a cluster of its own */
      len = 1;
      cp = -1;
    }
    if (prev != -1 && (cp == -1 || utf8proc_grapheme_break_stateful(prev, cp, &state))) {
      if (k == cap) {
        size_t *nv = realloc(v, (cap *= 2) * sizeof *v);
        if (!nv) {
          free(v);
          return NULL;
        }
        v = nv;
      }
      v[k++] = (size_t)(p - s);
    }
    prev = cp == -1 ? 0 : cp;
    p += len;
  }
  if (v) {
    if (k == cap) {
      size_t *nv = realloc(v, (cap + 1) * sizeof *v);
      if (!nv) {
        free(v);
        return NULL;
      }
      v = nv;
    }
    v[k++] = (size_t)(end - s);
  }
  *n = k;
  return v;
}

/* If offset cut (in s) falls strictly inside a URL, returns the URL's start; else cut. */
static size_t outside_url(const char *s, size_t len, size_t cut) {
  const char *p = s;
  size_t ul;
  while ((p = cp_text_find_url(p, &ul)) && p < s + len) {
    size_t a = (size_t)(p - s), b = a + ul;
    if (cut > a && cut < b)
      return a;
    if (a >= cut)
      break;
    p += ul;
  }
  return cut;
}

/* Chooses where to end a part that starts at s and may extend to fit (bytes) of the rest. */
static size_t choose_cut(const char *s, size_t fit) {
  size_t floor = fit / 3;              /* do not make a tiny part to cut at a nicer place */
  for (size_t i = fit; i > floor; i--) /* a paragraph break */
    if (s[i - 1] == '\n' && i >= 2 && s[i - 2] == '\n')
      return i;
  for (size_t i = fit; i > floor; i--) /* a sentence end followed by white space */
    if (i < fit + 1 && is_space(s[i]) && i >= 1 &&
        (s[i - 1] == '.' || s[i - 1] == '!' || s[i - 1] == '?' ||
         (i >= 3 && !memcmp(s + i - 3, "\xe2\x80\xa6", 3))))
      return i;
  for (size_t i = fit; i > floor; i--) /* white space */
    if (is_space(s[i]))
      return i;
  return fit;
}

/* Splits with each part's budget being limit - reserve. */
static int split_budget(const char *text, size_t budget, enum cp_count mode, char ***out,
                        size_t *nout) {
  size_t cap = 4, n = 0;
  char **parts = malloc(cap * sizeof *parts);
  const char *p = text;
  int rc = 0;

  if (!parts)
    return CP_ENOMEM;
  while (*p && is_space(*p))
    p++;
  while (*p) {
    size_t rest = strlen(p), nb = 0, take;
    /* The part ends within a window that already counts over the budget: grown from a guess by
     * doubling (URLs count 23 whatever their length, so bytes do not bound it), so each part
     * costs its own length, not the rest of the text. */
    size_t win = budget * 4 + 64;
    for (;;) {
      if (win >= rest) {
        win = rest;
        break;
      }
      while (win < rest && ((unsigned char)p[win] & 0xC0) == 0x80) /* a whole character */
        win++;
      if (win >= rest || count_span(p, win, mode) > budget)
        break;
      win *= 2;
    }
    if (win == rest && count_span(p, rest, mode) <= budget) {
      take = rest;
    } else {
      size_t *ends = grapheme_ends(p, p + win, &nb);
      if (!ends) {
        rc = CP_ENOMEM;
        break;
      }
      /* The longest prefix of whole clusters that fits: counts grow with the prefix. */
      size_t lo = 0, hi = nb; /* answer in [0, nb): number of clusters that fit */
      while (lo < hi) {
        size_t mid = (lo + hi + 1) / 2;
        if (count_span(p, ends[mid - 1], mode) <= budget)
          lo = mid;
        else
          hi = mid - 1;
      }
      size_t fit = lo ? ends[lo - 1] : 0;
      free(ends);
      if (fit == 0) {
        rc = CP_EINVAL; /* not even one cluster fits */
        break;
      }
      take = choose_cut(p, fit);
      size_t safe = outside_url(p, rest, take);
      if (safe > 0)
        take = safe;
      else if (take < fit) /* a URL at the start that fits whole: keep it whole */
        take = fit;
    }
    size_t len = take;
    while (len > 0 && is_space(p[len - 1]))
      len--;
    if (len > 0) {
      if (n == cap) {
        char **np = realloc(parts, (cap *= 2) * sizeof *parts);
        if (!np) {
          rc = CP_ENOMEM;
          break;
        }
        parts = np;
      }
      if (!(parts[n] = strndup(p, len))) {
        rc = CP_ENOMEM;
        break;
      }
      n++;
    }
    p += take;
    while (*p && is_space(*p))
      p++;
  }
  if (rc) {
    cp_text_split_free(parts, n);
    return rc;
  }
  *out = parts;
  *nout = n;
  return 0;
}

static int digits(size_t n) {
  int d = 1;
  while (n >= 10) {
    n /= 10;
    d++;
  }
  return d;
}

int cp_text_split(const char *text, size_t limit, enum cp_count mode, bool numbered, char ***parts,
                  size_t *n) {
  if (limit == 0)
    return CP_EINVAL;
  if (cp_text_count(text, mode) <= limit) {
    char **one = malloc(sizeof *one);
    if (!one || !(one[0] = strdup(text))) {
      free(one);
      return CP_ENOMEM;
    }
    *parts = one;
    *n = 1;
    return 0;
  }
  if (!numbered)
    return split_budget(text, limit, mode, parts, n);

  /* " n/N" costs 2 + digits(n) + digits(N) characters in every unit we count; reserve for the
   * widest n, and redo with a wider reserve if the thread turned out longer than assumed. */
  for (int width = 1; width <= 6; width++) {
    size_t reserve = 2 + 2 * (size_t)width;
    if (reserve >= limit)
      return CP_EINVAL;
    char **v;
    size_t k;
    int rc = split_budget(text, limit - reserve, mode, &v, &k);
    if (rc)
      return rc;
    if (digits(k) > width) {
      cp_text_split_free(v, k);
      continue;
    }
    for (size_t i = 0; i < k; i++) {
      size_t len = strlen(v[i]);
      char *s = malloc(len + 32);
      if (!s) {
        cp_text_split_free(v, k);
        return CP_ENOMEM;
      }
      snprintf(s, len + 32, "%s %zu/%zu", v[i], i + 1, k);
      free(v[i]);
      v[i] = s;
    }
    *parts = v;
    *n = k;
    return 0;
  }
  return CP_EINVAL;
}

void cp_text_split_free(char **parts, size_t n) {
  if (!parts)
    return;
  for (size_t i = 0; i < n; i++)
    free(parts[i]);
  free(parts);
}
