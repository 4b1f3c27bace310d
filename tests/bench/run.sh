#!/bin/bash
# Benchmark: calpost plan vs. raw libical parse+expand vs. python recurring-ical-events on generated
# plans of 1,000, 5,000 and 20,000 events over a 180-day window. Self-contained: builds what it
# needs into a temp dir. Prints wall time, CPU (user+sys), peak RSS and instance counts.
# Env: CALPOST (binary; default build/calpost, built with CMake into the temp dir if missing),
#      CP_BENCH_SIZES (default "1000 5000 20000"), CP_BENCH_RIE_20K=0 skips RIE for >= 20,000 events
#      (it takes about a minute there), CP_BENCH_SEED (default 42).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
SIZES=${CP_BENCH_SIZES:-"1000 5000 20000"}
SEED=${CP_BENCH_SEED:-42}
FROM=2024-03-01 TZ_PLAN=Europe/Berlin DAYS=180
FROM_UTC=2024-02-29T23:00:00Z   # 2024-03-01 00:00 in Europe/Berlin: the same window for all three
FROM_UNIX=$(date -u -d "$FROM_UTC" +%s)
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time" >&2
  apt-get install -y time >/dev/null || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi

CALPOST=${CALPOST:-$SRC/build/calpost}
if [ ! -x "$CALPOST" ]; then
  echo "building calpost into $TMP/build" >&2
  cmake -S "$SRC" -B "$TMP/build" -DCMAKE_BUILD_TYPE=Release -DCALPOST_TESTS=OFF >/dev/null
  make -C "$TMP/build" -j"$(nproc)" calpost >/dev/null
  CALPOST=$TMP/build/calpost
fi
gcc -O2 -o "$TMP/raw_libical" "$HERE/raw_libical.c" $(pkg-config --cflags --libs libical)

# measure NAME OUTFILE CMD...: runs CMD under /usr/bin/time, prints "wall cpu rss_mib"
measure() {
  local out=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$TMP/time" "$@" >"$out"
  awk '{printf "%.2f %.2f %.0f\n", $1, $2 + $3, $4 / 1024}' "$TMP/time"
}

printf '%-8s %-12s %9s %9s %9s %10s  %s\n' events tool wall_s cpu_s rss_MiB instances note
for n in $SIZES; do
  plan=$TMP/plan_$n.ics
  $PY "$HERE/gen_plan.py" "$n" "$SEED" >"$plan"
  size=$(du -k "$plan" | cut -f1)

  # The agenda as people read it (the default text format)...
  read -r w c m < <(measure "$TMP/calpost.txt" "$CALPOST" plan --from $FROM \
      --days $DAYS --timezone $TZ_PLAN "$plan")
  printf '%-8s %-12s %9s %9s %9s %10s  %s\n' "$n" calpost "$w" "$c" "$m" - \
      "$(tail -n 1 "$TMP/calpost.txt"), text output"
  # ...and as scripts read it (JSON: most of the extra time is jansson's string encoder).
  read -r w c m < <(measure "$TMP/calpost.json" "$CALPOST" plan --format json --from $FROM \
      --days $DAYS --timezone $TZ_PLAN "$plan")
  # Instances = distinct (uid, occurrence); posts = one per channel.
  counts=$($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); p=d["posts"]
print(len({(x["uid"], x["occurrence"]) for x in p}), len(p), len(d["diagnostics"]))' "$TMP/calpost.json")
  read -r inst posts diags <<<"$counts"
  printf '%-8s %-12s %9s %9s %9s %10s  %s\n' "$n" calpost-json "$w" "$c" "$m" "$inst" \
      "$posts posts, $diags diagnostics, plan ${size} KiB"

  read -r w c m < <(measure "$TMP/libical.out" "$TMP/raw_libical" "$plan" "$FROM_UNIX" $DAYS)
  printf '%-8s %-12s %9s %9s %9s %10s  %s\n' "$n" raw-libical "$w" "$c" "$m" "$(cat "$TMP/libical.out")" \
      "no overrides/X-WR/DST fixes"

  if [ "$n" -ge 20000 ] && [ "${CP_BENCH_RIE_20K:-1}" = 0 ]; then
    printf '%-8s %-12s %9s %9s %9s %10s  %s\n' "$n" python-rie - - - - "skipped (CP_BENCH_RIE_20K=0)"
  else
    read -r w c m < <(measure "$TMP/rie.out" $PY "$HERE/raw_rie.py" "$plan" "$FROM_UTC" $DAYS)
    printf '%-8s %-12s %9s %9s %9s %10s  %s\n' "$n" python-rie "$w" "$c" "$m" "$(cat "$TMP/rie.out")" \
        "counts events overlapping the window"
  fi
done
