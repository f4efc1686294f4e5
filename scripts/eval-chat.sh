#!/usr/bin/env bash
# The chat entry's parser on its evaluation set (crates/cairn-entry/eval/chat-eval.jsonl):
# precision and recall of sub-tasks and of noise, and the task object's stability when an input
# is reordered or padded with chatter; for the rules alone, for the rules with the devnet's
# local language model (SmolLM2-135M under constrained decoding), and, when
# CAIRN_EVAL_UPSTREAM=URL (an OpenAI-compatible server) and CAIRN_EVAL_UPSTREAM_MODEL=NAME are
# set, with that upstream model relayed by a node.
#   scripts/eval-chat.sh            # builds cairn (release), starts a devnet, runs all three
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
source scripts/test-deps.sh
cargo build --release -p cairn-cli --quiet
bin="${CARGO_TARGET_DIR:-target}/release/cairn"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo "== rules only"
"$bin" entry eval

setsid "$bin" devnet --data-dir "$work/devnet" --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 \
  --rpc-listen 127.0.0.1:0 --relay-listen 127.0.0.1:0 --explorer-listen 127.0.0.1:0 \
  --entry-listen 127.0.0.1:0 --llm "$CAIRN_LLM_MODEL" --magika none --minilm none >"$work/devnet.log" 2>&1 &
pids+=($!)
for _ in $(seq 240); do grep -q "  entry:" "$work/devnet.log" && break; sleep 0.5; done
hub="$(awk '/  hub:/ {print $2}' "$work/devnet.log")"
node="$(awk '/  node:/ {print $2}' "$work/devnet.log")"
payer="$work/devnet/chain/payer.key"
[ -n "$node" ] || { cat "$work/devnet.log"; exit 1; }

echo "== rules + the devnet's local model"
"$bin" entry eval --hub "$hub" --node "$node" --payer-key "$payer" --llm smollm2-135m-instruct@1.0

if [ -n "${CAIRN_EVAL_UPSTREAM:-}" ] && [ -n "${CAIRN_EVAL_UPSTREAM_MODEL:-}" ]; then
  echo "== rules + upstream $CAIRN_EVAL_UPSTREAM_MODEL"
  setsid "$bin" node serve --listen 127.0.0.1:0 --hub "$hub" --data-dir "$work/relay-node" \
    --upstream "$CAIRN_EVAL_UPSTREAM_MODEL=$CAIRN_EVAL_UPSTREAM" --llm-free >"$work/relay-node.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 120); do grep -q "^node:" "$work/relay-node.log" && break; sleep 0.5; done
  relay_node="$(awk '/^node:/ {print $2}' "$work/relay-node.log")"
  "$bin" entry eval --hub "$hub" --node "$relay_node" --llm "$CAIRN_EVAL_UPSTREAM_MODEL"
else
  echo "== upstream: not run (set CAIRN_EVAL_UPSTREAM=URL and CAIRN_EVAL_UPSTREAM_MODEL=NAME)"
fi
