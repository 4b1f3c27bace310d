/* `calpost feed`: writes the published feed (feed.h) to stdout or, atomically, to a file that a
 * web server can serve while it is being replaced. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libical/ical.h>

#include "calpost/err.h"
#include "cli.h"
#include "config.h"
#include "feed.h"
#include "report.h"

enum { OPT_SINCE = 256, OPT_NOW };

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'}, {"since", required_argument, NULL, OPT_SINCE},
    {"output", required_argument, NULL, 'o'}, {"now", required_argument, NULL, OPT_NOW},
    {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};

static const char feed_help[] =
    "usage: calpost feed [-c CONFIG] [--since 90d] [-o FILE] [--now DATETIME]\n"
    "\n"
    "Writes an iCalendar file of what was published: one event per sent post at its publish\n"
    "time, titled \"[channel] first line\", with the post's URL and its latest engagement.\n"
    "Serve it (or put it in a shared folder) and subscribe to it next to your plan.\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $CALPOST_CONFIG); the database is\n"
    "                      STATE_DIR/calpost.db\n"
    "  --since WHEN        posts published since: a duration before now (90d, default), a date\n"
    "                      YYYY-MM-DD (midnight in the plan zone) or an ISO 8601 date-time\n"
    "  -o, --output FILE   write to FILE (replaced atomically) instead of stdout\n"
    "  --now DATETIME      count --since back from this time (default: now)\n";

/* Writes data to path through a temporary file in the same folder, renamed over path: a reader
 * sees the old file or the new one, never half of one. Returns 0 or -errno. */
static int write_atomic(const char *path, const char *data, size_t len) {
  size_t n = strlen(path);
  char *tmp = malloc(n + 16);
  if (!tmp)
    return -ENOMEM;
  snprintf(tmp, n + 16, "%s.tmp.XXXXXX", path);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    int e = errno;
    free(tmp);
    return -e;
  }
  /* mkstemp makes the file 0600; a feed is published: 0644 less the umask. */
  mode_t mask = umask(0);
  umask(mask);
  int rc = fchmod(fd, 0644 & ~mask) < 0 ? -errno : 0;
  for (size_t off = 0; rc == 0 && off < len;) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0 && errno != EINTR)
      rc = -errno;
    else if (w > 0)
      off += (size_t)w;
  }
  if (rc == 0 && fsync(fd) < 0)
    rc = -errno;
  if (close(fd) < 0 && rc == 0)
    rc = -errno;
  if (rc == 0 && rename(tmp, path) < 0)
    rc = -errno;
  if (rc < 0)
    unlink(tmp);
  free(tmp);
  return rc;
}

int cp_cli_feed(int argc, char **argv) {
  const char *config = getenv("CALPOST_CONFIG"), *since = "90d", *output = NULL, *now = NULL;
  optind = 0;
  int c;
  while ((c = getopt_long(argc, argv, "c:o:h", long_opts, NULL)) != -1) {
    switch (c) {
      case 'c':
        config = optarg;
        break;
      case OPT_SINCE:
        since = optarg;
        break;
      case 'o':
        output = optarg;
        break;
      case OPT_NOW:
        now = optarg;
        break;
      case 'h':
        fputs(feed_help, stdout);
        return 0;
      default:
        fputs(feed_help, stderr);
        return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "calpost feed: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  icalerror_set_errors_are_fatal(0);
  struct cp_config *cfg = NULL;
  char err[1024];
  if (!config) {
    cfg = cp_config_defaults();
  } else if (cp_config_load(config, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  if (!cfg) {
    fprintf(stderr, "calpost feed: out of memory\n");
    return 2;
  }
  int status = 0;
  int64_t from_ms, to_ms;
  char *ics = NULL;
  if (cp_report_parse_window(since, now, cfg->timezone, &from_ms, &to_ms, err, sizeof err) < 0) {
    fprintf(stderr, "calpost feed: %s\n", err);
    status = 2;
  } else if (cp_feed_build_msg(cfg, from_ms, &ics, err, sizeof err) < 0) {
    fprintf(stderr, "calpost feed: %s\n", err);
    status = 1;
  } else if (output) {
    int rc = write_atomic(output, ics, strlen(ics));
    if (rc < 0) {
      fprintf(stderr, "calpost feed: cannot write %s: %s\n", output, strerror(-rc));
      status = 1;
    }
  } else if (fputs(ics, stdout) == EOF || fflush(stdout) != 0) {
    perror("calpost feed: stdout");
    status = 1;
  }
  free(ics);
  cp_config_free(cfg);
  return status;
}
