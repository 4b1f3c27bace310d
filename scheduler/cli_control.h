/* Subcommands that talk to the running daemon over its control socket (see control.h). Each
 * takes argv with argv[0] = the command name and returns the process exit status: 0 done,
 * 1 the daemon is not running or refused, 2 usage or configuration error. */
#ifndef CALPOST_CLI_CONTROL_H
#define CALPOST_CLI_CONTROL_H

/* calpost status [--json]: per channel queue depth, next post, last error, pause state. */
int cp_cli_status(int argc, char **argv);
/* calpost pause CHANNEL|--all [--until TIME] */
int cp_cli_pause(int argc, char **argv);
/* calpost resume CHANNEL|--all */
int cp_cli_resume(int argc, char **argv);
/* calpost retry ID: queue a failed, missed, unknown or skipped post again. */
int cp_cli_retry(int argc, char **argv);
/* calpost skip ID: never publish this post. */
int cp_cli_skip(int argc, char **argv);
/* calpost confirm: accept a plan change the daemon is holding back. */
int cp_cli_confirm(int argc, char **argv);

#endif
