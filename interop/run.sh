#!/usr/bin/env bash
# Interop runner: drives a real est-server with independent EST clients.
#
#   (a) curl + openssl                      always
#   (b) libest estclient                    when ESTCLIENT=/path/to/estclient is set
#   (c) Azure IoT Edge-shaped sequences     always (curl, concurrent requests)
#   (d) est-client against libest estserver when ESTSERVER=host:port (+ ESTSERVER_CA) is set
#
# Prints PASS/FAIL/SKIP per check and ends with "N passed, N failed".
# Usage: interop/run.sh            (builds est-server if needed)
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${EST_SERVER_BIN:-$ROOT/target/debug/est-server}"
[ -x "$BIN" ] || (cd "$ROOT" && cargo build -q -p est-server) || { echo "cannot build est-server"; exit 1; }
CLIENT="${EST_CLIENT_BIN:-$ROOT/target/debug/est-client}"

WORK="$(mktemp -d /tmp/est-interop.XXXXXX)"
DATA="$WORK/data"
PASSED=0; FAILED=0; SKIPPED=0
pass() { echo "PASS  $*"; PASSED=$((PASSED+1)); }
fail() { echo "FAIL  $*"; FAILED=$((FAILED+1)); }
skip() { echo "SKIP  $*  <<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<"; SKIPPED=$((SKIPPED+1)); }
check() { local name="$1"; shift; if "$@" >>"$WORK/log" 2>&1; then pass "$name"; else fail "$name (see $WORK/log)"; fi; }

cleanup() { [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

# --- a manufacturer CA for bootstrap certificates (IoT Edge style first enrollment)
mkdir -p "$DATA" && chmod 700 "$DATA"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/mfr.key" \
  -subj "/CN=Interop Manufacturer CA" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign" -out "$WORK/mfr.pem" 2>/dev/null
HASH="$(EST_PASSWORD=estpwd "$BIN" hash-password)"
cat > "$DATA/est-server.toml" <<TOML
listen = "127.0.0.1:0"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
bootstrap_trust = ["$WORK/mfr.pem"]
[[users]]
name = "estuser"
password_hash = "$HASH"
[profiles.device]
validity = "30d"
[cas.edge]
dir = "edge-ca"
[profiles.edge-ca]
validity = "90d"
subordinate_ca = true
extended_key_usage = []
ca = "edge"
[enroll]
profile = "device"
[labels.iotedge]
profile = "device"
[labels.edgeca]
profile = "edge-ca"
auth = ["basic", "bootstrap-cert", "issued-cert"]
TOML

"$BIN" serve --dev --data-dir "$DATA" --listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 1 100); do grep -q '^listening on ' "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
ADDR="$(sed -n 's/^listening on //p' "$WORK/server.out")"
[ -n "$ADDR" ] || { cat "$WORK/server.err"; echo "server did not start"; exit 1; }
PORT="${ADDR##*:}"
CA="$DATA/ca.pem"
BASE="https://localhost:$PORT/.well-known/est"
echo "est-server on $ADDR, work dir $WORK"

p7_to_pem() { openssl base64 -d | openssl pkcs7 -inform DER -print_certs; }
csr_b64() { # key subject [addext...]
  local key="$1" subj="$2"; shift 2
  local ext=(); for e in "$@"; do ext+=(-addext "$e"); done
  openssl req -new -key "$key" -subj "$subj" "${ext[@]}" -outform DER 2>/dev/null | openssl base64
}
newkey() { openssl ecparam -name prime256v1 -genkey -noout -out "$1"; }
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2 | tr 'A-F' 'a-f'; }

# ---------------------------------------------------------------- (a) curl + openssl
a_cacerts() {
  curl -sf --cacert "$CA" "$BASE/cacerts" | p7_to_pem > "$WORK/chain.pem" &&
  [ "$(grep -c 'BEGIN CERTIFICATE' "$WORK/chain.pem")" = 2 ] &&
  openssl verify -CAfile "$CA" "$WORK/chain.pem"
}
a_enroll() {
  newkey "$WORK/a.key" && csr_b64 "$WORK/a.key" "/CN=interop-a" > "$WORK/a.b64" &&
  curl -sf --cacert "$CA" -u estuser:estpwd -H 'Content-Type: application/pkcs10' \
    --data-binary @"$WORK/a.b64" "$BASE/simpleenroll" | p7_to_pem > "$WORK/a.pem" &&
  openssl verify -CAfile "$CA" -untrusted "$WORK/chain.pem" -purpose sslclient "$WORK/a.pem"
}
a_reenroll() {
  csr_b64 "$WORK/a.key" "/CN=interop-a" > "$WORK/a2.b64" &&
  curl -sf --cacert "$CA" --cert "$WORK/a.pem" --key "$WORK/a.key" -H 'Content-Type: application/pkcs10' \
    --data-binary @"$WORK/a2.b64" "$BASE/simplereenroll" | p7_to_pem > "$WORK/a2.pem" &&
  [ "$(serial_of "$WORK/a.pem")" != "$(serial_of "$WORK/a2.pem")" ] &&
  "$BIN" certs list --data-dir "$DATA" | grep "^$(serial_of "$WORK/a.pem")" | grep -q superseded
}
check "(a) curl+openssl cacerts chain verifies against ca.pem" a_cacerts
check "(a) curl+openssl simpleenroll P-256, openssl verify -purpose sslclient" a_enroll
check "(a) curl+openssl simplereenroll over mTLS, old serial superseded" a_reenroll

