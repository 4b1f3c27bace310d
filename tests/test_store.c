/* The durable queue against real SQLite files in a temporary directory. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "calpost/err.h"
#include "store.h"

#define NOW 1800000000000LL /* 2027-01-15, Unix ms */
#define MIN 60000LL

struct fixture {
  char dir[64];
  char db[96];
  struct cp_store *s;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  strcpy(f->dir, "/tmp/cp_store_XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->db, sizeof f->db, "%s/calpost.db", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  cp_store_close(f->s);
  const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
  for (size_t i = 0; i < 4; i++) {
    char path[128];
    snprintf(path, sizeof path, "%s%s", f->db, suffixes[i]);
    unlink(path);
  }
  rmdir(f->dir);
  free(f);
  return 0;
}

static struct cp_store *open_store(struct fixture *f) {
  char err[256];
  struct cp_store *s = NULL;
  int rc = cp_store_open(NULL, f->dir, &s, err, sizeof err);
  if (rc != 0)
    fail_msg("open: %s (%s)", err, cp_err_name(rc));
  return s;
}

static void reopen(struct fixture *f) {
  cp_store_close(f->s);
  f->s = open_store(f);
}

/* An item with id "000000000000000N" style ids from a short tag. */
static struct cp_store_item item(const char *id, const char *channel, int64_t due_ms,
                                 enum cp_post_state state, char hash) {
  struct cp_store_item it = {.calendar = "editorial",
                             .uid = "uid@example.org",
                             .occurrence = "single",
                             .channel = channel,
                             .due_ms = due_ms,
                             .state = state};
  snprintf(it.id, sizeof it.id, "%s", id);
  memset(it.hash, hash, CP_STORE_HASH_LEN);
  it.hash[CP_STORE_HASH_LEN] = '\0';
  return it;
}

#define ID_A "aaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbb"
#define ID_C "cccccccccccccccc"
#define ID_D "dddddddddddddddd"
#define ID_E "eeeeeeeeeeeeeeee"
#define ID_F "ffffffffffffffff"
#define ID_G "0000000000000001"
#define ID_H "0000000000000002"

static enum cp_store_state state_of(struct cp_store *s, const char *id) {
  struct cp_store_post *p = NULL;
  int rc = cp_store_get(s, id, &p);
  if (rc != 0)
    fail_msg("get %s: %s", id, cp_store_errmsg(s));
  enum cp_store_state st = p->state;
  cp_store_post_free(p);
  return st;
}

static struct cp_store_post *get(struct cp_store *s, const char *id) {
  struct cp_store_post *p = NULL;
  assert_int_equal(cp_store_get(s, id, &p), 0);
  return p;
}

static struct cp_store_counts reconcile(struct cp_store *s, const struct cp_store_item *items,
                                        size_t n, bool dry) {
  struct cp_store_counts c;
  int rc = cp_store_reconcile(s, items, n, NOW, dry, &c);
  if (rc != 0)
    fail_msg("reconcile: %s", cp_store_errmsg(s));
  return c;
}

static void send_with(struct cp_store *s, const char *id, enum cp_outcome outcome,
                      enum cp_store_state next, int64_t at) {
  bool claimed = false;
  assert_int_equal(cp_store_mark_sending(s, id, at, &claimed), 0);
  assert_true(claimed);
  struct cp_store_result r = {.at_ms = at,
                              .outcome = outcome,
                              .http_status = outcome == CP_OUTCOME_OK ? 200 : 500,
                              .message = outcome == CP_OUTCOME_OK ? NULL : "boom",
                              .remote_id = outcome == CP_OUTCOME_OK ? "remote-1" : NULL,
                              .remote_url = outcome == CP_OUTCOME_OK ? "https://x/1" : NULL,
                              .next = next,
                              .retry_at_ms = at + MIN};
  int rc = cp_store_record_attempt(s, id, &r);
  if (rc != 0)
    fail_msg("record %s: %s", id, cp_store_errmsg(s));
}

static int64_t raw_int(const char *db, const char *sql) {
  sqlite3 *h;
  assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(h);
  return v;
}

static void raw_exec(const char *db, const char *sql) {
  sqlite3 *h;
  assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
  assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(h);
}

static void file_is_private(void **state) {
  struct fixture *f = *state;
  mode_t old = umask(022); /* what SQLite alone would turn into 0644 */
  f->s = open_store(f);
  umask(old);
  assert_int_equal(cp_store_meta_set(f->s, "started", "yes"), 0);
  struct stat sb;
  assert_int_equal(stat(f->db, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  char wal[128];
  snprintf(wal, sizeof wal, "%s-wal", f->db);
  assert_int_equal(stat(wal, &sb), 0); /* WAL mode is on */
  assert_int_equal(sb.st_mode & 0777, 0600);
}

static void existing_file_is_tightened(void **state) {
  struct fixture *f = *state;
  FILE *fp = fopen(f->db, "w");
  assert_non_null(fp);
  fclose(fp);
  assert_int_equal(chmod(f->db, 0644), 0);
  f->s = open_store(f);
  struct stat sb;
  assert_int_equal(stat(f->db, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
}

static void reconcile_adds_moves_and_cancels(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan1[] = {
      item(ID_A, "mastodon", NOW + 10 * MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "mastodon", NOW + 20 * MIN, CP_POST_SCHEDULED, 'b'),
      item(ID_C, "bluesky", NOW + 30 * MIN, CP_POST_SCHEDULED, 'c'),
      item(ID_D, "bluesky", NOW + 40 * MIN, CP_POST_DRAFT, 'd'),
  };
  struct cp_store_counts c = reconcile(f->s, plan1, 4, false);
  assert_int_equal(c.added, 3); /* the draft is not queued */
  assert_int_equal(c.updated, 0);
  assert_int_equal(c.cancelled, 0);
  assert_int_equal(c.pending, 0);

  /* B moves, C disappears, A's text changes, E is new, D stays a draft. */
  struct cp_store_item plan2[] = {
      item(ID_A, "mastodon", NOW + 10 * MIN, CP_POST_SCHEDULED, 'A'),
      item(ID_B, "mastodon", NOW + 25 * MIN, CP_POST_SCHEDULED, 'b'),
      item(ID_D, "bluesky", NOW + 40 * MIN, CP_POST_DRAFT, 'd'),
      item(ID_E, "bluesky", NOW + 50 * MIN, CP_POST_SCHEDULED, 'e'),
  };
  c = reconcile(f->s, plan2, 4, false);
  assert_int_equal(c.added, 1);
  assert_int_equal(c.updated, 2);
  assert_int_equal(c.cancelled, 1);
  assert_int_equal(c.pending, 3);

  struct cp_store_post *b = get(f->s, ID_B);
  assert_int_equal(b->state, CP_STORE_PENDING);
  assert_int_equal(b->due_ms, NOW + 25 * MIN);
  assert_int_equal(b->next_ms, NOW + 25 * MIN);
  cp_store_post_free(b);
  struct cp_store_post *a = get(f->s, ID_A);
  assert_int_equal(a->hash[0], 'A');
  cp_store_post_free(a);
  assert_int_equal(state_of(f->s, ID_C), CP_STORE_CANCELLED);
  assert_int_equal(state_of(f->s, ID_E), CP_STORE_PENDING);
  struct cp_store_post *d = NULL;
  assert_int_equal(cp_store_get(f->s, ID_D, &d), CP_ENOTFOUND);

  /* The same plan again changes nothing. */
  c = reconcile(f->s, plan2, 4, false);
  assert_int_equal(c.added + c.updated + c.cancelled, 0);
}

static void reconcile_never_touches_settled_posts(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  const char *ids[] = {ID_A, ID_B, ID_C, ID_D, ID_E, ID_F};
  struct cp_store_item plan[6];
  for (int i = 0; i < 6; i++)
    plan[i] = item(ids[i], "mastodon", NOW - 60 * MIN + i, CP_POST_SCHEDULED, 'x');
  reconcile(f->s, plan, 6, false);
  send_with(f->s, ID_A, CP_OUTCOME_OK, CP_STORE_SENT, NOW);
  send_with(f->s, ID_B, CP_OUTCOME_PERMANENT, CP_STORE_FAILED, NOW);
  send_with(f->s, ID_C, CP_OUTCOME_UNKNOWN, CP_STORE_UNKNOWN, NOW);
  bool claimed;
  assert_int_equal(cp_store_mark_sending(f->s, ID_D, NOW, &claimed), 0);
  assert_int_equal(cp_store_skip(f->s, ID_E, NOW), 0);
  assert_int_equal(cp_store_mark_missed(f->s, NULL, 5 * MIN, NOW, NULL), 0);
  assert_int_equal(state_of(f->s, ID_F), CP_STORE_MISSED);

  /* Every post moved and rewritten in the plan: nothing may change. */
  struct cp_store_item moved[6];
  for (int i = 0; i < 6; i++)
    moved[i] = item(ids[i], "mastodon", NOW + 60 * MIN, CP_POST_SCHEDULED, 'y');
  struct cp_store_counts c = reconcile(f->s, moved, 6, false);
  assert_int_equal(c.added + c.updated + c.cancelled, 0);
  /* Removed from the plan, or turned into drafts: nothing either. */
  c = reconcile(f->s, NULL, 0, false);
  assert_int_equal(c.cancelled, 0);
  for (int i = 0; i < 6; i++)
    moved[i].state = CP_POST_CANCELLED;
  c = reconcile(f->s, moved, 6, false);
  assert_int_equal(c.added + c.updated + c.cancelled, 0);

  enum cp_store_state want[] = {CP_STORE_SENT,    CP_STORE_FAILED,  CP_STORE_UNKNOWN,
                                CP_STORE_SENDING, CP_STORE_SKIPPED, CP_STORE_MISSED};
  for (int i = 0; i < 6; i++) {
    struct cp_store_post *p = get(f->s, ids[i]);
    assert_int_equal(p->state, want[i]);
    assert_int_equal(p->due_ms, NOW - 60 * MIN + i);
    assert_int_equal(p->hash[0], 'x');
    cp_store_post_free(p);
  }
  struct cp_store_post *a = get(f->s, ID_A);
  assert_string_equal(a->remote_id, "remote-1");
  assert_string_equal(a->remote_url, "https://x/1");
  cp_store_post_free(a);
}

static void draft_cancels_and_rescheduling_restores(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item it = item(ID_A, "mastodon", NOW + MIN, CP_POST_SCHEDULED, 'a');
  reconcile(f->s, &it, 1, false);
  it.state = CP_POST_DRAFT;
  struct cp_store_counts c = reconcile(f->s, &it, 1, false);
  assert_int_equal(c.cancelled, 1);
  assert_int_equal(state_of(f->s, ID_A), CP_STORE_CANCELLED);
  it.state = CP_POST_SCHEDULED;
  it.due_ms = NOW + 2 * MIN;
  c = reconcile(f->s, &it, 1, false);
  assert_int_equal(c.added, 1);
  struct cp_store_post *p = get(f->s, ID_A);
  assert_int_equal(p->state, CP_STORE_PENDING);
  assert_int_equal(p->next_ms, NOW + 2 * MIN);
  cp_store_post_free(p);
}

static void dry_run_counts_without_changing(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "m", NOW + MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "m", NOW + 2 * MIN, CP_POST_SCHEDULED, 'b'),
      item(ID_C, "m", NOW + 3 * MIN, CP_POST_SCHEDULED, 'c'),
  };
  reconcile(f->s, plan, 3, false);
  struct cp_store_item next[] = {
      item(ID_A, "m", NOW + 5 * MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_D, "m", NOW + 2 * MIN, CP_POST_SCHEDULED, 'd'),
  };
  struct cp_store_counts dry = reconcile(f->s, next, 2, true);
  assert_int_equal(dry.added, 1);
  assert_int_equal(dry.updated, 1);
  assert_int_equal(dry.cancelled, 2);
  assert_int_equal(dry.pending, 3);
  assert_int_equal(state_of(f->s, ID_B), CP_STORE_PENDING);
  struct cp_store_post *a = get(f->s, ID_A);
  assert_int_equal(a->due_ms, NOW + MIN);
  cp_store_post_free(a);
  struct cp_store_post *d = NULL;
  assert_int_equal(cp_store_get(f->s, ID_D, &d), CP_ENOTFOUND);
  /* The real run reports exactly what the dry run predicted. */
  struct cp_store_counts real = reconcile(f->s, next, 2, false);
  assert_memory_equal(&dry, &real, sizeof dry);
  assert_int_equal(state_of(f->s, ID_B), CP_STORE_CANCELLED);
}

static void duplicate_ids_change_nothing(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "m", NOW + MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_A, "m", NOW + 2 * MIN, CP_POST_SCHEDULED, 'b'),
  };
  struct cp_store_counts c;
  assert_int_equal(cp_store_reconcile(f->s, plan, 2, NOW, false, &c), CP_EINVAL);
  assert_non_null(strstr(cp_store_errmsg(f->s), ID_A));
  struct cp_store_posts *all = NULL;
  assert_int_equal(cp_store_list(f->s, NULL, 0, 0, &all), 0);
  assert_int_equal(all->n, 0);
  cp_store_posts_free(all);
}

static void reopen_keeps_state_and_migrates_once(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "m", NOW - MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "m", NOW + MIN, CP_POST_SCHEDULED, 'b'),
  };
  reconcile(f->s, plan, 2, false);
  send_with(f->s, ID_A, CP_OUTCOME_OK, CP_STORE_SENT, NOW);
  assert_int_equal(cp_store_channel_pause(f->s, "m", 0, "token revoked"), 0);
  assert_int_equal(cp_store_meta_set(f->s, "plan_etag", "v1"), 0);
  for (int i = 0; i < 3; i++)
    reopen(f);
  assert_int_equal(state_of(f->s, ID_A), CP_STORE_SENT);
  assert_int_equal(state_of(f->s, ID_B), CP_STORE_PENDING);
  char *v = NULL;
  assert_int_equal(cp_store_meta_get(f->s, "plan_etag", &v), 0);
  assert_string_equal(v, "v1");
  free(v);
  struct cp_store_channel_status *cs = NULL;
  assert_int_equal(cp_store_channel_status(f->s, "m", NOW, &cs), 0);
  assert_true(cs->paused);
  assert_string_equal(cs->pause_reason, "token revoked");
  cp_store_channel_status_free(cs);
  cp_store_close(f->s);
  f->s = NULL;
  assert_int_equal(raw_int(f->db, "PRAGMA user_version"), 5);
  assert_int_equal(raw_int(f->db, "SELECT count(*) FROM migrations"), 5);
  assert_int_equal(raw_int(f->db, "SELECT max(version) FROM migrations"), 5);
  sqlite3 *h;
  assert_int_equal(sqlite3_open(f->db, &h), SQLITE_OK);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  sqlite3_close(h);
}

