#!/usr/bin/env bash
# keep_output.sh COMMAND [ARGS...]: runs a test as ctest would, and with $CP_TEST_OUTPUT set also
# writes its output (stdout and stderr) to $CP_TEST_OUTPUT/output.log for tests/secrets_sweep.py
# (ctest's own LastTest.log is buffered until the run ends). Exits with the test's status.
set -o pipefail
if [ -z "${CP_TEST_OUTPUT:-}" ]; then
  exec "$@"
fi
mkdir -p "$CP_TEST_OUTPUT" || exit 1
"$@" 2>&1 | tee -a "$CP_TEST_OUTPUT/output.log"
