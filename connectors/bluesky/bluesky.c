/* The Bluesky connector: posts to an AT Protocol PDS (bsky.social or any other) with an app
 * password.
 *
 *   [channel bluesky]
 *   type = bluesky
 *   handle = example.bsky.social          ; or the account's e-mail or DID
 *   app_password_file = bluesky.key       ; or app_password_env = BLUESKY_APP_PASSWORD
 *   service = https://bsky.social         ; the PDS; plain http only to this machine
 *
 * Session: com.atproto.server.createSession gives an access token (2 h) and a refresh token
 * (90 d), kept in memory for the channel. An expired access token comes back as 400
 * {"error":"ExpiredToken"}: the request is repeated once after com.atproto.server.refreshSession;
 * if the refresh fails too, the outcome is AUTH (the channel pauses) and the next attempt logs in
 * anew. Any other rejected token leads to one fresh createSession.
 *
 * A post is one app.bsky.feed.post record written with com.atproto.repo.putRecord under a record
 * key derived from the post's idempotency key (and its due time: a TID), with swapRecord null
 * (create only). A resend writes the identical record (createdAt is the due time, not the wall
 * clock), which the PDS answers as a no-op with the same uri and cid, so no resend can
 * duplicate a post (createRecord with a taken key answers 500, which would look transient). If
 * the key holds a different record (400 InvalidSwap), getRecord tells whether it is this post
 * from an earlier attempt (same createdAt: published, fine) or a collision (PERMANENT).
 *
 * Text: 300 graphemes and 3000 bytes. Facets (UTF-8 byte offsets) mark links, mentions (handles
 * resolved to DIDs with com.atproto.identity.resolveHandle; a handle that does not resolve stays
 * plain text) and hashtags, detected the way Bluesky's own client does. Images (at most 4, at most
 * 1,000,000 bytes each) are uploaded with com.atproto.repo.uploadBlob and embedded with their alt
 * text; without images, the first link becomes a link card (app.bsky.embed.external).
 *
 * Threads: an over-long text with thread = yes is split (cp_text_split, graphemes) and posted as
 * a reply chain; each part has its own record key, and "1=<uri>|<cid>;2=..." is saved as progress
 * after each part, so a later attempt continues where the last one stopped.
 *
 * Engagement: app.bsky.feed.getPosts?uris=<the post's at:// URI> (remote_id; for a thread its
 * first part) with the session's token, sent to the PDS, which passes app.bsky.* on to its
 * AppView: only the AppView indexes the likes, reposts and replies that live in other accounts'
 * repositories. A PDS without an AppView answers 400 "No service configured". A deleted post is
 * missing from the answer's posts. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
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
#include <uv.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"

#define DEFAULT_SERVICE "https://bsky.social"
#define MAX_GRAPHEMES 300
#define MAX_IMAGES 4
#define MAX_IMAGE_BYTES 1000000
#define MAX_LANGS 3
#define MAX_TAG_GRAPHEMES 64
#define MAX_TAG_BYTES 640
#define POST_COLLECTION "app.bsky.feed.post"

struct bsky {
  const struct cp_host *host;
  char *name;
  char *service; /* without a trailing slash */
  char *identifier;
  char *password;
  size_t max_chars; /* 0: 300 graphemes */
  /* The session (all NULL when logged out). */
  char *access;
  char *refresh;
  char *did;
  char *handle; /* as the PDS reports it */
};

enum step {
  ST_NONE,
  ST_LOGIN,   /* com.atproto.server.createSession */
  ST_REFRESH, /* com.atproto.server.refreshSession */
  ST_CHECK,   /* com.atproto.server.getSession */
  ST_RESOLVE, /* com.atproto.identity.resolveHandle */
  ST_MEDIA,   /* host->media_load */
  ST_UPLOAD,  /* com.atproto.repo.uploadBlob */
  ST_PUT,     /* com.atproto.repo.putRecord */
  ST_GET,     /* com.atproto.repo.getRecord, after InvalidSwap */
  ST_POSTS,   /* app.bsky.feed.getPosts (engagement) */
};

static const char *const step_nsid[] = {
    [ST_NONE] = "",
    [ST_LOGIN] = "com.atproto.server.createSession",
    [ST_REFRESH] = "com.atproto.server.refreshSession",
    [ST_CHECK] = "com.atproto.server.getSession",
    [ST_RESOLVE] = "com.atproto.identity.resolveHandle",
    [ST_MEDIA] = "media",
    [ST_UPLOAD] = "com.atproto.repo.uploadBlob",
    [ST_PUT] = "com.atproto.repo.putRecord",
    [ST_GET] = "com.atproto.repo.getRecord",
    [ST_POSTS] = "app.bsky.feed.getPosts",
};

enum facet_kind { F_LINK, F_MENTION, F_TAG };

struct facet {
  size_t start, end; /* UTF-8 byte offsets into the part's text, end exclusive */
  enum facet_kind kind;
  char *value; /* the URL, the handle (without '@') or the tag (without '#') */
  char *did;   /* a mention's DID once resolved */
  bool looked_up;
};

struct part_ref {
  char *uri;
  char *cid;
};

struct job {
  struct bsky *b;
  const struct cp_publish_req *req;
  const struct cp_post *post; /* NULL for a login check or an engagement read */
  char *uri;                  /* the post whose engagement is read, or NULL */
  uv_timer_t timer;           /* defers the first step out of publish(); closed at the end */
  enum step step;
  bool auth_retried; /* the request in progress was already repeated after a new token */
  char post_id[CP_POST_ID_LEN + 1];
  char key[128];
  char **parts;
  size_t n_parts;
  struct part_ref *refs; /* one per part; set when the part is published */
  size_t cur;            /* the part being published */
  bool prepared;         /* facets of the current part detected */
  struct facet *facets;
  size_t n_facets;
  size_t resolving; /* index of the mention being resolved */
  json_t *images;   /* app.bsky.embed.images#image entries for the first part */
  size_t media_i;   /* next media item to load */
  char rkey[16];
  char created[32];
  long last_status; /* of the last record written */
};

static const char *const known_keys[] = {"service", "handle", "app_password_file",
                                         "app_password_env", NULL};
static const char *const post_options[] = {"language", NULL};

static void run(struct job *j);

/* ---- small helpers ------------------------------------------------------------------------ */

static void drop_session(struct bsky *b) {
  free(b->access);
  free(b->refresh);
  free(b->did);
  free(b->handle);
  b->access = b->refresh = b->did = b->handle = NULL;
}

static void bsky_free(void *instance) {
  struct bsky *b = instance;
  if (!b)
    return;
  drop_session(b);
  free(b->name);
  free(b->service);
  free(b->identifier);
  if (b->password)
    b->host->secret_free(b->password);
  free(b);
}

