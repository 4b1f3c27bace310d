/* Connector registry and host-side helpers of the connector ABI. See connector_registry.h. */
#include "connector_registry.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "calpost/err.h"
#include "http.h"

/* Built-ins register statically: each connector's CMakeLists.txt defines CP_BUILTIN_<NAME> on
 * calpost_core when its option is on. A static library would drop unreferenced objects, so the
 * list below is what pulls them into the binary. */
static const struct cp_connector *const builtins[] = {
#ifdef CP_BUILTIN_OUTBOX
    &cp_connector_outbox,
#endif
#ifdef CP_BUILTIN_WEBHOOK
    &cp_connector_webhook,
#endif
#ifdef CP_BUILTIN_MASTODON
    &cp_connector_mastodon,
#endif
#ifdef CP_BUILTIN_BLUESKY
    &cp_connector_bluesky,
#endif
#ifdef CP_BUILTIN_X
    &cp_connector_x,
#endif
#ifdef CP_BUILTIN_LINKEDIN
    &cp_connector_linkedin,
#endif
#ifdef CP_BUILTIN_FACEBOOK
    &cp_connector_facebook,
#endif
#ifdef CP_BUILTIN_TELEGRAM
    &cp_connector_telegram,
#endif
#ifdef CP_BUILTIN_DISCORD
    &cp_connector_discord,
#endif
#ifdef CP_BUILTIN_SLACK
    &cp_connector_slack,
#endif
#ifdef CP_BUILTIN_MATRIX
    &cp_connector_matrix,
#endif
#ifdef CP_BUILTIN_WORDPRESS
    &cp_connector_wordpress,
#endif
#ifdef CP_BUILTIN_EMAIL
    &cp_connector_email,
#endif
    NULL,
};

struct entry {
  const struct cp_connector *c;
  void *dl; /* NULL for built-ins */
};

struct cp_connector_registry {
  struct entry *v;
  size_t n, cap;
};

int cp_connector_registry_new(struct cp_connector_registry **out) {
  struct cp_connector_registry *reg = calloc(1, sizeof *reg);
  char err[256];

  if (!reg)
    return CP_ENOMEM;
  for (size_t i = 0; builtins[i]; i++) {
    int rc = cp_connector_registry_add(reg, builtins[i], err, sizeof err);
    if (rc) {
      cp_connector_registry_free(reg);
      return rc;
    }
  }
  *out = reg;
  return 0;
}

void cp_connector_registry_free(struct cp_connector_registry *reg) {
  if (!reg)
    return;
  for (size_t i = 0; i < reg->n; i++)
    if (reg->v[i].dl)
      dlclose(reg->v[i].dl);
  free(reg->v);
  free(reg);
}

static bool valid_type_name(const char *s) {
  if (!s || !*s || strlen(s) > 32)
    return false;
  for (; *s; s++)
    if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '_' && *s != '-')
      return false;
  return true;
}

static int add(struct cp_connector_registry *reg, const struct cp_connector *c, void *dl,
               const char *origin, char *err, size_t errlen) {
  /* abi_version is first in every version of the struct, so reading it is always safe; nothing
   * else is read from a module of another version. */
  if (c->abi_version != CP_CONNECTOR_ABI_VERSION) {
    snprintf(err, errlen,
             "%s: connector ABI version %d, but this calpost (%s) loads only version %d: rebuild "
             "the connector against this calpost's include/calpost/connector.h",
             origin, c->abi_version, CALPOST_VERSION, CP_CONNECTOR_ABI_VERSION);
    return CP_EABI;
  }
  if (!valid_type_name(c->name)) {
    snprintf(err, errlen, "%s: connector name must be 1-32 of a-z, 0-9, '_' and '-'", origin);
    return CP_EINVAL;
  }
  if (!c->init || !c->publish) {
    snprintf(err, errlen, "%s: connector \"%s\" lacks the %s callback", origin, c->name,
             c->init ? "publish" : "init");
    return CP_EINVAL;
  }
  if (cp_connector_registry_find(reg, c->name)) {
    snprintf(err, errlen, "%s: a connector named \"%s\" is already registered", origin, c->name);
    return CP_EEXISTS;
  }
  if (reg->n == reg->cap) {
    size_t cap = reg->cap ? reg->cap * 2 : 8;
    struct entry *nv = realloc(reg->v, cap * sizeof *nv);
    if (!nv) {
      snprintf(err, errlen, "%s: out of memory", origin);
      return CP_ENOMEM;
    }
    reg->v = nv;
    reg->cap = cap;
  }
  reg->v[reg->n].c = c;
  reg->v[reg->n].dl = dl;
  reg->n++;
  return 0;
}

