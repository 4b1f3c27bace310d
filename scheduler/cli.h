/* Subcommands of the calpost binary. Each takes argv with argv[0] = the command name and
 * returns the process exit status. */
#ifndef CALPOST_CLI_H
#define CALPOST_CLI_H

int cp_cli_plan(int argc, char **argv);
int cp_cli_check(int argc, char **argv);
int cp_cli_run(int argc, char **argv);
int cp_cli_channels(int argc, char **argv);
int cp_cli_report(int argc, char **argv);
int cp_cli_feed(int argc, char **argv);

#endif
