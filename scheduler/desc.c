/* The description format: a body, then optional [channel] variants and one [calpost] settings
 * section. Settings lines go through inih, so comments and "name = value" work as in the config
 * file. */
#include <ctype.h>
#include "calpost/text.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "calpost/err.h"

struct parser {
  struct cp_desc *d;
  bool oom;
  char **seen; /* variant names met so far, including empty ones */
  size_t n_seen;

  /* The settings line being handed to inih, one line per ini_parse_stream() call. */
  int lineno;
  const char *line;
  size_t line_len;
  const char *ini_buf; /* inih's line buffer, to find where the value starts */
  bool truncated;      /* the line did not fit inih's buffer */
  bool fed;
  bool handled;
};

static bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

static bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool is_name_char(char c, bool first) {
  bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  return alnum || (!first && (c == '_' || c == '.' || c == '-'));
}

/* Appends elem to the array arr holding n elements; sets ok to false on ENOMEM, leaving the
 * array as it was. */
#define APPEND(arr, n, elem, ok)                                                                   \
  do {                                                                                             \
    void *nv_ = realloc((arr), ((n) + 1) * sizeof *(arr));                                         \
    (ok) = nv_ != NULL;                                                                            \
    if (nv_) {                                                                                     \
      (arr) = nv_;                                                                                 \
      (arr)[(n)++] = (elem);                                                                       \
    }                                                                                              \
  } while (0)

static void diag(struct parser *P, int line, bool error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void diag(struct parser *P, int line, bool error, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *msg = NULL;
  int r = vasprintf(&msg, fmt, ap);
  va_end(ap);
  struct cp_desc_diag dg = {.line = line, .error = error, .msg = msg};
  bool ok = r >= 0;
  if (ok)
    APPEND(P->d->diags, P->d->n_diags, dg, ok);
  if (!ok) {
    if (r >= 0)
      free(msg);
    P->oom = true;
  }
}

/* s[0..n) without surrounding white space and with CRLF as LF; NULL on ENOMEM. */
static char *copy_trimmed(const char *s, size_t n) {
  while (n && is_ws(*s)) {
    s++;
    n--;
  }
  while (n && is_ws(s[n - 1]))
    n--;
  char *r = malloc(n + 1);
  if (!r)
    return NULL;
  size_t w = 0;
  for (size_t i = 0; i < n; i++)
    if (!(s[i] == '\r' && i + 1 < n && s[i + 1] == '\n'))
      r[w++] = s[i];
  r[w] = '\0';
  return r;
}

/* If line [p, end) is a section header "[NAME]", returns NAME lowercased (malloc'd); NULL if
 * it is not one. Sets P->oom on allocation failure. */
static char *header_name(struct parser *P, const char *p, const char *end) {
  while (p < end && is_blank(*p))
    p++;
  while (end > p && is_blank(end[-1]))
    end--;
  if (end - p < 3 || *p != '[' || end[-1] != ']')
    return NULL;
  const char *name = p + 1, *name_end = end - 1;
  for (const char *q = name; q < name_end; q++)
    if (!is_name_char(*q, q == name))
      return NULL;
  char *r = strndup(name, (size_t)(name_end - name));
  if (!r) {
    P->oom = true;
    return NULL;
  }
  for (char *q = r; *q; q++)
    *q = ascii_lower(*q);
  return r;
}

/* --- Settings ---------------------------------------------------------------------------- */

static int parse_bool(const char *v) {
  static const char *const yes[] = {"yes", "true", "on", "1"};
  static const char *const no[] = {"no", "false", "off", "0"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(v, yes[i]) == 0)
      return 1;
    if (strcasecmp(v, no[i]) == 0)
      return 0;
  }
  return -1;
}

static void set_channels(struct parser *P, const char *v) {
  struct cp_desc *d = P->d;
  bool any = false;
  for (const char *p = v; *p;) {
    size_t n = strcspn(p, ", \t");
    if (n) {
      any = true;
      bool dup = false;
      for (size_t i = 0; i < d->n_channels && !dup; i++)
        dup = strlen(d->channels[i]) == n && strncasecmp(d->channels[i], p, n) == 0;
      if (!dup) {
        char *ch = strndup(p, n);
        bool ok = ch != NULL;
        if (ok)
          APPEND(d->channels, d->n_channels, ch, ok);
        if (!ok) {
          free(ch);
          P->oom = true;
          return;
        }
        for (char *q = ch; *q; q++)
          *q = ascii_lower(*q);
      }
      p += n;
    } else {
      p++;
    }
  }
  if (!any)
    diag(P, P->lineno, false, "The 'channels' setting lists no channels, so it is ignored.");
}

