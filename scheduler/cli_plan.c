/* `calpost plan` and `calpost check`: the read-only commands over the plan engine. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <libical/ical.h>

#include "calpost/err.h"
#include "cli.h"
#include "config.h"
#include "channels.h"
#include "plan.h"

enum { OPT_FROM = 256, OPT_DAYS, OPT_CHANNEL, OPT_FORMAT, OPT_TZ, OPT_NOW };

static const struct option long_opts[] = {{"config", required_argument, NULL, 'c'},
                                          {"from", required_argument, NULL, OPT_FROM},
                                          {"days", required_argument, NULL, OPT_DAYS},
                                          {"channel", required_argument, NULL, OPT_CHANNEL},
                                          {"format", required_argument, NULL, OPT_FORMAT},
                                          {"timezone", required_argument, NULL, OPT_TZ},
                                          {"now", required_argument, NULL, OPT_NOW},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};

static const char plan_help[] =
    "usage: calpost plan [-c CONFIG] [--from DATE] [--days N] [--channel NAME]\n"
    "                    [--format text|json|csv] [--timezone ZONE] [FILE|DIR ...]\n"
    "\n"
    "Shows the posts the plan will make: one line per post with its local and UTC time,\n"
    "channel, state (scheduled, draft, cancelled) and the first line of its text.\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $CALPOST_CONFIG; without one, the\n"
    "                      files given are the plan and channel names are channel types)\n"
    "  --from DATE         start of the window: now (default), YYYY-MM-DD (midnight in the\n"
    "                      plan zone) or an ISO 8601 date-time with Z or an offset\n"
    "  --days N            length of the window in days (default: window_days, 30)\n"
    "  --channel NAME      only posts for this channel\n"
    "  --format FMT        text (default), json (stable, documented in README.md) or csv\n"
    "  --timezone ZONE     the plan zone for floating times and all-day events\n"
    "  FILE|DIR            .ics files or folders of them, instead of the config's calendars\n";

static const char check_help[] =
    "usage: calpost check [-c CONFIG] [--timezone ZONE] [--now DATETIME] [FILE|DIR ...]\n"
    "\n"
    "Lints the plan like a compiler: prints FILE:LINE: error|warning: MESSAGE for invalid\n"
    "iCalendar, invalid UTF-8, unknown time zones and channels, missing DTSTART, text over a\n"
    "channel's limit, missing media, posts in the past, recurrences over max_occurrences,\n"
    "duplicate UIDs and empty text. Exit status 1 if there is any error, else 0.\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $CALPOST_CONFIG)\n"
    "  --timezone ZONE     the plan zone for floating times and all-day events\n"
    "  --now DATETIME      check as if it were this time (default: now)\n";

struct args {
  const char *config, *from, *channel, *format, *tz, *now;
  int days;
  char **files;
  int n_files;
};

static int parse_args(int argc, char **argv, const char *help, struct args *a) {
  memset(a, 0, sizeof *a);
  a->format = "text";
  a->config = getenv("CALPOST_CONFIG");
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "c:h", long_opts, NULL)) != -1) {
    switch (c) {
      case 'c':
        a->config = optarg;
        break;
      case OPT_FROM:
        a->from = optarg;
        break;
      case OPT_DAYS: {
        char *end;
        long d = strtol(optarg, &end, 10);
        if (*end || d < 1 || d > 3660) {
          fprintf(stderr, "calpost %s: --days: '%s' is not a number of days from 1 to 3660\n",
                  argv[0], optarg);
          return 2;
        }
        a->days = (int)d;
        break;
      }
      case OPT_CHANNEL:
        a->channel = optarg;
        break;
      case OPT_FORMAT:
        a->format = optarg;
        break;
      case OPT_TZ:
        a->tz = optarg;
        break;
      case OPT_NOW:
        a->now = optarg;
        break;
      case 'h':
        fputs(help, stdout);
        return 0;
      default:
        fputs(help, stderr);
        return 2;
    }
  }
  a->files = argv + optind;
  a->n_files = argc - optind;
  if (!a->config && !a->n_files) {
    fprintf(stderr, "calpost %s: no plan: give .ics files or folders, or -c CONFIG\n", argv[0]);
    return 2;
  }
  return -1;
}

static struct cp_config *load_config(const struct args *a) {
  if (!a->config)
    return cp_config_defaults();
  struct cp_config *cfg;
  char err[1024];
  if (cp_config_load(a->config, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    return NULL;
  }
  return cfg;
}

static void print_diags(const struct cp_plan *plan, FILE *out) {
  for (size_t i = 0; i < plan->n_diags; i++) {
    const struct cp_diag *d = &plan->diags[i];
    if (d->line)
      fprintf(out, "%s:%d: %s: %s\n", d->file, d->line, d->error ? "error" : "warning", d->msg);
    else
      fprintf(out, "%s: %s: %s\n", d->file, d->error ? "error" : "warning", d->msg);
  }
}

/* ---- check: each channel's connector validates every post ---------------------------------- */

