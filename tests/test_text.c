/* UTF-8 checking, URL finding and length counting as each platform counts. The X vectors come
 * from twitter-text's conformance/validate.yml, section
 * WeightedTweetsWithDiscountedEmojiCounterTest (the v3 configuration X uses today). */
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "calpost/err.h"
#include "calpost/text.h"

/* s repeated n times, in a static buffer big enough for the tests below. */
static const char *repeat(const char *s, size_t n) {
  static char buf[16384];
  size_t len = strlen(s);
  assert_true(len * n < sizeof buf);
  for (size_t i = 0; i < n; i++)
    memcpy(buf + i * len, s, len);
  buf[len * n] = '\0';
  return buf;
}

static void check_utf8(const char *s, size_t len, int want, size_t want_off) {
  size_t off = (size_t)-1;
  assert_int_equal(cp_utf8_check(s, len, &off), want);
  if (want != 0)
    assert_int_equal(off, want_off);
}

/* For string literals: the length is the literal's, so no test miscounts bytes by hand. */
#define CHECK_UTF8(lit, want, off) check_utf8(lit, sizeof(lit) - 1, want, off)

static void utf8_valid_and_invalid(void **state) {
  CHECK_UTF8("", 0, 0);
  CHECK_UTF8("plain ASCII text that is longer than eight bytes", 0, 0);
  CHECK_UTF8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF", 0, 0);
  /* Overlong forms of '/' and NUL. */
  CHECK_UTF8("ab\xC0\xAF", CP_EUTF8, 2);
  CHECK_UTF8("\xC1\x81", CP_EUTF8, 0);
  CHECK_UTF8("x\xE0\x80\xAF", CP_EUTF8, 1);
  CHECK_UTF8("\xF0\x80\x80\xAF", CP_EUTF8, 0);
  /* UTF-16 surrogates and code points above U+10FFFF. */
  CHECK_UTF8("ok \xED\xA0\x80", CP_EUTF8, 3);
  CHECK_UTF8("\xED\x9F\xBF", 0, 0); /* U+D7FF is fine */
  CHECK_UTF8("\xF4\x90\x80\x80", CP_EUTF8, 0);
  CHECK_UTF8("\xF5\x80\x80\x80", CP_EUTF8, 0);
  /* Truncated sequences, stray continuation bytes. */
  CHECK_UTF8("abc\xE2\x82", CP_EUTF8, 3);
  CHECK_UTF8("abc\xE2\x82x", CP_EUTF8, 3);
  CHECK_UTF8("\x80", CP_EUTF8, 0);
  /* An error after a long ASCII run (the fast path) is found at the right offset. */
  CHECK_UTF8("0123456789abcdefghij\xFFz", CP_EUTF8, 20);
  CHECK_UTF8("0123456789abcdefg\xC3\xA9", 0, 0);
  /* The length counts, not the NUL: an error beyond len is not seen. */
  check_utf8("ok\xFF", 2, 0, 0);
  assert_int_equal(cp_utf8_check("\xFF", 1, NULL), CP_EUTF8);
}

static void counting_units(void **state) {
  /* "é" as e + combining acute: two code points, one grapheme. */
  assert_int_equal(cp_text_codepoints("e\xCC\x81"), 2);
  assert_int_equal(cp_text_graphemes("e\xCC\x81"), 1);
  /* Family (man ZWJ woman ZWJ girl ZWJ boy), two flags, a skin tone. */
  const char *family = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7"
                       "\xE2\x80\x8D\xF0\x9F\x91\xA6";
  assert_int_equal(cp_text_graphemes(family), 1);
  assert_int_equal(cp_text_codepoints(family), 7);
  assert_int_equal(
      cp_text_graphemes("\xF0\x9F\x87\xA9\xF0\x9F\x87\xAA\xF0\x9F\x87\xAB\xF0\x9F\x87\xB7"), 2);
  assert_int_equal(cp_text_graphemes("\xF0\x9F\x91\x8B\xF0\x9F\x8F\xBD!"), 2);
  assert_int_equal(cp_text_graphemes(""), 0);
  assert_int_equal(cp_text_graphemes("line\r\nnext"), 9); /* CR LF is one cluster */
  /* UTF-16: an emoji outside the BMP is two units. */
  assert_int_equal(cp_text_utf16_len("a\xF0\x9F\x98\x80\xC3\xA9"), 4);
}

