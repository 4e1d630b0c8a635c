#!/usr/bin/env bash
# portico vs nginx vs HAProxy (Debian packages), same scenarios, same client,
# same upstream, same certificates, each proxy pinned to CPU 0 with one worker;
# the load client (benches/load.rs) and the upstream pinned to CPU 1.
# Runs every scenario pair by pair (portico, nginx, haproxy; portico, nginx, ...)
# for ROUNDS rounds, takes medians, and writes benches/README.md's results
# section and benches/results.svg.
#
#   bash benches/compare.sh                 # everything, ~15 minutes
#   ROUNDS=1 BENCH_SECS=2 SCENARIOS="S1 S2" bash benches/compare.sh
#   PROXIES="portico nginx" bash benches/compare.sh
#   SCENARIOS=S2H ...                       # S2 driven by h2load instead of the bench's client
#   SCENARIOS=S1W ...                       # S1 driven by wrk instead of the bench's client
#   PORTICO_BIN=/tmp/new PORTICO_B=/tmp/old PROXIES="portico portico_b" REPORT=0 bash benches/compare.sh
#                                           # A/B two builds; REPORT=0 leaves
#                                           # benches/README.md alone and prints medians
#
# Needs root for apt-get (only when nginx/haproxy are missing). Loopback only.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
source benches/lib.sh
ROUNDS=${ROUNDS:-3}
export BENCH_SECS=${BENCH_SECS:-4}
export BENCH_WARMUP_SECS=${BENCH_WARMUP_SECS:-1}
SCENARIOS=${SCENARIOS:-"S1 S1W S1R S2 S2R S2H S3E S3R S3T S4D S4U S5"}
PROXIES=${PROXIES:-"portico nginx haproxy"}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
export BENCH_PROXY_CPU=$PROXY_CPU BENCH_CLIENT_CPU=$CLIENT_CPU
NGINX=/usr/sbin/nginx
HAPROXY=/usr/sbin/haproxy
started=$(date +%s)

log() { printf '[compare %3ds] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

# ---------------------------------------------------------------- install
missing=()
[[ -x $NGINX ]] || missing+=(nginx)
[[ -x $HAPROXY ]] || missing+=(haproxy)
for tool in taskset prlimit; do command -v $tool >/dev/null || missing+=(util-linux); done
[[ " $SCENARIOS " == *" S2H "* ]] && ! command -v h2load >/dev/null && missing+=(nghttp2-client)
[[ " $SCENARIOS " == *" S1W "* ]] && ! command -v wrk >/dev/null && missing+=(wrk)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    # No init system here: keep the packages' postinst from starting daemons.
    policy_rc=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_rc=/usr/sbin/policy-rc.d
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -n $policy_rc ]] && rm -f "$policy_rc"
fi
[[ -x $NGINX ]] || NGINX=$(command -v nginx)
log "nginx: $($NGINX -v 2>&1 | head -1); haproxy: $($HAPROXY -v 2>&1 | head -1)"

# ---------------------------------------------------------------- build
log "building portico and the load client (release)"
LOAD_BIN=$(load_bin)
# By default the profile-guided build, which the container image ships;
# PORTICO_BIN=target/release/portico measures the plain `cargo build --release`.
if [[ -z ${PORTICO_BIN:-} ]]; then
    PORTICO_BIN=$(bash benches/pgo.sh)
    PORTICO_BUILD="profile-guided (benches/pgo.sh)"
fi
PORTICO_BUILD=${PORTICO_BUILD:-$PORTICO_BIN}
log "portico: $PORTICO_BUILD"
[[ -x $LOAD_BIN && -x $PORTICO_BIN ]] || { echo "build failed" >&2; exit 1; }

