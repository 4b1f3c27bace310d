/* The Mastodon connector: statuses with visibility, content warning and language, over-long text
 * as a reply chain, and media through the asynchronous v2 upload.
 *
 *   [channel social]
 *   type = mastodon
 *   instance = https://mastodon.social   ; required
 *   token_file = mastodon.token          ; or token_env = CALPOST_MASTODON_TOKEN; required
 *   visibility = public                  ; public | unlisted | private | direct
 *   language = en                        ; ISO 639-1; optional
 *   max_chars = 500                      ; optional: overrides the instance's limit
 *   timeout = 30                         ; per request, seconds or "500ms"
 *   media_timeout = 120                  ; how long to wait for media processing
 *
 * Requests (docs.joinmastodon.org, methods/statuses.md, methods/media.md, methods/instance.md):
 *   GET  /api/v2/instance                      the limit: configuration.statuses.max_characters
 *                                              and characters_reserved_per_url
 *   GET  /api/v1/accounts/verify_credentials   login check
 *   POST /api/v2/media                         multipart `file` + `description` (alt text);
 *                                              202: still processing, url null
 *   GET  /api/v1/media/:id                     poll until it has a url (206 while processing)
 *   POST /api/v1/statuses                      JSON, with an Idempotency-Key per part
 *   GET  /api/v1/statuses/:id                  engagement: replies_count, reblogs_count,
 *                                              favourites_count, quotes_count (4.5+); needs
 *                                              the read:statuses scope
 *
 * Progress (host->save_progress) is "m1=<media id>;1=<status id>;2=<status id>;url=<escaped URL
 * of part 1>": media uploaded for part 1 (dropped once part 1 is out) and the parts published, so
 * a later attempt resumes where this one stopped and never posts a part twice. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>
#include <uv.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"
#include "hints.h"
#include "http.h"

#define DEFAULT_MAX_CHARS 500
#define DEFAULT_URL_LEN 23
#define DEFAULT_TIMEOUT_MS 30000L
#define DEFAULT_MEDIA_TIMEOUT_MS 120000L
#define MAX_TIMEOUT_MS 600000L
#define MIN_UPLOAD_TIMEOUT_MS 120000L /* a 16 MiB upload on a slow line */
#define MAX_POLL_DELAY_MS 5000
#define MAX_MEDIA 4
#define ID_MAX 64
#define PROGRESS_MAX 4096

enum limits_state {
  LIMITS_UNKNOWN = 0, /* not asked yet, or the last answer was a transient failure */
  LIMITS_KNOWN,       /* read from GET /api/v2/instance */
  LIMITS_UNAVAILABLE, /* the instance does not say (404, not JSON): defaults, do not ask again */
};

struct masto {
  const struct cp_host *host;
  char *name;
  char *base;  /* "https://example.social", no trailing slash */
  char *token; /* from host->secret */
  char *auth;  /* "Bearer <token>" */
  char visibility[16];
  char language[4]; /* "" if none */
  size_t max_chars; /* from the config; 0: the instance's */
  long timeout_ms;
  long media_timeout_ms;
  /* From the instance, cached for validate and later publishes. */
  enum limits_state limits;
  size_t inst_max_chars;
  size_t inst_url_len;
};

/* One publish or login check in flight. */
struct job {
  struct masto *m;
  const struct cp_publish_req *req;
  const struct cp_post *post; /* NULL for a login check or an engagement read */
  uv_timer_t *timer;          /* media polls; its close callback completes the job */
  char status_id[ID_MAX];     /* the status whose engagement is read; "" otherwise */
  struct cp_result res;       /* the result handed to complete() */
  char key[128];              /* the post's idempotency key */
  /* Status options. */
  const char *visibility;
  const char *cw; /* NULL or non-empty */
  char language[4];
  int sensitive; /* -1 unset, 0, 1 */
  /* The thread. */
  char **parts;
  size_t n_parts;
  char (*ids)[ID_MAX]; /* ids of the published parts, n_parts of them */
  size_t done;         /* parts published */
  char first_url[CP_RESULT_URL_MAX];
  /* What earlier attempts stored (parsed from req->progress). */
  char (*prev_ids)[ID_MAX];
  size_t n_prev;
  /* Media for part 1. */
  size_t n_media;
  size_t mi; /* the media item being uploaded or polled */
  char media_ids[MAX_MEDIA][ID_MAX];
  bool media_ready[MAX_MEDIA];
  bool media_resumed[MAX_MEDIA]; /* the id came from progress: the server may have dropped it */
  uint64_t poll_deadline;
  uint64_t poll_delay;
};

static const char *const known_keys[] = {"instance", "token_file", "token_env",     "visibility",
                                         "language", "timeout",    "media_timeout", NULL};

static const char *const post_options[] = {"visibility", "cw", "language", "sensitive", NULL};

static const char *const visibilities[] = {"public", "unlisted", "private", "direct", NULL};

/* ISO 639-1, which Mastodon's `language` takes. */
static const char iso639_1[] =
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv "
    "cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr "
    "ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw "
    "ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv "
    "ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr "
    "ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi "
    "yo za zh zu";

/* Extensions of the media Mastodon takes and the host loads (images and videos). */
static const char *const image_exts[] = {"png",  "jpg",  "jpeg", "jfif", "gif",
                                         "webp", "heic", "heif", "avif", NULL};
static const char *const video_exts[] = {"mp4", "m4v", "mov", "webm", NULL};

/* ---- small helpers -------------------------------------------------------------------------- */

static bool in_list(const char *const *list, const char *s) {
  for (size_t i = 0; list[i]; i++)
    if (!strcasecmp(list[i], s))
      return true;
  return false;
}

/* Lower-cases a language code into out (4 bytes) if it is ISO 639-1; false otherwise. */
static bool language_code(const char *s, char out[4]) {
  if (strlen(s) != 2 || !isalpha((unsigned char)s[0]) || !isalpha((unsigned char)s[1]))
    return false;
  out[0] = (char)tolower((unsigned char)s[0]);
  out[1] = (char)tolower((unsigned char)s[1]);
  out[2] = '\0';
  for (const char *p = iso639_1; *p; p += p[2] ? 3 : 2)
    if (p[0] == out[0] && p[1] == out[1])
      return true;
  return false;
}

