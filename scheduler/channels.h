/* The configured channels' connectors outside the daemon: for `calpost check` (validate every
 * post before it is due) and `calpost channels` (a dry login per channel). One private loop; a
 * log that goes to a FILE with secrets redacted. */
#ifndef CALPOST_CHANNELS_H
#define CALPOST_CHANNELS_H

#include <stdbool.h>
#include <stdio.h>

#include "calpost/connector.h"
#include "config.h"
#include "connector_registry.h"

struct cp_channels;

/* Creates an instance of every [channel] of cfg (none when cfg has no file: defaults). A channel
 * whose connector is missing or refuses its configuration is reported on log ("FILE:LINE: error:
 * ...") and counted in *errors; the others work. Returns 0, or CP_ENOMEM. */
int cp_channels_open(const struct cp_config *cfg, FILE *log, struct cp_channels **out,
                     size_t *errors);
void cp_channels_close(struct cp_channels *c);

const struct cp_connector_registry *cp_channels_registry(const struct cp_channels *c);
size_t cp_channels_count(const struct cp_channels *c);
const struct cp_channel_conf *cp_channels_conf(const struct cp_channels *c, size_t i);
/* The connector of channel i, or NULL if there is none (unknown type or module). */
const struct cp_connector *cp_channels_connector(const struct cp_channels *c, size_t i);
/* Whether channel i was set up (its init accepted the configuration). */
bool cp_channels_ready(const struct cp_channels *c, size_t i);
/* The index of channel name, or -1. */
long cp_channels_find(const struct cp_channels *c, const char *name);

/* Whether the post's channel has a ready connector with validate. */
bool cp_channels_validates(const struct cp_channels *c, const char *channel);
/* Runs the validate of post's channel: returns 0 (valid, or nothing to validate with) or
 * CP_EINVAL after reporting through diag. */
int cp_channels_validate(struct cp_channels *c, const struct cp_post *post, cp_diag_cb diag,
                         void *arg);
/* Whether some connector of the channels in names (n of them) reads post option key. */
bool cp_channels_reads_option(const struct cp_channels *c, const char *channel, const char *key);

/* A dry login of channel i (the connector's login_check): runs the loop until it completes and
 * fills *res. Returns 0, CP_ENOTFOUND if the connector has no login check, CP_EINVAL if the
 * channel is not ready. */
int cp_channels_login(struct cp_channels *c, size_t i, struct cp_result *res);

#endif
