/* The LinkedIn connector: publishes a post as a member or an organization through the Posts API.
 *
 *   [channel linkedin]
 *   type = linkedin
 *   author = urn:li:organization:2414183     ; or urn:li:person:<id>
 *   token_file = linkedin.token              ; or token_env = LINKEDIN_TOKEN
 *   version = 202605                         ; LinkedIn-Version header (YYYYMM)
 *   api_base = https://api.linkedin.com      ; for tests
 *
 * A post is one request (CONNECTORS-NOTES 1.4):
 *   POST {api_base}/rest/posts
 *   Authorization: Bearer <token>, LinkedIn-Version: <version>, X-Restli-Protocol-Version: 2.0.0
 *   {"author","commentary","visibility","distribution":{...},"lifecycleState":"PUBLISHED",
 *    "isReshareDisabledByAuthor":false, "content"?}
 * answered with 201 and the new post's URN in the x-restli-id header.
 *
 * Images go first through the Images API, one at a time: POST /rest/images?action=initializeUpload
 * gives an upload URL and an image URN, the bytes are PUT to that URL, and the URN is stored with
 * save_progress so that a later attempt does not upload it again. The post then names them in
 * content.media (one image) or content.multiImage (2 to 20).
 *
 * The commentary is "little" text: the characters | { } @ [ ] ( ) < > # \ * _ ~ are markup and are
 * escaped with a backslash (an unescaped one silently cuts the published post short), except in a
 * hashtag (#word) and in a mention written as @[Name](urn:li:person:ID), which stay markup.
 *
 * Engagement (optional read, posts nothing): GET {api_base}/rest/socialActions/{URL-encoded post
 * URN} with the same versioned headers, answered with {"likesSummary":{"totalLikes"},
 * "commentsSummary":{"aggregatedTotalComments","totalFirstLevelComments"}}; reading needs
 * r_organization_social (r_member_social for a member's posts).
 *
 * LinkedIn has no idempotency key: the create is sent on a fresh connection so that libcurl never
 * repeats it, and a repeat that does get through is refused as 422 DUPLICATE_POST. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>
#include <utf8proc.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"
#include "http.h"

#define DEFAULT_API_BASE "https://api.linkedin.com"
/* A version LinkedIn documents and keeps active for a year after its release (until mid-2027);
 * `version` moves it on without a rebuild. */
#define DEFAULT_VERSION "202605"
#define MAX_IMAGES 20             /* MultiImage posts take 2 to 20 images */
#define UPLOAD_TIMEOUT_MS 120000L /* image bytes, up to the host's media size cap */

struct linkedin {
  const struct cp_host *host;
  char *name;
  char *author;   /* urn:li:person:ID or urn:li:organization:ID */
  char *token;    /* from host->secret */
  char *auth;     /* "Bearer <token>" */
  char *api_base; /* without a trailing slash */
  char *api_host; /* host of api_base: upload URLs on it get the token */
  char *version;
  size_t max_chars; /* 0: LinkedIn's 3000 */
};

/* One publish or login check in flight. */
struct job {
  struct linkedin *li;
  const struct cp_post *post;
  const struct cp_publish_req *req;
  char post_id[CP_POST_ID_LEN + 1];
  char **images; /* per media item: its image URN once its bytes are uploaded, else NULL */
  size_t cur;    /* the media item being uploaded */
  char *upload_url;
  char *pending;                   /* the image URN of cur until its upload succeeds */
  char read_urn[CP_RESULT_ID_MAX]; /* the post whose engagement is read; "" otherwise */
};

static const char *const known_keys[] = {"author",   "token_file", "token_env",
                                         "api_base", "version",    NULL};
static const char *const post_options[] = {"visibility", NULL};
static const char reserved[] = "|{}@[]()<>#\\*_~";

/* ---- little text -------------------------------------------------------------------------- */

static bool is_reserved(unsigned char c) {
  return c && strchr(reserved, c);
}

/* Length of a mention "@[Name](urn:li:person:ID)" or "@[Name](urn:li:organization:ID)" at s, or
 * 0 if s does not start one. */
static size_t mention_len(const char *s) {
  static const char *const kinds[] = {"urn:li:person:", "urn:li:organization:", NULL};
  const char *p = s + 2;

  if (s[0] != '@' || s[1] != '[')
    return 0;
  while (*p && *p != '\n' && !is_reserved((unsigned char)*p))
    p++;
  if (p == s + 2 || p[0] != ']' || p[1] != '(')
    return 0;
  p += 2;
  size_t k;
  for (k = 0; kinds[k]; k++)
    if (!strncmp(p, kinds[k], strlen(kinds[k])))
      break;
  if (!kinds[k])
    return 0;
  p += strlen(kinds[k]);
  const char *id = p;
  while (isalnum((unsigned char)*p) || *p == '-' || *p == '_')
    p++;
  if (p == id || *p != ')')
    return 0;
  return (size_t)(p + 1 - s);
}