/* A connector's progress survives a reopen (a crash mid-thread) and comes with the claim. */
static void progress_is_kept_with_the_post(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item it = item(ID_A, "mastodon", NOW + MIN, CP_POST_SCHEDULED, 'a');
  struct cp_store_counts c;
  assert_int_equal(cp_store_reconcile(f->s, &it, 1, NOW, false, &c), 0);
  assert_int_equal(cp_store_set_progress(f->s, ID_A, "1=111;2=222"), 0);
  assert_int_equal(cp_store_set_progress(f->s, ID_B, "x"), CP_ENOTFOUND);
  cp_store_close(f->s);
  f->s = open_store(f);
  struct cp_store_post *p;
  assert_int_equal(cp_store_next_due(f->s, "mastodon", &p), 0);
  assert_string_equal(p->progress, "1=111;2=222");
  cp_store_post_free(p);
  assert_int_equal(cp_store_next_due(f->s, NULL, &p), 0);
  assert_string_equal(p->progress, "1=111;2=222");
  assert_int_equal(p->next_ms, NOW + MIN);
  cp_store_post_free(p);
}

static void newer_schema_is_refused(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  cp_store_close(f->s);
  f->s = NULL;
  raw_exec(f->db, "PRAGMA user_version = 99");
  char err[256];
  struct cp_store *s = NULL;
  assert_int_equal(cp_store_open("sqlite", f->dir, &s, err, sizeof err), CP_EDB);
  assert_null(s);
  assert_non_null(strstr(err, "newer"));
  assert_int_equal(raw_int(f->db, "PRAGMA user_version"), 99);
}

