/* `calpost channels`: the connectors of this build and, for each configured channel, whether it
 * is set up and authenticates (a dry login that posts nothing). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "calpost/err.h"
#include "channels.h"
#include "cli.h"
#include "config.h"
#include "connector_registry.h"

static const char help[] =
    "usage: calpost channels [-c CONFIG] [--no-login]\n"
    "\n"
    "Lists the connectors built into calpost (and external modules named in the config) with\n"
    "their capabilities, then every [channel] of the config: whether its connector accepts the\n"
    "configuration (keys, secrets) and whether it authenticates, by a dry login that posts\n"
    "nothing. Exits 1 if a channel is not ready or its login fails.\n"
    "\n"
    "  -c, --config FILE  the config file (default: no channels)\n"
    "      --no-login     do not contact the platforms\n"
    "  -h, --help         this help\n";

static void caps_text(unsigned caps, char *buf, size_t len) {
  snprintf(buf, len, "%s%s%s%s", caps & CP_CAP_IDEMPOTENT ? "idempotent " : "",
           caps & CP_CAP_MEDIA ? "media " : "", caps & CP_CAP_THREADS ? "threads " : "",
           caps & CP_CAP_METRICS ? "metrics " : "");
  size_t n = strlen(buf);
  if (n)
    buf[n - 1] = '\0';
  else
    snprintf(buf, len, "-");
}

int cp_cli_channels(int argc, char **argv) {
  static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                       {"no-login", no_argument, NULL, 'n'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *config = NULL;
  bool login = true;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    switch (c) {
      case 'c':
        config = optarg;
        break;
      case 'n':
        login = false;
        break;
      case 'h':
        fputs(help, stdout);
        return 0;
      default:
        fputs(help, stderr);
        return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "calpost channels: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  struct cp_config *cfg;
  char err[1024];
  if (!config) {
    cfg = cp_config_defaults();
  } else if (cp_config_load(config, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  if (!cfg)
    return 2;
  struct cp_channels *chs;
  size_t errors = 0;
  /* Problems setting channels up are printed on stderr as they are found. */
  if (cp_channels_open(cfg, stderr, &chs, &errors) < 0) {
    cp_config_free(cfg);
    return 2;
  }
  const struct cp_connector_registry *reg = cp_channels_registry(chs);
  char caps[64];
  printf("connectors:\n");
  for (size_t i = 0;; i++) {
    const struct cp_connector *k = cp_connector_registry_at(reg, i);
    if (!k)
      break;
    caps_text(k->caps, caps, sizeof caps);
    printf("  %-10s %-34s %s\n", k->name, caps, k->description ? k->description : "");
  }
  size_t n = cp_channels_count(chs);
  printf("\nchannels%s%s:\n", config ? " in " : "", config ? config : "");
  if (!n)
    printf("  (none)\n");
  for (size_t i = 0; i < n; i++) {
    const struct cp_channel_conf *cc = cp_channels_conf(chs, i);
    const struct cp_connector *k = cp_channels_connector(chs, i);
    const char *state;
    char detail[CP_RESULT_MESSAGE_MAX + 64] = "";
    if (!k) {
      state = "no connector";
      errors++;
    } else if (!cp_channels_ready(chs, i)) {
      state = "config error"; /* counted by cp_channels_open */
    } else if (!login) {
      state = "ready";
    } else {
      struct cp_result res;
      int rc = cp_channels_login(chs, i, &res);
      if (rc == CP_ENOTFOUND) {
        state = "ready";
        snprintf(detail, sizeof detail, "(%s cannot check a login without posting)", k->name);
      } else if (rc < 0) {
        state = "error";
        snprintf(detail, sizeof detail, "%s", cp_strerror(rc));
        errors++;
      } else if (res.outcome == CP_OUTCOME_OK) {
        state = "authenticated";
        snprintf(detail, sizeof detail, "%s", res.message);
      } else {
        state = res.outcome == CP_OUTCOME_AUTH ? "login refused" : "login failed";
        snprintf(detail, sizeof detail, "%s: %s", cp_outcome_name(res.outcome), res.message);
        errors++;
      }
    }
    printf("  %-14s %-10s %-14s %s\n", cc->name, cc->type, state, detail);
  }
  cp_channels_close(chs);
  cp_config_free(cfg);
  return errors ? 1 : 0;
}
