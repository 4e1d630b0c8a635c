# Shared by compare.sh and profile.sh: builds (release) and prints the path
# of the load bench's executable.
load_bin() {
    cargo bench --bench load --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" and m.get("executable"):
        print(m["executable"])'
}

# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# For profile.sh and callgrind.sh: mints the bench's certificates into
# $TMP/certs and starts its upstream alone on CPU 1; sets UP to its port and
# adds its pid to PIDS.
start_bench_upstream() {
    BENCH_WRITE_CERTS=$TMP/certs "$LOAD_BIN" >/dev/null
    UP=$(free_port)
    BENCH_UPSTREAM_ONLY=$UP taskset -c 1 "$LOAD_BIN" 2>/dev/null &
    PIDS+=($!)
}