static void unknown_backend_is_refused(void **state) {
  struct fixture *f = *state;
  char err[256];
  struct cp_store *s = NULL;
  assert_int_equal(cp_store_open("postgresql", f->dir, &s, err, sizeof err), CP_EINVAL);
  assert_non_null(strstr(err, "postgresql"));
}

static void crash_while_sending_is_found_at_startup(void **state) {
  struct fixture *f = *state;
  struct cp_store_item plan[] = {
      item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "m", NOW + MIN, CP_POST_SCHEDULED, 'b'),
  };
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* The daemon: claims A, then dies before the answer, without closing anything. */
    struct cp_store *s = NULL;
    struct cp_store_counts c;
    bool claimed = false;
    if (cp_store_open(NULL, f->dir, &s, NULL, 0) || cp_store_reconcile(s, plan, 2, NOW, 0, &c) ||
        cp_store_mark_sending(s, ID_A, NOW, &claimed) || !claimed)
      _exit(1);
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

  f->s = open_store(f);
  struct cp_store_posts *sending = NULL;
  assert_int_equal(cp_store_list(f->s, NULL, 1u << CP_STORE_SENDING, 0, &sending), 0);
  assert_int_equal(sending->n, 1);
  assert_string_equal(sending->v[0].id, ID_A);
  assert_int_equal(sending->v[0].attempts, 1);
  cp_store_posts_free(sending);
  /* It is not offered again... */
  struct cp_store_post *next = NULL;
  assert_int_equal(cp_store_next_due(f->s, NULL, &next), 0);
  assert_string_equal(next->id, ID_B);
  cp_store_post_free(next);
  /* ...until recovery settles it: unknown on a connector without idempotency. */
  struct cp_store_result r = {.at_ms = NOW + MIN,
                              .outcome = CP_OUTCOME_UNKNOWN,
                              .message = "interrupted while sending",
                              .next = CP_STORE_UNKNOWN};
  assert_int_equal(cp_store_record_attempt(f->s, ID_A, &r), 0);
  assert_int_equal(state_of(f->s, ID_A), CP_STORE_UNKNOWN);
  struct cp_store_attempts *at = NULL;
  assert_int_equal(cp_store_attempts(f->s, ID_A, &at), 0);
  assert_int_equal(at->n, 1);
  assert_int_equal(at->v[0].outcome, CP_OUTCOME_UNKNOWN);
  assert_string_equal(at->v[0].message, "interrupted while sending");
  cp_store_attempts_free(at);
}

