/* The telegram connector: posts to a chat, group or channel through the Telegram Bot API.
 *
 *   [channel news]
 *   type = telegram
 *   chat_id = @mychannel           ; or a numeric id such as -1001234567890
 *   token_file = telegram.token    ; or token_env = CALPOST_TELEGRAM_TOKEN (from @BotFather)
 *   api_base = https://api.telegram.org   ; default
 *   link_preview = yes             ; no: link_preview_options.is_disabled
 *
 * Requests (the token is part of the path, so URLs are never logged):
 *   text only     POST {api_base}/bot<token>/sendMessage  JSON {chat_id, text, ...}
 *   one image     POST .../sendPhoto (or sendVideo, sendAnimation for a GIF), multipart with the
 *                 file and the text as caption
 *   2-10 media    POST .../sendMediaGroup, multipart: media = JSON [{type, media: "attach://fileN",
 *                 caption on the first}], fileN = the bytes
 * Text is sent as plain text (no parse_mode), so nothing needs escaping, with explicit entities
 * (entities / caption_entities): a "url" for each link where cp_text_find_url finds it and a
 * "hashtag" for each #tag, offsets and lengths in UTF-16 code units, so links are the same on every
 * platform instead of what Telegram's own detection makes of them.
 * A text over the 1024-character caption limit follows the media as a message of its own, and a
 * thread (thread = yes) over 4096 characters goes as several messages. Telegram has no
 * idempotency keys: every message sent is saved with host->save_progress ("m=<id>;1=<id>;..."),
 * and the next attempt continues after it. Lengths count UTF-16 code units, as Telegram does. */
#include <errno.h>
#include <math.h>
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

#define DEFAULT_API_BASE "https://api.telegram.org"
#define TEXT_MAX 4096
#define CAPTION_MAX 1024
#define MEDIA_MAX 10

struct telegram {
  const struct cp_host *host;
  char *name;
  char *token;
  char *api_base; /* without a trailing slash */
  char *chat;     /* as configured: "@channel" or "-1001234567890" */
  bool chat_numeric;
  json_int_t chat_num;
  bool link_preview;
  size_t max_chars; /* 0: TEXT_MAX */
};

/* One publish or login check in flight. */
struct job {
  struct telegram *t;
  const struct cp_post *post;
  const struct cp_publish_req *req;
  bool login;
  int login_step; /* 0: getMe, 1: getChat */
  bool silent;
  char **parts; /* the text messages to send (empty: media only) */
  size_t n_parts;
  const char *caption; /* the text as the media's caption, or NULL */
  struct cp_cu_media *media;
  size_t n_media, n_loaded;
  bool media_done;
  bool sending_media;
  size_t next; /* index of the next text part */
  char first_id[32];
  char username[64]; /* the chat's public username, from an answer */
  char progress[1024];
};

static const char *const known_keys[] = {"chat_id",  "token_file",   "token_env",
                                         "api_base", "link_preview", NULL};
static const char *const post_options[] = {"silent", NULL};

/* ---- small helpers ------------------------------------------------------------------------ */

/* ---- entities ----------------------------------------------------------------------------- */

/* UTF-16 code units of s[0..n) (valid UTF-8): one per code point, two above U+FFFF. */
static size_t utf16_units(const char *s, size_t n) {
  size_t u = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c & 0xC0) != 0x80)
      u += c >= 0xF0 ? 2 : 1;
  }
  return u;
}

static bool is_letter_cp(utf8proc_int32_t cp) {
  utf8proc_category_t c = utf8proc_category(cp);
  return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}

/* Letters, combining marks (Hindi, Thai), decimal digits and '_'. */
static bool is_tag_cp(utf8proc_int32_t cp) {
  utf8proc_category_t c = utf8proc_category(cp);
  return cp == '_' || (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_ND);
}

/* The length in bytes of a hashtag at p ('#' and at least one letter among letters, marks, digits
 * and '_'), or 0. "#1" is a number, not a tag, as Telegram sees it too. */
