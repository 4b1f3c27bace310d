/* The post model: what the plan engine produces and the daemon and connectors consume. */
#ifndef CALPOST_POST_H
#define CALPOST_POST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum cp_post_state {
  CP_POST_SCHEDULED = 0, /* will be published at due time */
  CP_POST_DRAFT,         /* shown, never published (STATUS:TENTATIVE or a draft marker) */
  CP_POST_CANCELLED,     /* shown, never published (STATUS:CANCELLED) */
};

/* One media attachment: a local path (resolved against the plan file's folder) or an URL. */
struct cp_media {
  char *src;
  char *alt; /* alt text, may be NULL */
};

/* A setting from the event's [calpost] section that calpost passes on to the connectors
 * (e.g. "visibility = unlisted", "language = de", "tags = release, spring"). */
struct cp_post_option {
  const char *key; /* lower case */
  const char *value;
};

/* Length of a post id in hex characters (without the NUL). */
#define CP_POST_ID_LEN 16

/* One post: one occurrence of one event for one channel. All strings are borrowed from the plan
 * that produced the post and live as long as that plan. */
struct cp_post {
  char id[CP_POST_ID_LEN + 1]; /* stable: hash of (calendar, uid, occurrence, channel) */
  const char *calendar;        /* calendar name from the config (or the file's base name) */
  const char *uid;
  char occurrence[24]; /* "single", or the original start: "20240102T090000Z" / "20240102" */
  const char *channel;
  int64_t due;      /* Unix seconds, UTC */
  int utc_offset;   /* seconds east of UTC at the due time in the event's zone */
  const char *tzid; /* IANA name of the event's zone, "UTC" or a custom VTIMEZONE's TZID */
  bool all_day;     /* the event was an all-day event (published at the configured time) */
  enum cp_post_state state;
  const char *title; /* SUMMARY, may be "" */
  const char *text;  /* the body for this channel (variant if one exists) */
  const struct cp_media *media;
  size_t n_media;
  bool thread;          /* split over-long text into a reply chain */
  bool numbered;        /* number the parts of a thread */
  const char *campaign; /* may be NULL */
  const char *file;     /* plan file and line of the VEVENT that produced this post */
  int line;
  const struct cp_post_option *options; /* in the order written; keys are unique */
  size_t n_options;
};

/* The value of the post option key, or NULL. */
static inline const char *cp_post_option(const struct cp_post *post, const char *key) {
  for (size_t i = 0; i < post->n_options; i++)
    if (!strcmp(post->options[i].key, key))
      return post->options[i].value;
  return NULL;
}

#endif
