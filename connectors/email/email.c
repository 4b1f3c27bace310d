/* The email connector: sends each post as an email through an SMTP submission server.
 *
 *   [channel newsletter]
 *   type = email
 *   server = smtp://mail.example.org:587     ; or smtps://mail.example.org (port 465)
 *   from = Calpost <calpost@example.org>
 *   to = team@example.org, Jane Doe <jane@example.org>
 *   bcc = no                                  ; yes: recipients do not see each other
 *   username = calpost@example.org            ; AUTH (PLAIN/LOGIN), needs password_file/_env
 *   password_file = smtp.password             ; or password_env = CALPOST_SMTP_PASSWORD
 *   starttls = yes                            ; no: only for a server on this machine
 *   ca_file = /etc/calpost/smtp-ca.pem        ; a CA bundle for a private server
 *   subject_prefix = [calpost]
 *   timeout = 60
 *
 * The message (RFC 5322, built here): From, To (or "undisclosed-recipients:;" with bcc), Subject
 * (the post title; the first line of the text if there is none; RFC 2047 encoded words when not
 * ASCII), Date, a Message-ID derived from the post (<calpost-ID@from-domain>: a resend carries
 * the same one, so duplicates can be spotted), and a multipart/alternative body with a text/plain
 * and a text/html part (quoted-printable UTF-8; links as <a href>). Media are attached (inline,
 * base64) inside a multipart/mixed. Lines end in CRLF and stay under 78 characters.
 *
 * The transfer is libcurl's SMTP through host->http_request (STARTTLS required unless the server
 * is on this machine and starttls = no). resp->status is the last SMTP reply: 2yz is OK, 4yz RETRY,
 * 530/534/535 (authentication) AUTH, other 5yz PERMANENT; a connection that broke after the
 * message was handed over (last reply 354) is UNKNOWN: it may have been delivered. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "calpost/connector.h"
#include "calpost/err.h"
#include "calpost/text.h"
#include "conn_util.h"
#include "connector_registry.h"

#define DEFAULT_TIMEOUT_MS 60000L
#define MAX_TIMEOUT_MS 600000L
#define MAX_MEDIA 10
#define SUBJECT_FROM_TEXT_MAX 70 /* code points of the text's first line used as subject */
#define ADDR_MAX 254
#define QP_LINE 76

struct email {
  const struct cp_host *host;
  char *name;
  char *server;    /* smtp://host:port[/ehlo-name] or smtps://... */
  char *from_hdr;  /* the From header's value, encoded and folded */
  char *from_addr; /* addr-spec, for MAIL FROM */
  const char *domain;
  char **rcpt; /* addr-specs, for RCPT TO */
  size_t n_rcpt;
  char *to_hdr; /* the To header's value */
  char *username;
  char *password;
  bool require_tls;
  char *ca_file;
  char *subject_prefix;
  long timeout_ms;
  size_t max_chars;
};

/* One loaded media item, copied out of its blob. */
struct att {
  unsigned char *data;
  size_t len;
  char *ctype;
  char *fname;
  char *alt;
};

struct send {
  struct email *e;
  const struct cp_publish_req *req;
  const struct cp_post *post;
  bool login;
  char key[64];
  char msgid[CP_RESULT_ID_MAX]; /* without the angle brackets */
  struct att *att;
  size_t n_att;
  struct cp_result res;
  bool in_publish; /* publish has not returned yet: completion must wait for the loop */
  bool finished;   /* finished inside publish: publish frees s */
  int soon_err;    /* then: cp_cu_complete_soon's error, which publish returns */
};

static const char *const known_keys[] = {"server",   "from",           "to",           "bcc",
                                         "username", "password_file",  "password_env", "starttls",
                                         "ca_file",  "subject_prefix", "timeout",      NULL};

static void email_free(void *instance) {
  struct email *e = instance;
  if (!e)
    return;
  free(e->name);
  free(e->server);
  free(e->from_hdr);
  free(e->from_addr);
  for (size_t i = 0; i < e->n_rcpt; i++)
    free(e->rcpt[i]);
  free(e->rcpt);
  free(e->to_hdr);
  free(e->username);
  if (e->password)
    e->host->secret_free(e->password);
  free(e->ca_file);
  free(e->subject_prefix);
  free(e);
}

/* ---- encodings ------------------------------------------------------------------------------ */

/* Appends the text as an HTML fragment: escaped, http(s) links as <a href>. */
static void buf_text_html(struct cp_cu_buf *b, const char *text) {
  const char *p = text;
  size_t ulen = 0;
  while (*p) {
    const char *u = cp_text_find_url(p, &ulen);
    if (!u || !ulen) {
      cp_cu_buf_html(b, p, strlen(p), false, "<br>\n");
      return;
    }
    cp_cu_buf_html(b, p, (size_t)(u - p), false, "<br>\n");
    cp_cu_buf_str(b, "<a href=\"");
    cp_cu_buf_html(b, u, ulen, true, "<br>\n");
    cp_cu_buf_str(b, "\">");
    cp_cu_buf_html(b, u, ulen, false, "<br>\n");
    cp_cu_buf_str(b, "</a>");
    p = u + ulen;
  }
}

/* Appends s quoted-printable (RFC 2045 6.7): line ends (LF or CRLF) become CRLF, lines are at
 * most 76 characters (soft breaks "="), '=' and bytes outside printable ASCII are =XX, and so
 * is white space before a line end. Ends with CRLF. */
