/* The X (Twitter) connector: posts through API v2, signed with OAuth 1.0a user context.
 *
 *   [channel x]
 *   type = x
 *   consumer_key_file = x-consumer.key          ; or consumer_key_env = ...  (the app's API key)
 *   consumer_secret_file = x-consumer.secret     ; the app's API key secret
 *   access_token_file = x-access.token           ; the user's access token ("Read and write")
 *   access_token_secret_file = x-access.secret
 *   api_base = https://api.x.com                 ; default
 *   upload_base = https://api.x.com              ; default; the media endpoints
 *   max_chars = 280                              ; default; more for accounts that may post longer
 *
 * Publish: each media item is uploaded (POST {upload_base}/2/media/upload: images in one
 * multipart request, GIFs and videos as INIT / APPEND / FINALIZE and STATUS polling while X
 * processes them), its alt text is set (POST {upload_base}/2/media/metadata), then the post is
 * created: POST {api_base}/2/tweets {"text", "media":{"media_ids"}, "reply":{...}}. A thread is
 * a chain of posts, each a reply to the one before; the media go with the first.
 *
 * X has no idempotency key. The create request therefore always goes on a fresh connection (a
 * dead kept-alive one would be resent silently), and after each part the ids published so far
 * are saved ("1=<id>;2=<id>"), so that a retry continues after them instead of posting again.
 * An identical text is refused with 403 "duplicate content": permanent (it is probably there).
 *
 * Engagement: GET {api_base}/2/tweets/:id?tweet.fields=public_metrics, signed like the rest:
 * reply_count, retweet_count, like_count, quote_count and impression_count. A deleted post comes
 * back as 200 with only errors[] (a resource-not-found problem), or as 404. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <uv.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"
#include "http.h"
#include "oauth1.h"

#define DEFAULT_API_BASE "https://api.x.com"
#define DEFAULT_UPLOAD_BASE "https://api.x.com"
#define X_MAX_CHARS 280
#define X_MAX_MEDIA 4
#define X_ALT_MAX 1000 /* characters of alt text */
#define X_IMAGE_MAX (5u << 20)
#define X_GIF_MAX (15u << 20)
#define X_VIDEO_MAX (512u << 20)
#define X_CHUNK (4u << 20) /* APPEND segments: X takes at most 5 MB */
#define POST_TIMEOUT_MS 30000L
#define UPLOAD_TIMEOUT_MS 120000L
#define PROCESSING_MAX_MS (15 * 60 * 1000) /* give up waiting for X's video processing */
#define PROCESSING_MAX_POLLS 200
#define ID_MAX 32
#define STATUS_URL "https://x.com/i/web/status/"

struct x {
  const struct cp_host *host;
  char *name;
  char *api_base;    /* without a trailing slash */
  char *upload_base; /* without a trailing slash */
  char *consumer_key, *consumer_secret, *token, *token_secret;
  size_t max_chars; /* 0: 280 */
};

enum media_kind { KIND_IMAGE, KIND_GIF, KIND_VIDEO };

/* One publish or login check in flight. */
struct job {
  struct x *x;
  const struct cp_publish_req *req;
  const struct cp_post *post; /* NULL for a login check or an engagement read */
  bool engagement;            /* an engagement read of ids[0] */
  char **parts;               /* the text of each post of the thread */
  size_t n_parts;
  char (*ids)[ID_MAX]; /* per part: the id once published, "" before */
  size_t cur;          /* the part being created */
  long last_status;

  /* Media of the first part. */
  size_t media_i; /* the item being uploaded */
  char media_ids[X_MAX_MEDIA][ID_MAX];
  size_t n_media_ids;
  unsigned char *data; /* a copy of the loaded bytes (the blob is borrowed) */
  size_t len;
  char content_type[64];
  char filename[128];
  char *alt;
  enum media_kind kind;
  char media_id[ID_MAX];
  size_t offset;    /* bytes appended so far */
  unsigned segment; /* next APPEND segment_index */
  uint64_t processing_since;
  unsigned polls;

  uv_timer_t *timer; /* for STATUS polling and a deferred completion; closed before completing */
  void (*on_timer)(struct job *j);
  struct cp_result res;
  char what[64]; /* the current step, for messages: "part 2/3", "media 1" */
};

static const char *const known_keys[] = {"api_base",
                                         "upload_base",
                                         "consumer_key_file",
                                         "consumer_key_env",
                                         "consumer_secret_file",
                                         "consumer_secret_env",
                                         "access_token_file",
                                         "access_token_env",
                                         "access_token_secret_file",
                                         "access_token_secret_env",
                                         NULL};

static const char *const post_options[] = {"reply_to", "quote", "reply_settings", NULL};

/* ---- helpers -------------------------------------------------------------------------------- */

static bool all_digits(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n >= max)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!isdigit((unsigned char)s[i]))
      return false;
  return true;
}

