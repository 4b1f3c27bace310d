/* The Matrix connector: sends each post as a message to one room through the client-server API.
 *
 *   [channel team]
 *   type = matrix
 *   homeserver = https://matrix.example.org   ; the client-server API base URL
 *   room = #announcements:example.org         ; a room id (!abc:example.org) or an alias
 *   token_file = matrix.token                 ; or token_env = CALPOST_MATRIX_TOKEN
 *   msgtype = text                            ; or notice (m.notice, for bot accounts)
 *   timeout = 30                              ; seconds, or "500ms"
 *
 * Text: PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId} with the plain body and
 * an HTML formatted_body (org.matrix.custom.html: escaped text, links as <a href>, newlines as
 * <br>). The txnId is the post's idempotency key, so a resend of the same post returns the event
 * of the first send instead of posting twice (the spec: "used by the server to ensure idempotency
 * of requests").
 *
 * Media: each item is uploaded to the media repository (POST /_matrix/media/v3/upload with the raw
 * bytes) and then sent as an m.image or m.video event with its own txnId (<key>-img<N>). Progress
 * is saved after each upload and each event ("t=$event;u1=mxc://...;i1=$event"), so a retry never
 * uploads twice and skips what was sent.
 *
 * An alias (#room:server) is resolved once with GET /_matrix/client/v3/directory/room/{alias}.
 * Errors are {"errcode","error"}: M_LIMIT_EXCEEDED waits for Retry-After or retry_after_ms,
 * M_UNKNOWN_TOKEN / M_MISSING_TOKEN is AUTH, M_FORBIDDEN (not in the room, no permission) and
 * M_TOO_LARGE are PERMANENT, 5xx is RETRY. */
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

#define DEFAULT_TIMEOUT_MS 30000L
#define MAX_TIMEOUT_MS 600000L
#define UPLOAD_TIMEOUT_MS 300000L
/* A whole event (content plus the server's envelope: ids, hashes, signatures) may be at most
 * 65536 bytes; keep the content well below that. */
#define CONTENT_MAX 60000
#define MAX_MEDIA 10
#define MATRIX_TO "https://matrix.to/#/"

struct matrix {
  const struct cp_host *host;
  char *name;
  char *homeserver; /* without a trailing slash */
  char *room;       /* as configured: "!id:server" or "#alias:server" */
  char *room_id;    /* the id: the configured one, or the alias's once resolved; NULL before */
  char *token;
  char *auth; /* "Bearer <token>" */
  const char *msgtype;
  long timeout_ms;
  size_t max_chars; /* 0: only the event size limit */
};

struct send {
  struct matrix *m;
  const struct cp_publish_req *req;
  const struct cp_post *post;
  bool login;      /* a login check, not a publish */
  bool in_publish; /* publish has not returned yet: completion must wait for the loop */
  bool finished;   /* finished inside publish: publish frees s */
  int soon_err;    /* then: cp_cu_complete_soon's error, which publish returns */
  bool text_done;
  size_t media_i; /* the media item being sent (0-based) */
  char key[64];
  char *progress; /* everything saved so far, "k=v;k=v" */
  char first_event[CP_RESULT_ID_MAX];
  /* The media item between its upload and its event. */
  char mxc[512];
  char mimetype[128];
  size_t size;
  char *media_body; /* alt text or file name */
  struct cp_result res;
};

static const char *const known_keys[] = {"homeserver", "room",    "token_file", "token_env",
                                         "msgtype",    "timeout", NULL};

static void matrix_free(void *instance) {
  struct matrix *m = instance;
  if (!m)
    return;
  free(m->name);
  free(m->homeserver);
  free(m->room);
  free(m->room_id);
  if (m->token)
    m->host->secret_free(m->token);
  if (m->auth)
    m->host->secret_free(m->auth);
  free(m);
}

/* ---- small helpers -------------------------------------------------------------------------- */

/* The post text as HTML: escaped, http(s) links as <a href>, line ends as <br>. Returns a
 * malloc'd string or NULL on ENOMEM. */