static void add_media(struct parser *P, const char *v) {
  const char *bar = strchr(v, '|');
  size_t src_len = bar ? (size_t)(bar - v) : strlen(v);
  struct cp_media m = {0};
  m.src = copy_trimmed(v, src_len);
  if (m.src && !*m.src) {
    free(m.src);
    diag(P, P->lineno, true,
         bar ? "The 'media' setting needs a file name or URL before the '|'."
             : "The 'media' setting needs a file name or URL.");
    return;
  }
  if (m.src && bar) {
    m.alt = copy_trimmed(bar + 1, strlen(bar + 1));
    if (m.alt && !*m.alt) {
      free(m.alt);
      m.alt = NULL;
    } else if (!m.alt) {
      free(m.src);
      m.src = NULL;
    }
  }
  bool ok = m.src != NULL;
  if (ok)
    APPEND(P->d->media, P->d->n_media, m, ok);
  if (!ok) {
    free(m.src);
    free(m.alt);
    P->oom = true;
  }
}

/* A setting calpost does not use itself: a post option for the connectors (`calpost check`
 * warns about one that none of the event's channels reads). */
static void add_option(struct parser *P, const char *name, const char *value) {
  struct cp_desc *d = P->d;
  char *key = strdup(name), *val = strdup(value);
  if (!key || !val) {
    free(key);
    free(val);
    P->oom = true;
    return;
  }
  for (char *c = key; *c; c++)
    *c = (char)tolower((unsigned char)*c);
  for (size_t i = 0; i < d->n_options; i++)
    if (!strcmp(d->options[i].key, key)) {
      free(key);
      free((char *)d->options[i].value);
      d->options[i].value = val;
      d->option_lines[i] = P->lineno;
      return;
    }
  struct cp_post_option *no = realloc(d->options, (d->n_options + 1) * sizeof *no);
  if (no)
    d->options = no;
  int *nl = no ? realloc(d->option_lines, (d->n_options + 1) * sizeof *nl) : NULL;
  if (nl)
    d->option_lines = nl;
  if (!no || !nl) {
    free(key);
    free(val);
    P->oom = true;
    return;
  }
  d->options[d->n_options] = (struct cp_post_option){key, val};
  d->option_lines[d->n_options++] = P->lineno;
}

static void apply_setting(struct parser *P, const char *name, const char *value) {
  struct cp_desc *d = P->d;
  int *flag = NULL;
  if (strcasecmp(name, "draft") == 0)
    flag = &d->draft;
  else if (strcasecmp(name, "thread") == 0)
    flag = &d->thread;
  else if (strcasecmp(name, "numbered") == 0)
    flag = &d->numbered;

  if (flag) {
    int b = parse_bool(value);
    if (b < 0)
      diag(P, P->lineno, true, "The setting '%s' must be yes or no, not '%s'.", name, value);
    else
      *flag = b;
  } else if (strcasecmp(name, "channels") == 0) {
    set_channels(P, value);
  } else if (strcasecmp(name, "media") == 0) {
    add_media(P, value);
  } else if (strcasecmp(name, "campaign") == 0) {
    free(d->campaign);
    d->campaign = NULL;
    if (*value) {
      d->campaign = strdup(value);
      P->oom |= !d->campaign;
    }
  } else {
    add_option(P, name, value);
  }
}

/* The whole value of a line that was too long for inih's buffer: inih saw only its start, so
 * take the rest from our copy, with inih's rules (inline ';' comment after white space, trailing
 * white space dropped). */
static char *untruncated_value(struct parser *P, const char *value) {
  size_t off = (size_t)(value - P->ini_buf);
  if (value < P->ini_buf || off > P->line_len)
    return NULL;
  const char *v = P->line + off;
  size_t n = P->line_len - off;
#if INI_ALLOW_INLINE_COMMENTS
  for (size_t i = 1; i < n; i++)
    if (strchr(INI_INLINE_COMMENT_PREFIXES, v[i]) && (v[i - 1] == ' ' || v[i - 1] == '\t')) {
      n = i;
      break;
    }
#endif
  while (n && is_ws(v[n - 1]))
    n--;
  return strndup(v, n);
}

static int on_setting(void *user, const char *section, const char *name, const char *value) {
  struct parser *P = user;
  P->handled = true;
  if (!value)
    return 1;
  char *full = NULL;
  if (P->truncated) {
    full = untruncated_value(P, value);
    if (!full) {
      P->oom = true;
      return 1;
    }
  }
  apply_setting(P, name, full ? full : value);
  free(full);
  return 1;
}

/* inih reads one line per stream: each settings line is parsed on its own, so we know its
 * number, an indented line is never glued to the previous setting (INI_ALLOW_MULTILINE), and a
 * line longer than inih's buffer is handed over cut, then completed in on_setting. */
static char *read_one_line(char *str, int num, void *stream) {
  struct parser *P = stream;
  if (P->fed || num < 3)
    return NULL;
  P->fed = true;
  size_t n = P->line_len;
  P->truncated = n > (size_t)num - 2;
  if (P->truncated)
    n = (size_t)num - 2;
  memcpy(str, P->line, n);
  str[n] = '\n';
  str[n + 1] = '\0';
  P->ini_buf = str;
  return str;
}

