/* Fuzz target "plan": the plan engine on a whole .ics file, as `calpost check FILE` reads it
 * (built-in config defaults, check on, a fixed window), then every post it made.
 *
 * Beyond memory safety it holds the engine to what its header promises the daemon: every post
 * is inside the window, posts come sorted by due time, ids are 16 hex digits, and the text a
 * connector receives is valid UTF-8 (the counting functions require it). */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libical/ical.h>

#include "calpost/err.h"
#include "calpost/text.h"
#include "config.h"
#include "fuzz_util.h"
#include "plan.h"

#define NOW 1709251200LL  /* 2024-03-01T00:00:00Z, as tests/test_check.py */
#define FROM 1704067200LL /* 2024-01-01T00:00:00Z: posts before now are "in the past" */

static struct cp_config *cfg;
static char plan_path[600];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  icalerror_set_errors_are_fatal(0);
  cfg = cp_config_defaults();
  if (!cfg)
    fuzz_fail("cp_config_defaults: out of memory");
  fuzz_path(plan_path, sizeof plan_path, "plan.ics");
  return 0;
}

static void check_utf8(const char *what, const char *s, const struct cp_post *p) {
  if (!s)
    fuzz_fail("post %s (%s:%d): %s is NULL", p->id, p->file, p->line, what);
  size_t bad = 0;
  if (cp_utf8_check(s, strlen(s), &bad) < 0)
    fuzz_fail("post %s (%s:%d): %s is not valid UTF-8 at byte %zu", p->id, p->file, p->line, what,
              bad);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_write_file(plan_path, data, size);
  const char *files[] = {plan_path};
  struct cp_plan_opts o = {.cfg = cfg,
                           .check = true,
                           .now = NOW,
                           .from = FROM,
                           .to = FROM + (int64_t)cfg->check_days * 86400,
                           .files = files,
                           .n_files = 1};
  struct cp_plan *plan = NULL;
  int rc = cp_plan_load(&o, &plan);
  if (rc < 0) {
    if (plan)
      fuzz_fail("cp_plan_load failed (%s) but set *out", cp_err_name(rc));
    if (rc != CP_ENOMEM && rc != CP_ETZ)
      fuzz_fail("cp_plan_load: unexpected error %s", cp_err_name(rc));
    return 0;
  }
  int64_t last_due = INT64_MIN;
  for (size_t i = 0; i < plan->n_posts; i++) {
    struct cp_post p;
    cp_plan_post(plan, i, &p);
    if (strlen(p.id) != CP_POST_ID_LEN || strspn(p.id, "0123456789abcdef") != CP_POST_ID_LEN)
      fuzz_fail("post %zu: id '%s' is not %d hex digits", i, p.id, CP_POST_ID_LEN);
    if (p.due < o.from || p.due >= o.to)
      fuzz_fail("post %s (%s:%d): due %lld outside the window [%lld, %lld)", p.id, p.file, p.line,
                (long long)p.due, (long long)o.from, (long long)o.to);
    if (p.due < last_due)
      fuzz_fail("post %s (%s:%d): posts are not sorted by due time", p.id, p.file, p.line);
    last_due = p.due;
    check_utf8("text", p.text, &p);
    check_utf8("title", p.title, &p);
    check_utf8("uid", p.uid, &p);
    check_utf8("channel", p.channel, &p);
    if (p.campaign)
      check_utf8("campaign", p.campaign, &p);
    for (size_t k = 0; k < p.n_media; k++) {
      check_utf8("media src", p.media[k].src, &p);
      if (p.media[k].alt)
        check_utf8("media alt", p.media[k].alt, &p);
    }
    for (size_t k = 0; k < p.n_options; k++) {
      check_utf8("option key", p.options[k].key, &p);
      check_utf8("option value", p.options[k].value, &p);
    }
    if (!p.calendar || !p.tzid || !p.file)
      fuzz_fail("post %s: calendar, tzid or file is NULL", p.id);
    if (memchr(p.occurrence, '\0', sizeof p.occurrence) == NULL)
      fuzz_fail("post %s: occurrence is not NUL-terminated", p.id);
    char when[64];
    cp_plan_format_time(p.due, p.utc_offset, when, sizeof when);
    cp_text_count(p.text, CP_COUNT_GRAPHEMES);
  }
  size_t errors = 0, warnings = 0;
  for (size_t i = 0; i < plan->n_diags; i++) {
    const struct cp_diag *d = &plan->diags[i];
    if (!d->file || !d->msg || d->line < 0)
      fuzz_fail("diag %zu: file or msg NULL, or line %d", i, d->line);
    if (d->error)
      errors++;
    else
      warnings++;
  }
  if (errors != plan->n_errors || warnings != plan->n_warnings)
    fuzz_fail("%zu error and %zu warning diags, but n_errors %zu and n_warnings %zu", errors,
              warnings, plan->n_errors, plan->n_warnings);
  cp_plan_free(plan);
  return 0;
}