static size_t hashtag_at(const char *p) {
  const char *q = p + 1;
  bool letter = false;
  utf8proc_int32_t cp;
  while (*q) {
    size_t n = cp_cu_utf8_next(q, &cp);
    if (!is_tag_cp(cp))
      break;
    letter = letter || is_letter_cp(cp);
    q += n;
  }
  return letter ? (size_t)(q - p) : 0;
}

static int add_entity(json_t *arr, const char *type, const char *text, const char *at, size_t len) {
  json_t *e = json_pack("{s:s, s:I, s:I}", "type", type, "offset",
                        (json_int_t)utf16_units(text, (size_t)(at - text)), "length",
                        (json_int_t)utf16_units(at, len));
  return e ? json_array_append_new(arr, e) : -1;
}

/* The MessageEntity array for text (valid UTF-8), in order: a "url" wherever cp_text_find_url
 * finds a link, a "hashtag" for a '#' at the start or after white space followed by a tag.
 * Returns a new array (empty when there is nothing to mark), or NULL on ENOMEM. */
static json_t *entities_of(const char *text) {
  json_t *arr = json_array();
  size_t ulen = 0;
  const char *url = cp_text_find_url(text, &ulen);
  bool after_space = true; /* the start of the text counts as white space */
  const char *p = text;

  while (arr && *p) {
    if (p == url) {
      if (add_entity(arr, "url", text, p, ulen))
        goto nomem;
      p += ulen;
      after_space = false;
      url = cp_text_find_url(p, &ulen);
      continue;
    }
    size_t tag = *p == '#' && after_space ? hashtag_at(p) : 0;
    if (tag && (!url || p + tag <= url)) {
      if (add_entity(arr, "hashtag", text, p, tag))
        goto nomem;
      p += tag;
      after_space = false;
      continue;
    }
    utf8proc_int32_t cp;
    p += cp_cu_utf8_next(p, &cp);
    after_space = cp_cu_is_space(cp);
  }
  return arr;
nomem:
  json_decref(arr);
  return NULL;
}

static const char *const photo_exts[] = {"jpg", "jpeg", "png", "webp", "gif", NULL};
static const char *const video_exts[] = {"mp4", "m4v", NULL};

/* ---- init / free -------------------------------------------------------------------------- */

static void telegram_free(void *instance) {
  struct telegram *t = instance;
  if (!t)
    return;
  free(t->name);
  if (t->token)
    t->host->secret_free(t->token);
  free(t->api_base);
  free(t->chat);
  free(t);
}

static bool chat_id_ok(const char *s, bool *numeric, json_int_t *num) {
  *numeric = false;
  if (s[0] == '@') {
    size_t n = strlen(s + 1);
    if (n < 4 || n > 32)
      return false;
    for (const char *p = s + 1; *p; p++)
      if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '_'))
        return false;
    return true;
  }
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v == 0)
    return false;
  *numeric = true;
  *num = (json_int_t)v;
  return true;
}

