/* The description format as editors write it: body, [channel] variants, [calpost] settings, and
 * the messages they see when something is wrong. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "calpost/post.h"
#include "calpost/text.h"

static struct cp_desc *parse(const char *text) {
  struct cp_desc *d = NULL;
  assert_int_equal(cp_desc_parse(text, &d), 0);
  assert_non_null(d);
  return d;
}

static const char *variant(const struct cp_desc *d, const char *channel) {
  for (size_t i = 0; i < d->n_variants; i++)
    if (strcmp(d->variants[i].channel, channel) == 0)
      return d->variants[i].text;
  return NULL;
}

static void check_diag(const struct cp_desc *d, size_t i, int line, bool error, const char *msg) {
  assert_true(i < d->n_diags);
  assert_int_equal(d->diags[i].line, line);
  assert_int_equal(d->diags[i].error, error);
  assert_string_equal(d->diags[i].msg, msg);
}

static void full_description(void **state) {
  struct cp_desc *d = parse("\n  Launch day! Join us at 10:00.\n"
                            "Tickets: https://example.com/t\n"
                            "\n"
                            "[Bluesky]\n"
                            "  Launch today \xF0\x9F\x9A\x80  \n"
                            "\n"
                            "[x]\n"
                            "Launch today.\n"
                            "Second line.\n"
                            "[calpost]\n"
                            "; editors' notes are comments\n"
                            "# so are these\n"
                            "channels = Bluesky, mastodon x  bluesky\n"
                            "media = img/launch.png | The team on stage\n"
                            "media = https://example.com/b.jpg\n"
                            "draft = No\n"
                            "thread = yes\n"
                            "numbered = ON\n"
                            "campaign = Spring launch\n");
  assert_string_equal(d->body, "Launch day! Join us at 10:00.\nTickets: https://example.com/t");
  assert_int_equal(d->n_variants, 2);
  assert_string_equal(d->variants[0].channel, "bluesky");
  assert_string_equal(d->variants[0].text, "Launch today \xF0\x9F\x9A\x80");
  assert_string_equal(variant(d, "x"), "Launch today.\nSecond line.");
  assert_int_equal(d->n_channels, 3);
  assert_string_equal(d->channels[0], "bluesky");
  assert_string_equal(d->channels[1], "mastodon");
  assert_string_equal(d->channels[2], "x");
  assert_int_equal(d->n_media, 2);
  assert_string_equal(d->media[0].src, "img/launch.png");
  assert_string_equal(d->media[0].alt, "The team on stage");
  assert_string_equal(d->media[1].src, "https://example.com/b.jpg");
  assert_null(d->media[1].alt);
  assert_int_equal(d->draft, 0);
  assert_int_equal(d->thread, 1);
  assert_int_equal(d->numbered, 1);
  assert_string_equal(d->campaign, "Spring launch");
  assert_int_equal(d->n_diags, 0);
  cp_desc_free(d);
}

static void plain_text_and_defaults(void **state) {
  /* Brackets that are not headers stay text; nothing set means -1 / NULL. */
  struct cp_desc *d = parse("Agenda [see below]\n[]\n[ x ]\n[a b]\n[-x]\nEnd\r\n");
  assert_string_equal(d->body, "Agenda [see below]\n[]\n[ x ]\n[a b]\n[-x]\nEnd");
  assert_int_equal(d->n_variants, 0);
  assert_null(d->channels);
  assert_int_equal(d->n_media, 0);
  assert_int_equal(d->draft, -1);
  assert_int_equal(d->thread, -1);
  assert_int_equal(d->numbered, -1);
  assert_null(d->campaign);
  assert_int_equal(d->n_diags, 0);
  cp_desc_free(d);

  d = parse("");
  assert_string_equal(d->body, "");
  cp_desc_free(d);

  /* Only variants: the body is empty, which is not an error here. */
  d = parse("[mastodon]\nToot\r\nline two\r\n[bluesky.social-2]\nSkeet");
  assert_string_equal(d->body, "");
  assert_string_equal(variant(d, "mastodon"), "Toot\nline two");
  assert_string_equal(variant(d, "bluesky.social-2"), "Skeet");
  assert_int_equal(d->n_diags, 0);
  cp_desc_free(d);
}

