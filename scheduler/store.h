/* The durable queue: every post the daemon knows, its state, and every attempt to publish it.
 *
 * A post moves pending -> sending -> sent | failed | pending (retry) | unknown, or leaves
 * pending as missed, cancelled or skipped. `unknown` means it was found `sending` after a crash
 * on a connector that cannot tell whether the request arrived. `sending` is written, durably,
 * before a request leaves, so a post is never published twice by calpost itself.
 *
 * The store sits behind `struct cp_store_ops` (one const struct per backend, like curl's vtls
 * backends); SQLite is the default and only backend so far. All times are Unix milliseconds and
 * are passed in, never read from a clock. Secrets never go into the store. One store object is
 * used by one thread at a time; several processes may open the same file (the CLI reads while
 * the daemon writes).
 *
 * Every function returns 0 or a negative CP_E* code: CP_EDB for a database failure, CP_EBUSY
 * when the database stayed locked past the busy timeout, CP_EINVAL for bad arguments,
 * CP_ENOTFOUND for an unknown post id. On error nothing was changed, and cp_store_errmsg() says
 * what went wrong. */
#ifndef CALPOST_STORE_H
#define CALPOST_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calpost/connector.h" /* enum cp_outcome */
#include "calpost/post.h"

enum cp_store_state {
  CP_STORE_PENDING = 0, /* waiting for its due (or retry) time */
  CP_STORE_SENDING,     /* a request may be in flight */
  CP_STORE_SENT,
  CP_STORE_FAILED,    /* permanent failure, or retries given up */
  CP_STORE_MISSED,    /* not sent within the channel's grace after its due time */
  CP_STORE_CANCELLED, /* gone from the plan, or turned draft/cancelled there, while pending */
  CP_STORE_SKIPPED,   /* skipped by hand */
  CP_STORE_UNKNOWN,   /* interrupted while sending; whether it was published is unknown */
  CP_STORE_NSTATES
};

/* Lower-case name ("pending", "rate_limited"); "?" for an out-of-range value. Static storage. */
const char *cp_store_state_name(enum cp_store_state s);
const char *cp_store_outcome_name(enum cp_outcome o);
/* Parses a state name. Returns 0 and sets *out, or CP_EINVAL. */
int cp_store_state_parse(const char *name, enum cp_store_state *out);

/* Length of a content hash in hex characters (SHA-256). */
#define CP_STORE_HASH_LEN 64

/* One post of the plan, as reconcile needs it. Strings are borrowed. */
struct cp_store_item {
  char id[CP_POST_ID_LEN + 1];
  const char *calendar;
  const char *uid;
  const char *occurrence;
  const char *channel;
  int64_t due_ms;
  enum cp_post_state state;         /* scheduled, draft or cancelled in the plan */
  char hash[CP_STORE_HASH_LEN + 1]; /* of what would be published; a change is an update */
};

/* Fills item from post (borrowing its strings) and hashes the published content: title, text,
 * media (source and alt text), thread flags and campaign. Returns 0, CP_EINVAL for a post with a
 * malformed id or a missing identity field, or CP_ENOMEM. */
int cp_store_item_from_post(struct cp_store_item *item, const struct cp_post *post);

/* A post as stored. Owned by the list or the caller that got it. */
struct cp_store_post {
  char id[CP_POST_ID_LEN + 1];
  char *calendar;
  char *uid;
  char *occurrence;
  char *channel;
  int64_t due_ms;
  int64_t next_ms; /* when it may go next: due_ms, or the retry time */
  enum cp_store_state state;
  char hash[CP_STORE_HASH_LEN + 1];
  int attempts;
  char *remote_id; /* NULL unless sent */
  char *remote_url;
  int64_t updated_ms;
  char *progress; /* what the connector saved with cp_store_set_progress, or NULL */
};

struct cp_store_posts {
  struct cp_store_post *v;
  size_t n;
};

/* One recorded attempt. */
struct cp_store_attempt {
  int n; /* 1, 2, ... per post */
  int64_t at_ms;
  enum cp_outcome outcome;
  int http_status; /* 0: no HTTP response */
  char *message;   /* the server's message, may be NULL */
  char *remote_id;
  char *remote_url;
};

struct cp_store_attempts {
  struct cp_store_attempt *v;
  size_t n;
};

/* What the scheduler decided after an attempt. Strings are borrowed and copied. */
struct cp_store_result {
  int64_t at_ms;
  enum cp_outcome outcome;
  int http_status;
  const char *message;      /* truncated to CP_STORE_MESSAGE_MAX bytes (on a UTF-8 boundary) */
  const char *remote_id;    /* on success */
  const char *remote_url;   /* on success */
  enum cp_store_state next; /* SENT, FAILED, PENDING (retry), UNKNOWN or MISSED */
  int64_t retry_at_ms;      /* when next is PENDING */
};

