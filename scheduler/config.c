#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "calpost/err.h"

const char *const cp_channel_types[] = {"outbox",   "webhook",   "mastodon", "bluesky", "x",
                                        "linkedin", "facebook",  "telegram", "discord", "slack",
                                        "matrix",   "wordpress", "email",    NULL};

bool cp_channel_type_known(const char *type) {
  for (size_t i = 0; cp_channel_types[i]; i++)
    if (!strcmp(cp_channel_types[i], type))
      return true;
  return false;
}

struct parse_ctx {
  struct cp_config *cfg;
  FILE *f;
  int line;
  int rc;
  char *err;
  size_t errlen;
};

static char *reader(char *str, int num, void *stream) {
  struct parse_ctx *ctx = stream;
  char *r = fgets(str, num, ctx->f);
  if (r)
    ctx->line++;
  return r;
}

static struct cp_section *section_for(struct cp_config *cfg, const char *header, int line) {
  /* inih hands us the raw header text: split "kind name". */
  char kind[64] = "", name[192] = "";
  sscanf(header, "%63s %191[^\n]", kind, name);
  for (size_t i = 0; i < cfg->n_sections; i++) {
    struct cp_section *s = &cfg->sections[i];
    if (!strcmp(s->kind, kind) && !strcmp(s->name, name))
      return s;
  }
  struct cp_section *nv = realloc(cfg->sections, (cfg->n_sections + 1) * sizeof *nv);
  if (!nv)
    return NULL;
  cfg->sections = nv;
  struct cp_section *s = &nv[cfg->n_sections];
  memset(s, 0, sizeof *s);
  s->kind = strdup(kind);
  s->name = strdup(name);
  s->line = line;
  if (!s->kind || !s->name) {
    free(s->kind);
    free(s->name);
    return NULL;
  }
  cfg->n_sections++;
  return s;
}

static int handler(void *user, const char *section, const char *key, const char *value) {
  struct parse_ctx *ctx = user;
  if (!*section) {
    snprintf(ctx->err, ctx->errlen, "%s:%d: '%s' is outside any [section]", ctx->cfg->path,
             ctx->line, key);
    ctx->rc = CP_ECONFIG;
    return 0;
  }
  struct cp_section *s = section_for(ctx->cfg, section, ctx->line);
  if (!s)
    goto nomem;
  struct cp_kv *nv = realloc(s->kv, (s->n_kv + 1) * sizeof *nv);
  if (!nv)
    goto nomem;
  s->kv = nv;
  nv[s->n_kv].key = strdup(key);
  nv[s->n_kv].value = strdup(value);
  nv[s->n_kv].line = ctx->line;
  if (!nv[s->n_kv].key || !nv[s->n_kv].value) {
    free(nv[s->n_kv].key);
    free(nv[s->n_kv].value);
    goto nomem;
  }
  s->n_kv++;
  return 1;
nomem:
  ctx->rc = CP_ENOMEM;
  return 0;
}

const char *cp_section_get(const struct cp_section *s, const char *key) {
  const char *v = NULL;
  for (size_t i = 0; s && i < s->n_kv; i++)
    if (!strcmp(s->kv[i].key, key))
      v = s->kv[i].value; /* the last one wins */
  return v;
}

/* Splits "a, b c" into a list of lowercased names. */
static int split_list(const char *value, char ***out, size_t *n) {
  *out = NULL;
  *n = 0;
  const char *p = value;
  while (*p) {
    while (*p && (*p == ',' || isspace((unsigned char)*p)))
      p++;
    size_t len = strcspn(p, ", \t");
    if (!len)
      break;
    char **nv = realloc(*out, (*n + 1) * sizeof *nv);
    if (!nv)
      return CP_ENOMEM;
    *out = nv;
    char *item = strndup(p, len);
    if (!item)
      return CP_ENOMEM;
    for (char *c = item; *c; c++)
      *c = (char)tolower((unsigned char)*c);
    nv[(*n)++] = item;
    p += len;
  }
  return 0;
}

