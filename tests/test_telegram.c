// ctest-labels: connector
// ctest-connector: telegram
/* The telegram connector against tests/support/testserver.py standing in for the Bot API: the
 * exact requests (sendMessage JSON, sendPhoto and sendMediaGroup multipart), UTF-16 limits, each
 * error class, resuming a multi-message post, login_check, and the bot token never showing up in
 * a log line or a result. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "calpost/err.h"
#include "calpost/text.h"
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_TELEGRAM

#define TOKEN "123456789:AAF-secret_Token-xyz"
#define EMOJI "\xf0\x9f\x98\x80" /* U+1F600: one code point, two UTF-16 units */

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char tokenfile[96];
  char base[96];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  testserver_start(&f->ts);
  testserver_url(&f->ts, "", f->base, sizeof f->base);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-telegram-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->tokenfile, sizeof f->tokenfile, "%s/bot.token", f->dir);
  FILE *fp = fopen(f->tokenfile, "w");
  fputs(TOKEN "\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->tokenfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_telegram);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  /* Whatever happened, the token never reached the log. */
  assert_null(strstr(f->mh.log, TOKEN));
  assert_null(strstr(f->mh.log, "AAF-secret"));
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  unlink(f->tokenfile);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void connect_with(struct fixture *f, const char *chat, const char *k1, const char *v1) {
  const char *kv[] = {"chat_id", chat, "token_file", f->tokenfile, "api_base",
                      f->base,   k1,   v1,           NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static void connect_default(struct fixture *f) {
  connect_with(f, "@calpost_news", NULL, NULL);
}

static struct cp_post text_post(const char *id, const char *text) {
  struct cp_post p = mock_post(id, text);
  p.n_media = 0;
  return p;
}

static json_t *body_json(json_t *r) {
  json_t *b = json_loads(json_string_value(json_object_get(r, "body")), 0, NULL);
  assert_non_null(b);
  return b;
}

static void assert_path(json_t *r, const char *method, const char *api) {
  char want[128];
  snprintf(want, sizeof want, "/bot%s/%s", TOKEN, api);
  assert_string_equal(json_string_value(json_object_get(r, "method")), method);
  assert_string_equal(json_string_value(json_object_get(r, "path")), want);
}

static void assert_no_token(const struct cp_result *res) {
  assert_null(strstr(res->message, TOKEN));
  assert_null(strstr(res->message, "AAF-secret"));
}

/* ---- multipart bodies, decoded from what the server recorded -------------------------------- */

struct mpart {
  char name[64];
  char filename[128];
  char ctype[96];
  const unsigned char *data;
  size_t len;
};

static unsigned char *b64_decode(const char *s, size_t *len) {
  size_t n = strlen(s);
  unsigned char *out = malloc(n / 4 * 3 + 4);
  int got = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
  assert_true(got >= 0);
  size_t pad = (n >= 1 && s[n - 1] == '=') + (n >= 2 && s[n - 2] == '=');
  *len = (size_t)got - pad;
  return out;
}

static void header_param(const char *h, size_t hl, const char *key, char *out, size_t size) {
  char pat[32];
  snprintf(pat, sizeof pat, "%s=\"", key);
  out[0] = '\0';
  const char *p = memmem(h, hl, pat, strlen(pat));
  if (!p)
    return;
  p += strlen(pat);
  const char *q = memchr(p, '"', hl - (size_t)(p - h));
  assert_non_null(q);
  snprintf(out, size, "%.*s", (int)(q - p), p);
}

/* Splits the recorded multipart/form-data body of r into parts; *raw must be freed. */
static size_t multipart(json_t *r, struct mpart *parts, size_t max, unsigned char **raw) {
  const char *ct = testserver_header(r, "Content-Type");
  assert_non_null(ct);
  assert_non_null(strstr(ct, "multipart/form-data"));
  const char *b = strstr(ct, "boundary=");
  assert_non_null(b);
  char delim[128];
  snprintf(delim, sizeof delim, "--%s", b + 9);
  size_t dl = strlen(delim), len, n = 0;
  *raw = b64_decode(json_string_value(json_object_get(r, "body_b64")), &len);
  const unsigned char *p = memmem(*raw, len, delim, dl), *end = *raw + len;
  while (p && n < max) {
    p += dl;
    if (end - p >= 2 && p[0] == '-' && p[1] == '-')
      break;
    p += 2; /* CRLF */
    const unsigned char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
    assert_non_null(hend);
    struct mpart *m = &parts[n++];
    memset(m, 0, sizeof *m);
    header_param((const char *)p, (size_t)(hend - p), "name", m->name, sizeof m->name);
    header_param((const char *)p, (size_t)(hend - p), "filename", m->filename, sizeof m->filename);
    const char *ctl = memmem(p, (size_t)(hend - p), "Content-Type: ", 14);
    if (ctl)
      snprintf(m->ctype, sizeof m->ctype, "%.*s", (int)strcspn(ctl + 14, "\r"), ctl + 14);
    m->data = hend + 4;
    const unsigned char *next = memmem(m->data, (size_t)(end - m->data), delim, dl);
    assert_non_null(next);
    m->len = (size_t)(next - m->data) - 2; /* the CRLF before the delimiter */
    p = next;
  }
  return n;
}

static const struct mpart *part_named(const struct mpart *parts, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(parts[i].name, name))
      return &parts[i];
  return NULL;
}

static void assert_part_text(const struct mpart *parts, size_t n, const char *name,
                             const char *value) {
  const struct mpart *m = part_named(parts, n, name);
  assert_non_null(m);
  assert_int_equal(m->len, strlen(value));
  assert_memory_equal(m->data, value, m->len);
}

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  unsigned char *buf = malloc(1 << 16);
  *len = fread(buf, 1, 1 << 16, fp);
  fclose(fp);
  return buf;
}

static void assert_part_file(const struct mpart *parts, size_t n, const char *name,
                             const char *file, const char *ctype) {
  const struct mpart *m = part_named(parts, n, name);
  size_t len;
  assert_non_null(m);
  assert_string_equal(m->filename, file);
  assert_string_equal(m->ctype, ctype);
  unsigned char *want = read_file(mock_media_path(file), &len);
  assert_int_equal(m->len, len);
  assert_memory_equal(m->data, want, len);
  free(want);
}

/* ---- tests -------------------------------------------------------------------------------- */

#define OK_MSG(id)                                                                                 \
  "{\"status\": 200, \"json\": {\"ok\": true, \"result\": {\"message_id\": " #id                   \
  ", \"chat\": {\"id\": -1001234567890, \"type\": \"channel\", \"username\": \"calpost_news\"}}}}"

static void sends_plain_text(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  const char *text = "Launch day! " EMOJI " <b>not markup</b> _x_ https://example.org/a?b=1&c=2";
  struct cp_post post = text_post("0123456789abcdef", text);

  testserver_script(&f->ts, "[" OK_MSG(42) "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "42");
  assert_string_equal(res.remote_url, "https://t.me/calpost_news/42");

  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", "sendMessage");
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  json_t *got = body_json(r);
  /* Plain text: no parse_mode, so nothing in the text needs escaping; previews by default; the
   * link marked where calpost finds it: 12 + 2 (the emoji) + 23 units in. */
  json_t *want = json_pack("{s:s, s:s, s:[{s:s, s:i, s:i}]}", "chat_id", "@calpost_news", "text",
                           text, "entities", "type", "url", "offset", 37, "length", 29);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  json_decref(reqs);
  assert_int_equal(f->mh.progress_saves, 1);
  assert_string_equal(f->mh.progress, "1=42");
}

static void options_and_numeric_chat(void **state) {
  struct fixture *f = *state;
  connect_with(f, "-1001234567890", "link_preview", "no");
  struct cp_post post = text_post("0123456789abcde0", "quiet news");
  struct cp_post_option opts[] = {{"silent", "yes"}};
  post.options = opts;
  post.n_options = 1;

  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"ok\": true, \"result\": "
                            "{\"message_id\": 7, \"chat\": {\"id\": -1001234567890}}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "7");
  /* A private channel: the t.me/c/ link works for its members. */
  assert_string_equal(res.remote_url, "https://t.me/c/1234567890/7");
  json_t *reqs = testserver_requests(&f->ts);
  json_t *got = body_json(json_array_get(reqs, 0));
  /* No link, no tag: no entities key at all. */
  json_t *want =
      json_pack("{s:I, s:s, s:{s:b}, s:b}", "chat_id", (json_int_t)-1001234567890LL, "text",
                "quiet news", "link_preview_options", "is_disabled", 1, "disable_notification", 1);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  json_decref(reqs);
}

/* Entities in UTF-16 code units: emoji and a non-BMP letter count 2, accented letters (also a
 * decomposed e + U+0301) 1 per code point. */
static void entities_count_utf16(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  const char *text =
      "Caf\xc3\xa9 " EMOJI " d\xc3\xa9j\xc3\xa0 vu: https://example.org/a?b=1 #launch "
      "#\xc3\x89t\xc3\xa9"
      "2024 see http://x.io/p. #1 a#b #cafe\xcc\x81 "
      "#\xf0\x9d\x90\x80"
      "b (#no)\n#last";
  struct cp_post post = text_post("0123456789abcde5", text);

  testserver_script(&f->ts, "[" OK_MSG(43) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  json_t *got = body_json(json_array_get(reqs, 0));
  json_t *want = json_pack(
      "[{s:s, s:i, s:i}, {s:s, s:i, s:i}, {s:s, s:i, s:i}, {s:s, s:i, s:i}, {s:s, s:i, s:i},"
      " {s:s, s:i, s:i}, {s:s, s:i, s:i}]",
      "type", "url", "offset", 17, "length", 25,    /* https://example.org/a?b=1 */
      "type", "hashtag", "offset", 43, "length", 7, /* #launch */
      "type", "hashtag", "offset", 51, "length", 8, /* #Ete2024 */
      "type", "url", "offset", 64, "length", 13,    /* http://x.io/p without the '.' */
      "type", "hashtag", "offset", 86, "length", 6, /* #cafe + U+0301 */
      "type", "hashtag", "offset", 93, "length", 4, /* # + U+1D400 + b */
      "type", "hashtag", "offset", 104, "length", 5 /* #last after a newline */);
  json_t *ents = json_object_get(got, "entities");
  if (!json_equal(ents, want)) {
    char *dump = json_dumps(ents, JSON_COMPACT);
    fail_msg("entities %s", dump);
  }
  assert_null(json_object_get(got, "parse_mode"));
  json_decref(want);
  json_decref(got);
  json_decref(reqs);

  /* "#1", "a#b" and a bare domain are neither links nor tags: no entities key. */
  struct cp_post plain = text_post("0123456789abcde6", "We are #1 at a#b, see example.org " EMOJI);
  f->mh.progress[0] = '\0';
  testserver_script(&f->ts, "[" OK_MSG(44) "]");
  assert_int_equal(mock_host_publish(&f->mh, &plain).outcome, CP_OUTCOME_OK);
  reqs = testserver_requests(&f->ts);
  got = body_json(json_array_get(reqs, 0));
  assert_null(json_object_get(got, "entities"));
  assert_string_equal(json_string_value(json_object_get(got, "text")), plain.text);
  json_decref(got);
  json_decref(reqs);
}

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring */
};

static const struct answer answers[] = {
    {"[{\"status\": 429, \"json\": {\"ok\": false, \"error_code\": 429, \"description\": "
     "\"Too Many Requests: retry after 35\", \"parameters\": {\"retry_after\": 35}}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 35000, "HTTP 429: Too Many Requests: retry after 35"},
    {"[{\"status\": 401, \"json\": {\"ok\": false, \"error_code\": 401, \"description\": "
     "\"Unauthorized\"}}]",
     CP_OUTCOME_AUTH, 401, -1, "Unauthorized (the bot token was rejected"},
    {"[{\"status\": 404, \"json\": {\"ok\": false, \"error_code\": 404, \"description\": "
     "\"Not Found\"}}]",
     CP_OUTCOME_AUTH, 404, -1, "malformed"},
    {"[{\"status\": 400, \"json\": {\"ok\": false, \"error_code\": 400, \"description\": "
     "\"Bad Request: chat not found\"}}]",
     CP_OUTCOME_PERMANENT, 400, -1, "chat not found (check chat_id = @calpost_news"},
    {"[{\"status\": 403, \"json\": {\"ok\": false, \"error_code\": 403, \"description\": "
     "\"Forbidden: bot was blocked by the user\"}}]",
     CP_OUTCOME_PERMANENT, 403, -1, "bot was blocked by the user (add the bot"},
    {"[{\"status\": 403, \"json\": {\"ok\": false, \"error_code\": 403, \"description\": "
     "\"Forbidden: bot is not a member of the channel chat\"}}]",
     CP_OUTCOME_PERMANENT, 403, -1, "not a member"},
    {"[{\"status\": 400, \"json\": {\"ok\": false, \"error_code\": 400, \"description\": "
     "\"Bad Request: group chat was upgraded to a supergroup chat\", \"parameters\": "
     "{\"migrate_to_chat_id\": -1009876543210}}}]",
     CP_OUTCOME_PERMANENT, 400, -1, "set chat_id = -1009876543210"},
    {"[{\"status\": 400, \"json\": {\"ok\": false, \"error_code\": 400, \"description\": "
     "\"Bad Request: message is too long\"}}]",
     CP_OUTCOME_PERMANENT, 400, -1, "message is too long"},
    {"[{\"status\": 502, \"body\": \"Bad Gateway\"}]", CP_OUTCOME_RETRY, 502, -1, "HTTP 502"},
    {"[{\"status\": 500, \"json\": {\"ok\": false, \"error_code\": 500, \"description\": "
     "\"Internal Server Error\"}}]",
     CP_OUTCOME_RETRY, 500, -1, "Internal Server Error"},
    /* 200 from something that is not Telegram: the message may or may not be out. */
    {"[{\"status\": 200, \"body\": \"<html>captive portal</html>\"}]", CP_OUTCOME_UNKNOWN, 200, -1,
     "not Telegram's answer"},
    {"[{\"status\": 200, \"body\": \"{\\\"ok\\\": tru\"}]", CP_OUTCOME_UNKNOWN, 200, -1,
     "may have been sent"},
    {"[{\"reset\": true}]", CP_OUTCOME_UNKNOWN, 0, -1, "reset"},
};

static void each_error_class(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  struct cp_post post = text_post("0123456789abcdef", "hello " EMOJI);

  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    const struct answer *a = &answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    assert_string_equal(res.remote_id, "");
    assert_no_token(&res);
    json_t *reqs = testserver_requests(&f->ts);
    assert_int_equal(json_array_size(reqs), 1); /* never resent on its own */
    json_decref(reqs);
  }
  assert_int_equal(f->mh.progress_saves, 0);
}

static void refused_and_timeout(void **state) {
  struct fixture *f = *state;
  char base[64];
  snprintf(base, sizeof base, "http://127.0.0.1:%d", testserver_dead_port());
  const char *kv[] = {"chat_id", "@calpost_news", "token_file", f->tokenfile, "api_base", base,
                      NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("0123456789abcdef", "hello");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_int_equal(res.err, -ECONNREFUSED);
  assert_no_token(&res);
}

static int n_errors, n_warnings;
static char last_diag[512];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  n_warnings += !error;
  snprintf(last_diag, sizeof last_diag, "%s", msg);
}

static int validate(struct fixture *f, const struct cp_post *post) {
  n_errors = n_warnings = 0;
  last_diag[0] = '\0';
  return cp_connector_telegram.validate(f->mh.instance, post, on_diag, NULL);
}

static char *repeat(const char *unit, size_t n, const char *tail) {
  size_t ul = strlen(unit), tl = strlen(tail);
  char *s = malloc(ul * n + tl + 1);
  for (size_t i = 0; i < n; i++)
    memcpy(s + i * ul, unit, ul);
  memcpy(s + ul * n, tail, tl + 1);
  return s;
}

static void validate_counts_utf16(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  /* 4094 letters and an emoji: 4095 code points, 4096 UTF-16 units: fits exactly. */
  char *fits = repeat("a", 4094, EMOJI);
  char *over = repeat("a", 4095, EMOJI); /* 4096 code points but 4097 units */
  assert_int_equal(cp_text_codepoints(over), 4096);
  struct cp_post post = text_post("00000000000000a1", fits);
  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_errors, 0);
  post.text = over;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_int_equal(n_errors, 1);
  assert_non_null(strstr(last_diag, "4097 characters (UTF-16"));
  assert_non_null(strstr(last_diag, "allows 4096"));
  assert_non_null(strstr(last_diag, "thread = yes"));
  post.thread = true; /* sent as two messages */
  assert_int_equal(validate(f, &post), 0);
  post.thread = false;

  /* Captions: 1024 units. With media, a longer text is a warning (it follows the media). */
  static const struct cp_media png[] = {{"img/a.png", "alt"}};
  char *cap_ok = repeat("b", 1022, EMOJI);   /* 1024 units */
  char *cap_over = repeat("b", 1023, EMOJI); /* 1025 units */
  post.media = png;
  post.n_media = 1;
  post.text = cap_ok;
  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_warnings, 0);
  post.text = cap_over;
  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_warnings, 1);
  assert_non_null(strstr(last_diag, "1025 characters do not fit a media caption"));

  /* Media: at most 10, photos and mp4 only. */
  struct cp_media many[11];
  for (size_t i = 0; i < 11; i++)
    many[i] = (struct cp_media){"https://example.org/p.jpg", NULL};
  post.text = "album";
  post.media = many;
  post.n_media = 11;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "11 media, Telegram allows 10"));
  static const struct cp_media pdf[] = {{"docs/flyer.PDF", NULL}};
  post.media = pdf;
  post.n_media = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "flyer.PDF"));
  static const struct cp_media ok[] = {{"https://example.org/v.mp4?x=1", NULL},
                                       {"https://example.org/photo", NULL}};
  post.media = ok;
  post.n_media = 2;
  assert_int_equal(validate(f, &post), 0);

  /* Empty text without media; an unreadable option. */
  post.text = "";
  post.n_media = 0;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "no text and no media"));
  struct cp_post_option opts[] = {{"silent", "maybe"}};
  post.text = "x";
  post.options = opts;
  post.n_options = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "silent = 'maybe'"));

  free(fits);
  free(over);
  free(cap_ok);
  free(cap_over);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0); /* validate does no I/O */
  json_decref(reqs);
}