static void close_without_finishing_keeps_sending(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item it = item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a');
  reconcile(f->s, &it, 1, false);
  bool claimed;
  assert_int_equal(cp_store_mark_sending(f->s, ID_A, NOW, &claimed), 0);
  reopen(f);
  struct cp_store_posts *sending = NULL;
  assert_int_equal(cp_store_list(f->s, "m", 1u << CP_STORE_SENDING, 0, &sending), 0);
  assert_int_equal(sending->n, 1);
  cp_store_posts_free(sending);
}

static void a_post_is_claimed_once(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store *other = open_store(f); /* a second daemon on the same file */
  struct cp_store_item it = item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a');
  reconcile(f->s, &it, 1, false);
  bool first = false, second = true;
  assert_int_equal(cp_store_mark_sending(f->s, ID_A, NOW, &first), 0);
  assert_int_equal(cp_store_mark_sending(other, ID_A, NOW, &second), 0);
  assert_true(first);
  assert_false(second);
  assert_int_equal(cp_store_mark_sending(f->s, ID_B, NOW, &second), CP_ENOTFOUND);
  assert_int_equal(cp_store_mark_sending(f->s, "not-an-id", NOW, &second), CP_EINVAL);
  cp_store_close(other);
}

static void retry_then_success_records_every_attempt(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item it = item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a');
  reconcile(f->s, &it, 1, false);
  send_with(f->s, ID_A, CP_OUTCOME_RETRY, CP_STORE_PENDING, NOW);
  struct cp_store_post *p = get(f->s, ID_A);
  assert_int_equal(p->state, CP_STORE_PENDING);
  assert_int_equal(p->next_ms, NOW + MIN);
  assert_int_equal(p->due_ms, NOW);
  cp_store_post_free(p);
  /* Not due before the retry time. */
  struct cp_store_post *next = NULL;
  assert_int_equal(cp_store_next_due(f->s, "m", &next), 0);
  assert_int_equal(next->next_ms, NOW + MIN);
  cp_store_post_free(next);
  send_with(f->s, ID_A, CP_OUTCOME_OK, CP_STORE_SENT, NOW + MIN);
  assert_int_equal(state_of(f->s, ID_A), CP_STORE_SENT);

  struct cp_store_attempts *at = NULL;
  assert_int_equal(cp_store_attempts(f->s, ID_A, &at), 0);
  assert_int_equal(at->n, 2);
  assert_int_equal(at->v[0].n, 1);
  assert_int_equal(at->v[0].outcome, CP_OUTCOME_RETRY);
  assert_int_equal(at->v[0].http_status, 500);
  assert_string_equal(at->v[0].message, "boom");
  assert_null(at->v[0].remote_id);
  assert_int_equal(at->v[1].n, 2);
  assert_int_equal(at->v[1].outcome, CP_OUTCOME_OK);
  assert_int_equal(at->v[1].at_ms, NOW + MIN);
  assert_string_equal(at->v[1].remote_url, "https://x/1");
  cp_store_attempts_free(at);

  /* A sent post cannot get another attempt. */
  struct cp_store_result again = {.at_ms = NOW, .outcome = CP_OUTCOME_OK, .next = CP_STORE_SENT};
  assert_int_equal(cp_store_record_attempt(f->s, ID_A, &again), CP_EINVAL);
  assert_non_null(strstr(cp_store_errmsg(f->s), "sent"));
  assert_int_equal(cp_store_attempts(f->s, ID_A, &at), 0);
  assert_int_equal(at->n, 2);
  cp_store_attempts_free(at);
}

static void long_messages_are_cut_on_a_character(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item it = item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a');
  reconcile(f->s, &it, 1, false);
  char msg[CP_STORE_MESSAGE_MAX + 64];
  memset(msg, 'x', sizeof msg);
  memcpy(msg + CP_STORE_MESSAGE_MAX - 1, "\xc3\xa9", 2); /* é across the limit */
  msg[sizeof msg - 1] = '\0';
  bool claimed;
  assert_int_equal(cp_store_mark_sending(f->s, ID_A, NOW, &claimed), 0);
  struct cp_store_result r = {
      .at_ms = NOW, .outcome = CP_OUTCOME_PERMANENT, .message = msg, .next = CP_STORE_FAILED};
  assert_int_equal(cp_store_record_attempt(f->s, ID_A, &r), 0);
  struct cp_store_attempts *at = NULL;
  assert_int_equal(cp_store_attempts(f->s, ID_A, &at), 0);
  assert_int_equal(strlen(at->v[0].message), CP_STORE_MESSAGE_MAX - 1);
  cp_store_attempts_free(at);
}

static void next_due_orders_and_honours_pauses(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "mastodon", NOW + 10 * MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "bluesky", NOW + 20 * MIN, CP_POST_SCHEDULED, 'b'),
      item(ID_C, "mastodon", NOW + 30 * MIN, CP_POST_SCHEDULED, 'c'),
  };
  reconcile(f->s, plan, 3, false);
  struct cp_store_post *p = NULL;
  assert_int_equal(cp_store_next_due(f->s, NULL, &p), 0);
  assert_string_equal(p->id, ID_A);
  cp_store_post_free(p);
  assert_int_equal(cp_store_next_due(f->s, "bluesky", &p), 0);
  assert_string_equal(p->id, ID_B);
  cp_store_post_free(p);
  assert_int_equal(cp_store_next_due(f->s, "telegram", &p), CP_ENOTFOUND);

  assert_int_equal(cp_store_channel_pause(f->s, "mastodon", 0, NULL), 0);
  assert_int_equal(cp_store_next_due(f->s, NULL, &p), 0);
  assert_string_equal(p->id, ID_B);
  cp_store_post_free(p);
  assert_int_equal(cp_store_next_due(f->s, "mastodon", &p), CP_ENOTFOUND);

  assert_int_equal(cp_store_channel_pause(f->s, "mastodon", NOW + 25 * MIN, "429"), 0);
  assert_int_equal(cp_store_next_due(f->s, "mastodon", &p), 0);
  assert_string_equal(p->id, ID_A);
  assert_int_equal(p->next_ms, NOW + 25 * MIN); /* held until the pause ends */
  cp_store_post_free(p);
  assert_int_equal(cp_store_next_due(f->s, NULL, &p), 0);
  assert_string_equal(p->id, ID_B);
  cp_store_post_free(p);

  assert_int_equal(cp_store_channel_resume(f->s, "mastodon"), 0);
  assert_int_equal(cp_store_next_due(f->s, NULL, &p), 0);
  assert_string_equal(p->id, ID_A);
  assert_int_equal(p->next_ms, NOW + 10 * MIN);
  cp_store_post_free(p);
}

