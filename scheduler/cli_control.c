/* `calpost status|pause|resume|retry|skip|confirm`: the commands that talk to the running daemon
 * through its control socket (control.h). */
#include "cli_control.h"

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "calpost/err.h"
#include "config.h"
#include "control.h"
#include "plan.h"

enum { OPT_SOCKET = 256, OPT_JSON, OPT_ALL, OPT_UNTIL };

static const struct option long_opts[] = {{"config", required_argument, NULL, 'c'},
                                          {"socket", required_argument, NULL, OPT_SOCKET},
                                          {"json", no_argument, NULL, OPT_JSON},
                                          {"all", no_argument, NULL, OPT_ALL},
                                          {"until", required_argument, NULL, OPT_UNTIL},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};

#define COMMON_HELP                                                                                \
  "  -c, --config FILE   the configuration (default: $CALPOST_CONFIG); the daemon's socket is\n"   \
  "                      STATE_DIR/calpost.sock\n"                                                 \
  "  --socket PATH       talk to the daemon on this socket instead\n"                              \
  "  --json              print the daemon's JSON answer as it is\n"

static const char status_help[] =
    "usage: calpost status [-c CONFIG] [--socket PATH] [--json]\n"
    "\n"
    "Shows what the running daemon is doing: per channel the number of queued posts, the next\n"
    "post and when it is due, the last error, whether the channel is paused (and until when),\n"
    "and plan changes held back for `calpost confirm`.\n"
    "\n" COMMON_HELP;

static const char pause_help[] =
    "usage: calpost pause CHANNEL|--all [--until TIME] [-c CONFIG] [--socket PATH] [--json]\n"
    "\n"
    "Stops publishing on a channel (or on all of them) until `calpost resume`, or until TIME.\n"
    "Posts that fall due meanwhile wait and are published when the pause ends.\n"
    "\n"
    "  --all               pause every channel\n"
    "  --until TIME        end the pause at TIME: YYYY-MM-DD (midnight in the plan zone), a\n"
    "                      date-time in the plan zone, or an ISO 8601 date-time with Z or an\n"
    "                      offset\n" COMMON_HELP;

static const char resume_help[] =
    "usage: calpost resume CHANNEL|--all [-c CONFIG] [--socket PATH] [--json]\n"
    "\n"
    "Ends a pause: posts that fell due during it are published now.\n"
    "\n"
    "  --all               resume every channel\n" COMMON_HELP;

static const char retry_help[] =
    "usage: calpost retry ID [-c CONFIG] [--socket PATH] [--json]\n"
    "\n"
    "Queues a failed, missed, unknown or skipped post again (ID as shown by `calpost status`,\n"
    "`calpost plan` or the daemon's log).\n"
    "\n" COMMON_HELP;

static const char skip_help[] =
    "usage: calpost skip ID [-c CONFIG] [--socket PATH] [--json]\n"
    "\n"
    "Marks a pending or unknown post as skipped: the daemon will not publish it.\n"
    "\n" COMMON_HELP;

static const char confirm_help[] =
    "usage: calpost confirm [-c CONFIG] [--socket PATH] [--json]\n"
    "\n"
    "Accepts a plan change the daemon held back (for example one that would cancel many posts\n"
    "at once); `calpost status` lists held changes and why they were held.\n"
    "\n" COMMON_HELP;

struct args {
  const char *cmd;
  const char *config; /* -c or $CALPOST_CONFIG; may be NULL */
  const char *socket;
  const char *until;
  const char *operand; /* CHANNEL or ID */
  bool json, all;
};

/* Parses argv; `operand` says whether the command takes CHANNEL|--all and --until ('p'),
 * CHANNEL|--all ('c'), an ID ('i') or nothing (0). Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, const char *help, int operand, struct args *a) {
  memset(a, 0, sizeof *a);
  a->cmd = argv[0];
  a->config = getenv("CALPOST_CONFIG");
  optind = 0; /* full reset: the functions may run more than once in a process (tests) */
  int c;
  while ((c = getopt_long(argc, argv, "c:h", long_opts, NULL)) != -1) {
    switch (c) {
      case 'c':
        a->config = optarg;
        break;
      case OPT_SOCKET:
        a->socket = optarg;
        break;
      case OPT_JSON:
        a->json = true;
        break;
      case OPT_ALL:
      case OPT_UNTIL:
        if ((operand != 'c' && operand != 'p') || (c == OPT_UNTIL && operand != 'p')) {
          fprintf(stderr, "calpost %s: unknown option '%s'\n", a->cmd, argv[optind - 1]);
          fputs(help, stderr);
          return 2;
        }
        if (c == OPT_ALL)
          a->all = true;
        else
          a->until = optarg;
        break;
      case 'h':
        fputs(help, stdout);
        return 0;
      default:
        fputs(help, stderr);
        return 2;
    }
  }
  int n = argc - optind;
  if (n > 1 || (n == 1 && !operand)) {
    fprintf(stderr, "calpost %s: unexpected argument '%s'\n", a->cmd, argv[optind + (n > 1)]);
    return 2;
  }
  a->operand = n ? argv[optind] : NULL;
  if ((operand == 'c' || operand == 'p') && !a->operand == !a->all) {
    fprintf(stderr, "calpost %s: name one channel, or give --all for every channel\n", a->cmd);
    return 2;
  }
  if (operand == 'i' && !a->operand) {
    fprintf(stderr, "calpost %s: which post? give its ID (see `calpost status` or the log)\n",
            a->cmd);
    return 2;
  }
  return -1;
}

