/* The connector ABI: what a connector module (built in, or an external .so loaded with dlopen)
 * exports, and the services the host hands it.
 *
 * A connector is one `const struct cp_connector`, the ABI version first (so a loader can read it
 * from a module built against any other version), then its identity, capability flags and
 * callbacks. It reports outcomes; the scheduler alone decides retries, pauses and state changes.
 *
 * An external module exports the symbol CP_CONNECTOR_SYMBOL ("cp_connector_entry"):
 *
 *   const struct cp_connector cp_connector_entry = {
 *       .abi_version = CP_CONNECTOR_ABI_VERSION,
 *       .name = "example",
 *       ...
 *   };
 *
 * A module calls nothing in the calpost binary: everything goes through struct cp_host. It may
 * use libc, and libuv on host->loop (the daemon's loop) if it closes its handles in free.
 *
 * Threading: everything here runs on the host's loop thread. */
#ifndef CALPOST_CONNECTOR_H
#define CALPOST_CONNECTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calpost/post.h"

struct uv_loop_s;

/* Bumped on any change to a struct or callback in this file. The loader refuses a module whose
 * abi_version differs. */
#define CP_CONNECTOR_ABI_VERSION 2
#define CP_CONNECTOR_SYMBOL "cp_connector_entry"

/* Capability flags (struct cp_connector.caps). */
#define CP_CAP_IDEMPOTENT (1u << 0) /* a resend with the same idempotency key cannot duplicate */
#define CP_CAP_MEDIA (1u << 1)      /* the post's media reach the destination */
#define CP_CAP_THREADS (1u << 2)    /* over-long text is published as a reply chain */
#define CP_CAP_METRICS (1u << 3)    /* the metrics callback is set */
#define CP_CAP_ENGAGEMENT (1u << 4) /* the engagement callback is set */

/* ---- HTTP (served by the host on its loop; see scheduler/http.h) ---------------------------- */

struct cp_http_header {
  const char *name;
  const char *value;
};

/* One part of a multipart/form-data body (built by libcurl's MIME API, never by hand). */
struct cp_http_part {
  const char *name;         /* the form field name */
  const char *filename;     /* NULL for a plain field; set for a file upload */
  const char *content_type; /* NULL: text/plain for fields, application/octet-stream for files */
  const char *data;         /* the bytes; NUL-terminated string if len is 0 */
  size_t len;
};

/* A request. Everything is borrowed and copied by http_request before it returns. */
struct cp_http_req {
  const char *method; /* "GET", "POST", "PUT", "DELETE", ...; NULL: POST if body, else GET */
  const char *url;    /* http:// or https:// */
  const struct cp_http_header *headers;
  size_t n_headers;
  const char *body; /* may be NULL */
  size_t body_len;
  long connect_timeout_ms; /* 0: 10 s */
  long timeout_ms;         /* whole exchange; 0: 30 s */
  size_t max_response;     /* cap on response headers + body in bytes; 0: 1 MiB */
  bool follow_redirects;   /* follow up to 5 redirects, https targets only; default: none */
  /* The request carries a key that makes a repeat harmless (an Idempotency-Key header, a
   * Matrix transaction id, a putRecord key): it may go on a kept-alive connection, where
   * libcurl silently resends a request whose connection died. Without it, a POST/PUT always
   * opens a fresh connection, so that it can never arrive twice. */
  bool idempotent;
  /* A multipart/form-data body instead of body (which must then be NULL); the Content-Type
   * header with its boundary is set by the host. */
  const struct cp_http_part *parts;
  size_t n_parts;
  /* Refuse to connect to loopback, private, link-local and other non-public addresses (set by
   * the host for media and calendar URLs from the plan; connectors leave it false). */
  bool public_only;
  /* A CA bundle (PEM file) to verify the server with instead of the system's (a test peer's
   * self-signed certificate); NULL: the system's. Verification is never turned off. */
  const char *ca_file;
  /* smtp:// (STARTTLS required unless the host is loopback and require_tls is false) and
   * smtps:// URLs, for the email connector: body is the whole RFC 5322 message, sent with
   * MAIL FROM mail_from and one RCPT TO per mail_rcpt; username/password log in (AUTH) when set.
   * resp->status is the last SMTP reply code (250 on success, 4yz / 5yz on failure). Without
   * mail_from, mail_rcpt and body it only connects, starts TLS and logs in (a login check). */
  const char *mail_from;
  const char *const *mail_rcpt;
  size_t n_mail_rcpt;
  const char *username;
  const char *password;
  bool require_tls;
};

