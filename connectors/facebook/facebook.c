/* The Facebook connector: publishes a post on a Facebook Page's feed through the Graph API.
 *
 *   [channel fb]
 *   type = facebook
 *   page_id = 546349135390552
 *   token_file = page.token             ; the Page access token; or token_env = FB_PAGE_TOKEN
 *   app_secret_file = app.secret        ; optional: adds appsecret_proof (or app_secret_env)
 *   version = v24.0                     ; Graph API version
 *   graph_base = https://graph.facebook.com   ; for tests
 *
 * A text post is one form POST (CONNECTORS-NOTES 1.5, Pages API "Posts"):
 *   POST {graph_base}/{version}/{page_id}/feed
 *   message=<text>&link=<first URL of the text>&access_token=<page token>[&appsecret_proof=...]
 * answered with {"id":"<page id>_<post id>"}.
 *
 * Engagement (optional read, posts nothing):
 *   GET {graph_base}/{version}/{page-post-id}?fields=shares,reactions.summary(total_count)
 *       .limit(0),comments.summary(total_count).limit(0)&access_token=<page token>
 * answered with {"id", "shares":{"count"} (absent while nobody shared), "reactions":{"data":[],
 * "summary":{"total_count"}}, "comments":{"data":[],"summary":{"total_count"}}}; reading needs
 * pages_read_engagement.
 *
 * Photos are staged one at a time as unpublished photos (multipart POST /{page_id}/photos with
 * source, published=false, alt_text_custom), each id stored with save_progress, and then attached
 * to the feed post as attached_media[i]={"media_fbid":"<id>"}. A repeated staging is harmless:
 * an unpublished photo nobody attaches shows nowhere.
 *
 * The Graph API has no idempotency key. Its error code 1 or 2 with a 5xx can come after the post
 * was created (arsduo/koala#699), so such an answer to the feed POST is UNKNOWN, not RETRY; a
 * repeat that the server recognises is refused with code 506 (duplicate). Throttling (codes 4,
 * 17, 32, 613, 80001) waits as long as the usage headers' estimated_time_to_regain_access says. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"
#include "http.h"

#define DEFAULT_GRAPH_BASE "https://graph.facebook.com"
/* Graph API versions stay available for about two years; v24.0 (October 2025) until late 2027.
 * `version` moves it on without a rebuild. */
#define DEFAULT_VERSION "v24.0"
#define MAX_PHOTOS 10 /* calpost's own cap on photos per post (see README) */
#define UPLOAD_TIMEOUT_MS 120000L

struct facebook {
  const struct cp_host *host;
  char *name;
  char *page_id;
  char *token;
  char *proof; /* hex HMAC-SHA256(app secret, token), or NULL */
  char *base;  /* "{graph_base}/{version}" */
  size_t max_chars;
};

/* One publish or login check in flight. */
struct job {
  struct facebook *fb;
  const struct cp_post *post;
  const struct cp_publish_req *req;
  char post_id[CP_POST_ID_LEN + 1];
  char **photos; /* per media item: its unpublished photo id once staged, else NULL */
  size_t cur;    /* the media item being staged */
  char read_id[CP_RESULT_ID_MAX]; /* the post whose engagement is read; "" otherwise */
};

static const char *const known_keys[] = {
    "page_id",        "token_file", "token_env", "app_secret_file",
    "app_secret_env", "graph_base", "version",   NULL};
static const char *const post_options[] = {"link", NULL};

/* ---- helpers ------------------------------------------------------------------------------ */

static bool all_digits(const char *s) {
  if (!*s)
    return false;
  for (; *s; s++)
    if (!isdigit((unsigned char)*s))
      return false;
  return true;
}

/* "v24.0". */
static bool version_ok(const char *v) {
  const char *p = v + 1;
  if (v[0] != 'v' || !isdigit((unsigned char)*p))
    return false;
  while (isdigit((unsigned char)*p))
    p++;
  if (*p++ != '.' || !isdigit((unsigned char)*p))
    return false;
  while (isdigit((unsigned char)*p))
    p++;
  return *p == '\0';
}

/* The formats the Graph API's photo upload documents: JPEG, BMP, PNG, GIF and TIFF. */
static bool photo_ext(const char *ext) {
  static const char *const ok[] = {"jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", NULL};
  for (size_t i = 0; ok[i]; i++)
    if (!strcmp(ext, ok[i]))
      return true;
  return false;
}

