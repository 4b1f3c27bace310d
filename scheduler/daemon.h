/* The daemon: one libuv loop that keeps the plan in sync, publishes each post when it is due
 * through its channel's connector, retries, respects rate limits, and survives crashes without
 * losing or duplicating a post. See README.md, "calpost run". */
#ifndef CALPOST_DAEMON_H
#define CALPOST_DAEMON_H

#include <stdint.h>

/* Runs the daemon for the configuration at config_path until SIGTERM/SIGINT. Returns the
 * process exit status (0 after a clean stop; 1 when it could not start, with the reason on
 * stderr). */
int cp_daemon_run(const char *config_path);

/* Parses a duration such as "15m", "30s", "1h", "2d", "500ms" or plain seconds into *ms.
 * Returns 0 or CP_EINVAL. */
int cp_daemon_parse_duration(const char *s, int64_t *ms);

#endif
