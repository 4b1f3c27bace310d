/* Connector instances outside the daemon. See channels.h. */
#include "channels.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "calpost/err.h"
#include "http.h"
#include "media.h"

#define MAX_SECRETS 64

struct chan {
  struct cp_channels *c;
  const struct cp_channel_conf *cc;
  const struct cp_connector *conn;
  struct cp_connector_conf cconf;
  void *inst;
  bool ready;
};

struct cp_channels {
  struct cp_host host; /* first: host callbacks find us from it */
  uv_loop_t loop;
  struct cp_http *http;
  struct cp_connector_registry *reg;
  struct cp_media_opts media;
  const struct cp_config *cfg;
  FILE *log;
  struct chan *v;
  size_t n;
  struct chan *current; /* whose init or callback is running, for log prefixes */
  char *secrets[MAX_SECRETS];
  size_t n_secrets;
  bool done;
  struct cp_result res;
};

static struct cp_channels *of(const struct cp_host *h) {
  return (struct cp_channels *)h;
}

static int64_t wall_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int h_http_request(const struct cp_host *host, const struct cp_http_req *req, cp_http_cb cb,
                          void *data) {
  return cp_http_request(of(host)->http, req, cb, data);
}

/* Replaces every secret handed out by h_secret with "***" (the daemon's redact() does the same). */
static void redact(const struct cp_channels *c, char *line) {
  for (size_t i = 0; i < c->n_secrets; i++) {
    size_t sl = strlen(c->secrets[i]);
    for (char *p = sl ? strstr(line, c->secrets[i]) : NULL; p; p = strstr(p + 3, c->secrets[i])) {
      memmove(p + 3, p + sl, strlen(p + sl) + 1);
      memcpy(p, "***", 3);
    }
  }
}

static void h_complete(const struct cp_publish_req *req, const struct cp_result *res) {
  struct chan *ch = req->host_data;
  ch->c->res = *res;
  /* A server may quote the credentials it rejected: `calpost channels` prints this message. */
  redact(ch->c, ch->c->res.message);
  redact(ch->c, ch->c->res.remote_id);
  redact(ch->c, ch->c->res.remote_url);
  ch->c->done = true;
}

static void h_log(const struct cp_host *host, enum cp_log_level level, const char *fmt, ...) {
  struct cp_channels *c = of(host);
  char line[2048];
  va_list ap;
  if (level > CP_LOG_WARN)
    return; /* check and channels print problems, not progress */
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  redact(c, line);
  const char *name = c->current ? c->current->cc->name : "?";
  /* Connector messages name the file and line themselves when they are about the config. */
  fprintf(c->log, "%s: [channel %s] %s\n", level == CP_LOG_ERROR ? "error" : "warning", name, line);
}

static uint64_t h_now_ms(const struct cp_host *host) {
  return uv_now(&of(host)->loop);
}

static int64_t h_wall_ms(const struct cp_host *host) {
  return wall_now_ms();
}

static int h_secret(const struct cp_host *host, const struct cp_connector_conf *conf,
                    const char *key, char **out) {
  struct cp_channels *c = of(host);
  char err[512] = "";
  int rc = cp_connector_secret_read(conf, key, out, err, sizeof err);
  if (rc && rc != CP_ENOTFOUND)
    host->log(host, CP_LOG_ERROR, "%s", err);
  if (rc == 0 && c->n_secrets < MAX_SECRETS && **out)
    c->secrets[c->n_secrets++] = strdup(*out);
  return rc;
}

static int h_idempotency_key(const struct cp_host *host, const struct cp_post *post, char *buf,
                             size_t size) {
  return cp_connector_idempotency_key(post, buf, size);
}

static void h_http_result(const struct cp_publish_req *req, const struct cp_http_resp *resp,
                          struct cp_result *res) {
  struct chan *ch = req->host_data;
  cp_connector_http_result(ch->conn, ch->inst, resp, wall_now_ms(), res);
}

static int h_media_load(const struct cp_publish_req *req, const struct cp_media *media,
                        cp_media_cb cb, void *data) {
  struct chan *ch = req->host_data;
  return cp_media_load(&ch->c->loop, ch->c->http, &ch->c->media, media, cb, data);
}

static int h_save_progress(const struct cp_publish_req *req, const char *progress) {
  return 0; /* a login check publishes nothing */
}

