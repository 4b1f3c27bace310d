/* The outbox connector: writes each post as a JSON file into a folder.
 *
 *   [channel drafts]
 *   type = outbox
 *   dir = outbox            ; relative to the config file's folder; created if missing
 *
 * The file is <post id>.json, written atomically (a temporary file in the same folder, fsync,
 * rename, fsync of the folder), so a reader never sees half a post and a resend replaces the same
 * file: publishing is idempotent.
 *
 * Completion: the write runs on libuv's thread pool (uv_queue_work) and complete() is called from
 * the after-work callback on the loop. So publish never blocks the loop on a slow disk or fsync,
 * and never completes from inside itself. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "connector_registry.h"

struct outbox {
  const struct cp_host *host;
  char *name;
  char *dir;        /* absolute, resolved */
  char *url_prefix; /* "file://<dir, percent-encoded>/" */
};

struct job {
  uv_work_t work;
  struct outbox *o;
  const struct cp_publish_req *req;
  char *json;
  size_t len;
  char file[CP_POST_ID_LEN + 8]; /* "<id>.json" */
  int err;                       /* -errno from the worker */
  const char *step;              /* the call that failed */
};

static const char *const known_keys[] = {"dir", NULL};

static void outbox_free(void *instance) {
  struct outbox *o = instance;
  if (!o)
    return;
  free(o->name);
  free(o->dir);
  free(o->url_prefix);
  free(o);
}

static char *file_url_prefix(const char *dir) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(dir);
  char *u = malloc(7 + 3 * n + 2);
  char *p = u;

  if (!u)
    return NULL;
  p += sprintf(p, "file://");
  for (const unsigned char *s = (const unsigned char *)dir; *s; s++) {
    if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
        strchr("/-._~", *s)) {
      *p++ = (char)*s;
    } else {
      *p++ = '%';
      *p++ = hex[*s >> 4];
      *p++ = hex[*s & 15];
    }
  }
  *p++ = '/';
  *p = '\0';
  return u;
}

/* Resolves path into real (PATH_MAX bytes). Returns 0 or -errno. */
static int usable_dir(const char *path, char *real) {
  struct stat st;

  if (!realpath(path, real) || stat(real, &st) < 0)
    return -errno;
  if (!S_ISDIR(st.st_mode))
    return -ENOTDIR;
  if (access(real, W_OK | X_OK) < 0)
    return -errno;
  return 0;
}

/* A write interrupted by a crash leaves ".<id>.json.XXXXXX" behind (the rename never happened,
 * so the post was not published and will be written again): remove such files at start. */
static void remove_stale_temps(const char *dir) {
  DIR *dp = opendir(dir);
  if (!dp)
    return;
  for (struct dirent *de; (de = readdir(dp));) {
    const char *n = de->d_name, *j = strstr(n, ".json.");
    if (n[0] == '.' && j && strlen(j) == 12 && de->d_type != DT_DIR)
      unlinkat(dirfd(dp), n, 0);
  }
  closedir(dp);
}

static int outbox_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                       void **instance) {
  int line = conf->line;
  const char *dir = conf->get(conf, "dir", &line);
  char path[PATH_MAX], real[PATH_MAX];
  const char *slash = conf->file ? strrchr(conf->file, '/') : NULL;
  int err;

  cp_connector_check_keys(host, conf, known_keys);
  if (!dir || !*dir) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] needs 'dir = FOLDER' for the post files",
              conf->file, conf->line, conf->name);
    return CP_ECONFIG;
  }
  if (dir[0] != '/' && slash)
    snprintf(path, sizeof path, "%.*s/%s", (int)(slash - conf->file), conf->file, dir);
  else
    snprintf(path, sizeof path, "%s", dir);
  /* Creating the last level only: a missing parent is more likely a typo than a wish. */
  if (mkdir(path, 0755) < 0 && errno != EEXIST) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] dir: cannot create %s: %s", conf->file, line,
              conf->name, path, strerror(errno));
    return CP_ECONFIG;
  }
  err = usable_dir(path, real);
  if (err) {
    host->log(host, CP_LOG_ERROR, "%s:%d: [channel %s] dir: %s is not a writable folder: %s",
              conf->file, line, conf->name, path, cp_strerror(err));
    return CP_ECONFIG;
  }

  remove_stale_temps(real);
  struct outbox *o = calloc(1, sizeof *o);
  if (!o)
    return CP_ENOMEM;
  o->host = host;
  o->name = strdup(conf->name ? conf->name : "outbox");
  o->dir = strdup(real);
  o->url_prefix = file_url_prefix(real);
  if (!o->name || !o->dir || !o->url_prefix) {
    outbox_free(o);
    return CP_ENOMEM;
  }
  *instance = o;
  return 0;
}

