/* The SQLite backend of the store: one WAL-mode file, calpost.db, in the state directory.
 *
 * Every SQLite return code is checked here and becomes CP_EDB (CP_EBUSY when the file stayed
 * locked) with sqlite3_errmsg() in the store's message. Statements are prepared per call: the
 * daemon makes a few calls per post, and a cache would only add invalidation paths. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "calpost/err.h"
#include "store.h"

#define DB_NAME "calpost.db"
/* The CLI reads while the daemon writes; writers hold the lock for milliseconds. */
#define BUSY_TIMEOUT_MS 5000

struct sq {
  struct cp_store base; /* first: the public functions see a struct cp_store */
  sqlite3 *db;
  bool batch; /* inside cp_store_batch_begin/end: transactions become savepoints */
  /* Prepared statements kept for reuse: parsing SQL cost more than running it (a third of the
   * daemon's time in a burst). Keyed by the SQL text; one in use is not handed out twice. */
  struct cached_stmt {
    uint64_t hash;
    sqlite3_stmt *st;
    bool in_use;
  } cache[64];
  size_t n_cache;
};

/* Schema migrations. Step i brings user_version from i to i + 1 in one transaction, and logs
 * itself in `migrations`. Append only: never edit a step that has shipped. */
static const char *const migrations[] = {
    /* 1: the queue, the attempts, per-channel pauses, daemon metadata. */
    "CREATE TABLE migrations(\n"
    "  version INTEGER PRIMARY KEY,\n"
    "  applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));\n"
    "CREATE TABLE posts(\n"
    "  id TEXT PRIMARY KEY CHECK (length(id) = 16),\n"
    "  calendar TEXT NOT NULL,\n"
    "  uid TEXT NOT NULL,\n"
    "  occurrence TEXT NOT NULL,\n"
    "  channel TEXT NOT NULL,\n"
    "  due_ms INTEGER NOT NULL,\n"
    "  next_ms INTEGER NOT NULL,\n"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'missed',\n"
    "                                       'cancelled', 'skipped', 'unknown')),\n"
    "  hash TEXT NOT NULL,\n"
    "  attempts INTEGER NOT NULL DEFAULT 0,\n"
    "  remote_id TEXT,\n"
    "  remote_url TEXT,\n"
    "  created_ms INTEGER NOT NULL,\n"
    "  updated_ms INTEGER NOT NULL);\n"
    "CREATE INDEX posts_queue ON posts(state, next_ms);\n"
    "CREATE INDEX posts_channel ON posts(channel, state, next_ms);\n"
    "CREATE TABLE attempts(\n"
    "  post_id TEXT NOT NULL REFERENCES posts(id),\n"
    "  n INTEGER NOT NULL,\n"
    "  at_ms INTEGER NOT NULL,\n"
    "  outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'retry', 'rate_limited', 'auth',\n"
    "                                           'permanent', 'unknown')),\n"
    "  http_status INTEGER NOT NULL DEFAULT 0,\n"
    "  message TEXT,\n"
    "  remote_id TEXT,\n"
    "  remote_url TEXT,\n"
    "  PRIMARY KEY (post_id, n));\n"
    "CREATE INDEX attempts_at ON attempts(at_ms);\n"
    "CREATE TABLE channels(\n"
    "  name TEXT PRIMARY KEY,\n"
    "  paused INTEGER NOT NULL DEFAULT 0,\n"
    "  paused_until_ms INTEGER NOT NULL DEFAULT 0,\n"
    "  pause_reason TEXT);\n"
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);\n",
    /* 2: what a connector saved of a post's progress (thread parts published, media uploaded). */
    "ALTER TABLE posts ADD COLUMN progress TEXT;\n",
    /* 3: engagement samples of published posts, one per target age (1 h, 1 d, 7 d, ...). */
    "CREATE TABLE engagement(\n"
    "  post_id TEXT NOT NULL REFERENCES posts(id),\n"
    "  age_s INTEGER NOT NULL,\n"
    "  sampled_ms INTEGER NOT NULL,\n"
    "  replies INTEGER,\n"
    "  reposts INTEGER,\n"
    "  likes INTEGER,\n"
    "  quotes INTEGER,\n"
    "  views INTEGER,\n"
    "  PRIMARY KEY (post_id, age_s));\n",
    /* 4: when a post was published (the time of its OK attempt), indexed for the engagement
     * samples that come due after it: they read only the posts of the last days. */
    "ALTER TABLE posts ADD COLUMN sent_ms INTEGER;\n"
    "UPDATE posts SET sent_ms = (SELECT max(a.at_ms) FROM attempts a\n"
    "                            WHERE a.post_id = posts.id AND a.outcome = 'ok')\n"
    "WHERE state = 'sent';\n"
    "CREATE INDEX posts_sent ON posts(channel, sent_ms, id) WHERE state = 'sent';\n",
    /* 5: the channel index holds the whole queue order (next_ms, due_ms, id): the next post of
     * a channel is one index step, not a sort of every post due in the same millisecond (a
     * burst of 100 posts at one second sorted 100 rows per claim). */
    "DROP INDEX posts_channel;\n"
    "CREATE INDEX posts_channel ON posts(channel, state, next_ms, due_ms, id);\n",
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* The columns read into a struct cp_store_post, from `posts t`. RETURNING takes no alias, hence
 * the bare variant. */
#define POST_COLS_OF(t)                                                                            \
  t "id, " t "calendar, " t "uid, " t "occurrence, " t "channel, " t "due_ms, " t "next_ms, " t    \
    "state, " t "hash, " t "attempts, " t "remote_id, " t "remote_url, " t "updated_ms, " t        \
    "progress"
#define POST_COLS POST_COLS_OF("p.")

static struct sq *sq_of(struct cp_store *s) {
  return (struct sq *)s;
}

/* Converts an SQLite failure where it enters: the message names what we were doing. */
static int dberr(struct sq *q, int rc, const char *what) {
  int primary = rc & 0xff;
  int err = primary == SQLITE_BUSY || primary == SQLITE_LOCKED ? CP_EBUSY : CP_EDB;
  if (primary == SQLITE_NOMEM)
    err = CP_ENOMEM;
  return cp__store_fail(&q->base, err, "store: %s: %s", what,
                        q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc));
}

/* Binds arguments by a format: 's' text (NULL binds NULL), 'i' int64_t, 'd' int. */
static int vbind(struct sq *q, sqlite3_stmt *st, const char *what, const char *fmt, va_list ap) {
  for (int i = 0; fmt && fmt[i]; i++) {
    int rc;
    if (fmt[i] == 's') {
      const char *v = va_arg(ap, const char *);
      rc = v ? sqlite3_bind_text(st, i + 1, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i + 1);
    } else if (fmt[i] == 'i') {
      rc = sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
    } else {
      rc = sqlite3_bind_int(st, i + 1, va_arg(ap, int));
    }
    if (rc != SQLITE_OK)
      return dberr(q, rc, what);
  }
  return 0;
}

