/* HTTP client: libcurl multi on a libuv loop. See http.h. */
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "calpost/err.h"

/* A socket libcurl asked us to watch. Embeds a libuv handle: heap, freed in its close callback. */
struct sock {
  uv_poll_t poll;
  curl_socket_t fd;
  struct cp_http *h;
  struct sock *prev, *next;
  bool closing;
};

struct request {
  struct cp_http *h;
  CURL *easy;
  struct curl_slist *headers;
  char *body;                /* our copy of the request body */
  size_t body_len, body_off; /* for an upload (SMTP) read through on_read */
  curl_mime *mime;           /* a multipart body */
  struct curl_slist *rcpt;   /* SMTP recipients */
  bool public_only;          /* refuse non-public addresses (on_open_socket) */
  bool refused;              /* a connection was refused for its address */
  cp_http_cb cb;
  void *data;
  size_t max; /* cap on header + body bytes received */
  size_t got; /* header + body bytes received */
  bool over;  /* the cap was hit */
  char *resp; /* response body, NUL-terminated */
  size_t resp_len, resp_cap;
  struct cp_http_header *hdrs; /* of the latest response; name and value strings are malloc'd */
  size_t n_hdrs, hdrs_cap;
  uint64_t start_ms;
  CURLcode result; /* set when cancelled */
  bool sent;       /* computed when cancelled, before the easy handle goes */
  char errbuf[CURL_ERROR_SIZE];
  struct request *prev, *next;
};

struct cp_http {
  uv_loop_t *loop;
  CURLM *multi; /* NULL once closing */
  uv_timer_t timer;
  struct sock *socks;        /* open (not closing) sockets */
  struct request *active;    /* added to the multi handle */
  struct request *cancelled; /* completed with -ECANCELED once the handles are closed */
  bool closing;
  int pending_closes;
  void (*close_cb)(void *data);
  void *close_data;
};

#define DLIST_PUSH(head, x)                                                                        \
  do {                                                                                             \
    (x)->prev = NULL;                                                                              \
    (x)->next = (head);                                                                            \
    if (head)                                                                                      \
      (head)->prev = (x);                                                                          \
    (head) = (x);                                                                                  \
  } while (0)

#define DLIST_UNLINK(head, x)                                                                      \
  do {                                                                                             \
    if ((x)->prev)                                                                                 \
      (x)->prev->next = (x)->next;                                                                 \
    else                                                                                           \
      (head) = (x)->next;                                                                          \
    if ((x)->next)                                                                                 \
      (x)->next->prev = (x)->prev;                                                                 \
    (x)->prev = (x)->next = NULL;                                                                  \
  } while (0)

static void drain(struct cp_http *h);
static void maybe_finish_close(struct cp_http *h);

/* ---- sockets and timer (curl's multi-uv.c pattern) ------------------------------------------ */

static void sock_closed(uv_handle_t *handle) {
  struct sock *s = handle->data;
  struct cp_http *h = s->h;
  free(s);
  h->pending_closes--;
  maybe_finish_close(h);
}

static void sock_close(struct sock *s) {
  if (s->closing)
    return;
  s->closing = true;
  DLIST_UNLINK(s->h->socks, s);
  s->h->pending_closes++;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void on_poll(uv_poll_t *poll, int status, int events) {
  struct sock *s = poll->data;
  struct cp_http *h = s->h;
  int flags = 0;
  int running;

  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  if (!h->multi)
    return;
  curl_multi_socket_action(h->multi, s->fd, flags, &running);
  drain(h);
}

static int on_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  struct cp_http *h = userp;
  struct sock *s = socketp;
  int events = 0;

  switch (action) {
    case CURL_POLL_IN:
    case CURL_POLL_OUT:
    case CURL_POLL_INOUT:
      if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
          return -1;
        s->fd = fd;
        s->h = h;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) < 0) {
          free(s);
          return -1;
        }
        s->poll.data = s;
        DLIST_PUSH(h->socks, s);
        curl_multi_assign(h->multi, fd, s);
      }
      if (s->closing)
        return 0;
      if (action != CURL_POLL_IN)
        events |= UV_WRITABLE;
      if (action != CURL_POLL_OUT)
        events |= UV_READABLE;
      if (uv_poll_start(&s->poll, events, on_poll) < 0)
        return -1;
      break;
    case CURL_POLL_REMOVE:
      if (s) {
        sock_close(s);
        if (h->multi)
          curl_multi_assign(h->multi, fd, NULL);
      }
      break;
    default:
      break;
  }
  return 0;
}