/* The daemon's socket and, when a configuration is at hand, the configuration (for the plan
 * zone). Returns -1 to go on, else the exit status. */
static int locate(const struct args *a, struct cp_config **cfg, char *sock, size_t len) {
  *cfg = NULL;
  if (a->config || !a->socket) {
    char err[1024];
    if (!a->config) {
      *cfg = cp_config_defaults();
    } else if (cp_config_load(a->config, cfg, err, sizeof err) < 0) {
      fprintf(stderr, "%s\n", err);
      return 2;
    }
    if (!*cfg) {
      fprintf(stderr, "calpost %s: out of memory\n", a->cmd);
      return 2;
    }
  }
  int n = a->socket ? snprintf(sock, len, "%s", a->socket)
                    : snprintf(sock, len, "%s/calpost.sock", (*cfg)->state_dir);
  if (n < 0 || (size_t)n >= len) {
    fprintf(stderr, "calpost %s: socket path too long\n", a->cmd);
    return 2;
  }
  return -1;
}

/* Sends one request and prints what a person needs when it fails. Returns 0 with a 2xx answer
 * in *out, else the exit status (1). With --json the answer goes to stdout as it is. */
static int call(const struct args *a, const char *sock, const char *method, const char *url,
                json_t *body, json_t **out) {
  char err[1024];
  *out = NULL;
  int rc = cp_control_call(sock, method, url, body, out, err, sizeof err);
  if (rc == -ENOENT || rc == -ECONNREFUSED) {
    fprintf(stderr, "no calpost daemon is running on %s: start it with `calpost run -c %s`\n", sock,
            a->config ? a->config : "CONFIG");
    return 1;
  }
  if (rc == -EACCES) {
    fprintf(stderr, "calpost %s: %s (the daemon's socket belongs to another user)\n", a->cmd, err);
    return 1;
  }
  if (rc < 0) {
    fprintf(stderr, "calpost %s: %s\n", a->cmd, err);
    return 1;
  }
  if (a->json) {
    char *s = json_dumps(*out, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (s)
      puts(s);
    free(s);
  }
  if (rc < 200 || rc > 299) {
    const char *msg = json_string_value(json_object_get(*out, "error"));
    fprintf(stderr, "calpost %s: %s\n", a->cmd, msg ? msg : "the daemon refused the request");
    json_decref(*out);
    *out = NULL;
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* status                                                                                    */

/* Prints text from the daemon (calendar titles, error messages) with control characters,
 * C1 controls included, replaced, so that a title cannot drive the terminal. At most max code
 * points. */
static void put_clean(const char *s, size_t max) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if ((*p & 0xc0) != 0x80 && n++ == max) {
      fputs("...", stdout);
      return;
    }
    if (*p < 0x20 || *p == 0x7f) {
      putchar(*p == '\n' || *p == '\t' ? ' ' : '?');
    } else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
      putchar('?');
      p++;
      n++;
    } else {
      putchar(*p);
    }
  }
}

/* " (in 2 d 3 h)" or " (5 min ago)" after an ISO 8601 time; nothing if it does not parse. */
static void put_relative(const char *iso, int64_t now) {
  int64_t t;
  if (!iso || cp_plan_parse_time(iso, "UTC", now, &t) < 0)
    return;
  int64_t d = t > now ? t - now : now - t;
  char buf[64];
  if (d < 60)
    snprintf(buf, sizeof buf, "%s", t >= now ? "now" : "just now");
  else if (d < 3600)
    snprintf(buf, sizeof buf, "%lld min", (long long)(d / 60));
  else if (d < 86400)
    snprintf(buf, sizeof buf, "%lld h %lld min", (long long)(d / 3600), (long long)(d % 3600 / 60));
  else
    snprintf(buf, sizeof buf, "%lld d %lld h", (long long)(d / 86400),
             (long long)(d % 86400 / 3600));
  if (d < 60)
    printf(" (%s)", buf);
  else
    printf(" (%s%s%s)", t > now ? "in " : "", buf, t > now ? "" : " ago");
}

