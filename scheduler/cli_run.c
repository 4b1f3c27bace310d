/* `calpost run`: the daemon in the foreground (for systemd). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "daemon.h"

static const char run_help[] =
    "usage: calpost run [-c CONFIG]\n"
    "\n"
    "Runs the daemon in the foreground: keeps the plan in sync with its calendars, publishes\n"
    "each post when it is due through its channel, retries what failed and respects every\n"
    "rate limit. Logs go to stderr. SIGHUP reloads the plan, SIGTERM finishes the requests in\n"
    "flight and exits. A second daemon on the same state directory refuses to start.\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $CALPOST_CONFIG)\n";

int cp_cli_run(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *config = getenv("CALPOST_CONFIG");
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    switch (c) {
      case 'c':
        config = optarg;
        break;
      case 'h':
        fputs(run_help, stdout);
        return 0;
      default:
        fputs(run_help, stderr);
        return 2;
    }
  }
  if (!config) {
    fprintf(stderr, "calpost run: no configuration: give -c CONFIG (see config/calpost.ini)\n");
    return 2;
  }
  return cp_daemon_run(config);
}
