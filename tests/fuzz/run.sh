#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang in a build folder of their own,
# replays every saved reproducer in tests/data/fuzz-regressions/TARGET/, then fuzzes each target
# for a bounded time. Exits 1 on any crash, leak, timeout or sanitizer report (naming the
# reproducer), 77 (ctest: skipped) if clang with libFuzzer is not installed.
#
#   run.sh BUILD_DIR [TARGET...]       targets: plan desc config hints connector (default: all)
#
# Environment: CP_FUZZ_SECONDS (20) per target; CP_FUZZ_CC (clang); CP_FUZZ_JOBS (2) for the
# build. The corpus each run finds is kept in BUILD_DIR/corpus/TARGET, so runs build on each
# other; delete it to start from the seeds again. See tests/fuzz/README.md.
set -u

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=${1:?usage: run.sh BUILD_DIR [TARGET...]}
shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=(plan desc config hints connector)
fi
seconds=${CP_FUZZ_SECONDS:-20}
cc=${CP_FUZZ_CC:-clang}
jobs=${CP_FUZZ_JOBS:-2}

declare -A max_len=([plan]=16384 [desc]=4096 [config]=4096 [hints]=1024 [connector]=8192)

say() { printf 'fuzz: %s\n' "$*"; }

# ---- toolchain -------------------------------------------------------------------------------
if ! command -v "$cc" >/dev/null 2>&1; then
  say "SKIPPED: $cc not found (apt-get install clang-14 libclang-rt-14-dev)"
  exit 77
fi
mkdir -p "$build" || exit 1
build=$(cd "$build" && pwd)
probe=$build/probe
printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' >"$probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" 2>"$probe.log"; then
  say "SKIPPED: $cc cannot link -fsanitize=fuzzer (install libclang-rt-14-dev):"
  cat "$probe.log"
  exit 77
fi

# ---- build -------------------------------------------------------------------------------------
start=$(date +%s)
if [ ! -f "$build/CMakeCache.txt" ]; then
  gen=()
  command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  cmake -S "$here/project" -B "$build" "${gen[@]}" -DCMAKE_C_COMPILER="$cc" \
    >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; say "FAILED: configure"; exit 1; }
fi
if ! cmake --build "$build" -j "$jobs" >"$build/build.log" 2>&1; then
  tail -n 60 "$build/build.log"
  say "FAILED: build (log: $build/build.log)"
  exit 1
fi
say "built in $(($(date +%s) - start)) s"

