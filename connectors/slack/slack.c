/* The slack connector: posts through a Slack incoming webhook.
 *
 *   [channel team]
 *   type = slack
 *   url_file = slack.url           ; or url_env = CALPOST_SLACK_URL; the URL is the secret
 *   link_preview = yes             ; sets unfurl_links and unfurl_media; default: Slack's own
 *   rate = 1/1s                    ; recommended (Slack allows one message per second)
 *
 * Request: POST <url> with JSON {"text": ..., "unfurl_links"?, "unfurl_media"?}. The text is
 * mrkdwn: &, < and > are escaped as &amp; &lt; &gt; (and nothing else, as Slack documents), so a
 * post cannot ping <!channel> by accident, and every http(s) link is sent as <url> so Slack links
 * exactly the URL. Media must be https URLs of images: Slack fetches them itself (an incoming
 * webhook cannot upload files); they go as image blocks after the text in section blocks.
 * Slack answers 200 "ok", or a status with a plain-text error code (invalid_token, no_service,
 * channel_is_archived, ...). The connector waits a second after each message it delivered before
 * sending the next, Slack's rate for incoming webhooks; a 429 carries Retry-After. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"

#define TEXT_MAX 40000   /* Slack truncates longer messages */
#define SECTION_MAX 3000 /* text of one section block */
#define BLOCKS_MAX 50    /* blocks in one message */
#define ALT_MAX 2000     /* alt_text of an image block */
#define IMAGE_URL_MAX 3000
#define MIN_INTERVAL_MS 1000 /* one message per second per webhook */

struct slack {
  const struct cp_host *host;
  char *name;
  char *url;        /* the webhook URL: a secret */
  char *token;      /* its last path segment, to scrub from messages */
  int link_preview; /* -1: leave to Slack */
  size_t max_chars; /* 0: TEXT_MAX */
  bool delivered;   /* a message went out: last_ok_ms is set */
  uint64_t last_ok_ms;
};

struct job {
  struct slack *s;
  const struct cp_post *post;
  const struct cp_publish_req *req;
  char *body;
};

static const char *const known_keys[] = {"url_file", "url_env", "link_preview", NULL};
static const char *const image_exts[] = {"png", "jpg", "jpeg", "gif", NULL};

/* Slack's plain-text error codes that mean the webhook URL itself is dead: every later post
 * would fail the same way until a new webhook is set up, so the channel pauses (AUTH). */
static const char *const dead_hook_codes[] = {
    "invalid_token",   "no_service", "no_service_id", "no_team", "team_disabled",
    "no_active_hooks", NULL};
/* Codes about this message or the webhook's channel: the post fails, the channel goes on. */
static const char *const permanent_codes[] = {"invalid_payload",
                                              "user_not_found",
                                              "channel_not_found",
                                              "channel_is_archived",
                                              "action_prohibited",
                                              "posting_to_general_channel_denied",
                                              "no_text",
                                              "too_many_attachments",
                                              "invalid_blocks",
                                              "invalid_blocks_format",
                                              "missing_text_or_fallback_or_attachments",
                                              NULL};

static const struct {
  const char *code;
  const char *hint;
} hints[] = {
    {"invalid_payload", "Slack could not read the message"},
    {"user_not_found", "the webhook's user no longer exists: create a new webhook"},
    {"channel_not_found", "the webhook's channel no longer exists: create a new webhook"},
    {"channel_is_archived", "the channel is archived: unarchive it or use another webhook"},
    {"action_prohibited", "a workspace admin restricted this webhook"},
    {"posting_to_general_channel_denied", "only admins may post in #general: use another channel"},
    {"invalid_token", "the webhook was revoked: create a new one and update url_file"},
    {"no_service", "the webhook was disabled or removed: create a new one and update url_file"},
    {"no_service_id", "the webhook URL is incomplete: copy it again"},
    {"no_team", "the workspace is gone: create a new webhook"},
    {"team_disabled", "the workspace is disabled"},
    {"no_active_hooks", "the webhook's app is disabled: re-enable it or create a new webhook"},
    {"rollup_error", "Slack failed on its side"},
};

/* ---- small helpers ------------------------------------------------------------------------ */

/* The error code of a plain-text answer: its first word ("no_service"), or "". */
static void answer_code(const struct cp_http_resp *resp, char *code, size_t size) {
  const char *b = resp->body;
  size_t n = 0;
  while (*b == ' ' || *b == '\t' || *b == '\r' || *b == '\n')
    b++;
  while (n + 1 < size &&
         ((b[n] >= 'a' && b[n] <= 'z') || b[n] == '_' || (b[n] >= '0' && b[n] <= '9')))
    n++;
  memcpy(code, b, n);
  code[n] = '\0';
}