static int outbox_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  if ((!post->text || !*post->text) && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  return 0;
}

static bool id_is_safe(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > CP_POST_ID_LEN)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
      return false;
  return true;
}

static int write_all(int fd, const char *p, size_t len) {
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Thread pool: temp file in the same folder, fsync, rename over the final name, fsync the folder
 * so the rename survives a power cut. */
static void write_work(uv_work_t *work) {
  struct job *j = work->data;
  char tmp[PATH_MAX], dst[PATH_MAX];
  int fd, dfd, err;

  snprintf(dst, sizeof dst, "%s/%s", j->o->dir, j->file);
  /* A leading dot keeps readers globbing *.json off half-written files. */
  snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", j->o->dir, j->file);
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    j->err = -errno;
    j->step = "create temporary file";
    return;
  }
  err = write_all(fd, j->json, j->len);
  j->step = "write";
  if (!err && fchmod(fd, 0644) < 0) {
    err = -errno;
    j->step = "chmod";
  }
  if (!err && fsync(fd) < 0) {
    err = -errno;
    j->step = "fsync";
  }
  if (close(fd) < 0 && !err) {
    err = -errno;
    j->step = "close";
  }
  if (!err && rename(tmp, dst) < 0) {
    err = -errno;
    j->step = "rename";
  }
  if (err) {
    unlink(tmp);
    j->err = err;
    return;
  }
  dfd = open(j->o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    if (fsync(dfd) < 0 && errno != EINVAL) {
      j->err = -errno;
      j->step = "fsync folder";
    }
    close(dfd);
  }
}

/* Loop thread. Full disks and flaky storage pass; a folder we may not write to needs a person. */
static enum cp_outcome outcome_of(int err) {
  switch (-err) {
    case ENOSPC:
    case EDQUOT:
    case EIO:
    case EAGAIN:
    case EINTR:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case ECANCELED:
      return CP_OUTCOME_RETRY;
    default:
      return CP_OUTCOME_PERMANENT;
  }
}

static void write_done(uv_work_t *work, int status) {
  struct job *j = work->data;
  struct outbox *o = j->o;
  struct cp_result res = {0};

  if (status == UV_ECANCELED) {
    j->err = -ECANCELED;
    j->step = "queue";
  }
  if (j->err == 0) {
    res.outcome = CP_OUTCOME_OK;
    snprintf(res.remote_id, sizeof res.remote_id, "%s", j->file);
    snprintf(res.remote_url, sizeof res.remote_url, "%s%s", o->url_prefix, j->file);
  } else {
    res.outcome = outcome_of(j->err);
    res.err = j->err;
    snprintf(res.message, sizeof res.message, "cannot write %s/%s: %s: %s", o->dir, j->file,
             j->step, cp_strerror(j->err));
    o->host->log(o->host, CP_LOG_ERROR, "%s", res.message);
  }
  const struct cp_publish_req *req = j->req;
  free(j->json);
  free(j);
  req->host->complete(req, &res);
}

static int outbox_publish(void *instance, const struct cp_post *post,
                          const struct cp_publish_req *req) {
  struct outbox *o = instance;
  json_t *root;
  struct job *j;
  int err;

  if (!id_is_safe(post->id))
    return CP_EINVAL;
  root = cp_connector_post_json(post);
  if (!root)
    return CP_EUTF8;
  j = calloc(1, sizeof *j);
  if (!j) {
    json_decref(root);
    return CP_ENOMEM;
  }
  j->json = json_dumps(root, JSON_INDENT(2));
  json_decref(root);
  if (!j->json) {
    free(j);
    return CP_ENOMEM;
  }
  j->len = strlen(j->json);
  /* A final newline makes the file friendlier to cat and diff. */
  char *nl = realloc(j->json, j->len + 2);
  if (!nl) {
    free(j->json);
    free(j);
    return CP_ENOMEM;
  }
  j->json = nl;
  j->json[j->len++] = '\n';
  j->json[j->len] = '\0';
  j->o = o;
  j->req = req;
  snprintf(j->file, sizeof j->file, "%s.json", post->id);
  j->work.data = j;
  err = uv_queue_work(o->host->loop, &j->work, write_work, write_done);
  if (err < 0) {
    free(j->json);
    free(j);
    return err;
  }
  return 0;
}

const struct cp_connector cp_connector_outbox = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "outbox",
    .description = "writes each post as a JSON file into a folder (atomic, idempotent)",
    /* Media go into the file as references (src, alt): the outbox shows what would be posted. */
    .caps = CP_CAP_IDEMPOTENT | CP_CAP_MEDIA,
    .init = outbox_init,
    .validate = outbox_validate,
    .publish = outbox_publish,
    .free = outbox_free,
};
