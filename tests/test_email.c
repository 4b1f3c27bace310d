// ctest-labels: connector;peer
// ctest-connector: email
/* The email connector against a real SMTP server on 127.0.0.1: tests/support/smtp_sink.py
 * (aiosmtpd) with STARTTLS and AUTH required and a self-signed certificate made at test time.
 * The sink parses each message with python's email package; the test checks what arrived
 * (envelope, headers, both parts, attachments, line format) and each kind of failure. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "calpost/err.h"
#include "support/mock_host.h"
#include "support/testserver.h"

#ifdef CP_BUILTIN_EMAIL

#define PASSWORD "s3cret pass"
#define POST_ID "0123456789abcdef"
#define MSGID "calpost-" POST_ID "@example.org"

extern char **environ;

struct sink {
  pid_t pid;
  int stdin_fd;
  int tls_port, plain_port;
  char dir[64];
  char cert[128];
  char messages[128];
  char events[128];
};

static struct sink sink;

static int sink_start(void **state) {
  int in[2], out[2];
  char line[64] = {0}, script[PATH_MAX];
  posix_spawn_file_actions_t fa;

  snprintf(script, sizeof script, "%s", CP_TEST_DATA);
  char *slash = strrchr(script, '/');
  *slash = '\0';
  strncat(script, "/support/smtp_sink.py", sizeof script - strlen(script) - 1);
  snprintf(sink.dir, sizeof sink.dir, "/tmp/cp-smtp-XXXXXX");
  if (!mkdtemp(sink.dir))
    return -1;
  snprintf(sink.cert, sizeof sink.cert, "%s/cert.pem", sink.dir);
  snprintf(sink.messages, sizeof sink.messages, "%s/messages.jsonl", sink.dir);
  snprintf(sink.events, sizeof sink.events, "%s/events.jsonl", sink.dir);
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC))
    return -1;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  char *argv[] = {"/usr/bin/python3", script, "--dir", sink.dir, "--password", PASSWORD, NULL};
  int rc = posix_spawn(&sink.pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  sink.stdin_fd = in[1];
  if (rc)
    return -1;
  /* The first line is "TLS_PORT PLAIN_PORT"; making the key and importing aiosmtpd takes a
   * moment, more on a loaded machine. */
  size_t n = 0;
  while (n < sizeof line - 1 && !strchr(line, '\n')) {
    struct pollfd pfd = {.fd = out[0], .events = POLLIN};
    if (poll(&pfd, 1, 60000) != 1)
      break;
    ssize_t r = read(out[0], line + n, sizeof line - 1 - n);
    if (r <= 0)
      break;
    n += (size_t)r;
  }
  close(out[0]);
  if (sscanf(line, "%d %d", &sink.tls_port, &sink.plain_port) != 2) {
    fprintf(stderr, "smtp_sink.py did not start (is python3-aiosmtpd installed?)\n");
    return -1;
  }
  return 0;
}

static int sink_stop(void **state) {
  int status;
  if (sink.pid > 0) {
    kill(sink.pid, SIGTERM);
    waitpid(sink.pid, &status, 0);
  }
  if (sink.stdin_fd > 0)
    close(sink.stdin_fd);
  char path[128];
  const char *files[] = {"cert.pem", "key.pem", "messages.jsonl", "events.jsonl"};
  for (size_t i = 0; i < 4; i++) {
    snprintf(path, sizeof path, "%s/%s", sink.dir, files[i]);
    unlink(path);
  }
  rmdir(sink.dir);
  return 0;
}

static json_t *read_jsonl(const char *path) {
  json_t *all = json_array();
  static char line[1 << 20];
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  while (fgets(line, sizeof line, f)) {
    json_t *r = json_loads(line, 0, NULL);
    assert_non_null(r);
    json_array_append_new(all, r);
  }
  fclose(f);
  return all;
}

static void truncate_file(const char *path) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fclose(f);
}

