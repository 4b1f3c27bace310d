/* The WordPress connector: publishes each post as a blog post through the WordPress REST API,
 * authenticated with an Application Password (HTTP Basic, WordPress 5.6 and later).
 *
 *   [channel blog]
 *   type = wordpress
 *   site = https://blog.example.org      ; the site's address (home URL)
 *   api_path = /wp-json                  ; or /?rest_route= for sites without pretty permalinks
 *   username = editor
 *   app_password_file = blog.key         ; or app_password_env = WP_APP_PASSWORD
 *   status = publish                     ; publish | future | draft | pending | private
 *   create_tags = yes                    ; create tags the site does not have yet
 *   timeout = 30                         ; seconds per request (media uploads get four times it)
 *
 * One publish is a chain of requests (CONNECTORS-NOTES 1.11, verified on WordPress 6.1.9):
 *   1. GET  posts?slug=<slug>&status=publish,future,draft,pending,private&context=edit
 *      WordPress has no idempotency key and turns a repeated slug into "<slug>-2", so every
 *      attempt first looks for the post it would create. Found: done (nothing is sent again).
 *   2. GET  categories?search=<name> / tags?search=<name> for each name of the post options
 *      `categories` and `tags`; a missing tag is created (POST tags) when create_tags = yes,
 *      a missing category is a PERMANENT error.
 *   3. POST media?alt_text=<alt> with the first media item's bytes (Content-Type and
 *      Content-Disposition: attachment; filename=...), stored as progress "media=<id>" so that
 *      a retry does not upload it again; it becomes the post's featured image.
 *   4. POST posts {title, content, status, slug, [date_gmt], [excerpt], [categories], [tags],
 *      [featured_media]} -> 201 {id, link}: the remote id and URL.
 *
 * Engagement (optional read, posts nothing): GET comments?post=<id>&per_page=1&_fields=id; the
 * X-WP-Total header is the number of approved comments (the replies); WordPress counts nothing
 * else.
 *
 * The slug is "calpost-<post id>" (the idempotency key), or the post option `slug`. Content ends
 * with the marker comment "<!-- calpost:<post id> -->" (invisible on the site), so that a post
 * found under a chosen slug is recognised as this post's and not as someone else's. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <utf8proc.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"
#include "http.h"

#define DEFAULT_TIMEOUT_MS 30000L
#define MAX_TIMEOUT_MS 600000L
#define UPLOAD_TIMEOUT_FACTOR 4
#define TITLE_FROM_TEXT_MAX 100 /* bytes of the text's first line when the event has no title */
#define TERM_NAME_MAX 200       /* WordPress limits term names to 200 characters */
#define SLUG_MAX 190

struct wp {
  const struct cp_host *host;
  char *name;
  char *api;      /* site + api_path: "https://blog.example.org/wp-json" */
  bool api_query; /* api ends inside a query ("/?rest_route="): parameters follow with '&' */
  char *auth;     /* "Basic <base64(user:app password)>" */
  char *username;
  const char *status; /* publish | future | draft | pending | private */
  bool create_tags;
  long timeout_ms;
  size_t max_chars; /* 0: no limit of our own */
};

enum step {
  STEP_LOGIN,
  STEP_LOOKUP,
  STEP_CATEGORY,
  STEP_TAG,
  STEP_TAG_CREATE,
  STEP_MEDIA,
  STEP_CREATE,
  STEP_COMMENTS, /* an engagement read */
};

struct terms {
  char **names;
  json_int_t *ids;
  size_t n;
};

/* One publish or login check in flight. */
struct pub {
  struct wp *w;
  const struct cp_publish_req *req;
  const struct cp_post *post; /* NULL for a login check or an engagement read */
  enum step step;
  char slug[SLUG_MAX + 1];
  bool custom_slug;
  char marker[48]; /* "<!-- calpost:<post id> -->" */
  struct terms cats, tags;
  size_t ci, ti;       /* the next category and tag to resolve */
  json_int_t media_id; /* 0: not uploaded yet */
  char *url;           /* of the request in flight, for messages */
};

static const char *const known_keys[] = {
    "site",        "api_path", "username", "app_password_file", "app_password_env", "status",
    "create_tags", "timeout",  NULL};

static const char *const post_options[] = {"categories", "tags", "excerpt", "slug", NULL};

/* ---- configuration -------------------------------------------------------------------------- */

static void wp_free(void *instance) {
  struct wp *w = instance;
  if (!w)
    return;
  free(w->name);
  free(w->api);
  if (w->auth)
    w->host->secret_free(w->auth); /* it holds the password, base64-encoded */
  free(w->username);
  free(w);
}

/* Checks that url is http(s) with a host, and plain http only to this machine (Application
 * Passwords travel in every request). Sets *why for people on failure. */
static bool site_ok(const char *url, const char **why) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *query = NULL;
  bool ok = false;

  *why = "is not an http(s) URL";
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    bool loop = cp_cu_loopback_host(host, false);
    if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK) {
      *why = "has a query: give the site's address only, and the API's in api_path";
    } else if (!strcmp(scheme, "https")) {
      ok = true;
    } else if (!strcmp(scheme, "http")) {
      ok = loop;
      if (!ok)
        *why = "uses plain http to another machine, which would send the application password "
               "unencrypted: use https";
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(query);
  curl_url_cleanup(u);
  return ok;
}

/* "Basic " + base64(user ":" password), malloc'd; NULL on ENOMEM. */
static char *basic_auth(const char *user, const char *password) {
  size_t n = strlen(user) + 1 + strlen(password);
  char *plain = malloc(n + 1);
  char *out = malloc(6 + 4 * ((n + 2) / 3) + 1);
  if (!plain || !out) {
    free(plain);
    free(out);
    return NULL;
  }
  snprintf(plain, n + 1, "%s:%s", user, password);
  memcpy(out, "Basic ", 6);
  EVP_EncodeBlock((unsigned char *)out + 6, (const unsigned char *)plain, (int)n);
  OPENSSL_cleanse(plain, n);
  free(plain);
  return out;
}

#define CONF_ERROR(...)                                                                            \
  do {                                                                                             \
    host->log(host, CP_LOG_ERROR, __VA_ARGS__);                                                    \
    wp_free(w);                                                                                    \
    return CP_ECONFIG;                                                                             \
  } while (0)

