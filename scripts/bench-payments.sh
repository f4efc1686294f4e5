#!/usr/bin/env bash
# Benchmark: what payment costs on the node. The digits MLP end to end on loopback (receipts
# signed and logged) three ways in one run: unpaid (a --free devnet), prepaid vouchers and
# x402 `exact` (EIP-3009, settled on the devnet's embedded chain before the output leaves),
# each at concurrency 1 and N; requests/s and p50/p99 as ratios to unpaid. Then the local
# verification cost of one payment (verify_bench).
# Usage: scripts/bench-payments.sh [SECONDS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conc="${2:-8}"
source scripts/test-deps.sh
work="$(mktemp -d /tmp/cairn-bench-pay.XXXXXX)"
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release --locked -p cairn-cli >&2
cargo build --release --locked -p cairn-node --example loadgen >&2
cargo build --release --locked -p cairn-x402 --example verify_bench >&2
bin="${CARGO_TARGET_DIR:-target}/release"
"$CAIRN_PY" scripts/bench/ort_baseline.py "$CAIRN_TEST_MODELS" "$work/in" >/dev/null
input="$work/in/digits_mlp.safetensors"

start_devnet() {
  RUST_LOG=warn "$bin/cairn" devnet --data-dir "$work/$1" --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 \
    --batch-max-age-secs 5 "${@:2}" >"$work/$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do grep -q "^Try:" "$work/$1.log" && break; sleep 0.1; done
  node="$(awk '/  node:/ {print $2}' "$work/$1.log")"
}
stop_devnet() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

start_devnet free --free
for c in 1 "$conc"; do
  "$bin/examples/loadgen" "$node/v2/models/digits@1.0/infer" "$input" "$c" "$secs" >"$work/unpaid-$c.json"
done
stop_devnet
start_devnet paid
key="$(awk '$1 == "6" {print $3}' "$work/paid.log")"
for mode in prepaid exact; do
  for c in 1 "$conc"; do
    LOADGEN_PAY="$mode" LOADGEN_PAYER_KEY="$key" \
      "$bin/examples/loadgen" "$node/v2/models/digits@1.0/infer" "$input" "$c" "$secs" >"$work/$mode-$c.json"
  done
done
stop_devnet
"$bin/examples/verify_bench" 20000 >"$work/verify.json"

"$CAIRN_PY" - "$work" "$conc" <<'PY'
import json, sys
w, conc = sys.argv[1], sys.argv[2]
print(f"{'mode':8} {'conc':>4} {'req/s':>8} {'p50':>10} {'p99':>10}  {'rps/unpaid':>10} {'p50/unpaid':>10} {'p99/unpaid':>10}")
for c in ["1", conc]:
    base = json.load(open(f"{w}/unpaid-{c}.json"))
    for mode in ["unpaid", "prepaid", "exact"]:
        r = json.load(open(f"{w}/{mode}-{c}.json"))
        print(f"{mode:8} {c:>4} {r['rps']:>8.0f} {r['p50_us']:>7.0f} µs {r['p99_us']:>7.0f} µs  "
              f"{r['rps']/base['rps']:>10.2f} {r['p50_us']/base['p50_us']:>10.2f} {r['p99_us']/base['p99_us']:>10.2f}  errors={r['errors']}")
v = json.load(open(f"{w}/verify.json"))
print()
print("local verification of one payment (no chain, no store), p50 / p99:")
print(f"  ecrecover libsecp256k1 {v['ecrecover']['p50_us']:.1f} / {v['ecrecover']['p99_us']:.1f} µs"
      f"   (k256: {v['ecrecover_k256']['p50_us']:.1f} / {v['ecrecover_k256']['p99_us']:.1f} µs, "
      f"{v['ecrecover']['k256_over_libsecp256k1_p50']:.1f}x slower)")
for k in ["exact", "prepaid"]:
    print(f"  {k:8} {v[k]['p50_us']:.1f} / {v[k]['p99_us']:.1f} µs   ({v[k]['ratio_p50_to_ecrecover']:.2f}x one ecrecover)")
PY
