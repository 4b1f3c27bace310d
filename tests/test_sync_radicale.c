// ctest-labels: peer
/* Plan sync against a real CalDAV server: Debian's Radicale 3.1.8, started by this test on
 * 127.0.0.1 (a free port, a temporary storage folder, no authentication). The collection is
 * fetched with a plain GET; Radicale ignores If-None-Match on GET and answers 200 every time, so
 * an unchanged collection must be recognised by its ETag (CONNECTORS-NOTES 2.2). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <uv.h>

#include "calpost/err.h"
#include "support/testserver.h"
#include "sync.h"

#define RADICALE_MODULE "/usr/lib/python3/dist-packages/radicale/__main__.py"

struct fixture {
  char root[64];
  pid_t pid;
  int port;
  char base[96]; /* http://127.0.0.1:PORT */
  uv_loop_t loop;
  struct cp_sync *sync;
  int changed;
  int failed;
  char why[512];
};

static void on_changed(void *arg, const char *calendar, const char *source) {
  ((struct fixture *)arg)->changed++;
}

static void on_failed(void *arg, const char *calendar, const char *source, const char *why) {
  struct fixture *f = arg;
  f->failed++;
  snprintf(f->why, sizeof f->why, "%s", why);
}

/* One blocking request: the test's plumbing, not the code under test. Returns the status. */
static long dav(struct fixture *f, const char *method, const char *path, const char *body) {
  char url[256];
  long status = 0;
  struct curl_slist *h = NULL;
  CURL *e = curl_easy_init();
  assert_non_null(e);
  snprintf(url, sizeof url, "%s%s", f->base, path);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
  /* Any name will do (auth none); Radicale creates the user's principal collection for it. */
  curl_easy_setopt(e, CURLOPT_USERPWD, "editor:x");
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, testserver_discard);
  if (body) {
    h = curl_slist_append(h, "Content-Type: text/calendar; charset=utf-8");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  }
  if (curl_easy_perform(e) == CURLE_OK)
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
  return status;
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  char storage[256], log[256], hosts[64];

  *state = f;
  if (access("/usr/bin/radicale", X_OK) || access(RADICALE_MODULE, R_OK)) {
    fprintf(stderr, "radicale is not installed (apt-get install radicale): skipped\n");
    return 0;
  }
  snprintf(f->root, sizeof f->root, "/tmp/cp-radicale-XXXXXX");
  assert_non_null(mkdtemp(f->root));
  snprintf(storage, sizeof storage, "%s/collections", f->root);
  snprintf(log, sizeof log, "%s/radicale.log", f->root);
  f->port = testserver_dead_port();
  snprintf(hosts, sizeof hosts, "127.0.0.1:%d", f->port);
  snprintf(f->base, sizeof f->base, "http://%s", hosts);

  f->pid = fork();
  assert_true(f->pid >= 0);
  if (f->pid == 0) {
    /* Dies with the test, even if the test crashes. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    /* --config "": not /etc/radicale/config (remote_user auth, rights from a file). */
    execl("/usr/bin/python3", "/usr/bin/python3", "-m", "radicale", "--config", "",
          "--server-hosts", hosts, "--storage-filesystem-folder", storage, "--auth-type", "none",
          "--logging-level", "warning", (char *)NULL);
    _exit(127);
  }
  assert_int_equal(uv_loop_init(&f->loop), 0);
  for (int i = 0; i < 300; i++) { /* up to 15 s; it is usually ready in under one */
    if (dav(f, "OPTIONS", "/", NULL) > 0)
      break;
    int status;
    if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
      f->pid = 0;
      fail_msg("radicale exited at start; see %s", log);
    }
    usleep(50000);
  }
  assert_true(dav(f, "OPTIONS", "/", NULL) > 0);
  return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  return remove(path);
}

