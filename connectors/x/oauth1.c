/* OAuth 1.0a HMAC-SHA1 signing (RFC 5849 section 3), for the X connector. See oauth1.h. */
#include "oauth1.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "calpost/err.h"
#include "conn_util.h"

/* Appends encode(s[0..len)). */
static void buf_encode(struct cp_cu_buf *b, const char *s, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (isalnum(c) && c < 0x80) {
      char ch = (char)c;
      cp_cu_buf_add(b, &ch, 1);
    } else if (c == '-' || c == '.' || c == '_' || c == '~') {
      char ch = (char)c;
      cp_cu_buf_add(b, &ch, 1);
    } else {
      char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
      cp_cu_buf_add(b, esc, 3);
    }
  }
}

char *cp_oauth1_encode(const char *s, size_t len) {
  struct cp_cu_buf b = {0};
  buf_encode(&b, s, len);
  cp_cu_buf_add(&b, "", 0); /* "" encodes to "", which still needs an allocation */
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* ---- parameters ----------------------------------------------------------------------------- */

/* An encoded name=value pair. */
struct pair {
  char *name;
  char *value;
};

struct pairs {
  struct pair *v;
  size_t n, cap;
  bool oom;
};

/* Adds encode(name) = encode(value). */
static void pairs_add(struct pairs *ps, const char *name, size_t nlen, const char *value,
                      size_t vlen) {
  if (ps->oom)
    return;
  if (ps->n == ps->cap) {
    size_t cap = ps->cap ? 2 * ps->cap : 16;
    struct pair *v = realloc(ps->v, cap * sizeof *v);
    if (!v) {
      ps->oom = true;
      return;
    }
    ps->v = v;
    ps->cap = cap;
  }
  char *en = cp_oauth1_encode(name, nlen);
  char *ev = cp_oauth1_encode(value, vlen);
  if (!en || !ev) {
    free(en);
    free(ev);
    ps->oom = true;
    return;
  }
  ps->v[ps->n++] = (struct pair){en, ev};
}

static void pairs_free(struct pairs *ps) {
  for (size_t i = 0; i < ps->n; i++) {
    free(ps->v[i].name);
    free(ps->v[i].value);
  }
  free(ps->v);
}

/* RFC 5849 3.4.1.3.2: by name, then by value, in byte order of the encoded strings. */
static int pair_cmp(const void *a, const void *b) {
  const struct pair *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : strcmp(x->value, y->value);
}

/* Form-decodes s[0..len) ('+' is a space, then %XX) into a malloc'd string in *out and its
 * length in *olen. Returns 0 or CP_ENOMEM. */
static int form_decode(const char *s, size_t len, char **out, size_t *olen) {
  char *copy = malloc(len + 1);
  if (!copy)
    return CP_ENOMEM;
  for (size_t i = 0; i < len; i++)
    copy[i] = s[i] == '+' ? ' ' : s[i];
  copy[len] = '\0';
  int n = 0;
  /* libcurl ignores the handle here; it does the %XX decoding. */
  char *dec = curl_easy_unescape(NULL, copy, (int)len, &n);
  free(copy);
  if (!dec)
    return CP_ENOMEM;
  *out = malloc((size_t)n + 1);
  if (!*out) {
    curl_free(dec);
    return CP_ENOMEM;
  }
  memcpy(*out, dec, (size_t)n);
  (*out)[n] = '\0';
  *olen = (size_t)n;
  curl_free(dec);
  return 0;
}

/* Adds the parameters of an urlencoded query ("a=1&b=%20&c"). */
static int pairs_add_query(struct pairs *ps, const char *q) {
  while (*q) {
    size_t len = strcspn(q, "&");
    if (len) {
      const char *eq = memchr(q, '=', len);
      size_t nlen = eq ? (size_t)(eq - q) : len;
      const char *v = eq ? eq + 1 : q + len;
      size_t vlen = eq ? len - nlen - 1 : 0;
      char *name = NULL, *value = NULL;
      size_t dn = 0, dv = 0;
      if (form_decode(q, nlen, &name, &dn) || form_decode(v, vlen, &value, &dv)) {
        free(name);
        return CP_ENOMEM;
      }
      pairs_add(ps, name, dn, value, dv);
      free(name);
      free(value);
    }
    q += len;
    if (*q == '&')
      q++;
  }
  return ps->oom ? CP_ENOMEM : 0;
}

/* ---- base string ---------------------------------------------------------------------------- */

/* The base string URI (RFC 5849 3.4.1.2) of u into b. Returns 0 or CP_EINVAL / CP_ENOMEM. */
static int base_uri(CURLU *u, struct cp_cu_buf *b) {
  char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
  int err = CP_EINVAL;

  if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
    goto out;
  if (curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
    port = NULL; /* none given */
  for (char *p = scheme; *p; p++)
    *p = (char)tolower((unsigned char)*p);
  for (char *p = host; *p; p++)
    *p = (char)tolower((unsigned char)*p);
  cp_cu_buf_str(b, scheme);
  cp_cu_buf_str(b, "://");
  cp_cu_buf_str(b, host);
  bool dflt = port && ((!strcmp(scheme, "http") && !strcmp(port, "80")) ||
                       (!strcmp(scheme, "https") && !strcmp(port, "443")));
  if (port && !dflt) {
    cp_cu_buf_str(b, ":");
    cp_cu_buf_str(b, port);
  }
  cp_cu_buf_str(b, *path ? path : "/");
  err = b->oom ? CP_ENOMEM : 0;
out:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_free(path);
  return err;
}

int cp_oauth1_base_string(const char *method, const char *url, const struct cp_oauth1_param *params,
                          size_t n, char **out) {
  struct cp_cu_buf uri = {0}, norm = {0}, b = {0};
  struct pairs ps = {0};
  char *query = NULL;
  int err;

  *out = NULL;
  CURLU *u = curl_url();
  if (!u)
    return CP_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
    err = CP_EINVAL;
    goto out;
  }
  err = base_uri(u, &uri);
  if (err)
    goto out;
  if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK) {
    err = pairs_add_query(&ps, query);
    if (err)
      goto out;
  }
  for (size_t i = 0; i < n; i++)
    pairs_add(&ps, params[i].name, strlen(params[i].name), params[i].value,
              strlen(params[i].value));
  if (ps.oom) {
    err = CP_ENOMEM;
    goto out;
  }
  if (ps.n)
    qsort(ps.v, ps.n, sizeof *ps.v, pair_cmp);
  for (size_t i = 0; i < ps.n; i++) {
    if (i)
      cp_cu_buf_str(&norm, "&");
    cp_cu_buf_str(&norm, ps.v[i].name);
    cp_cu_buf_str(&norm, "=");
    cp_cu_buf_str(&norm, ps.v[i].value);
  }
  cp_cu_buf_add(&norm, "", 0);

  for (const char *m = method; *m; m++) {
    char c = (char)toupper((unsigned char)*m);
    cp_cu_buf_add(&b, &c, 1);
  }
  cp_cu_buf_str(&b, "&");
  buf_encode(&b, uri.p, uri.len);
  cp_cu_buf_str(&b, "&");
  buf_encode(&b, norm.p ? norm.p : "", norm.len);
  err = (b.oom || norm.oom) ? CP_ENOMEM : 0;
  if (!err) {
    *out = b.p;
    b.p = NULL;
  }
out:
  curl_free(query);
  curl_url_cleanup(u);
  pairs_free(&ps);
  free(uri.p);
  free(norm.p);
  free(b.p);
  return err;
}