static void on_timer(uv_timer_t *timer) {
  struct cp_http *h = timer->data;
  int running;

  if (!h->multi)
    return;
  curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  drain(h);
}

static int on_timeout_change(CURLM *multi, long timeout_ms, void *userp) {
  struct cp_http *h = userp;

  if (h->closing)
    return 0;
  if (timeout_ms < 0) {
    uv_timer_stop(&h->timer);
    return 0;
  }
  /* 0 means "call socket_action now"; doing it from the timer keeps us out of re-entrancy. */
  if (timeout_ms == 0)
    timeout_ms = 1;
  uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- requests ------------------------------------------------------------------------------- */

static void request_free(struct request *r) {
  if (!r)
    return;
  if (r->easy)
    curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->headers);
  curl_slist_free_all(r->rcpt);
  curl_mime_free(r->mime);
  free(r->body);
  free(r->resp);
  for (size_t i = 0; i < r->n_hdrs; i++) {
    free((char *)r->hdrs[i].name);
    free((char *)r->hdrs[i].value);
  }
  free(r->hdrs);
  free(r);
}

static bool account(struct request *r, size_t n) {
  if (r->got + n > r->max || r->got + n < r->got) {
    r->over = true;
    return false;
  }
  r->got += n;
  return true;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
  struct request *r = userdata;
  size_t n = size * nmemb;

  if (!account(r, n))
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  if (r->resp_len + n + 1 > r->resp_cap) {
    size_t cap = r->resp_cap ? r->resp_cap : 1024;
    while (cap < r->resp_len + n + 1)
      cap *= 2;
    char *nb = realloc(r->resp, cap);
    if (!nb)
      return 0;
    r->resp = nb;
    r->resp_cap = cap;
  }
  memcpy(r->resp + r->resp_len, ptr, n);
  r->resp_len += n;
  r->resp[r->resp_len] = '\0';
  return n;
}

static void clear_headers(struct request *r) {
  for (size_t i = 0; i < r->n_hdrs; i++) {
    free((char *)r->hdrs[i].name);
    free((char *)r->hdrs[i].value);
  }
  r->n_hdrs = 0;
}

static char *trimmed_dup(const char *s, size_t len) {
  while (len && isspace((unsigned char)*s)) {
    s++;
    len--;
  }
  while (len && isspace((unsigned char)s[len - 1]))
    len--;
  return strndup(s, len);
}

/* libcurl hands us one complete header line at a time, including its CRLF. */
static size_t on_header(char *line, size_t size, size_t nmemb, void *userdata) {
  struct request *r = userdata;
  size_t n = size * nmemb;

  if (!account(r, n))
    return 0;
  if (n >= 5 && !memcmp(line, "HTTP/", 5)) {
    clear_headers(r); /* a new response: 1xx, or a redirect's target */
    return n;
  }
  const char *colon = memchr(line, ':', n);
  if (!colon || colon == line)
    return n; /* the blank line at the end, or an obsolete folded line */
  if (r->n_hdrs == r->hdrs_cap) {
    size_t cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
    struct cp_http_header *nh = realloc(r->hdrs, cap * sizeof *nh);
    if (!nh)
      return 0;
    r->hdrs = nh;
    r->hdrs_cap = cap;
  }
  char *name = trimmed_dup(line, (size_t)(colon - line));
  char *value = trimmed_dup(colon + 1, n - (size_t)(colon + 1 - line));
  if (!name || !value) {
    free(name);
    free(value);
    return 0;
  }
  r->hdrs[r->n_hdrs].name = name;
  r->hdrs[r->n_hdrs].value = value;
  r->n_hdrs++;
  return n;
}