struct x_vector {
  const char *text;
  size_t want;
};

static void x_conformance(void **state) {
  const struct x_vector v[] = {
      {"Hi http://test.co", 26},
      {"http://test.co", 23},
      {"H\xF0\x9F\x90\xB1\xE2\x98\xBA\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0"
       "\x9F"
       "\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6",
       7},
      {"\xF0\x9F\x98\xB7\xF0\x9F\x91\xBE\xF0\x9F\x98\xA1\xF0\x9F\x94\xA5\xF0\x9F\x92\xA9", 10},
      {"\xF0\x9F\x99\x8B\xF0\x9F\x8F\xBD\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x8E\xA4", 4},
      /* 'Á' as A + U+0301 is normalized into 1 char. */
      {"A\xCC\x81"
       "B",
       2},
      /* U+FB2C normalizes into 3 Hebrew code points of weight 1. */
      {"A\xEF\xAC\xAC", 4},
      {"This is a tweet with general punctuation characters: "
       "\xE2\x80\x80\xE2\x80\x81\xE2\x80\x82\xE2\x80\x83\xE2\x80\x84\xE2\x80\x85\xE2\x80\x86"
       "\xE2\x80\x87\xE2\x80\x88\xE2\x80\x89\xE2\x80\x8A\xE2\x80\x8B "
       "\xE2\x80\x90 \xE2\x80\x91 \xE2\x80\x92 \xE2\x80\x93 \xE2\x80\x94 \xE2\x80\x95 \xE2\x80\x96 "
       " \xE2\x80\x97 \xE2\x80\x98 \xE2\x80\x99 \xE2\x80\x9A \xE2\x80\x9B \xE2\x80\x9C "
       "\xE2\x80\x9D "
       "\xE2\x80\x9E \xE2\x80\x9F \xE2\x80\xB2 \xE2\x80\xB3 \xE2\x80\xB4 \xE2\x80\xB5 \xE2\x80\xB6 "
       "\xE2\x80\xB7",
       110},
      {"Unicode 10.0 emoji: \xF0\x9F\xA4\xAA; \xF0\x9F\xA7\x95; \xF0\x9F\xA7\x95\xF0\x9F\x8F\xBE; "
       "\xF0\x9F\x8F\xB4\xF3\xA0\x81\xA7\xF3\xA0\x81\xA2\xF3\xA0\x81\xA5\xF3\xA0\x81\xAE\xF3\xA0"
       "\x81"
       "\xA7\xF3\xA0\x81\xBF",
       34},
      {"Unicode 9.0 emoji: \xF0\x9F\xA4\xA0; \xF0\x9F\x92\x83; \xF0\x9F\x92\x83\xF0\x9F\x8F\xBE",
       29},
      /* Directional marks around a URL with an Arabic TLD. */
      {"\xE2\x81\xA6\xE2\x80\xAAhttp://"
       "foobar.\xD9\xBE\xD8\xA7\xDA\xA9\xD8\xB3\xD8\xAA\xD8\xA7\xD9\x86/"
       "\xE2\x80\xAC\xE2\x81\xA9",
       31},
      {"285 chars- http://www.twitter.com/jack xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-"
       "xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-"
       "xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-"
       "xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-xxxxxxxxxx-",
       299},
      {"\xE7\x9A\x84the", 5}, /* CJK weighs 2 */
  };
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    size_t got = cp_text_x_len(v[i].text);
    if (got != v[i].want)
      print_message("X vector %zu: \"%s\"\n", i, v[i].text);
    assert_int_equal(got, v[i].want);
  }
  assert_int_equal(cp_text_x_len(repeat("https://www.twitter.com/aloha ", 10)), 240);
  assert_int_equal(cp_text_x_len(repeat("\xF0\x9F\x98\xB7", 160)), 320); /* emoji */
  assert_int_equal(cp_text_x_len(repeat("\xE6\x95\x85", 160)), 320);     /* CJK */
  assert_int_equal(cp_text_x_len(repeat("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D"
                                        "\xF0\x9F\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6",
                                        140)),
                   280); /* "140 family emoji" */
  assert_int_equal(cp_text_x_len(repeat("xxxxxxxxxx-", 28)), 308);
  assert_int_equal(cp_text_x_len(""), 0);
}