static void buf_qp(struct cp_cu_buf *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t col = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '\r' && p[1] == '\n')
      continue;
    if (*p == '\n' || *p == '\r') {
      cp_cu_buf_str(b, "\r\n");
      col = 0;
      continue;
    }
    bool eol = !p[1] || p[1] == '\n' || (p[1] == '\r' && p[2] == '\n');
    bool enc = *p == '=' || *p > 126 || (*p < 32 && *p != '\t') ||
               ((*p == ' ' || *p == '\t') && eol) ||
               (*p == '.' && col == 0); /* a lone "." line must not end the SMTP data */
    size_t w = enc ? 3 : 1;
    /* Leave room for the soft break's "=", unless this is the line's last character. */
    if (col + w > (eol ? QP_LINE : QP_LINE - 1)) {
      cp_cu_buf_str(b, "=\r\n");
      col = 0;
    }
    if (enc) {
      char e3[3] = {'=', hex[*p >> 4], hex[*p & 15]};
      cp_cu_buf_add(b, e3, 3);
    } else {
      cp_cu_buf_add(b, (const char *)p, 1);
    }
    col += w;
  }
  if (col)
    cp_cu_buf_str(b, "\r\n");
}

/* Appends data base64-encoded in lines of 76 characters, each ending in CRLF. */
static void buf_base64(struct cp_cu_buf *b, const unsigned char *data, size_t len) {
  unsigned char line[80];
  for (size_t off = 0; off < len; off += 57) {
    size_t n = len - off < 57 ? len - off : 57;
    int w = EVP_EncodeBlock(line, data + off, (int)n);
    cp_cu_buf_add(b, (const char *)line, (size_t)w);
    cp_cu_buf_str(b, "\r\n");
  }
}

/* Appends s as RFC 2047 encoded words (UTF-8, base64), each at most 39 bytes of s (64
 * characters), never cutting a character, separated by sep (a fold: "\r\n "). */
static void buf_encoded_words(struct cp_cu_buf *b, const char *s, const char *sep) {
  size_t len = strlen(s), off = 0;
  unsigned char out[64];
  while (off < len) {
    size_t n = len - off < 39 ? len - off : 39;
    while (n > 1 && off + n < len && ((unsigned char)s[off + n] & 0xC0) == 0x80)
      n--; /* do not cut before a continuation byte */
    int w = EVP_EncodeBlock(out, (const unsigned char *)s + off, (int)n);
    if (off)
      cp_cu_buf_str(b, sep);
    cp_cu_buf_str(b, "=?UTF-8?B?");
    cp_cu_buf_add(b, (const char *)out, (size_t)w);
    cp_cu_buf_str(b, "?=");
    off += n;
  }
}

static bool is_ascii_printable(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p < 32 || *p > 126)
      return false;
  return true;
}

/* Appends the unstructured header text s (no line ends) starting at column col: as it is,
 * folded at spaces, if it is printable ASCII with short words and nothing that looks like an
 * encoded word; else as encoded words. */
static void buf_unstructured(struct cp_cu_buf *b, const char *s, size_t col) {
  bool plain = is_ascii_printable(s) && !strstr(s, "=?");
  for (const char *p = s; plain && *p;) {
    size_t wl = strcspn(p, " ");
    plain = wl <= 70;
    p += wl + (p[wl] == ' ');
  }
  if (!plain) {
    buf_encoded_words(b, s, "\r\n ");
    return;
  }
  const char *p = s;
  bool first = true;
  while (*p) {
    size_t wl = strcspn(p, " ");
    if (!first) {
      if (col + 1 + wl > 78) {
        cp_cu_buf_str(b, "\r\n");
        col = 0;
      }
      cp_cu_buf_str(b, " ");
      col++;
    }
    cp_cu_buf_add(b, p, wl);
    col += wl;
    first = false;
    p += wl;
    if (*p == ' ')
      p++;
  }
}

/* ---- addresses ------------------------------------------------------------------------------ */

static bool addr_ok(const char *a) {
  static const char local_ok[] = "!#$%&'*+-/=?^_`{|}~.";
  const char *at = strchr(a, '@');
  size_t len = strlen(a);
  if (!at || at == a || strchr(at + 1, '@') || !at[1] || len > ADDR_MAX)
    return false;
  for (const char *p = a; p < at; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          strchr(local_ok, *p)))
      return false;
  const char *d = at + 1;
  if (d[0] == '[')
    return d[strlen(d) - 1] == ']' && strspn(d + 1, "0123456789abcdefABCDEF.:IPv") == strlen(d) - 2;
  if (d[0] == '.' || d[0] == '-')
    return false;
  for (const char *p = d; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '.'))
      return false;
  return true;
}

static char *trimdup(const char *s, size_t n) {
  while (n && (*s == ' ' || *s == '\t')) {
    s++;
    n--;
  }
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    n--;
  return strndup(s, n);
}

/* Parses "addr@example.org", "Name <addr@example.org>" or "\"Name\" <addr@example.org>" in
 * s[0..n). Returns 0 with *name (malloc'd, NULL if none) and *addr, or CP_EINVAL / CP_ENOMEM. */
