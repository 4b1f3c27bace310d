/* UTM parameters on links. See utm.h. */
#include "utm.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "calpost/err.h"
#include "calpost/text.h"

/* Whether host is domain or one of its subdomains (case-insensitive). */
static bool host_matches(const char *host, const char *domain) {
  size_t hl = strlen(host), dl = strlen(domain);
  if (hl < dl || strcasecmp(host + hl - dl, domain))
    return false;
  return hl == dl || host[hl - dl - 1] == '.';
}

/* Whether the query q already has parameter name (name=...). */
static bool has_param(const char *q, const char *name) {
  size_t n = strlen(name);
  for (const char *p = q; p && *p;) {
    if (!strncasecmp(p, name, n) && (p[n] == '=' || p[n] == '&' || !p[n]))
      return true;
    p = strchr(p, '&');
    if (p)
      p++;
  }
  return false;
}

/* The tagged form of url (malloc'd), or NULL to keep it as it is. */
static char *tag(const char *url, size_t len, const struct cp_utm *u) {
  char *copy = strndup(url, len);
  CURLU *h = curl_url();
  char *host = NULL, *query = NULL, *out = NULL;
  if (!copy || !h || curl_url_set(h, CURLUPART_URL, copy, 0) != CURLUE_OK ||
      curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    goto done;
  bool wanted = u->n_domains == 0;
  for (size_t i = 0; i < u->n_domains && !wanted; i++)
    wanted = host_matches(host, u->domains[i]);
  if (!wanted)
    goto done;
  if (curl_url_get(h, CURLUPART_QUERY, &query, 0) != CURLUE_OK)
    query = NULL;
  const struct {
    const char *name, *value;
  } params[] = {{"utm_source", u->source},
                {"utm_medium", u->medium},
                {"utm_campaign", u->campaign},
                {"utm_content", u->content}};
  bool changed = false;
  for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
    if (!params[i].value || !*params[i].value || has_param(query, params[i].name))
      continue;
    size_t n = strlen(params[i].name) + strlen(params[i].value) + 2;
    char *kv = malloc(n);
    if (!kv)
      goto done;
    snprintf(kv, n, "%s=%s", params[i].name, params[i].value);
    /* APPENDQUERY adds "&" as needed; URLENCODE escapes the value (spaces, '&', ...). */
    CURLUcode rc = curl_url_set(h, CURLUPART_QUERY, kv, CURLU_APPENDQUERY | CURLU_URLENCODE);
    free(kv);
    if (rc != CURLUE_OK)
      goto done;
    changed = true;
  }
  if (changed && curl_url_get(h, CURLUPART_URL, &out, 0) == CURLUE_OK) {
    char *mine = strdup(out);
    curl_free(out);
    out = mine;
  } else {
    out = NULL;
  }
done:
  curl_free(host);
  curl_free(query);
  curl_url_cleanup(h);
  free(copy);
  return out;
}

int cp_utm_apply(const char *text, const struct cp_utm *u, char **out) {
  size_t cap = strlen(text) + 1, len = 0;
  char *buf = malloc(cap);
  if (!buf)
    return CP_ENOMEM;
  const char *p = text;
  for (;;) {
    size_t ul;
    const char *url = cp_text_find_url(p, &ul);
    const char *stop = url ? url : p + strlen(p);
    char *tagged = url ? tag(url, ul, u) : NULL;
    size_t add = (size_t)(stop - p) + (url ? (tagged ? strlen(tagged) : ul) : 0);
    if (len + add + 1 > cap) {
      cap = (len + add + 1) * 2;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(tagged);
        free(buf);
        return CP_ENOMEM;
      }
      buf = nb;
    }
    memcpy(buf + len, p, (size_t)(stop - p));
    len += (size_t)(stop - p);
    if (!url)
      break;
    if (tagged) {
      memcpy(buf + len, tagged, strlen(tagged));
      len += strlen(tagged);
    } else {
      memcpy(buf + len, url, ul);
      len += ul;
    }
    free(tagged);
    p = url + ul;
  }
  buf[len] = '\0';
  *out = buf;
  return 0;
}
