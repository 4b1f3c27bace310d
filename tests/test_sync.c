// ctest-labels: integration
/* Plan sync on a real libuv loop: local files in a temporary folder (real inotify events, real
 * renames) and remote calendars served by tests/support/testserver.py on 127.0.0.1. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <uv.h>

#include "calpost/err.h"
#include "support/testserver.h"
#include "sync.h"

#define DEBOUNCE_MS 150
/* Upper bounds of waits that end at their event: a loaded machine only makes them longer. */
#define WAIT_MS 30000

struct fixture {
  char root[64];
  char plans[96];
  char state[96];
  char cal_dir[128];
  uv_loop_t loop;
  struct cp_sync *sync;
  struct cp_sync_opts opts;
  bool server;
  struct testserver ts;
  /* what the callbacks saw */
  int changed;
  uint64_t changed_at; /* uv_hrtime() of the last announcement */
  int failed;
  char calendar[64];
  char source[256];
  char why[512];
};

static void on_changed(void *arg, const char *calendar, const char *source) {
  struct fixture *f = arg;
  f->changed++;
  f->changed_at = uv_hrtime();
  snprintf(f->calendar, sizeof f->calendar, "%s", calendar);
  snprintf(f->source, sizeof f->source, "%s", source);
}

static void on_failed(void *arg, const char *calendar, const char *source, const char *why) {
  struct fixture *f = arg;
  f->failed++;
  snprintf(f->calendar, sizeof f->calendar, "%s", calendar);
  snprintf(f->source, sizeof f->source, "%s", source);
  snprintf(f->why, sizeof f->why, "%s", why);
}

static int setup_common(void **state, bool server) {
  struct fixture *f = calloc(1, sizeof *f);
  snprintf(f->root, sizeof f->root, "/tmp/cp-sync-XXXXXX");
  assert_non_null(mkdtemp(f->root));
  snprintf(f->plans, sizeof f->plans, "%s/plans", f->root);
  snprintf(f->state, sizeof f->state, "%s/state", f->root);
  snprintf(f->cal_dir, sizeof f->cal_dir, "%s/calendars", f->state);
  assert_int_equal(mkdir(f->plans, 0755), 0);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  f->opts = (struct cp_sync_opts){.loop = &f->loop,
                                  .state_dir = f->state,
                                  .poll_interval_ms = 60 * 60 * 1000,
                                  .debounce_ms = DEBOUNCE_MS,
                                  .max_size = 1024 * 1024,
                                  .timeout_ms = 5000,
                                  .allow_loopback_http = true,
                                  .changed = on_changed,
                                  .failed = on_failed,
                                  .arg = f};
  f->server = server;
  if (server)
    testserver_start(&f->ts);
  *state = f;
  return 0;
}

static int setup_local(void **state) {
  return setup_common(state, false);
}

static int setup_remote(void **state) {
  return setup_common(state, true);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  return remove(path);
}

static void stopped(void *arg) {
  (*(int *)arg)++;
}

