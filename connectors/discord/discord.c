/* The discord connector: posts through a Discord incoming webhook ("Execute Webhook").
 *
 *   [channel community]
 *   type = discord
 *   url_file = discord.url         ; or url_env = CALPOST_DISCORD_URL; the URL is the secret
 *   username = Release bot         ; optional: overrides the webhook's name
 *   avatar_url = https://example.org/bot.png   ; optional
 *   link_preview = yes             ; no: no embeds, and Discord's are suppressed (SUPPRESS_EMBEDS)
 *
 * Request: POST <url>?wait=true with JSON {content, allowed_mentions: {parse: []}, username?,
 * avatar_url?, flags?}; with media, multipart: payload_json (the same JSON plus attachments
 * [{id, filename, description = alt text}]) and files[n]. wait=true makes Discord answer with the
 * message (its id is the remote id) instead of 204, which Discord also sends for a message that
 * was not saved. allowed_mentions with an empty parse list keeps "@everyone" in a post from
 * pinging anyone. Embeds (unless link_preview = no): one {"image": {"url": "attachment://NAME"}}
 * per image, NAME the upload's file name made safe and unique; a post without images gets one link
 * preview per message, {title: the post's title (or the link's host), url: the first link,
 * description: the text without it, cut to 300 characters}, and that link goes in <...> in the
 * content so that Discord's own unfurl does not show it twice. A thread (thread = yes) over 2000
 * characters goes as consecutive messages; each sent message is saved with host->save_progress
 * ("1=<id>;2=<id>") and never sent again. Rate limits: 429 with Retry-After,
 * X-RateLimit-Reset-After, X-RateLimit-Reset and the body's retry_after; the latest of them is the
 * retry time.
 *
 * Engagement (optional read, posts nothing): GET <webhook URL>/messages/<message id> (with the
 * URL's thread_id query, if any), the webhook's own message; likes = the sum of reactions[].count
 * (Discord leaves reactions out while there are none). */
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
#include "http.h"

#define TEXT_MAX 2000
#define MEDIA_MAX 10
#define ALT_MAX 1024
#define USERNAME_MAX 80
#define NAME_MAX_BYTES 100
#define EMBEDS_MAX 10
#define EMBED_TITLE_MAX 256
#define EMBED_DESC_MAX 4096
#define EMBEDS_TEXT_MAX 6000 /* title + description (+ fields, footer, author) of all embeds */
#define PREVIEW_DESC_MAX 300
#define FLAG_SUPPRESS_EMBEDS (1 << 2)
#define FLAG_SUPPRESS_NOTIFICATIONS (1 << 12)

struct discord {
  const struct cp_host *host;
  char *name;
  char *url;      /* the webhook URL: a secret */
  char *post_url; /* url with wait=true: a secret */
  char *token;    /* the URL's last path segment, to scrub from messages */
  char *username;
  char *avatar_url;
  bool link_preview;
  size_t max_chars;  /* 0: TEXT_MAX */
  char guild_id[32]; /* learned from an answer, for message links */
};

struct blob {
  struct cp_cu_media m; /* m.name: safe and unique in the message (files[n], attachment://) */
  bool embed;           /* an image Discord shows in an embed */
};

enum stage { POSTING, GUILD_LOOKUP, LOGIN, ENGAGEMENT };

struct job {
  struct discord *d;
  const struct cp_post *post;
  const struct cp_publish_req *req;
  enum stage stage;
  bool silent;
  char **parts;
  size_t n_parts;
  struct blob *media;
  size_t n_media, n_loaded;
  size_t next; /* index of the next part */
  char first_id[32];
  char channel_id[32];
  char progress[1024];
};

static const char *const known_keys[] = {"url_file",   "url_env",      "username",
                                         "avatar_url", "link_preview", NULL};
static const char *const post_options[] = {"silent", NULL};
static const char *const media_exts[] = {"jpg", "jpeg", "png", "gif", "webp",
                                         "mp4", "webm", "mov", NULL};
/* What attachment:// takes in an embed (Discord's "Uploading Files" reference). */
static const char *const image_exts[] = {"jpg", "jpeg", "png", "webp", "gif", NULL};

/* ---- small helpers ------------------------------------------------------------------------ */

/* True if the post has media that may be images: an image extension, or none (a URL such as
 * .../photo?id=3). Decided without I/O, so that validate and every message agree. */
static bool has_images(const struct cp_post *post) {
  char ext[16];
  for (size_t i = 0; i < post->n_media; i++) {
    cp_cu_media_ext(post->media[i].src, ext, sizeof ext, true);
    if (!*ext || cp_cu_in_list(ext, image_exts))
      return true;
  }
  return false;
}

/* ---- text for embeds ---------------------------------------------------------------------- */

static bool is_blank(char c) {
  return c == ' ' || c == '\t';
}

