#!/usr/bin/env bash
# What verification costs: receipt checks per second per core (beside the node signing them), and
# the verifier's work per call at a sampling rate as a fraction of the node's inference work, for
# the digits MLP and MiniLM-L3.
#   scripts/bench-verification.sh [RATE]      (default 0.05)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-deps.sh >/dev/null
cargo run --release --locked -q -p cairn-verifier --example verification_cost -- \
  "$CAIRN_TEST_MODELS" "${1:-0.05}"
