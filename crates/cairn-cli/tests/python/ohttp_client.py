"""An Oblivious HTTP client written apart from Cairn's: pyhpke (an independent HPKE) with
Binary HTTP and the OHTTP framing done here from RFC 9458/9292, talking to a Cairn gateway
through a Cairn relay.

usage: ohttp_client.py RELAY_URL GATEWAY_NAME
"""

import hashlib
import hmac
import json
import struct
import sys
import urllib.request

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import AEADId, CipherSuite, KDFId, KEMId


def varint(n):
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return struct.pack(">H", n | 0x4000)
    if n < 1 << 30:
        return struct.pack(">I", n | 0x80000000)
    return struct.pack(">Q", n | 0xC000000000000000)


def read_varint(b, i):
    first = b[i]
    n = 1 << (first >> 6)
    v = first & 0x3F
    for x in b[i + 1 : i + n]:
        v = (v << 8) | x
    return v, i + n


def vec(b):
    return varint(len(b)) + b


def bhttp_request(method, path, headers, body):
    """A known-length Binary HTTP request (RFC 9292 §3)."""
    fields = b"".join(vec(k.encode()) + vec(v.encode()) for k, v in headers)
    return (
        varint(0)
        + vec(method.encode())
        + vec(b"https")
        + vec(b"")
        + vec(path.encode())
        + vec(fields)
        + vec(body)
        + varint(0)
    )


def bhttp_response(b):
    """Status, headers and content of a known-length Binary HTTP response."""
    framing, i = read_varint(b, 0)
    assert framing == 1, f"framing {framing}"
    status, i = read_varint(b, i)
    n, i = read_varint(b, i)
    end, headers = i + n, {}
    while i < end:
        kl, i = read_varint(b, i)
        k = b[i : i + kl].decode()
        i += kl
        vl, i = read_varint(b, i)
        headers[k] = b[i : i + vl].decode()
        i += vl
    n, i = read_varint(b, i)
    return status, headers, b[i : i + n]


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, n):
    out, t, c = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([c]), hashlib.sha256).digest()
        out += t
        c += 1
    return out[:n]


def key_config(relay, gateway):
    with urllib.request.urlopen(f"{relay}/gateways/{gateway}") as r:
        assert r.headers["content-type"] == "application/ohttp-keys", r.headers["content-type"]
        data = r.read()
    (n,) = struct.unpack(">H", data[:2])
    c = data[2 : 2 + n]
    key_id, kem = c[0], struct.unpack(">H", c[1:3])[0]
    assert kem == 0x0020, kem
    pk = c[3:35]
    (slen,) = struct.unpack(">H", c[35:37])
    suites = [struct.unpack(">HH", c[37 + 4 * j : 41 + 4 * j]) for j in range(slen // 4)]
    assert (1, 1) in suites, suites
    return key_id, pk


def call(relay, gateway, key_id, pk, method, path, headers=(), body=b""):
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)
    hdr = bytes([key_id]) + struct.pack(">HHH", 0x0020, 0x0001, 0x0001)
    enc, sender = suite.create_sender_context(
        suite.kem.deserialize_public_key(pk), info=b"message/bhttp request\x00" + hdr
    )
    sealed = hdr + enc + sender.seal(bhttp_request(method, path, headers, body))
    req = urllib.request.Request(
        f"{relay}/gateways/{gateway}",
        data=sealed,
        headers={"content-type": "message/ohttp-req"},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        assert r.headers["content-type"] == "message/ohttp-res", r.headers["content-type"]
        answer = r.read()
    secret = sender.export(b"message/bhttp response", 16)
    nonce, ct = answer[:16], answer[16:]
    prk = hkdf_extract(enc + nonce, secret)
    plain = AESGCM(hkdf_expand(prk, b"key", 16)).decrypt(hkdf_expand(prk, b"nonce", 12), ct, None)
    return bhttp_response(plain)


def main():
    relay, gateway = sys.argv[1], sys.argv[2]
    key_id, pk = key_config(relay, gateway)
    status, _, body = call(relay, gateway, key_id, pk, "GET", "/v1/node")
    assert status == 200, (status, body)
    node = json.loads(body)
    print("pyhpke: node", node["address"], "key", node["ohttp"]["key_config_hash"])
    with open(sys.argv[3]) as f:
        request = f.read().encode()
    status, headers, body = call(
        relay,
        gateway,
        key_id,
        pk,
        "POST",
        "/v2/models/digits@1.0/infer",
        [("content-type", "application/json")],
        request,
    )
    assert status == 200, (status, body)
    out = json.loads(body)
    label = next(o for o in out["outputs"] if o["name"] == "label")
    print("pyhpke: digits label", label["data"][0], "receipt", headers.get("cairn-receipt-id", "?"))


if __name__ == "__main__":
    main()