static bool is_ws(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

/* s cut to at most max code points (max >= 2): whole when it fits; otherwise at the last white
 * space that leaves room for a closing "…" (inside one long word: at a grapheme boundary), with
 * trailing white space dropped. Returns a malloc'd string or NULL. */
static char *cut_text(const char *s, size_t max) {
  if (cp_text_codepoints(s) <= max)
    return strdup(s);
  const char *p = s, *space = NULL, *grapheme = s;
  utf8proc_int32_t prev = -1, cp, state = 0;
  for (size_t n = 0; *p && n < max - 1; n++) {
    size_t len = cp_cu_utf8_next(p, &cp);
    if (prev >= 0 && utf8proc_grapheme_break_stateful(prev, cp, &state))
      grapheme = p;
    if (cp_cu_is_space(cp))
      space = p;
    prev = cp;
    p += len;
  }
  cp_cu_utf8_next(p, &cp); /* the first code point that does not fit: s is longer than max */
  const char *cut = p;
  if (!cp_cu_is_space(cp) && space)
    cut = space;
  else if (!cp_cu_is_space(cp) && !utf8proc_grapheme_break_stateful(prev, cp, &state))
    cut = grapheme;
  while (cut > s && is_ws(cut[-1]))
    cut--;
  size_t n = (size_t)(cut - s);
  char *out = malloc(n + 4);
  if (out) {
    memcpy(out, s, n);
    memcpy(out + n, "\xe2\x80\xa6", 4); /* U+2026 and the NUL */
  }
  return out;
}

/* The host of url (malloc'd), or a copy of url if it has none. */
static char *url_host(const char *url) {
  CURLU *u = curl_url();
  char *host = NULL, *out = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
    out = strdup(host);
  curl_free(host);
  curl_url_cleanup(u);
  return out ? out : strdup(url);
}

/* text[0..start) and text[end..) joined with one space where the cut left white space on both
 * sides, trimmed. Returns a malloc'd string or NULL. */
static char *text_without(const char *text, size_t start, size_t end) {
  size_t a = start, b = end, tail = strlen(text);
  while (a > 0 && is_blank(text[a - 1]))
    a--;
  while (b < tail && is_blank(text[b]))
    b++;
  bool sep = a > 0 && b < tail && text[a - 1] != '\n' && text[b] != '\n';
  char *out = malloc(a + (tail - b) + 2);
  if (!out)
    return NULL;
  memcpy(out, text, a);
  if (sep)
    out[a++] = ' ';
  memcpy(out + a, text + b, tail - b + 1);
  size_t lead = 0, n = strlen(out);
  while (out[lead] && is_ws(out[lead]))
    lead++;
  while (n > lead && is_ws(out[n - 1]))
    n--;
  memmove(out, out + lead, n - lead);
  out[n - lead] = '\0';
  return out;
}

/* The link preview of a message: the embed {title, url, description} for the first link of text,
 * and in *content (malloc'd) the text with that link in <...>, which keeps Discord from unfurling
 * it as well (NULL: the text as it is, the link was in <...> already). Returns NULL when the text
 * has no link, when the brackets would take it over Discord's 2000 characters (Discord's own
 * preview then shows), or on ENOMEM. */
static json_t *link_preview(const struct cp_post *post, const char *text, char **content) {
  size_t ulen = 0;
  const char *url = cp_text_find_url(text, &ulen);
  *content = NULL;
  if (!url)
    return NULL;
  size_t at = (size_t)(url - text);
  bool bracketed = at > 0 && url[-1] == '<' && url[ulen] == '>';
  char *link = strndup(url, ulen);
  char *wrapped = NULL, *host = NULL, *title = NULL, *desc = NULL;
  json_t *e = NULL;
  if (!link)
    return NULL;
  if (!bracketed) {
    size_t tl = strlen(text);
    wrapped = malloc(tl + 3);
    if (!wrapped)
      goto out;
    snprintf(wrapped, tl + 3, "%.*s<%s>%s", (int)at, text, link, url + ulen);
    if (cp_text_codepoints(wrapped) > TEXT_MAX)
      goto out;
  }
  const char *t = post->title && *post->title ? post->title : NULL;
  if (!t) {
    host = url_host(link);
    t = host;
  }
  title = t ? cut_text(t, EMBED_TITLE_MAX) : NULL;
  char *rest = text_without(text, bracketed ? at - 1 : at, at + ulen + (bracketed ? 1 : 0));
  desc = rest ? cut_text(rest, PREVIEW_DESC_MAX) : NULL;
  free(rest);
  if (!title || !desc)
    goto out;
  e = json_pack("{s:s, s:s}", "title", title, "url", link);
  if (e && *desc && json_object_set_new(e, "description", json_string(desc))) {
    json_decref(e);
    e = NULL;
  }
  if (e) {
    *content = wrapped;
    wrapped = NULL;
  }
out:
  free(link);
  free(wrapped);
  free(host);
  free(title);
  free(desc);
  return e;
}

/* Checks embeds against Discord's limits (at most 10; title 256, description 4096, and 6000 for
 * the text of all of them); on failure writes why. */
static bool embeds_fit(json_t *embeds, char *why, size_t size) {
  size_t total = 0, i;
  json_t *e;
  if (json_array_size(embeds) > EMBEDS_MAX) {
    snprintf(why, size, "%zu embeds, Discord allows %d", json_array_size(embeds), EMBEDS_MAX);
    return false;
  }
  json_array_foreach(embeds, i, e) {
    const char *title = json_string_value(json_object_get(e, "title"));
    const char *desc = json_string_value(json_object_get(e, "description"));
    size_t tn = title ? cp_text_codepoints(title) : 0, dn = desc ? cp_text_codepoints(desc) : 0;
    if (tn > EMBED_TITLE_MAX || dn > EMBED_DESC_MAX) {
      snprintf(why, size, "embed %zu: title of %zu or description of %zu characters", i + 1, tn,
               dn);
      return false;
    }
    total += tn + dn;
  }
  if (total > EMBEDS_TEXT_MAX) {
    snprintf(why, size, "embeds with %zu characters of text, Discord allows %d", total,
             EMBEDS_TEXT_MAX);
    return false;
  }
  return true;
}

/* ---- file names --------------------------------------------------------------------------- */

/* Copies in[0..n) to out as ASCII letters, digits, '.', '-' and '_' (any other code point becomes
 * one '_'), at most max bytes; returns the length written. */
static size_t safe_chars(const char *in, size_t n, char *out, size_t max) {
  size_t k = 0;
  for (size_t i = 0; i < n && k < max; i++) {
    unsigned char c = (unsigned char)in[i];
    if ((c & 0xC0) == 0x80)
      continue;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_';
    out[k++] = ok ? (char)c : '_';
  }
  return k;
}

static const char *image_ext_of(const char *type) {
  static const char *const types[][2] = {
      {"image/jpeg", "jpg"}, {"image/png", "png"}, {"image/webp", "webp"}, {"image/gif", "gif"}};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (!strcasecmp(type, types[i][0]))
      return types[i][1];
  return NULL;
}

/* The name of upload i: the loaded file name made safe for multipart and attachment:// (see
 * safe_chars, no leading '.'), with the extension Discord needs to show an image of this type in
 * an embed, and unique among the uploads before it ("-2", "-3" before the extension). Sets
 * b->m.name (replacing the loaded name) and b->embed; returns 0 or CP_ENOMEM. */
static int name_upload(struct blob *b, const char *loaded, const struct blob *prev, size_t n_prev) {
  const char *dot = strrchr(loaded, '.');
  size_t stem_len =
      dot && dot != loaded && strlen(dot) <= 8 ? (size_t)(dot - loaded) : strlen(loaded);
  char stem[NAME_MAX_BYTES], ext[16] = "", want_ext[16];
  size_t sn = safe_chars(loaded, stem_len, stem, NAME_MAX_BYTES - 24);
  size_t en = safe_chars(loaded + stem_len, strlen(loaded + stem_len), ext, sizeof ext - 1);
  stem[sn] = '\0';
  ext[en] = '\0';
  if (stem[0] == '.')
    stem[0] = '_';
  if (!sn)
    snprintf(stem, sizeof stem, "media");
  const char *img = image_ext_of(b->m.type);
  cp_cu_media_ext(ext, want_ext, sizeof want_ext, true);
  if (img && !cp_cu_in_list(want_ext, image_exts))
    snprintf(ext + strlen(ext), sizeof ext - strlen(ext), ".%s", img);
  char name[NAME_MAX_BYTES + 16];
  snprintf(name, sizeof name, "%s%s", stem, ext);
  for (int k = 2;; k++) {
    bool taken = false;
    for (size_t i = 0; i < n_prev && !taken; i++)
      taken = !strcasecmp(prev[i].m.name, name);
    if (!taken)
      break;
    snprintf(name, sizeof name, "%s-%d%s", stem, k, ext);
  }
  char *unique = strdup(name);
  if (!unique)
    return CP_ENOMEM;
  free(b->m.name);
  b->m.name = unique;
  b->embed = img != NULL;
  return 0;
}

/* Checks the webhook URL (https, or http to this machine) and derives the URL to post to (with
 * wait=true added to any query it has, such as thread_id) and the token (its last path segment).
 * Returns 0, CP_EINVAL if it is not such a URL, or CP_ENOMEM. */
static int parse_webhook_url(struct discord *d, bool *odd_path) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *path = NULL, *full = NULL;
  int rc = CP_EINVAL;

  *odd_path = false;
  if (!u)
    return CP_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, d->url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
    goto out;
  bool loop = cp_cu_loopback_host(host, false);
  if (strcmp(scheme, "https") && !(loop && !strcmp(scheme, "http")))
    goto out;
  size_t pl = strlen(path);
  while (pl > 0 && path[pl - 1] == '/')
    path[--pl] = '\0';
  const char *last = strrchr(path, '/');
  *odd_path = !strstr(path, "/webhooks/") || !last || !last[1];
  if (last && last[1]) {
    d->token = strdup(last + 1);
    if (!d->token) {
      rc = CP_ENOMEM;
      goto out;
    }
  }
  if (curl_url_set(u, CURLUPART_QUERY, "wait=true", CURLU_APPENDQUERY) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK) {
    rc = CP_ENOMEM;
    goto out;
  }
  d->post_url = strdup(full);
  rc = d->post_url ? 0 : CP_ENOMEM;
out:
  if (full) {
    explicit_bzero(full, strlen(full));
    curl_free(full);
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(path);
  curl_url_cleanup(u);
  return rc;
}

/* ---- init / free -------------------------------------------------------------------------- */

/* Wipes and frees a copy of (part of) the secret made here. */
static void wipe_free(char *s) {
  if (s) {
    explicit_bzero(s, strlen(s));
    free(s);
  }
}

static void discord_free(void *instance) {
  struct discord *d = instance;
  if (!d)
    return;
  free(d->name);
  if (d->url)
    d->host->secret_free(d->url);
  wipe_free(d->post_url);
  wipe_free(d->token);
  free(d->username);
  free(d->avatar_url);
  free(d);
}

static int discord_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                        void **instance) {
  int line;
  const char *v;
  bool odd = false;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  struct discord *d = calloc(1, sizeof *d);
  if (!d)
    return CP_ENOMEM;
  d->host = host;
  d->link_preview = true;
  d->name = strdup(conf->name ? conf->name : "discord");
  if (!d->name) {
    discord_free(d);
    return CP_ENOMEM;
  }
  err = cp_cu_conf_secret(host, conf, "url",
                          "the webhook URL: 'url_file = FILE' or 'url_env = VARIABLE' (Server "
                          "Settings > Integrations > Webhooks > Copy Webhook URL)",
                          &d->url);
  if (err) {
    discord_free(d);
    return err;
  }
  err = parse_webhook_url(d, &odd);
  if (err) {
    /* Never print the URL: it is the secret. */
    if (err == CP_EINVAL)
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] the webhook URL (url_file/url_env) is not an https URL "
                "(plain http is allowed only to localhost)",
                conf->file, conf->line, conf->name);
    discord_free(d);
    return err == CP_EINVAL ? CP_ECONFIG : err;
  }
  if (odd)
    host->log(host, CP_LOG_WARN,
              "%s:%d: [channel %s] the webhook URL does not look like "
              "https://discord.com/api/webhooks/ID/TOKEN",
              conf->file, conf->line, conf->name);

  line = conf->line;
  v = conf->get(conf, "username", &line);
  if (v) {
    size_t n = cp_text_codepoints(v);
    if (n < 1 || n > USERNAME_MAX || strcasestr(v, "discord") || strcasestr(v, "clyde")) {
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] username: '%s' must be 1 to %d characters and may not "
                "contain \"discord\" or \"clyde\" (Discord refuses it)",
                conf->file, line, conf->name, v, USERNAME_MAX);
      discord_free(d);
      return CP_ECONFIG;
    }
    d->username = strdup(v);
    if (!d->username) {
      discord_free(d);
      return CP_ENOMEM;
    }
  }
  line = conf->line;
  v = conf->get(conf, "avatar_url", &line);
  if (v) {
    if (strncasecmp(v, "https://", 8)) {
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] avatar_url: '%s' is not an https:// URL (Discord fetches it)",
                conf->file, line, conf->name, v);
      discord_free(d);
      return CP_ECONFIG;
    }
    d->avatar_url = strdup(v);
    if (!d->avatar_url) {
      discord_free(d);
      return CP_ENOMEM;
    }
  }
  int preview = d->link_preview;
  char what[64];
  snprintf(what, sizeof what, "a number from 1 to %d (Discord's limit)", TEXT_MAX);
  err = cp_cu_conf_bool(host, conf, "link_preview", &preview);
  if (!err)
    err = cp_cu_conf_count(host, conf, "max_chars", 1, TEXT_MAX, what, &d->max_chars);
  if (err) {
    discord_free(d);
    return err;
  }
  d->link_preview = preview;
  *instance = d;
  return 0;
}

