/* Baseline: libical alone. Parses the whole file with icalparser_parse_string and expands every
 * VEVENT with icalcomponent_foreach_recurrence over [FROM, FROM + DAYS*86400), counting instances.
 * No overrides, no X-WR, no DST fixes: the "raw libical parse+expand" cost.
 * usage: raw_libical FILE FROM_UNIX DAYS; prints the instance count. */
#include <libical/ical.h>
#include <stdio.h>
#include <stdlib.h>

static void count_cb(icalcomponent *comp, struct icaltime_span *span, void *data) {
  (void)comp;
  (void)span;
  ++*(long *)data;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s FILE FROM_UNIX DAYS\n", argv[0]);
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  if (f == NULL) {
    perror(argv[1]);
    return 1;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)size + 1);
  if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) {
    fprintf(stderr, "cannot read %s\n", argv[1]);
    return 1;
  }
  buf[size] = '\0';
  fclose(f);

  icalerror_set_errors_are_fatal(0);
  icalcomponent *root = icalparser_parse_string(buf);
  free(buf);
  if (root == NULL) {
    fprintf(stderr, "parse failed\n");
    return 1;
  }
  icaltimezone *utc = icaltimezone_get_utc_timezone();
  time_t from = (time_t)atoll(argv[2]);
  time_t to = from + (time_t)atol(argv[3]) * 86400;
  struct icaltimetype start = icaltime_from_timet_with_zone(from, 0, utc);
  struct icaltimetype end = icaltime_from_timet_with_zone(to, 0, utc);

  long n = 0;
  for (icalcomponent *ev = icalcomponent_get_first_component(root, ICAL_VEVENT_COMPONENT);
       ev != NULL; ev = icalcomponent_get_next_component(root, ICAL_VEVENT_COMPONENT))
    icalcomponent_foreach_recurrence(ev, start, end, count_cb, &n);
  printf("%ld\n", n);
  icalcomponent_free(root);
  return 0;
}