/* An id from a JSON value: a string of digits or an integer. */
static bool json_id(json_t *v, char out[ID_MAX]) {
  if (json_is_string(v) && all_digits(json_string_value(v), ID_MAX)) {
    snprintf(out, ID_MAX, "%s", json_string_value(v));
    return true;
  }
  if (json_is_integer(v) && json_integer_value(v) > 0) {
    snprintf(out, ID_MAX, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return true;
  }
  return false;
}

/* The body as a JSON object (new reference), or NULL. */
static json_t *body_json(const struct cp_http_resp *resp) {
  if (!resp->body_len)
    return NULL;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  if (!json_is_object(root)) {
    json_decref(root);
    return NULL;
  }
  return root;
}

/* The id of what X created: data.id (v2), else media_id_string (v1.1-shaped answers). */
static bool response_id(json_t *root, char out[ID_MAX]) {
  json_t *data = json_object_get(root, "data");
  if (json_is_object(data) && json_id(json_object_get(data, "id"), out))
    return true;
  return json_id(json_object_get(root, "media_id_string"), out);
}

/* X's explanation of an error: problem "detail" or "title" (v2), else errors[0].message. */
static void error_text(json_t *root, char *dst, size_t size) {
  static const char *const fields[] = {"detail", "title", "message", "error", NULL};
  dst[0] = '\0';
  if (!root)
    return;
  json_t *errs = json_object_get(root, "errors");
  for (int pass = 0; pass < 2; pass++) {
    json_t *obj = pass == 0 ? root : json_array_get(errs, 0);
    for (size_t i = 0; json_is_object(obj) && fields[i]; i++) {
      json_t *v = json_object_get(obj, fields[i]);
      if (json_is_string(v) && json_string_length(v)) {
        cp_connector_copy_text(dst, size, json_string_value(v), json_string_length(v));
        return;
      }
    }
  }
}

static bool is_duplicate(json_t *root) {
  char text[256];
  error_text(root, text, sizeof text);
  if (strcasestr(text, "duplicate content"))
    return true;
  /* v1.1 shape: {"errors":[{"code":187,"message":"Status is a duplicate."}]} */
  json_t *e = json_array_get(json_object_get(root, "errors"), 0);
  return json_integer_value(json_object_get(e, "code")) == 187;
}

/* A 403 that is about the credentials or the app's setup, not about this post: the app lacks
 * write permission, is not attached to a project, or the authentication is of the wrong kind. */
static bool is_auth_problem(json_t *root) {
  static const char *const types[] = {"/problems/client-forbidden",
                                      "/problems/unsupported-authentication",
                                      "/problems/oauth1-permissions", NULL};
  const char *type = json_string_value(json_object_get(root, "type"));
  if (type) {
    size_t tl = strlen(type);
    for (size_t i = 0; types[i]; i++) {
      size_t l = strlen(types[i]);
      if (tl >= l && !strcmp(type + tl - l, types[i]))
        return true;
    }
  }
  /* v1.1 codes: 32 could not authenticate, 89 invalid or expired token, 135 timestamp out of
   * bounds, 215 bad authentication data, 220 credentials do not allow this, 326 locked. */
  json_t *e = json_array_get(json_object_get(root, "errors"), 0);
  switch (json_integer_value(json_object_get(e, "code"))) {
    case 32:
    case 89:
    case 135:
    case 215:
    case 220:
    case 326:
      return true;
    default:
      return false;
  }
}

static bool header_int(const struct cp_http_resp *resp, const char *name, long long *out) {
  const char *v = cp_http_header(resp, name);
  char *end;
  if (!v)
    return false;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  while (*end == ' ')
    end++;
  if (errno || end == v || *end)
    return false;
  *out = n;
  return true;
}

static void format_utc(int64_t ms, char *buf, size_t size) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* On a 429: the retry time from X's limit headers, the later of the resets that apply: a
 * 24-hour reset when that limit's remaining is 0, the 15-minute window's reset when it is
 * exhausted or nothing else explains the 429. Appends which limit it was to the message. */
static void apply_limits(struct job *j, const struct cp_http_resp *resp) {
  static const struct {
    const char *remaining, *reset, *what;
  } fams[] = {
      {"x-user-limit-24hour-remaining", "x-user-limit-24hour-reset", "24-hour user limit"},
      {"x-app-limit-24hour-remaining", "x-app-limit-24hour-reset", "24-hour app limit"},
  };
  long long rem, reset;
  int64_t best = 0;
  const char *what = NULL;

  for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++)
    if (header_int(resp, fams[i].remaining, &rem) && rem <= 0 &&
        header_int(resp, fams[i].reset, &reset) && reset * 1000 > best) {
      best = reset * 1000;
      what = fams[i].what;
    }
  if (header_int(resp, "x-rate-limit-reset", &reset) &&
      (!what || (header_int(resp, "x-rate-limit-remaining", &rem) && rem <= 0)) &&
      reset * 1000 > best) {
    best = reset * 1000;
    what = "15-minute limit";
  }
  if (best > j->x->host->wall_ms(j->x->host)) {
    char when[32], tail[96];
    j->res.retry_at_ms = best;
    format_utc(best, when, sizeof when);
    snprintf(tail, sizeof tail, " (%s reached, resets %s)", what, when);
    size_t ml = strlen(j->res.message);
    snprintf(j->res.message + ml, sizeof j->res.message - ml, "%s", tail);
  }
}

/* ---- config --------------------------------------------------------------------------------- */

static void x_free(void *instance) {
  struct x *x = instance;
  if (!x)
    return;
  free(x->name);
  free(x->api_base);
  free(x->upload_base);
  x->host->secret_free(x->consumer_key);
  x->host->secret_free(x->consumer_secret);
  x->host->secret_free(x->token);
  x->host->secret_free(x->token_secret);
  free(x);
}

/* A base URL: https, or plain http to this machine (tests). Returns a malloc'd copy without a
 * trailing slash, or NULL (logged). */
static char *base_url(const struct cp_host *host, const struct cp_connector_conf *conf,
                      const char *key, const char *dflt) {
  int line = conf->line;
  const char *v = conf->get(conf, key, &line);
  char *scheme = NULL, *h = NULL, *out = NULL;
  CURLU *u = curl_url();

  if (!v)
    v = dflt;
  if (u && curl_url_set(u, CURLUPART_URL, v, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK) {
    if (!strcmp(scheme, "https") || (!strcmp(scheme, "http") && cp_cu_loopback_host(h, false))) {
      out = strdup(v);
      for (size_t n = out ? strlen(out) : 0; n && out[n - 1] == '/'; n--)
        out[n - 1] = '\0';
    } else {
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] %s: '%s' must be an https:// URL (plain http only to "
                "127.0.0.1, localhost or [::1])",
                conf->file, line, conf->name, key, v);
    }
  } else {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] %s: '%s' is not a URL", conf->file, line,
              conf->name, key, v);
  }
  curl_free(scheme);
  curl_free(h);
  curl_url_cleanup(u);
  return out;
}

static int read_secret(const struct cp_host *host, const struct cp_connector_conf *conf,
                       const char *key, const char *what, char **out) {
  char needs[160];
  snprintf(needs, sizeof needs, "%s_file or %s_env (%s)", key, key, what);
  return cp_cu_conf_secret(host, conf, key, needs, out);
}