int cp_connector_registry_add(struct cp_connector_registry *reg, const struct cp_connector *c,
                              char *err, size_t errlen) {
  return add(reg, c, NULL, "built-in connector", err, errlen);
}

int cp_connector_registry_load(struct cp_connector_registry *reg, const char *path,
                               const struct cp_connector **out, char *err, size_t errlen) {
  void *dl;
  const struct cp_connector *c;
  int rc;

  dlerror();
  dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    const char *why = dlerror();
    snprintf(err, errlen, "%s: cannot load connector module: %s", path, why ? why : "?");
    return CP_ENOTFOUND;
  }
  c = dlsym(dl, CP_CONNECTOR_SYMBOL);
  if (!c) {
    snprintf(err, errlen, "%s: no symbol %s: not a calpost connector module", path,
             CP_CONNECTOR_SYMBOL);
    dlclose(dl);
    return CP_ENOTFOUND;
  }
  rc = add(reg, c, dl, path, err, errlen);
  if (rc) {
    dlclose(dl);
    return rc;
  }
  if (out)
    *out = c;
  return 0;
}

const struct cp_connector *cp_connector_registry_find(const struct cp_connector_registry *reg,
                                                      const char *name) {
  for (size_t i = 0; i < reg->n; i++)
    if (!strcmp(reg->v[i].c->name, name))
      return reg->v[i].c;
  return NULL;
}

const struct cp_connector *cp_connector_registry_at(const struct cp_connector_registry *reg,
                                                    size_t i) {
  return i < reg->n ? reg->v[i].c : NULL;
}

/* ---- results -------------------------------------------------------------------------------- */

const char *cp_outcome_name(enum cp_outcome o) {
  switch (o) {
    case CP_OUTCOME_OK:
      return "OK";
    case CP_OUTCOME_RETRY:
      return "RETRY";
    case CP_OUTCOME_RATE_LIMITED:
      return "RATE_LIMITED";
    case CP_OUTCOME_AUTH:
      return "AUTH";
    case CP_OUTCOME_PERMANENT:
      return "PERMANENT";
    case CP_OUTCOME_UNKNOWN:
      return "UNKNOWN";
  }
  return "?";
}

enum cp_outcome cp_connector_default_outcome(const struct cp_http_resp *resp) {
  long s = resp->status;

  /* A status means the server took the request and answered: it decides, even if reading the
   * rest of the answer failed (a body over the cap does not undo a 201). */
  if (s >= 200 && s < 300)
    return CP_OUTCOME_OK;
  if (s == 408 || (s >= 500 && s < 600))
    return CP_OUTCOME_RETRY;
  if (s == 429)
    return CP_OUTCOME_RATE_LIMITED;
  if (s == 401 || s == 403)
    return CP_OUTCOME_AUTH;
  if (s >= 100) /* other 4xx; 3xx when redirects are off: the URL needs fixing; 1xx, 6xx junk */
    return CP_OUTCOME_PERMANENT;
  if (resp->err == 0)
    return CP_OUTCOME_PERMANENT; /* no status and no error: not HTTP, should not happen */
  return resp->sent ? CP_OUTCOME_UNKNOWN : CP_OUTCOME_RETRY;
}