/* Converts a failed transfer's CURLcode, where it enters calpost. */
static int curl_to_err(struct request *r, CURLcode rc) {
  long os_errno = 0;

  if (r->over)
    return CP_ETOOBIG; /* our own write callback said stop */
  if (r->easy)
    curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os_errno);
  switch (rc) {
    case CURLE_OK:
      return 0;
    case CURLE_OUT_OF_MEMORY:
      return CP_ENOMEM;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
      return CP_EINVAL;
    case CURLE_FILESIZE_EXCEEDED:
      return CP_ETOOBIG;
    case CURLE_TOO_MANY_REDIRECTS:
      return CP_ELIMIT;
    case CURLE_OPERATION_TIMEDOUT:
      return -ETIMEDOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return -EHOSTUNREACH;
    case CURLE_COULDNT_CONNECT:
      return os_errno ? -(int)os_errno : -ECONNREFUSED;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
      return os_errno ? -(int)os_errno : -ECONNRESET;
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return -ECONNRESET;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return -EPROTO;
    case CURLE_ABORTED_BY_CALLBACK:
      return -ECANCELED;
    default:
      return -EIO;
  }
}

/* Whether the request may have reached the server. Failures before that point (resolving,
 * connecting, TLS) are safe to retry; after it the outcome is unknown. */
static bool maybe_sent(struct request *r, CURLcode rc) {
  long status = 0;
  curl_off_t pretransfer = 0;

  switch (rc) {
    case CURLE_OK:
      return true;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return false;
    default:
      break;
  }
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status > 0)
    return true;
  /* Pretransfer is stamped once the connection (and TLS) is up, right before the request goes. */
  curl_easy_getinfo(r->easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
  return pretransfer > 0;
}

static void respond(struct request *r, CURLcode rc, int err, bool sent) {
  struct cp_http_resp resp = {0};
  long status = 0;

  if (r->easy)
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  resp.err = err;
  resp.errmsg = "";
  if (err) {
    if (r->over)
      resp.errmsg = "response over the size cap";
    else if (r->refused)
      resp.errmsg = "the address is on a local or private network, which the config does not allow";
    else if (r->errbuf[0])
      resp.errmsg = r->errbuf;
    else
      resp.errmsg = rc ? curl_easy_strerror(rc) : "";
  }
  resp.status = status;
  resp.sent = sent;
  resp.headers = r->hdrs;
  resp.n_headers = r->n_hdrs;
  resp.body = r->resp ? r->resp : "";
  resp.body_len = r->resp_len;
  resp.elapsed_ms = (int64_t)(uv_now(r->h->loop) - r->start_ms);
  r->cb(&resp, r->data);
}

static void finish(struct request *r, CURLcode rc) {
  struct cp_http *h = r->h;

  curl_multi_remove_handle(h->multi, r->easy);
  DLIST_UNLINK(h->active, r);
  /* Trailing newline from curl's error buffer is noise in logs. */
  size_t el = strlen(r->errbuf);
  while (el && (r->errbuf[el - 1] == '\n' || r->errbuf[el - 1] == '\r'))
    r->errbuf[--el] = '\0';
  respond(r, rc, rc == CURLE_OK ? 0 : curl_to_err(r, rc), maybe_sent(r, rc));
  request_free(r);
}

/* Completes every finished transfer; called after every curl_multi_socket_action. */
static void drain(struct cp_http *h) {
  int pending;

  for (;;) {
    if (!h->multi)
      return; /* a callback closed the client */
    CURLMsg *msg = curl_multi_info_read(h->multi, &pending);
    if (!msg)
      return;
    if (msg->msg != CURLMSG_DONE)
      continue;
    struct request *r = NULL;
    CURLcode rc = msg->data.result;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    finish(r, rc);
  }
}

