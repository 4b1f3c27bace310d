/* Helpers shared by the libFuzzer targets (tests/fuzz/fuzz_*.c): a private temp folder removed at
 * exit, writing the input to a file, and failing loudly so that libFuzzer saves the input.
 * Header-only: each target is one translation unit. */
#ifndef CALPOST_FUZZ_UTIL_H
#define CALPOST_FUZZ_UTIL_H

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reports a broken contract and aborts: libFuzzer treats the abort as a crash and writes the
 * input to its artifact path. */
static inline void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void fuzz_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("calpost fuzz: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

static inline int fuzz_rm_entry(const char *path, const struct stat *st, int flag,
                                struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static char fuzz_dir[512];

static inline void fuzz_rm_dir(void) {
  if (fuzz_dir[0])
    nftw(fuzz_dir, fuzz_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The process's own temp folder under $TMPDIR (created on first use, removed at exit; run.sh
 * points TMPDIR into the fuzz build, so that a crash, which skips atexit, leaves nothing in /tmp).
 */
static inline const char *fuzz_tmpdir(void) {
  if (!fuzz_dir[0]) {
    const char *tmp = getenv("TMPDIR");
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s/calpost-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(fuzz_dir))
      fuzz_fail("cannot create a temp folder: %s", strerror(errno));
    atexit(fuzz_rm_dir);
  }
  return fuzz_dir;
}

/* path = fuzz_tmpdir()/name, written into buf (len bytes). */
static inline const char *fuzz_path(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s/%s", fuzz_tmpdir(), name);
  return buf;
}

/* Replaces the file at path with data[0..size). */
static inline void fuzz_write_file(const char *path, const uint8_t *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (!f)
    fuzz_fail("cannot write %s: %s", path, strerror(errno));
  if (size && fwrite(data, 1, size, f) != size)
    fuzz_fail("cannot write %s: %s", path, strerror(errno));
  if (fclose(f))
    fuzz_fail("cannot write %s: %s", path, strerror(errno));
}

/* A malloc'd NUL-terminated copy of data[0..size) (which may itself contain NUL bytes). */
static inline char *fuzz_strndup(const uint8_t *data, size_t size) {
  char *s = malloc(size + 1);
  if (!s)
    fuzz_fail("out of memory");
  if (size)
    memcpy(s, data, size);
  s[size] = '\0';
  return s;
}

#endif
