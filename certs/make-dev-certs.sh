#!/usr/bin/env bash
# Make development certificates for portico (never for production).
#
#   certs/make-dev-certs.sh [NAME...]        names as arguments, or
#   NAMES=app.local,10.0.0.5 certs/make-dev-certs.sh
#
# Default names: localhost,127.0.0.1. A name that is an IPv4 or IPv6 address
# becomes an IP SAN, anything else a DNS SAN; the first name is also the CN.
#
# Writes into certs/out/ (git-ignored; OUT overrides the folder):
#   ca.crt ca.key                 dev CA, ECDSA P-256 (reused if present, so a
#                                 rerun rotates the leaves under the same CA)
#   server.crt server.key         server leaf (serverAuth) signed by the CA
#   secret/tls.crt secret/tls.key the same pair laid out as the kubelet mounts a
#   secret/ca.crt                 kubernetes.io/tls Secret: the files are
#                                 symlinks through ..data to a timestamped
#                                 folder, and a rerun swaps ..data atomically,
#                                 as a Secret update does
#   client.crt client.key         client leaf (clientAuth) for mTLS, with a DNS
#                                 SAN (CLIENT_DNS) and a URI SAN (CLIENT_URI)
#
# Other settings: DAYS (leaf validity, default 30), CA_DAYS (default 3650).
# Needs OpenSSL 1.1.1 or later.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-$here/out}"
days="${DAYS:-30}"
ca_days="${CA_DAYS:-3650}"
client_dns="${CLIENT_DNS:-client.default.svc.cluster.local}"
client_uri="${CLIENT_URI:-spiffe://cluster.local/ns/default/sa/client}"

if [ "$#" -gt 0 ]; then
    names=("$@")
else
    IFS=',' read -r -a names <<< "${NAMES:-localhost,127.0.0.1}"
fi
[ "${#names[@]}" -gt 0 ] || { echo "make-dev-certs: no names given" >&2; exit 2; }

# Build "DNS:a,IP:b" from the names.
san=""
for n in "${names[@]}"; do
    n="${n#"${n%%[![:space:]]*}"}"   # trim leading and trailing blanks
    n="${n%"${n##*[![:space:]]}"}"
    [ -n "$n" ] || continue
    if [[ "$n" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || [[ "$n" == *:* ]]; then
        entry="IP:$n"
    elif [[ "$n" =~ ^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
        entry="DNS:$n"
    else
        echo "make-dev-certs: not a DNS name or IP address: '$n'" >&2
        exit 2
    fi
    san="${san:+$san,}$entry"
done
[ -n "$san" ] || { echo "make-dev-certs: no names given" >&2; exit 2; }
cn="${san%%,*}"   # the first name, for the subject CN
cn="${cn#*:}"

umask 077   # keys are created private; certificates are chmod 644 below
mkdir -p "$out"
work="$(mktemp -d "$out/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

new_key() { # new_key FILE: ECDSA P-256, PKCS#8 PEM
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

cat > "$work/ext.cnf" <<EOF
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $san

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:$client_dns, URI:$client_uri
EOF

# sign CSR CERT SECTION DAYS [CA-KEY]: issue CERT from CSR with the extensions
# of SECTION; self-signed with CA-KEY when given, otherwise by the dev CA.
sign() {
    local serial
    serial="0x$(openssl rand -hex 16)"
    if [ "$#" -eq 5 ]; then
        openssl x509 -req -in "$1" -out "$2" -days "$4" -sha256 -set_serial "$serial" \
            -signkey "$5" -extfile "$work/ext.cnf" -extensions "$3" 2>/dev/null
    else
        openssl x509 -req -in "$1" -out "$2" -days "$4" -sha256 -set_serial "$serial" \
            -CA "$out/ca.crt" -CAkey "$out/ca.key" -extfile "$work/ext.cnf" -extensions "$3" 2>/dev/null
    fi
    chmod 644 "$2"
}

# 1. The dev CA, kept across runs.
if [ -f "$out/ca.crt" ] && [ -f "$out/ca.key" ]; then
    echo "reusing CA $out/ca.crt"
else
    new_key "$out/ca.key"
    openssl req -new -key "$out/ca.key" -subj "/O=portico dev/CN=portico dev CA" -out "$work/ca.csr"
    sign "$work/ca.csr" "$out/ca.crt" ca "$ca_days" "$out/ca.key"
    echo "created CA $out/ca.crt"
fi

# 2. The server leaf.
new_key "$work/server.key"
openssl req -new -key "$work/server.key" -subj "/O=portico dev/CN=$cn" -out "$work/server.csr"
sign "$work/server.csr" "$work/server.crt" server "$days"
mv -f "$work/server.key" "$out/server.key"
mv -f "$work/server.crt" "$out/server.crt"
echo "created server certificate $out/server.crt for $san"

# 3. The client leaf, for mTLS.
new_key "$work/client.key"
openssl req -new -key "$work/client.key" -subj "/O=portico dev/CN=client" -out "$work/client.csr"
sign "$work/client.csr" "$work/client.crt" client "$days"
mv -f "$work/client.key" "$out/client.key"
mv -f "$work/client.crt" "$out/client.crt"
echo "created client certificate $out/client.crt for DNS:$client_dns, URI:$client_uri"

# 4. The Secret folder, as the kubelet writes it: a new timestamped folder,
#    ..data pointing at it (swapped with a rename), and tls.crt, tls.key,
#    ca.crt as symlinks through ..data.
secret="$out/secret"
mkdir -p "$secret"
chmod 755 "$secret"
ts="..$(date -u +%Y_%m_%d_%H_%M_%S).$$"
mkdir "$secret/$ts"
cp "$out/server.crt" "$secret/$ts/tls.crt"
cp "$out/server.key" "$secret/$ts/tls.key"
cp "$out/ca.crt" "$secret/$ts/ca.crt"
chmod 644 "$secret/$ts/tls.crt" "$secret/$ts/ca.crt"
chmod 600 "$secret/$ts/tls.key"
chmod 755 "$secret/$ts"
old="$(readlink "$secret/..data" 2>/dev/null || true)"
ln -s "$ts" "$secret/..data_tmp"
if ! mv -T "$secret/..data_tmp" "$secret/..data" 2>/dev/null; then
    # mv without -T (BSD/macOS): not atomic, good enough for a dev machine.
    rm -f "$secret/..data_tmp"
    ln -sfn "$ts" "$secret/..data"
fi
for f in tls.crt tls.key ca.crt; do
    [ -L "$secret/$f" ] || { rm -f "$secret/$f"; ln -s "..data/$f" "$secret/$f"; }
done
if [ -n "$old" ] && [ "$old" != "$ts" ]; then
    rm -rf "${secret:?}/$old"
fi
echo "updated Secret folder $secret (..data -> $ts)"