# ---------------------------------------------------------------- (b) libest estclient
if [ -n "${ESTCLIENT:-}" ]; then
  export EST_OPENSSL_CACERT="$CA"
  B="$WORK/libest"; mkdir -p "$B/g" "$B/e" "$B/r"
  newkey "$B/key.pem"
  b_cacerts() { "$ESTCLIENT" -g -s 127.0.0.1 -p "$PORT" -o "$B/g" && [ -s "$B/g/cacert-0-0.pkcs7" ]; }
  b_enroll() {
    "$ESTCLIENT" -e -s 127.0.0.1 -p "$PORT" -u estuser -h estpwd -x "$B/key.pem" --common-name libest-interop -o "$B/e" --pem-output &&
    openssl verify -CAfile "$CA" -untrusted "$WORK/chain.pem" "$B/e/cert-0-0.pem"
  }
  b_reenroll() {
    "$ESTCLIENT" -r -s 127.0.0.1 -p "$PORT" -c "$B/e/cert-0-0.pem" -k "$B/key.pem" -o "$B/r" --pem-output &&
    [ "$(serial_of "$B/e/cert-0-0.pem")" != "$(serial_of "$B/r/cert-0-0.pem")" ] &&
    "$BIN" certs list --data-dir "$DATA" | grep "^$(serial_of "$B/e/cert-0-0.pem")" | grep -q superseded
  }
  # estclient -q signs its CSR with -x; with an RSA key the server generates RSA
  # (libest refuses key parts under 256 base64 bytes, i.e. any EC key).
  b_serverkeygen() {
    mkdir -p "$B/q" && openssl genrsa -out "$B/rsa.key" 2048 2>/dev/null &&
    "$ESTCLIENT" -q -s 127.0.0.1 -p "$PORT" -u estuser -h estpwd -x "$B/rsa.key" --common-name libest-skg -o "$B/q" &&
    openssl base64 -d -in "$B/q/key-0-0.key" | openssl pkey -inform DER -pubout > "$B/q/key.pub" &&
    openssl base64 -d -in "$B/q/cert-0-0.pkcs7" | openssl pkcs7 -inform DER -print_certs | openssl x509 -pubkey -noout | cmp - "$B/q/key.pub"
  }
  check "(b) libest estclient -g (cacerts)" b_cacerts
  check "(b) libest estclient -e (simpleenroll after 401 challenge)" b_enroll
  check "(b) libest estclient -r (simplereenroll)" b_reenroll
  check "(b) libest estclient -q (serverkeygen)" b_serverkeygen
else
  skip "(b) libest estclient: set ESTCLIENT=/path/to/estclient to run (see README, Interop)"
fi

