//! The server on a loopback port over a fresh embedded chain, spoken to as a wallet would.

use std::sync::Arc;

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy_rpc_types_eth::{Block, TransactionReceipt};
use cairn_core::sig::SigningKey;
use cairn_ledger::{EmbeddedLedger, dev_signer};
use serde_json::{Value, json};

use crate::RpcConfig;

const CHAIN: u64 = 31337;
const GWEI: u128 = 1_000_000_000;

struct Net {
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(config: RpcConfig) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let funded: Vec<(Address, U256)> = (0..3)
        .map(|i| (dev_signer(i).address(), U256::from(10u128.pow(22))))
        .collect();
    let ledger = EmbeddedLedger::open(&dir.path().join("chain.sqlite"), CHAIN, &funded).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(crate::serve(listener, Arc::new(ledger), config));
    Net {
        url,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Net {
    async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// One call's whole answer object.
    async fn raw_call(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let v: Value = self.post(body.to_string()).await.json().await.unwrap();
        assert_eq!(v["id"], 7, "{v}");
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        v
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        let v = self.raw_call(method, params).await;
        assert!(v.get("error").is_none(), "{method} failed: {v}");
        v["result"].clone()
    }

    /// The error object of a call that must fail.
    async fn error(&self, method: &str, params: Value) -> Value {
        let v = self.raw_call(method, params).await;
        assert!(v.get("result").is_none(), "{method} succeeded: {v}");
        v["error"].clone()
    }

    async fn quantity(&self, method: &str, params: Value) -> U256 {
        self.call(method, params)
            .await
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn key(i: usize) -> SigningKey {
    SigningKey::from_signer(&dev_signer(i))
}

/// An EIP-1559 transaction offering `tip` per gas, signed for `chain_id`.
fn eip1559(
    k: &SigningKey,
    chain_id: u64,
    nonce: u64,
    to: TxKind,
    value: U256,
    input: &[u8],
    tip: u128,
) -> TxEnvelope {
    let tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: 100_000,
        max_fee_per_gas: 2 * tip,
        max_priority_fee_per_gas: tip,
        to,
        value,
        access_list: Default::default(),
        input: Bytes::copy_from_slice(input),
    };
    let sig = k.sign_prehash(&tx.signature_hash());
    TxEnvelope::Eip1559(tx.into_signed(sig))
}

fn hex(b: &[u8]) -> String {
    Bytes::copy_from_slice(b).to_string()
}

#[tokio::test]
async fn a_wallet_transfer_is_mined_and_read_back_as_standard_objects() {
    let net = start(RpcConfig::default()).await;
    assert_eq!(net.call("eth_chainId", json!([])).await, "0x7a69");
    assert_eq!(net.call("net_version", json!([])).await, "31337");
    let sender = key(1);
    let to = Address::repeat_byte(0x42);
    let before = net
        .quantity("eth_getBalance", json!([sender.address(), "latest"]))
        .await;
    let value = U256::from(12_345u64);
    let tx = eip1559(&sender, CHAIN, 0, TxKind::Call(to), value, &[], GWEI);
    let raw = tx.encoded_2718();
    let hash = net.call("eth_sendRawTransaction", json!([hex(&raw)])).await;
    // The hash every tool computes: keccak256 of the signed envelope.
    assert_eq!(hash, json!(keccak256(&raw)));

    let receipt: TransactionReceipt =
        serde_json::from_value(net.call("eth_getTransactionReceipt", json!([hash])).await).unwrap();
    assert!(receipt.status());
    assert_eq!(receipt.gas_used, 21_000);
    assert_eq!(receipt.effective_gas_price, GWEI);
    assert_eq!(receipt.from, sender.address());
    assert_eq!(receipt.to, Some(to));
    // Balances moved by the value and the fee actually paid (the base fee is 0).
    assert_eq!(
        net.quantity("eth_getBalance", json!([to, "latest"])).await,
        value
    );
    assert_eq!(
        net.quantity("eth_getBalance", json!([sender.address(), "latest"]))
            .await,
        before - value - U256::from(21_000 * GWEI)
    );
    assert_eq!(
        net.quantity(
            "eth_getTransactionCount",
            json!([sender.address(), "latest"])
        )
        .await,
        U256::from(1)
    );

    let served = net.call("eth_getTransactionByHash", json!([hash])).await;
    assert_eq!(served["from"], json!(sender.address()));
    assert_eq!(served["hash"], hash);
    assert_eq!(
        served["blockNumber"],
        json!(receipt.block_number.map(|n| format!("{n:#x}")))
    );

    // The block's hash is keccak256(rlp(header)) of the header it serves, and its
    // transactions root commits to the transaction.
    let block: Block = serde_json::from_value(
        net.call("eth_getBlockByNumber", json!(["latest", true]))
            .await,
    )
    .unwrap();
    assert_eq!(block.header.inner.hash_slow(), block.header.hash);
    assert_eq!(Some(block.header.hash), receipt.block_hash);
    assert_eq!(
        block.header.transactions_root,
        alloy_consensus::proofs::calculate_transaction_root(&[tx])
    );
    let parent: Block = serde_json::from_value(
        net.call(
            "eth_getBlockByHash",
            json!([block.header.parent_hash, false]),
        )
        .await,
    )
    .unwrap();
    assert_eq!(parent.header.number + 1, block.header.number);
    assert_eq!(parent.header.inner.hash_slow(), parent.header.hash);
}

#[tokio::test]
async fn contract_logs_are_found_by_address_and_topic() {
    let net = start(RpcConfig::default()).await;
    let k = key(2);
    // Init code that emits LOG1(topic = 0x…aa, data = empty) and deploys nothing:
    // PUSH1 0xaa PUSH1 0 PUSH1 0 LOG1 STOP.
    let init = [0x60, 0xaa, 0x60, 0x00, 0x60, 0x00, 0xa1, 0x00];
    let tx = eip1559(&k, CHAIN, 0, TxKind::Create, U256::ZERO, &init, 0);
    let hash = net
        .call("eth_sendRawTransaction", json!([hex(&tx.encoded_2718())]))
        .await;
    let receipt = net.call("eth_getTransactionReceipt", json!([hash])).await;
    let contract = receipt["contractAddress"].clone();
    let topic = B256::with_last_byte(0xaa);
    let logs = net
        .call(
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "toBlock": "latest", "address": contract, "topics": [topic]}]),
        )
        .await;
    assert_eq!(logs.as_array().unwrap().len(), 1, "{logs}");
    assert_eq!(logs[0]["transactionHash"], hash);
    assert_eq!(logs[0]["logIndex"], "0x0");
    // An OR-set of topics and another address's logs.
    let other = B256::with_last_byte(0xbb);
    let either = net
        .call(
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "topics": [[other, topic]]}]),
        )
        .await;
    assert_eq!(either.as_array().unwrap().len(), 1);
    let none = net
        .call(
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "address": Address::repeat_byte(1)}]),
        )
        .await;
    assert_eq!(none, json!([]));
    let bad = net
        .error(
            "eth_getLogs",
            json!([{"fromBlock": "0x5", "toBlock": "0x1"}]),
        )
        .await;
    assert_eq!(bad["code"], -32602);
    // Past the head is an error, not an empty answer (execution-apis).
    let past = net
        .error(
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "toBlock": "0xffff"}]),
        )
        .await;
    assert_eq!(past["code"], -32602);
    assert!(
        past["message"].as_str().unwrap().contains("beyond"),
        "{past}"
    );
}

