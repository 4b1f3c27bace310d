/* Helpers shared by the built-in connectors. See conn_util.h. */
#include "conn_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <utf8proc.h>
#include <uv.h>

#include "calpost/err.h"
#include "connector_registry.h"

/* ---- a growing string ----------------------------------------------------------------------- */

void cp_cu_buf_add(struct cp_cu_buf *b, const char *s, size_t n) {
  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  if (n)
    memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void cp_cu_buf_str(struct cp_cu_buf *b, const char *s) {
  cp_cu_buf_add(b, s, strlen(s));
}

void cp_cu_buf_printf(struct cp_cu_buf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;

  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->oom = true;
    return;
  }
  if ((size_t)n < sizeof tmp) {
    cp_cu_buf_add(b, tmp, (size_t)n);
    return;
  }
  char *big = malloc((size_t)n + 1);
  if (!big) {
    b->oom = true;
    return;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  cp_cu_buf_add(b, big, (size_t)n);
  free(big);
}

void cp_cu_buf_html(struct cp_cu_buf *b, const char *s, size_t n, bool attr, const char *br) {
  for (size_t i = 0; i < n; i++) {
    switch (s[i]) {
      case '&':
        cp_cu_buf_str(b, "&amp;");
        break;
      case '<':
        cp_cu_buf_str(b, "&lt;");
        break;
      case '>':
        cp_cu_buf_str(b, "&gt;");
        break;
      case '"':
        cp_cu_buf_str(b, "&quot;");
        break;
      case '\'':
        cp_cu_buf_str(b, "&#39;");
        break;
      case '\r':
        if (i + 1 < n && s[i + 1] == '\n')
          break; /* the LF that follows makes the break */
        cp_cu_buf_str(b, attr ? " " : br);
        break;
      case '\n':
        cp_cu_buf_str(b, attr ? " " : br);
        break;
      default:
        cp_cu_buf_add(b, s + i, 1);
    }
  }
}

char *cp_cu_buf_take(struct cp_cu_buf *b) {
  cp_cu_buf_add(b, "", 0);
  char *p = b->oom ? NULL : b->p;
  if (b->oom)
    free(b->p);
  *b = (struct cp_cu_buf){0};
  return p;
}

/* ---- strings and text ------------------------------------------------------------------------ */

void cp_cu_scrub(char *s, const char *secret) {
  size_t sl = secret ? strlen(secret) : 0;
  if (sl < 3)
    return;
  for (char *p = strstr(s, secret); p; p = strstr(p + 3, secret)) {
    memmove(p + 3, p + sl, strlen(p + sl) + 1);
    memcpy(p, "***", 3);
  }
}

int cp_cu_parse_bool(const char *v) {
  static const char *const yes[] = {"yes", "true", "on", "1", NULL};
  static const char *const no[] = {"no", "false", "off", "0", NULL};
  for (size_t i = 0; yes[i]; i++)
    if (!strcasecmp(v, yes[i]))
      return 1;
  for (size_t i = 0; no[i]; i++)
    if (!strcasecmp(v, no[i]))
      return 0;
  return -1;
}

bool cp_cu_in_list(const char *s, const char *const *list) {
  for (size_t i = 0; list[i]; i++)
    if (!strcmp(s, list[i]))
      return true;
  return false;
}

size_t cp_cu_utf8_next(const char *p, int32_t *cp) {
  utf8proc_int32_t c;
  utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)p, -1, &c);
  if (n <= 0) {
    *cp = 0xFFFD;
    return 1;
  }
  *cp = c;
  return (size_t)n;
}

