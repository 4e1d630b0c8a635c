#!/usr/bin/env bash
# Runs portico doing its real job on this machine: a sample primary on
# 127.0.0.1:8080 (plain HTTP), portico in front of it on https://localhost:8443
# with a certificate from a freshly generated dev CA, admin on 127.0.0.1:9901.
# Ctrl-C (SIGINT) drains portico and stops both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TLS_PORT="${TLS_PORT:-8443}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
PRIMARY_PORT="${PRIMARY_PORT:-8080}"

echo "building portico and the sample primary (release)..." >&2
cargo build --release --quiet --bin portico --example primary

certs/make-dev-certs.sh localhost 127.0.0.1 >/dev/null

./target/release/examples/primary "$PRIMARY_PORT" &
primary=$!
trap 'kill "$primary" 2>/dev/null || true' EXIT

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
