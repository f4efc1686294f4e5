//! Payments end to end: `cairn infer` and the official x402 clients pay real nodes (the devnet's
//! embedded chain, and anvil), balances move by exactly the price, receipts carry the payment,
//! and replays, bad payments and failing requests cost nothing.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{SolEvent, SolValue};
use cairn_ledger::contracts::{CairnToken, Escrow};
use cairn_ledger::{Chain, Deployment, LogFilter, dev_signer};
use common::{
    AnvilChain, BIN, Server, balance, block, cairn_ok as cairn, devnet_chain, examples, funded_key,
    json_report,
};
use serde_json::Value;

const PRICE: u64 = 1_500;

fn get(url: &str) -> Value {
    block(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
}

/// The payment reference of every EIP-3009 authorization `payer` has used on `chain`.
fn used_refs(chain: &Chain, payer: Address) -> Vec<B256> {
    let token = chain.deployment().token;
    let logs = block(chain.ledger().logs(LogFilter {
        address: Some(token),
        topic0: Some(CairnToken::AuthorizationUsed::SIGNATURE_HASH),
        from_block: 0,
        ..Default::default()
    }))
    .unwrap();
    logs.iter()
        .filter_map(|l| CairnToken::AuthorizationUsed::decode_log(&l.log).ok())
        .filter(|e| e.authorizer == payer)
        .map(|e| keccak256((token, payer, e.nonce).abi_encode()))
        .collect()
}

fn payment_ref(receipt: &Value) -> B256 {
    receipt["typedData"]["message"]["paymentRef"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn infer(node: &str, payer: &Path, receipt: &Path) -> String {
    cairn(&[
        "infer",
        "digits@1.0",
        "--input",
        examples().join("digit.json").to_str().unwrap(),
        "--node",
        node,
        "--payer-key",
        payer.to_str().unwrap(),
        "--receipt-out",
        receipt.to_str().unwrap(),
    ])
}

/// `cairn pay deposit` of `amount` with the node at `node`: the channel then has it available.
fn deposit(node: &str, payer_key: &Path, amount: u64) {
    let out = cairn(&[
        "pay",
        "deposit",
        "--node",
        node,
        "--payer-key",
        payer_key.to_str().unwrap(),
        "--amount",
        &amount.to_string(),
    ]);
    assert!(out.contains(&format!("available: {amount}")), "{out}");
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The official Python client (`x402[evm,httpx]`, installed by scripts/test-deps.sh) pays
/// `url`; returns its JSON report `{status, body, paymentResponse}`.
fn python_pay(url: &str, key_hex: &str, extra: &[&str]) -> Value {
    let py = std::env::var("CAIRN_PY").expect("CAIRN_PY (scripts/test.sh sets it)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/x402_pay.py");
    json_report(
        Command::new(py)
            .arg(script)
            .args([
                url,
                key_hex,
                examples().join("digit.json").to_str().unwrap(),
            ])
            .args(extra),
    )
}

/// The official Python `upto` client (`tests/python/x402_upto_pay.py`) pays `node` as dev
/// account `payer`, POSTing each (path, request file) in turn; `gasless`: with an EIP-2612
/// approval inside the payment instead of an approval transaction through `rpc`. Its report.
fn python_upto(
    node: &str,
    rpc: &str,
    payer: usize,
    calls: &[(&str, &Path)],
    gasless: bool,
) -> Value {
    let mut cmd = python_client("x402_upto_pay.py", node, rpc, payer, calls);
    if gasless {
        cmd.env("X402_GASLESS", "1");
    }
    json_report(&mut cmd)
}

/// The official Python client `script` paying `node` as dev account `payer`, POSTing `calls`.
fn python_client(
    script: &str,
    node: &str,
    rpc: &str,
    payer: usize,
    calls: &[(&str, &Path)],
) -> Command {
    let py = std::env::var("CAIRN_PY").expect("CAIRN_PY (scripts/test.sh sets it)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut cmd = Command::new(py);
    cmd.arg(script).args([node, rpc, &key_hex(payer)]);
    for (path, file) in calls {
        cmd.arg(path).arg(file);
    }
    cmd
}

fn key_hex(i: usize) -> String {
    format!(
        "0x{}",
        alloy_primitives::hex::encode(dev_signer(i).to_bytes())
    )
}

#[test]
fn devnet_cli_and_official_python_client_pay_exactly_the_price() {
    if std::env::var("CAIRN_PY").is_err() && std::env::var("CAIRN_TEST_REQUIRE_SERVICES").is_err() {
        eprintln!("SKIP: CAIRN_PY not set (run scripts/test.sh)");
        return;
    }
    // Batches are sealed late, so the vault holds what was paid while we look.
    let net = Server::devnet_with(&[
        "--price",
        &PRICE.to_string(),
        "--batch-max-age-secs",
        "3600",
    ]);
    let dir = net.dir.path();
    let data = dir.join("data");
    let payer_key = data.join("chain/payer.key");
    let payer = dev_signer(6).address();
    let info = get(&format!("{}/v1/node", net.node_url));
    let vault: Address = info["payments"]["payTo"].as_str().unwrap().parse().unwrap();

    // Unpaid: a 402 whose message says how to pay.
    let out = Command::new(BIN)
        .args([
            "infer",
            "digits@1.0",
            "--input",
            examples().join("digit.json").to_str().unwrap(),
        ])
        .args(["--node", &net.node_url])
        .env_remove("CAIRN_PAYER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("payment_required") && err.contains("--payer-key"),
        "{err}"
    );
    // The same key away from the devnet's deployment: a gasless deposit would pay into the
    // escrow the node names, so nothing is signed until the payer names the deployment it trusts.
    let bare = dir.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(&payer_key, bare.join("payer.key")).unwrap();
    let out = Command::new(BIN)
        .args([
            "pay",
            "deposit",
            "--node",
            &net.node_url,
            "--amount",
            "1000",
        ])
        .arg("--payer-key")
        .arg(bare.join("payer.key"))
        .env_remove("CAIRN_RPC")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--deployment FILE") && err.contains("nothing was signed"),
        "{err}"
    );

    // `cairn infer` pays with `exact`.
    let chain = devnet_chain(&data);
    let (p0, v0) = (balance(&chain, payer), balance(&chain, vault));
    let receipt_file = dir.join("r-exact.json");
    let out = infer(&net.node_url, &payer_key, &receipt_file);
    assert!(out.contains("label INT64 [1]: [2]"), "{out}");
    assert!(
        out.contains(&format!("paid:     {PRICE} token units (exact)")),
        "{out}"
    );
    let chain = devnet_chain(&data);
    assert_eq!(balance(&chain, payer), p0 - U256::from(PRICE));
    assert_eq!(balance(&chain, vault), v0 + U256::from(PRICE));
    let receipt = read(&receipt_file);
    assert_eq!(receipt["typedData"]["message"]["price"], PRICE.to_string());
    assert_eq!(used_refs(&chain, payer), vec![payment_ref(&receipt)]);

    // The official Python client pays with `exact` too (dev account 7).
    let py_payer = dev_signer(7).address();
    let (p0, v0) = (balance(&chain, py_payer), balance(&chain, vault));
    let url = format!("{}/v2/models/digits@1.0/infer", net.node_url);
    let r = python_pay(&url, &key_hex(7), &[]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["outputs"][0]["data"][0], 2);
    let pr = &r["paymentResponse"];
    assert_eq!(pr["success"], true, "{r}");
    assert_eq!(pr["network"], "eip155:31337");
    assert!(
        pr["payer"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&py_payer.to_string())
    );
    let chain = devnet_chain(&data);
    assert_eq!(balance(&chain, py_payer), p0 - U256::from(PRICE));
    assert_eq!(balance(&chain, vault), v0 + U256::from(PRICE));
    let receipt = &r["body"]["parameters"]["receipt"];
    assert_eq!(used_refs(&chain, py_payer), vec![payment_ref(receipt)]);

    // Prepaid: one gasless deposit, then vouchers the node checks without the chain.
    let chain = devnet_chain(&data);
    let p0 = balance(&chain, payer);
    let salt = B256::ZERO;
    let channel = Chain::channel_id(payer, vault, salt);
    assert_eq!(
        block(chain.channel(payer, vault, salt)).unwrap(),
        (U256::ZERO, U256::ZERO)
    );
    deposit(&net.node_url, &payer_key, 30000);
    let chain = devnet_chain(&data);
    assert_eq!(balance(&chain, payer), p0 - U256::from(30_000u64));
    assert_eq!(
        block(chain.channel(payer, vault, salt)).unwrap(),
        (U256::from(30_000u64), U256::ZERO)
    );
    let mut refs = Vec::new();
    for i in 0..3 {
        let file = dir.join(format!("r-pre-{i}.json"));
        let out = infer(&net.node_url, &payer_key, &file);
        assert!(
            out.contains(&format!("paid:     {PRICE} token units (prepaid)")),
            "{out}"
        );
        // Each receipt names the voucher that paid it (keccak of channel, ceiling and
        // nonce), as the node's PAYMENT-RESPONSE did.
        let r = payment_ref(&read(&file));
        assert!(out.contains(&format!("payment ref {r}")), "{out}");
        assert!(!refs.contains(&r));
        refs.push(r);
    }
    let out = cairn(&[
        "pay",
        "balance",
        "--node",
        &net.node_url,
        "--payer-key",
        payer_key.to_str().unwrap(),
    ]);
    assert!(out.contains(&format!("spent:     {}", 3 * PRICE)), "{out}");
    assert!(
        out.contains(&format!("available: {}", 30000 - 3 * PRICE)),
        "{out}"
    );
    // No chain transaction per request: the payer's balance did not move.
    assert_eq!(
        balance(&devnet_chain(&data), payer),
        p0 - U256::from(30_000u64)
    );
    // The node redeems the latest voucher (every 5 s on the devnet): the vault gets it, the
    // channel records it, and the redemption is the voucher the last receipt names.
    let v_before = balance(&devnet_chain(&data), vault);
    common::eventually(30, || {
        balance(&devnet_chain(&data), vault) == v_before + U256::from(3 * PRICE)
    });
    let chain = devnet_chain(&data);
    assert_eq!(
        block(chain.channel(payer, vault, salt)).unwrap(),
        (U256::from(30_000u64), U256::from(3 * PRICE))
    );
    let redeemed: Vec<U256> = block(chain.ledger().logs(LogFilter {
        address: Some(chain.deployment().escrow),
        topic0: Some(Escrow::Redeemed::SIGNATURE_HASH),
        from_block: 0,
        ..Default::default()
    }))
    .unwrap()
    .iter()
    .filter_map(|l| Escrow::Redeemed::decode_log(&l.log).ok())
    .filter(|e| e.channel == channel)
    .map(|e| e.claimed)
    .collect();
    // Redemptions may land between calls; each redeems a voucher a receipt names, in order.
    assert!(redeemed.windows(2).all(|w| w[0] < w[1]), "{redeemed:?}");
    assert!(
        redeemed
            .iter()
            .all(|c| (1..=3).any(|k| *c == U256::from(k * PRICE))),
        "{redeemed:?}"
    );
    assert_eq!(*redeemed.last().unwrap(), U256::from(3 * PRICE));
}

/// Builds an `exact` payment header for the node's current offer, signed by dev account `i`.
fn exact_header(infer_url: &str, i: usize) -> String {
    block(async {
        let r = reqwest::Client::new()
            .post(infer_url)
            .body(std::fs::read(examples().join("digit.json")).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
        let req = cairn_x402::client::offers(r.headers()).unwrap();
        let offer = req.accepts.iter().find(|o| o.scheme == "exact").unwrap();
        cairn_x402::client::pay_exact(&dev_signer(i), &req, offer).unwrap()
    })
}

/// Like [`post`], with the answer's JSON body too.
async fn post_answer(url: &str, header: &str, body: Vec<u8>) -> (u16, Value, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("PAYMENT-SIGNATURE", header)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v2 = r
        .headers()
        .get("payment-required")
        .and_then(|h| {
            cairn_x402::wire::decode_header::<Value>("PAYMENT-REQUIRED", h.as_bytes()).ok()
        })
        .unwrap_or_default();
    (status, v2, r.json().await.unwrap_or_default())
}

async fn post(url: &str, header: &str, body: Vec<u8>) -> (u16, Value) {
    let (status, v2, _) = post_answer(url, header, body).await;
    (status, v2)
}

#[test]
fn a_node_runs_a_replayed_payment_once_and_charges_nothing_for_failures() {
    let net = Server::devnet_with(&["--price", &PRICE.to_string()]);
    let data = net.dir.path().join("data");
    let url = format!("{}/v2/models/digits@1.0/infer", net.node_url);
    let good = std::fs::read(examples().join("digit.json")).unwrap();
    let receipts = || {
        get(&format!("{}/v1/node", net.node_url))["receipts"]
            .as_u64()
            .unwrap()
    };
    let payer = dev_signer(8).address();
    let start = receipts();

    // Sequential replay: nothing runs again and nothing is charged again; the same payment for
    // the same resource gets the answer it already bought (a client that lost it to a cut
    // connection must not pay twice).
    let h = exact_header(&url, 8);
    let p0 = balance(&devnet_chain(&data), payer);
    let (first, _, r1) = block(post_answer(&url, &h, good.clone()));
    assert_eq!(first, 200);
    let (again, _, r2) = block(post_answer(&url, &h, good.clone()));
    assert_eq!(again, 200);
    assert_eq!(r1["parameters"]["receipt"], r2["parameters"]["receipt"]);
    assert_eq!(receipts(), start + 1);
    assert_eq!(balance(&devnet_chain(&data), payer), p0 - U256::from(PRICE));
    // The same payment for another model is a replay: refused.
    let other = url.replace("digits@1.0", "digits");
    let (status, v2, _) = block(post_answer(&other, &h, good.clone()));
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("invalid_exact_evm_nonce_already_used"))
    );

    // Parallel replay of a fresh payment: exactly one runs; the others are refused while it
    // runs or get its answer after.
    let h = exact_header(&url, 8);
    let all = block(futures::future::join_all(
        (0..8).map(|_| post_answer(&url, &h, good.clone())),
    ));
    let ok: Vec<&Value> = all.iter().filter(|r| r.0 == 200).map(|r| &r.2).collect();
    assert!(!ok.is_empty(), "{all:?}");
    assert!(
        ok.iter()
            .all(|r| r["parameters"]["receipt"] == ok[0]["parameters"]["receipt"])
    );
    // Refused while the first still settles, or as used once it ran: nothing else.
    for r in all.iter().filter(|r| r.0 != 200) {
        assert_eq!(r.0, 402, "{all:?}");
        assert!(
            matches!(
                r.1["error"].as_str(),
                Some("settlement_pending" | "invalid_exact_evm_nonce_already_used")
            ),
            "{all:?}"
        );
    }
    assert_eq!(receipts(), start + 2);

    // A request that fails (bad input) is not charged, and its payment stays usable.
    let p0 = balance(&devnet_chain(&data), payer);
    let h = exact_header(&url, 8);
    let bad =
        br#"{"inputs":[{"name":"nope","shape":[1,64],"datatype":"FP32","data":[0]}]}"#.to_vec();
    let (status, _, body) = block(post_answer(&url, &h, bad));
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_shape")),
        "{body}"
    );
    assert_eq!(balance(&devnet_chain(&data), payer), p0);
    let (status, _) = block(post(&url, &h, good.clone()));
    assert_eq!(status, 200);
    assert_eq!(balance(&devnet_chain(&data), payer), p0 - U256::from(PRICE));

    // Twelve paid requests in parallel all settle, with no nonce errors.
    let p0 = balance(&devnet_chain(&data), payer);
    let headers: Vec<String> = (0..12).map(|_| exact_header(&url, 8)).collect();
    let all = block(futures::future::join_all(
        headers.iter().map(|h| post(&url, h, good.clone())),
    ));
    assert!(all.iter().all(|r| r.0 == 200), "{all:?}");
    assert_eq!(
        balance(&devnet_chain(&data), payer),
        p0 - U256::from(12 * PRICE)
    );
}

/// A node settling on anvil with chain id 84532 ("base-sepolia", so v1 clients know it); the
/// devnet serves the hub.
struct AnvilNode {
    _anvil: cairn_ledger::anvil::Anvil,
    anvil_url: String,
    _net: Server,
    node: Server,
    anv: AnvilChain,
    dir: tempfile::TempDir,
}

fn anvil_node(test: &str, extra: &[&str]) -> Option<AnvilNode> {
    let anvil = cairn_ledger::anvil::Anvil::for_test(test, 84532)?;
    let anvil_url = anvil.url().to_owned();
    let net = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (node_key, node_addr) = funded_key(&anvil_url, d, "node.key");
    let anv = AnvilChain::deploy(&anvil_url, d, &[]);
    anv.mint(&node_addr, "1000000000000");
    let price = PRICE.to_string();
    let mut node_args = vec!["--key", node_key.to_str().unwrap(), "--price", &price];
    node_args.extend_from_slice(&anv.args());
    node_args.extend_from_slice(extra);
    let node = Server::node(&net.url, &node_args);
    anv.register(&node_key, "inference", "1000000000", &node.node_url);
    Some(AnvilNode {
        _anvil: anvil,
        anvil_url,
        _net: net,
        node,
        anv,
        dir,
    })
}

impl AnvilNode {
    fn chain(&self) -> Chain {
        block(async {
            let l = cairn_ledger::RpcLedger::connect(
                &self.anvil_url,
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
            Chain::new(Arc::new(l), Deployment::load(&self.anv.dep).unwrap()).unwrap()
        })
    }

    /// Mints tokens to dev account `i` and returns its address.
    fn fund(&self, i: usize) -> Address {
        self.anv
            .mint(&dev_signer(i).address().to_string(), "1000000000");
        dev_signer(i).address()
    }
}

/// An official TypeScript client (`crates/cairn-cli/tests/npm`, installed by
/// scripts/npm-deps.sh) run in `mode`; returns its JSON report.
fn npm(mode: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/npm/interop.mjs");
    json_report(Command::new("node").arg(script).arg(mode).args(args))
}

fn clients_present() -> bool {
    let have = std::env::var("CAIRN_PY").is_ok() && std::env::var("CAIRN_NPM_INTEROP").is_ok();
    if !have {
        assert!(
            std::env::var("CAIRN_TEST_REQUIRE_SERVICES").is_err(),
            "CAIRN_PY and CAIRN_NPM_INTEROP are required (scripts/test.sh sets them)"
        );
        eprintln!("SKIP: the official x402 clients are not installed (run scripts/test.sh)");
    }
    have
}

#[test]
fn official_python_and_typescript_clients_v2_and_v1_pay_a_node_settling_on_anvil() {
    let Some(a) = anvil_node("x402 clients on anvil", &[]) else {
        return;
    };
    if !clients_present() {
        return;
    }
    let chain = a.chain();
    let node_addr: Address = get(&format!("{}/v1/node", a.node.node_url))["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let vault = block(chain.vault_of(node_addr)).unwrap();
    let url = format!("{}/v2/models/digits@1.0/infer", a.node.node_url);
    let request = examples().join("digit.json");
    let request = request.to_str().unwrap();
    let clients: [(usize, &str, &str); 3] = [
        (6, "python x402 2.25.0 (v2)", "eip155:84532"),
        (7, "@x402/fetch 2.27.0 (v2)", "eip155:84532"),
        (8, "x402-fetch 1.2.0 (v1)", "base-sepolia"),
    ];
    for (i, client, network) in clients {
        let payer = a.fund(i);
        let (p0, v0) = (balance(&chain, payer), balance(&chain, vault));
        let key = key_hex(i);
        let r = match i {
            6 => python_pay(&url, &key, &[]),
            7 => npm("pay2", &[&url, &key, request]),
            _ => npm("pay1", &[&url, &key, request]),
        };
        assert_eq!(r["status"], 200, "{client}: {r}");
        assert_eq!(r["body"]["outputs"][0]["data"][0], 2, "{client}");
        let pr = &r["paymentResponse"];
        assert_eq!(pr["success"], true, "{client}: {r}");
        assert_eq!(pr["network"], network, "{client}: {r}");
        assert_eq!(balance(&chain, payer), p0 - U256::from(PRICE), "{client}");
        assert_eq!(balance(&chain, vault), v0 + U256::from(PRICE), "{client}");
        let receipt = &r["body"]["parameters"]["receipt"];
        assert_eq!(
            used_refs(&chain, payer),
            vec![payment_ref(receipt)],
            "{client}"
        );
    }
    // A language-model call on a model the hub does not have is a 404 before any payment is
    // asked (nobody pays for nothing); this node sets no per-token price, and says so.
    let info = get(&format!("{}/v1/node", a.node.node_url));
    assert_eq!(
        info["payments"]["llmPrices"],
        serde_json::json!([]),
        "{info}"
    );
    let (status, body) = block(async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", a.node.node_url))
            .json(&serde_json::json!({"model": "any@1.0", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
}

/// The official `batch-settlement` client pays a node settling on anvil: the node submits the
/// deposit, counts the vouchers, claims the channel and sweeps it to its vault; balances move by
/// exactly what was charged.
#[test]
fn the_official_batch_settlement_client_pays_a_node_settling_on_anvil() {
    let Some(a) = anvil_node(
        "batch-settlement client on anvil",
        &["--redeem-every-secs", "1"],
    ) else {
        return;
    };
    if !clients_present() {
        return;
    }
    let chain = a.chain();
    let batch = chain
        .deployment()
        .batch
        .expect("anvil has the batch-settlement contracts");
    let node_addr: Address = get(&format!("{}/v1/node", a.node.node_url))["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let vault = block(chain.vault_of(node_addr)).unwrap();
    let payer = a.fund(10);
    let (p0, v0) = (balance(&chain, payer), balance(&chain, vault));
    let digit = examples().join("digit.json");
    let onnx = ("/v2/models/digits@1.0/infer", digit.as_path());
    let report = json_report(&mut python_client(
        "x402_batch_pay.py",
        &a.node.node_url,
        &a.anvil_url,
        10,
        &[onnx, onnx],
    ));
    for (n, r) in report.as_array().unwrap().iter().enumerate() {
        assert_eq!(r["status"], 200, "{r}");
        let pr = &r["paymentResponse"];
        assert_eq!(pr["success"], true, "{r}");
        assert_eq!(pr["network"], "eip155:84532", "{r}");
        assert_eq!(pr["extra"]["chargedAmount"], PRICE.to_string(), "{r}");
        assert_eq!(
            pr["extra"]["channelState"]["chargedCumulativeAmount"],
            ((n as u64 + 1) * PRICE).to_string(),
            "{r}"
        );
    }
    let deposited = p0 - balance(&chain, payer);
    assert!(deposited >= U256::from(2 * PRICE), "{deposited}");
    let charged = U256::from(2 * PRICE);
    common::eventually(60, || balance(&chain, vault) == v0 + charged);
    assert_eq!(balance(&chain, payer), p0 - deposited);
    assert_eq!(balance(&chain, batch.settlement), deposited - charged);
}

#[test]
fn cairn_facilitator_behind_the_official_express_server() {
    let Some(a) = anvil_node("facilitator behind @x402/express", &[]) else {
        return;
    };
    if !clients_present() {
        return;
    }
    let d = a.dir.path();
    let (fkey, _) = funded_key(&a.anvil_url, d, "facilitator.key");
    let chain = a.anv.args();
    let shop = Address::repeat_byte(0x5a);
    let shop_arg = shop.to_string();
    let keys = d.join("facilitator-api-keys");
    std::fs::write(&keys, "test-api-key\n").unwrap();
    let mut args = vec!["facilitator", "serve", "--listen", "127.0.0.1:0", "--key"];
    args.extend_from_slice(&[fkey.to_str().unwrap(), "--data-dir", d.to_str().unwrap()]);
    args.extend_from_slice(&["--pay-to", &shop_arg, "--api-keys", keys.to_str().unwrap()]);
    args.extend_from_slice(&chain);
    let fac = Server::command(&args, "facilitator:");
    let supported = get(&format!("{}/supported", fac.url));
    assert_eq!(
        supported["kinds"][0]["network"], "eip155:84532",
        "{supported}"
    );

    let c = a.chain();
    let token = c.deployment().token;
    let domain = block(c.token_domain()).unwrap();
    let server_args = [
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/npm/interop.mjs")
            .to_string_lossy()
            .into_owned(),
        "express".to_string(),
        fac.url.clone(),
        shop.to_string(),
        token.to_string(),
        PRICE.to_string(),
        domain.name.clone().unwrap().to_string(),
        domain.version.clone().unwrap().to_string(),
        "test-api-key".to_string(),
    ];
    let express = Server::spawn_program("node", &server_args, "express:");
    let payer = a.fund(7);
    let p0 = balance(&c, payer);
    // @x402/fetch pays the express server, which verifies and settles through Cairn.
    let r = npm("get2", &[&express.url, &key_hex(7)]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["hello"], "paid world");
    assert_eq!(r["paymentResponse"]["success"], true, "{r}");
    assert_eq!(balance(&c, payer), p0 - U256::from(PRICE));
    assert_eq!(balance(&c, shop), U256::from(PRICE));

    // `upto` the other way round: the official Python package's resource-server side (its HTTP
    // facilitator client and upto server scheme) builds requirements from Cairn's /supported,
    // verifies a permit its own client signed for 2,000 through Cairn, then settles 1,234; a
    // retried settle gets the first outcome, not a second transfer.
    let upto_payer = a.fund(9);
    block(async {
        let l = cairn_ledger::RpcLedger::connect(&a.anvil_url, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        l.dev_set_balance(upto_payer, U256::from(10u128.pow(20)))
            .await
            .unwrap();
    });
    let (u0, s0) = (balance(&c, upto_payer), balance(&c, shop));
    let py = std::env::var("CAIRN_PY").expect("CAIRN_PY (scripts/test.sh sets it)");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/x402_upto_facilitator.py");
    let r = json_report(Command::new(py).arg(script).args([
        fac.url.as_str(),
        "test-api-key",
        a.anvil_url.as_str(),
        &key_hex(9),
        &token.to_string(),
        &shop.to_string(),
        "eip155:84532",
        domain.name.as_deref().unwrap(),
        domain.version.as_deref().unwrap(),
        "2000",
        "1234",
    ]));
    assert_eq!(r["verify"]["isValid"], true, "{r}");
    assert_eq!(r["settle"]["success"], true, "{r}");
    assert_eq!(r["settle"]["amount"], "1234", "{r}");
    assert_eq!(r["settleAgain"]["success"], true, "{r}");
    assert_eq!(
        r["settleAgain"]["transaction"], r["settle"]["transaction"],
        "{r}"
    );
    assert_eq!(balance(&c, upto_payer), u0 - U256::from(1_234u64));
    assert_eq!(balance(&c, shop), s0 + U256::from(1_234u64));

    // `batch-settlement` the other way round: the official server side (its server scheme and
    // channel manager) takes Cairn's facilitator as its channels' receiver authorizer, verifies
    // and settles the official client's deposit through it, counts two more vouchers itself,
    // and claims and sweeps through it: the shop gets exactly what was charged.
    let batch_payer = a.fund(11);
    let (b0, s0) = (balance(&c, batch_payer), balance(&c, shop));
    let py = std::env::var("CAIRN_PY").expect("CAIRN_PY (scripts/test.sh sets it)");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/x402_batch_facilitator.py");
    let r = json_report(Command::new(py).arg(script).args([
        fac.url.as_str(),
        "test-api-key",
        &key_hex(11),
        &token.to_string(),
        &shop.to_string(),
        "eip155:84532",
        domain.name.as_deref().unwrap(),
        domain.version.as_deref().unwrap(),
        &PRICE.to_string(),
        "3",
    ]));
    let payments = r["payments"].as_array().unwrap();
    assert_eq!(payments[0]["type"], "deposit", "{r}");
    for p in payments {
        assert_eq!(p["verify"]["isValid"], true, "{r}");
        assert_eq!(p["settle"]["success"], true, "{r}");
    }
    assert!(
        r["claims"][0].as_str().unwrap().contains("vouchers=1"),
        "{r}"
    );
    assert!(
        r["sweep"].as_str().unwrap().contains("transaction='0x"),
        "{r}"
    );
    assert_eq!(balance(&c, shop), s0 + U256::from(3 * PRICE), "{r}");
    let deposited = b0 - balance(&c, batch_payer);
    let batch = c.deployment().batch.unwrap();
    assert_eq!(
        balance(&c, batch.settlement),
        deposited - U256::from(3 * PRICE),
        "{r}"
    );

    let post = |path: &str, auth: Option<&str>, body: String| {
        block(async {
            let mut r = reqwest::Client::new()
                .post(format!("{}{path}", fac.url))
                .body(body);
            if let Some(a) = auth {
                r = r.header("authorization", format!("Bearer {a}"));
            }
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    // A body that is not a facilitator request gets a JSON error.
    let (status, body) = post("/verify", Some("test-api-key"), "{not json".into());
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(body["message"].is_string(), "{body}");
    // Attack: a stranger makes the facilitator pay gas for its own 1-unit transfers.
    let stranger = a.fund(8);
    let dust = serde_json::json!({
        "x402Version": 2,
        "paymentRequirements": {"scheme": "exact", "network": "eip155:84532", "amount": "1",
            "asset": token.to_string(), "payTo": stranger.to_string(), "maxTimeoutSeconds": 60,
            "extra": {"name": domain.name.clone().unwrap(), "version": domain.version.clone().unwrap()}},
        "paymentPayload": {},
    });
    // Without the API key: refused before anything is parsed or read from the chain.
    for path in ["/verify", "/settle"] {
        let (status, body) = post(path, None, dust.to_string());
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{body}"
        );
        let (status, body) = post(path, Some("a-guess"), dust.to_string());
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{body}"
        );
    }
    // With it, another payee or a dust amount is still refused.
    let (status, body) = post("/settle", Some("test-api-key"), dust.to_string());
    assert_eq!(status, 200);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(
        body["errorReason"], "invalid_payment_requirements",
        "{body}"
    );
    // Its metrics, read by Prometheus' parser: settlements and refusals by status.
    let m = common::scrape_metrics(std::slice::from_ref(&fac.url));
    let settle = |status: &str| {
        common::metric_sum(
            &m[&fac.url],
            "cairn_facilitator_http_requests_total",
            &[("route", "/settle"), ("method", "POST"), ("status", status)],
        )
    };
    assert!(settle("200") >= 2.0 && settle("401") >= 1.0, "{m:?}");
}

#[test]
fn a_settlement_still_pending_keeps_the_output_until_it_is_confirmed() {
    // The node waits at most 2 s for a receipt; anvil stops mining on its own.
    let Some(a) = anvil_node("settlement_pending on anvil", &["--rpc-wait-secs", "2"]) else {
        return;
    };
    let chain = a.chain();
    let payer = a.fund(6);
    let url = format!("{}/v2/models/digits@1.0/infer", a.node.node_url);
    let good = std::fs::read(examples().join("digit.json")).unwrap();
    let receipts = || {
        get(&format!("{}/v1/node", a.node.node_url))["receipts"]
            .as_u64()
            .unwrap()
    };
    let start = receipts();
    let p0 = balance(&chain, payer);
    let rpc = block(cairn_ledger::RpcLedger::connect(
        &a.anvil_url,
        std::time::Duration::from_secs(30),
    ))
    .unwrap();
    block(rpc.dev_rpc("evm_setAutomine", serde_json::json!([false]))).unwrap();

    let h = exact_header(&url, 6);
    // The transfer is sent but not mined: the output is withheld as settlement_pending.
    let (status, v2) = block(post(&url, &h, good.clone()));
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("settlement_pending")),
        "{v2}"
    );
    // Presented again while still unmined: the same answer, and the model does not run again.
    let (status, v2) = block(post(&url, &h, good.clone()));
    assert_eq!(
        (status, v2["error"].as_str()),
        (402, Some("settlement_pending")),
        "{v2}"
    );
    assert_eq!(receipts(), start + 1);

    // Once mined, the same payment fetches the kept output; the payer paid exactly once.
    block(rpc.dev_rpc("evm_mine", serde_json::json!([]))).unwrap();
    block(rpc.dev_rpc("evm_setAutomine", serde_json::json!([true]))).unwrap();
    let r = block(async {
        reqwest::Client::new()
            .post(&url)
            .header("PAYMENT-SIGNATURE", &h)
            .body(good.clone())
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status(), 200);
    let settle = cairn_x402::client::settle_response(r.headers()).unwrap();
    assert!(settle.success, "{settle:?}");
    assert!(settle.transaction.starts_with("0x"), "{settle:?}");
    let body: Value = block(r.json()).unwrap();
    assert_eq!(body["outputs"][0]["data"][0], 2, "{body}");
    assert_eq!(
        payment_ref(&body["parameters"]["receipt"]),
        used_refs(&chain, payer)[0]
    );
    assert_eq!(receipts(), start + 1);
    assert_eq!(balance(&chain, payer), p0 - U256::from(PRICE));
    // Presented once more it hands the same kept output over (a client whose connection dropped
    // gets what it paid for): no new run, no new charge.
    let (status, _) = block(post(&url, &h, good));
    assert_eq!(status, 200);
    assert_eq!(receipts(), start + 1);
    assert_eq!(balance(&chain, payer), p0 - U256::from(PRICE));
}

/// Attack: a payer who can cover one payment sends two at once. Both pass the local checks and
/// run; one transfer reverts. That one must leave no billable receipt (the node would escrow
/// its fee from its own pocket) and no output anyone can fetch.
#[test]
fn a_failed_settlement_is_neither_billed_nor_served() {
    let Some(a) = anvil_node("failed settlement on anvil", &["--batch-max-age-secs", "1"]) else {
        return;
    };
    let chain = a.chain();
    let payer = dev_signer(9).address();
    a.anv.mint(&payer.to_string(), &PRICE.to_string());
    let node_addr: Address = get(&format!("{}/v1/node", a.node.node_url))["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let url = format!("{}/v2/models/digits@1.0/infer", a.node.node_url);
    let good = std::fs::read(examples().join("digit.json")).unwrap();
    let headers = [exact_header(&url, 9), exact_header(&url, 9)];
    let all = block(futures::future::join_all(
        headers.iter().map(|h| post(&url, h, good.clone())),
    ));
    let statuses: Vec<u16> = all.iter().map(|r| r.0).collect();
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 200).count(),
            statuses.iter().filter(|s| **s == 402).count()
        ),
        (1, 1),
        "{all:?}"
    );
    let node_before = balance(&chain, node_addr);
    // Both requests ran and signed a receipt; the unpaid one is voided, payloads gone.
    let db = rusqlite::Connection::open(a.node.dir.path().join("node/receipts.sqlite")).unwrap();
    let rows = || -> Vec<(String, String, bool)> {
        db.prepare("SELECT id, billing, input IS NOT NULL FROM receipts ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    // Both rows are in SQLite once the index has taken them from the journal.
    common::eventually(20, || {
        let r = rows();
        r.len() == 2 && r.iter().all(|r| r.1 != "awaiting_payment")
    });
    let r = rows();
    assert_eq!(r.len(), 2, "{r:?}");
    let void = r.iter().find(|x| x.1 == "void").expect("a voided receipt");
    assert!(!void.2, "the unpaid output is still kept: {r:?}");
    assert!(r.iter().any(|x| x.1 == "final" && x.2), "{r:?}");
    // Its output is not served, not even to its payer (a signed request).
    let url_out = format!("{}/v1/receipts/{}/output", a.node.node_url, void.0);
    let h = cairn_core::auth::sign_url(&dev_signer(9), "GET", &url_out, b"").unwrap();
    let resp = block(async {
        let mut r = reqwest::Client::new().get(&url_out);
        for (k, v) in h.to_pairs() {
            r = r.header(k, v);
        }
        r.send().await.unwrap().status().as_u16()
    });
    assert_eq!(resp, 404);
    // The batch holds exactly the paid receipt, its fees come from the vault, not the node.
    common::eventually(30, || block(chain.batch_count()).unwrap() >= 1);
    let b = block(chain.batch(1)).unwrap();
    assert_eq!((b.count, b.fees), (1, U256::from(PRICE)));
    assert_eq!(balance(&chain, node_addr), node_before);
}

/// POSTs JSON `body` to `url`, with a payment header when given: (status, headers, bytes).
async fn post_json(
    url: &str,
    body: &Value,
    payment: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(p) = payment {
        req = req.header("PAYMENT-SIGNATURE", p);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// The devnet's language-model price: 100 units per 1,000 prompt tokens, 400 per 1,000
/// completion tokens, rounded up.
fn llm_charge(prompt: u32, completion: u32) -> U256 {
    U256::from((u64::from(prompt) * 100 + u64::from(completion) * 400).div_ceil(1_000))
}

fn channel_accepted(node: &str, payer: Address) -> U256 {
    let c = get(&format!("{node}/v1/prepaid/{payer}"));
    c["accepted"].as_str().unwrap().parse().unwrap()
}

/// The official Python client's `batch-settlement` scheme pays a devnet node, unchanged: its
/// first call deposits into a channel (an EIP-3009 authorization the node submits), every call
/// carries a cumulative voucher, a language-model call is charged its signed usage (below the
/// maximum the voucher allowed), and the node claims the channel in a batch and sweeps it to its
/// vault. A second client process with no local record picks the channel up from the chain
/// (and, when the node has counted more than was claimed, from the corrective 402).
#[test]
fn the_official_batch_settlement_client_pays_from_a_channel() {
    let test = "the_official_batch_settlement_client_pays_from_a_channel";
    let Some(model) = common::llm_model(test) else {
        return;
    };
    let net = Server::devnet_with(&[
        "--llm",
        model.to_str().unwrap(),
        "--llm-price",
        "100/400",
        "--price",
        &PRICE.to_string(),
        "--batch-max-age-secs",
        "3600",
    ]);
    let dir = net.dir.path();
    let data = dir.join("data");
    let payer = dev_signer(9);
    let info = get(&format!("{}/v1/node", net.node_url));
    let vault: Address = info["payments"]["payTo"].as_str().unwrap().parse().unwrap();
    assert!(
        info["payments"]["schemes"]
            .as_array()
            .unwrap()
            .contains(&Value::from("batch-settlement")),
        "{info}"
    );
    let chat = dir.join("chat.json");
    std::fs::write(
        &chat,
        serde_json::json!({"model": "smollm2-135m-instruct@1.0", "max_tokens": 16,
            "temperature": 0, "messages": [{"role": "user", "content": "Name a color."}]})
        .to_string(),
    )
    .unwrap();
    let (payer0, vault0) = {
        let c = devnet_chain(&data);
        (balance(&c, payer.address()), balance(&c, vault))
    };
    let digit = examples().join("digit.json");
    let run = |calls: &[(&str, &Path)]| {
        json_report(&mut python_client(
            "x402_batch_pay.py",
            &net.node_url,
            &net.rpc_url,
            9,
            calls,
        ))
    };
    let onnx = ("/v2/models/digits@1.0/infer", digit.as_path());
    let report = run(&[onnx, onnx, ("/v1/chat/completions", &chat), onnx]);
    let calls = report.as_array().unwrap();
    let mut cumulative = U256::ZERO;
    let mut charges = Vec::new();
    for c in calls {
        assert_eq!(c["status"], 200, "{c}");
        let pr = &c["paymentResponse"];
        assert_eq!(pr["success"], true, "{c}");
        let charged: U256 = pr["extra"]["chargedAmount"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        cumulative += charged;
        assert_eq!(
            pr["extra"]["channelState"]["chargedCumulativeAmount"],
            cumulative.to_string(),
            "{c}"
        );
        charges.push(charged);
    }
    assert_eq!(charges[0], U256::from(PRICE));
    // The language-model call: charged its signed usage, below the maximum it authorized.
    let r = common::receipt_when_stored(&net.node_url, calls[2]["receiptId"].as_str().unwrap(), 60);
    let usage = r.claims.llm.unwrap();
    let charged = llm_charge(usage.prompt_tokens, usage.completion_tokens);
    assert_eq!(r.claims.price, charged);
    assert_eq!(charges[2], charged);
    let onnx_receipt =
        cairn_receipt::SignedReceipt::verify_json(&calls[0]["body"]["parameters"]["receipt"])
            .unwrap();
    assert!(!onnx_receipt.claims.payment_ref.is_zero());
    assert_ne!(r.claims.payment_ref, onnx_receipt.claims.payment_ref);

    // The payer's money left once, into the channel: the deposit, nothing per call.
    let c = devnet_chain(&data);
    let batch = c.deployment().batch.unwrap();
    let deposited = payer0 - balance(&c, payer.address());
    assert!(
        deposited >= cumulative,
        "deposited {deposited}, charged {cumulative}"
    );
    assert_eq!(balance(&c, batch.settlement), deposited);

    // A new client process (no local record) pays the next call on the same channel: it reads
    // the claimed total from the chain, signs a voucher the node already counted, and takes the
    // corrective 402's channel state (its own latest voucher) to sign the right one.
    let mut other: Value = read(&digit);
    other["inputs"][0]["data"][0] = Value::from(1.0);
    let digit2 = dir.join("digit2.json");
    std::fs::write(&digit2, other.to_string()).unwrap();
    let again = run(&[("/v2/models/digits@1.0/infer", digit2.as_path())]);
    assert_eq!(again[0]["status"], 200, "{again}");
    cumulative += U256::from(PRICE);
    assert_eq!(
        again[0]["paymentResponse"]["extra"]["channelState"]["chargedCumulativeAmount"],
        cumulative.to_string(),
        "{again}"
    );

    // Cairn's own client pays from the same channel (`cairn infer --batch-deposit`). With no
    // account of its own, its first voucher is refused; the corrective 402 (the payer's latest
    // voucher, checked as its own signature) resynchronizes it. The next call is paid from its
    // account, with no deposit: the channel still holds enough. (Its own input: a voucher the
    // node counted, presented again with the request it paid for, gets that answer again.)
    let key_file = dir.join("payer9.key");
    std::fs::write(&key_file, key_hex(9)).unwrap();
    other["inputs"][0]["data"][0] = Value::from(2.0);
    let digit3 = dir.join("digit3.json");
    std::fs::write(&digit3, other.to_string()).unwrap();
    let asset = common::pay_asset(&data);
    let batch_args = |salt: &str| -> Vec<String> {
        [
            "infer",
            "digits@1.0",
            "--input",
            digit3.to_str().unwrap(),
            "--node",
            &net.node_url,
            "--payer-key",
            key_file.to_str().unwrap(),
            "--batch-deposit",
            "20000",
            "--salt",
            salt,
        ]
        .map(String::from)
        .to_vec()
    };
    // A key with no deployment beside it pays in no asset it was not told to: nothing signed,
    // and the flag that agrees to the node's token named.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(batch_args(&B256::ZERO.to_string()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--pay-asset {asset}")) && err.contains("nothing was paid"),
        "{err}"
    );
    let cairn_batch = |salt: B256| {
        let mut args = batch_args(&salt.to_string());
        args.extend(["--pay-asset".to_string(), asset.clone()]);
        cairn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for _ in 0..2 {
        let out = cairn_batch(B256::ZERO);
        cumulative += U256::from(PRICE);
        assert!(
            out.contains(&format!(
                "paid:     {PRICE} token units (batch-settlement) to {vault}, charged {PRICE}"
            )),
            "{out}"
        );
    }
    assert_eq!(
        balance(&devnet_chain(&data), payer.address()),
        payer0 - deposited
    );
    // On a channel of its own (another salt), the first payment carries the deposit (the
    // amount asked, above the node's minimum), the next one only a voucher.
    let salt1 = B256::with_last_byte(1);
    for _ in 0..2 {
        let out = cairn_batch(salt1);
        assert!(out.contains("(batch-settlement)"), "{out}");
    }
    let deposit1 = U256::from(20_000);
    let charged1 = U256::from(2 * PRICE);
    assert_eq!(
        balance(&devnet_chain(&data), payer.address()),
        payer0 - deposited - deposit1
    );
    // Its accounts: each channel's charge as the node counts it.
    let mut paid: Vec<String> = std::fs::read_dir(dir.join("payer9.key.prepaid"))
        .unwrap()
        .map(|e| {
            read(&e.unwrap().path())["paid"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    paid.sort();
    let mut want = vec![cumulative.to_string(), charged1.to_string()];
    want.sort();
    assert_eq!(paid, want);

    // The node claims what was charged in a batch and sweeps it to its vault: balances moved
    // by exactly the amounts charged; the rest of the deposits stays the payer's.
    common::eventually(60, || {
        balance(&devnet_chain(&data), vault) == vault0 + cumulative + charged1
    });
    let c = devnet_chain(&data);
    assert_eq!(balance(&c, payer.address()), payer0 - deposited - deposit1);
    assert_eq!(
        balance(&c, batch.settlement),
        deposited - cumulative + deposit1 - charged1
    );

    // The payer asks for the rest back (the client's cooperative refund, a new process again):
    // it gets every unit it was not charged, at once, without the withdraw delay.
    let report = json_report(
        python_client("x402_batch_pay.py", &net.node_url, &net.rpc_url, 9, &[]).env(
            "X402_REFUND",
            format!("{}/v2/models/digits@1.0/infer", net.node_url),
        ),
    );
    assert_eq!(report["refund"]["success"], true, "{report}");
    assert_eq!(
        report["refund"]["amount"],
        (deposited - cumulative).to_string(),
        "{report}"
    );
    let c = devnet_chain(&data);
    assert_eq!(balance(&c, payer.address()), payer0 - cumulative - deposit1);
    assert_eq!(balance(&c, batch.settlement), deposit1 - charged1);
    assert_eq!(balance(&c, vault), vault0 + cumulative + charged1);
}

/// Language-model calls cost their tokens. The 402 offers a prepaid voucher for the call's
/// most (its prompt and `max_tokens`); `cairn llm` pays it, the receipt's price is what its
/// signed usage costs, a stream the client leaves is charged what it delivered, replays and
/// forged vouchers cost nothing, and the node claims exactly what was charged from the escrow.
#[test]
fn language_model_calls_are_charged_per_token_with_prepaid_vouchers() {
    let test = "language_model_calls_are_charged_per_token_with_prepaid_vouchers";
    let Some(model) = common::llm_model(test) else {
        return;
    };
    let net = Server::devnet_with(&[
        "--llm",
        model.to_str().unwrap(),
        "--llm-price",
        "100/400",
        "--batch-max-age-secs",
        "3600",
    ]);
    let dir = net.dir.path();
    let data = dir.join("data");
    let payer_key = data.join("chain/payer.key");
    let payer = dev_signer(6).address();
    let info = get(&format!("{}/v1/node", net.node_url));
    let vault: Address = info["payments"]["payTo"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        info["payments"]["llmPrices"],
        serde_json::json!([{"model": "*", "promptPer1k": "100", "completionPer1k": "400"}]),
        "{info}"
    );
    let url = format!("{}/v1/chat/completions", net.node_url);
    let llm = "smollm2-135m-instruct@1.0";
    let ask = "Name three colors.";

    // Unpaid: 402 with three offers for the call's most, a prepaid voucher, an x402 `upto`
    // permit and an x402 `batch-settlement` voucher (an `exact` transfer cannot be for less
    // than it names).
    let body = serde_json::json!({"model": llm, "messages": [{"role": "user", "content": ask}],
                                  "max_tokens": 24, "temperature": 0});
    let (status, headers, _) = block(post_json(&url, &body, None));
    assert_eq!(status, 402);
    let required = cairn_x402::client::offers(&headers).unwrap();
    let schemes: Vec<_> = required.accepts.iter().map(|o| o.scheme.as_str()).collect();
    assert_eq!(
        schemes,
        ["prepaid", "upto", "batch-settlement"],
        "{required:?}"
    );
    assert_eq!(required.accepts[1].amount, required.accepts[0].amount);
    assert_eq!(required.accepts[2].amount, required.accepts[0].amount);
    // The ceiling is known before anything is tokenized: a prompt of at most one token per
    // body byte plus the template's, and the 24 tokens asked.
    let price = cairn_node_api::openai::TokenPrice {
        prompt_per_1k: U256::from(100u64),
        completion_per_1k: U256::from(400u64),
    };
    assert_eq!(
        required.accepts[0].amount,
        price.most(body.to_string().len(), Some(24))
    );

    // `cairn llm` without a deposit says how to pay.
    let chat = |max_tokens: &str, receipt: &Path| {
        Command::new(BIN)
            .args(["llm", llm, ask, "--max-tokens", max_tokens])
            .args(["--temperature", "0", "--node", &net.node_url])
            .args(["--payer-key", payer_key.to_str().unwrap()])
            .args(["--receipt-out", receipt.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = chat("24", &dir.join("r0.json"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cairn pay deposit"), "{err}");

    deposit(&net.node_url, &payer_key, 100000);
    let v0 = balance(&devnet_chain(&data), vault);

    // Two paid calls: each charged its usage, not its most; the client's account follows the
    // charges, so its second voucher is exactly the next step.
    let mut spent = U256::ZERO;
    for i in 1..=2 {
        let file = dir.join(format!("r{i}.json"));
        let out = chat("24", &file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: cairn_receipt::SignedReceipt = serde_json::from_value(read(&file)).unwrap();
        let usage = r.claims.llm.unwrap();
        assert!(usage.completion_tokens <= 24 && usage.complete, "{usage:?}");
        let price = llm_charge(usage.prompt_tokens, usage.completion_tokens);
        assert_eq!(r.claims.price, price);
        let most: U256 = stdout
            .split("token units of at most ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(
            stdout.contains(&format!("charged:  {price} token units of at most {most}")),
            "{stdout}"
        );
        // The ceiling covered the call's exact most, and only the usage was charged.
        assert!(llm_charge(usage.prompt_tokens, 24) <= most && price < most);
        spent += price;
        assert!(!r.claims.payment_ref.is_zero());
        assert_eq!(channel_accepted(&net.node_url, payer), spent);
    }

    // A stream the client leaves after two events: charged what it was sent.
    let long = serde_json::json!({"model": llm, "stream": true, "max_tokens": 400, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]});
    let (status, headers, _) = block(post_json(&url, &long, None));
    assert_eq!(status, 402);
    let required = cairn_x402::client::offers(&headers).unwrap();
    let offer = &required.accepts[0];
    let most_long = offer.amount;
    let header = cairn_x402::client::pay_prepaid(
        &dev_signer(6),
        &required,
        offer,
        B256::ZERO,
        spent + most_long,
    )
    .unwrap();
    let (receipt_id, headers, events_read) =
        common::leave_stream_after(&url, &long, &[("PAYMENT-SIGNATURE", header.as_str())], 2);
    assert!(headers.contains_key("payment-response"));
    let r = common::receipt_when_stored(&net.node_url, &receipt_id, 60);
    let usage = r.claims.llm.unwrap();
    // Charged what it was sent: the events read and the few made while its leaving reached
    // the node, never the rest of the 400.
    assert!(
        !usage.complete && usage.completion_tokens <= events_read + common::GONE_SLACK,
        "{usage:?} after {events_read} events read"
    );
    let price = llm_charge(usage.prompt_tokens, usage.completion_tokens);
    assert_eq!(r.claims.price, price);
    assert!(price < most_long);
    spent += price;
    assert_eq!(channel_accepted(&net.node_url, payer), spent);

    // The same voucher with the same request: the answer it paid for, again (a client that
    // lost it), at no charge.
    let (status, headers, again) = block(post_json(&url, &long, Some(&header)));
    assert_eq!(status, 200);
    assert_eq!(headers["cairn-receipt-id"].to_str().unwrap(), receipt_id);
    assert_eq!(
        alloy_primitives::B256::from(*cairn_core::BlobId::of(&again).digest()),
        r.claims.output_hash
    );
    // The same voucher for another request, a voucher for more than the step, one signed by
    // another key: each refused with its reason, nothing charged.
    let mut other = long.clone();
    other["temperature"] = serde_json::json!(0.5);
    let (status, headers, _) = block(post_json(&url, &other, Some(&header)));
    assert_eq!(status, 402);
    let error = |h: &reqwest::header::HeaderMap| {
        cairn_x402::client::offers(h)
            .unwrap()
            .error
            .unwrap_or_default()
    };
    assert_eq!(error(&headers), "invalid_prepaid_voucher_already_used");
    let over = cairn_x402::client::pay_prepaid(
        &dev_signer(6),
        &required,
        offer,
        B256::ZERO,
        spent + most_long + U256::from(1u64),
    )
    .unwrap();
    let (status, headers, _) = block(post_json(&url, &long, Some(&over)));
    assert_eq!(status, 402);
    assert_eq!(error(&headers), "invalid_prepaid_voucher_amount");
    // Signed by dev account 7, naming the payer's channel.
    let by_7 = cairn_x402::client::pay_prepaid(
        &dev_signer(7),
        &required,
        offer,
        B256::ZERO,
        spent + most_long,
    )
    .unwrap();
    let mut forged: Value =
        cairn_x402::wire::decode_header("PAYMENT-SIGNATURE", by_7.as_bytes()).unwrap();
    forged["payload"]["voucher"]["payer"] = Value::String(payer.to_string());
    let forged = cairn_x402::wire::encode_header(&forged);
    let (status, headers, _) = block(post_json(&url, &long, Some(&forged)));
    assert_eq!(status, 402);
    assert_eq!(error(&headers), "invalid_prepaid_signature");
    assert_eq!(channel_accepted(&net.node_url, payer), spent);

    // The client's own account learns the stream's charge (it paid it), and chats on.
    let account = cairn_x402::client::PrepaidAccount::path(
        &data.join("chain/payer.key.prepaid"),
        31337,
        devnet_chain(&data).deployment().escrow,
        Chain::channel_id(payer, vault, B256::ZERO),
    );
    cairn_x402::client::PrepaidAccount::load(&account)
        .unwrap()
        .expect("cairn pay deposit made the account")
        .record(spent)
        .unwrap();
    let out = chat("24", &dir.join("r3.json"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    spent += serde_json::from_value::<cairn_receipt::SignedReceipt>(read(&dir.join("r3.json")))
        .unwrap()
        .claims
        .price;
    assert_eq!(channel_accepted(&net.node_url, payer), spent);

    // The node claims exactly what was charged (the vouchers allowed more).
    common::eventually(30, || balance(&devnet_chain(&data), vault) == v0 + spent);
    assert_eq!(
        block(devnet_chain(&data).channel(payer, vault, B256::ZERO)).unwrap(),
        (U256::from(100_000u64), spent)
    );
}

/// The official Python package's `upto` client (x402 2.25.0), unchanged, pays a devnet node
/// for a tensor call (the fixed price) and a language-model call (its signed usage × the
/// price, at most the offered maximum): the payer approves Permit2 once through the devnet's
/// JSON-RPC, signs a Permit2 witness transfer per call, and the node settles exactly what each
/// call cost through the x402 `upto` proxy at the address the client expects. Balances move by
/// exactly those amounts; each receipt carries its permit's payment reference.
#[test]
fn the_official_upto_client_pays_what_each_call_costs() {
    let test = "the_official_upto_client_pays_what_each_call_costs";
    let Some(model) = common::llm_model(test) else {
        return;
    };
    let net = Server::devnet_with(&[
        "--llm",
        model.to_str().unwrap(),
        "--llm-price",
        "100/400",
        "--price",
        &PRICE.to_string(),
        "--batch-max-age-secs",
        "3600",
    ]);
    let dir = net.dir.path();
    let data = dir.join("data");
    let payer = dev_signer(7);
    let info = get(&format!("{}/v1/node", net.node_url));
    let vault: Address = info["payments"]["payTo"].as_str().unwrap().parse().unwrap();
    let chat = dir.join("chat.json");
    std::fs::write(
        &chat,
        serde_json::json!({"model": "smollm2-135m-instruct@1.0", "max_tokens": 16,
            "temperature": 0, "messages": [{"role": "user", "content": "Name a color."}]})
        .to_string(),
    )
    .unwrap();
    let (payer0, vault0) = {
        let c = devnet_chain(&data);
        (balance(&c, payer.address()), balance(&c, vault))
    };

    let digit = examples().join("digit.json");
    let report = python_upto(
        &net.node_url,
        &net.rpc_url,
        7,
        &[
            ("/v2/models/digits@1.0/infer", &digit),
            ("/v1/chat/completions", &chat),
        ],
        false,
    );
    let calls = report.as_array().unwrap();
    let (onnx, llm) = (&calls[0], &calls[1]);
    for c in calls {
        assert_eq!(c["status"], 200, "{c}");
        let pr = &c["paymentResponse"];
        assert_eq!(pr["success"], true, "{c}");
        assert!(pr["transaction"].as_str().unwrap().starts_with("0x"), "{c}");
    }
    assert_eq!(onnx["paymentResponse"]["amount"], PRICE.to_string());

    // The language-model call: charged its signed usage, below the maximum it authorized.
    let r = common::receipt_when_stored(&net.node_url, llm["receiptId"].as_str().unwrap(), 60);
    let usage = r.claims.llm.unwrap();
    let charged = llm_charge(usage.prompt_tokens, usage.completion_tokens);
    assert_eq!(r.claims.price, charged);
    assert_eq!(
        llm["paymentResponse"]["amount"].as_str().unwrap(),
        charged.to_string()
    );
    let onnx_receipt =
        cairn_receipt::SignedReceipt::verify_json(&onnx["body"]["parameters"]["receipt"]).unwrap();
    assert_eq!(onnx_receipt.claims.price, U256::from(PRICE));
    for receipt in [&r, &onnx_receipt] {
        assert!(!receipt.claims.payment_ref.is_zero());
    }
    assert_ne!(r.claims.payment_ref, onnx_receipt.claims.payment_ref);

    // Balances moved by exactly what was charged: payer to the node's vault.
    let c = devnet_chain(&data);
    let total = U256::from(PRICE) + charged;
    assert_eq!(balance(&c, payer.address()), payer0 - total);
    assert_eq!(balance(&c, vault), vault0 + total);

    // `cairn llm` without a prepaid deposit pays with an upto permit, once its payer approved
    // Permit2 (`cairn pay approve-permit2`, a transaction through the devnet's JSON-RPC).
    let payer_key = data.join("chain/payer.key");
    let chat = |receipt: &Path| {
        Command::new(BIN)
            .args(["llm", "smollm2-135m-instruct@1.0", "Name a color."])
            .args(["--max-tokens", "8", "--temperature", "0"])
            .args(["--node", &net.node_url])
            .args(["--payer-key", payer_key.to_str().unwrap()])
            .args(["--receipt-out", receipt.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = chat(&dir.join("c0.json"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cairn pay approve-permit2"), "{err}");
    cairn(&[
        "pay",
        "approve-permit2",
        "--node",
        &net.node_url,
        "--payer-key",
        payer_key.to_str().unwrap(),
        "--rpc",
        &net.rpc_url,
    ]);
    let six = dev_signer(6).address();
    let before = balance(&devnet_chain(&data), six);
    let out = chat(&dir.join("c1.json"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: cairn_receipt::SignedReceipt =
        serde_json::from_value(read(&dir.join("c1.json"))).unwrap();
    assert_eq!(balance(&devnet_chain(&data), six), before - r.claims.price);
    assert!(!r.claims.payment_ref.is_zero());

    // A payer who never approved Permit2 and sends no transaction: the official client signs
    // an EIP-2612 approval into the payment (the extension the node declares) and the node
    // submits it with the settlement.
    let eight = dev_signer(8).address();
    let before = balance(&devnet_chain(&data), eight);
    let report = python_upto(
        &net.node_url,
        &net.rpc_url,
        8,
        &[("/v2/models/digits@1.0/infer", &digit)],
        true,
    );
    assert_eq!(report[0]["status"], 200, "{report}");
    assert_eq!(report[0]["paymentResponse"]["success"], true, "{report}");
    let c = devnet_chain(&data);
    assert_eq!(balance(&c, eight), before - U256::from(PRICE));
    // The approval was for the offered maximum, all of it used.
    let permit2 = c.upto().unwrap().permit2;
    assert_eq!(
        block(c.token_allowance(eight, permit2)).unwrap(),
        U256::ZERO
    );
}

/// The same official `upto` client pays a node settling on anvil, where `cairn chain deploy`
/// placed Permit2 and the `upto` proxy at the addresses the client signs for.
#[test]
fn the_official_upto_client_pays_a_node_settling_on_anvil() {
    let Some(a) = anvil_node("upto client on anvil", &[]) else {
        return;
    };
    if !clients_present() {
        return;
    }
    let chain = a.chain();
    assert!(
        chain.deployment().upto.is_some(),
        "{:?}",
        chain.deployment()
    );
    let node_addr: Address = get(&format!("{}/v1/node", a.node.node_url))["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let vault = block(chain.vault_of(node_addr)).unwrap();
    let payer = a.fund(9);
    block(async {
        let l = cairn_ledger::RpcLedger::connect(&a.anvil_url, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        // Gas for the one-time Permit2 approval.
        l.dev_set_balance(payer, U256::from(10u128.pow(20)))
            .await
            .unwrap();
    });
    let (p0, v0) = (balance(&chain, payer), balance(&chain, vault));
    let digit = examples().join("digit.json");
    let report = python_upto(
        &a.node.node_url,
        &a.anvil_url,
        9,
        &[("/v2/models/digits@1.0/infer", &digit)],
        false,
    );
    let r = &report[0];
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["paymentResponse"]["success"], true, "{r}");
    assert_eq!(r["paymentResponse"]["amount"], PRICE.to_string(), "{r}");
    assert_eq!(r["paymentResponse"]["network"], "eip155:84532", "{r}");
    assert_eq!(balance(&chain, payer), p0 - U256::from(PRICE));
    assert_eq!(balance(&chain, vault), v0 + U256::from(PRICE));
    let receipt =
        cairn_receipt::SignedReceipt::verify_json(&r["body"]["parameters"]["receipt"]).unwrap();
    assert!(!receipt.claims.payment_ref.is_zero());
}
