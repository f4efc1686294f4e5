//! Verifier: watches the settlement contract for submitted batches, fetches each batch's receipts
//! from the node that submitted it, checks them, and hands its EIP-712 attestation to the node
//! (which puts a quorum of them on chain).
//!
//! What a batch must satisfy to be co-signed: every receipt is a valid EIP-712 receipt signed by
//! the batch's node under the settlement contract's domain, the receipts rebuild the submitted
//! Merkle root, and their count and summed prices equal the batch's count and fees. Re-executing
//! a sample on the pinned profile and attestation checks come on top of this.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use alloy_primitives::{B256, U256};
use alloy_signer_local::PrivateKeySigner;
use cairn_ledger::{BatchInfo, BatchStatus, Chain};
use cairn_receipt::SignedReceipt;
use cairn_receipt::merkle::ReceiptTree;

/// Why a batch was not co-signed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The batch's receipts do not hold up; the verifier refuses to sign.
    #[error("batch {batch} refused: {reason}")]
    Refused {
        /// On-chain batch id.
        batch: u64,
        /// What was wrong.
        reason: String,
    },
    /// The node or the chain could not be reached; try again later.
    #[error("batch {batch}: {reason}")]
    Unavailable {
        /// On-chain batch id.
        batch: u64,
        /// What failed.
        reason: String,
    },
}

/// One verifier identity watching one deployment.
pub struct BatchVerifier {
    chain: Chain,
    key: PrivateKeySigner,
    http: reqwest::Client,
    /// Batches handled (co-signed, refused, or past needing a signature).
    done: HashSet<u64>,
    /// Where the next event scan starts; batches that could not be handled yet are retried
    /// from `retry`, so each scan only reads new blocks.
    next_block: u64,
    retry: BTreeSet<u64>,
}

impl BatchVerifier {
    /// A verifier signing with `key` (which must be registered as a verifier to count).
    pub fn new(chain: Chain, key: PrivateKeySigner) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        Self {
            chain,
            key,
            http,
            done: HashSet::new(),
            next_block: 0,
            retry: BTreeSet::new(),
        }
    }

    /// Watches forever, one pass every `tick`.
    pub async fn run(mut self, tick: Duration) {
        loop {
            if let Err(e) = self.step().await {
                tracing::warn!(verifier = %self.key.address(), error = %e, "verifier pass failed");
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// One pass over submitted batches not yet handled. Returns the batches co-signed.
    pub async fn step(&mut self) -> Result<Vec<u64>, cairn_ledger::LedgerError> {
        // Head first: every event up to it is in the scan below, so the next scan starts after it.
        let head = self.chain.ledger().head().await?.number;
        // Nodes refuse a log range that starts past their head: scan only when there is news.
        let submitted = if head >= self.next_block {
            let found = self.chain.submitted_batches(self.next_block).await?;
            self.next_block = head + 1;
            found
        } else {
            Vec::new()
        };
        let mut ids: BTreeSet<u64> = std::mem::take(&mut self.retry);
        ids.extend(submitted.into_iter().map(|(id, _, _, _)| id));
        let mut signed = Vec::new();
        for id in ids {
            if self.done.contains(&id) {
                continue;
            }
            match self.co_sign(id).await {
                Ok(true) => {
                    signed.push(id);
                    self.done.insert(id);
                }
                Ok(false) => {
                    self.done.insert(id);
                }
                Err(e @ VerifyError::Refused { .. }) => {
                    tracing::error!(verifier = %self.key.address(), error = %e, "refusing to attest");
                    self.done.insert(id);
                }
                Err(e @ VerifyError::Unavailable { .. }) => {
                    tracing::warn!(verifier = %self.key.address(), error = %e, "will retry");
                    self.retry.insert(id);
                }
            }
        }
        Ok(signed)
    }

    /// Checks batch `id` and hands in the signature; `false` when it no longer needs one.
    pub async fn co_sign(&self, id: u64) -> Result<bool, VerifyError> {
        let unavailable = |reason: String| VerifyError::Unavailable { batch: id, reason };
        let batch = self
            .chain
            .batch(id)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if batch.status != BatchStatus::Submitted {
            return Ok(false);
        }
        let node = self
            .chain
            .node(batch.node)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let base = node.endpoint.trim_end_matches('/');
        let listing: serde_json::Value = self
            .http
            .get(format!("{base}/v1/batches/{id}"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable(format!("fetching the batch from {base}: {e}")))?
            .json()
            .await
            .map_err(|e| unavailable(format!("reading the batch from {base}: {e}")))?;
        self.check(&batch, &listing)?;
        let signature = self
            .chain
            .sign_attestation(&self.key, &batch)
            .map_err(|e| unavailable(e.to_string()))?;
        self.http
            .post(format!("{base}/v1/batches/{id}/attestations"))
            .json(&serde_json::json!({"signature": signature.to_string()}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable(format!("handing the attestation to {base}: {e}")))?;
        tracing::info!(verifier = %self.key.address(), batch = id, "attested");
        Ok(true)
    }

    /// The checks a batch must pass (see the crate docs).
    pub fn check(&self, batch: &BatchInfo, listing: &serde_json::Value) -> Result<(), VerifyError> {
        let refuse = |reason: String| VerifyError::Refused {
            batch: batch.id,
            reason,
        };
        let receipts = listing["receipts"]
            .as_array()
            .ok_or_else(|| refuse("the node's listing has no `receipts` array".into()))?;
        let d = self.chain.deployment();
        let mut digests: Vec<B256> = Vec::with_capacity(receipts.len());
        let mut fees = U256::ZERO;
        for (i, r) in receipts.iter().enumerate() {
            let r = SignedReceipt::verify_json(r)
                .map_err(|e| refuse(format!("receipt {i} does not verify: {e}")))?;
            if r.signer != batch.node {
                return Err(refuse(format!(
                    "receipt {} is signed by {}, not the batch's node",
                    r.id(),
                    r.signer
                )));
            }
            if r.domain.chain_id != d.chain_id || r.domain.verifying_contract != d.settlement {
                return Err(refuse(format!(
                    "receipt {} is not addressed to this settlement contract",
                    r.id()
                )));
            }
            fees += r.claims.price;
            digests.push(r.signing_hash());
        }
        if digests.len() != batch.count as usize {
            return Err(refuse(format!(
                "{} receipts listed, the batch claims {}",
                digests.len(),
                batch.count
            )));
        }
        let tree = ReceiptTree::new(&digests).map_err(|e| refuse(e.to_string()))?;
        if tree.root() != batch.root {
            return Err(refuse(format!(
                "the receipts rebuild root {}, the batch committed {}",
                tree.root(),
                batch.root
            )));
        }
        if fees != batch.fees {
            return Err(refuse(format!(
                "the receipts' prices sum to {fees}, the batch escrowed {}",
                batch.fees
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
