//! The settler on the embedded chain: the real contracts, a real receipt log.

use std::sync::Arc;

use alloy_primitives::{U256, keccak256};
use cairn_core::{BlobId, ExecutionProfile};
use cairn_ledger::deploy::TOKEN_UNIT;
use cairn_ledger::{EmbeddedLedger, Ledger, RegistrationRequest, Role, dev_signer};
use cairn_receipt::merkle::ReceiptTree;
use cairn_receipt::{Claims, ReceiptDomain, SignedReceipt};
use cairn_sqlite::Durability;

use super::*;
use crate::log::{Entry, ReceiptLog, ToLog};

/// A chain with the contracts and one registered inference node (its key).
struct Net {
    dir: tempfile::TempDir,
    ledger: Arc<dyn Ledger>,
    chain: Chain,
    node: PrivateKeySigner,
}

async fn net() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<dyn Ledger> =
        Arc::new(EmbeddedLedger::open(&dir.path().join("chain.sqlite"), 31337, &[]).unwrap());
    let chain = cairn_ledger::devnet::deployed(ledger.clone())
        .await
        .unwrap();
    let gov = dev_signer(0);
    let node = dev_signer(2);
    chain
        .mint(&gov, node.address(), U256::from(10_000 * TOKEN_UNIT))
        .await
        .unwrap();
    chain
        .register(
            &node,
            &RegistrationRequest::dev(node.address(), Role::Inference, "http://node"),
            U256::from(1_000 * TOKEN_UNIT),
            vec![],
        )
        .await
        .unwrap();
    Net {
        dir,
        ledger,
        chain,
        node,
    }
}

impl Net {
    /// `n` receipts signed by the node, priced 1,000 each (the same ones on every call).
    fn receipts(&self, n: u64) -> Vec<SignedReceipt> {
        let domain = ReceiptDomain {
            chain_id: self.chain.deployment().chain_id,
            verifying_contract: self.chain.deployment().settlement,
        };
        (0..n)
            .map(|i| {
                Claims {
                    request_id: keccak256(format!("request {i}")),
                    model: BlobId::of(b"model"),
                    input_hash: keccak256(format!("in {i}")),
                    output_hash: keccak256(format!("out {i}")),
                    profile: ExecutionProfile {
                        engine: "tract".into(),
                        engine_version: "0.23.9".into(),
                        isa: "generic".into(),
                        threads: 1,
                    },
                    timestamp: 1_700_000_000 + i,
                    price: U256::from(1_000u64),
                    payment_ref: B256::ZERO,
                    llm: None,
                }
                .sign(domain, &self.node)
                .unwrap()
            })
            .collect()
    }

    /// A receipt log named `name` holding `receipts` (billable), and a settler over it that
    /// seals whatever waits.
    async fn settler(&self, name: &str, receipts: &[SignedReceipt]) -> (ReceiptLog, Settler) {
        let log = ReceiptLog::open(
            &self.dir.path().join(name),
            Duration::from_secs(3600),
            Durability::Full,
            true,
            None,
        )
        .await
        .unwrap();
        for r in receipts {
            let entry = Entry::new(
                ToLog::Signed(r.clone()),
                r.signing_hash(),
                vec![1],
                vec![2],
                Billing::Final,
                None,
            );
            log.append(entry).await.unwrap();
        }
        let policy = BatchPolicy {
            max_receipts: 1_000,
            max_age: Duration::ZERO,
            tick: Duration::from_millis(10),
        };
        let cfg = SettlementConfig {
            chain: self.chain.clone(),
            policy,
        };
        let settler = Settler::open(cfg, self.node.clone(), log.clone(), None);
        (log, settler)
    }

    /// Lets batch 1 go unattested past the attestation timeout; `settler` expires it (fees
    /// back to the vault) and frees its receipts.
    async fn expire_first(&self, settler: &Settler) {
        self.later(self.chain.attestation_timeout().await.unwrap() + 1)
            .await;
        settler.step().await.unwrap();
        assert_eq!(
            self.chain.batch(1).await.unwrap().status,
            BatchStatus::Expired
        );
    }

    /// Moves the chain's clock `secs` on and mines a block at the new time.
    async fn later(&self, secs: u64) {
        self.ledger.advance_time(secs).await.unwrap();
        self.chain
            .mint(&dev_signer(0), dev_signer(7).address(), U256::from(1u64))
            .await
            .unwrap();
    }
}