static uint64_t sql_hash(const char *sql) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (const unsigned char *c = (const unsigned char *)sql; *c; c++)
    h = (h ^ *c) * 1099511628211ull;
  return h;
}

/* A prepared statement for sql: a cached one that is not in use, or a new one (cached while
 * there is room). Give it back with release(). */
static int prepare(struct sq *q, const char *sql, sqlite3_stmt **st) {
  uint64_t h = sql_hash(sql);
  for (size_t i = 0; i < q->n_cache; i++) {
    struct cached_stmt *c = &q->cache[i];
    if (c->hash == h && !c->in_use && !strcmp(sqlite3_sql(c->st), sql)) {
      c->in_use = true;
      *st = c->st;
      return SQLITE_OK;
    }
  }
  int rc = sqlite3_prepare_v3(q->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
  if (rc != SQLITE_OK) {
    *st = NULL;
    return rc;
  }
  if (q->n_cache < sizeof q->cache / sizeof q->cache[0])
    q->cache[q->n_cache++] = (struct cached_stmt){.hash = h, .st = *st, .in_use = true};
  return SQLITE_OK;
}

/* Gives a statement from prepare() back: a cached one is reset (its read ends, its bindings are
 * cleared) for the next use, any other is finalized. */
static void release(struct sq *q, sqlite3_stmt *st) {
  if (!st)
    return;
  for (size_t i = 0; i < q->n_cache; i++)
    if (q->cache[i].st == st) {
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      q->cache[i].in_use = false;
      return;
    }
  release(q, st);
}

static int prep(struct sq *q, sqlite3_stmt **st, const char *what, const char *sql, const char *fmt,
                ...) {
  int rc = prepare(q, sql, st);
  if (rc != SQLITE_OK)
    return dberr(q, rc, what);
  va_list ap;
  va_start(ap, fmt);
  int err = vbind(q, *st, what, fmt, ap);
  va_end(ap);
  if (err < 0) {
    release(q, *st);
    *st = NULL;
  }
  return err;
}

/* Runs one statement that returns no rows. Returns the number of changed rows, or an error. */
static int run(struct sq *q, const char *what, const char *sql, const char *fmt, ...) {
  sqlite3_stmt *st;
  int rc = prepare(q, sql, &st);
  if (rc != SQLITE_OK)
    return dberr(q, rc, what);
  va_list ap;
  va_start(ap, fmt);
  int err = vbind(q, st, what, fmt, ap);
  va_end(ap);
  if (err == 0) {
    rc = sqlite3_step(st);
    err = rc == SQLITE_DONE ? sqlite3_changes(q->db) : dberr(q, rc, what);
  }
  release(q, st);
  return err;
}

/* One statement without arguments or rows (a transaction's begin or end), from the cache. */
static int exec1(struct sq *q, const char *what, const char *sql) {
  int n = run(q, what, sql, NULL);
  return n < 0 ? n : 0;
}

static int exec(struct sq *q, const char *what, const char *sql) {
  int rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? 0 : dberr(q, rc, what);
}

/* IMMEDIATE takes the write lock up front, so a transaction never fails half-way with BUSY. */
static int begin(struct sq *q) {
  if (q->batch)
    return exec1(q, "begin savepoint", "SAVEPOINT op");
  return exec1(q, "begin transaction", "BEGIN IMMEDIATE");
}

static int commit(struct sq *q) {
  if (q->batch)
    return exec1(q, "release savepoint", "RELEASE op");
  return exec1(q, "commit", "COMMIT");
}

/* Undoes the open transaction (inside a batch: only this operation), keeping the message of
 * the error that led here. */
static void rollback(struct sq *q) {
  if (q->batch)
    sqlite3_exec(q->db, "ROLLBACK TO op; RELEASE op", NULL, NULL, NULL);
  else if (!sqlite3_get_autocommit(q->db))
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Group commit: one transaction, so one disk sync, for many claims or records. */
static int sq_batch_begin(struct cp_store *s) {
  struct sq *q = sq_of(s);
  if (q->batch)
    return cp__store_fail(s, CP_EINVAL, "store: a batch is already open");
  int err = exec1(q, "begin batch", "BEGIN IMMEDIATE");
  if (err == 0)
    q->batch = true;
  return err;
}

static int sq_batch_end(struct cp_store *s, bool ok) {
  struct sq *q = sq_of(s);
  if (!q->batch)
    return cp__store_fail(s, CP_EINVAL, "store: no batch is open");
  q->batch = false;
  if (!ok) {
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
    return 0;
  }
  int err = exec1(q, "commit batch", "COMMIT");
  if (err < 0)
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
  return err;
}

static int end(struct sq *q, int err) {
  if (err < 0) {
    rollback(q);
    return err;
  }
  return commit(q);
}

static int dup_col(sqlite3_stmt *st, int col, char **out) {
  const unsigned char *v = sqlite3_column_text(st, col);
  *out = NULL;
  if (!v)
    return sqlite3_column_type(st, col) == SQLITE_NULL ? 0 : CP_ENOMEM;
  *out = strdup((const char *)v);
  return *out ? 0 : CP_ENOMEM;
}

static void copy_col(sqlite3_stmt *st, int col, char *dst, size_t len) {
  const unsigned char *v = sqlite3_column_text(st, col);
  snprintf(dst, len, "%s", v ? (const char *)v : "");
}

/* Reads a row of POST_COLS into p (zeroed first). On error p owns nothing. */
static int read_post(struct sq *q, sqlite3_stmt *st, struct cp_store_post *p) {
  memset(p, 0, sizeof *p);
  copy_col(st, 0, p->id, sizeof p->id);
  copy_col(st, 8, p->hash, sizeof p->hash);
  p->due_ms = sqlite3_column_int64(st, 5);
  p->next_ms = sqlite3_column_int64(st, 6);
  p->attempts = sqlite3_column_int(st, 9);
  p->updated_ms = sqlite3_column_int64(st, 12);
  const char *state = (const char *)sqlite3_column_text(st, 7);
  int err = cp_store_state_parse(state, &p->state);
  if (err < 0)
    err = cp__store_fail(&q->base, CP_EDB, "store: post %s has an unknown state \"%s\"", p->id,
                         state ? state : "");
  if (err == 0)
    err = dup_col(st, 1, &p->calendar);
  if (err == 0)
    err = dup_col(st, 2, &p->uid);
  if (err == 0)
    err = dup_col(st, 3, &p->occurrence);
  if (err == 0)
    err = dup_col(st, 4, &p->channel);
  if (err == 0)
    err = dup_col(st, 10, &p->remote_id);
  if (err == 0)
    err = dup_col(st, 11, &p->remote_url);
  if (err == 0)
    err = dup_col(st, 13, &p->progress);
  if (err < 0) {
    free(p->calendar);
    free(p->uid);
    free(p->occurrence);
    free(p->channel);
    free(p->remote_id);
    free(p->remote_url);
    free(p->progress);
    memset(p, 0, sizeof *p);
  }
  return err;
}

/* Steps st to the end, collecting POST_COLS rows. Finalizes st. */
static int collect_posts(struct sq *q, sqlite3_stmt *st, const char *what,
                         struct cp_store_posts **out) {
  struct cp_store_posts *l = calloc(1, sizeof *l);
  size_t cap = 0;
  int err = l ? 0 : CP_ENOMEM;
  while (err == 0) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
      break;
    if (rc != SQLITE_ROW) {
      err = dberr(q, rc, what);
      break;
    }
    if (l->n == cap) {
      size_t ncap = cap ? cap * 2 : 8;
      struct cp_store_post *v = realloc(l->v, ncap * sizeof *v);
      if (!v) {
        err = CP_ENOMEM;
        break;
      }
      l->v = v;
      cap = ncap;
    }
    err = read_post(q, st, &l->v[l->n]);
    if (err == 0)
      l->n++;
  }
  release(q, st);
  if (err < 0) {
    cp_store_posts_free(l);
    return err == CP_ENOMEM ? cp__store_fail(&q->base, err, "store: %s: out of memory", what) : err;
  }
  *out = l;
  return 0;
}

/* The state of post id, or CP_ENOTFOUND. For messages after an UPDATE matched nothing. */
static int post_state(struct sq *q, const char *id, enum cp_store_state *state) {
  sqlite3_stmt *st;
  int err = prep(q, &st, "read post state", "SELECT state FROM posts WHERE id = ?1", "s", id);
  if (err < 0)
    return err;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    err = cp_store_state_parse((const char *)sqlite3_column_text(st, 0), state) < 0
              ? cp__store_fail(&q->base, CP_EDB, "store: post %s has an unknown state", id)
              : 0;
  else if (rc == SQLITE_DONE)
    err = cp__store_fail(&q->base, CP_ENOTFOUND, "store: no post with id %s", id);
  else
    err = dberr(q, rc, "read post state");
  release(q, st);
  return err;
}

static int read_int(struct sq *q, const char *what, const char *sql, int64_t *out) {
  sqlite3_stmt *st;
  int err = prep(q, &st, what, sql, NULL);
  if (err < 0)
    return err;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    *out = sqlite3_column_int64(st, 0);
  else
    err = dberr(q, rc, what);
  release(q, st);
  return err;
}

static int newer_schema(struct sq *q, int64_t v) {
  return cp__store_fail(&q->base, CP_EDB,
                        "store: %s has schema version %lld, newer than this calpost knows (%d): "
                        "run a newer calpost or restore a backup",
                        sqlite3_db_filename(q->db, "main"), (long long)v, SCHEMA_VERSION);
}

static int migrate(struct sq *q) {
  for (int64_t v = 0;;) {
    int err = read_int(q, "read schema version", "PRAGMA user_version", &v);
    if (err < 0)
      return err;
    if (v > SCHEMA_VERSION)
      return newer_schema(q, v);
    if (v == SCHEMA_VERSION)
      return 0;
    err = begin(q);
    if (err < 0)
      return err;
    /* Another process may have migrated between our read and our lock: read again. */
    int64_t locked_v = -1;
    err = read_int(q, "read schema version", "PRAGMA user_version", &locked_v);
    if (err == 0 && locked_v == v) {
      char what[64], pragma[64];
      snprintf(what, sizeof what, "migrate schema to version %lld", (long long)v + 1);
      snprintf(pragma, sizeof pragma, "PRAGMA user_version = %lld", (long long)v + 1);
      err = exec(q, what, migrations[v]);
      if (err == 0) {
        int n = run(q, what, "INSERT INTO migrations(version) VALUES (?1)", "i", v + 1);
        err = n < 0 ? n : 0;
      }
      if (err == 0)
        err = exec(q, what, pragma);
    }
    err = end(q, err);
    if (err < 0)
      return err;
  }
}

/* Creates the file with mode 0600 before SQLite sees it: SQLite would create it 0644 (minus the
 * umask), and it gives the -wal and -shm files the main file's mode. An existing file that is
 * readable by others is tightened. */
static int create_private(const char *path, char *err, size_t errlen) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "store: cannot open %s: %s", path, strerror(e));
    return -e;
  }
  struct stat sb;
  int rc = fstat(fd, &sb);
  if (rc == 0 && (sb.st_mode & 077))
    rc = fchmod(fd, sb.st_mode & 0700);
  int e = errno;
  close(fd);
  if (rc < 0) {
    snprintf(err, errlen, "store: cannot make %s private (mode 0600): %s", path, strerror(e));
    return -e;
  }
  return 0;
}

