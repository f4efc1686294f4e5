"""The official x402 Python package's resource-server side (x402ResourceServerSync with its
HTTP facilitator client and `upto` server scheme) uses Cairn's facilitator to verify and settle
an `upto` payment its own client signed: the server builds the requirements from the
facilitator's /supported (facilitatorAddress), verifies the maximum, then settles less.

usage: x402_upto_facilitator.py FACILITATOR_URL API_KEY RPC_URL KEY_HEX TOKEN PAY_TO NETWORK
       NAME VERSION MAX CHARGE
Prints one JSON line: {verify, settle, settleAgain}.
"""
import json
import sys

from eth_account import Account
from web3 import Web3
from web3.middleware import SignAndSendRawMiddlewareBuilder
from x402.http.facilitator_client import HTTPFacilitatorClientSync
from x402.http.facilitator_client_base import CreateHeadersAuthProvider, FacilitatorConfig
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS
from x402.mechanisms.evm.upto import UptoEvmClientScheme, UptoEvmServerScheme
from x402.schemas import PaymentPayload
from x402.schemas.config import ResourceConfig
from x402.server import x402ResourceServerSync

(fac, api_key, rpc, key, token, pay_to, network, name, version, most, charge) = sys.argv[1:12]
account = Account.from_key(key)

w3 = Web3(Web3.HTTPProvider(rpc))
w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
approve = [{"type": "function", "name": "approve", "stateMutability": "nonpayable",
            "inputs": [{"name": "s", "type": "address"}, {"name": "v", "type": "uint256"}],
            "outputs": [{"name": "", "type": "bool"}]}]
tx = w3.eth.contract(address=Web3.to_checksum_address(token), abi=approve).functions.approve(
    PERMIT2_ADDRESS, 2**256 - 1).transact({"from": account.address})
assert w3.eth.wait_for_transaction_receipt(tx, timeout=30)["status"] == 1

bearer = {"Authorization": f"Bearer {api_key}"}
client = HTTPFacilitatorClientSync(FacilitatorConfig(
    url=fac,
    auth_provider=CreateHeadersAuthProvider(
        lambda: {"verify": bearer, "settle": bearer, "supported": bearer})))
server = x402ResourceServerSync(client)
server.register(network, UptoEvmServerScheme())
server.initialize()
[requirements] = server.build_payment_requirements(ResourceConfig(
    scheme="upto", pay_to=pay_to, network=network,
    price={"amount": most, "asset": token, "extra": {"name": name, "version": version}}))

payload = UptoEvmClientScheme(account).create_payment_payload(requirements)
paid = PaymentPayload(x402_version=2, payload=payload, accepted=requirements)
verified = server.verify_payment(paid, requirements)
to_settle = requirements.model_copy(update={"amount": charge})
settled = server.settle_payment(paid, to_settle)
again = server.settle_payment(paid, to_settle)
print(json.dumps({
    "requirements": requirements.model_dump(by_alias=True),
    "verify": verified.verify.model_dump(by_alias=True),
    "settle": settled.model_dump(by_alias=True),
    "settleAgain": again.model_dump(by_alias=True),
}))