int64_t cp_connector_retry_after(const char *value, int64_t now_ms) {
  const char *p = value;
  char *end;

  while (*p == ' ' || *p == '\t')
    p++;
  if (isdigit((unsigned char)*p)) {
    errno = 0;
    unsigned long long secs = strtoull(p, &end, 10);
    while (*end == ' ' || *end == '\t')
      end++;
    if (*end || errno)
      return 0;
    if (secs > 366ull * 24 * 3600) /* nonsense; a year is the most we believe */
      secs = 366ull * 24 * 3600;
    return now_ms + (int64_t)secs * 1000;
  }
  time_t t = curl_getdate(p, NULL);
  if (t == (time_t)-1 || t < 0 || (int64_t)t > INT64_MAX / 1000)
    return 0; /* not a date any clock reaches */
  int64_t at = (int64_t)t * 1000;
  return at > now_ms ? at : now_ms;
}

void cp_connector_copy_text(char *dst, size_t size, const char *src, size_t len) {
  size_t n = 0;

  if (!size)
    return;
  for (size_t i = 0; i < len && n + 1 < size; i++) {
    unsigned char ch = (unsigned char)src[i];
    dst[n++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
  }
  /* If we cut inside a multi-byte character, drop its lead and continuation bytes. */
  if (n < len && n > 0) {
    size_t k = n;
    while (k > 0 && ((unsigned char)dst[k - 1] & 0xC0) == 0x80)
      k--;
    if (k > 0 && ((unsigned char)dst[k - 1] & 0x80)) {
      unsigned char lead = (unsigned char)dst[k - 1];
      size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
      if (n - (k - 1) < need)
        n = k - 1;
    }
  }
  dst[n] = '\0';
}

/* The most useful line a server sent: a JSON error field, else the body's first line. */
static void server_message(const struct cp_http_resp *resp, char *dst, size_t size) {
  static const char *const fields[] = {
      "error_description", "message", "error", "detail", "title", NULL};
  const char *msg = NULL;
  size_t len = 0;
  json_t *root = NULL;

  dst[0] = '\0';
  if (resp->body_len) {
    root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *obj = root;
    for (int depth = 0; json_is_object(obj) && !msg && depth < 2; depth++) {
      json_t *next = NULL;
      for (size_t i = 0; fields[i] && !msg; i++) {
        json_t *v = json_object_get(obj, fields[i]);
        if (json_is_string(v)) {
          msg = json_string_value(v);
          len = json_string_length(v);
        } else if (json_is_object(v) && !next) {
          next = v; /* {"error": {"message": ...}} */
        }
      }
      obj = next;
    }
    if (!msg && !root) {
      const char *b = resp->body;
      while (*b == ' ' || *b == '\r' || *b == '\n' || *b == '\t')
        b++;
      if (strncasecmp(b, "<!doctype", 9) && strncasecmp(b, "<html", 5)) {
        msg = b;
        len = strcspn(b, "\r\n");
      }
    }
  }
  if (msg && len)
    cp_connector_copy_text(dst, size, msg, len);
  json_decref(root);
}

void cp_connector_http_result(const struct cp_connector *c, void *instance,
                              const struct cp_http_resp *resp, int64_t now_ms,
                              struct cp_result *res) {
  char smsg[CP_RESULT_MESSAGE_MAX];
  char full[2 * CP_RESULT_MESSAGE_MAX + CURL_ERROR_SIZE];
  enum cp_outcome dflt = cp_connector_default_outcome(resp);

  memset(res, 0, sizeof *res);
  res->http_status = resp->status;
  res->err = resp->err;
  res->outcome = c && c->classify ? c->classify(instance, resp, dflt) : dflt;

  full[0] = '\0';
  if (resp->status) {
    server_message(resp, smsg, sizeof smsg);
    if (res->outcome == CP_OUTCOME_OK && resp->err)
      snprintf(full, sizeof full, "HTTP %ld, but reading the response failed: %s", resp->status,
               cp_strerror(resp->err));
    else if (res->outcome != CP_OUTCOME_OK)
      snprintf(full, sizeof full, "HTTP %ld%s%s", resp->status, smsg[0] ? ": " : "", smsg);
  } else if (resp->err) {
    snprintf(full, sizeof full, "%s%s%s", cp_strerror(resp->err), resp->errmsg[0] ? ": " : "",
             resp->errmsg);
  }
  /* Cut at a character boundary, not inside one. */
  cp_connector_copy_text(res->message, sizeof res->message, full, strlen(full));

  if (res->outcome != CP_OUTCOME_OK) {
    const char *ra = cp_http_header(resp, "Retry-After");
    if (ra)
      res->retry_at_ms = cp_connector_retry_after(ra, now_ms);
  }
}

/* ---- secrets and keys ----------------------------------------------------------------------- */

#define SECRET_FILE_MAX 65536

static int read_secret_file(const struct cp_connector_conf *conf, const char *key, const char *path,
                            int line, char **out, char *err, size_t errlen) {
  char full[4096];
  const char *slash = conf->file ? strrchr(conf->file, '/') : NULL;

  if (path[0] != '/' && slash)
    snprintf(full, sizeof full, "%.*s/%s", (int)(slash - conf->file), conf->file, path);
  else
    snprintf(full, sizeof full, "%s", path);

  FILE *f = fopen(full, "re");
  if (!f) {
    snprintf(err, errlen, "%s:%d: %s_file: cannot open %s: %s", conf->file, line, key, full,
             strerror(errno));
    return CP_ECONFIG;
  }
  /* As ssh does with private keys: a secret that others can read is no longer a secret. */
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077)) {
    snprintf(err, errlen,
             "%s:%d: %s_file: %s can be read by other users (mode %04o); refusing it: run "
             "`chmod 600 %s`",
             conf->file, line, key, full, (unsigned)(st.st_mode & 07777), full);
    fclose(f);
    return CP_ECONFIG;
  }
  char *buf = malloc(SECRET_FILE_MAX + 1);
  if (!buf) {
    fclose(f);
    return CP_ENOMEM;
  }
  size_t n = fread(buf, 1, SECRET_FILE_MAX + 1, f);
  int rerr = ferror(f);
  fclose(f);
  if (rerr || n > SECRET_FILE_MAX) {
    snprintf(err, errlen, "%s:%d: %s_file: %s is %s", conf->file, line, key, full,
             rerr ? "unreadable" : "over 64 KiB: is it the right file?");
    explicit_bzero(buf, SECRET_FILE_MAX + 1);
    free(buf);
    return CP_ECONFIG;
  }
  buf[n] = '\0';
  buf[strcspn(buf, "\r\n")] = '\0';
  if (!buf[0]) {
    snprintf(err, errlen, "%s:%d: %s_file: %s is empty (the secret is its first line)", conf->file,
             line, key, full);
    free(buf);
    return CP_ECONFIG;
  }
  char *s = strdup(buf);
  explicit_bzero(buf, SECRET_FILE_MAX + 1);
  free(buf);
  if (!s)
    return CP_ENOMEM;
  *out = s;
  return 0;
}