static bool valid_header_text(const char *s) {
  return !strpbrk(s, "\r\n");
}

/* Whether addr is a public unicast address (not loopback, private, link-local, CGNAT,
 * multicast, documentation or otherwise reserved). */
static bool public_address(const struct sockaddr *addr) {
  if (addr->sa_family == AF_INET) {
    uint32_t a = ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr);
    static const struct {
      uint32_t net, mask;
    } blocked[] = {
        {0x00000000, 0xff000000}, /* 0/8 */
        {0x0a000000, 0xff000000}, /* 10/8 */
        {0x64400000, 0xffc00000}, /* 100.64/10 */
        {0x7f000000, 0xff000000}, /* 127/8 */
        {0xa9fe0000, 0xffff0000}, /* 169.254/16 */
        {0xac100000, 0xfff00000}, /* 172.16/12 */
        {0xc0000000, 0xffffff00}, /* 192.0.0/24 */
        {0xc0000200, 0xffffff00}, /* 192.0.2/24 */
        {0xc0a80000, 0xffff0000}, /* 192.168/16 */
        {0xc6120000, 0xfffe0000}, /* 198.18/15 */
        {0xc6336400, 0xffffff00}, /* 198.51.100/24 */
        {0xcb007100, 0xffffff00}, /* 203.0.113/24 */
        {0xe0000000, 0xe0000000}, /* 224/3: multicast and reserved */
    };
    for (size_t i = 0; i < sizeof blocked / sizeof blocked[0]; i++)
      if ((a & blocked[i].mask) == blocked[i].net)
        return false;
    return true;
  }
  if (addr->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    const uint8_t *b = a6->s6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6) || IN6_IS_ADDR_V4COMPAT(a6)) {
      struct sockaddr_in v4 = {.sin_family = AF_INET};
      memcpy(&v4.sin_addr, b + 12, 4);
      return public_address((const struct sockaddr *)&v4);
    }
    if (IN6_IS_ADDR_UNSPECIFIED(a6) || IN6_IS_ADDR_LOOPBACK(a6) || IN6_IS_ADDR_LINKLOCAL(a6) ||
        IN6_IS_ADDR_SITELOCAL(a6) || IN6_IS_ADDR_MULTICAST(a6))
      return false;
    if ((b[0] & 0xfe) == 0xfc) /* fc00::/7 unique local */
      return false;
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) /* 2001:db8::/32 */
      return false;
    if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b) /* 64:ff9b::/96 NAT64 */
      return false;
    return true;
  }
  return false;
}

/* Opens the sockets of a request that may reach public addresses only; every connection of
 * the transfer (redirects included) passes here, after name resolution. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *address) {
  struct request *r = clientp;
  if (r->public_only && !public_address(&address->addr)) {
    r->refused = true;
    return CURL_SOCKET_BAD;
  }
  return socket(address->family, address->socktype, address->protocol);
}

/* Feeds an upload (the SMTP message) from our copy of the body. */
static size_t on_read(char *buf, size_t size, size_t nitems, void *userdata) {
  struct request *r = userdata;
  size_t n = size * nitems, left = r->body_len - r->body_off;
  if (n > left)
    n = left;
  memcpy(buf, r->body + r->body_off, n);
  r->body_off += n;
  return n;
}

static bool is_smtp_url(const char *url) {
  return !strncasecmp(url, "smtp://", 7) || !strncasecmp(url, "smtps://", 8);
}

