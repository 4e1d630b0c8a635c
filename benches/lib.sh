# Shared by compare.sh and profile.sh: builds (release) and prints the path
# of the load bench's executable.
load_bin() {
    # Parsed with grep and sed, not python: benches/pgo.sh runs in the
    # container image's build stage, which has no python.
    cargo bench --bench load --no-run --locked --message-format=json 2>/dev/null |
        grep '"name":"load"' | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//'
}

# A free loopback port: the kernel's choice where python is at hand, else a
# random one that nothing answers on.
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
        return
    fi
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    return 1
}

# Waits up to 10 s for something to listen on loopback port $1.
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

# For profile.sh, callgrind.sh and pgo.sh: mints the bench's certificates into
# $TMP/certs and starts its upstream alone, on CPU 1 unless BENCH_PIN=0; sets UP
# to its port, adds its pid to PIDS and waits until it listens.
start_bench_upstream() {
    BENCH_WRITE_CERTS=$TMP/certs "$LOAD_BIN" >/dev/null
    UP=$(free_port)
    if [[ ${BENCH_PIN:-1} == 0 ]]; then
        BENCH_UPSTREAM_ONLY=$UP "$LOAD_BIN" 2>/dev/null &
    else
        BENCH_UPSTREAM_ONLY=$UP taskset -c 1 "$LOAD_BIN" 2>/dev/null &
    fi
    PIDS+=($!)
    wait_port "$UP"
}