static int x_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                  void **instance) {
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  struct x *x = calloc(1, sizeof *x);
  if (!x)
    return CP_ENOMEM;
  x->host = host;
  x->name = strdup(conf->name ? conf->name : "x");
  if (!x->name) {
    x_free(x);
    return CP_ENOMEM;
  }
  x->api_base = base_url(host, conf, "api_base", DEFAULT_API_BASE);
  x->upload_base = base_url(host, conf, "upload_base", DEFAULT_UPLOAD_BASE);
  if (!x->api_base || !x->upload_base) {
    x_free(x);
    return CP_ECONFIG;
  }
  err = cp_cu_conf_count(host, conf, "max_chars", 1, 100000, "a number from 1 to 100000",
                         &x->max_chars);
  if (err) {
    x_free(x);
    return err;
  }
  err = read_secret(host, conf, "consumer_key", "the app's API key", &x->consumer_key);
  if (!err)
    err =
        read_secret(host, conf, "consumer_secret", "the app's API key secret", &x->consumer_secret);
  if (!err)
    err = read_secret(host, conf, "access_token", "the account's access token", &x->token);
  if (!err)
    err = read_secret(host, conf, "access_token_secret", "the account's access token secret",
                      &x->token_secret);
  if (err) {
    x_free(x);
    return err;
  }
  *instance = x;
  return 0;
}

/* ---- validate ------------------------------------------------------------------------------- */

/* The kind of a media source by its extension (an URL's path, without query or fragment);
 * -1 if it has none, -2 if X does not take it. */
static int kind_of_src(const char *src) {
  static const struct {
    const char *ext;
    enum media_kind kind;
  } exts[] = {{"png", KIND_IMAGE}, {"jpg", KIND_IMAGE}, {"jpeg", KIND_IMAGE}, {"webp", KIND_IMAGE},
              {"gif", KIND_GIF},   {"mp4", KIND_VIDEO}, {"mov", KIND_VIDEO}};
  size_t end = strcspn(src, "?#");
  const char *dot = NULL;
  for (size_t i = 0; i < end; i++) {
    if (src[i] == '/')
      dot = NULL; /* a dot in a folder name is no extension */
    else if (src[i] == '.')
      dot = src + i;
  }
  if (!dot || (size_t)(src + end - dot) < 2)
    return -1;
  size_t el = (size_t)(src + end - dot - 1);
  for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
    if (el == strlen(exts[i].ext) && !strncasecmp(dot + 1, exts[i].ext, el))
      return (int)exts[i].kind;
  return -2;
}

/* A post id from an option value: the id itself or a status URL on x.com / twitter.com. */
static bool post_ref(const char *v, char out[ID_MAX]) {
  if (all_digits(v, 20)) {
    snprintf(out, ID_MAX, "%s", v);
    return true;
  }
  CURLU *u = curl_url();
  char *h = NULL, *path = NULL;
  bool ok = false;
  if (u && curl_url_set(u, CURLUPART_URL, v, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK) {
    bool host_ok = !strcasecmp(h, "x.com") || !strcasecmp(h, "www.x.com") ||
                   !strcasecmp(h, "twitter.com") || !strcasecmp(h, "www.twitter.com") ||
                   !strcasecmp(h, "mobile.twitter.com") || !strcasecmp(h, "mobile.x.com");
    const char *st = strstr(path, "/status/");
    if (host_ok && st) {
      char id[ID_MAX];
      size_t n = strcspn(st + 8, "/");
      if (n < 20) {
        memcpy(id, st + 8, n);
        id[n] = '\0';
        if (all_digits(id, 20)) {
          snprintf(out, ID_MAX, "%s", id);
          ok = true;
        }
      }
    }
  }
  curl_free(h);
  curl_free(path);
  curl_url_cleanup(u);
  return ok;
}

/* X's own spelling of a reply_settings value, or NULL. */
static const char *reply_setting(const char *v) {
  static const char *const values[] = {"following", "mentionedUsers", "subscribers", "verified",
                                       NULL};
  for (size_t i = 0; values[i]; i++)
    if (!strcasecmp(v, values[i]))
      return values[i];
  return NULL;
}

static size_t limit_of(const struct x *x) {
  return x->max_chars ? x->max_chars : X_MAX_CHARS;
}

static int x_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  struct x *x = instance;
  const char *text = post->text ? post->text : "";
  size_t limit = limit_of(x);
  char msg[400], id[ID_MAX];
  int errors = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  if (cp_utf8_check(text, strlen(text), NULL)) {
    diag(arg, true, "the text is not valid UTF-8: save the plan as UTF-8");
    return CP_EINVAL;
  }
  size_t count = cp_text_x_len(text);
  if (count > limit && !post->thread) {
    snprintf(msg, sizeof msg,
             "%zu weighted characters, X allows %zu (URLs count 23, emoji and CJK 2): shorten "
             "the text or set thread = yes",
             count, limit);
    diag(arg, true, msg);
    errors++;
  } else if (post->thread) {
    char **parts = NULL;
    size_t n = 0;
    int err = cp_text_split(text, limit, CP_COUNT_X, post->numbered, &parts, &n);
    if (err) {
      snprintf(msg, sizeof msg,
               "the text cannot be split into posts of %zu weighted characters "
               "(%s): raise max_chars or shorten it",
               limit, cp_strerror(err));
      diag(arg, true, msg);
      errors++;
    }
    cp_text_split_free(parts, n);
  }

  size_t n_gif = 0, n_video = 0;
  if (post->n_media > X_MAX_MEDIA) {
    snprintf(msg, sizeof msg, "%zu media, X allows at most 4 images per post: remove some",
             post->n_media);
    diag(arg, true, msg);
    errors++;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    const struct cp_media *m = &post->media[i];
    int kind = kind_of_src(m->src);
    if (kind == -2) {
      snprintf(msg, sizeof msg,
               "media %zu (%s): X takes JPEG, PNG, WebP and GIF images and MP4/MOV videos", i + 1,
               m->src);
      diag(arg, true, msg);
      errors++;
    } else if (kind == -1) {
      snprintf(msg, sizeof msg,
               "media %zu (%s): no file extension; its type is checked when it is loaded", i + 1,
               m->src);
      diag(arg, false, msg);
    }
    n_gif += kind == KIND_GIF;
    n_video += kind == KIND_VIDEO;
    if (m->alt && cp_utf8_check(m->alt, strlen(m->alt), NULL) == 0 &&
        cp_text_codepoints(m->alt) > X_ALT_MAX) {
      snprintf(msg, sizeof msg, "media %zu: alt text of %zu characters, X allows %d: shorten it",
               i + 1, cp_text_codepoints(m->alt), X_ALT_MAX);
      diag(arg, true, msg);
      errors++;
    }
    if (m->alt && kind == KIND_VIDEO) {
      snprintf(msg, sizeof msg,
               "media %zu: X takes alt text for images and GIFs only; it is "
               "not sent for this video",
               i + 1);
      diag(arg, false, msg);
    }
  }
  if ((n_gif || n_video) && post->n_media > 1) {
    diag(arg, true,
         "X allows up to 4 images, or 1 GIF, or 1 video per post: keep the GIF or "
         "video alone");
    errors++;
  }

  const char *v = cp_post_option(post, "reply_to");
  if (v && !post_ref(v, id)) {
    snprintf(msg, sizeof msg,
             "reply_to = %s: give the id of a post or its URL (https://x.com/USER/status/ID)", v);
    diag(arg, true, msg);
    errors++;
  }
  v = cp_post_option(post, "quote");
  if (v && !post_ref(v, id)) {
    snprintf(msg, sizeof msg,
             "quote = %s: give the id of a post or its URL (https://x.com/USER/status/ID)", v);
    diag(arg, true, msg);
    errors++;
  } else if (v && post->n_media) {
    diag(arg, true, "quote and media cannot go together on X: drop one of them");
    errors++;
  }
  v = cp_post_option(post, "reply_settings");
  if (v && !reply_setting(v)) {
    snprintf(msg, sizeof msg,
             "reply_settings = %s: use following, mentionedUsers, subscribers or verified", v);
    diag(arg, true, msg);
    errors++;
  }
  return errors ? CP_EINVAL : 0;
}

