#!/bin/bash
# Benchmark: the daemon (`calpost run`) publishing to a local HTTP sink (daemon_sink.c: libh2o,
# answers 200, logs the receive time of every request), and idle with a large queue. Prints a
# markdown table with the targets beside the figures:
#   1. due-to-request lateness p50/p99 of single posts (one webhook channel, one post a second:
#      iCalendar due times are whole seconds), lateness = sink receive time - due time, beside
#      the machine's own wake-up lateness (wake_floor.c: the floor under it);
#   2. time to publish a burst of posts due at the same second over many webhook channels,
#      beside wrk's request rate against the same sink with the same body (the ceiling), with
#      keep-alive and with a fresh connection per request (what POSTs without an idempotency
#      key do; the webhook sends one and keeps its connections), and beside what libcurl alone
#      reaches the same way (curl_ceiling.c: the client calpost uses, doing nothing else);
#   3. wakeups (epoll_wait calls) and CPU time of the idle daemon with 100,000 pending posts;
#   4. its peak RSS (VmHWM) once start-up has settled.
# Self-contained: builds what it needs into a temp dir; every process it starts is stopped.
# Takes about 6 minutes (part 1 is one post a second, part 3 is 60 idle seconds by definition;
# CP_DAEMON_BENCH_SINGLE=60 saves 2 of them).
# Env: CALPOST (binary; default build/calpost, built with CMake into the temp dir if missing),
#      CP_DAEMON_BENCH_SINGLE (posts in part 1, default 200), CP_DAEMON_BENCH_BURST (default
#      10000), CP_DAEMON_BENCH_CHANNELS (default 100), CP_DAEMON_BENCH_PENDING (default 100000),
#      CP_DAEMON_BENCH_IDLE (seconds, default 60), CP_DAEMON_BENCH_WRK_SECONDS (default 10),
#      CP_DAEMON_BENCH_PROFILE=1 (perf record the burst and the start-up with 100,000 posts and
#      print their top symbols), CP_DAEMON_BENCH_PARTS (default "1 2 3"), CP_DAEMON_BENCH_KEEP=1
#      (keep the temp dir: plans, configs, logs, state databases, sink logs).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
N_SINGLE=${CP_DAEMON_BENCH_SINGLE:-200}
N_BURST=${CP_DAEMON_BENCH_BURST:-10000}
N_CH=${CP_DAEMON_BENCH_CHANNELS:-100}
N_PENDING=${CP_DAEMON_BENCH_PENDING:-100000}
IDLE=${CP_DAEMON_BENCH_IDLE:-60}
WRK_S=${CP_DAEMON_BENCH_WRK_SECONDS:-10}
PROFILE=${CP_DAEMON_BENCH_PROFILE:-0}
PARTS=${CP_DAEMON_BENCH_PARTS:-"1 2 3"}
PY=/usr/bin/python3
export CP_BENCH_KEY=calpost-bench-signing-key   # the webhook channels sign, as in production
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "${CP_DAEMON_BENCH_KEEP:-0}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

for tool in wrk:wrk perf:linux-perf; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    echo "installing ${tool#*:}" >&2
    apt-get install -y "${tool#*:}" >/dev/null 2>&1 ||
      { apt-get update >/dev/null && apt-get install -y "${tool#*:}" >/dev/null 2>&1; } || true
  fi
done
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

CALPOST=${CALPOST:-$SRC/build/calpost}
if [ ! -x "$CALPOST" ]; then
  echo "building calpost into $TMP/build" >&2
  cmake -S "$SRC" -B "$TMP/build" -DCMAKE_BUILD_TYPE=Release -DCALPOST_TESTS=OFF >/dev/null
  make -C "$TMP/build" -j"$(nproc)" calpost >/dev/null
  CALPOST=$TMP/build/calpost
fi
gcc -O2 -o "$TMP/sink" "$HERE/daemon_sink.c" $(pkg-config --cflags --libs libh2o libuv) -lssl -lcrypto
gcc -O2 -o "$TMP/wake_floor" "$HERE/wake_floor.c"
gcc -O2 -o "$TMP/curl_ceiling" "$HERE/curl_ceiling.c" -lcurl
HZ=$(getconf CLK_TCK)

# ---- helpers -------------------------------------------------------------------------------