#[tokio::test]
async fn hostile_transactions_are_refused_and_change_nothing() {
    let net = start(RpcConfig::default()).await;
    let k = key(1);
    let to = TxKind::Call(Address::repeat_byte(0x42));
    let one = U256::from(1u64);
    let good = eip1559(&k, CHAIN, 0, to, one, &[], 0).encoded_2718();
    let head = net.call("eth_blockNumber", json!([])).await;

    let refused = |e: &Value, needle: &str| {
        assert_eq!(e["code"], -32000, "{e}");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(needle), "{m:?} lacks {needle:?}");
    };
    // Truncated, and with bytes after it.
    let e = net
        .error(
            "eth_sendRawTransaction",
            json!([hex(&good[..good.len() - 3])]),
        )
        .await;
    refused(&e, "not a signed Ethereum transaction");
    let mut longer = good.clone();
    longer.push(0);
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&longer)]))
        .await;
    refused(&e, "follow the transaction");
    // Signed for another chain: it must not replay here.
    let foreign = eip1559(&k, 1, 0, to, one, &[], 0).encoded_2718();
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&foreign)]))
        .await;
    refused(&e, "signed for chain 1");
    // Pre-EIP-155: valid on every chain, so refused.
    let legacy = TxLegacy {
        chain_id: None,
        nonce: 0,
        gas_price: 0,
        gas_limit: 21_000,
        to,
        value: one,
        input: Bytes::new(),
    };
    let sig = k.sign_prehash(&legacy.signature_hash());
    let unprotected = TxEnvelope::Legacy(legacy.into_signed(sig)).encoded_2718();
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&unprotected)]))
        .await;
    refused(&e, "no chain id");
    // The high-s twin of a valid signature recovers the same sender: refused all the same.
    let TxEnvelope::Eip1559(signed) = eip1559(&k, CHAIN, 0, to, one, &[], 0) else {
        unreachable!()
    };
    let twin = cairn_core::sig::malleate(signed.signature());
    let malleated = TxEnvelope::Eip1559(signed.strip_signature().into_signed(twin)).encoded_2718();
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&malleated)]))
        .await;
    refused(&e, "not canonical");
    // Out of nonce order, and more than the sender holds.
    let later = eip1559(&k, CHAIN, 5, to, one, &[], 0).encoded_2718();
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&later)]))
        .await;
    refused(&e, "nonce too high");
    let broke = SigningKey::from_bytes(&B256::repeat_byte(0x77)).unwrap();
    let unfunded = eip1559(&broke, CHAIN, 0, to, one, &[], 0).encoded_2718();
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&unfunded)]))
        .await;
    refused(&e, "insufficient funds");
    // Init code that reverts with data 0x: refused with code 3, not mined, nonce unused.
    let reverting = eip1559(
        &k,
        CHAIN,
        0,
        TxKind::Create,
        U256::ZERO,
        &[0x60, 0x00, 0x60, 0x00, 0xfd],
        0,
    )
    .encoded_2718();
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&reverting)]))
        .await;
    assert_eq!(e["code"], 3, "{e}");
    assert_eq!(e["data"], "0x");
    assert_eq!(net.call("eth_blockNumber", json!([])).await, head);
    assert_eq!(
        net.quantity("eth_getTransactionCount", json!([k.address(), "latest"]))
            .await,
        U256::ZERO
    );

    // The good one is mined once; sent again, it is a replay.
    let hash = net
        .call("eth_sendRawTransaction", json!([hex(&good)]))
        .await;
    let e = net
        .error("eth_sendRawTransaction", json!([hex(&good)]))
        .await;
    refused(&e, "already known");
    assert_eq!(
        net.quantity(
            "eth_getBalance",
            json!([Address::repeat_byte(0x42), "latest"])
        )
        .await,
        one
    );
    assert!(
        net.call("eth_getTransactionReceipt", json!([hash]))
            .await
            .is_object()
    );
}

