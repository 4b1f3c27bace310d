// ctest-labels: connector
// ctest-connector: discord
/* The discord connector against tests/support/testserver.py standing in for Discord: the exact
 * Execute Webhook request (wait=true, allowed_mentions, multipart with alt text), every form of
 * Discord's rate-limit answer, the error classes, threads that resume, login_check, and the
 * webhook URL (the secret) never showing up in a log line or a result. */
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

#ifdef CP_BUILTIN_DISCORD

#define HOOK_PATH "/api/webhooks/223344556677/whTOKEN-very_secret-0123"
#define TOKEN "whTOKEN-very_secret-0123"
#define EMOJI "\xf0\x9f\x98\x80"

struct fixture {
  struct testserver ts;
  struct mock_host mh;
  char dir[64];
  char urlfile[96];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  char url[160];
  testserver_start(&f->ts);
  testserver_url(&f->ts, HOOK_PATH, url, sizeof url);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-discord-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->urlfile, sizeof f->urlfile, "%s/hook.url", f->dir);
  FILE *fp = fopen(f->urlfile, "w");
  fprintf(fp, "%s\n", url);
  fclose(fp);
  assert_int_equal(chmod(f->urlfile, 0600), 0);
  mock_host_init(&f->mh, &cp_connector_discord);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  assert_null(strstr(f->mh.log, TOKEN)); /* the secret never reached the log */
  mock_host_close(&f->mh);
  testserver_stop(&f->ts);
  unlink(f->urlfile);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void connect_kv(struct fixture *f, const char *k1, const char *v1, const char *k2,
                       const char *v2) {
  const char *kv[] = {"url_file", f->urlfile, k1, v1, k2, v2, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
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

static void assert_request_line(json_t *r, const char *method, const char *path) {
  assert_string_equal(json_string_value(json_object_get(r, "method")), method);
  assert_string_equal(json_string_value(json_object_get(r, "path")), path);
}

static void assert_no_secret(const struct cp_result *res) {
  assert_null(strstr(res->message, TOKEN));
  assert_null(strstr(res->message, "webhooks/223344556677/"));
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

#define MSG(id, guild)                                                                             \
  "{\"status\": 200, \"json\": {\"id\": \"" id "\", \"channel_id\": \"555000\", \"type\": 0" guild \
  ", \"webhook_id\": \"223344556677\"}}"
#define GUILD ", \"guild_id\": \"777000\""
#define POST_PATH HOOK_PATH "?wait=true"

static void sends_text_without_pings(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  const char *text = "Hello @everyone and <@&42> " EMOJI " https://example.org";
  struct cp_post post = text_post("0123456789abcdef", text);

  testserver_script(&f->ts, "[" MSG("1100", GUILD) "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "1100");
  assert_string_equal(res.remote_url, "https://discord.com/channels/777000/555000/1100");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_request_line(r, "POST", POST_PATH);
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  json_t *got = body_json(r);
  /* The link gets calpost's preview (the post's title, the rest of the text) and goes in <...>
   * so that Discord does not unfurl it a second time. */
  json_t *want =
      json_pack("{s:s, s:{s:[]}, s:[{s:s, s:s, s:s}]}", "content",
                "Hello @everyone and <@&42> " EMOJI " <https://example.org>", "allowed_mentions",
                "parse", "embeds", "title", "Launch", "url", "https://example.org", "description",
                "Hello @everyone and <@&42> " EMOJI);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  json_decref(reqs);
  assert_string_equal(f->mh.progress, "1=1100");
}

static void learns_the_server_for_links(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  struct cp_post post = text_post("0123456789abcde1", "one");

  /* The message lacks guild_id: one GET of the webhook object (which posts nothing) finds it. */
  testserver_script(&f->ts,
                    "[" MSG("2001", "") ", {\"status\": 200, \"json\": {\"id\": "
                                        "\"223344556677\", \"type\": 1, \"guild_id\": \"777000\", "
                                        "\"channel_id\": \"555000\"}}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_url, "https://discord.com/channels/777000/555000/2001");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  assert_request_line(json_array_get(reqs, 1), "GET", HOOK_PATH);
  json_decref(reqs);

  /* Known from now on. */
  struct cp_post other = text_post("0123456789abcdee", "two");
  f->mh.progress[0] = '\0'; /* the mock keeps one progress for all posts */
  testserver_script(&f->ts, "[" MSG("2002", "") "]");
  res = mock_host_publish(&f->mh, &other);
  assert_string_equal(res.remote_url, "https://discord.com/channels/777000/555000/2002");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_decref(reqs);
}

static void lookup_failure_keeps_the_post(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  struct cp_post post = text_post("0123456789abcde2", "one");
  testserver_script(&f->ts, "[" MSG("3001", "") ", {\"status\": 500}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "3001");
  assert_string_equal(res.remote_url, "");
}

static void username_avatar_and_flags(void **state) {
  struct fixture *f = *state;
  const char *kv[] = {"url_file",      f->urlfile,   "username",
                      "Release notes", "avatar_url", "https://example.org/a.png",
                      "link_preview",  "no",         NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("0123456789abcde3", "quiet");
  struct cp_post_option opts[] = {{"silent", "yes"}};
  post.options = opts;
  post.n_options = 1;
  testserver_script(&f->ts, "[" MSG("4001", GUILD) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  json_t *got = body_json(json_array_get(reqs, 0));
  json_t *want = json_pack("{s:s, s:{s:[]}, s:s, s:s, s:i}", "content", "quiet", "allowed_mentions",
                           "parse", "username", "Release notes", "avatar_url",
                           "https://example.org/a.png", "flags", 4 | 4096);
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  json_decref(reqs);
}

struct answer {
  const char *script;
  enum cp_outcome outcome;
  long status;
  int64_t retry_in_ms; /* -1: no hint */
  const char *message; /* substring */
};

#define LIMITED "\"message\": \"You are being rate limited.\""

static const struct answer answers[] = {
    /* Every form of Discord's 429: the body's retry_after (float seconds) ... */
    {"[{\"status\": 429, \"json\": {" LIMITED ", \"retry_after\": 64.57, \"global\": false}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 64570, "HTTP 429: You are being rate limited.: retry in 64.6 s"},
    /* ... X-RateLimit-Reset-After (float seconds) ... */
    {"[{\"status\": 429, \"headers\": {\"X-RateLimit-Reset-After\": \"2.5\", "
     "\"X-RateLimit-Scope\": \"user\"}, \"json\": {" LIMITED "}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 2500, "user limit, retry in 2.5 s"},
    /* ... Retry-After (seconds) ... */
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"7\"}, \"json\": {" LIMITED "}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 7000, "retry in 7.0 s"},
    /* ... X-RateLimit-Reset (epoch seconds with decimals) ... */
    {"[{\"status\": 429, \"headers\": {\"X-RateLimit-Reset\": \"1700000012.25\"}, \"json\": "
     "{" LIMITED "}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 12250, "retry in 12.2 s"},
    /* ... the global flag, in the header and the body ... */
    {"[{\"status\": 429, \"headers\": {\"X-RateLimit-Global\": \"true\", \"X-RateLimit-Scope\": "
     "\"global\", \"Retry-After\": \"1\"}, \"json\": {" LIMITED ", \"retry_after\": 0.8, "
     "\"global\": true}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 1000, "global limit, retry in 1.0 s"},
    {"[{\"status\": 429, \"json\": {" LIMITED ", \"retry_after\": 3, \"global\": true}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 3000, "global limit"},
    /* ... a shared-resource limit ... */
    {"[{\"status\": 429, \"headers\": {\"X-RateLimit-Scope\": \"shared\", "
     "\"X-RateLimit-Reset-After\": \"3.0\"}, \"json\": {" LIMITED ", \"retry_after\": 3.0}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 3000, "shared limit"},
    /* ... and all of them at once: the latest wins. */
    {"[{\"status\": 429, \"headers\": {\"Retry-After\": \"2\", \"X-RateLimit-Reset-After\": "
     "\"1.5\", \"X-RateLimit-Reset\": \"1700000001.5\", \"X-RateLimit-Limit\": \"5\", "
     "\"X-RateLimit-Remaining\": \"0\", \"X-RateLimit-Bucket\": \"abcd\"}, \"json\": {" LIMITED
     ", \"retry_after\": 1.75}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 2000, "retry in 2.0 s"},
    {"[{\"status\": 429}]", CP_OUTCOME_RATE_LIMITED, 429, -1, "no retry time given"},
    {"[{\"status\": 401, \"json\": {\"message\": \"Invalid Webhook Token\", \"code\": 50027}}]",
     CP_OUTCOME_AUTH, 401, -1, "Invalid Webhook Token (code 50027): the webhook token is wrong"},
    {"[{\"status\": 404, \"json\": {\"message\": \"Unknown Webhook\", \"code\": 10015}}]",
     CP_OUTCOME_PERMANENT, 404, -1, "Unknown Webhook (code 10015): the webhook was deleted"},
    {"[{\"status\": 403, \"json\": {\"message\": \"Missing Permissions\", \"code\": 50013}}]",
     CP_OUTCOME_AUTH, 403, -1, "Missing Permissions"},
    {"[{\"status\": 400, \"json\": {\"message\": \"Invalid Form Body\", \"code\": 50035, "
     "\"errors\": {\"content\": {\"_errors\": [{\"code\": \"BASE_TYPE_MAX_LENGTH\", "
     "\"message\": \"Must be 2000 or fewer in length.\"}]}}}}]",
     CP_OUTCOME_PERMANENT, 400, -1,
     "Invalid Form Body (code 50035): content: Must be 2000 or fewer in length."},
    {"[{\"status\": 413, \"json\": {\"message\": \"Request entity too large\", \"code\": 40005}}]",
     CP_OUTCOME_PERMANENT, 413, -1, "too large"},
    {"[{\"status\": 500, \"json\": {\"message\": \"500: Internal Server Error\", \"code\": 0}}]",
     CP_OUTCOME_RETRY, 500, -1, "HTTP 500"},
    {"[{\"status\": 502, \"body\": \"<html>bad gateway</html>\"}]", CP_OUTCOME_RETRY, 502, -1,
     "HTTP 502"},
    /* wait=true should give the message; without one, nobody knows whether it was saved. */
    {"[{\"status\": 204}]", CP_OUTCOME_UNKNOWN, 204, -1, "may have been sent"},
    {"[{\"status\": 200, \"body\": \"{not json\"}]", CP_OUTCOME_UNKNOWN, 200, -1,
     "not Discord's answer"},
    {"[{\"reset\": true}]", CP_OUTCOME_UNKNOWN, 0, -1, "reset"},
};

static void each_error_class(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  struct cp_post post = text_post("0123456789abcdef", "hello");

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
    assert_no_secret(&res);
    json_t *reqs = testserver_requests(&f->ts);
    assert_int_equal(json_array_size(reqs), 1);
    json_decref(reqs);
  }
  assert_int_equal(f->mh.progress_saves, 0);
}

static void refused_connection(void **state) {
  struct fixture *f = *state;
  char url[160];
  snprintf(url, sizeof url, "http://127.0.0.1:%d" HOOK_PATH, testserver_dead_port());
  setenv("CP_TEST_DISCORD_URL", url, 1);
  const char *kv[] = {"url_env", "CP_TEST_DISCORD_URL", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  struct cp_post post = text_post("0123456789abcdef", "hello");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_int_equal(res.err, -ECONNREFUSED);
  assert_no_secret(&res);
  unsetenv("CP_TEST_DISCORD_URL");
}

static void image_with_alt_text(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  char png[512], gif[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png")); /* a static buffer */
  snprintf(gif, sizeof gif, "%s", mock_media_path("pixel.gif"));
  const struct cp_media media[] = {{png, "A white pixel"}, {gif, NULL}};
  struct cp_post post = text_post("00000000000000b1", "Poster " EMOJI);
  post.media = media;
  post.n_media = 2;

  testserver_script(&f->ts, "[" MSG("5001", GUILD) "]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, "5001");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_request_line(r, "POST", POST_PATH);
  struct mpart parts[8];
  unsigned char *raw;
  size_t n = multipart(r, parts, 8, &raw);
  assert_int_equal(n, 3);
  const struct mpart *pj = part_named(parts, n, "payload_json");
  assert_non_null(pj);
  assert_string_equal(pj->ctype, "application/json");
  json_t *got = json_loadb((const char *)pj->data, pj->len, 0, NULL);
  /* One embed per image, pointing at its upload; no link preview for a post with images. */
  json_t *want = json_pack(
      "{s:s, s:{s:[]}, s:[{s:i, s:s, s:s}, {s:i, s:s}], s:[{s:{s:s}}, {s:{s:s}}]}", "content",
      "Poster " EMOJI, "allowed_mentions", "parse", "attachments", "id", 0, "filename", "pixel.png",
      "description", "A white pixel", "id", 1, "filename", "pixel.gif", "embeds", "image", "url",
      "attachment://pixel.png", "image", "url", "attachment://pixel.gif");
  assert_true(json_equal(got, want));
  json_decref(got);
  json_decref(want);
  assert_part_file(parts, n, "files[0]", "pixel.png", "image/png");
  assert_part_file(parts, n, "files[1]", "pixel.gif", "image/gif");
  free(raw);
  json_decref(reqs);
}

static int validate(struct fixture *f, const struct cp_post *post);
static int n_errors;
static char last_diag[512];

static void copy_file(const char *from, const char *to) {
  size_t len;
  unsigned char *data = read_file(from, &len);
  FILE *fp = fopen(to, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(data, 1, len, fp), len);
  fclose(fp);
  free(data);
}

/* The names in files[n], attachments and attachment:// agree, are safe ASCII, unique, and carry
 * an extension Discord shows in an embed. */
static void image_names_safe_and_unique(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  char png[512], odd[128], noext[128], accented[128];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  snprintf(odd, sizeof odd, "%s/my poster (v2).png", f->dir);
  snprintf(noext, sizeof noext, "%s/noext", f->dir);
  snprintf(accented, sizeof accented, "%s/\xc3\xa9t\xc3\xa9.GIF", f->dir);
  copy_file(png, odd);
  copy_file(png, noext);
  copy_file(mock_media_path("pixel.gif"), accented);
  const struct cp_media media[] = {
      {odd, NULL}, {png, NULL}, {png, NULL}, {noext, NULL}, {accented, NULL}};
  const char *names[] = {"my_poster__v2_.png", "pixel.png", "pixel-2.png", "noext.png", "_t_.GIF"};
  struct cp_post post = text_post("00000000000000b3", "Five https://example.org/x");
  post.media = media;
  post.n_media = 5;

  testserver_script(&f->ts, "[" MSG("5003", GUILD) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  struct mpart parts[8];
  unsigned char *raw;
  size_t n = multipart(json_array_get(reqs, 0), parts, 8, &raw);
  assert_int_equal(n, 6);
  const struct mpart *pj = part_named(parts, n, "payload_json");
  json_t *got = json_loadb((const char *)pj->data, pj->len, 0, NULL);
  json_t *att = json_array(), *emb = json_array();
  for (size_t i = 0; i < 5; i++) {
    char field[16], url[64];
    snprintf(field, sizeof field, "files[%zu]", i);
    snprintf(url, sizeof url, "attachment://%s", names[i]);
    const struct mpart *m = part_named(parts, n, field);
    assert_non_null(m);
    assert_string_equal(m->filename, names[i]);
    json_array_append_new(att, json_pack("{s:I, s:s}", "id", (json_int_t)i, "filename", names[i]));
    json_array_append_new(emb, json_pack("{s:{s:s}}", "image", "url", url));
  }
  /* A post with images: the link stays as written, Discord unfurls it as usual. */
  json_t *want = json_pack("{s:s, s:{s:[]}, s:o, s:o}", "content", "Five https://example.org/x",
                           "allowed_mentions", "parse", "attachments", att, "embeds", emb);
  if (!json_equal(got, want)) {
    char *dump = json_dumps(got, JSON_COMPACT);
    fail_msg("payload_json %s", dump);
  }
  json_decref(want);
  json_decref(got);
  free(raw);
  json_decref(reqs);
  unlink(odd);
  unlink(noext);
  unlink(accented);
}

static json_t *publish_text(struct fixture *f, struct cp_post *post) {
  f->mh.progress[0] = '\0';
  testserver_script(&f->ts, "[" MSG("7001", GUILD) "]");
  struct cp_result res = mock_host_publish(&f->mh, post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_string_equal(testserver_header(r, "Content-Type"), "application/json");
  json_t *got = body_json(r);
  json_decref(reqs);
  return got;
}

static void assert_json(json_t *got, json_t *want) {
  if (!json_equal(got, want)) {
    char *g = json_dumps(got, JSON_COMPACT), *w = json_dumps(want, JSON_COMPACT);
    fail_msg("got  %s\nwant %s", g, w);
  }
  json_decref(got);
  json_decref(want);
}

static void link_preview_embed(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  struct cp_post post = text_post(
      "00000000000000e1",
      "Doors open at 9. Tickets: https://example.org/tickets?id=7 \xe2\x80\x94 bring a friend!");
  assert_json(publish_text(f, &post),
              json_pack("{s:s, s:{s:[]}, s:[{s:s, s:s, s:s}]}", "content",
                        "Doors open at 9. Tickets: <https://example.org/tickets?id=7> \xe2\x80\x94 "
                        "bring a friend!",
                        "allowed_mentions", "parse", "embeds", "title", "Launch", "url",
                        "https://example.org/tickets?id=7", "description",
                        "Doors open at 9. Tickets: \xe2\x80\x94 bring a friend!"));

  /* No title: the link's host. A link already in <...> stays as written; only the first link
   * gets the preview. */
  post.title = "";
  post.text = "<https://example.org/a> first\nthen https://other.example/b";
  assert_json(publish_text(f, &post),
              json_pack("{s:s, s:{s:[]}, s:[{s:s, s:s, s:s}]}", "content", post.text,
                        "allowed_mentions", "parse", "embeds", "title", "example.org", "url",
                        "https://example.org/a", "description",
                        "first\nthen https://other.example/b"));

  /* Only a link: no description. */
  post.text = "https://example.org/only";
  assert_json(publish_text(f, &post),
              json_pack("{s:s, s:{s:[]}, s:[{s:s, s:s}]}", "content", "<https://example.org/only>",
                        "allowed_mentions", "parse", "embeds", "title", "example.org", "url",
                        "https://example.org/only"));
}

/* Embed limits: a title over 256 characters and a description over 300 are cut at a word, with
 * "..."; calpost check warns about the title. */
static void link_preview_limits(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  char title[400] = "", text[600] = "https://example.org/news", want_title[400] = "",
       want_desc[400] = "";
  for (int i = 0; i < 60; i++)
    strcat(title, i ? " Word" : "Word"); /* 299 characters */
  for (int i = 0; i < 51; i++)
    strcat(want_title, i ? " Word" : "Word");
  strcat(want_title, "\xe2\x80\xa6");
  /* The description's 300th character ends a word: with the "..." it does not fit, so the cut
   * is one word earlier. */
  strcat(text, " abcde");
  strcat(want_desc, "abcde");
  for (int i = 0; i < 80; i++)
    strcat(text, " abcd");
  for (int i = 0; i < 58; i++)
    strcat(want_desc, " abcd");
  strcat(want_desc, "\xe2\x80\xa6");
  assert_int_equal(cp_text_codepoints(want_title), 255);
  assert_int_equal(cp_text_codepoints(want_desc), 296);
  struct cp_post post = text_post("00000000000000e2", text);
  post.title = title;

  assert_int_equal(validate(f, &post), 0);
  assert_int_equal(n_errors, 0);
  assert_non_null(strstr(last_diag, "the title has 299 characters, a Discord embed title 256"));

  char wrapped[700];
  snprintf(wrapped, sizeof wrapped, "<https://example.org/news>%s", text + 24);
  assert_json(publish_text(f, &post),
              json_pack("{s:s, s:{s:[]}, s:[{s:s, s:s, s:s}]}", "content", wrapped,
                        "allowed_mentions", "parse", "embeds", "title", want_title, "url",
                        "https://example.org/news", "description", want_desc));

  /* 1999 characters with a link: the brackets would make 2001, over Discord's 2000; the message
   * goes without calpost's preview (Discord's own shows). */
  char *full = malloc(2100);
  strcpy(full, "https://example.org/x ");
  memset(full + 22, 'a', 1977);
  full[1999] = '\0';
  post.text = full;
  post.title = "Launch";
  assert_int_equal(validate(f, &post), 0);
  assert_json(publish_text(f, &post),
              json_pack("{s:s, s:{s:[]}}", "content", full, "allowed_mentions", "parse"));
  free(full);
}

/* link_preview = no: no embeds of calpost's either; images go as attachments, links stay as
 * written, and SUPPRESS_EMBEDS keeps Discord from unfurling. */
static void link_preview_no(void **state) {
  struct fixture *f = *state;
  connect_kv(f, "link_preview", "no", NULL, NULL);
  struct cp_post post = text_post("00000000000000e3", "Read https://example.org/x now");
  assert_json(publish_text(f, &post),
              json_pack("{s:s, s:{s:[]}, s:i}", "content", "Read https://example.org/x now",
                        "allowed_mentions", "parse", "flags", 4));

  const struct cp_media media[] = {{(char *)mock_media_path("pixel.png"), "alt"}};
  post.media = media;
  post.n_media = 1;
  f->mh.progress[0] = '\0';
  testserver_script(&f->ts, "[" MSG("7002", GUILD) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  struct mpart parts[4];
  unsigned char *raw;
  size_t n = multipart(json_array_get(reqs, 0), parts, 4, &raw);
  const struct mpart *pj = part_named(parts, n, "payload_json");
  assert_json(json_loadb((const char *)pj->data, pj->len, 0, NULL),
              json_pack("{s:s, s:{s:[]}, s:i, s:[{s:i, s:s, s:s}]}", "content",
                        "Read https://example.org/x now", "allowed_mentions", "parse", "flags", 4,
                        "attachments", "id", 0, "filename", "pixel.png", "description", "alt"));
  free(raw);
  json_decref(reqs);
}

static void media_only(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  const struct cp_media media[] = {{(char *)mock_media_path("pixel.png"), NULL}};
  struct cp_post post = text_post("00000000000000b2", "");
  post.media = media;
  post.n_media = 1;
  testserver_script(&f->ts, "[" MSG("5002", GUILD) "]");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  struct mpart parts[4];
  unsigned char *raw;
  size_t n = multipart(json_array_get(reqs, 0), parts, 4, &raw);
  const struct mpart *pj = part_named(parts, n, "payload_json");
  json_t *got = json_loadb((const char *)pj->data, pj->len, 0, NULL);
  assert_null(json_object_get(got, "content")); /* no empty content */
  json_decref(got);
  free(raw);
  json_decref(reqs);
}

static void thread_resumes_without_duplicates(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  char *a = malloc(1600), *text = malloc(3300);
  memset(a, 'x', 1500);
  strcpy(a + 1500, " first.");
  sprintf(text, "%s\n\n%s", a, a);
  const struct cp_media media[] = {{(char *)mock_media_path("pixel.png"), "alt"}};
  struct cp_post post = text_post("00000000000000c1", text);
  post.thread = true;
  post.media = media;
  post.n_media = 1;

  testserver_script(&f->ts, "[" MSG("6001", GUILD) ", {\"status\": 500}]");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_RETRY);
  assert_non_null(strstr(res.message, "part 2 of 2: HTTP 500"));
  assert_string_equal(f->mh.progress, "1=6001");
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  /* The media go with the first part; the second is plain JSON. */
  assert_non_null(
      strstr(testserver_header(json_array_get(reqs, 0), "Content-Type"), "multipart/form-data"));
  json_t *b = body_json(json_array_get(reqs, 1));
  assert_string_equal(json_string_value(json_object_get(b, "content")), a);
  json_decref(b);
  json_decref(reqs);

  f->mh.attempt = 2;
  testserver_script(&f->ts, "[" MSG("6002", GUILD) "]");
  res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "6001");
  assert_string_equal(res.remote_url, "https://discord.com/channels/777000/555000/6001");
  assert_string_equal(f->mh.progress, "1=6001;2=6002");
  reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_string_equal(testserver_header(json_array_get(reqs, 0), "Content-Type"),
                      "application/json");
  json_decref(reqs);
  free(a);
  free(text);
}

static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  snprintf(last_diag, sizeof last_diag, "%s", msg);
}

static int validate(struct fixture *f, const struct cp_post *post) {
  n_errors = 0;
  last_diag[0] = '\0';
  return cp_connector_discord.validate(f->mh.instance, post, on_diag, NULL);
}

static void validate_limits(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  /* 1999 letters and an emoji: 2000 code points (2001 UTF-16 units): fits. */
  char fits[2100], over[2100];
  memset(fits, 'a', 1999);
  strcpy(fits + 1999, EMOJI);
  memset(over, 'a', 2000);
  strcpy(over + 2000, EMOJI);
  struct cp_post post = text_post("00000000000000a1", fits);
  assert_int_equal(validate(f, &post), 0);
  post.text = over;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "2001 characters, channel test allows 2000"));
  post.thread = true;
  assert_int_equal(validate(f, &post), 0);
  post.thread = false;

  struct cp_media many[11];
  for (size_t i = 0; i < 11; i++)
    many[i] = (struct cp_media){"https://example.org/p.png", NULL};
  post.text = "x";
  post.media = many;
  post.n_media = 11;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "11 media"));
  char alt[1100];
  memset(alt, 'z', 1025);
  alt[1025] = '\0';
  const struct cp_media long_alt[] = {{"img/a.png", alt}};
  post.media = long_alt;
  post.n_media = 1;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "alt text of 1025 characters, Discord allows 1024"));
  const struct cp_media pdf[] = {{"flyer.pdf", NULL}};
  post.media = pdf;
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "flyer.pdf"));
  post.n_media = 0;
  post.text = "";
  assert_int_equal(validate(f, &post), CP_EINVAL);

  const char *kv[] = {"url_file", f->urlfile, "max_chars", "5", NULL};
  cp_connector_discord.free(f->mh.instance);
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  post.text = "123456";
  assert_int_equal(validate(f, &post), CP_EINVAL);
  assert_non_null(strstr(last_diag, "allows 5"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

static void login_check(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  testserver_script(&f->ts, "[{\"status\": 200, \"json\": {\"id\": \"223344556677\", \"type\": 1, "
                            "\"guild_id\": \"777000\", \"channel_id\": \"555000\", \"token\": "
                            "\"" TOKEN "\"}}]");
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_request_line(json_array_get(reqs, 0), "GET", HOOK_PATH); /* posts nothing */
  json_decref(reqs);

  testserver_script(&f->ts,
                    "[{\"status\": 404, \"json\": {\"message\": \"Unknown Webhook\", \"code\": "
                    "10015}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH); /* deleted: needs a new URL */
  assert_non_null(strstr(res.message, "deleted"));
  testserver_script(&f->ts, "[{\"status\": 401, \"json\": {\"message\": \"Invalid Webhook "
                            "Token\", \"code\": 50027}}]");
  res = mock_host_login_check(&f->mh);
  assert_int_equal(res.outcome, CP_OUTCOME_AUTH);
  assert_no_secret(&res);
  assert_int_equal(f->mh.progress_saves, 0);
}

static void config_errors(void **state) {
  struct fixture *f = *state;
  char ftp[128];
  snprintf(ftp, sizeof ftp, "%s/ftp.url", f->dir);
  FILE *fp = fopen(ftp, "w");
  fputs("ftp://discord.com/api/webhooks/1/" TOKEN "\n", fp);
  fclose(fp);
  chmod(ftp, 0600);
  const char *none[] = {"username", "x", NULL};
  const char *bad_url[] = {"url_file", ftp, NULL};
  const char *bad_name[] = {"url_file", f->urlfile, "username", "My Discord Bot", NULL};
  const char *bad_avatar[] = {"url_file", f->urlfile, "avatar_url", "http://x.org/a.png", NULL};
  const char *unknown[] = {"url_file", f->urlfile, "embeds", "yes", NULL};

  assert_int_equal(mock_host_connect(&f->mh, none), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:10: [channel test] needs the webhook URL"));
  assert_int_equal(mock_host_connect(&f->mh, bad_url), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "is not an https URL"));
  assert_int_equal(mock_host_connect(&f->mh, bad_name), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "calpost.ini:12: [channel test] username: 'My Discord Bot'"));
  assert_int_equal(mock_host_connect(&f->mh, bad_avatar), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "avatar_url"));
  assert_null(f->mh.instance);
  assert_int_equal(mock_host_connect(&f->mh, unknown), 0);
  assert_non_null(strstr(f->mh.log, "unknown key 'embeds'"));
  unlink(ftp);
}

/* ---- engagement ----------------------------------------------------------------------------- */

#define MSG_ID "1180000000000000123"

/* Runs the connector's engagement read like the host does and the loop until it completes;
 * asserts it was accepted, completed exactly once and not from inside the call. */
static struct cp_result engagement(struct fixture *f, const char *remote_id) {
  struct mock_host *mh = &f->mh;
  struct cp_publish_req req = {
      .host = &mh->host, .attempt = 1, .idempotency_key = "", .host_data = mh, .progress = ""};
  int before = mh->completions;
  mh->in_publish = true;
  int rc = cp_connector_discord.engagement(mh->instance, remote_id, "", &req);
  mh->in_publish = false;
  assert_int_equal(rc, 0);
  assert_int_equal(mh->completions, before);
  while (mh->completions == before)
    uv_run(&mh->loop, UV_RUN_ONCE);
  uv_run(&mh->loop, UV_RUN_NOWAIT);
  assert_int_equal(mh->completions, before + 1);
  assert_int_equal(mh->reentrant_completions, 0);
  return mh->last;
}

static void engagement_sums_the_reactions(void **state) {
  struct fixture *f = *state;
  assert_true(cp_connector_discord.caps & CP_CAP_ENGAGEMENT);
  connect_kv(f, NULL, NULL, NULL, NULL);
  /* Get Webhook Message: the message object with its reactions (abridged). */
  testserver_script(
      &f->ts,
      "[{\"path\": \"" HOOK_PATH "/messages/" MSG_ID "\", \"json\": {\"id\": \"" MSG_ID "\", "
      "\"channel_id\": \"55\", \"content\": \"hello\", \"webhook_id\": \"223344556677\", "
      "\"reactions\": [{\"count\": 5, \"count_details\": {\"burst\": 1, \"normal\": 4}, "
      "\"me\": false, \"emoji\": {\"id\": null, \"name\": \"" EMOJI "\"}}, {\"count\": 2, "
      "\"me\": false, \"emoji\": {\"id\": \"41771983429993937\", \"name\": \"party\"}}]}}]");
  struct cp_result res = engagement(f, MSG_ID);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_true(res.has_engagement);
  assert_int_equal(res.http_status, 200);
  assert_int_equal(res.likes, 7);
  assert_int_equal(res.replies, -1);
  assert_int_equal(res.reposts, -1);
  assert_int_equal(res.quotes, -1);
  assert_int_equal(res.views, -1);
  assert_string_equal(res.remote_id, "");
  assert_no_secret(&res);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  json_t *r = json_array_get(reqs, 0);
  assert_request_line(r, "GET", HOOK_PATH "/messages/" MSG_ID);
  assert_null(testserver_header(r, "Authorization")); /* the URL is the credential */
  assert_string_equal(json_string_value(json_object_get(r, "body")), "");
  json_decref(reqs);
  assert_int_equal(f->mh.progress_saves, 0);

  /* No reactions yet: Discord leaves the field out. */
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"" MSG_ID "\", \"content\": \"hello\"}}]");
  res = engagement(f, MSG_ID);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.likes, 0);
  json_decref(testserver_requests(&f->ts));
}

static void engagement_in_a_thread_keeps_thread_id(void **state) {
  struct fixture *f = *state;
  char url[200];
  testserver_url(&f->ts, HOOK_PATH "?thread_id=998877", url, sizeof url);
  setenv("CP_TEST_DISCORD_URL", url, 1);
  const char *kv[] = {"url_env", "CP_TEST_DISCORD_URL", NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
  testserver_script(&f->ts, "[{\"json\": {\"id\": \"42\", \"reactions\": [{\"count\": 1}]}}]");
  struct cp_result res = engagement(f, "42");
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_int_equal(res.likes, 1);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 1);
  assert_request_line(json_array_get(reqs, 0), "GET", HOOK_PATH "/messages/42?thread_id=998877");
  json_decref(reqs);
  unsetenv("CP_TEST_DISCORD_URL");
}

static const struct answer engagement_answers[] = {
    {"[{\"status\": 404, \"json\": {\"message\": \"Unknown Message\", \"code\": 10008}}]",
     CP_OUTCOME_PERMANENT, 404, -1, "message " MSG_ID ": the post was deleted: HTTP 404"},
    {"[{\"status\": 404, \"json\": {\"message\": \"Unknown Webhook\", \"code\": 10015}}]",
     CP_OUTCOME_PERMANENT, 404, -1, "the webhook was deleted"},
    {"[{\"status\": 401, \"json\": {\"message\": \"Invalid Webhook Token\", \"code\": 50027}}]",
     CP_OUTCOME_AUTH, 401, -1, "the webhook token is wrong"},
    {"[{\"status\": 403, \"json\": {\"message\": \"Missing Access\", \"code\": 50001}}]",
     CP_OUTCOME_AUTH, 403, -1, "Missing Access"},
    {"[{\"status\": 429, \"headers\": {\"X-RateLimit-Reset-After\": \"4.5\"}, \"json\": {" LIMITED
     ", \"retry_after\": 4.5}}]",
     CP_OUTCOME_RATE_LIMITED, 429, 4500, "retry in 4.5 s"},
    {"[{\"status\": 502, \"body\": \"<html>bad gateway</html>\"}]", CP_OUTCOME_RETRY, 502, -1,
     "message " MSG_ID ": HTTP 502"},
    /* A read that got no answer changed nothing: RETRY, never UNKNOWN. */
    {"[{\"reset\": true, \"repeat\": true}]", CP_OUTCOME_RETRY, 0, -1, "reset"},
    {"[{\"status\": 200, \"body\": \"<html>proxy</html>\"}]", CP_OUTCOME_RETRY, 200, -1,
     "not a message"},
    {"[{\"json\": {\"id\": \"1\", \"reactions\": {\"count\": 3}}}]", CP_OUTCOME_RETRY, 200, -1,
     "not a message"},
};

static void engagement_answers_give_their_outcome(void **state) {
  struct fixture *f = *state;
  connect_kv(f, NULL, NULL, NULL, NULL);
  for (size_t i = 0; i < sizeof engagement_answers / sizeof engagement_answers[0]; i++) {
    const struct answer *a = &engagement_answers[i];
    print_message("answer %zu: %s\n", i, a->script);
    testserver_script(&f->ts, a->script);
    struct cp_result res = engagement(f, MSG_ID);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(a->outcome));
    assert_false(res.has_engagement);
    assert_int_equal(res.http_status, a->status);
    assert_int_equal(res.retry_at_ms, a->retry_in_ms < 0 ? 0 : MOCK_WALL_MS + a->retry_in_ms);
    if (!strstr(res.message, a->message))
      fail_msg("message '%s' lacks '%s'", res.message, a->message);
    assert_no_secret(&res);
    json_t *reqs = testserver_requests(&f->ts), *r;
    size_t k;
    assert_true(json_array_size(reqs) >= 1);
    json_array_foreach(reqs, k, r) assert_request_line(r, "GET", HOOK_PATH "/messages/" MSG_ID);
    json_decref(reqs);
  }

  /* An id publish cannot have reported is refused at once, without a request or completion. */
  testserver_script(&f->ts, "[]");
  struct cp_publish_req req = {.host = &f->mh.host,
                               .attempt = 1,
                               .idempotency_key = "",
                               .host_data = &f->mh,
                               .progress = ""};
  int before = f->mh.completions;
  assert_int_equal(cp_connector_discord.engagement(f->mh.instance, "../../x", "", &req), CP_EINVAL);
  assert_int_equal(cp_connector_discord.engagement(f->mh.instance, "", "", &req), CP_EINVAL);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, before);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0);
  json_decref(reqs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(sends_text_without_pings, setup, teardown),
      cmocka_unit_test_setup_teardown(learns_the_server_for_links, setup, teardown),
      cmocka_unit_test_setup_teardown(lookup_failure_keeps_the_post, setup, teardown),
      cmocka_unit_test_setup_teardown(username_avatar_and_flags, setup, teardown),
      cmocka_unit_test_setup_teardown(each_error_class, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection, setup, teardown),
      cmocka_unit_test_setup_teardown(image_with_alt_text, setup, teardown),
      cmocka_unit_test_setup_teardown(image_names_safe_and_unique, setup, teardown),
      cmocka_unit_test_setup_teardown(link_preview_embed, setup, teardown),
      cmocka_unit_test_setup_teardown(link_preview_limits, setup, teardown),
      cmocka_unit_test_setup_teardown(link_preview_no, setup, teardown),
      cmocka_unit_test_setup_teardown(media_only, setup, teardown),
      cmocka_unit_test_setup_teardown(thread_resumes_without_duplicates, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_limits, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_sums_the_reactions, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_in_a_thread_keeps_thread_id, setup, teardown),
      cmocka_unit_test_setup_teardown(engagement_answers_give_their_outcome, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the discord connector is not built (CALPOST_CONNECTOR_DISCORD=OFF): skipped");
  return 0;
}
#endif