/* Escapes s[0..n) for mrkdwn; inside a link also '|', which would end the URL. */
static void put_escaped(struct cp_cu_buf *b, const char *s, size_t n, bool in_link) {
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    const char *rep = s[i] == '&'              ? "&amp;"
                      : s[i] == '<'            ? "&lt;"
                      : s[i] == '>'            ? "&gt;"
                      : in_link && s[i] == '|' ? "%7C"
                                               : NULL;
    if (rep) {
      cp_cu_buf_add(b, s + start, i - start);
      cp_cu_buf_add(b, rep, strlen(rep));
      start = i + 1;
    }
  }
  cp_cu_buf_add(b, s + start, n - start);
}

/* The text as Slack mrkdwn: &, <, > escaped, links as <url>. Returns a malloc'd string or NULL
 * on ENOMEM. */
static char *mrkdwn(const char *text) {
  struct cp_cu_buf b = {0};
  const char *p = text;
  size_t len;
  cp_cu_buf_add(&b, "", 0);
  for (const char *u = cp_text_find_url(p, &len); u; u = cp_text_find_url(p, &len)) {
    put_escaped(&b, p, (size_t)(u - p), false);
    cp_cu_buf_add(&b, "<", 1);
    put_escaped(&b, u, len, true);
    cp_cu_buf_add(&b, ">", 1);
    p = u + len;
  }
  put_escaped(&b, p, strlen(p), false);
  return cp_cu_buf_take(&b);
}

/* Splits text into section texts of at most SECTION_MAX characters after escaping. Returns 0
 * and a cp_text_split array in *parts, or a negative CP_E*. */
static int sections(const char *text, char ***parts, size_t *n) {
  static const size_t limits[] = {SECTION_MAX, 2000, 1000, 500};
  for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
    char **v = NULL;
    size_t m = 0;
    int err = cp_text_split(text, limits[k], CP_COUNT_CODEPOINTS, false, &v, &m);
    if (err)
      return err;
    bool fits = true;
    for (size_t i = 0; i < m && fits; i++) {
      char *e = mrkdwn(v[i]);
      if (!e) {
        cp_text_split_free(v, m);
        return CP_ENOMEM;
      }
      free(v[i]);
      v[i] = e;
      fits = cp_text_codepoints(e) <= SECTION_MAX;
    }
    if (fits) {
      *parts = v;
      *n = m;
      return 0;
    }
    cp_text_split_free(v, m);
  }
  return CP_ELIMIT;
}

/* ---- init / free -------------------------------------------------------------------------- */

static void slack_free(void *instance) {
  struct slack *s = instance;
  if (!s)
    return;
  free(s->name);
  if (s->url)
    s->host->secret_free(s->url);
  if (s->token) {
    explicit_bzero(s->token, strlen(s->token));
    free(s->token);
  }
  free(s);
}

/* https (or http to this machine); sets the token to the last path segment. */
static int check_url(struct slack *s) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *path = NULL;
  int rc = CP_EINVAL;
  if (!u)
    return CP_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, s->url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK) {
    bool loop = cp_cu_loopback_host(host, false);
    if (!strcmp(scheme, "https") || (loop && !strcmp(scheme, "http"))) {
      const char *last = strrchr(path, '/');
      rc = 0;
      if (last && last[1]) {
        s->token = strdup(last + 1);
        rc = s->token ? 0 : CP_ENOMEM;
      }
    }
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(path);
  curl_url_cleanup(u);
  return rc;
}

static int slack_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                      void **instance) {
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  struct slack *s = calloc(1, sizeof *s);
  if (!s)
    return CP_ENOMEM;
  s->host = host;
  s->link_preview = -1;
  s->name = strdup(conf->name ? conf->name : "slack");
  if (!s->name) {
    slack_free(s);
    return CP_ENOMEM;
  }
  err = cp_cu_conf_secret(host, conf, "url",
                          "the incoming webhook URL: 'url_file = FILE' or 'url_env = VARIABLE' "
                          "(https://hooks.slack.com/services/...)",
                          &s->url);
  if (err) {
    slack_free(s);
    return err;
  }
  err = check_url(s);
  if (err) {
    if (err == CP_EINVAL) /* never print the URL: it is the secret */
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] the webhook URL (url_file/url_env) is not an https URL "
                "(plain http is allowed only to localhost)",
                conf->file, conf->line, conf->name);
    slack_free(s);
    return err == CP_EINVAL ? CP_ECONFIG : err;
  }
  char what[64];
  snprintf(what, sizeof what, "a number from 1 to %d (Slack's limit)", TEXT_MAX);
  err = cp_cu_conf_bool(host, conf, "link_preview", &s->link_preview);
  if (!err)
    err = cp_cu_conf_count(host, conf, "max_chars", 1, TEXT_MAX, what, &s->max_chars);
  if (err) {
    slack_free(s);
    return err;
  }
  *instance = s;
  return 0;
}