static int telegram_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                         void **instance) {
  int line = conf->line;
  const char *chat = conf->get(conf, "chat_id", &line);
  const char *v;
  bool numeric = false;
  json_int_t num = 0;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  if (!chat || !*chat) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] needs 'chat_id = @channelname' (or a numeric chat id such as "
              "-1001234567890)",
              conf->file, conf->line, conf->name);
    return CP_ECONFIG;
  }
  if (!chat_id_ok(chat, &numeric, &num)) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] chat_id: '%s' is neither @username (5-32 letters, digits, _) "
              "nor a numeric chat id such as -1001234567890",
              conf->file, line, conf->name, chat);
    return CP_ECONFIG;
  }

  struct telegram *t = calloc(1, sizeof *t);
  if (!t)
    return CP_ENOMEM;
  t->host = host;
  t->link_preview = true;
  t->chat_numeric = numeric;
  t->chat_num = num;
  t->name = strdup(conf->name ? conf->name : "telegram");
  t->chat = strdup(chat);
  line = conf->line;
  v = conf->get(conf, "api_base", &line);
  t->api_base = strdup(v && *v ? v : DEFAULT_API_BASE);
  if (!t->name || !t->chat || !t->api_base) {
    telegram_free(t);
    return CP_ENOMEM;
  }
  size_t bl = strlen(t->api_base);
  while (bl > 0 && t->api_base[bl - 1] == '/')
    t->api_base[--bl] = '\0';
  if (!cp_cu_url_ok(t->api_base, NULL)) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] api_base: '%s' is not an https URL (plain http is allowed only "
              "to localhost)",
              conf->file, line, conf->name, t->api_base);
    telegram_free(t);
    return CP_ECONFIG;
  }
  int preview = t->link_preview;
  char what[64];
  snprintf(what, sizeof what, "a number from 1 to %d (Telegram's limit)", TEXT_MAX);
  err = cp_cu_conf_bool(host, conf, "link_preview", &preview);
  if (!err)
    err = cp_cu_conf_count(host, conf, "max_chars", 1, TEXT_MAX, what, &t->max_chars);
  if (err) {
    telegram_free(t);
    return err;
  }
  t->link_preview = preview;
  err = cp_cu_conf_secret(host, conf, "token",
                          "the bot token: 'token_file = FILE' or 'token_env = VARIABLE' (the "
                          "token from @BotFather)",
                          &t->token);
  if (err) {
    telegram_free(t);
    return err;
  }
  if (strchr(t->token, '/') || strchr(t->token, '?') || strchr(t->token, '#') ||
      strchr(t->token, ' ')) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] the bot token contains '/', '?', '#' or a space: it should "
              "look like 123456:ABC-DEF...",
              conf->file, conf->line, conf->name);
    telegram_free(t);
    return CP_ECONFIG;
  }
  *instance = t;
  return 0;
}

/* ---- validate ----------------------------------------------------------------------------- */

static int telegram_validate(void *instance, const struct cp_post *post, cp_diag_cb diag,
                             void *arg) {
  struct telegram *t = instance;
  const char *text = post->text ? post->text : "";
  size_t limit = t->max_chars ? t->max_chars : TEXT_MAX;
  size_t n = cp_text_utf16_len(text);
  char msg[320], ext[16];
  int bad = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  if (n > limit && !post->thread) {
    snprintf(msg, sizeof msg,
             "%zu characters (UTF-16 code units, as Telegram counts them: most emoji count 2), "
             "channel %s allows %zu: shorten the text or set thread = yes",
             n, t->name, limit);
    diag(arg, true, msg);
    bad = 1;
  }
  if (post->n_media > MEDIA_MAX) {
    snprintf(msg, sizeof msg, "%zu media, Telegram allows %d in one album: remove %zu",
             post->n_media, MEDIA_MAX, post->n_media - MEDIA_MAX);
    diag(arg, true, msg);
    bad = 1;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    cp_cu_media_ext(post->media[i].src, ext, sizeof ext, true);
    if (*ext && !cp_cu_in_list(ext, photo_exts) && !cp_cu_in_list(ext, video_exts)) {
      snprintf(msg, sizeof msg,
               "media '%.120s': Telegram takes photos (.jpg, .png, .webp, .gif) and .mp4 videos",
               post->media[i].src);
      diag(arg, true, msg);
      bad = 1;
    } else if (!strcmp(ext, "gif") && post->n_media > 1) {
      snprintf(msg, sizeof msg,
               "media '%.120s': a GIF in an album of several media shows as a still image; post "
               "it alone to keep it animated",
               post->media[i].src);
      diag(arg, false, msg);
    }
  }
  if (post->n_media > 0 && n > CAPTION_MAX && !bad) {
    snprintf(msg, sizeof msg,
             "%zu characters do not fit a media caption (Telegram allows %d): the media go "
             "first, the text follows as a message of its own",
             n, CAPTION_MAX);
    diag(arg, false, msg);
  }
  if (!cp_cu_option_bool_ok(post, "silent", diag, arg))
    bad = 1;
  return bad ? CP_EINVAL : 0;
}

/* ---- the job ------------------------------------------------------------------------------ */

static void job_free(struct job *j) {
  if (!j)
    return;
  if (j->parts)
    cp_text_split_free(j->parts, j->n_parts);
  for (size_t i = 0; i < j->n_loaded; i++)
    cp_cu_media_clear(&j->media[i]);
  free(j->media);
  free(j);
}

