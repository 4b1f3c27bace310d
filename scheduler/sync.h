/* Plan sync: watches local plan files and polls remote calendars, keeping the last good copy
 * of every calendar source in the state directory (so a restart without network still works).
 *
 * Every source has a cache file: <state_dir>/calendars/<name>.ics (the last good copy) and,
 * while a change is under review, <name>.new (the candidate). The daemon loads a candidate,
 * and either accepts it (the candidate becomes the good copy) or holds it (until `calpost
 * confirm`, or until a newer candidate replaces it). */
#ifndef CALPOST_SYNC_H
#define CALPOST_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct cp_sync_source {
  const char *calendar; /* the [calendar NAME] it belongs to */
  const char *source;   /* a file, a folder of .ics files, or an http(s)/webcal URL */
};

struct cp_sync_opts {
  uv_loop_t *loop;
  const char *state_dir;
  int64_t poll_interval_ms; /* remote sources; default 5 minutes */
  int64_t debounce_ms;      /* local files; default 250 ms */
  int64_t max_size;         /* bytes; larger bodies are refused */
  int64_t timeout_ms;       /* per request */
  bool allow_loopback_http; /* plain http:// to 127.0.0.1/::1 (tests, local Radicale) */
  /* https:// and webcal:// sources may reach loopback, private and link-local addresses (an
   * intranet CalDAV server). Default false: such addresses are refused after name resolution,
   * on every redirect too. */
  bool allow_local_calendars;
  /* A source has a new candidate (a local file changed, or a remote body differs from the
   * good copy). The daemon reads it with cp_sync_candidate_path() and answers with
   * cp_sync_accept() or by leaving it held. */
  void (*changed)(void *arg, const char *calendar, const char *source);
  /* A fetch failed or returned something that is not a calendar; the good copy stays. */
  void (*failed)(void *arg, const char *calendar, const char *source, const char *why);
  void *arg;
};

struct cp_sync;

/* Starts watching and polling. Local sources are watched at once; remote ones are fetched at
 * once and then every poll interval. Returns 0 or a negative CP_E* / -errno.
 * A local source whose current bytes differ from its good copy gets them as its candidate
 * before this returns, without a `changed` call (the caller's first load reads it); every later
 * candidate is announced through `changed`, always from the loop, never from inside a call.
 * A source that cannot be read or watched is reported through `failed` from the loop. The same
 * source given twice is CP_EEXISTS (the functions below look sources up by their text). */
int cp_sync_start(const struct cp_sync_opts *opts, const struct cp_sync_source *sources, size_t n,
                  struct cp_sync **out);
/* Fetches every remote source now and re-reads every local one (SIGHUP). */
void cp_sync_refresh(struct cp_sync *s);
/* Stops and closes all handles; done(arg) runs when they are closed. s may be NULL. */
void cp_sync_stop(struct cp_sync *s, void (*done)(void *arg), void *arg);

/* The file to read a source from: the candidate if one is pending, else the good copy, else
 * (a local source never copied yet) the source itself. Writes into buf; returns 0 or
 * CP_ENOTFOUND when a remote source has no copy yet. */
int cp_sync_read_path(struct cp_sync *s, const char *source, char *buf, size_t len);
/* The last good copy of source (never the candidate): writes its path into buf and returns 0, or
 * CP_ENOTFOUND when there is none yet. */
int cp_sync_good_path(struct cp_sync *s, const char *source, char *buf, size_t len);
/* Makes the pending candidate of source (if any) the good copy, atomically. */
int cp_sync_accept(struct cp_sync *s, const char *source);
/* True if source has a candidate waiting. */
bool cp_sync_pending(struct cp_sync *s, const char *source);

/* Like cp_sync_read_path, but ignoring a pending candidate: the good copy, else (a local source
 * never copied yet) the source itself; CP_ENOTFOUND for a remote source without a copy. For
 * publishing from the last good plan while a candidate is held. */
int cp_sync_good_path(struct cp_sync *s, const char *source, char *buf, size_t len);

/* A local re-read waits at most this long, in total, for a file to end with END:VCALENDAR. */
#define CP_SYNC_SETTLE_MS 2000

/* What happened to one source (for `calpost status` and tests). Counters start at 0. */
struct cp_sync_info {
  uint64_t fetches;      /* remote: requests completed */
  uint64_t starts;       /* remote: requests started */
  uint64_t last_start;   /* remote: uv_now() of the loop when the newest request started; polls
                          * start at least poll_interval_ms apart on this clock */
  uint64_t not_modified; /* remote: 304 answers */
  uint64_t same_etag;    /* remote: 200 answers with the stored ETag (body not examined) */
  uint64_t same_content; /* fetched or re-read bytes equal to the copy the daemon reads */
  uint64_t changes;      /* `changed` calls */
  uint64_t failures;     /* `failed` calls */
  int64_t last_ok_ms;    /* Unix ms of the last successful fetch or read; 0: none yet */
  char last_error[512];  /* the reason of the last failure; "" after a success */
};

/* Copies the info of source into *out. Returns 0 or CP_EINVAL (unknown source). */
int cp_sync_source_info(struct cp_sync *s, const char *source, struct cp_sync_info *out);

/* The base name of the files kept for source of calendar in <state_dir>/calendars/ (the last
 * good copy is "<base>.ics"): the calendar name made file-safe, '-', 12 hex digits of SHA-256 of
 * the source. */
void cp_sync_base_name(const char *calendar, const char *source, char *out, size_t len);

#endif
