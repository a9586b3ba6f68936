#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run calls exactly this).
# Installs what the tests need, then runs formatting and lint checks, every
# unit and end-to-end test, and the interop runner.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
# tests/tests/hostile.rs lowers the server's descriptor limit with prlimit.
command -v prlimit >/dev/null || need_apt+=(util-linux)
# The MQTT broker for the rotation tests (tests/src/mosquitto.rs starts its own instance).
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need_apt+=(mosquitto)
# The PostgreSQL registry tests start a private cluster with initdb + pg_ctl
# (tests/src/postgres.rs); no system service is used.
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The PKCS#11 signer tests (tests/tests/signers.rs) make SoftHSM2 tokens and
# check key attributes with pkcs11-tool (OpenSC).
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null || need_apt+=(opensc)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# initdb refuses to run as root: the test clusters run as `postgres` (made by
# the Debian package) or else a dedicated `estpg` user.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1 && ! id estpg >/dev/null 2>&1; then
  useradd --system --no-create-home estpg
fi
# The AWS emulator for the AWS IoT, DynamoDB and KMS tests (PyPI moto[server], with boto3).
if ! python3 -c "import moto, boto3, cryptography" 2>/dev/null; then
  echo "installing: moto[server]"
  python3 -m pip install -q "moto[server]>=5.2,<5.3"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build binaries"
cargo build --workspace --bins
echo "== cargo test"
cargo test --workspace
echo "== interop"
interop/run.sh