static int wp_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                   void **instance) {
  int line = conf->line;
  const char *v, *why;
  char *password = NULL;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  struct wp *w = calloc(1, sizeof *w);
  if (!w)
    return CP_ENOMEM;
  w->host = host;
  w->timeout_ms = DEFAULT_TIMEOUT_MS;
  w->status = "publish";
  w->create_tags = true;
  w->name = strdup(conf->name ? conf->name : "wordpress");
  if (!w->name) {
    wp_free(w);
    return CP_ENOMEM;
  }

  const char *site = conf->get(conf, "site", &line);
  if (!site || !*site)
    CONF_ERROR("%s:%d: [channel %s] needs 'site = https://...' (the blog's address)", conf->file,
               conf->line, conf->name);
  if (!site_ok(site, &why))
    CONF_ERROR("%s:%d: [channel %s] site: '%s' %s", conf->file, line, conf->name, site, why);
  const char *api_path = "/wp-json";
  line = conf->line;
  v = conf->get(conf, "api_path", &line);
  if (v) {
    if (v[0] != '/' || strpbrk(v, " \t\r\n#"))
      CONF_ERROR("%s:%d: [channel %s] api_path: '%s' must start with '/' (/wp-json, or "
                 "/?rest_route= without pretty permalinks)",
                 conf->file, line, conf->name, v);
    api_path = v;
  }
  size_t sl = strlen(site), al = strlen(api_path);
  while (sl && site[sl - 1] == '/')
    sl--;
  if (!strchr(api_path, '?'))
    while (al && api_path[al - 1] == '/') /* "/wp-json/" */
      al--;
  if (asprintf(&w->api, "%.*s%.*s", (int)sl, site, (int)al, api_path) < 0) {
    w->api = NULL;
    wp_free(w);
    return CP_ENOMEM;
  }
  w->api_query = strchr(api_path, '?') != NULL;

  line = conf->line;
  v = conf->get(conf, "username", &line);
  if (!v || !*v)
    CONF_ERROR("%s:%d: [channel %s] needs 'username = ...' (the WordPress user that owns the "
               "application password)",
               conf->file, conf->line, conf->name);
  if (strchr(v, ':'))
    CONF_ERROR("%s:%d: [channel %s] username: '%s' contains ':', which no WordPress user name "
               "does",
               conf->file, line, conf->name, v);
  w->username = strdup(v);
  if (!w->username) {
    wp_free(w);
    return CP_ENOMEM;
  }

  line = conf->line;
  v = conf->get(conf, "status", &line);
  if (v) {
    static const char *const statuses[] = {"publish", "future", "draft", "pending", "private"};
    w->status = NULL;
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
      if (!strcmp(v, statuses[i]))
        w->status = statuses[i];
    if (!w->status)
      CONF_ERROR("%s:%d: [channel %s] status: '%s' is not one of publish, future, draft, "
                 "pending, private",
                 conf->file, line, conf->name, v);
  }
  int create_tags = w->create_tags;
  err = cp_cu_conf_bool(host, conf, "create_tags", &create_tags);
  if (!err)
    err = cp_cu_conf_timeout(host, conf, "timeout", 30, MAX_TIMEOUT_MS, &w->timeout_ms);
  if (!err)
    err = cp_cu_conf_count(host, conf, "max_chars", 0, ~0ULL, "a number", &w->max_chars);
  if (err) {
    wp_free(w);
    return err;
  }
  w->create_tags = create_tags;

  err = cp_cu_conf_secret(host, conf, "app_password",
                          "app_password_file or app_password_env: an Application Password "
                          "(WordPress: Users > Profile > Application Passwords)",
                          &password);
  if (err) {
    wp_free(w);
    return err;
  }
  w->auth = basic_auth(w->username, password);
  host->secret_free(password);
  if (!w->auth) {
    wp_free(w);
    return CP_ENOMEM;
  }
  *instance = w;
  return 0;
}

/* ---- text ----------------------------------------------------------------------------------- */

/* Writes s[0..len) with &, <, > and " as entities. */
static void put_escaped(FILE *f, const char *s, size_t len) {
  for (size_t i = 0; i < len; i++) {
    switch (s[i]) {
      case '&':
        fputs("&amp;", f);
        break;
      case '<':
        fputs("&lt;", f);
        break;
      case '>':
        fputs("&gt;", f);
        break;
      case '"':
        fputs("&quot;", f);
        break;
      default:
        fputc(s[i], f);
    }
  }
}

/* Writes one line of plain text as HTML: escaped, with its URLs as links. */
static void put_line(FILE *f, const char *s, size_t len) {
  char *line = strndup(s, len);
  if (!line) {
    put_escaped(f, s, len);
    return;
  }
  const char *p = line;
  size_t ulen;
  for (const char *u = cp_text_find_url(p, &ulen); u; u = cp_text_find_url(p, &ulen)) {
    put_escaped(f, p, (size_t)(u - p));
    fputs("<a href=\"", f);
    put_escaped(f, u, ulen);
    fputs("\">", f);
    put_escaped(f, u, ulen);
    fputs("</a>", f);
    p = u + ulen;
  }
  put_escaped(f, p, strlen(p));
  free(line);
}

/* The post's text as HTML: kept as it is if it already looks like HTML; otherwise each paragraph
 * (separated by blank lines) becomes <p>...</p>, single line breaks <br>, URLs links. Then the
 * marker comment. Returns a malloc'd string or NULL on ENOMEM. */
static char *content_html(const char *text, const char *marker) {
  char *out = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&out, &size);
  if (!f)
    return NULL;
  if (cp_text_looks_like_html(text)) {
    fputs(text, f);
    if (*text)
      fputc('\n', f);
  } else {
    const char *p = text;
    while (*p) {
      while (*p == '\n' || *p == '\r' || *p == ' ' || *p == '\t') /* blank lines between */
        p++;
      if (!*p)
        break;
      fputs("<p>", f);
      bool first = true;
      while (*p) { /* the lines of one paragraph, up to a blank line */
        size_t n = strcspn(p, "\n");
        size_t end = n;
        while (end && (p[end - 1] == '\r' || p[end - 1] == ' ' || p[end - 1] == '\t'))
          end--;
        if (end == 0)
          break;
        if (!first)
          fputs("<br>\n", f);
        put_line(f, p, end);
        first = false;
        p += n;
        if (*p == '\n')
          p++;
      }
      fputs("</p>\n", f);
    }
  }
  fputs(marker, f);
  if (fclose(f) != 0) {
    free(out);
    return NULL;
  }
  return out;
}