# ---- seeds -------------------------------------------------------------------------------------
seeds=$build/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{plan,desc,config,hints,connector}
cp "$src"/tests/data/plans/*.ics "$src"/tests/data/check/*.ics "$seeds/plan/" 2>/dev/null
cp "$here"/seeds/desc/* "$seeds/desc/" 2>/dev/null
# The DESCRIPTION of every event in the plan seeds, unfolded and unescaped (RFC 5545 3.1, 3.3.11).
for ics in "$seeds"/plan/*.ics; do
  awk 'function emit() { if (d) { f = out "-" n++; print v > f; close(f) } d = 0 }
       { sub(/\r$/, "") }
       /^[ \t]/ { if (d) v = v substr($0, 2); next }
       { emit() }
       /^DESCRIPTION[;:]/ { d = 1; v = $0; sub(/^[^:]*:/, "", v) }
       END { emit() }' out="$seeds/desc/ics-$(basename "$ics" .ics)" "$ics"
done
for f in "$seeds"/desc/ics-*; do
  [ -f "$f" ] && sed -i -e 's/\\[nN]/\n/g' -e 's/\\,/,/g' -e 's/\\;/;/g' -e 's/\\\\/\\/g' "$f"
done
cp "$src"/config/calpost.ini "$here"/seeds/config/* "$seeds/config/" 2>/dev/null
cp "$here"/seeds/hints/* "$seeds/hints/" 2>/dev/null
cp "$here"/seeds/connector/* "$seeds/connector/" 2>/dev/null

# ---- run ---------------------------------------------------------------------------------------
# The targets' temp files (plans, configs, outbox posts) go here, emptied on every run.
rm -rf "$build/tmp"
mkdir -p "$build/tmp"
export TMPDIR=$build/tmp
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-print_suppressions=0}
status=0
failed=()

report() { # target log what
  local t=$1 log=$2 what=$3
  grep -E '^(==[0-9]+==ERROR|SUMMARY|calpost fuzz:|.*runtime error:)' "$log" | head -n 5
  grep -E '^ +#[0-9]+ ' "$log" | head -n 12
  local unit
  unit=$(grep -o 'Test unit written to .*' "$log" | sed 's/Test unit written to //' | tail -n 1)
  [ -n "$unit" ] || unit=$(grep -o '^Running: .*' "$log" | sed 's/^Running: //' | tail -n 1)
  say "FAILED: $t ($what); log: $log"
  if [ -n "$unit" ]; then
    say "reproducer: $unit"
    say "reproduce:  $build/fuzz_$t $unit"
    case $unit in
      "$src"/tests/data/fuzz-regressions/*) ;;
      *) say "keep it:    cp $unit $src/tests/data/fuzz-regressions/$t/" ;;
    esac
  fi
  status=1
  failed+=("$t")
}

for t in "${targets[@]}"; do
  bin=$build/fuzz_$t
  if [ ! -x "$bin" ]; then
    say "FAILED: no target '$t' (have: $(cd "$build" && ls fuzz_* 2>/dev/null | tr '\n' ' '))"
    status=1
    continue
  fi
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t" "$build/logs"
  dict=()
  [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")

  regs=()
  if [ -d "$src/tests/data/fuzz-regressions/$t" ]; then
    while IFS= read -r -d '' f; do regs+=("$f"); done \
      < <(find "$src/tests/data/fuzz-regressions/$t" -maxdepth 1 -type f ! -name '*.md' -print0 |
        sort -z)
  fi
  if [ ${#regs[@]} -gt 0 ]; then
    log=$build/logs/$t.regressions.log
    if "$bin" -timeout=10 -rss_limit_mb=2048 "${regs[@]}" >"$log" 2>&1; then
      say "$t: ${#regs[@]} regression inputs pass"
    else
      report "$t" "$log" "a regression input in tests/data/fuzz-regressions/$t fails"
      continue
    fi
  fi

  # Replaying the kept corpus counts against the time; when it has grown large, keep only the
  # inputs that still add coverage (a libFuzzer merge).
  if [ "$(ls "$build/corpus/$t" | wc -l)" -gt "${CP_FUZZ_CORPUS_MAX:-1500}" ]; then
    rm -rf "$build/corpus/$t.new"
    mkdir -p "$build/corpus/$t.new"
    if "$bin" -merge=1 -timeout=10 -rss_limit_mb=2048 -max_len="${max_len[$t]:-4096}" \
      "$build/corpus/$t.new" "$build/corpus/$t" >"$build/logs/$t.merge.log" 2>&1; then
      rm -rf "$build/corpus/$t"
      mv "$build/corpus/$t.new" "$build/corpus/$t"
      say "$t: corpus merged to $(ls "$build/corpus/$t" | wc -l) inputs"
    fi
  fi

  log=$build/logs/$t.log
  t0=$(date +%s)
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="${max_len[$t]:-4096}" \
    -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t/" "${dict[@]}" \
    "$build/corpus/$t" "$seeds/$t" >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  if [ $rc -ne 0 ]; then
    report "$t" "$log" "exit $rc"
  else
    n=$(ls "$build/corpus/$t" | wc -l)
    say "$t: ok, ${runs:-?} runs in $(($(date +%s) - t0)) s, $cov, corpus $n"
  fi
done

say "total $(($(date +%s) - start)) s"
if [ $status -ne 0 ]; then
  say "FAILED targets: ${failed[*]}"
fi
exit $status
