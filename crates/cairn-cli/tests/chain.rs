//! Settlement end to end: a call to a node ends in a finalized batch whose fees land with the
//! node, the attesting verifiers and the treasury — on the devnet's embedded chain, and on anvil
//! with every role in its own process.

mod common;

use std::path::{Path, PathBuf};

use alloy_primitives::U256;
use cairn_receipt::SignedReceipt;
use common::{AnvilChain, Server, cairn_ok as cairn, eventually, funded_key, infer_digit};
use serde_json::{Value, json};

fn get(url: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
}

/// Infers the example digit on `node` (`receipt-{n}.json` in `dir`); returns the receipt JSON.
fn infer(hub: &str, node: &str, dir: &Path, n: usize) -> Value {
    let (receipt, _) = infer_digit(hub, node, dir, &format!("-{n}"));
    serde_json::from_str(&std::fs::read_to_string(receipt).unwrap()).unwrap()
}

/// Waits until the receipt's batch is finalized; checks its inclusion proof locally.
fn wait_finalized(node: &str, receipt: &Value) -> Value {
    let signed = SignedReceipt::verify_json(receipt).unwrap();
    let url = format!("{node}/v1/receipts/{}", signed.id());
    let mut last = Value::Null;
    eventually(90, || {
        last = get(&url);
        last["batch"]["status"] == "finalized"
    });
    let batch = &last["batch"];
    let root = batch["root"].as_str().unwrap().parse().unwrap();
    let proof: Vec<_> = batch["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cairn_receipt::merkle::verify(
        root,
        signed.signing_hash(),
        &proof
    ));
    last
}

fn dec(v: &Value) -> U256 {
    v.as_str().unwrap().parse().unwrap()
}

/// Every finalized batch's fees are split exactly: verifiers 10% (equal parts, dust to the
/// treasury), treasury 5%, node the rest; the settlement contract keeps nothing. `paid`: whether
/// callers paid the fees (x402, into the node's vault) or the node escrowed them itself.
fn check_split(status: &Value, node: &str, node_before: U256, treasury_before: U256, paid: bool) {
    let (mut to_node, mut to_treasury, mut fees_total) = (U256::ZERO, U256::ZERO, U256::ZERO);
    let bps = |f: U256, b: u64| f * U256::from(b) / U256::from(10_000u64);
    for b in status["batches"].as_array().unwrap() {
        assert_eq!(b["status"], "finalized", "{b}");
        let f = dec(&b["fees"]);
        let n = U256::from(b["verifiers"].as_array().unwrap().len());
        let per = bps(f, 1_000) / n;
        fees_total += f;
        to_treasury += bps(f, 500) + (bps(f, 1_000) - per * n);
        to_node += f - bps(f, 1_000) - bps(f, 500);
    }
    assert!(fees_total > U256::ZERO);
    assert_eq!(dec(&status["settlementBalance"]), U256::ZERO);
    assert_eq!(
        dec(&status["treasuryBalance"]),
        treasury_before + to_treasury
    );
    let entry = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["address"].as_str().unwrap().eq_ignore_ascii_case(node))
        .unwrap();
    let node_now = dec(&entry["tokenBalance"]);
    // Paid calls put exactly the fees in the node's vault; a batch takes its fees from the vault
    // first, so what the node escrowed itself is what still waits in the vault.
    let own_fees = if paid {
        dec(&entry["vaultBalance"])
    } else {
        fees_total
    };
    assert_eq!(node_now, node_before - own_fees + to_node);
}