/* ---- classify ------------------------------------------------------------------------------- */

static enum cp_outcome x_classify(void *instance, const struct cp_http_resp *resp,
                                  enum cp_outcome dflt) {
  enum cp_outcome o = dflt;
  if (resp->status == 401)
    return CP_OUTCOME_AUTH;
  if (resp->status == 429)
    return CP_OUTCOME_RATE_LIMITED;
  if (resp->status == 400 || resp->status == 403) {
    json_t *root = body_json(resp);
    if (resp->status == 403)
      o = is_duplicate(root) || !is_auth_problem(root) ? CP_OUTCOME_PERMANENT : CP_OUTCOME_AUTH;
    else if (is_auth_problem(root))
      o = CP_OUTCOME_AUTH;
    json_decref(root);
  }
  return o;
}

/* ---- the job -------------------------------------------------------------------------------- */

static void job_free(struct job *j) {
  if (!j)
    return;
  cp_text_split_free(j->parts, j->n_parts);
  free(j->ids);
  free(j->data);
  free(j->alt);
  free(j);
}

static void complete_now(struct job *j) {
  const struct cp_publish_req *req = j->req;
  struct cp_result res = j->res;
  job_free(j);
  req->host->complete(req, &res);
}

static void on_timer_closed(uv_handle_t *h) {
  struct job *j = h->data;
  free(h);
  j->timer = NULL;
  complete_now(j);
}

/* Completes with j->res, after closing the timer if there is one. */
static void finish(struct job *j) {
  const struct cp_host *host = j->x->host;
  if (j->engagement) {
    if (j->res.outcome != CP_OUTCOME_OK)
      host->log(host, CP_LOG_INFO, "engagement not read (%s): %s", cp_outcome_name(j->res.outcome),
                j->res.message);
  } else if (!j->post)
    host->log(host, j->res.outcome == CP_OUTCOME_OK ? CP_LOG_INFO : CP_LOG_WARN,
              "login check: %s: %s", cp_outcome_name(j->res.outcome), j->res.message);
  else if (j->res.outcome == CP_OUTCOME_OK)
    host->log(host, CP_LOG_INFO, "post %s published as %s", j->post->id, j->res.remote_url);
  else
    host->log(host, CP_LOG_WARN, "post %s not published (%s): %s", j->post->id,
              cp_outcome_name(j->res.outcome), j->res.message);
  if (j->timer) {
    uv_timer_stop(j->timer);
    uv_close((uv_handle_t *)j->timer, on_timer_closed);
    return;
  }
  complete_now(j);
}

/* Completes with a local failure (nothing reached X in this step). */
static void fail(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cp_cu_result_vset(&j->res, outcome, err, fmt, ap);
  va_end(ap);
  j->res.http_status = j->last_status;
  finish(j);
}

static void on_timer(uv_timer_t *t) {
  struct job *j = t->data;
  j->on_timer(j);
}

/* Calls fn(j) from the loop after delay_ms. Returns 0 or a libuv error as -errno. */
static int after(struct job *j, uint64_t delay_ms, void (*fn)(struct job *j)) {
  if (!j->timer) {
    j->timer = malloc(sizeof *j->timer);
    if (!j->timer)
      return CP_ENOMEM;
    int err = uv_timer_init(j->x->host->loop, j->timer);
    if (err) {
      free(j->timer);
      j->timer = NULL;
      return err;
    }
    j->timer->data = j;
  }
  j->on_timer = fn;
  return uv_timer_start(j->timer, on_timer, delay_ms, 0);
}

/* Fills j->res from an HTTP answer; on anything but OK completes with the message refined from
 * X's error body and returns false. */
