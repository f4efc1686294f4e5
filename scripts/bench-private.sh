#!/usr/bin/env bash
# What a private call adds: a release devnet (--free), then the private_latency example against
# its node and relay, side by side in one run (tensor calls at c=1 direct / sealed whole /
# chunked; with the devnet's language model, time to the first streamed piece direct vs private),
# and the CPU per request of OHTTP itself (the ohttp_cost example).
# usage: scripts/bench-private.sh [CALLS] [RUNS]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
calls="${1:-200}"
runs="${2:-1}"
cargo build --release --locked -p cairn-cli --bin cairn >&2
cargo build --release --locked -p cairn-relay --example private_latency >&2
cargo build --release --locked -p cairn-ohttp --example ohttp_cost >&2
target="${CARGO_TARGET_DIR:-target}/release"
llm="${CAIRN_LLM_MODEL:-none}"
data="$(mktemp -d)"
log="$data/devnet.log"
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
CAIRN_DEVNET_LLM="$llm" "$target/cairn" devnet --free --data-dir "$data/d" --listen 127.0.0.1:0 \
  --node-listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --relay-listen 127.0.0.1:0 --explorer-listen 127.0.0.1:0 --entry-listen 127.0.0.1:0 --magika none --minilm none --llm "$llm" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "^  relay:" "$log" && break; sleep 1; done
grep -q "^  relay:" "$log" || { cat "$log" >&2; echo "the devnet did not start" >&2; exit 1; }
node="$(grep '^  node:' "$log" | awk '{print $NF}')"
relay="$(grep '^  relay:' "$log" | awk '{print $NF}')"
model=""
[ "$llm" != none ] && model="smollm2-135m-instruct@1.0"
for r in $(seq 1 "$runs"); do
  echo "run $r"
  "$target/examples/private_latency" "$node" "$relay" examples/digit.json "$calls" $model
done
"$target/examples/ohttp_cost" 7
