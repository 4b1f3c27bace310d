/* The webhook connector: POSTs each post as JSON to a URL, signed with HMAC-SHA256.
 *
 *   [channel site]
 *   type = webhook
 *   url = https://example.org/hooks/calpost
 *   secret_file = webhook.key      ; or secret_env = CALPOST_WEBHOOK_KEY; optional
 *   timeout = 30                   ; seconds, or "500ms"; default 30 s
 *
 * Request: the body is the post JSON (cp_connector_post_json), with the headers
 *   Content-Type: application/json
 *   Idempotency-Key: calpost-<post id>       (stable across attempts: the receiver dedupes)
 *   X-Calpost-Timestamp: <Unix seconds>
 *   X-Calpost-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>   (with a secret)
 * The receiver checks the signature over the exact bytes received and rejects old timestamps.
 *
 * Response: the status decides the outcome (the default table); a JSON body's "id" and "url"
 * become the remote id and URL; Retry-After becomes the retry hint. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "connector_registry.h"

#define DEFAULT_TIMEOUT_MS 30000L
#define MAX_TIMEOUT_MS 600000L

struct webhook {
  const struct cp_host *host;
  char *name;
  char *url;
  char *secret; /* NULL: requests go unsigned */
  EVP_MAC *hmac;
  long timeout_ms;
  size_t max_chars; /* 0: no limit of our own */
  double published, failed, last_latency_ms;
};

struct send {
  struct webhook *w;
  const struct cp_publish_req *req;
  char *body;
  char post_id[CP_POST_ID_LEN + 1];
};

static const char *const known_keys[] = {"url", "secret_file", "secret_env", "timeout", NULL};

static void webhook_free(void *instance) {
  struct webhook *w = instance;
  if (!w)
    return;
  free(w->name);
  free(w->url);
  if (w->secret)
    w->host->secret_free(w->secret);
  EVP_MAC_free(w->hmac);
  free(w);
}

/* "30", "30s" or "500ms" to milliseconds; -1 if unreadable or out of range. */
static long parse_timeout(const char *s) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || v <= 0)
    return -1;
  if (!strcmp(end, "ms"))
    return v > MAX_TIMEOUT_MS ? -1 : v;
  if ((*end && strcmp(end, "s")) || v > MAX_TIMEOUT_MS / 1000)
    return -1;
  return v * 1000;
}

/* Plain http is fine on the same machine, and a leak of the post and its signature elsewhere. */
static bool is_loopback_http(const char *url, bool *is_http) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL;
  bool ok = false, loop = false;

  *is_http = false;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
    ok = !strcmp(scheme, "https") || !strcmp(scheme, "http");
    *is_http = !strcmp(scheme, "http");
    loop = !strcmp(host, "localhost") || !strncmp(host, "127.", 4) || !strcmp(host, "[::1]");
  }
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  return ok && (!*is_http || loop);
}