/* The title: the event's SUMMARY, else the first line of the text; < and > as entities so that
 * they show (WordPress keeps titles as HTML; an & stays as typed, as its editor does). */
static char *title_html(const struct cp_post *post) {
  char first[TITLE_FROM_TEXT_MAX + 1];
  const char *t = post->title ? post->title : "";
  if (!*t && post->text) {
    const char *s = post->text;
    while (*s == '\n' || *s == '\r' || *s == ' ')
      s++;
    cp_connector_copy_text(first, sizeof first, s, strcspn(s, "\r\n"));
    t = first;
  }
  char *out = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&out, &size);
  if (!f)
    return NULL;
  for (const char *p = t; *p; p++) {
    if (*p == '<')
      fputs("&lt;", f);
    else if (*p == '>')
      fputs("&gt;", f);
    else
      fputc(*p, f);
  }
  if (fclose(f) != 0) {
    free(out);
    return NULL;
  }
  return out;
}

/* Splits a comma-separated option into trimmed names (empty ones dropped). Returns 0 or
 * CP_ENOMEM. */
static int terms_parse(const char *value, struct terms *t) {
  memset(t, 0, sizeof *t);
  if (!value)
    return 0;
  size_t cap = 1;
  for (const char *p = value; *p; p++)
    cap += *p == ',';
  t->names = calloc(cap, sizeof *t->names);
  t->ids = calloc(cap, sizeof *t->ids);
  if (!t->names || !t->ids)
    return CP_ENOMEM;
  for (const char *p = value;;) {
    size_t n = strcspn(p, ",");
    const char *s = p, *e = p + n;
    while (s < e && (*s == ' ' || *s == '\t'))
      s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
      e--;
    if (e > s) {
      t->names[t->n] = strndup(s, (size_t)(e - s));
      if (!t->names[t->n])
        return CP_ENOMEM;
      t->n++;
    }
    if (!p[n])
      break;
    p += n + 1;
  }
  return 0;
}

static void terms_free(struct terms *t) {
  for (size_t i = 0; i < t->n; i++)
    free(t->names[i]);
  free(t->names);
  free(t->ids);
  memset(t, 0, sizeof *t);
}

/* Case-folded NFC copy of s (malloc'd), or NULL. */
static char *fold(const char *s) {
  utf8proc_uint8_t *out = NULL;
  utf8proc_ssize_t n =
      utf8proc_map((const utf8proc_uint8_t *)s, 0, &out,
                   UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_CASEFOLD);
  return n < 0 ? NULL : (char *)out;
}

/* Whether a term of WordPress's answer is the one named want: by name (WordPress returns names
 * HTML-escaped, "News &amp; Events", and compares them without case) or by slug. */
static bool term_matches(json_t *term, const char *want) {
  const char *name = json_string_value(json_object_get(term, "name"));
  const char *slug = json_string_value(json_object_get(term, "slug"));
  bool match = false;

  if (slug && !strcmp(slug, want))
    return true;
  if (!name)
    return false;
  char *plain = strchr(name, '&') ? cp_text_from_html(name) : strdup(name);
  if (!plain)
    return false;
  size_t n = strlen(plain);
  while (n && (plain[n - 1] == '\n' || plain[n - 1] == ' '))
    plain[--n] = '\0';
  char *a = fold(plain), *b = fold(want);
  match = a && b && !strcmp(a, b);
  free(a);
  free(b);
  free(plain);
  return match;
}

/* ---- validate ------------------------------------------------------------------------------- */

static bool has_suffix(const char *s, size_t len, const char *suffix) {
  size_t n = strlen(suffix);
  return len >= n && !strncasecmp(s + len - n, suffix, n);
}

static int wp_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  struct wp *w = instance;
  const char *text = post->text ? post->text : "";
  char msg[640];
  int rc = 0;

  if (!*text && !(post->title && *post->title) && post->n_media == 0) {
    diag(arg, true, "the post has no title, text or media: write a description");
    return CP_EINVAL;
  }
  if (w->max_chars) {
    size_t count = cp_text_codepoints(text);
    if (count > w->max_chars) {
      snprintf(msg, sizeof msg,
               "%zu characters, channel %s allows %zu (max_chars): shorten the "
               "text",
               count, w->name, w->max_chars);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    }
  }
  if (post->n_media > 0) {
    const char *src = post->media[0].src ? post->media[0].src : "";
    size_t len = strcspn(src, "?#"); /* an URL's path decides */
    static const char *const videos[] = {".mp4", ".mov", ".m4v", ".webm", ".avi", ".mkv", NULL};
    for (size_t i = 0; videos[i]; i++)
      if (has_suffix(src, len, videos[i])) {
        snprintf(msg, sizeof msg,
                 "media %s: the first media item becomes the featured image, "
                 "which must be an image (PNG, JPEG, GIF or WebP)",
                 src);
        diag(arg, true, msg);
        rc = CP_EINVAL;
      }
  }
  if (post->n_media > 1) {
    snprintf(msg, sizeof msg,
             "only the first media item becomes the featured image on %s; the "
             "other %zu are not published",
             w->name, post->n_media - 1);
    diag(arg, false, msg);
  }
  static const char *const lists[] = {"categories", "tags"};
  for (size_t k = 0; k < 2; k++) {
    const char *v = cp_post_option(post, lists[k]);
    if (!v)
      continue;
    for (const char *p = v;;) {
      size_t n = strcspn(p, ",");
      size_t s = 0, e = n;
      while (s < e && (p[s] == ' ' || p[s] == '\t'))
        s++;
      while (e > s && (p[e - 1] == ' ' || p[e - 1] == '\t'))
        e--;
      size_t chars = 0; /* code points: the bytes that do not continue a UTF-8 sequence */
      for (size_t i = s; i < e; i++)
        chars += ((unsigned char)p[i] & 0xC0) != 0x80;
      if (e == s) {
        snprintf(msg, sizeof msg, "%s = %s: an empty name (two commas in a row?)", lists[k], v);
        diag(arg, true, msg);
        rc = CP_EINVAL;
      } else if (chars > TERM_NAME_MAX) {
        char start[41]; /* cut at a character boundary */
        cp_connector_copy_text(start, sizeof start, p + s, e - s);
        snprintf(msg, sizeof msg, "%s: '%s...' is longer than WordPress's %d characters", lists[k],
                 start, TERM_NAME_MAX);
        diag(arg, true, msg);
        rc = CP_EINVAL;
      }
      if (!p[n])
        break;
      p += n + 1;
    }
  }
  const char *slug = cp_post_option(post, "slug");
  if (slug) {
    size_t n = strlen(slug);
    bool ok = n > 0 && n <= SLUG_MAX && strspn(slug, "abcdefghijklmnopqrstuvwxyz0123456789-_") == n;
    if (!ok) {
      snprintf(msg, sizeof msg, "slug = %s: use 1 to %d lower-case letters, digits and hyphens",
               slug, SLUG_MAX);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    } else if (strcmp(post->occurrence, "single")) {
      snprintf(msg, sizeof msg,
               "slug = %s on a recurring event would give every occurrence the "
               "same address: remove the slug option (calpost then uses one per occurrence)",
               slug);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    }
  }
  return rc;
}