static int bsky_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                     void **instance) {
  int line = conf->line, sline = conf->line;
  const char *service = conf->get(conf, "service", &sline);
  const char *ident = conf->get(conf, "handle", &line);
  bool is_http = false;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  if (!ident || !*ident) {
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] needs 'handle = NAME.bsky.social' (the account's handle, "
              "e-mail or DID)",
              conf->file, conf->line, conf->name);
    return CP_ECONFIG;
  }
  if (!service || !*service)
    service = DEFAULT_SERVICE;
  else if (!cp_cu_url_ok(service, &is_http)) {
    host->log(host, CP_LOG_ERROR,
              is_http ? "%s:%d: [channel %s] service: '%s' is plain http to another machine: the "
                        "app password would travel unencrypted; use https"
                      : "%s:%d: [channel %s] service: '%s' is not an http(s) URL such as "
                        "https://bsky.social",
              conf->file, sline, conf->name, service);
    return CP_ECONFIG;
  }

  struct bsky *b = calloc(1, sizeof *b);
  if (!b)
    return CP_ENOMEM;
  b->host = host;
  b->name = strdup(conf->name ? conf->name : "bluesky");
  b->service = strdup(service);
  b->identifier = strdup(ident[0] == '@' ? ident + 1 : ident);
  if (!b->name || !b->service || !b->identifier) {
    bsky_free(b);
    return CP_ENOMEM;
  }
  for (size_t n = strlen(b->service); n > 0 && b->service[n - 1] == '/'; n--)
    b->service[n - 1] = '\0';

  if (cp_cu_conf_count(host, conf, "max_chars", 1, ~0ULL, "a positive number of graphemes",
                       &b->max_chars) < 0) {
    bsky_free(b);
    return CP_ECONFIG;
  }
  err = host->secret(host, conf, "app_password", &b->password);
  if (err == CP_ENOTFOUND) {
    b->password = NULL;
    host->log(host, CP_LOG_ERROR,
              "%s:%d: [channel %s] needs 'app_password_file = FILE' or 'app_password_env = "
              "VARIABLE' (an app password from Settings > Privacy and security > App passwords)",
              conf->file, conf->line, conf->name);
    bsky_free(b);
    return CP_ECONFIG;
  }
  if (err) {
    b->password = NULL;
    bsky_free(b); /* host->secret logged why */
    return err;
  }
  *instance = b;
  return 0;
}

/* ---- checks without I/O -------------------------------------------------------------------- */

static size_t limit_of(const struct bsky *b) {
  return b->max_chars ? b->max_chars : MAX_GRAPHEMES;
}

/* Splits the post's text into the texts of its records: one, or a thread. Returns 0, CP_ELIMIT
 * (too long and not a thread; *count and *lim say how long) or CP_EINVAL / CP_ENOMEM. */
static int split_post(const struct bsky *b, const struct cp_post *post, char ***parts, size_t *n,
                      size_t *count, struct cp_text_limit *lim) {
  const char *text = post->text ? post->text : "";
  if (cp_text_fits("bluesky", text, b->max_chars, count, lim)) {
    *parts = calloc(1, sizeof **parts);
    if (!*parts)
      return CP_ENOMEM;
    (*parts)[0] = strdup(text);
    if (!(*parts)[0]) {
      free(*parts);
      return CP_ENOMEM;
    }
    *n = 1;
    return 0;
  }
  if (!post->thread)
    return CP_ELIMIT;
  int err = cp_text_split(text, limit_of(b), CP_COUNT_GRAPHEMES, post->numbered, parts, n);
  if (err)
    return err;
  /* The split counts graphemes; the 3000-byte limit can still bite (long emoji sequences). */
  for (size_t i = 0; i < *n; i++)
    if (!cp_text_fits("bluesky", (*parts)[i], b->max_chars, count, lim)) {
      cp_text_split_free(*parts, *n);
      *parts = NULL;
      *n = 0;
      return CP_ELIMIT;
    }
  return 0;
}

/* Reads the language option ("en", "en, de", "pt-BR") into a JSON array (if langs is not
 * NULL). Returns 0, or -1 with the reason in msg. */
static int parse_langs(const char *v, json_t **langs, char *msg, size_t size) {
  json_t *arr = json_array();
  char *copy = strdup(v);
  int rc = 0;

  if (!arr || !copy) {
    snprintf(msg, size, "out of memory");
    rc = -1;
    goto out;
  }
  char *save = NULL;
  for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
    /* BCP 47 in the shape the lexicon expects: a 2-3 letter language, then subtags. */
    size_t i = 0, seg = 0;
    bool ok = true;
    while (tok[i] && isalpha((unsigned char)tok[i]))
      i++;
    ok = i >= 2 && i <= 3;
    while (ok && tok[i] == '-') {
      i++;
      for (seg = 0; isalnum((unsigned char)tok[i]); seg++)
        i++;
      ok = seg >= 1 && seg <= 8;
    }
    if (!ok || tok[i]) {
      snprintf(msg, size,
               "language: '%s' is not a language tag such as en, de or pt-BR: fix the "
               "[calpost] language setting",
               tok);
      rc = -1;
      goto out;
    }
    json_array_append_new(arr, json_string(tok));
  }
  if (json_array_size(arr) == 0 || json_array_size(arr) > MAX_LANGS) {
    snprintf(msg, size, "language: '%s': give 1 to %d language tags, such as 'en' or 'en, de'", v,
             MAX_LANGS);
    rc = -1;
    goto out;
  }
  if (langs) {
    *langs = arr;
    arr = NULL;
  }
out:
  json_decref(arr);
  free(copy);
  return rc;
}

static int bsky_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  static const char *const images[] = {"png", "jpg", "jpeg", "gif", "webp", NULL};
  static const char *const videos[] = {"mp4", "m4v", "mov",  "webm", "mkv",
                                       "avi", "mpg", "mpeg", NULL};
  struct bsky *b = instance;
  const char *text = post->text ? post->text : "";
  char msg[300], ext[16];
  bool bad = false;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no images: write a description or add an image");
    return CP_EINVAL;
  }
  char **parts = NULL;
  size_t n = 0, count = 0;
  struct cp_text_limit lim = {0};
  int err = split_post(b, post, &parts, &n, &count, &lim);
  if (err == CP_ELIMIT) {
    if (lim.unit && !strcmp(lim.unit, "bytes"))
      snprintf(msg, sizeof msg, "%s%zu bytes of UTF-8, Bluesky allows %zu bytes: shorten the text",
               post->thread ? "a part of the thread has " : "", count, lim.max);
    else
      snprintf(msg, sizeof msg,
               "%zu graphemes, Bluesky allows %zu: shorten the text or set thread = yes in the "
               "[calpost] section",
               count, lim.max);
    diag(arg, true, msg);
    bad = true;
  } else if (err) {
    snprintf(msg, sizeof msg, "the text cannot be split into a thread: %s", cp_strerror(err));
    diag(arg, true, msg);
    bad = true;
  }
  cp_text_split_free(parts, n);

  if (post->n_media > MAX_IMAGES) {
    snprintf(msg, sizeof msg, "%zu images, Bluesky allows %d per post: remove %zu", post->n_media,
             MAX_IMAGES, post->n_media - MAX_IMAGES);
    diag(arg, true, msg);
    bad = true;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    cp_cu_media_ext(post->media[i].src, ext, sizeof ext, false);
    if (!*ext || cp_cu_in_list(ext, images))
      continue;
    if (cp_cu_in_list(ext, videos))
      snprintf(msg, sizeof msg,
               "media %s: videos are not supported on Bluesky by calpost: use an image (PNG, "
               "JPEG, GIF or WebP)",
               post->media[i].src);
    else
      snprintf(msg, sizeof msg,
               "media %s: '.%s' is not an image Bluesky shows: use PNG, JPEG, GIF or WebP",
               post->media[i].src, ext);
    diag(arg, true, msg);
    bad = true;
  }
  const char *lang = cp_post_option(post, "language");
  if (lang && parse_langs(lang, NULL, msg, sizeof msg)) {
    diag(arg, true, msg);
    bad = true;
  }
  return bad ? CP_EINVAL : 0;
}