static int parse_mailbox(const char *s, size_t n, char **name, char **addr) {
  *name = *addr = NULL;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 32 || s[i] == 127)
      return CP_EINVAL;
  const char *lt = memchr(s, '<', n);
  if (!lt) {
    *addr = trimdup(s, n);
    if (!*addr)
      return CP_ENOMEM;
  } else {
    const char *gt = memchr(lt, '>', n - (size_t)(lt - s));
    if (!gt)
      return CP_EINVAL;
    for (const char *p = gt + 1; p < s + n; p++)
      if (*p != ' ' && *p != '\t')
        return CP_EINVAL;
    *addr = strndup(lt + 1, (size_t)(gt - lt - 1));
    char *nm = trimdup(s, (size_t)(lt - s));
    if (!*addr || !nm) {
      free(nm);
      free(*addr);
      *addr = NULL;
      return CP_ENOMEM;
    }
    size_t nl = strlen(nm);
    if (nl >= 2 && nm[0] == '"' && nm[nl - 1] == '"') {
      memmove(nm, nm + 1, nl - 2);
      nm[nl - 2] = '\0';
    }
    if (*nm)
      *name = nm;
    else
      free(nm);
  }
  if (!addr_ok(*addr)) {
    free(*name);
    free(*addr);
    *name = *addr = NULL;
    return CP_EINVAL;
  }
  return 0;
}

/* Appends a mailbox for a header: the name (as atoms, a quoted string or encoded words) and
 * <addr>, or addr alone. */
static void buf_mailbox(struct cp_cu_buf *b, const char *name, const char *addr) {
  static const char special_ok[] = "!#$%&'*+-/=?^_`{|}~ ";
  if (!name) {
    cp_cu_buf_str(b, addr);
    return;
  }
  bool atoms = true;
  for (const char *p = name; *p && atoms; p++)
    atoms = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr(special_ok, *p);
  if (atoms && !strstr(name, "=?")) {
    cp_cu_buf_str(b, name);
  } else if (is_ascii_printable(name)) {
    cp_cu_buf_str(b, "\"");
    for (const char *p = name; *p; p++) {
      if (*p == '"' || *p == '\\')
        cp_cu_buf_str(b, "\\");
      cp_cu_buf_add(b, p, 1);
    }
    cp_cu_buf_str(b, "\"");
  } else {
    buf_encoded_words(b, name, "\r\n ");
  }
  cp_cu_buf_str(b, " <");
  cp_cu_buf_str(b, addr);
  cp_cu_buf_str(b, ">");
}

/* ---- configuration -------------------------------------------------------------------------- */

static int cfg_error(struct email *e, const struct cp_connector_conf *conf, int line,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int cfg_error(struct email *e, const struct cp_connector_conf *conf, int line,
                     const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  for (char *p = msg; *p; p++) /* values are quoted: keep the log one line per message */
    if ((unsigned char)*p < 32)
      *p = ' ';
  e->host->log(e->host, CP_LOG_ERROR, "%s:%d: [channel %s] %s", conf->file, line, conf->name, msg);
  email_free(e);
  return CP_ECONFIG;
}

/* Checks server (smtp:// or smtps://) and stores it in e->server with a port (smtp:// without
 * one gets 587, the submission port). Sets *loopback. Returns 0 or CP_EINVAL / CP_ENOMEM. */
static int set_server(struct email *e, const char *url, bool *loopback, bool *smtps) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL, *full = NULL;
  int rc = CP_EINVAL;

  if (!u)
    return CP_ENOMEM;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    goto out;
  if (strcmp(scheme, "smtp") && strcmp(scheme, "smtps"))
    goto out;
  *smtps = !strcmp(scheme, "smtps");
  *loopback = !strcmp(host, "localhost") || !strncmp(host, "127.", 4) || !strcmp(host, "[::1]");
  if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_NO_PORT && !*smtps &&
      curl_url_set(u, CURLUPART_PORT, "587", 0) != CURLUE_OK)
    goto out;
  rc = CP_ENOMEM;
  if (curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK)
    goto out;
  e->server = strdup(full);
  rc = e->server ? 0 : CP_ENOMEM;
out:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_free(full);
  curl_url_cleanup(u);
  return rc;
}

/* Parses the comma-separated `to` list into e->rcpt and e->to_hdr. Returns 0, CP_EINVAL with the
 * bad entry in bad (size bytes), or CP_ENOMEM. */
static int set_recipients(struct email *e, const char *to, bool bcc, char *bad, size_t size) {
  struct cp_cu_buf hdr = {0};
  size_t n = 1;
  for (const char *p = to; *p; p++)
    n += *p == ',';
  e->rcpt = calloc(n, sizeof *e->rcpt);
  if (!e->rcpt)
    return CP_ENOMEM;
  for (const char *p = to;;) {
    size_t len = strcspn(p, ",");
    char *name, *addr;
    const char *q = p;
    while (q < p + len && (*q == ' ' || *q == '\t'))
      q++;
    if (q < p + len) { /* skip empty entries ("a, b,") */
      int rc = parse_mailbox(p, len, &name, &addr);
      if (rc) {
        size_t bl = len - (size_t)(q - p);
        while (bl && (q[bl - 1] == ' ' || q[bl - 1] == '\t'))
          bl--;
        snprintf(bad, size, "%.*s", (int)(bl > 200 ? 200 : bl), q);
        free(hdr.p);
        return rc;
      }
      if (e->n_rcpt && !bcc)
        cp_cu_buf_str(&hdr, ",\r\n ");
      if (!bcc)
        buf_mailbox(&hdr, name, addr);
      free(name);
      e->rcpt[e->n_rcpt++] = addr;
    }
    if (!p[len])
      break;
    p += len + 1;
  }
  if (!e->n_rcpt) {
    snprintf(bad, size, "%s", to);
    free(hdr.p);
    return CP_EINVAL;
  }
  if (bcc)
    cp_cu_buf_str(&hdr, "undisclosed-recipients:;");
  if (hdr.oom) {
    free(hdr.p);
    return CP_ENOMEM;
  }
  e->to_hdr = hdr.p;
  return 0;
}