/* A Mastodon id is safe in a URL path and in progress: letters, digits, '-' and '_' (Mastodon's
 * are digits; other servers use ULIDs or flake ids). */
static bool valid_id(const char *s, size_t len) {
  if (len == 0 || len >= ID_MAX)
    return false;
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
      return false;
  return true;
}

/* Copies the JSON id (a string, or an integer from a lenient server) of obj into out. */
static bool json_id(json_t *obj, char out[ID_MAX]) {
  json_t *v = json_object_get(obj, "id");
  if (json_is_integer(v)) {
    snprintf(out, ID_MAX, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return true;
  }
  if (!json_is_string(v) || !valid_id(json_string_value(v), json_string_length(v)))
    return false;
  memcpy(out, json_string_value(v), json_string_length(v) + 1);
  return true;
}

static size_t limit_of(const struct masto *m) {
  if (m->max_chars)
    return m->max_chars;
  if (m->limits == LIMITS_KNOWN && m->inst_max_chars)
    return m->inst_max_chars;
  return DEFAULT_MAX_CHARS;
}

static size_t url_len_of(const struct masto *m) {
  return m->limits == LIMITS_KNOWN ? m->inst_url_len : DEFAULT_URL_LEN;
}

/* The length of text as the instance counts it: graphemes, URLs as url_len, remote mentions as
 * their local part. */
static size_t count_text(const struct masto *m, const char *text) {
  size_t url_len = url_len_of(m);
  return url_len == DEFAULT_URL_LEN ? cp_text_count(text, CP_COUNT_MASTODON)
                                    : cp_text_mastodon_len(text, url_len);
}

/* The spoiler text counts as plain graphemes (StatusLengthValidator: URLs in it are not
 * shortened), in the same budget as the text. */
static size_t count_cw(const char *cw) {
  return cw && *cw ? cp_text_graphemes(cw) : 0;
}

/* Where the limit came from, for messages. */
static const char *limit_source(const struct masto *m) {
  if (m->max_chars)
    return "max_chars";
  if (m->limits == LIMITS_KNOWN)
    return "the instance's limit";
  return "Mastodon's default; set max_chars if your instance allows more";
}

/* The extension of a media source (a path or a URL, without query and fragment), lower case, in
 * out; "" if it has none. */
static void media_ext(const char *src, char *out, size_t size) {
  char path[1024];
  const char *p = src;

  out[0] = '\0';
  if (!strncasecmp(src, "http://", 7) || !strncasecmp(src, "https://", 8)) {
    CURLU *u = curl_url();
    char *up = NULL;
    path[0] = '\0';
    if (u && curl_url_set(u, CURLUPART_URL, src, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PATH, &up, 0) == CURLUE_OK)
      snprintf(path, sizeof path, "%s", up);
    curl_free(up);
    curl_url_cleanup(u);
    p = path;
  }
  const char *slash = strrchr(p, '/');
  const char *base = slash ? slash + 1 : p;
  const char *dot = strrchr(base, '.');
  if (!dot || !dot[1] || strlen(dot + 1) >= size)
    return;
  for (size_t i = 0; dot[1 + i]; i++)
    out[i] = (char)tolower((unsigned char)dot[1 + i]);
  out[strlen(dot + 1)] = '\0';
}

/* ---- init / free ---------------------------------------------------------------------------- */

static void masto_free(void *instance) {
  struct masto *m = instance;
  if (!m)
    return;
  free(m->name);
  free(m->base);
  if (m->token)
    m->host->secret_free(m->token);
  if (m->auth) {
    /* It holds the token too. */
    memset(m->auth, 0, strlen(m->auth));
    free(m->auth);
  }
  free(m);
}

/* The instance's base URL from the `instance` key: https (plain http only to this machine),
 * "https://" assumed when no scheme is given, no query or fragment, without a trailing slash.
 * Returns a malloc'd string, or NULL with a reason in why. */
static char *base_url(const char *value, const char **why) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *query = NULL, *frag = NULL, *full = NULL, *out = NULL;

  *why = "is not a URL such as https://mastodon.social";
  if (!u || curl_url_set(u, CURLUPART_URL, value, CURLU_DEFAULT_SCHEME) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    goto done;
  if (strcmp(scheme, "https") && strcmp(scheme, "http"))
    goto done;
  bool loop = cp_cu_loopback_host(host, false);
  if (!strcmp(scheme, "http") && !loop) {
    *why = "uses plain http: the access token would travel unencrypted; use https";
    goto done;
  }
  if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
      curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK) {
    *why = "has a query or fragment: give the instance's address only";
    goto done;
  }
  if (curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK)
    goto done;
  size_t n = strlen(full);
  while (n > 0 && full[n - 1] == '/')
    n--;
  out = strndup(full, n);
  *why = out ? NULL : "out of memory";
done:
  curl_free(scheme);
  curl_free(host);
  curl_free(query);
  curl_free(frag);
  curl_free(full);
  curl_url_cleanup(u);
  return out;
}

