/* Fuzz target "connector": every built-in connector's handling of what servers answer.
 *
 * A fake host (built like tests/support/mock_host.h) never touches the network: http_request
 * answers every request from the loop (a 0 ms uv_timer) with a status, headers and a body taken
 * from the input, and media_load answers with a 1x1 PNG. The connector publishes one post (or
 * runs its login check) and must complete exactly once, never from inside publish, and leave
 * no handle open once freed; anything else aborts, so libFuzzer keeps the input.
 *
 * Input layout (segments are separated by "\n===\n"):
 *   byte 0   the connector: index into `cases` below, modulo their number
 *   byte 1   bits 0-1 text: short, long, long with thread, long with thread and numbering;
 *            bits 2-3 number of media (0-2); bit 4 a retry (attempt 2); bit 5 the first
 *            segment is the progress an earlier attempt saved; bit 6 media fail to load;
 *            bit 7 login check instead of publish (where the connector has one)
 *   byte 2   bit 0 the next segment is the post text (used if valid UTF-8); bit 1 post options;
 *            bit 2 an all-day event; bit 3 no title
 *   then one segment per HTTP answer, in request order:
 *            byte 0 the status (index into `statuses`), byte 1 low 4 bits the transport
 *            (0-11 an answer, 12 refused, 13 timed out after sending, 14 over the size cap,
 *            15 http_request fails at once); then "Name: value" lines up to an empty line,
 *            then the body. A segment without an empty line is all body.
 *   When the answers run out (or after MAX_REQUESTS), requests are refused (nothing sent).
 *
 * Time: libuv has no virtual clock, so when the connector only waits on timers (media
 * processing polls, pacing, a server's "check again in 60 s") the harness moves every timer
 * forward and adds the skipped time to the host's clocks; a minute of waiting costs nothing. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "connector_registry.h"
#include "fuzz_util.h"

#define SEP "\n===\n"
#define SEP_LEN 5
#define MAX_REQUESTS 64
#define MAX_HEADERS 32
#define WALL0_MS 1700000000000LL /* as tests/support/mock_host.h */

/* ---- the connectors and their fixed configuration ------------------------------------------ */

#define TOKEN "fuzz-token-0123456789"
static const char *kv_outbox[] = {"dir", NULL /* set in LLVMFuzzerInitialize */, NULL};

struct conn_case {
  const struct cp_connector *conn;
  const char *const *kv;
};

static const struct conn_case cases[] = {
#ifdef CP_BUILTIN_MASTODON
    {&cp_connector_mastodon,
     (const char *const[]){"instance", "https://mastodon.example", "token_env", "CP_FUZZ_TOKEN",
                           "media_timeout", "3", NULL}},
#endif
#ifdef CP_BUILTIN_X
    {&cp_connector_x,
     (const char *const[]){"consumer_key_env", "CP_FUZZ_TOKEN", "consumer_secret_env",
                           "CP_FUZZ_SECRET", "access_token_env", "CP_FUZZ_TOKEN",
                           "access_token_secret_env", "CP_FUZZ_SECRET", NULL}},
#endif
#ifdef CP_BUILTIN_LINKEDIN
    {&cp_connector_linkedin, (const char *const[]){"author", "urn:li:organization:2414183",
                                                   "token_env", "CP_FUZZ_TOKEN", NULL}},
#endif
#ifdef CP_BUILTIN_FACEBOOK
    {&cp_connector_facebook,
     (const char *const[]){"page_id", "1234567890", "token_env", "CP_FUZZ_TOKEN", "app_secret_env",
                           "CP_FUZZ_SECRET", NULL}},
#endif
#ifdef CP_BUILTIN_WEBHOOK
    {&cp_connector_webhook, (const char *const[]){"url", "https://hooks.example.org/calpost",
                                                  "secret_env", "CP_FUZZ_SECRET", NULL}},
#endif
#ifdef CP_BUILTIN_OUTBOX
    {&cp_connector_outbox, kv_outbox},
#endif
#ifdef CP_BUILTIN_BLUESKY
    {&cp_connector_bluesky,
     (const char *const[]){"service", "https://pds.example", "handle", "alice.test",
                           "app_password_env", "CP_FUZZ_PASSWORD", NULL}},
#endif
#ifdef CP_BUILTIN_TELEGRAM
    {&cp_connector_telegram,
     (const char *const[]){"chat_id", "@calpost_news", "token_env", "CP_FUZZ_TOKEN", NULL}},
#endif
#ifdef CP_BUILTIN_DISCORD
    {&cp_connector_discord, (const char *const[]){"url_env", "CP_FUZZ_DISCORD_URL", NULL}},
#endif
#ifdef CP_BUILTIN_SLACK
    {&cp_connector_slack, (const char *const[]){"url_env", "CP_FUZZ_SLACK_URL", NULL}},
#endif
#ifdef CP_BUILTIN_MATRIX
    {&cp_connector_matrix,
     (const char *const[]){"homeserver", "https://matrix.example.org", "room",
                           "!AbCdEf:example.org", "token_env", "CP_FUZZ_TOKEN", NULL}},
#endif
#ifdef CP_BUILTIN_WORDPRESS
    {&cp_connector_wordpress,
     (const char *const[]){"site", "https://blog.example.org", "username", "editor",
                           "app_password_env", "CP_FUZZ_PASSWORD", NULL}},
#endif
#ifdef CP_BUILTIN_EMAIL
    {&cp_connector_email,
     (const char *const[]){
         "server", "smtps://mail.example.org", "from", "Calpost Bot <calpost@example.org>", "to",
         "Alice <alice@example.org>, bob@example.org", "username", "calpost", "password_env",
         "CP_FUZZ_PASSWORD", "subject_prefix", "[calpost]", NULL}},
#endif
};
#define N_CASES (sizeof cases / sizeof cases[0])

