use std::sync::Arc;

use alloy_primitives::{Address, U256, keccak256};
use cairn_core::{BlobId, ExecutionProfile};
use cairn_ledger::deploy::deploy;
use cairn_ledger::{BatchInfo, BatchStatus, DeployParams, EmbeddedLedger, dev_signer};
use cairn_receipt::{Claims, ReceiptDomain, SignedReceipt};
use serde_json::{Value, json};

use std::time::Duration;

use alloy_primitives::Signature;
use cairn_ledger::{RegistrationRequest, Role};

use super::*;
use crate::sample::FetchFailure;

async fn verifier() -> (Verifier, tempfile::TempDir) {
    verifier_with(true).await
}

async fn verifier_with(allow_private_endpoints: bool) -> (Verifier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gov = dev_signer(0);
    let ledger = EmbeddedLedger::open(
        &dir.path().join("chain.sqlite"),
        31337,
        &[2, 3, 4]
            .map(|i| (dev_signer(i).address(), U256::from(10u128.pow(22))))
            .into_iter()
            .chain([(gov.address(), U256::from(10u128.pow(22)))])
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let d = deploy(
        &ledger,
        &gov,
        &DeployParams::devnet(gov.address(), gov.address()),
    )
    .await
    .unwrap();
    let chain = Chain::new(Arc::new(ledger), d).unwrap();
    let hub = cairn_hub_api::HubClient::new("http://127.0.0.1:9", None).unwrap();
    let engine: Arc<dyn cairn_engine::Engine> = Arc::new(cairn_engine::TractEngine::new());
    let cache = cairn_node::cache::ModelCache::new(
        dir.path().join("models"),
        hub,
        engine,
        1 << 26,
        1 << 26,
    );
    let store = VerdictStore::open(&dir.path().join("verdicts.sqlite")).unwrap();
    let config = VerifierConfig {
        sample_rate: 0.05,
        secret: B256::repeat_byte(7),
        payload_window: Duration::from_secs(30),
        payload_attempts: 3,
        max_fetch_bytes: 1 << 20,
        allow_private_endpoints,
        endpoint: "http://127.0.0.1:1".into(),
        attestation: cairn_attest::Policy { allow_dev: true },
        approval_ttl: Duration::from_secs(600),
        hub_url: "http://127.0.0.1:9".into(),
    };
    let reexec = Reexecutor::new(cache, 1e-4);
    (
        Verifier::new(chain, dev_signer(3), reexec, store, config),
        dir,
    )
}

fn receipt(domain: ReceiptDomain, node: &PrivateKeySigner, i: u64) -> SignedReceipt {
    Claims {
        request_id: keccak256(format!("r{i}")),
        model: BlobId::of(b"model"),
        input_hash: keccak256(format!("in{i}")),
        output_hash: keccak256(format!("out{i}")),
        profile: ExecutionProfile {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            isa: "generic".into(),
            threads: 1,
        },
        timestamp: 1_700_000_000,
        price: U256::from(10u64),
        payment_ref: B256::ZERO,
        llm: None,
    }
    .sign(domain, node)
    .unwrap()
}

fn batch_of(node: Address, rs: &[SignedReceipt]) -> (BatchInfo, Value) {
    let digests: Vec<B256> = rs.iter().map(|r| r.signing_hash()).collect();
    let info = BatchInfo {
        id: 1,
        node,
        root: ReceiptTree::new(&digests).unwrap().root(),
        count: rs.len() as u32,
        fees: rs.iter().map(|r| r.claims.price).sum(),
        submitted_at: 0,
        attested_at: 0,
        status: BatchStatus::Submitted,
        verifiers: vec![],
    };
    let listing = json!({"receipts": rs.iter().map(|r| r.to_json()).collect::<Vec<_>>()});
    (info, listing)
}

fn refused(v: &Verifier, b: &BatchInfo, l: &Value) -> String {
    refused_bytes(v, b, &serde_json::to_vec(l).unwrap())
}

/// Every model and profile a listing names reaches the hub's and the registry's checks, in
/// whatever order they come and whether their receipts are sampled or dropped once hashed.
#[test]
fn every_model_and_profile_a_listing_names_is_collected() {
    let domain = ReceiptDomain {
        chain_id: 31337,
        verifying_contract: Address::repeat_byte(1),
    };
    let node = dev_signer(2);
    let profile = |isa: &str| ExecutionProfile {
        engine: "tract".into(),
        engine_version: "0.23.9".into(),
        isa: isa.into(),
        threads: 1,
    };
    // Repeats, one part changing without the other, a return to an earlier pair.
    let plan: [(&[u8], &str); 7] = [
        (b"a", "generic"),
        (b"a", "generic"),
        (b"b", "generic"),
        (b"a", "avx2"),
        (b"a", "generic"),
        (b"c", "avx2"),
        (b"c", "avx512"),
    ];
    let rs: Vec<SignedReceipt> = plan
        .iter()
        .enumerate()
        .map(|(i, (model, isa))| {
            let mut c = receipt(domain, &node, i as u64).claims;
            c.model = BlobId::of(model);
            c.profile = profile(isa);
            c.sign(domain, &node).unwrap()
        })
        .collect();
    let (b, json) = batch_of(node.address(), &rs);
    let models: BTreeSet<BlobId> = [b"a", b"b", b"c"].iter().map(|m| BlobId::of(*m)).collect();
    let profiles: HashSet<ExecutionProfile> = ["generic", "avx2", "avx512"]
        .into_iter()
        .map(profile)
        .collect();
    for listing in [binary_of(&rs), serde_json::to_vec(&json).unwrap()] {
        for rate in [0.0, 0.5, 1.0] {
            let c = check_listing(&b, &listing, &domain, &Sampler::new(B256::ZERO, rate)).unwrap();
            assert_eq!(
                (&c.models, &c.profiles),
                (&models, &profiles),
                "at rate {rate}"
            );
            // A sampled receipt is kept whole, its profile too.
            assert!(c.sampled.iter().all(|(i, r)| r == &rs[*i]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_signs_only_batches_whose_receipts_hold_up() {
    let (v, _dir) = verifier().await;
    let d = v.chain().deployment().clone();
    let domain = ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: d.settlement,
    };
    let node = dev_signer(2);
    let rs: Vec<SignedReceipt> = (0..5).map(|i| receipt(domain, &node, i)).collect();
    let (good, listing) = batch_of(node.address(), &rs);
    // The verifier's own check (its 5% sample).
    let CheckedBatch { digests, tree, .. } = v
        .check(&good, &serde_json::to_vec(&listing).unwrap())
        .unwrap();
    assert_eq!(
        digests,
        rs.iter().map(|r| r.signing_hash()).collect::<Vec<_>>()
    );
    // The binary listing of the same receipts checks to the same, and (all sampled) keeps
    // each receipt whole, in the listing's order.
    let binary = binary_of(&rs);
    let CheckedBatch {
        sampled: again,
        digests: digests_again,
        tree: tree_again,
        ..
    } = check_all(&v, &good, &binary).unwrap();
    assert_eq!(digests_again, digests);
    assert_eq!(tree_again.root(), good.root);
    assert_eq!(tree.root(), good.root);
    assert_eq!(
        again.iter().map(|(i, r)| (*i, r.id())).collect::<Vec<_>>(),
        rs.iter().map(|r| r.id()).enumerate().collect::<Vec<_>>()
    );
    // What it hands the node: an attestation of exactly this batch, by this verifier, low-s.
    let sig = v.attestation(&good).unwrap();
    assert_eq!(
        v.chain().attestation_signer(&good, &sig).unwrap(),
        v.address()
    );
    assert!(sig.normalize_s().is_none(), "high-s attestation");
    let mut other_root = good.clone();
    other_root.root = keccak256("other");
    assert_ne!(
        v.chain().attestation_signer(&other_root, &sig).ok(),
        Some(v.address())
    );

    // A receipt signed by another key.
    let mut other = rs.clone();
    other[2] = receipt(domain, &dev_signer(7), 2);
    let (b, l) = batch_of(node.address(), &other);
    assert!(refused(&v, &b, &l).contains("not the batch's node"));
    // A receipt addressed to another contract.
    let mut foreign = rs.clone();
    foreign[0] = misaddressed(d.chain_id, &node, 0);
    let (b, l) = batch_of(node.address(), &foreign);
    assert!(refused(&v, &b, &l).contains("not addressed to this settlement contract"));
    // Fewer receipts than claimed, a different root, other fees.
    let (_, short) = batch_of(node.address(), &rs[..4]);
    assert!(refused(&v, &good, &short).contains("receipts listed"));
    let mut wrong_root = good.clone();
    wrong_root.root = keccak256("other");
    assert!(refused(&v, &wrong_root, &listing).contains("rebuild root"));
    let mut wrong_fees = good.clone();
    wrong_fees.fees += U256::from(1u64);
    assert!(refused(&v, &wrong_fees, &listing).contains("sum to"));
    // A tampered receipt no longer makes the committed root.
    let mut tampered = listing.clone();
    tampered["receipts"][1]["typedData"]["message"]["price"] = json!("11");
    assert!(refused(&v, &good, &tampered).contains("rebuild root"));
    assert!(refused(&v, &good, &json!({})).contains("no `receipts`"));
}

/// A receipt's binary form.
fn compact_bytes(r: &SignedReceipt) -> Vec<u8> {
    cairn_receipt::CompactReceipt::try_from(r)
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// The binary listing of a set of receipts.
fn binary_of(rs: &[SignedReceipt]) -> Vec<u8> {
    cairn_receipt::compact::encode_receipts(rs).unwrap()
}

/// Receipt `i` by `node`, addressed to another contract than the deployment's.
fn misaddressed(chain_id: u64, node: &PrivateKeySigner, i: u64) -> SignedReceipt {
    let elsewhere = ReceiptDomain {
        chain_id,
        verifying_contract: Address::ZERO,
    };
    receipt(elsewhere, node, i)
}

/// Why `v` refuses batch `b` given `listing` (JSON or binary), every seal checked.
fn refused_bytes(v: &Verifier, b: &BatchInfo, listing: &[u8]) -> String {
    match check_all(v, b, listing) {
        Err(reason) => reason,
        Ok(_) => panic!("expected a refusal"),
    }
}

/// `v`'s static checks of `listing` with every receipt sampled, so every seal is checked.
fn check_all(v: &Verifier, b: &BatchInfo, listing: &[u8]) -> Result<CheckedBatch, String> {
    check_at(v, b, listing, &Sampler::new(B256::ZERO, 1.0))
}

/// The places in the listing of the receipts `c`'s sample picked.
fn picks(c: &CheckedBatch) -> Vec<usize> {
    c.sampled.iter().map(|(i, _)| *i).collect()
}

/// `v`'s static checks of `listing` under its deployment's domain with `sampler`.
fn check_at(
    v: &Verifier,
    b: &BatchInfo,
    listing: &[u8],
    sampler: &Sampler,
) -> Result<CheckedBatch, String> {
    check_listing(b, listing, &domain_of(v), sampler)
}

/// The receipt domain of `v`'s deployment.
fn domain_of(v: &Verifier) -> ReceiptDomain {
    let d = v.chain().deployment();
    ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: d.settlement,
    }
}

/// A settlement verifier checks no seal (the node's `submitBatch` binds it to every leaf, and
/// each leaf names it; refusing over a seal would let a liar spoil the seal of its lie to
/// escape the proof): forged seals pass at any sampling rate, the sample is the sampler's
/// picks, and every rule that binds the node holds: the node a receipt names, its domain, its
/// content (through the root), the fees, a seal's canonical form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seals_are_not_checked_and_everything_the_node_committed_is() {
    let (v, _dir) = verifier().await;
    let domain = domain_of(&v);
    let node = dev_signer(2);
    let signer =
        cairn_receipt::ReceiptSigner::new(cairn_core::sig::SigningKey::from_signer(&node), domain);
    // 40 receipts signed alone and a micro-batch of 8.
    let mut rs: Vec<SignedReceipt> = (0..40).map(|i| receipt(domain, &node, i)).collect();
    rs.extend(
        signer
            .sign_batch(
                (100..108)
                    .map(|i| receipt(domain, &node, i).claims)
                    .collect(),
            )
            .unwrap(),
    );
    let (good, _) = batch_of(node.address(), &rs);
    // Every seal forged as the node's fault forges it: a byte of each signature flipped (a
    // micro-batch's shared root signature too).
    let forged: Vec<Vec<u8>> = rs
        .iter()
        .map(|r| cairn_node::faults::forge_seal(&compact_bytes(r)))
        .collect();
    assert!(forged.iter().zip(&rs).all(|(f, r)| *f != compact_bytes(r)));
    let binary = |entries: &[Vec<u8>]| {
        cairn_receipt::compact::encode_listing(entries.iter().map(|e| e.as_slice()))
    };
    let json = |entries: &[Vec<u8>]| {
        let texts: Vec<String> = entries
            .iter()
            .map(|e| {
                cairn_receipt::CompactReceipt::from_bytes(e.clone())
                    .to_json()
                    .unwrap()
                    .as_str()
                    .to_string()
            })
            .collect();
        format!("{{\"receipts\":[{}]}}", texts.join(",")).into_bytes()
    };
    let none = Sampler::new(B256::repeat_byte(9), 0.0);
    let some = Sampler::new(B256::repeat_byte(9), 0.25);
    let picked: Vec<usize> = rs
        .iter()
        .enumerate()
        .filter(|(_, r)| some.sampled(good.root, r.signing_hash()))
        .map(|(i, _)| i)
        .collect();
    assert!(!picked.is_empty() && picked.len() < rs.len(), "{picked:?}");
    let all = Sampler::new(B256::ZERO, 1.0);
    for listing in [binary(&forged), json(&forged)] {
        // Forged seals pass whatever is sampled; the claims are the ones signed, the sample
        // the sampler's picks.
        for (sampler, sampled) in [(&none, vec![]), (&some, picked.clone())] {
            let c = check_at(&v, &good, &listing, sampler).unwrap();
            assert_eq!(picks(&c), sampled);
            assert_eq!(c.tree.root(), good.root);
            assert!(
                c.digests.iter().eq(rs
                    .iter()
                    .map(|r| r.signing_hash())
                    .collect::<Vec<_>>()
                    .iter())
            );
            // The sampled receipts are kept whole, their claims the ones signed.
            assert!(c.sampled.iter().all(|(i, r)| r.claims == rs[*i].claims));
            assert_eq!(
                (c.models.len(), c.profiles.len()),
                (1, 1),
                "one model and one profile, each once"
            );
        }
        assert_eq!(
            picks(&check_at(&v, &good, &listing, &all).unwrap()),
            (0..rs.len()).collect::<Vec<_>>()
        );
    }
    // A seal not in canonical form (v = 29) is malformed, sampled or not.
    let mut odd = forged.clone();
    let last = odd[2].len() - 1;
    odd[2][last] = 29;
    let why = check_at(&v, &good, &binary(&odd), &none).unwrap_err();
    assert!(why.contains("receipt 2 does not parse"), "{why}");
    // The genuine listing: the same sample.
    let genuine: Vec<Vec<u8>> = rs.iter().map(compact_bytes).collect();
    for listing in [binary(&genuine), json(&genuine)] {
        assert_eq!(
            picks(&check_at(&v, &good, &listing, &some).unwrap()),
            picked
        );
    }
    // With no seal checked, a receipt naming another node, addressed elsewhere, with a field
    // changed, or a batch escrowing other fees, is still refused.
    let mut other = rs.clone();
    other[3] = receipt(domain, &dev_signer(7), 3);
    let (b, _) = batch_of(node.address(), &other);
    let why = check_at(&v, &b, &binary_of(&other), &none).unwrap_err();
    assert!(why.contains("not the batch's node"), "{why}");
    let mut foreign = rs.clone();
    foreign[5] = misaddressed(domain.chain_id, &node, 5);
    let (b, _) = batch_of(node.address(), &foreign);
    let why = check_at(&v, &b, &binary_of(&foreign), &none).unwrap_err();
    assert!(
        why.contains("not addressed to this settlement contract"),
        "{why}"
    );
    let mut changed = forged.clone();
    changed[7][217] ^= 1;
    let why = check_at(&v, &good, &binary(&changed), &none).unwrap_err();
    assert!(why.contains("rebuild root"), "{why}");
    let mut fees = good.clone();
    fees.fees -= U256::from(1u64);
    let why = check_at(&v, &fees, &binary(&forged), &none).unwrap_err();
    assert!(why.contains("sum to"), "{why}");
}

/// Binary listings are held to what JSON ones are: batch-signed receipts (whole micro-batches
/// and parts of one) check, and a foreign signer, another domain, a short listing, a tampered
/// byte or an unreadable listing are refused with the same reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_listings_are_checked_as_json_ones_are() {
    let (v, _dir) = verifier().await;
    let d = v.chain().deployment().clone();
    let domain = ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: d.settlement,
    };
    let node = dev_signer(2);
    let signer =
        cairn_receipt::ReceiptSigner::new(cairn_core::sig::SigningKey::from_signer(&node), domain);
    let claims = |from: u64, n: u64| -> Vec<Claims> {
        (from..from + n)
            .map(|i| receipt(domain, &node, i).claims)
            .collect()
    };
    // A whole micro-batch of 4, two of another of 4, and one receipt signed alone.
    let mut rs = signer.sign_batch(claims(0, 4)).unwrap();
    rs.extend(
        signer
            .sign_batch(claims(10, 4))
            .unwrap()
            .into_iter()
            .take(2),
    );
    rs.push(receipt(domain, &node, 20));
    let (good, json) = batch_of(node.address(), &rs);
    let from_json = check_all(&v, &good, &serde_json::to_vec(&json).unwrap()).unwrap();
    let from_binary = check_all(&v, &good, &binary_of(&rs)).unwrap();
    let (from_json, digests) = (from_json.sampled, from_json.digests);
    let (from_binary, digests_b, tree) =
        (from_binary.sampled, from_binary.digests, from_binary.tree);
    assert_eq!((&from_binary, &digests_b), (&from_json, &digests));
    assert_eq!(
        from_binary.len(),
        rs.len(),
        "every receipt sampled, kept whole"
    );
    assert_eq!(tree.root(), good.root);

    let mut other = rs.clone();
    other[5] = receipt(domain, &dev_signer(7), 5);
    let (b, _) = batch_of(node.address(), &other);
    assert!(refused_bytes(&v, &b, &binary_of(&other)).contains("not the batch's node"));
    let mut foreign = rs.clone();
    foreign[6] = misaddressed(d.chain_id, &node, 6);
    let (b, _) = batch_of(node.address(), &foreign);
    assert!(
        refused_bytes(&v, &b, &binary_of(&foreign))
            .contains("not addressed to this settlement contract")
    );
    assert!(refused_bytes(&v, &good, &binary_of(&rs[..4])).contains("receipts listed"));
    // The price of receipt 1 (a batch-sealed one) raised by one unit.
    let mut tampered = compact_bytes(&rs[1]);
    tampered[217] ^= 1;
    let mut entries: Vec<Vec<u8>> = rs.iter().map(compact_bytes).collect();
    entries[1] = tampered;
    let listing = cairn_receipt::compact::encode_listing(entries.iter().map(|e| e.as_slice()));
    let why = refused_bytes(&v, &good, &listing);
    assert!(why.contains("rebuild root"), "{why}");
    // A receipt listed twice (in place of its micro-batch sibling): each copy verifies, the
    // settlement tree refuses the pair.
    let mut twice = rs.clone();
    twice[3] = twice[2].clone();
    let why = refused_bytes(&v, &good, &binary_of(&twice));
    assert!(why.contains("appears twice"), "{why}");
    let mut cut = binary_of(&rs);
    cut.pop();
    assert!(refused_bytes(&v, &good, &cut).contains("binary listing is unreadable"));
}

/// A node names its batch's count, and a verifier's check costs it per receipt: a batch over
/// `MAX_BATCH_RECEIPTS` is refused, and recorded so, without its listing being fetched (the
/// node's endpoint here answers nothing: a fetch would have left it "unavailable").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_bound_is_refused_before_its_listing_is_fetched() {
    let (v, _dir) = verifier().await;
    let count = u32::try_from(cairn_node_api::MAX_BATCH_RECEIPTS + 1).unwrap();
    refused_through_handle(
        &v,
        "http://127.0.0.1:1",
        (keccak256("a root"), count, U256::ZERO),
        "at most 65536",
    )
    .await;
}

/// Registers the devnet's node (account 2) at `endpoint`, submits its batch (root, count,
/// fees), and hands it to `v`: refused for `why`, and recorded so. The batch's id.
async fn refused_through_handle(
    v: &Verifier,
    endpoint: &str,
    (root, count, fees): (alloy_primitives::B256, u32, U256),
    why: &str,
) -> u64 {
    let chain = v.chain();
    let (gov, node) = (dev_signer(0), dev_signer(2));
    let stake = U256::from(100 * cairn_ledger::deploy::TOKEN_UNIT);
    // Its stake, and the batch's fees it escrows.
    chain
        .mint(&gov, node.address(), stake + fees)
        .await
        .unwrap();
    chain
        .register(
            &node,
            &RegistrationRequest::dev(node.address(), Role::Inference, endpoint),
            stake,
            vec![],
        )
        .await
        .unwrap();
    let (id, _) = chain.submit_batch(&node, root, count, fees).await.unwrap();
    match v.handle(id).await {
        Err(VerifyError::Refused { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        v.store().outcome(id).unwrap(),
        Some(VerdictOutcome::Refused)
    );
    id
}

/// A batch holding a receipt another key signed goes through `handle` to a refusal: recorded
/// as refused, and no attestation is handed to the node (the check alone refusing it shows
/// nothing of what `handle` does with the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_receipt_another_key_signed_is_refused_and_never_attested() {
    let (v, _dir) = verifier().await;
    let chain = v.chain().clone();
    let d = chain.deployment().clone();
    let domain = ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: d.settlement,
    };
    let node = dev_signer(2);
    let mut rs: Vec<SignedReceipt> = (0..4).map(|i| receipt(domain, &node, i)).collect();
    rs.push(receipt(domain, &dev_signer(7), 4));
    let (info, listing) = batch_of(node.address(), &rs);
    // The node: its listing at GET /v1/batches/{id}; any POST (an attestation) counted.
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = posts.clone();
    let app = axum::Router::new()
        .route(
            "/v1/batches/{id}",
            axum::routing::get(move || {
                let listing = listing.clone();
                async move { axum::Json(listing) }
            }),
        )
        .fallback(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { axum::http::StatusCode::OK }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let id = refused_through_handle(
        &v,
        &url,
        (info.root, info.count, info.fees),
        "not the batch's node",
    )
    .await;
    assert_eq!(
        posts.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an attestation was handed in"
    );
    // Handled again, it stays refused and still hands nothing in.
    let _ = v.handle(id).await;
    assert_eq!(posts.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn sampling_hits_its_rate_and_depends_on_secret_and_root() {
    let a = Sampler::new(B256::repeat_byte(1), 0.05);
    let b = Sampler::new(B256::repeat_byte(2), 0.05);
    let root = keccak256("root");
    let n = 40_000;
    let hits = (0..n)
        .filter(|i| a.sampled(root, keccak256(format!("{i}"))))
        .count();
    let rate = hits as f64 / n as f64;
    assert!((rate - 0.05).abs() < 0.005, "sampled {rate}");
    // Two secrets pick different receipts; the same secret under another root too.
    let picks = |s: &Sampler, root| -> Vec<usize> {
        (0..2_000)
            .filter(|i| s.sampled(root, keccak256(format!("{i}"))))
            .collect()
    };
    assert_ne!(picks(&a, root), picks(&b, root));
    assert_ne!(picks(&a, root), picks(&a, keccak256("other root")));
    assert!(Sampler::new(B256::ZERO, 1.0).sampled(root, root));
    assert!(!Sampler::new(B256::ZERO, 0.0).sampled(root, root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_approved_only_for_sound_bound_approved_evidence() {
    use cairn_attest::{Attester, DevAttester, report_data};
    let (v, _dir) = verifier().await;
    let node = PrivateKeySigner::random();
    let evidence = DevAttester::new(node.clone())
        .evidence(&report_data(node.address(), None))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let req = RegistrationRequest {
        node: node.address(),
        role: Role::Inference,
        endpoint: "http://node".into(),
        measurement: cairn_core::DEV_MEASUREMENT,
        evidence_digest: evidence.digest(),
        deadline: now + 300,
    };
    let (sig, verified) = v.approve_registration(&req, &evidence).await.unwrap();
    assert!(!verified.tee);
    assert_eq!(
        v.chain().registration_signer(&req, &sig).unwrap(),
        v.address()
    );
    let code = |r: Result<(Signature, cairn_attest::Verified), VerifyError>| match r {
        Err(VerifyError::BadRequest { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Evidence bound to another key.
    let other = PrivateKeySigner::random();
    let foreign = DevAttester::new(other.clone())
        .evidence(&report_data(other.address(), None))
        .unwrap();
    let r = RegistrationRequest {
        evidence_digest: foreign.digest(),
        ..req.clone()
    };
    assert_eq!(
        code(v.approve_registration(&r, &foreign).await),
        "evidence_wrongly_bound"
    );
    // Evidence other than the one named.
    assert_eq!(
        code(v.approve_registration(&req, &foreign).await),
        "evidence_digest_mismatch"
    );
    // A measurement the evidence does not report.
    let r = RegistrationRequest {
        measurement: keccak256("other"),
        ..req.clone()
    };
    assert_eq!(
        code(v.approve_registration(&r, &evidence).await),
        "measurement_mismatch"
    );
    // Tampered evidence (a flipped signature byte).
    let mut tampered = evidence.clone();
    let last = tampered.document.len() - 2;
    tampered.document[last] ^= 1;
    let r = RegistrationRequest {
        evidence_digest: tampered.digest(),
        ..req.clone()
    };
    // The flipped byte is in `s`: the signature still recovers, to a key that is not the node's.
    match v.approve_registration(&r, &tampered).await {
        Err(VerifyError::BadRequest { code, reason }) => {
            assert_eq!(code, "evidence_wrongly_bound", "{reason}");
            assert!(reason.contains("signed by"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A far deadline.
    let r = RegistrationRequest {
        deadline: now + 100_000,
        ..req.clone()
    };
    assert_eq!(
        code(v.approve_registration(&r, &evidence).await),
        "bad_deadline"
    );
    // Revoked measurement.
    v.chain()
        .set_measurement(
            &dev_signer(0),
            Role::Inference,
            cairn_core::DEV_MEASUREMENT,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        code(v.approve_registration(&req, &evidence).await),
        "measurement_not_approved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_endpoints_must_be_public_outside_a_local_network() {
    use cairn_attest::{Attester, DevAttester, report_data};
    // A node that registers an internal address would have verifiers fetch from inside their
    // own network (cloud metadata, admin ports): no approval for it.
    let (v, _dir) = verifier_with(false).await;
    let node = PrivateKeySigner::random();
    let evidence = DevAttester::new(node.clone())
        .evidence(&report_data(node.address(), None))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let req = |endpoint: &str| RegistrationRequest {
        node: node.address(),
        role: Role::Inference,
        endpoint: endpoint.into(),
        measurement: cairn_core::DEV_MEASUREMENT,
        evidence_digest: evidence.digest(),
        deadline: now + 300,
    };
    for bad in [
        "http://127.0.0.1:7401",
        "http://169.254.169.254/latest",
        "http://10.0.0.8",
        "file:///etc/passwd",
    ] {
        match v.approve_registration(&req(bad), &evidence).await {
            Err(VerifyError::BadRequest { code, .. }) => {
                assert_eq!(code, "endpoint_not_public", "{bad}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    v.approve_registration(&req("https://node.example.com:8443"), &evidence)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_on_a_profile_governance_did_not_approve_are_refused() {
    let (v, _dir) = verifier().await;
    let d = v.chain().deployment().clone();
    let domain = ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: d.settlement,
    };
    let rs: HashSet<_> = (0..2)
        .map(|i| receipt(domain, &dev_signer(2), i).claims.profile)
        .collect();
    // A node claiming a profile no verifier is known to run gets no attestation.
    match v.profiles_approved(&rs).await {
        Ok(Err(reason)) => assert!(reason.contains("does not approve"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let h = rs.iter().next().unwrap().hash();
    v.chain()
        .set_profile(&dev_signer(0), h, true)
        .await
        .unwrap();
    // Approved, but no quorum of verifiers re-executes it: still no attestation.
    match v.profiles_approved(&rs).await {
        Ok(Err(reason)) => assert!(reason.contains("0 active verifier(s)"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let c = v.chain();
    for i in [3, 4] {
        let k = dev_signer(i);
        c.mint(&dev_signer(0), k.address(), U256::from(10u64.pow(9)))
            .await
            .unwrap();
        c.register(
            &k,
            &RegistrationRequest::dev(k.address(), Role::Verifier, "http://v"),
            U256::from(10u64.pow(8)),
            vec![],
        )
        .await
        .unwrap();
        c.declare_profile(&k, h).await.unwrap();
    }
    assert_eq!(v.profiles_approved(&rs).await, Ok(Ok(())));
}

#[test]
fn every_route_is_in_the_openapi_document() {
    use utoipa::OpenApi;
    cairn_core::api::assert_routes_documented(
        include_str!("server.rs"),
        &crate::server::ApiDoc::openapi(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_its_openapi_document_and_swagger_ui() {
    let (v, _dir) = verifier().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, crate::server::router(v)).await });
    let spec: Value = reqwest::get(format!("{url}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for p in ["/v1/verifier", "/v1/challenges", "/v1/registrations"] {
        assert!(paths.contains_key(p), "{p} undocumented");
    }
    let docs = reqwest::get(format!("{url}/docs/")).await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    // The info route answers its documented type.
    let info: cairn_verifier_api::VerifierInfo = reqwest::get(format!("{url}/v1/verifier"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info.payload_attempts, 3);
}

/// A private call's payload: opened when sealed to this verifier (its data key kept for
/// challenges) or with a peer's data key; not this verifier's to check when sealed to a quorum
/// of other registered verifiers; a failed attempt when sealed to fewer, however often one id
/// is repeated.
#[tokio::test]
async fn sealed_payloads_open_for_recipients_and_bind_the_node_to_a_quorum() {
    use cairn_ohttp::sealed::{Recipient, seal_payload, sealed_recipients};
    let (v, _dir) = verifier().await;
    let chain = v.chain().clone();
    let gov = dev_signer(0);
    let unit = U256::from(cairn_ledger::deploy::TOKEN_UNIT);
    // Two other registered verifiers: the quorum (2) of them.
    let others = [dev_signer(2), dev_signer(4)];
    for key in &others {
        chain
            .mint(&gov, key.address(), U256::from(1000u64) * unit)
            .await
            .unwrap();
        chain
            .register(
                key,
                &RegistrationRequest::dev(key.address(), Role::Verifier, "http://127.0.0.1:1"),
                U256::from(100u64) * unit,
                vec![],
            )
            .await
            .unwrap();
    }
    let node = dev_signer(5);
    let domain = ReceiptDomain {
        chain_id: 31337,
        verifying_contract: chain.deployment().settlement,
    };
    let r = receipt(domain, &node, 1);
    let context = cairn_node::sealing::context(&r.id().to_string(), false);
    let payload = b"the private input".to_vec();
    let me = v.address().0.0;
    let my_key = v.0.payload_key.config().clone();
    let other_keys: Vec<_> = others.iter().map(cairn_node::payload_key).collect();
    let to = |ids: &[([u8; 20], &cairn_ohttp::KeyConfig)]| {
        let rs: Vec<Recipient> = ids
            .iter()
            .map(|(id, key)| Recipient { id: *id, key })
            .collect();
        seal_payload(&rs, &context, &payload).unwrap()
    };
    let open = |sealed: Vec<u8>, shared: Vec<(bool, cairn_ohttp::sealed::DataKey)>| {
        let v = v.clone();
        let r = r.clone();
        async move { v.open_sealed(&r, Payload::Input, &sealed, &shared).await }
    };

    // Sealed to this verifier (and another): opened, and its data key kept for a challenge.
    let mine = to(&[
        (me, &my_key),
        (others[0].address().0.0, other_keys[0].config()),
    ]);
    assert_eq!(open(mine.clone(), vec![]).await.ok().unwrap(), payload);
    let shared = v.shared_keys(r.signing_hash());
    assert_eq!(shared.len(), 1);

    // Sealed to the two others only: not this verifier's to check...
    let theirs = to(&[
        (others[0].address().0.0, other_keys[0].config()),
        (others[1].address().0.0, other_keys[1].config()),
    ]);
    assert!(matches!(
        open(theirs.clone(), vec![]).await,
        Err(FetchFailure::NotForMe(_))
    ));
    // ...unless a recipient hands over the data key in a challenge.
    let dek =
        cairn_ohttp::sealed::unwrap_key(&other_keys[0], others[0].address().0.0, &context, &theirs)
            .unwrap();
    assert_eq!(
        open(theirs, vec![(false, dek)]).await.ok().unwrap(),
        payload
    );

    // Sealed to one other verifier named three times: fewer than the quorum, a failed attempt.
    let once = to(&[(others[0].address().0.0, other_keys[0].config())]);
    let entry = once[6..6 + 85].to_vec();
    let mut thrice = once[..5].to_vec();
    thrice.push(3);
    for _ in 0..3 {
        thrice.extend_from_slice(&entry);
    }
    thrice.extend_from_slice(&once[6 + 85..]);
    assert_eq!(sealed_recipients(&thrice).unwrap().len(), 3);
    assert!(matches!(
        open(thrice, vec![]).await,
        Err(FetchFailure::Failed(_))
    ));
    // Sealed to strangers: a failed attempt too; a peer's wrong key changes nothing.
    let stranger = cairn_ohttp::GatewayKey::derive(1, &[1; 32]);
    let strangers = to(&[([9; 20], stranger.config()), ([8; 20], stranger.config())]);
    assert!(matches!(
        open(strangers, vec![(false, [0; 16])]).await,
        Err(FetchFailure::Failed(_))
    ));
}