now_s() { date +%s.%N; }
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
cpu_s() { awk -v hz="$HZ" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
ctxt() { cat /proc/"$1"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ {n += $2} END {print n}'; }

# cpu_ticks: "steal total" from /proc/stat. On a virtual machine the host may run other guests
# on our CPUs ("steal"); timing figures taken while it does are the host's, so each timed part
# prints the share of CPU time stolen while it ran.
cpu_ticks() { awk '$1 == "cpu" {t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t}' /proc/stat; }
# steal_row PART "STEAL0 TOTAL0": adds the row with the steal share since that reading
steal_row() {
  local s0 t0 s1 t1
  read -r s0 t0 <<<"$2"
  read -r s1 t1 < <(cpu_ticks)
  row "$1. CPU time the host stole from this VM during part $1 (/proc/stat steal)" \
    "$(awk -v s=$((s1 - s0)) -v t=$((t1 - t0)) 'BEGIN {printf "%.1f %%", t ? 100 * s / t : 0}')" \
    "" ""
}

# start_sink LOG [BODY]: sets SINK_PID and SINK_PORT
start_sink() {
  "$TMP/sink" 0 "$@" >"$TMP/sink.port" &
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  for _ in $(seq 100); do
    SINK_PORT=$(awk '/^port/ {print $2}' "$TMP/sink.port")
    [ -n "$SINK_PORT" ] && return 0
    sleep 0.05
  done
  echo "the sink did not start" >&2
  exit 1
}

# start_daemon DIR: sets DAEMON_PID and STARTUP_S (launch to the "running" log line)
start_daemon() {
  local t0
  t0=$(now_s)
  "$CALPOST" run -c "$1/calpost.ini" 2>"$1/log" &
  DAEMON_PID=$!
  PIDS+=("$DAEMON_PID")
  for _ in $(seq 6000); do
    if grep -q " running: " "$1/log"; then
      STARTUP_S=$(awk -v a="$t0" -v b="$(now_s)" 'BEGIN {printf "%.2f", b - a}')
      return 0
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || { echo "calpost run failed:" >&2; tail "$1/log" >&2; exit 1; }
    sleep 0.05
  done
  echo "calpost run did not start within 300 s" >&2
  exit 1
}

# stop PID: SIGTERM, then SIGKILL after 15 s
stop() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 150); do
    kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "pid $1 did not stop within 15 s of SIGTERM; killed" >&2
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# wait_lines FILE N DEADLINE_UNIX: waits until FILE has N lines or the deadline passes
wait_lines() {
  while [ "$(lines "$1")" -lt "$2" ] && [ "$(date +%s)" -lt "$3" ]; do sleep 0.1; done
}

# perf_top FILE: the top symbols of a perf recording (self time)
perf_top() {
  { perf report -i "$1" --no-children --sort dso,symbol --stdio -q -g none --percent-limit 1 \
      2>/dev/null || true; } | head -25 | sed 's/^/    /'
}

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }
met() { if awk "BEGIN {exit !($1)}"; then echo yes; else echo "**no**"; fi; }

# ---- 1. lateness of single posts -----------------------------------------------------------

if [[ " $PARTS " == *" 1 "* ]]; then
  echo "part 1: $N_SINGLE single posts, one a second (about $((N_SINGLE + 5)) s)" >&2
  ticks1=$(cpu_ticks)
  D=$TMP/single
  start_sink "$TMP/single.sink"
  first=$(($(date +%s) + 4))
  $PY "$HERE/daemon_gen.py" "$D" single "$N_SINGLE" "$first" "$SINK_PORT"
  start_daemon "$D"
  wait_lines "$TMP/single.sink" "$N_SINGLE" $((first + N_SINGLE + 30))
  cpu=$(cpu_s "$DAEMON_PID")
  stop "$DAEMON_PID"
  stop "$SINK_PID"
  read -r n p50 p99 pmax < <($PY - "$TMP/single.sink" <<'EOF'
import math, sys
late = sorted(int(t) / 1000 - int(due) * 1000 for t, due, _ in (l.split() for l in open(sys.argv[1])))
pct = lambda q: late[min(len(late) - 1, math.ceil(q * len(late)) - 1)] if late else float("nan")
print(len(late), f"{pct(.5):.1f}", f"{pct(.99):.1f}", f"{late[-1] if late else float('nan'):.1f}")
EOF
  )
  row "1. due-to-request lateness, $n/$N_SINGLE single posts on 1 webhook channel, p50 / p99 (max)" \
    "$p50 / $p99 ms ($pmax ms)" "p99 < 5 ms" "$(met "$p99 < 5 && $n == $N_SINGLE")"
  row "1. calpost CPU for those posts (whole run)" "$cpu s" "" ""
  # The floor under those figures: how late this machine wakes a process that sleeps until an
  # exact instant, with nothing else to do (wake_floor.c; 300 wake-ups 100 ms apart).
  read -r f50 f99 fmax < <("$TMP/wake_floor" 300 100)
  row "1. this machine's own wake-up lateness (clock_nanosleep to an instant, 300 times), p50 / p99 (max)" \
    "$f50 / $f99 ms ($fmax ms)" "the floor" ""
  steal_row 1 "$ticks1"
