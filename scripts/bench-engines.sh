#!/usr/bin/env bash
# Benchmark 1: per-model p50 latency of Cairn's engines (tract, and onnxruntime through `ort`)
# against Python onnxruntime, same models, same inputs, one thread, same machine, one run.
# Prints a table of p50s and ratios (engine / Python onnxruntime; below 1 is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-deps.sh
out="$(mktemp -d /tmp/cairn-bench.XXXXXX)"
trap 'rm -rf "$out"' EXIT
cargo build --release --locked -p cairn-node --features ort --example bench_engines >&2
"$CAIRN_PY" scripts/bench/ort_baseline.py "$CAIRN_TEST_MODELS" "$out" >"$out/python.json"
"${CARGO_TARGET_DIR:-target}/release/examples/bench_engines" "$CAIRN_TEST_MODELS" "$out" "$ORT_DYLIB_PATH" >"$out/rust.json"
"$CAIRN_PY" - "$out/python.json" "$out/rust.json" <<'PY'
import json, sys
py = json.load(open(sys.argv[1])); rs = json.load(open(sys.argv[2]))
print(f"{'model':18} {'onnxruntime (Python)':>21} {'tract':>12} {'ratio':>7} {'cairn-ort':>12} {'ratio':>7}")
for m, base in py.items():
    t = rs["tract"][m]["p50_us"]; o = rs.get("cairn-ort", {}).get(m, {}).get("p50_us")
    row = f"{m:18} {base['p50_us']:>18.1f} µs {t:>9.1f} µs {t / base['p50_us']:>6.2f}x"
    if o is not None:
        row += f" {o:>9.1f} µs {o / base['p50_us']:>6.2f}x"
    print(row)
PY