static void remote_url(const struct job *j, char *out, size_t size) {
  const struct telegram *t = j->t;
  out[0] = '\0';
  if (!j->first_id[0] || !strcmp(j->first_id, "?"))
    return;
  if (j->username[0])
    snprintf(out, size, "https://t.me/%s/%s", j->username, j->first_id);
  else if (t->chat[0] == '@')
    snprintf(out, size, "https://t.me/%s/%s", t->chat + 1, j->first_id);
  else if (!strncmp(t->chat, "-100", 4)) /* a private channel or supergroup: members only */
    snprintf(out, size, "https://t.me/c/%s/%s", t->chat + 4, j->first_id);
}

/* Completes the job with res (copied) and frees it. */
static void finish(struct job *j, struct cp_result *res) {
  const struct cp_publish_req *req = j->req;
  struct telegram *t = j->t;

  if (j->login && res->outcome == CP_OUTCOME_PERMANENT)
    res->outcome = CP_OUTCOME_AUTH; /* a login check reports OK or AUTH for setup problems */
  if (res->outcome == CP_OUTCOME_OK && !j->login) {
    snprintf(res->remote_id, sizeof res->remote_id, "%s", j->first_id);
    remote_url(j, res->remote_url, sizeof res->remote_url);
  }
  cp_cu_scrub(res->message, t->token);
  /* The host reports a login check's outcome itself. */
  if (!j->login && res->outcome == CP_OUTCOME_OK)
    t->host->log(t->host, CP_LOG_INFO, "post %s sent to %s: message %s", j->post->id, t->chat,
                 res->remote_id);
  else if (!j->login)
    t->host->log(t->host, CP_LOG_WARN, "post %s not sent (%s): %s", j->post->id,
                 cp_outcome_name(res->outcome), res->message);
  job_free(j);
  req->host->complete(req, res);
}