static int masto_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                      void **instance) {
  int line = conf->line;
  const char *v, *why;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  struct masto *m = calloc(1, sizeof *m);
  if (!m)
    return CP_ENOMEM;
  m->host = host;
  m->timeout_ms = DEFAULT_TIMEOUT_MS;
  m->media_timeout_ms = DEFAULT_MEDIA_TIMEOUT_MS;
  m->inst_url_len = DEFAULT_URL_LEN;
  snprintf(m->visibility, sizeof m->visibility, "public");
  m->name = strdup(conf->name ? conf->name : "mastodon");
  if (!m->name)
    goto nomem;

  v = conf->get(conf, "instance", &line);
  if (!v || !*v) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] needs 'instance = https://...' (your Mastodon server)",
              conf->file, conf->line, conf->name);
    goto config;
  }
  m->base = base_url(v, &why);
  if (!m->base) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] instance: '%s' %s", conf->file, line,
              conf->name, v, why);
    goto config;
  }

  line = conf->line;
  v = conf->get(conf, "visibility", &line);
  if (v) {
    if (!in_list(visibilities, v)) {
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] visibility: '%s' is not public, unlisted, private or direct",
                conf->file, line, conf->name, v);
      goto config;
    }
    snprintf(m->visibility, sizeof m->visibility, "%s", v);
    for (char *p = m->visibility; *p; p++)
      *p = (char)tolower((unsigned char)*p);
  }

  line = conf->line;
  v = conf->get(conf, "language", &line);
  if (v && !language_code(v, m->language)) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] language: '%s' is not an ISO 639-1 code such as en or de",
              conf->file, line, conf->name, v);
    goto config;
  }

  line = conf->line;
  v = conf->get(conf, "max_chars", &line);
  if (v) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || *end || end == v || n == 0 || n > 1000000) {
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] max_chars: '%s' is not a number of characters (1 to "
                "1000000)",
                conf->file, line, conf->name, v);
      goto config;
    }
    m->max_chars = (size_t)n;
  }

  if (cp_cu_conf_timeout(host, conf, "timeout", 30, MAX_TIMEOUT_MS, &m->timeout_ms) ||
      cp_cu_conf_timeout(host, conf, "media_timeout", 30, MAX_TIMEOUT_MS, &m->media_timeout_ms))
    goto config;

  err = cp_cu_conf_secret(host, conf, "token",
                          "token_file or token_env: an access token with the scopes "
                          "write:statuses, write:media and read:statuses (Preferences > "
                          "Development > New application)",
                          &m->token);
  if (err) {
    masto_free(m);
    return err;
  }
  size_t alen = strlen("Bearer ") + strlen(m->token) + 1;
  m->auth = malloc(alen);
  if (!m->auth)
    goto nomem;
  snprintf(m->auth, alen, "Bearer %s", m->token);
  *instance = m;
  return 0;

config:
  masto_free(m);
  return CP_ECONFIG;
nomem:
  masto_free(m);
  return CP_ENOMEM;
}

/* ---- validate ------------------------------------------------------------------------------- */

static int masto_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  struct masto *m = instance;
  const char *text = post->text ? post->text : "";
  const char *v;
  char msg[400], lang[4];
  int errors = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    errors++;
  }

  v = cp_post_option(post, "visibility");
  if (v && !in_list(visibilities, v)) {
    snprintf(msg, sizeof msg,
             "visibility = %s: Mastodon knows public, unlisted, private and direct", v);
    diag(arg, true, msg);
    errors++;
  }
  v = cp_post_option(post, "language");
  if (v && !language_code(v, lang)) {
    snprintf(msg, sizeof msg,
             "language = %s: not an ISO 639-1 code; write a two-letter code such as en or de", v);
    diag(arg, true, msg);
    errors++;
  }
  v = cp_post_option(post, "sensitive");
  if (v && cp_cu_parse_bool(v) < 0) {
    snprintf(msg, sizeof msg, "sensitive = %s: write yes or no", v);
    diag(arg, true, msg);
    errors++;
  }

  /* The limit: max_chars, else what the instance said at the last login check or publish,
   * else Mastodon's default (validate does no I/O). */
  const char *cw = cp_post_option(post, "cw");
  size_t limit = limit_of(m), cw_len = count_cw(cw);
  size_t len = count_text(m, text) + cw_len;
  if (len > limit) {
    if (!post->thread) {
      snprintf(msg, sizeof msg,
               "%zu characters%s (links count %zu), channel %s allows %zu (%s): shorten the text "
               "or set thread = yes to post a reply chain",
               len, cw_len ? " with the content warning" : "", url_len_of(m), m->name, limit,
               limit_source(m));
      diag(arg, true, msg);
      errors++;
    } else if (cw_len >= limit) {
      snprintf(msg, sizeof msg,
               "the content warning has %zu characters, channel %s allows %zu per post: shorten "
               "the content warning",
               cw_len, m->name, limit);
      diag(arg, true, msg);
      errors++;
    } else {
      char **parts = NULL;
      size_t n = 0;
      if (cp_text_split(text, limit - cw_len, CP_COUNT_MASTODON, post->numbered, &parts, &n)) {
        snprintf(msg, sizeof msg,
                 "the text cannot be split into posts of %zu characters: shorten the content "
                 "warning or the text",
                 limit - cw_len);
        diag(arg, true, msg);
        errors++;
      }
      cp_text_split_free(parts, n);
    }
  }

  if (post->n_media > MAX_MEDIA) {
    snprintf(msg, sizeof msg, "%zu media: Mastodon takes at most 4 images (or 1 video) per post",
             post->n_media);
    diag(arg, true, msg);
    errors++;
  }
  size_t videos = 0;
  for (size_t i = 0; i < post->n_media; i++) {
    char ext[16];
    media_ext(post->media[i].src, ext, sizeof ext);
    if (in_list(video_exts, ext)) {
      videos++;
    } else if (*ext && !in_list(image_exts, ext)) {
      snprintf(msg, sizeof msg,
               "media %s: .%s is not an image or video Mastodon takes (png, jpg, gif, webp, "
               "heic, avif, mp4, mov, webm)",
               post->media[i].src, ext);
      diag(arg, true, msg);
      errors++;
    }
  }
  if (videos && post->n_media > 1) {
    diag(arg, true,
         "a video must be the only media of a Mastodon post: keep the video, or post the "
         "images separately");
    errors++;
  }
  return errors ? CP_EINVAL : 0;
}

/* ---- jobs ----------------------------------------------------------------------------------- */

static void job_free(struct job *j) {
  cp_text_split_free(j->parts, j->n_parts);
  free(j->ids);
  free(j->prev_ids);
  free(j);
}

static void on_timer_closed(uv_handle_t *h) {
  struct job *j = h->data;
  const struct cp_publish_req *req = j->req;
  struct cp_result res = j->res;
  free(h);
  job_free(j);
  req->host->complete(req, &res);
}

/* Finishes the job with res: closes its timer, whose close callback completes (so never from
 * inside publish) and frees the job. Called exactly once, with no request in flight. */