static void max_chars_override(void **state) {
  struct fixture *f = *state;
  connect_with(f, "@calpost_news", "max_chars", "10");
  struct cp_post post = text_post("00000000000000a2", "123456789" EMOJI);
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "11 characters"));
  assert_non_null(strstr(last_diag, "allows 10"));
}

static void photo_with_caption(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  const struct cp_media media[] = {{(char *)mock_media_path("pixel.png"), "A white pixel"}};
  struct cp_post post = text_post("00000000000000b1", "Poster " EMOJI);
  post.media = media;
  post.n_media = 1;

  testserver_script(&f->ts, "[" OK_MSG(77) "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "77");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", "sendPhoto");
  struct mpart parts[8];
  unsigned char *raw;
  size_t n = multipart(r, parts, 8, &raw);
  assert_int_equal(n, 3);
  assert_part_text(parts, n, "chat_id", "@calpost_news");
  assert_part_text(parts, n, "caption", "Poster " EMOJI);
  assert_part_file(parts, n, "photo", "pixel.png", "image/png");
  free(raw);
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "m=77");
}

/* Captions carry caption_entities: a form field for sendPhoto, a field of the first InputMedia
 * in an album. */
static void caption_entities(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  const char *caption = "Poster " EMOJI " https://example.org/p #launch";
  json_t *want = json_pack("[{s:s, s:i, s:i}, {s:s, s:i, s:i}]", "type", "url", "offset", 10,
                           "length", 21, "type", "hashtag", "offset", 32, "length", 7);
  const struct cp_media one[] = {{(char *)mock_media_path("pixel.png"), NULL}};
  struct cp_post post = text_post("00000000000000b5", caption);
  post.media = one;
  post.n_media = 1;

  testserver_script(&f->ts, "[" OK_MSG(80) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", "sendPhoto");
  struct mpart parts[8];
  unsigned char *raw;
  size_t n = multipart(r, parts, 8, &raw);
  assert_int_equal(n, 4);
  assert_part_text(parts, n, "caption", caption);
  const struct mpart *ce = part_named(parts, n, "caption_entities");
  assert_non_null(ce);
  json_t *got = json_loadb((const char *)ce->data, ce->len, 0, NULL);
  assert_true(json_equal(got, want));
  assert_null(part_named(parts, n, "parse_mode"));
  json_decref(got);
  free(raw);
  json_decref(reqs);

  char png[512], gif[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  const struct cp_media two[] = {{png, NULL}, {gif, NULL}};
  post.media = two;
  post.n_media = 2;
  f->mh.progress[0] = '\0';
  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"ok\": true, \"result\": ["
                            "{\"message_id\": 81, \"chat\": {\"id\": 1}}]}}]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  reqs = testserver_requests(&f->ts);
  r = json_array_get(reqs, 0);
  assert_path(r, "POST", "sendMediaGroup");
  n = multipart(r, parts, 8, &raw);
  const struct mpart *m = part_named(parts, n, "media");
  assert_non_null(m);
  assert_null(part_named(parts, n, "caption_entities"));
  got = json_loadb((const char *)m->data, m->len, 0, NULL);
  json_t *album = json_pack("[{s:s, s:s, s:s, s:O}, {s:s, s:s}]", "type", "photo", "media",
                            "attach://file0", "caption", caption, "caption_entities", want, "type",
                            "photo", "media", "attach://file1");
  assert_true(json_equal(got, album));
  json_decref(album);
  json_decref(got);
  free(raw);
  json_decref(reqs);
  json_decref(want);
}

static void album_of_two(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  char png[512], gif[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png")); /* a static buffer */
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  const struct cp_media media[] = {{png, "one"}, {gif, "two"}};
  struct cp_post post = text_post("00000000000000b2", "Album");
  post.media = media;
  post.n_media = 2;
  struct cp_post_option opts[] = {{"silent", "yes"}};
  post.options = opts;
  post.n_options = 1;

  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"ok\": true, \"result\": ["
                            "{\"message_id\": 90, \"chat\": {\"id\": 1}},"
                            "{\"message_id\": 91, \"chat\": {\"id\": 1}}]}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "90");
  assert_string_equal(res.remote_url, "https://t.me/calpost_news/90");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", "sendMediaGroup");
  struct mpart parts[8];
  unsigned char *raw;
  size_t n = multipart(r, parts, 8, &raw);
  assert_int_equal(n, 5);
  assert_part_text(parts, n, "chat_id", "@calpost_news");
  assert_part_text(parts, n, "disable_notification", "true");
  const struct mpart *m = part_named(parts, n, "media");
  assert_non_null(m);
  json_t *got = json_loadb((const char *)m->data, m->len, 0, NULL);
  json_t *want =
      json_pack("[{s:s, s:s, s:s}, {s:s, s:s}]", "type", "photo", "media", "attach://file0",
                "caption", "Album", "type", "photo", "media", "attach://file1");
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  assert_part_file(parts, n, "file0", "pixel.png", "image/png");
  assert_part_file(parts, n, "file1", "pixel.gif", "image/gif");
  free(raw);
  json_decref(reqs);
}

static void gif_alone_is_an_animation(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  const struct cp_media media[] = {{(char *)mock_media_path("pixel.gif"), NULL}};
  struct cp_post post = text_post("00000000000000b3", "");
  post.media = media;
  post.n_media = 1;
  testserver_script(&f->ts, "[" OK_MSG(5) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", "sendAnimation");
  struct mpart parts[8];
  unsigned char *raw;
  size_t n = multipart(r, parts, 8, &raw);
  assert_int_equal(n, 2); /* no caption for an empty text */
  assert_part_file(parts, n, "animation", "pixel.gif", "image/gif");
  free(raw);
  json_decref(reqs);
}

static void not_an_image_fails_before_sending(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  const struct cp_media media[] = {{(char *)mock_media_path("not-an-image.png"), NULL}};
  struct cp_post post = text_post("00000000000000b4", "x");
  post.media = media;
  post.n_media = 1;
  testserver_script(&f->ts, "[]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_non_null(strstr(res.message, "not-an-image.png"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

/* Media plus a text too long for a caption: two messages; a failure of the second resumes
 * without sending the photo again. */
static void long_caption_resumes_after_media(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  const struct cp_media media[] = {{(char *)mock_media_path("pixel.png"), NULL}};
  char *text = repeat("c", 1500, "");
  struct cp_post post = text_post("00000000000000c1", text);
  post.media = media;
  post.n_media = 1;

  testserver_script(&f->ts, "[" OK_MSG(100) ", {\"status\": 502, \"body\": \"Bad Gateway\"}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "message 2 of 2: HTTP 502"));
  assert_string_equal(f->mh.progress, "m=100");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  assert_path(json_array_get(reqs, 0), "POST", "sendPhoto");
  struct mpart parts[8];
  unsigned char *raw;
  size_t n = multipart(json_array_get(reqs, 0), parts, 8, &raw);
  assert_null(part_named(parts, n, "caption"));
  free(raw);
  assert_path(json_array_get(reqs, 1), "POST", "sendMessage");
  json_decref(reqs);

  f->mh.attempt = 2;
  testserver_script(&f->ts, "[" OK_MSG(101) "]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "100"); /* the post starts with the photo */
  assert_string_equal(res.remote_url, "https://t.me/calpost_news/100");
  assert_string_equal(f->mh.progress, "m=100;1=101");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_path(r, "POST", "sendMessage");
  json_t *b = body_json(r);
  assert_string_equal(json_string_value(json_object_get(b, "text")), text);
  json_decref(b);
  json_decref(reqs);

  /* Everything was sent but not reported: the next attempt completes without a request. */
  testserver_script(&f->ts, "[]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "100");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
  free(text);
}

static void thread_splits_and_resumes(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  char *first = repeat("Word " EMOJI " ", 400, "end one."); /* 400 * 8 + 8 = 3208 units */
  char *text = malloc(strlen(first) * 2 + 4);
  sprintf(text, "%s\n\n%s", first, first);
  struct cp_post post = text_post("00000000000000c2", text);
  post.thread = true;
  assert_int_equal(validate(f, &post), 0);

  testserver_script(
      &f->ts, "[" OK_MSG(10) ", {\"status\": 429, \"json\": {\"ok\": false, "
                             "\"error_code\": 429, \"description\": \"Too Many Requests: retry "
                             "after 3\", \"parameters\": {\"retry_after\": 3}}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RATE_LIMITED);
  assert_int_equal(res.retry_at_ms, MOCK_WALL_MS + 3000);
  assert_non_null(strstr(res.message, "message 2 of 2"));
  assert_string_equal(f->mh.progress, "1=10");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  json_t *b = body_json(json_array_get(reqs, 0));
  assert_string_equal(json_string_value(json_object_get(b, "text")), first);
  assert_true(cp_text_utf16_len(json_string_value(json_object_get(b, "text"))) <= 4096);
  json_decref(b);
  json_decref(reqs);

  testserver_script(&f->ts, "[" OK_MSG(11) "]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "10");
  assert_string_equal(f->mh.progress, "1=10;2=11");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  b = body_json(json_array_get(reqs, 0));
  assert_string_equal(json_string_value(json_object_get(b, "text")), first);
  json_decref(b);
  json_decref(reqs);
  free(first);
  free(text);
}

static void login_check(void **state) {
  struct fixture *f = *state;
  connect_default(f);
  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"ok\": true, \"result\": {\"id\": 1, "
                            "\"is_bot\": true, \"username\": \"calpost_bot\"}}},"
                            "{\"status\": 200, \"json\": {\"ok\": true, \"result\": {\"id\": -100, "
                            "\"type\": \"channel\"}}}]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  assert_path(json_array_get(reqs, 0), "GET", "getMe");
  assert_path(json_array_get(reqs, 1), "POST", "getChat");
  json_t *b = body_json(json_array_get(reqs, 1));
  json_t *want = json_pack("{s:s}", "chat_id", "@calpost_news");
  assert_true(json_equal(b, want));
  json_decref(b);
  json_decref(want);
  json_decref(reqs);

  testserver_script(&f->ts, "[{\"status\": 401, \"json\": {\"ok\": false, \"error_code\": 401, "
                            "\"description\": \"Unauthorized\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_no_token(&res);

  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"ok\": true, \"result\": {}}},"
                            "{\"status\": 400, \"json\": {\"ok\": false, \"error_code\": 400, "
                            "\"description\": \"Bad Request: chat not found\"}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_non_null(strstr(res.message, "chat not found"));
  assert_int_equal(f->mh.progress_saves, 0); /* nothing was posted */
}

static void config_errors(void **state) {
  struct fixture *f = *state;
  const char *no_chat[] = {"token_file", f->tokenfile, NULL};
  const char *bad_chat[] = {"chat_id", "my channel", "token_file", f->tokenfile, NULL};
  const char *no_token[] = {"chat_id", "@calpost_news", NULL};
  const char *http_remote[] = {"chat_id",  "@calpost_news",          "token_file", f->tokenfile,
                               "api_base", "http://api.example.org", NULL};
  const char *bad_preview[] = {"chat_id",      "@calpost_news", "token_file", f->tokenfile,
                               "link_preview", "sometimes",     NULL};
  const char *bad_max[] = {"chat_id",   "@calpost_news", "token_file", f->tokenfile,
                           "max_chars", "5000",          NULL};
  const char *unknown[] = {"chat_id",    "@calpost_news", "token_file", f->tokenfile,
                           "parse_mode", "HTML",          NULL};

  assert_int_equal(mock_host_connect(&f->mh, no_chat), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs 'chat_id"));
  assert_int_equal(mock_host_connect(&f->mh, bad_chat), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:11: [channel test] chat_id: 'my channel'"));
  assert_int_equal(mock_host_connect(&f->mh, no_token), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "token_file"));
  assert_int_equal(mock_host_connect(&f->mh, http_remote), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:13: [channel test] api_base"));
  assert_int_equal(mock_host_connect(&f->mh, bad_preview), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "link_preview: 'sometimes'"));
  assert_int_equal(mock_host_connect(&f->mh, bad_max), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "max_chars: '5000'"));
  assert_null(f->mh.instance);
  assert_int_equal(mock_host_connect(&f->mh, unknown), 0);
  assert_non_null(strstr(f->mh.log, "unknown key 'parse_mode'"));
}

static void token_from_env(void **state) {
  struct fixture *f = *state;
  setenv("CP_TEST_TELEGRAM_TOKEN", TOKEN, 1);
  const char *kv[] = {"chat_id",  "@calpost_news", "token_env", "CP_TEST_TELEGRAM_TOKEN",
                      "api_base", f->base,         NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("00000000000000d1", "env");
  testserver_script(&f->ts, "[" OK_MSG(1) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_path(json_array_get(reqs, 0), "POST", "sendMessage");
  json_decref(reqs);
  unsetenv("CP_TEST_TELEGRAM_TOKEN");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(sends_plain_text, setup, teardown),
      cmocka_unit_test_setup_teardown(options_and_numeric_chat, setup, teardown),
      cmocka_unit_test_setup_teardown(entities_count_utf16, setup, teardown),
      cmocka_unit_test_setup_teardown(each_error_class, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_and_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_counts_utf16, setup, teardown),
      cmocka_unit_test_setup_teardown(max_chars_override, setup, teardown),
      cmocka_unit_test_setup_teardown(photo_with_caption, setup, teardown),
      cmocka_unit_test_setup_teardown(caption_entities, setup, teardown),
      cmocka_unit_test_setup_teardown(album_of_two, setup, teardown),
      cmocka_unit_test_setup_teardown(gif_alone_is_an_animation, setup, teardown),
      cmocka_unit_test_setup_teardown(not_an_image_fails_before_sending, setup, teardown),
      cmocka_unit_test_setup_teardown(long_caption_resumes_after_media, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_splits_and_resumes, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(token_from_env, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the telegram connector is not built (CALPOST_CONNECTOR_TELEGRAM=OFF): skipped");
  return 0;
}
#endif
