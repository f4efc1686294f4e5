//! The soak's setup, traffic and books (driven by scripts/soak.sh, which starts, kills and
//! restarts the processes).
//!
//! - `soak setup RPC DIR`: funds keys, deploys the contracts, mints tokens, registers three
//!   verifiers (the script then asks two approvals for every later registration); writes
//!   `DIR/*.key` and `DIR/deployment.json`.
//! - `soak traffic NODE RPC DIR SECONDS`: paid calls from four payers (two `exact`, two
//!   `prepaid`), good and bad inputs, replays of paid requests; a call cut off by a dying node is
//!   retried with the same payment until it gets an answer. Writes `DIR/calls.json`.
//! - `soak books NODE RPC DIR`: waits for every batch to be final, then reconciles to the unit:
//!   every paid call has exactly one receipt, every receipt is in exactly one finalized batch,
//!   no payer is charged twice or for a failed call, and payer debits equal node + verifiers +
//!   treasury credits. Exits 1 when the books do not balance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use cairn_ledger::{Chain, DeployParams, Deployment, RegistrationRequest, Role, RpcLedger};
use cairn_x402::client::{PrepaidAccount, offers, pay_exact, pay_prepaid};
use serde_json::Value;

const PRICE: u64 = 1_000;
const STAKE: u64 = 1_000_000_000;

fn key(dir: &Path, name: &str) -> PrivateKeySigner {
    let text = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    text.trim().trim_start_matches("0x").parse().unwrap()
}

fn write_key(dir: &Path, name: &str, k: &PrivateKeySigner) {
    std::fs::write(
        dir.join(format!("{name}.key")),
        format!("0x{}\n", alloy_primitives::hex::encode(k.to_bytes())),
    )
    .unwrap();
}

async fn chain(rpc: &str, dir: &Path) -> Chain {
    let l = RpcLedger::connect(rpc, Duration::from_secs(60))
        .await
        .unwrap();
    Chain::new(
        Arc::new(l),
        Deployment::load(&dir.join("deployment.json")).unwrap(),
    )
    .unwrap()
}

const PAYERS: [&str; 4] = ["exact0", "exact1", "prepaid0", "prepaid1"];

async fn setup(rpc: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let l = RpcLedger::connect(rpc, Duration::from_secs(60))
        .await
        .unwrap();
    let names = [
        "gov", "node", "v0", "v1", "v2", "exact0", "exact1", "prepaid0", "prepaid1",
    ];
    for n in names {
        let k = PrivateKeySigner::random();
        l.dev_set_balance(k.address(), U256::from(10u128.pow(21)))
            .await
            .unwrap();
        write_key(dir, n, &k);
    }
    let gov = key(dir, "gov");
    let params = DeployParams {
        challenge_window: 3,
        attestation_timeout: 120,
        approved_profiles: vec![cairn_engine::TractEngine::portable_profile().hash()],
        ..DeployParams::devnet(
            gov.address(),
            Address::from_slice(&keccak256("treasury")[..20]),
        )
    };
    let d = cairn_ledger::deploy::deploy(&l, &gov, &params)
        .await
        .unwrap();
    d.save(&dir.join("deployment.json")).unwrap();
    let c = Chain::new(Arc::new(l), d).unwrap();
    for n in names.iter().skip(1) {
        c.mint(&gov, key(dir, n).address(), U256::from(10u64 * STAKE))
            .await
            .unwrap();
    }
    for v in ["v0", "v1", "v2"] {
        let k = key(dir, v);
        c.register(
            &k,
            &RegistrationRequest::dev(k.address(), Role::Verifier, "soak:starting"),
            U256::from(STAKE / 10),
            vec![],
        )
        .await
        .unwrap();
    }
    println!("soak: deployed, keys in {}", dir.display());
}

/// What one logical call ended as.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
struct Call {
    payer: String,
    scheme: String,
    good: bool,
    status: u16,
    receipt: Option<String>,
    attempts: u32,
    replay: Option<u16>,
}