/* HTTP statuses that connectors treat differently, and SMTP replies for the email connector. */
static const long statuses[] = {200, 201, 202, 204, 200, 200, 301, 400, 401, 403, 404,
                                409, 413, 415, 422, 429, 500, 502, 503, 504, 250, 421,
                                450, 535, 550, 554, 100, 299, 999, 200, 201, 200};
#define N_STATUSES (sizeof statuses / sizeof statuses[0])

enum transport { T_ANSWER, T_REFUSED, T_TIMEOUT, T_TOOBIG, T_SYNC_FAIL };

/* A 1x1 PNG (tests/data/media/pixel.png). */
static const unsigned char pixel_png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
    0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00,
    0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78,
    0x9c, 0x63, 0xf8, 0xdf, 0xc0, 0xf0, 0x1f, 0x00, 0x06, 0x80, 0x02, 0x7f, 0x10, 0x4c,
    0x1b, 0xe1, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

/* ---- the post ---------------------------------------------------------------------------------
 */

static const char short_text[] =
    "Our spring release is out! https://example.org/release #release via @alice@example.social";

static const char long_text[] =
    "Spring release 2.0 is out today. It brings the new dashboard, faster sync and a fresh look "
    "for the calendar view. Read everything at https://example.org/blog/2024/spring-release?"
    "utm_source=calpost&utm_medium=social (with screenshots).\n\n"
    "What changed: the dashboard loads in half the time, sync runs in the background, and the "
    "editor remembers where you were. Thanks to @alice@example.social and @bob.example.org for "
    "the testing! \xf0\x9f\x8e\x89\xf0\x9f\x9a\x80 #release #spring\n\n"
    "\xe6\x98\xa5\xe3\x81\xae\xe3\x83\xaa\xe3\x83\xaa\xe3\x83\xbc\xe3\x82\xb9\xe3\x81\xa7\xe3\x81"
    "\x99\xe3\x80\x82 F\xc3\xbcr alle, die es genau wissen wollen: die \xc3\x84nderungen stehen "
    "im Changelog unter https://example.org/changelog#v2.0 und im Forum.\n\n"
    "Upgrading takes one command and keeps your settings. If something breaks, tell us at "
    "https://example.org/support - we read everything. The next release is planned for the "
    "summer, with the mobile app that so many of you asked for. Stay tuned, and thank you for "
    "using it every day. \xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb\xf0\x9f\x91\x8d\xf0\x9f\x8f"
    "\xbd Questions? Reply here or write to hello@example.org.";

