#!/usr/bin/env bash
# Benchmark 2: the node end to end on loopback, receipts signed and logged: requests/s and
# p50/p99 latency from a closed-loop load generator (same machine, so it competes for the 2
# cores), for the digits MLP and MiniLM-L3, and the per-request overhead = end-to-end p50 at
# concurrency 1 minus the engine's own p50 on the same input.
# Usage: scripts/bench-node.sh [SECONDS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conc="${2:-32}"
source scripts/test-deps.sh
work="$(mktemp -d /tmp/cairn-bench.XXXXXX)"
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release --locked -p cairn-cli >&2
cargo build --release --locked -p cairn-node --features ort --example loadgen --example bench_engines >&2
bin="${CARGO_TARGET_DIR:-target}/release"
"$CAIRN_PY" scripts/bench/ort_baseline.py "$CAIRN_TEST_MODELS" "$work/in" >/dev/null
"$bin/examples/bench_engines" "$CAIRN_TEST_MODELS" "$work/in" >"$work/engine.json"

RUST_LOG=warn "$bin/cairn" devnet --data-dir "$work/dn" --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 >"$work/devnet.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "  node:" "$work/devnet.log" && break; sleep 0.1; done
hub="$(awk '/  hub:/ {print $2}' "$work/devnet.log")"
node="$(awk '/  node:/ {print $2}' "$work/devnet.log")"
CAIRN_KEY_FILE="$work/key" "$bin/cairn" hub push "$CAIRN_TEST_MODELS/minilm_l3.onnx" --repo minilm --version 1.0 --hub "$hub" >/dev/null 2>&1

for m in "digits_mlp digits@1.0" "minilm_l3 minilm@1.0"; do
  set -- $m
  for c in 1 "$conc"; do
    "$bin/examples/loadgen" "$node/v2/models/$2/infer" "$work/in/$1.safetensors" "$c" "$secs" >"$work/$1-$c.json"
  done
done
"$CAIRN_PY" - "$work" "$conc" <<'PY'
import json, sys
w, conc = sys.argv[1], sys.argv[2]
eng = json.load(open(f"{w}/engine.json"))["tract"]
print(f"{'model':12} {'conc':>4} {'req/s':>9} {'p50':>10} {'p99':>10} {'engine p50':>11} {'overhead p50':>13}")
for m in ["digits_mlp", "minilm_l3"]:
    for c in ["1", conc]:
        r = json.load(open(f"{w}/{m}-{c}.json"))
        e = eng[m]["p50_us"]
        over = f"{r['p50_us'] - e:>10.0f} µs" if c == "1" else ""
        print(f"{m:12} {c:>4} {r['rps']:>9.0f} {r['p50_us']:>7.0f} µs {r['p99_us']:>7.0f} µs {e:>8.0f} µs {over:>13}  errors={r['errors']}")
PY
