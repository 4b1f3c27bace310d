/* Plan sync: watches local plan files, polls remote calendars and keeps the last good copy of
 * every source in <state_dir>/calendars/. See sync.h.
 *
 * Cache files. A source's base name is <calendar>-<first 12 hex of SHA-256(source)> (the
 * calendar name with anything outside [A-Za-z0-9._-] replaced by '_'): <base>.ics is the last
 * good copy, <base>.new the candidate under review, <base>.meta (JSON) the ETag and
 * Last-Modified of the newest remote body. Every write goes to a temporary file in the same
 * folder, is fsynced, renamed over the target, and the folder is fsynced: a crash leaves the old
 * or the new file, never half of one.
 *
 * Local sources. A file or a folder of *.ics files (every *.ics not starting with '.', in
 * alphasort order, as the plan loader reads them). The *folder* is watched with uv_fs_event:
 * editors such as vim save by writing a new file and renaming it over the old one, which a watch
 * on the file itself would lose. Events for other names are ignored; a burst of events restarts
 * one debounce timer, so it causes one re-read. A re-read whose content is not complete (a file
 * that does not end with END:VCALENDAR: the editor is still writing) waits another debounce
 * period, for at most CP_SYNC_SETTLE_MS in total, and then goes ahead anyway (the plan loader
 * reports what is wrong with it). A folder's candidate is its files concatenated (the plan
 * loader reads several VCALENDARs from one file), so the daemon's diagnostics for it name the
 * cache file, not the file in the folder. Content is compared by SHA-256 with the copy the
 * daemon reads (the candidate if one is pending, else the good copy): a save without changes,
 * a touch or a chmod announce nothing.
 *
 * Remote sources. https:// URLs, webcal:// (and webcals://) as https. A CalDAV collection is
 * fetched with a plain GET of the collection URL: Radicale, and most servers, answer with the
 * whole calendar as one VCALENDAR; no PROPFIND or REPORT is needed. Plain http:// is refused
 * unless allow_loopback_http is set and the host is 127.0.0.1, ::1 or localhost. Every poll sends
 * If-None-Match (the stored ETag) and If-Modified-Since (the stored Last-Modified): a 304 costs
 * one round trip. Radicale ignores If-None-Match on GET and always answers 200, so the ETag of a
 * 200 is compared with the stored one and an equal one ends the matter without looking at the
 * body; without an ETag, the body's SHA-256 is compared with the copy the daemon reads.
 * Redirects are followed (https targets only), TLS is verified, each request has a timeout and
 * a size cap, and a body that is not a calendar (empty, an HTML page such as a login page, no
 * BEGIN:VCALENDAR, no END:VCALENDAR: truncated) is refused through `failed` and changes
 * nothing on disk.
 *
 * Compromise: cache files and local plan files are read and written with blocking calls from
 * loop callbacks. Each is bounded by max_size and happens only when something changed (a local
 * save, a remote body that differs), so the loop stalls for a disk write of one plan file at
 * most; the async uv_fs_* chain would triple this file for no user-visible gain. */
#include "sync.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "calpost/err.h"
#include "http.h"

#define DEFAULT_POLL_MS (5 * 60 * 1000)
#define DEFAULT_DEBOUNCE_MS 250
#define DEFAULT_MAX_SIZE (32 * 1024 * 1024)
/* Room for the response headers on top of max_size: http.c caps headers + body together. */
#define HEADER_ALLOWANCE (64 * 1024)
#define HASH_LEN 32

enum kind { KIND_FILE, KIND_DIR, KIND_REMOTE };

struct source {
  struct cp_sync *s;
  char *calendar;
  char *source;
  enum kind kind;
  /* local */
  char *dir;  /* the folder watched (the source itself for KIND_DIR) */
  char *name; /* KIND_FILE: the file's name inside dir */
  uv_fs_event_t event;
  uv_timer_t debounce;
  bool watching;
  bool rewatch;           /* restart the watch at the next re-read (refresh) */
  bool waiting;           /* a re-read found incomplete content and is waiting */
  uint64_t incomplete_ms; /* loop time of the first incomplete re-read */
  char watch_error[256];  /* why the folder cannot be watched, or "" */
  /* remote */
  char *url;           /* what is fetched (webcal:// rewritten to https://) */
  bool public_only;    /* refuse local and private addresses (redirects included) */
  char refused[256];   /* why the URL is not fetched, or "" */
  bool report_refusal; /* report `refused` at the next poll (start, refresh) */
  bool in_flight;
  bool again;          /* fetch again when the one in flight completes (refresh) */
  char *etag;          /* of the newest body stored, or NULL */
  char *last_modified; /* of the newest body stored, or NULL */
  /* cache */
  char *good_path, *cand_path, *meta_path;
  unsigned char good_hash[HASH_LEN], cand_hash[HASH_LEN];
  bool have_good, have_cand;
  struct cp_sync_info info;
};

struct cp_sync {
  struct cp_sync_opts opts;
  char *cal_dir;
  struct source *src;
  size_t n;
  size_t n_remote;
  struct cp_http *http; /* only with remote sources */
  uv_timer_t poll;
  bool refresh; /* the next poll was asked for (cp_sync_refresh): it also follows a fetch in flight
                 */
  bool stopping;
  int pending_closes;
  void (*done)(void *arg);
  void *done_arg;
};