/* ---- signature and header ------------------------------------------------------------------- */

int cp_oauth1_signature(const char *consumer_secret, const char *token_secret, const char *base,
                        char out[CP_OAUTH1_SIG_SIZE]) {
  struct cp_cu_buf key = {0};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;

  if (!token_secret)
    token_secret = "";
  buf_encode(&key, consumer_secret, strlen(consumer_secret));
  cp_cu_buf_str(&key, "&");
  buf_encode(&key, token_secret, strlen(token_secret));
  if (key.oom) {
    free(key.p);
    return CP_ENOMEM;
  }
  unsigned char *ok =
      HMAC(EVP_sha1(), key.p, (int)key.len, (const unsigned char *)base, strlen(base), md, &mdlen);
  OPENSSL_cleanse(key.p, key.len); /* it holds both secrets */
  free(key.p);
  if (!ok || mdlen != 20)
    return CP_ENOMEM;
  EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen); /* 28 characters and a NUL */
  return 0;
}

static int param_cmp(const void *a, const void *b) {
  const struct cp_oauth1_param *x = a, *y = b;
  return strcmp(x->name, y->name);
}

int cp_oauth1_authorization(const struct cp_oauth1_creds *creds, const char *method,
                            const char *url, const struct cp_oauth1_param *extra, size_t n_extra,
                            const char *nonce, const char *timestamp, const char *version,
                            char **header, char *sig) {
  char signature[CP_OAUTH1_SIG_SIZE] = "";
  char *base = NULL;
  struct cp_cu_buf h = {0};
  size_t n = 0;
  int err;

  *header = NULL;
  struct cp_oauth1_param *all = calloc(n_extra + 8, sizeof *all);
  if (!all)
    return CP_ENOMEM;
  for (size_t i = 0; i < n_extra; i++)
    all[n++] = extra[i];
  all[n++] = (struct cp_oauth1_param){"oauth_consumer_key", creds->consumer_key};
  all[n++] = (struct cp_oauth1_param){"oauth_nonce", nonce};
  all[n++] = (struct cp_oauth1_param){"oauth_signature_method", "HMAC-SHA1"};
  all[n++] = (struct cp_oauth1_param){"oauth_timestamp", timestamp};
  if (creds->token)
    all[n++] = (struct cp_oauth1_param){"oauth_token", creds->token};
  if (version)
    all[n++] = (struct cp_oauth1_param){"oauth_version", version};

  err = cp_oauth1_base_string(method, url, all, n, &base);
  if (!err)
    err = cp_oauth1_signature(creds->consumer_secret, creds->token_secret, base, signature);
  free(base);
  if (err)
    goto out;

  /* The header carries the protocol parameters only, the signature among them. */
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (!strncmp(all[i].name, "oauth_", 6))
      all[m++] = all[i];
  all[m++] = (struct cp_oauth1_param){"oauth_signature", signature};
  qsort(all, m, sizeof *all, param_cmp);
  cp_cu_buf_str(&h, "OAuth ");
  for (size_t i = 0; i < m; i++) {
    if (i)
      cp_cu_buf_str(&h, ", ");
    buf_encode(&h, all[i].name, strlen(all[i].name));
    cp_cu_buf_str(&h, "=\"");
    buf_encode(&h, all[i].value, strlen(all[i].value));
    cp_cu_buf_str(&h, "\"");
  }
  if (h.oom) {
    err = CP_ENOMEM;
    goto out;
  }
  *header = h.p;
  h.p = NULL;
  if (sig)
    memcpy(sig, signature, sizeof signature);
out:
  free(h.p);
  free(all);
  return err;
}

int cp_oauth1_nonce(char out[CP_OAUTH1_NONCE_SIZE]) {
  unsigned char r[16];
  if (RAND_bytes(r, sizeof r) != 1)
    return CP_ENOMEM;
  for (size_t i = 0; i < sizeof r; i++)
    snprintf(out + 2 * i, 3, "%02x", r[i]);
  return 0;
}