static int email_init(const struct cp_host *host, const struct cp_connector_conf *conf,
                      void **instance) {
  int line = conf->line;
  const char *v;
  bool loopback = false, smtps = false;
  int rc, bcc = 0;
  char bad[256];

  cp_connector_check_keys(host, conf, known_keys);
  struct email *e = calloc(1, sizeof *e);
  if (!e)
    return CP_ENOMEM;
  e->host = host;
  e->timeout_ms = DEFAULT_TIMEOUT_MS;
  e->require_tls = true;
  e->name = strdup(conf->name ? conf->name : "email");
  if (!e->name) {
    email_free(e);
    return CP_ENOMEM;
  }

  v = conf->get(conf, "server", &line);
  if (!v || !*v)
    return cfg_error(e, conf, conf->line,
                     "needs 'server = smtp://HOST:587' (STARTTLS) or 'server = smtps://HOST' "
                     "(TLS on port 465)");
  rc = set_server(e, v, &loopback, &smtps);
  if (rc == CP_EINVAL)
    return cfg_error(e, conf, line, "server: '%s' is not an smtp:// or smtps:// URL", v);
  if (rc) {
    email_free(e);
    return rc;
  }

  line = conf->line;
  v = conf->get(conf, "from", &line);
  if (!v || !*v)
    return cfg_error(e, conf, conf->line, "needs 'from = Name <address@example.org>'");
  char *from_name = NULL;
  rc = parse_mailbox(v, strlen(v), &from_name, &e->from_addr);
  if (rc == CP_EINVAL)
    return cfg_error(e, conf, line,
                     "from: '%s' is not an address such as calpost@example.org or "
                     "Calpost <calpost@example.org> (plain ASCII addresses only)",
                     v);
  if (rc) {
    email_free(e);
    return rc;
  }
  struct cp_cu_buf fb = {0};
  buf_mailbox(&fb, from_name, e->from_addr);
  free(from_name);
  if (fb.oom) {
    free(fb.p);
    email_free(e);
    return CP_ENOMEM;
  }
  e->from_hdr = fb.p;
  e->domain = strchr(e->from_addr, '@') + 1;

  line = conf->line;
  v = conf->get(conf, "bcc", &line);
  if (v && (bcc = cp_cu_parse_bool(v)) < 0)
    return cfg_error(e, conf, line, "bcc: '%s' is not yes or no", v);

  line = conf->line;
  v = conf->get(conf, "to", &line);
  if (!v || !*v)
    return cfg_error(e, conf, conf->line, "needs 'to = address@example.org, ...'");
  rc = set_recipients(e, v, bcc == 1, bad, sizeof bad);
  if (rc == CP_EINVAL)
    return cfg_error(e, conf, line,
                     "to: '%s' is not an address such as team@example.org or "
                     "Jane <jane@example.org> (separate addresses with commas)",
                     bad);
  if (rc) {
    email_free(e);
    return rc;
  }

  line = conf->line;
  v = conf->get(conf, "starttls", &line);
  if (v) {
    int tls = cp_cu_parse_bool(v);
    if (tls < 0)
      return cfg_error(e, conf, line, "starttls: '%s' is not yes or no", v);
    if (smtps)
      return cfg_error(e, conf, line,
                       "starttls: smtps:// is always encrypted; remove starttls or use smtp://");
    if (!tls && !loopback)
      return cfg_error(e, conf, line,
                       "starttls = no is allowed only for a server on this machine "
                       "(127.0.0.1, localhost): mail and password would travel unencrypted");
    e->require_tls = tls == 1;
  }

  line = conf->line;
  v = conf->get(conf, "ca_file", &line);
  if (v && *v) {
    const char *slash = conf->file ? strrchr(conf->file, '/') : NULL;
    if (v[0] != '/' && slash)
      rc = asprintf(&e->ca_file, "%.*s/%s", (int)(slash - conf->file), conf->file, v);
    else
      rc = (e->ca_file = strdup(v)) ? 0 : -1;
    if (rc < 0) {
      e->ca_file = NULL;
      email_free(e);
      return CP_ENOMEM;
    }
    if (access(e->ca_file, R_OK))
      return cfg_error(e, conf, line, "ca_file: cannot read %s: %s", e->ca_file, strerror(errno));
  }

  line = conf->line;
  v = conf->get(conf, "subject_prefix", &line);
  if (v && *v) {
    for (const char *p = v; *p; p++)
      if ((unsigned char)*p < 32)
        return cfg_error(e, conf, line, "subject_prefix: control characters are not allowed");
    if (!(e->subject_prefix = strdup(v))) {
      email_free(e);
      return CP_ENOMEM;
    }
  }

  line = conf->line;
  v = conf->get(conf, "timeout", &line);
  if (v && (e->timeout_ms = cp_cu_parse_timeout(v, MAX_TIMEOUT_MS)) < 0)
    return cfg_error(e, conf, line,
                     "timeout: '%s' is not a duration such as 60 or 500ms (at most 600 s)", v);

  line = conf->line;
  v = conf->get(conf, "max_chars", &line);
  if (v) {
    char *end;
    errno = 0;
    unsigned long long m = strtoull(v, &end, 10);
    if (errno || *end || end == v || v[0] == '-')
      return cfg_error(e, conf, line, "max_chars: '%s' is not a number", v);
    e->max_chars = (size_t)m;
  }

  int uline = conf->line;
  v = conf->get(conf, "username", &uline);
  if (v && *v && !(e->username = strdup(v))) {
    email_free(e);
    return CP_ENOMEM;
  }
  rc = host->secret(host, conf, "password", &e->password);
  if (rc == CP_ENOTFOUND) {
    e->password = NULL;
    if (e->username)
      return cfg_error(e, conf, uline,
                       "username is set but no 'password_file = FILE' or 'password_env = VAR'");
  } else if (rc) {
    e->password = NULL;
    email_free(e); /* host->secret logged why */
    return rc;
  } else if (!e->username) {
    return cfg_error(e, conf, conf->line,
                     "a password is set but no 'username = ...' to log in with");
  }
  *instance = e;
  return 0;
}

