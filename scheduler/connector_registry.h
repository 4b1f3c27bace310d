/* The host side of the connector ABI: the registry of connector types (built-ins registered
 * statically, external modules loaded with dlopen and refused loudly on an ABI mismatch), and the
 * helpers a host uses to implement struct cp_host (result classification, Retry-After, secrets,
 * idempotency keys) plus the post payload shared by the built-in connectors. */
#ifndef CALPOST_CONNECTOR_REGISTRY_H
#define CALPOST_CONNECTOR_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "calpost/connector.h"

struct cp_connector_registry;

/* Creates a registry holding the built-in connectors of this build (CMake options
 * CALPOST_CONNECTOR_*). Returns 0 and the registry in *out, or CP_ENOMEM. */
int cp_connector_registry_new(struct cp_connector_registry **out);

/* Unloads the external modules (their connectors must no longer be in use). NULL is a no-op. */
void cp_connector_registry_free(struct cp_connector_registry *reg);

/* Registers c (borrowed; must outlive reg). Returns 0; or CP_EABI (wrong abi_version),
 * CP_EINVAL (no name, init or publish), CP_EEXISTS (name taken) or CP_ENOMEM, with a message for
 * people in err (errlen bytes), changing nothing. */
int cp_connector_registry_add(struct cp_connector_registry *reg, const struct cp_connector *c,
                              char *err, size_t errlen);

/* Loads the external connector module at path (a .so exporting CP_CONNECTOR_SYMBOL) and
 * registers its connector; sets *out (if not NULL) to it. Returns 0; or CP_ENOTFOUND (dlopen or
 * dlsym failed), or an error of cp_connector_registry_add, with the message in err; the module is
 * then unloaded again. */
int cp_connector_registry_load(struct cp_connector_registry *reg, const char *path,
                               const struct cp_connector **out, char *err, size_t errlen);

/* The connector of type name, or NULL. */
const struct cp_connector *cp_connector_registry_find(const struct cp_connector_registry *reg,
                                                      const char *name);

/* The i-th registered connector (built-ins first, then modules in load order), or NULL. */
const struct cp_connector *cp_connector_registry_at(const struct cp_connector_registry *reg,
                                                    size_t i);

/* "OK", "RETRY", "RATE_LIMITED", "AUTH", "PERMANENT", "UNKNOWN"; "?" for other values. */
const char *cp_outcome_name(enum cp_outcome o);

/* The default classification (connector.h, classify): by status if a response arrived, else
 * RETRY if the request cannot have been sent and UNKNOWN if it may have been. */
enum cp_outcome cp_connector_default_outcome(const struct cp_http_resp *resp);

/* The retry time a Retry-After value asks for (delta-seconds or an HTTP-date), in Unix ms;
 * 0 if value cannot be read. */
int64_t cp_connector_retry_after(const char *value, int64_t now_ms);

/* Implements cp_host.http_result for connector c: fills all of res except remote_id and
 * remote_url from resp (see connector.h). now_ms is the wall clock in Unix ms. */
void cp_connector_http_result(const struct cp_connector *c, void *instance,
                              const struct cp_http_resp *resp, int64_t now_ms,
                              struct cp_result *res);

/* Implements cp_host.secret: reads "<key>_file" (relative paths are relative to the folder of
 * conf->file; the first line without its line end) or "<key>_env". Returns 0 and a malloc'd
 * copy in *out (free with cp_connector_secret_free); CP_ENOTFOUND if neither key is set; or
 * CP_ECONFIG with a message naming the file, line and key (never the secret) in err. */
int cp_connector_secret_read(const struct cp_connector_conf *conf, const char *key, char **out,
                             char *err, size_t errlen);

/* Warns about each key of conf that neither the connector (known, NULL-terminated) nor the host
 * reads for every channel (type, module, rate, grace, notify_only, max_chars). */
void cp_connector_check_keys(const struct cp_host *host, const struct cp_connector_conf *conf,
                             const char *const *known);

/* Wipes and frees a secret. NULL is a no-op. */
void cp_connector_secret_free(char *secret);

/* Implements cp_host.idempotency_key: "calpost-<post id>". Returns 0, or CP_ELIMIT if size is
 * too small (buf then holds ""). */
int cp_connector_idempotency_key(const struct cp_post *post, char *buf, size_t size);

/* The post as the JSON object that the outbox writes and the webhook sends:
 * {"id","channel","calendar","uid","occurrence","due" (RFC 3339 in the event's offset),
 *  "due_unix","tzid","all_day","title","text","media":[{"src","alt"}],"thread","numbered",
 *  "campaign"}. Returns a new reference, or NULL if a string is not valid UTF-8 or on ENOMEM. */
json_t *cp_connector_post_json(const struct cp_post *post);

/* Copies src into dst (size bytes) with control characters as spaces, cut at a UTF-8 character
 * boundary; for server messages that end up in logs. */
void cp_connector_copy_text(char *dst, size_t size, const char *src, size_t len);

/* The built-in connectors (defined in connectors/NAME/, compiled in by CALPOST_CONNECTOR_NAME). */
extern const struct cp_connector cp_connector_outbox;
extern const struct cp_connector cp_connector_webhook;
extern const struct cp_connector cp_connector_mastodon;
extern const struct cp_connector cp_connector_bluesky;
extern const struct cp_connector cp_connector_x;
extern const struct cp_connector cp_connector_linkedin;
extern const struct cp_connector cp_connector_facebook;
extern const struct cp_connector cp_connector_telegram;
extern const struct cp_connector cp_connector_discord;
extern const struct cp_connector cp_connector_slack;
extern const struct cp_connector cp_connector_matrix;
extern const struct cp_connector cp_connector_wordpress;
extern const struct cp_connector cp_connector_email;

#endif