static const struct cp_media media_items[] = {
    {"img/poster.png", "The launch poster: a rocket over a calendar"},
    {"https://cdn.example.org/photo.png", NULL},
};

static const struct cp_post_option post_options[] = {
    {"visibility", "unlisted"}, {"cw", "Release notes"},
    {"language", "en"},         {"sensitive", "no"},
    {"silent", "yes"},          {"link", "https://example.org/release"},
    {"categories", "News, 7"},  {"tags", "release, spring"},
    {"excerpt", "Spring!"},     {"slug", "spring-release"},
};

/* ---- the fake host ------------------------------------------------------------------------- */

struct fake {
  struct cp_host host; /* first: the host pointer is the fake */
  uv_loop_t loop;
  const struct cp_connector *conn;
  void *instance;
  const uint8_t *in; /* the answers still to give */
  size_t in_len;
  int n_requests;
  int in_flight; /* answers and media loads not yet delivered */
  int completions;
  bool in_publish;
  bool media_fail;
  uint64_t start_ms;
  uint64_t skipped_ms; /* time the harness fast-forwarded */
  char progress[4096];
};

static struct fake *fake_of(const struct cp_host *host) {
  return (struct fake *)host;
}

/* The next segment of in (up to SEP or the end); false when nothing is left. */
static bool next_segment(const uint8_t **in, size_t *len, const uint8_t **seg, size_t *seg_len) {
  if (*len == 0)
    return false;
  const uint8_t *sep = memmem(*in, *len, SEP, SEP_LEN);
  *seg = *in;
  *seg_len = sep ? (size_t)(sep - *in) : *len;
  size_t used = sep ? *seg_len + SEP_LEN : *len;
  *in += used;
  *len -= used;
  return true;
}

static uint64_t fake_now_ms(const struct cp_host *host) {
  struct fake *f = fake_of(host);
  return uv_now(&f->loop) + f->skipped_ms;
}

static int64_t fake_wall_ms(const struct cp_host *host) {
  struct fake *f = fake_of(host);
  return WALL0_MS + (int64_t)(uv_now(&f->loop) - f->start_ms + f->skipped_ms);
}

static void fake_log(const struct cp_host *host, enum cp_log_level level, const char *fmt, ...) {
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (getenv("CP_FUZZ_VERBOSE"))
    fprintf(stderr, "[%s %d] %s\n", fake_of(host)->conn->name, (int)level, line);
}

static int fake_secret(const struct cp_host *host, const struct cp_connector_conf *conf,
                       const char *key, char **out) {
  char err[512] = "";
  int rc = cp_connector_secret_read(conf, key, out, err, sizeof err);
  if (rc && rc != CP_ENOTFOUND)
    host->log(host, CP_LOG_ERROR, "%s", err);
  return rc;
}

static int fake_idempotency_key(const struct cp_host *host, const struct cp_post *post, char *buf,
                                size_t size) {
  return cp_connector_idempotency_key(post, buf, size);
}

static void fake_http_result(const struct cp_publish_req *req, const struct cp_http_resp *resp,
                             struct cp_result *res) {
  struct fake *f = req->host_data;
  cp_connector_http_result(f->conn, f->instance, resp, fake_wall_ms(&f->host), res);
}

static int fake_save_progress(const struct cp_publish_req *req, const char *progress) {
  struct fake *f = req->host_data;
  size_t len = strlen(progress);
  if (len > 4096)
    return CP_ELIMIT;
  memcpy(f->progress, progress, len < sizeof f->progress ? len + 1 : sizeof f->progress);
  f->progress[sizeof f->progress - 1] = '\0';
  return 0;
}

static void check_result(const struct fake *f, const struct cp_result *res) {
  if ((int)res->outcome < CP_OUTCOME_OK || res->outcome > CP_OUTCOME_UNKNOWN)
    fuzz_fail("%s: outcome %d is not an enum cp_outcome", f->conn->name, (int)res->outcome);
  if (!memchr(res->message, '\0', sizeof res->message) ||
      !memchr(res->remote_id, '\0', sizeof res->remote_id) ||
      !memchr(res->remote_url, '\0', sizeof res->remote_url))
    fuzz_fail("%s: a result string is not NUL-terminated", f->conn->name);
}

