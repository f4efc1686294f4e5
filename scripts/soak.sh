#!/usr/bin/env bash
# A soak with faults, bounded and on loopback only: SECONDS (default 180) of mixed paid traffic
# (exact and prepaid, good and bad inputs, replays) against a network of separate processes
# (anvil, a hub, a node, three verifiers) while the node and one verifier are killed with
# SIGKILL and restarted; then the books are reconciled to the unit and printed. Exits 1 when
# they do not balance.
# Usage: scripts/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-180}"
source scripts/npm-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CAIRN_CACHE_DIR/target}"
cargo build --locked -p cairn-cli >&2
cargo build --locked -p cairn-node --example soak >&2
bin="$CARGO_TARGET_DIR/debug"
cairn="$bin/cairn"
soak="$bin/examples/soak"

work="$(mktemp -d /tmp/cairn-soak.XXXXXX)"
declare -A pids=()
cleanup() {
  status=$?
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  [ "${KEEP:-}" = 1 ] || rm -rf "$work"
  exit $status
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() { # FILE PATTERN: waits for a line, prints its last word
  for _ in $(seq 600); do
    if grep -q "$2" "$1" 2>/dev/null; then grep "$2" "$1" | tail -1 | awk '{print $NF}'; return; fi
    sleep 0.1
  done
  echo "soak: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

anvil_port="$(free_port)"
"$CAIRN_ANVIL" --port "$anvil_port" --chain-id 31337 --silent >"$work/anvil.log" 2>&1 &
pids[anvil]=$!
rpc="http://127.0.0.1:$anvil_port"
for _ in $(seq 100); do curl -s -X POST -H 'content-type: application/json' \
  --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$rpc" >/dev/null && break; sleep 0.1; done
keys="$work/keys"
"$soak" setup "$rpc" "$keys"
chain=(--rpc "$rpc" --deployment "$keys/deployment.json")

"$cairn" hub serve --listen 127.0.0.1:0 --catalog "sqlite://$work/catalog.db" --blobs "$work/blobs" \
  >"$work/hub.log" 2>&1 &
pids[hub]=$!
hub="$(wait_line "$work/hub.log" '^hub:')"
CAIRN_KEY_FILE="$keys/gov.key" "$cairn" hub push crates/cairn-cli/assets/digits_mlp.onnx \
  --repo digits --version 1.0 --hub "$hub" >/dev/null

start_verifier() { # I
  "$cairn" verifier serve --key "$keys/v$1.key" --listen "127.0.0.1:${vport[$1]}" --hub "$hub" \
    --data-dir "$work/v$1" --allow-dev-evidence --allow-private-endpoints --sample-rate 0.3 \
    --payload-window-secs 30 --payload-attempts 4 --tick-ms 500 "${chain[@]}" \
    >>"$work/v$1.log" 2>&1 &
  pids[v$1]=$!
  wait_line "$work/v$1.log" '^verifier:' >/dev/null
}
declare -A vport=()
for i in 0 1 2; do vport[$i]="$(free_port)"; start_verifier "$i"; done
# From here on every registration or endpoint move needs two verifiers' approval.
"$cairn" chain registration-quorum --key "$keys/gov.key" "${chain[@]}" 2 >/dev/null

node_port="$(free_port)"
node="http://127.0.0.1:$node_port"
start_node() {
  "$cairn" node serve --listen "127.0.0.1:$node_port" --hub "$hub" --data-dir "$work/node" \
    --key "$keys/node.key" --price 1000 --batch-max-age-secs 2 --redeem-every-secs 2 "${chain[@]}" \
    >>"$work/node.log" 2>&1 &
  pids[node]=$!
  for _ in $(seq 600); do curl -sf "$node/v2/health/ready" >/dev/null && return; sleep 0.1; done
  echo "soak: the node did not come up" >&2; tail -20 "$work/node.log" >&2; exit 1
}
start_node
"$cairn" node register --key "$keys/node.key" --stake 1000000000 --endpoint "$node" "${chain[@]}" >/dev/null

echo "soak: $secs s of paid traffic on $node; killing the node and a verifier meanwhile" >&2
"$soak" traffic "$node" "$rpc" "$keys" "$secs" &
traffic=$!
kills_node=0
kills_verifier=0
t=0
while kill -0 "$traffic" 2>/dev/null; do
  sleep 1
  t=$((t + 1))
  if [ $((t % 25)) -eq 0 ]; then
    kill -9 "${pids[node]}" 2>/dev/null || true
    wait "${pids[node]}" 2>/dev/null || true
    kills_node=$((kills_node + 1))
    sleep 2
    start_node
  fi
  if [ $((t % 40)) -eq 20 ]; then
    kill -9 "${pids[v1]}" 2>/dev/null || true
    wait "${pids[v1]}" 2>/dev/null || true
    kills_verifier=$((kills_verifier + 1))
    sleep 3
    start_verifier 1
  fi
done
wait "$traffic"
echo "soak: node killed $kills_node times, verifier 1 killed $kills_verifier times" >&2
"$soak" books "$node" "$rpc" "$keys" "$work/node"