/* ---- requests ------------------------------------------------------------------------------- */

static void on_response(const struct cp_http_resp *resp, void *data);
static void on_comments(struct pub *p, const struct cp_http_resp *resp);

static void pub_free(struct pub *p) {
  terms_free(&p->cats);
  terms_free(&p->tags);
  free(p->url);
  free(p);
}

/* Completes p with res and frees it. */
static void finish(struct pub *p, struct cp_result *res) {
  const struct cp_publish_req *req = p->req;
  const struct cp_host *host = p->w->host;
  if (p->post) {
    if (res->outcome == CP_OUTCOME_OK)
      host->log(host, CP_LOG_INFO, "post %s published as WordPress post %s%s%s", p->post->id,
                res->remote_id, res->remote_url[0] ? " " : "", res->remote_url);
    else
      host->log(host, CP_LOG_WARN, "post %s not published (%s): %s", p->post->id,
                cp_outcome_name(res->outcome), res->message);
  }
  pub_free(p);
  host->complete(req, res);
}

/* Completes p with an outcome and a message of our own (no HTTP answer behind it, or one that
 * said 2xx but not what we needed). */
static void fail(struct pub *p, enum cp_outcome outcome, long status, int err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(struct pub *p, enum cp_outcome outcome, long status, int err, const char *fmt,
                 ...) {
  struct cp_result res;
  va_list ap;
  va_start(ap, fmt);
  cp_cu_result_vset(&res, outcome, err, fmt, ap);
  va_end(ap);
  res.http_status = status;
  finish(p, &res);
}

/* WordPress's error {"code", "message", "data": {"status", "params": {name: why}}} as
 * "code: message (name: why)" into dst; "" if the body is not one. */
static void wp_error_text(const struct cp_http_resp *resp, char *dst, size_t size) {
  dst[0] = '\0';
  json_t *root = resp->body_len ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  const char *code = json_string_value(json_object_get(root, "code"));
  const char *message = json_string_value(json_object_get(root, "message"));
  if (code) {
    /* Some messages carry markup: "<strong>Error:</strong> The password ..." */
    char *plain = message && cp_text_looks_like_html(message) ? cp_text_from_html(message) : NULL;
    const char *m = plain ? plain : message ? message : "";
    size_t ml = strlen(m);
    while (ml && (m[ml - 1] == '\n' || m[ml - 1] == ' '))
      ml--;
    int n = snprintf(dst, size, "%s%s%.*s", code, ml ? ": " : "", (int)ml, m);
    json_t *params = json_object_get(json_object_get(root, "data"), "params");
    const char *key;
    json_t *why;
    json_object_foreach(params, key, why) {
      if (n < 0 || (size_t)n >= size || !json_is_string(why))
        break;
      n += snprintf(dst + n, size - (size_t)n, " (%s: %s)", key, json_string_value(why));
    }
    free(plain);
  }
  json_decref(root);
}

/* Whether WordPress's error says the credentials (or the user's role) do not allow this. A wrong
 * password shows as 401 rest_not_logged_in or incorrect_password; without a login, the slug
 * lookup (which asks for drafts) fails with 400 rest_invalid_param whose detail is
 * rest_forbidden_status. */
static bool auth_error(json_t *root) {
  static const char *const codes[] = {"incorrect_password",
                                      "invalid_username",
                                      "invalid_email",
                                      "rest_not_logged_in",
                                      "rest_cannot_create",
                                      "rest_cannot_publish",
                                      "rest_forbidden_context",
                                      "rest_forbidden",
                                      "application_passwords_disabled",
                                      NULL};
  const char *code = json_string_value(json_object_get(root, "code"));
  if (!code)
    return false;
  for (size_t i = 0; codes[i]; i++)
    if (!strcmp(code, codes[i]))
      return true;
  json_t *details = json_object_get(json_object_get(root, "data"), "details");
  const char *key;
  json_t *d;
  if (!strcmp(code, "rest_invalid_param"))
    json_object_foreach(details, key, d) {
      const char *c = json_string_value(json_object_get(d, "code"));
      if (c && !strcmp(c, "rest_forbidden_status"))
        return true;
    }
  return false;
}

static enum cp_outcome wp_classify(void *instance, const struct cp_http_resp *resp,
                                   enum cp_outcome dflt) {
  if (resp->status < 400 || resp->status >= 500 || resp->status == 429 || !resp->body_len)
    return dflt; /* 5xx RETRY, 429 RATE_LIMITED, no answer RETRY/UNKNOWN: the default */
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  enum cp_outcome o = dflt;
  if (json_object_get(root, "code")) {
    if (auth_error(root))
      o = CP_OUTCOME_AUTH;
    else if (resp->status == 403)
      o = CP_OUTCOME_PERMANENT; /* a WordPress refusal of this one thing, not of the login */
  }
  json_decref(root);
  return o;
}

/* True if resp is a complete 2xx answer. Otherwise completes p with the outcome of resp and a
 * message that says what failed, and returns false. creates: the request may have created the
 * post (an answer lost after sending is then UNKNOWN; for the other steps a plain RETRY).
 * forbidden_permanent: a 403 is about this step only (creating a tag, uploading), not about the
 * credentials. */
static bool answered(struct pub *p, const struct cp_http_resp *resp, const char *what, bool creates,
                     bool forbidden_permanent) {
  if (!resp->err && resp->status >= 200 && resp->status < 300)
    return true;
  struct cp_result res;
  char detail[CP_RESULT_MESSAGE_MAX], msg[2 * CP_RESULT_MESSAGE_MAX + 64];
  p->w->host->http_result(p->req, resp, &res);
  if (res.outcome == CP_OUTCOME_OK) /* 2xx, but the answer could not be read whole */
    res.outcome = CP_OUTCOME_RETRY;
  if (res.outcome == CP_OUTCOME_UNKNOWN && !creates)
    res.outcome = CP_OUTCOME_RETRY; /* nothing that shows on the site can have happened */
  if (forbidden_permanent && resp->status == 403)
    res.outcome = CP_OUTCOME_PERMANENT;
  wp_error_text(resp, detail, sizeof detail);
  if (detail[0])
    snprintf(msg, sizeof msg, "%s: HTTP %ld %s", what, resp->status, detail);
  else
    snprintf(msg, sizeof msg, "%s: %s", what, res.message);
  cp_connector_copy_text(res.message, sizeof res.message, msg, strlen(msg));
  finish(p, &res);
  return false;
}

/* The URL of route with query (already escaped; may be NULL), malloc'd or NULL. */
static char *api_url(const struct wp *w, const char *route, const char *query) {
  char *url;
  if (asprintf(&url, "%s%s%s%s", w->api, route, query ? (w->api_query ? "&" : "?") : "",
               query ? query : "") < 0)
    return NULL;
  return url;
}

/* Starts a request of p; url is taken over. Returns 0 or a negative CP_E* (nothing started). */
static int request(struct pub *p, const char *method, char *url, const char *content_type,
                   const char *disposition, const void *body, size_t len, long timeout_ms) {
  struct wp *w = p->w;
  struct cp_http_header hdrs[4];
  size_t nh = 0;
  if (!url)
    return CP_ENOMEM;
  free(p->url);
  p->url = url;
  hdrs[nh++] = (struct cp_http_header){"Authorization", w->auth};
  hdrs[nh++] = (struct cp_http_header){"Accept", "application/json"};
  if (content_type)
    hdrs[nh++] = (struct cp_http_header){"Content-Type", content_type};
  if (disposition)
    hdrs[nh++] = (struct cp_http_header){"Content-Disposition", disposition};
  struct cp_http_req hr = {
      .method = method,
      .url = url,
      .headers = hdrs,
      .n_headers = nh,
      .body = body,
      .body_len = len,
      .timeout_ms = timeout_ms,
      .connect_timeout_ms = w->timeout_ms < 10000 ? w->timeout_ms : 10000,
      /* A GET is harmless to repeat. A POST must never be resent by libcurl on a reused
       * connection: a second post would be "<slug>-2". */
      .idempotent = !strcmp(method, "GET"),
  };
  return w->host->http_request(w->host, &hr, on_response, p);
}

/* ---- the steps of a publish ----------------------------------------------------------------- */

static int start_lookup(struct pub *p) {
  char *slug = curl_easy_escape(NULL, p->slug, 0);
  char *query = NULL;
  if (!slug)
    return CP_ENOMEM;
  /* Every status a post of ours can have (trashed ones are renamed by WordPress anyway);
   * asking for drafts needs the login, which context=edit requires too. */
  int n = asprintf(&query,
                   "slug=%s&status=publish,future,draft,pending,private&context=edit"
                   "&_fields=id,link,status,content",
                   slug);
  curl_free(slug);
  if (n < 0)
    return CP_ENOMEM;
  p->step = STEP_LOOKUP;
  int err = request(p, "GET", api_url(p->w, "/wp/v2/posts", query), NULL, NULL, NULL, 0,
                    p->w->timeout_ms);
  free(query);
  return err;
}

static int start_term_search(struct pub *p, bool tag) {
  const char *name = tag ? p->tags.names[p->ti] : p->cats.names[p->ci];
  char *esc = curl_easy_escape(NULL, name, 0), *query = NULL;
  if (!esc)
    return CP_ENOMEM;
  int n = asprintf(&query, "search=%s&per_page=100&_fields=id,name,slug", esc);
  curl_free(esc);
  if (n < 0)
    return CP_ENOMEM;
  p->step = tag ? STEP_TAG : STEP_CATEGORY;
  int err = request(p, "GET", api_url(p->w, tag ? "/wp/v2/tags" : "/wp/v2/categories", query), NULL,
                    NULL, NULL, 0, p->w->timeout_ms);
  free(query);
  return err;
}

static int start_tag_create(struct pub *p) {
  json_t *o = json_pack("{s:s}", "name", p->tags.names[p->ti]);
  char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!body)
    return CP_EUTF8; /* json_pack refuses invalid UTF-8; the plan checked it, so ENOMEM */
  p->step = STEP_TAG_CREATE;
  int err = request(p, "POST", api_url(p->w, "/wp/v2/tags", "_fields=id,name,slug"),
                    "application/json", NULL, body, strlen(body), p->w->timeout_ms);
  free(body);
  return err;
}

