#!/usr/bin/env bash
# Profiles portico (pinned to CPU 0, one worker) under one load scenario with
# perf (Debian's linux-perf; software cpu-clock sampling, so it also works in
# VMs without hardware counters) and prints the top self-cost functions.
#
#   bash benches/profile.sh S1        # or S2, S3E, S4D, ...
#   TOP=30 BENCH_SECS=8 bash benches/profile.sh S2
#   PORTICO_BIN=/tmp/other/portico PERF_RECORD_ARGS="--call-graph fp" PERF_KEEP=/tmp/p.data bash benches/profile.sh S3E
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
SCENARIO=${1:-S1}
TOP=${TOP:-20}
export BENCH_SECS=${BENCH_SECS:-6} BENCH_WARMUP_SECS=${BENCH_WARMUP_SECS:-1}
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }

LOAD_BIN=$(load_bin)
TMP=$(mktemp -d /tmp/portico-profile.XXXXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

start_bench_upstream
P=$(free_port)
taskset -c 0 "${PORTICO_BIN:-target/release/portico}" --listen "127.0.0.1:$P" --upstream "http://127.0.0.1:$UP" \
    --tls-dir "$TMP/certs/ec" --tls-dir "$TMP/certs/rsa" --workers 1 --access-log off \
    --admin-listen off --log-level warn --ready-check none &
PORTICO=$!
PIDS+=($PORTICO)
sleep 1

perf record -e cpu-clock -F 1999 ${PERF_RECORD_ARGS:-} -p "$PORTICO" -o "$TMP/perf.data" 2>/dev/null &
PERF=$!
# System calls, counted inside the measured window (approximately: it starts
# after the warm-up plus connection setup and ends a little early).
( sleep "$(python3 -c "print($BENCH_WARMUP_SECS + 0.3)")"
  perf stat -e raw_syscalls:sys_enter -x, -o "$TMP/syscalls.csv" -p "$PORTICO" -- \
      sleep "$(python3 -c "print($BENCH_SECS - 0.6)")" ) &
STAT=$!
BENCH_TARGET_ADDR=127.0.0.1:$P BENCH_TARGET_PID=$PORTICO BENCH_CA=$TMP/certs/ca.pem \
    BENCH_SCENARIOS=$SCENARIO BENCH_JSON=$TMP/run.jsonl taskset -c 1 "$LOAD_BIN" 2>&1 | grep -E "^\|" || true
wait "$STAT" 2>/dev/null || true
kill -INT "$PERF"
wait "$PERF" 2>/dev/null || true
[[ -n ${PERF_KEEP:-} ]] && cp "$TMP/perf.data" "$PERF_KEEP"
python3 - "$TMP/syscalls.csv" "$TMP/run.jsonl" "$BENCH_SECS" <<'PY'
import json, sys
calls = next((int(l.split(",")[0]) for l in open(sys.argv[1]) if "sys_enter" in l), None)
run = json.loads(open(sys.argv[2]).readline())
secs = float(sys.argv[3]) - 0.6
if calls is not None and run["rps"]:
    print(f"\nsystem calls: {calls / (run['rps'] * secs):.1f} per request ({calls / secs:,.0f}/s)")
PY
echo
echo "top $TOP self-cost symbols in portico under $SCENARIO (perf cpu-clock samples):"
perf report -i "$TMP/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -n "$TOP" || true
echo
echo "by shared object:"
perf report -i "$TMP/perf.data" --no-children --sort dso --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -n 8 || true