static void fail(struct job *j, enum cp_outcome o, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(struct job *j, enum cp_outcome o, int err, const char *fmt, ...) {
  struct cp_result res;
  va_list ap;
  va_start(ap, fmt);
  cp_cu_result_vset(&res, o, err, fmt, ap);
  va_end(ap);
  finish(j, &res);
}

/* {api_base}/bot<token>/<method>: a secret, wiped by the caller with url_free. */
static char *method_url(const struct telegram *t, const char *method) {
  size_t n = strlen(t->api_base) + strlen(t->token) + strlen(method) + 6;
  char *u = malloc(n);
  if (u)
    snprintf(u, n, "%s/bot%s/%s", t->api_base, t->token, method);
  return u;
}

static void url_free(char *u) {
  if (u) {
    explicit_bzero(u, strlen(u));
    free(u);
  }
}

static json_t *chat_json(const struct telegram *t) {
  return t->chat_numeric ? json_integer(t->chat_num) : json_string(t->chat);
}

static void on_response(const struct cp_http_resp *resp, void *data);

/* Sends method with a JSON body (or a GET without one). Returns 0 or a negative CP_E*. */
static int send_json(struct job *j, const char *method, json_t *body) {
  const struct telegram *t = j->t;
  char *text = NULL;
  struct cp_http_header hdrs[] = {{"Content-Type", "application/json"},
                                  {"Accept", "application/json"}};
  if (body) {
    text = json_dumps(body, JSON_COMPACT);
    if (!text)
      return CP_ENOMEM;
  }
  char *url = method_url(t, method);
  if (!url) {
    free(text);
    return CP_ENOMEM;
  }
  struct cp_http_req hr = {
      .method = body ? "POST" : "GET",
      .url = url,
      .headers = body ? hdrs : hdrs + 1,
      .n_headers = body ? 2 : 1,
      .body = text,
      .body_len = text ? strlen(text) : 0,
  };
  int err = t->host->http_request(t->host, &hr, on_response, j);
  url_free(url);
  free(text);
  return err;
}

static int send_multipart(struct job *j, const char *method, const struct cp_http_part *parts,
                          size_t n) {
  const struct telegram *t = j->t;
  struct cp_http_header hdrs[] = {{"Accept", "application/json"}};
  char *url = method_url(t, method);
  if (!url)
    return CP_ENOMEM;
  struct cp_http_req hr = {
      .method = "POST",
      .url = url,
      .headers = hdrs,
      .n_headers = 1,
      .parts = parts,
      .n_parts = n,
      .timeout_ms = 120000, /* uploads take longer than a message */
  };
  int err = t->host->http_request(t->host, &hr, on_response, j);
  url_free(url);
  return err;
}

static int send_text(struct job *j) {
  const struct telegram *t = j->t;
  json_t *b = json_object();
  int bad = !b;

  bad = bad || json_object_set_new(b, "chat_id", chat_json(t));
  bad = bad || json_object_set_new(b, "text", json_string(j->parts[j->next]));
  json_t *ents = bad ? NULL : entities_of(j->parts[j->next]);
  bad = bad || !ents;
  if (ents && json_array_size(ents))
    bad = bad || json_object_set_new(b, "entities", json_incref(ents));
  json_decref(ents);
  if (!t->link_preview) {
    json_t *lp = json_pack("{s:b}", "is_disabled", 1);
    bad = bad || json_object_set_new(b, "link_preview_options", lp);
  }
  if (j->silent)
    bad = bad || json_object_set_new(b, "disable_notification", json_true());
  int err = bad ? CP_ENOMEM : send_json(j, "sendMessage", b);
  json_decref(b);
  return err;
}

static const char *kind_of(const struct cp_cu_media *b, bool alone) {
  if (!strcmp(b->type, "image/gif"))
    return alone ? "animation" : "photo";
  if (!strncmp(b->type, "image/", 6))
    return "photo";
  if (!strncmp(b->type, "video/", 6))
    return "video";
  return NULL;
}

static int send_media(struct job *j) {
  const struct telegram *t = j->t;
  struct cp_http_part parts[MEDIA_MAX + 4];
  char fields[MEDIA_MAX][32];
  size_t np = 0;
  char *media_json = NULL, *ents_json = NULL;
  json_t *ents = NULL;
  int err;

  if (j->caption) {
    ents = entities_of(j->caption);
    if (!ents)
      return CP_ENOMEM;
    if (!json_array_size(ents)) {
      json_decref(ents);
      ents = NULL;
    }
  }
  memset(parts, 0, sizeof parts);
  parts[np++] = (struct cp_http_part){.name = "chat_id", .data = t->chat};
  if (j->n_media == 1) {
    const char *kind = kind_of(&j->media[0], true);
    parts[np++] = (struct cp_http_part){.name = kind,
                                        .filename = j->media[0].name,
                                        .content_type = j->media[0].type,
                                        .data = (const char *)j->media[0].data,
                                        .len = j->media[0].len};
    if (j->caption)
      parts[np++] = (struct cp_http_part){.name = "caption", .data = j->caption};
    if (ents) {
      ents_json = json_dumps(ents, JSON_COMPACT);
      if (!ents_json) {
        json_decref(ents);
        return CP_ENOMEM;
      }
      parts[np++] = (struct cp_http_part){.name = "caption_entities", .data = ents_json};
    }
  } else {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < j->n_media; i++) {
      snprintf(fields[i], sizeof fields[i], "file%zu", i);
      char attach[32];
      snprintf(attach, sizeof attach, "attach://%s", fields[i]);
      json_t *m = json_pack("{s:s, s:s}", "type", kind_of(&j->media[i], false), "media", attach);
      if (m && i == 0 && j->caption)
        json_object_set_new(m, "caption", json_string(j->caption));
      if (m && i == 0 && ents)
        json_object_set(m, "caption_entities", ents);
      if (!m || json_array_append_new(arr, m)) {
        json_decref(arr);
        arr = NULL;
      }
    }
    media_json = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    if (!media_json) {
      json_decref(ents);
      return CP_ENOMEM;
    }
    parts[np++] = (struct cp_http_part){.name = "media", .data = media_json};
    for (size_t i = 0; i < j->n_media; i++)
      parts[np++] = (struct cp_http_part){.name = fields[i],
                                          .filename = j->media[i].name,
                                          .content_type = j->media[i].type,
                                          .data = (const char *)j->media[i].data,
                                          .len = j->media[i].len};
  }
  if (j->silent)
    parts[np++] = (struct cp_http_part){.name = "disable_notification", .data = "true"};

  const char *method = "sendMediaGroup";
  if (j->n_media == 1) {
    const char *kind = kind_of(&j->media[0], true);
    method = !strcmp(kind, "photo")   ? "sendPhoto"
             : !strcmp(kind, "video") ? "sendVideo"
                                      : "sendAnimation";
  }
  j->sending_media = true;
  err = send_multipart(j, method, parts, np);
  free(media_json);
  free(ents_json);
  json_decref(ents);
  return err;
}

