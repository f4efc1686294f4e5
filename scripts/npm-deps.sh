#!/usr/bin/env bash
# Installs the pinned npm tools (contracts/package-lock.json: solc-js, OpenZeppelin, anvil, cast; and the
# x402 interop clients of crates/cairn-cli/tests/npm; the explorer's front-end packages) into a
# cache dir outside the clone, keyed by the lockfile. Source it: it exports CAIRN_NODE_MODULES,
# CAIRN_ANVIL, CAIRN_CAST, CAIRN_NPM_INTEROP and CAIRN_EXPLORER_MODULES. `--ignore-scripts`:
# nothing runs at install time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"

# npm_cached PREFIX DIR WHAT: DIR's package.json and lockfile installed once into
# $CAIRN_CACHE_DIR/PREFIX<lockfile hash>; prints its node_modules.
npm_cached() {
  local lock="$2/package-lock.json"
  local dir="$CAIRN_CACHE_DIR/$1$(sha256sum "$lock" | cut -c1-16)"
  if [ ! -f "$dir/.complete" ]; then
    echo "npm-deps: installing $3 into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$2/package.json" "$lock" "$dir/"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    touch "$dir/.complete"
  fi
  echo "$dir/node_modules"
}

CAIRN_NODE_MODULES="$(npm_cached npm- "$here/../contracts" "solc-js, OpenZeppelin, anvil and cast")"
export CAIRN_NODE_MODULES
export CAIRN_ANVIL="$CAIRN_NODE_MODULES/@foundry-rs/anvil-linux-amd64/bin/anvil"
export CAIRN_CAST="$CAIRN_NODE_MODULES/@foundry-rs/cast-linux-amd64/bin/cast"
# The official x402 TypeScript clients and resource server the interop tests drive.
CAIRN_NPM_INTEROP="$(npm_cached npm-interop- "$here/../crates/cairn-cli/tests/npm" "the x402 interop clients")"
export CAIRN_NPM_INTEROP
# The explorer's front-end toolchain (Vite, viem, marked, DOMPurify) and the browser driver its
# tests use (playwright-core, which drives Debian's chromium).
CAIRN_EXPLORER_MODULES="$(npm_cached npm-explorer- "$here/../crates/cairn-explorer/web" "the explorer's front-end packages")"
export CAIRN_EXPLORER_MODULES
