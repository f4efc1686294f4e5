"""Builds the real test models and records how onnxruntime sees their signatures.

Usage: make_test_models.py OUT_DIR

- light_squeezenet.onnx: from the onnx package's backend test data (real architecture).
- digits_mlp.onnx: an sklearn MLP trained on sklearn's bundled digits, converted by skl2onnx
  (zipmap=False so outputs are plain tensors), plus its held-out split for accuracy checks.
For each, NAME.ort.json holds onnxruntime's inputs/outputs: name, type, shape.
"""
import json
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

squeeze = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_squeezenet.onnx")
shutil.copyfile(squeeze, os.path.join(out, "light_squeezenet.onnx"))

digits = load_digits()
x = digits.data.astype(np.float32)
x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0)
clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0).fit(x_train, y_train)
model = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
with open(os.path.join(out, "digits_mlp.onnx"), "wb") as f:
    f.write(model.SerializeToString())
np.save(os.path.join(out, "digits_test_x.npy"), x_test)
np.save(os.path.join(out, "digits_test_y.npy"), y_test)
print(f"digits MLP held-out accuracy: {clf.score(x_test, y_test):.4f}", file=sys.stderr)


def describe(values):
    return [{"name": v.name, "type": v.type, "shape": list(v.shape)} for v in values]


for name in ["light_squeezenet", "digits_mlp"]:
    sess = ort.InferenceSession(os.path.join(out, f"{name}.onnx"), providers=["CPUExecutionProvider"])
    with open(os.path.join(out, f"{name}.ort.json"), "w") as f:
        json.dump({"inputs": describe(sess.get_inputs()), "outputs": describe(sess.get_outputs())}, f, indent=1)
