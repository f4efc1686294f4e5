#!/usr/bin/env bash
# The node against the server a user would otherwise run, side by side in one run: a Cairn node
# (`cairn node serve` on the devnet's hub: tract, every answer carries a receipt signed for that
# request and committed to the node's log before the answer leaves) and the peer
# (scripts/bench/peer.py: FastAPI + onnxruntime, one worker, one ORT thread, no signature, no
# log), with the same model files, the same KServe v2 JSON bodies and the same load generator
# (wrk, closed loop, on loopback, so it shares this machine's cores). Cairn runs twice per row:
# with per-request receipts (the default) and with batch-signed receipts (header
# `cairn-receipt-seal: batch`: one signature per group commit). Peer and node alternate per row,
# RUNS times over. Prints per row p50/p99/answers per second and the ratios Cairn/peer, the
# CPU time each server spent per answer, the overload rows (completed inferences/s and 503s/s at
# 512 and 2,048 connections, and the admitted requests' p99 there against 16 connections, timed by
# crates/cairn-node/examples/loadgen.rs: by the flood's own client, and by a probe of 8
# connections joining it once it is under way, whose timing a flood client's one thread
# serving thousands of connections does not delay), the node's peak RSS, and how much CPU the hypervisor stole meanwhile
# (on a shared VM the figures swing with it; compare within a run). The node runs its default
# CPU tier (`generic`: portable, reproducible by any verifier); the peer's onnxruntime uses every
# SIMD extension this CPU has. CAIRN_BENCH_NODE_ARGS adds flags to `cairn node serve`.
# Usage: scripts/bench-node.sh [SECONDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
runs="${2:-3}"
source scripts/test-deps.sh
source scripts/bench/deps.sh
work="$(mktemp -d /tmp/cairn-bench.XXXXXX)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$work"' EXIT
cargo build --release --locked -p cairn-cli >&2
cargo build --release --locked -p cairn-node --example loadgen >&2
bin="${CARGO_TARGET_DIR:-target}/release"
"$CAIRN_PY" scripts/bench/bodies.py "$work/in"

# The same model files for both: the devnet's own digits MLP, and MiniLM-L3 pushed to its hub.
mkdir -p "$work/models"
cp crates/cairn-cli/assets/digits_mlp.onnx "$work/models/digits.onnx"
cp "$CAIRN_TEST_MODELS/minilm_l3.onnx" "$work/models/minilm.onnx"

wait_for() { # FILE PATTERN
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  cat "$1" >&2; return 1
}
RUST_LOG=warn "$bin/cairn" devnet --data-dir "$work/dn" --listen 127.0.0.1:0 --node-listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --relay-listen 127.0.0.1:0 --explorer-listen 127.0.0.1:0 --entry-listen 127.0.0.1:0 --magika none --minilm none \
  >"$work/devnet.log" 2>&1 &
pids+=("$!")
wait_for "$work/devnet.log" "  node:"
hub="$(awk '/  hub:/ {print $2}' "$work/devnet.log")"
CAIRN_KEY_FILE="$work/key" "$bin/cairn" hub push "$work/models/minilm.onnx" --repo minilm --version 1.0 --hub "$hub" >/dev/null 2>&1
RUST_LOG=warn "$bin/cairn" node serve --listen 127.0.0.1:0 --hub "$hub" --data-dir "$work/node" \
  ${CAIRN_BENCH_NODE_ARGS:-} >"$work/node.log" 2>&1 &
node_pid=$!
pids+=("$node_pid")
"$CAIRN_PEER_PY" scripts/bench/peer.py "$work/models" "$work/peer.port" 2>"$work/peer.log" &
peer_pid=$!
pids+=("$peer_pid")
wait_for "$work/node.log" "^node:"
for _ in $(seq 300); do [ -f "$work/peer.port" ] && break; sleep 0.1; done
node="$(awk '/^node:/ {print $2}' "$work/node.log")"
peer="http://127.0.0.1:$(cat "$work/peer.port")"

