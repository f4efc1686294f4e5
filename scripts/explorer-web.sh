#!/usr/bin/env bash
# Builds the explorer's web pages (crates/cairn-explorer/web, Vite) offline from the lockfile's
# packages (scripts/npm-deps.sh) into web/dist, which is committed and embedded in the cairn
# binary, so building or running cairn never needs Node.js.
#   scripts/explorer-web.sh          rebuild web/dist after changing web/src
#   scripts/explorer-web.sh --check  fail when web/dist is not what the sources build to
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
web="$here/../crates/cairn-explorer/web"
if [ -z "${CAIRN_EXPLORER_MODULES:-}" ]; then source "$here/npm-deps.sh"; fi
# Vite resolves packages from the project's own node_modules: point it at the cached install.
if [ ! -e "$web/node_modules" ]; then ln -s "$CAIRN_EXPLORER_MODULES" "$web/node_modules"; fi
vite="$web/node_modules/vite/bin/vite.js"
if [ "${1:-}" = "--check" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
  (cd "$web" && node "$vite" build --logLevel error --outDir "$out" --emptyOutDir)
  if ! diff -r "$web/dist" "$out" >/dev/null; then
    echo "crates/cairn-explorer/web/dist is not what web/src builds to: run scripts/explorer-web.sh and commit web/dist" >&2
    diff -r "$web/dist" "$out" | head -20 >&2
    exit 1
  fi
else
  (cd "$web" && node "$vite" build --logLevel warn)
fi
