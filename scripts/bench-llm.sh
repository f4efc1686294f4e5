#!/usr/bin/env bash
# LLM speed at batch 1: cairn-llm beside llama.cpp (prebuilt, node-llama-cpp 3.21.1,
# pinned by scripts/bench/llm/package-lock.json) on the same model, prompt and token counts, in
# the same run, on the same thread count (1, then 2). Prints each engine's JSON line and the ratios.
#   scripts/bench-llm.sh [PROMPT_TOKENS] [GEN_TOKENS] [RUNS] [THREAD_COUNTS]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
prompt="${1:-128}"; gen="${2:-64}"; runs="${3:-3}"; thread_counts="${4:-1 2}"
model="$("$here/llm-model.sh")"
lock="$here/bench/llm/package-lock.json"
dir="$CAIRN_CACHE_DIR/npm-llm-$(sha256sum "$lock" | cut -c1-16)"
if [ ! -f "$dir/.complete" ]; then
  echo "bench-llm: installing node-llama-cpp into $dir" >&2
  rm -rf "$dir"; mkdir -p "$dir"
  cp "$here/bench/llm/package.json" "$lock" "$dir/"
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$dir/.complete"
fi
cargo build --release --quiet -p cairn-llm --example llm_bench
bin="${CARGO_TARGET_DIR:-$here/../target}/release/examples/llm_bench"
for threads in $thread_counts; do
for run in $(seq 1 "$runs"); do
  ours="$("$bin" "$model" "$prompt" "$gen" "$threads")"
  theirs="$(cd "$dir" && node "$here/bench/llm_llama_cpp.mjs" "$model" "$prompt" "$gen" "$threads")"
  echo "threads $threads, run $run"
  echo "  $ours"
  echo "  $theirs"
  python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"  ratio cairn/llama.cpp: prompt {a['prompt_tok_s']/b['prompt_tok_s']:.2f}x, generation {a['gen_tok_s']/b['gen_tok_s']:.2f}x")
PY
done
done