#[tokio::test]
async fn bad_requests_get_json_rpc_errors() {
    let net = start(RpcConfig::default()).await;
    let answer = |body: &'static str| {
        let net = &net;
        async move {
            let r = net.post(body).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(answer("{not json").await["error"]["code"], -32700);
    assert_eq!(answer("[]").await["error"]["code"], -32600);
    assert_eq!(answer("42").await["error"]["code"], -32600);
    assert_eq!(
        answer(r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":{"a":1}}"#).await["error"]
            ["code"],
        -32602
    );
    let e = net.error("eth_sign", json!([])).await;
    assert_eq!(e["code"], -32601);
    let e = net.error("eth_getBalance", json!(["0x12"])).await;
    assert_eq!(e["code"], -32602);
    assert!(e["message"].as_str().unwrap().contains("address"), "{e}");
    // Dev methods are off unless asked for.
    assert_eq!(net.error("evm_mine", json!([])).await["code"], -32601);

    // A batch answers each call in order; a notification gets no answer.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},
                    {"jsonrpc":"2.0","method":"eth_chainId"},
                    {"jsonrpc":"2.0","id":"b","method":"nope"}]"#;
    let v = answer(batch).await;
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["result"], "0x7a69");
    assert_eq!(v[1]["id"], "b");
    assert_eq!(v[1]["error"]["code"], -32601);
    let r = net
        .post(r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#)
        .await;
    assert_eq!(r.status(), 204);
    let many: Vec<Value> = (0..crate::MAX_BATCH + 1)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_chainId"}))
        .collect();
    let v: Value = net
        .post(Value::Array(many).to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["code"], -32600);
    // An oversized body is refused before it is read whole.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{{"data":"0x{}"}}]}}"#,
        "00".repeat(crate::MAX_BODY_BYTES)
    );
    assert_eq!(net.post(huge).await.status(), 413);

    // What a web page could send: text/plain (no CORS preflight), or a rebinding host name.
    let r = net
        .http
        .post(&net.url)
        .header("content-type", "text/plain")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = net
        .http
        .post(&net.url)
        .header("content-type", "application/json")
        .header("host", "rebind.example:7402")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("rebind.example"));
    // No Host at all (HTTP/1.0), on /metrics too: refused, failing closed.
    for path in ["/", "/metrics"] {
        let addr = net.url.trim_start_matches("http://");
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#;
        let req = format!(
            "POST {path} HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut sock, req.as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut sock, &mut answer)
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    }
    for ok in ["localhost:1", "127.0.0.1", "[::1]:8545", "LOCALHOST"] {
        assert!(crate::local_host(ok), "{ok}");
    }
    for bad in [
        "evil.example",
        "127.0.0.1.nip.io:80",
        "[::1",
        "localhost.evil",
    ] {
        assert!(!crate::local_host(bad), "{bad}");
    }

    // State is kept for the head only; a call's revert comes back with its data.
    let k = key(0);
    let tx = eip1559(
        &k,
        CHAIN,
        0,
        TxKind::Call(Address::repeat_byte(9)),
        U256::from(1),
        &[],
        0,
    );
    net.call("eth_sendRawTransaction", json!([hex(&tx.encoded_2718())]))
        .await;
    let e = net
        .error("eth_getBalance", json!([k.address(), "0x0"]))
        .await;
    assert!(e["message"].as_str().unwrap().contains("not kept"), "{e}");
    let e = net
        .error(
            "eth_call",
            json!([{"data": "0x60016000526001601ffd"}, "latest"]),
        )
        .await;
    assert_eq!(e["code"], 3);
    assert_eq!(e["data"], "0x01");
}