static char *text_to_html(const char *text) {
  struct cp_cu_buf b = {0};
  const char *p = text;
  size_t ulen = 0;

  cp_cu_buf_add(&b, "", 0);
  while (*p) {
    const char *u = cp_text_find_url(p, &ulen);
    if (!u || !ulen) {
      cp_cu_buf_html(&b, p, strlen(p), false, "<br>");
      break;
    }
    cp_cu_buf_html(&b, p, (size_t)(u - p), false, "<br>");
    cp_cu_buf_str(&b, "<a href=\"");
    cp_cu_buf_html(&b, u, ulen, true, "<br>");
    cp_cu_buf_str(&b, "\">");
    cp_cu_buf_html(&b, u, ulen, false, "<br>");
    cp_cu_buf_str(&b, "</a>");
    p = u + ulen;
  }
  return cp_cu_buf_take(&b);
}

/* s percent-encoded for a URL path segment or query value (everything but A-Z a-z 0-9 -._~).
 * Returns a string to release with curl_free, or NULL. */
static char *escape(const char *s) {
  return curl_easy_escape(NULL, s, 0);
}

/* Adds key=value to the progress and stores it durably. A failed store is logged: a retry would
 * then upload that item again (events are protected by their txnId all the same). */
static void progress_add(struct send *s, const char *key, const char *value) {
  const struct cp_host *host = s->m->host;
  size_t old = s->progress ? strlen(s->progress) : 0;
  size_t n = old + strlen(key) + strlen(value) + 3;
  char *p = realloc(s->progress, n);
  if (!p) {
    host->log(host, CP_LOG_WARN, "post %s: out of memory saving progress", s->post->id);
    return;
  }
  snprintf(p + old, n - old, "%s%s=%s", old ? ";" : "", key, value);
  s->progress = p;
  int err = host->save_progress(s->req, p);
  if (err)
    host->log(host, CP_LOG_WARN, "post %s: cannot save progress (%s): a retry may upload again",
              s->post->id, cp_strerror(err));
}

/* ---- configuration -------------------------------------------------------------------------- */

static int init_fail(struct matrix *m, int err) {
  matrix_free(m);
  return err;
}

static int matrix_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                       void **instance) {
  int line = conf->line, hs_line = conf->line;
  const char *hs = conf->get(conf, "homeserver", &hs_line);
  const char *v;
  bool is_http = false;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  if (!hs || !*hs) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] needs 'homeserver = https://...' (the client-server API "
              "base URL of the account's server)",
              conf->file, conf->line, conf->name);
    return CP_ECONFIG;
  }
  if (!cp_cu_url_ok(hs, &is_http)) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] homeserver: '%s' is not %s", conf->file,
              hs_line, conf->name, hs,
              is_http ? "https (plain http is allowed only to this machine)" : "an https URL");
    return CP_ECONFIG;
  }

  struct matrix *m = calloc(1, sizeof *m);
  if (!m)
    return CP_ENOMEM;
  m->host = host;
  m->timeout_ms = DEFAULT_TIMEOUT_MS;
  m->msgtype = "m.text";
  m->name = strdup(conf->name ? conf->name : "matrix");
  m->homeserver = strdup(hs);
  if (!m->name || !m->homeserver)
    return init_fail(m, CP_ENOMEM);
  size_t hl = strlen(m->homeserver);
  while (hl && m->homeserver[hl - 1] == '/')
    m->homeserver[--hl] = '\0';

  line = conf->line;
  v = conf->get(conf, "room", &line);
  if (!v || !*v) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] needs 'room = !id:server' or 'room = #alias:server'", conf->file,
              conf->line, conf->name);
    return init_fail(m, CP_ECONFIG);
  }
  if ((v[0] != '!' && v[0] != '#') || !v[1] || strpbrk(v, " \t/") ||
      (v[0] == '#' && !strchr(v, ':'))) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] room: '%s' is neither a room id (!abc:example.org) nor an "
              "alias (#name:example.org)",
              conf->file, line, conf->name, v);
    return init_fail(m, CP_ECONFIG);
  }
  m->room = strdup(v);
  if (!m->room || (v[0] == '!' && !(m->room_id = strdup(v))))
    return init_fail(m, CP_ENOMEM);

  line = conf->line;
  v = conf->get(conf, "msgtype", &line);
  if (v) {
    if (!strcmp(v, "text") || !strcmp(v, "m.text")) {
      m->msgtype = "m.text";
    } else if (!strcmp(v, "notice") || !strcmp(v, "m.notice")) {
      m->msgtype = "m.notice";
    } else {
      host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] msgtype: '%s' is not text or notice",
                conf->file, line, conf->name, v);
      return init_fail(m, CP_ECONFIG);
    }
  }
  err = cp_cu_conf_timeout(host, conf, "timeout", 30, MAX_TIMEOUT_MS, &m->timeout_ms);
  if (!err)
    err = cp_cu_conf_count(host, conf, "max_chars", 0, ~0ULL, "a number", &m->max_chars);
  if (err)
    return init_fail(m, err);

  err = cp_cu_conf_secret(host, conf, "token",
                          "'token_file = FILE' or 'token_env = VARIABLE' with the account's "
                          "access token",
                          &m->token);
  if (err)
    return init_fail(m, err);
  size_t al = strlen(m->token) + 8;
  m->auth = malloc(al);
  if (!m->auth)
    return init_fail(m, CP_ENOMEM);
  snprintf(m->auth, al, "Bearer %s", m->token);
  *instance = m;
  return 0;
}