int cp_connector_secret_read(const struct cp_connector_conf *conf, const char *key, char **out,
                             char *err, size_t errlen) {
  char kfile[64], kenv[64];
  int lfile = conf->line, lenv = conf->line;

  snprintf(kfile, sizeof kfile, "%s_file", key);
  snprintf(kenv, sizeof kenv, "%s_env", key);
  const char *file = conf->get(conf, kfile, &lfile);
  const char *env = conf->get(conf, kenv, &lenv);

  if (!file && !env)
    return CP_ENOTFOUND;
  if (file && env) {
    snprintf(err, errlen, "%s:%d: [channel %s] sets both %s and %s: keep one", conf->file, lenv,
             conf->name, kfile, kenv);
    return CP_ECONFIG;
  }
  if (file)
    return read_secret_file(conf, key, file, lfile, out, err, errlen);
  const char *v = getenv(env);
  if (!v || !*v) {
    snprintf(err, errlen, "%s:%d: %s: environment variable %s is %s", conf->file, lenv, kenv, env,
             v ? "empty" : "not set");
    return CP_ECONFIG;
  }
  char *s = strdup(v);
  if (!s)
    return CP_ENOMEM;
  *out = s;
  return 0;
}

void cp_connector_check_keys(const struct cp_host *host, const struct cp_connector_conf *conf,
                             const char *const *known) {
  static const char *const host_keys[] = {"type",        "module",      "rate",       "grace",
                                          "notify_only", "max_chars",   "utm",        "utm_source",
                                          "utm_medium",  "utm_domains", "engagement", NULL};
  char list[256] = "";
  for (size_t j = 0; known[j]; j++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "", known[j]);
  for (size_t i = 0;; i++) {
    const char *k = conf->key_at(conf, i);
    if (!k)
      break;
    bool found = false;
    for (size_t j = 0; known[j] && !found; j++)
      found = !strcmp(k, known[j]);
    for (size_t j = 0; host_keys[j] && !found; j++)
      found = !strcmp(k, host_keys[j]);
    if (!found)
      host->log(host, CP_LOG_WARN, "%s:%d: [channel %s] unknown key '%s' ignored (%s knows: %s)",
                conf->file, conf->line, conf->name, k, conf->type, list);
  }
}

