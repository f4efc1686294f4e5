"""The peer baseline: the inference server a user would otherwise run. FastAPI + onnxruntime, one
uvicorn worker, one ORT thread, serving the KServe v2 JSON route for the models in a directory,
with no signature and no log (scripts/bench-node.sh runs it beside a Cairn node).

Usage: peer.py MODELS_DIR PORT_FILE     (binds 127.0.0.1:0 and writes the port to PORT_FILE)
"""
import os
import socket
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request

DTYPES = {
    "FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
    "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}

models_dir, port_file = sys.argv[1], sys.argv[2]
sessions = {}
for f in sorted(os.listdir(models_dir)):
    if f.endswith(".onnx"):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions[f[:-5]] = ort.InferenceSession(os.path.join(models_dir, f), so,
                                                providers=["CPUExecutionProvider"])

app = FastAPI()


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    sess = sessions.get(name.split("@")[0])
    if sess is None:
        raise HTTPException(404, f"no model {name}")
    body = await request.json()
    try:
        feeds = {i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
                 for i in body["inputs"]}
        outs = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001 — a bad request is the caller's
        raise HTTPException(400, str(e)) from e
    return {
        "model_name": name,
        "outputs": [
            {"name": o.name, "datatype": NAMES.get(v.dtype, str(v.dtype)), "shape": list(v.shape),
             "data": v.reshape(-1).tolist()}
            for o, v in zip(sess.get_outputs(), outs)
        ],
    }


sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
with open(port_file + ".tmp", "w") as pf:
    pf.write(str(sock.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
config = uvicorn.Config(app, log_level="warning", access_log=False, workers=1, backlog=4096)
uvicorn.Server(config).run(sockets=[sock])
