#!/usr/bin/env bash
# Runs portico doing its real job on this machine: a sample primary (plain
# HTTP) on 127.0.0.1:PRIMARY_PORT, portico in front of it on
# https://localhost:TLS_PORT with a certificate from a freshly generated dev CA,
# and portico's admin server on 127.0.0.1:ADMIN_PORT.
#
#   ./quickstart.sh                                   # ports 8443, 9901, 8080
#   TLS_PORT=9443 ADMIN_PORT=9902 PRIMARY_PORT=9080 ./quickstart.sh
#
# The first run compiles portico and the sample primary in release mode, which
# takes a few minutes (cargo prints each crate as it goes); later runs start
# at once. Needs cargo and openssl. Ctrl-C (SIGINT) drains portico and stops both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TLS_PORT="${TLS_PORT:-8443}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
PRIMARY_PORT="${PRIMARY_PORT:-8080}"

if [[ ! -x target/release/portico || ! -x target/release/examples/primary ]]; then
    echo "quickstart: first run: compiling portico and the sample primary (release), a few minutes..." >&2
fi
cargo build --release --bin portico --example primary

certs/make-dev-certs.sh localhost 127.0.0.1 >/dev/null

# Start the primary and wait until it listens: if its port is taken, stop here
# rather than put portico in front of whatever holds the port.
primary_log=$(mktemp)
./target/release/examples/primary "$PRIMARY_PORT" 2>"$primary_log" &
primary=$!
trap 'kill "$primary" 2>/dev/null || true; rm -f "$primary_log"' EXIT
for _ in $(seq 100); do
    if grep -q "listening" "$primary_log"; then
        break
    fi
    if ! kill -0 "$primary" 2>/dev/null; then
        echo "quickstart: the sample primary could not start on 127.0.0.1:${PRIMARY_PORT}:" >&2
        cat "$primary_log" >&2
        echo "quickstart: free that port, or choose another: PRIMARY_PORT=9080 ./quickstart.sh" >&2
        exit 1
    fi
    sleep 0.05
done
grep -q "listening" "$primary_log" || {
    echo "quickstart: the sample primary did not start listening within 5 s" >&2
    exit 1
}

cat >&2 <<MSG

portico: https://localhost:${TLS_PORT}  ->  sample primary http://127.0.0.1:${PRIMARY_PORT}
Try, in another terminal:
  curl --cacert certs/out/ca.crt https://localhost:${TLS_PORT}/hello
  curl --cacert certs/out/ca.crt --http2 https://localhost:${TLS_PORT}/hello
  curl http://127.0.0.1:${ADMIN_PORT}/readyz
  curl http://127.0.0.1:${ADMIN_PORT}/metrics
  certs/make-dev-certs.sh localhost 127.0.0.1   # rotates the certificate live
Ctrl-C drains and stops.

MSG

./target/release/portico \
  --listen "127.0.0.1:${TLS_PORT}" \
  --admin-listen "127.0.0.1:${ADMIN_PORT}" \
  --upstream "http://127.0.0.1:${PRIMARY_PORT}" \
  --tls-dir certs/out/secret