/* ---- record keys and times ------------------------------------------------------------------ */

/* The record key of part `part` (0-based) of the post with idempotency key `key`: a TID (13
 * base32-sortable characters: the app.bsky.feed.post lexicon asks for one) whose time is the due
 * second plus microseconds, and clock id, taken from a hash of the key and the part. Stable
 * across attempts and restarts; two posts due the same second collide with odds of 1 in 2^30. */
static void rkey_for(const char *key, size_t part, int64_t due, char out[16]) {
  static const char s32[] = "234567abcdefghijklmnopqrstuvwxyz";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  char num[24];
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int n = snprintf(num, sizeof num, "/%zu", part + 1);

  memset(md, 0, sizeof md);
  if (ctx) {
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, key, strlen(key));
    EVP_DigestUpdate(ctx, num, (size_t)n);
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
  }
  uint64_t h = 0;
  for (int i = 0; i < 8; i++)
    h = h << 8 | md[i];
  uint64_t micros = (uint64_t)(due > 0 ? due : 0) * 1000000u + h % 1000000u;
  uint64_t v = ((micros << 10) | ((h >> 20) & 1023u)) & ~(UINT64_C(1) << 63);
  for (int i = 12; i >= 0; i--) {
    out[i] = s32[v & 31];
    v >>= 5;
  }
  out[13] = '\0';
}

/* createdAt of part `part`: the due time (so that a resend writes the same record), one
 * millisecond later per part so that the parts of a thread keep their order. */
static void created_at(int64_t due, size_t part, char out[32]) {
  time_t t = (time_t)due;
  struct tm tm;
  gmtime_r(&t, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(part < 999 ? part : 999));
}

/* ---- facets --------------------------------------------------------------------------------- */

/* JavaScript's \s, which Bluesky's facet detection uses. */
static bool is_space(utf8proc_int32_t c) {
  return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000 || c == 0xfeff;
}

static bool is_punct(utf8proc_int32_t c) {
  utf8proc_category_t cat = utf8proc_category(c);
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

/* Characters that end a hashtag besides white space (soft hyphen, word joiner, zero widths,
 * the enclosing keycap). */
static bool ends_tag(utf8proc_int32_t c) {
  return is_space(c) || c == 0xad || c == 0x2060 || c == 0x200a || c == 0x200b || c == 0x200c ||
         c == 0x200d || c == 0x20e2;
}

/* Decodes the code point at s[i]; returns its length (1 for an invalid byte). */
static size_t cp_at(const char *s, size_t i, utf8proc_int32_t *c) {
  utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s + i, -1, c);
  if (n <= 0) {
    *c = -1;
    return 1;
  }
  return (size_t)n;
}

/* The code point that ends just before s[i], or -1 at the start. */
static utf8proc_int32_t cp_before(const char *s, size_t i) {
  if (i == 0)
    return -1;
  size_t k = i - 1;
  while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80)
    k--;
  utf8proc_int32_t c;
  cp_at(s, k, &c);
  return c;
}

static bool overlaps(const struct facet *f, size_t n, size_t start, size_t end) {
  for (size_t i = 0; i < n; i++)
    if (start < f[i].end && f[i].start < end)
      return true;
  return false;
}

/* The handle syntax of the AT Protocol: two or more labels of letters, digits and hyphens, no
 * label starting or ending with a hyphen, the last one starting with a letter. */
static bool handle_syntax(const char *h, size_t len) {
  size_t labels = 0, lab = 0;
  if (len == 0 || len > 253)
    return false;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || h[i] == '.') {
      if (lab == 0 || lab > 63 || h[i - lab] == '-' || h[i - 1] == '-')
        return false;
      labels++;
      if (i == len && !isalpha((unsigned char)h[i - lab]))
        return false;
      lab = 0;
    } else if (isalnum((unsigned char)h[i]) || h[i] == '-') {
      lab++;
    } else {
      return false;
    }
  }
  return labels >= 2;
}

static int add_facet(struct job *j, size_t start, size_t end, enum facet_kind kind,
                     const char *value, size_t vlen) {
  struct facet *f = realloc(j->facets, (j->n_facets + 1) * sizeof *f);
  if (!f)
    return CP_ENOMEM;
  j->facets = f;
  f += j->n_facets;
  *f = (struct facet){.start = start, .end = end, .kind = kind, .value = strndup(value, vlen)};
  if (!f->value)
    return CP_ENOMEM;
  j->n_facets++;
  return 0;
}

static void clear_facets(struct job *j) {
  for (size_t i = 0; i < j->n_facets; i++) {
    free(j->facets[i].value);
    free(j->facets[i].did);
  }
  free(j->facets);
  j->facets = NULL;
  j->n_facets = 0;
}