static bool photo_type(const char *type) {
  static const char *const ok[] = {"image/jpeg",     "image/png",  "image/gif", "image/bmp",
                                   "image/x-ms-bmp", "image/tiff", NULL};
  for (size_t i = 0; ok[i]; i++)
    if (!strcmp(type, ok[i]))
      return true;
  return false;
}

static bool http_url(const char *s) {
  return !strncasecmp(s, "https://", 8) || !strncasecmp(s, "http://", 7);
}

/* An application/x-www-form-urlencoded body, built with libcurl's escaping. */
struct form {
  char *buf;
  size_t len, cap;
  int err;
};

static void form_add(struct form *f, const char *name, const char *value) {
  char *n, *v;
  if (f->err)
    return;
  n = curl_easy_escape(NULL, name, 0);
  v = curl_easy_escape(NULL, value, 0);
  size_t need = f->len + (n ? strlen(n) : 0) + (v ? strlen(v) : 0) + 3;
  if (!n || !v) {
    f->err = CP_ENOMEM;
  } else if (need > f->cap) {
    size_t cap = need * 2;
    char *nb = realloc(f->buf, cap);
    if (nb) {
      f->buf = nb;
      f->cap = cap;
    } else {
      f->err = CP_ENOMEM;
    }
  }
  if (!f->err)
    f->len += (size_t)sprintf(f->buf + f->len, "%s%s=%s", f->len ? "&" : "", n, v);
  curl_free(n);
  curl_free(v);
}

static void form_free(struct form *f) {
  if (f->buf) {
    explicit_bzero(f->buf, f->len); /* holds the token */
    free(f->buf);
  }
}

/* The Graph API's error object, if the body is one. */
struct graph_error {
  long code, subcode;
  char message[CP_RESULT_MESSAGE_MAX];
  char trace[64];
};

static bool graph_error(const struct cp_http_resp *resp, struct graph_error *ge) {
  memset(ge, 0, sizeof *ge);
  if (!resp->body_len)
    return false;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *e = json_object_get(root, "error");
  bool ok = json_is_object(e) && json_is_integer(json_object_get(e, "code"));
  if (ok) {
    json_t *m = json_object_get(e, "message");
    json_t *t = json_object_get(e, "fbtrace_id");
    ge->code = (long)json_integer_value(json_object_get(e, "code"));
    ge->subcode = (long)json_integer_value(json_object_get(e, "error_subcode"));
    if (json_is_string(m))
      cp_connector_copy_text(ge->message, sizeof ge->message, json_string_value(m),
                             json_string_length(m));
    if (json_is_string(t))
      cp_connector_copy_text(ge->trace, sizeof ge->trace, json_string_value(t),
                             json_string_length(t));
  }
  json_decref(root);
  return ok;
}

static bool throttle_code(long code) {
  /* 4 app, 17 user, 32 page, 613 custom, 341 app limit, 80001 Pages business use case. */
  return code == 4 || code == 17 || code == 32 || code == 613 || code == 341 || code == 80001;
}

/* The largest estimated_time_to_regain_access (minutes) anywhere in a usage header's JSON
 * ({...} for X-App-Usage and X-Page-Usage, {"<id>": [{...}]} for X-Business-Use-Case-Usage). */
static double regain_minutes(json_t *v, int depth) {
  double best = 0;
  if (depth > 3)
    return 0;
  if (json_is_object(v)) {
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
      double m = !strcmp(k, "estimated_time_to_regain_access") && json_is_number(x)
                     ? json_number_value(x)
                     : regain_minutes(x, depth + 1);
      if (m > best)
        best = m;
    }
  } else if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
      double m = regain_minutes(x, depth + 1);
      if (m > best)
        best = m;
    }
  }
  return best;
}

/* When the usage headers say access comes back, in Unix ms; 0 if they do not say. */
static int64_t regain_at(const struct cp_http_resp *resp, int64_t now_ms) {
  static const char *const names[] = {"X-Business-Use-Case-Usage", "X-Page-Usage", "X-App-Usage",
                                      NULL};
  double best = 0;
  for (size_t i = 0; names[i]; i++) {
    const char *h = cp_http_header(resp, names[i]);
    json_t *root = h ? json_loads(h, 0, NULL) : NULL;
    double m = regain_minutes(root, 0);
    json_decref(root);
    if (m > best)
      best = m;
  }
  if (best > 24 * 60) /* a day is the longest window the Graph API uses */
    best = 24 * 60;
  return best > 0 ? now_ms + (int64_t)(best * 60000.0) : 0;
}