static int parse_size(const char *v, int64_t *out) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  if (errno || end == v || !(d >= 0) || d > 1e18) /* also refuses nan and inf */
    return CP_ECONFIG;
  while (*end == ' ')
    end++;
  double mul = 1;
  switch (toupper((unsigned char)*end)) {
    case 'K':
      mul = 1024;
      end++;
      break;
    case 'M':
      mul = 1024.0 * 1024;
      end++;
      break;
    case 'G':
      mul = 1024.0 * 1024 * 1024;
      end++;
      break;
    default:
      break;
  }
  if (toupper((unsigned char)*end) == 'B' || toupper((unsigned char)*end) == 'I')
    end += strspn(end, "iIbB");
  if (*end || d * mul > 9.0e18)
    return CP_ECONFIG;
  *out = (int64_t)(d * mul);
  return 0;
}

static int parse_int(const char *v, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long l = strtol(v, &end, 10);
  if (errno || end == v || *end || l < lo || l > hi)
    return CP_ECONFIG;
  *out = (int)l;
  return 0;
}

static int parse_hhmm(const char *v, int *minutes) {
  int h, m;
  char tail;
  if (sscanf(v, "%d:%d%c", &h, &m, &tail) != 2 || h < 0 || h > 23 || m < 0 || m > 59)
    return CP_ECONFIG;
  *minutes = h * 60 + m;
  return 0;
}

static void set_defaults(struct cp_config *cfg) {
  cfg->all_day_minutes = 9 * 60;
  cfg->max_file_size = 32 * 1024 * 1024;
  cfg->max_occurrences = 1000;
  cfg->window_days = 30;
  cfg->check_days = 365;
}

#define BAD(kv, ...)                                                                               \
  do {                                                                                             \
    int n_ = snprintf(err, errlen, "%s:%d: ", cfg->path, (kv)->line);                              \
    if (n_ >= 0 && (size_t)n_ < errlen)                                                            \
      snprintf(err + n_, errlen - (size_t)n_, __VA_ARGS__);                                        \
    return CP_ECONFIG;                                                                             \
  } while (0)

static char *resolve_path(const struct cp_config *cfg, const char *v) {
  if (v[0] == '/' || strstr(v, "://") || !cfg->base_dir)
    return strdup(v);
  size_t n = strlen(cfg->base_dir) + strlen(v) + 2;
  char *p = malloc(n);
  if (p)
    snprintf(p, n, "%s/%s", cfg->base_dir, v);
  return p;
}

