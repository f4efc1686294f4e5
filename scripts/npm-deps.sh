#!/usr/bin/env bash
# Installs the pinned npm tools (contracts/package-lock.json: solc-js, OpenZeppelin, anvil, cast; and the
# x402 interop clients of crates/cairn-cli/tests/npm; the explorer's front-end packages) into a
# cache dir outside the clone, keyed by the lockfile. Source it: it exports CAIRN_NODE_MODULES,
# CAIRN_ANVIL, CAIRN_CAST, CAIRN_NPM_INTEROP and CAIRN_EXPLORER_MODULES. `--ignore-scripts`:
# nothing runs at install time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
lock="$here/../contracts/package-lock.json"
npm_stamp="$(sha256sum "$lock" | cut -c1-16)"
npm_dir="$CAIRN_CACHE_DIR/npm-$npm_stamp"
if [ ! -f "$npm_dir/.complete" ]; then
  echo "npm-deps: installing into $npm_dir" >&2
  rm -rf "$npm_dir"
  mkdir -p "$npm_dir"
  cp "$here/../contracts/package.json" "$lock" "$npm_dir/"
  (cd "$npm_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$npm_dir/.complete"
fi
export CAIRN_NODE_MODULES="$npm_dir/node_modules"
export CAIRN_ANVIL="$CAIRN_NODE_MODULES/@foundry-rs/anvil-linux-amd64/bin/anvil"
export CAIRN_CAST="$CAIRN_NODE_MODULES/@foundry-rs/cast-linux-amd64/bin/cast"

# The official x402 TypeScript clients and resource server the interop tests drive
# (crates/cairn-cli/tests/npm/package-lock.json), in their own cache dir.
interop_lock="$here/../crates/cairn-cli/tests/npm/package-lock.json"
interop_dir="$CAIRN_CACHE_DIR/npm-interop-$(sha256sum "$interop_lock" | cut -c1-16)"
if [ ! -f "$interop_dir/.complete" ]; then
  echo "npm-deps: installing the x402 interop clients into $interop_dir" >&2
  rm -rf "$interop_dir"
  mkdir -p "$interop_dir"
  cp "$here/../crates/cairn-cli/tests/npm/package.json" "$interop_lock" "$interop_dir/"
  (cd "$interop_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$interop_dir/.complete"
fi
export CAIRN_NPM_INTEROP="$interop_dir/node_modules"

# The explorer's front-end toolchain (Vite, viem, marked, DOMPurify) and the browser driver its
# tests use (playwright-core, which drives Debian's chromium), from
# crates/cairn-explorer/web/package-lock.json, in their own cache dir.
explorer_lock="$here/../crates/cairn-explorer/web/package-lock.json"
explorer_dir="$CAIRN_CACHE_DIR/npm-explorer-$(sha256sum "$explorer_lock" | cut -c1-16)"
if [ ! -f "$explorer_dir/.complete" ]; then
  echo "npm-deps: installing the explorer's front-end packages into $explorer_dir" >&2
  rm -rf "$explorer_dir"
  mkdir -p "$explorer_dir"
  cp "$here/../crates/cairn-explorer/web/package.json" "$explorer_lock" "$explorer_dir/"
  (cd "$explorer_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$explorer_dir/.complete"
fi
export CAIRN_EXPLORER_MODULES="$explorer_dir/node_modules"
