// ctest-connector: x
/* OAuth 1.0a signing (connectors/x/oauth1.c) against published vectors: X's "Creating a
 * signature" example, RFC 5849 sections 1.2 and 3.4.1.1 (with the secrets of Errata 2550), OAuth
 * Core 1.0 Appendix A.5 (CONNECTORS-NOTES section 3 recomputed each), and percent-encoding edge
 * cases (RFC 5849 3.6). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "calpost/err.h"

#ifdef CP_BUILTIN_X

#include "../connectors/x/oauth1.h"

/* ---- X's documented example ----------------------------------------------------------------- */

#define X_CK "xvz1evFS4wEEPTGEFPHBog"
#define X_CS "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw"
#define X_TOKEN "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb"
#define X_TS "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE"
#define X_NONCE "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"
#define X_STATUS "Hello Ladies + Gentlemen, a signed OAuth request!"

static void x_example_base_string(void **state) {
  const struct cp_oauth1_param params[] = {
      {"status", X_STATUS},
      {"oauth_consumer_key", X_CK},
      {"oauth_nonce", X_NONCE},
      {"oauth_signature_method", "HMAC-SHA1"},
      {"oauth_timestamp", "1318622958"},
      {"oauth_token", X_TOKEN},
      {"oauth_version", "1.0"},
  };
  char *base = NULL;
  assert_int_equal(cp_oauth1_base_string(
                       "post",
                       "https://api.twitter.com/1.1/statuses/update.json?include_entities=true",
                       params, sizeof params / sizeof params[0], &base),
                   0);
  assert_string_equal(
      base, "POST&https%3A%2F%2Fapi.twitter.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities%"
            "3Dtrue%26oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%"
            "3DkYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg%26oauth_signature_method%3DHMAC-SHA1%"
            "26oauth_timestamp%3D1318622958%26oauth_token%3D370773112-"
            "GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb%26oauth_version%3D1.0%26status%3DHello%"
            "2520Ladies%2520%252B%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520request%"
            "2521");
  char sig[CP_OAUTH1_SIG_SIZE];
  assert_int_equal(cp_oauth1_signature(X_CS, X_TS, base, sig), 0);
  assert_string_equal(sig, "hCtSmYh+iHYCEqBWrE7C7hYmtUk=");
  free(base);
}

static void x_example_header(void **state) {
  const struct cp_oauth1_creds creds = {X_CK, X_CS, X_TOKEN, X_TS};
  const struct cp_oauth1_param body[] = {{"status", X_STATUS}};
  char *h = NULL, sig[CP_OAUTH1_SIG_SIZE];
  assert_int_equal(cp_oauth1_authorization(
                       &creds, "POST",
                       "https://api.twitter.com/1.1/statuses/update.json?include_entities=true",
                       body, 1, X_NONCE, "1318622958", "1.0", &h, sig),
                   0);
  assert_string_equal(sig, "hCtSmYh+iHYCEqBWrE7C7hYmtUk=");
  /* The header of X's "Authorizing a request" page, with the signature that the documented
   * inputs give (CONNECTORS-NOTES 3.1: the page's own signature does not reproduce). The body
   * parameter is signed but is not part of the header. */
  assert_string_equal(h, "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", "
                         "oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", "
                         "oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\", "
                         "oauth_signature_method=\"HMAC-SHA1\", "
                         "oauth_timestamp=\"1318622958\", "
                         "oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", "
                         "oauth_version=\"1.0\"");
  free(h);

  /* The same request to today's host signs differently: the host is part of the base string. */
  assert_int_equal(
      cp_oauth1_authorization(&creds, "POST",
                              "https://api.x.com/1.1/statuses/update.json?include_entities=true",
                              body, 1, X_NONCE, "1318622958", "1.0", &h, sig),
      0);
  assert_string_equal(sig, "Ls93hJiZbQ3akF3HF3x1Bz8/zU4=");
  free(h);
}

/* ---- RFC 5849 ------------------------------------------------------------------------------- */

#define RFC_CK "dpf43f3p2l4k3l03"
#define RFC_CS "kd94hf93k423kf44"

static void rfc5849_temporary_credentials(void **state) {
  const struct cp_oauth1_creds creds = {RFC_CK, RFC_CS, NULL, NULL};
  const struct cp_oauth1_param extra[] = {{"oauth_callback", "http://printer.example.com/ready"}};
  char *h = NULL, sig[CP_OAUTH1_SIG_SIZE];
  assert_int_equal(cp_oauth1_authorization(&creds, "POST", "https://photos.example.net/initiate",
                                           extra, 1, "wIjqoS", "137131200", NULL, &h, sig),
                   0);
  assert_string_equal(sig, "74KNZJeDHnMBp0EMJ9ZHt/XKycU=");
  /* oauth_* parameters given by the caller go into the header too; no token, no version. */
  assert_string_equal(h, "OAuth oauth_callback=\"http%3A%2F%2Fprinter.example.com%2Fready\", "
                         "oauth_consumer_key=\"dpf43f3p2l4k3l03\", oauth_nonce=\"wIjqoS\", "
                         "oauth_signature=\"74KNZJeDHnMBp0EMJ9ZHt%2FXKycU%3D\", "
                         "oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"137131200\"");
  free(h);
}