# ---------------------------------------------------------------- (c) Azure IoT Edge-shaped
# Every issuance: POST simpleenroll and GET cacerts concurrently, same Basic header up front,
# same TLS client certificate; body in 64-column base64 with Content-Transfer-Encoding: base64;
# only an exact 200 counts; the first certificate of the enroll response is the device's own.
E="$WORK/edge"; mkdir -p "$E"
edge_issue() { # label client_cert client_key new_key subject out
  local label="$1" cert="$2" key="$3" newkey="$4" subj="$5" out="$6"
  csr_b64 "$newkey" "$subj" "extendedKeyUsage=clientAuth" > "$out.b64"
  local auth="Authorization: Basic $(printf 'estuser:estpwd' | openssl base64)"
  curl -s --http1.1 --cacert "$CA" --cert "$cert" --key "$key" -H "$auth" \
    -H 'Content-Type: application/pkcs10' -H 'Content-Transfer-Encoding: base64' \
    --data-binary @"$out.b64" -o "$out.p7" -w '%{http_code}' "$BASE/$label/simpleenroll" > "$out.enroll-status" &
  local enroll=$!
  curl -s --http1.1 --cacert "$CA" --cert "$cert" --key "$key" -H "$auth" \
    -o "$out.cacerts" -w '%{http_code}' "$BASE/$label/cacerts" > "$out.cacerts-status" &
  local cacerts=$!
  wait $enroll; wait $cacerts
  [ "$(cat "$out.enroll-status")" = 200 ] && [ "$(cat "$out.cacerts-status")" = 200 ] || return 1
  p7_to_pem < "$out.p7" > "$out.pem"
  # The first certificate must be the device's own: its key is the one we asked for.
  [ "$(openssl x509 -in "$out.pem" -noout -pubkey)" = "$(openssl pkey -in "$newkey" -pubout)" ]
}
c_bootstrap() {
  newkey "$E/boot.key"
  openssl req -new -key "$E/boot.key" -subj "/CN=edge-device-1" -out "$E/boot.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > "$E/ext"
  openssl x509 -req -in "$E/boot.csr" -CA "$WORK/mfr.pem" -CAkey "$WORK/mfr.key" -set_serial 7 \
    -days 30 -extfile "$E/ext" -out "$E/boot.pem" 2>/dev/null
  newkey "$E/id1.key"
  edge_issue iotedge "$E/boot.pem" "$E/boot.key" "$E/id1.key" "/CN=edge-device-1" "$E/id1"
}
c_renew() {
  newkey "$E/id2.key"
  edge_issue iotedge "$E/id1.pem" "$E/id1.key" "$E/id2.key" "/CN=edge-device-1" "$E/id2" &&
  "$BIN" certs list --data-dir "$DATA" | grep "^$(serial_of "$E/id1.pem")" | grep -q superseded &&
  "$BIN" certs list --data-dir "$DATA" | grep "^$(serial_of "$E/id2.pem")" | grep -q "identity-cert:$(serial_of "$E/id1.pem")"
}
c_edge_ca() {
  newkey "$E/edgeca.key"
  "$BIN" devices add edge-device-1 --edge-ca --data-dir "$DATA" >/dev/null &&
  csr_b64 "$E/edgeca.key" "/CN=aziot-edge CA edge-device-1" "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign" > "$E/edgeca.b64"
  curl -s --http1.1 --cacert "$CA" --cert "$E/id2.pem" --key "$E/id2.key" -u estuser:estpwd \
    -H 'Content-Type: application/pkcs10' -H 'Content-Transfer-Encoding: base64' \
    --data-binary @"$E/edgeca.b64" "$BASE/edgeca/simpleenroll" | p7_to_pem > "$E/edgeca.pem" &&
  openssl x509 -in "$E/edgeca.pem" -noout -text | grep -q "CA:TRUE, pathlen:0"
}
check "(c) IoT Edge: first issuance with a manufacturer bootstrap cert, enroll+cacerts concurrently" c_bootstrap
check "(c) IoT Edge: renewal = simpleenroll with the identity cert and a new key" c_renew
check "(c) IoT Edge: Edge CA on its own label gets CA:TRUE, pathlen:0" c_edge_ca

# ---------------------------------------------------------------- (d) est-client vs libest estserver
if [ -n "${ESTSERVER:-}" ]; then
  CLIENT="${EST_CLIENT_BIN:-$ROOT/target/debug/est-client}"
  [ -x "$CLIENT" ] || (cd "$ROOT" && cargo build -q -p est-client)
  D="$WORK/estserver"; mkdir -p "$D"
  DS=(--server "https://$ESTSERVER" --trust "${ESTSERVER_CA:?set ESTSERVER_CA to the estserver trust anchor PEM}")
  export EST_PASSWORD="${ESTSERVER_PASSWORD:-estpwd}"
  DU=(--user "${ESTSERVER_USER:-estuser}")
  d_cacerts() { "$CLIENT" cacerts "${DS[@]}" --out "$D/cacerts.pem" && grep -q 'BEGIN CERTIFICATE' "$D/cacerts.pem"; }
  d_csrattrs() { "$CLIENT" csrattrs "${DS[@]}"; }
  d_enroll() {
    "$CLIENT" enroll "${DS[@]}" "${DU[@]}" --cn est-client-interop --out "$D/device.pem" --out-key "$D/device.key" &&
    openssl verify -CAfile "$ESTSERVER_CA" -untrusted "$D/cacerts.pem" "$D/device.pem"
  }
  d_reenroll() {
    local before; before="$(serial_of "$D/device.pem")"
    "$CLIENT" reenroll "${DS[@]}" "${DU[@]}" --cert "$D/device.pem" --key "$D/device.key" --rotate-key &&
    [ "$before" != "$(serial_of "$D/device.pem")" ] &&
    "$CLIENT" status --cert "$D/device.pem" --key "$D/device.key"
  }
  check "(d) est-client cacerts against libest estserver ($ESTSERVER)" d_cacerts
  check "(d) est-client csrattrs against libest estserver" d_csrattrs
  check "(d) est-client enroll against libest estserver" d_enroll
  check "(d) est-client reenroll --rotate-key against libest estserver" d_reenroll
  d_serverkeygen() {
    "$CLIENT" serverkeygen "${DS[@]}" "${DU[@]}" --cn est-client-skg --out "$D/skg.pem" --out-key "$D/skg.key" &&
    "$CLIENT" status --cert "$D/skg.pem" --key "$D/skg.key"
  }
  check "(d) est-client serverkeygen against libest estserver (PKCS#1 key in the pkcs8 part)" d_serverkeygen
else
  skip "(d) est-client against libest estserver: set ESTSERVER=host:port and ESTSERVER_CA=<trust anchor PEM> to run"
fi

if grep -q panicked "$WORK/server.err"; then fail "server log has a panic"; fi
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" = 0 ]