/* Whether url names 127.0.0.1, ::1 or localhost. */
static bool loopback_url(const char *url) {
  CURLU *u = curl_url();
  char *host = NULL;
  bool ok = false;
  if (u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
    ok = !strcmp(host, "127.0.0.1") || !strcmp(host, "[::1]") || !strcasecmp(host, "localhost");
  curl_free(host);
  curl_url_cleanup(u);
  return ok;
}

static int setup_mime(struct request *r, const struct cp_http_req *req) {
  r->mime = curl_mime_init(r->easy);
  if (!r->mime)
    return CP_ENOMEM;
  for (size_t i = 0; i < req->n_parts; i++) {
    const struct cp_http_part *pt = &req->parts[i];
    curl_mimepart *mp = curl_mime_addpart(r->mime);
    if (!pt->name || !pt->data)
      return CP_EINVAL;
    if (!mp || curl_mime_name(mp, pt->name) != CURLE_OK ||
        curl_mime_data(mp, pt->data, pt->len ? pt->len : CURL_ZERO_TERMINATED) != CURLE_OK)
      return CP_ENOMEM;
    if (pt->filename && curl_mime_filename(mp, pt->filename) != CURLE_OK)
      return CP_ENOMEM;
    const char *type = pt->content_type;
    if (!type && pt->filename)
      type = "application/octet-stream";
    if (type && curl_mime_type(mp, type) != CURLE_OK)
      return CP_ENOMEM;
  }
  return 0;
}

/* SMTP: envelope, login and TLS; the body is the message, uploaded. */
static int setup_smtp(struct request *r, const struct cp_http_req *req) {
  CURL *e = r->easy;
  /* No message, no envelope: a login check (libcurl sends HELP after AUTH, no mail). */
  bool login_only = !req->mail_from && !req->n_mail_rcpt && !req->body;
  if (!login_only && (!req->mail_from || !req->n_mail_rcpt || !req->body))
    return CP_EINVAL;
  for (size_t i = 0; i < req->n_mail_rcpt; i++) {
    if (!req->mail_rcpt[i] || !valid_header_text(req->mail_rcpt[i]))
      return CP_EINVAL;
    struct curl_slist *l = curl_slist_append(r->rcpt, req->mail_rcpt[i]);
    if (!l)
      return CP_ENOMEM;
    r->rcpt = l;
  }
  if (req->mail_from && !valid_header_text(req->mail_from))
    return CP_EINVAL;
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
  if (req->mail_from)
    curl_easy_setopt(e, CURLOPT_MAIL_FROM, req->mail_from);
  curl_easy_setopt(e, CURLOPT_MAIL_RCPT, r->rcpt);
  /* STARTTLS is required, except that a test server on loopback may go without it. */
  if (!strncasecmp(req->url, "smtp://", 7))
    curl_easy_setopt(e, CURLOPT_USE_SSL,
                     req->require_tls || !loopback_url(req->url) ? (long)CURLUSESSL_ALL
                                                                 : (long)CURLUSESSL_NONE);
  if (req->username)
    curl_easy_setopt(e, CURLOPT_USERNAME, req->username);
  if (req->password)
    curl_easy_setopt(e, CURLOPT_PASSWORD, req->password);
  if (login_only)
    return 0;
  r->body_len = req->body_len;
  curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
  curl_easy_setopt(e, CURLOPT_READDATA, r);
  curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
  return 0;
}

static bool valid_method(const char *m) {
  size_t n = strlen(m);
  if (n == 0 || n > 16)
    return false;
  for (size_t i = 0; i < n; i++)
    if (m[i] < 'A' || m[i] > 'Z')
      return false;
  return true;
}

/* Accepts only absolute http(s) URLs, so a typo fails here and not inside the transfer. */
static bool valid_url(const char *url, bool smtp) {
  CURLU *u = curl_url();
  char *scheme = NULL;
  bool ok = false;

  if (!u)
    return false;
  if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK)
    ok = smtp ? !strcmp(scheme, "smtp") || !strcmp(scheme, "smtps")
              : !strcmp(scheme, "http") || !strcmp(scheme, "https");
  curl_free(scheme);
  curl_url_cleanup(u);
  return ok;
}