#[tokio::test]
async fn fees_gas_estimates_and_dev_methods_answer_as_tools_expect() {
    let net = start(RpcConfig {
        dev_methods: true,
        ..Default::default()
    })
    .await;
    assert_eq!(net.call("eth_gasPrice", json!([])).await, "0x0");
    assert_eq!(net.call("eth_maxPriorityFeePerGas", json!([])).await, "0x0");
    let history = net
        .call("eth_feeHistory", json!(["0x4", "latest", [25.0, 75.0]]))
        .await;
    assert_eq!(history["oldestBlock"], "0x0");
    assert_eq!(history["baseFeePerGas"].as_array().unwrap().len(), 2);
    assert_eq!(history["reward"][0], json!(["0x0", "0x0"]));
    let transfer = json!({"from": key(0).address(), "to": Address::repeat_byte(3), "value": "0x1"});
    assert_eq!(
        net.quantity("eth_estimateGas", json!([transfer])).await,
        U256::from(21_000)
    );
    let before: Block = serde_json::from_value(
        net.call("eth_getBlockByNumber", json!(["latest", false]))
            .await,
    )
    .unwrap();
    net.call("evm_increaseTime", json!([3600])).await;
    net.call("evm_mine", json!([])).await;
    let after: Block = serde_json::from_value(
        net.call("eth_getBlockByNumber", json!(["latest", false]))
            .await,
    )
    .unwrap();
    assert_eq!(after.header.number, before.header.number + 1);
    assert!(after.header.timestamp >= before.header.timestamp + 3600);
    assert!(after.transactions.is_empty());
    assert_eq!(after.header.inner.hash_slow(), after.header.hash);
}

