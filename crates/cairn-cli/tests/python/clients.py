"""Third-party clients against a running Cairn node (argv[1] = node URL).

- tritonclient[http] (a real KServe v2 client) runs the devnet's demo model, JSON and binary.
- eth_account recovers the receipt's signer from the typed data alone, with no Cairn code.
- hashlib recomputes the receipt's input hash from the documented canonical encoding.
- Batch-signed receipts (header `cairn-receipt-seal: batch`): eth_account recovers the node from
  the signed root's typed data, and the receipt's EIP-712 digest reaches that root under its
  OpenZeppelin Merkle proof (sorted-pair keccak, leaf = keccak(keccak(digest))).
"""
import concurrent.futures
import math
import hashlib
import json
import struct
import sys
import urllib.request
from urllib.parse import urlparse

import numpy as np
import tritonclient.http as httpclient
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

url = urlparse(sys.argv[1]).netloc
client = httpclient.InferenceServerClient(url=url)
assert client.is_server_live() and client.is_server_ready()
assert client.is_model_ready("digits@1.0")
meta = client.get_model_metadata("digits@1.0")
assert meta["inputs"][0]["name"] == "X" and meta["inputs"][0]["datatype"] == "FP32", meta

x = np.arange(64, dtype=np.float32).reshape(1, 64) % 17
receipts = []
for binary in (False, True):
    inp = httpclient.InferInput("X", [1, 64], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput("label", binary_data=binary),
            httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    res = client.infer("digits@1.0", [inp], outputs=outs)
    label = res.as_numpy("label")
    probs = res.as_numpy("probabilities")
    assert label.shape == (1,) and probs.shape == (1, 10), (label, probs)
    assert int(label[0]) == int(np.argmax(probs[0]))
    receipts.append(res.get_response()["parameters"]["receipt"])
    print(f"tritonclient: {'binary' if binary else 'json'} ok, label {int(label[0])}")

# Who the node says it is, and whose contract its receipts are addressed to.
with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/v1/node") as resp:
    node = json.load(resp)
for r in receipts:
    signable = encode_typed_data(full_message=r["typedData"])
    signer = Account.recover_message(signable, signature=bytes.fromhex(r["signature"][2:]))
    # The key that signed is the node's own key, not just the one the receipt names.
    assert signer.lower() == node["address"].lower(), (signer, node["address"])
    assert signer == r["signer"] == r["typedData"]["message"]["node"], (signer, r["signer"])
    domain = r["typedData"]["domain"]
    assert int(domain["chainId"]) == int(node["domain"]["chainId"]), (domain, node["domain"])
    assert domain["verifyingContract"].lower() == node["domain"]["verifyingContract"].lower()
    print(f"eth_account: recovered {signer}, the node's address")


def tensors_hash(tensors):
    h = hashlib.sha256(b"cairn.tensors.v1\0" + struct.pack("<I", len(tensors)))
    for name, dtype, arr in sorted(tensors, key=lambda t: t[0].encode()):
        n = name.encode()
        h.update(struct.pack("<I", len(n)) + n + struct.pack("<I", len(dtype)) + dtype.encode())
        h.update(struct.pack("<I", arr.ndim) + b"".join(struct.pack("<Q", d) for d in arr.shape))
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        h.update(struct.pack("<Q", len(data)) + data)
    return "0x" + h.hexdigest()


want = tensors_hash([("X", "FP32", x)])
for r in receipts:
    assert r["typedData"]["message"]["inputHash"] == want, (r["typedData"]["message"]["inputHash"], want)
print("canonical input hash: matches")


def typed_digest(typed_data):
    m = encode_typed_data(full_message=typed_data)
    return keccak(b"\x19" + m.version + m.header + m.body)


def reaches_root(digest, proof, root):
    h = keccak(keccak(digest))
    for p in proof:
        a, b = sorted([h, p])
        h = keccak(a + b)
    return h == root


def batch_call(i):
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64],
                                   "data": [float((j + i) % 17) for j in range(64)]}]}).encode()
    req = urllib.request.Request(
        sys.argv[1].rstrip("/") + "/v2/models/digits@1.0/infer", data=body, method="POST",
        headers={"content-type": "application/json", "cairn-receipt-seal": "batch"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)["parameters"]["receipt"]


# Concurrent calls are committed, and so signed, together: keep calling until a root holds more
# than one receipt (each receipt is checked either way).
largest = 0
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for _ in range(25):
        by_root = {}
        for r in pool.map(batch_call, range(16)):
            assert "signature" not in r, r
            seal = r["batchSignature"]
            assert seal["typedData"]["domain"] == r["typedData"]["domain"]
            root_signer = Account.recover_message(
                encode_typed_data(full_message=seal["typedData"]),
                signature=bytes.fromhex(seal["signature"][2:]))
            assert root_signer.lower() == node["address"].lower(), (root_signer, node["address"])
            assert root_signer == r["signer"] == r["typedData"]["message"]["node"]
            root = bytes.fromhex(seal["typedData"]["message"]["root"][2:])
            count = seal["typedData"]["message"]["count"]
            proof = [bytes.fromhex(p[2:]) for p in seal["proof"]]
            assert len(proof) <= math.ceil(math.log2(count)) if count > 1 else not proof, seal
            digest = typed_digest(r["typedData"])
            assert reaches_root(digest, proof, root), r
            by_root.setdefault(root, []).append((digest, proof))
            largest = max(largest, count)
        # A neighbour's receipt does not reach the root under another receipt's proof.
        for root, members in by_root.items():
            if len(members) > 1:
                (d0, p0), (d1, p1) = members[0], members[1]
                assert not reaches_root(d1, p0, root) and not reaches_root(d0, p1, root)
        if largest > 1:
            break
assert largest > 1, "no two concurrent calls were ever signed under one root"
print(f"batch-signed: eth_account recovered the node from the roots; proofs reach them (largest batch {largest})")
