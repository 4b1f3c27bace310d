/* UTF-8 checking, URL finding and per-platform length counting. Grapheme clusters, NFC and
 * character properties come from utf8proc; nothing here segments text by hand. */
#include "calpost/text.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <utf8proc.h>

#include "calpost/err.h"

/* --- UTF-8 ------------------------------------------------------------------------------- */

int cp_utf8_check(const char *s, size_t len, size_t *bad_off) {
  const unsigned char *p = (const unsigned char *)s;
  const unsigned char *end = p + len;

  while (p < end) {
    if (*p < 0x80) {
      /* Plain text is mostly ASCII: test eight bytes at a time. memcpy keeps it free of
       * alignment and aliasing trouble; compilers turn it into one load. */
      while (end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (w & UINT64_C(0x8080808080808080))
          break;
        p += 8;
      }
      while (p < end && *p < 0x80)
        p++;
      continue;
    }
    /* Well-formed sequences as in Unicode 15, table 3-7: the second byte's range rules out
     * overlongs (E0, F0), surrogates (ED) and code points above U+10FFFF (F4). */
    unsigned char c = *p;
    size_t left = (size_t)(end - p);
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      if (c == 0xE0)
        lo = 0xA0;
      else if (c == 0xED)
        hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      if (c == 0xF0)
        lo = 0x90;
      else if (c == 0xF4)
        hi = 0x8F;
    } else {
      goto bad;
    }
    if (left < n || p[1] < lo || p[1] > hi)
      goto bad;
    for (size_t i = 2; i < n; i++)
      if ((p[i] & 0xC0) != 0x80)
        goto bad;
    p += n;
  }
  return 0;

bad:
  if (bad_off)
    *bad_off = (size_t)(p - (const unsigned char *)s);
  return CP_EUTF8;
}

/* Decodes one code point at p (NUL-terminated text). Invalid bytes decode as U+FFFD and
 * consume one byte, so counting never stops early on bad input. Returns the bytes used. */
static size_t next_cp(const char *p, utf8proc_int32_t *cp) {
  utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)p, -1, cp);
  if (n <= 0) {
    *cp = 0xFFFD;
    return 1;
  }
  return (size_t)n;
}

/* --- Counting ---------------------------------------------------------------------------- */

size_t cp_text_codepoints(const char *s) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    n += (*p & 0xC0) != 0x80;
  return n;
}

size_t cp_text_utf16_len(const char *s) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if ((*p & 0xC0) != 0x80)
      n++;
    if (*p >= 0xF0) /* a 4-byte sequence is outside the BMP: a surrogate pair */
      n++;
  }
  return n;
}

/* Counts extended grapheme clusters over a stream of code points, so that a text can be
 * counted with parts replaced (URLs, mentions) without building the replaced string. */
struct gcount {
  size_t n;
  utf8proc_int32_t prev;
  utf8proc_int32_t state;
  bool started;
};

static void gcount_feed(struct gcount *g, utf8proc_int32_t cp) {
  if (!g->started || utf8proc_grapheme_break_stateful(g->prev, cp, &g->state))
    g->n++;
  g->started = true;
  g->prev = cp;
}

size_t cp_text_graphemes(const char *s) {
  struct gcount g = {0};
  while (*s) {
    utf8proc_int32_t cp;
    s += next_cp(s, &cp);
    gcount_feed(&g, cp);
  }
  return g.n;
}

size_t cp_text_grapheme_prefix(const char *s, size_t k) {
  struct gcount g = {0};
  const char *p = s;
  while (*p) {
    utf8proc_int32_t cp;
    size_t n = next_cp(p, &cp);
    gcount_feed(&g, cp);
    if (g.n > k)
      break;
    p += n;
  }
  return (size_t)(p - s);
}

/* --- URLs -------------------------------------------------------------------------------- */

static bool is_ascii_alnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_letter_mark_number(utf8proc_int32_t cp) {
  utf8proc_category_t c = utf8proc_category(cp);
  return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_NO;
}