static void finish(struct job *j, const struct cp_result *res) {
  struct masto *m = j->m;
  j->res = *res;
  if (j->post) {
    if (res->outcome == CP_OUTCOME_OK && j->n_parts > 1)
      m->host->log(m->host, CP_LOG_INFO, "post %s published: status %s, a thread of %zu parts",
                   j->post->id, res->remote_id, j->n_parts);
    else if (res->outcome == CP_OUTCOME_OK)
      m->host->log(m->host, CP_LOG_INFO, "post %s published: status %s", j->post->id,
                   res->remote_id);
    else
      m->host->log(m->host, CP_LOG_WARN, "post %s not published (%s): %s", j->post->id,
                   cp_outcome_name(res->outcome), res->message);
  } else if (j->status_id[0] && res->outcome != CP_OUTCOME_OK) {
    m->host->log(m->host, CP_LOG_INFO, "engagement of status %s not read (%s): %s", j->status_id,
                 cp_outcome_name(res->outcome), res->message);
  }
  uv_timer_stop(j->timer);
  uv_close((uv_handle_t *)j->timer, on_timer_closed);
}

/* Finishes with a result made here (not from an HTTP answer). */
static void finish_with(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void finish_with(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...) {
  struct cp_result res;
  va_list ap;

  va_start(ap, fmt);
  cp_cu_result_vset(&res, outcome, err, fmt, ap);
  va_end(ap);
  finish(j, &res);
}

/* Puts "what: " before the message of res. */
static void prefix_message(struct cp_result *res, const char *what) {
  cp_cu_result_msg(res, "%s: %s", what, res->message);
}

/* Fills res from resp through the host, and adds the wait that Mastodon's X-RateLimit-Reset (an
 * ISO 8601 time; Mastodon sends no Retry-After) asks for. */
static void http_result(struct job *j, const struct cp_http_resp *resp, struct cp_result *res) {
  const struct cp_host *host = j->m->host;
  host->http_result(j->req, resp, res);
  if (res->outcome != CP_OUTCOME_RATE_LIMITED)
    return;
  struct cp_hints h;
  int64_t now = host->wall_ms(host);
  cp_hints_init(&h);
  for (size_t i = 0; i < resp->n_headers; i++)
    if (cp_hints_header(&h, resp->headers[i].name, resp->headers[i].value, now))
      host->log(host, CP_LOG_DEBUG, "unreadable rate-limit header %s: %s", resp->headers[i].name,
                resp->headers[i].value);
  int64_t at = h.retry_at_ms ? h.retry_at_ms : h.reset_ms;
  if (at > res->retry_at_ms)
    res->retry_at_ms = at;
}

/* Starts a request to the instance: path below the base URL; body (JSON) or parts; key: an
 * Idempotency-Key or NULL. On failure finishes the job and returns false. */
static bool send_request(struct job *j, const char *method, const char *path, const char *body,
                         const struct cp_http_part *parts, size_t n_parts, const char *key,
                         long timeout_ms, cp_http_cb cb) {
  struct masto *m = j->m;
  char url[2048];
  struct cp_http_header hdrs[4];
  size_t nh = 0;

  snprintf(url, sizeof url, "%s%s", m->base, path);
  hdrs[nh++] = (struct cp_http_header){"Authorization", m->auth};
  hdrs[nh++] = (struct cp_http_header){"Accept", "application/json"};
  if (body)
    hdrs[nh++] = (struct cp_http_header){"Content-Type", "application/json"};
  if (key)
    hdrs[nh++] = (struct cp_http_header){"Idempotency-Key", key};
  struct cp_http_req hr = {
      .method = method,
      .url = url,
      .headers = hdrs,
      .n_headers = nh,
      .body = body,
      .body_len = body ? strlen(body) : 0,
      .parts = parts,
      .n_parts = n_parts,
      /* Only a status create carries a key that makes a silent resend harmless. */
      .idempotent = key != NULL,
      .timeout_ms = timeout_ms,
      .connect_timeout_ms = m->timeout_ms < 10000 ? m->timeout_ms : 10000,
  };
  int err = m->host->http_request(m->host, &hr, cb, j);
  if (err) {
    finish_with(j, err == CP_EINVAL ? CP_OUTCOME_PERMANENT : CP_OUTCOME_RETRY, err,
                "cannot start the request to %s: %s", m->base, cp_strerror(err));
    return false;
  }
  return true;
}

/* Stores what is published so far (see the top of the file). A failure is logged: the post goes
 * on, protected within the hour by the Idempotency-Key alone. */
static void save_progress(struct job *j) {
  const struct cp_host *host = j->m->host;
  char buf[PROGRESS_MAX];
  size_t n = 0;
  int w;

  buf[0] = '\0';
  if (j->done == 0)
    for (size_t i = 0; i < j->n_media; i++)
      if (j->media_ids[i][0]) {
        w = snprintf(buf + n, sizeof buf - n, "%sm%zu=%s", n ? ";" : "", i + 1, j->media_ids[i]);
        n = w < 0 || (size_t)w >= sizeof buf - n ? sizeof buf : n + (size_t)w;
      }
  for (size_t k = 0; k < j->done && n < sizeof buf; k++) {
    w = snprintf(buf + n, sizeof buf - n, "%s%zu=%s", n ? ";" : "", k + 1, j->ids[k]);
    n = w < 0 || (size_t)w >= sizeof buf - n ? sizeof buf : n + (size_t)w;
  }
  if (j->first_url[0] && n < sizeof buf) {
    char *esc = curl_easy_escape(NULL, j->first_url, 0);
    w = esc ? snprintf(buf + n, sizeof buf - n, "%surl=%s", n ? ";" : "", esc) : 0;
    curl_free(esc);
    /* The URL is a convenience: without it the ids still fit. */
    if (w < 0 || (size_t)w >= sizeof buf - n)
      buf[n] = '\0';
    else
      n += (size_t)w;
  }
  if (n >= sizeof buf) {
    host->log(host, CP_LOG_ERROR, "post %s: progress does not fit in %d bytes; not saved",
              j->post->id, PROGRESS_MAX);
    return;
  }
  int err = host->save_progress ? host->save_progress(j->req, buf) : CP_EINVAL;
  if (err)
    host->log(host, CP_LOG_ERROR,
              "post %s: cannot save progress (%s): a retry after an hour "
              "could repeat parts",
              j->post->id, cp_strerror(err));
}

/* Reads req->progress: media ids, the ids of parts 1..n (the run without a gap) and the URL of
 * part 1. Unknown or malformed entries are ignored. Returns 0 or CP_ENOMEM. */
static int load_progress(struct job *j, const char *progress) {
  char *copy = strdup(progress ? progress : "");
  char *save = NULL;
  size_t cap = 1;

  if (!copy)
    return CP_ENOMEM;
  /* A run of parts 1..n needs n entries: there are no more parts than entries. */
  for (const char *p = copy; *p; p++)
    cap += *p == ';';
  char(*ids)[ID_MAX] = calloc(cap, sizeof *ids);
  bool *have = calloc(cap, sizeof *have);
  if (!ids || !have) {
    free(ids);
    free(have);
    free(copy);
    return CP_ENOMEM;
  }
  for (char *e = strtok_r(copy, ";", &save); e; e = strtok_r(NULL, ";", &save)) {
    char *eq = strchr(e, '=');
    if (!eq)
      continue;
    *eq = '\0';
    const char *k = e, *val = eq + 1;
    if (!strcmp(k, "url")) {
      int len = 0;
      char *u = curl_easy_unescape(NULL, val, 0, &len);
      if (u && len > 0 && (size_t)len < sizeof j->first_url && !memchr(u, '\0', (size_t)len))
        memcpy(j->first_url, u, (size_t)len + 1);
      curl_free(u);
      continue;
    }
    bool media = k[0] == 'm';
    if (!valid_id(val, strlen(val)) || !isdigit((unsigned char)k[media]))
      continue;
    char *end;
    errno = 0;
    unsigned long n = strtoul(k + media, &end, 10);
    if (errno || *end || n == 0)
      continue;
    if (media && n <= MAX_MEDIA) {
      snprintf(j->media_ids[n - 1], ID_MAX, "%s", val);
      j->media_resumed[n - 1] = true;
    } else if (!media && n <= cap) {
      snprintf(ids[n - 1], ID_MAX, "%s", val);
      have[n - 1] = true;
    }
  }
  size_t run = 0;
  while (run < cap && have[run])
    run++;
  j->prev_ids = ids;
  j->n_prev = run;
  free(have);
  free(copy);
  return 0;
}

/* ---- the thread ----------------------------------------------------------------------------- */

/* Splits the text into the parts to publish and applies the progress of earlier attempts.
 * On failure finishes the job and returns false. */
static bool make_parts(struct job *j) {
  struct masto *m = j->m;
  const struct cp_post *post = j->post;
  const char *text = post->text ? post->text : "";
  size_t limit = limit_of(m), cw_len = count_cw(j->cw);
  size_t len = count_text(m, text) + cw_len;
  int err;

  if (len <= limit || !post->thread) {
    /* Refuse here only with a limit we trust; otherwise let the instance decide. */
    if (len > limit && (m->max_chars || m->limits == LIMITS_KNOWN)) {
      finish_with(j, CP_OUTCOME_PERMANENT, 0,
                  "%zu characters (links count %zu), channel %s allows %zu (%s): shorten the text "
                  "or set thread = yes",
                  len, url_len_of(m), m->name, limit, limit_source(m));
      return false;
    }
    j->parts = malloc(sizeof *j->parts);
    if (!j->parts || !(j->parts[0] = strdup(text))) {
      finish_with(j, CP_OUTCOME_RETRY, CP_ENOMEM, "%s", cp_strerror(CP_ENOMEM));
      return false;
    }
    j->n_parts = 1;
  } else {
    if (cw_len >= limit) {
      finish_with(j, CP_OUTCOME_PERMANENT, 0,
                  "the content warning has %zu characters, channel %s allows %zu per post", cw_len,
                  m->name, limit);
      return false;
    }
    /* cp_text_split counts URLs as 23; an instance that reserves more gets smaller parts until
     * every part fits as it counts. */
    size_t budget = limit - cw_len, url_len = url_len_of(m);
    for (int tries = 0;; tries++) {
      err = cp_text_split(text, budget, CP_COUNT_MASTODON, post->numbered, &j->parts, &j->n_parts);
      if (err) {
        j->parts = NULL;
        j->n_parts = 0;
        finish_with(j, err == CP_ENOMEM ? CP_OUTCOME_RETRY : CP_OUTCOME_PERMANENT, err,
                    "cannot split the text into posts of %zu characters: %s", limit - cw_len,
                    cp_strerror(err));
        return false;
      }
      size_t over = 0;
      for (size_t i = 0; url_len != DEFAULT_URL_LEN && i < j->n_parts; i++) {
        size_t n = cp_text_mastodon_len(j->parts[i], url_len);
        if (n > limit - cw_len && n - (limit - cw_len) > over)
          over = n - (limit - cw_len);
      }
      if (!over)
        break;
      cp_text_split_free(j->parts, j->n_parts);
      j->parts = NULL;
      j->n_parts = 0;
      if (tries == 8 || budget <= over + 1) {
        finish_with(j, CP_OUTCOME_PERMANENT, 0,
                    "cannot split the text into posts of %zu characters with links counting %zu",
                    limit - cw_len, url_len);
        return false;
      }
      budget -= over;
    }
  }

  j->ids = calloc(j->n_parts, sizeof *j->ids);
  if (!j->ids) {
    finish_with(j, CP_OUTCOME_RETRY, CP_ENOMEM, "%s", cp_strerror(CP_ENOMEM));
    return false;
  }
  j->done = j->n_prev < j->n_parts ? j->n_prev : j->n_parts;
  for (size_t k = 0; k < j->done; k++)
    memcpy(j->ids[k], j->prev_ids[k], ID_MAX);
  if (j->n_prev > j->n_parts)
    m->host->log(m->host, CP_LOG_WARN,
                 "post %s: %zu parts were published earlier, the text now makes %zu: nothing more "
                 "to post",
                 post->id, j->n_prev, j->n_parts);
  else if (j->done)
    m->host->log(m->host, CP_LOG_INFO, "post %s: resuming at part %zu of %zu", post->id,
                 j->done + 1, j->n_parts);
  return true;
}

static void step(struct job *j);

static void on_status(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char what[64];
  size_t k = j->done;

  http_result(j, resp, &res);
  snprintf(what, sizeof what, "part %zu of %zu", k + 1, j->n_parts);
  if (res.outcome != CP_OUTCOME_OK) {
    if (j->n_parts > 1)
      prefix_message(&res, what);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  if (!json_is_object(root) || !json_id(root, j->ids[k])) {
    json_decref(root);
    /* It said yes, so the status probably exists: the same Idempotency-Key finds it again. */
    finish_with(j, CP_OUTCOME_UNKNOWN, 0, "%s%sHTTP %ld, but the answer is not a status with an id",
                j->n_parts > 1 ? what : "", j->n_parts > 1 ? ": " : "", resp->status);
    return;
  }
  if (k == 0) {
    json_t *u = json_object_get(root, "url");
    if (!json_is_string(u))
      u = json_object_get(root, "uri");
    if (json_is_string(u))
      snprintf(j->first_url, sizeof j->first_url, "%s", json_string_value(u));
  }
  json_decref(root);
  j->done++;
  save_progress(j);
  step(j);
}

static void post_part(struct job *j) {
  struct masto *m = j->m;
  size_t k = j->done;
  char key[sizeof j->key + 24];

  json_t *o = json_object();
  json_t *text = json_string(j->parts[k]);
  if (!o || !text) {
    json_decref(o);
    json_decref(text);
    finish_with(j, CP_OUTCOME_PERMANENT, CP_EUTF8, "the text is not valid UTF-8");
    return;
  }
  json_object_set_new(o, "status", text);
  json_object_set_new(o, "visibility", json_string(j->visibility));
  if (j->cw)
    json_object_set_new(o, "spoiler_text", json_string(j->cw));
  if (j->language[0])
    json_object_set_new(o, "language", json_string(j->language));
  if (j->sensitive >= 0)
    json_object_set_new(o, "sensitive", json_boolean(j->sensitive));
  if (k == 0 && j->n_media) {
    json_t *a = json_array();
    for (size_t i = 0; i < j->n_media; i++)
      json_array_append_new(a, json_string(j->media_ids[i]));
    json_object_set_new(o, "media_ids", a);
  }
  if (k > 0)
    json_object_set_new(o, "in_reply_to_id", json_string(j->ids[k - 1]));
  char *body = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!body) {
    finish_with(j, CP_OUTCOME_PERMANENT, CP_EUTF8, "the content warning is not valid UTF-8");
    return;
  }
  /* One key per part, stable across attempts: a resend returns the status it made before. */
  if (j->n_parts == 1)
    snprintf(key, sizeof key, "%s", j->key);
  else
    snprintf(key, sizeof key, "%s-%zu", j->key, k + 1);
  send_request(j, "POST", "/api/v1/statuses", body, NULL, 0, key, m->timeout_ms, on_status);
  free(body);
}

/* ---- media ---------------------------------------------------------------------------------- */

static void media_poll(struct job *j);

static void on_poll_timer(uv_timer_t *t) {
  media_poll(t->data);
}

/* Waits for media mi to be processed: the next poll, or RETRY once media_timeout has passed. */
static void media_wait(struct job *j) {
  struct masto *m = j->m;
  uint64_t now = m->host->now_ms(m->host);
  if (now >= j->poll_deadline) {
    finish_with(j, CP_OUTCOME_RETRY, 0,
                "media %zu (%s) is still being processed after %ld ms; trying again later",
                j->mi + 1, j->post->media[j->mi].src, m->media_timeout_ms);
    return;
  }
  uint64_t delay = j->poll_delay;
  if (now + delay > j->poll_deadline)
    delay = j->poll_deadline - now;
  j->poll_delay = j->poll_delay * 2 > MAX_POLL_DELAY_MS ? MAX_POLL_DELAY_MS : j->poll_delay * 2;
  uv_timer_start(j->timer, on_poll_timer, delay, 0);
}

static void poll_start(struct job *j, uint64_t first_delay) {
  struct masto *m = j->m;
  /* Short waits first (images finish in a moment), then at most every 5 s. */
  j->poll_delay = (uint64_t)m->media_timeout_ms / 4;
  if (j->poll_delay > 500)
    j->poll_delay = 500;
  if (j->poll_delay == 0)
    j->poll_delay = 1;
  j->poll_deadline = m->host->now_ms(m->host) + (uint64_t)m->media_timeout_ms;
  if (first_delay == 0)
    media_poll(j);
  else
    media_wait(j);
}

/* The media answer says whether the file is processed: a url is set. */
static bool media_has_url(const struct cp_http_resp *resp) {
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *u = json_object_get(root, "url");
  bool ready = json_is_string(u) && json_string_length(u) > 0;
  json_decref(root);
  return ready;
}

static void on_media_get(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char what[600];
  size_t i = j->mi;

  if (resp->status == 404 && j->media_resumed[i]) {
    /* An earlier attempt uploaded it, and the server has since dropped it: upload again. */
    j->m->host->log(j->m->host, CP_LOG_INFO, "media %zu (id %s) is gone; uploading it again", i + 1,
                    j->media_ids[i]);
    j->media_ids[i][0] = '\0';
    j->media_resumed[i] = false;
    step(j);
    return;
  }
  http_result(j, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    snprintf(what, sizeof what, "media %zu (%s)", i + 1, j->post->media[i].src);
    prefix_message(&res, what);
    finish(j, &res);
    return;
  }
  if (resp->status == 200 && media_has_url(resp)) {
    j->media_ready[i] = true;
    j->mi++;
    step(j);
    return;
  }
  media_wait(j); /* 206 Partial Content, or no url yet */
}

static void media_poll(struct job *j) {
  char path[64 + ID_MAX];
  snprintf(path, sizeof path, "/api/v1/media/%s", j->media_ids[j->mi]);
  send_request(j, "GET", path, NULL, NULL, 0, NULL, j->m->timeout_ms, on_media_get);
}

static void on_upload(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char what[600];
  size_t i = j->mi;

  snprintf(what, sizeof what, "media %zu (%s)", i + 1, j->post->media[i].src);
  http_result(j, resp, &res);
  /* An upload that may have arrived only leaves an unattached file, which the server deletes:
   * nothing anyone sees, so try again. */
  if (res.outcome == CP_OUTCOME_UNKNOWN)
    res.outcome = CP_OUTCOME_RETRY;
  if (res.outcome != CP_OUTCOME_OK) {
    prefix_message(&res, what);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  bool ok = json_is_object(root) && json_id(root, j->media_ids[i]);
  json_decref(root);
  if (!ok) {
    finish_with(j, CP_OUTCOME_RETRY, 0, "%s: HTTP %ld, but the answer is not a media attachment",
                what, resp->status);
    return;
  }
  j->media_resumed[i] = false;
  save_progress(j);
  if (resp->status == 200 && media_has_url(resp)) {
    j->media_ready[i] = true;
    j->mi++;
    step(j);
    return;
  }
  poll_start(j, 1); /* 202 Accepted: processed in the background */
}

static void on_media_loaded(const struct cp_media_blob *blob, void *data) {
  struct job *j = data;
  size_t i = j->mi;
  const struct cp_media *media = &j->post->media[i];

  if (blob->err) {
    finish_with(j, cp_cu_media_outcome(blob->err), blob->err, "media %zu (%s): %s", i + 1,
                media->src, blob->errmsg[0] ? blob->errmsg : cp_strerror(blob->err));
    return;
  }
  const char *alt = media->alt && *media->alt ? media->alt : blob->alt;
  struct cp_http_part parts[2] = {
      {.name = "file",
       .filename = blob->filename && *blob->filename ? blob->filename : "media",
       .content_type = blob->content_type,
       .data = (const char *)blob->data,
       .len = blob->len},
      {.name = "description", .data = alt ? alt : ""},
  };
  long timeout =
      j->m->timeout_ms > MIN_UPLOAD_TIMEOUT_MS ? j->m->timeout_ms : MIN_UPLOAD_TIMEOUT_MS;
  send_request(j, "POST", "/api/v2/media", NULL, parts, alt && *alt ? 2 : 1, NULL, timeout,
               on_upload);
}

/* Uploads (or, with an id from an earlier attempt, checks) media mi. */
static void media_next(struct job *j) {
  const struct cp_host *host = j->m->host;
  size_t i = j->mi;

  if (j->media_ids[i][0]) {
    poll_start(j, 0);
    return;
  }
  if (host->version < 2 || host->size < offsetof(struct cp_host, media_load) + sizeof(void *) ||
      !host->media_load) {
    finish_with(j, CP_OUTCOME_PERMANENT, CP_EINVAL, "this calpost cannot load media");
    return;
  }
  int err = host->media_load(j->req, &j->post->media[i], on_media_loaded, j);
  if (err)
    finish_with(j, cp_cu_media_outcome(err), err, "media %zu (%s): %s", i + 1,
                j->post->media[i].src, cp_strerror(err));
}

/* ---- the sequence --------------------------------------------------------------------------- */

/* Does the next thing: media for part 1, then the parts in order, then completes. */
static void step(struct job *j) {
  if (!j->parts && !make_parts(j))
    return;
  while (j->done == 0 && j->mi < j->n_media && j->media_ready[j->mi])
    j->mi++;
  if (j->done == 0 && j->mi < j->n_media) {
    media_next(j);
    return;
  }
  if (j->done < j->n_parts) {
    post_part(j);
    return;
  }
  struct cp_result res;
  memset(&res, 0, sizeof res);
  res.outcome = CP_OUTCOME_OK;
  snprintf(res.remote_id, sizeof res.remote_id, "%s", j->ids[0]);
  snprintf(res.remote_url, sizeof res.remote_url, "%s", j->first_url);
  finish(j, &res);
}

static void on_verify(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;

  http_result(j, resp, &res);
  if (res.outcome == CP_OUTCOME_OK) {
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *acct = json_object_get(root, "acct");
    if (json_is_string(acct))
      j->m->host->log(j->m->host, CP_LOG_INFO, "logged in to %s as @%s", j->m->base,
                      json_string_value(acct));
    json_decref(root);
  }
  finish(j, &res);
}

/* Reads configuration.statuses from GET /api/v2/instance into the instance's cache. */
static void on_instance(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct masto *m = j->m;
  json_t *root = NULL;

  if (resp->status >= 200 && resp->status < 300 && !resp->err)
    root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *st = json_object_get(json_object_get(root, "configuration"), "statuses");
  json_t *max = json_object_get(st, "max_characters");
  json_t *url = json_object_get(st, "characters_reserved_per_url");
  if (json_is_integer(max) && json_integer_value(max) > 0 && json_integer_value(max) <= 1000000) {
    m->limits = LIMITS_KNOWN;
    m->inst_max_chars = (size_t)json_integer_value(max);
    m->inst_url_len =
        json_is_integer(url) && json_integer_value(url) >= 0 && json_integer_value(url) <= 10000
            ? (size_t)json_integer_value(url)
            : DEFAULT_URL_LEN;
    m->host->log(m->host, CP_LOG_DEBUG, "%s allows %zu characters, links count %zu", m->base,
                 m->inst_max_chars, m->inst_url_len);
  } else {
    bool transient = !resp->status || resp->status == 429 || resp->status >= 500;
    if (m->limits != LIMITS_KNOWN)
      m->limits = transient ? LIMITS_UNKNOWN : LIMITS_UNAVAILABLE;
    char why[64];
    if (resp->status)
      snprintf(why, sizeof why, "HTTP %ld", resp->status);
    else
      snprintf(why, sizeof why, "%s", cp_strerror(resp->err));
    m->host->log(m->host, CP_LOG_WARN,
                 "cannot read the character limit from %s/api/v2/instance (%s): using %zu (%s)",
                 m->base, why, limit_of(m), limit_source(m));
  }
  json_decref(root);
  if (!j->post)
    send_request(j, "GET", "/api/v1/accounts/verify_credentials", NULL, NULL, 0, NULL,
                 m->timeout_ms, on_verify);
  else
    step(j);
}

static void fetch_limits(struct job *j) {
  send_request(j, "GET", "/api/v2/instance", NULL, NULL, 0, NULL, j->m->timeout_ms, on_instance);
}

static void free_handle(uv_handle_t *h) {
  free(h);
}

/* A new job with its timer; NULL on ENOMEM. */
static struct job *job_new(struct masto *m, const struct cp_publish_req *req,
                           const struct cp_post *post) {
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  j->timer = malloc(sizeof *j->timer);
  if (!j->timer) {
    free(j);
    return NULL;
  }
  uv_timer_init(m->host->loop, j->timer);
  j->timer->data = j;
  j->m = m;
  j->req = req;
  j->post = post;
  j->sensitive = -1;
  return j;
}

static int masto_publish(void *instance, const struct cp_post *post,
                         const struct cp_publish_req *req) {
  struct masto *m = instance;
  const char *v;

  if (post->n_media > MAX_MEDIA)
    return CP_ELIMIT; /* validate said so */
  struct job *j = job_new(m, req, post);
  if (!j)
    return CP_ENOMEM;
  if (load_progress(j, req->progress)) {
    uv_close((uv_handle_t *)j->timer, free_handle);
    job_free(j);
    return CP_ENOMEM;
  }
  if (req->idempotency_key && *req->idempotency_key)
    snprintf(j->key, sizeof j->key, "%s", req->idempotency_key);
  else
    m->host->idempotency_key(m->host, post, j->key, sizeof j->key);
  j->n_media = post->n_media;
  v = cp_post_option(post, "visibility");
  j->visibility = m->visibility;
  for (size_t i = 0; v && visibilities[i]; i++)
    if (!strcasecmp(v, visibilities[i]))
      j->visibility = visibilities[i];
  v = cp_post_option(post, "cw");
  j->cw = v && *v ? v : NULL;
  v = cp_post_option(post, "language");
  if (!v || !language_code(v, j->language))
    memcpy(j->language, m->language, sizeof j->language);
  j->sensitive = cp_cu_option_bool(post, "sensitive", -1);

  /* From here on every outcome, even an immediate one, completes through the timer's close
   * callback: never from inside this call. */
  if (m->limits == LIMITS_UNKNOWN)
    fetch_limits(j);
  else
    step(j);
  return 0;
}

static int masto_login_check(void *instance, const struct cp_publish_req *req) {
  struct masto *m = instance;
  struct job *j = job_new(m, req, NULL);
  if (!j)
    return CP_ENOMEM;
  fetch_limits(j); /* a fresh limit for validate, then the token */
  return 0;
}

/* ---- engagement ---------------------------------------------------------------------------- */

/* A count of the status, or -1 if the server does not give it (quotes_count before 4.5). */
static int64_t count_of(json_t *status, const char *key) {
  json_t *v = json_object_get(status, key);
  return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

static void on_engagement(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char what[160];

  http_result(j, resp, &res);
  /* A read changes nothing: an answer that got lost is simply asked again. */
  if (res.outcome == CP_OUTCOME_UNKNOWN)
    res.outcome = CP_OUTCOME_RETRY;
  if (res.outcome != CP_OUTCOME_OK) {
    snprintf(what, sizeof what, "status %s", j->status_id);
    if (resp->status == 404)
      snprintf(what, sizeof what, "status %s: the post was deleted", j->status_id);
    else if (res.outcome == CP_OUTCOME_AUTH && resp->status == 403) {
      /* The token posts but may not read (made with write scopes only): not a reason to pause
       * the channel's posts, which AUTH would do. */
      res.outcome = CP_OUTCOME_PERMANENT;
      snprintf(what, sizeof what,
               "status %s: reading it needs a token with the read:statuses scope", j->status_id);
    }
    prefix_message(&res, what);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  char id[ID_MAX];
  if (!json_is_object(root) || !json_id(root, id)) {
    json_decref(root);
    char buf[160];
    snprintf(buf, sizeof buf, "status %s: HTTP %ld, but the answer is not a status", j->status_id,
             resp->status);
    res.outcome = CP_OUTCOME_RETRY;
    res.err = CP_EPARSE;
    cp_connector_copy_text(res.message, sizeof res.message, buf, strlen(buf));
    finish(j, &res);
    return;
  }
  memset(&res, 0, sizeof res);
  res.outcome = CP_OUTCOME_OK;
  res.http_status = resp->status;
  res.has_engagement = true;
  res.replies = count_of(root, "replies_count");
  res.reposts = count_of(root, "reblogs_count");
  res.likes = count_of(root, "favourites_count");
  res.quotes = count_of(root, "quotes_count");
  res.views = -1; /* Mastodon counts no views */
  json_decref(root);
  finish(j, &res);
}

/* GET /api/v1/statuses/:id of the status publish reported (for a thread, its first part). */
static int masto_engagement(void *instance, const char *remote_id, const char *remote_url,
                            const struct cp_publish_req *req) {
  struct masto *m = instance;
  char path[64 + ID_MAX];

  (void)remote_url;
  if (!remote_id || !valid_id(remote_id, strlen(remote_id)))
    return CP_EINVAL; /* not an id this connector reported */
  struct job *j = job_new(m, req, NULL);
  if (!j)
    return CP_ENOMEM;
  snprintf(j->status_id, sizeof j->status_id, "%s", remote_id);
  snprintf(path, sizeof path, "/api/v1/statuses/%s", remote_id);
  /* A failure to start completes through the timer's close callback, never from in here. */
  send_request(j, "GET", path, NULL, NULL, 0, NULL, m->timeout_ms, on_engagement);
  return 0;
}

/* Mastodon answers 403 "This action is not allowed" for a post it refuses (a reply it does not
 * permit); other 403s are about the token, its scopes or the account. */
static enum cp_outcome masto_classify(void *instance, const struct cp_http_resp *resp,
                                      enum cp_outcome dflt) {
  if (resp->status != 403 || !resp->body_len)
    return dflt;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *e = json_object_get(root, "error");
  enum cp_outcome o = dflt;
  if (json_is_string(e) && strstr(json_string_value(e), "not allowed"))
    o = CP_OUTCOME_PERMANENT;
  json_decref(root);
  return o;
}

const struct cp_connector cp_connector_mastodon = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "mastodon",
    .description = "Mastodon statuses: visibility, content warnings, threads, media with alt text",
    .caps = CP_CAP_IDEMPOTENT | CP_CAP_MEDIA | CP_CAP_THREADS | CP_CAP_ENGAGEMENT,
    .init = masto_init,
    .validate = masto_validate,
    .publish = masto_publish,
    .classify = masto_classify,
    .login_check = masto_login_check,
    .free = masto_free,
    .post_options = post_options,
    .engagement = masto_engagement,
};