struct fixture {
  struct mock_host mh;
  char pwfile[96];
  char server[64];
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  truncate_file(sink.messages);
  truncate_file(sink.events);
  snprintf(f->pwfile, sizeof f->pwfile, "%s/smtp.password", sink.dir);
  FILE *fp = fopen(f->pwfile, "w");
  fputs(PASSWORD "\n", fp);
  fclose(fp);
  assert_int_equal(chmod(f->pwfile, 0600), 0);
  snprintf(f->server, sizeof f->server, "smtp://127.0.0.1:%d", sink.tls_port);
  mock_host_init(&f->mh, &cp_connector_email);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  mock_host_close(&f->mh);
  unlink(f->pwfile);
  free(f);
  return 0;
}

/* Connects with the standard settings; extra key/value pairs (NULL-terminated) override or add. */
static int connect_with(struct fixture *f, ...) {
  const char *kv[40];
  size_t n = 0;
  const char *defaults[] = {"server",
                            f->server,
                            "from",
                            "Calpost Bot <calpost@example.org>",
                            "to",
                            "Alice \xc3\x84 <alice@example.org>, bob@example.org",
                            "username",
                            "calpost",
                            "password_file",
                            f->pwfile,
                            "ca_file",
                            sink.cert,
                            "subject_prefix",
                            "[calpost]",
                            NULL};
  const char *extra[20];
  size_t ne = 0;
  va_list ap;
  va_start(ap, f);
  for (const char *k = va_arg(ap, const char *); k && ne < 18; k = va_arg(ap, const char *)) {
    extra[ne++] = k;
    extra[ne++] = va_arg(ap, const char *);
  }
  va_end(ap);
  for (size_t i = 0; defaults[i]; i += 2) {
    bool over = false;
    for (size_t j = 0; j < ne; j += 2)
      over |= !strcmp(extra[j], defaults[i]);
    if (!over) {
      kv[n++] = defaults[i];
      kv[n++] = defaults[i + 1];
    }
  }
  for (size_t j = 0; j < ne; j += 2) {
    if (extra[j + 1]) { /* a NULL value removes the key */
      kv[n++] = extra[j];
      kv[n++] = extra[j + 1];
    }
  }
  kv[n] = NULL;
  return mock_host_connect(&f->mh, kv);
}

static const char *jstr(json_t *o, const char *key) {
  const char *v = json_string_value(json_object_get(o, key));
  if (!v)
    fail_msg("no string '%s'", key);
  return v;
}

/* s without CR, in a static buffer. */
static const char *no_cr(const char *s) {
  static char buf[1 << 16];
  size_t n = 0;
  for (; *s && n + 1 < sizeof buf; s++)
    if (*s != '\r')
      buf[n++] = *s;
  buf[n] = '\0';
  return buf;
}

static json_t *only_message(void) {
  json_t *msgs = read_jsonl(sink.messages);
  assert_int_equal(json_array_size(msgs), 1);
  json_t *m = json_incref(json_array_get(msgs, 0));
  json_decref(msgs);
  assert_null(json_object_get(m, "parse_error"));
  return m;
}

static json_t *part(json_t *m, size_t i) {
  json_t *p = json_array_get(json_object_get(m, "parts"), i);
  assert_non_null(p);
  return p;
}

/* The message format every message must keep (RFC 5322 2.1.1, 2.3). */
static void assert_well_formed(json_t *m) {
  assert_true(json_is_true(json_object_get(m, "crlf_only")));
  assert_true(json_is_true(json_object_get(m, "ascii")));
  assert_true(json_integer_value(json_object_get(m, "max_line")) <= 78);
}

#define TEXT                                                                                       \
  "Launch day <b>&amp; \"quoted\" \xc3\xbcn\xc3\xaf"                                               \
  "code \xf0\x9f\x9a\x80\n"                                                                        \
  "Read https://example.org/launch?a=1&b=2 now.\n"                                                 \
  "\n"                                                                                             \
  ".\n"                                                                                            \
  "trailing space \n"                                                                              \
  "=?UTF-8?B?notencoded?= 100% = sure"

