#!/usr/bin/env bash
# The test command: installs test dependencies (cached: Python venv and models, npm solc-js /
# OpenZeppelin / anvil), starts a throwaway PostgreSQL and a moto S3 API server on free loopback
# ports, checks the committed contract artifacts against their sources, then runs fmt, clippy and
# the whole test suite (anvil is started by the tests) with those services required. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-deps.sh
source scripts/npm-deps.sh

work="$(mktemp -d /tmp/cairn-test.XXXXXX)"
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -f "$work/pg/postmaster.pid" ]; then as_pg pg_ctl -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT INT TERM

free_port() { "$CAIRN_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; fi
pg_port="$(free_port)"
as_pg initdb -D "$work/pg" -A trust -U cairn --no-sync >/dev/null
as_pg pg_ctl -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
export CAIRN_TEST_PG_URL="postgres://cairn@127.0.0.1:$pg_port/postgres"

s3_port="$(free_port)"
"$(dirname "$CAIRN_PY")/moto_server" -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
pids+=($!)
export AWS_ACCESS_KEY_ID=cairn-test AWS_SECRET_ACCESS_KEY=cairn-test AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export CAIRN_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port" CAIRN_TEST_S3_BUCKET=cairn-test
"$CAIRN_PY" - <<PY
import time, boto3
s3 = boto3.client("s3", endpoint_url="$CAIRN_TEST_S3_ENDPOINT", region_name="us-east-1")
for _ in range(100):
    try:
        s3.create_bucket(Bucket="cairn-test"); break
    except Exception:
        time.sleep(0.1)
else:
    raise SystemExit("moto_server did not start")
PY

export CAIRN_TEST_REQUIRE_SERVICES=1
# The committed contract artifacts must be what the pinned compiler makes of the sources.
node contracts/compile.mjs --check --modules "$CAIRN_NODE_MODULES"
# The committed explorer pages must be what the pinned Vite makes of their sources.
scripts/explorer-web.sh --check
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The Nitro attester's device path compiles only with its feature (it runs only in an enclave).
cargo clippy -p cairn-attest --features nitro --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