/* Findings already printed (recurring events give the same finding per occurrence). */
struct seen {
  char **v;
  size_t n, cap;
};

static bool seen_add(struct seen *s, const char *key) {
  for (size_t i = 0; i < s->n; i++)
    if (!strcmp(s->v[i], key))
      return false;
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 64;
    char **nv = realloc(s->v, cap * sizeof *nv);
    if (!nv)
      return true;
    s->v = nv;
    s->cap = cap;
  }
  char *k = strdup(key);
  if (k)
    s->v[s->n++] = k;
  return true;
}

static void seen_free(struct seen *s) {
  for (size_t i = 0; i < s->n; i++)
    free(s->v[i]);
  free(s->v);
}

struct validating {
  const struct cp_post *post;
  struct seen *seen;
  size_t errors, warnings;
};

static void on_validate_diag(void *arg, bool error, const char *msg) {
  struct validating *v = arg;
  char line[2048];
  snprintf(line, sizeof line, "%s:%d: %s: [%s] %s", v->post->file, v->post->line,
           error ? "error" : "warning", v->post->channel, msg);
  if (!seen_add(v->seen, line))
    return;
  puts(line);
  if (error)
    v->errors++;
  else
    v->warnings++;
}

static bool channel_validated(void *arg, const char *channel) {
  return cp_channels_validates(arg, channel);
}

/* Runs validate on every scheduled post, and warns about post options that none of an event's
 * channels reads. Adds to *errors and *warnings. */
static void validate_posts(struct cp_channels *chs, const struct cp_plan *plan, size_t *errors,
                           size_t *warnings) {
  struct seen seen = {0}, unread = {0}, read = {0};
  struct validating v = {.seen = &seen};
  char key[1024];
  for (size_t i = 0; i < plan->n_posts; i++) {
    struct cp_post post;
    cp_plan_post(plan, i, &post);
    if (post.state != CP_POST_SCHEDULED)
      continue;
    v.post = &post;
    cp_channels_validate(chs, &post, on_validate_diag, &v);
    for (size_t k = 0; k < post.n_options; k++) {
      snprintf(key, sizeof key, "%s:%d: %s", post.file, post.line, post.options[k].key);
      if (cp_channels_reads_option(chs, post.channel, post.options[k].key))
        seen_add(&read, key);
      else
        seen_add(&unread, key);
    }
  }
  for (size_t i = 0; i < unread.n; i++) {
    bool used = false;
    for (size_t j = 0; j < read.n && !used; j++)
      used = !strcmp(unread.v[i], read.v[j]);
    if (used)
      continue;
    char *name = strrchr(unread.v[i], ' ') + 1;
    name[-2] = '\0'; /* "file:line" */
    printf("%s: warning: the setting '%s' in [calpost] is not read by any channel of this event, "
           "so it is ignored (calpost's own settings are channels, media, draft, thread, "
           "numbered and campaign)\n",
           unread.v[i], name);
    v.warnings++;
  }
  *errors += v.errors;
  *warnings += v.warnings;
  seen_free(&seen);
  seen_free(&unread);
  seen_free(&read);
}

static const char *state_name(enum cp_post_state s) {
  return s == CP_POST_DRAFT ? "draft" : s == CP_POST_CANCELLED ? "cancelled" : "scheduled";
}

static void first_line(const char *text, char *buf, size_t len) {
  size_t n = strcspn(text, "\n");
  if (n >= len)
    n = len - 1;
  /* Do not cut a UTF-8 sequence in half. */
  while (n > 0 && n < strlen(text) && ((unsigned char)text[n] & 0xC0) == 0x80)
    n--;
  memcpy(buf, text, n);
  buf[n] = 0;
}

/* Post i of the plan with its local and UTC times (40 bytes each); false if channel is set and
 * the post is for another one. */
static bool post_at(const struct cp_plan *plan, size_t i, const char *channel, struct cp_post *post,
                    char *local, char *utc) {
  cp_plan_post(plan, i, post);
  if (channel && strcmp(post->channel, channel))
    return false;
  cp_plan_format_time(post->due, post->utc_offset, local, 40);
  cp_plan_format_time(post->due, 0, utc, 40);
  return true;
}