static void message_arrives_intact(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_with(f, NULL), 0);
  char text[4096];
  char longline[1201];
  memset(longline, 'x', 1200); /* one word longer than the 998-octet line limit */
  longline[1200] = '\0';
  snprintf(text, sizeof text, "%s\n%s", TEXT, longline);
  struct cp_post post = mock_post(POST_ID, text);
  post.n_media = 0;
  post.title = "Launch \"day\" \xe2\x80\x93 \xc3\xbcn\xc3\xaf"
               "code \xf0\x9f\x9a\x80";

  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "OK");
  assert_string_equal(res.remote_id, MSGID);
  assert_int_equal(res.http_status, 250);

  json_t *m = only_message();
  if (getenv("CP_TEST_VERBOSE"))
    fputs(jstr(m, "raw"), stderr);
  assert_well_formed(m);
  assert_string_equal(jstr(m, "mail_from"), "calpost@example.org");
  json_t *rcpt = json_object_get(m, "rcpt_tos");
  assert_int_equal(json_array_size(rcpt), 2);
  assert_string_equal(json_string_value(json_array_get(rcpt, 0)), "alice@example.org");
  assert_string_equal(json_string_value(json_array_get(rcpt, 1)), "bob@example.org");
  assert_true(json_is_true(json_object_get(m, "tls")));
  assert_string_equal(jstr(m, "auth"), "calpost");
  assert_string_equal(jstr(m, "from"), "Calpost Bot <calpost@example.org>");
  assert_string_equal(jstr(m, "to"), "Alice \xc3\x84 <alice@example.org>, bob@example.org");
  assert_string_equal(jstr(m, "subject"), "[calpost] Launch \"day\" \xe2\x80\x93 "
                                          "\xc3\xbcn\xc3\xaf"
                                          "code \xf0\x9f\x9a\x80");
  assert_string_equal(jstr(m, "date"), "Tue, 14 Nov 2023 22:13:20 +0000");
  assert_string_equal(jstr(m, "message_id"), "<" MSGID ">");

  json_t *st = json_object_get(m, "structure");
  assert_int_equal(json_array_size(st), 3);
  assert_string_equal(json_string_value(json_array_get(st, 0)), "multipart/alternative");
  json_t *plain = part(m, 0), *html = part(m, 1);
  assert_string_equal(jstr(plain, "content_type"), "text/plain");
  assert_string_equal(jstr(plain, "charset"), "utf-8");
  assert_string_equal(jstr(plain, "cte"), "quoted-printable");
  /* The CRLF before a boundary belongs to the boundary: the part ends without a line end. */
  assert_string_equal(no_cr(jstr(plain, "content")), text);
  assert_string_equal(jstr(html, "content_type"), "text/html");
  assert_string_equal(jstr(html, "charset"), "utf-8");
  const char *h = no_cr(jstr(html, "content"));
  assert_non_null(strstr(h, "<meta charset=\"utf-8\">"));
  assert_non_null(strstr(h, "<p>Launch day &lt;b&gt;&amp;amp; &quot;quoted&quot; "
                            "\xc3\xbcn\xc3\xaf"
                            "code \xf0\x9f\x9a\x80<br>\n"
                            "Read <a href=\"https://example.org/launch?a=1&amp;b=2\">"
                            "https://example.org/launch?a=1&amp;b=2</a> now.<br>\n<br>\n.<br>\n"
                            "trailing space <br>\n=?UTF-8?B?notencoded?= 100% = sure<br>\n"));
  json_decref(m);
  assert_null(strstr(f->mh.log, PASSWORD));
}

static void resend_keeps_the_message_id(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_with(f, NULL), 0);
  struct cp_post post = mock_post(POST_ID, "same post");
  post.n_media = 0;
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  f->mh.wall_ms += 3600 * 1000;
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  struct cp_post other = mock_post("00000000000000aa", "other post");
  other.n_media = 0;
  assert_int_equal(mock_host_publish(&f->mh, &other).outcome, CP_OUTCOME_OK);
  json_t *msgs = read_jsonl(sink.messages);
  assert_int_equal(json_array_size(msgs), 3);
  assert_string_equal(jstr(json_array_get(msgs, 0), "message_id"), "<" MSGID ">");
  assert_string_equal(jstr(json_array_get(msgs, 1), "message_id"), "<" MSGID ">");
  assert_string_equal(jstr(json_array_get(msgs, 1), "date"), "Tue, 14 Nov 2023 23:13:20 +0000");
  assert_string_equal(jstr(json_array_get(msgs, 2), "message_id"),
                      "<calpost-00000000000000aa@example.org>");
  json_decref(msgs);
}

