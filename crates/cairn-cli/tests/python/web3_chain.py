"""Drives a devnet chain's JSON-RPC with web3.py as a user would: argv = RPC URL, token address,
payer private key (hex). Reads balances, lets web3 fill and sign an ETH transfer and an ERC-20
transfer (gas estimate, fees, nonce, chain id: web3's own defaults), waits for their receipts,
decodes the token's Transfer log from the receipt, from eth_getLogs and from a polled filter
(eth_newFilter / eth_getFilterChanges), and checks each block
hash is keccak256 of its RLP header. Prints a JSON summary.
"""
import json
import sys

import rlp
from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3.middleware import SignAndSendRawMiddlewareBuilder

url, token_address, key = sys.argv[1], sys.argv[2], sys.argv[3]
w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
payer = Account.from_key(key)
w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(payer), layer=0)

ERC20 = [
    {"type": "function", "name": "balanceOf", "stateMutability": "view",
     "inputs": [{"name": "a", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "transfer", "stateMutability": "nonpayable",
     "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
     "outputs": [{"name": "", "type": "bool"}]},
    {"type": "event", "name": "Transfer", "anonymous": False,
     "inputs": [{"name": "from", "type": "address", "indexed": True},
                {"name": "to", "type": "address", "indexed": True},
                {"name": "value", "type": "uint256", "indexed": False}]},
]
token = w3.eth.contract(address=Web3.to_checksum_address(token_address), abi=ERC20)
recipient = Account.create().address


def header_hash(block):
    """keccak256(rlp(header)) from the fields the node served (Cancun layout)."""
    fields = [
        block["parentHash"], block["sha3Uncles"], bytes.fromhex(block["miner"][2:]),
        block["stateRoot"], block["transactionsRoot"], block["receiptsRoot"],
        block["logsBloom"], block["difficulty"], block["number"], block["gasLimit"],
        block["gasUsed"], block["timestamp"], block["extraData"], block["mixHash"],
        block["nonce"], block["baseFeePerGas"], block["withdrawalsRoot"],
        block["blobGasUsed"], block["excessBlobGas"], block["parentBeaconBlockRoot"],
    ]
    fields = [bytes(f) if not isinstance(f, int) else f for f in fields]
    return keccak(rlp.encode(fields))


out = {"chainId": w3.eth.chain_id, "head": w3.eth.block_number}
eth_before = w3.eth.get_balance(payer.address)
tokens_before = token.functions.balanceOf(payer.address).call()

# An ETH transfer, every field filled by web3.
tx = w3.eth.send_transaction({"from": payer.address, "to": recipient, "value": 10**15})
r = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
assert r["status"] == 1, r
assert w3.eth.get_balance(recipient) == 10**15
fee = r["gasUsed"] * r["effectiveGasPrice"]
assert w3.eth.get_balance(payer.address) == eth_before - 10**15 - fee
seen = w3.eth.get_transaction(tx)
assert seen["from"] == payer.address and seen["hash"] == tx

# An ERC-20 transfer: its receipt's log, eth_getLogs and a polled filter agree.
watch = token.events.Transfer.create_filter(from_block="latest", argument_filters={"to": recipient})
tx2 = token.functions.transfer(recipient, 1234).transact({"from": payer.address})
r2 = w3.eth.wait_for_transaction_receipt(tx2, timeout=30)
assert r2["status"] == 1, r2
events = token.events.Transfer().process_receipt(r2)
assert len(events) == 1 and events[0]["args"]["value"] == 1234, events
logs = token.events.Transfer().get_logs(
    from_block=r2["blockNumber"], to_block=r2["blockNumber"],
    argument_filters={"to": recipient})
assert len(logs) == 1 and logs[0]["transactionHash"] == tx2, logs
entries = watch.get_new_entries()
assert len(entries) == 1 and entries[0]["args"]["value"] == 1234, entries
assert watch.get_new_entries() == []
assert token.functions.balanceOf(recipient).call() == 1234
assert token.functions.balanceOf(payer.address).call() == tokens_before - 1234

for n in (r["blockNumber"], r2["blockNumber"]):
    block = w3.eth.get_block(n)
    assert header_hash(block) == bytes(block["hash"]), n
assert tx2 in w3.eth.get_block(r2["blockNumber"])["transactions"]

out.update({
    "transfer": tx.to_0x_hex(), "tokenTransfer": tx2.to_0x_hex(), "fee": fee,
    "recipient": recipient, "blocks": [r["blockNumber"], r2["blockNumber"]],
})
print(json.dumps(out))