int cp_channels_open(const struct cp_config *cfg, FILE *log, struct cp_channels **out,
                     size_t *errors) {
  struct cp_channels *c = calloc(1, sizeof *c);
  if (!c)
    return CP_ENOMEM;
  c->cfg = cfg;
  c->log = log;
  if (uv_loop_init(&c->loop) < 0) {
    free(c);
    return CP_ENOMEM;
  }
  if (cp_http_init(&c->loop, &c->http) < 0 || cp_connector_registry_new(&c->reg) < 0) {
    cp_channels_close(c);
    return CP_ENOMEM;
  }
  c->host = (struct cp_host){.size = sizeof c->host,
                             .version = CP_HOST_VERSION,
                             .loop = &c->loop,
                             .data = c,
                             .http_request = h_http_request,
                             .complete = h_complete,
                             .log = h_log,
                             .now_ms = h_now_ms,
                             .wall_ms = h_wall_ms,
                             .secret = h_secret,
                             .secret_free = cp_connector_secret_free,
                             .idempotency_key = h_idempotency_key,
                             .http_result = h_http_result,
                             .media_load = h_media_load,
                             .save_progress = h_save_progress};
  c->v = calloc(cfg->n_channels ? cfg->n_channels : 1, sizeof *c->v);
  if (!c->v) {
    cp_channels_close(c);
    return CP_ENOMEM;
  }
  const char *path = cfg->path ? cfg->path : "(defaults)";
  /* Without a config file the channels are only implied by plan names: nothing to set up. */
  for (size_t i = 0; cfg->path && i < cfg->n_channels; i++) {
    const struct cp_channel_conf *cc = &cfg->channels[i];
    struct chan *ch = &c->v[c->n++];
    ch->c = c;
    ch->cc = cc;
    const char *module = cc->section ? cp_section_get(cc->section, "module") : NULL;
    char err[512];
    if (module && cp_connector_registry_load(c->reg, module, &ch->conn, err, sizeof err) < 0) {
      fprintf(log, "%s:%d: error: [channel %s] module: %s\n", path, cc->section->line, cc->name,
              err);
      (*errors)++;
      continue;
    }
    if (!ch->conn)
      ch->conn = cp_connector_registry_find(c->reg, cc->type);
    if (!ch->conn) {
      fprintf(log, "%s:%d: error: [channel %s] type = %s: this build has no such connector\n", path,
              cc->section ? cc->section->line : 0, cc->name, cc->type);
      (*errors)++;
      continue;
    }
    if (!cc->section)
      continue; /* a channel implied by a plan without a config file: nothing to set up */
    cp_channel_connector_conf(cfg, cc, &ch->cconf);
    c->current = ch;
    if (ch->conn->init(&c->host, &ch->cconf, &ch->inst) < 0) {
      fprintf(log, "%s:%d: error: [channel %s] the %s connector refused its configuration\n", path,
              cc->section->line, cc->name, cc->type);
      (*errors)++;
    } else {
      ch->ready = true;
    }
    c->current = NULL;
  }
  *out = c;
  return 0;
}

static void http_closed(void *data) {
  *(bool *)data = true;
}

void cp_channels_close(struct cp_channels *c) {
  if (!c)
    return;
  for (size_t i = 0; i < c->n; i++)
    if (c->v[i].ready && c->v[i].conn->free)
      c->v[i].conn->free(c->v[i].inst);
  uv_run(&c->loop, UV_RUN_NOWAIT); /* handles the connectors closed */
  if (c->http) {
    bool closed = false;
    cp_http_close(c->http, http_closed, &closed);
    uv_run(&c->loop, UV_RUN_DEFAULT);
  }
  uv_loop_close(&c->loop);
  cp_connector_registry_free(c->reg);
  for (size_t i = 0; i < c->n_secrets; i++)
    cp_connector_secret_free(c->secrets[i]);
  free(c->v);
  free(c);
}

const struct cp_connector_registry *cp_channels_registry(const struct cp_channels *c) {
  return c->reg;
}

size_t cp_channels_count(const struct cp_channels *c) {
  return c->n;
}

const struct cp_channel_conf *cp_channels_conf(const struct cp_channels *c, size_t i) {
  return i < c->n ? c->v[i].cc : NULL;
}

const struct cp_connector *cp_channels_connector(const struct cp_channels *c, size_t i) {
  return i < c->n ? c->v[i].conn : NULL;
}

bool cp_channels_ready(const struct cp_channels *c, size_t i) {
  return i < c->n && c->v[i].ready;
}

long cp_channels_find(const struct cp_channels *c, const char *name) {
  for (size_t i = 0; i < c->n; i++)
    if (!strcmp(c->v[i].cc->name, name))
      return (long)i;
  return -1;
}

bool cp_channels_validates(const struct cp_channels *c, const char *channel) {
  long i = cp_channels_find(c, channel);
  return i >= 0 && c->v[i].ready && c->v[i].conn->validate;
}

int cp_channels_validate(struct cp_channels *c, const struct cp_post *post, cp_diag_cb diag,
                         void *arg) {
  long i = cp_channels_find(c, post->channel);
  if (i < 0 || !c->v[i].ready || !c->v[i].conn->validate)
    return 0;
  c->current = &c->v[i];
  int rc = c->v[i].conn->validate(c->v[i].inst, post, diag, arg);
  c->current = NULL;
  return rc < 0 ? CP_EINVAL : 0;
}

bool cp_channels_reads_option(const struct cp_channels *c, const char *channel, const char *key) {
  long i = cp_channels_find(c, channel);
  if (i < 0 || !c->v[i].conn || !c->v[i].conn->post_options)
    return false;
  for (const char *const *k = c->v[i].conn->post_options; *k; k++)
    if (!strcmp(*k, key))
      return true;
  return false;
}

int cp_channels_login(struct cp_channels *c, size_t i, struct cp_result *res) {
  if (i >= c->n || !c->v[i].ready)
    return CP_EINVAL;
  struct chan *ch = &c->v[i];
  if (!ch->conn->login_check)
    return CP_ENOTFOUND;
  struct cp_publish_req req = {
      .host = &c->host, .attempt = 1, .idempotency_key = "", .host_data = ch, .progress = ""};
  c->done = false;
  c->current = ch;
  int rc = ch->conn->login_check(ch->inst, &req);
  if (rc == 0)
    while (!c->done && uv_run(&c->loop, UV_RUN_ONCE))
      ;
  c->current = NULL;
  if (rc < 0)
    return rc;
  if (!c->done) { /* the loop ran dry: a connector bug, reported as such */
    memset(res, 0, sizeof *res);
    res->outcome = CP_OUTCOME_UNKNOWN;
    snprintf(res->message, sizeof res->message, "the login check never completed");
    return 0;
  }
  *res = c->res;
  return 0;
}