/* A letter, digit or combining mark: what a hashtag is made of. Sets *len to the bytes of the
 * character at s; false at the end or at anything else. */
static bool word_char(const char *s, size_t *len) {
  utf8proc_int32_t cp;
  utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s, -1, &cp);
  if (n <= 0 || cp == 0)
    return false;
  *len = (size_t)n;
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
      return true;
    default:
      return false;
  }
}

/* Length of a hashtag "#word" at s, or 0. prev is the byte before s (0 at the start): "C#" and
 * "a#b" are not hashtags, "(#tag" and " #tag" are. */
static size_t hashtag_len(const char *s, unsigned char prev) {
  size_t n = 1, len;

  if (*s != '#')
    return 0;
  if (prev && !isspace(prev) && !(ispunct(prev) && !strchr("#_\\@&/=", prev)))
    return 0;
  while (word_char(s + n, &len))
    n += len;
  return n > 1 ? n : 0;
}

/* The text as little text, for the commentary field (see the file comment). URLs are escaped like
 * any other text: the published post shows them exactly as written, and a '#' in one does not
 * become a hashtag. Returns a malloc'd string or NULL on ENOMEM. */
static char *little_escape(const char *text) {
  size_t tlen = strlen(text), ulen = 0, o = 0;
  char *out = malloc(2 * tlen + 1);
  const char *p = text;
  const char *url = cp_text_find_url(p, &ulen);

  if (!out)
    return NULL;
  while (*p) {
    if (url && ulen == 0)
      url = NULL; /* cannot happen; never loop on it */
    if (url && p == url) {
      for (const char *end = url + ulen; p < end; p++) {
        if (is_reserved((unsigned char)*p))
          out[o++] = '\\';
        out[o++] = *p;
      }
      url = cp_text_find_url(p, &ulen);
      continue;
    }
    unsigned char prev = p > text ? (unsigned char)p[-1] : 0;
    size_t keep = *p == '@' ? mention_len(p) : *p == '#' ? hashtag_len(p, prev) : 0;
    if (keep && (!url || p + keep <= url)) {
      memcpy(out + o, p, keep);
      o += keep;
      p += keep;
      continue;
    }
    if (is_reserved((unsigned char)*p))
      out[o++] = '\\';
    out[o++] = *p++;
  }
  out[o] = '\0';
  return out;
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* Splits an http(s) URL: sets *host (malloc'd) and *https. Returns false if url is not one, or
 * is plain http to anything but this machine (a bearer token must not travel in the clear). */
static bool url_ok(const char *url, char **host, bool *https) {
  CURLU *u = curl_url();
  char *scheme = NULL, *h = NULL;
  bool ok = false;

  *host = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK) {
    *https = !strcmp(scheme, "https");
    ok = *https || (!strcmp(scheme, "http") && cp_cu_loopback_host(h, true));
    if (ok)
      *host = strdup(h);
    ok = ok && *host;
  }
  curl_free(scheme);
  curl_free(h);
  curl_url_cleanup(u);
  return ok;
}

/* "urn:li:person:ID" or "urn:li:organization:ID". */
static bool author_ok(const char *urn, bool *person) {
  const char *id;
  if (!strncmp(urn, "urn:li:person:", 14)) {
    id = urn + 14;
    *person = true;
  } else if (!strncmp(urn, "urn:li:organization:", 20)) {
    id = urn + 20;
    *person = false;
  } else {
    return false;
  }
  if (!*id)
    return false;
  for (; *id; id++)
    if (!isalnum((unsigned char)*id) && *id != '-' && *id != '_')
      return false;
  return true;
}

/* YYYYMM, optionally with a patch suffix ".NN". */
static bool version_ok(const char *v) {
  size_t n = strlen(v);
  for (size_t i = 0; i < 6; i++)
    if (!isdigit((unsigned char)v[i]))
      return false;
  if (n == 6)
    return v[4] < '2' && !(v[4] == '1' && v[5] > '2') && !(v[4] == '0' && v[5] == '0');
  return n == 9 && v[6] == '.' && isdigit((unsigned char)v[7]) && isdigit((unsigned char)v[8]);
}

static bool image_ext(const char *ext) {
  return !strcmp(ext, "jpg") || !strcmp(ext, "jpeg") || !strcmp(ext, "png") || !strcmp(ext, "gif");
}

/* ---- init, validate, free ----------------------------------------------------------------- */

static void linkedin_free(void *instance) {
  struct linkedin *li = instance;
  if (!li)
    return;
  free(li->name);
  free(li->author);
  if (li->token)
    li->host->secret_free(li->token);
  if (li->auth) {
    explicit_bzero(li->auth, strlen(li->auth));
    free(li->auth);
  }
  free(li->api_base);
  free(li->api_host);
  free(li->version);
  free(li);
}

static int linkedin_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                         void **instance) {
  int line = conf->line;
  const char *author = conf->get(conf, "author", &line);
  const char *v;
  bool person = false, https = false;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  if (!author || !author_ok(author, &person)) {
    if (author)
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] author: '%s' is not a LinkedIn URN such as "
                "urn:li:person:ID or urn:li:organization:ID",
                conf->file, line, conf->name, author);
    else
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] needs 'author = urn:li:person:ID' (posting as yourself) or "
                "'author = urn:li:organization:ID' (posting as a page you administer)",
                conf->file, conf->line, conf->name);
    return CP_ECONFIG;
  }

  struct linkedin *li = calloc(1, sizeof *li);
  if (!li)
    return CP_ENOMEM;
  li->host = host;
  li->name = strdup(conf->name ? conf->name : "linkedin");
  li->author = strdup(author);
  if (!li->name || !li->author)
    goto nomem;

  line = conf->line;
  v = conf->get(conf, "api_base", &line);
  li->api_base = strdup(v ? v : DEFAULT_API_BASE);
  if (!li->api_base)
    goto nomem;
  for (size_t n = strlen(li->api_base); n > 0 && li->api_base[n - 1] == '/'; n--)
    li->api_base[n - 1] = '\0';
  if (!url_ok(li->api_base, &li->api_host, &https)) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] api_base: '%s' is not an https URL (plain http only to this "
              "machine)",
              conf->file, line, conf->name, v);
    linkedin_free(li);
    return CP_ECONFIG;
  }

  line = conf->line;
  v = conf->get(conf, "version", &line);
  if (v && !version_ok(v)) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] version: '%s' is not a LinkedIn API version such as %s "
              "(YYYYMM)",
              conf->file, line, conf->name, v, DEFAULT_VERSION);
    linkedin_free(li);
    return CP_ECONFIG;
  }
  li->version = strdup(v ? v : DEFAULT_VERSION);
  if (!li->version)
    goto nomem;

  err = cp_cu_conf_count(host, conf, "max_chars", 1, ~0ULL, "a positive number", &li->max_chars);
  if (err) {
    linkedin_free(li);
    return err;
  }

  err = cp_cu_conf_secret(host, conf, "token",
                          "the OAuth access token: token_file = PATH or token_env = VARIABLE "
                          "(scope w_member_social, or w_organization_social for an organization)",
                          &li->token);
  if (err) {
    linkedin_free(li);
    return err;
  }
  size_t alen = strlen(li->token) + 8;
  li->auth = malloc(alen);
  if (!li->auth)
    goto nomem;
  snprintf(li->auth, alen, "Bearer %s", li->token);
  *instance = li;
  return 0;

