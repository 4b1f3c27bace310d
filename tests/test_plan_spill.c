/* The daemon keeps post texts out of memory (cp_plan_opts.spill_dir: an unlinked file in the
 * state folder) and reads them back when it publishes. Every plan in tests/data, loaded both
 * ways, must give the same diagnostics and the same posts, field by field, whether read with
 * cp_plan_post or kept with cp_plan_post_dup; the id-only accessor must agree too. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "plan.h"

static bool differ(const char *a, const char *b) {
  return (a == NULL) != (b == NULL) || (a && strcmp(a, b));
}

static void assert_same_post(const struct cp_post *x, const struct cp_post *p) {
  assert_string_equal(x->id, p->id);
  assert_false(differ(x->calendar, p->calendar));
  assert_false(differ(x->uid, p->uid));
  assert_string_equal(x->occurrence, p->occurrence);
  assert_false(differ(x->channel, p->channel));
  assert_int_equal(x->due, p->due);
  assert_int_equal(x->utc_offset, p->utc_offset);
  assert_false(differ(x->tzid, p->tzid));
  assert_int_equal(x->all_day, p->all_day);
  assert_int_equal(x->state, p->state);
  assert_false(differ(x->title, p->title));
  assert_false(differ(x->text, p->text));
  assert_int_equal(x->thread, p->thread);
  assert_int_equal(x->numbered, p->numbered);
  assert_false(differ(x->campaign, p->campaign));
  assert_false(differ(x->file, p->file));
  assert_int_equal(x->line, p->line);
  assert_int_equal(x->n_media, p->n_media);
  for (size_t m = 0; m < x->n_media; m++) {
    assert_false(differ(x->media[m].src, p->media[m].src));
    assert_false(differ(x->media[m].alt, p->media[m].alt));
  }
  assert_int_equal(x->n_options, p->n_options);
  for (size_t m = 0; m < x->n_options; m++) {
    assert_false(differ(x->options[m].key, p->options[m].key));
    assert_false(differ(x->options[m].value, p->options[m].value));
  }
}

/* Loads path in memory and spilled to dir; asserts both agree. Returns the number of posts. */
static size_t compare(const struct cp_config *cfg, const char *path, const char *dir) {
  const char *files[1] = {path};
  struct cp_plan_opts o = {
      .cfg = cfg, .from = 0, .to = 4102444800LL, .now = 1700000000, .files = files, .n_files = 1};
  struct cp_plan *a = NULL, *b = NULL;
  print_message("%s\n", path);
  assert_true(cp_plan_load(&o, &a) >= 0);
  o.spill_dir = dir;
  assert_true(cp_plan_load(&o, &b) >= 0);
  assert_int_equal(a->n_posts, b->n_posts);
  assert_int_equal(a->n_diags, b->n_diags);
  assert_int_equal(a->n_errors, b->n_errors);
  assert_int_equal(a->n_unread, b->n_unread);
  for (size_t i = 0; i < a->n_diags; i++) {
    assert_false(differ(a->diags[i].file, b->diags[i].file));
    assert_false(differ(a->diags[i].msg, b->diags[i].msg));
    assert_int_equal(a->diags[i].line, b->diags[i].line);
  }
  for (size_t i = 0; i < a->n_posts; i++) {
    struct cp_post x, y, z;
    void *mem = NULL;
    char id[CP_POST_ID_LEN + 1];
    cp_plan_post(a, i, &x);
    assert_int_equal(cp_plan_post(b, i, &y), 0);
    assert_same_post(&x, &y);
    cp_plan_post_id(b, i, id);
    assert_string_equal(id, x.id);
    assert_int_equal(cp_plan_post_dup(b, i, &z, &mem), 0);
    cp_plan_post(b, (i + 1) % b->n_posts, &y); /* the copy outlives the next read */
    assert_same_post(&x, &z);
    free(mem);
  }
  size_t n = a->n_posts;
  cp_plan_free(a);
  cp_plan_free(b);
  return n;
}

static void every_test_plan_is_the_same_spilled(void **state) {
  (void)state;
  struct cp_config *cfg = cp_config_defaults();
  assert_non_null(cfg);
  char dir[] = "/tmp/cp-spill-XXXXXX";
  assert_non_null(mkdtemp(dir));
  size_t files = 0, posts = 0;
  const char *sub[] = {"plans", "check"};
  for (size_t k = 0; k < 2; k++) {
    char folder[4096];
    snprintf(folder, sizeof folder, "%s/%s", CP_TEST_DATA, sub[k]);
    struct dirent **names;
    int n = scandir(folder, &names, NULL, alphasort);
    assert_true(n > 0);
    for (int i = 0; i < n; i++) {
      const char *nm = names[i]->d_name;
      size_t l = strlen(nm);
      if (l > 4 && !strcmp(nm + l - 4, ".ics")) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", folder, nm);
        posts += compare(cfg, path, dir);
        files++;
      }
      free(names[i]);
    }
    free(names);
  }
  assert_true(files >= 40);
  assert_true(posts > 100);
  /* The spill files are unlinked at once: nothing is left in the folder. */
  DIR *d = opendir(dir);
  assert_non_null(d);
  struct dirent *e;
  int left = 0;
  while ((e = readdir(d)))
    left += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
  closedir(d);
  assert_int_equal(left, 0);
  rmdir(dir);
  cp_config_free(cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_test_plan_is_the_same_spilled),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