static int add_header(struct request *r, const char *name, const char *value) {
  size_t n = strlen(name) + strlen(value) + 3;
  char *line = malloc(n);
  if (!line)
    return CP_ENOMEM;
  /* "Name;" is how libcurl sends an empty header; "Name:" would remove it. */
  if (*value)
    snprintf(line, n, "%s: %s", name, value);
  else
    snprintf(line, n, "%s;", name);
  struct curl_slist *l = curl_slist_append(r->headers, line);
  free(line);
  if (!l)
    return CP_ENOMEM;
  r->headers = l;
  return 0;
}

static int setup(struct request *r, const struct cp_http_req *req) {
  CURL *e = r->easy;
  const char *method = req->method ? req->method : (req->body || req->n_parts ? "POST" : "GET");
  bool has_expect = false;
  int err;

  for (size_t i = 0; i < req->n_headers; i++) {
    const struct cp_http_header *hd = &req->headers[i];
    if (!hd->name || !*hd->name || !hd->value || strchr(hd->name, ':') ||
        !valid_header_text(hd->name) || !valid_header_text(hd->value))
      return CP_EINVAL;
    if (!strcasecmp(hd->name, "Expect"))
      has_expect = true;
    err = add_header(r, hd->name, hd->value);
    if (err)
      return err;
  }
  /* Without this libcurl waits up to a second for "100 Continue" on larger bodies. */
  if (!has_expect) {
    struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
    if (!l)
      return CP_ENOMEM;
    r->headers = l;
  }
  if (req->n_parts && req->body)
    return CP_EINVAL;
  if (req->body && req->body_len) {
    r->body = malloc(req->body_len);
    if (!r->body)
      return CP_ENOMEM;
    memcpy(r->body, req->body, req->body_len);
  }

  curl_easy_setopt(e, CURLOPT_URL, req->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, req->follow_redirects ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)CP_HTTP_MAX_REDIRECTS);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   req->connect_timeout_ms > 0 ? req->connect_timeout_ms
                                               : (long)CP_HTTP_CONNECT_TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   req->timeout_ms > 0 ? req->timeout_ms : (long)CP_HTTP_TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "calpost/" CALPOST_VERSION);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  if (req->ca_file)
    curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
  r->public_only = req->public_only;
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
  if (is_smtp_url(req->url))
    return setup_smtp(r, req);

  /* libcurl silently resends a request when a reused connection dies before any answer. For a
   * POST that did arrive that is a duplicate post, so anything but GET and HEAD goes on a fresh
   * connection, where libcurl never retries, unless the request says a repeat is harmless. */
  if (strcmp(method, "GET") && strcmp(method, "HEAD") && !req->idempotent)
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);

  if (!strcmp(method, "GET")) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else if (!strcmp(method, "HEAD")) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (req->n_parts) {
    err = setup_mime(r, req);
    if (err)
      return err;
    curl_easy_setopt(e, CURLOPT_MIMEPOST, r->mime);
    if (strcmp(method, "POST"))
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  } else {
    /* POST machinery sends the body; CUSTOMREQUEST renames the method for PUT, PATCH, ... */
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(r->body ? req->body_len : 0));
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body ? r->body : "");
    if (strcmp(method, "POST"))
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  return 0;
}

/* ---- public --------------------------------------------------------------------------------- */

int cp_http_init(uv_loop_t *loop, struct cp_http **out) {
  struct cp_http *h = calloc(1, sizeof *h);
  int err;

  if (!h)
    return CP_ENOMEM;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    free(h);
    return CP_ENOMEM;
  }
  h->loop = loop;
  h->multi = curl_multi_init();
  if (!h->multi) {
    curl_global_cleanup();
    free(h);
    return CP_ENOMEM;
  }
  err = uv_timer_init(loop, &h->timer);
  if (err < 0) {
    curl_multi_cleanup(h->multi);
    curl_global_cleanup();
    free(h);
    return err;
  }
  h->timer.data = h;
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timeout_change);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  *out = h;
  return 0;
}