bool cp_cu_is_space(int32_t cp) {
  if (cp == ' ' || (cp >= '\t' && cp <= '\r'))
    return true;
  utf8proc_category_t c = utf8proc_category(cp);
  return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

int cp_cu_text_parts(const char *text, bool split, size_t limit, enum cp_count mode, bool numbered,
                     char ***parts, size_t *n) {
  *parts = NULL;
  *n = 0;
  if (split) {
    int err = cp_text_split(text, limit, mode, numbered, parts, n);
    if (err) {
      *parts = NULL;
      *n = 0;
    }
    return err;
  }
  char **one = malloc(sizeof *one);
  char *copy = strdup(text);
  if (!one || !copy) {
    free(one);
    free(copy);
    return CP_ENOMEM;
  }
  one[0] = copy;
  *parts = one;
  *n = 1;
  return 0;
}

/* ---- configuration (init) -------------------------------------------------------------------- */

long cp_cu_parse_timeout(const char *s, long max_ms) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || v <= 0)
    return -1;
  if (!strcmp(end, "ms"))
    return v > max_ms ? -1 : v;
  if ((*end && strcmp(end, "s")) || v > max_ms / 1000)
    return -1;
  return v * 1000;
}

bool cp_cu_loopback_host(const char *host, bool with_bare_v6) {
  return !strcmp(host, "localhost") || !strncmp(host, "127.", 4) || !strcmp(host, "[::1]") ||
         (with_bare_v6 && !strcmp(host, "::1"));
}

bool cp_cu_url_ok(const char *url, bool *is_http) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL;
  bool ok = false, http = false;

  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    http = !strcmp(scheme, "http");
    ok = !strcmp(scheme, "https") || (http && cp_cu_loopback_host(host, false));
  }
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  if (is_http)
    *is_http = http;
  return ok;
}

int cp_cu_conf_secret(const struct cp_host *host, const struct cp_connector_conf *conf,
                      const char *key, const char *needs, char **out) {
  int err = host->secret(host, conf, key, out);
  if (!err)
    return 0;
  *out = NULL;
  if (err != CP_ENOTFOUND)
    return err;
  host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] needs %s", conf->file, conf->line, conf->name,
            needs);
  return CP_ECONFIG;
}

int cp_cu_conf_bool(const struct cp_host *host, const struct cp_connector_conf *conf,
                    const char *key, int *out) {
  int line = conf->line;
  const char *v = conf->get(conf, key, &line);
  if (!v)
    return 0;
  int b = cp_cu_parse_bool(v);
  if (b < 0) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] %s: '%s' is not yes or no", conf->file, line,
              conf->name, key, v);
    return CP_ECONFIG;
  }
  *out = b;
  return 0;
}

int cp_cu_conf_timeout(const struct cp_host *host, const struct cp_connector_conf *conf,
                       const char *key, int example_s, long max_ms, long *out) {
  int line = conf->line;
  const char *v = conf->get(conf, key, &line);
  if (!v)
    return 0;
  long ms = cp_cu_parse_timeout(v, max_ms);
  if (ms < 0) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] %s: '%s' is not a duration such as %d or 500ms (at most %ld s)",
              conf->file, line, conf->name, key, v, example_s, max_ms / 1000);
    return CP_ECONFIG;
  }
  *out = ms;
  return 0;
}

int cp_cu_conf_count(const struct cp_host *host, const struct cp_connector_conf *conf,
                     const char *key, unsigned long long min, unsigned long long max,
                     const char *what, size_t *out) {
  int line = conf->line;
  const char *v = conf->get(conf, key, &line);
  if (!v)
    return 0;
  char *end;
  errno = 0;
  unsigned long long m = strtoull(v, &end, 10);
  if (errno || *end || end == v || v[0] < '0' || v[0] > '9' || m < min || m > max ||
      m > (size_t)-1) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] %s: '%s' is not %s", conf->file, line,
              conf->name, key, v, what);
    return CP_ECONFIG;
  }
  *out = (size_t)m;
  return 0;
}

/* ---- post options and media (validate, publish) ---------------------------------------------- */