static long long int_of(json_t *o, const char *key) {
  return (long long)json_integer_value(json_object_get(o, key));
}

static void print_channel(json_t *ch, int64_t now) {
  const char *name = json_string_value(json_object_get(ch, "name"));
  const char *type = json_string_value(json_object_get(ch, "type"));
  const char *until = json_string_value(json_object_get(ch, "paused_until"));
  const char *why = json_string_value(json_object_get(ch, "pause_reason"));
  put_clean(name ? name : "?", 64);
  if (type) {
    fputs(" (", stdout);
    put_clean(type, 32);
    putchar(')');
  }
  fputs(": ", stdout);
  if (!json_is_true(json_object_get(ch, "paused"))) {
    fputs("active", stdout);
  } else {
    fputs("paused", stdout);
    if (until) {
      fputs(" until ", stdout);
      put_clean(until, 40);
      put_relative(until, now);
    }
    if (why) {
      fputs(" (", stdout);
      put_clean(why, 80);
      putchar(')');
    }
  }
  printf(", %lld queued; sent %lld, failed %lld, missed %lld, unknown %lld\n",
         int_of(ch, "queue_depth"), int_of(ch, "sent"), int_of(ch, "failed"), int_of(ch, "missed"),
         int_of(ch, "unknown"));
  json_t *next = json_object_get(ch, "next");
  fputs("  next:       ", stdout);
  if (!json_is_object(next)) {
    fputs("none\n", stdout);
  } else {
    const char *due = json_string_value(json_object_get(next, "due"));
    const char *title = json_string_value(json_object_get(next, "title"));
    put_clean(due ? due : "?", 40);
    put_relative(due, now);
    fputs("  ", stdout);
    put_clean(json_string_value(json_object_get(next, "id")), 32);
    if (title && *title) {
      fputs("  ", stdout);
      put_clean(title, 60);
    }
    putchar('\n');
  }
  const char *last = json_string_value(json_object_get(ch, "last_error"));
  if (last) {
    fputs("  last error: ", stdout);
    put_clean(last, 200);
    putchar('\n');
  }
}

static void print_status(json_t *st) {
  int64_t now = (int64_t)time(NULL);
  const char *state = json_string_value(json_object_get(st, "state"));
  fputs("calpost daemon: ", stdout);
  put_clean(state ? state : "running", 32);
  putchar('\n');
  if (json_is_true(json_object_get(st, "paused_all")))
    fputs("all channels are paused (`calpost resume --all` resumes them)\n", stdout);
  json_t *held = json_object_get(st, "held_changes");
  if (json_array_size(held)) {
    fputs("plan changes held back (accept with `calpost confirm`):\n", stdout);
    size_t i;
    json_t *h;
    json_array_foreach(held, i, h) {
      static const char *const keys[] = {"calendar", "source"};
      fputs("  ", stdout);
      for (size_t k = 0; k < 2; k++) {
        const char *v = json_string_value(json_object_get(h, keys[k]));
        if (v) {
          put_clean(v, 80);
          fputs(": ", stdout);
        }
      }
      const char *r = json_string_value(json_object_get(h, "reason"));
      put_clean(r ? r : "held", 200);
      const char *since = json_string_value(json_object_get(h, "since"));
      if (since) {
        fputs(" (since ", stdout);
        put_clean(since, 40);
        putchar(')');
      }
      putchar('\n');
    }
  }
  json_t *chans = json_object_get(st, "channels");
  if (!json_array_size(chans)) {
    fputs("no channels\n", stdout);
    return;
  }
  size_t i;
  json_t *ch;
  json_array_foreach(chans, i, ch) {
    putchar('\n');
    print_channel(ch, now);
  }
}