#define CP_STORE_MESSAGE_MAX 2000

struct cp_store_counts {
  size_t added;     /* new pending posts (and cancelled ones the plan schedules again) */
  size_t updated;   /* pending posts whose due time or content changed */
  size_t cancelled; /* pending posts gone from the plan or no longer scheduled there */
  size_t pending;   /* pending posts before the reconcile, for "would cancel N%" checks */
};

struct cp_store_channel_status {
  size_t counts[CP_STORE_NSTATES]; /* posts per state; counts[CP_STORE_PENDING] is the queue */
  bool has_next;
  char next_id[CP_POST_ID_LEN + 1];
  int64_t next_ms;
  bool paused;             /* paused now: indefinitely, or until a time after now */
  int64_t paused_until_ms; /* 0: indefinitely (if paused) */
  char *pause_reason;      /* may be NULL */
  bool has_error;          /* the channel's latest attempt that was not OK */
  char error_post[CP_POST_ID_LEN + 1];
  int64_t error_at_ms;
  enum cp_outcome error_outcome;
  int error_http_status;
  char *error_message;    /* may be NULL */
  size_t samples;         /* engagement samples taken of the channel's posts */
  size_t samples_skipped; /* engagement samples recorded without counts (deleted, too late) */
};

/* Engagement: counts of a published post's audience sampled at fixed ages after it went out
 * (1 h, 1 d, 7 d, ...). A post's publish time is the time of its OK attempt. A sample that can
 * never be taken (the post was deleted, it is too late) is recorded without counts, so it is
 * not tried again. */

/* A sample that is more than this late (after the post's publish time + the age) is no longer
 * taken: the numbers would belong to another age. cp_store_skip_engagement records it. */
#define CP_STORE_ENGAGEMENT_LATE_MS (2 * 86400000LL)

/* One sample to take. Owned by the caller (cp_store_sample_free). */
struct cp_store_sample {
  char post_id[CP_POST_ID_LEN + 1];
  char *channel;
  char *remote_id;  /* the platform's id of the post, NULL if the publish gave none */
  char *remote_url; /* NULL if the publish gave none */
  int64_t age_s;
  int64_t sent_ms; /* when the post was published */
  int64_t due_ms;  /* sent_ms + age_s seconds */
  int64_t next_ms; /* due_ms, or later while the channel is paused until then */
};

/* The counts of one sample; -1 where the platform does not say (stored as NULL). */
struct cp_store_engagement {
  int64_t replies;
  int64_t reposts;
  int64_t likes;
  int64_t quotes;
  int64_t views;
};

struct cp_store;

/* Opens the store. backend: NULL or "sqlite". location: for SQLite the state directory (created
 * with mode 0700 if missing, one level only); the database is <location>/calpost.db, mode 0600.
 * Creates or migrates the schema. Returns 0 and sets *out (the caller owns it), or an error with
 * a message in err (if not NULL, truncated to errlen). CP_EDB also means "written by a newer
 * calpost": such a file is refused and left alone. */
int cp_store_open(const char *backend, const char *location, struct cp_store **out, char *err,
                  size_t errlen);
/* Closes and frees the store. NULL is a no-op. */
void cp_store_close(struct cp_store *s);
/* The message of the last failed call on s ("" if none). Borrowed; valid until the next call. */
const char *cp_store_errmsg(const struct cp_store *s);
/* The name of the backend ("sqlite"); "none" for NULL. */
const char *cp_store_backend(const struct cp_store *s);

/* Brings the store in line with the full plan, in one transaction: scheduled items that are new
 * (or cancelled in the store) become pending; pending posts whose due time or hash changed are
 * updated; pending posts missing from items, or draft/cancelled there, become cancelled. Posts
 * in any other state are never touched. A post waiting for a retry keeps its retry time unless
 * the plan moves it later. With dry_run, only *counts is computed. items may hold each id once
 * (CP_EINVAL otherwise). */
int cp_store_reconcile(struct cp_store *s, const struct cp_store_item *items, size_t n,
                       int64_t now_ms, bool dry_run, struct cp_store_counts *counts);

/* The pending post that may go first: smallest next_ms, in channel (NULL: any channel). Posts of
 * a channel paused indefinitely are left out; those of a channel paused until T count as due no
 * earlier than T, and (*out)->next_ms says so: arm the timer for it. Returns 0 and sets *out
 * (the caller frees it), or CP_ENOTFOUND when nothing is pending. */
