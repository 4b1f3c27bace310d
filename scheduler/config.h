/* The configuration file: INI (parsed by inih), with comments. See config/calpost.ini. */
#ifndef CALPOST_CONFIG_H
#define CALPOST_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calpost/connector.h"

struct cp_kv {
  char *key;
  char *value;
  int line;
};

/* A [kind name] section such as [channel mastodon]; [calpost] has kind "calpost" and name "". */
struct cp_section {
  char *kind;
  char *name;
  int line;
  struct cp_kv *kv;
  size_t n_kv;
};

struct cp_calendar_conf {
  char *name;
  char **sources; /* files, folders or URLs */
  size_t n_sources;
  char **channels; /* default channels of this calendar */
  size_t n_channels;
  char *timezone; /* NULL: the global one */
};

struct cp_channel_conf {
  char *name;
  char *type;
  size_t max_chars;                 /* 0: the platform default */
  const struct cp_section *section; /* all keys, for the connector */
};

struct cp_config {
  char *path;     /* NULL when built from defaults */
  char *base_dir; /* relative paths in the file are relative to this folder */
  char *state_dir;
  char *timezone;        /* the plan zone for floating times and all-day events */
  int all_day_minutes;   /* minutes after local midnight at which all-day events publish */
  int64_t max_file_size; /* bytes */
  int max_occurrences;   /* per event within check_days */
  int window_days;       /* default --days of `plan` */
  int check_days;        /* horizon of `check` */
  struct cp_section *sections;
  size_t n_sections;
  struct cp_calendar_conf *calendars;
  size_t n_calendars;
  struct cp_channel_conf *channels;
  size_t n_channels;
};

/* Loads the configuration at path. On success returns 0 and a new config in *out. On failure
 * returns a negative CP_E* code and writes a message naming the file, line and key into
 * err (errlen bytes). */
int cp_config_load(const char *path, struct cp_config **out, char *err, size_t errlen);

/* A configuration with the built-in defaults and no file: channels are the known channel types
 * by their own names, the default channel is `outbox`. Returns NULL on ENOMEM. */
struct cp_config *cp_config_defaults(void);

void cp_config_free(struct cp_config *cfg);

/* Looks up a channel by name; NULL if unknown. */
const struct cp_channel_conf *cp_config_channel(const struct cp_config *cfg, const char *name);

/* The value of key in section, or NULL. */
const char *cp_section_get(const struct cp_section *s, const char *key);

/* Known channel types (NULL-terminated). */
extern const char *const cp_channel_types[];
bool cp_channel_type_known(const char *type);

/* The connector's view of channel cc's section (struct cp_connector_conf): valid as long as
 * cfg. Messages name cfg's file (or "" for the built-in defaults). */
void cp_channel_connector_conf(const struct cp_config *cfg, const struct cp_channel_conf *cc,
                               struct cp_connector_conf *out);

#endif
