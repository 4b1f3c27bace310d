/* The machine's own wake-up lateness: the floor under calpost's due-to-request lateness.
 * Sleeps until N wall-clock instants STEP_MS apart (clock_nanosleep, absolute CLOCK_REALTIME,
 * as precise as Linux offers) and prints how late each wake-up was, p50, p99 and max in ms:
 *   wake_floor N STEP_MS   ->   "p50 P99 MAX"
 * On a virtual machine whose host is busy, the p99 is the host's scheduling, not ours. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 200;
  long long step = argc > 2 ? atoll(argv[2]) : 100;
  if (n < 1 || step < 1) {
    fprintf(stderr, "usage: wake_floor N STEP_MS\n");
    return 2;
  }
  double *late = malloc((size_t)n * sizeof *late);
  if (!late)
    return 1;
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  long long next = ((long long)t.tv_sec * 1000 + t.tv_nsec / 1000000) / step * step + step;
  for (int i = 0; i < n; i++, next += step) {
    struct timespec at = {.tv_sec = next / 1000, .tv_nsec = (next % 1000) * 1000000};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &at, NULL))
      ;
    clock_gettime(CLOCK_REALTIME, &t);
    late[i] = ((double)(t.tv_sec - at.tv_sec) * 1e9 + (double)(t.tv_nsec - at.tv_nsec)) / 1e6;
  }
  qsort(late, (size_t)n, sizeof *late, cmp);
  int p99 = (99 * n + 99) / 100 - 1; /* the nearest-rank percentile, as for calpost's figures */
  printf("%.2f %.2f %.2f\n", late[(n + 1) / 2 - 1], late[p99], late[n - 1]);
  free(late);
  return 0;
}