static void sq_close(struct cp_store *s) {
  struct sq *q = sq_of(s);
  /* Cached statements are finalized here; every other one where it was prepared, so close cannot
   * be refused. */
  for (size_t i = 0; i < q->n_cache; i++)
    sqlite3_finalize(q->cache[i].st);
  sqlite3_close(q->db);
  free(q);
}

static int sq_open(const char *location, struct cp_store **out, char *errbuf, size_t errlen) {
  char scratch[256];
  if (!errbuf || !errlen) {
    errbuf = scratch;
    errlen = sizeof scratch;
  }
  if (mkdir(location, 0700) < 0 && errno != EEXIST) {
    int e = errno;
    snprintf(errbuf, errlen, "store: cannot create state directory %s: %s", location, strerror(e));
    return -e;
  }
  char *path = NULL;
  if (asprintf(&path, "%s/%s", location, DB_NAME) < 0) {
    snprintf(errbuf, errlen, "store: out of memory");
    return CP_ENOMEM;
  }
  int err = create_private(path, errbuf, errlen);
  struct sq *q = err < 0 ? NULL : calloc(1, sizeof *q);
  if (err == 0 && !q)
    err = CP_ENOMEM;
  if (err < 0) {
    free(path);
    return err;
  }
  q->base.ops = &cp__store_sqlite_ops;
  int rc = sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
  free(path);
  if (rc != SQLITE_OK) {
    err = dberr(q, rc, "open database");
    goto fail;
  }
  sqlite3_extended_result_codes(q->db, 1);
  rc = sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
  if (rc != SQLITE_OK) {
    err = dberr(q, rc, "set busy timeout");
    goto fail;
  }
  /* Refuse a newer schema before anything below writes to the file. */
  int64_t version = 0;
  err = read_int(q, "read schema version", "PRAGMA user_version", &version);
  if (err == 0 && version > SCHEMA_VERSION)
    err = newer_schema(q, version);
  if (err < 0)
    goto fail;
  sqlite3_stmt *st;
  err = prep(q, &st, "enable WAL", "PRAGMA journal_mode = WAL", NULL);
  if (err < 0)
    goto fail;
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW)
    err = dberr(q, rc, "enable WAL");
  else if (sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal"))
    err = cp__store_fail(&q->base, CP_EDB,
                         "store: %s cannot use WAL mode (a network file system?): keep the "
                         "state directory on a local disk",
                         location);
  release(q, st);
  if (err < 0)
    goto fail;
  /* synchronous = FULL: in WAL mode, NORMAL may lose the last commits on power loss (the file
   * stays consistent, but rolls back). Losing a `sending` mark means a post goes out twice; losing
   * `sent` means a retry publishes a duplicate. FULL syncs the WAL on every commit: one fsync per
   * state change, nothing at the rate a social-media calendar posts. */
  err = exec(q, "set synchronous", "PRAGMA synchronous = FULL");
  if (err == 0)
    err = exec(q, "enable foreign keys", "PRAGMA foreign_keys = ON");
  if (err == 0)
    err = migrate(q);
  /* Scratch space for reconcile, private to this connection and never written to the file. */
  if (err == 0)
    err = exec(q, "create plan table",
               "CREATE TEMP TABLE plan_items(id TEXT PRIMARY KEY, calendar TEXT, uid TEXT, "
               "occurrence TEXT, channel TEXT, due_ms INTEGER, scheduled INTEGER, hash TEXT)");
  if (err < 0)
    goto fail;
  *out = &q->base;
  return 0;
fail:
  snprintf(errbuf, errlen, "%s", q->base.errmsg);
  sq_close(&q->base);
  return err;
}