/* ---- validation ----------------------------------------------------------------------------- */

static const char *const media_ext[] = {".png", ".jpg",  ".jpeg", ".gif", ".webp",
                                        ".mp4", ".webm", ".mov",  NULL};

static bool media_ext_ok(const char *src) {
  size_t len = strlen(src);
  if (!strncmp(src, "https://", 8) || !strncmp(src, "http://", 7))
    len = strcspn(src, "?#");
  for (size_t i = 0; media_ext[i]; i++) {
    size_t el = strlen(media_ext[i]);
    if (len > el && !strncasecmp(src + len - el, media_ext[i], el))
      return true;
  }
  return false;
}

static int email_validate(void *instance, const struct cp_post *post, cp_diag_cb diag, void *arg) {
  struct email *e = instance;
  const char *text = post->text ? post->text : "";
  const char *title = post->title ? post->title : "";
  char msg[400];
  int rc = 0;

  if (!*text && post->n_media == 0) {
    diag(arg, true, "the post has no text and no media: write a description or add media");
    return CP_EINVAL;
  }
  if (cp_utf8_check(text, strlen(text), NULL) || cp_utf8_check(title, strlen(title), NULL)) {
    diag(arg, true, "the text or title is not valid UTF-8: save the plan as UTF-8");
    return CP_EINVAL;
  }
  if (e->max_chars) {
    size_t n = cp_text_codepoints(text);
    if (n > e->max_chars) {
      snprintf(msg, sizeof msg,
               "%zu characters, channel %s allows %zu (max_chars): shorten the text", n, e->name,
               e->max_chars);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    }
  }
  if (post->n_media > MAX_MEDIA) {
    snprintf(msg, sizeof msg, "%zu media items; channel %s attaches at most %d: remove some",
             post->n_media, e->name, MAX_MEDIA);
    diag(arg, true, msg);
    rc = CP_EINVAL;
  }
  for (size_t i = 0; i < post->n_media; i++) {
    if (!media_ext_ok(post->media[i].src)) {
      snprintf(msg, sizeof msg,
               "media %zu (%.200s): email attaches images and videos; use a .png, .jpg, .gif, "
               ".webp, .mp4, .webm or .mov file",
               i + 1, post->media[i].src);
      diag(arg, true, msg);
      rc = CP_EINVAL;
    }
  }
  return rc;
}

/* ---- the message ---------------------------------------------------------------------------- */

/* The subject without prefix: the title; for an empty title (and for the daemon's notifications,
 * whose title says nothing) the text's first line, cut at a word to about 70 characters; else
 * a fixed text. Control characters become spaces. Returns a malloc'd string or NULL. */
static char *subject_of(const struct cp_post *post) {
  const char *title = post->title ? post->title : "";
  const char *text = post->text ? post->text : "";
  bool note = post->calendar && post->uid && !strcmp(post->calendar, "calpost") &&
              !strcmp(post->uid, "notification");
  char *s;

  while (*title == ' ' || *title == '\t')
    title++;
  if (*title && !note) {
    s = strdup(title);
  } else {
    const char *p = text;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
      p++;
    size_t len = strcspn(p, "\r\n"), cut = len, cps = 0;
    /* Cut after SUBJECT_FROM_TEXT_MAX code points, at the last space if there is one. */
    for (size_t i = 0; i < len; i++) {
      if (((unsigned char)p[i] & 0xC0) != 0x80 && ++cps > SUBJECT_FROM_TEXT_MAX) {
        cut = i;
        break;
      }
    }
    if (cut < len) {
      size_t sp = cut;
      while (sp > 0 && p[sp] != ' ')
        sp--;
      if (sp > cut / 2)
        cut = sp;
      while (cut > 0 && p[cut - 1] == ' ')
        cut--;
    }
    if (!len)
      s = strdup(*title ? title : "A post from calpost");
    else if (asprintf(&s, "%.*s%s", (int)cut, p, cut < len ? "\xe2\x80\xa6" : "") < 0)
      s = NULL;
  }
  if (!s)
    return NULL;
  for (char *p = s; *p; p++)
    if ((unsigned char)*p < 32 || *p == 127)
      *p = ' ';
  size_t n = strlen(s);
  while (n && s[n - 1] == ' ')
    s[--n] = '\0';
  return s;
}

