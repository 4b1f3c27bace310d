/* A test shim preloaded into `calpost run` (LD_PRELOAD): fsync() and fdatasync() take longer
 * while the file named by $CP_SLOWSYNC_FLAG exists; it holds the extra time in milliseconds. The
 * daemon tests use it to make the disk as slow as a stalled one, at the moment they choose. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void stall(void) {
  const char *flag = getenv("CP_SLOWSYNC_FLAG");
  FILE *f = flag ? fopen(flag, "r") : NULL;
  if (!f)
    return;
  long ms = 0;
  if (fscanf(f, "%ld", &ms) != 1)
    ms = 0;
  fclose(f);
  if (ms > 0) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0) {
    }
  }
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real)
    real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  stall();
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real)
    real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  stall();
  return real(fd);
}