static void fake_complete(const struct cp_publish_req *req, const struct cp_result *res) {
  struct fake *f = req->host_data;
  if (f->in_publish)
    fuzz_fail("%s completed from inside publish/login_check", f->conn->name);
  if (++f->completions > 1)
    fuzz_fail("%s completed %d times", f->conn->name, f->completions);
  check_result(f, res);
  if (getenv("CP_FUZZ_VERBOSE"))
    fprintf(stderr, "[%s] complete: %s, HTTP %ld, '%s', id '%s', url '%s', after %d requests\n",
            f->conn->name, cp_outcome_name(res->outcome), res->http_status, res->message,
            res->remote_id, res->remote_url, f->n_requests);
}

/* Reads every byte the request points at, so that a connector handing over a dangling or short
 * buffer is caught here rather than in libcurl. */
static unsigned touch_request(const struct cp_http_req *req) {
  volatile unsigned sum = 0;
  if (!req->url)
    fuzz_fail("http_request without a URL");
  sum += (unsigned)strlen(req->url);
  if (req->method)
    sum += (unsigned)strlen(req->method);
  for (size_t i = 0; i < req->n_headers; i++)
    sum += (unsigned)strlen(req->headers[i].name) + (unsigned)strlen(req->headers[i].value);
  for (size_t i = 0; req->body && i < req->body_len; i++)
    sum += (unsigned char)req->body[i];
  if (req->n_parts && req->body)
    fuzz_fail("http_request with both a body and multipart parts");
  for (size_t i = 0; i < req->n_parts; i++) {
    const struct cp_http_part *p = &req->parts[i];
    sum += (unsigned)strlen(p->name);
    if (p->filename)
      sum += (unsigned)strlen(p->filename);
    if (p->content_type)
      sum += (unsigned)strlen(p->content_type);
    size_t n = p->len ? p->len : strlen(p->data);
    for (size_t k = 0; k < n; k++)
      sum += (unsigned char)p->data[k];
  }
  for (size_t i = 0; i < req->n_mail_rcpt; i++)
    sum += (unsigned)strlen(req->mail_rcpt[i]);
  const char *strs[] = {req->mail_from, req->username, req->password, req->ca_file};
  for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
    if (strs[i])
      sum += (unsigned)strlen(strs[i]);
  return sum;
}

struct answer {
  uv_timer_t timer;
  struct fake *f;
  cp_http_cb cb;
  void *data;
  struct cp_http_resp resp;
  struct cp_http_header headers[MAX_HEADERS];
  char *text; /* the header names and values */
  char *body;
};

static void answer_closed(uv_handle_t *h) {
  struct answer *a = h->data;
  free(a->text);
  free(a->body);
  free(a);
}

static void answer_due(uv_timer_t *t) {
  struct answer *a = t->data;
  a->f->in_flight--;
  a->cb(&a->resp, a->data);
  uv_close((uv_handle_t *)&a->timer, answer_closed);
}

/* Fills a from the segment seg (see the layout at the top). Returns the transport. */
static enum transport parse_answer(struct answer *a, const uint8_t *seg, size_t len) {
  uint8_t b0 = len > 0 ? seg[0] : 0, b1 = len > 1 ? seg[1] : 0;
  const uint8_t *rest = seg + (len > 2 ? 2 : len);
  size_t rest_len = len > 2 ? len - 2 : 0;
  const uint8_t *blank = memmem(rest, rest_len, "\n\n", 2);
  size_t hlen = blank ? (size_t)(blank - rest) : 0;
  const uint8_t *body = blank ? blank + 2 : rest;
  size_t body_len = rest_len - (size_t)(body - rest);

