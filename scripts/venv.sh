#!/usr/bin/env bash
# Sourced by the scripts that need a pinned Python venv: `cairn_venv DIR REQUIREMENTS` creates
# DIR from REQUIREMENTS unless a complete one is already there (the `.complete` marker is written
# last, so an interrupted install is redone).
cairn_venv() {
  local venv="$1" req="$2"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "venv: creating $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    touch "$venv/.complete"
  fi
}