nomem:
  linkedin_free(li);
  return CP_ENOMEM;
}

static int linkedin_validate(void *instance, const struct cp_post *post, cp_diag_cb diag,
                             void *arg) {
  struct linkedin *li = instance;
  const char *text = post->text ? post->text : "";
  const char *vis = cp_post_option(post, "visibility");
  struct cp_text_limit lim;
  size_t count = 0;
  char msg[512], ext[16];
  int bad = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no images: write a description or add an image");
    bad++;
  }
  if (!cp_text_fits("linkedin", text, li->max_chars, &count, &lim)) {
    snprintf(msg, sizeof msg, "%zu characters, LinkedIn allows %zu%s: shorten the text%s", count,
             lim.max, li->max_chars ? " (max_chars)" : "",
             post->thread ? " (LinkedIn posts cannot be threaded, so thread = yes does not help)"
                          : "");
    diag(arg, true, msg);
    bad++;
  }
  if (post->n_media > MAX_IMAGES) {
    snprintf(msg, sizeof msg, "%zu images, a LinkedIn post takes at most %d: remove %zu",
             post->n_media, MAX_IMAGES, post->n_media - MAX_IMAGES);
    diag(arg, true, msg);
    bad++;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    cp_cu_media_ext(post->media[i].src, ext, sizeof ext, false);
    if (!image_ext(ext)) {
      snprintf(msg, sizeof msg,
               "media %zu (%s): the linkedin connector uploads JPG, PNG and GIF images only; "
               "videos and documents are not supported: use an image or drop it",
               i + 1, post->media[i].src);
      diag(arg, true, msg);
      bad++;
    }
  }
  if (vis && strcasecmp(vis, "public") && strcasecmp(vis, "connections")) {
    snprintf(msg, sizeof msg, "visibility = %s: LinkedIn knows public and connections", vis);
    diag(arg, true, msg);
    bad++;
  } else if (vis && !strcasecmp(vis, "connections") && strncmp(li->author, "urn:li:person:", 14)) {
    diag(arg, true,
         "visibility = connections: only a member (urn:li:person) has connections; an "
         "organization posts publicly: drop the setting");
    bad++;
  }
  return bad ? CP_EINVAL : 0;
}