/* ---- small helpers -------------------------------------------------------------------------- */

static int64_t wall_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void sha256(const void *data, size_t len, unsigned char out[HASH_LEN]) {
  EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL);
}

/* Hashes the file at path in *out. Returns 0, or -errno (-ENOENT: no such file). */
static int hash_file(const char *path, unsigned char out[HASH_LEN]) {
  char buf[65536];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int rc = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ? 0 : CP_ENOMEM;
  for (;;) {
    if (rc)
      break;
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      rc = -errno;
    else if (r == 0)
      break;
    else
      EVP_DigestUpdate(ctx, buf, (size_t)r);
  }
  if (!rc)
    EVP_DigestFinal_ex(ctx, out, NULL);
  EVP_MD_CTX_free(ctx);
  close(fd);
  return rc;
}

static int fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = fsync(fd) < 0 ? -errno : 0;
  close(fd);
  return rc;
}

/* Replaces path (in folder dir) by data, atomically and durably. Returns 0 or -errno; on error
 * the old file is untouched and no temporary file is left. */
static int write_atomic(const char *dir, const char *path, const void *data, size_t len) {
  char *tmp = NULL;
  int rc = 0;

  if (asprintf(&tmp, "%s.tmp-XXXXXX", path) < 0)
    return CP_ENOMEM;
  int fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 */
  if (fd < 0) {
    rc = -errno;
    free(tmp);
    return rc;
  }
  const char *p = data;
  size_t left = len;
  while (left && !rc) {
    ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      rc = -errno;
    } else {
      p += w;
      left -= (size_t)w;
    }
  }
  if (!rc && fsync(fd) < 0)
    rc = -errno;
  if (close(fd) < 0 && !rc)
    rc = -errno;
  if (!rc && rename(tmp, path) < 0)
    rc = -errno;
  if (rc)
    unlink(tmp);
  else
    rc = fsync_dir(dir);
  free(tmp);
  return rc;
}

static bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Whether data ends with END:VCALENDAR, trailing whitespace aside. */
static bool ends_with_end(const char *data, size_t len) {
  static const char end[] = "END:VCALENDAR";
  const size_t n = sizeof end - 1;
  while (len && is_space(data[len - 1]))
    len--;
  return len >= n && !strncasecmp(data + len - n, end, n);
}

/* Whether name is a plan file of a folder source (as the plan loader picks them). */
static bool is_ics_name(const char *name) {
  size_t len = strlen(name);
  return len > 4 && name[0] != '.' && !strcasecmp(name + len - 4, ".ics");
}

/* ---- outcomes ------------------------------------------------------------------------------- */

static void fail(struct source *src, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reports a failure through opts->failed; the cache is untouched. */
static void fail(struct source *src, const char *fmt, ...) {
  struct cp_sync *s = src->s;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(src->info.last_error, sizeof src->info.last_error, fmt, ap);
  va_end(ap);
  src->info.failures++;
  if (s->opts.failed)
    s->opts.failed(s->opts.arg, src->calendar, src->source, src->info.last_error);
}

static void succeeded(struct source *src) {
  src->info.last_ok_ms = wall_ms();
  src->info.last_error[0] = '\0';
}

static void announce(struct source *src) {
  struct cp_sync *s = src->s;
  src->info.changes++;
  if (s->opts.changed)
    s->opts.changed(s->opts.arg, src->calendar, src->source);
}

/* Makes data the newest content of src. Sets *changed if what the daemon reads from the source
 * (the candidate, else the good copy) is different afterwards. Returns 0 or -errno (the cache
 * is untouched). */
static int offer(struct source *src, const char *data, size_t len, bool *changed) {
  struct cp_sync *s = src->s;
  unsigned char h[HASH_LEN];

  *changed = false;
  sha256(data, len, h);
  const unsigned char *cur = src->have_cand   ? src->cand_hash
                             : src->have_good ? src->good_hash
                                              : NULL;
  if (cur && !memcmp(cur, h, HASH_LEN))
    return 0;
  if (src->have_cand && src->have_good && !memcmp(src->good_hash, h, HASH_LEN)) {
    /* Back to the good copy (an edit undone): the candidate is stale. */
    if (unlink(src->cand_path) < 0 && errno != ENOENT)
      return -errno;
    fsync_dir(s->cal_dir);
    src->have_cand = false;
    *changed = true;
    return 0;
  }
  int rc = write_atomic(s->cal_dir, src->cand_path, data, len);
  if (rc)
    return rc;
  memcpy(src->cand_hash, h, HASH_LEN);
  src->have_cand = true;
  *changed = true;
  return 0;
}

/* ---- local sources -------------------------------------------------------------------------- */

static void on_debounce(uv_timer_t *t);

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  struct source *src = h->data;
  struct cp_sync *s = src->s;

  if (s->stopping)
    return;
  /* A NULL name (or an error) means "something in the folder": look. */
  if (status >= 0 && filename) {
    if (src->kind == KIND_FILE ? strcmp(filename, src->name) != 0 : !is_ics_name(filename))
      return;
  }
  uv_timer_start(&src->debounce, on_debounce, (uint64_t)s->opts.debounce_ms, 0);
}

