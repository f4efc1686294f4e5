//! The verification network end to end on the devnet (one node, three verifiers, quorum two):
//! an honest node is never slashed and its batches finalize; a node that lies about outputs is
//! caught by re-execution, challenged and slashed, and the verdict's signers are paid; a node
//! that withholds sampled payloads fails its samples the same way.

mod common;

use std::path::Path;

use alloy_primitives::U256;
use cairn_receipt::SignedReceipt;
use common::{Server, cairn_ok as cairn, eventually, get, infer_digit};
use serde_json::Value;

fn status(net: &Server) -> Value {
    let dir = net.dir.path().join("data");
    let out = cairn(&[
        "chain",
        "status",
        "--json",
        "--devnet-dir",
        dir.to_str().unwrap(),
    ]);
    serde_json::from_str(&out).unwrap()
}

fn nodes(net: &Server) -> Vec<Value> {
    let dir = net.dir.path().join("data");
    let out = cairn(&[
        "nodes",
        "--all",
        "--json",
        "--devnet-dir",
        dir.to_str().unwrap(),
    ]);
    serde_json::from_str(&out).unwrap()
}

fn dec(v: &Value) -> U256 {
    v.as_str().unwrap().parse().unwrap()
}

fn role<'a>(nodes: &'a [Value], r: &str) -> Vec<&'a Value> {
    nodes.iter().filter(|n| n["role"] == r).collect()
}

/// Runs `n` inferences; their receipts.
fn calls(net: &Server, dir: &Path, n: usize) -> Vec<SignedReceipt> {
    (0..n)
        .map(|i| {
            let (r, _) = infer_digit(&net.url, &net.node_url, dir, &format!("-{i}"));
            let v: Value = serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
            SignedReceipt::verify_json(&v).unwrap()
        })
        .collect()
}

fn batch_status(net: &Server, r: &SignedReceipt) -> String {
    let v = get(&format!("{}/v1/receipts/{}", net.node_url, r.id()));
    v["batch"]["status"].as_str().unwrap_or("").to_string()
}

#[test]
fn an_honest_node_is_never_slashed_with_two_of_three_verifiers_up() {
    // One of the three registered verifiers is down; the other two re-execute every receipt.
    let net = Server::devnet_with(&["--free", "--sample-rate", "1", "--verifiers", "2"]);
    let dir = tempfile::tempdir().unwrap();
    let before = nodes(&net);
    let stake = dec(&role(&before, "inference")[0]["stake"]);
    let rs = calls(&net, dir.path(), 12);
    for r in &rs {
        eventually(90, || batch_status(&net, r) == "finalized");
    }
    let after = nodes(&net);
    let node = role(&after, "inference")[0];
    assert_eq!(dec(&node["stake"]), stake, "an honest node lost stake");
    assert!(node["active"].as_bool().unwrap());
    // Each running verifier confirmed the receipts bit for bit and says so.
    let mut confirming = 0;
    for v in role(&after, "verifier") {
        let url = v["endpoint"].as_str().unwrap();
        if url.starts_with("devnet:") {
            continue; // the verifier not started keeps its genesis placeholder
        }
        for r in &rs {
            let found = get(&format!("{url}/v1/verdicts/receipts/{}", r.id()));
            let verdicts = found["verdicts"].as_array().unwrap();
            assert_eq!(verdicts.len(), 1, "{url} on {}: {found}", r.id());
            assert_eq!(verdicts[0]["outcome"], "confirmed", "{found}");
            assert_eq!(verdicts[0]["comparison"], "bit-exact", "{found}");
        }
        confirming += 1;
    }
    assert_eq!(confirming, 2, "two verifiers running, two confirmations");
    let s = status(&net);
    assert!(
        s["batches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["status"] == "finalized"),
        "{s}"
    );

    // Every service's metrics, read by Prometheus' own parser: the calls, receipts, batches
    // and verdicts counted where they happened, requests by route template.
    let verifier_urls: Vec<String> = role(&after, "verifier")
        .iter()
        .filter_map(|v| v["endpoint"].as_str())
        .filter(|u| !u.starts_with("devnet:"))
        .map(str::to_owned)
        .collect();
    let mut urls = vec![net.node_url.clone(), net.url.clone()];
    urls.extend(verifier_urls.iter().cloned());
    let m = common::scrape_metrics(&urls);
    let node = &m[&net.node_url];
    assert_eq!(
        common::metric_sum(
            node,
            "cairn_node_inferences_total",
            &[("kind", "onnx"), ("engine", "tract")]
        ),
        12.0
    );
    assert_eq!(
        common::metric_sum(node, "cairn_node_receipts_signed_total", &[]),
        12.0
    );
    // Each receipt's signature counted once, by the nonce it took (presigned, or RFC 6979 when
    // a busy machine left the pool empty).
    assert_eq!(
        common::metric_sum(node, "cairn_node_receipt_signature_nonces_total", &[]),
        12.0
    );
    // Each model call counted once, by where it ran.
    assert_eq!(
        common::metric_sum(node, "cairn_node_model_calls_placed_total", &[]),
        12.0
    );
    let infer_route = [("route", "/v2/models/{model}/infer"), ("method", "POST")];
    assert_eq!(
        common::metric_sum(
            node,
            "cairn_node_http_requests_total",
            &[infer_route[0], infer_route[1], ("status", "200")]
        ),
        12.0
    );
    assert_eq!(
        common::metric_sum(
            node,
            "cairn_node_http_request_duration_seconds_count",
            &infer_route
        ),
        12.0
    );
    assert!(common::metric_sum(node, "cairn_node_batches", &[("status", "finalized")]) >= 1.0);
    assert!(
        !node
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["labels"].to_string().contains("0x")),
        "an address or a receipt id became a label"
    );
    let hub = &m[&net.url];
    assert!(
        common::metric_sum(
            hub,
            "cairn_hub_http_requests_total",
            &[("route", "/v1/blobs/{cid}"), ("status", "200")]
        ) >= 1.0
    );
    for u in &verifier_urls {
        let v = &m[u];
        assert_eq!(
            common::metric_sum(v, "cairn_verifier_samples", &[("outcome", "confirmed")]),
            12.0
        );
        assert!(common::metric_sum(v, "cairn_verifier_batch_verdicts", &[]) >= 1.0);
    }
}

