use std::sync::Arc;

use alloy_primitives::{Address, U256, keccak256};
use cairn_core::{BlobId, ExecutionProfile};
use cairn_ledger::deploy::deploy;
use cairn_ledger::{BatchInfo, BatchStatus, DeployParams, EmbeddedLedger, dev_signer};
use cairn_receipt::{Claims, ReceiptDomain, SignedReceipt};
use serde_json::{Value, json};

use super::*;

async fn verifier() -> (BatchVerifier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gov = dev_signer(0);
    let ledger = EmbeddedLedger::open(
        &dir.path().join("chain.sqlite"),
        31337,
        &[(gov.address(), U256::from(10u128.pow(22)))],
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
    (BatchVerifier::new(chain, dev_signer(3)), dir)
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

fn refused(v: &BatchVerifier, b: &BatchInfo, l: &Value) -> String {
    match v.check(b, l) {
        Err(VerifyError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_signs_only_batches_whose_receipts_hold_up() {
    let (v, _dir) = verifier().await;
    let d = v.chain.deployment().clone();
    let domain = ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: d.settlement,
    };
    let node = dev_signer(2);
    let rs: Vec<SignedReceipt> = (0..5).map(|i| receipt(domain, &node, i)).collect();
    let (good, listing) = batch_of(node.address(), &rs);
    v.check(&good, &listing).unwrap();

    // A receipt signed by another key.
    let mut other = rs.clone();
    other[2] = receipt(domain, &dev_signer(7), 2);
    let (b, l) = batch_of(node.address(), &other);
    assert!(refused(&v, &b, &l).contains("not the batch's node"));
    // A receipt addressed to another contract.
    let mut foreign = rs.clone();
    foreign[0] = receipt(
        ReceiptDomain {
            chain_id: d.chain_id,
            verifying_contract: Address::ZERO,
        },
        &node,
        0,
    );
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
    // A tampered receipt no longer verifies.
    let mut tampered = listing.clone();
    tampered["receipts"][1]["typedData"]["message"]["price"] = json!("11");
    assert!(refused(&v, &good, &tampered).contains("does not verify"));
    assert!(refused(&v, &good, &json!({})).contains("no `receipts`"));
}