/* Non-ASCII characters twitter-text accepts in a URL path: Latin accents, Cyrillic, en dash. */
static bool is_path_letter(utf8proc_int32_t cp) {
  return (cp >= 0xC0 && cp <= 0x24F && cp != 0xD7 && cp != 0xF7) || (cp >= 0x400 && cp <= 0x4FF) ||
         cp == 0x2013 || (cp >= 0x1E00 && cp <= 0x1EFF);
}

static bool is_url_ascii(unsigned char c) {
  return is_ascii_alnum(c) || (c && strchr("-._~:/?#[]@!$&'()*+,;=%|", c));
}

/* Length of the URL body (after "scheme://") at p, before trimming; 0 if there is no host. */
static size_t url_extent(const char *p) {
  const char *q = p;
  bool in_host = true;
  size_t host_len = 0, label = 0;
  while (*q) {
    unsigned char c = (unsigned char)*q;
    if (c < 0x80) {
      if (!is_url_ascii(c))
        break;
      if (in_host && (c == '/' || c == '?' || c == '#')) {
        in_host = false;
      } else if (in_host) {
        /* A host label longer than 63 characters is not a valid domain (twitter-text). */
        label = (c == '.' || c == ':' || c == '@') ? 0 : label + 1;
        if (label > 63)
          return 0;
        host_len++;
      }
      q++;
      continue;
    }
    utf8proc_int32_t cp;
    size_t n = next_cp(q, &cp);
    if (in_host ? !is_letter_mark_number(cp) : !is_path_letter(cp))
      break;
    if (in_host)
      host_len++;
    q += n;
  }
  return host_len ? (size_t)(q - p) : 0;
}

/* Drops trailing punctuation and unbalanced closing brackets from the URL s[0..len). */
static size_t url_trim(const char *s, size_t len, size_t min) {
  while (len > min) {
    char c = s[len - 1];
    if (strchr(".,;:!?'\"*", c)) {
      len--;
      continue;
    }
    const char *pair = c == ')' ? "()" : c == ']' ? "[]" : c == '}' ? "{}" : NULL;
    if (!pair)
      break;
    int depth = 0;
    for (size_t i = 0; i < len; i++)
      depth += (s[i] == pair[0]) - (s[i] == pair[1]);
    if (depth >= 0)
      break;
    len--;
  }
  return len;
}

const char *cp_text_find_url(const char *s, size_t *len) {
  for (const char *p = s; *p; p++) {
    if (*p != 'h' && *p != 'H')
      continue;
    size_t scheme;
    if (strncasecmp(p, "https://", 8) == 0)
      scheme = 8;
    else if (strncasecmp(p, "http://", 7) == 0)
      scheme = 7;
    else
      continue;
    /* "xhttp://" or "#http://" is not the start of a link (twitter-text's preceding chars). */
    if (p > s && (is_ascii_alnum((unsigned char)p[-1]) || strchr("@$#", p[-1])))
      continue;
    size_t body = url_extent(p + scheme);
    if (!body)
      continue;
    size_t n = url_trim(p, scheme + body, scheme);
    if (n == scheme)
      continue;
    *len = n;
    return p;
  }
  return NULL;
}

/* --- Mastodon ---------------------------------------------------------------------------- */

/* Ruby's [[:word:]]: letters, marks, decimal digits and connector punctuation. */
static bool is_word_cp(utf8proc_int32_t cp) {
  if (cp < 0x80)
    return is_ascii_alnum((unsigned char)cp) || cp == '_';
  utf8proc_category_t c = utf8proc_category(cp);
  return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_ND) || c == UTF8PROC_CATEGORY_PC;
}

/* Matches [[:word:]]+([.-]+[[:word:]]+)* (or the ASCII username variant) at p; returns the
 * length, 0 if nothing matches. */