static void rfc5849_token_credentials(void **state) {
  const struct cp_oauth1_creds creds = {RFC_CK, RFC_CS, "hh5s93j4hdidpola", "hdhd0244k9j7ao03"};
  const struct cp_oauth1_param extra[] = {{"oauth_verifier", "hfdp7dh39dks9884"}};
  char *h = NULL, sig[CP_OAUTH1_SIG_SIZE];
  assert_int_equal(cp_oauth1_authorization(&creds, "POST", "https://photos.example.net/token",
                                           extra, 1, "walatlh", "137131201", NULL, &h, sig),
                   0);
  assert_string_equal(sig, "gKgrFCywp7rO0OXSjdot/IHF7IU=");
  assert_non_null(strstr(h, "oauth_verifier=\"hfdp7dh39dks9884\""));
  assert_non_null(strstr(h, "oauth_token=\"hh5s93j4hdidpola\""));
  free(h);
}

static void rfc5849_resource_with_query(void **state) {
  const struct cp_oauth1_creds creds = {RFC_CK, RFC_CS, "nnch734d00sl2jdk", "pfkkdhi9sl3r4s00"};
  char *h = NULL, sig[CP_OAUTH1_SIG_SIZE];
  assert_int_equal(
      cp_oauth1_authorization(&creds, "GET",
                              "http://photos.example.net/photos?file=vacation.jpg&size=original",
                              NULL, 0, "chapoH", "137131202", NULL, &h, sig),
      0);
  assert_string_equal(sig, "MdpQcU8iPSUjWoN/UDMsK2sui9I=");
  /* Query parameters are signed, not repeated in the header. */
  assert_null(strstr(h, "vacation"));
  free(h);

  /* OAuth Core 1.0 Appendix A.5: the same request with oauth_version=1.0. */
  assert_int_equal(
      cp_oauth1_authorization(&creds, "GET",
                              "http://photos.example.net/photos?file=vacation.jpg&size=original",
                              NULL, 0, "kllo9940pd9333jh", "1191242096", "1.0", &h, sig),
      0);
  assert_string_equal(sig, "tR3+Ty81lMeYAr/Fid0kMTYa/WM=");
  free(h);
}

/* RFC 5849 3.4.1.1: repeated names, empty values, '+' and %20 as spaces, double encoding. */
static void rfc5849_base_string_normalization(void **state) {
  const struct cp_oauth1_param params[] = {
      {"c2", ""}, /* the body "c2&a3=2+q", form-decoded */
      {"a3", "2 q"},
      {"oauth_consumer_key", "9djdj82h48djs9d2"},
      {"oauth_token", "kkk9d7dh3k39sjv7"},
      {"oauth_signature_method", "HMAC-SHA1"},
      {"oauth_timestamp", "137131201"},
      {"oauth_nonce", "7d8f3e4a"},
  };
  char *base = NULL, sig[CP_OAUTH1_SIG_SIZE];
  assert_int_equal(
      cp_oauth1_base_string("POST", "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
                            params, sizeof params / sizeof params[0], &base),
      0);
  assert_string_equal(
      base, "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%"
            "253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_"
            "nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%"
            "3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7");
  /* Errata 2550 gives the secrets the RFC's example left out. */
  assert_int_equal(cp_oauth1_signature("j49sk3j29djd", "dh893hdasih9", base, sig), 0);
  assert_string_equal(sig, "r6/TJjbCOr97/+UU0NsvSne7s5g=");
  free(base);

  /* The same with the body parameters in the query instead ('+' decodes to a space there too). */
  assert_int_equal(
      cp_oauth1_base_string("POST",
                            "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b&c2&a3=2+q",
                            params + 2, 5, &base),
      0);
  assert_string_equal(
      base, "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%"
            "253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_"
            "nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%"
            "3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7");
  free(base);
}