static int webhook_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                        void **instance) {
  int line = conf->line;
  const char *url = conf->get(conf, "url", &line);
  const char *v;
  bool is_http = false;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  if (!url || !*url) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] needs 'url = https://...'", conf->file,
              conf->line, conf->name);
    return CP_ECONFIG;
  }
  if (!is_loopback_http(url, &is_http)) {
    if (!is_http) {
      host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] url: '%s' is not an http(s) URL",
                conf->file, line, conf->name, url);
      return CP_ECONFIG;
    }
    host->log(host, CP_LOG_WARN,
              "%s:%d: [channel %s] url: plain http to another machine: posts travel "
              "unencrypted; use https",
              conf->file, line, conf->name);
  }

  struct webhook *w = calloc(1, sizeof *w);
  if (!w)
    return CP_ENOMEM;
  w->host = host;
  w->timeout_ms = DEFAULT_TIMEOUT_MS;
  w->name = strdup(conf->name ? conf->name : "webhook");
  w->url = strdup(url);
  w->hmac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
  if (!w->name || !w->url || !w->hmac) {
    webhook_free(w);
    return CP_ENOMEM;
  }
  line = conf->line;
  v = conf->get(conf, "timeout", &line);
  if (v) {
    w->timeout_ms = parse_timeout(v);
    if (w->timeout_ms < 0) {
      host->log(host, CP_LOG_ERROR,
                "%s:%d: [channel %s] timeout: '%s' is not a duration such as 30 or 500ms "
                "(at most 600 s)",
                conf->file, line, conf->name, v);
      webhook_free(w);
      return CP_ECONFIG;
    }
  }
  line = conf->line;
  v = conf->get(conf, "max_chars", &line);
  if (v) {
    char *end;
    errno = 0;
    unsigned long long m = strtoull(v, &end, 10);
    if (errno || *end || end == v) {
      host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] max_chars: '%s' is not a number",
                conf->file, line, conf->name, v);
      webhook_free(w);
      return CP_ECONFIG;
    }
    w->max_chars = (size_t)m;
  }
  err = host->secret(host, conf, "secret", &w->secret);
  if (err == CP_ENOTFOUND) {
    w->secret = NULL;
    host->log(host, CP_LOG_INFO,
              "[channel %s] no secret_file or secret_env: requests are not signed", conf->name);
  } else if (err) {
    webhook_free(w); /* host->secret logged why */
    return err;
  }
  *instance = w;
  return 0;
}

static int webhook_validate(void *instance, const struct cp_post *post, cp_diag_cb diag,
                            void *arg) {
  struct webhook *w = instance;
  const char *text = post->text ? post->text : "";
  struct cp_text_limit lim;
  size_t count = 0;
  char msg[200];

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  bool fits = cp_text_fits("webhook", text, w->max_chars, &count, &lim);
  size_t max = lim.max;
  /* The text module knows no limit for webhooks; max_chars is this channel's own. */
  if (w->max_chars && count > w->max_chars) {
    fits = false;
    max = w->max_chars;
  }
  if (!fits) {
    snprintf(msg, sizeof msg, "%zu %s, channel %s allows %zu (max_chars): shorten the text", count,
             lim.unit ? lim.unit : "characters", w->name, max);
    diag(arg, true, msg);
    return CP_EINVAL;
  }
  return 0;
}

/* hex(HMAC-SHA256(key, ts "." body)) into out (65 bytes). Returns 0 or CP_ENOMEM. */
static int sign(struct webhook *w, const char *ts, const char *body, size_t len, char *out) {
  unsigned char md[EVP_MAX_MD_SIZE];
  size_t mdlen = 0;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(w->hmac);
  int ok = ctx && EVP_MAC_init(ctx, (const unsigned char *)w->secret, strlen(w->secret), params) &&
           EVP_MAC_update(ctx, (const unsigned char *)ts, strlen(ts)) &&
           EVP_MAC_update(ctx, (const unsigned char *)".", 1) &&
           EVP_MAC_update(ctx, (const unsigned char *)body, len) &&
           EVP_MAC_final(ctx, md, &mdlen, sizeof md);
  EVP_MAC_CTX_free(ctx);
  if (!ok || mdlen != 32)
    return CP_ENOMEM;
  for (size_t i = 0; i < mdlen; i++)
    sprintf(out + 2 * i, "%02x", md[i]);
  return 0;
}

