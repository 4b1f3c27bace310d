/* `calpost report`: what went out, per channel, from the state database (read-only). The
 * numbers come from report.c; this file parses the options and prints text, CSV or JSON. */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <libical/ical.h>

#include "calpost/err.h"
#include "cli.h"
#include "config.h"
#include "plan.h"
#include "report.h"
#include "tz.h"

enum { OPT_SINCE = 256, OPT_CHANNEL, OPT_FORMAT, OPT_NOW, OPT_TABLE, OPT_TZ, OPT_MIN_POSTS };

static const struct option long_opts[] = {{"config", required_argument, NULL, 'c'},
                                          {"since", required_argument, NULL, OPT_SINCE},
                                          {"channel", required_argument, NULL, OPT_CHANNEL},
                                          {"format", required_argument, NULL, OPT_FORMAT},
                                          {"now", required_argument, NULL, OPT_NOW},
                                          {"table", required_argument, NULL, OPT_TABLE},
                                          {"timezone", required_argument, NULL, OPT_TZ},
                                          {"min-posts", required_argument, NULL, OPT_MIN_POSTS},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};

static const char report_help[] =
    "usage: calpost report [-c CONFIG] [--since 30d] [--channel NAME] [--format text|csv|json]\n"
    "                      [--table channels|posts|slots] [--now DATETIME]\n"
    "\n"
    "Measures what went out, from the state database (read-only; the daemon may be running).\n"
    "Per channel, over the posts due in the window: posts published and on time (within one\n"
    "minute of due), lateness p50/p95, failed attempts by class, posts that ended failed,\n"
    "missed or unknown, engagement totals and per post (latest sample of each post), the top\n"
    "posts (likes + reposts + replies) and the best weekday/hour slots of the due time.\n"
    "\n"
    "  -c, --config FILE   the configuration (default: $CALPOST_CONFIG); the database is\n"
    "                      STATE_DIR/calpost.db\n"
    "  --since WHEN        start of the window: a duration before now (30d, 12h, 90m; default\n"
    "                      30d), a date YYYY-MM-DD (midnight in the plan zone) or an ISO 8601\n"
    "                      date-time with Z or an offset\n"
    "  --channel NAME      only this channel\n"
    "  --format FMT        text (default), csv or json (stable, documented in README.md)\n"
    "  --table T           for csv: channels (default: one row per channel and a total),\n"
    "                      posts (one row per post due in the window) or slots\n"
    "  --timezone ZONE     the zone of the weekday/hour slots (default: the plan zone)\n"
    "  --min-posts N       slots with fewer sampled posts are flagged (default 3)\n"
    "  --now DATETIME      end of the window (default: now)\n";

struct args {
  const char *config, *since, *channel, *format, *now, *table, *tz;
  long min_posts;
};