/* ---- validation ----------------------------------------------------------------------------- */

/* The content of the text event, or NULL if text is not valid UTF-8 or on ENOMEM. */
static json_t *text_content(const struct matrix *m, const char *text) {
  char *html = text_to_html(text);
  json_t *c = NULL;
  if (html)
    c = json_pack("{s:s, s:s, s:s, s:s}", "msgtype", m->msgtype, "body", text, "format",
                  "org.matrix.custom.html", "formatted_body", html);
  free(html);
  return c;
}

static const char *const media_ext[] = {".png", ".jpg",  ".jpeg", ".gif", ".webp",
                                        ".mp4", ".webm", ".mov",  NULL};

/* True if the media source (a path or URL, query and fragment ignored) ends in an extension of
 * an image or video type. */
static bool media_ext_ok(const char *src) {
  size_t len = strcspn(src, "?#");
  if (strncmp(src, "https://", 8) && strncmp(src, "http://", 7))
    len = strlen(src);
  for (size_t i = 0; media_ext[i]; i++) {
    size_t el = strlen(media_ext[i]);
    if (len > el && !strncasecmp(src + len - el, media_ext[i], el))
      return true;
  }
  return false;
}

static int matrix_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  struct matrix *m = instance;
  const char *text = post->text ? post->text : "";
  char msg[400];
  int rc = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  if (m->max_chars) {
    size_t n = cp_text_codepoints(text);
    if (n > m->max_chars) {
      snprintf(msg, sizeof msg,
               "%zu characters, channel %s allows %zu (max_chars): shorten the text", n, m->name,
               m->max_chars);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    }
  }
  if (*text) {
    json_t *c = text_content(m, text);
    char *dump = c ? json_dumps(c, JSON_COMPACT) : NULL;
    size_t n = dump ? strlen(dump) : 0;
    if (!dump) {
      diag(arg, true, "the text is not valid UTF-8: save the plan as UTF-8");
      rc = CP_EINVAL;
    } else if (n > CONTENT_MAX) {
      snprintf(msg, sizeof msg,
               "the message is %zu bytes as a Matrix event (text plus its HTML form); a Matrix "
               "event may have at most 65536 bytes, so channel %s allows about %d: shorten the "
               "text",
               n, m->name, CONTENT_MAX);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    }
    free(dump);
    json_decref(c);
  }
  if (post->n_media > MAX_MEDIA) {
    snprintf(msg, sizeof msg, "%zu media items; channel %s sends at most %d: remove some",
             post->n_media, m->name, MAX_MEDIA);
    diag(arg, true, msg);
    rc = CP_EINVAL;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    if (!media_ext_ok(post->media[i].src)) {
      snprintf(msg, sizeof msg,
               "media %zu (%.200s): Matrix gets images and videos; use a .png, .jpg, .gif, "
               ".webp, .mp4, .webm or .mov file",
               i + 1, post->media[i].src);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    }
  }
  return rc;
}

/* ---- errors --------------------------------------------------------------------------------- */

/* The errcode of a Matrix error body into out ("" if none). */
static void errcode_of(const struct cp_http_resp *resp, char *out, size_t size, json_t **root_out) {
  out[0] = '\0';
  json_t *root = resp->body_len ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  json_t *ec = json_object_get(root, "errcode");
  if (json_is_string(ec))
    snprintf(out, size, "%s", json_string_value(ec));
  if (root_out)
    *root_out = root;
  else
    json_decref(root);
}

