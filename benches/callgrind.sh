#!/usr/bin/env bash
# Counts portico's user-space instructions per request under one load scenario
# with callgrind: a figure that, unlike CPU time on a shared VM, repeats to
# within ~1 % between runs, so changes of a few percent can be told apart.
# Kernel time (half of S1/S2's CPU) is not in it.
#
#   bash benches/callgrind.sh S1                 # or S2, S3E, S4D, ...
#   PORTICO_BIN=/tmp/old/portico bash benches/callgrind.sh S2
#   CG_KEEP=/tmp/s2.cg bash benches/callgrind.sh S2   # then callgrind_annotate /tmp/s2.cg
#
# portico runs under valgrind (pinned to CPU 0, one worker) with the
# instrumentation off until the load has run WARMUP seconds; it is then on for
# WINDOW seconds, and the requests counted by portico's own metrics in that
# window divide the instructions. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
SCENARIO=${1:-S1}
WARMUP=${WARMUP:-8}
WINDOW=${WINDOW:-10}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

LOAD_BIN=$(load_bin)
BIN=${PORTICO_BIN:-target/release/portico}
[[ -n ${PORTICO_BIN:-} ]] || cargo build --release --bin portico -q
TMP=$(mktemp -d /tmp/portico-callgrind.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

start_bench_upstream
P=$(free_port)
ADMIN=$(free_port)
taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.out" \
    "$BIN" --listen "127.0.0.1:$P" --upstream "http://127.0.0.1:$UP" \
    --tls-dir "$TMP/certs/ec" --tls-dir "$TMP/certs/rsa" --workers 1 --access-log off \
    --admin-listen "127.0.0.1:$ADMIN" --log-level warn --ready-check none 2>"$TMP/valgrind.log" &
PORTICO=$!
PIDS+=($PORTICO)
for _ in $(seq 60); do
    curl -sf "http://127.0.0.1:$ADMIN/metrics" >/dev/null && break
    sleep 0.5
done
requests() {
    curl -sf "http://127.0.0.1:$ADMIN/metrics" |
        awk '/^portico_requests_total/ { s += $2 } END { printf "%d\n", s }'
}

BENCH_TARGET_ADDR=127.0.0.1:$P BENCH_TARGET_PID=$PORTICO BENCH_CA=$TMP/certs/ca.pem \
    BENCH_SCENARIOS=$SCENARIO BENCH_SECS=$((WARMUP + WINDOW + 10)) BENCH_WARMUP_SECS=1 \
    taskset -c 1 "$LOAD_BIN" >/dev/null 2>&1 &
LOAD=$!
PIDS+=($LOAD)
sleep "$WARMUP"
R0=$(requests)
callgrind_control -i on "$PORTICO" >/dev/null 2>&1
sleep "$WINDOW"
callgrind_control -i off "$PORTICO" >/dev/null 2>&1
R1=$(requests)
kill "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
kill "$PORTICO"
wait "$PORTICO" 2>/dev/null || true
[[ -n ${CG_KEEP:-} ]] && cp "$TMP/cg.out" "$CG_KEEP"
IR=$(awk '/^totals:/ { print $2; exit }' "$TMP/cg.out")
python3 -c "
n = $R1 - $R0
print(f'$SCENARIO: {n:,} requests in the window, {$IR:,} instructions, {$IR / max(n, 1):,.0f} per request')"