/// Waits for every receipt's batch to finalize; the node kept `stake`. The registry after.
fn finalized_keeping_stake(net: &Server, rs: &[SignedReceipt], stake: U256) -> Vec<Value> {
    for r in rs {
        eventually(120, || batch_status(net, r) == "finalized");
    }
    let after = nodes(net);
    assert_eq!(
        dec(&role(&after, "inference")[0]["stake"]),
        stake,
        "an honest node lost stake"
    );
    after
}

/// Waits for the batch holding `r` to be voided by a challenge; returns the chain status.
fn wait_voided(net: &Server, r: &SignedReceipt) -> Value {
    eventually(120, || batch_status(net, r) == "voided");
    status(net)
}

/// The node lost half its stake to exactly one challenge, whose verdict (`claim`) names its
/// signers; exactly those verifiers gained their equal part of the reward (beside any fee shares
/// of finalized batches they attested) and no other verifier gained anything.
fn check_slashed(net: &Server, before: &[Value], before_status: &Value, claim: &str) {
    let after = nodes(net);
    let stake_before = dec(&role(before, "inference")[0]["stake"]);
    let stake_after = dec(&role(&after, "inference")[0]["stake"]);
    // Devnet: 50% of stake slashed, 20% of that to the verdict's signers.
    assert_eq!(stake_after, stake_before / U256::from(2u64), "slash");
    let reward = stake_before / U256::from(2u64) * U256::from(2_000u64) / U256::from(10_000u64);
    let s = status(net);
    // What each verifier earned from finalized batches' fees (10%, equal parts).
    let mut expected: std::collections::HashMap<String, U256> = Default::default();
    for b in s["batches"].as_array().unwrap() {
        if b["status"] != "finalized" {
            continue;
        }
        let signers = b["verifiers"].as_array().unwrap();
        let part = dec(&b["fees"]) * U256::from(1_000u64)
            / U256::from(10_000u64)
            / U256::from(signers.len());
        for v in signers {
            *expected
                .entry(v.as_str().unwrap().to_ascii_lowercase())
                .or_default() += part;
        }
    }
    // The challenge that landed (the verifier that sent it records its transaction once the
    // transaction is mined, which may be just after the node sees the batch voided).
    let mut landed = Vec::new();
    eventually(30, || {
        landed.clear();
        for v in role(&after, "verifier") {
            let url = v["endpoint"].as_str().unwrap();
            let recent = get(&format!("{url}/v1/verdicts"));
            for verdict in recent["verdicts"].as_array().unwrap() {
                if verdict["outcome"] == "challenged" {
                    assert_eq!(verdict["fraud"]["claim"], claim, "{verdict}");
                    if verdict["challenge"]["tx"].is_string() {
                        landed.push(verdict["challenge"]["signers"].clone());
                    }
                }
            }
        }
        !landed.is_empty()
    });
    assert_eq!(landed.len(), 1, "exactly one challenge landed: {landed:?}");
    let signers: Vec<String> = landed[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(signers.len() >= 2, "a quorum signed: {signers:?}");
    let share = reward / U256::from(signers.len());
    for a in &signers {
        *expected.entry(a.clone()).or_default() += share;
    }
    let now = |addr: &str| -> U256 {
        let n = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["address"] == addr)
            .unwrap();
        dec(&n["tokenBalance"])
    };
    for v in role(before, "verifier") {
        let addr = v["address"].as_str().unwrap();
        let gain = expected
            .remove(&addr.to_ascii_lowercase())
            .unwrap_or_default();
        assert_eq!(
            now(addr),
            dec(&v["tokenBalance"]) + gain,
            "verifier {addr} (signers {signers:?})"
        );
    }
    assert!(
        expected.is_empty(),
        "paid someone not a verifier: {expected:?}"
    );
    // The treasury: the slash less the reward paid out, a voided batch's fees, and its part of
    // finalized batches' fees (5%, plus the verifiers' rounding dust).
    let slash = stake_before / U256::from(2u64);
    let mut to_treasury = slash - share * U256::from(signers.len());
    let mut held = U256::ZERO;
    for b in s["batches"].as_array().unwrap() {
        let f = dec(&b["fees"]);
        match b["status"].as_str().unwrap() {
            "voided" => to_treasury += f,
            "finalized" => {
                let n = U256::from(b["verifiers"].as_array().unwrap().len());
                let v = f * U256::from(1_000u64) / U256::from(10_000u64);
                to_treasury += f * U256::from(500u64) / U256::from(10_000u64) + (v - v / n * n);
            }
            "submitted" | "attested" => held += f,
            _ => {}
        }
    }
    assert_eq!(
        dec(&s["treasuryBalance"]),
        dec(&before_status["treasuryBalance"]) + to_treasury,
        "treasury"
    );
    // Only open batches' fees wait in the settlement contract.
    assert_eq!(dec(&s["settlementBalance"]), held, "settlement");
}

