"""Pays a Cairn node with the official x402 Python client (PyPI x402[evm,httpx]).

usage: x402_pay.py URL KEY_HEX REQUEST_JSON [v1]
Prints one JSON line: {status, body, paymentResponse}. With `v1` only the legacy v1 scheme
is registered (the node must be on chain 84532, "base-sepolia").
"""
import asyncio
import base64
import json
import sys

from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact.register import register_exact_evm_client


async def main() -> None:
    url, key, request = sys.argv[1], sys.argv[2], sys.argv[3]
    v1_only = len(sys.argv) > 4 and sys.argv[4] == "v1"
    account = Account.from_key(key)
    client = x402Client()
    # The official client pays only well-known tokens unless told otherwise: opt in to the
    # node's token (as /v1/node names it), capped at 1 cUSD per payment.
    import httpx

    base = url.split("/v2/")[0]
    terms = httpx.get(f"{base}/v1/node").json()["payments"]
    network = terms["network"]
    if v1_only:
        network = "base-sepolia"
    client.set_spend_controls(
        {
            "allowed_assets": [
                {"network": network, "asset": terms["asset"], "max_amount_per_payment": "1000000"}
            ]
        }
    )
    if v1_only:
        from x402.mechanisms.evm.exact.v1.client import ExactEvmSchemeV1
        from x402.mechanisms.evm.exact.client import _wrap_if_local_account

        client.register_v1("base-sepolia", ExactEvmSchemeV1(_wrap_if_local_account(account)))
    else:
        register_exact_evm_client(client, account)
    body = open(request, "rb").read()
    async with x402HttpxClient(client, timeout=60) as http:
        resp = await http.post(url, content=body, headers={"content-type": "application/json"})
    pr = resp.headers.get("payment-response") or resp.headers.get("x-payment-response")
    decoded = json.loads(base64.b64decode(pr)) if pr else None
    try:
        out = resp.json()
    except Exception:
        out = resp.text
    print(json.dumps({"status": resp.status_code, "body": out, "paymentResponse": decoded}))


asyncio.run(main())
