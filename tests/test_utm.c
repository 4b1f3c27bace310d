/* UTM parameters on the links of a post. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "calpost/err.h"
#include "utm.h"

static char *apply(const char *text, const struct cp_utm *u) {
  char *out = NULL;
  assert_int_equal(cp_utm_apply(text, u, &out), 0);
  return out;
}

static void links_are_tagged_and_text_kept(void **state) {
  struct cp_utm u = {.source = "mastodon",
                     .medium = "social",
                     .campaign = "spring release",
                     .content = "3f9c2a7d41e0b6a1"};
  char *s = apply("New: https://example.org/blog/spring?ref=x#top and https://example.org.\n"
                  "Thanks!",
                  &u);
  assert_string_equal(
      s, "New: https://example.org/blog/spring?ref=x&utm_source=mastodon&utm_medium=social"
         "&utm_campaign=spring+release&utm_content=3f9c2a7d41e0b6a1#top and "
         "https://example.org/?utm_source=mastodon&utm_medium=social&utm_campaign=spring+release"
         "&utm_content=3f9c2a7d41e0b6a1.\nThanks!");
  free(s);
  s = apply("no links here, only example.org", &u);
  assert_string_equal(s, "no links here, only example.org");
  free(s);
}

static void only_listed_domains_and_existing_params_kept(void **state) {
  static const char *const domains[] = {"example.org"};
  struct cp_utm u = {.source = "x", .medium = "social", .domains = domains, .n_domains = 1};
  char *s = apply("https://blog.example.org/a https://other.net/b https://notexample.org/c "
                  "https://example.org/d?utm_source=newsletter",
                  &u);
  assert_string_equal(s, "https://blog.example.org/a?utm_source=x&utm_medium=social "
                         "https://other.net/b https://notexample.org/c "
                         "https://example.org/d?utm_source=newsletter&utm_medium=social");
  free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(links_are_tagged_and_text_kept),
      cmocka_unit_test(only_listed_domains_and_existing_params_kept),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