/* ---- publish ------------------------------------------------------------------------------ */

static void job_free(struct job *j) {
  if (!j)
    return;
  if (j->images) {
    for (size_t i = 0; i < j->post->n_media; i++)
      free(j->images[i]);
    free(j->images);
  }
  free(j->upload_url);
  free(j->pending);
  free(j);
}

/* Completes the job's request with res (freeing the job first: req is invalid afterwards). */
static void finish(struct job *j, struct cp_result *res) {
  struct linkedin *li = j->li;
  const struct cp_publish_req *req = j->req;

  if (j->post) {
    if (res->outcome == CP_OUTCOME_OK)
      li->host->log(li->host, CP_LOG_INFO, "post %s published on LinkedIn: %s", j->post_id,
                    res->remote_id[0] ? res->remote_id : "(no id returned)");
    else
      li->host->log(li->host, CP_LOG_WARN, "post %s not published on LinkedIn (%s): %s", j->post_id,
                    cp_outcome_name(res->outcome), res->message);
  }
  job_free(j);
  req->host->complete(req, res);
}

static void fail(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Completes with a failure found here rather than reported by LinkedIn. */
static void fail(struct job *j, enum cp_outcome outcome, int err, const char *fmt, ...) {
  struct cp_result res;
  va_list ap;

  va_start(ap, fmt);
  cp_cu_result_vset(&res, outcome, err, fmt, ap);
  va_end(ap);
  finish(j, &res);
}

/* The error codes LinkedIn gives a token it no longer accepts. */
static bool token_code(const char *code) {
  return code && (!strcmp(code, "EXPIRED_ACCESS_TOKEN") || !strcmp(code, "REVOKED_ACCESS_TOKEN") ||
                  !strcmp(code, "INVALID_ACCESS_TOKEN"));
}

/* Puts LinkedIn's advice for a failed answer in front of the server's message. */
static void explain(struct job *j, const struct cp_http_resp *resp, struct cp_result *res,
                    const char *step) {
  const char *advice = NULL;
  bool duplicate = false, token = res->http_status == 401;

  if (resp->body_len && resp->status >= 400) {
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *errs = json_object_get(json_object_get(root, "errorDetails"), "inputErrors");
    size_t i;
    json_t *e;
    json_array_foreach(errs, i, e) {
      const char *code = json_string_value(json_object_get(e, "code"));
      if (code && !strcmp(code, "DUPLICATE_POST"))
        duplicate = true;
    }
    token = token || token_code(json_string_value(json_object_get(root, "code")));
    json_decref(root);
  }
  if (duplicate)
    advice = "LinkedIn refused a duplicate post (DUPLICATE_POST): it was most likely published "
             "by an earlier attempt; check the feed";
  else if (res->outcome == CP_OUTCOME_AUTH && token)
    advice = "the access token expired or was revoked (LinkedIn tokens last 60 days): renew the "
             "token and update token_file/token_env";
  else if (res->outcome == CP_OUTCOME_AUTH)
    advice = strncmp(j->li->author, "urn:li:person:", 14)
                 ? "the token may not post for this organization: it needs the "
                   "w_organization_social scope and an admin or content admin role"
                 : "the token may not post for this member: it needs the w_member_social scope";
  else if (res->http_status == 426)
    advice = "LinkedIn no longer serves this API version: set version = YYYYMM to a recent one";
  else if (res->outcome == CP_OUTCOME_RATE_LIMITED)
    advice = "LinkedIn's daily quota is used up (it resets at midnight UTC) or LinkedIn is "
             "shedding load";
  if (!advice && !step)
    return;
  cp_cu_result_msg(res, "%s%s%s%s%s%s", step ? step : "", step ? ": " : "", advice ? advice : "",
                   advice ? " (" : "", res->message, advice ? ")" : "");
}

static int start(struct job *j);

/* The headers of a call to LinkedIn's REST API; hdrs must hold 4. */
static size_t api_headers(struct linkedin *li, struct cp_http_header *hdrs, bool json) {
  size_t n = 0;
  hdrs[n++] = (struct cp_http_header){"Authorization", li->auth};
  hdrs[n++] = (struct cp_http_header){"LinkedIn-Version", li->version};
  hdrs[n++] = (struct cp_http_header){"X-Restli-Protocol-Version", "2.0.0"};
  if (json)
    hdrs[n++] = (struct cp_http_header){"Content-Type", "application/json"};
  return n;
}

/* An image URN as LinkedIn's initializeUpload returns it. */
static bool image_urn(const char *s) {
  return !strncmp(s, "urn:li:image:", 13);
}

/* "image1=urn:li:image:A;image3=urn:li:image:C": the images uploaded so far. */
static int save_images(struct job *j) {
  return cp_cu_progress_save_ids(j->req, "image", j->images, j->post->n_media);
}

/* Reads what save_images stored on an earlier attempt. Unknown entries are ignored. */
static int load_images(struct job *j, const char *progress) {
  return cp_cu_progress_load_ids(progress, "image", j->images, j->post->n_media, image_urn);
}

static void on_created(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;

  j->li->host->http_result(j->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    explain(j, resp, &res, NULL);
    finish(j, &res);
    return;
  }
  const char *id = cp_http_header(resp, "x-restli-id");
  if (id && *id) {
    cp_connector_copy_text(res.remote_id, sizeof res.remote_id, id, strlen(id));
    snprintf(res.remote_url, sizeof res.remote_url, "https://www.linkedin.com/feed/update/%s/",
             res.remote_id);
  } else {
    j->li->host->log(j->li->host, CP_LOG_WARN,
                     "post %s: LinkedIn answered HTTP %ld without an x-restli-id header: "
                     "published, but its address is unknown",
                     j->post_id, resp->status);
  }
  finish(j, &res);
}

/* The post itself, once every image is uploaded. Returns 0 or a CP_E* without completing. */
static int create_post(struct job *j) {
  struct linkedin *li = j->li;
  const struct cp_post *post = j->post;
  const char *vis = cp_post_option(post, "visibility");
  char url[1024];
  struct cp_http_header hdrs[4];

  char *commentary = little_escape(post->text ? post->text : "");
  if (!commentary)
    return CP_ENOMEM;
  json_t *root =
      json_pack("{s:s, s:s, s:s, s:{s:s, s:[], s:[]}, s:s, s:b}", "author", li->author,
                "commentary", commentary, "visibility",
                vis && !strcasecmp(vis, "connections") ? "CONNECTIONS" : "PUBLIC", "distribution",
                "feedDistribution", "MAIN_FEED", "targetEntities", "thirdPartyDistributionChannels",
                "lifecycleState", "PUBLISHED", "isReshareDisabledByAuthor", 0);
  free(commentary);
  if (!root)
    return CP_EUTF8; /* json_pack refuses strings that are not UTF-8 */
  if (post->n_media > 0) {
    json_t *imgs = json_array();
    for (size_t i = 0; i < post->n_media; i++) {
      json_t *img = json_pack("{s:s}", "id", j->images[i]);
      const char *alt = post->media[i].alt;
      if (img && alt && *alt)
        json_object_set_new(img, "altText", json_string(alt));
      json_array_append_new(imgs, img);
    }
    json_t *content = post->n_media == 1 ? json_pack("{s:O}", "media", json_array_get(imgs, 0))
                                         : json_pack("{s:{s:O}}", "multiImage", "images", imgs);
    json_decref(imgs);
    if (!content) {
      json_decref(root);
      return CP_ENOMEM;
    }
    json_object_set_new(root, "content", content);
  }
  char *body = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(root);
  if (!body)
    return CP_ENOMEM;

  snprintf(url, sizeof url, "%s/rest/posts", li->api_base);
  struct cp_http_req hr = {
      .method = "POST",
      .url = url,
      .headers = hdrs,
      .n_headers = api_headers(li, hdrs, true),
      .body = body,
      .body_len = strlen(body),
      /* No idempotency key exists: a fresh connection, so that a post is never sent twice. */
      .idempotent = false,
  };
  int err = li->host->http_request(li->host, &hr, on_created, j);
  free(body);
  return err;
}

static void on_uploaded(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char step[64];

  j->li->host->http_result(j->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    snprintf(step, sizeof step, "uploading image %zu", j->cur + 1);
    explain(j, resp, &res, step);
    finish(j, &res);
    return;
  }
  j->images[j->cur] = j->pending;
  j->pending = NULL;
  int err = save_images(j);
  if (err)
    j->li->host->log(j->li->host, CP_LOG_WARN,
                     "post %s: cannot store the uploaded image (%s): a retry uploads it again",
                     j->post_id, cp_strerror(err));
  err = start(j);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "cannot send the next request: %s", cp_strerror(err));
}

