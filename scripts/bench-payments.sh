#!/usr/bin/env bash
# Benchmark: what payment costs on the node. The digits MLP end to end on loopback (receipts
# signed and logged) five ways in one run: unpaid (a --free devnet), prepaid vouchers, x402
# `batch-settlement` vouchers (a channel deposit per connection first), x402 `exact`
# (EIP-3009) and x402 `upto` (a Permit2 permit; the payer approves Permit2 once with `cast`
# through the devnet's JSON-RPC), the last two settled on the devnet's embedded chain before
# the output leaves, each at concurrency 1 and N; requests/s and p50/p99 as ratios to unpaid. Then the local
# verification cost of one payment (verify_bench).
# Usage: scripts/bench-payments.sh [SECONDS] [CONCURRENCY] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conc="${2:-8}"
rounds="${3:-3}"
source scripts/test-deps.sh
source scripts/npm-deps.sh
work="$(mktemp -d /tmp/cairn-bench-pay.XXXXXX)"
pids=""
trap '[ -n "$pids" ] && kill $pids 2>/dev/null; rm -rf "$work"' EXIT
cargo build --release --locked -p cairn-cli >&2
cargo build --release --locked -p cairn-node --example loadgen >&2
cargo build --release --locked -p cairn-x402 --example verify_bench >&2
bin="${CARGO_TARGET_DIR:-target}/release"
"$CAIRN_PY" scripts/bench/ort_baseline.py "$CAIRN_TEST_MODELS" "$work/in" >/dev/null
input="$work/in/digits_mlp.safetensors"

start_devnet() {
  RUST_LOG=warn "$bin/cairn" devnet --data-dir "$work/$1" --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --relay-listen 127.0.0.1:0 --explorer-listen 127.0.0.1:0 --entry-listen 127.0.0.1:0 --magika none --minilm none \
    --batch-max-age-secs 5 "${@:2}" >"$work/$1.log" 2>&1 &
  pids="$pids $!"
  for _ in $(seq 300); do grep -q "^Try:" "$work/$1.log" && break; sleep 0.1; done
}
node_of() { awk '/  node:/ {print $2}' "$work/$1.log"; }

stop_devnet() { kill $pids; wait $pids 2>/dev/null || true; pids=""; }

# One devnet at a time (a second one's settlement work would fall on the other's runs), the
# modes taking turns round after round, so a change in the machine's speed (a shared VM) falls
# on every mode alike; each ratio is the median of the rounds' ratios.
pids=""
for r in $(seq "$rounds"); do
  start_devnet free --free
  free="$(node_of free)/v2/models/digits@1.0/infer"
  for c in 1 "$conc"; do
    "$bin/examples/loadgen" "$free" "$input" "$c" "$secs" >"$work/unpaid-$c-$r.json"
  done
  stop_devnet
  start_devnet paid
  paid="$(node_of paid)/v2/models/digits@1.0/infer"
  key="$(awk '$1 == "6" {print $3}' "$work/paid.log")"
  rpc="$(awk '/  chain rpc:/ {print $NF}' "$work/paid.log")"
  token="$(awk '/  token:/ {print $2}' "$work/paid.log")"
  "$CAIRN_CAST" send --rpc-url "$rpc" --private-key "$key" "$token" \
    "approve(address,uint256)" 0x000000000022D473030F116dDEE9F6B43aC78BA3 \
    115792089237316195423570985008687907853269984665640564039457584007913129639935 >/dev/null
  for c in 1 "$conc"; do
    for mode in prepaid batch-settlement exact upto; do
      LOADGEN_PAY="$mode" LOADGEN_PAYER_KEY="$key" \
        "$bin/examples/loadgen" "$paid" "$input" "$c" "$secs" >"$work/$mode-$c-$r.json"
    done
  done
  stop_devnet
done
"$bin/examples/verify_bench" 20000 >"$work/verify.json"

"$CAIRN_PY" - "$work" "$conc" "$rounds" <<'PY'
import json, statistics, sys
w, conc, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda mode, c, r: json.load(open(f"{w}/{mode}-{c}-{r}.json"))
print(f"{rounds} rounds, modes taking turns; figures are medians over the rounds, ratios the median of each round's ratio to unpaid")
print(f"{'mode':16} {'conc':>4} {'req/s':>8} {'p50':>10} {'p99':>10}  {'rps/unpaid':>10} {'p50/unpaid':>10} {'p99/unpaid':>10}")
for c in ["1", conc]:
    for mode in ["unpaid", "prepaid", "batch-settlement", "exact", "upto"]:
        rs = [load(mode, c, r) for r in range(1, rounds + 1)]
        bs = [load("unpaid", c, r) for r in range(1, rounds + 1)]
        med = lambda k: statistics.median(x[k] for x in rs)
        ratio = lambda k: statistics.median(x[k] / b[k] for x, b in zip(rs, bs))
        errors = sum(x["errors"] for x in rs)
        print(f"{mode:16} {c:>4} {med('rps'):>8.0f} {med('p50_us'):>7.0f} µs {med('p99_us'):>7.0f} µs  "
              f"{ratio('rps'):>10.2f} {ratio('p50_us'):>10.2f} {ratio('p99_us'):>10.2f}  errors={errors}")
v = json.load(open(f"{w}/verify.json"))
print()
print("local verification of one payment (no chain, no store), p50 / p99:")
print(f"  ecrecover libsecp256k1 {v['ecrecover']['p50_us']:.1f} / {v['ecrecover']['p99_us']:.1f} µs"
      f"   (k256: {v['ecrecover_k256']['p50_us']:.1f} / {v['ecrecover_k256']['p99_us']:.1f} µs, "
      f"{v['ecrecover']['k256_over_libsecp256k1_p50']:.1f}x slower)")
for k in ["exact", "prepaid"]:
    print(f"  {k:8} {v[k]['p50_us']:.1f} / {v[k]['p99_us']:.1f} µs   ({v[k]['ratio_p50_to_ecrecover']:.2f}x one ecrecover)")
st = v["prepaid_store"]
print("the payment store's step of one prepaid call (take, then count), p50 / p99:")
for k in ["process", "power"]:
    print(f"  --receipt-durability {k:7} {st[k]['p50_us']:.1f} / {st[k]['p99_us']:.1f} µs")
PY