static int interpret(struct cp_config *cfg, char *err, size_t errlen) {
  for (size_t i = 0; i < cfg->n_sections; i++) {
    struct cp_section *s = &cfg->sections[i];
    if (!strcmp(s->kind, "calpost")) {
      for (size_t k = 0; k < s->n_kv; k++) {
        struct cp_kv *kv = &s->kv[k];
        if (!strcmp(kv->key, "state_dir")) {
          free(cfg->state_dir);
          if (!(cfg->state_dir = resolve_path(cfg, kv->value)))
            return CP_ENOMEM;
        } else if (!strcmp(kv->key, "timezone")) {
          free(cfg->timezone);
          if (!(cfg->timezone = strdup(kv->value)))
            return CP_ENOMEM;
        } else if (!strcmp(kv->key, "all_day_time")) {
          if (parse_hhmm(kv->value, &cfg->all_day_minutes))
            BAD(kv, "all_day_time: '%s' is not a time of day (HH:MM)", kv->value);
        } else if (!strcmp(kv->key, "max_file_size")) {
          if (parse_size(kv->value, &cfg->max_file_size))
            BAD(kv, "max_file_size: '%s' is not a size (for example 32M)", kv->value);
        } else if (!strcmp(kv->key, "max_occurrences")) {
          if (parse_int(kv->value, 1, 10000000, &cfg->max_occurrences))
            BAD(kv, "max_occurrences: '%s' is not a number from 1 to 10000000", kv->value);
        } else if (!strcmp(kv->key, "window_days")) {
          if (parse_int(kv->value, 1, 3660, &cfg->window_days))
            BAD(kv, "window_days: '%s' is not a number of days from 1 to 3660", kv->value);
        } else if (!strcmp(kv->key, "check_days")) {
          if (parse_int(kv->value, 1, 3660, &cfg->check_days))
            BAD(kv, "check_days: '%s' is not a number of days from 1 to 3660", kv->value);
        }
        /* Other [calpost] keys belong to the daemon; it validates them itself. */
      }
    } else if (!strcmp(s->kind, "calendar")) {
      if (!*s->name)
        BAD(s, "[calendar] needs a name, for example [calendar editorial]");
      struct cp_calendar_conf *nv = realloc(cfg->calendars, (cfg->n_calendars + 1) * sizeof *nv);
      if (!nv)
        return CP_ENOMEM;
      cfg->calendars = nv;
      struct cp_calendar_conf *c = &nv[cfg->n_calendars++];
      memset(c, 0, sizeof *c);
      if (!(c->name = strdup(s->name)))
        return CP_ENOMEM;
      for (size_t k = 0; k < s->n_kv; k++) {
        struct cp_kv *kv = &s->kv[k];
        if (!strcmp(kv->key, "source")) {
          char **sv = realloc(c->sources, (c->n_sources + 1) * sizeof *sv);
          if (!sv)
            return CP_ENOMEM;
          c->sources = sv;
          if (!(sv[c->n_sources] = resolve_path(cfg, kv->value)))
            return CP_ENOMEM;
          c->n_sources++;
        } else if (!strcmp(kv->key, "channels")) {
          for (size_t j = 0; j < c->n_channels; j++)
            free(c->channels[j]);
          free(c->channels);
          if (split_list(kv->value, &c->channels, &c->n_channels))
            return CP_ENOMEM;
        } else if (!strcmp(kv->key, "timezone")) {
          free(c->timezone);
          if (!(c->timezone = strdup(kv->value)))
            return CP_ENOMEM;
        }
      }
      if (!c->n_sources)
        BAD(s, "[calendar %s] has no 'source = FILE, FOLDER or URL'", s->name);
    } else if (!strcmp(s->kind, "channel")) {
      if (!*s->name)
        BAD(s, "[channel] needs a name, for example [channel mastodon]");
      const char *type = cp_section_get(s, "type");
      if (!type)
        BAD(s,
            "[channel %s] has no 'type = ...' (one of: outbox, webhook, mastodon, bluesky, "
            "x, linkedin, facebook, telegram, discord, slack, matrix, wordpress, email)",
            s->name);
      struct cp_channel_conf *nv = realloc(cfg->channels, (cfg->n_channels + 1) * sizeof *nv);
      if (!nv)
        return CP_ENOMEM;
      cfg->channels = nv;
      struct cp_channel_conf *ch = &nv[cfg->n_channels++];
      memset(ch, 0, sizeof *ch);
      ch->name = strdup(s->name);
      ch->type = strdup(type);
      ch->section = s;
      if (!ch->name || !ch->type)
        return CP_ENOMEM;
      for (char *c = ch->name; *c; c++)
        *c = (char)tolower((unsigned char)*c);
      const char *mc = cp_section_get(s, "max_chars");
      int v;
      if (mc) {
        if (parse_int(mc, 1, 1000000, &v))
          BAD(s, "[channel %s] max_chars: '%s' is not a number", s->name, mc);
        ch->max_chars = (size_t)v;
      }
    } else if (strcmp(s->kind, "notify") && strcmp(s->kind, "control")) {
      BAD(s, "unknown section [%s%s%s] (expected [calpost], [calendar NAME] or [channel NAME])",
          s->kind, *s->name ? " " : "", s->name);
    }
  }
  if (!cfg->n_calendars) {
    int n_ = snprintf(err, errlen, "%s: no [calendar NAME] section with a 'source'", cfg->path);
    (void)n_;
    return CP_ECONFIG;
  }
  return 0;
}

int cp_config_load(const char *path, struct cp_config **out, char *err, size_t errlen) {
  *out = NULL;
  struct cp_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg)
    return CP_ENOMEM;
  set_defaults(cfg);
  cfg->path = strdup(path);
  const char *slash = strrchr(path, '/');
  cfg->base_dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
  if (!cfg->path || !cfg->base_dir) {
    cp_config_free(cfg);
    return CP_ENOMEM;
  }
  struct parse_ctx ctx = {.cfg = cfg, .err = err, .errlen = errlen};
  ctx.f = fopen(path, "r");
  if (!ctx.f) {
    int e = -errno;
    snprintf(err, errlen, "%s: cannot open the configuration: %s", path, strerror(-e));
    cp_config_free(cfg);
    return e;
  }
  int rc = ini_parse_stream(reader, &ctx, handler, &ctx);
  fclose(ctx.f);
  if (ctx.rc < 0) {
    rc = ctx.rc;
    if (rc == CP_ENOMEM)
      snprintf(err, errlen, "%s: out of memory", path);
  } else if (rc > 0) {
    snprintf(err, errlen, "%s:%d: syntax error (expected 'key = value' or '[section]')", path, rc);
    rc = CP_ECONFIG;
  } else {
    rc = interpret(cfg, err, errlen);
  }
  if (rc == 0 && !cfg->timezone && !(cfg->timezone = strdup("UTC")))
    rc = CP_ENOMEM;
  if (rc == 0 && !cfg->state_dir && !(cfg->state_dir = resolve_path(cfg, "state")))
    rc = CP_ENOMEM;
  if (rc < 0) {
    cp_config_free(cfg);
    return rc;
  }
  *out = cfg;
  return 0;
}