/// Sends `body` with payment `header` until the node answers (a dying node cuts connections
/// and refuses them while it restarts); (status, JSON answer, tries).
async fn send_until_answered(
    http: &reqwest::Client,
    url: &str,
    header: &str,
    body: &[u8],
) -> (u16, Value, u32) {
    let start = Instant::now();
    let mut tries = 0;
    let mut last = String::from("no connection");
    loop {
        tries += 1;
        let r = http
            .post(url)
            .header("PAYMENT-SIGNATURE", header)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            last = format!("{status} {:?}", r.headers().get("payment-required"));
            let settlement_pending = r
                .headers()
                .get("payment-required")
                .and_then(|h| {
                    cairn_x402::wire::decode_header::<Value>("PAYMENT-REQUIRED", h.as_bytes()).ok()
                })
                .is_some_and(|v| v["error"] == "settlement_pending");
            // 503: overloaded or restarting; 402 settlement_pending: ask again with the same
            // payment; anything else is the answer.
            if status != 503
                && !settlement_pending
                && status < 500
                && let Ok(v) = r.json::<Value>().await
            {
                return (status, v, tries);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no answer for 180 s; the last reply: {last}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn required(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> cairn_x402::wire::PaymentRequired {
    loop {
        if let Ok(r) = http.post(url).body(body.to_vec()).send().await
            && r.status().as_u16() == 402
            && let Ok(req) = offers(r.headers())
        {
            return req;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn traffic(node: &str, rpc: &str, dir: &Path, secs: u64) {
    let c = chain(rpc, dir).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("{node}/v2/models/digits@1.0/infer");
    let good =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/digit.json"))
            .unwrap();
    let zeros = vec!["0"; 64].join(",");
    let bad = format!(
        r#"{{"inputs":[{{"name":"nope","shape":[1,64],"datatype":"FP32","data":[{zeros}]}}]}}"#
    )
    .into_bytes();
    let accounts = dir.join("accounts");
    let req = required(&http, &url, &good).await;
    let prepaid_offer = req
        .accepts
        .iter()
        .find(|o| o.scheme == "prepaid")
        .unwrap()
        .clone();
    let exact_offer = req
        .accepts
        .iter()
        .find(|o| o.scheme == "exact")
        .unwrap()
        .clone();
    // Prepaid payers deposit once, on chain, and keep their own account.
    for p in ["prepaid0", "prepaid1"] {
        let k = key(dir, p);
        c.deposit(
            &k,
            prepaid_offer.pay_to,
            B256::ZERO,
            U256::from(5_000 * PRICE),
        )
        .await
        .unwrap();
        let path = account(&accounts, &prepaid_offer, k.address());
        if PrepaidAccount::load(&path).unwrap().is_none() {
            PrepaidAccount::create(&path, U256::ZERO).unwrap();
        }
    }
    let mut calls = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i: u64 = 0;
    while Instant::now() < end {
        i += 1;
        let payer_name = PAYERS[(i % 4) as usize];
        let payer = key(dir, payer_name);
        let is_good = !i.is_multiple_of(5);
        let body = if is_good { &good } else { &bad };
        let (scheme, header, cumulative) = if payer_name.starts_with("exact") {
            (
                "exact",
                pay_exact(&payer, &req, &exact_offer).unwrap(),
                None,
            )
        } else {
            let path = account(&accounts, &prepaid_offer, payer.address());
            let paid = PrepaidAccount::load(&path).unwrap().unwrap().paid;
            let next = paid + prepaid_offer.amount;
            (
                "prepaid",
                pay_prepaid(&payer, &req, &prepaid_offer, B256::ZERO, next).unwrap(),
                Some((path, next)),
            )
        };
        let (status, answer, attempts) = send_until_answered(&http, &url, &header, body).await;
        let receipt = answer["parameters"]["receipt"]["typedData"]["message"]["requestId"]
            .as_str()
            .map(str::to_string);
        if status == 200
            && let Some((path, next)) = cumulative
        {
            PrepaidAccount::load(&path)
                .unwrap()
                .unwrap()
                .record(next)
                .unwrap();
        }
        // Every seventh paid call is replayed: the same answer or a refusal, never a second run.
        let replay = if status == 200 && i.is_multiple_of(7) {
            let (s, a, _) = send_until_answered(&http, &url, &header, body).await;
            if s == 200 {
                let again =
                    a["parameters"]["receipt"]["typedData"]["message"]["requestId"].as_str();
                assert_eq!(again, receipt.as_deref(), "a replay ran again");
            }
            Some(s)
        } else {
            None
        };
        calls.push(Call {
            payer: payer_name.into(),
            scheme: scheme.into(),
            good: is_good,
            status,
            receipt,
            attempts,
            replay,
        });
    }
    std::fs::write(
        dir.join("calls.json"),
        serde_json::to_vec_pretty(&calls).unwrap(),
    )
    .unwrap();
    let ok = calls.iter().filter(|c| c.status == 200).count();
    let retried = calls.iter().filter(|c| c.attempts > 1).count();
    println!(
        "soak: {} calls ({ok} paid and answered, {} refused or failed, {retried} retried across restarts)",
        calls.len(),
        calls.len() - ok
    );
}

fn account(dir: &Path, offer: &cairn_x402::wire::PaymentRequirements, payer: Address) -> PathBuf {
    let escrow: Address = offer.extra["escrow"].as_str().unwrap().parse().unwrap();
    let chain_id = cairn_x402::wire::chain_id_of(&offer.network).unwrap();
    PrepaidAccount::path(
        dir,
        chain_id,
        escrow,
        Chain::channel_id(payer, offer.pay_to, B256::ZERO),
    )
}

async fn books(node: &str, rpc: &str, dir: &Path, node_dir: &Path) -> bool {
    let c = chain(rpc, dir).await;
    let calls: Vec<Call> =
        serde_json::from_slice(&std::fs::read(dir.join("calls.json")).unwrap()).unwrap();
    let http = reqwest::Client::new();
    let paid: Vec<&Call> = calls.iter().filter(|c| c.status == 200).collect();
    let ids: BTreeSet<String> = paid.iter().map(|c| c.receipt.clone().unwrap()).collect();
    let mut ok = true;
    let mut check = |what: &str, good: bool, detail: String| {
        println!("  [{}] {what}: {detail}", if good { "ok" } else { "FAIL" });
        ok &= good;
    };
    check(
        "every paid call has its own receipt",
        ids.len() == paid.len(),
        format!("{} paid calls, {} distinct receipts", paid.len(), ids.len()),
    );
    // Wait for the books to close: every receipt in a finalized batch, vouchers redeemed.
    let deadline = Instant::now() + Duration::from_secs(600);
    let db = rusqlite::Connection::open(node_dir.join("receipts.sqlite")).unwrap();
    let billable = || -> Vec<(String, Option<String>)> {
        db.prepare(
            "SELECT r.id, b.status FROM receipts r LEFT JOIN batches b ON b.local = r.batch
             WHERE r.billing = 'final'",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let prepaid_owed = |name: &str| {
        U256::from(PRICE) * U256::from(paid.iter().filter(|c| c.payer == name).count())
    };
    let payee = cairn_ledger_vault(&http, node).await;
    loop {
        let rows = billable();
        let all_final = rows.iter().all(|r| r.1.as_deref() == Some("finalized"));
        let mut redeemed = true;
        for p in ["prepaid0", "prepaid1"] {
            let st = c
                .channel_state(key(dir, p).address(), payee, B256::ZERO)
                .await
                .unwrap();
            redeemed &= st.claimed == prepaid_owed(p);
        }
        if all_final && redeemed {
            break;
        }
        if Instant::now() > deadline {
            println!("  books did not close in 600 s");
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let rows = billable();
    let logged: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    check(
        "exactly the paid calls' receipts are billable",
        logged == ids,
        format!("{} billable receipts in the node's log", logged.len()),
    );
    // Batches on chain: finalized ones hold every billable receipt once.
    let n = c.batch_count().await.unwrap();
    let mut finalized_count = 0u64;
    let mut fees = U256::ZERO;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for id in 1..=n {
        let b = c.batch(id).await.unwrap();
        *statuses.entry(format!("{:?}", b.status)).or_default() += 1;
        if b.status == cairn_ledger::BatchStatus::Finalized {
            finalized_count += u64::from(b.count);
            fees += b.fees;
        }
    }
    check(
        "every receipt is in exactly one finalized batch",
        finalized_count == logged.len() as u64
            && rows.iter().all(|r| r.1.as_deref() == Some("finalized")),
        format!("{finalized_count} receipts in finalized batches; batches {statuses:?}"),
    );
    // Payers: charged exactly the price of their answered calls, nothing for the rest.
    let mut debits = U256::ZERO;
    for p in PAYERS {
        let owed = prepaid_owed(p);
        let k = key(dir, p).address();
        let charged = if p.starts_with("exact") {
            U256::from(10u64 * STAKE) - c.token_balance(k).await.unwrap()
        } else {
            c.channel_state(k, payee, B256::ZERO).await.unwrap().claimed
        };
        debits += charged;
        check(
            &format!("{p} charged once per answered call"),
            charged == owed,
            format!("charged {charged}, answered calls worth {owed}"),
        );
    }
    // Bad inputs are refused (and, by the per-payer lines above, not charged); good ones are
    // answered.
    let bad = calls.iter().filter(|c| !c.good).count();
    let bad_answered = calls.iter().filter(|c| !c.good && c.status == 200).count();
    let good_refused = calls.iter().filter(|c| c.good && c.status != 200).count();
    check(
        "bad inputs refused, good ones answered",
        bad_answered == 0 && good_refused == 0,
        format!("{bad} bad inputs ({bad_answered} answered); {good_refused} good inputs refused"),
    );
    let replays = calls.iter().filter(|c| c.replay.is_some()).count();
    check(
        "replays answered from the first run",
        calls.iter().all(|c| c.replay.is_none_or(|s| s == 200)),
        format!("{replays} paid calls presented again, each got the answer it bought"),
    );
    check(
        "payer debits are the finalized fees",
        debits == fees,
        format!("debits {debits}, finalized fees {fees}"),
    );
    // Credits: node, verifiers and treasury gained exactly the fees; nothing stays in the
    // settlement contract. The node's payment vault may hold voucher redemptions that landed
    // after a batch it funded from its own balance: those are the node's (they can only
    // become its fees), so they count as its credit.
    let d = c.deployment().clone();
    let node_addr = key(dir, "node").address();
    let vault = c.token_balance(payee).await.unwrap();
    let node_credit = c.token_balance(node_addr).await.unwrap() + vault + U256::from(STAKE)
        - U256::from(10u64 * STAKE);
    let mut verifiers_credit = U256::ZERO;
    for v in ["v0", "v1", "v2"] {
        verifiers_credit += c.token_balance(key(dir, v).address()).await.unwrap()
            + U256::from(STAKE / 10)
            - U256::from(10u64 * STAKE);
    }
    let treasury = c.token_balance(d.treasury).await.unwrap();
    let stuck = c.token_balance(d.settlement).await.unwrap();
    check(
        "payer debits = node + verifiers + treasury credits",
        debits == node_credit + verifiers_credit + treasury && stuck.is_zero(),
        format!(
            "{debits} = node {node_credit} (of which {vault} in its vault) + verifiers {verifiers_credit} + treasury {treasury}; left in the settlement contract: {stuck}"
        ),
    );
    ok
}

async fn cairn_ledger_vault(http: &reqwest::Client, node: &str) -> Address {
    loop {
        if let Ok(r) = http.get(format!("{node}/v1/node")).send().await
            && let Ok(v) = r.json::<Value>().await
            && let Some(a) = v["payments"]["payTo"].as_str()
        {
            return a.parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        args.get(i).cloned().unwrap_or_else(|| {
        eprintln!("usage: soak setup RPC DIR | traffic NODE RPC DIR SECONDS | books NODE RPC DIR NODE_DIR");
        std::process::exit(2)
    })
    };
    match arg(1).as_str() {
        "setup" => setup(&arg(2), Path::new(&arg(3))).await,
        "traffic" => {
            traffic(
                &arg(2),
                &arg(3),
                Path::new(&arg(4)),
                arg(5).parse().unwrap(),
            )
            .await
        }
        "books" => {
            println!("soak books:");
            if !books(&arg(2), &arg(3), Path::new(&arg(4)), Path::new(&arg(5))).await {
                std::process::exit(1);
            }
        }
        other => {
            eprintln!("unknown step {other}");
            std::process::exit(2);
        }
    }
}