static void rfc5322_date(int64_t ms, char *out, size_t size) {
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  snprintf(out, size, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
           months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* A file name safe in a header without RFC 2231: [A-Za-z0-9._-], others as '_'. */
static void safe_filename(const char *in, char *out, size_t size) {
  size_t n = 0;
  for (const char *p = in ? in : ""; *p && n + 1 < size; p++) {
    char c = *p;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_';
    out[n++] = ok ? c : '_';
  }
  out[n] = '\0';
  if (!n || out[0] == '.')
    snprintf(out, size, "media");
}

static void buf_alternative(struct cp_cu_buf *b, const char *text, const char *boundary) {
  struct cp_cu_buf html = {0};
  cp_cu_buf_str(&html, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n<p>");
  buf_text_html(&html, text);
  cp_cu_buf_str(&html, "</p>\n</body></html>\n");
  if (html.oom) {
    b->oom = true;
    free(html.p);
    return;
  }
  size_t tl = strlen(text);
  cp_cu_buf_printf(b, "--%s\r\n", boundary);
  cp_cu_buf_str(b, "Content-Type: text/plain; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
  buf_qp(b, text);
  if (!tl)
    cp_cu_buf_str(b, "\r\n");
  cp_cu_buf_printf(b, "--%s\r\n", boundary);
  cp_cu_buf_str(b, "Content-Type: text/html; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
  buf_qp(b, html.p);
  cp_cu_buf_printf(b, "--%s--\r\n", boundary);
  free(html.p);
}

/* The whole message, or NULL on ENOMEM. */
static char *build_message(struct send *s, size_t *len) {
  struct email *e = s->e;
  const struct cp_post *post = s->post;
  const char *text = post->text ? post->text : "";
  struct cp_cu_buf b = {0};
  char date[64], alt_b[128], mix_b[128];

  char *subject = subject_of(post);
  if (!subject)
    return NULL;
  char *full = NULL;
  if (e->subject_prefix) {
    size_t pl = strlen(e->subject_prefix);
    if (asprintf(&full, "%s%s%s", e->subject_prefix, e->subject_prefix[pl - 1] == ' ' ? "" : " ",
                 subject) < 0)
      full = NULL;
    free(subject);
    subject = full;
    if (!subject)
      return NULL;
  }
  rfc5322_date(e->host->wall_ms(e->host), date, sizeof date);
  /* "=_" never occurs in quoted-printable or base64 text: the boundaries cannot collide. */
  snprintf(alt_b, sizeof alt_b, "=_calpost_alt_%s", s->key);
  snprintf(mix_b, sizeof mix_b, "=_calpost_mix_%s", s->key);

  cp_cu_buf_str(&b, "From: ");
  cp_cu_buf_str(&b, e->from_hdr);
  cp_cu_buf_str(&b, "\r\nTo: ");
  cp_cu_buf_str(&b, e->to_hdr);
  cp_cu_buf_str(&b, "\r\nSubject: ");
  buf_unstructured(&b, subject, 9);
  cp_cu_buf_printf(&b, "\r\nDate: %s\r\n", date);
  cp_cu_buf_str(&b, "Message-ID: <");
  cp_cu_buf_str(&b, s->msgid);
  cp_cu_buf_str(&b, ">\r\nMIME-Version: 1.0\r\n");
  if (!s->n_att) {
    cp_cu_buf_printf(&b, "Content-Type: multipart/alternative;\r\n boundary=\"%s\"\r\n\r\n", alt_b);
    buf_alternative(&b, text, alt_b);
  } else {
    cp_cu_buf_printf(&b, "Content-Type: multipart/mixed;\r\n boundary=\"%s\"\r\n\r\n", mix_b);
    cp_cu_buf_printf(&b, "--%s\r\n", mix_b);
    cp_cu_buf_printf(&b, "Content-Type: multipart/alternative;\r\n boundary=\"%s\"\r\n\r\n", alt_b);
    buf_alternative(&b, text, alt_b);
    for (size_t i = 0; i < s->n_att; i++) {
      const struct att *a = &s->att[i];
      char fname[128];
      safe_filename(a->fname, fname, sizeof fname);
      cp_cu_buf_printf(&b, "--%s\r\n", mix_b);
      cp_cu_buf_printf(&b, "Content-Type: %s;\r\n name=\"%s\"\r\n", a->ctype, fname);
      cp_cu_buf_printf(&b, "Content-Disposition: inline;\r\n filename=\"%s\"\r\n", fname);
      cp_cu_buf_str(&b, "Content-Transfer-Encoding: base64\r\n");
      if (a->alt && *a->alt) {
        for (char *p = a->alt; *p; p++)
          if ((unsigned char)*p < 32 || *p == 127)
            *p = ' ';
        cp_cu_buf_str(&b, "Content-Description: ");
        buf_unstructured(&b, a->alt, 21);
        cp_cu_buf_str(&b, "\r\n");
      }
      cp_cu_buf_str(&b, "\r\n");
      buf_base64(&b, a->data, a->len);
    }
    cp_cu_buf_printf(&b, "--%s--\r\n", mix_b);
  }
  free(subject);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}

/* ---- outcomes ------------------------------------------------------------------------------- */

static enum cp_outcome email_classify(void *instance, const struct cp_http_resp *resp,
                                      enum cp_outcome dflt) {
  long s = resp->status;
  if (s == 530 || s == 534 || s == 535)
    return CP_OUTCOME_AUTH; /* authentication required / too weak / credentials invalid */
  if (s >= 400 && s < 500)
    return CP_OUTCOME_RETRY; /* transient negative completion (RFC 5321 4.2.1) */
  if (s >= 500 && s < 600)
    return CP_OUTCOME_PERMANENT;
  if (s == 354)
    return CP_OUTCOME_UNKNOWN; /* the data went out, the final answer never came */
  if (!resp->err && s >= 200 && s < 300)
    return CP_OUTCOME_OK;
  if (resp->err)
    /* Broke before DATA (or before any reply): the server cannot have taken the message. */
    return CP_OUTCOME_RETRY;
  return CP_OUTCOME_PERMANENT; /* no error and an answer that is no answer */
}

static void describe(struct send *s, const struct cp_http_resp *resp) {
  struct cp_result *res = &s->res;
  char reply[CP_RESULT_MESSAGE_MAX] = "", full[3 * CP_RESULT_MESSAGE_MAX];
  const char *hint = "";

  s->e->host->http_result(s->req, resp, res);
  if (res->outcome == CP_OUTCOME_OK)
    return;
  if (resp->body_len)
    cp_connector_copy_text(reply, sizeof reply, resp->body, resp->body_len);
  else if (resp->errmsg[0])
    cp_connector_copy_text(reply, sizeof reply, resp->errmsg, strlen(resp->errmsg));
  else if (resp->err)
    snprintf(reply, sizeof reply, "%s", cp_strerror(resp->err));
  switch (res->outcome) {
    case CP_OUTCOME_AUTH:
      hint = " (the server refused the login or requires one: check username and password_file)";
      break;
    case CP_OUTCOME_RETRY:
      hint = resp->status >= 400 ? " (temporary: will try again)" : "";
      break;
    case CP_OUTCOME_UNKNOWN:
      hint = " (the connection ended after the message was sent: it may have been delivered)";
      break;
    default:
      break;
  }
  if (resp->status)
    snprintf(full, sizeof full, "SMTP %ld%s%s%s", resp->status, reply[0] ? ": " : "", reply, hint);
  else
    snprintf(full, sizeof full, "%s%s", reply, hint);
  cp_connector_copy_text(res->message, sizeof res->message, full, strlen(full));
}

/* ---- the publish chain ---------------------------------------------------------------------- */

static void send_free(struct send *s) {
  for (size_t i = 0; i < s->n_att; i++) {
    free(s->att[i].data);
    free(s->att[i].ctype);
    free(s->att[i].fname);
    free(s->att[i].alt);
  }
  free(s->att);
  free(s);
}

/* Completes with s->res and frees s; from inside publish, on the next loop turn instead. */
static void finish(struct send *s) {
  const struct cp_publish_req *req = s->req;
  const struct cp_host *host = s->e->host;

  if (s->login)
    host->log(host, s->res.outcome == CP_OUTCOME_OK ? CP_LOG_INFO : CP_LOG_WARN,
              "login check: %s%s%s", cp_outcome_name(s->res.outcome), s->res.message[0] ? ": " : "",
              s->res.message);
  else if (s->res.outcome == CP_OUTCOME_OK)
    host->log(host, CP_LOG_INFO, "post %s mailed to %zu recipient(s): <%s>", s->post->id,
              s->e->n_rcpt, s->msgid);
  else
    host->log(host, CP_LOG_WARN, "post %s not mailed (%s): %s", s->post->id,
              cp_outcome_name(s->res.outcome), s->res.message);
  if (s->in_publish) {
    /* publish frees s and returns soon_err (then nothing completes). */
    s->finished = true;
    s->soon_err = cp_cu_complete_soon(req, &s->res);
    return;
  }
  struct cp_result res = s->res;
  send_free(s);
  req->host->complete(req, &res);
}

static void fail_local(struct send *s, enum cp_outcome outcome, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail_local(struct send *s, enum cp_outcome outcome, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cp_cu_result_vset(&s->res, outcome, err, fmt, ap);
  va_end(ap);
  finish(s);
}

static void on_sent(const struct cp_http_resp *resp, void *data) {
  struct send *s = data;
  describe(s, resp);
  if (s->res.outcome == CP_OUTCOME_OK && !s->login)
    snprintf(s->res.remote_id, sizeof s->res.remote_id, "%s", s->msgid);
  finish(s);
}

/* The SMTP exchange of e: the message and its envelope, or (msg NULL) a login only. */
static int smtp_request(struct send *s, const char *msg, size_t len) {
  struct email *e = s->e;
  struct cp_http_req hr = {
      .url = e->server,
      .body = msg,
      .body_len = len,
      .timeout_ms = e->timeout_ms,
      .connect_timeout_ms = e->timeout_ms < 10000 ? e->timeout_ms : 10000,
      .ca_file = e->ca_file,
      .mail_from = msg ? e->from_addr : NULL,
      .mail_rcpt = msg ? (const char *const *)e->rcpt : NULL,
      .n_mail_rcpt = msg ? e->n_rcpt : 0,
      .username = e->username,
      .password = e->password,
      .require_tls = e->require_tls,
  };
  return e->host->http_request(e->host, &hr, on_sent, s);
}

static void send_message(struct send *s) {
  size_t len = 0;
  char *msg = build_message(s, &len);
  if (!msg) {
    fail_local(s, CP_OUTCOME_RETRY, CP_ENOMEM, "cannot build the message: out of memory");
    return;
  }
  int err = smtp_request(s, msg, len);
  free(msg);
  if (err)
    fail_local(s, CP_OUTCOME_RETRY, err, "cannot start the SMTP transfer: %s", cp_strerror(err));
}

static void load_next(struct send *s);

static void on_media(const struct cp_media_blob *blob, void *data) {
  struct send *s = data;
  size_t i = s->n_att;

  if (blob->err) {
    /* A missing or wrong file stays so; a fetch that failed on the network may work later. */
    bool cp_code = blob->err > CP__EFIRST && blob->err < CP__ELAST;
    bool transient = blob->err == CP_ENOMEM || (!cp_code && blob->err != -ENOENT &&
                                                blob->err != -EACCES && blob->err != -EISDIR);
    fail_local(s, transient ? CP_OUTCOME_RETRY : CP_OUTCOME_PERMANENT, blob->err,
               "media %zu (%s): %s", i + 1, s->post->media[i].src,
               blob->errmsg[0] ? blob->errmsg : cp_strerror(blob->err));
    return;
  }
  struct att *a = &s->att[i];
  a->data = malloc(blob->len ? blob->len : 1);
  a->ctype = strdup(blob->content_type ? blob->content_type : "application/octet-stream");
  a->fname = strdup(blob->filename ? blob->filename : "media");
  a->alt = blob->alt ? strdup(blob->alt) : NULL;
  s->n_att++; /* freed with s, even if a copy failed */
  if (!a->data || !a->ctype || !a->fname || (blob->alt && !a->alt)) {
    fail_local(s, CP_OUTCOME_RETRY, CP_ENOMEM, "media %zu: out of memory", i + 1);
    return;
  }
  memcpy(a->data, blob->data, blob->len);
  a->len = blob->len;
  /* A content type goes into a header: keep it to type/subtype characters. */
  for (char *p = a->ctype; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          strchr("/.+-", *p)))
      *p = '-';
  load_next(s);
}

/* Loads the next media item, or sends the message once all are in. */
static void load_next(struct send *s) {
  size_t i = s->n_att;
  if (i == s->post->n_media) {
    send_message(s);
    return;
  }
  int err = s->e->host->media_load(s->req, &s->post->media[i], on_media, s);
  if (err)
    fail_local(s, CP_OUTCOME_PERMANENT, err, "media %zu (%s): %s", i + 1, s->post->media[i].src,
               cp_strerror(err));
}

static int email_publish(void *instance, const struct cp_post *post,
                         const struct cp_publish_req *req) {
  struct email *e = instance;
  struct send *s = calloc(1, sizeof *s);
  if (!s)
    return CP_ENOMEM;
  s->e = e;
  s->req = req;
  s->post = post;
  snprintf(s->key, sizeof s->key, "%s", req->idempotency_key ? req->idempotency_key : "");
  if (!s->key[0] && e->host->idempotency_key(e->host, post, s->key, sizeof s->key)) {
    free(s);
    return CP_ELIMIT;
  }
  /* The Message-ID's left part is dot-atom text; the key is letters, digits and '-' already. */
  for (char *p = s->key; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '.'))
      *p = '-';
  snprintf(s->msgid, sizeof s->msgid, "%s@%s", s->key, e->domain);
  if (post->n_media && !(s->att = calloc(post->n_media, sizeof *s->att))) {
    free(s);
    return CP_ENOMEM;
  }
  s->in_publish = true;
  load_next(s);
  s->in_publish = false;
  if (s->finished) {
    int err = s->soon_err;
    send_free(s);
    return err;
  }
  return 0;
}

/* ---- login check ---------------------------------------------------------------------------- */

/* Connects, says EHLO, STARTTLS, logs in and asks HELP, without a MAIL transaction: libcurl's
 * SMTP sends HELP when there is neither a message nor a recipient. */
static int email_login_check(void *instance, const struct cp_publish_req *req) {
  struct email *e = instance;
  struct send *s = calloc(1, sizeof *s);
  if (!s)
    return CP_ENOMEM;
  s->e = e;
  s->req = req;
  s->login = true;
  int err = smtp_request(s, NULL, 0);
  if (err)
    free(s);
  /* A host that cannot make a login-only exchange: as if there were no login check. */
  return err == CP_EINVAL ? CP_ENOTFOUND : err;
}

const struct cp_connector cp_connector_email = {
    .abi_version = CP_CONNECTOR_ABI_VERSION,
    .name = "email",
    .description = "Sends each post as an email (text and HTML, media attached) over SMTP",
    .caps = CP_CAP_MEDIA,
    .init = email_init,
    .validate = email_validate,
    .publish = email_publish,
    .classify = email_classify,
    .login_check = email_login_check,
    .free = email_free,
};