static int facet_cmp(const void *a, const void *b) {
  const struct facet *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

/* Finds the links, mentions and hashtags of text, as Bluesky's client (@atproto/api
 * detectFacets) does: links are http(s) URLs (cp_text_find_url); a mention is "@handle" at the
 * start, after white space or "("; a hashtag is "#tag" at the start or after white space,
 * without trailing punctuation, not only digits, at most 64 graphemes. */
static int detect_facets(struct job *j, const char *text) {
  size_t len = strlen(text), ulen = 0;
  int err = 0;

  for (const char *u = cp_text_find_url(text, &ulen); u && !err;
       u = cp_text_find_url(u + ulen, &ulen))
    err = add_facet(j, (size_t)(u - text), (size_t)(u - text) + ulen, F_LINK, u, ulen);
  size_t n_links = j->n_facets;

  for (size_t i = 0; i < len && !err;) {
    utf8proc_int32_t c, prev = cp_before(text, i);
    size_t clen = cp_at(text, i, &c);
    bool boundary = prev < 0 || is_space(prev);

    if (c == '@' && (boundary || prev == '(')) {
      size_t s = i + 1, e = s;
      while (e < len && (isalnum((unsigned char)text[e]) || text[e] == '.' || text[e] == '-'))
        e++;
      bool word_follows = e < len && text[e] == '_';
      while (e > s && (text[e - 1] == '.' || text[e - 1] == '-'))
        e--;
      if (!word_follows && handle_syntax(text + s, e - s) && !overlaps(j->facets, n_links, i, e)) {
        err = add_facet(j, i, e, F_MENTION, text + s, e - s);
        i = e;
        continue;
      }
    } else if ((c == '#' || c == 0xff03) && boundary) {
      size_t s = i + clen, e = s;
      utf8proc_int32_t first = -1;
      if (s < len)
        cp_at(text, s, &first);
      while (e < len) {
        utf8proc_int32_t d;
        size_t dl = cp_at(text, e, &d);
        if (d < 0 || ends_tag(d))
          break;
        e += dl;
      }
      size_t run_end = e;
      while (e > s) { /* trailing punctuation is not part of the tag */
        utf8proc_int32_t d = cp_before(text, e);
        if (!is_punct(d))
          break;
        size_t k = e - 1;
        while (k > s && ((unsigned char)text[k] & 0xc0) == 0x80)
          k--;
        e = k;
      }
      bool letter = false;
      for (size_t k = s; k < e;) {
        utf8proc_int32_t d;
        k += cp_at(text, k, &d);
        if (!(d >= '0' && d <= '9') && !is_punct(d))
          letter = true;
      }
      if (first != 0xfe0f && letter && e - s <= MAX_TAG_BYTES &&
          !overlaps(j->facets, n_links, i, e)) {
        char *tag = strndup(text + s, e - s);
        if (!tag)
          return CP_ENOMEM;
        bool fits = cp_text_graphemes(tag) <= MAX_TAG_GRAPHEMES;
        free(tag);
        if (fits)
          err = add_facet(j, i, e, F_TAG, text + s, e - s);
      }
      i = run_end > i + clen ? run_end : i + clen;
      continue;
    }
    i += clen;
  }
  if (!err && j->n_facets > 1)
    qsort(j->facets, j->n_facets, sizeof *j->facets, facet_cmp);
  return err;
}

static json_t *facets_json(const struct job *j) {
  json_t *arr = json_array();
  for (size_t i = 0; arr && i < j->n_facets; i++) {
    const struct facet *f = &j->facets[i];
    json_t *feat;
    if (f->kind == F_LINK)
      feat = json_pack("{s:s,s:s}", "$type", "app.bsky.richtext.facet#link", "uri", f->value);
    else if (f->kind == F_TAG)
      feat = json_pack("{s:s,s:s}", "$type", "app.bsky.richtext.facet#tag", "tag", f->value);
    else if (f->did)
      feat = json_pack("{s:s,s:s}", "$type", "app.bsky.richtext.facet#mention", "did", f->did);
    else
      continue; /* a handle that did not resolve is plain text */
    if (json_array_append_new(arr, json_pack("{s:{s:I,s:I},s:[o]}", "index", "byteStart",
                                             (json_int_t)f->start, "byteEnd", (json_int_t)f->end,
                                             "features", feat))) {
      json_decref(arr);
      return NULL;
    }
  }
  return arr;
}

/* ---- the job -------------------------------------------------------------------------------- */

static void job_closed(uv_handle_t *h) {
  struct job *j = h->data;
  clear_facets(j);
  cp_text_split_free(j->parts, j->n_parts);
  for (size_t i = 0; j->refs && i < j->n_parts; i++) {
    free(j->refs[i].uri);
    free(j->refs[i].cid);
  }
  free(j->refs);
  json_decref(j->images);
  free(j->uri);
  free(j);
}

/* The rkey of an at:// URI (its last path segment). */
static const char *uri_rkey(const char *uri) {
  const char *slash = strrchr(uri, '/');
  return slash ? slash + 1 : uri;
}

/* Completes the publish or login check with res, then releases the job. */
static void finish(struct job *j, struct cp_result *res) {
  struct bsky *b = j->b;
  const struct cp_host *host = b->host;

  if (res->outcome == CP_OUTCOME_AUTH)
    drop_session(b); /* the next attempt logs in anew */
  if (res->outcome == CP_OUTCOME_OK && j->post && j->n_parts && j->refs[0].uri) {
    const struct part_ref *root = &j->refs[0];
    cp_connector_copy_text(res->remote_id, sizeof res->remote_id, root->uri, strlen(root->uri));
    snprintf(res->remote_url, sizeof res->remote_url, "https://bsky.app/profile/%s/post/%s",
             b->handle && strcmp(b->handle, "handle.invalid") ? b->handle
             : b->did                                         ? b->did
                                                              : b->identifier,
             uri_rkey(root->uri));
  }
  if (j->post) {
    if (res->outcome == CP_OUTCOME_OK)
      host->log(host, CP_LOG_INFO, "post %s published: %s%s", j->post_id, res->remote_url,
                j->n_parts > 1 ? " (thread)" : "");
    else
      host->log(host, CP_LOG_WARN, "post %s not published (%s): %s", j->post_id,
                cp_outcome_name(res->outcome), res->message);
  } else if (j->uri && res->outcome != CP_OUTCOME_OK) {
    host->log(host, CP_LOG_INFO, "engagement of %s not read (%s): %s", j->uri,
              cp_outcome_name(res->outcome), res->message);
  }
  j->step = ST_NONE;
  const struct cp_publish_req *req = j->req;
  j->req = NULL;
  j->post = NULL;
  uv_close((uv_handle_t *)&j->timer, job_closed);
  host->complete(req, res);
}

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

/* A local failure: out of memory is worth another try, anything else is not. */
static void finish_local(struct job *j, int err) {
  finish_with(j, err == CP_ENOMEM || err == -ENOMEM ? CP_OUTCOME_RETRY : CP_OUTCOME_PERMANENT, err,
              "%s: %s", step_nsid[j->step], cp_strerror(err));
}

static void on_response(const struct cp_http_resp *resp, void *data);

/* Starts one XRPC call: method on /xrpc/nsid with query pairs (name, value, ..., NULL; values
 * URL-encoded), an optional body, and a bearer token. Returns 0 or a negative CP_E*. */
static int xrpc(struct job *j, enum step step, const char *method, const char *const *query,
                const char *ctype, const void *body, size_t len, const char *bearer,
                bool idempotent) {
  struct bsky *b = j->b;
  struct cp_http_header hdrs[3];
  size_t nh = 0;
  char *url = NULL, *auth = NULL;
  int err = CP_ENOMEM;
  CURLU *u = curl_url();
  size_t blen = strlen(b->service) + strlen(step_nsid[step]) + 8;
  char *base = malloc(blen);

  if (!u || !base)
    goto out;
  snprintf(base, blen, "%s/xrpc/%s", b->service, step_nsid[step]);
  if (curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK) {
    err = CP_EINVAL;
    goto out;
  }
  for (size_t i = 0; query && query[i]; i += 2) {
    size_t ql = strlen(query[i]) + strlen(query[i + 1]) + 2;
    char *q = malloc(ql);
    if (!q)
      goto out;
    snprintf(q, ql, "%s=%s", query[i], query[i + 1]);
    CURLUcode uc = curl_url_set(u, CURLUPART_QUERY, q, CURLU_APPENDQUERY | CURLU_URLENCODE);
    free(q);
    if (uc != CURLUE_OK)
      goto out;
  }
  if (curl_url_get(u, CURLUPART_URL, &url, 0) != CURLUE_OK)
    goto out;
  hdrs[nh++] = (struct cp_http_header){"Accept", "application/json"};
  if (ctype)
    hdrs[nh++] = (struct cp_http_header){"Content-Type", ctype};
  if (bearer) {
    size_t al = strlen(bearer) + 8;
    auth = malloc(al);
    if (!auth)
      goto out;
    snprintf(auth, al, "Bearer %s", bearer);
    hdrs[nh++] = (struct cp_http_header){"Authorization", auth};
  }
  struct cp_http_req hr = {
      .method = method,
      .url = url,
      .headers = hdrs,
      .n_headers = nh,
      .body = body,
      .body_len = len,
      .idempotent = idempotent,
  };
  j->step = step;
  err = b->host->http_request(b->host, &hr, on_response, j);
out:
  if (auth) {
    explicit_bzero(auth, strlen(auth));
    free(auth);
  }
  curl_free(url);
  curl_url_cleanup(u);
  free(base);
  return err;
}

static int start_login(struct job *j) {
  struct bsky *b = j->b;
  json_t *o = json_pack("{s:s,s:s}", "identifier", b->identifier, "password", b->password);
  char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!body)
    return CP_ENOMEM;
  int err = xrpc(j, ST_LOGIN, "POST", NULL, "application/json", body, strlen(body), NULL, false);
  explicit_bzero(body, strlen(body));
  free(body);
  return err;
}