/* A burst: many posts of one channel due at the same millisecond. They leave in id order, and
 * finding the next one is one step along the posts_channel index (schema 5), not a sort of all
 * of them: the query plan has no temporary B-tree. */
static void next_due_of_a_burst_is_one_index_step(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  static const char *const ids[] = {"3000000000000000", "1000000000000000", "4000000000000000",
                                    "2000000000000000", "0000000000000000"};
  struct cp_store_item plan[5];
  for (int i = 0; i < 5; i++)
    plan[i] = item(ids[i], "m", NOW, CP_POST_SCHEDULED, (char)('a' + i));
  reconcile(f->s, plan, 5, false);
  for (int i = 0; i < 5; i++) {
    char want[17];
    snprintf(want, sizeof want, "%d000000000000000", i);
    struct cp_store_post *p = NULL;
    assert_int_equal(cp_store_next_due(f->s, "m", &p), 0);
    assert_string_equal(p->id, want);
    bool claimed = false;
    assert_int_equal(cp_store_mark_sending(f->s, p->id, NOW, &claimed), 0);
    assert_true(claimed);
    cp_store_post_free(p);
  }
  sqlite3 *h;
  assert_int_equal(sqlite3_open_v2(f->db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(h,
                                      "EXPLAIN QUERY PLAN SELECT id FROM posts p "
                                      "WHERE p.channel = 'm' AND p.state = 'pending' "
                                      "ORDER BY p.next_ms, p.due_ms, p.id LIMIT 1",
                                      -1, &st, NULL),
                   SQLITE_OK);
  int rows = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char *detail = (const char *)sqlite3_column_text(st, 3);
    assert_null(strstr(detail, "TEMP B-TREE"));
    rows++;
  }
  assert_true(rows > 0);
  sqlite3_finalize(st);
  sqlite3_close(h);
}

static void misfires_respect_the_channel_grace(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "mastodon", NOW - 10 * MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "mastodon", NOW - 1 * MIN, CP_POST_SCHEDULED, 'b'),
      item(ID_C, "bluesky", NOW - 10 * MIN, CP_POST_SCHEDULED, 'c'),
  };
  reconcile(f->s, plan, 3, false);
  struct cp_store_posts *missed = NULL;
  assert_int_equal(cp_store_mark_missed(f->s, "mastodon", 5 * MIN, NOW, &missed), 0);
  assert_int_equal(missed->n, 1);
  assert_string_equal(missed->v[0].id, ID_A);
  assert_int_equal(missed->v[0].state, CP_STORE_MISSED);
  cp_store_posts_free(missed);
  assert_int_equal(state_of(f->s, ID_B), CP_STORE_PENDING);
  assert_int_equal(state_of(f->s, ID_C), CP_STORE_PENDING);
  /* A bigger grace on the other channel keeps its post. */
  assert_int_equal(cp_store_mark_missed(f->s, "bluesky", 15 * MIN, NOW, &missed), 0);
  assert_int_equal(missed->n, 0);
  cp_store_posts_free(missed);
  assert_int_equal(state_of(f->s, ID_C), CP_STORE_PENDING);
}

static void skip_and_retry_by_hand(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "m", NOW - 60 * MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "m", NOW, CP_POST_SCHEDULED, 'b'),
  };
  reconcile(f->s, plan, 2, false);
  assert_int_equal(cp_store_skip(f->s, ID_A, NOW), 0);
  assert_int_equal(state_of(f->s, ID_A), CP_STORE_SKIPPED);
  assert_int_equal(cp_store_retry(f->s, ID_A, NOW + MIN), 0);
  struct cp_store_post *p = get(f->s, ID_A);
  assert_int_equal(p->state, CP_STORE_PENDING);
  assert_int_equal(p->next_ms, NOW + MIN);
  cp_store_post_free(p);
  /* A retried post is not instantly missed because its due time is old. */
  assert_int_equal(cp_store_mark_missed(f->s, NULL, 5 * MIN, NOW + MIN, NULL), 0);
  assert_int_equal(state_of(f->s, ID_A), CP_STORE_PENDING);

  assert_int_equal(cp_store_retry(f->s, ID_B, NOW), CP_EINVAL); /* pending already */
  send_with(f->s, ID_B, CP_OUTCOME_OK, CP_STORE_SENT, NOW);
  assert_int_equal(cp_store_skip(f->s, ID_B, NOW), CP_EINVAL);
  assert_non_null(strstr(cp_store_errmsg(f->s), "sent"));
  assert_int_equal(state_of(f->s, ID_B), CP_STORE_SENT);
  assert_int_equal(cp_store_skip(f->s, ID_G, NOW), CP_ENOTFOUND);
}

static void channel_status_for_people(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "m", NOW + MIN, CP_POST_SCHEDULED, 'b'),
      item(ID_C, "m", NOW + 2 * MIN, CP_POST_SCHEDULED, 'c'),
      item(ID_D, "other", NOW, CP_POST_SCHEDULED, 'd'),
  };
  reconcile(f->s, plan, 4, false);
  send_with(f->s, ID_A, CP_OUTCOME_PERMANENT, CP_STORE_FAILED, NOW);
  send_with(f->s, ID_D, CP_OUTCOME_AUTH, CP_STORE_FAILED, NOW + MIN); /* other channel */
  assert_int_equal(cp_store_channel_pause(f->s, "m", NOW + 5 * MIN, "rate limited"), 0);
  struct cp_store_channel_status *cs = NULL;
  assert_int_equal(cp_store_channel_status(f->s, "m", NOW, &cs), 0);
  assert_int_equal(cs->counts[CP_STORE_PENDING], 2);
  assert_int_equal(cs->counts[CP_STORE_FAILED], 1);
  assert_true(cs->has_next);
  assert_string_equal(cs->next_id, ID_B);
  assert_true(cs->paused);
  assert_int_equal(cs->paused_until_ms, NOW + 5 * MIN);
  assert_true(cs->has_error);
  assert_string_equal(cs->error_post, ID_A);
  assert_int_equal(cs->error_outcome, CP_OUTCOME_PERMANENT);
  assert_int_equal(cs->error_http_status, 500);
  assert_string_equal(cs->error_message, "boom");
  cp_store_channel_status_free(cs);
  /* The pause has run out by then. */
  assert_int_equal(cp_store_channel_status(f->s, "m", NOW + 6 * MIN, &cs), 0);
  assert_false(cs->paused);
  cp_store_channel_status_free(cs);
  assert_int_equal(cp_store_channel_status(f->s, "nothing", NOW, &cs), 0);
  assert_int_equal(cs->counts[CP_STORE_PENDING], 0);
  assert_false(cs->has_next || cs->has_error || cs->paused);
  cp_store_channel_status_free(cs);
}