void cp_cu_media_ext(const char *src, char *ext, size_t size, bool cut) {
  size_t end = strcspn(src, "?#");
  size_t dot = end;

  ext[0] = '\0';
  while (dot > 0 && src[dot - 1] != '.' && src[dot - 1] != '/')
    dot--;
  if (dot == 0 || src[dot - 1] != '.')
    return;
  size_t n = end - dot;
  if (n >= size) {
    if (!cut)
      return;
    n = size - 1;
  }
  for (size_t i = 0; i < n; i++)
    ext[i] = (char)(src[dot + i] >= 'A' && src[dot + i] <= 'Z' ? src[dot + i] + 32 : src[dot + i]);
  ext[n] = '\0';
}

enum cp_outcome cp_cu_media_outcome(int err) {
  switch (err) {
    case -ENOENT:
    case -EACCES:
    case -EISDIR:
    case CP_ENOTFOUND:
    case CP_EINVAL:
    case CP_ETOOBIG:
    case CP_EPARSE:
    case CP_ELIMIT:
      return CP_OUTCOME_PERMANENT;
    default:
      return CP_OUTCOME_RETRY;
  }
}

int cp_cu_option_bool(const struct cp_post *post, const char *key, int dflt) {
  const char *v = cp_post_option(post, key);
  int b = v ? cp_cu_parse_bool(v) : -1;
  return b < 0 ? dflt : b;
}

bool cp_cu_option_bool_ok(const struct cp_post *post, const char *key, cp_diag_cb diag, void *arg) {
  const char *v = cp_post_option(post, key);
  char msg[160];
  if (!v || cp_cu_parse_bool(v) >= 0)
    return true;
  snprintf(msg, sizeof msg, "%s = '%.60s': write yes or no", key, v);
  diag(arg, true, msg);
  return false;
}

int cp_cu_media_copy(struct cp_cu_media *m, const struct cp_media_blob *blob) {
  m->data = malloc(blob->len ? blob->len : 1);
  m->type = strdup(blob->content_type ? blob->content_type : "application/octet-stream");
  m->name = strdup(blob->filename && *blob->filename ? blob->filename : "media");
  if (!m->data || !m->type || !m->name)
    return CP_ENOMEM;
  if (blob->len)
    memcpy(m->data, blob->data, blob->len);
  m->len = blob->len;
  return 0;
}

void cp_cu_media_clear(struct cp_cu_media *m) {
  free(m->data);
  free(m->type);
  free(m->name);
  *m = (struct cp_cu_media){0};
}

/* ---- progress ------------------------------------------------------------------------------- */

bool cp_cu_progress_get(const char *progress, const char *key, char *out, size_t size) {
  size_t kl = strlen(key);
  for (const char *p = progress; p && *p;) {
    const char *end = strchr(p, ';');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > kl && !strncmp(p, key, kl) && p[kl] == '=') {
      size_t vl = len - kl - 1;
      if (vl == 0 || vl >= size)
        return false;
      memcpy(out, p + kl + 1, vl);
      out[vl] = '\0';
      return true;
    }
    p = end ? end + 1 : p + len;
  }
  return false;
}

int cp_cu_progress_put(char *buf, size_t size, size_t *len, const char *prefix, size_t index,
                       const char *value) {
  if (*len >= size)
    return CP_ELIMIT;
  int n = snprintf(buf + *len, size - *len, "%s%s%zu=%s", *len ? ";" : "", prefix, index, value);
  if (n < 0 || (size_t)n >= size - *len) {
    buf[*len] = '\0';
    return CP_ELIMIT;
  }
  *len += (size_t)n;
  return 0;
}

int cp_cu_progress_each(const char *progress, const char *prefix, size_t max,
                        int (*fn)(void *arg, size_t index, const char *value), void *arg) {
  char *copy = strdup(progress ? progress : "");
  char *save = NULL;
  size_t pl = strlen(prefix);
  int rc = 0;

  if (!copy)
    return CP_ENOMEM;
  for (char *tok = strtok_r(copy, ";", &save); tok && !rc; tok = strtok_r(NULL, ";", &save)) {
    char *end;
    if (strncmp(tok, prefix, pl) || tok[pl] < '0' || tok[pl] > '9')
      continue;
    errno = 0;
    unsigned long idx = strtoul(tok + pl, &end, 10);
    if (errno || *end != '=' || idx == 0 || idx > max)
      continue;
    rc = fn(arg, idx, end + 1);
  }
  free(copy);
  return rc;
}