static int sq_reconcile(struct cp_store *s, const struct cp_store_item *items, size_t n,
                        int64_t now_ms, bool dry_run, struct cp_store_counts *counts) {
  struct sq *q = sq_of(s);
  struct cp_store_counts c = {0};
  int err = begin(q);
  if (err < 0)
    return err;
  err = run(q, "reconcile", "DELETE FROM temp.plan_items", NULL);
  sqlite3_stmt *ins = NULL;
  if (err >= 0)
    err = prep(q, &ins, "reconcile: load plan",
               "INSERT INTO temp.plan_items VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)", NULL);
  for (size_t i = 0; err >= 0 && i < n; i++) {
    const struct cp_store_item *it = &items[i];
    sqlite3_reset(ins);
    int rc = sqlite3_bind_text(ins, 1, it->id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_text(ins, 2, it->calendar, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_text(ins, 3, it->uid, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_text(ins, 4, it->occurrence, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_text(ins, 5, it->channel, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_int64(ins, 6, it->due_ms);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_int(ins, 7, it->state == CP_POST_SCHEDULED);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_text(ins, 8, it->hash, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
      rc = sqlite3_step(ins);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
      err = cp__store_fail(s, CP_EINVAL, "store: the plan lists post %s twice", it->id);
    else if (rc != SQLITE_DONE)
      err = dberr(q, rc, "reconcile: load plan");
  }
  release(q, ins);
  int64_t pending = 0;
  if (err >= 0)
    err = read_int(q, "reconcile: count pending",
                   "SELECT count(*) FROM posts WHERE state = 'pending'", &pending);
  c.pending = (size_t)pending;
  /* Only pending (and, for a comeback, cancelled) posts are ever touched: a post that is or was
   * being sent belongs to what happened, not to the plan. */
  if (err >= 0)
    err = run(q, "reconcile: cancel",
              "UPDATE posts SET state = 'cancelled', updated_ms = ?1 WHERE state = 'pending' "
              "AND NOT EXISTS (SELECT 1 FROM temp.plan_items i "
              "                WHERE i.id = posts.id AND i.scheduled)",
              "i", now_ms);
  if (err >= 0)
    c.cancelled = (size_t)err;
  /* A post postponed by a retry keeps its retry time unless the plan moves it later still. */
  if (err >= 0)
    err = run(q, "reconcile: update",
              "UPDATE posts SET due_ms = i.due_ms, hash = i.hash, updated_ms = ?1, "
              "  next_ms = CASE WHEN posts.next_ms != posts.due_ms "
              "                 THEN max(posts.next_ms, i.due_ms) ELSE i.due_ms END "
              "FROM temp.plan_items i WHERE i.id = posts.id AND i.scheduled "
              "AND posts.state = 'pending' AND (posts.due_ms != i.due_ms OR posts.hash != i.hash)",
              "i", now_ms);
  if (err >= 0)
    c.updated = (size_t)err;
  if (err >= 0)
    err = run(q, "reconcile: restore",
              "UPDATE posts SET state = 'pending', due_ms = i.due_ms, next_ms = i.due_ms, "
              "  hash = i.hash, updated_ms = ?1 "
              "FROM temp.plan_items i WHERE i.id = posts.id AND i.scheduled "
              "AND posts.state = 'cancelled'",
              "i", now_ms);
  if (err >= 0)
    c.added = (size_t)err;
  if (err >= 0)
    err = run(q, "reconcile: add",
              "INSERT INTO posts(id, calendar, uid, occurrence, channel, due_ms, next_ms, state, "
              "                  hash, created_ms, updated_ms) "
              "SELECT id, calendar, uid, occurrence, channel, due_ms, due_ms, 'pending', hash, "
              "       ?1, ?1 FROM temp.plan_items i WHERE i.scheduled "
              "AND NOT EXISTS (SELECT 1 FROM posts p WHERE p.id = i.id)",
              "i", now_ms);
  if (err >= 0)
    c.added += (size_t)err;
  if (err >= 0)
    err = run(q, "reconcile", "DELETE FROM temp.plan_items", NULL);
  if (err < 0 || dry_run) {
    rollback(q);
  } else {
    err = commit(q);
  }
  if (err < 0)
    return err;
  *counts = c;
  return 0;
}

/* The next post of one channel: the query uses the posts_channel index (a per-channel query
 * written as "?1 IS NULL OR channel = ?1" cannot, and scans every pending post), and the
 * channel's pause is applied here: it delays all of the channel's posts alike, so it does not
 * change which one comes first. */
static int next_due_of_channel(struct sq *q, const char *channel, struct cp_store_post **out) {
  sqlite3_stmt *st;
  int64_t paused = 0, until = 0;
  int err = prep(q, &st, "read channel pause",
                 "SELECT paused, paused_until_ms FROM channels WHERE name = ?1", "s", channel);
  if (err < 0)
    return err;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    paused = sqlite3_column_int64(st, 0);
    until = sqlite3_column_int64(st, 1);
  } else if (rc != SQLITE_DONE) {
    err = dberr(q, rc, "read channel pause");
  }
  release(q, st);
  if (err < 0)
    return err;
  if (paused && until == 0)
    return cp__store_fail(&q->base, CP_ENOTFOUND, "store: channel %s is paused", channel);
  err = prep(q, &st, "find next due post",
             "SELECT " POST_COLS " FROM posts p WHERE p.channel = ?1 AND p.state = 'pending' "
             "ORDER BY p.next_ms, p.due_ms, p.id LIMIT 1",
             "s", channel);
  if (err < 0)
    return err;
  struct cp_store_post *p = NULL;
  rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    err = cp__store_fail(&q->base, CP_ENOTFOUND, "store: no pending post in %s", channel);
  } else if (rc != SQLITE_ROW) {
    err = dberr(q, rc, "find next due post");
  } else {
    p = malloc(sizeof *p);
    err = p ? read_post(q, st, p) : CP_ENOMEM;
    if (err == 0 && paused && until > p->next_ms)
      p->next_ms = until; /* when it may really go */
  }
  release(q, st);
  if (err < 0) {
    free(p);
    return err;
  }
  *out = p;
  return 0;
}

static int sq_next_due(struct cp_store *s, const char *channel, struct cp_store_post **out) {
  struct sq *q = sq_of(s);
  if (channel)
    return next_due_of_channel(q, channel, out);
  sqlite3_stmt *st;
  /* A channel paused until T holds its posts until T; paused_until_ms = 0 means indefinitely. */
  int err = prep(q, &st, "find next due post",
                 "SELECT " POST_COLS ", "
                 "  max(p.next_ms, CASE WHEN c.paused THEN c.paused_until_ms ELSE 0 END) AS eff "
                 "FROM posts p LEFT JOIN channels c ON c.name = p.channel "
                 "WHERE p.state = 'pending' AND (?1 IS NULL OR p.channel = ?1) "
                 "AND NOT (coalesce(c.paused, 0) AND c.paused_until_ms = 0) "
                 "ORDER BY eff, p.due_ms, p.id LIMIT 1",
                 "s", channel);
  if (err < 0)
    return err;
  struct cp_store_post *p = NULL;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    err = cp__store_fail(s, CP_ENOTFOUND, "store: no pending post%s%s", channel ? " in " : "",
                         channel ? channel : "");
  } else if (rc != SQLITE_ROW) {
    err = dberr(q, rc, "find next due post");
  } else {
    p = malloc(sizeof *p);
    err = p ? read_post(q, st, p) : CP_ENOMEM;
    if (err == 0)
      p->next_ms = sqlite3_column_int64(st, 14); /* eff (after POST_COLS): when it may really go */
  }
  release(q, st);
  if (err < 0) {
    free(p);
    return err;
  }
  *out = p;
  return 0;
}

static int sq_mark_sending(struct cp_store *s, const char *id, int64_t now_ms, bool *claimed) {
  struct sq *q = sq_of(s);
  /* One autocommit statement: with synchronous = FULL it is on disk when this returns. */
  int n = run(q, "mark sending",
              "UPDATE posts SET state = 'sending', attempts = attempts + 1, updated_ms = ?2 "
              "WHERE id = ?1 AND state = 'pending'",
              "si", id, now_ms);
  if (n < 0)
    return n;
  if (n == 0) {
    enum cp_store_state state;
    int err = post_state(q, id, &state);
    if (err < 0)
      return err;
  }
  *claimed = n == 1;
  return 0;
}

/* Cuts a message to CP_STORE_MESSAGE_MAX bytes without splitting a UTF-8 sequence. */
static int message_len(const char *m) {
  size_t len = strlen(m);
  if (len <= CP_STORE_MESSAGE_MAX)
    return (int)len;
  len = CP_STORE_MESSAGE_MAX;
  while (len > 0 && ((unsigned char)m[len] & 0xc0) == 0x80)
    len--;
  return (int)len;
}

static int sq_record_attempt(struct cp_store *s, const char *id, const struct cp_store_result *r) {
  struct sq *q = sq_of(s);
  int err = begin(q);
  if (err < 0)
    return err;
  /* The post moves on only from `sending`; if it is not, nothing is written and the error says
   * what it is. */
  int64_t next = r->next == CP_STORE_PENDING && r->retry_at_ms > 0 ? r->retry_at_ms : r->at_ms;
  int n =
      run(q, "record attempt",
          "UPDATE posts SET state = ?2, updated_ms = ?3, "
          "  next_ms = CASE WHEN ?2 = 'pending' THEN ?4 ELSE next_ms END, "
          "  sent_ms = CASE WHEN ?2 = 'sent' THEN ?3 ELSE sent_ms END, "
          "  remote_id = coalesce(?5, remote_id), remote_url = coalesce(?6, remote_url) "
          "WHERE id = ?1 AND state = 'sending'",
          "ssiiss", id, cp_store_state_name(r->next), r->at_ms, next, r->remote_id, r->remote_url);
  err = n < 0 ? n : 0;
  if (n == 0) {
    enum cp_store_state state;
    err = post_state(q, id, &state);
    if (err == 0)
      err = cp__store_fail(s, CP_EINVAL, "store: post %s is %s, not sending", id,
                           cp_store_state_name(state));
  }
  sqlite3_stmt *st = NULL;
  if (err == 0)
    err = prep(q, &st, "record attempt",
               "INSERT INTO attempts(post_id, n, at_ms, outcome, http_status, message, "
               "                     remote_id, remote_url) "
               "VALUES (?1, (SELECT coalesce(max(n), 0) + 1 FROM attempts WHERE post_id = ?1), "
               "        ?2, ?3, ?4, ?5, ?6, ?7)",
               "sisdsss", id, r->at_ms, cp_store_outcome_name(r->outcome), r->http_status, NULL,
               r->remote_id, r->remote_url);
  if (err == 0 && r->message) {
    int rc = sqlite3_bind_text(st, 5, r->message, message_len(r->message), SQLITE_STATIC);
    if (rc != SQLITE_OK)
      err = dberr(q, rc, "record attempt");
  }
  if (err == 0) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
      err = dberr(q, rc, "record attempt");
  }
  release(q, st);
  return end(q, err);
}

static int sq_mark_missed(struct cp_store *s, const char *channel, int64_t grace_ms, int64_t now_ms,
                          struct cp_store_posts **missed) {
  struct sq *q = sq_of(s);
  int err = begin(q);
  if (err < 0)
    return err;
  sqlite3_stmt *st;
  err = prep(q, &st, "mark missed",
             "UPDATE posts SET state = 'missed', updated_ms = ?3 "
             "WHERE state = 'pending' AND next_ms < ?3 - ?2 "
             "AND (?1 IS NULL OR channel = ?1) RETURNING " POST_COLS_OF(""),
             "sii", channel, grace_ms, now_ms);
  struct cp_store_posts *l = NULL;
  if (err == 0)
    err = collect_posts(q, st, "mark missed", &l);
  err = end(q, err);
  if (err < 0) {
    cp_store_posts_free(l);
    return err;
  }
  if (missed)
    *missed = l;
  else
    cp_store_posts_free(l);
  return 0;
}

/* Runs sql, an UPDATE of post id (?1) at now_ms (?2) guarded by its current state. If it
 * matched nothing, says why: CP_ENOTFOUND, or CP_EINVAL naming the `allowed` states. */
static int move(struct sq *q, const char *id, const char *sql, int64_t now_ms, const char *verb,
                const char *allowed) {
  int n = run(q, verb, sql, "si", id, now_ms);
  if (n != 0)
    return n < 0 ? n : 0;
  enum cp_store_state state;
  int err = post_state(q, id, &state);
  if (err < 0)
    return err;
  return cp__store_fail(&q->base, CP_EINVAL, "store: post %s is %s; only %s posts can be %s", id,
                        cp_store_state_name(state), allowed, verb);
}

static int sq_skip(struct cp_store *s, const char *id, int64_t now_ms) {
  return move(sq_of(s), id,
              "UPDATE posts SET state = 'skipped', updated_ms = ?2 "
              "WHERE id = ?1 AND state IN ('pending', 'unknown')",
              now_ms, "skipped", "pending or unknown");
}

static int sq_retry(struct cp_store *s, const char *id, int64_t now_ms) {
  return move(sq_of(s), id,
              "UPDATE posts SET state = 'pending', next_ms = ?2, updated_ms = ?2 "
              "WHERE id = ?1 AND state IN ('failed', 'missed', 'unknown', 'skipped')",
              now_ms, "retried", "failed, missed, unknown or skipped");
}

static int sq_get(struct cp_store *s, const char *id, struct cp_store_post **out) {
  struct sq *q = sq_of(s);
  sqlite3_stmt *st;
  int err = prep(q, &st, "read post", "SELECT " POST_COLS " FROM posts p WHERE p.id = ?1", "s", id);
  struct cp_store_posts *l = NULL;
  if (err == 0)
    err = collect_posts(q, st, "read post", &l);
  if (err < 0)
    return err;
  if (l->n == 0) {
    cp_store_posts_free(l);
    return cp__store_fail(s, CP_ENOTFOUND, "store: no post with id %s", id);
  }
  /* Hand out the single element as its own allocation. */
  struct cp_store_post *p = malloc(sizeof *p);
  if (!p) {
    cp_store_posts_free(l);
    return CP_ENOMEM;
  }
  *p = l->v[0];
  l->n = 0;
  cp_store_posts_free(l);
  *out = p;
  return 0;
}

static int sq_list(struct cp_store *s, const char *channel, unsigned state_mask, size_t limit,
                   struct cp_store_posts **out) {
  struct sq *q = sq_of(s);
  /* The IN list is built from our own constant state names, never from input. */
  char states[256] = "";
  size_t len = 0;
  for (int i = 0; i < CP_STORE_NSTATES; i++) {
    if (state_mask & (1u << i))
      len += (size_t)snprintf(states + len, sizeof states - len, "%s'%s'", len ? ", " : "",
                              cp_store_state_name((enum cp_store_state)i));
  }
  char *sql = NULL;
  if (asprintf(&sql,
               "SELECT " POST_COLS " FROM posts p WHERE (?1 IS NULL OR p.channel = ?1) %s%s%s "
               "ORDER BY p.next_ms, p.due_ms, p.id LIMIT ?2",
               len ? "AND p.state IN (" : "", states, len ? ")" : "") < 0)
    return CP_ENOMEM;
  sqlite3_stmt *st;
  int err = prep(q, &st, "list posts", sql, "si", channel,
                 limit && limit < INT64_MAX ? (int64_t)limit : (int64_t)-1);
  free(sql);
  if (err < 0)
    return err;
  return collect_posts(q, st, "list posts", out);
}

static int sq_attempts(struct cp_store *s, const char *id, struct cp_store_attempts **out) {
  struct sq *q = sq_of(s);
  enum cp_store_state state;
  int err = post_state(q, id, &state);
  sqlite3_stmt *st = NULL;
  if (err == 0)
    err = prep(q, &st, "list attempts",
               "SELECT n, at_ms, outcome, http_status, message, remote_id, remote_url "
               "FROM attempts WHERE post_id = ?1 ORDER BY n",
               "s", id);
  if (err < 0)
    return err;
  struct cp_store_attempts *l = calloc(1, sizeof *l);
  size_t cap = 0;
  err = l ? 0 : CP_ENOMEM;
  while (err == 0) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
      break;
    if (rc != SQLITE_ROW) {
      err = dberr(q, rc, "list attempts");
      break;
    }
    if (l->n == cap) {
      size_t ncap = cap ? cap * 2 : 4;
      struct cp_store_attempt *v = realloc(l->v, ncap * sizeof *v);
      if (!v) {
        err = CP_ENOMEM;
        break;
      }
      l->v = v;
      cap = ncap;
    }
    struct cp_store_attempt *a = &l->v[l->n++];
    memset(a, 0, sizeof *a);
    a->n = sqlite3_column_int(st, 0);
    a->at_ms = sqlite3_column_int64(st, 1);
    a->outcome = CP_OUTCOME_UNKNOWN;
    const char *o = (const char *)sqlite3_column_text(st, 2);
    for (int i = CP_OUTCOME_OK; o && i <= CP_OUTCOME_UNKNOWN; i++)
      if (!strcmp(o, cp_store_outcome_name((enum cp_outcome)i)))
        a->outcome = (enum cp_outcome)i;
    a->http_status = sqlite3_column_int(st, 3);
    err = dup_col(st, 4, &a->message);
    if (err == 0)
      err = dup_col(st, 5, &a->remote_id);
    if (err == 0)
      err = dup_col(st, 6, &a->remote_url);
  }
  release(q, st);
  if (err < 0) {
    cp_store_attempts_free(l);
    return err;
  }
  *out = l;
  return 0;
}

static int sq_channel_status(struct cp_store *s, const char *channel, int64_t now_ms,
                             struct cp_store_channel_status **out) {
  struct sq *q = sq_of(s);
  struct cp_store_channel_status *cs = calloc(1, sizeof *cs);
  if (!cs)
    return CP_ENOMEM;
  /* One read transaction, so the numbers agree with each other. */
  int err = exec(q, "read channel status", q->batch ? "SAVEPOINT op" : "BEGIN");
  sqlite3_stmt *st = NULL;
  int rc = SQLITE_DONE;
  if (err == 0)
    err = prep(q, &st, "count posts",
               "SELECT state, count(*) FROM posts WHERE channel = ?1 GROUP BY state", "s", channel);
  while (err == 0) {
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
      break;
    enum cp_store_state state;
    if (cp_store_state_parse((const char *)sqlite3_column_text(st, 0), &state) == 0)
      cs->counts[state] = (size_t)sqlite3_column_int64(st, 1);
  }
  if (err == 0 && rc != SQLITE_DONE)
    err = dberr(q, rc, "count posts");
  release(q, st);
  st = NULL;
  if (err == 0)
    err = prep(q, &st, "find next post",
               "SELECT id, next_ms FROM posts WHERE channel = ?1 AND state = 'pending' "
               "ORDER BY next_ms, due_ms, id LIMIT 1",
               "s", channel);
  if (err == 0) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      cs->has_next = true;
      copy_col(st, 0, cs->next_id, sizeof cs->next_id);
      cs->next_ms = sqlite3_column_int64(st, 1);
    } else if (rc != SQLITE_DONE) {
      err = dberr(q, rc, "find next post");
    }
  }
  release(q, st);
  st = NULL;
  if (err == 0)
    err = prep(q, &st, "read pause",
               "SELECT paused, paused_until_ms, pause_reason FROM channels WHERE name = ?1", "s",
               channel);
  if (err == 0) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      int64_t until = sqlite3_column_int64(st, 1);
      cs->paused = sqlite3_column_int(st, 0) && (until == 0 || until > now_ms);
      cs->paused_until_ms = cs->paused ? until : 0;
      if (cs->paused)
        err = dup_col(st, 2, &cs->pause_reason);
    } else if (rc != SQLITE_DONE) {
      err = dberr(q, rc, "read pause");
    }
  }
  release(q, st);
  st = NULL;
  if (err == 0)
    err = prep(q, &st, "find last error",
               "SELECT a.post_id, a.at_ms, a.outcome, a.http_status, a.message "
               "FROM attempts a JOIN posts p ON p.id = a.post_id "
               "WHERE p.channel = ?1 AND a.outcome != 'ok' "
               "ORDER BY a.at_ms DESC, a.n DESC LIMIT 1",
               "s", channel);
  if (err == 0) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      cs->has_error = true;
      copy_col(st, 0, cs->error_post, sizeof cs->error_post);
      cs->error_at_ms = sqlite3_column_int64(st, 1);
      const char *o = (const char *)sqlite3_column_text(st, 2);
      cs->error_outcome = CP_OUTCOME_UNKNOWN;
      for (int i = CP_OUTCOME_OK; o && i <= CP_OUTCOME_UNKNOWN; i++)
        if (!strcmp(o, cp_store_outcome_name((enum cp_outcome)i)))
          cs->error_outcome = (enum cp_outcome)i;
      cs->error_http_status = sqlite3_column_int(st, 3);
      err = dup_col(st, 4, &cs->error_message);
    } else if (rc != SQLITE_DONE) {
      err = dberr(q, rc, "find last error");
    }
  }
  release(q, st);
  st = NULL;
  if (err == 0)
    err = prep(q, &st, "count engagement samples",
               "SELECT coalesce(sum(e.replies IS NOT NULL OR e.reposts IS NOT NULL OR "
               "                    e.likes IS NOT NULL OR e.quotes IS NOT NULL OR "
               "                    e.views IS NOT NULL), 0), count(*) "
               "FROM engagement e JOIN posts p ON p.id = e.post_id WHERE p.channel = ?1",
               "s", channel);
  if (err == 0) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      cs->samples = (size_t)sqlite3_column_int64(st, 0);
      cs->samples_skipped = (size_t)sqlite3_column_int64(st, 1) - cs->samples;
    } else {
      err = dberr(q, rc, "count engagement samples");
    }
  }
  release(q, st);
  rollback(q); /* read-only: ending it either way is the same */
  if (err < 0) {
    cp_store_channel_status_free(cs);
    return err;
  }
  *out = cs;
  return 0;
}

