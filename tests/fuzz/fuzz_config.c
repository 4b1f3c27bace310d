/* Fuzz target "config": cp_config_load on a file holding the input, then the lookups the daemon
 * and `calpost check` make on the result.
 *
 * Contracts checked: a failure leaves *out NULL and explains itself in err (the user sees only
 * that message); a success has a plan zone, a state folder, at least one calendar with a source,
 * and every channel findable by its name. */
#include <stdint.h>
#include <string.h>

#include "calpost/err.h"
#include "config.h"
#include "fuzz_util.h"

static char path[600];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fuzz_path(path, sizeof path, "calpost.ini");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_write_file(path, data, size);
  struct cp_config *cfg = (struct cp_config *)1;
  char err[1024] = "";
  int rc = cp_config_load(path, &cfg, err, sizeof err);
  if (rc < 0) {
    if (cfg)
      fuzz_fail("cp_config_load failed (%s) but *out is not NULL", cp_err_name(rc));
    if (rc != CP_ENOMEM && !err[0])
      fuzz_fail("cp_config_load failed (%s) without a message", cp_err_name(rc));
    if (!memchr(err, '\0', sizeof err))
      fuzz_fail("cp_config_load: the message is not NUL-terminated");
    return 0;
  }
  if (rc != 0 || !cfg)
    fuzz_fail("cp_config_load returned %d and %p", rc, (void *)cfg);
  if (!cfg->timezone || !cfg->state_dir || !cfg->base_dir || !cfg->path)
    fuzz_fail("config: timezone, state_dir, base_dir or path is NULL");
  if (!cfg->n_calendars)
    fuzz_fail("config: loaded without a calendar");
  for (size_t i = 0; i < cfg->n_calendars; i++) {
    const struct cp_calendar_conf *c = &cfg->calendars[i];
    if (!c->name || !c->n_sources)
      fuzz_fail("config: calendar %zu has no name or no source", i);
    for (size_t k = 0; k < c->n_sources; k++)
      if (!c->sources[k])
        fuzz_fail("config: calendar %s: source %zu is NULL", c->name, k);
    for (size_t k = 0; k < c->n_channels; k++)
      if (!c->channels[k])
        fuzz_fail("config: calendar %s: channel %zu is NULL", c->name, k);
  }
  for (size_t i = 0; i < cfg->n_channels; i++) {
    const struct cp_channel_conf *ch = &cfg->channels[i];
    if (!ch->name || !ch->type)
      fuzz_fail("config: channel %zu has no name or type", i);
    if (!cp_config_channel(cfg, ch->name))
      fuzz_fail("config: channel '%s' is not found by its name", ch->name);
    if (ch->section)
      for (size_t k = 0; k < ch->section->n_kv; k++)
        cp_section_get(ch->section, ch->section->kv[k].key);
  }
  for (size_t i = 0; i < cfg->n_sections; i++) {
    const struct cp_section *s = &cfg->sections[i];
    if (!s->kind || !s->name)
      fuzz_fail("config: section %zu has a NULL kind or name", i);
    for (size_t k = 0; k < s->n_kv; k++)
      if (!s->kv[k].key || !s->kv[k].value || cp_section_get(s, s->kv[k].key) == NULL)
        fuzz_fail("config: [%s %s] key %zu cannot be read back", s->kind, s->name, k);
  }
  cp_config_free(cfg);
  return 0;
}