  a->text = fuzz_strndup(rest, hlen);
  a->body = fuzz_strndup(body, body_len);
  size_t n = 0;
  for (char *line = a->text, *next; line && *line && n < MAX_HEADERS; line = next) {
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    line[strcspn(line, "\r")] = '\0';
    char *colon = strchr(line, ':');
    if (!colon)
      continue;
    *colon = '\0';
    char *value = colon + 1;
    while (*value == ' ' || *value == '\t')
      value++;
    a->headers[n++] = (struct cp_http_header){line, value};
  }
  int tr = b1 & 0x0f;
  a->resp = (struct cp_http_resp){.errmsg = "",
                                  .status = statuses[b0 % N_STATUSES],
                                  .sent = true,
                                  .headers = a->headers,
                                  .n_headers = n,
                                  .body = a->body,
                                  .body_len = body_len,
                                  .elapsed_ms = 42};
  switch (tr) {
    case 12:
      a->resp = (struct cp_http_resp){
          .err = -ECONNREFUSED, .errmsg = "Failed to connect: Connection refused", .body = ""};
      return T_REFUSED;
    case 13:
      a->resp = (struct cp_http_resp){.err = -ETIMEDOUT,
                                      .errmsg = "Operation timed out after 30000 milliseconds",
                                      .sent = true,
                                      .body = ""};
      return T_TIMEOUT;
    case 14:
      a->resp.err = CP_ETOOBIG;
      a->resp.errmsg = "response over the size cap";
      return T_TOOBIG;
    case 15:
      return T_SYNC_FAIL;
    default:
      return T_ANSWER;
  }
}

static int fake_http_request(const struct cp_host *host, const struct cp_http_req *req,
                             cp_http_cb cb, void *data) {
  struct fake *f = fake_of(host);
  if (!req || !cb)
    fuzz_fail("%s: http_request without a request or a callback", f->conn->name);
  touch_request(req);

  struct answer *a = calloc(1, sizeof *a);
  if (!a)
    fuzz_fail("out of memory");
  a->f = f;
  a->cb = cb;
  a->data = data;
  const uint8_t *seg;
  size_t seg_len;
  enum transport tr;
  if (++f->n_requests <= MAX_REQUESTS && next_segment(&f->in, &f->in_len, &seg, &seg_len)) {
    tr = parse_answer(a, seg, seg_len);
  } else {
    tr = parse_answer(a, (const uint8_t *)"\0\x0c", 2); /* refused */
  }
  if (tr == T_SYNC_FAIL) {
    free(a->text);
    free(a->body);
    free(a);
    return CP_ENOMEM; /* as the real client when it cannot set a request up */
  }
  uv_timer_init(&f->loop, &a->timer);
  a->timer.data = a;
  uv_timer_start(&a->timer, answer_due, 0, 0);
  f->in_flight++;
  return 0;
}

struct media_answer {
  uv_timer_t timer;
  struct fake *f;
  cp_media_cb cb;
  void *data;
  struct cp_media_blob blob;
};

static void media_closed(uv_handle_t *h) {
  free(h->data);
}

static void media_due(uv_timer_t *t) {
  struct media_answer *m = t->data;
  m->f->in_flight--;
  m->cb(&m->blob, m->data);
  uv_close((uv_handle_t *)&m->timer, media_closed);
}

static int fake_media_load(const struct cp_publish_req *req, const struct cp_media *media,
                           cp_media_cb cb, void *data) {
  struct fake *f = req->host_data;
  if (!media || !media->src || !cb)
    fuzz_fail("%s: media_load without media or a callback", f->conn->name);
  struct media_answer *m = calloc(1, sizeof *m);
  if (!m)
    fuzz_fail("out of memory");
  m->f = f;
  m->cb = cb;
  m->data = data;
  if (f->media_fail)
    m->blob = (struct cp_media_blob){.err = CP_ENOTFOUND,
                                     .errmsg = "img/poster.png: No such file or directory"};
  else
    m->blob = (struct cp_media_blob){.errmsg = "",
                                     .data = pixel_png,
                                     .len = sizeof pixel_png,
                                     .content_type = "image/png",
                                     .filename = "poster.png",
                                     .alt = media->alt};
  uv_timer_init(&f->loop, &m->timer);
  m->timer.data = m;
  uv_timer_start(&m->timer, media_due, 0, 0);
  f->in_flight++;
  return 0;
}

/* ---- driving the loop ------------------------------------------------------------------------ */

static void timer_min(uv_handle_t *h, void *arg) {
  uint64_t *min = arg;
  if (h->type != UV_TIMER || !uv_is_active(h))
    return;
  uint64_t due = uv_timer_get_due_in((uv_timer_t *)h);
  if (due < *min)
    *min = due;
}