static void start_watch(struct source *src) {
  if (src->watching && !src->rewatch)
    return;
  if (src->watching)
    uv_fs_event_stop(&src->event);
  src->watching = false;
  src->rewatch = false;
  int rc = uv_fs_event_start(&src->event, on_fs_event, src->dir, 0);
  if (rc < 0) {
    snprintf(src->watch_error, sizeof src->watch_error,
             "cannot watch the folder %s: %s%s; changes are seen only after SIGHUP", src->dir,
             uv_strerror(rc), rc == UV_ENOSPC ? " (raise fs.inotify.max_user_watches)" : "");
  } else {
    src->watching = true;
    src->watch_error[0] = '\0';
  }
}

static int cmp_names(const void *a, const void *b) {
  return strcoll(*(char *const *)a, *(char *const *)b);
}

/* A local source's content, copied into a temporary file next to the candidate while it is
 * read and hashed: a plan can be large, and is never held in memory whole. */
struct local_copy {
  char *tmp; /* NULL: no temporary file (left) */
  int fd;
  EVP_MD_CTX *md;
  size_t len;
  char tail[4096]; /* the last bytes of the current file, for ends_with_end */
  size_t n_tail;
  unsigned char hash[HASH_LEN];
};

static void copy_discard(struct local_copy *c) {
  if (c->tmp) {
    close(c->fd);
    unlink(c->tmp);
    free(c->tmp);
    c->tmp = NULL;
  }
  EVP_MD_CTX_free(c->md);
  c->md = NULL;
}

static int copy_open(struct source *src, struct local_copy *c) {
  memset(c, 0, sizeof *c);
  c->fd = -1;
  if (asprintf(&c->tmp, "%s.tmp-XXXXXX", src->cand_path) < 0) {
    c->tmp = NULL;
    return CP_ENOMEM;
  }
  c->fd = mkostemp(c->tmp, O_CLOEXEC); /* mode 0600 */
  if (c->fd < 0) {
    int rc = -errno;
    free(c->tmp);
    c->tmp = NULL;
    return rc;
  }
  c->md = EVP_MD_CTX_new();
  if (!c->md || !EVP_DigestInit_ex(c->md, EVP_sha256(), NULL)) {
    copy_discard(c);
    return CP_ENOMEM;
  }
  return 0;
}

