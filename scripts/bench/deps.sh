#!/usr/bin/env bash
# Installs what the node benchmark runs beside Cairn, pinned and cached outside the clone:
# the peer's venv (scripts/bench/requirements.txt) and wrk (Debian). Source it: it exports
# CAIRN_PEER_PY.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
stamp="$(sha256sum "$here/requirements.txt" | cut -c1-16)"
venv="$CAIRN_CACHE_DIR/peer-venv-$stamp"
source "$here/../venv.sh"
cairn_venv "$venv" "$here/requirements.txt"
export CAIRN_PEER_PY="$venv/bin/python"
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench deps: installing wrk from Debian" >&2
  if [ "$(id -u)" = 0 ]; then sudo_cmd=""; else sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq wrk >/dev/null
fi