struct cp_config *cp_config_defaults(void) {
  struct cp_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg)
    return NULL;
  set_defaults(cfg);
  cfg->timezone = strdup("UTC");
  cfg->state_dir = strdup("state");
  cfg->base_dir = strdup(".");
  size_t n = 0;
  while (cp_channel_types[n])
    n++;
  cfg->channels = calloc(n, sizeof *cfg->channels);
  cfg->calendars = calloc(1, sizeof *cfg->calendars);
  if (!cfg->timezone || !cfg->state_dir || !cfg->base_dir || !cfg->channels || !cfg->calendars)
    goto fail;
  for (size_t i = 0; i < n; i++) {
    cfg->channels[i].name = strdup(cp_channel_types[i]);
    cfg->channels[i].type = strdup(cp_channel_types[i]);
    cfg->n_channels++;
    if (!cfg->channels[i].name || !cfg->channels[i].type)
      goto fail;
  }
  return cfg;
fail:
  cp_config_free(cfg);
  return NULL;
}

void cp_config_free(struct cp_config *cfg) {
  if (!cfg)
    return;
  for (size_t i = 0; i < cfg->n_sections; i++) {
    for (size_t k = 0; k < cfg->sections[i].n_kv; k++) {
      free(cfg->sections[i].kv[k].key);
      free(cfg->sections[i].kv[k].value);
    }
    free(cfg->sections[i].kv);
    free(cfg->sections[i].kind);
    free(cfg->sections[i].name);
  }
  free(cfg->sections);
  for (size_t i = 0; i < cfg->n_calendars; i++) {
    struct cp_calendar_conf *c = &cfg->calendars[i];
    free(c->name);
    for (size_t j = 0; j < c->n_sources; j++)
      free(c->sources[j]);
    free(c->sources);
    for (size_t j = 0; j < c->n_channels; j++)
      free(c->channels[j]);
    free(c->channels);
    free(c->timezone);
  }
  free(cfg->calendars);
  for (size_t i = 0; i < cfg->n_channels; i++) {
    free(cfg->channels[i].name);
    free(cfg->channels[i].type);
  }
  free(cfg->channels);
  free(cfg->path);
  free(cfg->base_dir);
  free(cfg->state_dir);
  free(cfg->timezone);
  free(cfg);
}

const struct cp_channel_conf *cp_config_channel(const struct cp_config *cfg, const char *name) {
  for (size_t i = 0; i < cfg->n_channels; i++)
    if (!strcasecmp(cfg->channels[i].name, name))
      return &cfg->channels[i];
  return NULL;
}

static const char *conf_get(const struct cp_connector_conf *conf, const char *key, int *line) {
  const struct cp_section *s = conf->data;
  const char *v = NULL;
  for (size_t i = 0; i < s->n_kv; i++)
    if (!strcmp(s->kv[i].key, key)) { /* the last one wins, as in cp_section_get */
      v = s->kv[i].value;
      if (line)
        *line = s->kv[i].line;
    }
  return v;
}

static const char *conf_key_at(const struct cp_connector_conf *conf, size_t i) {
  const struct cp_section *s = conf->data;
  return i < s->n_kv ? s->kv[i].key : NULL;
}

void cp_channel_connector_conf(const struct cp_config *cfg, const struct cp_channel_conf *cc,
                               struct cp_connector_conf *out) {
  *out = (struct cp_connector_conf){.type = cc->type,
                                    .name = cc->name,
                                    .file = cfg->path ? cfg->path : "",
                                    .line = cc->section->line,
                                    .get = conf_get,
                                    .key_at = conf_key_at,
                                    .data = cc->section};
}