/* Sends the next step, or completes when none is left. Called from callbacks only. */
static void next_step(struct job *j) {
  int err = 0;
  if (j->n_media && !j->media_done) {
    err = send_media(j);
  } else if (!j->caption && j->next < j->n_parts) {
    j->sending_media = false;
    err = send_text(j);
  } else {
    struct cp_result res;
    memset(&res, 0, sizeof res);
    res.outcome = CP_OUTCOME_OK;
    finish(j, &res);
    return;
  }
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "cannot send the request: %s", cp_strerror(err));
}

/* Records a sent message in the progress, durably, so no later attempt sends it again. */
static void record(struct job *j, const char *key, const char *id) {
  size_t len = strlen(j->progress);
  snprintf(j->progress + len, sizeof j->progress - len, "%s%s=%s", len ? ";" : "", key, id);
  if (!j->first_id[0])
    snprintf(j->first_id, sizeof j->first_id, "%s", id);
  int err = j->req->host->save_progress(j->req, j->progress);
  if (err)
    j->t->host->log(j->t->host, CP_LOG_ERROR,
                    "post %s: cannot save its progress (%s): a retry may send message %s again",
                    j->post->id, cp_strerror(err), key);
}

/* The message of a successful answer: result is a Message, or an array of them (albums). */
static void read_message(struct job *j, json_t *result, char *id, size_t size) {
  json_t *m = json_is_array(result) ? json_array_get(result, 0) : result;
  json_t *mid = json_object_get(m, "message_id");
  json_t *user = json_object_get(json_object_get(m, "chat"), "username");
  if (json_is_integer(mid))
    snprintf(id, size, "%" JSON_INTEGER_FORMAT, json_integer_value(mid));
  else
    snprintf(id, size, "?");
  if (json_is_string(user) && !j->username[0])
    snprintf(j->username, sizeof j->username, "%s", json_string_value(user));
}

/* Rewrites res->message from Telegram's {"ok":false,"error_code","description","parameters"}. */
static void refine(struct job *j, const struct cp_http_resp *resp, json_t *root,
                   struct cp_result *res) {
  const struct telegram *t = j->t;
  const char *desc = json_string_value(json_object_get(root, "description"));
  json_t *params = json_object_get(root, "parameters");
  json_t *ra = json_object_get(params, "retry_after");
  json_t *migrate = json_object_get(params, "migrate_to_chat_id");
  char hint[160] = "";

  if (res->outcome == CP_OUTCOME_OK || !resp->status)
    return;
  if (json_is_number(ra) && json_number_value(ra) >= 0) {
    double s = json_number_value(ra);
    if (s > 366.0 * 24 * 3600)
      s = 366.0 * 24 * 3600;
    res->retry_at_ms = t->host->wall_ms(t->host) + (int64_t)ceil(s * 1000);
    snprintf(hint, sizeof hint, "retry after %.0f s", s);
  } else if (json_is_integer(migrate)) {
    snprintf(hint, sizeof hint,
             "the group is now a supergroup: set chat_id = %" JSON_INTEGER_FORMAT,
             json_integer_value(migrate));
  } else if (resp->status == 401) {
    snprintf(hint, sizeof hint, "the bot token was rejected: check token_file/token_env");
  } else if (resp->status == 404) {
    snprintf(hint, sizeof hint, "the bot token is malformed or api_base is wrong");
  } else if (resp->status == 403) {
    snprintf(hint, sizeof hint,
             "add the bot to %.40s (as an administrator of a channel) or unblock it", t->chat);
  } else if (resp->status == 400 && desc && strstr(desc, "chat not found")) {
    snprintf(hint, sizeof hint, "check chat_id = %.40s and that the bot is a member", t->chat);
  } else if (res->outcome == CP_OUTCOME_UNKNOWN) {
    snprintf(hint, sizeof hint,
             "not Telegram's answer (is api_base right?): the message may have been sent");
  }
  cp_cu_result_msg(res, "HTTP %ld%s%s%s%s%s", resp->status, desc ? ": " : "", desc ? desc : "",
                   hint[0] ? " (" : "", hint, hint[0] ? ")" : "");
}