/* A response, borrowed for the duration of the callback. */
struct cp_http_resp {
  int err;            /* 0, or the transport error as CP_E* / -errno (CP_ETOOBIG: over the cap) */
  const char *errmsg; /* libcurl's explanation when err != 0, else ""; never NULL */
  long status;        /* HTTP status of the final response; 0 if none arrived */
  bool sent;          /* the request was, or may have been, delivered to the server: a failure
                         after this leaves the outcome unknown (CONNECTORS-NOTES 1.13) */
  const struct cp_http_header *headers; /* of the final response, in order; names as sent */
  size_t n_headers;
  const char *body; /* NUL-terminated (not counted in body_len); "" if none */
  size_t body_len;
  int64_t elapsed_ms;
};

/* Called exactly once per request that http_request accepted. */
typedef void (*cp_http_cb)(const struct cp_http_resp *resp, void *data);

/* ---- Outcomes ------------------------------------------------------------------------------- */

enum cp_outcome {
  CP_OUTCOME_OK = 0,       /* published */
  CP_OUTCOME_RETRY,        /* transient: nothing was published, try again later */
  CP_OUTCOME_RATE_LIMITED, /* wait until retry_at_ms (or back off) */
  CP_OUTCOME_AUTH,         /* credentials rejected: refresh or reconnect */
  CP_OUTCOME_PERMANENT,    /* will fail the same way again: fix the post or the setup */
  CP_OUTCOME_UNKNOWN,      /* the request left but no answer came: it may have been published */
};

#define CP_RESULT_MESSAGE_MAX 256
#define CP_RESULT_ID_MAX 256
#define CP_RESULT_URL_MAX 1024

/* The result of one publish attempt. Strings are truncated to fit, always NUL-terminated. */
struct cp_result {
  enum cp_outcome outcome;
  long http_status;                    /* 0 if there was no HTTP response */
  int err;                             /* transport or local error (CP_E* / -errno), 0 if none */
  char message[CP_RESULT_MESSAGE_MAX]; /* the server's message or the error, for people */
  char remote_id[CP_RESULT_ID_MAX];    /* the platform's id of the post, "" if unknown */
  char remote_url[CP_RESULT_URL_MAX];  /* where people can see it, "" if unknown */
  int64_t retry_at_ms; /* earliest sensible retry (Unix ms, wall clock); 0: no hint */
  /* Set by engagement(): the audience's response to a published post, -1 where the platform
   * does not say. Zero-initialised results mean "no counts". */
  bool has_engagement;
  int64_t replies;
  int64_t reposts; /* boosts, retweets, reposts, shares */
  int64_t likes;   /* favourites, likes, reactions */
  int64_t quotes;
  int64_t views; /* impressions, where the platform counts them */
};

/* ---- Configuration -------------------------------------------------------------------------- */

/* A connector's configuration section ([channel NAME] in the config file), as an accessor so
 * this ABI does not depend on the config parser's structs. Valid only during init. */
struct cp_connector_conf {
  const char *type; /* connector type, e.g. "webhook" */
  const char *name; /* channel name, for messages */
  const char *file; /* config file, for messages ("" if none) */
  int line;         /* line of the section header */
  /* The value of key or NULL; sets *line (if not NULL) to the key's line. Borrowed. */
  const char *(*get)(const struct cp_connector_conf *conf, const char *key, int *line);
  /* The i-th key in file order, or NULL past the end (to report unknown keys). */
  const char *(*key_at)(const struct cp_connector_conf *conf, size_t i);
  const void *data; /* the accessor's own */
};

