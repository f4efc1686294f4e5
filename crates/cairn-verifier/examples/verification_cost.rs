//! What verification costs, measured side by side with what the node does (single thread):
//!
//! 1. receipt checks per second per core (parse the JSON receipt strictly, or the binary listing
//!    verifiers read, recover the signer, compare node and domain, hash it for the tree), against
//!    the node signing the same receipts; and what the verifier's own check of a listing costs
//!    per receipt (it checks no seal: `cairn_verifier::check_listing` says why);
//!    for receipts signed on their own and for batch-signed ones (micro-batches of 16 and 64, the
//!    verifier recovering each root once);
//! 2. for the digits MLP and MiniLM-L3: the verifier's work per call at sampling rate p
//!    (the verifier's check of every receipt + p × [decode the kept input, hash it, re-execute, hash the output])
//!    as a fraction of the node's inference work per call (run + hash inputs and outputs + sign
//!    + encode the payloads it keeps).
//!
//! `cargo run --release -p cairn-verifier --example verification_cost -- [MODELS_DIR] [RATE]`
//! (MODELS_DIR defaults to $CAIRN_TEST_MODELS, which `scripts/test.sh` fills.)

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use cairn_core::tensor::tensors_hash;
use cairn_core::{BlobId, DataType, Tensor};
use cairn_engine::{Engine, TractEngine};
use cairn_receipt::compact::{encode_receipts, listing_entries, verify_entries};
use cairn_receipt::merkle::ReceiptTree;
use cairn_receipt::{Claims, ReceiptDomain, ReceiptJson, ReceiptSigner};

fn claims(i: u64, profile: cairn_core::ExecutionProfile) -> Claims {
    Claims {
        request_id: B256::random(),
        model: BlobId::of(b"model"),
        input_hash: B256::random(),
        output_hash: B256::random(),
        profile,
        timestamp: 1_790_000_000 + i,
        price: U256::from(1_000u64),
        payment_ref: B256::ZERO,
        llm: None,
    }
}

/// Median of `runs` timings of `f` repeated `n` times, per call, in microseconds.
fn per_call(runs: usize, n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..n {
                f();
            }
            s.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[runs / 2]
}

/// Median time to check every seal of a whole binary listing, as a client or the explorer
/// would: split it, verify every receipt (one recovery per micro-batch root, complete
/// micro-batches rebuilt once), compare node and domain, build the settlement tree.
fn check_every_seal(listing: &[u8], node: Address, domain: ReceiptDomain) -> f64 {
    per_call(5, 1, || {
        let entries = listing_entries(listing).unwrap();
        let checked = verify_entries(&entries, &mut Default::default()).unwrap();
        let mut leaves = Vec::with_capacity(checked.len());
        for v in &checked {
            assert!(v.receipt.signer == node && v.receipt.domain == domain);
            leaves.push((v.leaf, v.digest));
        }
        black_box(ReceiptTree::from_leaves(leaves).unwrap());
    })
}

