/* The store's interface: argument checks, dispatch to the backend, and what every backend shares
 * (names, content hashes, destructors). */
#include "store.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "calpost/err.h"

static const struct cp_store_ops *const backends[] = {&cp__store_sqlite_ops};

static const char *const state_names[CP_STORE_NSTATES] = {
    [CP_STORE_PENDING] = "pending", [CP_STORE_SENDING] = "sending",
    [CP_STORE_SENT] = "sent",       [CP_STORE_FAILED] = "failed",
    [CP_STORE_MISSED] = "missed",   [CP_STORE_CANCELLED] = "cancelled",
    [CP_STORE_SKIPPED] = "skipped", [CP_STORE_UNKNOWN] = "unknown",
};

static const char *const outcome_names[] = {
    [CP_OUTCOME_OK] = "ok",
    [CP_OUTCOME_RETRY] = "retry",
    [CP_OUTCOME_RATE_LIMITED] = "rate_limited",
    [CP_OUTCOME_AUTH] = "auth",
    [CP_OUTCOME_PERMANENT] = "permanent",
    [CP_OUTCOME_UNKNOWN] = "unknown",
};

const char *cp_store_state_name(enum cp_store_state s) {
  return (unsigned)s < CP_STORE_NSTATES ? state_names[s] : "?";
}

const char *cp_store_outcome_name(enum cp_outcome o) {
  if ((unsigned)o < sizeof outcome_names / sizeof outcome_names[0] && outcome_names[o])
    return outcome_names[o];
  return "?";
}

int cp_store_state_parse(const char *name, enum cp_store_state *out) {
  for (int i = 0; name && i < CP_STORE_NSTATES; i++) {
    if (!strcmp(name, state_names[i])) {
      *out = (enum cp_store_state)i;
      return 0;
    }
  }
  return CP_EINVAL;
}

int cp__store_fail(struct cp_store *s, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
  va_end(ap);
  return err;
}

bool cp__store_id_valid(const char *id) {
  if (!id)
    return false;
  for (int i = 0; i < CP_POST_ID_LEN; i++)
    if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
      return false;
  return id[CP_POST_ID_LEN] == '\0';
}

/* Each field goes in with its length first, so ("ab", "c") and ("a", "bc") hash differently. */
static int hash_u64(EVP_MD_CTX *ctx, uint64_t v) {
  unsigned char le[8]; /* fixed byte order: a state file may move to another machine */
  for (int i = 0; i < 8; i++)
    le[i] = (unsigned char)(v >> (8 * i));
  return EVP_DigestUpdate(ctx, le, sizeof le);
}

static int hash_str(EVP_MD_CTX *ctx, const char *str) {
  uint64_t len = str ? strlen(str) + 1 : 0; /* NULL and "" differ too */
  return hash_u64(ctx, len) && (!str || EVP_DigestUpdate(ctx, str, len - 1));
}

int cp_store_item_from_post(struct cp_store_item *item, const struct cp_post *post) {
  if (!item || !post || !cp__store_id_valid(post->id) || !post->calendar || !post->uid ||
      !post->occurrence[0] || !post->channel)
    return CP_EINVAL;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx)
    return CP_ENOMEM;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  unsigned char flags[2] = {post->thread, post->numbered};
  int ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && hash_str(ctx, post->title) &&
           hash_str(ctx, post->text) && hash_str(ctx, post->campaign) &&
           EVP_DigestUpdate(ctx, flags, sizeof flags) && hash_u64(ctx, post->n_media);
  for (size_t i = 0; ok && i < post->n_media; i++)
    ok = hash_str(ctx, post->media[i].src) && hash_str(ctx, post->media[i].alt);
  ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen * 2 == CP_STORE_HASH_LEN;
  EVP_MD_CTX_free(ctx);
  if (!ok)
    return CP_ENOMEM; /* libcrypto fails only on allocation for SHA-256 */
  memset(item, 0, sizeof *item);
  memcpy(item->id, post->id, sizeof item->id);
  item->calendar = post->calendar;
  item->uid = post->uid;
  item->occurrence = post->occurrence;
  item->channel = post->channel;
  item->due_ms = post->due * 1000;
  item->state = post->state;
  for (unsigned int i = 0; i < mdlen; i++)
    snprintf(item->hash + 2 * i, 3, "%02x", md[i]);
  return 0;
}

int cp_store_open(const char *backend, const char *location, struct cp_store **out, char *err,
                  size_t errlen) {
  if (err && errlen)
    err[0] = '\0';
  if (!location || !out) {
    if (err && errlen)
      snprintf(err, errlen, "store: no location given");
    return CP_EINVAL;
  }
  for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
    if (!backend || !strcmp(backend, backends[i]->name))
      return backends[i]->open(location, out, err, errlen);
  if (err && errlen)
    snprintf(err, errlen, "store: unknown backend \"%s\" (this build has: sqlite)", backend);
  return CP_EINVAL;
}

void cp_store_close(struct cp_store *s) {
  if (s)
    s->ops->close(s);
}

