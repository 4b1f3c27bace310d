/* Text utilities shared by the plan engine and the connectors: UTF-8 checks, HTML to text,
 * the description format, and per-platform length counting. */
#ifndef CALPOST_TEXT_H
#define CALPOST_TEXT_H

#include <stdbool.h>
#include <stddef.h>

#include "calpost/post.h"

/* Checks that s[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
 * Returns 0 if valid; otherwise CP_EUTF8 and, if bad_off is not NULL, the byte offset of the
 * first invalid sequence in *bad_off. */
int cp_utf8_check(const char *s, size_t len, size_t *bad_off);

/* True if s looks like HTML markup (Google Calendar descriptions, Outlook X-ALT-DESC):
 * contains a tag such as <br>, <a ...>, <b>, <p>, <div>, <span>, <html>, or an entity. */
bool cp_text_looks_like_html(const char *s);

/* Converts HTML to clean plain text with libxml2's HTML parser: <br> and block ends become
 * newlines, entities are decoded, <head>/<style>/<script> are dropped, links are kept: an
 * <a href=U>T</a> becomes U when T is U (or U without scheme), otherwise "T (U)"; Google's
 * redirect links (https://www.google.com/url?q=U&...) are unwrapped to U. Runs of blank lines
 * collapse to one, trailing spaces are trimmed. Returns a malloc'd string or NULL on ENOMEM. */
char *cp_text_from_html(const char *html);

/* A per-channel variant of the text. */
struct cp_desc_variant {
  char *channel;
  char *text;
};

/* A problem found in a description, with its line relative to the description (1-based). */
struct cp_desc_diag {
  int line;
  bool error; /* false: warning */
  char *msg;
};

/* A parsed description (see README.md, "The description format"). */
struct cp_desc {
  char *body; /* the text before any [section]; trimmed */
  struct cp_desc_variant *variants;
  size_t n_variants;
  char **channels; /* from "channels = a, b" in [calpost]; NULL if not given */
  size_t n_channels;
  struct cp_media *media; /* from "media = SRC | ALT" lines, in order */
  size_t n_media;
  int draft;      /* -1 unset, 0 no, 1 yes */
  int thread;     /* -1 unset, 0 no, 1 yes */
  int numbered;   /* -1 unset, 0 no, 1 yes */
  char *campaign; /* NULL if unset */
  /* Other settings, passed to the connectors as post options (keys lower case, unique: a
   * repeated key keeps its last value); option_lines[i] is the line of options[i]. */
  struct cp_post_option *options;
  int *option_lines;
  size_t n_options;
  struct cp_desc_diag *diags;
  size_t n_diags;
};

/* Parses plain text (already converted from HTML if needed) in the description format.
 * On success returns 0 and a new cp_desc in *out (free with cp_desc_free). Problems in the
 * text are reported as diags, not as a failure. Returns CP_ENOMEM on allocation failure.
 * Settings lines are read with inih, one line at a time: lines starting with ';' or '#' are
 * comments, and so is the rest of a line after " ;" (a ';' after white space), so write
 * "Alt; more" rather than "Alt ; more" in alt text. An indented line is a line of its own, not
 * a continuation. Repeated settings: media adds, channels adds (without duplicates), the others
 * keep the last value. */
int cp_desc_parse(const char *text, struct cp_desc **out);
void cp_desc_free(struct cp_desc *d);

/* Counting, each as the platform counts (see README.md and CONNECTORS-NOTES). Input is
 * valid UTF-8. */
size_t cp_text_codepoints(const char *s);
size_t cp_text_utf16_len(const char *s); /* UTF-16 code units (Telegram, JavaScript) */
size_t cp_text_graphemes(const char *s); /* extended grapheme clusters (utf8proc) */
/* The length in bytes of the first k grapheme clusters of s (all of s if it has fewer). */
size_t cp_text_grapheme_prefix(const char *s, size_t k);
/* Mastodon: graphemes, each http(s) URL counts url_len (23), "@user@domain" counts "@user". */
size_t cp_text_mastodon_len(const char *s, size_t url_len);
/* X: twitter-text v3 weighted length after NFC (URLs 23, emoji 2, CJK 2), in characters
 * (weight / 100). Unlike twitter-text, a bare domain ("example.com") counts its characters, not
 * 23. */
size_t cp_text_x_len(const char *s);

/* The text limit of a channel type, as the platform counts it. */
struct cp_text_limit {
  const char *type; /* "mastodon", "bluesky", "x", "linkedin", ... */
  size_t max;       /* 0: no limit */
  const char *unit; /* "characters", "graphemes", "weighted characters" */
};

/* Measures text for a channel type: sets *count (in the platform's unit) and *lim.
 * Returns true if the text fits (or the type has no limit). max_override > 0 replaces the
 * default maximum (Mastodon instances with a longer limit). Bluesky also allows at most 3000
 * UTF-8 bytes: when that is what the text breaks, *count is in bytes and lim->unit is "bytes".
 * For a type without a limit, lim->type is the (borrowed) type passed in and *count is in code
 * points. */
bool cp_text_fits(const char *type, const char *text, size_t max_override, size_t *count,
                  struct cp_text_limit *lim);

/* How a platform counts text, for cp_text_count and cp_text_split. */
enum cp_count {
  CP_COUNT_GRAPHEMES = 0, /* Bluesky */
  CP_COUNT_MASTODON,      /* cp_text_mastodon_len with URLs as 23 */
  CP_COUNT_X,             /* cp_text_x_len */
  CP_COUNT_UTF16,         /* Telegram */
  CP_COUNT_CODEPOINTS,    /* LinkedIn, Discord, ... */
};

size_t cp_text_count(const char *text, enum cp_count mode);

/* Splits text into a thread: parts of at most limit (counted by mode) each, cut at the last
 * paragraph break, else sentence end, else white space that fits (a word longer than a whole
 * part is cut at a grapheme boundary; URLs are never cut). White space at the cut is dropped.
 * numbered appends " n/N" to each part, counted within the limit. A text that fits is one part.
 * Returns 0 and sets *parts to a malloc'd array of *n malloc'd strings (cp_text_split_free), or
 * CP_EINVAL if limit is too small to make progress, CP_ENOMEM. */
int cp_text_split(const char *text, size_t limit, enum cp_count mode, bool numbered, char ***parts,
                  size_t *n);
void cp_text_split_free(char **parts, size_t n);

/* Finds the next http:// or https:// URL at or after s; returns its start and sets *len,
 * or NULL. Trailing punctuation (.,;:!?'"*) and an unbalanced closing bracket are not part of
 * it. A URL ends at white space, at <>"{}\^` and at characters twitter-text does not accept in a
 * URL (in the path: anything but ASCII, Latin letters and Cyrillic). Bare domains
 * ("example.com") are not found. */
const char *cp_text_find_url(const char *s, size_t *len);

#endif