/* ---- validate ----------------------------------------------------------------------------- */

static int slack_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  struct slack *s = instance;
  const char *text = post->text ? post->text : "";
  size_t limit = s->max_chars ? s->max_chars : TEXT_MAX;
  char msg[320], ext[16];
  int bad = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  char *e = mrkdwn(text);
  if (!e)
    return CP_ENOMEM;
  size_t n = cp_text_codepoints(e);
  free(e);
  if (n > limit) {
    snprintf(msg, sizeof msg,
             "%zu characters (with &, < and > escaped as Slack needs), channel %s allows %zu: "
             "shorten the text",
             n, s->name, limit);
    diag(arg, true, msg);
    bad = 1;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    const struct cp_media *m = &post->media[i];
    cp_cu_media_ext(m->src, ext, sizeof ext, true);
    if (strncasecmp(m->src, "https://", 8)) {
      snprintf(msg, sizeof msg,
               "media '%.120s': a Slack incoming webhook cannot upload files; give the image as "
               "an https:// URL (Slack fetches it)",
               m->src);
      diag(arg, true, msg);
      bad = 1;
    } else if (*ext && !cp_cu_in_list(ext, image_exts)) {
      snprintf(msg, sizeof msg, "media '%.120s': Slack shows images (.png, .jpg, .gif) only",
               m->src);
      diag(arg, true, msg);
      bad = 1;
    } else if (strlen(m->src) > IMAGE_URL_MAX) {
      snprintf(msg, sizeof msg, "media '%.80s...': the URL is over %d characters", m->src,
               IMAGE_URL_MAX);
      diag(arg, true, msg);
      bad = 1;
    }
    if (m->alt && cp_text_codepoints(m->alt) > ALT_MAX) {
      snprintf(msg, sizeof msg, "media '%.120s': alt text of %zu characters, Slack allows %d",
               m->src, cp_text_codepoints(m->alt), ALT_MAX);
      diag(arg, true, msg);
      bad = 1;
    }
  }
  if (post->n_media && !bad) {
    char **parts = NULL;
    size_t np = 0;
    if (*text && sections(text, &parts, &np) == 0)
      cp_text_split_free(parts, np);
    if (np + post->n_media > BLOCKS_MAX) {
      snprintf(msg, sizeof msg,
               "%zu text sections and %zu images make %zu blocks, Slack allows %d: use fewer "
               "images or a shorter text",
               np, post->n_media, np + post->n_media, BLOCKS_MAX);
      diag(arg, true, msg);
      bad = 1;
    }
  }
  return bad ? CP_EINVAL : 0;
}

/* ---- publish ------------------------------------------------------------------------------ */

/* The request body. Returns a malloc'd JSON text, or NULL with *err set. */
static char *build_body(const struct slack *s, const struct cp_post *post, int *err) {
  const char *text = post->text ? post->text : "";
  json_t *root = json_object();
  char **parts = NULL;
  size_t np = 0;
  int bad = !root;

  *err = CP_ENOMEM;
  char *e =
      mrkdwn(*text || !post->n_media ? text : (post->media[0].alt ? post->media[0].alt : "image"));
  bad = bad || !e || json_object_set_new(root, "text", json_string(e));
  free(e);
  if (s->link_preview >= 0) {
    bad = bad || json_object_set_new(root, "unfurl_links", json_boolean(s->link_preview));
    bad = bad || json_object_set_new(root, "unfurl_media", json_boolean(s->link_preview));
  }
  if (!bad && post->n_media) {
    json_t *blocks = json_array();
    bad = !blocks || json_object_set_new(root, "blocks", blocks);
    if (!bad && *text) {
      int rc = sections(text, &parts, &np);
      if (rc) {
        *err = rc;
        bad = 1;
      }
    }
    for (size_t i = 0; !bad && i < np; i++)
      bad = json_array_append_new(blocks, json_pack("{s:s, s:{s:s, s:s}}", "type", "section",
                                                    "text", "type", "mrkdwn", "text", parts[i]));
    for (size_t i = 0; !bad && i < post->n_media; i++) {
      const char *alt = post->media[i].alt;
      bad = json_array_append_new(blocks, json_pack("{s:s, s:s, s:s}", "type", "image", "image_url",
                                                    post->media[i].src, "alt_text",
                                                    alt && *alt ? alt : "image"));
    }
  }
  if (parts)
    cp_text_split_free(parts, np);
  char *body = bad ? NULL : json_dumps(root, JSON_COMPACT);
  json_decref(root);
  return body;
}

