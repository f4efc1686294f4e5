"""Pays a Cairn node with the official x402 Python client's `batch-settlement` scheme (PyPI
x402[evm,httpx]), unchanged: the first call deposits into a payment channel (an EIP-3009
ReceiveWithAuthorization the node submits) and every call carries a cumulative voucher; the
client counts what it was charged from each PAYMENT-RESPONSE.

usage: x402_batch_pay.py NODE_URL RPC_URL KEY_HEX PATH REQUEST_JSON [PATH REQUEST_JSON ...]
Each PATH (e.g. /v1/chat/completions) is POSTed its REQUEST_JSON file in turn; prints one JSON
line: [{status, body, receiptId, paymentResponse}, ...]. The client reads the channel over RPC
when it has no local record of it (a new process), as a restarted payer would.
With X402_REFUND=URL it then asks the node behind URL for its unclaimed balance back (the
client's cooperative refund) and prints {calls, refund} instead.
"""
import asyncio
import base64
import json
import os
import sys

import httpx
from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC


async def main() -> None:
    node, rpc, key = sys.argv[1], sys.argv[2], sys.argv[3]
    calls = list(zip(sys.argv[4::2], sys.argv[5::2]))
    account = Account.from_key(key)
    terms = httpx.get(f"{node}/v1/node").json()["payments"]

    client = x402Client()
    # The official client pays only well-known tokens unless told otherwise: opt in to the
    # node's token, capped at 1 cUSD per payment.
    client.set_spend_controls(
        {
            "allowed_assets": [
                {"network": terms["network"], "asset": terms["asset"],
                 "max_amount_per_payment": "1000000"}
            ]
        }
    )
    scheme = BatchSettlementEvmScheme(EthAccountSignerWithRPC(account, rpc))
    client.register(terms["network"], scheme)
    out = []
    async with x402HttpxClient(client, timeout=120) as http:
        for path, request in calls:
            body = open(request, "rb").read()
            resp = await http.post(node + path, content=body,
                                   headers={"content-type": "application/json"})
            pr = resp.headers.get("payment-response")
            try:
                parsed = resp.json()
            except Exception:
                parsed = resp.text
            out.append({
                "status": resp.status_code,
                "body": parsed,
                "receiptId": resp.headers.get("cairn-receipt-id"),
                "paymentResponse": json.loads(base64.b64decode(pr)) if pr else None,
            })
    refund_url = os.environ.get("X402_REFUND")
    if refund_url:
        refunded = scheme.refund(refund_url)
        print(json.dumps({"calls": out, "refund": refunded.model_dump(by_alias=True)}))
        return
    print(json.dumps(out))


asyncio.run(main())
