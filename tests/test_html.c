/* HTML descriptions as Google Calendar and Outlook write them, turned into the text we post. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "calpost/text.h"

static void check(const char *html, const char *want) {
  char *got = cp_text_from_html(html);
  assert_non_null(got);
  assert_string_equal(got, want);
  free(got);
}

static void google_calendar_description(void **state) {
  /* As Google Calendar exports it: <br> for Enter, links wrapped in its redirector. */
  check("Join us!<br><br><b>Launch</b> day &amp; more: <a "
        "href=\"https://www.google.com/url?q=https://example.com/launch&amp;sa=D&amp;source="
        "calendar&amp;ust=1700000000000000&amp;usg=AOvVaw0\">https://example.com/launch</a><br>"
        "[bluesky]<br>Short one",
        "Join us!\n\nLaunch day & more: https://example.com/launch\n[bluesky]\nShort one");
}

static void google_lists_and_link_text(void **state) {
  check("Agenda:<ul><li>Intro by <i>Ana</i></li><li><u>Demo</u> of <a "
        "href=\"https://www.google.com/url?q=https%3A%2F%2Fexample.com%2Fdemo%3Fa%3D1%26b%3D2&amp;"
        "sa=D&amp;source=calendar\">the demo</a></li></ul>See&nbsp;you <span>there</span>!",
        "Agenda:\n- Intro by Ana\n- Demo of the demo (https://example.com/demo?a=1&b=2)\n"
        "See you there!");
  check("<ol><li>one</li><li>two<ul><li>sub</li></ul></li></ol>", "1. one\n2. two\n  - sub");
}

static void outlook_alt_desc(void **state) {
  /* An X-ALT-DESC as Outlook writes it: a Word document, one <p class=MsoNormal> per line, an
   * empty paragraph with &nbsp; for a blank line, source lines wrapped anywhere. */
  check("<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2//EN\">\r\n"
        "<html xmlns:o=\"urn:schemas-microsoft-com:office:office\">\r\n<head>\r\n"
        "<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n"
        "<meta name=\"Generator\" content=\"Microsoft Exchange Server\">\r\n"
        "<style><!--\r\np.MsoNormal\r\n\t{margin:0cm;\r\n\tfont-size:11.0pt;}\r\n--></style>\r\n"
        "</head>\r\n<body lang=EN-US link=\"#0563C1\" style='word-wrap:break-word'>\r\n"
        "<div class=WordSection1>\r\n"
        "<p class=MsoNormal>Hello team,<o:p></o:p></p>\r\n"
        "<p class=MsoNormal><o:p>&nbsp;</o:p></p>\r\n"
        "<p class=MsoNormal>The launch is on <b>Monday</b> at the Caf\xC3\xA9.\r\n"
        "Bring &quot;snacks&quot;.<o:p></o:p></p>\r\n"
        "<p class=MsoNormal>Details: <a "
        "href=\"https://example.com/launch\">https://example.com/launch</a><o:p></o:p></p>\r\n"
        "<p class=MsoNormal><o:p>&nbsp;</o:p></p>\r\n"
        "<p class=MsoNormal><o:p>&nbsp;</o:p></p>\r\n"
        "<p class=MsoNormal>[mastodon]<o:p></o:p></p>\r\n"
        "<p class=MsoNormal>Launch on Monday! #launch<o:p></o:p></p>\r\n"
        "</div>\r\n</body>\r\n</html>\r\n",
        "Hello team,\n\nThe launch is on Monday at the Caf\xC3\xA9. Bring \"snacks\".\n"
        "Details: https://example.com/launch\n\n[mastodon]\nLaunch on Monday! #launch");
}

static void blocks_and_blank_lines(void **state) {
  /* Ordinary paragraphs and headings have a margin: one blank line, never more. */
  check("<p>First para</p><p>Second <i>para</i></p><h2>Title</h2>text<br/>more",
        "First para\n\nSecond para\n\nTitle\n\ntext\nmore");
  check("<br><br>a<br><br><br><br>b  <br>&nbsp;<br><br>", "a\n\nb");
  check("<div>one</div><div>two</div><div><br></div><div>three</div>", "one\ntwo\n\nthree");
  check("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>", "a b\nc d");
  /* Newlines in a fragment are line breaks, as Google Calendar shows them. */
  check("Line one\nLine two<br><u>three</u>", "Line one\nLine two\nthree");
}

static void links(void **state) {
  check("<a href=\"mailto:x@example.com\">x@example.com</a>, <a "
        "href=\"https://example.com/\">example.com</a>, <a href=\"#top\">top</a>, "
        "<a href=\"https://example.com/x\"></a>",
        "x@example.com, https://example.com/, top, https://example.com/x");
  check("<a href=\"https://tickets.example.com/buy\">Get tickets</a> now",
        "Get tickets (https://tickets.example.com/buy) now");
  /* Outlook Safe Links are unwrapped too. */
  check("<a href=\"https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fexample.org"
        "%2Fa&amp;data=05%7C01\">Event page</a>",
        "Event page (https://example.org/a)");
  /* A redirector whose target is not a web link is left alone. */
  check("<a href=\"https://www.google.com/url?q=javascript:alert(1)&amp;sa=D\">x</a>",
        "x (https://www.google.com/url?q=javascript:alert(1)&sa=D)");
}

static void dropped_and_decoded(void **state) {
  check("<html><head><title>T</title><style>p{color:red}</style><script>var a = 1;</script>"
        "</head><body><p>It&#39;s &lt;fine&gt; &euro;5</p></body></html>",
        "It's <fine> \xE2\x82\xAC"
        "5");
  check("", "");
}

static void detection(void **state) {
  const char *html[] = {"x<br>y",
                        "x<br/>y",
                        "<BR />",
                        "<a href=\"https://e.com\">e</a>",
                        "<b>bold</b>",
                        "<p>para",
                        "<div class=\"x\">",
                        "<span>",
                        "<html>",
                        "<ul><li>a",
                        "<i>x</i>",
                        "<u>x</u>",
                        "Tom &amp; Jerry",
                        "a&nbsp;b",
                        "it&#39;s",
                        "&lt;3"};
  for (size_t i = 0; i < sizeof html / sizeof html[0]; i++) {
    if (!cp_text_looks_like_html(html[i]))
      print_message("not seen as HTML: %s\n", html[i]);
    assert_true(cp_text_looks_like_html(html[i]));
  }
  const char *plain[] = {"a < b",
                         "AT&T",
                         "I <3 you",
                         "x <= y && y >= z",
                         "<see below>",
                         "&foo; bar",
                         "Q&A at 5",
                         "Plain text\nwith lines",
                         ""};
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    if (cp_text_looks_like_html(plain[i]))
      print_message("seen as HTML: %s\n", plain[i]);
    assert_false(cp_text_looks_like_html(plain[i]));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(google_calendar_description),
      cmocka_unit_test(google_lists_and_link_text),
      cmocka_unit_test(outlook_alt_desc),
      cmocka_unit_test(blocks_and_blank_lines),
      cmocka_unit_test(links),
      cmocka_unit_test(dropped_and_decoded),
      cmocka_unit_test(detection),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