int cp_http_request(struct cp_http *h, const struct cp_http_req *req, cp_http_cb cb, void *data) {
  const char *method;
  int err;

  if (!h || !req || !req->url || !cb || h->closing)
    return CP_EINVAL;
  method = req->method ? req->method : (req->body || req->n_parts ? "POST" : "GET");
  if (!valid_method(method) || !valid_url(req->url, is_smtp_url(req->url)))
    return CP_EINVAL;

  struct request *r = calloc(1, sizeof *r);
  if (!r)
    return CP_ENOMEM;
  r->h = h;
  r->cb = cb;
  r->data = data;
  r->max = req->max_response ? req->max_response : CP_HTTP_MAX_RESPONSE;
  r->easy = curl_easy_init();
  if (!r->easy) {
    free(r);
    return CP_ENOMEM;
  }
  err = setup(r, req);
  if (err) {
    request_free(r);
    return err;
  }
  r->start_ms = uv_now(h->loop);
  /* Adding only arms the timer (on_timeout_change); the transfer starts from the loop. */
  if (curl_multi_add_handle(h->multi, r->easy) != CURLM_OK) {
    request_free(r);
    return CP_ENOMEM;
  }
  DLIST_PUSH(h->active, r);
  /* A new request starts in the next loop iteration, not a millisecond later: the 1 ms that
   * on_timeout_change gives a "now" is for libcurl's own repeats (no busy loop), and a post's
   * request is on its due time's critical path. */
  if (uv_is_active((uv_handle_t *)&h->timer) && uv_timer_get_due_in(&h->timer) > 0)
    uv_timer_start(&h->timer, on_timer, 0, 0);
  return 0;
}

static void timer_closed(uv_handle_t *handle) {
  struct cp_http *h = handle->data;
  h->pending_closes--;
  maybe_finish_close(h);
}

/* Runs once every handle is closed: cancelled requests learn their fate, then h goes. */
static void maybe_finish_close(struct cp_http *h) {
  if (!h->closing || h->pending_closes > 0)
    return;
  while (h->cancelled) {
    struct request *r = h->cancelled;
    DLIST_UNLINK(h->cancelled, r);
    respond(r, r->result, -ECANCELED, r->sent);
    request_free(r);
  }
  void (*cb)(void *) = h->close_cb;
  void *data = h->close_data;
  free(h);
  curl_global_cleanup();
  if (cb)
    cb(data);
}

void cp_http_close(struct cp_http *h, void (*cb)(void *data), void *data) {
  if (!h || h->closing)
    return;
  h->closing = true;
  h->close_cb = cb;
  h->close_data = data;

  while (h->active) {
    struct request *r = h->active;
    DLIST_UNLINK(h->active, r);
    r->result = CURLE_ABORTED_BY_CALLBACK;
    r->sent = maybe_sent(r, CURLE_ABORTED_BY_CALLBACK);
    snprintf(r->errbuf, sizeof r->errbuf, "cancelled: the HTTP client is closing");
    curl_multi_remove_handle(h->multi, r->easy);
    curl_easy_cleanup(r->easy);
    r->easy = NULL;
    DLIST_PUSH(h->cancelled, r);
  }
  /* Stop watching before libcurl closes the sockets of its connection cache. */
  while (h->socks)
    sock_close(h->socks);
  /* NULL first: socket callbacks during the cleanup must not call back into the multi handle. */
  CURLM *multi = h->multi;
  h->multi = NULL;
  curl_multi_cleanup(multi);
  uv_timer_stop(&h->timer);
  h->pending_closes++;
  uv_close((uv_handle_t *)&h->timer, timer_closed);
}

const char *cp_http_header(const struct cp_http_resp *resp, const char *name) {
  for (size_t i = 0; i < resp->n_headers; i++)
    if (!strcasecmp(resp->headers[i].name, name))
      return resp->headers[i].value;
  return NULL;
}