static bool step_ok(struct job *j, const struct cp_http_resp *resp) {
  const struct cp_host *host = j->x->host;
  char text[200], hint[160] = "", msg[2 * CP_RESULT_MESSAGE_MAX];

  j->last_status = resp->status;
  host->http_result(j->req, resp, &j->res);
  if (j->res.outcome == CP_OUTCOME_OK)
    return true;
  /* A read that got no answer changed nothing: simply ask again. */
  if (j->engagement && j->res.outcome == CP_OUTCOME_UNKNOWN)
    j->res.outcome = CP_OUTCOME_RETRY;
  /* An access level that may post but not look posts up: not a reason to pause the channel's
   * posts, which AUTH would do (a 401 is). */
  bool read_refused = j->engagement && j->res.outcome == CP_OUTCOME_AUTH && resp->status == 403;
  if (read_refused)
    j->res.outcome = CP_OUTCOME_PERMANENT;
  if (resp->status) {
    json_t *root = body_json(resp);
    error_text(root, text, sizeof text);
    if (j->engagement && resp->status == 404)
      snprintf(hint, sizeof hint, " (the post was deleted)");
    else if (read_refused) /* first: X's own text is long */
      snprintf(hint, sizeof hint,
               ": the app may not look posts up (it needs a project and an X "
               "API access level with post lookup)");
    else if (resp->status == 403 && is_duplicate(root))
      snprintf(hint, sizeof hint,
               " (X refuses duplicate content: the same text was posted "
               "before, possibly by an earlier attempt)");
    else if (j->res.outcome == CP_OUTCOME_AUTH && resp->status == 401)
      snprintf(hint, sizeof hint,
               " (check the consumer key and secret, the access token and "
               "secret, and the clock)");
    else if (j->res.outcome == CP_OUTCOME_AUTH)
      snprintf(hint, sizeof hint,
               " (the app needs Read and Write permission and a project; "
               "regenerate the access token after changing it)");
    json_decref(root);
    if (read_refused)
      snprintf(msg, sizeof msg, "%s: HTTP %ld%s%s%s", j->what, resp->status, hint,
               text[0] ? ": " : "", text);
    else
      snprintf(msg, sizeof msg, "%s: HTTP %ld%s%s%s", j->what, resp->status, text[0] ? ": " : "",
               text[0] ? text : "", hint);
  } else {
    snprintf(msg, sizeof msg, "%s: %s", j->what, j->res.message);
  }
  cp_connector_copy_text(j->res.message, sizeof j->res.message, msg, strlen(msg));
  if (j->res.outcome == CP_OUTCOME_RATE_LIMITED)
    apply_limits(j, resp);
  finish(j);
  return false;
}

/* Sends a signed request for j; cb gets j. Returns 0 or a negative CP_E* (cb never called). */
static int send_signed(struct job *j, const char *method, const char *url, const char *json,
                       const struct cp_http_part *parts, size_t n_parts, long timeout_ms,
                       cp_http_cb cb) {
  struct x *x = j->x;
  const struct cp_host *host = x->host;
  char nonce[CP_OAUTH1_NONCE_SIZE], ts[24];
  char *auth = NULL;
  struct cp_http_header hdrs[3];
  size_t nh = 0;
  struct cp_oauth1_creds creds = {x->consumer_key, x->consumer_secret, x->token, x->token_secret};

  int err = cp_oauth1_nonce(nonce);
  if (err)
    return err;
  snprintf(ts, sizeof ts, "%lld", (long long)(host->wall_ms(host) / 1000));
  /* A JSON or multipart body is not part of the signature: only the query and oauth_*. */
  err = cp_oauth1_authorization(&creds, method, url, NULL, 0, nonce, ts, "1.0", &auth, NULL);
  if (err)
    return err;
  hdrs[nh++] = (struct cp_http_header){"Authorization", auth};
  hdrs[nh++] = (struct cp_http_header){"Accept", "application/json"};
  if (json)
    hdrs[nh++] = (struct cp_http_header){"Content-Type", "application/json"};
  struct cp_http_req hr = {
      .method = method,
      .url = url,
      .headers = hdrs,
      .n_headers = nh,
      .body = json,
      .body_len = json ? strlen(json) : 0,
      .parts = parts,
      .n_parts = n_parts,
      .timeout_ms = timeout_ms,
      /* X has no idempotency key: a silent resend could post twice, so never on a reused
       * connection. */
      .idempotent = false,
  };
  err = host->http_request(host, &hr, cb, j);
  free(auth);
  return err;
}

/* ---- thread parts --------------------------------------------------------------------------- */

static int save_progress(struct job *j) {
  char buf[4096];
  size_t len = 0;
  buf[0] = '\0';
  for (size_t k = 0; k < j->n_parts; k++)
    if (j->ids[k][0]) {
      int err = cp_cu_progress_put(buf, sizeof buf, &len, "", k + 1, j->ids[k]);
      if (err)
        return err;
    }
  return j->x->host->save_progress(j->req, buf);
}

static int load_part(void *arg, size_t k, const char *id) {
  struct job *j = arg;
  if (all_digits(id, ID_MAX))
    snprintf(j->ids[k - 1], ID_MAX, "%s", id);
  return 0;
}

/* Reads "1=<id>;2=<id>" into j->ids (parts beyond the thread's length are ignored). */
static void load_progress(struct job *j, const char *progress) {
  cp_cu_progress_each(progress, "", j->n_parts, load_part, j);
}

static void set_ok(struct job *j) {
  memset(&j->res, 0, sizeof j->res);
  j->res.outcome = CP_OUTCOME_OK;
  j->res.http_status = j->last_status;
  snprintf(j->res.remote_id, sizeof j->res.remote_id, "%s", j->ids[0]);
  snprintf(j->res.remote_url, sizeof j->res.remote_url, STATUS_URL "%s", j->ids[0]);
}

static int part_next(struct job *j);

static void on_created(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  char id[ID_MAX];

  if (!step_ok(j, resp))
    return;
  json_t *root = body_json(resp);
  bool ok = root && response_id(root, id);
  json_decref(root);
  if (!ok) {
    /* X said yes: the post most likely exists, so a blind retry could duplicate it. */
    fail(j, CP_OUTCOME_UNKNOWN, resp->err,
         "%s: HTTP %ld without a post id in the answer: check the account before retrying", j->what,
         resp->status);
    return;
  }
  snprintf(j->ids[j->cur], ID_MAX, "%s", id);
  int err = save_progress(j);
  if (err)
    j->x->host->log(j->x->host, CP_LOG_WARN,
                    "post %s: cannot save progress (%s): a retry may post %s again", j->post->id,
                    cp_strerror(err), j->what);
  err = part_next(j);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "part %zu/%zu: cannot send: %s", j->cur + 1, j->n_parts,
         cp_strerror(err));
}