/* The step number for messages about a multi-message post: "message 2 of 3: ". */
static void step_prefix(const struct job *j, char *buf, size_t size) {
  size_t total = (j->n_media ? 1 : 0) + (j->caption ? 0 : j->n_parts);
  size_t at = j->sending_media ? 1 : (j->n_media ? 2 : 1) + j->next;
  buf[0] = '\0';
  if (!j->login && total > 1)
    snprintf(buf, size, "message %zu of %zu: ", at, total);
}

static void on_response(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char id[32], prefix[48];

  j->t->host->http_result(j->req, resp, &res);
  json_t *root = resp->body_len ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  refine(j, resp, root, &res);
  if (res.outcome != CP_OUTCOME_OK) {
    step_prefix(j, prefix, sizeof prefix);
    if (prefix[0])
      cp_cu_result_msg(&res, "%s%s", prefix, res.message);
    json_decref(root);
    finish(j, &res);
    return;
  }
  if (j->login) {
    json_decref(root);
    if (j->login_step == 0) { /* the token works: now the chat */
      j->login_step = 1;
      json_t *b = json_pack("{s:o}", "chat_id", chat_json(j->t));
      int err = b ? send_json(j, "getChat", b) : CP_ENOMEM;
      json_decref(b);
      if (err)
        fail(j, CP_OUTCOME_RETRY, err, "cannot send the request: %s", cp_strerror(err));
      return;
    }
    finish(j, &res);
    return;
  }
  read_message(j, json_object_get(root, "result"), id, sizeof id);
  json_decref(root);
  if (j->sending_media) {
    j->media_done = true;
    record(j, "m", id);
  } else {
    char key[24];
    snprintf(key, sizeof key, "%zu", j->next + 1);
    j->next++;
    record(j, key, id);
  }
  next_step(j);
}

static void on_media(const struct cp_media_blob *blob, void *data) {
  struct job *j = data;
  const struct cp_media *m = &j->post->media[j->n_loaded];

  if (blob->err) {
    fail(j, cp_cu_media_outcome(blob->err), blob->err, "media '%.100s': %s", m->src,
         blob->errmsg[0] ? blob->errmsg : cp_strerror(blob->err));
    return;
  }
  struct cp_cu_media *b = &j->media[j->n_loaded];
  j->n_loaded++;
  if (cp_cu_media_copy(b, blob)) {
    fail(j, CP_OUTCOME_RETRY, CP_ENOMEM, "media '%.100s': out of memory", m->src);
    return;
  }
  if (!kind_of(b, j->n_media == 1)) {
    fail(j, CP_OUTCOME_PERMANENT, CP_EINVAL,
         "media '%.100s' is %s: Telegram takes photos and videos here", m->src, b->type);
    return;
  }
  if (j->n_loaded < j->n_media) {
    int err = j->req->host->media_load(j->req, &j->post->media[j->n_loaded], on_media, j);
    if (err)
      fail(j, cp_cu_media_outcome(err), err, "media '%.100s': %s", j->post->media[j->n_loaded].src,
           cp_strerror(err));
    return;
  }
  next_step(j);
}