static void bcc_hides_the_recipients(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_with(f, "bcc", "yes", "from", "news@example.org", NULL), 0);
  struct cp_post post = mock_post(POST_ID, "to all");
  post.n_media = 0;
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *m = only_message();
  assert_well_formed(m);
  assert_string_equal(jstr(m, "to"), "undisclosed-recipients:;");
  assert_string_equal(jstr(m, "from"), "news@example.org");
  assert_int_equal(json_array_size(json_object_get(m, "rcpt_tos")), 2);
  assert_string_equal(jstr(m, "message_id"), "<calpost-" POST_ID "@example.org>");
  json_decref(m);
}

static void subject_without_title(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_with(f, "subject_prefix", NULL, NULL), 0);
  struct {
    const char *title, *calendar, *uid, *text, *subject;
  } cases[] = {
      {"", "editorial", "u", "\n  Short first line\nsecond line", "Short first line"},
      {"  ", "editorial", "u",
       "A first line that is rather long and goes on and on, well beyond seventy characters "
       "for sure\nsecond",
       "A first line that is rather long and goes on and on, well beyond\xe2\x80\xa6"},
      /* The daemon's notifications: the text says what happened, the title does not. */
      {"calpost notification", "calpost", "notification",
       "calpost: post \"Launch\" on news failed: HTTP 400",
       "calpost: post \"Launch\" on news "
       "failed: HTTP 400"},
      {"A title that is long enough to need folding because it is longer than one line of "
       "seventy-eight characters",
       "editorial", "u", "text",
       "A title that is long enough to need folding because it is longer than one line of "
       "seventy-eight characters"},
      {"Title\r\nBcc: injected@example.org", "editorial", "u", "text",
       "Title  Bcc: injected@example.org"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    truncate_file(sink.messages);
    struct cp_post post = mock_post(POST_ID, cases[i].text);
    post.n_media = 0;
    post.title = cases[i].title;
    post.calendar = cases[i].calendar;
    post.uid = cases[i].uid;
    assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
    json_t *m = only_message();
    assert_well_formed(m);
    assert_string_equal(jstr(m, "subject"), cases[i].subject);
    json_t *hdrs = json_object_get(m, "headers");
    size_t k;
    json_t *hd;
    json_array_foreach(hdrs, k, hd) {
      assert_true(strcasecmp(json_string_value(json_array_get(hd, 0)), "Bcc"));
    }
    json_decref(m);
  }
}

static void media_are_attached(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_with(f, NULL), 0);
  char png[512];
  snprintf(png, sizeof png, "%s", mock_media_path("pixel.png"));
  struct cp_media media = {png, "A single pixel \xe2\x80\x94 red"};
  struct cp_post post = mock_post(POST_ID, "With a picture");
  post.media = &media;
  post.n_media = 1;
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *m = only_message();
  assert_well_formed(m);
  json_t *st = json_object_get(m, "structure");
  assert_int_equal(json_array_size(st), 5);
  assert_string_equal(json_string_value(json_array_get(st, 0)), "multipart/mixed");
  assert_string_equal(json_string_value(json_array_get(st, 1)), "multipart/alternative");
  assert_string_equal(no_cr(jstr(part(m, 0), "content")), "With a picture");
  json_t *img = part(m, 2);
  assert_string_equal(jstr(img, "content_type"), "image/png");
  assert_string_equal(jstr(img, "filename"), "pixel.png");
  assert_string_equal(jstr(img, "disposition"), "inline");
  assert_string_equal(jstr(img, "description"), "A single pixel \xe2\x80\x94 red");
  unsigned char want[256], b64[512];
  FILE *fp = fopen(png, "rb");
  size_t n = fread(want, 1, sizeof want, fp);
  fclose(fp);
  EVP_EncodeBlock(b64, want, (int)n);
  assert_string_equal(jstr(img, "content_b64"), (char *)b64);
  json_decref(m);

  /* HTML named .png: nothing is sent. */
  truncate_file(sink.messages);
  snprintf(png, sizeof png, "%s", mock_media_path("not-an-image.png"));
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "PERMANENT");
  assert_non_null(strstr(res.message, "media 1"));
  json_t *msgs = read_jsonl(sink.messages);
  assert_int_equal(json_array_size(msgs), 0);
  json_decref(msgs);
}