static int copy_write(struct local_copy *c, const char *p, size_t n) {
  EVP_DigestUpdate(c->md, p, n);
  c->len += n;
  if (n >= sizeof c->tail) {
    memcpy(c->tail, p + n - sizeof c->tail, sizeof c->tail);
    c->n_tail = sizeof c->tail;
  } else {
    size_t keep = c->n_tail + n > sizeof c->tail ? sizeof c->tail - n : c->n_tail;
    memmove(c->tail, c->tail + c->n_tail - keep, keep);
    memcpy(c->tail + keep, p, n);
    c->n_tail = keep + n;
  }
  while (n) {
    ssize_t w = write(c->fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -errno;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Appends the file at path to c, failing with CP_ETOOBIG past max bytes in c. Returns 0, -errno
 * (-EISDIR for a folder) or CP_ETOOBIG. */
static int copy_file(struct local_copy *c, const char *path, size_t max) {
  char buf[65536];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  struct stat st;
  int rc = fstat(fd, &st) < 0 ? -errno : S_ISDIR(st.st_mode) ? -EISDIR : 0;
  if (!rc && st.st_size > 0 && (size_t)st.st_size > max - c->len)
    rc = CP_ETOOBIG;
  c->n_tail = 0;
  while (!rc) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      rc = -errno;
    else if (r == 0)
      break;
    else if ((size_t)r > max - c->len) /* it grew while we read */
      rc = CP_ETOOBIG;
    else
      rc = copy_write(c, buf, (size_t)r);
  }
  close(fd);
  return rc;
}

/* The folder part of read_local: every *.ics file, one line break between files. */
static int read_folder(struct source *src, struct local_copy *c, bool *complete, char *why,
                       size_t wl) {
  size_t max = (size_t)src->s->opts.max_size;
  int rc;
  /* scandir's own alphasort would be the same order; names are collected first so that one
   * file vanishing between listing and reading is an error for that file only. */
  DIR *d = opendir(src->dir);
  if (!d) {
    rc = -errno;
    snprintf(why, wl, "cannot read the folder %s: %s", src->dir, cp_strerror(rc));
    return rc;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  rc = 0;
  for (;;) {
    struct dirent *de = rc ? NULL : readdir(d);
    if (!de)
      break;
    if (!is_ics_name(de->d_name))
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nn = realloc(names, cap * sizeof *nn);
      if (!nn) {
        rc = CP_ENOMEM;
        break;
      }
      names = nn;
    }
    names[n] = strdup(de->d_name);
    if (!names[n])
      rc = CP_ENOMEM;
    else
      n++;
  }
  closedir(d);
  if (!rc && n == 0) {
    rc = CP_ENOTFOUND;
    snprintf(why, wl, "no .ics files in the folder %s", src->dir);
  }
  if (n > 1)
    qsort(names, n, sizeof *names, cmp_names);
  for (size_t i = 0; !rc && i < n; i++) {
    char *path = NULL;
    if (asprintf(&path, "%s/%s", src->dir, names[i]) < 0) {
      rc = CP_ENOMEM;
      break;
    }
    size_t before = c->len;
    rc = copy_file(c, path, max);
    if (rc == -ENOENT && c->len == before) {
      rc = 0; /* removed since the listing: a later event re-reads */
    } else if (rc == -EISDIR) {
      rc = 0;
    } else if (rc == CP_ETOOBIG) {
      snprintf(why, wl, "the .ics files in %s are larger than max_file_size (%zu bytes)", src->dir,
               max);
    } else if (rc) {
      snprintf(why, wl, "cannot read %s: %s", path, cp_strerror(rc));
    } else if (c->len > before) {
      if (!ends_with_end(c->tail, c->n_tail))
        *complete = false;
      /* One line break between files, so one END:VCALENDAR never runs into the next BEGIN. */
      if (c->tail[c->n_tail - 1] != '\n')
        rc = copy_write(c, "\r\n", 2);
    } else {
      *complete = false; /* an empty file */
    }
    free(path);
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  if (rc == CP_ENOMEM)
    snprintf(why, wl, "out of memory reading %s", src->dir);
  return rc;
}

/* Reads a local source (the file, or a folder's *.ics files concatenated in name order) into a
 * temporary copy c with its hash. Sets *complete if every file ends with END:VCALENDAR. Returns
 * 0, or a negative code with a sentence for people in why (and no copy left). */
static int read_local(struct source *src, struct local_copy *c, bool *complete, char *why,
                      size_t wl) {
  size_t max = (size_t)src->s->opts.max_size;
  int rc;

  *complete = true;
  if ((rc = copy_open(src, c)) < 0) {
    snprintf(why, wl, "cannot write the cache file %s: %s", src->cand_path, cp_strerror(rc));
    return rc;
  }
  if (src->kind == KIND_FILE) {
    rc = copy_file(c, src->source, max);
    if (rc == CP_ETOOBIG)
      snprintf(why, wl, "%s is larger than max_file_size (%zu bytes)", src->source, max);
    else if (rc)
      snprintf(why, wl, "cannot read %s: %s", src->source, cp_strerror(rc));
    else
      *complete = ends_with_end(c->tail, c->n_tail);
  } else {
    rc = read_folder(src, c, complete, why, wl);
  }
  if (rc) {
    copy_discard(c);
    return rc;
  }
  EVP_DigestFinal_ex(c->md, c->hash, NULL);
  return 0;
}

/* offer() for a local copy: the same, except that the copy becomes the candidate by a rename.
 * The copy is used up either way. */
static int offer_copy(struct source *src, struct local_copy *c, bool *changed) {
  struct cp_sync *s = src->s;
  const unsigned char *h = c->hash;

  *changed = false;
  const unsigned char *cur = src->have_cand   ? src->cand_hash
                             : src->have_good ? src->good_hash
                                              : NULL;
  if (cur && !memcmp(cur, h, HASH_LEN)) {
    copy_discard(c);
    return 0;
  }
  if (src->have_cand && src->have_good && !memcmp(src->good_hash, h, HASH_LEN)) {
    copy_discard(c);
    /* Back to the good copy (an edit undone): the candidate is stale. */
    if (unlink(src->cand_path) < 0 && errno != ENOENT)
      return -errno;
    fsync_dir(s->cal_dir);
    src->have_cand = false;
    *changed = true;
    return 0;
  }
  int rc = fsync(c->fd) < 0 ? -errno : 0;
  if (close(c->fd) < 0 && !rc)
    rc = -errno;
  c->fd = -1;
  if (!rc && rename(c->tmp, src->cand_path) < 0)
    rc = -errno;
  if (rc)
    unlink(c->tmp);
  else
    rc = fsync_dir(s->cal_dir);
  free(c->tmp);
  c->tmp = NULL;
  copy_discard(c);
  if (rc)
    return rc;
  memcpy(src->cand_hash, h, HASH_LEN);
  src->have_cand = true;
  *changed = true;
  return 0;
}

/* The debounce timer: the burst of events is over (or a refresh asked), re-read the source. */
static void on_debounce(uv_timer_t *t) {
  struct source *src = t->data;
  struct cp_sync *s = src->s;
  char why[512];
  struct local_copy c;
  bool complete, changed;

  if (s->stopping)
    return;
  start_watch(src);
  int rc = read_local(src, &c, &complete, why, sizeof why);
  if (rc) {
    src->waiting = false;
    fail(src, "%s", why);
    return;
  }
  if (!complete) {
    uint64_t now = uv_now(s->opts.loop);
    if (!src->waiting) {
      src->waiting = true;
      src->incomplete_ms = now;
    }
    if (now - src->incomplete_ms < CP_SYNC_SETTLE_MS) {
      /* Probably still being written; a later event restarts this timer too. */
      uv_timer_start(&src->debounce, on_debounce, (uint64_t)s->opts.debounce_ms, 0);
      copy_discard(&c);
      return;
    }
  }
  src->waiting = false;
  rc = offer_copy(src, &c, &changed);
  if (rc) {
    fail(src, "cannot write the cache file %s: %s", src->cand_path, cp_strerror(rc));
    return;
  }
  succeeded(src);
  if (!changed)
    src->info.same_content++;
  if (src->watch_error[0]) {
    fail(src, "%s", src->watch_error);
    if (s->stopping)
      return;
  }
  if (changed)
    announce(src);
}

/* ---- remote sources ------------------------------------------------------------------------- */

static void meta_save(struct source *src) {
  json_t *j = json_object();
  if (!j)
    return;
  json_object_set_new(j, "url", json_string(src->url));
  json_object_set_new(j, "etag", src->etag ? json_string(src->etag) : json_null());
  json_object_set_new(j, "last_modified",
                      src->last_modified ? json_string(src->last_modified) : json_null());
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!text)
    return;
  /* The meta data only saves requests: losing it costs one full download. */
  write_atomic(src->s->cal_dir, src->meta_path, text, strlen(text));
  free(text);
}

static char *dup_or_null(const char *v) {
  return v && *v ? strdup(v) : NULL;
}

static void meta_load(struct source *src) {
  json_error_t jerr;
  json_t *j = json_load_file(src->meta_path, 0, &jerr);
  if (!j)
    return;
  const char *url = json_string_value(json_object_get(j, "url"));
  if (url && !strcmp(url, src->url)) {
    src->etag = dup_or_null(json_string_value(json_object_get(j, "etag")));
    src->last_modified = dup_or_null(json_string_value(json_object_get(j, "last_modified")));
  }
  json_decref(j);
}

/* Why a 200 body is not a calendar, or NULL if it looks like one. */
static const char *not_a_calendar(const struct cp_http_resp *resp) {
  const char *b = resp->body;
  size_t len = resp->body_len;
  const char *ct = cp_http_header(resp, "Content-Type");

  if (len >= 3 && !memcmp(b, "\xef\xbb\xbf", 3)) {
    b += 3;
    len -= 3;
  }
  while (len && is_space(*b)) {
    b++;
    len--;
  }
  if (len == 0)
    return "the server sent an empty answer, not a calendar";
  if (*b == '<' || (ct && !strncasecmp(ct, "text/html", 9)))
    return "the server sent an HTML page, not a calendar (a login or error page?): use the "
           "calendar's iCal (.ics) address, e.g. Google's \"secret address in iCal format\"";
  if (len < 15 || strncasecmp(b, "BEGIN:VCALENDAR", 15))
    return "the server sent something that is not an iCalendar file (it does not start with "
           "BEGIN:VCALENDAR)";
  if (!ends_with_end(b, len))
    return "the calendar is truncated (it does not end with END:VCALENDAR)";
  return NULL;
}

static const char *status_hint(long status) {
  switch (status) {
    case 401:
    case 403:
      return " (the server wants credentials: use the calendar's public or secret address)";
    case 404:
    case 410:
      return " (no calendar at this address: check the URL)";
    case 429:
      return " (rate limited: poll less often)";
    default:
      return status >= 500 ? " (a server error: it is retried at the next poll)" : "";
  }
}

static void fetch(struct source *src);

static void on_fetched(const struct cp_http_resp *resp, void *data) {
  struct source *src = data;
  struct cp_sync *s = src->s;
  bool have_copy = src->have_cand || src->have_good;

  src->in_flight = false;
  if (s->stopping)
    return;
  src->info.fetches++;
  if (resp->err == CP_ETOOBIG ||
      (resp->status == 200 && resp->body_len > (size_t)s->opts.max_size)) {
    fail(src, "the calendar is larger than max_file_size (%lld bytes); the download was stopped",
         (long long)s->opts.max_size);
  } else if (resp->err) {
    fail(src, "%s (%s)", resp->errmsg[0] ? resp->errmsg : cp_strerror(resp->err),
         cp_err_name(resp->err));
  } else if (resp->status == 304 && have_copy) {
    src->info.not_modified++;
    succeeded(src);
  } else if (resp->status != 200) {
    fail(src, "HTTP %ld%s", resp->status, status_hint(resp->status));
  } else {
    const char *etag = cp_http_header(resp, "ETag");
    const char *lm = cp_http_header(resp, "Last-Modified");
    bool changed = false;
    if (have_copy && etag && *etag && src->etag && !strcmp(etag, src->etag)) {
      /* Same version as the newest body stored (Radicale answers 200 to If-None-Match): the
       * body is not looked at. */
      src->info.same_etag++;
      succeeded(src);
    } else {
      const char *bad = not_a_calendar(resp);
      int rc = bad ? 0 : offer(src, resp->body, resp->body_len, &changed);
      if (bad) {
        fail(src, "%s", bad);
      } else if (rc) {
        fail(src, "cannot write the cache file %s: %s", src->cand_path, cp_strerror(rc));
      } else {
        free(src->etag);
        free(src->last_modified);
        src->etag = dup_or_null(etag);
        src->last_modified = dup_or_null(lm);
        meta_save(src);
        succeeded(src);
        if (changed)
          announce(src);
        else
          src->info.same_content++;
      }
    }
  }
  if (!s->stopping && src->again) {
    src->again = false;
    fetch(src);
  }
}

static void fetch(struct source *src) {
  struct cp_sync *s = src->s;
  struct cp_http_header hdrs[2];
  size_t nh = 0;

  if (src->refused[0]) {
    if (src->report_refusal) {
      src->report_refusal = false;
      fail(src, "%s", src->refused);
    }
    return;
  }
  if (src->in_flight) {
    src->again = true;
    return;
  }
  /* Conditional headers only describe a copy we still have. */
  if (src->have_cand || src->have_good) {
    if (src->etag)
      hdrs[nh++] = (struct cp_http_header){"If-None-Match", src->etag};
    if (src->last_modified)
      hdrs[nh++] = (struct cp_http_header){"If-Modified-Since", src->last_modified};
  }
  struct cp_http_req req = {.method = "GET",
                            .url = src->url,
                            .headers = hdrs,
                            .n_headers = nh,
                            .timeout_ms = (long)s->opts.timeout_ms,
                            .max_response = (size_t)s->opts.max_size + HEADER_ALLOWANCE,
                            .follow_redirects = true,
                            .public_only = src->public_only};
  int rc = cp_http_request(s->http, &req, on_fetched, src);
  if (rc) {
    fail(src, "cannot start the request: %s", cp_strerror(rc));
    return;
  }
  src->in_flight = true;
  src->info.starts++;
  src->info.last_start = uv_now(s->opts.loop);
}

/* A timed poll that finds the source's fetch still in flight leaves it be: that fetch is this
 * interval's, and starting another as soon as it ends would poll sooner than the interval. An
 * asked-for one fetches again when the one in flight ends, which may have read an older copy. */
static void on_poll(uv_timer_t *t) {
  struct cp_sync *s = t->data;
  bool asked = s->refresh;
  s->refresh = false;
  for (size_t i = 0; i < s->n && !s->stopping; i++)
    if (s->src[i].kind == KIND_REMOTE && (asked || !s->src[i].in_flight))
      fetch(&s->src[i]);
}

/* Sets src->url, or src->refused with the reason the URL is not fetched. https:// and webcal://
 * sources reach public addresses only unless allow_local says otherwise; an allowed plain
 * http:// source is on loopback by definition. */
static int classify_url(struct source *src, bool allow_loopback_http, bool allow_local) {
  const char *u = src->source;
  const char *rest;

  src->public_only = !allow_local;

  if (!strncasecmp(u, "webcal://", 9))
    rest = u + 9;
  else if (!strncasecmp(u, "webcals://", 10))
    rest = u + 10;
  else if (!strncasecmp(u, "https://", 8))
    rest = u + 8;
  else
    rest = NULL;
  if (rest)
    return asprintf(&src->url, "https://%s", rest) < 0 ? CP_ENOMEM : 0;
  src->url = strdup(u);
  if (!src->url)
    return CP_ENOMEM;
  if (strncasecmp(u, "http://", 7)) {
    snprintf(src->refused, sizeof src->refused,
             "refused: unsupported address (use https:// or webcal://, or a local file)");
    return 0;
  }
  CURLU *cu = curl_url();
  char *host = NULL;
  bool loopback = false;
  if (!cu)
    return CP_ENOMEM;
  if (curl_url_set(cu, CURLUPART_URL, u, 0) == CURLUE_OK &&
      curl_url_get(cu, CURLUPART_HOST, &host, 0) == CURLUE_OK)
    loopback = !strcmp(host, "127.0.0.1") || !strcmp(host, "[::1]") || !strcmp(host, "::1") ||
               !strcasecmp(host, "localhost");
  curl_free(host);
  curl_url_cleanup(cu);
  if (loopback && allow_loopback_http)
    src->public_only = false;
  if (!loopback || !allow_loopback_http)
    snprintf(src->refused, sizeof src->refused,
             "refused: plain http:// is not fetched (anyone on the way could change the plan); "
             "use https://%s",
             loopback ? ", or set allow_loopback_http = yes for a server on this machine" : "");
  return 0;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void source_free(struct source *src) {
  free(src->calendar);
  free(src->source);
  free(src->dir);
  free(src->name);
  free(src->url);
  free(src->etag);
  free(src->last_modified);
  free(src->good_path);
  free(src->cand_path);
  free(src->meta_path);
}

static void sync_free(struct cp_sync *s) {
  for (size_t i = 0; i < s->n; i++)
    source_free(&s->src[i]);
  free(s->src);
  free(s->cal_dir);
  free((char *)s->opts.state_dir);
  free(s);
}

static void finish_stop(struct cp_sync *s) {
  void (*done)(void *) = s->done;
  void *arg = s->done_arg;
  sync_free(s);
  if (done)
    done(arg);
}

static void on_closed(uv_handle_t *h) {
  struct cp_sync *s = h->data;
  if (--s->pending_closes == 0)
    finish_stop(s);
}

static void on_http_closed(void *data) {
  struct cp_sync *s = data;
  s->http = NULL;
  if (--s->pending_closes == 0)
    finish_stop(s);
}

static void close_handle(struct cp_sync *s, uv_handle_t *h) {
  if (!h->loop || uv_is_closing(h))
    return; /* never initialised */
  h->data = s;
  s->pending_closes++;
  uv_close(h, on_closed);
}

/* Starts closing everything; s is freed (and done called) from the last close callback. */
static void teardown(struct cp_sync *s, void (*done)(void *arg), void *arg) {
  s->stopping = true;
  s->done = done;
  s->done_arg = arg;
  s->pending_closes++; /* held until every close has been started */
  for (size_t i = 0; i < s->n; i++) {
    close_handle(s, (uv_handle_t *)&s->src[i].event);
    close_handle(s, (uv_handle_t *)&s->src[i].debounce);
  }
  close_handle(s, (uv_handle_t *)&s->poll);
  if (s->http) {
    s->pending_closes++;
    cp_http_close(s->http, on_http_closed, s);
  }
  if (--s->pending_closes == 0)
    finish_stop(s);
}

void cp_sync_base_name(const char *calendar, const char *source, char *out, size_t len) {
  unsigned char h[HASH_LEN];
  char cal[128];
  size_t i;

  for (i = 0; calendar[i] && i < sizeof cal - 1; i++) {
    char c = calendar[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || (c == '.' && i > 0);
    cal[i] = ok ? c : '_';
  }
  cal[i] = '\0';
  sha256(source, strlen(source), h);
  snprintf(out, len, "%s-%02x%02x%02x%02x%02x%02x", cal, h[0], h[1], h[2], h[3], h[4], h[5]);
}

static int mkdir_0700(const char *path) {
  if (mkdir(path, 0700) < 0 && errno != EEXIST)
    return -errno;
  return 0;
}

/* Removes temporary files that a crash during write_atomic left behind. */
static void remove_stale_temps(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *de;
  if (!d)
    return;
  for (de = readdir(d); de; de = readdir(d)) {
    if (strstr(de->d_name, ".tmp-")) {
      char *p = NULL;
      if (asprintf(&p, "%s/%s", dir, de->d_name) >= 0)
        unlink(p);
      free(p);
    }
  }
  closedir(d);
}

/* Fills the paths and the cache state of src; no handles yet. */
static int source_prepare(struct cp_sync *s, struct source *src, const struct cp_sync_source *in) {
  char base[160];
  int rc;

  src->s = s;
  src->calendar = strdup(in->calendar);
  src->source = strdup(in->source);
  if (!src->calendar || !src->source)
    return CP_ENOMEM;
  cp_sync_base_name(in->calendar, in->source, base, sizeof base);
  if (asprintf(&src->good_path, "%s/%s.ics", s->cal_dir, base) < 0 ||
      asprintf(&src->cand_path, "%s/%s.new", s->cal_dir, base) < 0 ||
      asprintf(&src->meta_path, "%s/%s.meta", s->cal_dir, base) < 0)
    return CP_ENOMEM;
  src->have_good = hash_file(src->good_path, src->good_hash) == 0;
  src->have_cand = hash_file(src->cand_path, src->cand_hash) == 0;
  if (src->have_cand && src->have_good && !memcmp(src->cand_hash, src->good_hash, HASH_LEN)) {
    unlink(src->cand_path); /* a candidate equal to the good copy is no change */
    src->have_cand = false;
  }

  if (strstr(in->source, "://")) {
    src->kind = KIND_REMOTE;
    src->report_refusal = true;
    rc = classify_url(src, s->opts.allow_loopback_http, s->opts.allow_local_calendars);
    if (rc)
      return rc;
    meta_load(src);
    s->n_remote++;
    return 0;
  }

  struct stat st;
  if (stat(in->source, &st) == 0 && S_ISDIR(st.st_mode)) {
    src->kind = KIND_DIR;
    src->dir = strdup(in->source);
    if (!src->dir)
      return CP_ENOMEM;
    /* "plans/" and "plans" name the same folder; the events carry bare names either way. */
    size_t l = strlen(src->dir);
    while (l > 1 && src->dir[l - 1] == '/')
      src->dir[--l] = '\0';
  } else {
    src->kind = KIND_FILE;
    const char *slash = strrchr(in->source, '/');
    if (slash) {
      src->dir =
          slash == in->source ? strdup("/") : strndup(in->source, (size_t)(slash - in->source));
      src->name = strdup(slash + 1);
    } else {
      src->dir = strdup(".");
      src->name = strdup(in->source);
    }
    if (!src->dir || !src->name)
      return CP_ENOMEM;
  }
  return 0;
}

/* The first read of a local source, inside cp_sync_start: the current bytes become the first
 * candidate when they differ from the good copy, so the caller's first load reviews them.
 * Returns false if the source should be re-read from the loop (to report a problem). */
static bool source_first_read(struct source *src) {
  char why[512];
  struct local_copy c;
  bool complete, changed;

  if (read_local(src, &c, &complete, why, sizeof why))
    return false;
  if (!complete) {
    copy_discard(&c); /* half-written at start: the loop waits for the rest, then announces it */
    return false;
  }
  int rc = offer_copy(src, &c, &changed);
  if (rc)
    return false;
  succeeded(src);
  return true;
}

int cp_sync_start(const struct cp_sync_opts *opts, const struct cp_sync_source *sources, size_t n,
                  struct cp_sync **out) {
  struct cp_sync *s;
  int rc = 0;

  if (!opts || !opts->loop || !opts->state_dir || !*opts->state_dir || !out || (n && !sources))
    return CP_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (!sources[i].calendar || !sources[i].source || !*sources[i].source)
      return CP_EINVAL;
    for (size_t j = 0; j < i; j++)
      if (!strcmp(sources[i].source, sources[j].source))
        return CP_EEXISTS; /* the lookups below are by source */
  }
  s = calloc(1, sizeof *s);
  if (!s)
    return CP_ENOMEM;
  s->opts = *opts;
  s->opts.state_dir = strdup(opts->state_dir);
  if (s->opts.poll_interval_ms <= 0)
    s->opts.poll_interval_ms = DEFAULT_POLL_MS;
  if (s->opts.debounce_ms <= 0)
    s->opts.debounce_ms = DEFAULT_DEBOUNCE_MS;
  if (s->opts.max_size <= 0)
    s->opts.max_size = DEFAULT_MAX_SIZE;
  if (s->opts.timeout_ms <= 0)
    s->opts.timeout_ms = CP_HTTP_TIMEOUT_MS;
  s->src = calloc(n ? n : 1, sizeof *s->src);
  if (!s->opts.state_dir || !s->src || asprintf(&s->cal_dir, "%s/calendars", opts->state_dir) < 0) {
    s->cal_dir = NULL;
    sync_free(s);
    return CP_ENOMEM;
  }
  s->n = n;
  rc = mkdir_0700(opts->state_dir);
  if (!rc)
    rc = mkdir_0700(s->cal_dir);
  if (rc) {
    sync_free(s);
    return rc;
  }
  remove_stale_temps(s->cal_dir);
  for (size_t i = 0; i < n && !rc; i++)
    rc = source_prepare(s, &s->src[i], &sources[i]);
  if (rc) {
    sync_free(s);
    return rc;
  }

  /* Handles. From here on an error closes what was opened (freed once the loop runs). */
  uv_timer_init(opts->loop, &s->poll);
  s->poll.data = s;
  rc = s->n_remote ? cp_http_init(opts->loop, &s->http) : 0;
  if (rc < 0) {
    s->http = NULL;
    teardown(s, NULL, NULL);
    return rc;
  }
  for (size_t i = 0; i < n; i++) {
    struct source *src = &s->src[i];
    if (src->kind == KIND_REMOTE)
      continue;
    uv_fs_event_init(opts->loop, &src->event);
    uv_timer_init(opts->loop, &src->debounce);
    src->event.data = src->debounce.data = src;
    start_watch(src);
    /* Problems (unreadable, unwatchable, half-written) are reported from the loop. */
    if (!source_first_read(src) || src->watch_error[0])
      uv_timer_start(&src->debounce, on_debounce, 0, 0);
  }
  if (s->n_remote)
    uv_timer_start(&s->poll, on_poll, 0, (uint64_t)s->opts.poll_interval_ms);
  *out = s;
  return 0;
}

void cp_sync_refresh(struct cp_sync *s) {
  if (!s || s->stopping)
    return;
  for (size_t i = 0; i < s->n; i++) {
    struct source *src = &s->src[i];
    if (src->kind == KIND_REMOTE) {
      src->report_refusal = true;
    } else {
      src->rewatch = true; /* the folder may have been replaced */
      uv_timer_start(&src->debounce, on_debounce, 0, 0);
    }
  }
  if (s->n_remote) {
    s->refresh = true;
    uv_timer_start(&s->poll, on_poll, 0, (uint64_t)s->opts.poll_interval_ms);
  }
}

void cp_sync_stop(struct cp_sync *s, void (*done)(void *arg), void *arg) {
  if (!s) {
    if (done)
      done(arg);
    return;
  }
  if (s->stopping)
    return;
  teardown(s, done, arg);
}

static struct source *find(struct cp_sync *s, const char *source) {
  for (size_t i = 0; s && source && i < s->n; i++)
    if (!strcmp(s->src[i].source, source))
      return &s->src[i];
  return NULL;
}

static int copy_path(const char *path, char *buf, size_t len) {
  if (strlen(path) >= len)
    return CP_ELIMIT;
  memcpy(buf, path, strlen(path) + 1);
  return 0;
}

int cp_sync_read_path(struct cp_sync *s, const char *source, char *buf, size_t len) {
  struct source *src = find(s, source);
  if (!src || !buf)
    return CP_EINVAL;
  if (src->have_cand)
    return copy_path(src->cand_path, buf, len);
  return cp_sync_good_path(s, source, buf, len);
}

int cp_sync_good_path(struct cp_sync *s, const char *source, char *buf, size_t len) {
  struct source *src = find(s, source);
  if (!src || !buf)
    return CP_EINVAL;
  if (src->have_good)
    return copy_path(src->good_path, buf, len);
  if (src->kind == KIND_REMOTE)
    return CP_ENOTFOUND;
  return copy_path(src->source, buf, len);
}

int cp_sync_accept(struct cp_sync *s, const char *source) {
  struct source *src = find(s, source);
  if (!src)
    return CP_EINVAL;
  if (!src->have_cand)
    return 0;
  if (rename(src->cand_path, src->good_path) < 0)
    return -errno;
  int rc = fsync_dir(src->s->cal_dir);
  memcpy(src->good_hash, src->cand_hash, HASH_LEN);
  src->have_good = true;
  src->have_cand = false;
  return rc;
}

bool cp_sync_pending(struct cp_sync *s, const char *source) {
  struct source *src = find(s, source);
  return src && src->have_cand;
}

int cp_sync_source_info(struct cp_sync *s, const char *source, struct cp_sync_info *out) {
  struct source *src = find(s, source);
  if (!src || !out)
    return CP_EINVAL;
  *out = src->info;
  return 0;
}