int cp_store_next_due(struct cp_store *s, const char *channel, struct cp_store_post **out);

/* Claims a pending post for sending: one durable UPDATE ... WHERE state = 'pending', committed
 * (and synced) before it returns, so it must be called before the request leaves. Sets *claimed
 * to whether this call changed the post; false (with 0 returned) means it was not pending.
 * Counts the attempt. */
int cp_store_mark_sending(struct cp_store *s, const char *id, int64_t now_ms, bool *claimed);

/* Records the attempt of a `sending` post and moves it to r->next, in one transaction. A post
 * found `sending` after a crash is settled the same way (outcome CP_OUTCOME_UNKNOWN, next UNKNOWN,
 * or PENDING if the connector is idempotent). Returns CP_EINVAL if the post is not `sending`. */
int cp_store_record_attempt(struct cp_store *s, const char *id, const struct cp_store_result *r);

/* Misfire: pending posts of channel (NULL: all) whose next_ms is older than now_ms - grace_ms
 * become missed. If missed is not NULL, sets it to the posts just marked (caller frees). */
int cp_store_mark_missed(struct cp_store *s, const char *channel, int64_t grace_ms, int64_t now_ms,
                         struct cp_store_posts **missed);

/* Skips a pending or unknown post by hand. CP_EINVAL if it is in another state. */
int cp_store_skip(struct cp_store *s, const char *id, int64_t now_ms);
/* Queues a failed, missed, unknown or skipped post again, due at now_ms (its attempts are kept).
 * CP_EINVAL if it is in another state. */
int cp_store_retry(struct cp_store *s, const char *id, int64_t now_ms);

/* One post by id (CP_ENOTFOUND), the caller frees it. */
int cp_store_get(struct cp_store *s, const char *id, struct cp_store_post **out);
/* Posts of channel (NULL: all) whose state is in state_mask (bits 1u << state; 0: all), by
 * next_ms, at most limit (0: no limit). The caller frees the list. Crash recovery at start-up
 * lists 1u << CP_STORE_SENDING. */
int cp_store_list(struct cp_store *s, const char *channel, unsigned state_mask, size_t limit,
                  struct cp_store_posts **out);
/* The attempts of one post, oldest first (an empty list for a post never tried). */
int cp_store_attempts(struct cp_store *s, const char *id, struct cp_store_attempts **out);
/* What `calpost status` shows for a channel (a channel with no posts gives zero counts). */
int cp_store_channel_status(struct cp_store *s, const char *channel, int64_t now_ms,
                            struct cp_store_channel_status **out);

/* Pauses a channel until until_ms (0: until resumed), persisted. reason may be NULL. */
int cp_store_channel_pause(struct cp_store *s, const char *channel, int64_t until_ms,
                           const char *reason);
/* Resumes a channel (a channel that was not paused is fine). */
int cp_store_channel_resume(struct cp_store *s, const char *channel);

/* The engagement sample of the posts of the n_channels channels that comes due first: a sent
 * post and one of the n_ages ages (seconds, > 0) not sampled yet, smallest next_ms first (ties:
 * post id, then age). Samples due more than CP_STORE_ENGAGEMENT_LATE_MS before now_ms are left
 * out (see cp_store_skip_engagement), and so are the posts of a channel paused indefinitely;
 * those of a channel paused until T count as due no earlier than T. Reads only the posts
 * published within the largest age + the late limit, through an index. Returns 0 and sets *out
 * (the caller frees it), CP_ENOTFOUND when there is no sample to take, CP_EINVAL for no channels
 * or ages, or an age <= 0. */
int cp_store_next_engagement(struct cp_store *s, const char *const *channels, size_t n_channels,
                             const int64_t *ages_s, size_t n_ages, int64_t now_ms,
                             struct cp_store_sample **out);
/* Records the sample of post_id at age_s taken at sampled_ms: counts, or NULL for a sample that
 * was skipped for good (its counts stay NULL). Recording it again replaces it. CP_ENOTFOUND for
 * an unknown post, CP_EINVAL for age_s <= 0. */
int cp_store_record_engagement(struct cp_store *s, const char *post_id, int64_t age_s,
                               int64_t sampled_ms, const struct cp_store_engagement *counts);
/* Records every sample of the listed channels and ages that is more than
 * CP_STORE_ENGAGEMENT_LATE_MS late at now_ms, and not taken, as skipped (NULL counts, sampled at
 * now_ms), in one transaction. Reads every post the channels published before then: call it
 * rarely. Sets *skipped (if not NULL) to the number recorded. Arguments as next_engagement. */