/* ---- init, validate, free ----------------------------------------------------------------- */

static void facebook_free(void *instance) {
  struct facebook *fb = instance;
  if (!fb)
    return;
  free(fb->name);
  free(fb->page_id);
  if (fb->token)
    fb->host->secret_free(fb->token);
  free(fb->proof);
  free(fb->base);
  free(fb);
}

/* appsecret_proof: hex HMAC-SHA256 of the token keyed with the app secret (Graph API "Securing
 * Requests"). Returns a malloc'd string or NULL. */
static char *make_proof(const char *secret, const char *token) {
  unsigned char md[EVP_MAX_MD_SIZE];
  size_t mdlen = 0;
  if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, strlen(secret),
                 (const unsigned char *)token, strlen(token), md, sizeof md, &mdlen))
    return NULL;
  char *hex = malloc(2 * mdlen + 1);
  if (!hex)
    return NULL;
  for (size_t i = 0; i < mdlen; i++)
    sprintf(hex + 2 * i, "%02x", md[i]);
  return hex;
}

static int facebook_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                         void **instance) {
  int line = conf->line;
  const char *page = conf->get(conf, "page_id", &line);
  const char *v;
  char *secret = NULL;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  if (!page || !all_digits(page)) {
    if (page)
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] page_id: '%s' is not a numeric Page id (find it on the "
                "Page's About section or with GET /me/accounts)",
                conf->file, line, conf->name, page);
    else
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] needs 'page_id = ID' (the numeric id of the Facebook Page)",
                conf->file, conf->line, conf->name);
    return CP_ECONFIG;
  }

  struct facebook *fb = calloc(1, sizeof *fb);
  if (!fb)
    return CP_ENOMEM;
  fb->host = host;
  fb->name = strdup(conf->name ? conf->name : "facebook");
  fb->page_id = strdup(page);
  if (!fb->name || !fb->page_id)
    goto nomem;

  line = conf->line;
  const char *base = conf->get(conf, "graph_base", &line);
  if (!base)
    base = DEFAULT_GRAPH_BASE;
  if (!cp_cu_url_ok(base, NULL)) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] graph_base: '%s' is not an https URL (plain http only to "
              "this machine)",
              conf->file, line, conf->name, base);
    facebook_free(fb);
    return CP_ECONFIG;
  }
  line = conf->line;
  v = conf->get(conf, "version", &line);
  if (v && !version_ok(v)) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] version: '%s' is not a Graph API version such as %s", conf->file,
              line, conf->name, v, DEFAULT_VERSION);
    facebook_free(fb);
    return CP_ECONFIG;
  }
  size_t blen = strlen(base);
  while (blen > 0 && base[blen - 1] == '/')
    blen--;
  size_t size = blen + 32;
  fb->base = malloc(size);
  if (!fb->base)
    goto nomem;
  snprintf(fb->base, size, "%.*s/%s", (int)blen, base, v ? v : DEFAULT_VERSION);

  err = cp_cu_conf_count(host, conf, "max_chars", 1, ~0ULL, "a positive number", &fb->max_chars);
  if (err) {
    facebook_free(fb);
    return err;
  }

  err = cp_cu_conf_secret(host, conf, "token",
                          "the Page access token: token_file = PATH or token_env = VARIABLE "
                          "(permission pages_manage_posts)",
                          &fb->token);
  if (err) {
    facebook_free(fb);
    return err;
  }
  err = host->secret(host, conf, "app_secret", &secret);
  if (err && err != CP_ENOTFOUND) {
    facebook_free(fb); /* host->secret logged why */
    return err;
  }
  if (!err) {
    fb->proof = make_proof(secret, fb->token);
    host->secret_free(secret);
    if (!fb->proof)
      goto nomem;
  }
  *instance = fb;
  return 0;

nomem:
  facebook_free(fb);
  return CP_ENOMEM;
}