const char *cp_store_errmsg(const struct cp_store *s) {
  return s ? s->errmsg : "no store";
}

const char *cp_store_backend(const struct cp_store *s) {
  return s ? s->ops->name : "none";
}

/* Every entry point starts here: a store, a clean message, and a well-formed id if one is given. */
static int enter(struct cp_store *s, const char *id, bool need_id) {
  if (!s)
    return CP_EINVAL;
  s->errmsg[0] = '\0';
  if (need_id && !cp__store_id_valid(id))
    return cp__store_fail(s, CP_EINVAL, "store: \"%s\" is not a post id (%d hex digits)",
                          id ? id : "(null)", CP_POST_ID_LEN);
  return 0;
}

#define ENTER(s, id, need_id)                                                                      \
  do {                                                                                             \
    int enter_err = enter(s, id, need_id);                                                         \
    if (enter_err < 0)                                                                             \
      return enter_err;                                                                            \
  } while (0)

int cp_store_reconcile(struct cp_store *s, const struct cp_store_item *items, size_t n,
                       int64_t now_ms, bool dry_run, struct cp_store_counts *counts) {
  ENTER(s, NULL, false);
  if ((n && !items) || !counts)
    return cp__store_fail(s, CP_EINVAL, "store: reconcile without items or counts");
  for (size_t i = 0; i < n; i++) {
    const struct cp_store_item *it = &items[i];
    if (!cp__store_id_valid(it->id) || !it->calendar || !it->uid || !it->occurrence ||
        !it->channel || strlen(it->hash) != CP_STORE_HASH_LEN)
      return cp__store_fail(s, CP_EINVAL, "store: plan item %zu (id \"%.16s\") is incomplete", i,
                            it->id);
  }
  return s->ops->reconcile(s, items, n, now_ms, dry_run, counts);
}

int cp_store_next_due(struct cp_store *s, const char *channel, struct cp_store_post **out) {
  ENTER(s, NULL, false);
  if (!out)
    return CP_EINVAL;
  return s->ops->next_due(s, channel, out);
}

int cp_store_mark_sending(struct cp_store *s, const char *id, int64_t now_ms, bool *claimed) {
  ENTER(s, id, true);
  if (!claimed)
    return CP_EINVAL;
  return s->ops->mark_sending(s, id, now_ms, claimed);
}

int cp_store_record_attempt(struct cp_store *s, const char *id, const struct cp_store_result *r) {
  ENTER(s, id, true);
  if (!r || (unsigned)r->outcome >= sizeof outcome_names / sizeof outcome_names[0])
    return cp__store_fail(s, CP_EINVAL, "store: post %s: no valid outcome", id);
  switch (r->next) {
    case CP_STORE_SENT:
    case CP_STORE_FAILED:
    case CP_STORE_PENDING:
    case CP_STORE_UNKNOWN:
    case CP_STORE_MISSED:
      break;
    default:
      return cp__store_fail(s, CP_EINVAL, "store: post %s: an attempt cannot lead to %s", id,
                            cp_store_state_name(r->next));
  }
  return s->ops->record_attempt(s, id, r);
}

int cp_store_mark_missed(struct cp_store *s, const char *channel, int64_t grace_ms, int64_t now_ms,
                         struct cp_store_posts **missed) {
  ENTER(s, NULL, false);
  if (grace_ms < 0)
    return cp__store_fail(s, CP_EINVAL, "store: negative grace");
  return s->ops->mark_missed(s, channel, grace_ms, now_ms, missed);
}

int cp_store_skip(struct cp_store *s, const char *id, int64_t now_ms) {
  ENTER(s, id, true);
  return s->ops->skip(s, id, now_ms);
}

int cp_store_retry(struct cp_store *s, const char *id, int64_t now_ms) {
  ENTER(s, id, true);
  return s->ops->retry(s, id, now_ms);
}

int cp_store_get(struct cp_store *s, const char *id, struct cp_store_post **out) {
  ENTER(s, id, true);
  if (!out)
    return CP_EINVAL;
  return s->ops->get(s, id, out);
}

int cp_store_list(struct cp_store *s, const char *channel, unsigned state_mask, size_t limit,
                  struct cp_store_posts **out) {
  ENTER(s, NULL, false);
  if (!out)
    return CP_EINVAL;
  return s->ops->list(s, channel, state_mask, limit, out);
}

int cp_store_attempts(struct cp_store *s, const char *id, struct cp_store_attempts **out) {
  ENTER(s, id, true);
  if (!out)
    return CP_EINVAL;
  return s->ops->attempts(s, id, out);
}

int cp_store_channel_status(struct cp_store *s, const char *channel, int64_t now_ms,
                            struct cp_store_channel_status **out) {
  ENTER(s, NULL, false);
  if (!channel || !out)
    return CP_EINVAL;
  return s->ops->channel_status(s, channel, now_ms, out);
}

int cp_store_channel_pause(struct cp_store *s, const char *channel, int64_t until_ms,
                           const char *reason) {
  ENTER(s, NULL, false);
  if (!channel || until_ms < 0)
    return CP_EINVAL;
  return s->ops->channel_pause(s, channel, until_ms, reason);
}

