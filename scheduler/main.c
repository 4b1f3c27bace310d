/* calpost: turns an editorial calendar into posts. main() dispatches git-style subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_control.h"

struct command {
  const char *name;
  int (*fn)(int argc, char **argv);
  const char *summary;
};

static const struct command commands[] = {
    {"plan", cp_cli_plan, "show the agenda of upcoming posts"},
    {"check", cp_cli_check, "lint plan files like a compiler"},
    {"run", cp_cli_run, "run the daemon in the foreground"},
    {"channels", cp_cli_channels, "list connectors; check each channel's setup and login"},
    {"status", cp_cli_status, "show the daemon's channels, queues and errors"},
    {"pause", cp_cli_pause, "stop publishing on a channel or on all of them"},
    {"resume", cp_cli_resume, "publish again after a pause"},
    {"retry", cp_cli_retry, "queue a failed, missed or unknown post again"},
    {"skip", cp_cli_skip, "never publish a pending post"},
    {"confirm", cp_cli_confirm, "accept a plan change the daemon held"},
    {"report", cp_cli_report, "measure what went out: on time, failures, engagement"},
    {"feed", cp_cli_feed, "write an iCalendar feed of the published posts"},
};

static void usage(FILE *out) {
  fprintf(out, "usage: calpost [--version] [--help] COMMAND [ARGS]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\n'calpost COMMAND --help' shows the options of a command.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("calpost %s\n", CALPOST_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name))
      return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "calpost: '%s' is not a command; see 'calpost --help'\n", argv[1]);
  return 2;
}
