/* The plan engine: reads iCalendar plans and expands them into posts (see README.md, "The plan
 * model"). It corrects libical 3.0.16's known mistakes (ICS-NOTES) and reports bad input with
 * file, line and field. */
#ifndef CALPOST_PLAN_H
#define CALPOST_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calpost/post.h"
#include "config.h"

struct cp_diag {
  char *file;
  int line; /* 0 when the problem concerns the whole file */
  bool error;
  char *msg;
};

struct cp_plan_opts {
  const struct cp_config *cfg;
  int64_t from, to; /* the window [from, to), Unix seconds */
  int64_t now;      /* for `check`: posts before now are in the past */
  bool check;       /* also run the checks of `calpost check` (limits, media, past, bounds) */
  const char *const *files; /* if n_files > 0: these files/folders instead of the config's */
  size_t n_files;
  const char *timezone; /* overrides the config's plan zone when not NULL */
  /* Where to read a configured source from (the daemon's cached copy of a remote calendar or
   * its last good copy): writes a file path into buf and returns 0, or returns non-zero to read
   * the source itself. Messages still name the source. NULL: read sources directly. */
  int (*resolve)(void *arg, const char *source, char *buf, size_t len);
  void *resolve_arg;
  /* check: whether channel's text length is checked by its connector's validate (then the
   * plan's own table of limits is not used for it). NULL: never. */
  bool (*validated)(void *arg, const char *channel);
  void *validated_arg;
  /* A folder for an unlinked temporary file that holds the plan's texts instead of memory (the
   * daemon: its state folder). NULL, or a folder where it cannot be made, or check: in memory.
   * Either way the plan behaves the same; only cp_plan_post reads from that file. */
  const char *spill_dir;
};

struct cp_plan {
  size_t n_posts;        /* read them with cp_plan_post(), sorted by due, calendar, uid, channel */
  struct cp_diag *diags; /* in file order */
  size_t n_diags;
  size_t n_errors;
  size_t n_warnings;
  size_t n_unread; /* files that could not be read at all (not a calendar, truncated, ...) */
  struct cp__plan_priv *priv;
};

/* Loads and expands the plan. Returns 0 and a new plan in *out even when the input has errors
 * (they are in diags; events with errors make no posts). Returns CP_ENOMEM or CP_ETZ (the plan
 * zone itself is unknown) on failure, with *out NULL. */
int cp_plan_load(const struct cp_plan_opts *opts, struct cp_plan **out);
void cp_plan_free(struct cp_plan *plan);

/* Fills *post with post i (i < plan->n_posts). Its strings are borrowed from the plan; with a
 * spill_dir the title, texts, media and options are valid only until the next cp_plan_post on
 * the same plan (use cp_plan_post_dup to keep them). Returns 0, or a negative error when the
 * texts cannot be read back (-errno, CP_ENOMEM; never with spill_dir NULL). */
int cp_plan_post(const struct cp_plan *plan, size_t i, struct cp_post *post);

/* As cp_plan_post, but the title, texts, media and options are copied into one block that the
 * caller owns and frees with free(*mem); the other strings stay borrowed from the plan. */
int cp_plan_post_dup(const struct cp_plan *plan, size_t i, struct cp_post *post, void **mem);

/* Just the id of post i (cheaper than cp_plan_post: no texts). */
void cp_plan_post_id(const struct cp_plan *plan, size_t i, char id[CP_POST_ID_LEN + 1]);

/* Formats a Unix time as "YYYY-MM-DDTHH:MM:SSZ" (utc_offset 0) or with "+HH:MM" into buf
 * (at least 26 bytes). */
void cp_plan_format_time(int64_t t, int utc_offset, char *buf, size_t len);

/* Parses "now", "YYYY-MM-DD" (midnight in zone) or an ISO 8601 date-time with Z or an offset.
 * Returns 0 or CP_EINVAL. */
int cp_plan_parse_time(const char *s, const char *zone, int64_t now, int64_t *out);

#endif
