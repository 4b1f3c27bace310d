// ctest-labels: connector
/* The outbox connector: posts become JSON files, written atomically, a resend replaces the file. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "calpost/err.h"
#include "support/mock_host.h"

#ifdef CP_BUILTIN_OUTBOX

struct fixture {
  char dir[64];
  char out[96];
  struct mock_host mh;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  snprintf(f->dir, sizeof f->dir, "/tmp/cp-outbox-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->out, sizeof f->out, "%s/out", f->dir); /* created by init */
  mock_host_init(&f->mh, &cp_connector_outbox);
  *state = f;
  return 0;
}

static void rm_rf(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[PATH_MAX];
  if (!d)
    return;
  for (;;) {
    e = readdir(d);
    if (!e)
      break;
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (e->d_type == DT_DIR)
      rm_rf(p);
    else
      unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static int teardown(void **state) {
  struct fixture *f = *state;
  mock_host_close(&f->mh);
  rm_rf(f->dir);
  free(f);
  return 0;
}

static size_t count_entries(const char *dir) {
  DIR *d = opendir(dir);
  size_t n = 0;
  assert_non_null(d);
  for (;;) {
    struct dirent *e = readdir(d);
    if (!e)
      break;
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      n++;
  }
  closedir(d);
  return n;
}

static void connect_outbox(struct fixture *f) {
  const char *kv[] = {"type", "outbox", "dir", f->out, NULL};
  assert_int_equal(mock_host_connect(&f->mh, kv), 0);
}

static void writes_the_post_as_json(void **state) {
  struct fixture *f = *state;
  char path[PATH_MAX], url[PATH_MAX + 16];
  connect_outbox(f);
  struct cp_post post = mock_post("0123456789abcdef", "We launch today \xf0\x9f\x9a\x80");

  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "0123456789abcdef.json");
  snprintf(path, sizeof path, "%s/0123456789abcdef.json", f->out);
  snprintf(url, sizeof url, "file://%s", path);
  assert_string_equal(res.remote_url, url);

  json_error_t jerr;
  json_t *j = json_load_file(path, 0, &jerr);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "id")), "0123456789abcdef");
  assert_string_equal(json_string_value(json_object_get(j, "channel")), "test");
  assert_string_equal(json_string_value(json_object_get(j, "calendar")), "editorial");
  assert_string_equal(json_string_value(json_object_get(j, "uid")), "launch-2024@example.org");
  assert_string_equal(json_string_value(json_object_get(j, "occurrence")), "20240102T090000Z");
  /* 09:00 UTC shown in the event's zone (+01:00), and as Unix seconds. */
  assert_string_equal(json_string_value(json_object_get(j, "due")), "2024-01-02T10:00:00+01:00");
  assert_int_equal(json_integer_value(json_object_get(j, "due_unix")), 1704186000);
  assert_string_equal(json_string_value(json_object_get(j, "title")), "Launch");
  assert_string_equal(json_string_value(json_object_get(j, "text")),
                      "We launch today \xf0\x9f\x9a\x80");
  json_t *m = json_array_get(json_object_get(j, "media"), 0);
  assert_string_equal(json_string_value(json_object_get(m, "src")), "img/launch.png");
  assert_string_equal(json_string_value(json_object_get(m, "alt")), "The launch poster");
  json_decref(j);

  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0644);
  assert_int_equal(count_entries(f->out), 1); /* no temporary file left behind */
}

static void resend_replaces_the_same_file(void **state) {
  struct fixture *f = *state;
  char path[PATH_MAX];
  connect_outbox(f);
  struct cp_post post = mock_post("00000000000000aa", "first");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  post.text = "second";
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_OK);
  assert_string_equal(res.remote_id, "00000000000000aa.json");
  assert_int_equal(count_entries(f->out), 1);

  snprintf(path, sizeof path, "%s/00000000000000aa.json", f->out);
  json_t *j = json_load_file(path, 0, NULL);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "text")), "second");
  json_decref(j);

  /* Another post is another file. */
  struct cp_post other = mock_post("00000000000000bb", "other");
  assert_int_equal(mock_host_publish(&f->mh, &other).outcome, CP_OUTCOME_OK);
  assert_int_equal(count_entries(f->out), 2);
}

/* The final name must only ever appear by a rename: nobody can open it half-written. */
static void file_appears_atomically(void **state) {
  struct fixture *f = *state;
  char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
  connect_outbox(f);
  int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  assert_true(in >= 0);
  assert_true(inotify_add_watch(in, f->out, IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MODIFY) >=
              0);
  struct cp_post post = mock_post("00000000000000cc", "atomic");
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);
  assert_int_equal(mock_host_publish(&f->mh, &post).outcome, CP_OUTCOME_OK);

  int moved_to_final = 0, touched_final = 0, writes_elsewhere = 0;
  ssize_t n = read(in, buf, sizeof buf);
  assert_true(n > 0);
  for (char *p = buf; p < buf + n;) {
    struct inotify_event *ev = (struct inotify_event *)p;
    bool final = ev->len && !strcmp(ev->name, "00000000000000cc.json");
    if (final && (ev->mask & IN_MOVED_TO))
      moved_to_final++;
    else if (final)
      touched_final++;
    else if (ev->mask & IN_CLOSE_WRITE)
      writes_elsewhere++;
    p += sizeof *ev + ev->len;
  }
  close(in);
  assert_int_equal(moved_to_final, 2);
  assert_int_equal(touched_final, 0);
  assert_int_equal(writes_elsewhere, 2); /* the temporary files */
}