body_of() { case "$1" in digits) echo "$work/in/digits_mlp.json" ;; minilm) echo "$work/in/minilm_l3.json" ;; esac; }
url_of() { case "$1" in cairn*) echo "$node/v2/models/$2@1.0/infer" ;; peer) echo "$peer/v2/models/$2/infer" ;; esac; }
pid_of() { case "$1" in cairn*) echo "$node_pid" ;; peer) echo "$peer_pid" ;; esac; }
seal_of() { case "$1" in cairnb) echo batch ;; *) echo own ;; esac; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
steal_ticks() { awk '/^cpu / {print $9}' /proc/stat; }
warm() { # MODEL: the node loads a model on its first use
  for who in cairn peer; do
    curl -fsS -o /dev/null -H 'content-type: application/json' --data-binary @"$(body_of "$1")" "$(url_of $who "$1")"
  done
}

load() { # WHO MODEL CONNECTIONS RUN
  local threads=$(( $3 < 2 ? 1 : 2 )) p c0 s0
  p="$(pid_of "$1")"; c0="$(cpu_ticks "$p")"; s0="$(steal_ticks)"
  WRK_SEAL="$(seal_of "$1")" WRK_BODY="$(body_of "$2")" wrk -t"$threads" -c"$3" -d"$secs"s --timeout 10s -s scripts/bench/post.lua \
    "$(url_of "$1" "$2")" | tail -n 1 >"$work/$1-$2-$3-$4.json"
  echo "{\"cpu_ticks\": $(( $(cpu_ticks "$p") - c0 )), \"steal_ticks\": $(( $(steal_ticks) - s0 ))}" >"$work/$1-$2-$3-$4.cpu.json"
}
# The node's memory serving the digits MLP alone at 16 connections (before MiniLM is loaded).
warm digits
WRK_BODY="$(body_of digits)" wrk -t2 -c16 -d"$secs"s -s scripts/bench/post.lua "$(url_of cairn digits)" >/dev/null
grep VmHWM "/proc/$node_pid/status" | awk '{print $2}' >"$work/rss-digits"
warm minilm

for run in $(seq "$runs"); do
  for row in "digits 1" "digits 16" "digits 64" "minilm 1" "minilm 16" "digits 512" "digits 2048"; do
    set -- $row
    load peer "$1" "$2" "$run"
    load cairn "$1" "$2" "$run"
    if [ "$2" -le 64 ]; then load cairnb "$1" "$2" "$run"; fi
  done
  # The admitted requests' own latency under the floods (wrk times 503s and answers together):
  # loadgen times only the answered ones, the same KServe request in binary form.
  for c in 16 512 2048; do
    LOADGEN_ANNOUNCE=1 "$bin/examples/loadgen" "$(url_of cairn digits)" "$work/in/digits_mlp.safetensors" "$c" "$secs" \
      >"$work/lg-$c-$run.json" 2>"$work/lg-$c-$run.err" &
    flood=$!
    if [ "$c" -gt 16 ]; then
      # A client joining the flood once its clock runs (no warm-up: it would be held like the
      # flood's refusals), for a second less than the flood.
      for _ in $(seq 1200); do grep -q measuring "$work/lg-$c-$run.err" && break; sleep 0.05; done
      LOADGEN_WARMUP=0 "$bin/examples/loadgen" "$(url_of cairn digits)" "$work/in/digits_mlp.safetensors" 8 \
        "$(( secs > 1 ? secs - 1 : 1 ))" >"$work/probe-$c-$run.json"
    fi
    wait "$flood"
  done
  grep VmHWM "/proc/$node_pid/status" | awk '{print $2}' >"$work/rss-$run"
done

"$CAIRN_PY" - "$work" "$runs" "$secs" "$(getconf CLK_TCK)" "$(nproc)" <<'PY'
import json, sys
w, runs, secs, hz, cpus = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def r(who, m, c, run):
    d = json.load(open(f"{w}/{who}-{m}-{c}-{run}.json"))
    d.update(json.load(open(f"{w}/{who}-{m}-{c}-{run}.cpu.json")))
    d["cpu_us"] = d["cpu_ticks"] * 1e6 / hz / max(d["requests"], 1)
    d["steal"] = d["steal_ticks"] / (hz * cpus * secs)
    return d
