#!/usr/bin/env bash
# Compiles contracts/src with the pinned solc-js into contracts/artifacts.
#   scripts/contracts.sh build   rewrite the artifacts (commit them)
#   scripts/contracts.sh check   fail when a committed artifact does not match its source
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/npm-deps.sh
mode="${1:-build}"
case "$mode" in
  build) node contracts/compile.mjs --modules "$CAIRN_NODE_MODULES" ;;
  check) node contracts/compile.mjs --check --modules "$CAIRN_NODE_MODULES" ;;
  *) echo "usage: scripts/contracts.sh build|check" >&2; exit 2 ;;
esac