fi

# ---- 2. a burst over many channels, and wrk's ceiling -------------------------------------

if [[ " $PARTS " == *" 2 "* ]]; then
  echo "part 2: $N_BURST posts due at once over $N_CH channels, then wrk $((2 * WRK_S)) s" >&2
  ticks2=$(cpu_ticks)
  D=$TMP/burst
  start_sink "$TMP/burst.sink" "$TMP/body.json"
  due=$(($(date +%s) + 10))
  $PY "$HERE/daemon_gen.py" "$D" burst "$N_BURST" "$due" "$SINK_PORT" "$N_CH"
  start_daemon "$D"
  if [ "$PROFILE" = 1 ]; then
    perf record -F 499 --call-graph dwarf,16384 -p "$DAEMON_PID" -o "$TMP/burst.perf" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  while [ "$(date +%s)" -lt "$due" ]; do sleep 0.05; done
  cpu0=$(cpu_s "$DAEMON_PID")
  wait_lines "$TMP/burst.sink" "$N_BURST" $((due + 900))
  cpu1=$(cpu_s "$DAEMON_PID")
  [ "$PROFILE" = 1 ] && { kill -INT "$PERF_PID"; wait "$PERF_PID" || true; }
  stop "$DAEMON_PID"
  stop "$SINK_PID"
  read -r n uniq first_ms last_s rate < <($PY - "$TMP/burst.sink" "$due" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1])]
due = int(sys.argv[2]) * 1e6
t = sorted(int(r[0]) for r in rows)
span = (t[-1] - due) / 1e6 if t else float("nan")
print(len(rows), len({r[2] for r in rows}), f"{(t[0] - due) / 1e3:.0f}" if t else "nan",
      f"{span:.2f}", f"{len(rows) / span:.0f}" if t else "0")
EOF
  )
  # wrk: the same body and headers as calpost's first request, against the same sink.
  cat >"$TMP/post.lua" <<EOF
local f = assert(io.open("$TMP/body.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Idempotency-Key"] = "calpost-0123456789abcdef"
wrk.headers["X-Calpost-Timestamp"] = "$due"
wrk.headers["X-Calpost-Signature"] = "sha256=$(printf '%064d' 0)"
EOF
  start_sink /dev/null
  wrk -t2 -c100 -d"${WRK_S}s" -s "$TMP/post.lua" "http://127.0.0.1:$SINK_PORT/hook/0" >"$TMP/wrk.keep"
  wrk -t2 -c100 -d"${WRK_S}s" -s "$TMP/post.lua" -H "Connection: close" \
    "http://127.0.0.1:$SINK_PORT/hook/0" >"$TMP/wrk.close"
  # libcurl alone, the same way: 100 connections, the same body, nothing else done per request.
  read -r curl_rate curl_us < <("$TMP/curl_ceiling" "http://127.0.0.1:$SINK_PORT/hook/0" \
    "$TMP/body.json" 100 "$WRK_S")
  stop "$SINK_PID"
  wrk_keep=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$TMP/wrk.keep")
  wrk_close=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$TMP/wrk.close")
  row "2. $n/$N_BURST posts due at the same second over $N_CH webhook channels: due to last request" \
    "$last_s s = **$rate posts/s** (first request $first_ms ms after due; $uniq distinct keys)" \
    "≥ $((wrk_keep / 2))/s (half of wrk)" "$(met "$rate * 2 >= $wrk_keep && $n == $N_BURST")"
  row "2. calpost CPU during the burst" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}') s (start-up $STARTUP_S s)" "" ""
  row "2. wrk -t2 -c100 -d${WRK_S}s, same sink and body, keep-alive (the ceiling)" "$wrk_keep req/s" "" ""
  row "2. libcurl alone, same sink and body, 100 connections, no other work (tests/bench/curl_ceiling.c)" \
    "$curl_rate req/s, $curl_us µs of CPU per request" "" ""
  row "2. wrk, same, \`Connection: close\` (a fresh connection per request, as calpost's POSTs without an idempotency key do; the webhook keeps its connections)" \
    "$wrk_close req/s" "" ""
  steal_row 2 "$ticks2"
  if [ "$PROFILE" = 1 ]; then
    echo "== perf: calpost during the burst (self time)"
    perf_top "$TMP/burst.perf"
  fi