# ---------------------------------------------------------------- set up
TMP=$(mktemp -d /tmp/portico-compare.XXXXXX)
declare -A PORT PID MASTER
UPSTREAM_PID=""
cleanup() {
    for p in "${MASTER[@]}" $UPSTREAM_PID; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
BENCH_WRITE_CERTS=$TMP/certs "$LOAD_BIN" >/dev/null
export BENCH_CA=$TMP/certs/ca.pem

UP_PORT=$(free_port)
BENCH_UPSTREAM_ONLY=$UP_PORT BENCH_CLIENT_CPU=$CLIENT_CPU taskset -c "$CLIENT_CPU" "$LOAD_BIN" 2>"$TMP/upstream.log" &
UPSTREAM_PID=$!

# The header work every proxy does, to match what portico always does:
# X-Forwarded-For/-Proto/-Host/-Port, Forwarded, X-Request-Id.
# run_portico NAME BINARY: one portico build under the name NAME.
run_portico() {
    PORT[$1]=$(free_port)
    taskset -c "$PROXY_CPU" "$2" --listen "127.0.0.1:${PORT[$1]}" \
        --upstream "http://127.0.0.1:$UP_PORT" \
        --tls-dir "$TMP/certs/ec" --tls-dir "$TMP/certs/rsa" \
        --workers 1 --access-log off --admin-listen off --log-level warn --ready-check none \
        2>"$TMP/$1.log" &
    PID[$1]=$!
    MASTER[$1]=$!
}
start_portico() { run_portico portico "$PORTICO_BIN"; }
# Another portico build (PORTICO_B), for A/B runs of an optimisation.
start_portico_b() { run_portico portico_b "$PORTICO_B"; }

start_nginx() {
    PORT[nginx]=$(free_port)
    mkdir -p "$TMP/nginx/logs"
    cat >"$TMP/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_max_body_size 0;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    # Stream bodies as portico does (nginx's defaults buffer them, to disk if large).
    proxy_request_buffering off;
    proxy_max_temp_file_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$http_host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto https;
    proxy_set_header X-Forwarded-Host \$http_host;
    proxy_set_header X-Forwarded-Port \$server_port;
    proxy_set_header Forwarded "for=\$remote_addr;proto=https;host=\"\$http_host\"";
    proxy_set_header X-Request-Id \$request_id;
    add_header X-Request-Id \$request_id;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    ssl_session_cache shared:SSL:10m;
    # keepalive caps the idle connections nginx keeps to the upstream; at 64,
    # S2's 512 streams in flight made it open and close upstream connections
    # all the time (41-47 -> 27-30 us/req at 1024). portico and HAProxy keep
    # every idle connection. keepalive_requests: nginx closes an upstream
    # connection after 1,000 requests by default (~190 connects per S1 round).
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 1024;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl http2;
        server_name ec.bench.test localhost;
        ssl_certificate $TMP/certs/ec/tls.crt;
        ssl_certificate_key $TMP/certs/ec/tls.key;
        location / { proxy_pass http://app; }
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl http2;
        server_name rsa.bench.test;
        ssl_certificate $TMP/certs/rsa/tls.crt;
        ssl_certificate_key $TMP/certs/rsa/tls.key;
        location / { proxy_pass http://app; }
    }
}
EOF
    taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" 2>"$TMP/nginx.log" &
    local master=$!
    MASTER[nginx]=$master
    wait_port "${PORT[nginx]}"
    # The worker does the work: measure it, not the master.
    PID[nginx]=""
    for _ in $(seq 50); do
        PID[nginx]=$(pgrep -P "$master" | head -1 || true)
        [[ -n ${PID[nginx]} ]] && break
        sleep 0.1
    done
}

start_haproxy() {
    PORT[haproxy]=$(free_port)
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:${PORT[haproxy]} ssl crt $TMP/certs/ec.pem crt $TMP/certs/rsa.pem alpn h2,http/1.1
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request add-header Forwarded "for=%[src];proto=https;host=\"%[req.hdr(host)]\""
    unique-id-format %{+X}o%ci%cp%fi%fp%Ts%rt%pid
    http-request set-header X-Request-Id %[unique-id]
    http-response set-header X-Request-Id %[unique-id]
    default_backend be
backend be
    server app 127.0.0.1:$UP_PORT
EOF
    taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$TMP/haproxy.cfg" 2>"$TMP/haproxy.log" &
    PID[haproxy]=$!
    MASTER[haproxy]=$!
}

start() {
    "start_$1"
    wait_port "${PORT[$1]}"
    log "$1 on 127.0.0.1:${PORT[$1]}, pid ${PID[$1]}, CPU $PROXY_CPU"
}
# A fresh process, for S5: memory freed after earlier scenarios stays in the
# allocator and would be reused by the idle connections.
restart() {
    kill "${MASTER[$1]}" 2>/dev/null || true
    wait "${MASTER[$1]}" 2>/dev/null || true
    start "$1"
}
for p in $PROXIES; do start "$p"; done

# ---------------------------------------------------------------- run
# Connections the upstream has accepted so far, this query's own included. A
# proxy that opens upstream connections under load pays for connects that the
# others do not (nginx did, with keepalive 64): each run's count is kept.
upstream_accepted() {
    local n
    exec 3<>"/dev/tcp/127.0.0.1/$UP_PORT" || return 1
    printf 'GET /__accepted HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
    n=$(tail -n1 <&3)
    exec 3<&-
    echo "$n"
}
RESULTS=$TMP/results.jsonl
: >"$RESULTS"

# S2H: S2's load (16 connections x 32 streams, small GET) from h2load, a C
# client that needs less than half the CPU per request of the bench's own
# (hyper) client. With the bench's client, the client's core (shared with the
# upstream) is full before portico's is; with h2load the proxy's core is the
# fuller one (portico's 89-100 % busy in two full runs), so the proxies are
# compared closer to their own full rate.
# CPU per request from /proc/PID/stat between the end of h2load's warm-up and
# its exit; latencies from its per-request log (--log-file).
run_h2load() { # PROXY
    local p=$1 log=$TMP/h2load-$s-$r-$1.log out=$TMP/run-$s-$r-$1.err pid=${PID[$1]} a b
    taskset -c "$CLIENT_CPU" h2load -c16 -m32 -t1 --warm-up-time="$BENCH_WARMUP_SECS" \
        -D "$BENCH_SECS" --log-file="$log" "https://127.0.0.1:${PORT[$p]}/" >"$out" 2>&1 &
    local h=$!
    sleep "$BENCH_WARMUP_SECS"
    a=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    wait "$h" || { log "h2load against $p failed:"; tail -5 "$out" >&2; return; }
    b=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    python3 - "$log" "$out" "$p" "$((b - a))" "$(getconf CLK_TCK)" "$BENCH_SECS" >>"$RESULTS" <<'PY'
import json, re, sys
log, out, label, ticks, hz, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
lat = sorted(int(l.split()[2]) for l in open(log) if l.strip())
n = len(lat)
text = open(out).read()
m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
errors = sum(int(x) for x in m.groups()[1:]) if m else 0
cipher = re.search(r"Cipher: (\S+)", text)
group = re.search(r"Server Temp Key: (\S+)", text)
q = lambda f: lat[min(n - 1, int(f * n))] if n else 0
cpu_us = ticks * 1e6 / hz
print(json.dumps({
    "scenario": "S2H", "label": label, "n": n, "rps": n / secs,
    "p50_us": q(0.50), "p99_us": q(0.99), "p999_us": q(0.999),
    "cpu": cpu_us / n if n else None, "unit": "\u00b5s/req",
    "util": cpu_us / 1e6 / secs * 100, "errors": errors,
    "note": "h2load, 16 conns x 32 streams; %s %s" % (cipher.group(1) if cipher else "?", group.group(1) if group else ""),
}, sort_keys=True))
PY
    python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print("  S2H %10.0f req/s  p99 %8.2f ms  cpu %8.1f µs/req  (%.0f%% of a core)  errors %d" % (r["rps"], r["p99_us"]/1000, r["cpu"], r["util"], r["errors"]))' "$RESULTS" >>"$out"
}
# S1W: S1's load (64 keep-alive HTTP/1.1 connections, small GET back to
# back) from wrk, a C client (OpenSSL), as users measure proxies: a client
# other than the bench's own must agree. wrk has no warm-up of its own: a
# first run of BENCH_WARMUP_SECS warms the proxy, then the measured run's CPU
# (from /proc/PID/stat, its 64 handshakes included) is divided by its
# requests; latencies are wrk's --latency percentiles.
run_wrk() { # PROXY
    local p=$1 out=$TMP/run-$s-$r-$1.err pid=${PID[$1]} a b
    local url="https://127.0.0.1:${PORT[$p]}/"
    taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${BENCH_WARMUP_SECS}s" "$url" >/dev/null 2>&1 || true
    a=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${BENCH_SECS}s" --latency "$url" >"$out" 2>&1 ||
        { log "wrk against $p failed:"; tail -5 "$out" >&2; return; }
    b=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    python3 - "$out" "$p" "$((b - a))" "$(getconf CLK_TCK)" "$BENCH_SECS" >>"$RESULTS" <<'PY'
import json, re, sys
out, label, ticks, hz, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
text = open(out).read()
n = int(re.search(r"(\d+) requests in", text).group(1))
def us(pct):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % pct, text, re.M)
    if not m:
        return 0
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = (sum(int(x) for x in errs.groups()) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0)
cpu_us = ticks * 1e6 / hz
print(json.dumps({
    "scenario": "S1W", "label": label, "n": n, "rps": n / secs,
    "p50_us": us(50), "p99_us": us(99), "p999_us": None,
    "cpu": cpu_us / n if n else None, "unit": "\u00b5s/req",
    "util": cpu_us / 1e6 / secs * 100, "errors": errors,
    "note": "wrk -t1 -c64, h1 keep-alive",
}, sort_keys=True))
PY
    python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print("  S1W %10.0f req/s  p99 %8.2f ms  cpu %8.1f µs/req  (%.0f%% of a core)  errors %d" % (r["rps"], r["p99_us"]/1000, r["cpu"], r["util"], r["errors"]))' "$RESULTS" >>"$out"
}
for s in $SCENARIOS; do
    for r in $(seq "$ROUNDS"); do
        for p in $PROXIES; do
            [[ $s == S5 ]] && restart "$p"
            before=$(upstream_accepted || echo 0)
            if [[ $s == S2H ]]; then
                run_h2load "$p"
            elif [[ $s == S1W ]]; then
                run_wrk "$p"
            else
                BENCH_TARGET_ADDR=127.0.0.1:${PORT[$p]} BENCH_TARGET_PID=${PID[$p]} \
                    BENCH_LABEL=$p BENCH_SCENARIOS=$s BENCH_JSON=$RESULTS \
                    taskset -c "$CLIENT_CPU" "$LOAD_BIN" >"$TMP/run-$s-$r-$p.out" 2>"$TMP/run-$s-$r-$p.err" ||
                    { log "run $s/$r/$p failed:"; tail -5 "$TMP/run-$s-$r-$p.err" >&2; }
            fi
            opened=$(( $(upstream_accepted || echo 1) - before - 1 ))
            # Into the run's row (the load client appended it last).
            python3 - "$RESULTS" "$opened" <<'PY'
