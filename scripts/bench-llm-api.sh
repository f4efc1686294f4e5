#!/usr/bin/env bash
# The OpenAI-compatible API of a Cairn node on its language model, against the bare engine in
# the same run: a release `cairn devnet --free` serves SmolLM2-135M; a streaming client times the
# first token and the decode rate (scripts/bench/llm_api_client.py); the engine alone
# (cairn-llm's llm_bench, one thread) runs the same token counts; and the node's own work per
# call (rendering, hashing, signing) and a verifier's replay are timed in process
# (cairn-node's llm_call_cost example). Prints JSON lines and the ratios.
#   scripts/bench-llm-api.sh [MAX_TOKENS] [RUNS]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
source "$here/test-deps.sh" >/dev/null
gen="${1:-64}"; runs="${2:-5}"
model="$("$here/llm-model.sh")"
cargo build --release --locked --quiet -p cairn-cli
cargo build --release --locked --quiet -p cairn-llm --example llm_bench
cargo build --release --locked --quiet -p cairn-node --example llm_call_cost
target="${CARGO_TARGET_DIR:-$here/../target}/release"
dir="$(mktemp -d)"
log="$dir/devnet.log"
"$target/cairn" devnet --data-dir "$dir/data" --free --llm "$model" \
  --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --relay-listen 127.0.0.1:0 --explorer-listen 127.0.0.1:0 --entry-listen 127.0.0.1:0 --magika none --minilm none >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 120); do grep -q '^  node:' "$log" && break; sleep 0.5; done
node_url="$(awk '/^  node:/ {print $2; exit}' "$log")"
echo "node: $node_url"
api="$("$CAIRN_PY" "$here/bench/llm_api_client.py" "$node_url" smollm2-135m-instruct@1.0 "$gen" "$runs")"
echo "$api"
kill $pid; wait $pid 2>/dev/null || true
prompt="$(echo "$api" | head -1 | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["prompt_tokens"])')"
engine="$(for _ in $(seq 1 "$runs"); do "$target/examples/llm_bench" "$model" "$prompt" "$gen" 1; done)"
echo "$engine"
python3 - "$api" "$engine" <<'PY'
import json, statistics, sys
api = [json.loads(l) for l in sys.argv[1].splitlines()]
eng = [json.loads(l) for l in sys.argv[2].splitlines()]
dec = statistics.median(a["decode_tok_s"] for a in api)
ttft = statistics.median(a["ttft_s"] for a in api)
gen = statistics.median(e["gen_tok_s"] for e in eng)
pp = statistics.median(e["prompt_tok_s"] for e in eng)
prompt = api[0]["prompt_tokens"]
print(f"medians: API decode {dec:.1f} tok/s vs engine {gen:.1f} tok/s = {dec/gen:.3f}x; "
      f"time to first token {ttft*1000:.0f} ms (engine prompt of {prompt} tokens + one token: "
      f"{(prompt/pp + 1/gen)*1000:.0f} ms)")
PY
"$target/examples/llm_call_cost" "$model" "$gen" "$runs" | tail -1