/* The JSON body of part k. Returns a malloc'd string or NULL on ENOMEM. */
static char *part_body(struct job *j, size_t k) {
  const struct cp_post *post = j->post;
  char ref[ID_MAX];
  json_t *root = json_object();
  const char *v;

  if (!root)
    return NULL;
  if (j->parts[k][0])
    json_object_set_new(root, "text", json_string(j->parts[k]));
  if (k == 0 && j->n_media_ids) {
    json_t *ids = json_array();
    for (size_t i = 0; i < j->n_media_ids; i++)
      json_array_append_new(ids, json_string(j->media_ids[i]));
    json_object_set_new(root, "media", json_pack("{s:o}", "media_ids", ids));
  }
  const char *reply_to = NULL;
  if (k > 0)
    reply_to = j->ids[k - 1];
  else if ((v = cp_post_option(post, "reply_to")) && post_ref(v, ref))
    reply_to = ref;
  if (reply_to)
    json_object_set_new(root, "reply", json_pack("{s:s}", "in_reply_to_tweet_id", reply_to));
  if (k == 0 && (v = cp_post_option(post, "quote")) && post_ref(v, ref))
    json_object_set_new(root, "quote_tweet_id", json_string(ref));
  if ((v = cp_post_option(post, "reply_settings")) && reply_setting(v))
    json_object_set_new(root, "reply_settings", json_string(reply_setting(v)));
  char *s = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  return s;
}

/* Creates the first part not yet published; completes OK when none is left. Returns 0 or an
 * error (nothing sent). */
static int part_next(struct job *j) {
  char url[1024];
  size_t k = 0;
  while (k < j->n_parts && j->ids[k][0])
    k++;
  if (k == j->n_parts) {
    set_ok(j);
    finish(j);
    return 0;
  }
  j->cur = k;
  if (j->n_parts > 1)
    snprintf(j->what, sizeof j->what, "part %zu/%zu", k + 1, j->n_parts);
  else
    snprintf(j->what, sizeof j->what, "post");
  char *body = part_body(j, k);
  if (!body)
    return CP_ENOMEM;
  snprintf(url, sizeof url, "%s/2/tweets", j->x->api_base);
  int err = send_signed(j, "POST", url, body, NULL, 0, POST_TIMEOUT_MS, on_created);
  free(body);
  return err;
}

/* ---- media ---------------------------------------------------------------------------------- */

static int media_next(struct job *j);
static void media_status(struct job *j);

/* The current item is uploaded (and described): on to the next. */
static void media_done(struct job *j) {
  snprintf(j->media_ids[j->n_media_ids++], ID_MAX, "%s", j->media_id);
  free(j->data);
  j->data = NULL;
  free(j->alt);
  j->alt = NULL;
  j->media_i++;
  int err = media_next(j);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "%s: cannot send: %s", j->what, cp_strerror(err));
}

static void on_metadata(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  if (step_ok(j, resp))
    media_done(j);
}

/* Sets the alt text, if any (X takes it for images and GIFs), then goes on. */
static void media_describe(struct job *j) {
  char url[1024];
  if (!j->alt || !j->alt[0] || j->kind == KIND_VIDEO) {
    media_done(j);
    return;
  }
  snprintf(j->what, sizeof j->what, "alt text of media %zu", j->media_i + 1);
  json_t *root =
      json_pack("{s:s, s:{s:{s:s}}}", "id", j->media_id, "metadata", "alt_text", "text", j->alt);
  char *body = root ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  int err = body ? 0 : CP_ENOMEM;
  snprintf(url, sizeof url, "%s/2/media/metadata", j->x->upload_base);
  if (!err)
    err = send_signed(j, "POST", url, body, NULL, 0, POST_TIMEOUT_MS, on_metadata);
  free(body);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "%s: cannot send: %s", j->what, cp_strerror(err));
}

/* Reads processing_info (data.processing_info, or top level in v1.1 answers): returns true when
 * the media is ready, false after completing the job (failed) or scheduling another STATUS. */
static bool media_ready(struct job *j, const struct cp_http_resp *resp) {
  json_t *root = body_json(resp);
  json_t *data = json_object_get(root, "data");
  json_t *pi = json_object_get(json_is_object(data) ? data : root, "processing_info");
  if (!json_is_object(pi) && json_is_object(data))
    pi = json_object_get(root, "processing_info");
  const char *state = json_string_value(json_object_get(pi, "state"));
  json_int_t after_s = json_integer_value(json_object_get(pi, "check_after_secs"));
  char text[160] = "";
  const struct cp_host *host = j->x->host;

  if (!json_is_object(pi) || !state || !strcmp(state, "succeeded")) {
    json_decref(root);
    return true;
  }
  if (!strcmp(state, "failed")) {
    json_t *e = json_object_get(pi, "error");
    const char *m = json_string_value(json_object_get(e, "message"));
    if (m)
      cp_connector_copy_text(text, sizeof text, m, strlen(m));
    json_decref(root);
    fail(j, CP_OUTCOME_PERMANENT, 0, "%s: X could not process it%s%s", j->what, text[0] ? ": " : "",
         text);
    return false;
  }
  json_decref(root);
  uint64_t now = host->now_ms(host);
  if (!j->processing_since)
    j->processing_since = now ? now : 1;
  if (++j->polls > PROCESSING_MAX_POLLS || now - j->processing_since > PROCESSING_MAX_MS) {
    fail(j, CP_OUTCOME_RETRY, 0, "%s: X is still processing it after %u checks; try again later",
         j->what, j->polls - 1);
    return false;
  }
  if (after_s < 0)
    after_s = 0;
  if (after_s > 60)
    after_s = 60;
  int err = after(j, (uint64_t)after_s * 1000, media_status);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "%s: cannot wait for processing: %s", j->what, cp_strerror(err));
  return false;
}

static void on_status(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  if (step_ok(j, resp) && media_ready(j, resp))
    media_describe(j);
}

static void media_status(struct job *j) {
  char url[1024];
  snprintf(url, sizeof url, "%s/2/media/upload?command=STATUS&media_id=%s", j->x->upload_base,
           j->media_id);
  int err = send_signed(j, "GET", url, NULL, NULL, 0, POST_TIMEOUT_MS, on_status);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "%s: cannot send: %s", j->what, cp_strerror(err));
}

static void on_finalized(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  if (step_ok(j, resp) && media_ready(j, resp))
    media_describe(j);
}

static void media_append(struct job *j);

static void on_appended(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  if (step_ok(j, resp))
    media_append(j);
}