static int sq_channel_pause(struct cp_store *s, const char *channel, int64_t until_ms,
                            const char *reason) {
  int n = run(sq_of(s), "pause channel",
              "INSERT INTO channels(name, paused, paused_until_ms, pause_reason) "
              "VALUES (?1, 1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET paused = 1, "
              "paused_until_ms = excluded.paused_until_ms, pause_reason = excluded.pause_reason",
              "sis", channel, until_ms, reason);
  return n < 0 ? n : 0;
}

static int sq_channel_resume(struct cp_store *s, const char *channel) {
  int n = run(sq_of(s), "resume channel",
              "UPDATE channels SET paused = 0, paused_until_ms = 0, pause_reason = NULL "
              "WHERE name = ?1",
              "s", channel);
  return n < 0 ? n : 0;
}

static int sq_set_progress(struct cp_store *s, const char *id, const char *progress) {
  int n = run(sq_of(s), "save progress", "UPDATE posts SET progress = ?2 WHERE id = ?1", "ss", id,
              progress);
  if (n == 0)
    return cp__store_fail(s, CP_ENOTFOUND, "store: save progress: no post %s", id);
  return n < 0 ? n : 0;
}

static int sq_meta_set(struct cp_store *s, const char *key, const char *value) {
  int n = run(sq_of(s), "write metadata",
              "INSERT INTO meta(key, value) VALUES (?1, ?2) "
              "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
              "ss", key, value);
  return n < 0 ? n : 0;
}