/* Copies a JSON string or integer field of the receiver's answer into dst. */
static void copy_field(json_t *root, const char *key, char *dst, size_t size) {
  json_t *v = json_object_get(root, key);
  if (json_is_string(v))
    cp_connector_copy_text(dst, size, json_string_value(v), json_string_length(v));
  else if (json_is_integer(v))
    snprintf(dst, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
}

static void on_response(const struct cp_http_resp *resp, void *data) {
  struct send *s = data;
  struct webhook *w = s->w;
  const struct cp_publish_req *req = s->req;
  struct cp_result res;

  w->host->http_result(req, resp, &res);
  if (res.outcome == CP_OUTCOME_OK && resp->body_len && !resp->err) {
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    if (json_is_object(root)) {
      copy_field(root, "id", res.remote_id, sizeof res.remote_id);
      copy_field(root, "url", res.remote_url, sizeof res.remote_url);
    }
    json_decref(root);
  }
  w->last_latency_ms = (double)resp->elapsed_ms;
  if (res.outcome == CP_OUTCOME_OK) {
    w->published++;
    w->host->log(w->host, CP_LOG_INFO, "post %s delivered: HTTP %ld%s%s", s->post_id, resp->status,
                 res.remote_id[0] ? ", id " : "", res.remote_id);
  } else {
    w->failed++;
    w->host->log(w->host, CP_LOG_WARN, "post %s not delivered (%s): %s", s->post_id,
                 cp_outcome_name(res.outcome), res.message);
  }
  free(s->body);
  free(s);
  req->host->complete(req, &res);
}

static int webhook_publish(void *instance, const struct cp_post *post,
                           const struct cp_publish_req *req) {
  struct webhook *w = instance;
  const struct cp_host *host = w->host;
  char ts[24], sig[7 + 65], key[64];
  struct cp_http_header hdrs[5];
  size_t nh = 0;
  int err;

  err = host->idempotency_key(host, post, key, sizeof key);
  if (err)
    return err;
  json_t *root = cp_connector_post_json(post);
  if (!root)
    return CP_EUTF8;
  struct send *s = calloc(1, sizeof *s);
  if (!s) {
    json_decref(root);
    return CP_ENOMEM;
  }
  s->body = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  if (!s->body) {
    free(s);
    return CP_ENOMEM;
  }
  s->w = w;
  s->req = req;
  snprintf(s->post_id, sizeof s->post_id, "%s", post->id);
  size_t len = strlen(s->body);

  snprintf(ts, sizeof ts, "%lld", (long long)(host->wall_ms(host) / 1000));
  hdrs[nh++] = (struct cp_http_header){"Content-Type", "application/json"};
  hdrs[nh++] = (struct cp_http_header){"Accept", "application/json"};
  hdrs[nh++] = (struct cp_http_header){"Idempotency-Key", key};
  hdrs[nh++] = (struct cp_http_header){"X-Calpost-Timestamp", ts};
  if (w->secret) {
    memcpy(sig, "sha256=", 7);
    err = sign(w, ts, s->body, len, sig + 7);
    if (err)
      goto fail;
    hdrs[nh++] = (struct cp_http_header){"X-Calpost-Signature", sig};
  }
  struct cp_http_req hr = {
      .method = "POST",
      .idempotent = true, /* the Idempotency-Key makes a silent resend harmless */
      .url = w->url,
      .headers = hdrs,
      .n_headers = nh,
      .body = s->body,
      .body_len = len,
      .timeout_ms = w->timeout_ms,
      .connect_timeout_ms = w->timeout_ms < 10000 ? w->timeout_ms : 10000,
  };
  err = host->http_request(host, &hr, on_response, s);
  if (err)
    goto fail;
  return 0;

fail:
  free(s->body);
  free(s);
  return err;
}

static void webhook_metrics(void *instance, void (*emit)(void *arg, const char *name, double value),
                            void *arg) {
  struct webhook *w = instance;
  emit(arg, "published", w->published);
  emit(arg, "failed", w->failed);
  emit(arg, "last_latency_ms", w->last_latency_ms);
}

const struct cp_connector cp_connector_webhook = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "webhook",
    .description = "POSTs each post as JSON to a URL, HMAC-SHA256 signed, with an Idempotency-Key",
    /* The receiver gets a stable Idempotency-Key; media travel as references (src, alt). */
    .caps = CP_CAP_IDEMPOTENT | CP_CAP_MEDIA | CP_CAP_METRICS,
    .init = webhook_init,
    .validate = webhook_validate,
    .publish = webhook_publish,
    .metrics = webhook_metrics,
    .free = webhook_free,
};