for run in range(1, runs + 1):
    print(f"run {run}")
    print(f"  {'model':6} {'conc':>4} | {'peer p50':>8} {'p99':>8} {'ans/s':>6} {'cpu/ans':>7} | {'cairn p50':>9} {'p99':>8} {'ans/s':>6} {'cpu/ans':>7} | {'p50 x':>5} {'p99 x':>5} {'ans/s x':>7} | {'batch p50':>9} {'p99':>8} {'ans/s':>6} {'cpu/ans':>7} | {'p50 x':>5} {'p99 x':>5} {'ans/s x':>7} | steal")
    for m, c in [("digits", 1), ("digits", 16), ("digits", 64), ("minilm", 1), ("minilm", 16)]:
        p, n, b = r("peer", m, c, run), r("cairn", m, c, run), r("cairnb", m, c, run)
        errs = sum(x["non2xx"] + x["socket_errors"] for x in (p, n, b))
        bad = "" if errs == 0 else \
            f"  errors peer={p['non2xx']}+{p['socket_errors']} cairn={n['non2xx']}+{n['socket_errors']} batch={b['non2xx']}+{b['socket_errors']}"
        cols = lambda x: f"{x['p50_us']:>6.0f} µs {x['p99_us']/1e3:>5.1f} ms {x['ok_rps']:>6.0f} {x['cpu_us']:>4.0f} µs"
        ratios = lambda x: f"{x['p50_us']/p['p50_us']:>5.2f} {x['p99_us']/p['p99_us']:>5.2f} {x['ok_rps']/p['ok_rps']:>7.2f}"
        print(f"  {m:6} {c:>4} | {p['p50_us']:>5.0f} µs {p['p99_us']/1e3:>5.1f} ms {p['ok_rps']:>6.0f} {p['cpu_us']:>4.0f} µs | "
              f"{cols(n)} | {ratios(n)} | {cols(b)} | {ratios(b)} | "
              f"{p['steal']:.0%}/{n['steal']:.0%}/{b['steal']:.0%}{bad}")
    base = r("cairn", "digits", 16, run)["ok_rps"]
    print("  overload, digits (done = 200 answers; p99 over every answer, 503s included):")
    for c in [512, 2048]:
        p, n = r("peer", "digits", c, run), r("cairn", "digits", c, run)
        print(f"  {c:>5} conns | peer {p['ok_rps']:>5.0f}/s done, p99 {p['p99_us']/1e3:>6.0f} ms, {p['socket_errors']} socket errors"
              f" | cairn {n['ok_rps']:>5.0f}/s done = {n['ok_rps']/base:.2f}x its c=16, {n['non2xx']/n['secs']:>5.0f}/s refused,"
              f" p99 {n['p99_us']/1e3:>6.0f} ms, {n['socket_errors']} socket errors | done x peer {n['ok_rps']/max(p['ok_rps'], 1):.2f}"
              f" | steal {p['steal']:.0%}/{n['steal']:.0%}")
    lg = {c: json.load(open(f"{w}/lg-{c}-{run}.json")) for c in (16, 512, 2048)}
    print(f"  admitted p99 (loadgen, answered requests only): {lg[16]['p99_us']/1e3:.1f} ms at 16 connections; "
          + "; ".join(f"{lg[c]['p99_us']/1e3:.1f} ms = {lg[c]['p99_us']/lg[16]['p99_us']:.2f}x at {c} ({lg[c]['errors']} refused)" for c in (512, 2048)))
    pr = {c: json.load(open(f"{w}/probe-{c}-{run}.json")) for c in (512, 2048)}
    print("  admitted p99, probe of 8 connections beside the flood: "
          + "; ".join(f"{pr[c]['p99_us']/1e3:.1f} ms = {pr[c]['p99_us']/lg[16]['p99_us']:.2f}x at {c} ({pr[c]['ok']} answered, {pr[c]['errors']} refused)" for c in (512, 2048)))
    rss = int(open(f"{w}/rss-{run}").read())
    print(f"  node peak RSS so far: {rss/1024:.0f} MB")
print(f"node peak RSS serving the digits MLP alone at 16 connections: {int(open(f'{w}/rss-digits').read())/1024:.0f} MB")
PY