/* RFC 5849 3.4.1.2: scheme and host in lower case, default ports dropped, others kept. */
static void base_string_uri(void **state) {
  static const struct {
    const char *url, *want;
  } cases[] = {
      {"HTTPS://API.Example.COM:443/2/tweets", "GET&https%3A%2F%2Fapi.example.com%2F2%2Ftweets&"},
      {"http://EXAMPLE.com:80/r%20v/X?", "GET&http%3A%2F%2Fexample.com%2Fr%2520v%2FX&"},
      {"http://127.0.0.1:8080/2/users/me", "GET&http%3A%2F%2F127.0.0.1%3A8080%2F2%2Fusers%2Fme&"},
      {"https://example.net:8443", "GET&https%3A%2F%2Fexample.net%3A8443%2F&"},
      {"https://example.net/a#frag", "GET&https%3A%2F%2Fexample.net%2Fa&"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *base = NULL;
    assert_int_equal(cp_oauth1_base_string("get", cases[i].url, NULL, 0, &base), 0);
    assert_string_equal(base, cases[i].want);
    free(base);
  }
  char *base = (char *)"untouched";
  assert_int_equal(cp_oauth1_base_string("GET", "not a url", NULL, 0, &base), CP_EINVAL);
  assert_null(base);
}

/* ---- percent-encoding (RFC 5849 3.6) -------------------------------------------------------- */

static void percent_encoding(void **state) {
  static const struct {
    const char *in;
    size_t len;
    const char *want;
  } cases[] = {
      {"Ladies + Gentlemen", 0, "Ladies%20%2B%20Gentlemen"},
      {"An encoded string!", 0, "An%20encoded%20string%21"},
      {"Dogs, Cats & Mice", 0, "Dogs%2C%20Cats%20%26%20Mice"},
      {"\xe2\x98\x83", 0, "%E2%98%83"}, /* ☃: UTF-8 bytes, upper-case hex */
      {"caf\xc3\xa9 \xf0\x9f\x9a\x80", 0, "caf%C3%A9%20%F0%9F%9A%80"},
      {"AZaz09-._~", 0, "AZaz09-._~"}, /* unreserved: kept */
      {":/?#[]@!$&'()*+,;=", 0, "%3A%2F%3F%23%5B%5D%40%21%24%26%27%28%29%2A%2B%2C%3B%3D"},
      {"%41 100%", 0, "%2541%20100%25"}, /* already-encoded text is encoded again */
      {"\"<>\\^`{|}", 0, "%22%3C%3E%5C%5E%60%7B%7C%7D"},
      {"\t\n\x7f", 0, "%09%0A%7F"},
      {"a\0b", 3, "a%00b"},
      {"", 0, ""},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    size_t len = cases[i].len ? cases[i].len : strlen(cases[i].in);
    char *out = cp_oauth1_encode(cases[i].in, len);
    assert_non_null(out);
    assert_string_equal(out, cases[i].want);
    free(out);
  }
}

/* Names and values are sorted after encoding, by byte value: upper case before lower case, and a
 * name or value with a reserved or non-ASCII character sorts by its %XX form. */
static void parameters_sort_by_encoded_bytes(void **state) {
  const struct cp_oauth1_param params[] = {
      {"b", "x"}, {"a", "z"}, {"a", "!"}, {"B", "1"}, {"a", "Z"}, {"\xc3\xa9", "\xc3\xa9"},
  };
  char *base = NULL;
  assert_int_equal(cp_oauth1_base_string("POST", "https://example.com/p", params, 6, &base), 0);
  /* %C3%A9=%C3%A9 & B=1 & a=%21 & a=Z & a=z & b=x ('%' < 'B' < 'a'), then encoded again. */
  assert_string_equal(base, "POST&https%3A%2F%2Fexample.com%2Fp&%25C3%25A9%3D%25C3%25A9%26B%3D1%"
                            "26a%3D%2521%26a%3DZ%26a%3Dz%26b%3Dx");
  free(base);
}

static void nonces_are_fresh_hex(void **state) {
  char a[CP_OAUTH1_NONCE_SIZE], b[CP_OAUTH1_NONCE_SIZE];
  assert_int_equal(cp_oauth1_nonce(a), 0);
  assert_int_equal(cp_oauth1_nonce(b), 0);
  assert_int_equal(strlen(a), 32);
  assert_int_equal(strspn(a, "0123456789abcdef"), 32);
  assert_string_not_equal(a, b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(x_example_base_string),
      cmocka_unit_test(x_example_header),
      cmocka_unit_test(rfc5849_temporary_credentials),
      cmocka_unit_test(rfc5849_token_credentials),
      cmocka_unit_test(rfc5849_resource_with_query),
      cmocka_unit_test(rfc5849_base_string_normalization),
      cmocka_unit_test(base_string_uri),
      cmocka_unit_test(percent_encoding),
      cmocka_unit_test(parameters_sort_by_encoded_bytes),
      cmocka_unit_test(nonces_are_fresh_hex),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the x connector is not built (CALPOST_CONNECTOR_X=OFF): skipped");
  return 0;
}
#endif