int cp_store_skip_engagement(struct cp_store *s, const char *const *channels, size_t n_channels,
                             const int64_t *ages_s, size_t n_ages, int64_t now_ms, size_t *skipped);

/* Group commit: the calls between batch_begin and batch_end form one transaction, so many
 * claims or records cost one disk sync. Nothing inside is durable (or visible to other
 * processes) before cp_store_batch_end(s, true) returns 0; a failed call inside the batch undoes
 * only itself. batch_end(s, false), or a failed commit, undoes the whole batch. */
int cp_store_batch_begin(struct cp_store *s);
int cp_store_batch_end(struct cp_store *s, bool ok);

/* Daemon metadata (never secrets). get: CP_ENOTFOUND if absent, *value is the caller's. */
/* Stores a connector's progress text for post id (durable when it returns, outside a batch). */
int cp_store_set_progress(struct cp_store *s, const char *id, const char *progress);

int cp_store_meta_set(struct cp_store *s, const char *key, const char *value);
int cp_store_meta_get(struct cp_store *s, const char *key, char **value);

/* Destructors of what the functions above return. NULL is a no-op. */
void cp_store_post_free(struct cp_store_post *p);
void cp_store_posts_free(struct cp_store_posts *l);
void cp_store_attempts_free(struct cp_store_attempts *l);
void cp_store_channel_status_free(struct cp_store_channel_status *st);
void cp_store_sample_free(struct cp_store_sample *sample);

/* ---- For backends only. ---------------------------------------------------------------------
 * A backend embeds struct cp_store first in its own struct. The public functions check their
 * arguments, clear the message, then call the backend, which never sees NULL where the contract
 * above forbids it. */
struct cp_store {
  const struct cp_store_ops *ops;
  char errmsg[512];
};

struct cp_store_ops {
  const char *name;
  int (*open)(const char *location, struct cp_store **out, char *err, size_t errlen);
  void (*close)(struct cp_store *s);
  int (*reconcile)(struct cp_store *s, const struct cp_store_item *items, size_t n, int64_t now_ms,
                   bool dry_run, struct cp_store_counts *counts);
  int (*next_due)(struct cp_store *s, const char *channel, struct cp_store_post **out);
  int (*mark_sending)(struct cp_store *s, const char *id, int64_t now_ms, bool *claimed);
  int (*record_attempt)(struct cp_store *s, const char *id, const struct cp_store_result *r);
  int (*mark_missed)(struct cp_store *s, const char *channel, int64_t grace_ms, int64_t now_ms,
                     struct cp_store_posts **missed);
  int (*skip)(struct cp_store *s, const char *id, int64_t now_ms);
  int (*retry)(struct cp_store *s, const char *id, int64_t now_ms);
  int (*get)(struct cp_store *s, const char *id, struct cp_store_post **out);
  int (*list)(struct cp_store *s, const char *channel, unsigned state_mask, size_t limit,
              struct cp_store_posts **out);
  int (*attempts)(struct cp_store *s, const char *id, struct cp_store_attempts **out);
  int (*channel_status)(struct cp_store *s, const char *channel, int64_t now_ms,
                        struct cp_store_channel_status **out);
  int (*channel_pause)(struct cp_store *s, const char *channel, int64_t until_ms,
                       const char *reason);
  int (*channel_resume)(struct cp_store *s, const char *channel);
  int (*meta_set)(struct cp_store *s, const char *key, const char *value);
  int (*meta_get)(struct cp_store *s, const char *key, char **value);
  int (*batch_begin)(struct cp_store *s);
  int (*batch_end)(struct cp_store *s, bool ok);
  int (*set_progress)(struct cp_store *s, const char *id, const char *progress);
  int (*next_engagement)(struct cp_store *s, const char *const *channels, size_t n_channels,
                         const int64_t *ages_s, size_t n_ages, int64_t now_ms,
                         struct cp_store_sample **out);
  int (*record_engagement)(struct cp_store *s, const char *post_id, int64_t age_s,
                           int64_t sampled_ms, const struct cp_store_engagement *counts);
  int (*skip_engagement)(struct cp_store *s, const char *const *channels, size_t n_channels,
                         const int64_t *ages_s, size_t n_ages, int64_t now_ms, size_t *skipped);
};

extern const struct cp_store_ops cp__store_sqlite_ops;

/* Formats a message into s->errmsg and returns err, for backends. */
int cp__store_fail(struct cp_store *s, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Whether id is CP_POST_ID_LEN lower-case hex characters. */
bool cp__store_id_valid(const char *id);

#endif