fi

# ---- 3 and 4. idle with a large queue ------------------------------------------------------

if [[ " $PARTS " == *" 3 "* ]]; then
  echo "part 3: $N_PENDING pending posts, ${IDLE} idle seconds" >&2
  D=$TMP/pending
  $PY "$HERE/daemon_gen.py" "$D" pending "$N_PENDING" $(($(date +%s) + 3 * 86400)) 25
  plan_mib=$(mib $(($(stat -c %s "$D/plan.ics") / 1024)))
  if [ "$PROFILE" = 1 ]; then
    perf record -F 499 --call-graph dwarf,16384 -o "$TMP/start.perf" -- "$CALPOST" run -c "$D/calpost.ini" 2>"$D/log" &
    PERF_PID=$!
    PIDS+=("$PERF_PID")
    t0=$(now_s)
    while ! grep -q " running: " "$D/log" 2>/dev/null; do sleep 0.05; done
    STARTUP_S=$(awk -v a="$t0" -v b="$(now_s)" 'BEGIN {printf "%.2f", b - a}')
    DAEMON_PID=$(pgrep -P "$PERF_PID" | head -1)
  else
    start_daemon "$D"
  fi
  # Settled: no CPU used over a whole second (at most 60 s).
  prev=-1
  for _ in $(seq 60); do
    c=$(cpu_s "$DAEMON_PID")
    [ "$c" = "$prev" ] && break
    prev=$c
    sleep 1
  done
  hwm0=$(status_kib "$DAEMON_PID" VmHWM)
  cpu0=$(cpu_s "$DAEMON_PID")
  ctx0=$(ctxt "$DAEMON_PID")
  threads=$(status_kib "$DAEMON_PID" Threads)
  if perf stat -e 'syscalls:sys_enter_epoll_wait' true >/dev/null 2>&1; then
    how="perf stat, syscalls:sys_enter_epoll_wait + epoll_pwait, all $threads threads"
    perf stat -x, -e 'syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait' \
      -p "$DAEMON_PID" -- sleep "$IDLE" 2>"$TMP/idle.stat" >/dev/null
    wakeups=$(awk -F, '/epoll/ {n += $1} END {print n + 0}' "$TMP/idle.stat")
  elif command -v strace >/dev/null; then
    how="strace -c -f, epoll_wait + epoll_pwait"
    timeout -s INT "$IDLE" strace -c -f -e trace=epoll_wait,epoll_pwait -p "$DAEMON_PID" \
      2>"$TMP/idle.strace" || true
    wakeups=$(awk '$NF ~ /epoll/ {n += $4} END {print n + 0}' "$TMP/idle.strace")
  else
    how="context switches of all threads (/proc)"
    sleep "$IDLE"
    wakeups=$(($(ctxt "$DAEMON_PID") - ctx0))
  fi
  cpu1=$(cpu_s "$DAEMON_PID")
  ctx1=$(ctxt "$DAEMON_PID")
  hwm1=$(status_kib "$DAEMON_PID" VmHWM)
  rss1=$(status_kib "$DAEMON_PID" VmRSS)
  if [ "$PROFILE" = 1 ]; then
    stop "$DAEMON_PID"
    wait "$PERF_PID" 2>/dev/null || true
  else
    stop "$DAEMON_PID"
  fi
  row "3. wakeups in ${IDLE} idle s, $N_PENDING pending posts (outbox, due in 3-28 days; $how)" \
    "$wakeups epoll waits, $((ctx1 - ctx0)) context switches" "0 (no post due, no poll configured)" \
    "$(met "$wakeups == 0")"
  row "3. CPU time in those ${IDLE} s" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.2f", b - a}') s" "0" \
    "$(met "$cpu1 == $cpu0")"
  row "4. peak RSS (VmHWM) with $N_PENDING pending posts, after start-up" \
    "**$(mib "$hwm1") MiB** (RSS now $(mib "$rss1") MiB; ${hwm0:+$(mib "$hwm0") MiB when settled})" \
    "< 64 MiB" "$(met "$hwm1 < 65536")"
  row "4. start-up with $N_PENDING new posts (plan $plan_mib MiB): launch to \`running\`" \
    "$STARTUP_S s, $cpu0 s CPU" "" ""
  if [ "$PROFILE" = 1 ]; then
    echo "== perf: calpost start-up with $N_PENDING posts (self time)"
    perf_top "$TMP/start.perf"
  fi
fi

echo
echo "calpost run on $(nproc) cores, $(basename "$CALPOST") at $CALPOST"
echo
echo "| measure | figure | target | met |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