import json, sys
path, opened = sys.argv[1], int(sys.argv[2])
lines = open(path).read().splitlines()
if lines:
    row = json.loads(lines[-1])
    row.setdefault("upstream_conns", opened)
    lines[-1] = json.dumps(row, sort_keys=True)
    open(path, "w").write("\n".join(lines) + "\n")
PY
            log "$s round $r $p: $(grep -E '^\s+S' "$TMP/run-$s-$r-$p.err" | sed 's/^ *//' || true); upstream connections opened $opened"
        done
    done
done
for p in $PROXIES; do
    kill -0 "${PID[$p]}" 2>/dev/null || log "WARNING: $p died during the run"
done

if [[ ${REPORT:-1} == 0 ]]; then
    python3 - "$RESULTS" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[(r["scenario"], r["unit"], r["label"])].append(r)
for (s, unit, label), rs in sorted(rows.items()):
    cpu = statistics.median(r["cpu"] for r in rs)
    p99 = statistics.median(r["p99_us"] for r in rs)
    each = ", ".join("%.1f" % r["cpu"] for r in rs)
    print(f"{s:4} {label:10} {cpu:9.2f} {unit:12} p99 {p99:8.0f} us  ({each})")
PY
    log "done in $(( $(date +%s) - started ))s (REPORT=0: benches/README.md untouched; raw rows in $RESULTS)"
    exit 0
fi
cp "$RESULTS" "$ROOT/benches/results.jsonl"
python3 "$ROOT/benches/report.py" "$RESULTS" \
    --readme "$ROOT/benches/README.md" --svg "$ROOT/benches/results.svg" \
    --meta "portico $PORTICO_BUILD; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); $($NGINX -v 2>&1 | head -1 | sed 's/.*: //'); $($HAPROXY -v 2>&1 | head -1 | cut -d' ' -f1-3); ${ROUNDS} rounds x ${BENCH_SECS}s (+${BENCH_WARMUP_SECS}s warm-up); $(date -u +%F)"
log "done in $(( $(date +%s) - started ))s; results in benches/README.md and benches/results.svg"