static void metadata(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  char *v = NULL;
  assert_int_equal(cp_store_meta_get(f->s, "k", &v), CP_ENOTFOUND);
  assert_int_equal(cp_store_meta_set(f->s, "k", "1"), 0);
  assert_int_equal(cp_store_meta_set(f->s, "k", "2"), 0);
  assert_int_equal(cp_store_meta_get(f->s, "k", &v), 0);
  assert_string_equal(v, "2");
  free(v);
}

static void item_hash_follows_published_content(void **state) {
  struct cp_media media = {.src = "img.png", .alt = "a cat"};
  struct cp_post post = {.id = ID_A,
                         .calendar = "c",
                         .uid = "u",
                         .occurrence = "single",
                         .channel = "m",
                         .due = 1800000000,
                         .title = "T",
                         .text = "hello",
                         .media = &media,
                         .n_media = 1};
  struct cp_store_item a, b;
  assert_int_equal(cp_store_item_from_post(&a, &post), 0);
  assert_int_equal(a.due_ms, 1800000000000LL);
  assert_int_equal(strlen(a.hash), CP_STORE_HASH_LEN);
  assert_int_equal(cp_store_item_from_post(&b, &post), 0);
  assert_string_equal(a.hash, b.hash);
  post.text = "hello!";
  assert_int_equal(cp_store_item_from_post(&b, &post), 0);
  assert_string_not_equal(a.hash, b.hash);
  post.text = "hello";
  media.alt = "a dog";
  assert_int_equal(cp_store_item_from_post(&b, &post), 0);
  assert_string_not_equal(a.hash, b.hash);
  media.alt = "a cat";
  post.due += 60; /* moving a post is not a content change */
  assert_int_equal(cp_store_item_from_post(&b, &post), 0);
  assert_string_equal(a.hash, b.hash);
  memcpy(post.id, "XYZ", 4);
  assert_int_equal(cp_store_item_from_post(&b, &post), CP_EINVAL);
}

/* Group commit: claims inside a batch are one transaction; nothing is visible to another
 * process (or durable) before the batch ends; an aborted batch claims nothing; a failed call
 * inside a batch undoes only itself. */
static void batch_is_one_transaction(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store *other = open_store(f);
  struct cp_store_item its[2] = {item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a'),
                                 item(ID_B, "m", NOW, CP_POST_SCHEDULED, 'b')};
  reconcile(f->s, its, 2, false);
  bool claimed = false;
  assert_int_equal(cp_store_batch_begin(f->s), 0);
  assert_int_equal(cp_store_batch_begin(f->s), CP_EINVAL); /* no nesting */
  assert_int_equal(cp_store_mark_sending(f->s, ID_A, NOW, &claimed), 0);
  assert_true(claimed);
  /* A failing call inside the batch (not sending) leaves the batch usable. */
  struct cp_store_result r = {.at_ms = NOW, .outcome = CP_OUTCOME_OK, .next = CP_STORE_SENT};
  assert_int_equal(cp_store_record_attempt(f->s, ID_B, &r), CP_EINVAL);
  assert_int_equal(cp_store_mark_sending(f->s, ID_B, NOW, &claimed), 0);
  assert_true(claimed);
  assert_int_equal(cp_store_batch_end(f->s, false), 0); /* abort: nothing was claimed */
  struct cp_store_post *p = NULL;
  assert_int_equal(cp_store_get(other, ID_A, &p), 0);
  assert_int_equal(p->state, CP_STORE_PENDING);
  cp_store_post_free(p);

  assert_int_equal(cp_store_batch_begin(f->s), 0);
  assert_int_equal(cp_store_mark_sending(f->s, ID_A, NOW, &claimed), 0);
  assert_int_equal(cp_store_mark_sending(f->s, ID_B, NOW, &claimed), 0);
  assert_int_equal(cp_store_batch_end(f->s, true), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(cp_store_get(other, i ? ID_B : ID_A, &p), 0);
    assert_int_equal(p->state, CP_STORE_SENDING);
    cp_store_post_free(p);
  }
  /* Records of both in one batch. */
  assert_int_equal(cp_store_batch_begin(f->s), 0);
  assert_int_equal(cp_store_record_attempt(f->s, ID_A, &r), 0);
  assert_int_equal(cp_store_record_attempt(f->s, ID_B, &r), 0);
  assert_int_equal(cp_store_batch_end(f->s, true), 0);
  assert_int_equal(cp_store_get(other, ID_B, &p), 0);
  assert_int_equal(p->state, CP_STORE_SENT);
  cp_store_post_free(p);
  assert_int_equal(cp_store_batch_end(f->s, true), CP_EINVAL); /* no batch open */
  cp_store_close(other);
}

/* ---- engagement samples ---------------------------------------------------------------------- */

#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static const int64_t AGES[] = {3600, 86400}; /* 1 h, 1 d */

static struct cp_store_sample *next_sample(struct cp_store *s, const char *const *channels,
                                           size_t n, int64_t now) {
  struct cp_store_sample *smp = NULL;
  int rc = cp_store_next_engagement(s, channels, n, AGES, 2, now, &smp);
  if (rc != 0)
    fail_msg("next engagement: %s (%s)", cp_store_errmsg(s), cp_err_name(rc));
  return smp;
}

static void assert_sample(struct cp_store_sample *smp, const char *id, int64_t age_s,
                          int64_t sent_ms) {
  assert_string_equal(smp->post_id, id);
  assert_int_equal(smp->age_s, age_s);
  assert_int_equal(smp->sent_ms, sent_ms);
  assert_int_equal(smp->due_ms, sent_ms + age_s * 1000);
  cp_store_sample_free(smp);
}

