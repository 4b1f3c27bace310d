/* What libcurl alone can do against the benchmark's sink: C concurrent connections, each
 * POSTing the same body again as soon as its answer is in, for S seconds, with libcurl's multi
 * interface (curl_multi_poll: no other work, no event library). It is the ceiling of any client
 * that sends its requests through libcurl, as calpost does (the house style's HTTP client),
 * beside wrk's (a hand-written HTTP/1.1 client that does nothing else).
 *
 *   curl_ceiling URL BODY_FILE CONNECTIONS SECONDS
 *
 * Prints "<requests/s> <CPU µs per request>" (CPU of this process: user + system). Every answer
 * must be 200, or it exits 1.
 *
 * Build: cc -O2 -o curl_ceiling curl_ceiling.c -lcurl */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include <curl/curl.h>

static size_t discard(char *p, size_t size, size_t n, void *arg) {
  (void)p;
  (void)arg;
  return size * n;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: curl_ceiling URL BODY_FILE CONNECTIONS SECONDS\n");
    return 2;
  }
  FILE *f = fopen(argv[2], "rb");
  if (!f) {
    perror(argv[2]);
    return 2;
  }
  static char body[65536];
  size_t body_len = fread(body, 1, sizeof body, f);
  fclose(f);
  int n = atoi(argv[3]);
  double secs = atof(argv[4]);
  if (n <= 0 || secs <= 0)
    return 2;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURLM *m = curl_multi_init();
  struct curl_slist *hdr = NULL;
  hdr = curl_slist_append(hdr, "Content-Type: application/json");
  hdr = curl_slist_append(hdr, "Accept: application/json");
  hdr = curl_slist_append(hdr, "Idempotency-Key: calpost-0123456789abcdef");
  hdr = curl_slist_append(hdr, "Expect:");
  CURL **h = calloc((size_t)n, sizeof *h);
  for (int i = 0; i < n; i++) {
    h[i] = curl_easy_init();
    curl_easy_setopt(h[i], CURLOPT_URL, argv[1]);
    curl_easy_setopt(h[i], CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h[i], CURLOPT_POSTFIELDSIZE, (long)body_len);
    curl_easy_setopt(h[i], CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h[i], CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h[i], CURLOPT_NOSIGNAL, 1L);
    curl_multi_add_handle(m, h[i]);
  }
  unsigned long done = 0;
  int bad = 0;
  double t0 = now_s(), c0 = cpu_s(), end = t0 + secs;
  while (now_s() < end) {
    int running;
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      long code = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
      if (msg->data.result != CURLE_OK || code != 200)
        bad++;
      done++;
      CURL *e = msg->easy_handle;
      curl_multi_remove_handle(m, e);
      curl_multi_add_handle(m, e); /* the same handle again: its connection is reused */
    }
    curl_multi_poll(m, NULL, 0, 100, NULL);
  }
  double took = now_s() - t0, cpu = cpu_s() - c0;
  printf("%.0f %.1f\n", (double)done / took, done ? cpu * 1e6 / (double)done : 0.0);
  for (int i = 0; i < n; i++) {
    curl_multi_remove_handle(m, h[i]);
    curl_easy_cleanup(h[i]);
  }
  free(h);
  curl_slist_free_all(hdr);
  curl_multi_cleanup(m);
  curl_global_cleanup();
  if (bad) {
    fprintf(stderr, "%d requests failed or were not answered 200\n", bad);
    return 1;
  }
  return 0;
}