/// A batch no quorum attested expires and its receipts are sealed again, as the same set:
/// the same root. The log takes the second batch beside the first, and the contract takes the
/// root again since the first expired; the receipts are on chain once more, to be paid.
#[tokio::test]
async fn an_expired_batch_is_sealed_and_submitted_again_under_the_same_root() {
    let net = net().await;
    let (log, settler) = net.settler("r.sqlite", &net.receipts(2)).await;
    settler.step().await.unwrap();
    let first = net.chain.batch(1).await.unwrap();
    assert_eq!(first.status, BatchStatus::Submitted);
    // Expired, then sealed again and submitted.
    net.expire_first(&settler).await;
    settler.step().await.unwrap();
    let second = net.chain.batch(2).await.unwrap();
    assert_eq!(
        (second.status, second.root, second.count),
        (BatchStatus::Submitted, first.root, 2)
    );
    let listed = log.batch_receipts(2).await.unwrap().unwrap();
    assert_eq!(
        (listed.status.as_str(), listed.receipts.len()),
        ("submitted", 2)
    );
}

/// A batch expires; its receipts are sealed again (the same root); before that batch goes
/// out, a fraud is proven on the expired one. The contract refuses the root, and the settler
/// records the new batch as voided (its receipts are the ones the fraud was proven on) instead
/// of sending it again on every pass, with every later batch stuck behind it.
#[tokio::test]
async fn a_root_voided_meanwhile_is_taken_as_voided_not_retried_forever() {
    let net = net().await;
    let gov = dev_signer(0);
    let verifiers: Vec<PrivateKeySigner> = (3..5).map(dev_signer).collect();
    for v in &verifiers {
        net.chain
            .mint(&gov, v.address(), U256::from(1_000 * TOKEN_UNIT))
            .await
            .unwrap();
        net.chain
            .register(
                v,
                &RegistrationRequest::dev(v.address(), Role::Verifier, "http://verifier"),
                U256::from(100 * TOKEN_UNIT),
                vec![],
            )
            .await
            .unwrap();
    }
    let receipts = net.receipts(2);
    let (log, settler) = net.settler("r.sqlite", &receipts).await;
    settler.step().await.unwrap();
    net.expire_first(&settler).await;
    // The fraud proof on the expired batch lands first.
    let bad = &receipts[0];
    let digests: Vec<B256> = receipts.iter().map(|r| r.signing_hash()).collect();
    let tree = ReceiptTree::new(&digests).unwrap();
    let evidence = keccak256("fraud");
    let verdicts = verifiers
        .iter()
        .map(|v| {
            let sig = net
                .chain
                .sign_verdict(v, 1, bad.signing_hash(), evidence)
                .unwrap();
            (v.address(), sig)
        })
        .collect();
    net.chain
        .challenge(
            &gov,
            1,
            bad,
            tree.proof(bad.signing_hash()).unwrap(),
            evidence,
            verdicts,
        )
        .await
        .unwrap();
    assert_eq!(
        net.chain.batch(1).await.unwrap().status,
        BatchStatus::Voided
    );
    settler.step().await.unwrap();
    settler.step().await.unwrap();
    assert_eq!(
        net.chain.batch_count().await.unwrap(),
        1,
        "never paid again"
    );
    // Both local batches (the expired one and its receipts sealed again) are voided: nothing
    // left to send or to follow.
    assert!(log.sealed_batches().await.unwrap().is_empty());
    assert!(log.open_batches().await.unwrap().is_empty());
    // Its listing (what verifiers and the explorer read) shows the receipts the fraud was
    // proven on.
    let listed = log.batch_receipts(1).await.unwrap().unwrap();
    assert_eq!(
        (listed.status.as_str(), listed.receipts.len()),
        ("voided", 2)
    );
}

/// A node whose log lost its record of a submitted batch (restored from a backup taken before
/// the batch was sealed) seals the same receipts again under the same root. The contract
/// refuses the root (`RootSubmitted`); the settler takes the batch on chain as this one
/// instead of failing each pass, and no second batch is paid for.
#[tokio::test]
async fn a_batch_the_contract_holds_already_is_taken_as_submitted_not_retried_forever() {
    let net = net().await;
    let receipts = net.receipts(3);
    let (_, first) = net.settler("first.sqlite", &receipts).await;
    first.step().await.unwrap();
    assert_eq!(
        net.chain.batch(1).await.unwrap().status,
        BatchStatus::Submitted
    );
    // Blocks later (the search for its submission starts at the block it is sealed at).
    net.later(0).await;
    let (restored, settler) = net.settler("restored.sqlite", &receipts).await;
    settler.step().await.unwrap();
    settler.step().await.unwrap();
    let listed = restored.batch_receipts(1).await.unwrap().unwrap();
    assert_eq!(
        (listed.status.as_str(), listed.receipts.len()),
        ("submitted", 3)
    );
    assert_eq!(net.chain.batch_count().await.unwrap(), 1, "no second batch");
}