fn tokens(nodes: &[Value], net: &Server) -> Vec<Value> {
    // Attach each node's token balance (from chain status) to the listing.
    let s = status(net);
    nodes
        .iter()
        .map(|n| {
            let mut n = n.clone();
            let b = s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["address"] == n["address"])
                .unwrap()["tokenBalance"]
                .clone();
            n["tokenBalance"] = b;
            n
        })
        .collect()
}

#[test]
fn a_node_that_lies_about_outputs_is_caught_challenged_and_slashed() {
    lies_are_slashed(&[]);
}

/// The same lie, the listing's seals spoiled (its leaves and root unchanged): verifiers that
/// refused a batch over a bad seal would never have re-executed the lie, nor proven it. They
/// check the content the node committed on chain, so the lie is proven and slashed all the same.
#[test]
fn a_node_that_lies_and_spoils_its_listings_seals_is_slashed_all_the_same() {
    lies_are_slashed(&["--fault-forge-seals"]);
}

/// A devnet whose node lies on half its outputs (and does `extra`): one of its batches is
/// voided and the node slashed for `output_mismatch`.
fn lies_are_slashed(extra: &[&str]) {
    let mut args = vec![
        "--free",
        "--sample-rate",
        "1",
        "--fault-wrong-output",
        "0.5",
        "--batch-max-age-secs",
        "20",
    ];
    args.extend_from_slice(extra);
    let net = Server::devnet_with(&args);
    let dir = tempfile::tempdir().unwrap();
    let before = tokens(&nodes(&net), &net);
    let before_status = status(&net);
    // The same input every call, so honest outputs hash alike: call until one differs (a lie).
    let mut rs = Vec::new();
    let mut hashes = std::collections::BTreeSet::new();
    while hashes.len() < 2 {
        assert!(rs.len() < 30, "the node never lied in 30 calls at rate 0.5");
        let r = calls(&net, dir.path(), 1).remove(0);
        hashes.insert(r.claims.output_hash);
        rs.push(r);
    }
    let info = get(&format!("{}/v1/node", net.node_url));
    assert_eq!(info["faults"]["wrongOutputRate"], 0.5);
    assert_eq!(
        info["faults"]["forgeListingSeals"],
        extra.contains(&"--fault-forge-seals")
    );
    let s = wait_voided(&net, &rs[0]);
    assert!(
        s["batches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["status"] == "voided")
    );
    check_slashed(&net, &before, &before_status, "output_mismatch");
}

/// Runs `n` chat completions on the devnet's language model (greedy, then seeded sampling);
/// their receipts.
fn llm_calls(net: &Server, n: usize) -> Vec<SignedReceipt> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("{}/v1/chat/completions", net.node_url);
    (0..n)
        .map(|i| {
            let body = serde_json::json!({
                "model": "smollm2-135m-instruct@1.0",
                "messages": [{"role": "user", "content": format!("Name a colour ({i}).")}],
                "max_tokens": 8,
                "temperature": if i % 2 == 0 { 0.0 } else { 0.8 },
            });
            let id = rt.block_on(async {
                let resp = reqwest::Client::new()
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                resp.headers()["cairn-receipt-id"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            });
            let stored = get(&format!("{}/v1/receipts/{id}", net.node_url));
            let r: SignedReceipt = serde_json::from_value(stored["receipt"].clone()).unwrap();
            assert!(r.claims.llm.is_some());
            r
        })
        .collect()
}

/// Language-model calls go through the same loop as inferences: verifiers replay every sampled
/// LLM receipt's kept request and, from an honest node, get the same tokens and answer bytes,
/// so its batches finalize and it keeps its stake; a node that alters the model's answer is
/// caught by the replay, challenged through `challengeLlm` and slashed.
#[test]
fn verifiers_replay_language_model_receipts_and_a_node_that_alters_answers_is_slashed() {
    let test = "verifiers_replay_language_model_receipts_and_a_node_that_alters_answers_is_slashed";
    let Some(model) = common::llm_model(test) else {
        return;
    };
    let model = model.to_str().unwrap();
    let net = Server::devnet_with(&[
        "--free",
        "--sample-rate",
        "1",
        "--llm",
        model,
        "--batch-max-age-secs",
        "5",
    ]);
    let before = nodes(&net);
    let stake = dec(&role(&before, "inference")[0]["stake"]);
    let rs = llm_calls(&net, 3);
    let after = finalized_keeping_stake(&net, &rs, stake);
    for v in role(&after, "verifier") {
        let url = v["endpoint"].as_str().unwrap();
        for r in &rs {
            let found = get(&format!("{url}/v1/verdicts/receipts/{}", r.id()));
            let verdicts = found["verdicts"].as_array().unwrap();
            assert_eq!(verdicts.len(), 1, "{url} on {}: {found}", r.id());
            assert_eq!(verdicts[0]["outcome"], "confirmed", "{found}");
            assert!(
                verdicts[0]["comparison"]
                    .as_str()
                    .unwrap()
                    .starts_with("bit-exact: the same"),
                "{found}"
            );
        }
    }
    drop(net);

    let net = Server::devnet_with(&[
        "--free",
        "--sample-rate",
        "1",
        "--llm",
        model,
        "--fault-wrong-output",
        "1",
        "--batch-max-age-secs",
        "5",
    ]);
    let before = tokens(&nodes(&net), &net);
    let before_status = status(&net);
    let rs = llm_calls(&net, 1);
    wait_voided(&net, &rs[0]);
    check_slashed(&net, &before, &before_status, "output_mismatch");
}

#[test]
fn a_node_that_withholds_payloads_fails_its_samples() {
    // Each verifier tries 3 times over 4 s, on its own, before it holds the payload withheld.
    let net = Server::devnet_with(&[
        "--free",
        "--sample-rate",
        "1",
        "--payload-window-secs",
        "4",
        "--payload-attempts",
        "3",
        "--fault-withhold-payloads",
        "--batch-max-age-secs",
        "10",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let before = tokens(&nodes(&net), &net);
    let before_status = status(&net);
    let rs = calls(&net, dir.path(), 2);
    wait_voided(&net, &rs[0]);
    check_slashed(&net, &before, &before_status, "payload_withheld");
}

#[test]
fn a_node_down_for_longer_than_an_attempt_but_shorter_than_the_window_is_not_slashed() {
    // The node refuses every payload for 7 s after its batch is sealed (a restart, an
    // overload); verifiers try 4 times over 15 s (every 5 s). Before the fix one failed fetch after the
    // deadline was a verdict, and a quorum of them slashed an honest node.
    let net = Server::devnet_with(&[
        "--free",
        "--sample-rate",
        "1",
        "--payload-window-secs",
        "15",
        "--payload-attempts",
        "4",
        "--fault-payload-outage-secs",
        "7",
        "--batch-max-age-secs",
        "1",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let before = nodes(&net);
    let stake = dec(&role(&before, "inference")[0]["stake"]);
    let rs = calls(&net, dir.path(), 2);
    let after = finalized_keeping_stake(&net, &rs, stake);
    // Every running verifier met the outage (at least one failed attempt) and then confirmed.
    for v in role(&after, "verifier") {
        let url = v["endpoint"].as_str().unwrap();
        for r in &rs {
            let found = get(&format!("{url}/v1/verdicts/receipts/{}", r.id()));
            let verdict = &found["verdicts"][0];
            assert_eq!(verdict["outcome"], "confirmed", "{found}");
            assert!(verdict["payloadFailures"].as_u64().unwrap() >= 1, "{found}");
        }
    }
}
