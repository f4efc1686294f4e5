"""Pays a Cairn node with the official x402 Python client's `upto` scheme (PyPI
x402[evm,httpx]), unchanged: the payer approves Permit2 on the node's token once (a transaction
sent with web3.py through the chain's JSON-RPC, as a wallet would), then the client signs a
Permit2 witness transfer of the offered maximum and the node settles what the call cost.

usage: x402_upto_pay.py NODE_URL RPC_URL KEY_HEX PATH REQUEST_JSON [PATH REQUEST_JSON ...]
With X402_GASLESS=1 the payer sends no approval: the client reads its token nonce over RPC and
signs an EIP-2612 approval of Permit2 into the payment (the `eip2612GasSponsoring` extension the
node declares), which the node submits with the settlement. Each PATH (e.g. /v1/chat/completions) is POSTed its REQUEST_JSON file in turn; prints one JSON
line: [{status, body, paymentResponse}, ...].
"""
import asyncio
import base64
import json
import os
import sys

import httpx
from eth_account import Account
from web3 import Web3
from web3.middleware import SignAndSendRawMiddlewareBuilder
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC
from x402.mechanisms.evm.upto import UptoEvmClientScheme

APPROVE_ABI = [
    {"type": "function", "name": "approve", "stateMutability": "nonpayable",
     "inputs": [{"name": "spender", "type": "address"}, {"name": "value", "type": "uint256"}],
     "outputs": [{"name": "", "type": "bool"}]},
]


async def main() -> None:
    node, rpc, key = sys.argv[1], sys.argv[2], sys.argv[3]
    calls = list(zip(sys.argv[4::2], sys.argv[5::2]))
    account = Account.from_key(key)
    terms = httpx.get(f"{node}/v1/node").json()["payments"]

    gasless = os.environ.get("X402_GASLESS") == "1"
    if not gasless:
        # The one-time approval of Permit2, sent like any wallet transaction.
        w3 = Web3(Web3.HTTPProvider(rpc))
        w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
        token = w3.eth.contract(address=Web3.to_checksum_address(terms["asset"]), abi=APPROVE_ABI)
        tx = token.functions.approve(PERMIT2_ADDRESS, 2**256 - 1).transact(
            {"from": account.address})
        assert w3.eth.wait_for_transaction_receipt(tx, timeout=30)["status"] == 1

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
    signer = EthAccountSignerWithRPC(account, rpc) if gasless else account
    client.register(terms["network"], UptoEvmClientScheme(signer))
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
    print(json.dumps(out))


asyncio.run(main())
