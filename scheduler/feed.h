/* The published feed: an iCalendar file of what calpost published, for editors to subscribe to
 * next to their plan (README "calpost feed").
 *
 * One VEVENT per sent post whose publish time (its OK attempt) is at or after since:
 * UID <post id>@calpost, DTSTART the publish time (UTC), SUMMARY "[channel] first line" (of the
 * post's text in the current plan, else its title; "[channel] post <id>" for a post no longer in
 * the plan), URL the post's address on the platform, DESCRIPTION the publish and due times, the
 * address, the latest engagement sample and the text, CATEGORIES the channel, TRANSP
 * TRANSPARENT (a published post takes no time in anybody's calendar). Events are ordered by
 * publish time; the same database gives the same bytes. The file is built with libical. */
#ifndef CALPOST_FEED_H
#define CALPOST_FEED_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Builds the feed of cfg's state database (read-only; the daemon may be running) and plan (the
 * plan files, or the daemon's last good copies of remote calendars in state_dir/calendars).
 * Returns 0 and a NUL-terminated iCalendar text in *ics_out (the caller frees it with free()),
 * or CP_ENOTFOUND (no state database yet), CP_EDB, CP_EBUSY or CP_ENOMEM. A plan that cannot be
 * read only costs the titles. */
int cp_feed_build(const struct cp_config *cfg, int64_t since_ms, char **ics_out);

/* cp_feed_build with the reason of a failure in err (errlen bytes). */
int cp_feed_build_msg(const struct cp_config *cfg, int64_t since_ms, char **ics_out, char *err,
                      size_t errlen);

#endif