/* ---- The host's services -------------------------------------------------------------------- */

enum cp_log_level { CP_LOG_ERROR = 0, CP_LOG_WARN, CP_LOG_INFO, CP_LOG_DEBUG };

/* Media bytes handed to a connector by host->media_load. Borrowed for the callback only. */
struct cp_media_blob {
  int err;            /* 0, or CP_E* / -errno: the media could not be loaded */
  const char *errmsg; /* why, for people ("" if err == 0); never NULL */
  const unsigned char *data;
  size_t len;
  const char *content_type; /* checked against the bytes: "image/png", "video/mp4", ... */
  const char *filename;     /* a base name for uploads: "release.png" */
  const char *alt;          /* alt text or NULL */
};

typedef void (*cp_media_cb)(const struct cp_media_blob *blob, void *data);

/* One publish (or login check) in flight. Owned by the host; valid until complete() is called
 * for it. The post passed with it stays valid as long. */
struct cp_publish_req {
  const struct cp_host *host;
  unsigned attempt;            /* 1 for the first try of this post */
  const char *idempotency_key; /* same value as host->idempotency_key() for the post; "" for a
                                  login check */
  void *host_data;             /* the host's own */
  /* What earlier attempts of this post stored with host->save_progress (for example the ids of
   * the thread parts already published), "" if nothing. Survives restarts. */
  const char *progress;
};

/* Bumped when services are added (at the end); a connector that needs a newer service checks
 * version (or size) before calling it. */
#define CP_HOST_VERSION 2

struct cp_host {
  size_t size;            /* sizeof(struct cp_host) as the host was built */
  int version;            /* CP_HOST_VERSION as the host was built */
  struct uv_loop_s *loop; /* the loop everything runs on */
  void *data;             /* the host's own */

  /* Starts an HTTP request on the loop (never blocks). Returns 0 and later calls cb exactly
   * once; or returns a negative CP_E* / -errno and never calls cb. */
  int (*http_request)(const struct cp_host *host, const struct cp_http_req *req, cp_http_cb cb,
                      void *data);
  /* Finishes a publish or login check: exactly once per accepted call, never from inside the
   * publish/login_check call itself. res is copied; req is invalid afterwards. */
  void (*complete)(const struct cp_publish_req *req, const struct cp_result *res);
  /* Logs one line (no trailing newline needed), prefixed by the channel. Every secret handed out
   * by secret() is replaced by "***" before it is written. */
  void (*log)(const struct cp_host *host, enum cp_log_level level, const char *fmt, ...)
      __attribute__((format(printf, 3, 4)));
  uint64_t (*now_ms)(const struct cp_host *host); /* monotonic (loop time), for durations */
  int64_t (*wall_ms)(const struct cp_host *host); /* Unix ms, for timestamps and hints */
  /* Reads the secret named by the key "<key>_file" (a file: the first line, without its line end)
   * or "<key>_env" (an environment variable) of conf. Returns 0 and a malloc'd NUL-terminated
   * copy in *out (release with secret_free), CP_ENOTFOUND if neither key is set, CP_ECONFIG if
   * both are, or the file or variable is missing or empty (logged, without the value). */
  int (*secret)(const struct cp_host *host, const struct cp_connector_conf *conf, const char *key,
                char **out);
  void (*secret_free)(char *secret); /* wipes and frees; NULL is a no-op */
  /* The idempotency key of a post: stable across attempts and restarts, derived from its id.
   * Writes at most size bytes including the NUL; returns 0 or CP_ELIMIT if size is too small. */
  int (*idempotency_key)(const struct cp_host *host, const struct cp_post *post, char *buf,
                         size_t size);
  /* Fills res from an HTTP response for the connector of req: outcome (its classify, or the
   * default table), http_status, err, message (the server's, or the transport error) and
   * retry_at_ms (from Retry-After). Leaves remote_id and remote_url empty. */
  void (*http_result)(const struct cp_publish_req *req, const struct cp_http_resp *resp,
                      struct cp_result *res);