static void timer_shift(uv_handle_t *h, void *arg) {
  uint64_t by = *(uint64_t *)arg;
  if (h->type != UV_TIMER || !uv_is_active(h))
    return;
  uv_timer_t *t = (uv_timer_t *)h;
  uint64_t due = uv_timer_get_due_in(t);
  /* timer_cb is a private field of uv_timer_t, but the only way to restart a timer earlier
   * without knowing whose it is. */
  uv_timer_start(t, t->timer_cb, due > by ? due - by : 0, uv_timer_get_repeat(t));
}

/* If every active timer is waiting, moves them all forward by the shortest wait. */
static void fast_forward(struct fake *f) {
  uint64_t min = UINT64_MAX;
  uv_update_time(&f->loop);
  uv_walk(&f->loop, timer_min, &min);
  if (min == 0 || min == UINT64_MAX)
    return;
  f->skipped_ms += min;
  uv_walk(&f->loop, timer_shift, &min);
}

static void print_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  fprintf(stderr, "  open handle: %s%s%s\n", uv_handle_type_name(uv_handle_get_type(h)),
          uv_is_active(h) ? " (active)" : "", uv_is_closing(h) ? " (closing)" : "");
}

/* Runs the loop until the connector completed (want_completion) or every answer was delivered. */
static void drive(struct fake *f, bool want_completion) {
  for (int i = 0; want_completion ? f->completions == 0 : f->in_flight > 0; i++) {
    if (!uv_loop_alive(&f->loop))
      fuzz_fail("%s never completes: nothing is left on the loop (%d requests answered)",
                f->conn->name, f->n_requests);
    if (i > 100000)
      fuzz_fail("%s: no completion after 100000 loop turns (%d requests)", f->conn->name,
                f->n_requests);
    fast_forward(f);
    uv_run(&f->loop, UV_RUN_ONCE);
  }
}

static void on_diag(void *arg, bool error, const char *msg) {
  (void)arg;
  (void)error;
  if (!msg)
    fuzz_fail("validate reported a NULL message");
  (void)strlen(msg);
}

static const char *conf_get(const struct cp_connector_conf *conf, const char *key, int *line) {
  const char *const *kv = conf->data;
  for (size_t i = 0; kv[i]; i += 2)
    if (!strcmp(kv[i], key)) {
      if (line)
        *line = conf->line + 1 + (int)(i / 2);
      return kv[i + 1];
    }
  return NULL;
}