#[tokio::test]
async fn polled_filters_report_what_is_new_once_and_expire_on_uninstall() {
    let net = start(RpcConfig::default()).await;
    let k = key(2);
    let topic = B256::with_last_byte(0xaa);
    let logs = net
        .call(
            "eth_newFilter",
            json!([{"fromBlock": "0x0", "topics": [topic]}]),
        )
        .await;
    let blocks = net.call("eth_newBlockFilter", json!([])).await;
    assert_ne!(logs, blocks);
    assert_eq!(
        net.call("eth_getFilterChanges", json!([logs])).await,
        json!([])
    );
    // Two contracts each emit LOG1(0xaa) from their init code.
    let init = [0x60, 0xaa, 0x60, 0x00, 0x60, 0x00, 0xa1, 0x00];
    let mut hashes = Vec::new();
    for nonce in 0..2 {
        let tx = eip1559(&k, CHAIN, nonce, TxKind::Create, U256::ZERO, &init, 0);
        hashes.push(
            net.call("eth_sendRawTransaction", json!([hex(&tx.encoded_2718())]))
                .await,
        );
    }
    let new = net.call("eth_getFilterChanges", json!([logs])).await;
    let seen: Vec<_> = new
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["transactionHash"].clone())
        .collect();
    assert_eq!(seen, hashes);
    // Reported once; the whole range is still there for eth_getFilterLogs.
    assert_eq!(
        net.call("eth_getFilterChanges", json!([logs])).await,
        json!([])
    );
    assert_eq!(
        net.call("eth_getFilterLogs", json!([logs]))
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let new_blocks = net.call("eth_getFilterChanges", json!([blocks])).await;
    assert_eq!(new_blocks.as_array().unwrap().len(), 2);
    let latest = net
        .call("eth_getBlockByNumber", json!(["latest", false]))
        .await;
    assert_eq!(new_blocks[1], latest["hash"]);
    // Uninstalled: gone; an unknown id is an error, not an empty answer.
    assert_eq!(net.call("eth_uninstallFilter", json!([logs])).await, true);
    assert_eq!(net.call("eth_uninstallFilter", json!([logs])).await, false);
    let e = net.error("eth_getFilterChanges", json!([logs])).await;
    assert!(e["message"].as_str().unwrap().contains("not found"), "{e}");
    // Installing without end is refused.
    for _ in 0..crate::filters::MAX_FILTERS - 1 {
        net.call("eth_newBlockFilter", json!([])).await;
    }
    assert_eq!(
        net.error("eth_newBlockFilter", json!([])).await["code"],
        -32005
    );
}

/// A page of a configured read origin (the explorer's) may read the chain and nothing else; any
/// other origin gets no CORS grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_read_origins_pages_may_read_and_never_send() {
    let explorer = "http://127.0.0.1:7404";
    let net = start(RpcConfig {
        read_origins: vec![explorer.into()],
        ..Default::default()
    })
    .await;
    let preflight = |origin: &'static str| {
        net.http
            .request(reqwest::Method::OPTIONS, &net.url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight(explorer).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], explorer);
    let other = preflight("http://evil.example").await.unwrap();
    assert_eq!(other.status(), 403);
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let from = |origin: &'static str, method: &str| {
        net.http
            .post(&net.url)
            .header("content-type", "application/json")
            .header("origin", origin)
            .body(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).to_string())
            .send()
    };
    let read = from(explorer, "eth_chainId").await.unwrap();
    assert_eq!(read.headers()["access-control-allow-origin"], explorer);
    let v: Value = read.json().await.unwrap();
    assert_eq!(v["result"], "0x7a69");
    // Sending (even a well-formed transaction) is refused to the page; so are dev methods.
    let key = SigningKey::from_signer(&dev_signer(1));
    let to = TxKind::Call(Address::repeat_byte(9));
    let signed =
        Bytes::from(eip1559(&key, CHAIN, 0, to, U256::from(1u64), b"", GWEI).encoded_2718());
    let sent: Value = net
        .http
        .post(&net.url)
        .header("content-type", "application/json")
        .header("origin", explorer)
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": [signed]})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["error"]["code"], -32601, "{sent}");
    assert_eq!(
        net.call(
            "eth_getTransactionCount",
            json!([dev_signer(1).address(), "latest"])
        )
        .await,
        "0x0"
    );
    // Another origin's request is answered without a CORS grant (its page cannot read it).
    let other = from("http://evil.example", "eth_chainId").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