static void config_errors_are_reported(void **state) {
  struct fixture *f = *state;
  const char *none[] = {"type", "outbox", NULL};
  assert_int_equal(mock_host_connect(&f->mh, none), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "/etc/calpost/calpost.ini:10: [channel test] needs 'dir"));

  char file[96];
  snprintf(file, sizeof file, "%s/plain-file", f->dir);
  FILE *fp = fopen(file, "w");
  fclose(fp);
  const char *notdir[] = {"dir", file, "colour", "blue", NULL};
  assert_int_equal(mock_host_connect(&f->mh, notdir), CP_ECONFIG);
  assert_non_null(strstr(f->mh.log, "unknown key 'colour' ignored (outbox knows: dir)"));
  assert_non_null(strstr(f->mh.log, "plain-file"));
  assert_null(f->mh.instance);
  /* Keys the daemon reads for every channel are not the connector's to call unknown. */
  const char *host_keys[] = {"dir", f->out, "rate", "2/s", "grace", "5m", "max_chars", "900", NULL};
  assert_int_equal(mock_host_connect(&f->mh, host_keys), 0);
  assert_null(strstr(f->mh.log, "unknown key 'rate'"));
  assert_null(strstr(f->mh.log, "unknown key 'grace'"));
  assert_null(strstr(f->mh.log, "unknown key 'max_chars'"));
}

/* A crash between writing the temporary file and renaming it leaves the temporary file; the
 * next start removes it and keeps the real post files. */
static void crash_leftovers_are_removed_at_start(void **state) {
  struct fixture *f = *state;
  assert_int_equal(mkdir(f->out, 0755), 0);
  char stale[160], kept[160], other[160];
  snprintf(stale, sizeof stale, "%s/.00000000000000ee.json.Ab12Cd", f->out);
  snprintf(kept, sizeof kept, "%s/00000000000000ee.json", f->out);
  snprintf(other, sizeof other, "%s/.hidden-notes", f->out);
  const char *paths[] = {stale, kept, other};
  for (int i = 0; i < 3; i++) {
    FILE *fp = fopen(paths[i], "w");
    assert_non_null(fp);
    fclose(fp);
  }
  connect_outbox(f);
  assert_int_equal(access(stale, F_OK), -1);
  assert_int_equal(access(kept, F_OK), 0);
  assert_int_equal(access(other, F_OK), 0);
}

static void unwritable_folder_fails_the_post(void **state) {
  struct fixture *f = *state;
  connect_outbox(f);
  rm_rf(f->out); /* the folder vanished after startup */
  struct cp_post post = mock_post("00000000000000dd", "lost");
  struct cp_result res = mock_host_publish(&f->mh, &post);
  assert_int_equal(res.outcome, CP_OUTCOME_PERMANENT);
  assert_int_equal(res.err, -ENOENT);
  assert_non_null(strstr(res.message, "00000000000000dd.json"));
}

static int diags;
static void on_diag(void *arg, bool error, const char *msg) {
  diags++;
  assert_true(error);
  assert_non_null(strstr(msg, "no text"));
}

static void validate_needs_content(void **state) {
  struct fixture *f = *state;
  connect_outbox(f);
  struct cp_post post = mock_post("00000000000000ee", "");
  post.n_media = 0;
  diags = 0;
  assert_int_equal(cp_connector_outbox.validate(f->mh.instance, &post, on_diag, NULL), CP_EINVAL);
  assert_int_equal(diags, 1);
  post.text = "fine";
  assert_int_equal(cp_connector_outbox.validate(f->mh.instance, &post, on_diag, NULL), 0);
  assert_int_equal(diags, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(writes_the_post_as_json, setup, teardown),
      cmocka_unit_test_setup_teardown(resend_replaces_the_same_file, setup, teardown),
      cmocka_unit_test_setup_teardown(file_appears_atomically, setup, teardown),
      cmocka_unit_test_setup_teardown(config_errors_are_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(unwritable_folder_fails_the_post, setup, teardown),
      cmocka_unit_test_setup_teardown(crash_leftovers_are_removed_at_start, setup, teardown),
      cmocka_unit_test_setup_teardown(validate_needs_content, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else
int main(void) {
  puts("the outbox connector is not built (CALPOST_CONNECTOR_OUTBOX=OFF): skipped");
  return 0;
}
#endif