static const char *conf_key_at(const struct cp_connector_conf *conf, size_t i) {
  const char *const *kv = conf->data;
  for (size_t j = 0; kv[j]; j += 2)
    if (j / 2 == i)
      return kv[j];
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  static char outbox[600];
  fuzz_path(outbox, sizeof outbox, "outbox");
  if (mkdir(outbox, 0700) < 0 && errno != EEXIST)
    fuzz_fail("mkdir %s: %s", outbox, strerror(errno));
  kv_outbox[1] = outbox;
  setenv("CP_FUZZ_TOKEN", TOKEN, 1);
  setenv("CP_FUZZ_SECRET", "fuzz-secret-abcdef", 1);
  setenv("CP_FUZZ_PASSWORD", "abcd-efgh-ijkl-mnop", 1);
  setenv("CP_FUZZ_DISCORD_URL",
         "https://discord.com/api/webhooks/123456789012345678/fuzz-webhook-token", 1);
  setenv("CP_FUZZ_SLACK_URL", "https://hooks.slack.com/services/T0000/B0000/fuzzfuzzfuzz", 1);
  if (N_CASES == 0)
    fuzz_fail("no built-in connector (CP_BUILTIN_*) in this build");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3)
    return 0;
  const struct conn_case *cc = &cases[data[0] % N_CASES];
  uint8_t flags = data[1], flags2 = data[2];
  const uint8_t *in = data + 3, *seg;
  size_t in_len = size - 3, seg_len;

  char *text = NULL;
  if ((flags2 & 1) && next_segment(&in, &in_len, &seg, &seg_len) &&
      cp_utf8_check((const char *)seg, seg_len, NULL) == 0 && !memchr(seg, '\0', seg_len))
    text = fuzz_strndup(seg, seg_len);

  struct fake *f = calloc(1, sizeof *f);
  if (!f)
    fuzz_fail("out of memory");
  char progress[4096] = "";
  if ((flags & 0x20) && next_segment(&in, &in_len, &seg, &seg_len))
    snprintf(progress, sizeof progress, "%.*s", (int)seg_len, (const char *)seg);
  f->conn = cc->conn;
  f->in = in;
  f->in_len = in_len;
  f->media_fail = flags & 0x40;
  if (uv_loop_init(&f->loop))
    fuzz_fail("uv_loop_init failed");
  f->start_ms = uv_now(&f->loop);
  f->host = (struct cp_host){
      .size = sizeof(struct cp_host),
      .version = CP_HOST_VERSION,
      .loop = &f->loop,
      .data = f,
      .http_request = fake_http_request,
      .complete = fake_complete,
      .log = fake_log,
      .now_ms = fake_now_ms,
      .wall_ms = fake_wall_ms,
      .secret = fake_secret,
      .secret_free = cp_connector_secret_free,
      .idempotency_key = fake_idempotency_key,
      .http_result = fake_http_result,
      .media_load = fake_media_load,
      .save_progress = fake_save_progress,
  };

  struct cp_connector_conf conf = {.type = cc->conn->name,
                                   .name = "fuzz",
                                   .file = "/etc/calpost/calpost.ini",
                                   .line = 10,
                                   .get = conf_get,
                                   .key_at = conf_key_at,
                                   .data = cc->kv};
  int rc = cc->conn->init(&f->host, &conf, &f->instance);
  if (rc < 0)
    fuzz_fail("%s: init with the fixed configuration failed: %s (run with CP_FUZZ_VERBOSE=1)",
              cc->conn->name, cp_err_name(rc));

  unsigned kind = flags & 3, n_media = (flags >> 2) & 3;
  struct cp_post post = {
      .id = "0123456789abcdef",
      .calendar = "editorial",
      .uid = "launch-2024@example.org",
      .occurrence = "20240102T090000Z",
      .channel = "fuzz",
      .due = 1704186000, /* 2024-01-02T09:00:00Z */
      .utc_offset = 3600,
      .tzid = "Europe/Berlin",
      .all_day = flags2 & 4,
      .state = CP_POST_SCHEDULED,
      .title = (flags2 & 8) ? "" : "Spring release",
      .text = text   ? text
              : kind ? long_text
                     : short_text,
      .media = n_media ? media_items : NULL,
      .n_media = n_media > 2 ? 2 : n_media,
      .thread = kind >= 2,
      .numbered = kind == 3,
      .campaign = "spring",
      .file = "plan.ics",
      .line = 42,
      .options = (flags2 & 2) ? post_options : NULL,
      .n_options = (flags2 & 2) ? sizeof post_options / sizeof post_options[0] : 0,
  };
  if (cc->conn->validate)
    cc->conn->validate(f->instance, &post, on_diag, NULL);

  char key[64];
  cp_connector_idempotency_key(&post, key, sizeof key);
  bool login = (flags & 0x80) && cc->conn->login_check;
  struct cp_publish_req req = {.host = &f->host,
                               .attempt = (flags & 0x10) ? 2 : 1,
                               .idempotency_key = login ? "" : key,
                               .host_data = f,
                               .progress = progress};
  f->in_publish = true;
  rc = login ? cc->conn->login_check(f->instance, &req)
             : cc->conn->publish(f->instance, &post, &req);
  f->in_publish = false;
  if (rc == 0)
    drive(f, true);
  /* The host delivers every answer it accepted, even after completion. */
  drive(f, false);
  for (int i = 0; i < 3; i++)
    uv_run(&f->loop, UV_RUN_NOWAIT); /* a stray second completion shows up here */
  if (rc != 0 && f->completions)
    fuzz_fail("%s: %s returned %s and completed as well", cc->conn->name,
              login ? "login_check" : "publish", cp_err_name(rc));

  cc->conn->free(f->instance);
  for (int i = 0; i < 100 && uv_loop_alive(&f->loop); i++)
    uv_run(&f->loop, UV_RUN_NOWAIT);
  if (uv_loop_close(&f->loop) != 0) {
    uv_walk(&f->loop, print_handle, NULL);
    fuzz_fail("%s left handles open after free", cc->conn->name);
  }
  free(f);
  free(text);
  return 0;
}