static int sq_meta_get(struct cp_store *s, const char *key, char **value) {
  struct sq *q = sq_of(s);
  sqlite3_stmt *st;
  int err = prep(q, &st, "read metadata", "SELECT value FROM meta WHERE key = ?1", "s", key);
  if (err < 0)
    return err;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    err = dup_col(st, 0, value);
  else if (rc == SQLITE_DONE)
    err = cp__store_fail(s, CP_ENOTFOUND, "store: no metadata \"%s\"", key);
  else
    err = dberr(q, rc, "read metadata");
  release(q, st);
  return err;
}

/* ---- Engagement samples ---------------------------------------------------------------------- */

/* Whether channel is paused (*until: until then, 0 indefinitely). */
static int read_pause(struct sq *q, const char *channel, bool *paused, int64_t *until) {
  sqlite3_stmt *st;
  *paused = false;
  *until = 0;
  int err = prep(q, &st, "read channel pause",
                 "SELECT paused, paused_until_ms FROM channels WHERE name = ?1", "s", channel);
  if (err < 0)
    return err;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *paused = sqlite3_column_int64(st, 0) != 0;
    *until = sqlite3_column_int64(st, 1);
  } else if (rc != SQLITE_DONE) {
    err = dberr(q, rc, "read channel pause");
  }
  release(q, st);
  return err;
}