static int facebook_validate(void *instance, const struct cp_post *post, cp_diag_cb diag,
                             void *arg) {
  struct facebook *fb = instance;
  const char *text = post->text ? post->text : "";
  const char *link = cp_post_option(post, "link");
  struct cp_text_limit lim;
  size_t count = 0;
  char msg[512], ext[16];
  int bad = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no photos: write a description or add a photo");
    bad++;
  }
  if (!cp_text_fits("facebook", text, fb->max_chars, &count, &lim)) {
    snprintf(msg, sizeof msg, "%zu characters, channel %s allows %zu%s: shorten the text%s", count,
             fb->name, lim.max, fb->max_chars ? " (max_chars)" : " (Facebook's limit)",
             post->thread ? " (Page posts cannot be threaded, so thread = yes does not help)" : "");
    diag(arg, true, msg);
    bad++;
  }
  if (post->n_media > MAX_PHOTOS) {
    snprintf(msg, sizeof msg, "%zu photos, the facebook connector attaches at most %d: remove %zu",
             post->n_media, MAX_PHOTOS, post->n_media - MAX_PHOTOS);
    diag(arg, true, msg);
    bad++;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    cp_cu_media_ext(post->media[i].src, ext, sizeof ext, false);
    if (!photo_ext(ext)) {
      snprintf(msg, sizeof msg,
               "media %zu (%s): the facebook connector posts photos only (JPEG, PNG, GIF, BMP, "
               "TIFF); videos are not supported: use a photo or drop it",
               i + 1, post->media[i].src);
      diag(arg, true, msg);
      bad++;
    }
  }
  if (link && strcasecmp(link, "none") && !http_url(link)) {
    snprintf(msg, sizeof msg, "link = %s: give an http(s) URL to attach, or none to attach no link",
             link);
    diag(arg, true, msg);
    bad++;
  } else if (link && strcasecmp(link, "none") && post->n_media > 0) {
    diag(arg, false, "link is ignored: a post with photos shows the photos, not a link preview");
  }
  return bad ? CP_EINVAL : 0;
}

/* ---- publish ------------------------------------------------------------------------------ */

static void job_free(struct job *j) {
  if (!j)
    return;
  if (j->photos) {
    for (size_t i = 0; i < j->post->n_media; i++)
      free(j->photos[i]);
    free(j->photos);
  }
  free(j);
}

static void finish(struct job *j, struct cp_result *res) {
  struct facebook *fb = j->fb;
  const struct cp_publish_req *req = j->req;

  if (j->post) {
    if (res->outcome == CP_OUTCOME_OK)
      fb->host->log(fb->host, CP_LOG_INFO, "post %s published on the Facebook Page: %s", j->post_id,
                    res->remote_id[0] ? res->remote_id : "(no id returned)");
    else
      fb->host->log(fb->host, CP_LOG_WARN, "post %s not published on the Facebook Page (%s): %s",
                    j->post_id, cp_outcome_name(res->outcome), res->message);
  }
  job_free(j);
  req->host->complete(req, res);
}

static void fail(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...) {
  struct cp_result res;
  va_list ap;

  va_start(ap, fmt);
  cp_cu_result_vset(&res, outcome, err, fmt, ap);
  va_end(ap);
  finish(j, &res);
}

/* Refines a failed result: the retry time from the usage headers, and what the Graph API's error
 * code means for the user, ahead of Facebook's own message. */
static void explain(struct job *j, const struct cp_http_resp *resp, struct cp_result *res,
                    const char *step) {
  struct graph_error ge;
  const char *advice = NULL;
  char detail[2 * CP_RESULT_MESSAGE_MAX];
  int64_t now = j->fb->host->wall_ms(j->fb->host);

  if (res->outcome == CP_OUTCOME_RATE_LIMITED) {
    int64_t at = regain_at(resp, now);
    if (at > res->retry_at_ms)
      res->retry_at_ms = at;
  }
  if (!graph_error(resp, &ge)) {
    if (step)
      cp_cu_result_msg(res, "%s: %s", step, res->message);
    return;
  }
  if (throttle_code(ge.code))
    advice = res->retry_at_ms ? "Facebook is throttling calls for this Page or app: waiting as "
                                "its usage headers ask"
                              : "Facebook is throttling calls for this Page or app: backing off";
  else if (ge.code == 190 || ge.code == 102)
    advice = "the Page access token is invalid or expired: get a new one (GET /{user-id}/accounts "
             "with a long-lived user token) and update token_file/token_env";
  else if (j->read_id[0] && (ge.code == 10 || (ge.code >= 200 && ge.code <= 299)))
    advice = "reading a post's counts needs the pages_read_engagement permission: get a Page "
             "token with it (publishing is not affected)";
  else if (ge.code == 10 || (ge.code >= 200 && ge.code <= 299))
    advice = "the token lacks a permission (pages_manage_posts, pages_read_engagement) or its "
             "user may not create content on this Page: get a new Page token";
  else if (res->outcome == CP_OUTCOME_UNKNOWN)
    advice = "Facebook failed after receiving the post, which may have been published anyway: "
             "check the Page before publishing again";
  else if (ge.code == 506)
    advice = "Facebook refused a duplicate post: it was most likely published by an earlier "
             "attempt; check the Page";
  else if (ge.code == 368)
    advice = "Facebook blocked the post as abusive or against its policies: review the content "
             "and the Page's quality status";
  else if (j->read_id[0] && ge.code == 100 && ge.subcode == 33)
    advice = "the post was deleted (or the Page token may no longer see it)";
  else if (ge.code == 100)
    advice = "Facebook refused a parameter";
  else if (ge.code == 2635)
    advice = "this Graph API version is no longer served: set version = vNN.0 to a current one";
  if (ge.subcode)
    snprintf(detail, sizeof detail, "%s [code %ld/%ld%s%s]", ge.message, ge.code, ge.subcode,
             ge.trace[0] ? ", fbtrace_id " : "", ge.trace);
  else
    snprintf(detail, sizeof detail, "%s [code %ld%s%s]", ge.message, ge.code,
             ge.trace[0] ? ", fbtrace_id " : "", ge.trace);
  cp_cu_result_msg(res, "%s%s%s%sHTTP %ld: %s", step ? step : "", step ? ": " : "",
                   advice ? advice : "", advice ? ": " : "", res->http_status, detail);
}