static void settings_line(struct parser *P, int lineno, const char *p, const char *end) {
  P->lineno = lineno;
  P->line = p;
  P->line_len = (size_t)(end - p);
  P->fed = P->handled = P->truncated = false;
  P->ini_buf = NULL;
  int rc = ini_parse_stream(read_one_line, P, on_setting, P);

  const char *q = p;
  while (q < end && is_ws(*q))
    q++;
  bool blank_or_comment = q == end || strchr(INI_START_COMMENT_PREFIXES, *q);
  if (rc == -2)
    P->oom = true;
  else if (!P->handled && !blank_or_comment)
    diag(P, lineno, false,
         "This line in [calpost] is not a setting, so it is ignored. Settings look like "
         "'name = value'.");
}

/* --- Sections ---------------------------------------------------------------------------- */

enum section { SEC_BODY, SEC_SETTINGS, SEC_VARIANT, SEC_SKIP };

static void close_section(struct parser *P, enum section sec, const char *start, const char *end,
                          char *name, int header_line) {
  if (sec == SEC_BODY) {
    P->d->body = copy_trimmed(start, (size_t)(end - start));
    P->oom |= !P->d->body;
  } else if (sec == SEC_VARIANT) {
    struct cp_desc_variant v = {.channel = name,
                                .text = copy_trimmed(start, (size_t)(end - start))};
    if (!v.text) {
      P->oom = true;
    } else if (!*v.text) {
      diag(P, header_line, true,
           "Empty text for channel '%s': write the post below [%s], or delete that line.", name,
           name);
      free(v.text);
    } else {
      bool ok;
      APPEND(P->d->variants, P->d->n_variants, v, ok);
      if (ok)
        return; /* the variant owns the name now */
      free(v.text);
      P->oom = true;
    }
  }
  free(name);
}

/* Starts the section named by a header on line `lineno`; returns its kind. Takes `name`. */
static enum section open_section(struct parser *P, char *name, int lineno, bool *had_settings) {
  if (strcmp(name, "calpost") == 0) {
    if (*had_settings)
      diag(P, lineno, false,
           "A second [calpost] section: its settings are used too, but keep all settings in "
           "one [calpost] section.");
    *had_settings = true;
    free(name);
    return SEC_SETTINGS;
  }
  for (size_t i = 0; i < P->n_seen; i++) {
    if (strcmp(P->seen[i], name) == 0) {
      diag(P, lineno, true,
           "Duplicate [%s] section: only the first one is used, so merge the two or delete one.",
           name);
      free(name);
      return SEC_SKIP;
    }
  }
  char *copy = strdup(name);
  bool ok = copy != NULL;
  if (ok)
    APPEND(P->seen, P->n_seen, copy, ok);
  if (!ok) {
    free(copy);
    P->oom = true;
  }
  return SEC_VARIANT;
}

int cp_desc_parse(const char *text, struct cp_desc **out) {
  *out = NULL;
  struct cp_desc *d = calloc(1, sizeof *d);
  if (!d)
    return CP_ENOMEM;
  d->draft = d->thread = d->numbered = -1;

  struct parser P = {.d = d};
  enum section sec = SEC_BODY;
  const char *sec_start = text;
  char *sec_name = NULL;
  int sec_line = 0, lineno = 0;
  bool had_settings = false;
  const char *p = text;

  while (*p && !P.oom) {
    lineno++;
    const char *nl = strchr(p, '\n');
    const char *end = nl ? nl : p + strlen(p);
    const char *next = nl ? nl + 1 : end;
    char *name = header_name(&P, p, end);
    if (name) {
      close_section(&P, sec, sec_start, p, sec_name, sec_line);
      sec_name = NULL;
      sec = open_section(&P, name, lineno, &had_settings);
      if (sec == SEC_VARIANT)
        sec_name = name;
      sec_start = next;
      sec_line = lineno;
    } else if (sec == SEC_SETTINGS) {
      settings_line(&P, lineno, p, end);
    }
    p = next;
  }
  close_section(&P, sec, sec_start, p, sec_name, sec_line);
  if (!d->body && !P.oom) { /* the text started with a header */
    d->body = strdup("");
    P.oom |= !d->body;
  }

  for (size_t i = 0; i < P.n_seen; i++)
    free(P.seen[i]);
  free(P.seen);
  if (P.oom) {
    cp_desc_free(d);
    return CP_ENOMEM;
  }
  *out = d;
  return 0;
}

void cp_desc_free(struct cp_desc *d) {
  if (!d)
    return;
  free(d->body);
  for (size_t i = 0; i < d->n_variants; i++) {
    free(d->variants[i].channel);
    free(d->variants[i].text);
  }
  free(d->variants);
  for (size_t i = 0; i < d->n_channels; i++)
    free(d->channels[i]);
  free(d->channels);
  for (size_t i = 0; i < d->n_media; i++) {
    free(d->media[i].src);
    free(d->media[i].alt);
  }
  free(d->media);
  free(d->campaign);
  for (size_t i = 0; i < d->n_options; i++) {
    free((char *)d->options[i].key);
    free((char *)d->options[i].value);
  }
  free(d->options);
  free(d->option_lines);
  for (size_t i = 0; i < d->n_diags; i++)
    free(d->diags[i].msg);
  free(d->diags);
  free(d);
}