/* Whether a (next_ms, post id, age) sorts before b. */
static bool sample_before(const struct cp_store_sample *a, const struct cp_store_sample *b) {
  if (a->next_ms != b->next_ms)
    return a->next_ms < b->next_ms;
  int c = strcmp(a->post_id, b->post_id);
  return c ? c < 0 : a->age_s < b->age_s;
}

/* The first post of channel, by publish time, not sampled at age_s and published at or after
 * from_ms: a walk of the posts_sent index from from_ms that stops at the first such post. Sets
 * *found and fills *out (which owns nothing before) if there is one. */
static int first_unsampled(struct sq *q, const char *channel, int64_t age_s, int64_t from_ms,
                           bool *found, struct cp_store_sample *out) {
  sqlite3_stmt *st;
  *found = false;
  int err = prep(q, &st, "find next engagement sample",
                 "SELECT p.id, p.remote_id, p.remote_url, p.sent_ms FROM posts p "
                 "WHERE p.channel = ?1 AND p.state = 'sent' AND p.sent_ms >= ?2 "
                 "AND NOT EXISTS (SELECT 1 FROM engagement e "
                 "                WHERE e.post_id = p.id AND e.age_s = ?3) "
                 "ORDER BY p.sent_ms, p.id LIMIT 1",
                 "sii", channel, from_ms, age_s);
  if (err < 0)
    return err;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    memset(out, 0, sizeof *out);
    copy_col(st, 0, out->post_id, sizeof out->post_id);
    out->age_s = age_s;
    out->sent_ms = sqlite3_column_int64(st, 3);
    out->due_ms = out->sent_ms + age_s * 1000;
    out->next_ms = out->due_ms;
    err = dup_col(st, 1, &out->remote_id);
    if (err == 0)
      err = dup_col(st, 2, &out->remote_url);
    if (err == 0 && !(out->channel = strdup(channel)))
      err = CP_ENOMEM;
    if (err < 0) {
      free(out->remote_id);
      free(out->remote_url);
      err = cp__store_fail(&q->base, err, "store: find next engagement sample: out of memory");
    } else {
      *found = true;
    }
  } else if (rc != SQLITE_DONE) {
    err = dberr(q, rc, "find next engagement sample");
  }
  release(q, st);
  return err;
}

