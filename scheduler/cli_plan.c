#include <stdio.h>

#include "cli.h"

int cp_cli_plan(int argc, char **argv) {
  fprintf(stderr, "calpost plan: under construction\n");
  return 1;
}

int cp_cli_check(int argc, char **argv) {
  fprintf(stderr, "calpost check: under construction\n");
  return 1;
}