static size_t word_run(const char *p, bool ascii_only) {
  const char *q = p, *good = p;
  for (;;) {
    size_t run = 0;
    for (;;) {
      utf8proc_int32_t cp;
      size_t n = next_cp(q, &cp);
      if (!*q || !(ascii_only ? (cp < 0x80 && is_word_cp(cp)) : is_word_cp(cp)))
        break;
      q += n;
      run++;
    }
    if (!run)
      return (size_t)(good - p);
    good = q;
    const char *sep = q;
    while (*sep == '.' || *sep == '-')
      sep++;
    if (sep == q)
      return (size_t)(good - p);
    q = sep;
  }
}

/* A remote mention "@user@domain" at p (Mastodon's MENTION_RE): returns its length and the
 * length of "@user" in *short_len, or 0 if p does not start one. */
static size_t remote_mention(const char *p, size_t *short_len) {
  if (*p != '@')
    return 0;
  size_t user = word_run(p + 1, true);
  if (!user || p[1 + user] != '@')
    return 0;
  size_t domain = word_run(p + 2 + user, false);
  if (!domain)
    return 0;
  *short_len = 1 + user;
  return 2 + user + domain;
}

/* The code point that ends just before p (p > s). */
static utf8proc_int32_t last_cp(const char *s, const char *p) {
  const char *q = p - 1;
  while (q > s && ((unsigned char)*q & 0xC0) == 0x80)
    q--;
  utf8proc_int32_t cp;
  next_cp(q, &cp);
  return cp;
}

size_t cp_text_mastodon_len(const char *s, size_t url_len) {
  struct gcount g = {0};
  utf8proc_int32_t prev = 0; /* 0: start of text */
  size_t ulen = 0;
  const char *url = cp_text_find_url(s, &ulen);
  const char *p = s;

  while (*p) {
    if (p == url) {
      for (size_t i = 0; i < url_len; i++)
        gcount_feed(&g, 'x');
      p += ulen;
      prev = last_cp(s, p);
      url = cp_text_find_url(p, &ulen);
      continue;
    }
    size_t short_len = 0, mlen = 0;
    if (*p == '@' && prev != '=' && prev != '/' && !is_word_cp(prev))
      mlen = remote_mention(p, &short_len);
    if (mlen && (!url || p + mlen <= url)) {
      for (size_t i = 0; i < short_len; i++)
        gcount_feed(&g, (unsigned char)p[i]);
      p += mlen;
      prev = last_cp(s, p);
      continue;
    }
    utf8proc_int32_t cp;
    p += next_cp(p, &cp);
    gcount_feed(&g, cp);
    prev = cp;
  }
  return g.n;
}

/* --- X (twitter-text v3) ----------------------------------------------------------------- */

static int x_weight(utf8proc_int32_t cp) {
  if ((cp >= 0 && cp <= 0x10FF) || (cp >= 0x2000 && cp <= 0x200D) ||
      (cp >= 0x2010 && cp <= 0x201F) || (cp >= 0x2032 && cp <= 0x2037))
    return 100;
  return 200;
}

/* Weight of the grapheme cluster starting at *pp (not crossing end); advances *pp. A cluster
 * that is an emoji (pictographic, a flag, a keycap, with modifiers and ZWJ parts) weighs 200
 * in total, as twitter-text's twemoji parser sees one emoji. Text-style pictographs inside the
 * weight-100 range (the copyright and registered signs) are emoji only with U+FE0F. */
static long x_cluster(const char **pp, const char *end) {
  const char *p = *pp;
  utf8proc_int32_t cp, prev;
  utf8proc_int32_t state = 0;
  long sum = 0;
  bool pict = false, pict_low = false, fe0f = false, keycap = false;

  p += next_cp(p, &cp);
  for (;;) {
    int bc = utf8proc_get_property(cp)->boundclass;
    if (bc == UTF8PROC_BOUNDCLASS_EXTENDED_PICTOGRAPHIC || bc == UTF8PROC_BOUNDCLASS_E_ZWG ||
        bc == UTF8PROC_BOUNDCLASS_REGIONAL_INDICATOR) {
      if (cp < 0x1100)
        pict_low = true;
      else
        pict = true;
    }
    fe0f |= cp == 0xFE0F;
    keycap |= cp == 0x20E3;
    sum += x_weight(cp);
    prev = cp;
    if (p >= end || !*p)
      break;
    utf8proc_int32_t next;
    size_t n = next_cp(p, &next);
    if (utf8proc_grapheme_break_stateful(prev, next, &state))
      break;
    p += n;
    cp = next;
  }
  *pp = p;
  if (pict || keycap || (pict_low && fe0f))
    return 200;
  return sum;
}

