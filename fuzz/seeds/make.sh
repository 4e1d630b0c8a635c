#!/usr/bin/env bash
# Writes the hand-made seeds into fuzz/corpus/<target>/seed-*. Rerunning it
# replaces them (certificates and keys are new each time). Needs python3 and
# openssl. The fuzzer's own finds sit beside them under their hash names.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Certificates for san_and_xfcc (DER) and pem_pair (PEM pairs).
cat >"$tmp/ext.cnf" <<'CNF'
[client]
subjectAltName = DNS:client.shop.svc, URI:spiffe://cluster.local/ns/shop/sa/web, DNS:*.example.com, email:a@b.c, IP:10.0.0.1
extendedKeyUsage = clientAuth
[server]
subjectAltName = DNS:localhost, DNS:Api.Example.COM, IP:127.0.0.1
CNF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -subj "/CN=seed CA" 2>/dev/null
leaf() { # name keyopts subject ext
  local name=$1 subj=$3 ext=$4
  # shellcheck disable=SC2086
  openssl req -newkey $2 -nodes -keyout "$tmp/$name.key" -out "$tmp/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$tmp/$name.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 3650 -extfile "$tmp/ext.cnf" -extensions "$ext" -out "$tmp/$name.pem" 2>/dev/null
  openssl x509 -in "$tmp/$name.pem" -outform DER -out "$tmp/$name.der"
}
leaf client-ec "ec -pkeyopt ec_paramgen_curve:P-256" \
  '/C=DE/O=Test Org+OU=a\, b/CN=web "quoted" \\ #1 ' client
leaf server-ec "ec -pkeyopt ec_paramgen_curve:P-384" '/CN=localhost' server
leaf server-rsa "rsa:2048" '/DC=example/DC=com/UID=x/CN=localhost' server
leaf server-ed "ed25519" '/CN=localhost' server
# The key in other encodings: PKCS#1 (RSA), SEC1 (EC).
openssl rsa -in "$tmp/server-rsa.key" -traditional -out "$tmp/server-rsa.pkcs1.key" 2>/dev/null
openssl ec -in "$tmp/server-ec.key" -out "$tmp/server-ec.sec1.key" 2>/dev/null