/* The samples of sent posts come due in order of publish time + age, per channel; a recorded
 * sample (with counts or skipped) is not handed out again; pauses hold a channel's samples. */
static void engagement_samples_come_due_in_order(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {
      item(ID_A, "m", NOW - 10 * MIN, CP_POST_SCHEDULED, 'a'),
      item(ID_B, "m", NOW - 5 * MIN, CP_POST_SCHEDULED, 'b'),
      item(ID_C, "other", NOW - 3 * MIN, CP_POST_SCHEDULED, 'c'),
      item(ID_D, "m", NOW + DAY, CP_POST_SCHEDULED, 'd'),
      item(ID_E, "f", NOW - MIN, CP_POST_SCHEDULED, 'e'),
  };
  reconcile(f->s, plan, 5, false);
  send_with(f->s, ID_A, CP_OUTCOME_OK, CP_STORE_SENT, NOW);
  send_with(f->s, ID_B, CP_OUTCOME_OK, CP_STORE_SENT, NOW + 10 * MIN);
  send_with(f->s, ID_C, CP_OUTCOME_OK, CP_STORE_SENT, NOW + MIN);
  send_with(f->s, ID_E, CP_OUTCOME_PERMANENT, CP_STORE_FAILED, NOW);
  const char *m[] = {"m"}, *both[] = {"m", "other"}, *failed[] = {"f"};

  struct cp_store_sample *smp = next_sample(f->s, m, 1, NOW);
  assert_string_equal(smp->channel, "m");
  assert_string_equal(smp->remote_id, "remote-1");
  assert_string_equal(smp->remote_url, "https://x/1");
  assert_int_equal(smp->next_ms, NOW + HOUR); /* in the future: the caller waits for it */
  assert_sample(smp, ID_A, 3600, NOW);

  struct cp_store_engagement counts = {
      .replies = 1, .reposts = 2, .likes = 3, .quotes = -1, .views = -1};
  assert_int_equal(cp_store_record_engagement(f->s, ID_A, 3600, NOW + HOUR, &counts), 0);
  assert_sample(next_sample(f->s, m, 1, NOW + HOUR), ID_B, 3600, NOW + 10 * MIN);
  /* Across channels: the other channel's post comes due first. */
  smp = next_sample(f->s, both, 2, NOW + HOUR);
  assert_string_equal(smp->channel, "other");
  assert_sample(smp, ID_C, 3600, NOW + MIN);
  /* A skipped sample is not handed out again: the next one is A's second age. */
  assert_int_equal(cp_store_record_engagement(f->s, ID_B, 3600, NOW + 2 * HOUR, NULL), 0);
  assert_sample(next_sample(f->s, m, 1, NOW + 2 * HOUR), ID_A, 86400, NOW);

  assert_int_equal(raw_int(f->db, "SELECT count(*) FROM engagement WHERE post_id = '" ID_A
                                  "' AND age_s = 3600 AND replies = 1 AND reposts = 2 AND "
                                  "likes = 3 AND quotes IS NULL AND views IS NULL"),
                   1);
  assert_int_equal(raw_int(f->db, "SELECT count(*) FROM engagement WHERE post_id = '" ID_B
                                  "' AND sampled_ms > 0 AND coalesce(replies, reposts, likes, "
                                  "quotes, views) IS NULL"),
                   1);
  /* Recording again replaces the sample. */
  counts.replies = 5;
  assert_int_equal(cp_store_record_engagement(f->s, ID_A, 3600, NOW + HOUR + 1, &counts), 0);
  assert_int_equal(raw_int(f->db, "SELECT replies FROM engagement WHERE post_id = '" ID_A "'"), 5);

  /* A channel paused until T holds its samples until T; paused indefinitely, it has none. */
  assert_int_equal(cp_store_channel_pause(f->s, "m", NOW + 3 * DAY, "rate limited"), 0);
  smp = next_sample(f->s, m, 1, NOW + 2 * HOUR);
  assert_int_equal(smp->next_ms, NOW + 3 * DAY);
  assert_sample(smp, ID_A, 86400, NOW);
  assert_int_equal(cp_store_channel_pause(f->s, "m", 0, "credentials rejected"), 0);
  smp = NULL;
  assert_int_equal(cp_store_next_engagement(f->s, m, 1, AGES, 2, NOW + 2 * HOUR, &smp),
                   CP_ENOTFOUND);
  assert_null(smp);
  smp = next_sample(f->s, both, 2, NOW + 2 * HOUR);
  assert_sample(smp, ID_C, 3600, NOW + MIN);
  assert_int_equal(cp_store_channel_resume(f->s, "m"), 0);

  /* Only sent posts have samples. */
  assert_int_equal(cp_store_next_engagement(f->s, failed, 1, AGES, 2, NOW, &smp), CP_ENOTFOUND);
  /* What `calpost status` shows. */
  struct cp_store_channel_status *cs = NULL;
  assert_int_equal(cp_store_channel_status(f->s, "m", NOW, &cs), 0);
  assert_int_equal(cs->samples, 1);
  assert_int_equal(cs->samples_skipped, 1);
  cp_store_channel_status_free(cs);

  /* Bad arguments change nothing. */
  assert_int_equal(cp_store_record_engagement(f->s, ID_G, 3600, NOW, &counts), CP_ENOTFOUND);
  assert_int_equal(cp_store_record_engagement(f->s, ID_A, 0, NOW, &counts), CP_EINVAL);
  assert_int_equal(cp_store_record_engagement(f->s, "nope", 3600, NOW, &counts), CP_EINVAL);
  assert_int_equal(cp_store_next_engagement(f->s, m, 1, AGES, 0, NOW, &smp), CP_EINVAL);
  assert_int_equal(cp_store_next_engagement(f->s, NULL, 0, AGES, 2, NOW, &smp), CP_EINVAL);
  const int64_t bad_ages[] = {3600, -5};
  assert_int_equal(cp_store_next_engagement(f->s, m, 1, bad_ages, 2, NOW, &smp), CP_EINVAL);
  assert_int_equal(cp_store_skip_engagement(f->s, m, 1, bad_ages, 2, NOW, NULL), CP_EINVAL);
  assert_int_equal(raw_int(f->db, "SELECT count(*) FROM engagement"), 2);
}

/* A sample more than two days past its time is not handed out; skip_engagement records it
 * without counts, once. */
