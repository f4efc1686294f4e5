#!/usr/bin/env bash
# Gas per settled receipt (batches of 1 / 100 / 1,000 / 10,000), per prepaid request (one voucher
# redemption for 1 / 100 / 10,000 requests), per-request EIP-3009 (`exact`) and Permit2 (`upto`)
# payments, x402 `batch-settlement` (one channel's deposit, claim and sweep for 1 / 100 / 10,000
# requests; one claim transaction for 1 / 10 / 100 channels), and sequential
# transactions per second — on the embedded ledger and on anvil side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/npm-deps.sh
cargo run --release --locked -p cairn-ledger --example gas_table
