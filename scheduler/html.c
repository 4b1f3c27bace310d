/* HTML descriptions (Google Calendar, Outlook's X-ALT-DESC) to plain text. libxml2 parses;
 * this file only walks the tree and decides where lines break, roughly as a browser shows it. */
#include "calpost/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/HTMLparser.h>
#include <libxml/tree.h>

/* --- Detection --------------------------------------------------------------------------- */

static const char *const html_tags[] = {
    "a",     "b",  "i",  "u",      "p",    "br",  "div", "span",       "html", "body",     "head",
    "ul",    "ol", "li", "strong", "em",   "h1",  "h2",  "h3",         "h4",   "h5",       "h6",
    "table", "tr", "td", "th",     "font", "img", "hr",  "blockquote", "pre",  "!doctype",
};

static const char *const html_entities[] = {
    "amp",    "nbsp",  "lt",    "gt",    "quot",  "apos",   "ndash", "mdash",
    "hellip", "rsquo", "lsquo", "rdquo", "ldquo", "eacute", "euro",  "copy",
};

static bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

static bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* A known tag at p ('<'): "<br>", "<br/>", "</b>", "<a href", "<div class=x>". "a < b" and
 * "<3" are not tags. */
static bool tag_at(const char *p) {
  const char *q = p + 1;
  if (*q == '/')
    q++;
  const char *name = q;
  while (is_alpha(*q) || is_digit(*q) || *q == '!')
    q++;
  size_t n = (size_t)(q - name);
  bool known = false;
  for (size_t i = 0; i < sizeof html_tags / sizeof html_tags[0] && !known; i++)
    known = strlen(html_tags[i]) == n && strncasecmp(name, html_tags[i], n) == 0;
  if (!known)
    return false;
  if (*q == '>' || (q[0] == '/' && q[1] == '>'))
    return true;
  if (!is_space(*q) || p[1] == '/')
    return false;
  while (is_space(*q))
    q++;
  if (n == 1 && (*name == 'a' || *name == 'A'))
    return strncasecmp(q, "href", 4) == 0;
  /* Attributes: the tag must close before the line or another tag starts. */
  for (; *q && *q != '\n' && *q != '<'; q++)
    if (*q == '>')
      return true;
  return false;
}

/* A character reference at p ('&'): "&amp;", "&#39;", "&#x27;". "AT&T" is not one. */
static bool entity_at(const char *p) {
  const char *q = p + 1;
  if (*q == '#') {
    q++;
    bool hex = *q == 'x' || *q == 'X';
    if (hex)
      q++;
    const char *d = q;
    while (is_digit(*q) || (hex && strchr("abcdefABCDEF", *q) && *q))
      q++;
    return q > d && *q == ';';
  }
  const char *name = q;
  while (is_alpha(*q))
    q++;
  if (*q != ';')
    return false;
  size_t n = (size_t)(q - name);
  for (size_t i = 0; i < sizeof html_entities / sizeof html_entities[0]; i++)
    if (strlen(html_entities[i]) == n && strncmp(name, html_entities[i], n) == 0)
      return true;
  return false;
}

bool cp_text_looks_like_html(const char *s) {
  if (!s)
    return false;
  for (const char *p = strpbrk(s, "<&"); p; p = strpbrk(p + 1, "<&"))
    if (*p == '<' ? tag_at(p) : entity_at(p))
      return true;
  return false;
}

/* --- Output buffer ----------------------------------------------------------------------- */

struct buf {
  char *p;
  size_t len, cap;
  bool oom;
};

static bool buf_reserve(struct buf *b, size_t extra) {
  if (b->oom)
    return false;
  if (b->len + extra + 1 <= b->cap)
    return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1)
    cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = true;
    return false;
  }
  b->p = p;
  b->cap = cap;
  return true;
}

