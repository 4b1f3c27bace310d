/* Starts tests/support/testserver.py from a cmocka test and talks to it. Header-only (static
 * functions) because every tests/test_*.c builds alone. Include after <cmocka.h>.
 *
 *   struct testserver ts;
 *   testserver_start(&ts);
 *   testserver_script(&ts, "[{\"status\": 429, \"headers\": {\"Retry-After\": \"5\"}}]");
 *   ... requests to testserver_url(&ts, "/hook", buf, sizeof buf) ...
 *   json_t *reqs = testserver_requests(&ts);   // what the server received, in order
 *   testserver_stop(&ts);
 */
#ifndef CALPOST_TEST_TESTSERVER_H
#define CALPOST_TEST_TESTSERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

extern char **environ;

struct testserver {
  pid_t pid;
  int stdin_fd; /* the server exits when this closes, even if the test crashes */
  int port;
  char dir[64];
  char log[128];
};

/* CP_TEST_DATA is tests/data; the script is tests/support/testserver.py. Resolved by text, so
 * tests/data need not exist. CP_TESTSERVER in the environment overrides it. */
static inline const char *testserver_script_path(void) {
  static char path[PATH_MAX];
  const char *env = getenv("CP_TESTSERVER");
  if (env && *env)
    return env;
  snprintf(path, sizeof path, "%s", CP_TEST_DATA);
  char *slash = strrchr(path, '/');
  if (slash)
    *slash = '\0';
  strncat(path, "/support/testserver.py", sizeof path - strlen(path) - 1);
  return path;
}

static inline void testserver_start(struct testserver *ts) {
  int in[2], out[2];
  char port[16] = {0};
  posix_spawn_file_actions_t fa;

  memset(ts, 0, sizeof *ts);
  snprintf(ts->dir, sizeof ts->dir, "/tmp/cp-testserver-XXXXXX");
  assert_non_null(mkdtemp(ts->dir));
  snprintf(ts->log, sizeof ts->log, "%s/requests.jsonl", ts->dir);
  assert_int_equal(pipe2(in, O_CLOEXEC), 0);
  assert_int_equal(pipe2(out, O_CLOEXEC), 0);
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  char *argv[] = {"/usr/bin/python3", (char *)testserver_script_path(), "--log", ts->log, NULL};
  int rc = posix_spawn(&ts->pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  assert_int_equal(rc, 0);
  close(in[0]);
  close(out[1]);
  ts->stdin_fd = in[1];

  /* The first line on its stdout is the port. */
  size_t n = 0;
  while (n < sizeof port - 1 && !strchr(port, '\n')) {
    struct pollfd pfd = {.fd = out[0], .events = POLLIN};
    assert_true(poll(&pfd, 1, 10000) == 1);
    ssize_t r = read(out[0], port + n, sizeof port - 1 - n);
    assert_true(r > 0);
    n += (size_t)r;
  }
  close(out[0]);
  ts->port = atoi(port);
  assert_true(ts->port > 0);
}

static inline void testserver_stop(struct testserver *ts) {
  int status;
  if (ts->pid > 0) {
    kill(ts->pid, SIGTERM);
    waitpid(ts->pid, &status, 0);
    ts->pid = 0;
  }
  if (ts->stdin_fd > 0)
    close(ts->stdin_fd);
  ts->stdin_fd = 0;
  unlink(ts->log);
  rmdir(ts->dir);
}

static inline const char *testserver_url(const struct testserver *ts, const char *path, char *buf,
                                         size_t size) {
  snprintf(buf, size, "http://127.0.0.1:%d%s", ts->port, path);
  return buf;
}

static inline size_t testserver_discard(char *p, size_t size, size_t n, void *u) {
  return size * n;
}

/* A blocking control call: the test's own plumbing, not the code under test. */
static inline void testserver_control(const struct testserver *ts, const char *path,
                                      const char *body) {
  char url[128];
  long status = 0;
  CURL *e = curl_easy_init();
  assert_non_null(e);
  curl_easy_setopt(e, CURLOPT_URL, testserver_url(ts, path, url, sizeof url));
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, testserver_discard);
  curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
  assert_int_equal(curl_easy_perform(e), CURLE_OK);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(e);
  assert_int_equal(status, 200);
}

/* Replaces the queue of scripted responses (see testserver.py) and forgets earlier requests. */
static inline void testserver_script(const struct testserver *ts, const char *script_json) {
  testserver_control(ts, "/__control/reset", "");
  testserver_control(ts, "/__control/script", script_json);
}

/* Every request received since the last script, as a new JSON array. */
static inline json_t *testserver_requests(const struct testserver *ts) {
  json_t *all = json_array();
  char *line = NULL;
  size_t cap = 0;
  FILE *f = fopen(ts->log, "r");
  assert_non_null(f);
  while (getline(&line, &cap, f) > 0) { /* lines can be long: bodies of uploads */
    json_error_t jerr;
    json_t *r = json_loads(line, JSON_ALLOW_NUL, &jerr); /* bodies may hold NUL bytes */
    assert_non_null(r);
    json_array_append_new(all, r);
  }
  free(line);
  fclose(f);
  return all;
}

/* The value of a header of a recorded request (case-insensitive), or NULL. */
static inline const char *testserver_header(json_t *req, const char *name) {
  size_t i;
  json_t *pair;
  json_array_foreach(json_object_get(req, "headers"), i, pair) {
    if (!strcasecmp(json_string_value(json_array_get(pair, 0)), name))
      return json_string_value(json_array_get(pair, 1));
  }
  return NULL;
}

/* A port on 127.0.0.1 where nothing listens (bound, then closed). */
static inline int testserver_dead_port(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

#endif