static enum cp_outcome matrix_classify(void *instance, const struct cp_http_resp *resp,
                                       enum cp_outcome dflt) {
  char ec[64];
  if (!resp->status || (resp->status >= 200 && resp->status < 300))
    return dflt;
  errcode_of(resp, ec, sizeof ec, NULL);
  if (!strcmp(ec, "M_LIMIT_EXCEEDED"))
    return CP_OUTCOME_RATE_LIMITED;
  if (!strcmp(ec, "M_UNKNOWN_TOKEN") || !strcmp(ec, "M_MISSING_TOKEN") ||
      !strcmp(ec, "M_USER_DEACTIVATED") || !strcmp(ec, "M_USER_LOCKED"))
    return CP_OUTCOME_AUTH;
  /* Not in the room or no power to post there: the setup needs fixing, the token is fine. */
  if (!strcmp(ec, "M_FORBIDDEN") || !strcmp(ec, "M_TOO_LARGE") || !strcmp(ec, "M_NOT_FOUND") ||
      !strcmp(ec, "M_BAD_JSON") || !strcmp(ec, "M_NOT_JSON") || !strcmp(ec, "M_INVALID_PARAM"))
    return CP_OUTCOME_PERMANENT;
  return dflt;
}

/* Fills s->res from a failed response of step (for people: "sending the text"), with the
 * errcode, the server's message and a hint. */
static void describe_failure(struct send *s, const struct cp_http_resp *resp, const char *step) {
  struct matrix *m = s->m;
  struct cp_result *res = &s->res;
  char ec[64], detail[CP_RESULT_MESSAGE_MAX] = "";
  json_t *root = NULL;

  m->host->http_result(s->req, resp, res);
  if (!resp->status) {
    cp_cu_result_msg(res, "%s: %s", step, res->message);
    return;
  }
  errcode_of(resp, ec, sizeof ec, &root);
  json_t *err = json_object_get(root, "error");
  if (json_is_string(err))
    cp_connector_copy_text(detail, sizeof detail, json_string_value(err), json_string_length(err));
  if (res->outcome == CP_OUTCOME_RATE_LIMITED && !res->retry_at_ms) {
    json_t *ms = json_object_get(root, "retry_after_ms");
    if (json_is_integer(ms) && json_integer_value(ms) >= 0)
      res->retry_at_ms = m->host->wall_ms(m->host) + (int64_t)json_integer_value(ms);
  }
  const char *hint = "";
  if (!strcmp(ec, "M_FORBIDDEN"))
    hint = " (is the account a member of the room, allowed to post there?)";
  else if (!strcmp(ec, "M_UNKNOWN_TOKEN") && json_is_true(json_object_get(root, "soft_logout")))
    hint = " (the session was soft-logged-out: log in again and store the new token)";
  else if (res->outcome == CP_OUTCOME_AUTH)
    hint = " (log in again and store the new access token)";
  json_decref(root);

  cp_cu_result_msg(res, "%s in %s: HTTP %ld%s%s%s%s%s", step, m->room, resp->status,
                   ec[0] ? " " : "", ec, detail[0] ? ": " : "", detail, hint);
}

/* ---- the publish chain ---------------------------------------------------------------------- */

static void advance(struct send *s);

static void send_free(struct send *s) {
  free(s->progress);
  free(s->media_body);
  free(s);
}

/* Completes with s->res and frees s; from inside publish, on the next loop turn instead. */
static void finish(struct send *s) {
  const struct cp_publish_req *req = s->req;
  const struct cp_host *host = s->m->host;

  if (s->login)
    host->log(host, s->res.outcome == CP_OUTCOME_OK ? CP_LOG_INFO : CP_LOG_WARN,
              "login check: %s %s", cp_outcome_name(s->res.outcome),
              s->res.outcome == CP_OUTCOME_OK ? s->res.remote_id : s->res.message);
  else if (s->res.outcome == CP_OUTCOME_OK)
    host->log(host, CP_LOG_INFO, "post %s sent: %s", s->post->id, s->res.remote_id);
  else
    host->log(host, CP_LOG_WARN, "post %s not sent (%s): %s", s->post->id,
              cp_outcome_name(s->res.outcome), s->res.message);
  if (s->in_publish) {
    /* publish frees s and returns soon_err (then nothing completes). */
    s->finished = true;
    s->soon_err = cp_cu_complete_soon(req, &s->res);
    return;
  }
  struct cp_result res = s->res;
  send_free(s);
  req->host->complete(req, &res);
}