static void smtp_replies_give_their_outcome(void **state) {
  struct fixture *f = *state;
  struct {
    const char *to;
    enum cp_outcome outcome;
    long status;
    const char *message;
    size_t delivered;
  } cases[] = {
      /* The message went out; the answer never came: it may have been delivered (it was),
       * and it must not be sent a second time by a silent retry on a fresh connection. */
      {"dropdata@example.org", CP_OUTCOME_UNKNOWN, 354, "may have been delivered", 1},
      {"tempfail@example.org", CP_OUTCOME_RETRY, 451, "SMTP 451", 0},
      {"ok@example.org, tempfail@example.org", CP_OUTCOME_RETRY, 451, "temporary", 0},
      {"permfail@example.org", CP_OUTCOME_PERMANENT, 550, "SMTP 550", 0},
  };
  /* A message first, so that the connection may be kept and reused by the next ones. */
  assert_int_equal(connect_with(f, NULL), 0);
  struct cp_post first = mock_post("00000000000000aa", "first");
  first.n_media = 0;
  assert_int_equal(mock_host_publish(&f->mh, &first).outcome, CP_OUTCOME_OK);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    print_message("to %s\n", cases[i].to);
    truncate_file(sink.messages);
    f->mh.instance ? cp_connector_email.free(f->mh.instance) : (void)0;
    f->mh.instance = NULL;
    assert_int_equal(connect_with(f, "to", cases[i].to, NULL), 0);
    struct cp_post post = mock_post(POST_ID, "hello");
    post.n_media = 0;
    struct cp_result res = mock_host_publish(&f->mh, &post);
    assert_string_equal(cp_outcome_name(res.outcome), cp_outcome_name(cases[i].outcome));
    assert_int_equal(res.http_status, cases[i].status);
    if (!strstr(res.message, cases[i].message))
      fail_msg("message '%s' lacks '%s'", res.message, cases[i].message);
    assert_string_equal(res.remote_id, "");
    json_t *msgs = read_jsonl(sink.messages);
    assert_int_equal(json_array_size(msgs), cases[i].delivered);
    json_decref(msgs);
  }
}

static void wrong_password_is_auth(void **state) {
  struct fixture *f = *state;
  setenv("CP_TEST_SMTP_PASSWORD", "not the password", 1);
  assert_int_equal(
      connect_with(f, "password_file", NULL, "password_env", "CP_TEST_SMTP_PASSWORD", NULL), 0);
  struct cp_post post = mock_post(POST_ID, "hello");
  post.n_media = 0;
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_int_equal(res.http_status, 535);
  assert_non_null(strstr(res.message, "password"));
  assert_null(strstr(res.message, "not the password"));
  assert_null(strstr(f->mh.log, "not the password"));
  json_t *msgs = read_jsonl(sink.messages);
  assert_int_equal(json_array_size(msgs), 0);
  json_decref(msgs);
  unsetenv("CP_TEST_SMTP_PASSWORD");

  /* No login at all: the server requires one (530). */
  cp_connector_email.free(f->mh.instance);
  f->mh.instance = NULL;
  assert_int_equal(connect_with(f, "password_file", NULL, "username", NULL, NULL), 0);
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_int_equal(res.http_status, 530);
}

static void tls_is_verified(void **state) {
  struct fixture *f = *state;
  /* Without the test CA the self-signed certificate is refused: nothing is sent. */
  assert_int_equal(connect_with(f, "ca_file", NULL, NULL), 0);
  struct cp_post post = mock_post(POST_ID, "hello");
  post.n_media = 0;
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_int_not_equal(res.err, 0);
  json_t *ev = read_jsonl(sink.events);
  assert_int_equal(json_array_size(ev), 0); /* no AUTH, no MAIL */
  json_decref(ev);

  /* A server that does not offer STARTTLS is refused too (starttls = yes by default). */
  char plain[64];
  snprintf(plain, sizeof plain, "smtp://127.0.0.1:%d", sink.plain_port);
  cp_connector_email.free(f->mh.instance);
  f->mh.instance = NULL;
  assert_int_equal(connect_with(f, "server", plain, NULL), 0);
  res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  json_t *msgs = read_jsonl(sink.messages);
  assert_int_equal(json_array_size(msgs), 0);
  json_decref(msgs);
}