static void x_emoji_edge_cases(void **state) {
  assert_int_equal(cp_text_x_len("1\xE2\x83\xA3"), 2);                    /* keycap without FE0F */
  assert_int_equal(cp_text_x_len("1\xEF\xB8\x8F\xE2\x83\xA3"), 2);        /* keycap */
  assert_int_equal(cp_text_x_len("\xF0\x9F\x87\xA9\xF0\x9F\x87\xAA"), 2); /* flag */
  assert_int_equal(cp_text_x_len("\xC2\xA9"), 1);                 /* text-style copyright sign */
  assert_int_equal(cp_text_x_len("\xC2\xA9\xEF\xB8\x8F"), 2);     /* emoji-style copyright sign */
  assert_int_equal(cp_text_x_len("\xE2\x9D\xA4\xEF\xB8\x8F"), 2); /* red heart with VS16 */
}

static void mastodon_counting(void **state) {
  /* Graphemes; a URL is 23 whatever its length; a remote mention counts as "@user". */
  assert_int_equal(cp_text_mastodon_len("Hello", 23), 5);
  assert_int_equal(
      cp_text_mastodon_len("Read https://example.com/a/very/long/path/that/goes/on/and/on.", 23),
      5 + 23 + 1);
  assert_int_equal(cp_text_mastodon_len("https://e.com", 23), 23);
  assert_int_equal(cp_text_mastodon_len("https://e.com", 30), 30);
  assert_int_equal(cp_text_mastodon_len("Hi @alice@example.social!", 23), 3 + 6 + 1);
  assert_int_equal(cp_text_mastodon_len("Hi @alice!", 23), 10);
  /* Not mentions: an e-mail address and an "=@" in a query. */
  assert_int_equal(cp_text_mastodon_len("mail bob@example.org", 23), 20);
  assert_int_equal(cp_text_mastodon_len("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D"
                                        "\xF0\x9F\x91\xA7 ok",
                                        23),
                   4);
}

static void find_urls(void **state) {
  const char *text = "See https://example.com/a_(b)). Or (http://x.org/path). "
                     "\"https://q.com/x?y=1&z=2\", HTTPS://E.com/\xD1\x80\xD1\x83!  "
                     "xhttps://no.com https:// https://ok.com/\xE8\xA6\x8B";
  const char *want[] = {"https://example.com/a_(b)", "http://x.org/path", "https://q.com/x?y=1&z=2",
                        "HTTPS://E.com/\xD1\x80\xD1\x83", "https://ok.com/"};
  const char *p = text;
  size_t len = 0, i = 0;
  while ((p = cp_text_find_url(p, &len)) != NULL) {
    assert_true(i < 5);
    assert_int_equal(len, strlen(want[i]));
    assert_memory_equal(p, want[i], len);
    p += len;
    i++;
  }
  assert_int_equal(i, 5);
  assert_null(cp_text_find_url("no links, example.com is bare", &len));
}

