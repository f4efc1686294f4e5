#!/usr/bin/env bash
# Installs the ONNX Runtime shared library for `cairn node serve --engine onnxruntime`: the pinned
# PyPI wheel is downloaded (no dependencies, nothing built) into a cache dir and the library is
# extracted from it. Prints the library path; use it as --ort-library or ORT_DYLIB_PATH.
set -euo pipefail
version="1.31.1"
cache="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}/onnxruntime-$version"
lib="$cache/libonnxruntime.so.$version"
if [ ! -f "$lib" ]; then
  mkdir -p "$cache"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$tmp" "onnxruntime==$version" >&2
  python3 - "$tmp" "$lib" "$version" <<'PY'
import glob, shutil, sys, zipfile
tmp, lib, version = sys.argv[1:]
wheel = glob.glob(f"{tmp}/onnxruntime-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/libonnxruntime.so.{version}") as src, open(lib + ".partial", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$lib.partial" "$lib"
fi
echo "$lib"