static void on_media(const struct cp_media_blob *blob, void *data);

static int start_create(struct pub *p) {
  const struct cp_post *post = p->post;
  char *title = title_html(post);
  const char *text = post->text ? post->text : "";
  /* An event without a description has its SUMMARY as text: it is the title already. */
  if (post->title && *post->title && !strcmp(text, post->title))
    text = "";
  char *content = content_html(text, p->marker);
  json_t *o = json_object();
  int err = CP_ENOMEM;

  if (!title || !content || !o)
    goto out;
  json_object_set_new(o, "title", json_string(title));
  json_object_set_new(o, "content", json_string(content));
  json_object_set_new(o, "status", json_string(p->w->status));
  json_object_set_new(o, "slug", json_string(p->slug));
  if (!strcmp(p->w->status, "future")) {
    /* The due time: WordPress publishes at once when it is less than a minute ahead (as it is
     * when calpost sends at the due time), dated at the planned time even after a retry. */
    char date[32];
    struct tm tm;
    time_t due = (time_t)post->due;
    gmtime_r(&due, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    json_object_set_new(o, "date_gmt", json_string(date));
  }
  const char *excerpt = cp_post_option(post, "excerpt");
  if (excerpt)
    json_object_set_new(o, "excerpt", json_string(excerpt));
  if (p->cats.n) {
    json_t *a = json_array();
    for (size_t i = 0; i < p->cats.n; i++)
      json_array_append_new(a, json_integer(p->cats.ids[i]));
    json_object_set_new(o, "categories", a);
  }
  if (p->tags.n) {
    json_t *a = json_array();
    for (size_t i = 0; i < p->tags.n; i++)
      json_array_append_new(a, json_integer(p->tags.ids[i]));
    json_object_set_new(o, "tags", a);
  }
  if (p->media_id)
    json_object_set_new(o, "featured_media", json_integer(p->media_id));
  char *body = json_dumps(o, JSON_COMPACT);
  if (!body) { /* a string that is not UTF-8 makes json_string NULL and the dump fail */
    err = CP_EUTF8;
    goto out;
  }
  p->step = STEP_CREATE;
  err = request(p, "POST", api_url(p->w, "/wp/v2/posts", "_fields=id,link,status"),
                "application/json", NULL, body, strlen(body), p->w->timeout_ms);
  free(body);
out:
  json_decref(o);
  free(title);
  free(content);
  return err;
}

/* Starts the next step after the lookup: categories, tags, media, then the post. Completes p if
 * that step cannot start. */
static void advance(struct pub *p) {
  int err;
  const char *what;
  if (p->ci < p->cats.n) {
    what = "looking up a category";
    err = start_term_search(p, false);
  } else if (p->ti < p->tags.n) {
    what = "looking up a tag";
    err = start_term_search(p, true);
  } else if (p->post->n_media > 0 && !p->media_id) {
    const struct cp_host *host = p->w->host;
    what = "loading the media";
    p->step = STEP_MEDIA;
    if (host->version < 2 || !host->media_load) {
      fail(p, CP_OUTCOME_PERMANENT, 0, 0, "this calpost cannot load media for connectors");
      return;
    }
    err = host->media_load(p->req, &p->post->media[0], on_media, p);
    if (err) {
      fail(p, CP_OUTCOME_PERMANENT, 0, err, "media %s: %s", p->post->media[0].src,
           cp_strerror(err));
      return;
    }
  } else {
    what = "creating the post";
    err = start_create(p);
  }
  if (err)
    fail(p, err == CP_EUTF8 ? CP_OUTCOME_PERMANENT : CP_OUTCOME_RETRY, 0, err, "%s: %s", what,
         cp_strerror(err));
}

static void copy_id(json_t *o, char *dst, size_t size) {
  json_t *id = json_object_get(o, "id");
  if (json_is_integer(id))
    snprintf(dst, size, "%" JSON_INTEGER_FORMAT, json_integer_value(id));
}

static void copy_link(json_t *o, char *dst, size_t size) {
  json_t *link = json_object_get(o, "link");
  if (json_is_string(link))
    cp_connector_copy_text(dst, size, json_string_value(link), json_string_length(link));
}

static void not_rest(struct pub *p, const struct cp_http_resp *resp) {
  fail(p, CP_OUTCOME_PERMANENT, resp->status, 0,
       "the answer of %s is not WordPress REST JSON: check site and api_path (a site without "
       "pretty permalinks needs api_path = /?rest_route=)",
       p->url);
}

static void on_lookup(struct pub *p, const struct cp_http_resp *resp) {
  if (!answered(p, resp, "looking for the post on the site", false, false))
    return;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  if (!json_is_array(root)) {
    json_decref(root);
    not_rest(p, resp);
    return;
  }
  json_t *found = json_array_get(root, 0);
  if (!found) {
    json_decref(root);
    advance(p);
    return;
  }
  struct cp_result res = {.outcome = CP_OUTCOME_OK, .http_status = resp->status};
  copy_id(found, res.remote_id, sizeof res.remote_id);
  copy_link(found, res.remote_url, sizeof res.remote_url);
  const char *raw = json_string_value(json_object_get(json_object_get(found, "content"), "raw"));
  if (p->custom_slug && !(raw && strstr(raw, p->marker))) {
    /* Someone else's post (or another event's) has this address. */
    fail(p, CP_OUTCOME_PERMANENT, resp->status, 0,
         "slug '%s' is taken by WordPress post %s (%s), which calpost did not publish for this "
         "event: choose another slug",
         p->slug, res.remote_id, res.remote_url);
  } else {
    p->w->host->log(p->w->host, CP_LOG_INFO,
                    "post %s is on the site already (an earlier attempt): not sent again",
                    p->post->id);
    finish(p, &res);
  }
  json_decref(root);
}

static void on_term(struct pub *p, const struct cp_http_resp *resp) {
  bool tag = p->step == STEP_TAG;
  struct terms *t = tag ? &p->tags : &p->cats;
  size_t i = tag ? p->ti : p->ci;
  char what[TERM_NAME_MAX + 64];
  snprintf(what, sizeof what, "looking up %s '%s'", tag ? "tag" : "category", t->names[i]);
  if (!answered(p, resp, what, false, false))
    return;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL), *term;
  size_t k;
  if (!json_is_array(root)) {
    json_decref(root);
    not_rest(p, resp);
    return;
  }
  json_int_t id = 0;
  json_array_foreach(root, k, term) {
    json_t *jid = json_object_get(term, "id");
    if (json_is_integer(jid) && term_matches(term, t->names[i])) {
      id = json_integer_value(jid);
      break;
    }
  }
  json_decref(root);
  if (id) {
    t->ids[i] = id;
    if (tag)
      p->ti++;
    else
      p->ci++;
    advance(p);
  } else if (!tag) {
    fail(p, CP_OUTCOME_PERMANENT, resp->status, 0,
         "category '%s' does not exist on %s: create it in WordPress (Posts > Categories) or "
         "correct the post's categories option",
         t->names[i], p->w->api);
  } else if (!p->w->create_tags) {
    fail(p, CP_OUTCOME_PERMANENT, resp->status, 0,
         "tag '%s' does not exist on %s and create_tags = no: create it in WordPress (Posts > "
         "Tags) or correct the post's tags option",
         t->names[i], p->w->api);
  } else {
    int err = start_tag_create(p);
    if (err)
      fail(p, CP_OUTCOME_RETRY, 0, err, "creating tag '%s': %s", t->names[i], cp_strerror(err));
  }
}