/* Sends the next APPEND segment, or FINALIZE once everything is sent. */
static void media_append(struct job *j) {
  char url[1024], seg[16];
  int err;
  snprintf(url, sizeof url, "%s/2/media/upload", j->x->upload_base);
  if (j->offset < j->len) {
    size_t n = j->len - j->offset < X_CHUNK ? j->len - j->offset : X_CHUNK;
    snprintf(seg, sizeof seg, "%u", j->segment);
    struct cp_http_part parts[] = {
        {.name = "command", .data = "APPEND"},
        {.name = "media_id", .data = j->media_id},
        {.name = "segment_index", .data = seg},
        {.name = "media",
         .filename = j->filename,
         .content_type = "application/octet-stream",
         .data = (const char *)j->data + j->offset,
         .len = n},
    };
    err = send_signed(j, "POST", url, NULL, parts, 4, UPLOAD_TIMEOUT_MS, on_appended);
    j->offset += n;
    j->segment++;
  } else {
    struct cp_http_part parts[] = {{.name = "command", .data = "FINALIZE"},
                                   {.name = "media_id", .data = j->media_id}};
    err = send_signed(j, "POST", url, NULL, parts, 2, UPLOAD_TIMEOUT_MS, on_finalized);
  }
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "%s: cannot send: %s", j->what, cp_strerror(err));
}

/* The answer to a one-shot upload or to INIT: the media id. */
static void on_uploaded(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  if (!step_ok(j, resp))
    return;
  json_t *root = body_json(resp);
  bool ok = root && response_id(root, j->media_id);
  json_decref(root);
  if (!ok) {
    fail(j, CP_OUTCOME_RETRY, resp->err, "%s: HTTP %ld without a media id in the answer", j->what,
         resp->status);
    return;
  }
  if (j->kind == KIND_IMAGE)
    media_describe(j);
  else
    media_append(j);
}

static bool media_kind_of(const char *ct, enum media_kind *kind, size_t *max) {
  if (!strcmp(ct, "image/png") || !strcmp(ct, "image/jpeg") || !strcmp(ct, "image/webp")) {
    *kind = KIND_IMAGE;
    *max = X_IMAGE_MAX;
  } else if (!strcmp(ct, "image/gif")) {
    *kind = KIND_GIF;
    *max = X_GIF_MAX;
  } else if (!strcmp(ct, "video/mp4") || !strcmp(ct, "video/quicktime")) {
    *kind = KIND_VIDEO;
    *max = X_VIDEO_MAX;
  } else {
    return false;
  }
  return true;
}

/* Whether a failed media load can succeed later (a network problem) or not (missing file, wrong
 * type, too big; also -EPERM here). */
static enum cp_outcome load_outcome(int err) {
  return err == -EPERM ? CP_OUTCOME_PERMANENT : cp_cu_media_outcome(err);
}

static void on_media_loaded(const struct cp_media_blob *blob, void *data) {
  struct job *j = data;
  const struct cp_media *m = &j->post->media[j->media_i];
  char url[1024], total[24];
  size_t max = 0;
  int err;

  if (blob->err) {
    /* The host's message names the source already. */
    if (blob->errmsg[0])
      fail(j, load_outcome(blob->err), blob->err, "%s: %s", j->what, blob->errmsg);
    else
      fail(j, load_outcome(blob->err), blob->err, "%s (%s): %s", j->what, m->src,
           cp_strerror(blob->err));
    return;
  }
  const char *ct = blob->content_type ? blob->content_type : "";
  if (!media_kind_of(ct, &j->kind, &max)) {
    fail(j, CP_OUTCOME_PERMANENT, 0,
         "%s (%s): X does not take %s; use JPEG, PNG, WebP, GIF or MP4/MOV", j->what, m->src,
         ct[0] ? ct : "this type");
    return;
  }
  if (blob->len > max) {
    fail(j, CP_OUTCOME_PERMANENT, CP_ETOOBIG, "%s (%s): %zu bytes, X takes at most %zu MB for %s",
         j->what, m->src, blob->len, max >> 20, ct);
    return;
  }
  j->data = malloc(blob->len ? blob->len : 1);
  const char *alt = blob->alt ? blob->alt : m->alt;
  j->alt = alt ? strdup(alt) : NULL;
  if (!j->data || (alt && !j->alt)) {
    fail(j, CP_OUTCOME_RETRY, CP_ENOMEM, "%s: out of memory", j->what);
    return;
  }
  memcpy(j->data, blob->data, blob->len);
  j->len = blob->len;
  j->offset = 0;
  j->segment = 0;
  j->polls = 0;
  j->processing_since = 0;
  snprintf(j->content_type, sizeof j->content_type, "%s", ct);
  snprintf(j->filename, sizeof j->filename, "%s",
           blob->filename && blob->filename[0] ? blob->filename : "media");
  snprintf(url, sizeof url, "%s/2/media/upload", j->x->upload_base);

  if (j->kind == KIND_IMAGE) {
    struct cp_http_part parts[] = {
        {.name = "media",
         .filename = j->filename,
         .content_type = j->content_type,
         .data = (const char *)j->data,
         .len = j->len},
        {.name = "media_category", .data = "tweet_image"},
        {.name = "media_type", .data = j->content_type},
    };
    err = send_signed(j, "POST", url, NULL, parts, 3, UPLOAD_TIMEOUT_MS, on_uploaded);
  } else {
    snprintf(total, sizeof total, "%zu", j->len);
    struct cp_http_part parts[] = {
        {.name = "command", .data = "INIT"},
        {.name = "media_type", .data = j->content_type},
        {.name = "total_bytes", .data = total},
        {.name = "media_category", .data = j->kind == KIND_GIF ? "tweet_gif" : "tweet_video"},
    };
    err = send_signed(j, "POST", url, NULL, parts, 4, UPLOAD_TIMEOUT_MS, on_uploaded);
  }
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "%s: cannot send: %s", j->what, cp_strerror(err));
}

/* Loads the next media item, or goes on to the posts. Returns 0 or an error (nothing started). */
static int media_next(struct job *j) {
  const struct cp_host *host = j->x->host;
  if (j->media_i >= j->post->n_media)
    return part_next(j);
  snprintf(j->what, sizeof j->what, "media %zu", j->media_i + 1);
  if (host->version < 2 || !host->media_load)
    return CP_EINVAL;
  return host->media_load(j->req, &j->post->media[j->media_i], on_media_loaded, j);
}

/* ---- publish and login check ---------------------------------------------------------------- */

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void finish_ok(struct job *j) {
  set_ok(j);
  finish(j);
}