static void buf_insert(struct buf *b, size_t at, const char *s, size_t n) {
  if (!buf_reserve(b, n))
    return;
  memmove(b->p + at + n, b->p + at, b->len - at);
  memcpy(b->p + at, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_add(struct buf *b, const char *s, size_t n) {
  buf_insert(b, b->len, s, n);
}

/* --- Conversion state -------------------------------------------------------------------- */

struct conv {
  struct buf out;
  int pending;        /* line breaks owed before the next text: 1 ends a line, 2 a paragraph */
  char prefix[48];    /* a list marker, written just before the item's first text */
  bool keep_newlines; /* a fragment: Google Calendar shows newlines in text as line breaks */
  bool real_p;        /* the source has <p> (libxml2 implies one around leading text) */
  int pre;            /* inside <pre> */
  int list_depth;
  bool list_ordered;
  long list_counter;
};

static void flush(struct conv *c) {
  if (c->pending && c->out.len) {
    /* A line holding only &nbsp; counts as a line: Outlook makes blank lines that way. */
    int have = 0;
    for (size_t i = c->out.len; i > 0 && c->out.p[i - 1] == '\n' && have < 2; i--)
      have++;
    for (; have < c->pending; have++)
      buf_add(&c->out, "\n", 1);
  }
  c->pending = 0;
  if (c->prefix[0]) {
    buf_add(&c->out, c->prefix, strlen(c->prefix));
    c->prefix[0] = '\0';
  }
}

static void put_text(struct conv *c, const char *s, size_t n) {
  flush(c);
  buf_add(&c->out, s, n);
}

/* Collapsible white space, as in a browser: never at a line start, never doubled. */
static void put_space(struct conv *c) {
  if (c->pending || c->prefix[0] || !c->out.len)
    return;
  char last = c->out.p[c->out.len - 1];
  if (last != ' ' && last != '\n')
    buf_add(&c->out, " ", 1);
}

static void put_newline(struct conv *c) {
  flush(c);
  buf_add(&c->out, "\n", 1);
}

static void block_break(struct conv *c, int n) {
  if (c->prefix[0]) /* the list item has not started its line yet */
    return;
  if (n > c->pending)
    c->pending = n;
}

static void text_node(struct conv *c, const char *s, bool ignorable) {
  while (*s) {
    unsigned char ch = (unsigned char)*s;
    if (c->pre && (ch == '\n' || ch == '\r')) {
      if (ch == '\n')
        put_newline(c);
      s++;
    } else if (is_space((char)ch) && !c->pre) {
      if (ch == '\n' && c->keep_newlines && !ignorable)
        put_newline(c);
      else if (!(ch == '\r' && s[1] == '\n' && c->keep_newlines && !ignorable))
        put_space(c);
      s++;
    } else if (ch == 0xC2 && (unsigned char)s[1] == 0xA0) {
      put_text(c, " ", 1); /* &nbsp;: a real space that does not collapse */
      s += 2;
    } else {
      const char *run = s;
      while (*s && !(is_space(*s) && !c->pre) && *s != '\n' && *s != '\r' &&
             !((unsigned char)s[0] == 0xC2 && (unsigned char)s[1] == 0xA0))
        s++;
      put_text(c, run, (size_t)(s - run));
    }
  }
}

/* --- Elements ---------------------------------------------------------------------------- */

enum kind { K_INLINE, K_SKIP, K_BR, K_BLOCK, K_PARA, K_P, K_LIST, K_LI, K_CELL, K_A, K_PRE };

static const struct {
  const char *name;
  enum kind kind;
} kinds[] = {
    {"head", K_SKIP},
    {"style", K_SKIP},
    {"script", K_SKIP},
    {"title", K_SKIP},
    {"meta", K_SKIP},
    {"link", K_SKIP},
    {"noscript", K_SKIP},
    {"template", K_SKIP},
    {"xml", K_SKIP},
    {"object", K_SKIP},
    {"iframe", K_SKIP},
    {"svg", K_SKIP},
    {"br", K_BR},
    {"p", K_P},
    {"div", K_BLOCK},
    {"tr", K_BLOCK},
    {"table", K_BLOCK},
    {"hr", K_BLOCK},
    {"dl", K_BLOCK},
    {"dt", K_BLOCK},
    {"dd", K_BLOCK},
    {"section", K_BLOCK},
    {"article", K_BLOCK},
    {"header", K_BLOCK},
    {"footer", K_BLOCK},
    {"nav", K_BLOCK},
    {"aside", K_BLOCK},
    {"main", K_BLOCK},
    {"address", K_BLOCK},
    {"figure", K_BLOCK},
    {"figcaption", K_BLOCK},
    {"form", K_BLOCK},
    {"center", K_BLOCK},
    {"fieldset", K_BLOCK},
    {"caption", K_BLOCK},
    {"h1", K_PARA},
    {"h2", K_PARA},
    {"h3", K_PARA},
    {"h4", K_PARA},
    {"h5", K_PARA},
    {"h6", K_PARA},
    {"blockquote", K_PARA},
    {"ul", K_LIST},
    {"ol", K_LIST},
    {"li", K_LI},
    {"td", K_CELL},
    {"th", K_CELL},
    {"a", K_A},
    {"pre", K_PRE},
};

static enum kind kind_of(const xmlNode *n) {
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (strcasecmp((const char *)n->name, kinds[i].name) == 0)
      return kinds[i].kind;
  return K_INLINE;
}

static bool is_block_element(const xmlNode *n) {
  if (!n || n->type != XML_ELEMENT_NODE)
    return false;
  enum kind k = kind_of(n);
  return k != K_INLINE && k != K_A && k != K_BR && k != K_CELL && k != K_SKIP;
}

/* White space between tags (indentation around <li>, <tr>, <div>) is source formatting, not
 * text, even where newlines in text count. */
static bool is_ignorable(const xmlNode *t) {
  for (const xmlChar *s = t->content; s && *s; s++)
    if (!is_space((char)*s))
      return false;
  const xmlNode *parent = t->parent;
  if (parent && parent->type == XML_ELEMENT_NODE) {
    enum kind k = kind_of(parent);
    if (k == K_LIST || strcasecmp((const char *)parent->name, "table") == 0 ||
        strcasecmp((const char *)parent->name, "tr") == 0 ||
        strcasecmp((const char *)parent->name, "tbody") == 0 ||
        strcasecmp((const char *)parent->name, "body") == 0)
      return true;
  }
  return is_block_element(t->prev) || is_block_element(t->next) || !t->prev || !t->next;
}

/* Outlook writes Word paragraphs (class=MsoNormal...) with no margin: each is one line, and an
 * empty paragraph holding &nbsp; makes the blank line. Other <p> have a margin. */
static bool is_word_paragraph(xmlNode *n) {
  xmlChar *cls = xmlGetProp(n, (const xmlChar *)"class");
  bool mso = cls && strncasecmp((const char *)cls, "Mso", 3) == 0;
  xmlFree(cls);
  return mso;
}

static bool has_scheme(const char *s, const char *scheme) {
  return strncasecmp(s, scheme, strlen(scheme)) == 0;
}

static int hex_value(char c) {
  if (is_digit(c))
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* The value of query parameter `name` in url, percent-decoded; NULL if absent or if it is not
 * a plausible http(s) URL. Sets *oom on allocation failure. */
static char *query_param_url(const char *url, const char *name, bool *oom) {
  const char *q = strchr(url, '?');
  size_t nlen = strlen(name);
  while (q) {
    q++;
    if (strncmp(q, name, nlen) == 0 && q[nlen] == '=')
      break;
    q = strchr(q, '&');
  }
  if (!q)
    return NULL;
  q += nlen + 1;
  size_t vlen = strcspn(q, "&#");
  char *v = malloc(vlen + 1);
  if (!v) {
    *oom = true;
    return NULL;
  }
  size_t w = 0;
  for (size_t i = 0; i < vlen; i++) {
    int hi = q[i] == '%' && i + 2 < vlen ? hex_value(q[i + 1]) : -1;
    int lo = hi >= 0 ? hex_value(q[i + 2]) : -1;
    if (lo >= 0) {
      v[w++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      v[w++] = q[i];
    }
  }
  v[w] = '\0';
  bool ok = (has_scheme(v, "https://") || has_scheme(v, "http://")) && strlen(v) == w &&
            cp_utf8_check(v, w, NULL) == 0;
  for (size_t i = 0; ok && i < w; i++)
    ok = (unsigned char)v[i] > 0x20 && v[i] != 0x7F;
  if (!ok) {
    free(v);
    return NULL;
  }
  return v;
}

/* Where a link really goes: Google Calendar wraps links as
 * https://www.google.com/url?q=TARGET&sa=D&...; Outlook's Safe Links as
 * https://xx.safelinks.protection.outlook.com/?url=TARGET&... Returns a malloc'd URL, or NULL
 * for links that go nowhere useful (#anchors, javascript:) or on ENOMEM (*oom set). */
static char *link_target(const char *href, bool *oom) {
  while (is_space(*href))
    href++;
  size_t n = strlen(href);
  while (n && is_space(href[n - 1]))
    n--;
  if (!n || *href == '#' || has_scheme(href, "javascript:"))
    return NULL;
  char *h = strndup(href, n);
  if (!h) {
    *oom = true;
    return NULL;
  }
  static const char *const google[] = {"https://www.google.com/url?", "http://www.google.com/url?",
                                       "https://google.com/url?", "http://google.com/url?"};
  const char *param = NULL;
  for (size_t i = 0; i < sizeof google / sizeof google[0]; i++)
    if (has_scheme(h, google[i]))
      param = "q";
  if (has_scheme(h, "https://")) {
    const char *host = h + 8;
    size_t hlen = strcspn(host, "/?#");
    static const char safelinks[] = ".safelinks.protection.outlook.com";
    size_t slen = sizeof safelinks - 1;
    if (hlen > slen && strncasecmp(host + hlen - slen, safelinks, slen) == 0)
      param = "url";
  }
  if (param) {
    char *inner = query_param_url(h, param, oom);
    if (inner) {
      free(h);
      return inner;
    }
    if (*oom) {
      free(h);
      return NULL;
    }
  }
  return h;
}

/* Compares link text and target the way a reader would: scheme, letter case and one trailing
 * slash do not matter. */
static bool same_link(const char *t, size_t tlen, const char *url) {
  static const char *const schemes[] = {"https://", "http://", "mailto:", "tel:"};
  for (size_t i = 0; i < 4; i++) {
    size_t n = strlen(schemes[i]);
    if (tlen >= n && strncasecmp(t, schemes[i], n) == 0) {
      t += n;
      tlen -= n;
      break;
    }
  }
  for (size_t i = 0; i < 4; i++)
    if (has_scheme(url, schemes[i])) {
      url += strlen(schemes[i]);
      break;
    }
  size_t ulen = strlen(url);
  if (tlen && t[tlen - 1] == '/')
    tlen--;
  if (ulen && url[ulen - 1] == '/')
    ulen--;
  return tlen == ulen && strncasecmp(t, url, tlen) == 0;
}

static void walk(struct conv *c, xmlNode *n, int p_depth);

static void link_element(struct conv *c, xmlNode *n, int p_depth) {
  xmlChar *href = xmlGetProp(n, (const xmlChar *)"href");
  if (!href) {
    walk(c, n->children, p_depth);
    return;
  }
  bool oom = false;
  char *url = link_target((const char *)href, &oom);
  xmlFree(href);
  if (oom)
    c->out.oom = true;
  if (!url) {
    walk(c, n->children, p_depth);
    return;
  }

  /* Flush first, so the pending line break and a list marker are not part of the text. */
  if (c->pending || c->prefix[0])
    flush(c);
  size_t t0 = c->out.len;
  walk(c, n->children, p_depth);
  size_t t1 = c->out.len;
  while (t0 < t1 && is_space(c->out.p[t0]))
    t0++;
  while (t1 > t0 && is_space(c->out.p[t1 - 1]))
    t1--;

  size_t ulen = strlen(url);
  bool web = has_scheme(url, "https://") || has_scheme(url, "http://");
  if (t0 == t1) {
    put_space(c);
    put_text(c, url, ulen);
  } else if (same_link(c->out.p + t0, t1 - t0, url)) {
    if (web && !c->out.oom) { /* show the full URL so that platforms make it a link */
      memmove(c->out.p + t0, c->out.p + t1, c->out.len - t1 + 1);
      c->out.len -= t1 - t0;
      buf_insert(&c->out, t0, url, ulen);
    }
  } else if (!c->out.oom) {
    buf_insert(&c->out, t1, " (", 2);
    buf_insert(&c->out, t1 + 2, url, ulen);
    buf_insert(&c->out, t1 + 2 + ulen, ")", 1);
  }
  free(url);
}

static void list_element(struct conv *c, xmlNode *n, int p_depth) {
  bool ordered = c->list_ordered;
  long counter = c->list_counter;
  c->list_ordered = strcasecmp((const char *)n->name, "ol") == 0;
  c->list_counter = 0;
  if (c->list_ordered) {
    xmlChar *start = xmlGetProp(n, (const xmlChar *)"start");
    if (start)
      c->list_counter = strtol((const char *)start, NULL, 10) - 1;
    xmlFree(start);
  }
  c->list_depth++;
  block_break(c, 1);
  walk(c, n->children, p_depth);
  block_break(c, 1);
  c->list_depth--;
  c->list_ordered = ordered;
  c->list_counter = counter;
}

static void item_element(struct conv *c, xmlNode *n, int p_depth) {
  block_break(c, 1);
  int indent = c->list_depth > 1 ? 2 * (c->list_depth - 1) : 0;
  if (indent > 16)
    indent = 16;
  if (c->list_ordered)
    snprintf(c->prefix, sizeof c->prefix, "%*s%ld. ", indent, "", ++c->list_counter);
  else
    snprintf(c->prefix, sizeof c->prefix, "%*s- ", indent, "");
  walk(c, n->children, p_depth);
  c->prefix[0] = '\0'; /* an empty item leaves no line */
  block_break(c, 1);
}

static void walk(struct conv *c, xmlNode *n, int p_depth) {
  for (; n && !c->out.oom; n = n->next) {
    if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
      if (n->content)
        text_node(c, (const char *)n->content, c->keep_newlines && is_ignorable(n));
      continue;
    }
    if (n->type != XML_ELEMENT_NODE)
      continue;
    switch (kind_of(n)) {
      case K_SKIP:
        break;
      case K_BR:
        put_newline(c);
        break;
      case K_BLOCK:
        block_break(c, 1);
        walk(c, n->children, p_depth);
        block_break(c, 1);
        break;
      case K_PARA:
        block_break(c, 2);
        walk(c, n->children, p_depth);
        block_break(c, 2);
        break;
      case K_P:
        /* libxml2 reads Outlook's <o:p> as <p> inside a <p>: that one is inline, as is the
         * <p> libxml2 adds around leading text when the source has none. */
        if (p_depth > 0 || !c->real_p) {
          walk(c, n->children, p_depth + 1);
        } else {
          int b = is_word_paragraph(n) ? 1 : 2;
          block_break(c, b);
          walk(c, n->children, p_depth + 1);
          block_break(c, b);
        }
        break;
      case K_LIST:
        list_element(c, n, p_depth);
        break;
      case K_LI:
        item_element(c, n, p_depth);
        break;
      case K_CELL:
        put_space(c);
        walk(c, n->children, p_depth);
        break;
      case K_A:
        link_element(c, n, p_depth);
        break;
      case K_PRE:
        block_break(c, 2);
        c->pre++;
        walk(c, n->children, p_depth);
        c->pre--;
        block_break(c, 2);
        break;
      case K_INLINE:
      default:
        walk(c, n->children, p_depth);
        break;
    }
  }
}

/* Trims trailing spaces on every line, keeps at most one blank line in a row and drops blank
 * lines at both ends. Returns a new string or NULL on ENOMEM. */
static char *tidy_lines(const char *s, size_t len) {
  char *r = malloc(len + 1);
  if (!r)
    return NULL;
  size_t w = 0;
  bool blank = false;
  const char *p = s, *end = s + len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    const char *te = le;
    while (te > p && (te[-1] == ' ' || te[-1] == '\t' || te[-1] == '\r'))
      te--;
    if (te == p) {
      blank = w > 0;
    } else {
      if (w)
        r[w++] = '\n';
      if (w && blank)
        r[w++] = '\n';
      memcpy(r + w, p, (size_t)(te - p));
      w += (size_t)(te - p);
      blank = false;
    }
    p = nl ? nl + 1 : end;
  }
  r[w] = '\0';
  return r;
}

static bool has_real_p(const char *html) {
  for (const char *p = strchr(html, '<'); p; p = strchr(p + 1, '<'))
    if ((p[1] == 'p' || p[1] == 'P') && (p[2] == '>' || p[2] == '/' || is_space(p[2])))
      return true;
  return false;
}

char *cp_text_from_html(const char *html) {
  if (!html || !*html)
    return strdup("");
  size_t len = strlen(html);
  if (len > 0x7FFFFFFF)
    return strdup("");

  /* Encoding: descriptions reach us as UTF-8 whatever <meta charset> says, so say UTF-8. */
  htmlDocPtr doc = htmlReadMemory(html, (int)len, NULL, "UTF-8",
                                  HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET);
  if (!doc)
    return strdup(html);

  struct conv c = {0};
  c.keep_newlines =
      !strcasestr(html, "<html") && !strcasestr(html, "<body") && !strcasestr(html, "<!doctype");
  c.real_p = has_real_p(html);
  walk(&c, xmlDocGetRootElement(doc), 0);
  xmlFreeDoc(doc);

  char *r = NULL;
  if (!c.out.oom)
    r = tidy_lines(c.out.p ? c.out.p : "", c.out.len);
  free(c.out.p);
  return r;
}