static int parse_args(int argc, char **argv, struct args *a) {
  memset(a, 0, sizeof *a);
  a->format = "text";
  a->since = "30d";
  a->config = getenv("CALPOST_CONFIG");
  optind = 0; /* full reset: the function may run more than once in a process */
  int c;
  while ((c = getopt_long(argc, argv, "c:h", long_opts, NULL)) != -1) {
    switch (c) {
      case 'c':
        a->config = optarg;
        break;
      case OPT_SINCE:
        a->since = optarg;
        break;
      case OPT_CHANNEL:
        a->channel = optarg;
        break;
      case OPT_FORMAT:
        a->format = optarg;
        break;
      case OPT_NOW:
        a->now = optarg;
        break;
      case OPT_TABLE:
        a->table = optarg;
        break;
      case OPT_TZ:
        a->tz = optarg;
        break;
      case OPT_MIN_POSTS: {
        char *end;
        a->min_posts = strtol(optarg, &end, 10);
        if (*end || end == optarg || a->min_posts < 1 || a->min_posts > 100000) {
          fprintf(stderr, "calpost report: --min-posts: '%s' is not a number from 1 to 100000\n",
                  optarg);
          return 2;
        }
        break;
      }
      case 'h':
        fputs(report_help, stdout);
        return 0;
      default:
        fputs(report_help, stderr);
        return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "calpost report: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (strcmp(a->format, "text") && strcmp(a->format, "csv") && strcmp(a->format, "json")) {
    fprintf(stderr, "calpost report: --format: '%s' is not one of text, csv, json\n", a->format);
    return 2;
  }
  if (a->table && strcmp(a->format, "csv")) {
    fprintf(stderr, "calpost report: --table goes with --format csv (json holds every table)\n");
    return 2;
  }
  if (a->table && strcmp(a->table, "channels") && strcmp(a->table, "posts") &&
      strcmp(a->table, "slots")) {
    fprintf(stderr, "calpost report: --table: '%s' is not one of channels, posts, slots\n",
            a->table);
    return 2;
  }
  return -1;
}

/* ---- text ------------------------------------------------------------------------------- */

/* "2024-03-05 10:00" in zone. */
static void local_time(icaltimezone *zone, int64_t ms, char *buf, size_t len) {
  int64_t t = ms / 1000;
  char iso[40];
  cp_plan_format_time(t, cp_tz_offset_at(zone, t), iso, sizeof iso);
  iso[10] = ' ';
  iso[16] = '\0';
  snprintf(buf, len, "%s", iso);
}

/* A lateness for people: "420 ms", "3.2 s", "1 min 31 s", "2 h 05 min". */
static void duration(int64_t ms, char *buf, size_t len) {
  if (ms < 1000)
    snprintf(buf, len, "%" PRId64 " ms", ms);
  else if (ms < 60000)
    snprintf(buf, len, "%.1f s", (double)ms / 1000);
  else if (ms < 3600000)
    snprintf(buf, len, "%" PRId64 " min %02" PRId64 " s", ms / 60000, ms / 1000 % 60);
  else
    snprintf(buf, len, "%" PRId64 " h %02" PRId64 " min", ms / 3600000, ms / 60000 % 60);
}

static void print_counts(const int64_t *counts) {
  for (int m = 0; m < CP_METRIC_N; m++) {
    if (counts[m] < 0)
      printf("%s- %s", m ? ", " : "", cp_report_metric_name((enum cp_report_metric)m));
    else
      printf("%s%" PRId64 " %s", m ? ", " : "", counts[m],
             cp_report_metric_name((enum cp_report_metric)m));
  }
}

static void print_channel_text(const struct cp_report *r, const struct cp_report_channel *c,
                               icaltimezone *zone, bool lists) {
  size_t pub = c->states[CP_STORE_SENT];
  char a[40], b[40], m[40];
  if (lists)
    printf("channel %s\n", c->name);
  else
    printf("all channels\n");
  printf("  published      %zu of %zu posts due, %zu on time", pub, c->posts, c->on_time);
  if (pub)
    printf(" (%.0f%%)", 100.0 * (double)c->on_time / (double)pub);
  printf("\n");
  if (c->has_lateness) {
    duration(c->lateness_p50_ms, a, sizeof a);
    duration(c->lateness_p95_ms, b, sizeof b);
    duration(c->lateness_max_ms, m, sizeof m);
    printf("  lateness       p50 %s, p95 %s, max %s\n", a, b, m);
  }
  printf("  failures       attempts: %zu retry, %zu rate_limited, %zu auth, %zu permanent, %zu "
         "unknown\n",
         c->attempts[CP_OUTCOME_RETRY], c->attempts[CP_OUTCOME_RATE_LIMITED],
         c->attempts[CP_OUTCOME_AUTH], c->attempts[CP_OUTCOME_PERMANENT],
         c->attempts[CP_OUTCOME_UNKNOWN]);
  printf("                 posts: %zu failed, %zu missed, %zu unknown\n",
         c->states[CP_STORE_FAILED], c->states[CP_STORE_MISSED], c->states[CP_STORE_UNKNOWN]);
  size_t waiting = c->states[CP_STORE_PENDING] + c->states[CP_STORE_SENDING];
  if (waiting || c->states[CP_STORE_SKIPPED] || c->states[CP_STORE_CANCELLED])
    printf("  other          %zu pending, %zu skipped, %zu cancelled\n", waiting,
           c->states[CP_STORE_SKIPPED], c->states[CP_STORE_CANCELLED]);
  if (!c->sampled) {
    printf("  engagement     no samples\n");
  } else {
    printf("  engagement     %zu post%s sampled: ", c->sampled, c->sampled == 1 ? "" : "s");
    print_counts(c->totals);
    printf("\n  per post       ");
    for (int k = 0; k < CP_METRIC_N; k++) {
      const char *name = cp_report_metric_name((enum cp_report_metric)k);
      if (c->known[k])
        printf("%s%.1f %s", k ? ", " : "", (double)c->totals[k] / (double)c->known[k], name);
      else
        printf("%s- %s", k ? ", " : "", name);
    }
    printf("\n");
  }
  if (!lists)
    return;
  if (c->n_top) {
    printf("  top posts      (score = likes + reposts + replies)\n");
    for (size_t i = 0; i < c->n_top; i++) {
      const struct cp_report_post *p = &c->v[c->top[i]];
      local_time(zone, p->due_ms, a, sizeof a);
      printf("    %zu. score %" PRId64 "  %s  %s  %s\n", i + 1, p->score, a, p->id,
             p->remote_url ? p->remote_url : "");
    }
  }
  if (c->n_slots) {
    printf("  best slots     (weekday and hour of the due time in %s; * fewer than %zu posts)\n",
           r->timezone, r->min_slot_posts);
    for (size_t i = 0; i < c->n_slots && i < 5; i++) {
      const struct cp_report_slot *s = &c->slots[i];
      printf("    %s %02d:00  average %.1f over %zu post%s%s\n", cp_report_weekday_name(s->weekday),
             s->hour, s->average, s->posts, s->posts == 1 ? "" : "s", s->few ? " *" : "");
    }
  }
  bool head = false;
  for (size_t i = 0; i < c->n; i++) {
    const struct cp_report_post *p = &c->v[i];
    if (!cp_report_is_problem(p))
      continue;
    if (!head)
      printf("  problems\n");
    head = true;
    local_time(zone, p->due_ms, a, sizeof a);
    printf("    %s  %s  %s", a, p->id, cp_store_state_name(p->state));
    if (p->has_attempt) {
      printf(" after %d attempt%s: %s", p->n_attempts, p->n_attempts == 1 ? "" : "s",
             cp_store_outcome_name(p->last_outcome));
      /* The message usually names the HTTP status itself ("HTTP 400: ..."). */
      if (p->last_message && *p->last_message)
        printf(": %.200s", p->last_message);
      else if (p->last_http_status)
        printf(": HTTP %d", p->last_http_status);
    }
    printf("\n");
  }
}

static void print_text(const struct cp_report *r, icaltimezone *zone) {
  char a[40], b[40];
  local_time(zone, r->from_ms, a, sizeof a);
  local_time(zone, r->to_ms, b, sizeof b);
  printf("calpost report: posts due %s to %s (%s)\n", a, b, r->timezone);
  for (size_t i = 0; i < r->n_channels; i++) {
    printf("\n");
    print_channel_text(r, &r->channels[i], zone, true);
  }
  if (r->n_channels != 1) {
    printf("\n");
    print_channel_text(r, &r->total, zone, false);
  }
}

/* ---- CSV (RFC 4180) ------------------------------------------------------------------------- */

static void csv_str(const char *s, bool last) {
  if (!s)
    s = "";
  if (strpbrk(s, ",\"\r\n")) {
    fputc('"', stdout);
    for (; *s; s++) {
      if (*s == '"')
        fputc('"', stdout);
      fputc(*s, stdout);
    }
    fputc('"', stdout);
  } else {
    fputs(s, stdout);
  }
  fputc(last ? '\n' : ',', stdout);
}

static void csv_int(int64_t v) {
  printf("%" PRId64 ",", v);
}

/* An optional count: empty when unknown. */
static void csv_opt(bool known, int64_t v) {
  if (known)
    printf("%" PRId64, v);
  fputc(',', stdout);
}

/* A share or an average with 4 decimals at most, as the JSON has it. */
static void csv_real(bool known, double v) {
  if (known)
    printf("%.10g", round(v * 10000) / 10000);
  fputc(',', stdout);
}

static void print_csv_channels(const struct cp_report *r) {
  printf("channel,posts,published,on_time,on_time_share,lateness_p50_ms,lateness_p95_ms,"
         "lateness_max_ms");
  for (int k = 0; k < CP_REPORT_OUTCOMES; k++)
    printf(",attempts_%s", cp_store_outcome_name((enum cp_outcome)k));
  for (int s = 0; s < CP_STORE_NSTATES; s++)
    printf(",%s", cp_store_state_name((enum cp_store_state)s));
  printf(",sampled_posts");
  for (int m = 0; m < CP_METRIC_N; m++)
    printf(",%s", cp_report_metric_name((enum cp_report_metric)m));
  for (int m = 0; m < CP_METRIC_N; m++)
    printf(",%s_per_post", cp_report_metric_name((enum cp_report_metric)m));
  printf(",best_slot,best_slot_average\n");
  for (size_t i = 0; i <= r->n_channels; i++) {
    const struct cp_report_channel *c = i < r->n_channels ? &r->channels[i] : &r->total;
    size_t pub = c->states[CP_STORE_SENT];
    csv_str(c->name, false);
    csv_int((int64_t)c->posts);
    csv_int((int64_t)pub);
    csv_int((int64_t)c->on_time);
    csv_real(pub > 0, pub ? (double)c->on_time / (double)pub : 0);
    csv_opt(c->has_lateness, c->lateness_p50_ms);
    csv_opt(c->has_lateness, c->lateness_p95_ms);
    csv_opt(c->has_lateness, c->lateness_max_ms);
    for (int k = 0; k < CP_REPORT_OUTCOMES; k++)
      csv_int((int64_t)c->attempts[k]);
    for (int s = 0; s < CP_STORE_NSTATES; s++)
      csv_int((int64_t)c->states[s]);
    csv_int((int64_t)c->sampled);
    for (int m = 0; m < CP_METRIC_N; m++)
      csv_opt(c->totals[m] >= 0, c->totals[m]);
    for (int m = 0; m < CP_METRIC_N; m++)
      csv_real(c->known[m] > 0, c->known[m] ? (double)c->totals[m] / (double)c->known[m] : 0);
    const struct cp_report_slot *best = c->n_slots && !c->slots[0].few ? &c->slots[0] : NULL;
    char slot[16] = "";
    if (best)
      snprintf(slot, sizeof slot, "%s %02d:00", cp_report_weekday_name(best->weekday), best->hour);
    csv_str(slot, false);
    if (best)
      printf("%.10g", round(best->average * 10000) / 10000);
    printf("\n");
  }
}

static void print_csv_posts(const struct cp_report *r, icaltimezone *zone) {
  printf("channel,id,state,due,due_local,weekday,hour,published,lateness_ms,on_time,attempts,"
         "last_outcome,last_http_status,url,sampled,age_s");
  for (int m = 0; m < CP_METRIC_N; m++)
    printf(",%s", cp_report_metric_name((enum cp_report_metric)m));
  printf(",score\n");
  for (size_t i = 0; i < r->n_channels; i++) {
    const struct cp_report_channel *c = &r->channels[i];
    for (size_t k = 0; k < c->n; k++) {
      const struct cp_report_post *p = &c->v[k];
      bool sent = p->state == CP_STORE_SENT;
      char due[40], local[40], pub[40] = "", sampled[40] = "";
      int64_t t = p->due_ms / 1000;
      cp_plan_format_time(t, 0, due, sizeof due);
      cp_plan_format_time(t, cp_tz_offset_at(zone, t), local, sizeof local);
      if (sent)
        cp_plan_format_time(p->published_ms / 1000, 0, pub, sizeof pub);
      if (p->sampled)
        cp_plan_format_time(p->sampled_ms / 1000, 0, sampled, sizeof sampled);
      csv_str(c->name, false);
      csv_str(p->id, false);
      csv_str(cp_store_state_name(p->state), false);
      csv_str(due, false);
      csv_str(local, false);
      csv_str(cp_report_weekday_name(p->weekday), false);
      csv_int(p->hour);
      csv_str(pub, false);
      csv_opt(sent, p->lateness_ms);
      csv_str(sent ? (p->lateness_ms <= CP_REPORT_ON_TIME_MS ? "true" : "false") : "", false);
      csv_int(p->n_attempts);
      csv_str(p->has_attempt ? cp_store_outcome_name(p->last_outcome) : "", false);
      csv_opt(p->has_attempt && p->last_http_status, p->last_http_status);
      csv_str(p->remote_url, false);
      csv_str(sampled, false);
      csv_opt(p->sampled, p->age_s);
      for (int m = 0; m < CP_METRIC_N; m++)
        csv_opt(p->sampled && p->counts[m] >= 0, p->counts[m]);
      if (p->sampled)
        printf("%" PRId64, p->score);
      printf("\n");
    }
  }
}

static void print_csv_slots(const struct cp_report *r) {
  printf("channel,weekday,hour,posts,score,average,few\n");
  for (size_t i = 0; i < r->n_channels; i++) {
    const struct cp_report_channel *c = &r->channels[i];
    for (size_t k = 0; k < c->n_slots; k++) {
      const struct cp_report_slot *s = &c->slots[k];
      csv_str(c->name, false);
      csv_str(cp_report_weekday_name(s->weekday), false);
      csv_int(s->hour);
      csv_int((int64_t)s->posts);
      csv_int(s->score);
      csv_real(true, s->average);
      csv_str(s->few ? "true" : "false", true);
    }
  }
}

int cp_cli_report(int argc, char **argv) {
  struct args a;
  int rc = parse_args(argc, argv, &a);
  if (rc >= 0)
    return rc;
  icalerror_set_errors_are_fatal(0);
  struct cp_config *cfg = NULL;
  char err[1024];
  if (!a.config) {
    cfg = cp_config_defaults();
  } else if (cp_config_load(a.config, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  if (!cfg) {
    fprintf(stderr, "calpost report: out of memory\n");
    return 2;
  }
  const char *zone = a.tz ? a.tz : cfg->timezone;
  struct cp_tz tz;
  struct cp_report_opts o = {
      .channel = a.channel, .timezone = zone, .min_slot_posts = (size_t)a.min_posts};
  struct cp_report *r = NULL;
  int status = 0;
  if (cp_tz_lookup(NULL, zone, &tz) < 0) {
    fprintf(stderr,
            "calpost report: unknown time zone '%s' (use an IANA name such as "
            "Europe/Berlin)\n",
            zone);
    status = 2;
    goto out;
  }
  if (cp_report_parse_window(a.since, a.now, zone, &o.from_ms, &o.to_ms, err, sizeof err) < 0) {
    fprintf(stderr, "calpost report: %s\n", err);
    status = 2;
    goto out;
  }
  rc = cp_report_build(cfg, &o, &r, err, sizeof err);
  if (rc < 0) {
    fprintf(stderr, "calpost report: %s\n", err);
    status = rc == CP_EINVAL || rc == CP_ETZ ? 2 : 1;
    goto out;
  }
  if (!strcmp(a.format, "json")) {
    json_t *j = cp_report_json(r);
    char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!s) {
      fprintf(stderr, "calpost report: out of memory\n");
      status = 2;
      goto out;
    }
    puts(s);
    free(s);
  } else if (!strcmp(a.format, "csv")) {
    if (!a.table || !strcmp(a.table, "channels"))
      print_csv_channels(r);
    else if (!strcmp(a.table, "posts"))
      print_csv_posts(r, tz.zone);
    else
      print_csv_slots(r);
  } else {
    print_text(r, tz.zone);
  }
  if (fflush(stdout) != 0 || ferror(stdout)) {
    perror("calpost report: stdout");
    status = 2;
  }
out:
  cp_report_free(r);
  cp_config_free(cfg);
  return status;
}