static void on_response(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct slack *s = j->s;
  const struct cp_publish_req *req = j->req;
  struct cp_result res;
  char code[64];

  s->host->http_result(req, resp, &res);
  if (res.outcome == CP_OUTCOME_OK) {
    s->delivered = true;
    s->last_ok_ms = s->host->now_ms(s->host);
    s->host->log(s->host, CP_LOG_INFO, "post %s sent", j->post->id);
  } else {
    answer_code(resp, code, sizeof code);
    const char *hint = NULL;
    for (size_t i = 0; i < sizeof hints / sizeof hints[0] && !hint; i++)
      if (!strcmp(code, hints[i].code))
        hint = hints[i].hint;
    if (res.outcome == CP_OUTCOME_UNKNOWN && resp->status)
      hint = "not Slack's answer (is the webhook URL right?): the message may have been sent";
    if (hint)
      cp_cu_result_msg(&res, "%s (%s)", res.message, hint);
    cp_cu_scrub(res.message, s->url);
    cp_cu_scrub(res.message, s->token);
    s->host->log(s->host, CP_LOG_WARN, "post %s not sent (%s): %s", j->post->id,
                 cp_outcome_name(res.outcome), res.message);
  }
  free(j->body);
  free(j);
  req->host->complete(req, &res);
}

static int send_body(struct job *j) {
  const struct slack *s = j->s;
  struct cp_http_header hdrs[] = {{"Content-Type", "application/json; charset=utf-8"}};
  struct cp_http_req hr = {
      .method = "POST",
      .url = s->url,
      .headers = hdrs,
      .n_headers = 1,
      .body = j->body,
      .body_len = strlen(j->body),
  };
  return s->host->http_request(s->host, &hr, on_response, j);
}

static void paced(void *arg) {
  struct job *j = arg;
  int err = send_body(j);
  if (err) {
    const struct cp_publish_req *req = j->req;
    struct cp_result res = {.outcome = CP_OUTCOME_RETRY, .err = err};
    snprintf(res.message, sizeof res.message, "cannot send the request: %s", cp_strerror(err));
    free(j->body);
    free(j);
    req->host->complete(req, &res);
  }
}

static int slack_publish(void *instance, const struct cp_post *post,
                         const struct cp_publish_req *req) {
  struct slack *s = instance;
  int err;
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->s = s;
  j->post = post;
  j->req = req;
  j->body = build_body(s, post, &err);
  if (!j->body) {
    free(j);
    return err;
  }
  uint64_t now = s->host->now_ms(s->host);
  if (s->delivered && now - s->last_ok_ms < MIN_INTERVAL_MS) {
    err = cp_cu_call_later(s->host, MIN_INTERVAL_MS - (now - s->last_ok_ms), paced, j);
  } else {
    err = send_body(j);
  }
  if (err) {
    free(j->body);
    free(j);
  }
  return err;
}

static enum cp_outcome slack_classify(void *instance, const struct cp_http_resp *resp,
                                      enum cp_outcome dflt) {
  char code[64];
  long st = resp->status;
  if (!st)
    return dflt;
  answer_code(resp, code, sizeof code);
  if (st >= 200 && st < 300) /* Slack says "ok"; anything else is not Slack */
    return !strcmp(code, "ok") ? CP_OUTCOME_OK : CP_OUTCOME_UNKNOWN;
  if (st == 429)
    return CP_OUTCOME_RATE_LIMITED;
  if (cp_cu_in_list(code, dead_hook_codes))
    return CP_OUTCOME_AUTH;
  if (cp_cu_in_list(code, permanent_codes))
    return CP_OUTCOME_PERMANENT;
  return dflt;
}

const struct cp_connector cp_connector_slack = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "slack",
    .description = "Slack incoming webhook: mrkdwn messages, images by https URL",
    .caps = CP_CAP_MEDIA,
    .init = slack_init,
    .validate = slack_validate,
    .publish = slack_publish,
    .classify = slack_classify,
    /* No login_check: an incoming webhook has no call that posts nothing. */
    .free = slack_free,
};