static void on_tag_created(struct pub *p, const struct cp_http_resp *resp) {
  const char *name = p->tags.names[p->ti];
  json_t *root = resp->body_len ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  json_int_t id = 0;
  char what[TERM_NAME_MAX + 64];

  /* Created in between (or named in another spelling): WordPress says which term it is. */
  const char *code = json_string_value(json_object_get(root, "code"));
  json_t *existing = json_object_get(json_object_get(root, "data"), "term_id");
  if (resp->status == 400 && code && !strcmp(code, "term_exists") && json_is_integer(existing)) {
    id = json_integer_value(existing);
  } else {
    snprintf(what, sizeof what, "creating tag '%s' (create_tags = yes)", name);
    if (!answered(p, resp, what, false, true)) {
      json_decref(root);
      return;
    }
    json_t *jid = json_object_get(root, "id");
    if (json_is_integer(jid))
      id = json_integer_value(jid);
  }
  json_decref(root);
  if (!id) {
    not_rest(p, resp);
    return;
  }
  p->tags.ids[p->ti++] = id;
  advance(p);
}

/* A file name for Content-Disposition: the base name with anything but [A-Za-z0-9._-] as '-'
 * (WordPress sanitizes it again; this keeps the header well-formed). */
static void safe_filename(const char *name, const char *content_type, char *dst, size_t size) {
  const char *base = name ? strrchr(name, '/') : NULL;
  base = base ? base + 1 : name;
  size_t n = 0;
  for (const char *s = base ? base : ""; *s && n + 1 < size; s++)
    dst[n++] = (strchr("._-", *s) || (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
                (*s >= 'A' && *s <= 'Z'))
                   ? *s
                   : '-';
  dst[n] = '\0';
  if (!n || !strchr(dst, '.')) { /* WordPress wants an extension that matches the type */
    const char *sub = content_type ? strchr(content_type, '/') : NULL;
    snprintf(dst, size, "image.%s", sub && sub[1] ? sub + 1 : "bin");
    if (!strcmp(dst, "image.jpeg"))
      snprintf(dst, size, "image.jpg");
  }
}

static void on_media(const struct cp_media_blob *blob, void *data) {
  struct pub *p = data;
  const char *src = p->post->media[0].src;
  if (blob->err) {
    int e = blob->err;
    fail(p, cp_cu_media_outcome(e), 0, e, "media %s: %s", src,
         blob->errmsg[0] ? blob->errmsg : cp_strerror(e));
    return;
  }
  if (!blob->content_type || strncmp(blob->content_type, "image/", 6)) {
    fail(p, CP_OUTCOME_PERMANENT, 0, 0,
         "media %s is %s: the featured image must be an image (PNG, JPEG, GIF or WebP)", src,
         blob->content_type ? blob->content_type : "of an unknown type");
    return;
  }
  char filename[128], disposition[160], ctype[128];
  safe_filename(blob->filename ? blob->filename : src, blob->content_type, filename,
                sizeof filename);
  snprintf(disposition, sizeof disposition, "attachment; filename=\"%s\"", filename);
  snprintf(ctype, sizeof ctype, "%s", blob->content_type);
  const char *alt = blob->alt ? blob->alt : p->post->media[0].alt;
  char *query = NULL;
  int err = CP_ENOMEM;
  if (alt && *alt) {
    /* alt_text in the query sets it in the same request (WordPress reads it from any part). */
    char *esc = curl_easy_escape(NULL, alt, 0);
    if (esc && asprintf(&query, "_fields=id,source_url&alt_text=%s", esc) < 0)
      query = NULL;
    curl_free(esc);
  } else {
    query = strdup("_fields=id,source_url");
  }
  if (query) {
    long timeout = p->w->timeout_ms * UPLOAD_TIMEOUT_FACTOR;
    p->step = STEP_MEDIA;
    err = request(p, "POST", api_url(p->w, "/wp/v2/media", query), ctype, disposition, blob->data,
                  blob->len, timeout > MAX_TIMEOUT_MS ? MAX_TIMEOUT_MS : timeout);
    free(query);
  }
  if (err)
    fail(p, CP_OUTCOME_RETRY, 0, err, "uploading %s: %s", src, cp_strerror(err));
}

static void on_uploaded(struct pub *p, const struct cp_http_resp *resp) {
  char what[300];
  snprintf(what, sizeof what, "uploading %s", p->post->media[0].src);
  if (!answered(p, resp, what, false, true))
    return;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *id = json_object_get(root, "id");
  p->media_id = json_is_integer(id) ? json_integer_value(id) : 0;
  json_decref(root);
  if (p->media_id <= 0) {
    p->media_id = 0;
    not_rest(p, resp);
    return;
  }
  /* A retry (after a failure below, or a crash) uses this upload instead of another one. */
  const struct cp_host *host = p->w->host;
  char progress[48];
  snprintf(progress, sizeof progress, "media=%" JSON_INTEGER_FORMAT, p->media_id);
  int err =
      host->version >= 2 && host->save_progress ? host->save_progress(p->req, progress) : CP_EINVAL;
  if (err)
    host->log(host, CP_LOG_WARN,
              "post %s: cannot store the uploaded media's id (%s): a retry uploads it again",
              p->post->id, cp_strerror(err));
  advance(p);
}

static void on_created(struct pub *p, const struct cp_http_resp *resp) {
  if (resp->status < 200 || resp->status >= 300) {
    answered(p, resp, "creating the post", true, false);
    return;
  }
  /* 201: published, even if the rest of the answer was lost. */
  struct cp_result res;
  p->w->host->http_result(p->req, resp, &res);
  res.outcome = CP_OUTCOME_OK;
  json_t *root = resp->err ? NULL : json_loadb(resp->body, resp->body_len, 0, NULL);
  copy_id(root, res.remote_id, sizeof res.remote_id);
  copy_link(root, res.remote_url, sizeof res.remote_url);
  json_decref(root);
  if (!res.remote_id[0]) { /* Location: .../wp/v2/posts/<id> */
    const char *loc = cp_http_header(resp, "Location");
    const char *slash = loc ? strrchr(loc, '/') : NULL;
    if (slash && slash[1] && strspn(slash + 1, "0123456789") == strlen(slash + 1))
      snprintf(res.remote_id, sizeof res.remote_id, "%s", slash + 1);
  }
  finish(p, &res);
}

static void on_login(struct pub *p, const struct cp_http_resp *resp) {
  if (!answered(p, resp, "checking the credentials", false, false))
    return;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  if (!json_is_object(root) || !json_object_get(root, "id")) {
    json_decref(root);
    not_rest(p, resp);
    return;
  }
  /* publish, future and private need publish_posts; draft and pending edit_posts. */
  const char *status = p->w->status;
  const char *need =
      !strcmp(status, "draft") || !strcmp(status, "pending") ? "edit_posts" : "publish_posts";
  json_t *caps = json_object_get(root, "capabilities");
  if (json_is_object(caps) && !json_is_true(json_object_get(caps, need))) {
    fail(p, CP_OUTCOME_AUTH, resp->status, 0,
         "WordPress user %s may not %s posts (no %s capability): give it the Author role or "
         "higher",
         p->w->username, strcmp(need, "edit_posts") ? "publish" : "write", need);
  } else {
    struct cp_result res = {.outcome = CP_OUTCOME_OK, .http_status = resp->status};
    copy_id(root, res.remote_id, sizeof res.remote_id);
    finish(p, &res);
  }
  json_decref(root);
}

static void on_response(const struct cp_http_resp *resp, void *data) {
  struct pub *p = data;
  switch (p->step) {
    case STEP_LOGIN:
      on_login(p, resp);
      break;
    case STEP_LOOKUP:
      on_lookup(p, resp);
      break;
    case STEP_CATEGORY:
    case STEP_TAG:
      on_term(p, resp);
      break;
    case STEP_TAG_CREATE:
      on_tag_created(p, resp);
      break;
    case STEP_MEDIA:
      on_uploaded(p, resp);
      break;
    case STEP_CREATE:
      on_created(p, resp);
      break;
    case STEP_COMMENTS:
      on_comments(p, resp);
      break;
  }
}

static int wp_publish(void *instance, const struct cp_post *post,
                      const struct cp_publish_req *req) {
  struct wp *w = instance;
  struct pub *p = calloc(1, sizeof *p);
  int err;
  if (!p)
    return CP_ENOMEM;
  p->w = w;
  p->req = req;
  p->post = post;
  const char *slug = cp_post_option(post, "slug");
  p->custom_slug = slug && *slug;
  snprintf(p->slug, sizeof p->slug, "%s",
           p->custom_slug         ? slug
           : req->idempotency_key ? req->idempotency_key
                                  : "");
  if (!p->slug[0]) {
    pub_free(p);
    return CP_EINVAL;
  }
  snprintf(p->marker, sizeof p->marker, "<!-- calpost:%s -->", post->id);
  err = terms_parse(cp_post_option(post, "categories"), &p->cats);
  if (!err)
    err = terms_parse(cp_post_option(post, "tags"), &p->tags);
  if (!err && req->progress && !strncmp(req->progress, "media=", 6)) {
    long long id = strtoll(req->progress + 6, NULL, 10);
    if (id > 0) {
      p->media_id = (json_int_t)id;
      w->host->log(w->host, CP_LOG_DEBUG, "post %s: media uploaded earlier as %lld", post->id, id);
    }
  }
  if (!err)
    err = start_lookup(p);
  if (err) {
    pub_free(p);
    return err;
  }
  return 0;
}

static int wp_login_check(void *instance, const struct cp_publish_req *req) {
  struct wp *w = instance;
  struct pub *p = calloc(1, sizeof *p);
  if (!p)
    return CP_ENOMEM;
  p->w = w;
  p->req = req;
  p->step = STEP_LOGIN;
  int err = request(p, "GET",
                    api_url(w, "/wp/v2/users/me", "context=edit&_fields=id,username,capabilities"),
                    NULL, NULL, NULL, 0, w->timeout_ms);
  if (err) {
    pub_free(p);
    return err;
  }
  return 0;
}

/* ---- engagement ----------------------------------------------------------------------------- */

static void on_comments(struct pub *p, const struct cp_http_resp *resp) {
  char what[SLUG_MAX + 64];
  snprintf(what, sizeof what, "reading the comments of post %s", p->slug);
  if (!answered(p, resp, what, false, false))
    return;
  /* The total is in the header; the body (one comment at most) only shows this is the REST API. */
  const char *total = cp_http_header(resp, "X-WP-Total");
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  bool is_list = json_is_array(root);
  json_decref(root);
  char *end = NULL;
  errno = 0;
  long long n = total ? strtoll(total, &end, 10) : -1;
  if (!is_list || !total || errno || end == total || *end || n < 0) {
    fail(p, CP_OUTCOME_RETRY, resp->status, CP_EPARSE,
         "%s: HTTP %ld, but the answer is not WordPress's comment list with an X-WP-Total header "
         "(a cache or proxy in between?)",
         what, resp->status);
    return;
  }
  struct cp_result res = {
      .outcome = CP_OUTCOME_OK,
      .http_status = resp->status,
      .has_engagement = true,
      .replies = (int64_t)n,
      .reposts = -1,
      .likes = -1,
      .quotes = -1,
      .views = -1,
  };
  finish(p, &res);
}

/* The comments of the post publish reported (its numeric id), approved ones only: WordPress
 * answers GET comments with status=approve unless asked otherwise. */
static int wp_engagement(void *instance, const char *remote_id, const char *remote_url,
                         const struct cp_publish_req *req) {
  struct wp *w = instance;
  char query[96];
  (void)remote_url;
  if (!remote_id || !*remote_id || strlen(remote_id) > 20 ||
      strspn(remote_id, "0123456789") != strlen(remote_id) || remote_id[0] == '0')
    return CP_EINVAL; /* not an id this connector reported */
  struct pub *p = calloc(1, sizeof *p);
  if (!p)
    return CP_ENOMEM;
  p->w = w;
  p->req = req;
  p->step = STEP_COMMENTS;
  snprintf(p->slug, sizeof p->slug, "%s", remote_id); /* for messages */
  snprintf(query, sizeof query, "post=%s&per_page=1&_fields=id", remote_id);
  int err =
      request(p, "GET", api_url(w, "/wp/v2/comments", query), NULL, NULL, NULL, 0, w->timeout_ms);
  if (err) {
    pub_free(p);
    return err;
  }
  return 0;
}

const struct cp_connector cp_connector_wordpress = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "wordpress",
    .description = "Blog posts through the WordPress REST API (Application Passwords), with "
                   "categories, tags and a featured image",
    /* Every attempt first looks for the post under its slug: a resend finds it instead of
     * making "<slug>-2". The first media item becomes the featured image. */
    .caps = CP_CAP_IDEMPOTENT | CP_CAP_MEDIA | CP_CAP_ENGAGEMENT,
    .init = wp_init,
    .validate = wp_validate,
    .publish = wp_publish,
    .classify = wp_classify,
    .login_check = wp_login_check,
    .free = wp_free,
    .post_options = post_options,
    .engagement = wp_engagement,
};