static int sq_next_engagement(struct cp_store *s, const char *const *channels, size_t n_channels,
                              const int64_t *ages_s, size_t n_ages, int64_t now_ms,
                              struct cp_store_sample **out) {
  struct sq *q = sq_of(s);
  struct cp_store_sample best, cand;
  bool have = false;
  /* One read transaction, so that the pauses and the samples agree. */
  int err = exec(q, "find next engagement sample", q->batch ? "SAVEPOINT op" : "BEGIN");
  for (size_t c = 0; err == 0 && c < n_channels; c++) {
    bool paused;
    int64_t until;
    err = read_pause(q, channels[c], &paused, &until);
    if (err < 0 || (paused && until == 0))
      continue;
    for (size_t a = 0; err == 0 && a < n_ages; a++) {
      bool found = false;
      int64_t from = now_ms - ages_s[a] * 1000 - CP_STORE_ENGAGEMENT_LATE_MS;
      err = first_unsampled(q, channels[c], ages_s[a], from, &found, &cand);
      if (err < 0 || !found)
        continue;
      if (paused && until > cand.next_ms)
        cand.next_ms = until;
      if (have && !sample_before(&cand, &best)) {
        free(cand.channel);
        free(cand.remote_id);
        free(cand.remote_url);
        continue;
      }
      if (have) {
        free(best.channel);
        free(best.remote_id);
        free(best.remote_url);
      }
      best = cand;
      have = true;
    }
  }
  rollback(q); /* read-only */
  struct cp_store_sample *p = NULL;
  if (err == 0 && !have)
    err = cp__store_fail(s, CP_ENOTFOUND, "store: no engagement sample to take");
  if (err == 0 && !(p = malloc(sizeof *p)))
    err = cp__store_fail(s, CP_ENOMEM, "store: find next engagement sample: out of memory");
  if (err < 0) {
    if (have) {
      free(best.channel);
      free(best.remote_id);
      free(best.remote_url);
    }
    return err;
  }
  *p = best;
  *out = p;
  return 0;
}

static int sq_record_engagement(struct cp_store *s, const char *post_id, int64_t age_s,
                                int64_t sampled_ms, const struct cp_store_engagement *counts) {
  struct sq *q = sq_of(s);
  int err = begin(q);
  if (err < 0)
    return err;
  enum cp_store_state state;
  err = post_state(q, post_id, &state);
  sqlite3_stmt *st = NULL;
  if (err == 0)
    err = prep(q, &st, "record engagement",
               "INSERT INTO engagement(post_id, age_s, sampled_ms, replies, reposts, likes, "
               "                       quotes, views) "
               "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
               "ON CONFLICT(post_id, age_s) DO UPDATE SET sampled_ms = excluded.sampled_ms, "
               "  replies = excluded.replies, reposts = excluded.reposts, "
               "  likes = excluded.likes, quotes = excluded.quotes, views = excluded.views",
               "sii", post_id, age_s, sampled_ms);
  if (err == 0 && counts) {
    /* -1 (the platform does not say) stays NULL, as do all five of a skipped sample. */
    const int64_t v[] = {counts->replies, counts->reposts, counts->likes, counts->quotes,
                         counts->views};
    for (int i = 0; err == 0 && i < 5; i++) {
      int rc = v[i] >= 0 ? sqlite3_bind_int64(st, 4 + i, v[i]) : SQLITE_OK;
      if (rc != SQLITE_OK)
        err = dberr(q, rc, "record engagement");
    }
  }
  if (err == 0) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
      err = dberr(q, rc, "record engagement");
  }
  release(q, st);
  return end(q, err);
}

static int sq_skip_engagement(struct cp_store *s, const char *const *channels, size_t n_channels,
                              const int64_t *ages_s, size_t n_ages, int64_t now_ms,
                              size_t *skipped) {
  struct sq *q = sq_of(s);
  size_t total = 0;
  int err = begin(q);
  if (err < 0)
    return err;
  for (size_t c = 0; err == 0 && c < n_channels; c++)
    for (size_t a = 0; err == 0 && a < n_ages; a++) {
      int64_t before = now_ms - ages_s[a] * 1000 - CP_STORE_ENGAGEMENT_LATE_MS;
      int n = run(q, "skip late engagement samples",
                  "INSERT INTO engagement(post_id, age_s, sampled_ms) "
                  "SELECT p.id, ?3, ?4 FROM posts p "
                  "WHERE p.channel = ?1 AND p.state = 'sent' AND p.sent_ms < ?2 "
                  "AND NOT EXISTS (SELECT 1 FROM engagement e "
                  "                WHERE e.post_id = p.id AND e.age_s = ?3)",
                  "siii", channels[c], before, ages_s[a], now_ms);
      if (n < 0)
        err = n;
      else
        total += (size_t)n;
    }
  err = end(q, err);
  if (err == 0)
    *skipped = total;
  return err;
}

const struct cp_store_ops cp__store_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .reconcile = sq_reconcile,
    .next_due = sq_next_due,
    .mark_sending = sq_mark_sending,
    .record_attempt = sq_record_attempt,
    .mark_missed = sq_mark_missed,
    .skip = sq_skip,
    .retry = sq_retry,
    .get = sq_get,
    .list = sq_list,
    .attempts = sq_attempts,
    .channel_status = sq_channel_status,
    .channel_pause = sq_channel_pause,
    .channel_resume = sq_channel_resume,
    .meta_set = sq_meta_set,
    .set_progress = sq_set_progress,
    .meta_get = sq_meta_get,
    .batch_begin = sq_batch_begin,
    .batch_end = sq_batch_end,
    .next_engagement = sq_next_engagement,
    .record_engagement = sq_record_engagement,
    .skip_engagement = sq_skip_engagement,
};
