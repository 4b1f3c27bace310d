/* Media loading for connectors. See media.h. */
#include "media.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <magic.h>

#include "calpost/err.h"

#define MEDIA_TIMEOUT_MS 60000

struct load {
  uv_work_t work; /* local files: read in the thread pool */
  cp_media_cb cb;
  void *data;
  char *src;
  char *alt;
  char *filename;
  size_t max;
  /* Filled by the read (thread pool) or the fetch. */
  unsigned char *bytes;
  size_t len;
  int err;
  char errmsg[512];
};

static magic_t cookie; /* loaded once, used on the loop thread only */

const char *cp_media_sniff(const unsigned char *data, size_t len) {
  if (!cookie) {
    cookie = magic_open(MAGIC_MIME_TYPE | MAGIC_NO_CHECK_COMPRESS | MAGIC_ERROR);
    if (!cookie)
      return NULL;
    if (magic_load(cookie, NULL) != 0) {
      magic_close(cookie);
      cookie = NULL;
      return NULL;
    }
  }
  if (!data || !len)
    return NULL;
  const char *t = magic_buffer(cookie, data, len);
  return t && strchr(t, '/') ? t : NULL;
}

static bool image_or_video(const char *type) {
  return type && (!strncasecmp(type, "image/", 6) || !strncasecmp(type, "video/", 6));
}

static void load_free(struct load *l) {
  free(l->src);
  free(l->alt);
  free(l->filename);
  free(l->bytes);
  free(l);
}

/* Checks the bytes and hands them to the connector; declared is the server's Content-Type. */
static void deliver(struct load *l, const char *declared) {
  struct cp_media_blob b = {
      .err = l->err, .errmsg = l->errmsg, .alt = l->alt, .filename = l->filename};
  if (!b.err) {
    const char *type = cp_media_sniff(l->bytes, l->len);
    if (declared && !image_or_video(declared)) {
      b.err = CP_EINVAL;
      snprintf(l->errmsg, sizeof l->errmsg, "media '%s' is %s, not an image or a video", l->src,
               declared);
    } else if (!image_or_video(type)) {
      b.err = CP_EINVAL;
      snprintf(l->errmsg, sizeof l->errmsg,
               "media '%s' is not an image or a video (its content is %s)", l->src,
               type ? type : "unknown");
    } else {
      b.data = l->bytes;
      b.len = l->len;
      b.content_type = type;
    }
  }
  if (b.err)
    b.errmsg = l->errmsg;
  else
    b.errmsg = "";
  l->cb(&b, l->data);
  load_free(l);
}

/* ---- local files ---------------------------------------------------------------------------- */

static void read_work(uv_work_t *w) {
  struct load *l = w->data;
  struct stat st;
  int fd = open(l->src, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    l->err = -errno;
    snprintf(l->errmsg, sizeof l->errmsg, "media '%s': %s", l->src, strerror(errno));
    return;
  }
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    l->err = CP_EINVAL;
    snprintf(l->errmsg, sizeof l->errmsg, "media '%s' is not a regular file", l->src);
  } else if ((size_t)st.st_size > l->max) {
    l->err = CP_ETOOBIG;
    snprintf(l->errmsg, sizeof l->errmsg, "media '%s' has %lld bytes, the limit is %zu", l->src,
             (long long)st.st_size, l->max);
  } else if (!(l->bytes = malloc(st.st_size ? (size_t)st.st_size : 1))) {
    l->err = CP_ENOMEM;
    snprintf(l->errmsg, sizeof l->errmsg, "out of memory");
  } else {
    size_t got = 0;
    while (got < (size_t)st.st_size) {
      ssize_t n = read(fd, l->bytes + got, (size_t)st.st_size - got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        l->err = n < 0 ? -errno : -EIO;
        snprintf(l->errmsg, sizeof l->errmsg, "media '%s': read failed", l->src);
        break;
      }
      got += (size_t)n;
    }
    l->len = got;
  }
  close(fd);
}

static void read_done(uv_work_t *w, int status) {
  struct load *l = w->data;
  if (status < 0 && !l->err) {
    l->err = status;
    snprintf(l->errmsg, sizeof l->errmsg, "media '%s': %s", l->src, uv_strerror(status));
  }
  deliver(l, NULL);
}

/* ---- URLs ----------------------------------------------------------------------------------- */