static void fail_local(struct send *s, enum cp_outcome outcome, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail_local(struct send *s, enum cp_outcome outcome, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cp_cu_result_vset(&s->res, outcome, err, fmt, ap);
  va_end(ap);
  finish(s);
}

/* Starts a request of the chain; on a refusal, fails the publish. */
static void request(struct send *s, const struct cp_http_req *hr, cp_http_cb cb) {
  int err = s->m->host->http_request(s->m->host, hr, cb, s);
  if (err)
    fail_local(s, CP_OUTCOME_RETRY, err, "cannot start the request: %s", cp_strerror(err));
}

static void set_remote(struct send *s) {
  struct matrix *m = s->m;
  struct cp_result *res = &s->res;
  char *room = escape(m->room);
  char *ev = escape(s->first_event);
  const char *colon = m->room[0] == '!' ? strchr(m->room, ':') : NULL;
  char *via = colon ? escape(colon + 1) : NULL;

  snprintf(res->remote_id, sizeof res->remote_id, "%s", s->first_event);
  if (room && ev)
    snprintf(res->remote_url, sizeof res->remote_url, MATRIX_TO "%s/%s%s%s", room, ev,
             via ? "?via=" : "", via ? via : "");
  curl_free(room);
  curl_free(ev);
  curl_free(via);
}

/* The event id of an answer to a send, copied into out; false if there is none. */
static bool event_id_of(const struct cp_http_resp *resp, char *out, size_t size) {
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *id = json_object_get(root, "event_id");
  bool ok = json_is_string(id) && json_string_length(id) > 0 && json_string_length(id) < size &&
            !strchr(json_string_value(id), ';');
  if (ok)
    snprintf(out, size, "%s", json_string_value(id));
  json_decref(root);
  return ok;
}

/* PUTs content as an m.room.message event with txnId. */
static void put_event(struct send *s, json_t *content, const char *txn, cp_http_cb cb) {
  struct matrix *m = s->m;
  char *body = content ? json_dumps(content, JSON_COMPACT) : NULL;
  char *room = escape(m->room_id);
  char *tid = escape(txn);
  char *url = NULL;

  json_decref(content);
  if (body && room && tid &&
      asprintf(&url, "%s/_matrix/client/v3/rooms/%s/send/m.room.message/%s", m->homeserver, room,
               tid) < 0)
    url = NULL;
  curl_free(room);
  curl_free(tid);
  if (!url) {
    free(body);
    fail_local(s, CP_OUTCOME_PERMANENT, CP_EUTF8,
               "cannot build the event (text or alt text not valid UTF-8?)");
    return;
  }
  struct cp_http_header hdrs[] = {{"Authorization", m->auth},
                                  {"Content-Type", "application/json"},
                                  {"Accept", "application/json"}};
  struct cp_http_req hr = {
      .method = "PUT",
      .url = url,
      .headers = hdrs,
      .n_headers = 3,
      .body = body,
      .body_len = strlen(body),
      .timeout_ms = m->timeout_ms,
      .connect_timeout_ms = m->timeout_ms < 10000 ? m->timeout_ms : 10000,
      .idempotent = true, /* the txnId makes a resend return the first event */
  };
  request(s, &hr, cb);
  free(url);
  free(body);
}

static void on_text(const struct cp_http_resp *resp, void *data) {
  struct send *s = data;
  struct cp_result res;

  s->m->host->http_result(s->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    describe_failure(s, resp, "sending the text");
    finish(s);
    return;
  }
  if (!event_id_of(resp, s->first_event, sizeof s->first_event)) {
    /* Sent, but the answer is unreadable: a resend with the same txnId is harmless. */
    fail_local(s, CP_OUTCOME_RETRY, 0, "sending the text in %s: HTTP %ld without an event_id",
               s->m->room, resp->status);
    return;
  }
  progress_add(s, "t", s->first_event);
  s->text_done = true;
  advance(s);
}

static void on_image(const struct cp_http_resp *resp, void *data) {
  struct send *s = data;
  struct cp_result res;
  char ev[CP_RESULT_ID_MAX], key[32], step[48];

  snprintf(step, sizeof step, "sending media %zu", s->media_i + 1);
  s->m->host->http_result(s->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    describe_failure(s, resp, step);
    finish(s);
    return;
  }
  if (!event_id_of(resp, ev, sizeof ev)) {
    fail_local(s, CP_OUTCOME_RETRY, 0, "%s in %s: HTTP %ld without an event_id", step, s->m->room,
               resp->status);
    return;
  }
  snprintf(key, sizeof key, "i%zu", s->media_i + 1);
  progress_add(s, key, ev);
  if (!s->first_event[0])
    snprintf(s->first_event, sizeof s->first_event, "%s", ev);
  s->mxc[0] = '\0';
  s->media_i++;
  advance(s);
}

/* Sends the event of the uploaded media item s->media_i (s->mxc). */
static void send_media_event(struct send *s) {
  char txn[96];
  const char *mt = strncmp(s->mimetype, "video/", 6) ? "m.image" : "m.video";
  json_t *c = json_pack("{s:s, s:s, s:s, s:{s:s, s:I}}", "msgtype", mt, "body",
                        s->media_body ? s->media_body : "media", "url", s->mxc, "info", "mimetype",
                        s->mimetype, "size", (json_int_t)s->size);
  snprintf(txn, sizeof txn, "%s-img%zu", s->key, s->media_i + 1);
  put_event(s, c, txn, on_image);
}

static void on_upload(const struct cp_http_resp *resp, void *data) {
  struct send *s = data;
  struct cp_result res;
  char key[32], step[48];

  snprintf(step, sizeof step, "uploading media %zu", s->media_i + 1);
  s->m->host->http_result(s->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    describe_failure(s, resp, step);
    /* An upload nobody saw: doing it again cannot duplicate the post. */
    if (s->res.outcome == CP_OUTCOME_UNKNOWN)
      s->res.outcome = CP_OUTCOME_RETRY;
    finish(s);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *uri = json_object_get(root, "content_uri");
  bool ok = json_is_string(uri) && !strncmp(json_string_value(uri), "mxc://", 6) &&
            json_string_length(uri) < sizeof s->mxc && !strchr(json_string_value(uri), ';');
  if (ok)
    snprintf(s->mxc, sizeof s->mxc, "%s", json_string_value(uri));
  json_decref(root);
  if (!ok) {
    fail_local(s, CP_OUTCOME_RETRY, 0, "%s: HTTP %ld without an mxc:// content_uri", step,
               resp->status);
    return;
  }
  /* Saved with the type and size, so that a retry sends the same event without the bytes. */
  char val[sizeof s->mxc + sizeof s->mimetype + 32];
  snprintf(val, sizeof val, "%s %s %zu", s->mxc, s->mimetype, s->size);
  snprintf(key, sizeof key, "u%zu", s->media_i + 1);
  progress_add(s, key, val);
  send_media_event(s);
}

static void on_media(const struct cp_media_blob *blob, void *data) {
  struct send *s = data;
  struct matrix *m = s->m;

  if (blob->err) {
    /* A missing or wrong file stays so; a fetch that failed on the network may work later. */
    bool cp_code = blob->err > CP__EFIRST && blob->err < CP__ELAST;
    bool transient = blob->err == CP_ENOMEM || (!cp_code && blob->err != -ENOENT &&
                                                blob->err != -EACCES && blob->err != -EISDIR);
    fail_local(s, transient ? CP_OUTCOME_RETRY : CP_OUTCOME_PERMANENT, blob->err,
               "media %zu (%s): %s", s->media_i + 1, s->post->media[s->media_i].src,
               blob->errmsg[0] ? blob->errmsg : cp_strerror(blob->err));
    return;
  }
  free(s->media_body);
  const char *body = blob->alt && *blob->alt ? blob->alt : blob->filename;
  s->media_body = strdup(body && *body ? body : "media");
  snprintf(s->mimetype, sizeof s->mimetype, "%s",
           blob->content_type ? blob->content_type : "application/octet-stream");
  s->size = blob->len;

  char *fname = escape(blob->filename && *blob->filename ? blob->filename : "media");
  char *url = NULL;
  if (!s->media_body || !fname ||
      asprintf(&url, "%s/_matrix/media/v3/upload?filename=%s", m->homeserver, fname) < 0)
    url = NULL;
  curl_free(fname);
  if (!url) {
    fail_local(s, CP_OUTCOME_RETRY, CP_ENOMEM, "media %zu: out of memory", s->media_i + 1);
    return;
  }
  struct cp_http_header hdrs[] = {
      {"Authorization", m->auth}, {"Content-Type", s->mimetype}, {"Accept", "application/json"}};
  struct cp_http_req hr = {
      .method = "POST",
      .url = url,
      .headers = hdrs,
      .n_headers = 3,
      .body = (const char *)blob->data,
      .body_len = blob->len,
      .timeout_ms = UPLOAD_TIMEOUT_MS,
      .connect_timeout_ms = m->timeout_ms < 10000 ? m->timeout_ms : 10000,
  };
  request(s, &hr, on_upload);
  free(url);
}

/* Does the next step that is not in the progress yet, or completes. */
static void advance(struct send *s) {
  const struct cp_post *post = s->post;
  const char *text = post->text ? post->text : "";
  const struct cp_host *host = s->m->host;
  char key[32], val[700];

  if (!s->text_done && *text) {
    if (cp_cu_progress_get(s->progress, "t", s->first_event, sizeof s->first_event)) {
      s->text_done = true;
    } else {
      json_t *c = text_content(s->m, text);
      if (!c) {
        fail_local(s, CP_OUTCOME_PERMANENT, CP_EUTF8, "the text is not valid UTF-8");
        return;
      }
      put_event(s, c, s->key, on_text);
      return;
    }
  }
  s->text_done = true;
  while (s->media_i < post->n_media) {
    size_t n = s->media_i + 1;
    snprintf(key, sizeof key, "i%zu", n);
    if (cp_cu_progress_get(s->progress, key, val, sizeof s->first_event)) {
      if (!s->first_event[0])
        snprintf(s->first_event, sizeof s->first_event, "%.*s", (int)sizeof s->first_event - 1,
                 val);
      s->media_i++;
      continue;
    }
    snprintf(key, sizeof key, "u%zu", n);
    char mxc[sizeof s->mxc], mime[sizeof s->mimetype];
    size_t size = 0;
    if (cp_cu_progress_get(s->progress, key, val, sizeof val) &&
        sscanf(val, "%511s %127s %zu", mxc, mime, &size) == 3) {
      /* Uploaded by an earlier attempt: send its event without uploading again. */
      const struct cp_media *md = &post->media[s->media_i];
      const char *slash = strrchr(md->src, '/');
      free(s->media_body);
      s->media_body = strdup(md->alt && *md->alt ? md->alt : slash ? slash + 1 : md->src);
      snprintf(s->mxc, sizeof s->mxc, "%s", mxc);
      snprintf(s->mimetype, sizeof s->mimetype, "%s", mime);
      s->size = size;
      send_media_event(s);
      return;
    }
    int err = host->media_load(s->req, &post->media[s->media_i], on_media, s);
    if (err)
      fail_local(s, CP_OUTCOME_PERMANENT, err, "media %zu (%s): %s", n, post->media[s->media_i].src,
                 cp_strerror(err));
    return;
  }
  memset(&s->res, 0, sizeof s->res);
  s->res.outcome = CP_OUTCOME_OK;
  s->res.http_status = 200;
  set_remote(s);
  finish(s);
}

static void on_alias(const struct cp_http_resp *resp, void *data) {
  struct send *s = data;
  struct matrix *m = s->m;
  struct cp_result res;

  m->host->http_result(s->req, resp, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    describe_failure(s, resp, "resolving the alias");
    /* A lookup changes nothing: trying again is always safe. */
    if (s->res.outcome == CP_OUTCOME_UNKNOWN)
      s->res.outcome = CP_OUTCOME_RETRY;
    finish(s);
    return;
  }
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *id = json_object_get(root, "room_id");
  if (json_is_string(id) && json_string_value(id)[0] == '!' && !m->room_id) {
    m->room_id = strdup(json_string_value(id));
    if (m->room_id)
      m->host->log(m->host, CP_LOG_INFO, "room %s is %s", m->room, m->room_id);
  }
  json_decref(root);
  if (!m->room_id) {
    fail_local(s, CP_OUTCOME_RETRY, 0, "resolving the alias %s: HTTP %ld without a room_id",
               m->room, resp->status);
    return;
  }
  advance(s);
}

static void start(struct send *s) {
  struct matrix *m = s->m;
  if (m->room_id) {
    advance(s);
    return;
  }
  char *alias = escape(m->room);
  char *url = NULL;
  if (!alias || asprintf(&url, "%s/_matrix/client/v3/directory/room/%s", m->homeserver, alias) < 0)
    url = NULL;
  curl_free(alias);
  if (!url) {
    fail_local(s, CP_OUTCOME_RETRY, CP_ENOMEM, "out of memory");
    return;
  }
  struct cp_http_header hdrs[] = {{"Authorization", m->auth}, {"Accept", "application/json"}};
  struct cp_http_req hr = {
      .method = "GET",
      .url = url,
      .headers = hdrs,
      .n_headers = 2,
      .timeout_ms = m->timeout_ms,
      .connect_timeout_ms = m->timeout_ms < 10000 ? m->timeout_ms : 10000,
  };
  request(s, &hr, on_alias);
  free(url);
}

static int matrix_publish(void *instance, const struct cp_post *post,
                          const struct cp_publish_req *req) {
  struct matrix *m = instance;
  struct send *s = calloc(1, sizeof *s);
  if (!s)
    return CP_ENOMEM;
  s->m = m;
  s->req = req;
  s->post = post;
  snprintf(s->key, sizeof s->key, "%s", req->idempotency_key);
  if (!s->key[0] && m->host->idempotency_key(m->host, post, s->key, sizeof s->key)) {
    free(s);
    return CP_ELIMIT;
  }
  if (req->progress && *req->progress && !(s->progress = strdup(req->progress))) {
    free(s);
    return CP_ENOMEM;
  }
  s->in_publish = true;
  start(s); /* may finish s: then s is freed here */
  s->in_publish = false;
  if (s->finished) {
    int err = s->soon_err;
    send_free(s);
    return err;
  }
  return 0;
}

/* ---- login check ---------------------------------------------------------------------------- */

static void on_whoami(const struct cp_http_resp *resp, void *data) {
  struct send *s = data;
  struct matrix *m = s->m;

  m->host->http_result(s->req, resp, &s->res);
  if (s->res.outcome != CP_OUTCOME_OK) {
    describe_failure(s, resp, "checking the token");
  } else {
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *uid = json_object_get(root, "user_id");
    if (json_is_string(uid))
      cp_connector_copy_text(s->res.remote_id, sizeof s->res.remote_id, json_string_value(uid),
                             json_string_length(uid));
    json_decref(root);
  }
  finish(s);
}

static int matrix_login_check(void *instance, const struct cp_publish_req *req) {
  struct matrix *m = instance;
  char *url = NULL;
  struct send *s = calloc(1, sizeof *s);
  if (!s)
    return CP_ENOMEM;
  s->m = m;
  s->req = req;
  s->login = true;
  if (asprintf(&url, "%s/_matrix/client/v3/account/whoami", m->homeserver) < 0) {
    free(s);
    return CP_ENOMEM;
  }
  struct cp_http_header hdrs[] = {{"Authorization", m->auth}, {"Accept", "application/json"}};
  struct cp_http_req hr = {
      .method = "GET",
      .url = url,
      .headers = hdrs,
      .n_headers = 2,
      .timeout_ms = m->timeout_ms,
      .connect_timeout_ms = m->timeout_ms < 10000 ? m->timeout_ms : 10000,
  };
  int err = m->host->http_request(m->host, &hr, on_whoami, s);
  free(url);
  if (err)
    free(s);
  return err;
}

const struct cp_connector cp_connector_matrix = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "matrix",
    .description = "Sends each post as a message (HTML formatted, with images) to a Matrix room",
    /* Every event carries a txnId derived from the post: a resend cannot post twice. */
    .caps = CP_CAP_IDEMPOTENT | CP_CAP_MEDIA,
    .init = matrix_init,
    .validate = matrix_validate,
    .publish = matrix_publish,
    .classify = matrix_classify,
    .login_check = matrix_login_check,
    .free = matrix_free,
};
