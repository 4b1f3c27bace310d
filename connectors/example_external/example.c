/* An example external connector: a loadable module that uses only the host's services.
 *
 *   [channel demo]
 *   type = example
 *   url = http://127.0.0.1:8080/inbox
 *
 * Build as a shared module against include/calpost/connector.h and load it with the connector
 * loader; it POSTs the post's text as text/plain. It calls nothing in calpost itself. */
#include <stdlib.h>
#include <string.h>

#include "calpost/connector.h"
#include "calpost/err.h" /* constants only: a module links nothing of calpost */

#ifndef EXAMPLE_ABI
#define EXAMPLE_ABI CP_CONNECTOR_ABI_VERSION
#endif

struct example {
  const struct cp_host *host;
  char *url;
};

struct send {
  const struct cp_publish_req *req;
};

static int example_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                        void **instance) {
  int line = conf->line;
  const char *url = conf->get(conf, "url", &line);
  struct example *e;

  if (!url) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] needs 'url = ...'", conf->file, conf->line,
              conf->name);
    return CP_ECONFIG;
  }
  e = calloc(1, sizeof *e);
  if (!e)
    return CP_ENOMEM;
  e->host = host;
  e->url = strdup(url);
  if (!e->url) {
    free(e);
    return CP_ENOMEM;
  }
  *instance = e;
  return 0;
}

static void on_response(const struct cp_http_resp *resp, void *data) {
  const struct cp_publish_req *req = data;
  struct cp_result res;

  req->host->http_result(req, resp, &res);
  if (res.outcome == CP_OUTCOME_OK)
    strcpy(res.remote_id, "example");
  req->host->complete(req, &res);
}

static int example_publish(void *instance, const struct cp_post *post,
                           const struct cp_publish_req *req) {
  struct example *e = instance;
  const struct cp_http_header hdrs[] = {{"Content-Type", "text/plain; charset=utf-8"},
                                        {"Idempotency-Key", req->idempotency_key}};
  const struct cp_http_req hr = {
      .method = "POST",
      .url = e->url,
      .headers = hdrs,
      .n_headers = 2,
      .body = post->text,
      .body_len = strlen(post->text),
  };
  /* The request is borrowed by the callback as its data: it lives until complete(). */
  return e->host->http_request(e->host, &hr, on_response, (void *)req);
}

static void example_free(void *instance) {
  struct example *e = instance;
  if (!e)
    return;
  free(e->url);
  free(e);
}

const struct cp_connector cp_connector_entry = {
    .abi_version = EXAMPLE_ABI,
    .name = "example",
    .description = "example external connector: POSTs the text to a URL",
    .caps = 0,
    .init = example_init,
    .publish = example_publish,
    .free = example_free,
};