static void print_text(const struct cp_plan *plan, const char *channel) {
  printf("%-23s %-17s %-12s %-9s %-16s %s\n", "LOCAL TIME", "UTC", "CHANNEL", "STATE", "ID",
         "TEXT");
  size_t shown = 0;
  for (size_t i = 0; i < plan->n_posts; i++) {
    struct cp_post post;
    char local[40], utc[40], line[81];
    if (!post_at(plan, i, channel, &post, local, utc))
      continue;
    const struct cp_post *p = &post;
    local[16] = ' ';
    memmove(local + 17, local + 19, strlen(local + 19) + 1); /* drop the seconds */
    utc[16] = 'Z';
    utc[17] = 0;
    local[10] = ' ';
    utc[10] = ' ';
    first_line(p->text, line, sizeof line);
    printf("%-23s %-17s %-12s %-9s %-16s %s\n", local, utc, p->channel, state_name(p->state), p->id,
           line);
    shown++;
  }
  printf("%zu post%s\n", shown, shown == 1 ? "" : "s");
}

static void csv_field(const char *s, bool last) {
  fputc('"', stdout);
  for (; *s; s++) {
    if (*s == '"')
      fputc('"', stdout);
    fputc(*s, stdout);
  }
  fputc('"', stdout);
  fputc(last ? '\n' : ',', stdout);
}

static void print_csv(const struct cp_plan *plan, const char *channel) {
  printf("id,calendar,uid,occurrence,channel,due,due_local,tzid,all_day,state,title,text\n");
  for (size_t i = 0; i < plan->n_posts; i++) {
    struct cp_post post;
    char local[40], utc[40];
    if (!post_at(plan, i, channel, &post, local, utc))
      continue;
    const struct cp_post *p = &post;
    const char *fields[] = {p->id,
                            p->calendar,
                            p->uid,
                            p->occurrence,
                            p->channel,
                            utc,
                            local,
                            p->tzid,
                            p->all_day ? "true" : "false",
                            state_name(p->state),
                            p->title,
                            p->text};
    size_t nf = sizeof fields / sizeof fields[0];
    for (size_t k = 0; k < nf; k++)
      csv_field(fields[k], k == nf - 1);
  }
}