static void settings_edge_cases(void **state) {
  char long_alt[401];
  memset(long_alt, 'a', 400);
  long_alt[400] = '\0';
  char text[1200];
  snprintf(text, sizeof text,
           "Body\n[calpost]\n"
           "media = x.png | Alt; with semicolon\n"
           "media = y.png | Alt ; a comment after white space\n"
           "media = long.png | %s ; comment\n"
           "  draft = yes\n"
           "campaign = \n",
           long_alt);
  struct cp_desc *d = parse(text);
  assert_int_equal(d->n_media, 3);
  assert_string_equal(d->media[0].alt, "Alt; with semicolon");
  assert_string_equal(d->media[1].alt, "Alt");
  /* Longer than inih's line buffer, still complete. */
  assert_string_equal(d->media[2].src, "long.png");
  assert_string_equal(d->media[2].alt, long_alt);
  /* An indented line is a setting of its own, not a continuation of the previous one. */
  assert_int_equal(d->draft, 1);
  assert_null(d->campaign);
  assert_int_equal(d->n_diags, 0);
  cp_desc_free(d);
}

static void problems_are_reported(void **state) {
  struct cp_desc *d = parse("Body\n"                /* 1 */
                            "[calpost]\n"           /* 2 */
                            "thread = maybe\n"      /* 3 */
                            "media =  | only alt\n" /* 4 */
                            "colour = blue\n"       /* 5 */
                            "just some words\n"     /* 6 */
                            "[bluesky]\n"           /* 7 */
                            "\n"                    /* 8 */
                            "[mastodon]\n"          /* 9 */
                            "Toot\n"                /* 10 */
                            "[Mastodon]\n"          /* 11 */
                            "Other toot\n"          /* 12 */
                            "[calpost]\n"           /* 13 */
                            "draft = yes\n");       /* 14 */
  assert_string_equal(d->body, "Body");
  assert_int_equal(d->thread, -1);
  assert_int_equal(d->n_media, 0);
  assert_int_equal(d->draft, 1); /* the second [calpost] still counts */
  assert_int_equal(d->n_variants, 1);
  assert_string_equal(variant(d, "mastodon"), "Toot");
  assert_null(variant(d, "bluesky"));

  /* A setting calpost does not know is a post option for the connectors (check warns about it
   * when no channel of the event reads it). */
  assert_int_equal(d->n_options, 1);
  assert_string_equal(d->options[0].key, "colour");
  assert_int_equal(d->option_lines[0], 5);

  assert_int_equal(d->n_diags, 6);
  check_diag(d, 0, 3, true, "The setting 'thread' must be yes or no, not 'maybe'.");
  check_diag(d, 1, 4, true, "The 'media' setting needs a file name or URL before the '|'.");
  check_diag(d, 2, 6, false,
             "This line in [calpost] is not a setting, so it is ignored. Settings look like "
             "'name = value'.");
  check_diag(d, 3, 7, true,
             "Empty text for channel 'bluesky': write the post below [bluesky], or delete that "
             "line.");
  check_diag(d, 4, 11, true,
             "Duplicate [mastodon] section: only the first one is used, so merge the two or "
             "delete one.");
  check_diag(d, 5, 13, false,
             "A second [calpost] section: its settings are used too, but keep all settings in one "
             "[calpost] section.");
  cp_desc_free(d);
}

static void from_google_html(void **state) {
  /* The whole path an event takes: Google's HTML, converted, then parsed. */
  char *text = cp_text_from_html(
      "Join us!<br><br><b>Launch</b> day &amp; more: <a "
      "href=\"https://www.google.com/url?q=https://example.com/launch&amp;sa=D&amp;source=calendar"
      "\">https://example.com/launch</a><br>[bluesky]<br>Short one<br><br>[calpost]<br>"
      "channels = bluesky, mastodon<br>media = https://example.com/a.png | A rocket&nbsp;on a pad");
  assert_non_null(text);
  struct cp_desc *d = parse(text);
  assert_string_equal(d->body, "Join us!\n\nLaunch day & more: https://example.com/launch");
  assert_string_equal(variant(d, "bluesky"), "Short one");
  assert_int_equal(d->n_channels, 2);
  assert_int_equal(d->n_media, 1);
  assert_string_equal(d->media[0].alt, "A rocket on a pad");
  assert_int_equal(d->n_diags, 0);
  cp_desc_free(d);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(full_description),    cmocka_unit_test(plain_text_and_defaults),
      cmocka_unit_test(settings_edge_cases), cmocka_unit_test(problems_are_reported),
      cmocka_unit_test(from_google_html),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