  /* ---- version 2 ---- */

  /* Loads one media item of the post being published (a local file, or an https URL fetched
   * with the host's rules: https only, public addresses only unless the config allows local
   * ones, a size cap, a content type that is an image or video and matches the bytes). Returns
   * 0 and calls cb exactly once later (with blob->err set on failure), or returns a negative
   * CP_E* and never calls cb. */
  int (*media_load)(const struct cp_publish_req *req, const struct cp_media *media, cp_media_cb cb,
                    void *data);
  /* Durably stores a short text (at most 4096 bytes) for this post before it returns; later
   * attempts, also after a crash, receive it in req->progress. Used to resume a thread where it
   * stopped. Returns 0 or a negative CP_E*. */
  int (*save_progress)(const struct cp_publish_req *req, const char *progress);
};

/* ---- The connector -------------------------------------------------------------------------- */

/* Receives one finding of validate(); msg says what is wrong and what to do. */
typedef void (*cp_diag_cb)(void *arg, bool error, const char *msg);

struct cp_connector {
  int abi_version;         /* CP_CONNECTOR_ABI_VERSION: must be first */
  const char *name;        /* the type name used in the config: "webhook" */
  const char *description; /* one line, for `calpost connectors` */
  unsigned caps;           /* CP_CAP_* */

  /* Reads conf (secrets through host->secret) and creates the channel's state in *instance.
   * Returns 0, or CP_ECONFIG (logged through host->log, naming the file, line and key) and leaves
   * *instance unchanged. Required. */
  int (*init)(const struct cp_host *host, const struct cp_connector_conf *conf, void **instance);
  /* Checks a post without any I/O (length, media, required fields), reporting through diag.
   * Returns 0 if the post can be published, CP_EINVAL if an error was reported. Optional. */
  int (*validate)(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg);
  /* Starts publishing post without blocking. Returns 0 and completes later through
   * req->host->complete exactly once; or returns a negative CP_E* / -errno and never completes.
   * Required. */
  int (*publish)(void *instance, const struct cp_post *post, const struct cp_publish_req *req);
  /* Maps an HTTP response to an outcome, given the default table's answer dflt (2xx OK;
   * 408, 5xx, network RETRY, or UNKNOWN after the request was sent; 429 RATE_LIMITED;
   * 401/403 AUTH; other 4xx PERMANENT). NULL: the default. */
  enum cp_outcome (*classify)(void *instance, const struct cp_http_resp *resp,
                              enum cp_outcome dflt);
  /* Reports counters and gauges through emit. Optional (CP_CAP_METRICS). */
  void (*metrics)(void *instance, void (*emit)(void *arg, const char *name, double value),
                  void *arg);
  /* Checks the credentials without posting anything; completes like publish with OK or AUTH.
   * Optional. */
  int (*login_check)(void *instance, const struct cp_publish_req *req);
  /* Frees the instance; called only when nothing is in flight. NULL instance is a no-op. */
  void (*free)(void *instance);
  /* Reads the engagement of a post this channel published (remote_id and remote_url as the
   * publish result gave them): completes like publish, with OK and has_engagement set and the
   * counts filled (or the outcome of the failure). Posts nothing. Optional (CP_CAP_ENGAGEMENT);
   * put last in this struct by an ABI addition, see post_options below. */
  /* The post options ([calpost] settings of an event that calpost itself does not use, such as
   * "visibility" or "language") this connector reads, NULL-terminated; NULL if none. `calpost
   * check` warns about an option that none of a post's channels reads. */
  const char *const *post_options;
  int (*engagement)(void *instance, const char *remote_id, const char *remote_url,
                    const struct cp_publish_req *req);
};

#endif