/* Reads what earlier attempts sent: "m=<id>;1=<id>;2=<id>". */
static void resume(struct job *j, const char *progress) {
  char copy[1024], *save = NULL;
  snprintf(copy, sizeof copy, "%s", progress ? progress : "");
  for (char *tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
    char *eq = strchr(tok, '=');
    if (!eq)
      continue;
    *eq = '\0';
    const char *id = eq + 1;
    if (!strcmp(tok, "m") && j->n_media) {
      j->media_done = true;
    } else {
      char *end;
      unsigned long k = strtoul(tok, &end, 10);
      if (*end || k == 0 || k > j->n_parts)
        continue;
      if (k > j->next)
        j->next = k;
    }
    size_t len = strlen(j->progress);
    snprintf(j->progress + len, sizeof j->progress - len, "%s%s=%s", len ? ";" : "", tok, id);
    /* The first message of the post is the media's, or else the first text's. */
    if ((!strcmp(tok, "m") || (!j->n_media && !strcmp(tok, "1"))))
      snprintf(j->first_id, sizeof j->first_id, "%s", id);
  }
}

static void deferred(void *arg) {
  next_step(arg);
}

static int telegram_publish(void *instance, const struct cp_post *post,
                            const struct cp_publish_req *req) {
  struct telegram *t = instance;
  const char *text = post->text ? post->text : "";
  size_t limit = t->max_chars ? t->max_chars : TEXT_MAX;
  int err;

  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->t = t;
  j->post = post;
  j->req = req;
  j->silent = cp_cu_option_bool(post, "silent", 0);
  j->n_media = post->n_media > MEDIA_MAX ? MEDIA_MAX : post->n_media;
  if (*text) {
    err = cp_cu_text_parts(text, post->thread && cp_text_utf16_len(text) > limit, limit,
                           CP_COUNT_UTF16, post->numbered, &j->parts, &j->n_parts);
    if (err) {
      job_free(j);
      return err;
    }
  }
  if (j->n_media && j->n_parts == 1 && cp_text_utf16_len(j->parts[0]) <= CAPTION_MAX)
    j->caption = j->parts[0];
  if (j->n_media) {
    j->media = calloc(j->n_media, sizeof *j->media);
    if (!j->media) {
      job_free(j);
      return CP_ENOMEM;
    }
  }
  resume(j, req->progress);

  if (j->n_media && !j->media_done) {
    err = req->host->media_load(req, &post->media[0], on_media, j);
  } else {
    /* Nothing to load: the first request leaves from the loop (or the completion does, when an
     * earlier attempt sent everything but could not report it). */
    err = cp_cu_call_later(t->host, 0, deferred, j);
  }
  if (err) {
    job_free(j);
    return err;
  }
  return 0;
}

static int telegram_login_check(void *instance, const struct cp_publish_req *req) {
  struct telegram *t = instance;
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->t = t;
  j->req = req;
  j->login = true;
  int err = send_json(j, "getMe", NULL);
  if (err) {
    job_free(j);
    return err;
  }
  return 0;
}

/* ---- classify ----------------------------------------------------------------------------- */

static enum cp_outcome telegram_classify(void *instance, const struct cp_http_resp *resp,
                                         enum cp_outcome dflt) {
  long s = resp->status;
  if (s >= 200 && s < 300) {
    /* Telegram answers {"ok":true,"result":...}; anything else came from something that is
     * not Telegram, and whether the message went out is unknown. */
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    bool ok = json_is_true(json_object_get(root, "ok"));
    json_decref(root);
    return ok ? CP_OUTCOME_OK : CP_OUTCOME_UNKNOWN;
  }
  if (s == 429)
    return CP_OUTCOME_RATE_LIMITED;
  if (s == 401 || s == 404) /* 404: Telegram's answer to a malformed token */
    return CP_OUTCOME_AUTH;
  if (s == 400 || s == 403) /* chat not found, bot blocked or not a member: fix the setup */
    return CP_OUTCOME_PERMANENT;
  return dflt;
}

const struct cp_connector cp_connector_telegram = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "telegram",
    .description = "Telegram Bot API: messages, photos and albums to a chat or channel",
    .caps = CP_CAP_MEDIA | CP_CAP_THREADS,
    .init = telegram_init,
    .validate = telegram_validate,
    .publish = telegram_publish,
    .classify = telegram_classify,
    .login_check = telegram_login_check,
    .free = telegram_free,
    .post_options = post_options,
};