static int x_publish(void *instance, const struct cp_post *post, const struct cp_publish_req *req) {
  struct x *x = instance;
  const char *text = post->text ? post->text : "";
  int err;

  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->x = x;
  j->req = req;
  j->post = post;
  /* A media-only post is one part. */
  err = cp_cu_text_parts(text, post->thread && *text, limit_of(x), CP_COUNT_X, post->numbered,
                         &j->parts, &j->n_parts);
  if (err) {
    job_free(j);
    return err;
  }
  if (j->n_parts == 0) {
    job_free(j);
    return CP_EINVAL;
  }
  j->ids = calloc(j->n_parts, sizeof *j->ids);
  if (!j->ids) {
    job_free(j);
    return CP_ENOMEM;
  }
  load_progress(j, req->progress);

  size_t done = 0;
  while (done < j->n_parts && j->ids[done][0])
    done++;
  if (done == j->n_parts) {
    /* An earlier attempt published everything but could not report it: say so now, from the
     * loop (never from inside publish). */
    x->host->log(x->host, CP_LOG_INFO, "post %s: all %zu part(s) were published before", post->id,
                 j->n_parts);
    err = after(j, 0, finish_ok);
  } else if (j->ids[0][0] || post->n_media == 0) {
    /* The media belong to the first part: once it is out they are not needed again. */
    err = part_next(j);
  } else {
    err = media_next(j);
  }
  if (err) {
    if (j->timer) {
      /* after() could not start it: close it and drop the job without completing. */
      uv_close((uv_handle_t *)j->timer, free_handle);
      j->timer = NULL;
    }
    job_free(j);
  }
  return err;
}

static void on_me(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  if (!step_ok(j, resp))
    return;
  json_t *root = body_json(resp);
  json_t *d = json_object_get(root, "data");
  const char *user = json_string_value(json_object_get(d, "username"));
  char id[ID_MAX];
  if (!user || !json_id(json_object_get(d, "id"), id)) {
    json_decref(root);
    fail(j, CP_OUTCOME_RETRY, resp->err, "login check: HTTP %ld without a user in the answer",
         resp->status);
    return;
  }
  snprintf(j->res.message, sizeof j->res.message, "logged in as @%s (user id %s)", user, id);
  json_decref(root);
  finish(j);
}

static int x_login_check(void *instance, const struct cp_publish_req *req) {
  struct x *x = instance;
  char url[1024];
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->x = x;
  j->req = req;
  snprintf(j->what, sizeof j->what, "login check");
  snprintf(url, sizeof url, "%s/2/users/me?user.fields=username", x->api_base);
  int err = send_signed(j, "GET", url, NULL, NULL, 0, POST_TIMEOUT_MS, on_me);
  if (err)
    job_free(j);
  return err;
}

/* ---- engagement ----------------------------------------------------------------------------- */

/* A count of public_metrics, or -1 if X does not give it. */
static int64_t count_of(json_t *metrics, const char *key) {
  json_t *v = json_object_get(metrics, key);
  return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

/* The type of the first problem in errors[] ends with suffix. */
static bool problem_is(json_t *root, const char *suffix) {
  const char *type = json_string_value(
      json_object_get(json_array_get(json_object_get(root, "errors"), 0), "type"));
  size_t tl = type ? strlen(type) : 0, sl = strlen(suffix);
  return tl >= sl && !strcmp(type + tl - sl, suffix);
}

static void on_metrics(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  char text[200];

  if (!step_ok(j, resp))
    return;
  json_t *root = body_json(resp);
  json_t *d = json_object_get(root, "data");
  json_t *pm = json_object_get(d, "public_metrics");
  if (!json_is_object(d)) {
    /* X answers a post it cannot show with 200 and only errors[]. */
    bool gone = problem_is(root, "/resource-not-found");
    bool hidden = problem_is(root, "/not-authorized-for-resource");
    error_text(root, text, sizeof text);
    json_decref(root);
    if (gone)
      fail(j, CP_OUTCOME_PERMANENT, 0, "%s: the post was deleted (%s)", j->what, text);
    else if (hidden)
      fail(j, CP_OUTCOME_PERMANENT, 0, "%s: X does not show the post to this account (%s)", j->what,
           text);
    else
      fail(j, CP_OUTCOME_RETRY, CP_EPARSE, "%s: HTTP %ld without the post in the answer%s%s",
           j->what, resp->status, text[0] ? ": " : "", text);
    return;
  }
  memset(&j->res, 0, sizeof j->res);
  j->res.outcome = CP_OUTCOME_OK;
  j->res.http_status = resp->status;
  j->res.has_engagement = true;
  j->res.replies = count_of(pm, "reply_count");
  j->res.reposts = count_of(pm, "retweet_count");
  j->res.likes = count_of(pm, "like_count");
  j->res.quotes = count_of(pm, "quote_count");
  j->res.views = count_of(pm, "impression_count");
  json_decref(root);
  finish(j);
}

static int x_engagement(void *instance, const char *remote_id, const char *remote_url,
                        const struct cp_publish_req *req) {
  struct x *x = instance;
  char url[1024];

  (void)remote_url;
  if (!remote_id || !all_digits(remote_id, ID_MAX))
    return CP_EINVAL; /* not an id this connector reported */
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->x = x;
  j->req = req;
  j->engagement = true;
  snprintf(j->what, sizeof j->what, "engagement of post %s", remote_id);
  snprintf(url, sizeof url, "%s/2/tweets/%s?tweet.fields=public_metrics", x->api_base, remote_id);
  int err = send_signed(j, "GET", url, NULL, NULL, 0, POST_TIMEOUT_MS, on_metrics);
  if (err)
    job_free(j);
  return err;
}

const struct cp_connector cp_connector_x = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "x",
    .description = "X (Twitter) posts through API v2, OAuth 1.0a; media with alt text, threads",
    /* No CP_CAP_IDEMPOTENT: X has no idempotency key (threads resume from saved progress). */
    .caps = CP_CAP_MEDIA | CP_CAP_THREADS | CP_CAP_ENGAGEMENT,
    .init = x_init,
    .validate = x_validate,
    .publish = x_publish,
    .classify = x_classify,
    .login_check = x_login_check,
    .free = x_free,
    .post_options = post_options,
    .engagement = x_engagement,
};