/* Where the token may go along: LinkedIn's own hosts, and the API's host (a test server). */
static bool trusted_upload_host(struct linkedin *li, const char *host) {
  size_t n = strlen(host), s = strlen(".linkedin.com");
  return !strcasecmp(host, li->api_host) || !strcasecmp(host, "linkedin.com") ||
         (n > s && !strcasecmp(host + n - s, ".linkedin.com"));
}

static void on_media(const struct cp_media_blob *blob, void *data) {
  struct job *j = data;
  struct linkedin *li = j->li;
  const struct cp_media *m = &j->post->media[j->cur];
  struct cp_http_header hdrs[2];
  size_t nh = 0;
  char *host = NULL;
  bool https = false;

  if (blob->err) {
    fail(j, cp_cu_media_outcome(blob->err), blob->err, "image %zu (%s): %s", j->cur + 1, m->src,
         blob->errmsg[0] ? blob->errmsg : cp_strerror(blob->err));
    return;
  }
  if (strcmp(blob->content_type, "image/jpeg") && strcmp(blob->content_type, "image/png") &&
      strcmp(blob->content_type, "image/gif")) {
    fail(j, CP_OUTCOME_PERMANENT, CP_EINVAL,
         "image %zu (%s) is %s: LinkedIn takes JPG, PNG and GIF images", j->cur + 1, m->src,
         blob->content_type);
    return;
  }
  if (!url_ok(j->upload_url, &host, &https)) {
    fail(j, CP_OUTCOME_PERMANENT, CP_EINVAL,
         "image %zu: LinkedIn gave an upload URL that is not https; not sending the image there",
         j->cur + 1);
    return;
  }
  if (trusted_upload_host(li, host))
    hdrs[nh++] = (struct cp_http_header){"Authorization", li->auth};
  free(host);
  hdrs[nh++] = (struct cp_http_header){"Content-Type", blob->content_type};
  struct cp_http_req hr = {
      .method = "PUT",
      .url = j->upload_url,
      .headers = hdrs,
      .n_headers = nh,
      .body = (const char *)blob->data,
      .body_len = blob->len,
      .timeout_ms = UPLOAD_TIMEOUT_MS,
  };
  int err = li->host->http_request(li->host, &hr, on_uploaded, j);
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "image %zu: cannot start the upload: %s", j->cur + 1,
         cp_strerror(err));
}