/* ---- validate ----------------------------------------------------------------------------- */

static int discord_validate(void *instance, const struct cp_post *post, cp_diag_cb diag,
                            void *arg) {
  struct discord *d = instance;
  const char *text = post->text ? post->text : "";
  size_t limit = d->max_chars ? d->max_chars : TEXT_MAX;
  size_t n = cp_text_codepoints(text);
  char msg[320], ext[16];
  int bad = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  if (n > limit && !post->thread) {
    snprintf(msg, sizeof msg,
             "%zu characters, channel %s allows %zu: shorten the text or set thread = yes", n,
             d->name, limit);
    diag(arg, true, msg);
    bad = 1;
  }
  if (post->n_media > MEDIA_MAX) {
    snprintf(msg, sizeof msg, "%zu media, a Discord message takes %d files: remove %zu",
             post->n_media, MEDIA_MAX, post->n_media - MEDIA_MAX);
    diag(arg, true, msg);
    bad = 1;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    const struct cp_media *m = &post->media[i];
    cp_cu_media_ext(m->src, ext, sizeof ext, true);
    bool known = false;
    for (size_t k = 0; media_exts[k] && !known; k++)
      known = !strcmp(ext, media_exts[k]);
    if (*ext && !known) {
      snprintf(msg, sizeof msg,
               "media '%.120s': only images (.jpg, .png, .gif, .webp) and videos (.mp4, .webm, "
               ".mov) are posted",
               m->src);
      diag(arg, true, msg);
      bad = 1;
    }
    if (m->alt && cp_text_codepoints(m->alt) > ALT_MAX) {
      snprintf(msg, sizeof msg, "media '%.120s': alt text of %zu characters, Discord allows %d",
               m->src, cp_text_codepoints(m->alt), ALT_MAX);
      diag(arg, true, msg);
      bad = 1;
    }
  }
  size_t ulen;
  size_t tn = post->title ? cp_text_codepoints(post->title) : 0;
  if (d->link_preview && !has_images(post) && cp_text_find_url(text, &ulen) &&
      tn > EMBED_TITLE_MAX) {
    snprintf(msg, sizeof msg,
             "the title has %zu characters, a Discord embed title %d: the link preview shows it "
             "cut at a word with \"...\"",
             tn, EMBED_TITLE_MAX);
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
    cp_cu_media_clear(&j->media[i].m);
  free(j->media);
  free(j);
}

static void finish(struct job *j, struct cp_result *res) {
  const struct cp_publish_req *req = j->req;
  struct discord *d = j->d;

  if (j->stage == LOGIN && res->outcome == CP_OUTCOME_PERMANENT)
    res->outcome = CP_OUTCOME_AUTH; /* a deleted webhook: the setup needs a new URL */
  if (res->outcome == CP_OUTCOME_OK && j->stage != LOGIN && j->stage != ENGAGEMENT) {
    snprintf(res->remote_id, sizeof res->remote_id, "%s", j->first_id);
    if (d->guild_id[0] && j->channel_id[0] && j->first_id[0])
      snprintf(res->remote_url, sizeof res->remote_url, "https://discord.com/channels/%s/%s/%s",
               d->guild_id, j->channel_id, j->first_id);
  }
  cp_cu_scrub(res->message, d->url);
  cp_cu_scrub(res->message, d->token);
  if (j->stage != LOGIN && j->stage != ENGAGEMENT) {
    if (res->outcome == CP_OUTCOME_OK)
      d->host->log(d->host, CP_LOG_INFO, "post %s sent: message %s", j->post->id, res->remote_id);
    else
      d->host->log(d->host, CP_LOG_WARN, "post %s not sent (%s): %s", j->post->id,
                   cp_outcome_name(res->outcome), res->message);
  }
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

static void on_response(const struct cp_http_resp *resp, void *data);

static int get_webhook(struct job *j) {
  struct cp_http_header hdrs[] = {{"Accept", "application/json"}};
  struct cp_http_req hr = {.method = "GET", .url = j->d->url, .headers = hdrs, .n_headers = 1};
  return j->d->host->http_request(j->d->host, &hr, on_response, j);
}

/* The JSON payload of part j->next; with attachments when the media go along. */
static json_t *payload(const struct job *j, bool with_media) {
  const struct discord *d = j->d;
  const char *content = j->parts[j->next];
  char *wrapped = NULL, why[160];
  int flags =
      (d->link_preview ? 0 : FLAG_SUPPRESS_EMBEDS) | (j->silent ? FLAG_SUPPRESS_NOTIFICATIONS : 0);
  json_t *p = json_object(), *embeds = json_array();
  int bad = !p || !embeds;

  /* link_preview = no: no embeds of ours either; the images show as plain attachments. */
  if (!bad && d->link_preview) {
    for (size_t i = 0; with_media && !bad && i < j->n_media; i++) {
      if (!j->media[i].embed)
        continue;
      char url[NAME_MAX_BYTES + 32];
      snprintf(url, sizeof url, "attachment://%s", j->media[i].m.name);
      bad = json_array_append_new(embeds, json_pack("{s:{s:s}}", "image", "url", url));
    }
    if (!bad && !has_images(j->post)) {
      json_t *e = link_preview(j->post, content, &wrapped);
      bad = e && json_array_append_new(embeds, e);
    }
    if (!bad && !embeds_fit(embeds, why, sizeof why)) {
      /* Not expected (titles and descriptions are cut to fit): send the message without them. */
      d->host->log(d->host, CP_LOG_WARN, "post %s: embeds left out: %s", j->post->id, why);
      json_array_clear(embeds);
      free(wrapped);
      wrapped = NULL;
    }
  }
  if (*content)
    bad = bad || json_object_set_new(p, "content", json_string(wrapped ? wrapped : content));
  free(wrapped);
  if (json_array_size(embeds))
    bad = bad || json_object_set_new(p, "embeds", json_incref(embeds));
  json_decref(embeds);
  bad = bad || json_object_set_new(p, "allowed_mentions", json_pack("{s:[]}", "parse"));
  if (d->username)
    bad = bad || json_object_set_new(p, "username", json_string(d->username));
  if (d->avatar_url)
    bad = bad || json_object_set_new(p, "avatar_url", json_string(d->avatar_url));
  if (flags)
    bad = bad || json_object_set_new(p, "flags", json_integer(flags));
  if (with_media) {
    json_t *att = json_array();
    bad = bad || !att;
    for (size_t i = 0; !bad && i < j->n_media; i++) {
      const char *alt = j->post->media[i].alt;
      json_t *a = json_pack("{s:I, s:s}", "id", (json_int_t)i, "filename", j->media[i].m.name);
      if (a && alt && *alt)
        json_object_set_new(a, "description", json_string(alt));
      bad = !a || json_array_append_new(att, a);
    }
    bad = bad || json_object_set_new(p, "attachments", att);
  }
  if (bad) {
    json_decref(p);
    return NULL;
  }
  return p;
}

static int send_part(struct job *j) {
  const struct discord *d = j->d;
  bool with_media = j->next == 0 && j->n_media > 0;
  json_t *p = payload(j, with_media);
  char *text = p ? json_dumps(p, JSON_COMPACT) : NULL;
  json_decref(p);
  if (!text)
    return CP_ENOMEM;

  struct cp_http_header hdrs[] = {{"Accept", "application/json"},
                                  {"Content-Type", "application/json"}};
  struct cp_http_part parts[MEDIA_MAX + 1];
  char names[MEDIA_MAX][32];
  struct cp_http_req hr = {.method = "POST", .url = d->post_url, .headers = hdrs};
  if (with_media) {
    parts[0] = (struct cp_http_part){
        .name = "payload_json", .content_type = "application/json", .data = text};
    for (size_t i = 0; i < j->n_media; i++) {
      snprintf(names[i], sizeof names[i], "files[%zu]", i);
      parts[i + 1] = (struct cp_http_part){.name = names[i],
                                           .filename = j->media[i].m.name,
                                           .content_type = j->media[i].m.type,
                                           .data = (const char *)j->media[i].m.data,
                                           .len = j->media[i].m.len};
    }
    hr.parts = parts;
    hr.n_parts = j->n_media + 1;
    hr.n_headers = 1;
    hr.timeout_ms = 120000; /* uploads take longer than a message */
  } else {
    hr.body = text;
    hr.body_len = strlen(text);
    hr.n_headers = 2;
  }
  int err = d->host->http_request(d->host, &hr, on_response, j);
  free(text);
  return err;
}

static void next_step(struct job *j) {
  int err;
  if (j->next < j->n_parts) {
    err = send_part(j);
  } else if (!j->d->guild_id[0] && j->channel_id[0] && j->first_id[0]) {
    /* The message link needs the server's id, which only the webhook object tells. */
    j->stage = GUILD_LOOKUP;
    err = get_webhook(j);
    if (err) {
      struct cp_result res = {.outcome = CP_OUTCOME_OK};
      finish(j, &res);
      return;
    }
  } else {
    struct cp_result res = {.outcome = CP_OUTCOME_OK};
    finish(j, &res);
    return;
  }
  if (err)
    fail(j, CP_OUTCOME_RETRY, err, "cannot send the request: %s", cp_strerror(err));
}

static void record(struct job *j, const char *id) {
  size_t len = strlen(j->progress);
  cp_cu_progress_put(j->progress, sizeof j->progress, &len, "", j->next + 1, id);
  if (!j->first_id[0])
    snprintf(j->first_id, sizeof j->first_id, "%s", id);
  int err = j->req->host->save_progress(j->req, j->progress);
  if (err)
    j->d->host->log(j->d->host, CP_LOG_ERROR,
                    "post %s: cannot save its progress (%s): a retry may send part %zu again",
                    j->post->id, cp_strerror(err), j->next + 1);
}

static void copy_id(json_t *v, char *dst, size_t size) {
  if (json_is_string(v))
    snprintf(dst, size, "%s", json_string_value(v));
  else if (json_is_integer(v))
    snprintf(dst, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
}

static double header_number(const struct cp_http_resp *resp, const char *name, bool *found) {
  const char *v = cp_http_header(resp, name);
  *found = false;
  if (!v)
    return 0;
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x) || x < 0)
    return 0;
  *found = true;
  return x;
}

/* The first "_errors" message of Discord's nested "errors" object, with its field path. */
static bool first_field_error(json_t *obj, char *path, size_t size, const char **msg) {
  const char *key;
  json_t *v;
  if (!json_is_object(obj))
    return false;
  json_t *errs = json_object_get(obj, "_errors");
  if (json_is_array(errs)) {
    *msg = json_string_value(json_object_get(json_array_get(errs, 0), "message"));
    return *msg != NULL;
  }
  size_t len = strlen(path);
  json_object_foreach(obj, key, v) {
    snprintf(path + len, size - len, "%s%s", len ? "." : "", key);
    if (first_field_error(v, path, size, msg))
      return true;
    path[len] = '\0';
  }
  return false;
}

/* The latest retry time of the 429 forms Discord uses (ms); sets *global. */
static int64_t rate_limit_until(const struct discord *d, const struct cp_http_resp *resp,
                                json_t *root, int64_t from_retry_after, bool *global) {
  int64_t now = d->host->wall_ms(d->host), at = from_retry_after;
  bool found;
  double s = header_number(resp, "X-RateLimit-Reset-After", &found);
  if (found && s < 366.0 * 24 * 3600 && now + (int64_t)ceil(s * 1000) > at)
    at = now + (int64_t)ceil(s * 1000);
  double epoch = header_number(resp, "X-RateLimit-Reset", &found);
  if (found && epoch * 1000 > (double)at && epoch * 1000 < (double)now + 366.0 * 86400000)
    at = (int64_t)ceil(epoch * 1000);
  json_t *ra = json_object_get(root, "retry_after");
  if (json_is_number(ra)) {
    s = json_number_value(ra);
    if (s >= 0 && s < 366.0 * 24 * 3600 && now + (int64_t)ceil(s * 1000) > at)
      at = now + (int64_t)ceil(s * 1000);
  }
  const char *g = cp_http_header(resp, "X-RateLimit-Global");
  *global = json_is_true(json_object_get(root, "global")) || (g && !strcasecmp(g, "true"));
  return at;
}

/* Rewrites res->message (and for 429 the retry time) from Discord's {"message","code",...}. */
static void refine(struct job *j, const struct cp_http_resp *resp, json_t *root,
                   struct cp_result *res) {
  const struct discord *d = j->d;
  const char *msg = json_string_value(json_object_get(root, "message"));
  json_t *code = json_object_get(root, "code");
  char hint[200] = "", field[96] = "";
  const char *ferr = NULL;

  if (res->outcome == CP_OUTCOME_OK || !resp->status)
    return;
  if (resp->status == 429) {
    bool global = false;
    const char *scope = cp_http_header(resp, "X-RateLimit-Scope");
    res->retry_at_ms = rate_limit_until(d, resp, root, res->retry_at_ms, &global);
    int64_t wait = res->retry_at_ms ? res->retry_at_ms - d->host->wall_ms(d->host) : -1;
    if (wait >= 0)
      snprintf(hint, sizeof hint, "%s%s%sretry in %.1f s", global ? "global limit, " : "",
               scope && !global ? scope : "", scope && !global ? " limit, " : "", wait / 1000.0);
    else
      snprintf(hint, sizeof hint, "%s", global ? "global limit" : "no retry time given");
  } else if (resp->status == 401) {
    snprintf(hint, sizeof hint, "the webhook token is wrong: copy the webhook URL again");
  } else if (resp->status == 404) {
    snprintf(hint, sizeof hint,
             "the webhook was deleted: create a new one and put its URL in url_file");
  } else if (resp->status == 403) {
    snprintf(hint, sizeof hint, "the webhook may not post in its channel: check permissions");
  } else if (resp->status == 413) {
    snprintf(hint, sizeof hint, "the files are too large for this server: use smaller media");
  } else if (first_field_error(json_object_get(root, "errors"), field, sizeof field, &ferr)) {
    snprintf(hint, sizeof hint, "%s: %s", field, ferr);
  } else if (res->outcome == CP_OUTCOME_UNKNOWN) {
    snprintf(hint, sizeof hint,
             "not Discord's answer (is the webhook URL right?): the message may have been sent");
  }
  char codes[40] = "";
  if (json_is_integer(code))
    snprintf(codes, sizeof codes, " (code %" JSON_INTEGER_FORMAT ")", json_integer_value(code));
  cp_cu_result_msg(res, "HTTP %ld%s%s%s%s%s", resp->status, msg ? ": " : "", msg ? msg : "", codes,
                   hint[0] ? ": " : "", hint);
}

static void on_message(struct job *j, const struct cp_http_resp *resp, json_t *root,
                       struct cp_result *res);

static void on_response(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct cp_result res;
  char id[32] = "";

  j->d->host->http_result(j->req, resp, &res);
  json_t *root = resp->body_len ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  if (j->stage == ENGAGEMENT) {
    on_message(j, resp, root, &res);
    json_decref(root);
    return;
  }
  if (j->stage == GUILD_LOOKUP) {
    /* The post is out whatever this says; only the link depends on it. */
    if (res.outcome == CP_OUTCOME_OK)
      copy_id(json_object_get(root, "guild_id"), j->d->guild_id, sizeof j->d->guild_id);
    json_decref(root);
    struct cp_result ok = {.outcome = CP_OUTCOME_OK};
    finish(j, &ok);
    return;
  }
  refine(j, resp, root, &res);
  if (res.outcome != CP_OUTCOME_OK || j->stage == LOGIN) {
    if (res.outcome != CP_OUTCOME_OK && j->n_parts > 1)
      cp_cu_result_msg(&res, "part %zu of %zu: %s", j->next + 1, j->n_parts, res.message);
    if (res.outcome == CP_OUTCOME_OK)
      copy_id(json_object_get(root, "guild_id"), j->d->guild_id, sizeof j->d->guild_id);
    json_decref(root);
    finish(j, &res);
    return;
  }
  copy_id(json_object_get(root, "id"), id, sizeof id);
  copy_id(json_object_get(root, "channel_id"), j->channel_id, sizeof j->channel_id);
  copy_id(json_object_get(root, "guild_id"), j->d->guild_id, sizeof j->d->guild_id);
  json_decref(root);
  record(j, id[0] ? id : "?");
  j->next++;
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
  struct blob *b = &j->media[j->n_loaded];
  j->n_loaded++;
  if (cp_cu_media_copy(&b->m, blob) || name_upload(b, b->m.name, j->media, j->n_loaded - 1)) {
    fail(j, CP_OUTCOME_RETRY, CP_ENOMEM, "media '%.100s': out of memory", m->src);
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

static int resume_part(void *arg, size_t k, const char *id) {
  struct job *j = arg;
  size_t len = strlen(j->progress);
  if (k > j->next)
    j->next = k;
  if (k == 1)
    snprintf(j->first_id, sizeof j->first_id, "%s", id);
  cp_cu_progress_put(j->progress, sizeof j->progress, &len, "", k, id);
  return 0;
}

/* Reads "1=<id>;2=<id>" from an earlier attempt: those parts are not sent again. */
static void resume(struct job *j, const char *progress) {
  cp_cu_progress_each(progress, "", j->n_parts, resume_part, j);
}

static void deferred(void *arg) {
  next_step(arg);
}

static int discord_publish(void *instance, const struct cp_post *post,
                           const struct cp_publish_req *req) {
  struct discord *d = instance;
  const char *text = post->text ? post->text : "";
  size_t limit = d->max_chars ? d->max_chars : TEXT_MAX;
  int err;

  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->d = d;
  j->post = post;
  j->req = req;
  j->stage = POSTING;
  j->silent = cp_cu_option_bool(post, "silent", 0);
  j->n_media = post->n_media > MEDIA_MAX ? MEDIA_MAX : post->n_media;
  err = cp_cu_text_parts(text, post->thread && cp_text_codepoints(text) > limit, limit,
                         CP_COUNT_CODEPOINTS, post->numbered, &j->parts, &j->n_parts);
  if (err) {
    job_free(j);
    return err;
  }
  if (j->n_media) {
    j->media = calloc(j->n_media, sizeof *j->media);
    if (!j->media) {
      job_free(j);
      return CP_ENOMEM;
    }
  }
  resume(j, req->progress);

  if (j->n_media && j->next == 0) {
    err = req->host->media_load(req, &post->media[0], on_media, j);
  } else {
    err = cp_cu_call_later(d->host, 0, deferred, j);
  }
  if (err) {
    job_free(j);
    return err;
  }
  return 0;
}

static int discord_login_check(void *instance, const struct cp_publish_req *req) {
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return CP_ENOMEM;
  j->d = instance;
  j->req = req;
  j->stage = LOGIN;
  int err = get_webhook(j);
  if (err) {
    job_free(j);
    return err;
  }
  return 0;
}

/* ---- engagement --------------------------------------------------------------------------- */

/* The answer to GET .../messages/<id>: the message with its reactions, or why not. */
static void on_message(struct job *j, const struct cp_http_resp *resp, json_t *root,
                       struct cp_result *res) {
  json_t *code = json_object_get(root, "code");
  if (res->outcome == CP_OUTCOME_OK && !json_is_array(json_object_get(root, "reactions")) &&
      json_object_get(root, "reactions")) {
    res->outcome = CP_OUTCOME_UNKNOWN; /* "reactions" that is not a list: not a message */
  }
  if (res->outcome == CP_OUTCOME_UNKNOWN) {
    /* A read changes nothing: asking again is harmless. A 2xx without a message id is not the
     * message (a proxy page, say). */
    res->outcome = CP_OUTCOME_RETRY;
    if (resp->status >= 200 && resp->status < 300) {
      res->err = CP_EPARSE;
      cp_cu_result_msg(res, "message %s: HTTP %ld, but the answer is not a message", j->first_id,
                       resp->status);
      finish(j, res);
      return;
    }
  }
  if (res->outcome != CP_OUTCOME_OK) {
    if (resp->status == 404 && json_is_integer(code) && json_integer_value(code) == 10008) {
      cp_cu_result_msg(res, "message %s: the post was deleted: HTTP 404: %s", j->first_id,
                       json_string_value(json_object_get(root, "message"))
                           ? json_string_value(json_object_get(root, "message"))
                           : "Unknown Message");
    } else {
      refine(j, resp, root, res);
      cp_cu_result_msg(res, "message %s: %s", j->first_id, res->message);
    }
    finish(j, res);
    return;
  }
  struct cp_result ok = {
      .outcome = CP_OUTCOME_OK,
      .http_status = resp->status,
      .has_engagement = true,
      .replies = -1, /* webhook messages have no reply count */
      .reposts = -1,
      .likes = 0,
      .quotes = -1,
      .views = -1,
  };
  size_t i;
  json_t *r;
  json_array_foreach(json_object_get(root, "reactions"), i, r) {
    json_t *n = json_object_get(r, "count");
    if (json_is_integer(n) && json_integer_value(n) > 0)
      ok.likes += (int64_t)json_integer_value(n);
  }
  finish(j, &ok);
}

/* The webhook URL with "/messages/<id>" added to its path (its query, such as thread_id, kept).
 * Returns a malloc'd string (a secret: it holds the token) or NULL. */
static char *message_url(const struct discord *d, const char *id) {
  CURLU *u = curl_url();
  char *path = NULL, *full = NULL, *np = NULL, *out = NULL;
  if (!u)
    return NULL;
  if (curl_url_set(u, CURLUPART_URL, d->url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK) {
    size_t pl = strlen(path);
    while (pl > 0 && path[pl - 1] == '/')
      pl--;
    if (asprintf(&np, "%.*s/messages/%s", (int)pl, path, id) >= 0 &&
        curl_url_set(u, CURLUPART_PATH, np, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_URL, &full, 0) == CURLUE_OK)
      out = strdup(full);
  }
  if (full) {
    explicit_bzero(full, strlen(full));
    curl_free(full);
  }
  if (path) {
    explicit_bzero(path, strlen(path));
    curl_free(path);
  }
  wipe_free(np);
  curl_url_cleanup(u);
  return out;
}

static int discord_engagement(void *instance, const char *remote_id, const char *remote_url,
                              const struct cp_publish_req *req) {
  struct discord *d = instance;
  (void)remote_url;
  size_t n = remote_id ? strlen(remote_id) : 0;
  if (n == 0 || n >= 32 || strspn(remote_id, "0123456789") != n)
    return CP_EINVAL; /* not a message id (snowflake) this connector reported */
  struct job *j = calloc(1, sizeof *j);
  char *url = message_url(d, remote_id);
  if (!j || !url) {
    free(j);
    wipe_free(url);
    return CP_ENOMEM;
  }
  j->d = d;
  j->req = req;
  j->stage = ENGAGEMENT;
  snprintf(j->first_id, sizeof j->first_id, "%s", remote_id);
  struct cp_http_header hdrs[] = {{"Accept", "application/json"}};
  struct cp_http_req hr = {.method = "GET", .url = url, .headers = hdrs, .n_headers = 1};
  int err = d->host->http_request(d->host, &hr, on_response, j);
  wipe_free(url);
  if (err)
    job_free(j);
  return err;
}

static enum cp_outcome discord_classify(void *instance, const struct cp_http_resp *resp,
                                        enum cp_outcome dflt) {
  long s = resp->status;
  if (s >= 200 && s < 300) {
    /* With wait=true the answer is the message; a 204 or anything without an id does not say
     * whether the message was saved. */
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *id = json_object_get(root, "id");
    bool ok = json_is_string(id) || json_is_integer(id);
    json_decref(root);
    return ok ? CP_OUTCOME_OK : CP_OUTCOME_UNKNOWN;
  }
  if (s == 429)
    return CP_OUTCOME_RATE_LIMITED;
  if (s == 401 || s == 403)
    return CP_OUTCOME_AUTH;
  if (s == 404) /* Unknown Webhook: deleted; posting again cannot help */
    return CP_OUTCOME_PERMANENT;
  return dflt;
}

const struct cp_connector cp_connector_discord = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "discord",
    .description = "Discord webhook: messages with images, without @everyone pings",
    .caps = CP_CAP_MEDIA | CP_CAP_THREADS | CP_CAP_ENGAGEMENT,
    .init = discord_init,
    .validate = discord_validate,
    .publish = discord_publish,
    .classify = discord_classify,
    .login_check = discord_login_check,
    .free = discord_free,
    .post_options = post_options,
    .engagement = discord_engagement,
};