static void plain_smtp_on_loopback(void **state) {
  struct fixture *f = *state;
  char plain[64];
  snprintf(plain, sizeof plain, "smtp://127.0.0.1:%d", sink.plain_port);
  assert_int_equal(connect_with(f, "server", plain, "starttls", "no", "username", NULL,
                                "password_file", NULL, NULL),
                   0);
  struct cp_post post = mock_post(POST_ID, "hello");
  post.n_media = 0;
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  json_t *m = only_message();
  assert_true(json_is_false(json_object_get(m, "tls")));
  assert_string_equal(jstr(m, "port"), "plain");
  json_decref(m);
}

static void refused_connection_is_retried(void **state) {
  struct fixture *f = *state;
  char dead[64];
  snprintf(dead, sizeof dead, "smtp://127.0.0.1:%d", testserver_dead_port());
  assert_int_equal(connect_with(f, "server", dead, NULL), 0);
  struct cp_post post = mock_post(POST_ID, "hello");
  post.n_media = 0;
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_string_equal(cp_outcome_name(res.outcome), "RETRY");
  assert_int_equal(res.err, -ECONNREFUSED);
  assert_int_equal(res.http_status, 0);
}

static void login_check_logs_in_without_mail(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_with(f, NULL), 0);
  /* The check needs a host that makes an SMTP exchange without a message (libcurl then sends
   * HELP after AUTH); a host without it is told apart by CP_ENOTFOUND, as for no login check. */
  struct cp_publish_req probe = {.host = &f->mh.host,
                                 .attempt = 1,
                                 .idempotency_key = "",
                                 .host_data = &f->mh,
                                 .progress = ""};
  int rc = cp_connector_email.login_check(f->mh.instance, &probe);
  if (rc == CP_ENOTFOUND) {
    print_message("this host has no login-only SMTP exchange: the login check is unavailable\n");
    json_t *ev = read_jsonl(sink.events);
    assert_int_equal(json_array_size(ev), 0);
    json_decref(ev);
    return;
  }
  assert_int_equal(rc, 0);
  while (f->mh.completions == 0)
    uv_run(&f->mh.loop, UV_RUN_ONCE);
  uv_run(&f->mh.loop, UV_RUN_NOWAIT);
  assert_int_equal(f->mh.completions, 1);
  assert_int_equal(f->mh.reentrant_completions, 0);
  assert_string_equal(cp_outcome_name(f->mh.last.outcome), "OK");
  json_t *ev = read_jsonl(sink.events);
  assert_int_equal(json_array_size(ev), 1); /* logged in, and no MAIL */
  assert_string_equal(jstr(json_array_get(ev, 0), "event"), "auth");
  assert_true(json_is_true(json_object_get(json_array_get(ev, 0), "ok")));
  json_decref(ev);

  truncate_file(sink.events);
  cp_connector_email.free(f->mh.instance);
  f->mh.instance = NULL;
  setenv("CP_TEST_SMTP_PASSWORD", "wrong", 1);
  assert_int_equal(
      connect_with(f, "password_file", NULL, "password_env", "CP_TEST_SMTP_PASSWORD", NULL), 0);
  struct cp_result res = mock_host_login_check(&f->mh);
  assert_string_equal(cp_outcome_name(res.outcome), "AUTH");
  assert_int_equal(res.http_status, 535);
  unsetenv("CP_TEST_SMTP_PASSWORD");
  ev = read_jsonl(sink.events);
  assert_int_equal(json_array_size(ev), 1);
  assert_string_equal(jstr(json_array_get(ev, 0), "event"), "auth");
  assert_true(json_is_false(json_object_get(json_array_get(ev, 0), "ok")));
  json_decref(ev);
  json_t *msgs = read_jsonl(sink.messages);
  assert_int_equal(json_array_size(msgs), 0);
  json_decref(msgs);
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  struct {
    const char *key, *value, *log;
  } cases[] = {
      {"server", NULL, "needs 'server = smtp://"},
      {"server", "https://mail.example.org", "server: 'https://mail.example.org' is not an smtp"},
      {"from", NULL, "needs 'from = "},
      {"from", "Calpost <calpost@@example.org>", "from: 'Calpost <calpost@@example.org>'"},
      {"from", "Bot <bot@example.org>\r\nBcc: x@example.org", "from: "},
      {"to", NULL, "needs 'to = "},
      {"to", "a@example.org, not an address", "to: 'not an address'"},
      {"to", " , ", "to: "},
      {"bcc", "maybe", "bcc: 'maybe' is not yes or no"},
      {"starttls", "no", "starttls = no is allowed only for a server on this machine"},
      {"ca_file", "/nonexistent/ca.pem", "ca_file: cannot read /nonexistent/ca.pem"},
      {"username", NULL, "a password is set but no 'username"},
      {"password_file", NULL, "username is set but no 'password_file"},
      {"timeout", "soon", "timeout: 'soon'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    print_message("%s = %s\n", cases[i].key, cases[i].value ? cases[i].value : "(none)");
    f->mh.log_len = 0;
    f->mh.log[0] = '\0';
    if (!strcmp(cases[i].key, "starttls")) {
      assert_int_equal(connect_with(f, "server", "smtp://mail.example.org", "starttls", "no", NULL),
                       CP_ECONFIG);
    } else {
      assert_int_equal(connect_with(f, cases[i].key, cases[i].value, NULL), CP_ECONFIG);
    }
    if (!strstr(f->mh.log, cases[i].log))
      fail_msg("log '%s' lacks '%s'", f->mh.log, cases[i].log);
    assert_non_null(strstr(f->mh.log, "calpost.ini:"));
    assert_null(f->mh.instance);
  }
  assert_int_equal(connect_with(f, "server", "smtps://mail.example.org", "starttls", "yes", NULL),
                   CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "smtps:// is always encrypted"));
}

