/* OAuth 1.0a request signing (RFC 5849) with HMAC-SHA1, as X (Twitter) documents it for user
 * context: https://developer.x.com/en/docs/authentication/oauth-1-0a/creating-a-signature.
 *
 * Nonce and timestamp are parameters, so a signature can be recomputed (tests, the RFC's
 * examples); cp_oauth1_nonce makes a fresh nonce from the OpenSSL random generator. */
#ifndef CALPOST_OAUTH1_H
#define CALPOST_OAUTH1_H

#include <stddef.h>

/* A request parameter, not encoded: a form field of an application/x-www-form-urlencoded body,
 * or a protocol parameter such as oauth_callback or oauth_verifier. */
struct cp_oauth1_param {
  const char *name;
  const char *value;
};

struct cp_oauth1_creds {
  const char *consumer_key;
  const char *consumer_secret;
  const char *token;        /* NULL: none (a temporary-credentials request) */
  const char *token_secret; /* NULL: "" */
};

/* Base64 of a 20-byte HMAC-SHA1 is 28 characters. */
#define CP_OAUTH1_SIG_SIZE 32
#define CP_OAUTH1_NONCE_SIZE 33

/* Percent-encodes s[0..len) as RFC 5849 3.6 asks: every byte except ALPHA, DIGIT, '-', '.', '_'
 * and '~' becomes %XX with upper-case hex (UTF-8 text is encoded byte by byte). Returns a malloc'd
 * string, or NULL on ENOMEM. */
char *cp_oauth1_encode(const char *s, size_t len);

/* The signature base string (RFC 5849 3.4.1) of a request: method (upper-cased), the base string
 * URI of url (scheme and host in lower case, the port only if not the scheme's default, no query
 * or fragment), and the normalized parameters: those of url's query (form-decoded: '+' is a
 * space) and params[0..n), each encoded, sorted by name then value. params must hold the oauth_*
 * protocol parameters, but not oauth_signature or realm. Returns 0 and a malloc'd string in *out;
 * CP_EINVAL if url cannot be parsed; CP_ENOMEM. */
int cp_oauth1_base_string(const char *method, const char *url, const struct cp_oauth1_param *params,
                          size_t n, char **out);

/* Base64 of HMAC-SHA1 over base with the key encode(consumer_secret) "&" encode(token_secret)
 * (token_secret NULL: ""), into out. Returns 0 or CP_ENOMEM. */
int cp_oauth1_signature(const char *consumer_secret, const char *token_secret, const char *base,
                        char out[CP_OAUTH1_SIG_SIZE]);

/* Signs a request and returns its Authorization header value in *header (malloc'd):
 *   OAuth oauth_consumer_key="...", oauth_nonce="...", oauth_signature="...", ...
 * with the oauth_* parameters sorted by name and encoded. The signed parameters are the query of
 * url, extra[0..n_extra) (form fields of a urlencoded body; never those of a multipart or JSON
 * body) and the protocol parameters oauth_consumer_key, oauth_nonce, oauth_signature_method
 * (HMAC-SHA1), oauth_timestamp, oauth_token (if creds->token) and oauth_version (if version is not
 * NULL; X sends "1.0"). Entries of extra named oauth_* (oauth_callback, oauth_verifier) also go
 * into the header. If sig is not NULL the signature is copied there too. Returns 0; CP_EINVAL (bad
 * url); CP_ENOMEM. */
int cp_oauth1_authorization(const struct cp_oauth1_creds *creds, const char *method,
                            const char *url, const struct cp_oauth1_param *extra, size_t n_extra,
                            const char *nonce, const char *timestamp, const char *version,
                            char **header, char *sig);

/* A fresh nonce: 32 hex digits from RAND_bytes. Returns 0, or CP_ENOMEM if the generator fails. */
int cp_oauth1_nonce(char out[CP_OAUTH1_NONCE_SIZE]);

#endif