static int start_refresh(struct job *j) {
  return xrpc(j, ST_REFRESH, "POST", NULL, NULL, NULL, 0, j->b->refresh, false);
}

static int start_put(struct job *j) {
  struct bsky *b = j->b;
  const struct cp_post *post = j->post;
  const char *text = j->parts[j->cur];
  json_t *rec =
      json_pack("{s:s,s:s,s:s}", "$type", POST_COLLECTION, "text", text, "createdAt", j->created);
  char msg[256];
  int err = CP_ENOMEM;

  if (!rec)
    return CP_ENOMEM;
  const char *lang = cp_post_option(post, "language");
  if (lang) {
    json_t *langs = NULL;
    if (parse_langs(lang, &langs, msg, sizeof msg)) {
      json_decref(rec);
      return CP_EINVAL;
    }
    json_object_set_new(rec, "langs", langs);
  }
  json_t *facets = facets_json(j);
  if (!facets)
    goto fail;
  if (json_array_size(facets))
    json_object_set_new(rec, "facets", facets);
  else
    json_decref(facets);
  if (j->cur > 0) {
    const struct part_ref *root = &j->refs[0], *parent = &j->refs[j->cur - 1];
    json_object_set_new(rec, "reply",
                        json_pack("{s:{s:s,s:s},s:{s:s,s:s}}", "root", "uri", root->uri, "cid",
                                  root->cid, "parent", "uri", parent->uri, "cid", parent->cid));
  }
  if (j->cur == 0 && json_array_size(j->images)) {
    json_object_set_new(
        rec, "embed",
        json_pack("{s:s,s:O}", "$type", "app.bsky.embed.images", "images", j->images));
  } else {
    for (size_t i = 0; i < j->n_facets; i++)
      if (j->facets[i].kind == F_LINK) {
        const char *title = post->title && *post->title ? post->title : j->facets[i].value;
        json_object_set_new(rec, "embed",
                            json_pack("{s:s,s:{s:s,s:s,s:s}}", "$type", "app.bsky.embed.external",
                                      "external", "uri", j->facets[i].value, "title", title,
                                      "description", ""));
        break;
      }
  }
  json_t *o = json_pack("{s:s,s:s,s:s,s:n,s:o}", "repo", b->did, "collection", POST_COLLECTION,
                        "rkey", j->rkey, "swapRecord", "record", rec);
  rec = NULL;
  char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!body)
    return CP_ENOMEM;
  /* The record key makes a repeat a no-op: a kept-alive connection may carry it. */
  err = xrpc(j, ST_PUT, "POST", NULL, "application/json", body, strlen(body), b->access, true);
  free(body);
  return err;
fail:
  json_decref(rec);
  return err;
}

static void on_media(const struct cp_media_blob *blob, void *data);

/* Prepares the current part: its record key, createdAt and facets. */
static int prepare_part(struct job *j) {
  clear_facets(j);
  rkey_for(j->key, j->cur, j->post->due, j->rkey);
  created_at(j->post->due, j->cur, j->created);
  int err = detect_facets(j, j->parts[j->cur]);
  if (!err)
    j->prepared = true;
  return err;
}

/* Takes the next step of the job: log in, resolve a mention, upload an image, write a record,
 * or finish. */
static void run(struct job *j) {
  struct bsky *b = j->b;
  int err;

  if (!b->access) {
    err = start_login(j);
    goto check;
  }
  if (j->uri) {
    const char *q[] = {"uris", j->uri, NULL};
    err = xrpc(j, ST_POSTS, "GET", q, NULL, NULL, 0, b->access, false);
    goto check;
  }
  if (!j->post) {
    err = xrpc(j, ST_CHECK, "GET", NULL, NULL, NULL, 0, b->access, false);
    goto check;
  }
  while (j->cur < j->n_parts && j->refs[j->cur].uri) {
    j->cur++;
    j->prepared = false;
  }
  if (j->cur == j->n_parts) {
    struct cp_result res;
    memset(&res, 0, sizeof res);
    res.outcome = CP_OUTCOME_OK;
    res.http_status = j->last_status; /* 0 if every part was published by earlier attempts */
    finish(j, &res);
    return;
  }
  if (!j->prepared) {
    err = prepare_part(j);
    if (err)
      goto check;
  }
  for (size_t i = 0; i < j->n_facets; i++) {
    struct facet *f = &j->facets[i];
    if (f->kind == F_MENTION && !f->looked_up) {
      const char *q[] = {"handle", f->value, NULL};
      j->resolving = i;
      err = xrpc(j, ST_RESOLVE, "GET", q, NULL, NULL, 0, NULL, false);
      goto check;
    }
  }
  if (j->cur == 0 && j->media_i < j->post->n_media) {
    if (b->host->version < 2 || !b->host->media_load) {
      finish_with(j, CP_OUTCOME_PERMANENT, CP_EINVAL,
                  "this calpost host cannot load media; publish without images");
      return;
    }
    const struct cp_media *m = &j->post->media[j->media_i];
    j->step = ST_MEDIA;
    err = b->host->media_load(j->req, m, on_media, j);
    if (err) /* refused before loading: not https, or no such thing */
      finish_with(j, err == CP_ENOMEM ? CP_OUTCOME_RETRY : CP_OUTCOME_PERMANENT, err,
                  "media %s cannot be loaded (%s): use a local file or an https URL", m->src,
                  cp_strerror(err));
    return;
  }
  err = start_put(j);
check:
  if (err)
    finish_local(j, err);
}