static int n_errors;
static char last_diag[512];
static void on_diag(void *arg, bool error, const char *msg) {
  n_errors += error;
  snprintf(last_diag, sizeof last_diag, "%s", msg);
}

static void validate_checks_without_io(void **state) {
  struct fixture *f = *state;
  assert_int_equal(connect_with(f, "max_chars", "10", NULL), 0);
  const struct cp_connector *c = &cp_connector_email;
  struct cp_post post = mock_post(POST_ID, "short");
  post.n_media = 0;
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), 0);
  post.text = "eleven char";
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "allows 10"));
  post.text = "";
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "no text and no media"));
  post.text = "bad \xff utf-8";
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "UTF-8"));
  struct cp_media m = {"notes.txt", NULL};
  post.text = "ok";
  post.media = &m;
  post.n_media = 1;
  assert_int_equal(c->validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_non_null(strstr(last_diag, "media 1 (notes.txt)"));
  json_t *ev = read_jsonl(sink.events);
  assert_int_equal(json_array_size(ev), 0);
  json_decref(ev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(message_arrives_intact, setup, teardown),
      cmocka_unit_test_setup_teardown(resend_keeps_the_message_id, setup, teardown),
      cmocka_unit_test_setup_teardown(bcc_hides_the_recipients, setup, teardown),
      cmocka_unit_test_setup_teardown(subject_without_title, setup, teardown),
      cmocka_unit_test_setup_teardown(media_are_attached, setup, teardown),
      cmocka_unit_test_setup_teardown(smtp_replies_give_their_outcome, setup, teardown),
      cmocka_unit_test_setup_teardown(wrong_password_is_auth, setup, teardown),
      cmocka_unit_test_setup_teardown(tls_is_verified, setup, teardown),
      cmocka_unit_test_setup_teardown(plain_smtp_on_loopback, setup, teardown),
      cmocka_unit_test_setup_teardown(refused_connection_is_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(login_check_logs_in_without_mail, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_checks_without_io, setup, teardown),
  };
  return cmocka_run_group_tests(tests, sink_start, sink_stop);
}

#else
int main(void) {
  puts("the email connector is not built (CALPOST_CONNECTOR_EMAIL=OFF): skipped");
  return 0;
}
#endif