python3 - "$tmp" <<'PY'
import os, sys, struct
tmp = sys.argv[1]
C = "corpus"
def put(target, name, data):
    d = os.path.join(C, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    open(os.path.join(d, "seed-" + name), "wb").write(data)
def rd(n):
    return open(os.path.join(tmp, n), "rb").read()

# route_parse: `--route` values, then the request host and path.
routes = [
    ("basic", ["/api=http://a:1", "/api/v2=http://b:1"], "", "/api/v2/x"),
    ("hosts", ["/api=http://none:1", "*.example.com/api=http://wild:1",
               "a.example.com/api=http://exact:1", "a.example.com/api=http://exact2:1"],
     "A.Example.com:8443", "/api"),
    ("slash", ["/static/=http://a:1", "/=h2c://[::1]:50051"], "x", "/static/app.js"),
    ("unix", ["*.Example.com/v2=unix:/run/app.sock", "api.example.com/=h2c://127.0.0.1:50051",
              "/metrics=http://127.0.0.1:9090"], "[::1]:8443", "/v2"),
    ("bad", ["/metrics", "metrics=http://a:1", "/x=ftp://a:1", "*./x=http://a:1",
             "a*b/x=http://a:1", "/x?y=http://a:1", "/x=http://a:1/p", "/x=http://a:notaport",
             "/x=unix:rel", "/x=http://[::1", "/x=http://a:99999"], "a.b", "/x"),
    ("utf8", ["bücher.example/ä=http://a:1", "*.ü/x=http://b:2"], "X.Ü", "/ä/ö"),
]
for name, specs, host, path in routes:
    put("route_parse", name, "\n".join(specs + [host, path]))

# config_file: TOML files.
configs = {
    "full": '''listen = "0.0.0.0:8443"
upstream = "http://127.0.0.1:8080"
route = ["/metrics=http://127.0.0.1:9090", "api.example.com/=h2c://127.0.0.1:50051"]
tls-dir = ["/etc/tls/a", "/etc/tls/b"]
client-ca = "/etc/ca.pem"
client-auth = "optional"
allow-san = ["dns:*.shop.svc", "uri:spiffe://cluster.local/ns/shop/*", "cn:web"]
tls-min-version = "1.3"
admin-listen = "off"
redirect-listen = ":8080"
ready-check = "http:/healthz"
connect-timeout = "500ms"
handshake-timeout = "10s"
header-read-timeout = "0"
request-timeout = "2m"
body-timeout = "1.5s"
idle-timeout = "1h"
max-connections = 100
max-requests-in-flight = 10
max-request-body = "10MiB"
max-header-bytes = 65536
drain-delay = "5s"
drain-timeout = "30s"
workers = 2
cert-poll-interval = "10s"
cert-watch = false
log-format = "json"
log-level = "info,portico=debug"
access-log = true
''',
    "cert": 'tls-cert = "/tmp/c.pem"\ntls-key = "/tmp/k.pem"\n',
    "errors": 'tls-cert = "/tmp/c.pem"\nworkers = 0\n',
    "unknown": 'lisen = "x"\n',
    "types": 'route = "/x=http://a:1"\nlisten = [1]\n',
    "badtoml": 'listen = "0.0.0.0:1\n[[x]]\n',
    "v6": 'listen = "[::]:8443"\nadmin-listen = "[::1]:9901"\nmax-header-bytes = "1KiB"\n',
}
for name, text in configs.items():
    put("config_file", name, text)

# units: durations and sizes.
for i, s in enumerate(["500ms", "10s", "2m", "1h", "0", "1.5s", " 10s ", "1e3s", "0.0001ms",
                       "1000000000000ms", "64KiB", "10MiB", "1GiB", "65536", "99999999999999GiB",
                       "10 MB", "-1s", ".5m", "1..2s"]):
    put("units", "%02d" % i, s)

# headers: flags, client IP, port, then header lines.
def hdr(flags, ip, port, lines):
    return bytes([flags]) + bytes(ip) + struct.pack(">H", port) + "\n".join(lines).encode()
v4 = [10, 0, 0, 1]
v6 = [0x20, 0x01, 0x0d, 0xb8] + [0] * 11 + [1]
put("headers", "hop", hdr(0, v4, 8443, [
    "connection: keep-alive, x-secret, Host, content-length",
    "keep-alive: timeout=5", "x-secret: 1", "proxy-connection: keep-alive",
    "te: gzip, trailers", "transfer-encoding: chunked", "upgrade: websocket",
    "host: example.com:8443", "content-length: 3", "x-kept: yes"]))
put("headers", "upgrade", hdr(1, v4, 443, [
    "connection: Upgrade", "upgrade: websocket", "host: a", "sec-websocket-key: x"]))
put("headers", "h2c", hdr(2, v6, 8443, ["te: trailers", "host: [::1]:8443", "x-request-id: abc-123"]))
put("headers", "forwarded", hdr(4, v6, 1, [
    "x-forwarded-for: 1.2.3.4, 5.6.7.8", "x-forwarded-for: 9.9.9.9",
    'forwarded: for=1.2.3.4;proto=http;host="a:1"', "x-forwarded-host: evil",
    "x-forwarded-proto: http", "x-forwarded-port: 1", "host: api.example.com"]))
put("headers", "request-id", hdr(0, v4, 8443, ["x-request-id: " + "a" * 129, "host: h"]))

# san_and_xfcc: patterns, and certificates as DER.
put("san_and_xfcc", "patterns", "\n".join([
    "dns:client.shop.svc", "dns:*.shop.svc", "dns:a.*.com", "dns:*.", "uri:spiffe://cluster.local/ns/shop/*",
    "uri:*", "cn:web", "cn:", "ip:1.2.3.4", "nocolon", "DNS:X"]))
for n in ["client-ec", "server-ec", "server-rsa", "server-ed", "ca"]:
    if n == "ca":
        continue
    put("san_and_xfcc", n, rd(n + ".der"))

# pem_pair: 2-byte certificate length, the certificate file, the key file
# (its private-key PEM label written as PRIVATE-KEY-LABEL; the target reads it back).
def pair(cert, key):
    key = key.replace(b"PRIVATE KEY", b"PRIVATE-KEY-LABEL")
    return struct.pack(">H", len(cert)) + cert + key
ca = rd("ca.pem")
put("pem_pair", "ec", pair(rd("server-ec.pem"), rd("server-ec.key")))
put("pem_pair", "ec-sec1", pair(rd("server-ec.pem"), rd("server-ec.sec1.key")))
put("pem_pair", "rsa-pkcs1-chain", pair(rd("server-rsa.pem") + ca, rd("server-rsa.pkcs1.key")))
put("pem_pair", "ed25519", pair(rd("server-ed.pem"), rd("server-ed.key")))
put("pem_pair", "mismatch", pair(rd("server-ec.pem"), rd("client-ec.key")))
put("pem_pair", "no-key", pair(rd("client-ec.pem"), b""))

# h1_response: a flag byte (1: HEAD), the read size less one, the primary's bytes.
def resp(name, flags, piece, raw):
    put("h1_response", name, bytes([flags, piece]) + raw)
resp("length", 0, 3, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx: y\r\n\r\nhello")
resp("chunked-trailers", 0, 0, b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
     b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\ngrpc-status: 0\r\n\r\n")
resp("interim", 0, 7, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
     b"HTTP/1.1 204 No Content\r\n\r\n")
resp("head", 1, 255, b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n")
resp("close-delimited", 0, 1, b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
resp("length-and-chunked", 0, 16, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
resp("lengths", 0, 31, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 2, 2\r\nconnection: keep-alive, close\r\n\r\n")
resp("switching", 0, 2, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nframes")
# proxy_header: the read size less one, then a PROXY header and what follows it.
SIG = b"\r\n\r\n\0\r\nQUIT\n"
def v2(vc, fam, body):
    return SIG + bytes([vc, fam]) + len(body).to_bytes(2, "big") + body
HELLO = b"\x16\x03\x01\x00\x05hello"
put("proxy_header", "v1-tcp4", b"\x07PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n" + HELLO)
put("proxy_header", "v1-tcp6", b"\x20PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n" + HELLO)
put("proxy_header", "v1-unknown", b"\x00PROXY UNKNOWN\r\n" + HELLO)
put("proxy_header", "v2-tcp4-tlv", b"\x03" + v2(0x21, 0x11, bytes([203, 0, 113, 7, 192, 0, 2, 1, 0xc8, 0x22, 1, 0xbb])
    + b"\xea\x00\x04vpce\x04\x00\x02\x00\x00") + HELLO)
put("proxy_header", "v2-tcp6", b"\xff" + v2(0x21, 0x21, bytes(range(32)) + b"\x00\x50\x01\xbb"))
put("proxy_header", "v2-local", b"\x01" + v2(0x20, 0x00, b"") + HELLO)
put("proxy_header", "v2-unix", b"\x10" + v2(0x21, 0x31, bytes(216)))
put("proxy_header", "tls", b"\x05" + HELLO)
PY
echo "seeds written under fuzz/corpus/"