void cp_connector_secret_free(char *secret) {
  if (!secret)
    return;
  explicit_bzero(secret, strlen(secret));
  free(secret);
}

int cp_connector_idempotency_key(const struct cp_post *post, char *buf, size_t size) {
  int n = snprintf(buf, size, "calpost-%s", post->id);

  if (n < 0 || (size_t)n >= size) {
    if (size)
      buf[0] = '\0';
    return CP_ELIMIT;
  }
  return 0;
}

/* ---- the post payload ----------------------------------------------------------------------- */

static int put(json_t *o, const char *key, json_t *v) {
  /* json_object_set_new steals v, and fails (freeing nothing else) when v is NULL. */
  return json_object_set_new(o, key, v) ? -1 : 0;
}

static json_t *str_or_null(const char *s) {
  return s ? json_string(s) : json_null();
}

static void rfc3339(int64_t due, int offset, char *buf, size_t size) {
  time_t t = (time_t)(due + offset);
  struct tm tm;

  gmtime_r(&t, &tm);
  size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
  if (offset == 0) {
    snprintf(buf + n, size - n, "Z");
  } else {
    int a = offset < 0 ? -offset : offset;
    snprintf(buf + n, size - n, "%c%02d:%02d", offset < 0 ? '-' : '+', a / 3600, a / 60 % 60);
  }
}

json_t *cp_connector_post_json(const struct cp_post *post) {
  char due[40];
  json_t *o = json_object();
  json_t *media = json_array();
  int bad = 0;

  if (!o || !media) {
    json_decref(o);
    json_decref(media);
    return NULL;
  }
  rfc3339(post->due, post->utc_offset, due, sizeof due);
  bad |= put(o, "id", json_string(post->id));
  bad |= put(o, "channel", str_or_null(post->channel));
  bad |= put(o, "calendar", str_or_null(post->calendar));
  bad |= put(o, "uid", str_or_null(post->uid));
  bad |= put(o, "occurrence", str_or_null(post->occurrence));
  bad |= put(o, "due", json_string(due));
  bad |= put(o, "due_unix", json_integer(post->due));
  bad |= put(o, "tzid", str_or_null(post->tzid));
  bad |= put(o, "all_day", json_boolean(post->all_day));
  bad |= put(o, "title", json_string(post->title ? post->title : ""));
  bad |= put(o, "text", json_string(post->text ? post->text : ""));
  for (size_t i = 0; i < post->n_media; i++) {
    json_t *m = json_object();
    if (!m) {
      bad = 1;
      break;
    }
    bad |= put(m, "src", str_or_null(post->media[i].src));
    bad |= put(m, "alt", str_or_null(post->media[i].alt));
    if (json_array_append_new(media, m))
      bad = 1;
  }
  bad |= put(o, "media", media);
  bad |= put(o, "thread", json_boolean(post->thread));
  bad |= put(o, "numbered", json_boolean(post->numbered));
  bad |= put(o, "campaign", str_or_null(post->campaign));
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}