static int start(struct job *j);

static void on_feed(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;

  j->fb->host->http_result(j->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    explain(j, resp, &res, NULL);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *id = json_object_get(root, "id");
  if (json_is_string(id) && json_string_length(id) > 0) {
    cp_connector_copy_text(res.remote_id, sizeof res.remote_id, json_string_value(id),
                           json_string_length(id));
    snprintf(res.remote_url, sizeof res.remote_url, "https://www.facebook.com/%s", res.remote_id);
  } else {
    j->fb->host->log(j->fb->host, CP_LOG_WARN,
                     "post %s: Facebook answered HTTP %ld without a post id: published, but its "
                     "address is unknown",
                     j->post_id, resp->status);
  }
  json_decref(root);
  finish(j, &res);
}

/* The feed post, once every photo is staged. Returns 0 or a CP_E* without completing. */
static int create_post(struct job *j) {
  struct facebook *fb = j->fb;
  const struct cp_post *post = j->post;
  const char *text = post->text ? post->text : "";
  const char *opt = cp_post_option(post, "link");
  struct form f = {0};
  char url[1024], name[48], media[128];
  struct cp_http_header hdrs[1] = {{"Content-Type", "application/x-www-form-urlencoded"}};

  if (*text)
    form_add(&f, "message", text);
  if (post->n_media == 0) {
    /* The link preview: the post option, else the text's first URL. */
    char *first = NULL;
    size_t ulen = 0;
    const char *u = cp_text_find_url(text, &ulen);
    if (opt && !strcasecmp(opt, "none")) {
      u = NULL;
    } else if (opt) {
      u = opt;
      ulen = strlen(opt);
    }
    if (u) {
      first = strndup(u, ulen);
      if (!first)
        return CP_ENOMEM;
      form_add(&f, "link", first);
      free(first);
    }
  }
  for (size_t i = 0; i < post->n_media; i++) {
    snprintf(name, sizeof name, "attached_media[%zu]", i);
    snprintf(media, sizeof media, "{\"media_fbid\":\"%s\"}", j->photos[i]);
    form_add(&f, name, media);
  }
  form_add(&f, "access_token", fb->token);
  if (fb->proof)
    form_add(&f, "appsecret_proof", fb->proof);
  if (f.err) {
    form_free(&f);
    return f.err;
  }
  snprintf(url, sizeof url, "%s/%s/feed", fb->base, fb->page_id);
  struct cp_http_req hr = {
      .method = "POST",
      .url = url,
      .headers = hdrs,
      .n_headers = 1,
      .body = f.buf,
      .body_len = f.len,
      /* No idempotency key exists: a fresh connection, so that a post is never sent twice. */
      .idempotent = false,
  };
  int err = fb->host->http_request(fb->host, &hr, on_feed, j);
  form_free(&f);
  return err;
}

/* "photo1=<id>;photo2=<id>": the photos staged so far. */
static int save_photos(struct job *j) {
  return cp_cu_progress_save_ids(j->req, "photo", j->photos, j->post->n_media);
}

/* Reads what save_photos stored on an earlier attempt. Unknown entries are ignored. */
static int load_photos(struct job *j, const char *progress) {
  return cp_cu_progress_load_ids(progress, "photo", j->photos, j->post->n_media, all_digits);
}

static void on_staged(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char step[64];

  j->fb->host->http_result(j->req, resp, &res);
  /* An unpublished photo shows nowhere: staging it again is harmless. */
  if (res.outcome == CP_OUTCOME_UNKNOWN)
    res.outcome = CP_OUTCOME_RETRY;
  snprintf(step, sizeof step, "uploading photo %zu", j->cur + 1);
  if (res.outcome != CP_OUTCOME_OK) {
    explain(j, resp, &res, step);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *id = json_object_get(root, "id");
  char *photo = json_is_string(id) && all_digits(json_string_value(id))
                    ? strdup(json_string_value(id))
                    : NULL;
  json_decref(root);
  if (!photo) {
    fail(j, CP_OUTCOME_RETRY, CP_EPARSE, "%s: Facebook's answer (HTTP %ld) has no photo id", step,
         resp->status);
    return;
  }
  j->photos[j->cur] = photo;
  int err = save_photos(j);
  if (err)
    j->fb->host->log(j->fb->host, CP_LOG_WARN,
                     "post %s: cannot store the staged photo (%s): a retry uploads it again",
                     j->post_id, cp_strerror(err));
  err = start(j);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "cannot send the next request: %s", cp_strerror(err));
}

static void on_media(const struct cp_media_blob *blob, void *data) {
  struct job *j = data;
  struct facebook *fb = j->fb;
  const struct cp_media *m = &j->post->media[j->cur];
  struct cp_http_part parts[5];
  size_t np = 0;
  char url[1024];

  if (blob->err) {
    fail(j, cp_cu_media_outcome(blob->err), blob->err, "photo %zu (%s): %s", j->cur + 1, m->src,
         blob->errmsg[0] ? blob->errmsg : cp_strerror(blob->err));
    return;
  }
  if (!photo_type(blob->content_type)) {
    fail(j, CP_OUTCOME_PERMANENT, CP_EINVAL,
         "photo %zu (%s) is %s: Facebook takes JPEG, PNG, GIF, BMP and TIFF photos", j->cur + 1,
         m->src, blob->content_type);
    return;
  }
  parts[np++] = (struct cp_http_part){.name = "source",
                                      .filename = blob->filename,
                                      .content_type = blob->content_type,
                                      .data = (const char *)blob->data,
                                      .len = blob->len};
  parts[np++] = (struct cp_http_part){.name = "published", .data = "false"};
  if (m->alt && *m->alt)
    parts[np++] = (struct cp_http_part){.name = "alt_text_custom", .data = m->alt};
  parts[np++] = (struct cp_http_part){.name = "access_token", .data = fb->token};
  if (fb->proof)
    parts[np++] = (struct cp_http_part){.name = "appsecret_proof", .data = fb->proof};
  snprintf(url, sizeof url, "%s/%s/photos", fb->base, fb->page_id);
  struct cp_http_req hr = {
      .method = "POST",
      .url = url,
      .parts = parts,
      .n_parts = np,
      .timeout_ms = UPLOAD_TIMEOUT_MS,
  };
  int err = fb->host->http_request(fb->host, &hr, on_staged, j);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "photo %zu: cannot start the upload: %s", j->cur + 1,
         cp_strerror(err));
}