int cp_store_channel_resume(struct cp_store *s, const char *channel) {
  ENTER(s, NULL, false);
  if (!channel)
    return CP_EINVAL;
  return s->ops->channel_resume(s, channel);
}

int cp_store_set_progress(struct cp_store *s, const char *id, const char *progress) {
  ENTER(s, id, true);
  if (!progress)
    return CP_EINVAL;
  return s->ops->set_progress(s, id, progress);
}

/* Ages beyond a century are a typo; the bound keeps age * 1000 + now far from overflowing. */
#define MAX_AGE_S (100LL * 366 * 86400)

static int check_samples(struct cp_store *s, const char *const *channels, size_t n_channels,
                         const int64_t *ages_s, size_t n_ages) {
  if (!channels || !n_channels || !ages_s || !n_ages)
    return cp__store_fail(s, CP_EINVAL, "store: engagement: no channels or no ages");
  for (size_t i = 0; i < n_channels; i++)
    if (!channels[i])
      return cp__store_fail(s, CP_EINVAL, "store: engagement: channel %zu is NULL", i);
  for (size_t i = 0; i < n_ages; i++)
    if (ages_s[i] <= 0 || ages_s[i] > MAX_AGE_S)
      return cp__store_fail(s, CP_EINVAL, "store: engagement: age %lld s is out of range",
                            (long long)ages_s[i]);
  return 0;
}

int cp_store_next_engagement(struct cp_store *s, const char *const *channels, size_t n_channels,
                             const int64_t *ages_s, size_t n_ages, int64_t now_ms,
                             struct cp_store_sample **out) {
  ENTER(s, NULL, false);
  int err = check_samples(s, channels, n_channels, ages_s, n_ages);
  if (err < 0)
    return err;
  if (!out)
    return CP_EINVAL;
  return s->ops->next_engagement(s, channels, n_channels, ages_s, n_ages, now_ms, out);
}

int cp_store_record_engagement(struct cp_store *s, const char *post_id, int64_t age_s,
                               int64_t sampled_ms, const struct cp_store_engagement *counts) {
  ENTER(s, post_id, true);
  if (age_s <= 0 || age_s > MAX_AGE_S)
    return cp__store_fail(s, CP_EINVAL, "store: engagement: age %lld s is out of range",
                          (long long)age_s);
  return s->ops->record_engagement(s, post_id, age_s, sampled_ms, counts);
}

int cp_store_skip_engagement(struct cp_store *s, const char *const *channels, size_t n_channels,
                             const int64_t *ages_s, size_t n_ages, int64_t now_ms,
                             size_t *skipped) {
  ENTER(s, NULL, false);
  int err = check_samples(s, channels, n_channels, ages_s, n_ages);
  if (err < 0)
    return err;
  size_t n = 0;
  err = s->ops->skip_engagement(s, channels, n_channels, ages_s, n_ages, now_ms, &n);
  if (err == 0 && skipped)
    *skipped = n;
  return err;
}

int cp_store_meta_set(struct cp_store *s, const char *key, const char *value) {
  ENTER(s, NULL, false);
  if (!key || !value)
    return CP_EINVAL;
  return s->ops->meta_set(s, key, value);
}

int cp_store_meta_get(struct cp_store *s, const char *key, char **value) {
  ENTER(s, NULL, false);
  if (!key || !value)
    return CP_EINVAL;
  return s->ops->meta_get(s, key, value);
}

static void post_clear(struct cp_store_post *p) {
  free(p->calendar);
  free(p->uid);
  free(p->occurrence);
  free(p->channel);
  free(p->remote_id);
  free(p->remote_url);
  free(p->progress);
}

void cp_store_post_free(struct cp_store_post *p) {
  if (!p)
    return;
  post_clear(p);
  free(p);
}

void cp_store_posts_free(struct cp_store_posts *l) {
  if (!l)
    return;
  for (size_t i = 0; i < l->n; i++)
    post_clear(&l->v[i]);
  free(l->v);
  free(l);
}

void cp_store_attempts_free(struct cp_store_attempts *l) {
  if (!l)
    return;
  for (size_t i = 0; i < l->n; i++) {
    free(l->v[i].message);
    free(l->v[i].remote_id);
    free(l->v[i].remote_url);
  }
  free(l->v);
  free(l);
}

void cp_store_channel_status_free(struct cp_store_channel_status *st) {
  if (!st)
    return;
  free(st->pause_reason);
  free(st->error_message);
  free(st);
}

void cp_store_sample_free(struct cp_store_sample *sample) {
  if (!sample)
    return;
  free(sample->channel);
  free(sample->remote_id);
  free(sample->remote_url);
  free(sample);
}

int cp_store_batch_begin(struct cp_store *s) {
  ENTER(s, NULL, false);
  return s->ops->batch_begin(s);
}

int cp_store_batch_end(struct cp_store *s, bool ok) {
  ENTER(s, NULL, false);
  return s->ops->batch_end(s, ok);
}