#[test]
fn devnet_call_ends_in_a_finalized_batch_that_pays_everyone() {
    let net = Server::devnet_with(&[
        "--batch-max-age-secs",
        "1",
        "--challenge-window",
        "2",
        "--price",
        "2500",
    ]);
    let dir = net.dir.path();
    let receipts: Vec<Value> = (0..3)
        .map(|i| infer(&net.url, &net.node_url, dir, i))
        .collect();
    for r in &receipts {
        assert_eq!(r["typedData"]["message"]["price"], "2500");
        wait_finalized(&net.node_url, r);
    }
    let info = get(&format!("{}/v1/node", net.node_url));
    assert_eq!(
        info["domain"]["verifyingContract"],
        info["settlement"]["deployment"]["settlement"]
    );
    let data = dir.join("data");
    let status: Value = serde_json::from_str(&cairn(&[
        "chain",
        "status",
        "--devnet-dir",
        data.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    // Dev node: minted 1,000,000 cUSD, staked 1,000.
    check_split(
        &status,
        info["address"].as_str().unwrap(),
        U256::from(999_000_000_000u64),
        U256::ZERO,
        true,
    );
    // Anyone can check a receipt's settlement: the node's proof against the root on chain.
    let receipt_file = dir.join("receipt-0.json");
    let out = cairn(&[
        "receipt",
        "settled",
        receipt_file.to_str().unwrap(),
        "--node",
        &net.node_url,
        "--devnet-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.contains("verified locally and by Settlement.verifyInclusion"),
        "{out}"
    );
    // The batch listing a verifier reads holds exactly the batch's receipts.
    let first = wait_finalized(&net.node_url, &receipts[0]);
    let listing = get(&format!(
        "{}/v1/batches/{}",
        net.node_url, first["batch"]["id"]
    ));
    assert_eq!(
        listing["receipts"].as_array().unwrap().len() as u64,
        listing["count"].as_u64().unwrap()
    );
    // A signature from a non-verifier is refused with a JSON error.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, body): (u16, Value) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/v1/batches/{}/attestations",
                net.node_url, first["batch"]["id"]
            ))
            .json(&json!({"signature": format!("0x{}", "11".repeat(64) + "1b")}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    });
    assert!(code == 403 || code == 400, "{code} {body}");
    assert!(
        body["code"].is_string() && body["message"].is_string(),
        "{body}"
    );
}

fn devnet_status(data: &Path) -> Value {
    serde_json::from_str(&cairn(&[
        "chain",
        "status",
        "--devnet-dir",
        data.to_str().unwrap(),
        "--json",
    ]))
    .unwrap()
}

#[test]
fn devnet_resumes_after_kill_9_with_the_same_chain() {
    let fast = ["--batch-max-age-secs", "1", "--challenge-window", "2"];
    let net = Server::devnet_with(&fast);
    let first = infer(&net.url, &net.node_url, net.dir.path(), 0);
    wait_finalized(&net.node_url, &first);
    let data = net.dir.path().join("data");
    let before = devnet_status(&data);
    let dir = net.kill_9();
    let after = devnet_status(&dir.path().join("data"));
    assert_eq!(after["stateRoot"], before["stateRoot"]);
    assert_eq!(after["head"], before["head"]);

    // Same chain, same contracts; the node re-registers its new endpoint and settles again.
    let net = Server::devnet_resume(dir, &fast);
    let second = infer(&net.url, &net.node_url, net.dir.path(), 1);
    let settled = wait_finalized(&net.node_url, &second);
    assert_eq!(settled["batch"]["id"], 2);
    let status = devnet_status(&net.dir.path().join("data"));
    assert_eq!(status["contracts"], before["contracts"]);
    let info = get(&format!("{}/v1/node", net.node_url));
    check_split(
        &status,
        info["address"].as_str().unwrap(),
        U256::from(999_000_000_000u64),
        U256::ZERO,
        true,
    );
    let node = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "inference")
        .unwrap()
        .clone();
    assert_eq!(node["endpoint"], net.node_url.as_str());
}

#[test]
fn node_settles_on_anvil_with_separate_verifier_processes() {
    let Some(anvil) = cairn_ledger::anvil::Anvil::for_test("node_settles_on_anvil", 31337) else {
        return;
    };
    let anvil_url = anvil.url().to_owned();
    // The devnet serves the hub with the demo model; the node under test settles on anvil.
    let net = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (node_key, node_addr) = funded_key(&anvil_url, d, "node.key");
    let verifiers: Vec<(PathBuf, String)> = (0..3)
        .map(|i| funded_key(&anvil_url, d, &format!("verifier{i}.key")))
        .collect();
    let anv = AnvilChain::deploy(&anvil_url, d, &["--quorum", "2", "--challenge-window", "2"]);
    let dep = anv.dep.to_str().unwrap();
    let chain = anv.args();
    for who in std::iter::once(&node_addr).chain(verifiers.iter().map(|v| &v.1)) {
        anv.mint(who, "1000000000000");
    }
    // Genesis verifiers join while registrations need no approvals, then governance asks for two.
    let mut running = Vec::new();
    for (i, (key, _)) in verifiers.iter().enumerate() {
        anv.register(key, "verifier", "100000000", "test:verifier");
        let vdir = d.join(format!("verifier{i}"));
        let mut run = vec![
            "verifier",
            "serve",
            "--key",
            key.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--hub",
            &net.url,
            "--data-dir",
            vdir.to_str().unwrap(),
            "--allow-dev-evidence",
            "--allow-private-endpoints",
            "--sample-rate",
            "1",
            "--tick-ms",
            "300",
        ];
        run.extend_from_slice(&chain);
        running.push(Server::command(&run, "verifier:"));
    }
    anv.cairn(&[
        "chain",
        "registration-quorum",
        "--key",
        anv.gov.to_str().unwrap(),
        "2",
    ]);
    let node = Server::node(
        &net.url,
        &[
            "--key",
            node_key.to_str().unwrap(),
            "--price",
            "4000",
            "--free",
            "--batch-max-age-secs",
            "1",
            "--rpc",
            &anvil_url,
            "--deployment",
            dep,
        ],
    );
    // The node registers through the verifiers: each checks its evidence and signs.
    let out = anv.cairn(&[
        "node",
        "register",
        "--key",
        node_key.to_str().unwrap(),
        "--stake",
        "1000000000",
        "--endpoint",
        &node.node_url,
    ]);
    assert!(out.contains("with dev evidence"), "{out}");
    let listed = anv.cairn(&["nodes"]);
    assert!(listed.contains("dev (software key, not a TEE)"), "{listed}");

    let receipts: Vec<Value> = (0..2)
        .map(|i| infer(&net.url, &node.node_url, d, i))
        .collect();
    let info = get(&format!("{}/v1/node", node.node_url));
    assert_eq!(info["domain"]["chainId"], 31337);
    for r in &receipts {
        wait_finalized(&node.node_url, r);
    }
    // Every verifier re-executed the receipts (sample rate 1) and kept its verdict.
    let v0 = running[0].url.clone();
    let id = SignedReceipt::verify_json(&receipts[0]).unwrap().id();
    let found = get(&format!("{v0}/v1/verdicts/receipts/{id}"));
    assert_eq!(found["verdicts"][0]["outcome"], "confirmed", "{found}");
    assert_eq!(found["verdicts"][0]["comparison"], "bit-exact", "{found}");

    // One verifier down: the other two still make the quorum.
    drop(running.remove(2));
    let later = infer(&net.url, &node.node_url, d, 2);
    let settled = wait_finalized(&node.node_url, &later);
    assert_eq!(settled["batch"]["status"], "finalized");

    // A batch whose fees the node cannot cover never stops its settler: batch A is out when the
    // node's tokens go; batch B cannot be submitted, and A is attested and finalized all the
    // same (before, the failed submission ended every settler pass early).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(async {
        let l = cairn_ledger::RpcLedger::connect(&anvil_url, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        cairn_ledger::Chain::new(
            std::sync::Arc::new(l),
            cairn_ledger::Deployment::load(&anv.dep).unwrap(),
        )
        .unwrap()
    });
    let key_of = |p: &Path| -> alloy_signer_local::PrivateKeySigner {
        let hex = std::fs::read_to_string(p).unwrap();
        hex.trim().trim_start_matches("0x").parse().unwrap()
    };
    let (node_signer, gov_signer) = (key_of(&node_key), key_of(&anv.gov));
    let batch_of = |r: &Value| {
        let id = SignedReceipt::verify_json(r).unwrap().id();
        get(&format!("{}/v1/receipts/{id}", node.node_url))["batch"].clone()
    };
    let a = infer(&net.url, &node.node_url, d, 3);
    eventually(30, || batch_of(&a)["id"].is_u64());
    let all_tokens = rt
        .block_on(api.token_balance(node_signer.address()))
        .unwrap();
    rt.block_on(api.transfer(&node_signer, gov_signer.address(), all_tokens))
        .unwrap();
    let b = infer(&net.url, &node.node_url, d, 4);
    wait_finalized(&node.node_url, &a);
    eventually(20, || batch_of(&b)["status"] == "sealed");
    assert!(
        batch_of(&b)["id"].is_null(),
        "B was submitted without funds"
    );
    // Funds back: B goes out and settles too.
    rt.block_on(api.transfer(&gov_signer, node_signer.address(), all_tokens))
        .unwrap();
    wait_finalized(&node.node_url, &b);

    // A node on a profile governance has not approved refuses to settle: no verifier would
    // attest its receipts, and it would escrow fees for nothing.
    let mut args = vec![
        "node",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--hub",
        &net.url,
        "--key",
        node_key.to_str().unwrap(),
        "--cpu-tier",
        "native",
    ];
    args.extend_from_slice(&chain);
    let refused = std::process::Command::new(common::BIN)
        .args(&args)
        .arg("--data-dir")
        .arg(d.join("native-node"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("is not approved on this deployment"), "{err}");

    // Governance revokes the dev measurement for inference nodes: the node is no longer offered.
    anv.cairn(&[
        "chain",
        "measurement",
        "--key",
        anv.gov.to_str().unwrap(),
        "--role",
        "inference",
        "--measurement",
        "dev",
        "--revoke",
    ]);
    let listed = anv.cairn(&["nodes"]);
    assert!(!listed.contains(&node_addr), "{listed}");
    let all = anv.cairn(&["nodes", "--all"]);
    assert!(all.contains("measurement revoked"), "{all}");
    let receipt_file = d.join("receipt-1.json");
    let mut args = vec!["receipt", "settled", receipt_file.to_str().unwrap()];
    args.extend_from_slice(&["--node", &node.node_url]);
    args.extend_from_slice(&chain);
    assert!(cairn(&args).contains("Settlement.verifyInclusion"));
    let mut args = vec!["chain", "status", "--json"];
    args.extend_from_slice(&chain);
    let status: Value = serde_json::from_str(&cairn(&args)).unwrap();
    check_split(
        &status,
        &node_addr,
        U256::from(999_000_000_000u64),
        U256::ZERO,
        false,
    );
}