/// Median time for a verifier's static checks of a whole binary listing
/// ([`cairn_verifier::check_listing`]): split it, parse and hash every receipt (no seal is
/// checked), compare node and domain, build the settlement tree, sum the fees, draw the secret
/// sample at `rate`.
fn check_as_verifier(listing: &[u8], node: Address, domain: ReceiptDomain, rate: f64) -> f64 {
    // The batch the listing makes (as the node would have submitted it).
    let entries = listing_entries(listing).unwrap();
    let v = verify_entries(&entries, &mut Default::default()).unwrap();
    let tree = ReceiptTree::from_leaves(v.iter().map(|v| (v.leaf, v.digest)).collect()).unwrap();
    let batch = cairn_ledger::BatchInfo {
        id: 1,
        node,
        root: tree.root(),
        count: v.len() as u32,
        fees: v.iter().map(|v| v.receipt.claims.price).sum(),
        submitted_at: 0,
        attested_at: 0,
        status: cairn_ledger::BatchStatus::Submitted,
        verifiers: vec![],
    };
    let sampler = cairn_verifier::Sampler::new(B256::repeat_byte(3), rate);
    per_call(5, 1, || {
        let checked = cairn_verifier::check_listing(&batch, listing, &domain, &sampler).unwrap();
        black_box(checked.sampled.len());
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CAIRN_TEST_MODELS").map(PathBuf::from))
        .expect("give the models dir (or set CAIRN_TEST_MODELS)");
    let rate: f64 = args.next().map(|r| r.parse().unwrap()).unwrap_or(0.05);
    let engine = TractEngine::new();
    let profile = engine.profile().clone();
    let key = PrivateKeySigner::random();
    let domain = ReceiptDomain {
        chain_id: 31337,
        verifying_contract: Address::repeat_byte(0x11),
    };

    // 1. Receipt checks per second per core.
    let n = 4_000;
    let cs: Vec<Claims> = (0..n).map(|i| claims(i, profile.clone())).collect();
    // As the node signs (its kept signer) and as the verifier checks (a batch listing's
    // receipt text, verified with the digest that becomes its Merkle leaf).
    let signer = ReceiptSigner::new(cairn_core::sig::SigningKey::from_signer(&key), domain);
    let sign_us = {
        let mut i = 0;
        per_call(5, n as usize, || {
            black_box(signer.sign_with_digest(cs[i % cs.len()].clone()));
            i += 1;
        })
    };
    let jsons: Vec<ReceiptJson> = cs
        .iter()
        .map(|c| ReceiptJson::from(&signer.sign(c.clone())))
        .collect();
    let node = key.address();
    let check_us = {
        let mut i = 0;
        per_call(5, n as usize, || {
            let (r, digest) = jsons[i % jsons.len()].verify_with_digest().unwrap();
            assert!(r.signer == node && r.domain == domain);
            black_box(digest);
            i += 1;
        })
    };
    // The same receipts as a verifier reads a batch: one binary listing.
    let signed: Vec<_> = jsons.iter().map(|j| j.verify().unwrap()).collect();
    let listing = encode_receipts(&signed).unwrap();
    let check_bin_us = check_every_seal(&listing, node, domain) / n as f64;
    let check_rate_us = check_as_verifier(&listing, node, domain, rate) / n as f64;
    println!("receipts (single thread, {n} distinct receipts, median of 5 runs):");
    println!("  node signs one:        {sign_us:>8.1} µs");
    println!(
        "  verifier checks one:   {check_us:>8.1} µs  = {:.0} checks/s/core  ({:.2}x the node's signing) [JSON]",
        1e6 / check_us,
        check_us / sign_us
    );
    println!(
        "                         {check_bin_us:>8.1} µs  = {:.0} checks/s/core  ({:.2}x the node's signing) [binary listing, every seal checked: parse + hash + recover + settlement tree]",
        1e6 / check_bin_us,
        check_bin_us / sign_us
    );
    println!(
        "                         {check_rate_us:>8.1} µs  = {:.0} receipts/s/core [binary listing as a verifier sampling {rate} checks it: parse + hash + settlement tree + fees + sample draw, no seal]",
        1e6 / check_rate_us,
    );
    let check_us = check_rate_us;
    // Batch-signed: the node signs one root per micro-batch (its group commit); the verifier
    // checks a listing of them with one recovery per root.
    let mut batch_costs = Vec::new();
    for size in [16usize, 64] {
        let groups: Vec<Vec<Claims>> = cs.chunks(size).map(|g| g.to_vec()).collect();
        let sign_batch_us = per_call(5, 1, || {
            for g in &groups {
                black_box(signer.sign_batch(g.clone()).unwrap());
            }
        }) / n as f64;
        let listing: Vec<ReceiptJson> = groups
            .iter()
            .flat_map(|g| signer.sign_batch(g.clone()).unwrap())
            .map(|r| ReceiptJson::from(&r))
            .collect();
        let check_batch_us = per_call(5, 1, || {
            let mut cache = cairn_receipt::SealCache::default();
            for j in &listing {
                let (r, digest) = j.verify_cached(&mut cache).unwrap();
                assert!(r.signer == node && r.domain == domain);
                black_box(digest);
            }
        }) / n as f64;
        let signed: Vec<_> = listing.iter().map(|j| j.verify().unwrap()).collect();
        let bin = encode_receipts(&signed).unwrap();
        let check_bin_us = check_every_seal(&bin, node, domain) / n as f64;
        let check_rate_us = check_as_verifier(&bin, node, domain, rate) / n as f64;
        println!(
            "  batch-signed by {size:>2}:    node {sign_batch_us:>5.1} µs/receipt; verifier {check_batch_us:>5.1} µs/receipt = {:.0} receipts/s/core [JSON]; {check_bin_us:>5.1} µs = {:.0}/s [binary, every seal]; {check_rate_us:>5.1} µs = {:.0}/s [binary, as a verifier]",
            1e6 / check_batch_us,
            1e6 / check_bin_us,
            1e6 / check_rate_us
        );
        batch_costs.push((size, sign_batch_us, check_rate_us));
    }

    // 2. Verification cost at `rate` against the node's inference cost.
    println!("verification at sampling rate {rate} vs the node's work per call ({profile}):");
    let digits_x = {
        let v: Vec<u8> = (0..64)
            .flat_map(|i| ((i % 17) as f32).to_le_bytes())
            .collect();
        vec![Tensor::new("X", DataType::Fp32, vec![1, 64], v).unwrap()]
    };
    let minilm_x = {
        let ids: Vec<i64> = vec![101, 7592, 2088, 2003, 1037, 3231, 102, 0];
        let mask: Vec<i64> = vec![1, 1, 1, 1, 1, 1, 1, 0];
        let b = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        vec![
            Tensor::new("input_ids", DataType::Int64, vec![1, 8], b(&ids)).unwrap(),
            Tensor::new("attention_mask", DataType::Int64, vec![1, 8], b(&mask)).unwrap(),
        ]
    };
    for (name, file, inputs, iters) in [
        ("digits MLP", "digits_mlp.onnx", digits_x, 4_000usize),
        ("MiniLM-L3", "minilm_l3.onnx", minilm_x, 40),
    ] {
        let path = dir.join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            println!("  {name}: {} missing, skipped", path.display());
            continue;
        };
        let plan = engine.load(&bytes).unwrap();
        let inputs = if name == "digits MLP" {
            // The digits graph's input name, whatever skl2onnx called it.
            let n = plan.input_names()[0].clone();
            vec![Tensor::new(n, DataType::Fp32, vec![1, 64], inputs[0].data().to_vec()).unwrap()]
        } else {
            inputs
        };
        let node_us = per_call(5, iters, || {
            let out = plan.run(&inputs).unwrap();
            let c = Claims {
                input_hash: tensors_hash(&inputs),
                output_hash: tensors_hash(&out),
                ..cs[0].clone()
            };
            black_box(c.sign(domain, &key).unwrap());
            black_box(cairn_node_api::safetensors_io::encode(&inputs));
            black_box(cairn_node_api::safetensors_io::encode(&out));
        });
        let kept = cairn_node_api::safetensors_io::encode(&inputs);
        let reexec_us = per_call(5, iters, || {
            let x = cairn_node_api::safetensors_io::decode(&kept).unwrap();
            black_box(tensors_hash(&x));
            let out = plan.run(&x).unwrap();
            black_box(tensors_hash(&out));
        });
        let verifier_us = check_us + rate * reexec_us;
        println!(
            "  {name:<10}: node {node_us:>9.1} µs/call; verifier {verifier_us:>8.1} µs/call \
             (check {check_us:.1} + {rate} x re-exec {reexec_us:.1}) = {:.1}% of the node's",
            100.0 * verifier_us / node_us
        );
        for (size, node_sign, check) in &batch_costs {
            // The node's call with its receipt batch-signed: the same work, its own signature
            // replaced by its share of one root signature.
            let node_b = node_us - sign_us + node_sign;
            let verifier_b = check + rate * reexec_us;
            println!(
                "  {:<10}  batch-signed by {size}: node {node_b:>9.1} µs/call; verifier {verifier_b:>8.1} µs/call = {:.1}% of the node's",
                "",
                100.0 * verifier_b / node_b
            );
        }
    }
}
