/* Small helpers shared by the built-in connectors (not part of the ABI: external connectors
 * cannot link them). Each function is what several connectors used to copy; where connectors
 * differ (a limit, a message, a line break) the difference is a parameter.
 *
 * Names: cp_cu_<thing>_<verb>. Nothing here does I/O except through the host it is given. */
#ifndef CALPOST_CONN_UTIL_H
#define CALPOST_CONN_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calpost/connector.h"
#include "calpost/text.h"

/* ---- a growing string ------------------------------------------------------------------------ */

/* A NUL-terminated string that grows as text is added. Start with {0}. After an allocation
 * failure it stops growing and sets oom; check oom once at the end (cp_cu_buf_take does). */
struct cp_cu_buf {
  char *p; /* NULL until something (even "") is added */
  size_t len, cap;
  bool oom;
};

/* Appends s[0..n). Adding 0 bytes still allocates, so that p becomes "". */
void cp_cu_buf_add(struct cp_cu_buf *b, const char *s, size_t n);

/* Appends the string s. */
void cp_cu_buf_str(struct cp_cu_buf *b, const char *s);

/* Appends printf-style text of any length. */
void cp_cu_buf_printf(struct cp_cu_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends s[0..n) HTML-escaped (& < > " '). A line end (LF or CRLF) becomes br, or a space when
 * attr is set (inside an attribute value). */
void cp_cu_buf_html(struct cp_cu_buf *b, const char *s, size_t n, bool attr, const char *br);

/* Hands over the string (the caller frees it; "" if nothing was added) and resets b. Returns
 * NULL (and frees what there was) after an allocation failure. */
char *cp_cu_buf_take(struct cp_cu_buf *b);

/* ---- strings and text ------------------------------------------------------------------------ */

/* Replaces every occurrence of secret in s by "***" (in place). Secrets under 3 bytes are left:
 * they would blank out ordinary text. */
void cp_cu_scrub(char *s, const char *secret);

/* yes/true/on/1 -> 1, no/false/off/0 -> 0 (any case), anything else -> -1. */
int cp_cu_parse_bool(const char *v);

/* True if s is one of the NULL-terminated list (exact, case-sensitive). */
bool cp_cu_in_list(const char *s, const char *const *list);

/* The code point at p into *cp (U+FFFD for an invalid byte) and its length in bytes (1 for an
 * invalid byte). p must not be at the terminating NUL. */
size_t cp_cu_utf8_next(const char *p, int32_t *cp);

/* True for white space: ASCII \t..\r and ' ', and Unicode's Zs, Zl and Zp. */
bool cp_cu_is_space(int32_t cp);

/* The parts to send: cp_text_split(text, limit, mode, numbered) when split is set, else text
 * whole as the one part. Returns 0 and sets *parts (release with cp_text_split_free) and *n, or
 * a CP_E* and sets *parts to NULL and *n to 0. */
int cp_cu_text_parts(const char *text, bool split, size_t limit, enum cp_count mode, bool numbered,
                     char ***parts, size_t *n);

/* ---- configuration (init) -------------------------------------------------------------------- */

/* "30", "30s" or "500ms" to milliseconds; -1 if unreadable, not positive or over max_ms. */
long cp_cu_parse_timeout(const char *s, long max_ms);

/* True for localhost, 127.x.y.z and [::1] (also ::1 when with_bare_v6 is set). */
bool cp_cu_loopback_host(const char *host, bool with_bare_v6);

/* True if url is https, or plain http to this machine (a secret must not travel in the clear
 * elsewhere). Sets *is_http when it is plain http (also when refused); is_http may be NULL. */
bool cp_cu_url_ok(const char *url, bool *is_http);

/* Reads the secret key (from key_file or key_env) through host->secret into *out (NULL on
 * failure). Returns 0; CP_ECONFIG after logging "FILE:LINE: [channel NAME] needs NEEDS" when
 * neither is set; or host->secret's error (host->secret logged it). */
int cp_cu_conf_secret(const struct cp_host *host, const struct cp_connector_conf *conf,
                      const char *key, const char *needs, char **out);

/* Reads the yes/no key into *out (left alone when the key is absent). Returns 0, or CP_ECONFIG
 * after logging "FILE:LINE: [channel NAME] KEY: 'VALUE' is not yes or no". */
int cp_cu_conf_bool(const struct cp_host *host, const struct cp_connector_conf *conf,
                    const char *key, int *out);

/* Reads the duration key ("30", "30s", "500ms") into *out in milliseconds (left alone when
 * absent). Returns 0, or CP_ECONFIG after logging "FILE:LINE: [channel NAME] KEY: 'VALUE' is not
 * a duration such as EXAMPLE_S or 500ms (at most MAX s)". */
int cp_cu_conf_timeout(const struct cp_host *host, const struct cp_connector_conf *conf,
                       const char *key, int example_s, long max_ms, long *out);

/* Reads the count key into *out (left alone when absent): decimal digits, min <= value <= max.
 * Returns 0, or CP_ECONFIG after logging "FILE:LINE: [channel NAME] KEY: 'VALUE' is not WHAT"
 * (what: e.g. "a positive number"). */
int cp_cu_conf_count(const struct cp_host *host, const struct cp_connector_conf *conf,
                     const char *key, unsigned long long min, unsigned long long max,
                     const char *what, size_t *out);

/* ---- post options and media (validate, publish) ---------------------------------------------- */

/* The yes/no post option key: 1 or 0, dflt when it is absent or unreadable. */
int cp_cu_option_bool(const struct cp_post *post, const char *key, int dflt);

/* For validate: false, after diag(arg, true, "KEY = 'VALUE': write yes or no"), if the post
 * option key is present but not yes/no; true otherwise. */
bool cp_cu_option_bool_ok(const struct cp_post *post, const char *key, cp_diag_cb diag, void *arg);

/* The lower-cased extension of the last path segment of src (a path or URL; query and fragment
 * ignored) into ext, "" if there is none. An extension longer than size - 1 is cut when cut is
 * set, else it gives "" (two behaviours connectors already relied on). */
void cp_cu_media_ext(const char *src, char *ext, size_t size, bool cut);

/* A loaded media item, copied out of its cp_media_blob (which lives only during the callback). */
struct cp_cu_media {
  unsigned char *data;
  size_t len;
  char *type; /* the content type; application/octet-stream if the host named none */
  char *name; /* the blob's file name, "media" if none */
};

/* Copies blob into m. Returns 0 or CP_ENOMEM; either way release m with cp_cu_media_clear. */
int cp_cu_media_copy(struct cp_cu_media *m, const struct cp_media_blob *blob);

/* Frees what m holds and zeroes it. */
void cp_cu_media_clear(struct cp_cu_media *m);

/* The outcome of a failed host->media_load: a missing, unreadable, oversized or wrong file stays
 * so (PERMANENT: -ENOENT, -EACCES, -EISDIR, CP_ENOTFOUND, CP_EINVAL, CP_ETOOBIG, CP_EPARSE,
 * CP_ELIMIT); anything else, such as a failed download, may work next time (RETRY). */
enum cp_outcome cp_cu_media_outcome(int err);

/* ---- progress ("k=v;k=v", saved with host->save_progress) ------------------------------------ */

/* The value of key copied into out; false if absent, empty or not fitting in size. */
bool cp_cu_progress_get(const char *progress, const char *key, char *out, size_t size);

/* Appends "<prefix><index>=<value>" (after a ';' unless first) to the string buf[0..size) of
 * *len bytes. Returns 0, or CP_ELIMIT when it does not fit (buf and *len are then unchanged). */
int cp_cu_progress_put(char *buf, size_t size, size_t *len, const char *prefix, size_t index,
                       const char *value);

/* Calls fn(arg, index, value) for each entry "<prefix><index>=<value>" of progress whose index
 * is decimal from 1 to max; other entries are ignored. Stops at fn's first non-zero return and
 * returns it; 0 otherwise, CP_ENOMEM if progress cannot be copied. */
int cp_cu_progress_each(const char *progress, const char *prefix, size_t max,
                        int (*fn)(void *arg, size_t index, const char *value), void *arg);

/* One id per media item, for a publish that uploads items and then posts: saves
 * "<prefix>1=<id>;<prefix>3=<id>" for the non-NULL ids[0..n) with req->host->save_progress.
 * Returns 0, what save_progress returned, or CP_ELIMIT if that does not fit in 4 KiB. */
int cp_cu_progress_save_ids(const struct cp_publish_req *req, const char *prefix, char *const *ids,
                            size_t n);

/* Reads what cp_cu_progress_save_ids saved: each entry <prefix>N=<id> with 1 <= N <= n and
 * valid(id) replaces ids[N-1] by a malloc'd copy of id; others are ignored. Returns 0 or
 * CP_ENOMEM. */
int cp_cu_progress_load_ids(const char *progress, const char *prefix, char **ids, size_t n,
                            bool (*valid)(const char *id));

/* ---- results and completion ------------------------------------------------------------------ */

/* Resets res to outcome and err with a formatted message (control characters become spaces; a
 * long message is cut at a character boundary). */
void cp_cu_result_vset(struct cp_result *res, enum cp_outcome outcome, int err, const char *fmt,
                       va_list ap) __attribute__((format(printf, 4, 0)));

/* Sets res->message only, formatted like cp_cu_result_vset. */
void cp_cu_result_msg(struct cp_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Calls fn(arg) once, from host->loop, after delay_ms (0: on the next loop turn), with a timer
 * of its own that frees itself. Returns 0, or CP_ENOMEM / a libuv error (fn is then never
 * called). */
int cp_cu_call_later(const struct cp_host *host, uint64_t delay_ms, void (*fn)(void *arg),
                     void *arg);

/* Completes req with a copy of res on the next loop turn: for a publish that finished before
 * returning (a connector may not complete from inside publish). Returns 0, or CP_ENOMEM / a
 * libuv error, and then schedules nothing (publish returns that error instead). */
int cp_cu_complete_soon(const struct cp_publish_req *req, const struct cp_result *res);

#endif