static void stopped(void *arg) {
  (*(int *)arg)++;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  if (f->pid > 0) {
    int n = 0, status;
    cp_sync_stop(f->sync, stopped, &n);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(n, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    kill(f->pid, SIGTERM);
    waitpid(f->pid, &status, 0);
  }
  if (f->root[0])
    nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

static void on_stop_timer(uv_timer_t *t) {
  uv_stop(t->loop);
}

static void run_for(struct fixture *f, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&f->loop, &t);
  uv_timer_start(&t, on_stop_timer, ms, 0);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* How long a wait may last before the test gives up: only an upper bound (each wait ends as soon
 * as its event happens), generous because Radicale shares a loaded CI machine. */
#define WAIT_MS 30000

static void wait_for(struct fixture *f, const int *counter, int n, uint64_t timeout_ms) {
  uint64_t start = uv_now(&f->loop);
  while (*counter < n && uv_now(&f->loop) - start < timeout_ms)
    run_for(f, 10);
}

static void event(char *buf, size_t len, const char *uid, const char *summary) {
  snprintf(buf, len,
           "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calpost//test//EN\r\nBEGIN:VEVENT\r\n"
           "UID:%s\r\nDTSTAMP:20300101T000000Z\r\nDTSTART:20300301T090000Z\r\n"
           "SUMMARY:%s\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
           uid, summary);
}

static char *read_candidate(struct fixture *f, const char *source) {
  char path[512];
  assert_int_equal(cp_sync_read_path(f->sync, source, path, sizeof path), 0);
  FILE *fp = fopen(path, "r");
  assert_non_null(fp);
  char *buf = calloc(1, 65536);
  buf[fread(buf, 1, 65535, fp)] = '\0';
  fclose(fp);
  return buf;
}

static struct cp_sync_info info_of(struct fixture *f, const char *source) {
  struct cp_sync_info i;
  assert_int_equal(cp_sync_source_info(f->sync, source, &i), 0);
  return i;
}

/* Runs the loop until n more fetches of source have started and the last of them has ended (up
 * to WAIT_MS each), checking each start against the one before on the loop's clock: never
 * sooner than interval_ms (a start missed between two looks counts as its share of the gap). */
static void wait_polls(struct fixture *f, const char *source, uint64_t n, uint64_t interval_ms) {
  struct cp_sync_info i = info_of(f, source);
  uint64_t seen = i.starts, t0 = uv_hrtime();
  while (i.starts < seen + n && (uv_hrtime() - t0) / 1000000 < WAIT_MS) {
    run_for(f, 10);
    struct cp_sync_info now = info_of(f, source);
    if (now.starts != i.starts &&
        now.last_start - i.last_start < (now.starts - i.starts) * interval_ms)
      fail_msg("starts %llu to %llu: %llu ms apart, interval %llu ms", (unsigned long long)i.starts,
               (unsigned long long)now.starts, (unsigned long long)(now.last_start - i.last_start),
               (unsigned long long)interval_ms);
    i = now;
  }
  assert_true(i.starts >= seen + n);
  t0 = uv_hrtime();
  while (info_of(f, source).fetches < i.starts && (uv_hrtime() - t0) / 1000000 < WAIT_MS)
    run_for(f, 10);
  assert_true(info_of(f, source).fetches >= i.starts);
}

static void caldav_collection_sync(void **state) {
  struct fixture *f = *state;
  char url[128], ev[512];
  if (f->pid <= 0)
    skip();

  assert_int_equal(dav(f, "MKCALENDAR", "/editor/posts/", NULL), 201);
  event(ev, sizeof ev, "launch@calpost.test", "Launch");
  assert_int_equal(dav(f, "PUT", "/editor/posts/launch.ics", ev), 201);

  snprintf(url, sizeof url, "%s/editor/posts/", f->base);
  struct cp_sync_opts o = {.loop = &f->loop,
                           .state_dir = f->root,
                           .poll_interval_ms = 250,
                           .max_size = 1024 * 1024,
                           .timeout_ms = WAIT_MS,
                           .allow_loopback_http = true,
                           .changed = on_changed,
                           .failed = on_failed,
                           .arg = f};
  struct cp_sync_source src = {"editorial", url};
  assert_int_equal(cp_sync_start(&o, &src, 1, &f->sync), 0);

  /* The first fetch: the whole collection as one calendar. */
  wait_for(f, &f->changed, 1, WAIT_MS);
  if (f->failed)
    fail_msg("failed: %s", f->why);
  assert_int_equal(f->changed, 1);
  char *body = read_candidate(f, url);
  assert_non_null(strstr(body, "BEGIN:VCALENDAR"));
  assert_non_null(strstr(body, "UID:launch@calpost.test"));
  free(body);
  assert_int_equal(cp_sync_accept(f->sync, url), 0);

  /* Unchanged polls: Radicale answers 200 (it ignores If-None-Match), the ETag says "same". */
  /* Three more polls, at the configured interval, never sooner (a loaded machine can only make
   * them later). */
  struct cp_sync_info before = info_of(f, url);
  wait_polls(f, url, 3, 250);
  struct cp_sync_info after = info_of(f, url);
  assert_true(after.fetches >= before.fetches + 3);
  assert_int_equal(after.not_modified, 0);
  assert_int_equal(after.same_etag - before.same_etag, after.fetches - before.fetches);
  assert_int_equal(after.same_content, 0); /* the body was never examined */
  assert_int_equal(f->changed, 1);
  assert_false(cp_sync_pending(f->sync, url));

  /* A new event in the collection: the next poll announces it. */
  event(ev, sizeof ev, "teaser@calpost.test", "Teaser");
  assert_int_equal(dav(f, "PUT", "/editor/posts/teaser.ics", ev), 201);
  wait_for(f, &f->changed, 2, WAIT_MS);
  assert_int_equal(f->changed, 2);
  body = read_candidate(f, url);
  assert_non_null(strstr(body, "UID:launch@calpost.test"));
  assert_non_null(strstr(body, "UID:teaser@calpost.test"));
  free(body);
  assert_int_equal(cp_sync_accept(f->sync, url), 0);

  /* A deleted event too. */
  assert_int_equal(dav(f, "DELETE", "/editor/posts/launch.ics", NULL), 200);
  wait_for(f, &f->changed, 3, WAIT_MS);
  assert_int_equal(f->changed, 3);
  body = read_candidate(f, url);
  assert_null(strstr(body, "UID:launch@calpost.test"));
  assert_non_null(strstr(body, "UID:teaser@calpost.test"));
  free(body);
  assert_int_equal(f->failed, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(caldav_collection_sync, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