static void on_fetched(const struct cp_http_resp *resp, void *data) {
  struct load *l = data;
  const char *declared = NULL;
  if (resp->err) {
    l->err = resp->err;
    snprintf(l->errmsg, sizeof l->errmsg, "media '%s' could not be fetched: %s", l->src,
             resp->err == CP_ETOOBIG ? "it is over the size limit" : resp->errmsg);
  } else if (resp->status != 200) {
    l->err = -EIO;
    snprintf(l->errmsg, sizeof l->errmsg, "media '%s' could not be fetched: HTTP %ld", l->src,
             resp->status);
  } else if (resp->body_len > l->max) {
    l->err = CP_ETOOBIG;
    snprintf(l->errmsg, sizeof l->errmsg, "media '%s' has %zu bytes, the limit is %zu", l->src,
             resp->body_len, l->max);
  } else {
    for (size_t i = 0; i < resp->n_headers; i++)
      if (!strcasecmp(resp->headers[i].name, "Content-Type"))
        declared = resp->headers[i].value;
    if (!declared) {
      l->err = CP_EINVAL;
      snprintf(l->errmsg, sizeof l->errmsg, "media '%s' came without a Content-Type", l->src);
    } else if (!(l->bytes = malloc(resp->body_len ? resp->body_len : 1))) {
      l->err = CP_ENOMEM;
      snprintf(l->errmsg, sizeof l->errmsg, "out of memory");
    } else {
      memcpy(l->bytes, resp->body, resp->body_len);
      l->len = resp->body_len;
    }
  }
  deliver(l, declared);
}

/* The last path segment of url (without query), or "media". */
static char *url_filename(const char *url) {
  CURLU *u = curl_url();
  char *path = NULL, *name = NULL;
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PATH, &path, CURLU_URLDECODE) == CURLUE_OK) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (*base && !strpbrk(base, "\"\r\n\\"))
      name = strdup(base);
  }
  curl_free(path);
  curl_url_cleanup(u);
  return name ? name : strdup("media");
}

static bool is_loopback_http(const char *url) {
  return !strncmp(url, "http://127.0.0.1:", 17) || !strncmp(url, "http://127.0.0.1/", 17) ||
         !strncmp(url, "http://localhost:", 17) || !strncmp(url, "http://[::1]:", 13);
}

int cp_media_load(uv_loop_t *loop, struct cp_http *http, const struct cp_media_opts *opts,
                  const struct cp_media *m, cp_media_cb cb, void *data) {
  if (!loop || !opts || !m || !m->src || !*m->src || !cb)
    return CP_EINVAL;
  bool remote = strstr(m->src, "://") != NULL;
  if (remote && strncasecmp(m->src, "https://", 8) &&
      !(opts->allow_local && is_loopback_http(m->src)))
    return CP_EINVAL; /* only https (plain http to loopback when local addresses are allowed) */
  if (remote && !http)
    return CP_EINVAL;

  struct load *l = calloc(1, sizeof *l);
  if (!l)
    return CP_ENOMEM;
  l->cb = cb;
  l->data = data;
  l->max = opts->max_size ? opts->max_size : CP_MEDIA_DEFAULT_MAX_SIZE;
  l->src = strdup(m->src);
  l->alt = m->alt ? strdup(m->alt) : NULL;
  if (remote) {
    l->filename = url_filename(m->src);
  } else {
    const char *slash = strrchr(m->src, '/');
    l->filename = strdup(slash ? slash + 1 : m->src);
  }
  if (!l->src || !l->filename || (m->alt && !l->alt)) {
    load_free(l);
    return CP_ENOMEM;
  }
  (void)cp_media_sniff(NULL, 0); /* load the magic database here, on the loop thread */

  int rc;
  if (remote) {
    struct cp_http_header accept = {"Accept", "image/*, video/*"};
    struct cp_http_req req = {
        .method = "GET",
        .url = l->src,
        .headers = &accept,
        .n_headers = 1,
        .timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : MEDIA_TIMEOUT_MS,
        .max_response = l->max + 64 * 1024, /* the body and its headers */
        .follow_redirects = true,           /* https targets only */
        .public_only = !opts->allow_local,
    };
    rc = cp_http_request(http, &req, on_fetched, l);
  } else {
    l->work.data = l;
    rc = uv_queue_work(loop, &l->work, read_work, read_done);
  }
  if (rc) {
    load_free(l);
    return rc;
  }
  return 0;
}