static void stop_sync(struct fixture *f) {
  int n = 0;
  cp_sync_stop(f->sync, stopped, &n);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  assert_int_equal(n, 1);
  f->sync = NULL;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  if (f->sync)
    stop_sync(f);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  if (f->server)
    testserver_stop(&f->ts);
  nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static void on_stop_timer(uv_timer_t *t) {
  uv_stop(t->loop);
}

/* Runs the loop for ms milliseconds. */
static void run_for(struct fixture *f, uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&f->loop, &t);
  uv_timer_start(&t, on_stop_timer, ms, 0);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Runs the loop until *counter reaches n or timeout_ms pass; returns the milliseconds waited. */
static uint64_t wait_for(struct fixture *f, const int *counter, int n, uint64_t timeout_ms) {
  uint64_t start = uv_now(&f->loop);
  while (*counter < n && uv_now(&f->loop) - start < timeout_ms)
    run_for(f, 10);
  return uv_now(&f->loop) - start;
}

static struct cp_sync_info info_of(struct fixture *f, const char *source) {
  struct cp_sync_info i;
  assert_int_equal(cp_sync_source_info(f->sync, source, &i), 0);
  return i;
}

/* Runs the loop until the source has completed n fetches. */
static void wait_fetches(struct fixture *f, const char *source, uint64_t n) {
  for (int i = 0; i < 1000 && info_of(f, source).fetches < n; i++)
    run_for(f, 10);
  assert_int_equal(info_of(f, source).fetches, n);
}

static void cal(char *buf, size_t len, const char *summary) {
  snprintf(buf, len,
           "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calpost//test//EN\r\nBEGIN:VEVENT\r\n"
           "UID:%s@calpost.test\r\nDTSTAMP:20300101T000000Z\r\nDTSTART:20300301T090000Z\r\n"
           "SUMMARY:%s\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
           summary, summary);
}

static void write_file(const char *path, const char *text) {
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
  assert_int_equal(fclose(fp), 0);
}

static void append_file(const char *path, const char *text) {
  FILE *fp = fopen(path, "a");
  assert_non_null(fp);
  assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
  assert_int_equal(fclose(fp), 0);
}

/* The whole file as a new string, or NULL if it does not exist. */
static char *slurp(const char *path) {
  FILE *fp = fopen(path, "r");
  if (!fp)
    return NULL;
  char *buf = calloc(1, 1 << 20);
  size_t n = fread(buf, 1, (1 << 20) - 1, fp);
  buf[n] = '\0';
  fclose(fp);
  return buf;
}

/* Asserts that the file the daemon would read for source has exactly text. */
static void assert_reads(struct fixture *f, const char *source, const char *text) {
  char path[512];
  assert_int_equal(cp_sync_read_path(f->sync, source, path, sizeof path), 0);
  char *got = slurp(path);
  assert_non_null(got);
  assert_string_equal(got, text);
  free(got);
}

static void assert_good_copy(struct fixture *f, const char *source, const char *text) {
  char path[512];
  assert_int_equal(cp_sync_good_path(f->sync, source, path, sizeof path), 0);
  assert_non_null(strstr(path, "/calendars/"));
  char *got = slurp(path);
  assert_non_null(got);
  assert_string_equal(got, text);
  free(got);
}

static void start(struct fixture *f, const char *calendar, const char *source) {
  struct cp_sync_source src = {calendar, source};
  assert_int_equal(cp_sync_start(&f->opts, &src, 1, &f->sync), 0);
}

/* Starts on a file whose first content is already accepted as the good copy. */
static void start_accepted(struct fixture *f, const char *path, const char *text) {
  write_file(path, text);
  start(f, "editorial", path);
  assert_true(cp_sync_pending(f->sync, path)); /* never copied: the first bytes are a candidate */
  assert_int_equal(cp_sync_accept(f->sync, path), 0);
  assert_false(cp_sync_pending(f->sync, path));
  run_for(f, 2 * DEBOUNCE_MS);
  assert_int_equal(f->changed, 0); /* the start's candidate is not announced: it is read */
  assert_int_equal(f->failed, 0);
}

/* ---- local sources -------------------------------------------------------------------------- */

static void write_announced_once_after_debounce(void **state) {
  struct fixture *f = *state;
  char path[160], v1[512], v2[512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v1, sizeof v1, "one");
  cal(v2, sizeof v2, "two");
  start_accepted(f, path, v1);

  uint64_t written = uv_hrtime(); /* a real clock: the loop's may be stale after a stall */
  write_file(path, v2);
  run_for(f, DEBOUNCE_MS / 3);
  if ((uv_hrtime() - written) / 1000000 < DEBOUNCE_MS - 10)
    assert_int_equal(f->changed, 0); /* not before the debounce (unless the machine stalled) */
  wait_for(f, &f->changed, 1, WAIT_MS);
  assert_int_equal(f->changed, 1);
  assert_true((f->changed_at - written) / 1000000 >= DEBOUNCE_MS - 10);
  assert_string_equal(f->calendar, "editorial");
  assert_string_equal(f->source, path);
  assert_true(cp_sync_pending(f->sync, path));
  assert_reads(f, path, v2);
  assert_good_copy(f, path, v1); /* under review until accepted */
  run_for(f, 3 * DEBOUNCE_MS);
  assert_int_equal(f->changed, 1);
  assert_int_equal(f->failed, 0);

  /* The cache: <calendar>-<12 hex>.new in a 0700 folder. */
  char read[512];
  struct stat st;
  assert_int_equal(cp_sync_read_path(f->sync, path, read, sizeof read), 0);
  const char *base = strrchr(read, '/') + 1;
  assert_int_equal(strncmp(base, "editorial-", 10), 0);
  assert_int_equal(strlen(base), strlen("editorial-") + 12 + strlen(".new"));
  assert_string_equal(base + strlen(base) - 4, ".new");
  assert_int_equal(stat(f->cal_dir, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
}

/* vim (and most editors) write a new file and rename it over the old one. */
static void rename_over_save_detected(void **state) {
  struct fixture *f = *state;
  char path[160], tmp[160], v[3][512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  snprintf(tmp, sizeof tmp, "%s/.plan.ics.swp", f->plans);
  cal(v[0], sizeof v[0], "zero");
  cal(v[1], sizeof v[1], "one");
  cal(v[2], sizeof v[2], "two");
  start_accepted(f, path, v[0]);

  for (int i = 1; i <= 2; i++) { /* twice: a watch on the replaced file would miss the second */
    write_file(tmp, v[i]);
    assert_int_equal(rename(tmp, path), 0);
    wait_for(f, &f->changed, i, WAIT_MS);
    run_for(f, 2 * DEBOUNCE_MS);
    assert_int_equal(f->changed, i);
    assert_reads(f, path, v[i]);
  }
  assert_int_equal(f->failed, 0);
}

static void burst_of_writes_is_one_change(void **state) {
  struct fixture *f = *state;
  char path[160], v0[512], v[512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v0, sizeof v0, "start");
  /* A longer debounce than the other cases: a loaded machine (the sanitizer build beside the
   * daemon tests) stalled 120 ms between writes in five tries of 150 ms. */
  const int debounce = 500;
  f->opts.debounce_ms = debounce;
  start_accepted(f, path, v0);

  /* Ten writes a fifth of the debounce apart are one burst. A machine that stalls longer than the
   * debounce between two of them makes two bursts (rightly two changes): then the burst is
   * measured as not a burst and done again, so the assertion below always tests a real burst. */
  for (int attempt = 0;; attempt++) {
    int before = f->changed;
    int64_t max_gap = 0, last = 0;
    for (int i = 0; i < 10; i++) {
      char name[48];
      snprintf(name, sizeof name, "edit %d.%d", attempt, i);
      cal(v, sizeof v, name);
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
      if (i && now - last > max_gap)
        max_gap = now - last;
      last = now;
      write_file(path, v);
      run_for(f, debounce / 5); /* events are delivered between the writes */
    }
    wait_for(f, &f->changed, before + 1, WAIT_MS);
    run_for(f, 3 * debounce);
    if (max_gap < debounce * 4 / 5 || attempt == 4) {
      assert_true(max_gap < debounce * 4 / 5); /* five stalled tries: say so, do not pass */
      assert_int_equal(f->changed, before + 1);
      break;
    }
  }
  assert_reads(f, path, v); /* the last write */
}

static void unchanged_rewrite_is_not_a_change(void **state) {
  struct fixture *f = *state;
  char path[160], v[512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v, sizeof v, "same");
  start_accepted(f, path, v);

  write_file(path, v);
  assert_int_equal(chmod(path, 0600), 0);
  run_for(f, 4 * DEBOUNCE_MS);
  assert_int_equal(f->changed, 0);
  assert_false(cp_sync_pending(f->sync, path));
  assert_true(info_of(f, path).same_content >= 1); /* it did look */
  /* Other files in the folder are not this source. */
  char other[160];
  snprintf(other, sizeof other, "%s/other.ics", f->plans);
  write_file(other, v);
  run_for(f, 3 * DEBOUNCE_MS);
  assert_int_equal(info_of(f, path).same_content, 1);
  assert_int_equal(f->changed, 0);
}

static void half_written_file_announced_when_complete(void **state) {
  struct fixture *f = *state;
  char path[160], v0[512], v[512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v0, sizeof v0, "start");
  cal(v, sizeof v, "finished");
  start_accepted(f, path, v0);

  char *cut = strstr(v, "END:VEVENT");
  char rest[512];
  snprintf(rest, sizeof rest, "%s", cut);
  *cut = '\0';
  uint64_t written = uv_hrtime();
  write_file(path, v);
  run_for(f, 5 * DEBOUNCE_MS); /* several debounce periods: still incomplete */
  /* Unless the loop stalled past the settle limit, after which the half is announced anyway
   * (truncated_file_announced_after_settle_limit); the loop does not run while the test appends,
   * so the next read sees the whole file either way. */
  int before = f->changed;
  if ((uv_hrtime() - written) / 1000000 < CP_SYNC_SETTLE_MS - 200)
    assert_int_equal(before, 0);
  append_file(path, rest);
  wait_for(f, &f->changed, before + 1, WAIT_MS);
  run_for(f, 2 * DEBOUNCE_MS);
  assert_int_equal(f->changed, before + 1);
  strcat(v, rest);
  assert_reads(f, path, v);
}

static void truncated_file_announced_after_settle_limit(void **state) {
  struct fixture *f = *state;
  char path[160], v0[512];
  static const char half[] = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:x\r\n";
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v0, sizeof v0, "start");
  start_accepted(f, path, v0);

  write_file(path, half);
  uint64_t waited = wait_for(f, &f->changed, 1, CP_SYNC_SETTLE_MS + 2000);
  assert_int_equal(f->changed, 1); /* announced anyway: the plan loader reports it */
  assert_true(waited >= CP_SYNC_SETTLE_MS);
  assert_reads(f, path, half);
}

static void accept_makes_the_good_copy(void **state) {
  struct fixture *f = *state;
  char path[160], v1[512], v2[512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v1, sizeof v1, "one");
  cal(v2, sizeof v2, "two");
  start_accepted(f, path, v1);
  assert_good_copy(f, path, v1);

  write_file(path, v2);
  wait_for(f, &f->changed, 1, WAIT_MS);
  assert_int_equal(cp_sync_accept(f->sync, path), 0);
  assert_false(cp_sync_pending(f->sync, path));
  assert_good_copy(f, path, v2);
  assert_reads(f, path, v2);
  char read[512];
  assert_int_equal(cp_sync_read_path(f->sync, path, read, sizeof read), 0);
  assert_string_equal(read + strlen(read) - 4, ".ics");
  assert_int_equal(cp_sync_accept(f->sync, path), 0); /* nothing pending: no-op */
  assert_int_equal(cp_sync_accept(f->sync, "/no/such/source.ics"), CP_EINVAL);

  /* A restart finds the good copy and, the file being unchanged, nothing to review. */
  stop_sync(f);
  start(f, "editorial", path);
  assert_false(cp_sync_pending(f->sync, path));
  assert_reads(f, path, v2);
  run_for(f, 2 * DEBOUNCE_MS);
  assert_int_equal(f->changed, 1); /* only the edit before the restart */
  assert_int_equal(f->failed, 0);
}

static void undoing_an_edit_drops_the_candidate(void **state) {
  struct fixture *f = *state;
  char path[160], v1[512], v2[512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v1, sizeof v1, "one");
  cal(v2, sizeof v2, "two");
  start_accepted(f, path, v1);

  write_file(path, v2);
  wait_for(f, &f->changed, 1, WAIT_MS);
  assert_true(cp_sync_pending(f->sync, path));
  write_file(path, v1);
  wait_for(f, &f->changed, 2, WAIT_MS);
  assert_int_equal(f->changed, 2); /* what the daemon reads changed back */
  assert_false(cp_sync_pending(f->sync, path));
  assert_reads(f, path, v1);
}

static void folder_source_concatenates_ics_files(void **state) {
  struct fixture *f = *state;
  char a[160], b[160], c[160], txt[160], va[512], vb[512], vc[512];
  snprintf(a, sizeof a, "%s/a.ics", f->plans);
  snprintf(b, sizeof b, "%s/b.ics", f->plans);
  snprintf(c, sizeof c, "%s/c.ics", f->plans);
  snprintf(txt, sizeof txt, "%s/notes.txt", f->plans);
  cal(va, sizeof va, "a");
  cal(vb, sizeof vb, "b");
  cal(vc, sizeof vc, "c");
  write_file(b, vb);
  write_file(a, va);
  start(f, "folder", f->plans);
  char both[1536];
  snprintf(both, sizeof both, "%s%s", va, vb);
  assert_reads(f, f->plans, both); /* name order */
  assert_int_equal(cp_sync_accept(f->sync, f->plans), 0);

  write_file(txt, "not a plan");
  run_for(f, 3 * DEBOUNCE_MS);
  assert_int_equal(f->changed, 0);

  write_file(c, vc);
  wait_for(f, &f->changed, 1, WAIT_MS);
  assert_int_equal(f->changed, 1);
  char all[2048];
  snprintf(all, sizeof all, "%s%s%s", va, vb, vc);
  assert_reads(f, f->plans, all);
  assert_good_copy(f, f->plans, both);

  assert_int_equal(unlink(a), 0); /* a removed event file is a change too */
  wait_for(f, &f->changed, 2, WAIT_MS);
  snprintf(all, sizeof all, "%s%s", vb, vc);
  assert_reads(f, f->plans, all);
  assert_int_equal(f->failed, 0);
}

static void missing_file_reads_source_and_fails_from_loop(void **state) {
  struct fixture *f = *state;
  char path[160], buf[512], v[512];
  snprintf(path, sizeof path, "%s/later.ics", f->plans);
  start(f, "editorial", path);
  assert_int_equal(f->failed, 0); /* never from inside the call */
  assert_int_equal(cp_sync_read_path(f->sync, path, buf, sizeof buf), 0);
  assert_string_equal(buf, path); /* never copied: the source itself */
  assert_int_equal(cp_sync_read_path(f->sync, path, buf, 4), CP_ELIMIT);
  run_for(f, 50);
  assert_int_equal(f->failed, 1);
  assert_non_null(strstr(f->why, "cannot read"));
  assert_non_null(strstr(f->why, "later.ics"));

  /* It appears later: announced. */
  cal(v, sizeof v, "late");
  write_file(path, v);
  wait_for(f, &f->changed, 1, WAIT_MS);
  assert_int_equal(f->changed, 1);
  assert_reads(f, path, v);
}

static void refresh_rereads_local_sources(void **state) {
  struct fixture *f = *state;
  char path[160], v1[512];
  snprintf(path, sizeof path, "%s/plan.ics", f->plans);
  cal(v1, sizeof v1, "one");
  start_accepted(f, path, v1);
  cp_sync_refresh(f->sync);
  assert_int_equal(f->changed, 0);
  run_for(f, 50);
  assert_int_equal(info_of(f, path).same_content, 1);
  assert_int_equal(f->changed, 0);
}

static void start_rejects_bad_arguments(void **state) {
  struct fixture *f = *state;
  struct cp_sync *s = NULL;
  struct cp_sync_source twice[] = {{"a", "/x/plan.ics"}, {"b", "/x/plan.ics"}};
  assert_int_equal(cp_sync_start(&f->opts, twice, 2, &s), CP_EEXISTS);
  struct cp_sync_opts o = f->opts;
  o.state_dir = NULL;
  assert_int_equal(cp_sync_start(&o, twice, 1, &s), CP_EINVAL);
  assert_null(s);
  /* No sources at all: valid, and stops cleanly. */
  assert_int_equal(cp_sync_start(&f->opts, NULL, 0, &f->sync), 0);
  int n = 0;
  cp_sync_stop(NULL, stopped, &n); /* NULL: done at once */
  assert_int_equal(n, 1);
}

/* ---- remote sources ------------------------------------------------------------------------- */

/* Replaces the test server's queue of responses with script (testserver.py), and frees it. */
static void serve_script(struct fixture *f, json_t *script) {
  assert_non_null(script);
  char *text = json_dumps(script, JSON_COMPACT);
  testserver_script(&f->ts, text);
  free(text);
  json_decref(script);
}

/* Queues one response: status, headers (a JSON object text, or NULL), body. */
static void serve(struct fixture *f, int status, const char *headers, const char *body) {
  json_error_t jerr;
  json_t *h = headers ? json_loads(headers, 0, &jerr) : json_object();
  assert_non_null(h);
  serve_script(f, json_pack("[{s:i, s:o, s:s}]", "status", status, "headers", h, "body", body));
}

static json_t *last_request(struct fixture *f) {
  json_t *reqs = testserver_requests(&f->ts);
  assert_true(json_array_size(reqs) >= 1);
  json_t *r = json_incref(json_array_get(reqs, json_array_size(reqs) - 1));
  json_decref(reqs);
  return r;
}

#define LM "Wed, 01 Jan 2031 10:00:00 GMT"

/* First fetch: changed; then a 304, a 200 with the same ETag, the same body under a new ETag:
 * none of them is a change; a new body is. */
static void remote_fetch_and_conditional_polls(void **state) {
  struct fixture *f = *state;
  char url[128], v1[512], v2[512];
  testserver_url(&f->ts, "/cal/posts/", url, sizeof url);
  cal(v1, sizeof v1, "one");
  cal(v2, sizeof v2, "two");
  serve(f, 200, "{\"ETag\": \"\\\"v1\\\"\", \"Last-Modified\": \"" LM "\"}", v1);
  start(f, "remote", url);
  assert_int_equal(cp_sync_read_path(f->sync, url, (char[64]){0}, 64), CP_ENOTFOUND);
  wait_for(f, &f->changed, 1, WAIT_MS);
  assert_int_equal(f->changed, 1);
  assert_string_equal(f->calendar, "remote");
  assert_string_equal(f->source, url);
  assert_reads(f, url, v1);
  json_t *r = last_request(f);
  assert_string_equal(json_string_value(json_object_get(r, "method")), "GET");
  assert_null(testserver_header(r, "If-None-Match")); /* nothing cached yet */
  json_decref(r);
  assert_int_equal(cp_sync_accept(f->sync, url), 0);
  assert_good_copy(f, url, v1);

  /* 304: nothing to do. */
  serve(f, 304, NULL, "");
  cp_sync_refresh(f->sync);
  wait_fetches(f, url, 2);
  r = last_request(f);
  assert_string_equal(testserver_header(r, "If-None-Match"), "\"v1\"");
  assert_string_equal(testserver_header(r, "If-Modified-Since"), LM);
  json_decref(r);
  assert_int_equal(info_of(f, url).not_modified, 1);

  /* 200 with the stored ETag (Radicale ignores If-None-Match): the body is not even looked at. */
  serve(f, 200, "{\"ETag\": \"\\\"v1\\\"\"}", v2);
  cp_sync_refresh(f->sync);
  wait_fetches(f, url, 3);
  assert_int_equal(info_of(f, url).same_etag, 1);
  assert_int_equal(info_of(f, url).same_content, 0);
  assert_false(cp_sync_pending(f->sync, url));
  assert_good_copy(f, url, v1);

  /* The same bytes under a new ETag: compared by content, no change; the new ETag is kept. */
  serve(f, 200, "{\"ETag\": \"\\\"v1b\\\"\"}", v1);
  cp_sync_refresh(f->sync);
  wait_fetches(f, url, 4);
  assert_int_equal(info_of(f, url).same_content, 1);
  serve(f, 304, NULL, "");
  cp_sync_refresh(f->sync);
  wait_fetches(f, url, 5);
  r = last_request(f);
  assert_string_equal(testserver_header(r, "If-None-Match"), "\"v1b\"");
  assert_null(testserver_header(r, "If-Modified-Since")); /* the last 200 had none */
  json_decref(r);

  /* A new version: announced. */
  serve(f, 200, "{\"ETag\": \"\\\"v2\\\"\"}", v2);
  cp_sync_refresh(f->sync);
  wait_for(f, &f->changed, 2, WAIT_MS);
  assert_int_equal(f->changed, 2);
  assert_reads(f, url, v2);
  assert_good_copy(f, url, v1);
  assert_int_equal(f->failed, 0);

  /* The ETag survives a restart: the first request after it is conditional. */
  assert_int_equal(cp_sync_accept(f->sync, url), 0);
  stop_sync(f);
  serve(f, 304, NULL, "");
  start(f, "remote", url);
  wait_fetches(f, url, 1);
  r = last_request(f);
  assert_string_equal(testserver_header(r, "If-None-Match"), "\"v2\"");
  json_decref(r);
  assert_int_equal(f->changed, 2);
}

static void remote_polls_on_the_interval(void **state) {
  struct fixture *f = *state;
  char url[128], v1[512];
  testserver_url(&f->ts, "/cal.ics", url, sizeof url);
  cal(v1, sizeof v1, "one");
  /* The first answer takes longer than the interval: the poll due while it is in flight is not
   * made up for as soon as it ends (that would start the next fetch sooner than the interval). */
  json_t *script = json_pack("[{s:i, s:{s:s}, s:s, s:f}, {s:i, s:b}]", "status", 200, "headers",
                             "ETag", "\"e\"", "body", v1, "delay", 0.3, "status", 304, "repeat", 1);
  serve_script(f, script);
  f->opts.poll_interval_ms = 200;
  start(f, "remote", url);
  /* Polls start an interval apart on the loop's clock: each start seen is compared with the one
   * before it (a start missed while the test was not running counts as its share of the gap).
   * A busy machine only makes polls later, so the bound is exact: never sooner than the
   * interval. */
  uint64_t seen = 0, at = 0;
  int pairs = 0;
  for (int n = 0; n < 1000 && seen < 6; n++) {
    run_for(f, 10);
    struct cp_sync_info i = info_of(f, url);
    if (i.starts == seen)
      continue;
    if (seen) {
      if (i.last_start - at < (i.starts - seen) * 200)
        fail_msg("starts %llu to %llu: %llu ms apart, interval 200 ms", (unsigned long long)seen,
                 (unsigned long long)i.starts, (unsigned long long)(i.last_start - at));
      pairs++;
    }
    seen = i.starts;
    at = i.last_start;
  }
  assert_true(seen >= 6 && pairs >= 1);
  for (int n = 0; n < 1000 && info_of(f, url).fetches < seen; n++)
    run_for(f, 10);
  struct cp_sync_info i = info_of(f, url);
  assert_true(i.fetches >= seen);
  assert_int_equal(i.not_modified, i.fetches - 1);
  assert_int_equal(f->changed, 1);
  assert_true(i.last_ok_ms > 0);
}

/* A refresh asked for while a fetch is in flight (SIGHUP right after an edit) fetches once more
 * when it ends, since the one in flight may have read the calendar before the edit; a timed poll
 * that finds one in flight does not (remote_polls_on_the_interval). */
static void remote_refresh_while_in_flight_fetches_again(void **state) {
  struct fixture *f = *state;
  char url[128], v1[512], v2[512];
  testserver_url(&f->ts, "/cal.ics", url, sizeof url);
  cal(v1, sizeof v1, "one");
  cal(v2, sizeof v2, "two");
  json_t *script = json_pack("[{s:i, s:{s:s}, s:s, s:f}, {s:i, s:{s:s}, s:s}]", "status", 200,
                             "headers", "ETag", "\"v1\"", "body", v1, "delay", 0.5, "status", 200,
                             "headers", "ETag", "\"v2\"", "body", v2);
  serve_script(f, script);
  f->opts.poll_interval_ms = 3600 * 1000;
  start(f, "remote", url);
  for (int n = 0; n < 1000 && info_of(f, url).starts < 1; n++)
    run_for(f, 10);
  assert_int_equal(info_of(f, url).starts, 1);
  assert_int_equal(info_of(f, url).fetches, 0);
  cp_sync_refresh(f->sync);
  run_for(f, 10);
  assert_int_equal(info_of(f, url).starts, 1); /* not two at once */
  wait_fetches(f, url, 2);
  struct cp_sync_info i = info_of(f, url);
  assert_int_equal(i.starts, 2);
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 2);
  json_decref(reqs);
  assert_reads(f, url, v2);
  run_for(f, 300); /* and no more until the next poll */
  assert_int_equal(info_of(f, url).starts, 2);
}

/* Bodies that are not calendars: failed, with a reason; the good copy stays as it was. */
static void remote_bad_bodies_fail_and_keep_the_good_copy(void **state) {
  struct fixture *f = *state;
  char url[128], v1[512];
  testserver_url(&f->ts, "/cal.ics", url, sizeof url);
  cal(v1, sizeof v1, "one");
  serve(f, 200, "{\"ETag\": \"\\\"v1\\\"\"}", v1);
  start(f, "remote", url);
  wait_for(f, &f->changed, 1, WAIT_MS);
  assert_int_equal(cp_sync_accept(f->sync, url), 0);

  static const struct {
    int status;
    const char *headers;
    const char *body;
    const char *why;
  } cases[] = {
      {200, "{\"Content-Type\": \"text/html\", \"ETag\": \"\\\"login\\\"\"}",
       "<!DOCTYPE html><html><body><form>Sign in</form></body></html>", "HTML page"},
      {200, "{\"Content-Type\": \"text/calendar\"}", "<html>oops</html>", "HTML page"},
      {200, NULL, "", "empty"},
      {200, NULL, "Hello, this is not a calendar\n", "BEGIN:VCALENDAR"},
      {200, NULL, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:x\r\n", "truncated"},
      {401, NULL, "no", "HTTP 401"},
      {404, NULL, "no", "HTTP 404"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    serve(f, cases[k].status, cases[k].headers, cases[k].body);
    cp_sync_refresh(f->sync);
    wait_for(f, &f->failed, (int)k + 1, WAIT_MS);
    assert_int_equal(f->failed, (int)k + 1);
    if (!strstr(f->why, cases[k].why))
      fail_msg("case %zu: \"%s\" does not say \"%s\"", k, f->why, cases[k].why);
    assert_string_equal(info_of(f, url).last_error, f->why);
    assert_false(cp_sync_pending(f->sync, url));
    assert_good_copy(f, url, v1);
  }
  assert_int_equal(f->changed, 1);
  /* A refused body leaves the stored ETag alone: the next poll still asks for "v1". */
  serve(f, 304, NULL, "");
  cp_sync_refresh(f->sync);
  wait_fetches(f, url, sizeof cases / sizeof cases[0] + 2);
  json_t *r = last_request(f);
  assert_string_equal(testserver_header(r, "If-None-Match"), "\"v1\"");
  json_decref(r);
  assert_string_equal(info_of(f, url).last_error, "");
}

static void remote_body_over_max_size_fails(void **state) {
  struct fixture *f = *state;
  char url[128];
  testserver_url(&f->ts, "/big.ics", url, sizeof url);
  f->opts.max_size = 4096;
  testserver_script(&f->ts, "[{\"status\": 200, \"body_size\": 1000000, \"chunked\": true}]");
  start(f, "remote", url);
  wait_for(f, &f->failed, 1, WAIT_MS);
  assert_int_equal(f->failed, 1);
  assert_non_null(strstr(f->why, "larger than max_file_size"));
  assert_int_equal(f->changed, 0);
  assert_int_equal(cp_sync_read_path(f->sync, url, (char[64]){0}, 64), CP_ENOTFOUND);
}

static void plain_http_refused_unless_loopback_allowed(void **state) {
  struct fixture *f = *state;
  char url[128];
  testserver_url(&f->ts, "/cal.ics", url, sizeof url);
  f->opts.allow_loopback_http = false;
  struct cp_sync_source srcs[] = {{"far", "http://calendar.example.com/plan.ics"},
                                  {"near", url},
                                  {"ftp", "ftp://127.0.0.1/plan.ics"}};
  assert_int_equal(cp_sync_start(&f->opts, srcs, 3, &f->sync), 0);
  assert_int_equal(f->failed, 0);
  run_for(f, 200);
  assert_int_equal(f->failed, 3); /* each reported once, from the loop */
  assert_non_null(strstr(info_of(f, srcs[0].source).last_error, "refused"));
  assert_non_null(strstr(info_of(f, srcs[0].source).last_error, "https://"));
  assert_null(strstr(info_of(f, srcs[0].source).last_error, "allow_loopback_http"));
  assert_non_null(strstr(info_of(f, url).last_error, "allow_loopback_http"));
  assert_non_null(strstr(info_of(f, srcs[2].source).last_error, "unsupported"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0); /* nothing was sent */
  json_decref(reqs);
  cp_sync_refresh(f->sync); /* SIGHUP reports them again */
  run_for(f, 100);
  assert_int_equal(f->failed, 6);
  assert_int_equal(f->changed, 0);
}

static void unreachable_server_fails_with_reason(void **state) {
  struct fixture *f = *state;
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/cal.ics", testserver_dead_port());
  start(f, "remote", url);
  wait_for(f, &f->failed, 1, WAIT_MS);
  assert_int_equal(f->failed, 1);
  assert_non_null(strstr(f->why, "ECONNREFUSED"));
}

/* webcal:// is fetched as https://: the plain-HTTP test server sees a TLS handshake it cannot
 * parse, and the fetch fails as a TLS error, not as a refused scheme. */
static void webcal_is_fetched_over_https(void **state) {
  struct fixture *f = *state;
  char url[128];
  snprintf(url, sizeof url, "webcal://127.0.0.1:%d/cal.ics", f->ts.port);
  f->opts.timeout_ms = 2000;
  f->opts.allow_local_calendars = true; /* the test server is on loopback */
  start(f, "remote", url);
  wait_for(f, &f->failed, 1, WAIT_MS);
  assert_int_equal(f->failed, 1);
  assert_null(strstr(f->why, "refused"));
  assert_non_null(strstr(f->why, "EPROTO"));
}

/* https:// and webcal:// sources reach public addresses only, unless allow_local_calendars: a
 * plan URL cannot be pointed at this machine or the local network. The address is checked after
 * name resolution (localhost too), so nothing reaches the server. */
static void remote_local_addresses_refused_unless_allowed(void **state) {
  struct fixture *f = *state;
  char a[128], b[128], file_url[] = "file:///etc/passwd";
  snprintf(a, sizeof a, "https://127.0.0.1:%d/cal.ics", f->ts.port);
  snprintf(b, sizeof b, "webcal://localhost:%d/cal.ics", f->ts.port);
  f->opts.allow_local_calendars = false;
  f->opts.timeout_ms = 2000;
  struct cp_sync_source srcs[] = {{"a", a}, {"b", b}, {"c", file_url}};
  assert_int_equal(cp_sync_start(&f->opts, srcs, 3, &f->sync), 0);
  wait_for(f, &f->failed, 3, WAIT_MS);
  assert_int_equal(f->failed, 3);
  assert_non_null(strstr(info_of(f, a).last_error, "local or private network"));
  assert_non_null(strstr(info_of(f, b).last_error, "local or private network"));
  assert_non_null(strstr(info_of(f, file_url).last_error, "unsupported"));
  json_t *reqs = testserver_requests(&f->ts);
  assert_int_equal(json_array_size(reqs), 0); /* nothing reached the server */
  json_decref(reqs);
  assert_int_equal(f->changed, 0);
  assert_int_equal(cp_sync_read_path(f->sync, a, (char[64]){0}, 64), CP_ENOTFOUND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(write_announced_once_after_debounce, setup_local, teardown),
      cmocka_unit_test_setup_teardown(rename_over_save_detected, setup_local, teardown),
      cmocka_unit_test_setup_teardown(burst_of_writes_is_one_change, setup_local, teardown),
      cmocka_unit_test_setup_teardown(unchanged_rewrite_is_not_a_change, setup_local, teardown),
      cmocka_unit_test_setup_teardown(half_written_file_announced_when_complete, setup_local,
                                      teardown),
      cmocka_unit_test_setup_teardown(truncated_file_announced_after_settle_limit, setup_local,
                                      teardown),
      cmocka_unit_test_setup_teardown(accept_makes_the_good_copy, setup_local, teardown),
      cmocka_unit_test_setup_teardown(undoing_an_edit_drops_the_candidate, setup_local, teardown),
      cmocka_unit_test_setup_teardown(folder_source_concatenates_ics_files, setup_local, teardown),
      cmocka_unit_test_setup_teardown(missing_file_reads_source_and_fails_from_loop, setup_local,
                                      teardown),
      cmocka_unit_test_setup_teardown(refresh_rereads_local_sources, setup_local, teardown),
      cmocka_unit_test_setup_teardown(start_rejects_bad_arguments, setup_local, teardown),
      cmocka_unit_test_setup_teardown(remote_fetch_and_conditional_polls, setup_remote, teardown),
      cmocka_unit_test_setup_teardown(remote_polls_on_the_interval, setup_remote, teardown),
      cmocka_unit_test_setup_teardown(remote_refresh_while_in_flight_fetches_again, setup_remote,
                                      teardown),
      cmocka_unit_test_setup_teardown(remote_bad_bodies_fail_and_keep_the_good_copy, setup_remote,
                                      teardown),
      cmocka_unit_test_setup_teardown(remote_body_over_max_size_fails, setup_remote, teardown),
      cmocka_unit_test_setup_teardown(plain_http_refused_unless_loopback_allowed, setup_remote,
                                      teardown),
      cmocka_unit_test_setup_teardown(unreachable_server_fails_with_reason, setup_remote, teardown),
      cmocka_unit_test_setup_teardown(webcal_is_fetched_over_https, setup_remote, teardown),
      cmocka_unit_test_setup_teardown(remote_local_addresses_refused_unless_allowed, setup_remote,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