static void limits(void **state) {
  size_t count = 0;
  struct cp_text_limit lim;

  assert_true(cp_text_fits("bluesky", repeat("a", 300), 0, &count, &lim));
  assert_int_equal(count, 300);
  assert_int_equal(lim.max, 300);
  assert_string_equal(lim.unit, "graphemes");
  assert_false(cp_text_fits("bluesky", repeat("a", 301), 0, &count, &lim));
  assert_int_equal(count, 301);

  /* 200 family emoji: 200 graphemes, but 5000 bytes (Bluesky: "string too big"). */
  const char *families = repeat("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F"
                                "\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6",
                                200);
  assert_false(cp_text_fits("bluesky", families, 0, &count, &lim));
  assert_int_equal(count, 5000);
  assert_int_equal(lim.max, 3000);
  assert_string_equal(lim.unit, "bytes");

  assert_true(cp_text_fits("x", repeat("xxxxxxxxxx-", 25), 0, &count, &lim));
  assert_int_equal(count, 275);
  assert_string_equal(lim.unit, "weighted characters");
  assert_false(cp_text_fits("x", repeat("\xE6\x95\x85", 141), 0, &count, &lim));
  assert_int_equal(count, 282);

  assert_false(cp_text_fits("mastodon", repeat("a", 501), 0, &count, &lim));
  assert_int_equal(lim.max, 500);
  assert_true(cp_text_fits("mastodon", repeat("a", 501), 1000, &count, &lim));
  assert_int_equal(lim.max, 1000);

  /* Telegram counts UTF-16 units: 2049 emoji are 4098 units. */
  assert_false(cp_text_fits("telegram", repeat("\xF0\x9F\x98\x80", 2049), 0, &count, &lim));
  assert_int_equal(count, 4098);
  assert_true(cp_text_fits("telegram", repeat("\xF0\x9F\x98\x80", 2048), 0, &count, &lim));

  assert_true(cp_text_fits("linkedin", repeat("\xC3\xA9", 3000), 0, &count, &lim));
  assert_false(cp_text_fits("linkedin", repeat("\xC3\xA9", 3001), 0, &count, &lim));
  assert_false(cp_text_fits("discord", repeat("a", 2001), 0, &count, &lim));
  assert_int_equal(lim.max, 2000);
  assert_false(cp_text_fits("threads", repeat("a", 501), 0, &count, &lim));

  /* No limit for webhooks, e-mail and unknown types. */
  assert_true(cp_text_fits("webhook", repeat("a", 9000), 0, &count, &lim));
  assert_int_equal(lim.max, 0);
  assert_int_equal(count, 9000);
  assert_true(cp_text_fits("email", "x", 0, NULL, NULL));
}

/* Joins parts with single spaces and collapses white space in text, to compare the words. */
static char *words(const char *s) {
  char *out = malloc(strlen(s) + 1), *o = out;
  bool space = false;
  for (; *s; s++) {
    if (*s == ' ' || *s == '\n' || *s == '\t') {
      space = o != out;
      continue;
    }
    if (space)
      *o++ = ' ';
    space = false;
    *o++ = *s;
  }
  *o = '\0';
  return out;
}

static void split_keeps_every_word_within_the_limit(void **state) {
  char text[4096] = "";
  for (int i = 0; i < 60; i++)
    strcat(text, i % 7 == 6 ? "Sätze enden hier. " : "Ein Wort mehr ");
  strcat(text,
         "\n\nAnd a last paragraph with a link https://example.org/a/very/long/path?x=1 end.");
  char **parts;
  size_t n;
  assert_int_equal(cp_text_split(text, 120, CP_COUNT_GRAPHEMES, false, &parts, &n), 0);
  assert_true(n >= 7);
  char joined[8192] = "";
  for (size_t i = 0; i < n; i++) {
    assert_true(cp_text_graphemes(parts[i]) <= 120);
    assert_true(parts[i][0] != ' ' && parts[i][strlen(parts[i]) - 1] != ' ');
    strcat(joined, parts[i]);
    strcat(joined, " ");
    if (strstr(parts[i], "https://example.org")) /* the URL is never cut */
      assert_non_null(strstr(parts[i], "https://example.org/a/very/long/path?x=1"));
  }
  char *a = words(text), *b = words(joined);
  assert_string_equal(a, b);
  free(a);
  free(b);
  /* Sentence ends are preferred to other spaces: the first part ends a sentence. */
  assert_int_equal(parts[0][strlen(parts[0]) - 1], '.');
  cp_text_split_free(parts, n);
}

/* URLs count 23 on Mastodon however long they are: a part can hold many more bytes than its
 * budget, and the split still fills parts (three long links a part here), never cuts a link and
 * keeps every word, on a text of 1,000 links. */
