#!/usr/bin/env bash
# Profile-guided release build of portico: the binary the container image
# ships and benches/compare.sh measures. Prints the binary's path on stdout.
#
#   bash benches/pgo.sh            # -> target/pgo/release/portico
#
# 1. Builds portico instrumented (-Cprofile-generate) into target/pgo-gen.
# 2. Trains it on loopback with the load bench's client and upstream: HTTP/1.1
#    and HTTP/2 keep-alive, ECDSA and RSA handshakes, resumption, 1 MiB
#    downloads and uploads. First with one worker (the manifests' CPU limit of
#    1 gives one) and the access log on, as by default; then, shorter, with two
#    workers, so that the multi-threaded runtime's paths are not left cold.
# 3. Merges the profile with llvm-profdata (rustup's llvm-tools component,
#    added if missing) and builds target/pgo/release/portico with it.
#
# Does nothing when the compiler, Cargo.toml, Cargo.lock, src/ and the bench
# are those of the last build. Needs bash, cargo and loopback; no python, no
# taskset, no root. Fails if any request fails, in the training or in the
# optimised binary's check (S1, S2, S3E for a second each).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source benches/lib.sh
log() { printf '[pgo %3ds] %s\n' "$SECONDS" "$*" >&2; }

OUT=$ROOT/target/pgo
GEN=$ROOT/target/pgo-gen
BIN=$OUT/release/portico
stamp=$({
    rustc -vV
    cat Cargo.toml Cargo.lock benches/pgo.sh benches/load.rs benches/lib.sh
    find src -type f | LC_ALL=C sort | xargs cat
} | sha256sum | cut -c1-16)
if [[ -x $BIN && -f $OUT/stamp && $(cat "$OUT/stamp") == "$stamp" ]]; then
    log "up to date: $BIN"
    echo "$BIN"
    exit 0
fi

host=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $PROFDATA ]]; then
    log "adding rustup's llvm-tools component (llvm-profdata)"
    rustup component add llvm-tools >&2
fi

# ---------------------------------------------------------------- 1. instrumented
RAW=$GEN/profraw
rm -rf "$RAW"
log "building the instrumented binary into $GEN"
RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_TARGET_DIR=$GEN \
    cargo build --release --locked --bin portico >&2
log "building the load bench (client and upstream)"
LOAD_BIN=$(load_bin)
[[ -x $LOAD_BIN ]] || { echo "pgo: the load bench did not build" >&2; exit 1; }

# ---------------------------------------------------------------- 2. training
TMP=$(mktemp -d /tmp/portico-pgo.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
export BENCH_PIN=0
start_bench_upstream

# drive BINARY WORKERS SCENARIOS SECONDS: one portico process, driven, then
# stopped with SIGTERM so that it drains (and, instrumented, writes its
# profile) as it exits.
drive() {
    local port admin pid rc
    port=$(free_port)
    admin=$(free_port)
    "$1" --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$UP" \
        --tls-dir "$TMP/certs/ec" --tls-dir "$TMP/certs/rsa" --workers "$2" \
        --admin-listen "127.0.0.1:$admin" --ready-check none \
        >"$TMP/access.log" 2>"$TMP/portico.log" &
    pid=$!
    wait_port "$port"
    log "$(basename "$(dirname "$(dirname "$1")")"): $2 worker(s), $3, ${4}s each"
    BENCH_TARGET_ADDR=127.0.0.1:$port BENCH_TARGET_PID=$pid BENCH_CA=$TMP/certs/ca.pem \
        BENCH_SCENARIOS=$3 BENCH_SECS=$4 BENCH_WARMUP_SECS=0.5 \
        "$LOAD_BIN" >"$TMP/train.out" 2>"$TMP/train.err" || {
        cat "$TMP/train.err" >&2
        exit 1
    }
    grep -E '^\s+S' "$TMP/train.err" >&2 || true
    if grep -qE 'errors [1-9]' "$TMP/train.err"; then
        echo "pgo: requests failed; portico's log:" >&2
        tail -20 "$TMP/portico.log" >&2
        exit 1
    fi
    kill -TERM "$pid"
    rc=0
    wait "$pid" || rc=$?
    [[ $rc == 0 ]] || { echo "pgo: portico exited $rc" >&2; tail -20 "$TMP/portico.log" >&2; exit 1; }
}
drive "$GEN/release/portico" 1 S1,S2,S3E,S3R,S3T,S4D,S4U 2
drive "$GEN/release/portico" 2 S1,S2 1

# ---------------------------------------------------------------- 3. optimised
mkdir -p "$OUT"
"$PROFDATA" merge -o "$OUT/merged.profdata" "$RAW"
# The profile's hash is in its path: cargo rebuilds when RUSTFLAGS change, not
# when a file they name does.
sum=$(sha256sum "$OUT/merged.profdata" | cut -c1-16)
PROFILE=$OUT/portico-$sum.profdata
find "$OUT" -maxdepth 1 -name 'portico-*.profdata' ! -name "portico-$sum.profdata" -delete
mv "$OUT/merged.profdata" "$PROFILE"
log "building the optimised binary with $PROFILE"
RUSTFLAGS="-Cprofile-use=$PROFILE" CARGO_TARGET_DIR=$OUT \
    cargo build --release --locked --bin portico >&2
"$BIN" --version >&2
drive "$BIN" 1 S1,S2,S3E 1
echo "$stamp" >"$OUT/stamp"
log "done: $BIN"
echo "$BIN"
