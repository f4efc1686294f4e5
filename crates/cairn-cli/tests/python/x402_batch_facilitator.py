"""The official x402 Python package's resource-server side for `batch-settlement`
(x402ResourceServerSync with its HTTP facilitator client, the batch-settlement server scheme and
its channel manager) uses Cairn's facilitator: the server builds requirements from Cairn's
/supported (its receiverAuthorizer), verifies and settles a deposit the official client signed,
counts the next vouchers itself, then claims and sweeps through Cairn.

usage: x402_batch_facilitator.py FACILITATOR_URL API_KEY KEY_HEX TOKEN PAY_TO NETWORK NAME
       VERSION PRICE CALLS
Prints one JSON line: {requirements, payments: [{verify, settle}], claims, sweep}.
"""
import json
import sys

from eth_account import Account
from x402.http.facilitator_client import HTTPFacilitatorClientSync
from x402.http.facilitator_client_base import CreateHeadersAuthProvider, FacilitatorConfig
from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme as Client
from x402.mechanisms.evm.batch_settlement.server import (
    BatchSettlementChannelManagerSync,
    BatchSettlementEvmScheme as Server,
    ChannelManagerConfigSync,
)
from x402.schemas import PaymentPayload
from x402.schemas.config import ResourceConfig
from x402.schemas.hooks import PaymentResponseContext
from x402.server import x402ResourceServerSync

(fac, api_key, key, token, pay_to, network, name, version, price, calls) = sys.argv[1:11]
account = Account.from_key(key)

bearer = {"Authorization": f"Bearer {api_key}"}
facilitator = HTTPFacilitatorClientSync(FacilitatorConfig(
    url=fac,
    auth_provider=CreateHeadersAuthProvider(
        lambda: {"verify": bearer, "settle": bearer, "supported": bearer})))
scheme = Server(pay_to)
server = x402ResourceServerSync(facilitator)
server.register(network, scheme)
server.initialize()
[requirements] = server.build_payment_requirements(ResourceConfig(
    scheme="batch-settlement", pay_to=pay_to, network=network,
    price={"amount": price, "asset": token,
           "extra": {"name": name, "version": version, "assetTransferMethod": "eip3009"}}))

client = Client(account)
payments = []
for _ in range(int(calls)):
    payload = client.create_payment_payload(requirements)
    paid = PaymentPayload(x402_version=2, payload=payload, accepted=requirements)
    verified = server.verify_payment(paid, requirements)
    settled = server.settle_payment(paid, requirements)
    client.scheme_hooks.on_payment_response(PaymentResponseContext(
        payment_payload=paid, requirements=requirements, settle_response=settled))
    payments.append({
        "type": payload["type"],
        "verify": verified.verify.model_dump(by_alias=True),
        "settle": settled.model_dump(by_alias=True),
    })

manager = BatchSettlementChannelManagerSync(ChannelManagerConfigSync(
    scheme=scheme, facilitator=facilitator, receiver=pay_to, token=token, network=network))
claims = manager.claim()
sweep = manager.settle()
print(json.dumps({
    "requirements": requirements.model_dump(by_alias=True),
    "payments": payments,
    "claims": [repr(c) for c in claims],
    "sweep": repr(sweep),
}, default=str))