/* JSON is streamed one post at a time, so a large plan needs no large tree in memory. */
static int print_json(const struct cp_plan *plan, const char *channel, int64_t from, int64_t to,
                      const char *zone) {
  char a[40], b[40];
  cp_plan_format_time(from, 0, a, sizeof a);
  cp_plan_format_time(to, 0, b, sizeof b);
  json_t *head =
      json_pack("{s:i,s:s,s:s,s:s}", "calpost_plan", 1, "from", a, "to", b, "timezone", zone);
  if (!head)
    return CP_ENOMEM;
  char *hs = json_dumps(head, JSON_COMPACT);
  json_decref(head);
  if (!hs)
    return CP_ENOMEM;
  hs[strlen(hs) - 1] = 0; /* reopen the object */
  printf("%s,\"posts\":[", hs);
  free(hs);
  bool first = true;
  for (size_t i = 0; i < plan->n_posts; i++) {
    struct cp_post post;
    char local[40], utc[40];
    if (!post_at(plan, i, channel, &post, local, utc))
      continue;
    const struct cp_post *p = &post;
    /* Built with the _nocheck setters: every string was validated as UTF-8 when its file was
     * read, and json_pack's format parsing would cost more than the rest of `plan`. */
    json_t *media = json_array();
    for (size_t k = 0; media && k < p->n_media; k++) {
      json_t *m = json_object();
      json_object_set_new_nocheck(m, "src", json_string_nocheck(p->media[k].src));
      json_object_set_new_nocheck(
          m, "alt", p->media[k].alt ? json_string_nocheck(p->media[k].alt) : json_null());
      json_array_append_new(media, m);
    }
    json_t *o = json_object();
    struct {
      const char *k;
      json_t *v;
    } f[] = {
        {"id", json_string_nocheck(p->id)},
        {"calendar", json_string_nocheck(p->calendar)},
        {"uid", json_string_nocheck(p->uid)},
        {"occurrence", json_string_nocheck(p->occurrence)},
        {"channel", json_string_nocheck(p->channel)},
        {"due", json_string_nocheck(utc)},
        {"due_local", json_string_nocheck(local)},
        {"tzid", json_string_nocheck(p->tzid)},
        {"all_day", json_boolean(p->all_day)},
        {"state", json_string_nocheck(state_name(p->state))},
        {"title", json_string_nocheck(p->title)},
        {"text", json_string_nocheck(p->text)},
        {"media", media},
        {"thread", json_boolean(p->thread)},
        {"campaign", p->campaign ? json_string_nocheck(p->campaign) : json_null()},
        {"file", json_string_nocheck(p->file)},
        {"line", json_integer(p->line)},
    };
    for (size_t k = 0; o && k < sizeof f / sizeof f[0]; k++)
      json_object_set_new_nocheck(o, f[k].k, f[k].v);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
      return CP_ENOMEM;
    printf("%s\n%s", first ? "" : ",", s);
    free(s);
    first = false;
  }
  printf("],\"diagnostics\":[");
  for (size_t i = 0; i < plan->n_diags; i++) {
    const struct cp_diag *d = &plan->diags[i];
    json_t *o = json_pack("{s:s,s:i,s:s,s:s}", "file", d->file, "line", d->line, "severity",
                          d->error ? "error" : "warning", "message", d->msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
      return CP_ENOMEM;
    printf("%s\n%s", i ? "," : "", s);
    free(s);
  }
  printf("]}\n");
  return 0;
}

static int run(int argc, char **argv, bool check) {
  struct cp_channels *chs = NULL;
  size_t ch_errors = 0, ch_warnings = 0;
  struct args a;
  int rc = parse_args(argc, argv, check ? check_help : plan_help, &a);
  if (rc >= 0)
    return rc;
  if (strcmp(a.format, "text") && strcmp(a.format, "json") && strcmp(a.format, "csv")) {
    fprintf(stderr, "calpost plan: --format: '%s' is not one of text, json, csv\n", a.format);
    return 2;
  }
  icalerror_set_errors_are_fatal(0);
  struct cp_config *cfg = load_config(&a);
  if (!cfg)
    return 2;
  const char *zone = a.tz ? a.tz : cfg->timezone;
  int64_t now = (int64_t)time(NULL);
  struct cp_plan_opts o = {.cfg = cfg,
                           .check = check,
                           .timezone = a.tz,
                           .files = (const char *const *)a.files,
                           .n_files = (size_t)a.n_files};
  int status = 0;
  if (a.now && (rc = cp_plan_parse_time(a.now, zone, now, &now)) < 0) {
    fprintf(stderr, "calpost %s: --now: '%s' is not a date-time\n", argv[0], a.now);
    status = 2;
    goto out;
  }
  o.now = now;
  o.from = now;
  if (a.from && (rc = cp_plan_parse_time(a.from, zone, now, &o.from)) < 0) {
    fprintf(stderr, "calpost plan: --from: '%s' is not 'now', a date (YYYY-MM-DD) or a date-time\n",
            a.from);
    status = 2;
    goto out;
  }
  o.to = o.from + (int64_t)(a.days ? a.days : check ? cfg->check_days : cfg->window_days) * 86400;
  if (a.channel && !cp_config_channel(cfg, a.channel)) {
    fprintf(stderr, "calpost plan: --channel: unknown channel '%s'\n", a.channel);
    status = 2;
    goto out;
  }
  /* check with a config file: every channel's connector is set up (a missing secret or a bad
   * key is an error now, not at due time) and validates the posts. */
  if (check && cfg->path) {
    if (cp_channels_open(cfg, stdout, &chs, &ch_errors) < 0) {
      status = 2;
      goto out;
    }
    o.validated = channel_validated;
    o.validated_arg = chs;
  }
  struct cp_plan *plan;
  rc = cp_plan_load(&o, &plan);
  if (rc == CP_ETZ) {
    fprintf(stderr, "calpost %s: unknown time zone '%s' (use an IANA name such as Europe/Berlin)\n",
            argv[0], zone);
    status = 2;
    goto out;
  }
  if (rc < 0) {
    fprintf(stderr, "calpost %s: %s\n", argv[0], cp_strerror(rc));
    status = 2;
    goto out;
  }
  if (check) {
    print_diags(plan, stdout);
    if (chs)
      validate_posts(chs, plan, &ch_errors, &ch_warnings);
    plan->n_errors += ch_errors;
    plan->n_warnings += ch_warnings;
    size_t scheduled = 0;
    for (size_t i = 0; i < plan->n_posts; i++) {
      struct cp_post post;
      cp_plan_post(plan, i, &post);
      scheduled += post.state == CP_POST_SCHEDULED;
    }
    fprintf(stderr, "%zu error%s, %zu warning%s; %zu post%s scheduled in the next %d days\n",
            plan->n_errors, plan->n_errors == 1 ? "" : "s", plan->n_warnings,
            plan->n_warnings == 1 ? "" : "s", scheduled, scheduled == 1 ? "" : "s",
            (int)((o.to - o.from) / 86400));
    status = plan->n_errors ? 1 : 0;
  } else {
    print_diags(plan, stderr);
    if (!strcmp(a.format, "json"))
      rc = print_json(plan, a.channel, o.from, o.to, zone);
    else if (!strcmp(a.format, "csv"))
      print_csv(plan, a.channel);
    else
      print_text(plan, a.channel);
    if (rc < 0)
      status = 2;
  }
  cp_plan_free(plan);
out:
  cp_channels_close(chs);
  cp_config_free(cfg);
  return status;
}

int cp_cli_plan(int argc, char **argv) {
  return run(argc, argv, false);
}

int cp_cli_check(int argc, char **argv) {
  return run(argc, argv, true);
}