static void on_start(uv_timer_t *t) {
  run(t->data);
}

/* ---- answers -------------------------------------------------------------------------------- */

struct answer {
  struct cp_result res;
  json_t *root;      /* the parsed body, or NULL */
  const char *error; /* the XRPC error name, or "" */
};

static const char *jstr(json_t *o, const char *key) {
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : "";
}

/* Classifies resp and words its message: "<nsid>: HTTP 400 InvalidRequest: <message>". */
static void answer_read(struct job *j, const struct cp_http_resp *resp, struct answer *a) {
  const struct cp_host *host = j->b->host;
  char msg[CP_RESULT_MESSAGE_MAX * 2];

  host->http_result(j->req, resp, &a->res);
  a->root = resp->body_len && !resp->err ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  a->error = jstr(a->root, "error");
  if (a->res.outcome == CP_OUTCOME_OK)
    return;
  if (resp->status) {
    const char *m = jstr(a->root, "message");
    snprintf(msg, sizeof msg, "%s: HTTP %ld%s%s%s%s", step_nsid[j->step], resp->status,
             *a->error ? " " : "", a->error, *m ? ": " : "", m);
    if (!a->root && a->res.message[0]) /* not JSON: keep the host's wording of the body */
      snprintf(msg, sizeof msg, "%s: %s", step_nsid[j->step], a->res.message);
  } else {
    snprintf(msg, sizeof msg, "%s: %s", step_nsid[j->step], a->res.message);
  }
  cp_connector_copy_text(a->res.message, sizeof a->res.message, msg, strlen(msg));
  if (a->res.outcome == CP_OUTCOME_RATE_LIMITED) {
    /* RateLimit-Reset is the end of the window in Unix seconds (no Retry-After is sent). */
    const char *reset = NULL;
    for (size_t i = 0; i < resp->n_headers; i++)
      if (!strcasecmp(resp->headers[i].name, "RateLimit-Reset"))
        reset = resp->headers[i].value;
    char *end;
    long long s = reset ? strtoll(reset, &end, 10) : 0;
    if (reset && end != reset && s > 0 && s * 1000 > a->res.retry_at_ms)
      a->res.retry_at_ms = s * 1000;
  }
}

/* Stores the tokens of a createSession or refreshSession answer. Returns false if they are
 * missing. */
static bool take_session(struct bsky *b, json_t *root) {
  const char *acc = jstr(root, "accessJwt"), *ref = jstr(root, "refreshJwt");
  const char *did = jstr(root, "did"), *handle = jstr(root, "handle");
  if (!*acc || !*ref || (!*did && !b->did))
    return false;
  char *nacc = strdup(acc), *nref = strdup(ref);
  char *ndid = strdup(*did ? did : b->did), *nhandle = *handle ? strdup(handle) : NULL;
  if (!nacc || !nref || !ndid) {
    free(nacc);
    free(nref);
    free(ndid);
    free(nhandle);
    return false;
  }
  if (!nhandle && b->handle)
    nhandle = strdup(b->handle);
  drop_session(b);
  b->access = nacc;
  b->refresh = nref;
  b->did = ndid;
  b->handle = nhandle;
  return true;
}

static int save_progress(struct job *j) {
  const struct cp_host *host = j->b->host;
  size_t size = 1;
  for (size_t i = 0; i < j->n_parts; i++)
    if (j->refs[i].uri)
      size += strlen(j->refs[i].uri) + strlen(j->refs[i].cid) + 24;
  char *p = malloc(size), *w = p;
  if (!p)
    return CP_ENOMEM;
  *w = '\0';
  for (size_t i = 0; i < j->n_parts; i++)
    if (j->refs[i].uri)
      w += sprintf(w, "%s%zu=%s|%s", w == p ? "" : ";", i + 1, j->refs[i].uri, j->refs[i].cid);
  int err = host->version >= 2 && host->save_progress ? host->save_progress(j->req, p) : 0;
  if (err)
    host->log(host, CP_LOG_WARN,
              "post %s: cannot save the thread's progress (%s); a later attempt rewrites the "
              "same records",
              j->post_id, cp_strerror(err));
  free(p);
  return 0;
}

/* Part j->cur is published as uri/cid: remember it, save the progress, go on. */
static void part_done(struct job *j, const char *uri, const char *cid) {
  struct part_ref *r = &j->refs[j->cur];
  r->uri = strdup(uri);
  r->cid = strdup(cid);
  if (!r->uri || !r->cid) {
    free(r->uri);
    free(r->cid);
    r->uri = r->cid = NULL;
    finish_local(j, CP_ENOMEM);
    return;
  }
  if (j->n_parts > 1)
    save_progress(j);
  j->cur++;
  j->prepared = false;
  run(j);
}