/* The next step: the first photo not staged yet, else the post. Returns 0 or a CP_E* (and then
 * the job is still the caller's). */
static int start(struct job *j) {
  for (size_t i = 0; i < j->post->n_media; i++)
    if (!j->photos[i]) {
      j->cur = i;
      return j->fb->host->media_load(j->req, &j->post->media[i], on_media, j);
    }
  return create_post(j);
}

static int facebook_publish(void *instance, const struct cp_post *post,
                            const struct cp_publish_req *req) {
  struct facebook *fb = instance;
  int err;

  if (post->n_media > MAX_PHOTOS)
    return CP_ELIMIT;
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->fb = fb;
  j->post = post;
  j->req = req;
  snprintf(j->post_id, sizeof j->post_id, "%s", post->id);
  j->photos = calloc(post->n_media ? post->n_media : 1, sizeof *j->photos);
  if (!j->photos) {
    free(j);
    return CP_ENOMEM;
  }
  err = load_photos(j, req->progress);
  if (!err)
    err = start(j);
  if (err) {
    job_free(j);
    return err;
  }
  return 0;
}

/* ---- login check -------------------------------------------------------------------------- */

static void on_me(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct facebook *fb = j->fb;
  struct cp_result res;
  char msg[2 * CP_RESULT_MESSAGE_MAX];

  fb->host->http_result(j->req, resp, &res);
  if (res.outcome == CP_OUTCOME_UNKNOWN) /* a read: nothing to duplicate */
    res.outcome = CP_OUTCOME_RETRY;
  if (res.outcome != CP_OUTCOME_OK) {
    explain(j, resp, &res, NULL);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  const char *id = json_string_value(json_object_get(root, "id"));
  const char *name = json_string_value(json_object_get(root, "name"));
  if (!id) {
    res.outcome = CP_OUTCOME_RETRY;
    snprintf(msg, sizeof msg, "Facebook's answer to /me (HTTP %ld) names no id", resp->status);
  } else if (strcmp(id, fb->page_id)) {
    res.outcome = CP_OUTCOME_AUTH;
    snprintf(msg, sizeof msg,
             "the token belongs to %s (%s), not to Page %s: use the Page access token (GET "
             "/{user-id}/accounts), not a user token",
             id, name ? name : "no name", fb->page_id);
  } else {
    snprintf(msg, sizeof msg, "Page token of %s (%s)", id, name ? name : "no name");
  }
  cp_connector_copy_text(res.message, sizeof res.message, msg, strlen(msg));
  json_decref(root);
  finish(j, &res);
}

static int facebook_login_check(void *instance, const struct cp_publish_req *req) {
  struct facebook *fb = instance;
  struct form f = {0};
  char *url;

  form_add(&f, "fields", "id,name");
  form_add(&f, "access_token", fb->token);
  if (fb->proof)
    form_add(&f, "appsecret_proof", fb->proof);
  if (f.err) {
    form_free(&f);
    return f.err;
  }
  size_t size = strlen(fb->base) + f.len + 8;
  url = malloc(size);
  struct job *j = calloc(1, sizeof *j);
  if (!url || !j) {
    free(url);
    free(j);
    form_free(&f);
    return CP_ENOMEM;
  }
  snprintf(url, size, "%s/me?%s", fb->base, f.buf);
  form_free(&f);
  j->fb = fb;
  j->req = req;
  struct cp_http_req hr = {.method = "GET", .url = url};
  int err = fb->host->http_request(fb->host, &hr, on_me, j);
  explicit_bzero(url, strlen(url));
  free(url);
  if (err)
    free(j);
  return err;
}

/* ---- engagement --------------------------------------------------------------------------- */

/* {"summary": {"total_count": N}} of an edge, or -1 if the answer does not give it. */
static int64_t summary_total(json_t *root, const char *edge) {
  json_t *v =
      json_object_get(json_object_get(json_object_get(root, edge), "summary"), "total_count");
  return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

static void on_engagement(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  struct graph_error ge;
  char step[CP_RESULT_ID_MAX + 64];

  j->fb->host->http_result(j->req, resp, &res);
  /* A read changes nothing: an answer that got lost is simply asked again. */
  if (res.outcome == CP_OUTCOME_UNKNOWN)
    res.outcome = CP_OUTCOME_RETRY;
  if (res.outcome != CP_OUTCOME_OK) {
    bool has_error = graph_error(resp, &ge);
    snprintf(step, sizeof step, "post %s", j->read_id);
    if (has_error && ge.code == 100 && ge.subcode == 33) {
      res.outcome = CP_OUTCOME_PERMANENT; /* "Object with ID ... does not exist" */
    } else if (has_error && (ge.code == 10 || (ge.code >= 200 && ge.code <= 299))) {
      /* The token posts but may not read (no pages_read_engagement): not a reason to pause the
       * channel's posts, which AUTH would do. */
      res.outcome = CP_OUTCOME_PERMANENT;
    } else if (resp->status == 404) {
      res.outcome = CP_OUTCOME_PERMANENT;
      snprintf(step, sizeof step, "post %s: the post was deleted", j->read_id);
    }
    explain(j, resp, &res, step);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  if (!json_is_object(root) || !json_is_string(json_object_get(root, "id"))) {
    json_decref(root);
    cp_cu_result_msg(&res, "post %s: HTTP %ld, but the answer is not a post", j->read_id,
                     resp->status);
    res.outcome = CP_OUTCOME_RETRY;
    res.err = CP_EPARSE;
    finish(j, &res);
    return;
  }
  memset(&res, 0, sizeof res);
  res.outcome = CP_OUTCOME_OK;
  res.http_status = resp->status;
  res.has_engagement = true;
  res.likes = summary_total(root, "reactions");
  res.replies = summary_total(root, "comments");
  /* The Graph API leaves out `shares` while nobody has shared the post. */
  json_t *shares = json_object_get(root, "shares");
  json_t *count = json_object_get(shares, "count");
  if (!shares)
    res.reposts = 0;
  else
    res.reposts = json_is_integer(count) && json_integer_value(count) >= 0
                      ? (int64_t)json_integer_value(count)
                      : -1;
  res.quotes = -1; /* Facebook has no quotes */
  res.views = -1;  /* impressions need the Insights API (read_insights) */
  json_decref(root);
  finish(j, &res);
}

/* "<page id>_<post id>" as publish reported it (digits and one underscore, or digits). */
static bool post_id_ok(const char *id) {
  size_t n = strlen(id), unders = 0;
  if (n == 0 || n >= CP_RESULT_ID_MAX || id[0] == '_' || id[n - 1] == '_')
    return false;
  for (const char *p = id; *p; p++) {
    if (*p == '_')
      unders++;
    else if (!isdigit((unsigned char)*p))
      return false;
  }
  return unders <= 1;
}

static int facebook_engagement(void *instance, const char *remote_id, const char *remote_url,
                               const struct cp_publish_req *req) {
  struct facebook *fb = instance;
  struct form f = {0};

  (void)remote_url;
  if (!remote_id || !post_id_ok(remote_id))
    return CP_EINVAL; /* not an id this connector reported */
  form_add(&f, "fields",
           "shares,reactions.summary(total_count).limit(0),comments.summary(total_count).limit(0)");
  form_add(&f, "access_token", fb->token);
  if (fb->proof)
    form_add(&f, "appsecret_proof", fb->proof);
  if (f.err) {
    form_free(&f);
    return f.err;
  }
  size_t size = strlen(fb->base) + strlen(remote_id) + f.len + 8;
  char *url = malloc(size);
  struct job *j = calloc(1, sizeof *j);
  if (!url || !j) {
    free(url);
    free(j);
    form_free(&f);
    return CP_ENOMEM;
  }
  snprintf(url, size, "%s/%s?%s", fb->base, remote_id, f.buf);
  form_free(&f);
  j->fb = fb;
  j->req = req;
  snprintf(j->read_id, sizeof j->read_id, "%s", remote_id);
  struct cp_http_req hr = {.method = "GET", .url = url};
  int err = fb->host->http_request(fb->host, &hr, on_engagement, j);
  explicit_bzero(url, strlen(url));
  free(url);
  if (err)
    free(j);
  return err;
}

/* ---- classification ----------------------------------------------------------------------- */

/* The Graph API's error codes decide (its "Handling Errors" guide); the HTTP status only where
 * the body has no error object. */
static enum cp_outcome facebook_classify(void *instance, const struct cp_http_resp *resp,
                                         enum cp_outcome dflt) {
  struct graph_error ge;
  (void)instance;

  if (resp->status < 400 || !graph_error(resp, &ge))
    return dflt;
  if (throttle_code(ge.code))
    return CP_OUTCOME_RATE_LIMITED;
  if (ge.code == 190 || ge.code == 102 || ge.code == 10 || (ge.code >= 200 && ge.code <= 299))
    return CP_OUTCOME_AUTH;
  if ((ge.code == 1 || ge.code == 2) && resp->status >= 500)
    return CP_OUTCOME_UNKNOWN; /* may have posted: not a blind retry */
  if (ge.code == 1 || ge.code == 2)
    return CP_OUTCOME_RETRY;
  if (ge.code == 100 || ge.code == 368 || ge.code == 506 || ge.code == 2635)
    return CP_OUTCOME_PERMANENT;
  return dflt;
}

const struct cp_connector cp_connector_facebook = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "facebook",
    .description = "Facebook Page feed (Graph API): text, link preview and photos",
    .caps = CP_CAP_MEDIA | CP_CAP_ENGAGEMENT,
    .init = facebook_init,
    .validate = facebook_validate,
    .publish = facebook_publish,
    .classify = facebook_classify,
    .login_check = facebook_login_check,
    .free = facebook_free,
    .post_options = post_options,
    .engagement = facebook_engagement,
};