static void late_engagement_samples_are_skipped(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a'),
                                 item(ID_B, "m", NOW, CP_POST_SCHEDULED, 'b')};
  reconcile(f->s, plan, 2, false);
  send_with(f->s, ID_A, CP_OUTCOME_OK, CP_STORE_SENT, NOW);
  const char *m[] = {"m"};
  int64_t late = NOW + HOUR + CP_STORE_ENGAGEMENT_LATE_MS;
  /* Exactly at the limit it is still taken... */
  assert_sample(next_sample(f->s, m, 1, late), ID_A, 3600, NOW);
  size_t n = 99;
  assert_int_equal(cp_store_skip_engagement(f->s, m, 1, AGES, 2, late, &n), 0);
  assert_int_equal(n, 0);
  /* ... a millisecond later only the 1 d sample is left. */
  assert_sample(next_sample(f->s, m, 1, late + 1), ID_A, 86400, NOW);
  assert_int_equal(cp_store_skip_engagement(f->s, m, 1, AGES, 2, late + 1, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(raw_int(f->db, "SELECT count(*) FROM engagement WHERE post_id = '" ID_A
                                  "' AND age_s = 3600 AND replies IS NULL AND sampled_ms = "
                                  "1800000000000 + 3600000 + 2 * 86400000 + 1"),
                   1);
  assert_int_equal(cp_store_skip_engagement(f->s, m, 1, AGES, 2, late + 1, &n), 0);
  assert_int_equal(n, 0); /* once */
  /* Long after: nothing is left to take, and the 1 d sample is skipped too. */
  struct cp_store_sample *smp = NULL;
  int64_t later = NOW + DAY + CP_STORE_ENGAGEMENT_LATE_MS + 1;
  assert_int_equal(cp_store_next_engagement(f->s, m, 1, AGES, 2, later, &smp), CP_ENOTFOUND);
  assert_int_equal(cp_store_skip_engagement(f->s, m, 1, AGES, 2, later, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(raw_int(f->db, "SELECT count(*) FROM engagement"), 2);
  /* B was never sent: nothing of it. */
  assert_int_equal(raw_int(f->db, "SELECT count(*) FROM engagement WHERE post_id = '" ID_B "'"), 0);
}

/* The publish time is the time of the OK attempt, not of the first one; a database from before
 * schema 4 learns it from its attempts when it is migrated. */
static void sample_ages_count_from_the_ok_attempt(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  struct cp_store_item plan[] = {item(ID_A, "m", NOW, CP_POST_SCHEDULED, 'a')};
  reconcile(f->s, plan, 1, false);
  send_with(f->s, ID_A, CP_OUTCOME_RETRY, CP_STORE_PENDING, NOW);
  send_with(f->s, ID_A, CP_OUTCOME_OK, CP_STORE_SENT, NOW + 5 * MIN);
  const char *m[] = {"m"};
  assert_sample(next_sample(f->s, m, 1, NOW), ID_A, 3600, NOW + 5 * MIN);
  cp_store_close(f->s);
  f->s = NULL;
  /* Schema 3 had no publish time. */
  raw_exec(f->db, "DROP INDEX posts_sent; ALTER TABLE posts DROP COLUMN sent_ms; "
                  "DELETE FROM migrations WHERE version >= 4; PRAGMA user_version = 3");
  f->s = open_store(f);
  assert_int_equal(raw_int(f->db, "PRAGMA user_version"), 5);
  assert_sample(next_sample(f->s, m, 1, NOW), ID_A, 3600, NOW + 5 * MIN);
}

/* Many published posts, nearly all sampled: the one left is found. */
static void engagement_among_many_posts(void **state) {
  struct fixture *f = *state;
  f->s = open_store(f);
  enum { N = 500 };
  struct cp_store_item *plan = calloc(N, sizeof *plan);
  assert_non_null(plan);
  for (int i = 0; i < N; i++) {
    char id[CP_POST_ID_LEN + 1];
    snprintf(id, sizeof id, "%016x", i + 1);
    plan[i] = item(id, i % 2 ? "m" : "other", NOW - (N - i) * MIN, CP_POST_SCHEDULED, 'p');
  }
  reconcile(f->s, plan, N, false);
  assert_int_equal(cp_store_batch_begin(f->s), 0);
  for (int i = 0; i < N; i++)
    send_with(f->s, plan[i].id, CP_OUTCOME_OK, CP_STORE_SENT, NOW - (N - i) * MIN);
  for (int i = 0; i < N; i++)
    if (i != 301) {
      struct cp_store_engagement c = {i, i, i, i, i};
      assert_int_equal(cp_store_record_engagement(f->s, plan[i].id, 3600, NOW, &c), 0);
    }
  assert_int_equal(cp_store_batch_end(f->s, true), 0);
  const char *m[] = {"m"};
  const int64_t hour[] = {3600};
  struct cp_store_sample *smp = NULL;
  assert_int_equal(cp_store_next_engagement(f->s, m, 1, hour, 1, NOW, &smp), 0);
  assert_sample(smp, plan[301].id, 3600, NOW - (N - 301) * MIN);
  free(plan);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(file_is_private),
      T(existing_file_is_tightened),
      T(reconcile_adds_moves_and_cancels),
      T(reconcile_never_touches_settled_posts),
      T(draft_cancels_and_rescheduling_restores),
      T(dry_run_counts_without_changing),
      T(duplicate_ids_change_nothing),
      T(reopen_keeps_state_and_migrates_once),
      T(progress_is_kept_with_the_post),
      T(newer_schema_is_refused),
      T(unknown_backend_is_refused),
      T(crash_while_sending_is_found_at_startup),
      T(close_without_finishing_keeps_sending),
      T(a_post_is_claimed_once),
      T(batch_is_one_transaction),
      T(retry_then_success_records_every_attempt),
      T(long_messages_are_cut_on_a_character),
      T(next_due_orders_and_honours_pauses),
      T(next_due_of_a_burst_is_one_index_step),
      T(misfires_respect_the_channel_grace),
      T(skip_and_retry_by_hand),
      T(channel_status_for_people),
      T(metadata),
      T(engagement_samples_come_due_in_order),
      T(late_engagement_samples_are_skipped),
      T(sample_ages_count_from_the_ok_attempt),
      T(engagement_among_many_posts),
      cmocka_unit_test(item_hash_follows_published_content),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