static void on_initialized(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char step[64];

  j->li->host->http_result(j->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    snprintf(step, sizeof step, "preparing the upload of image %zu", j->cur + 1);
    explain(j, resp, &res, step);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *value = json_object_get(root, "value");
  const char *url = json_string_value(json_object_get(value, "uploadUrl"));
  const char *urn = json_string_value(json_object_get(value, "image"));
  if (!url || !urn || strncmp(urn, "urn:li:image:", 13)) {
    json_decref(root);
    /* Nothing was posted yet: asking again is harmless. */
    fail(j, CP_OUTCOME_RETRY, CP_EPARSE,
         "image %zu: LinkedIn's initializeUpload answer (HTTP %ld) has no value.uploadUrl and "
         "value.image",
         j->cur + 1, resp->status);
    return;
  }
  free(j->upload_url);
  free(j->pending);
  j->upload_url = strdup(url);
  j->pending = strdup(urn);
  json_decref(root);
  if (!j->upload_url || !j->pending) {
    fail(j, CP_OUTCOME_RETRY, CP_ENOMEM, "out of memory");
    return;
  }
  int err = j->li->host->media_load(j->req, &j->post->media[j->cur], on_media, j);
  if (err)
    fail(j, CP_OUTCOME_PERMANENT, err, "image %zu (%s): %s", j->cur + 1, j->post->media[j->cur].src,
         cp_strerror(err));
}

/* Asks for an upload URL for media item cur. */
static int init_upload(struct job *j) {
  struct linkedin *li = j->li;
  struct cp_http_header hdrs[4];
  char url[1024];

  json_t *root = json_pack("{s:{s:s}}", "initializeUploadRequest", "owner", li->author);
  char *body = root ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  if (!body)
    return CP_ENOMEM;
  snprintf(url, sizeof url, "%s/rest/images?action=initializeUpload", li->api_base);
  struct cp_http_req hr = {
      .method = "POST",
      .url = url,
      .headers = hdrs,
      .n_headers = api_headers(li, hdrs, true),
      .body = body,
      .body_len = strlen(body),
  };
  int err = li->host->http_request(li->host, &hr, on_initialized, j);
  free(body);
  return err;
}

/* The next step: the first image not uploaded yet, else the post. Returns 0 or a CP_E* (and then
 * the job is still the caller's). */
static int start(struct job *j) {
  for (size_t i = 0; i < j->post->n_media; i++)
    if (!j->images[i]) {
      j->cur = i;
      return init_upload(j);
    }
  return create_post(j);
}

static int linkedin_publish(void *instance, const struct cp_post *post,
                            const struct cp_publish_req *req) {
  struct linkedin *li = instance;
  int err;

  if (post->n_media > MAX_IMAGES)
    return CP_ELIMIT;
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->li = li;
  j->post = post;
  j->req = req;
  snprintf(j->post_id, sizeof j->post_id, "%s", post->id);
  j->images = calloc(post->n_media ? post->n_media : 1, sizeof *j->images);
  if (!j->images) {
    free(j);
    return CP_ENOMEM;
  }
  err = load_images(j, req->progress);
  if (!err)
    err = start(j);
  if (err) {
    job_free(j);
    return err;
  }
  return 0;
}

/* ---- login check -------------------------------------------------------------------------- */

static void on_userinfo(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct linkedin *li = j->li;
  struct cp_result res;

  li->host->http_result(j->req, resp, &res);
  if (res.http_status == 403) {
    /* LinkedIn checks the token before the scope: a 403 means it is valid, but lacks the openid
     * and profile scopes that would tell whose it is. */
    memset(&res, 0, sizeof res);
    res.outcome = CP_OUTCOME_OK;
    res.http_status = 403;
    snprintf(res.message, sizeof res.message,
             "the token is valid; without the openid and profile scopes LinkedIn does not say "
             "whose it is, so the author was not checked");
    finish(j, &res);
    return;
  }
  if (res.outcome != CP_OUTCOME_OK) {
    if (res.http_status == 401)
      explain(j, resp, &res, NULL);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  const char *sub = json_string_value(json_object_get(root, "sub"));
  const char *name = json_string_value(json_object_get(root, "name"));
  char msg[2 * CP_RESULT_MESSAGE_MAX];
  if (sub && !strncmp(li->author, "urn:li:person:", 14) && strcmp(li->author + 14, sub)) {
    res.outcome = CP_OUTCOME_AUTH;
    snprintf(msg, sizeof msg,
             "the token belongs to urn:li:person:%s%s%s%s, but author is %s: use that member's "
             "token or fix author",
             sub, name ? " (" : "", name ? name : "", name ? ")" : "", li->author);
  } else if (sub) {
    snprintf(msg, sizeof msg, "token of urn:li:person:%s%s%s%s", sub, name ? " (" : "",
             name ? name : "", name ? ")" : "");
  } else {
    snprintf(msg, sizeof msg, "the token is valid (LinkedIn's userinfo named no member)");
  }
  cp_connector_copy_text(res.message, sizeof res.message, msg, strlen(msg));
  json_decref(root);
  finish(j, &res);
}

static int linkedin_login_check(void *instance, const struct cp_publish_req *req) {
  struct linkedin *li = instance;
  struct cp_http_header hdrs[1] = {{"Authorization", li->auth}};
  char url[1024];

  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->li = li;
  j->req = req;
  /* OpenID Connect's userinfo: the one endpoint a posting app commonly may read (Sign In with
   * LinkedIn); it posts nothing. */
  snprintf(url, sizeof url, "%s/v2/userinfo", li->api_base);
  struct cp_http_req hr = {.method = "GET", .url = url, .headers = hdrs, .n_headers = 1};
  int err = li->host->http_request(li->host, &hr, on_userinfo, j);
  if (err)
    free(j);
  return err;
}

/* ---- engagement --------------------------------------------------------------------------- */

/* summary.key of the answer, or -1 if it does not give it. */
static int64_t count_in(json_t *root, const char *summary, const char *key) {
  json_t *v = json_object_get(json_object_get(root, summary), key);
  return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

static void on_social_actions(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char step[CP_RESULT_ID_MAX + 160];

  j->li->host->http_result(j->req, resp, &res);
  /* A read changes nothing: an answer that got lost is simply asked again. */
  if (res.outcome == CP_OUTCOME_UNKNOWN)
    res.outcome = CP_OUTCOME_RETRY;
  if (res.outcome != CP_OUTCOME_OK) {
    snprintf(step, sizeof step, "post %s", j->read_urn);
    if (resp->status == 404 || resp->status == 410) {
      res.outcome = CP_OUTCOME_PERMANENT;
      snprintf(step, sizeof step, "post %s: the post was deleted", j->read_urn);
    } else if (resp->status == 403 && res.outcome == CP_OUTCOME_AUTH) {
      /* A token that posts but may not read (w_* scopes only): not a reason to pause the
       * channel's posts, which AUTH would do. An expired token stays AUTH (classify). */
      bool token = false;
      json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
      token = token_code(json_string_value(json_object_get(root, "code")));
      json_decref(root);
      if (!token) {
        res.outcome = CP_OUTCOME_PERMANENT;
        snprintf(step, sizeof step,
                 "post %s: reading its counts needs the %s scope (publishing is not affected)",
                 j->read_urn,
                 strncmp(j->li->author, "urn:li:person:", 14) ? "r_organization_social"
                                                              : "r_member_social");
      }
    }
    explain(j, resp, &res, step);
    finish(j, &res);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  if (!json_is_object(root) ||
      (!json_object_get(root, "likesSummary") && !json_object_get(root, "commentsSummary"))) {
    json_decref(root);
    cp_cu_result_msg(&res, "post %s: HTTP %ld, but the answer is not a social actions summary",
                     j->read_urn, resp->status);
    res.outcome = CP_OUTCOME_RETRY;
    res.err = CP_EPARSE;
    finish(j, &res);
    return;
  }
  memset(&res, 0, sizeof res);
  res.outcome = CP_OUTCOME_OK;
  res.http_status = resp->status;
  res.has_engagement = true;
  res.likes = count_in(root, "likesSummary", "totalLikes");
  /* All comments, replies to comments included; older answers give only the first level. */
  res.replies = count_in(root, "commentsSummary", "aggregatedTotalComments");
  if (res.replies < 0)
    res.replies = count_in(root, "commentsSummary", "totalFirstLevelComments");
  res.reposts = -1; /* socialActions does not count reshares */
  res.quotes = -1;
  res.views = -1;
  json_decref(root);
  finish(j, &res);
}

/* A post URN as publish reported it (x-restli-id): urn:li:share:N, urn:li:ugcPost:N, ... */
static bool post_urn_ok(const char *urn) {
  size_t n = strlen(urn);
  if (strncmp(urn, "urn:li:", 7) || n <= 7 || n >= CP_RESULT_ID_MAX)
    return false;
  for (const char *p = urn + 7; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != ':' && *p != '_' && *p != '-')
      return false;
  return true;
}

static int linkedin_engagement(void *instance, const char *remote_id, const char *remote_url,
                               const struct cp_publish_req *req) {
  struct linkedin *li = instance;
  struct cp_http_header hdrs[4];
  char url[1024];

  (void)remote_url;
  if (!remote_id || !post_urn_ok(remote_id))
    return CP_EINVAL; /* not a URN this connector reported */
  char *urn = curl_easy_escape(NULL, remote_id, 0);
  struct job *j = calloc(1, sizeof *j);
  if (!urn || !j) {
    curl_free(urn);
    free(j);
    return CP_ENOMEM;
  }
  snprintf(url, sizeof url, "%s/rest/socialActions/%s", li->api_base, urn);
  curl_free(urn);
  j->li = li;
  j->req = req;
  snprintf(j->read_urn, sizeof j->read_urn, "%s", remote_id);
  size_t nh = api_headers(li, hdrs, false);
  struct cp_http_req hr = {.method = "GET", .url = url, .headers = hdrs, .n_headers = nh};
  int err = li->host->http_request(li->host, &hr, on_social_actions, j);
  if (err)
    free(j);
  return err;
}

/* ---- classification ----------------------------------------------------------------------- */

static enum cp_outcome linkedin_classify(void *instance, const struct cp_http_resp *resp,
                                         enum cp_outcome dflt) {
  (void)instance;
  /* A token LinkedIn no longer accepts is named in the body even when the status is not 401. */
  if (resp->status >= 400 && resp->status < 500 && resp->status != 429 && resp->body_len) {
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    bool token = token_code(json_string_value(json_object_get(root, "code")));
    json_decref(root);
    if (token)
      return CP_OUTCOME_AUTH;
  }
  return dflt;
}

const struct cp_connector cp_connector_linkedin = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "linkedin",
    .description = "LinkedIn Posts API: a member's or an organization's post, with images",
    .caps = CP_CAP_MEDIA | CP_CAP_ENGAGEMENT,
    .init = linkedin_init,
    .validate = linkedin_validate,
    .publish = linkedin_publish,
    .classify = linkedin_classify,
    .login_check = linkedin_login_check,
    .free = linkedin_free,
    .post_options = post_options,
    .engagement = linkedin_engagement,
};