int cp_cu_progress_save_ids(const struct cp_publish_req *req, const char *prefix, char *const *ids,
                            size_t n) {
  char buf[4096];
  size_t len = 0;

  buf[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    if (!ids[i])
      continue;
    int err = cp_cu_progress_put(buf, sizeof buf, &len, prefix, i + 1, ids[i]);
    if (err)
      return err;
  }
  return req->host->save_progress(req, buf);
}

struct load_ids {
  char **ids;
  bool (*valid)(const char *id);
};

static int load_id(void *arg, size_t index, const char *id) {
  struct load_ids *l = arg;
  if (!l->valid(id))
    return 0;
  char *copy = strdup(id);
  if (!copy)
    return CP_ENOMEM;
  free(l->ids[index - 1]);
  l->ids[index - 1] = copy;
  return 0;
}

int cp_cu_progress_load_ids(const char *progress, const char *prefix, char **ids, size_t n,
                            bool (*valid)(const char *id)) {
  struct load_ids l = {ids, valid};
  return cp_cu_progress_each(progress, prefix, n, load_id, &l);
}

/* ---- results and completion ------------------------------------------------------------------ */

void cp_cu_result_vset(struct cp_result *res, enum cp_outcome outcome, int err, const char *fmt,
                       va_list ap) {
  char msg[2 * CP_RESULT_MESSAGE_MAX];

  memset(res, 0, sizeof *res);
  res->outcome = outcome;
  res->err = err;
  vsnprintf(msg, sizeof msg, fmt, ap);
  cp_connector_copy_text(res->message, sizeof res->message, msg, strlen(msg));
}

void cp_cu_result_msg(struct cp_result *res, const char *fmt, ...) {
  char msg[3 * CP_RESULT_MESSAGE_MAX];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cp_connector_copy_text(res->message, sizeof res->message, msg, strlen(msg));
}

struct later {
  uv_timer_t timer;
  void (*fn)(void *arg);
  void *arg;
};

static void later_closed(uv_handle_t *h) {
  free(h->data);
}

static void later_fire(uv_timer_t *t) {
  struct later *l = t->data;
  void (*fn)(void *arg) = l->fn;
  void *arg = l->arg;
  uv_close((uv_handle_t *)t, later_closed);
  fn(arg);
}

int cp_cu_call_later(const struct cp_host *host, uint64_t delay_ms, void (*fn)(void *arg),
                     void *arg) {
  struct later *l = malloc(sizeof *l);
  if (!l)
    return CP_ENOMEM;
  int err = uv_timer_init(host->loop, &l->timer);
  if (err) {
    free(l);
    return err;
  }
  l->timer.data = l;
  l->fn = fn;
  l->arg = arg;
  uv_timer_start(&l->timer, later_fire, delay_ms, 0);
  return 0;
}

struct soon {
  uv_timer_t timer;
  const struct cp_publish_req *req;
  struct cp_result res;
};

static void soon_closed(uv_handle_t *h) {
  struct soon *s = h->data;
  const struct cp_publish_req *req = s->req;
  struct cp_result res = s->res;
  free(s);
  req->host->complete(req, &res);
}

static void soon_fire(uv_timer_t *t) {
  uv_close((uv_handle_t *)t, soon_closed);
}

int cp_cu_complete_soon(const struct cp_publish_req *req, const struct cp_result *res) {
  struct soon *s = malloc(sizeof *s);
  if (!s)
    return CP_ENOMEM;
  int err = uv_timer_init(req->host->loop, &s->timer);
  if (err) {
    free(s);
    return err;
  }
  s->timer.data = s;
  s->req = req;
  s->res = *res;
  uv_timer_start(&s->timer, soon_fire, 0, 0);
  return 0;
}