/* A count of a post view, or -1 if the AppView does not give it. */
static int64_t count_of(json_t *view, const char *key) {
  json_t *v = json_object_get(view, key);
  return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

/* Completes an engagement read from the getPosts answer {"posts": [postView, ...]}. */
static void posts_read(struct job *j, const struct cp_http_resp *resp, json_t *root) {
  json_t *posts = json_object_get(root, "posts"), *view = NULL, *p;
  size_t i;

  if (!json_is_array(posts)) {
    finish_with(j, CP_OUTCOME_RETRY, CP_EPARSE, "%s: HTTP %ld, but the answer has no posts",
                step_nsid[ST_POSTS], resp->status);
    return;
  }
  json_array_foreach(posts, i, p) {
    if (!strcmp(jstr(p, "uri"), j->uri))
      view = p;
  }
  if (!view && json_array_size(posts) == 1 && json_is_object(json_array_get(posts, 0)))
    view = json_array_get(posts, 0); /* the same post, named by a handle instead of the DID */
  if (!view) {
    /* getPosts leaves out what it cannot find instead of failing. */
    finish_with(j, CP_OUTCOME_PERMANENT, 0, "%s: the post was deleted (%s is not found)",
                step_nsid[ST_POSTS], j->uri);
    return;
  }
  struct cp_result res;
  memset(&res, 0, sizeof res);
  res.outcome = CP_OUTCOME_OK;
  res.http_status = resp->status;
  res.has_engagement = true;
  res.replies = count_of(view, "replyCount");
  res.reposts = count_of(view, "repostCount");
  res.likes = count_of(view, "likeCount");
  res.quotes = count_of(view, "quoteCount");
  res.views = -1; /* Bluesky counts no views */
  finish(j, &res);
}

static bool needs_token(enum step s) {
  return s == ST_CHECK || s == ST_UPLOAD || s == ST_PUT || s == ST_POSTS;
}

static void on_response(const struct cp_http_resp *resp, void *data) {
  struct job *j = data;
  struct bsky *b = j->b;
  struct answer a;
  int err = 0;

  answer_read(j, resp, &a);
  enum step step = j->step;

  /* A rejected token: one refresh (expired) or one new login (anything else), then the same
   * request again. */
  if (needs_token(step) && a.res.outcome == CP_OUTCOME_AUTH && !j->auth_retried) {
    j->auth_retried = true;
    b->host->log(b->host, CP_LOG_INFO, "%s: %s; %s", step_nsid[step],
                 *a.error ? a.error : "token rejected",
                 !strcmp(a.error, "ExpiredToken") && b->refresh ? "refreshing the session"
                                                                : "logging in again");
    if (!strcmp(a.error, "ExpiredToken") && b->refresh) {
      err = start_refresh(j);
    } else {
      drop_session(b);
      err = start_login(j);
    }
    goto out;
  }
  if (a.res.outcome != CP_OUTCOME_OK) {
    /* Only a record write can leave its outcome unknown; the rest changed nothing. */
    if (a.res.outcome == CP_OUTCOME_UNKNOWN && step != ST_PUT)
      a.res.outcome = CP_OUTCOME_RETRY;
    switch (step) {
      case ST_LOGIN:
        /* Whatever the PDS objects to in a login is the channel's setup, not this post. */
        if (a.res.outcome == CP_OUTCOME_PERMANENT)
          a.res.outcome = CP_OUTCOME_AUTH;
        if (a.res.outcome == CP_OUTCOME_AUTH) {
          char m[CP_RESULT_MESSAGE_MAX + 64];
          snprintf(m, sizeof m, "%s (check handle and the app password)", a.res.message);
          cp_connector_copy_text(a.res.message, sizeof a.res.message, m, strlen(m));
        }
        break;
      case ST_REFRESH:
        if (a.res.outcome == CP_OUTCOME_PERMANENT)
          a.res.outcome = CP_OUTCOME_AUTH;
        break;
      case ST_RESOLVE:
        if (resp->status == 400) { /* "Unable to resolve handle": plain text */
          struct facet *f = &j->facets[j->resolving];
          b->host->log(b->host, CP_LOG_INFO,
                       "post %s: @%s does not resolve to an account; it stays plain text",
                       j->post_id, f->value);
          for (size_t i = 0; i < j->n_facets; i++)
            if (j->facets[i].kind == F_MENTION && !strcasecmp(j->facets[i].value, f->value))
              j->facets[i].looked_up = true;
          json_decref(a.root);
          run(j);
          return;
        }
        break;
      case ST_POSTS:
        if (resp->status == 400 && strstr(jstr(a.root, "message"), "No service configured")) {
          char m[CP_RESULT_MESSAGE_MAX + 96];
          snprintf(m, sizeof m,
                   "%s (this PDS has no AppView, which alone counts likes and reposts)",
                   a.res.message);
          cp_connector_copy_text(a.res.message, sizeof a.res.message, m, strlen(m));
        }
        break;
      case ST_PUT:
        if (!strcmp(a.error, "InvalidSwap") && b->did) {
          /* The key holds another record: this post from an earlier attempt, or a collision? */
          const char *q[] = {"repo", b->did, "collection", POST_COLLECTION, "rkey", j->rkey, NULL};
          err = xrpc(j, ST_GET, "GET", q, NULL, NULL, 0, NULL, false);
          goto out;
        }
        break;
      default:
        break;
    }
    json_decref(a.root);
    finish(j, &a.res);
    return;
  }
  if (needs_token(step))
    j->auth_retried = false;

  switch (step) {
    case ST_LOGIN:
    case ST_REFRESH:
      if (!take_session(b, a.root)) {
        finish_with(j, CP_OUTCOME_RETRY, CP_EPARSE, "%s: HTTP %ld: the answer has no session",
                    step_nsid[step], resp->status);
        break;
      }
      if (!j->post && !j->uri && step == ST_LOGIN) {
        finish_with(j, CP_OUTCOME_OK, 0, "logged in as %s", b->handle ? b->handle : b->did);
        break;
      }
      run(j);
      break;
    case ST_CHECK:
      finish_with(j, CP_OUTCOME_OK, 0, "session of %s is valid", b->handle ? b->handle : b->did);
      break;
    case ST_POSTS:
      posts_read(j, resp, a.root);
      break;
    case ST_RESOLVE: {
      struct facet *f = &j->facets[j->resolving];
      const char *did = jstr(a.root, "did");
      if (strncmp(did, "did:", 4)) {
        finish_with(j, CP_OUTCOME_RETRY, CP_EPARSE, "%s: HTTP %ld: the answer has no DID",
                    step_nsid[step], resp->status);
        break;
      }
      for (size_t i = 0; i < j->n_facets; i++) {
        struct facet *g = &j->facets[i];
        if (g->kind == F_MENTION && !g->looked_up && !strcasecmp(g->value, f->value)) {
          g->looked_up = true;
          g->did = strdup(did);
          if (!g->did)
            err = CP_ENOMEM;
        }
      }
      if (!err)
        run(j);
      break;
    }
    case ST_UPLOAD: {
      json_t *blob = json_object_get(a.root, "blob");
      const char *alt = j->post->media[j->media_i].alt;
      if (!json_is_object(blob)) {
        finish_with(j, CP_OUTCOME_RETRY, CP_EPARSE, "%s: HTTP %ld: the answer has no blob",
                    step_nsid[step], resp->status);
        break;
      }
      if (!j->images)
        j->images = json_array();
      if (!j->images ||
          json_array_append_new(j->images,
                                json_pack("{s:s,s:O}", "alt", alt ? alt : "", "image", blob))) {
        err = CP_ENOMEM;
        break;
      }
      j->media_i++;
      run(j);
      break;
    }
    case ST_PUT: {
      const char *uri = jstr(a.root, "uri"), *cid = jstr(a.root, "cid");
      if (strncmp(uri, "at://", 5) || !*cid) {
        /* Written or not, a resend with the same key settles it. */
        finish_with(j, CP_OUTCOME_UNKNOWN, CP_EPARSE,
                    "%s: HTTP %ld, but the answer has no uri and cid: %.80s", step_nsid[step],
                    resp->status, resp->body);
        break;
      }
      j->last_status = resp->status;
      part_done(j, uri, cid);
      break;
    }
    case ST_GET: {
      const char *uri = jstr(a.root, "uri"), *cid = jstr(a.root, "cid");
      const char *created = jstr(json_object_get(a.root, "value"), "createdAt");
      if (strncmp(uri, "at://", 5) || !*cid) {
        finish_with(j, CP_OUTCOME_RETRY, CP_EPARSE, "%s: HTTP %ld: the answer has no uri and cid",
                    step_nsid[step], resp->status);
        break;
      }
      if (strcmp(created, j->created)) {
        finish_with(j, CP_OUTCOME_PERMANENT, 0,
                    "record key %s already holds another post (created %s): not published", j->rkey,
                    *created ? created : "at an unknown time");
        break;
      }
      b->host->log(b->host, CP_LOG_WARN,
                   "post %s%s was published by an earlier attempt with other content; kept as "
                   "it is: %s",
                   j->post_id, j->n_parts > 1 ? " (a part of the thread)" : "", uri);
      part_done(j, uri, cid);
      break;
    }
    default:
      break;
  }
out:
  json_decref(a.root);
  if (err)
    finish_local(j, err);
}

static void on_media(const struct cp_media_blob *blob, void *data) {
  struct job *j = data;
  const struct cp_media *m = &j->post->media[j->media_i];
  int err;

  if (blob->err) {
    /* A file that is missing or not an image stays so; a failed download may work later. */
    finish_with(j, cp_cu_media_outcome(blob->err), blob->err, "media %s: %s", m->src,
                *blob->errmsg ? blob->errmsg : cp_strerror(blob->err));
    return;
  }
  if (!blob->content_type || strncmp(blob->content_type, "image/", 6)) {
    finish_with(j, CP_OUTCOME_PERMANENT, CP_EINVAL,
                "media %s: %s is not an image; Bluesky posts take PNG, JPEG, GIF or WebP images",
                m->src, blob->content_type ? blob->content_type : "the file");
    return;
  }
  if (blob->len > MAX_IMAGE_BYTES) {
    finish_with(j, CP_OUTCOME_PERMANENT, CP_ETOOBIG,
                "media %s: %zu bytes, Bluesky allows %d bytes per image: make it smaller", m->src,
                blob->len, MAX_IMAGE_BYTES);
    return;
  }
  /* Uploading the same bytes again is harmless: a blob is named by its hash. */
  err = xrpc(j, ST_UPLOAD, "POST", NULL, blob->content_type, blob->data, blob->len, j->b->access,
             true);
  if (err)
    finish_local(j, err);
}

/* Reads "1=<uri>|<cid>;2=..." into j->refs; entries that do not fit are ignored. */
static void load_progress(struct job *j, const char *progress) {
  char *copy = strdup(progress ? progress : ""), *save = NULL;
  if (!copy)
    return;
  for (char *e = strtok_r(copy, ";", &save); e; e = strtok_r(NULL, ";", &save)) {
    char *end, *eq = strchr(e, '='), *bar = eq ? strchr(eq, '|') : NULL;
    unsigned long n = strtoul(e, &end, 10);
    if (!eq || !bar || end != eq || n < 1 || n > j->n_parts || strncmp(eq + 1, "at://", 5) ||
        !bar[1] || j->refs[n - 1].uri)
      continue;
    *bar = '\0';
    j->refs[n - 1].uri = strdup(eq + 1);
    j->refs[n - 1].cid = strdup(bar + 1);
    if (!j->refs[n - 1].uri || !j->refs[n - 1].cid) {
      free(j->refs[n - 1].uri);
      free(j->refs[n - 1].cid);
      j->refs[n - 1].uri = j->refs[n - 1].cid = NULL;
    }
  }
  free(copy);
}

static struct job *job_new(struct bsky *b, const struct cp_publish_req *req,
                           const struct cp_post *post) {
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  j->b = b;
  j->req = req;
  j->post = post;
  if (post)
    snprintf(j->post_id, sizeof j->post_id, "%s", post->id);
  snprintf(j->key, sizeof j->key, "%s", req->idempotency_key ? req->idempotency_key : "");
  return j;
}

static void job_start(struct job *j) {
  uv_timer_init(j->b->host->loop, &j->timer);
  j->timer.data = j;
  uv_timer_start(&j->timer, on_start, 0, 0);
}

static int bsky_publish(void *instance, const struct cp_post *post,
                        const struct cp_publish_req *req) {
  struct bsky *b = instance;
  size_t count = 0;
  struct cp_text_limit lim;
  char msg[256];

  if (cp_utf8_check(post->text ? post->text : "", strlen(post->text ? post->text : ""), NULL))
    return CP_EUTF8;
  if (post->n_media > MAX_IMAGES)
    return CP_ELIMIT;
  const char *lang = cp_post_option(post, "language");
  if (lang && parse_langs(lang, NULL, msg, sizeof msg))
    return CP_EINVAL;
  if (!req->idempotency_key || !*req->idempotency_key)
    return CP_EINVAL;
  struct job *j = job_new(b, req, post);
  if (!j)
    return CP_ENOMEM;
  int err = split_post(b, post, &j->parts, &j->n_parts, &count, &lim);
  if (!err && !(j->refs = calloc(j->n_parts, sizeof *j->refs)))
    err = CP_ENOMEM;
  if (err) {
    cp_text_split_free(j->parts, j->n_parts);
    free(j);
    return err;
  }
  load_progress(j, req->progress);
  job_start(j);
  return 0;
}

static int bsky_login_check(void *instance, const struct cp_publish_req *req) {
  struct job *j = job_new(instance, req, NULL);
  if (!j)
    return CP_ENOMEM;
  job_start(j);
  return 0;
}

/* The at:// URI of an app.bsky.feed.post record, as publish reports it in remote_id. */
static bool post_uri(const char *s) {
  static const char coll[] = "/" POST_COLLECTION "/";
  if (!s || strncmp(s, "at://", 5) || strlen(s) >= CP_RESULT_ID_MAX)
    return false;
  const char *c = strstr(s + 5, coll);
  if (!c || c == s + 5 || !c[sizeof coll - 1] || strchr(c + sizeof coll - 1, '/'))
    return false;
  for (const char *p = s; *p; p++)
    if ((unsigned char)*p <= ' ' || *p == '?' || *p == '#')
      return false;
  return true;
}

static int bsky_engagement(void *instance, const char *remote_id, const char *remote_url,
                           const struct cp_publish_req *req) {
  (void)remote_url; /* a bsky.app URL names the account by its handle, which can change */
  if (!post_uri(remote_id))
    return CP_EINVAL;
  struct job *j = job_new(instance, req, NULL);
  if (!j)
    return CP_ENOMEM;
  j->uri = strdup(remote_id);
  if (!j->uri) {
    free(j);
    return CP_ENOMEM;
  }
  job_start(j);
  return 0;
}

/* Expired and invalid tokens come back as 400 (not 401) with the reason in "error". */
static enum cp_outcome bsky_classify(void *instance, const struct cp_http_resp *resp,
                                     enum cp_outcome dflt) {
  if (resp->status != 400 || !resp->body_len)
    return dflt;
  json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
  const char *e = jstr(root, "error");
  enum cp_outcome o =
      !strcmp(e, "ExpiredToken") || !strcmp(e, "InvalidToken") ? CP_OUTCOME_AUTH : dflt;
  json_decref(root);
  return o;
}

const struct cp_connector cp_connector_bluesky = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "bluesky",
    .description = "Bluesky / AT Protocol posts (app password): facets, images, link cards, "
                   "threads",
    /* putRecord under a key derived from the post makes every resend a no-op. */
    .caps = CP_CAP_IDEMPOTENT | CP_CAP_MEDIA | CP_CAP_THREADS | CP_CAP_ENGAGEMENT,
    .init = bsky_init,
    .validate = bsky_validate,
    .publish = bsky_publish,
    .classify = bsky_classify,
    .login_check = bsky_login_check,
    .free = bsky_free,
    .post_options = post_options,
    .engagement = bsky_engagement,
};
