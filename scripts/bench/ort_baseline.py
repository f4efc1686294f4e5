"""Baseline for scripts/bench-engines.sh: writes each model's benchmark input as safetensors and
times Python onnxruntime on it (1 intra-op thread, ORT_ENABLE_ALL, sequential), printing JSON
{model: {"p50_us": .., "p99_us": .., "n": ..}}.

Usage: ort_baseline.py MODELS_DIR OUT_DIR
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tensorfile import write_safetensors  # noqa: E402

models, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
CASES = {
    "digits_mlp": (20000, {"X": rng.uniform(0, 16, (1, 64)).astype(np.float32)}),
    "magika": (1000, {"bytes": rng.integers(0, 257, (1, 2048)).astype(np.int32)}),
    "minilm_l3": (300, {"input_ids": rng.integers(1000, 5000, (1, 32)).astype(np.int64),
                        "attention_mask": np.ones((1, 32), dtype=np.int64)}),
    "light_squeezenet": (300, {"data_0": rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)}),
}
results = {}
for name, (n, feeds) in CASES.items():
    write_safetensors(os.path.join(out, f"{name}.safetensors"), feeds.items())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(os.path.join(models, f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
    for _ in range(max(10, n // 20)):
        sess.run(None, feeds)
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append(time.perf_counter_ns() - t)
    times.sort()
    results[name] = {"p50_us": times[n // 2] / 1e3, "p99_us": times[n * 99 // 100] / 1e3, "n": n}
print(json.dumps(results))