static void split_fills_parts_with_long_links(void **state) {
  (void)state;
  size_t cap = 1000 * 230 + 1, len = 0;
  char *text = malloc(cap);
  assert_non_null(text);
  text[0] = '\0';
  for (int i = 0; i < 1000; i++)
    len += (size_t)snprintf(text + len, cap - len, "see https://example.org/%04d/%0180d ok ", i, 0);
  char **parts;
  size_t n;
  assert_int_equal(cp_text_split(text, 100, CP_COUNT_MASTODON, false, &parts, &n), 0);
  assert_true(n <= 1000 / 3 + 1);
  size_t jcap = len + n + 1, jl = 0;
  char *joined = malloc(jcap);
  assert_non_null(joined);
  for (size_t i = 0; i < n; i++) {
    assert_true(cp_text_mastodon_len(parts[i], 23) <= 100);
    jl += (size_t)snprintf(joined + jl, jcap - jl, "%s ", parts[i]);
    for (const char *u = parts[i]; (u = strstr(u, "https://")); u += 8)
      assert_true(strlen(u) >= 8 + 12 + 180 + 1); /* the whole link is in this part */
  }
  char *a = words(text), *b = words(joined);
  assert_string_equal(a, b);
  free(a);
  free(b);
  free(joined);
  free(text);
  cp_text_split_free(parts, n);
}

static void split_numbers_parts_within_the_limit(void **state) {
  char text[8192] = "";
  for (int i = 0; i < 200; i++)
    strcat(text, "word ");
  char **parts;
  size_t n;
  assert_int_equal(cp_text_split(text, 50, CP_COUNT_X, true, &parts, &n), 0);
  assert_true(n >= 10); /* two-digit numbering was reserved */
  char want[32];
  for (size_t i = 0; i < n; i++) {
    assert_true(cp_text_x_len(parts[i]) <= 50);
    snprintf(want, sizeof want, " %zu/%zu", i + 1, n);
    assert_string_equal(parts[i] + strlen(parts[i]) - strlen(want), want);
  }
  cp_text_split_free(parts, n);
}

static void split_text_that_fits_is_one_part(void **state) {
  char **parts;
  size_t n;
  assert_int_equal(
      cp_text_split("Short post https://example.org", 300, CP_COUNT_MASTODON, true, &parts, &n), 0);
  assert_int_equal(n, 1);
  assert_string_equal(parts[0], "Short post https://example.org");
  cp_text_split_free(parts, n);
  assert_int_equal(cp_text_split("abc def", 0, CP_COUNT_X, false, &parts, &n), CP_EINVAL);
  assert_int_equal(cp_text_split("abcdefgh ijk", 4, CP_COUNT_X, true, &parts, &n), CP_EINVAL);
}

static void split_cuts_a_long_word_at_graphemes(void **state) {
  /* 30 family emoji (one grapheme each, many code points): cut between clusters only. */
  char text[2048] = "";
  for (int i = 0; i < 30; i++)
    strcat(text, "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7");
  char **parts;
  size_t n;
  assert_int_equal(cp_text_split(text, 7, CP_COUNT_GRAPHEMES, false, &parts, &n), 0);
  assert_int_equal(n, 5);
  for (size_t i = 0; i < n; i++)
    assert_true(cp_text_graphemes(parts[i]) <= 7);
  assert_int_equal(cp_text_graphemes(parts[4]), 2);
  cp_text_split_free(parts, n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(utf8_valid_and_invalid),
      cmocka_unit_test(counting_units),
      cmocka_unit_test(x_conformance),
      cmocka_unit_test(x_emoji_edge_cases),
      cmocka_unit_test(mastodon_counting),
      cmocka_unit_test(find_urls),
      cmocka_unit_test(limits),
      cmocka_unit_test(split_keeps_every_word_within_the_limit),
      cmocka_unit_test(split_fills_parts_with_long_links),
      cmocka_unit_test(split_numbers_parts_within_the_limit),
      cmocka_unit_test(split_text_that_fits_is_one_part),
      cmocka_unit_test(split_cuts_a_long_word_at_graphemes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
