"""Writes the node benchmark's request bodies: for each model, KServe v2 JSON (`<model>.json`, what
wrk sends to both servers) and the same tensors as safetensors (`<model>.safetensors`).

Usage: bodies.py OUT_DIR
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tensorfile import write_safetensors  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
CASES = {
    "digits_mlp": {"X": rng.uniform(0, 16, (1, 64)).astype(np.float32)},
    "minilm_l3": {"input_ids": rng.integers(1000, 5000, (1, 32)).astype(np.int64),
                  "attention_mask": np.ones((1, 32), dtype=np.int64)},
}
KINDS = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
for name, feeds in CASES.items():
    write_safetensors(os.path.join(out, f"{name}.safetensors"), feeds.items())
    body = {"inputs": [{"name": k, "datatype": KINDS[v.dtype], "shape": list(v.shape),
                        "data": v.reshape(-1).tolist()} for k, v in feeds.items()]}
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(body, f)
