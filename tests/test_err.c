#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "calpost/err.h"

static void names_and_messages(void **state) {
  assert_string_equal(cp_err_name(CP_EPARSE), "CP_EPARSE");
  assert_string_equal(cp_strerror(CP_EUTF8), "invalid UTF-8");
  assert_string_equal(cp_err_name(-ENOENT), "ENOENT");
  assert_string_equal(cp_strerror(-ENOENT), strerror(ENOENT));
  assert_string_equal(cp_strerror(-CP__EBASE - 500), "unknown error");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(names_and_messages)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