size_t cp_text_x_len(const char *s) {
  /* twitter-text counts the NFC form. Without memory for it, count the text as given: most
   * text is NFC already. */
  char *nfc = (char *)utf8proc_NFC((const utf8proc_uint8_t *)s);
  const char *t = nfc ? nfc : s;
  const char *p = t;
  long total = 0;
  size_t ulen = 0;
  const char *url = cp_text_find_url(p, &ulen);

  while (*p) {
    if (p == url) {
      total += 23 * 100;
      p += ulen;
      url = cp_text_find_url(p, &ulen);
      continue;
    }
    const char *end = url ? url : p + strlen(p);
    while (p < end)
      total += x_cluster(&p, end);
  }
  free(nfc);
  return (size_t)((total + 99) / 100);
}

/* --- Limits ------------------------------------------------------------------------------ */

enum count_kind { COUNT_CODEPOINTS, COUNT_GRAPHEMES, COUNT_MASTODON, COUNT_X, COUNT_UTF16 };

static const struct limit_row {
  const char *type;
  size_t max;
  const char *unit;
  enum count_kind kind;
} limits[] = {
    {"mastodon", 500, "characters", COUNT_MASTODON},
    {"bluesky", 300, "graphemes", COUNT_GRAPHEMES},
    {"x", 280, "weighted characters", COUNT_X},
    {"linkedin", 3000, "characters", COUNT_CODEPOINTS},
    {"facebook", 63206, "characters", COUNT_CODEPOINTS},
    /* Telegram measures text after entity parsing in UTF-16 code units (its entity offsets are
     * UTF-16 too); we send plain text, so the UTF-16 length of the text is what it checks. */
    {"telegram", 4096, "characters", COUNT_UTF16},
    {"discord", 2000, "characters", COUNT_CODEPOINTS},
    {"threads", 500, "characters", COUNT_CODEPOINTS},
};

/* Bluesky's second limit: the record's text may not exceed 3000 UTF-8 bytes. */
#define BLUESKY_MAX_BYTES 3000

bool cp_text_fits(const char *type, const char *text, size_t max_override, size_t *count,
                  struct cp_text_limit *lim) {
  const struct limit_row *row = NULL;
  for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
    if (strcmp(type, limits[i].type) == 0)
      row = &limits[i];

  size_t n;
  struct cp_text_limit l = {.type = type, .max = 0, .unit = "characters"};
  if (!row) {
    n = cp_text_codepoints(text);
  } else {
    l.type = row->type;
    l.max = max_override > 0 ? max_override : row->max;
    l.unit = row->unit;
    switch (row->kind) {
      case COUNT_GRAPHEMES:
        n = cp_text_graphemes(text);
        break;
      case COUNT_MASTODON:
        n = cp_text_mastodon_len(text, 23);
        break;
      case COUNT_X:
        n = cp_text_x_len(text);
        break;
      case COUNT_UTF16:
        n = cp_text_utf16_len(text);
        break;
      case COUNT_CODEPOINTS:
      default:
        n = cp_text_codepoints(text);
        break;
    }
  }

  bool fits = l.max == 0 || n <= l.max;
  if (fits && row && strcmp(row->type, "bluesky") == 0) {
    size_t bytes = strlen(text);
    if (bytes > BLUESKY_MAX_BYTES) {
      /* Report the limit that was broken, so the message reads "3200 bytes, Bluesky allows
       * 3000 bytes" rather than a grapheme count that looks fine. */
      fits = false;
      n = bytes;
      l.max = BLUESKY_MAX_BYTES;
      l.unit = "bytes";
    }
  }
  if (count)
    *count = n;
  if (lim)
    *lim = l;
  return fits;
}