int cp_cli_status(int argc, char **argv) {
  struct args a;
  int rc = parse_args(argc, argv, status_help, 0, &a);
  if (rc >= 0)
    return rc;
  struct cp_config *cfg;
  char sock[4096];
  if ((rc = locate(&a, &cfg, sock, sizeof sock)) < 0) {
    json_t *st;
    if ((rc = call(&a, sock, "GET", "/v1/status", NULL, &st)) == 0 && !a.json)
      print_status(st);
    json_decref(st);
  }
  cp_config_free(cfg);
  return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* pause, resume                                                                             */

static int pause_or_resume(int argc, char **argv, bool pause) {
  struct args a;
  int rc = parse_args(argc, argv, pause ? pause_help : resume_help, pause ? 'p' : 'c', &a);
  if (rc >= 0)
    return rc;
  struct cp_config *cfg;
  char sock[4096], until[40] = "";
  json_t *body = NULL, *ans = NULL;
  if ((rc = locate(&a, &cfg, sock, sizeof sock)) >= 0)
    goto out;
  if (a.until) {
    const char *zone = cfg ? cfg->timezone : "UTC";
    int64_t now = (int64_t)time(NULL), t;
    int prc = strcmp(a.until, "now") ? cp_plan_parse_time(a.until, zone, now, &t) : CP_EINVAL;
    if (prc < 0) {
      fprintf(stderr,
              "calpost pause: --until: '%s' is not a date (YYYY-MM-DD) or a date-time such as "
              "2026-11-22T10:00 (plan zone %s) or 2026-11-22T10:00:00Z\n",
              a.until, zone);
      rc = 2;
      goto out;
    }
    if (t <= now) {
      fprintf(stderr, "calpost pause: --until: %s is in the past\n", a.until);
      rc = 2;
      goto out;
    }
    cp_plan_format_time(t, 0, until, sizeof until);
  }
  body = json_pack("{s:o}", "channel", a.operand ? json_string(a.operand) : json_null());
  if (body && until[0])
    json_object_set_new(body, "until", json_string(until));
  if (!body) {
    fprintf(stderr, "calpost %s: out of memory\n", a.cmd);
    rc = 2;
    goto out;
  }
  rc = call(&a, sock, "POST", pause ? "/v1/pause" : "/v1/resume", body, &ans);
  if (rc == 0 && !a.json) {
    const char *what = a.operand ? a.operand : "all channels";
    if (!pause)
      printf("resumed %s: posts that fell due meanwhile are published now\n", what);
    else if (until[0])
      printf("paused %s until %s (`calpost resume %s` ends the pause sooner)\n", what, until,
             a.operand ? a.operand : "--all");
    else
      printf("paused %s until `calpost resume %s`\n", what, a.operand ? a.operand : "--all");
  }
out:
  json_decref(ans);
  json_decref(body);
  cp_config_free(cfg);
  return rc;
}

int cp_cli_pause(int argc, char **argv) {
  return pause_or_resume(argc, argv, true);
}

int cp_cli_resume(int argc, char **argv) {
  return pause_or_resume(argc, argv, false);
}

/* ---------------------------------------------------------------------------------------- */
/* retry, skip, confirm                                                                      */

static int post_op(int argc, char **argv, bool retry) {
  struct args a;
  int rc = parse_args(argc, argv, retry ? retry_help : skip_help, 'i', &a);
  if (rc >= 0)
    return rc;
  size_t len = strlen(a.operand);
  bool ok = len > 0 && len <= 128;
  for (size_t i = 0; ok && i < len; i++)
    ok = strchr("0123456789abcdefABCDEFghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ-_.", a.operand[i]);
  if (!ok) {
    fprintf(stderr, "calpost %s: '%s' is not a post id (such as 3f9c2a7d41e0b6a1)\n", a.cmd,
            a.operand);
    return 2;
  }
  struct cp_config *cfg;
  char sock[4096], url[256];
  if ((rc = locate(&a, &cfg, sock, sizeof sock)) < 0) {
    json_t *ans;
    snprintf(url, sizeof url, "/v1/posts/%s/%s", a.operand, retry ? "retry" : "skip");
    if ((rc = call(&a, sock, "POST", url, NULL, &ans)) == 0 && !a.json)
      printf(retry ? "post %s is queued again\n" : "post %s is skipped: it will not be published\n",
             a.operand);
    json_decref(ans);
  }
  cp_config_free(cfg);
  return rc;
}

int cp_cli_retry(int argc, char **argv) {
  return post_op(argc, argv, true);
}

int cp_cli_skip(int argc, char **argv) {
  return post_op(argc, argv, false);
}

int cp_cli_confirm(int argc, char **argv) {
  struct args a;
  int rc = parse_args(argc, argv, confirm_help, 0, &a);
  if (rc >= 0)
    return rc;
  struct cp_config *cfg;
  char sock[4096];
  if ((rc = locate(&a, &cfg, sock, sizeof sock)) < 0) {
    json_t *ans;
    if ((rc = call(&a, sock, "POST", "/v1/confirm", NULL, &ans)) == 0 && !a.json)
      fputs("plan change accepted: the daemon follows the new plan\n", stdout);
    json_decref(ans);
  }
  cp_config_free(cfg);
  return rc;
}
