//! Settles the node's receipts: seals them into Merkle batches (by size or age), submits each
//! root with its fees to the settlement contract, and finalizes its batches once attested and
//! past the challenge window, which pays the node, the verifiers and the treasury.
//!
//! Sealing is local and durable first (the batch row and every receipt's proof commit in one
//! SQLite transaction), submission second. A batch whose submission may have gone out (an RPC
//! timeout) is looked up by its root in the contract's `BatchSubmitted` events (from the block
//! it was sealed at) before anything is sent again, so a root is never submitted (and its fees
//! escrowed) twice; the contract refuses it anyway (`RootSubmitted`), and a batch it refuses
//! so is taken as the batch the contract names (a log restored from before the submission).
//!
//! Only receipts that count are sealed: a paid receipt waits until its payment settled (looked
//! up in the payment store each pass) and is voided, payloads dropped, when it failed. A batch
//! no verifier quorum attests in time is expired (its fees return to the node's vault) and its
//! receipts are sealed again. Each step runs on its own: one that fails (a batch whose fees the
//! node cannot cover, say) never stops the others.

use std::sync::Mutex;
use std::time::Duration;

use alloy_primitives::B256;
use alloy_signer_local::PrivateKeySigner;
use cairn_ledger::{BatchStatus, Chain, LedgerError};

use crate::log::{BatchState, Billing, LogError};

/// When a batch is sealed.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Seal as soon as this many receipts wait.
    pub max_receipts: usize,
    /// Seal whatever waits once the oldest is this old.
    pub max_age: Duration,
    /// How often the settler looks.
    pub tick: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_receipts: 1_000,
            max_age: Duration::from_secs(60),
            tick: Duration::from_secs(1),
        }
    }
}

/// The chain the node settles on and how it batches.
#[derive(Clone)]
pub struct SettlementConfig {
    /// The deployed contracts.
    pub chain: Chain,
    /// Batching policy.
    pub policy: BatchPolicy,
}

/// The settler task's state.
pub(crate) struct Settler {
    chain: Chain,
    key: PrivateKeySigner,
    policy: BatchPolicy,
    liveness_checked: Mutex<Option<std::time::Instant>>,
    log: crate::log::ReceiptLog,
    payments: Option<cairn_x402::PaymentStore>,
}

/// Why a settlement step failed; the settler logs it and tries again on the next tick.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The receipt log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A chain read or transaction.
    #[error("chain: {0}")]
    Chain(#[from] LedgerError),
    /// The payment store.
    #[error("payments: {0}")]
    Payments(#[from] cairn_x402::X402Error),
    /// A batch the chain would not take.
    #[error("submitting batch {local}: {source}")]
    Submit {
        /// The batch's local id.
        local: i64,
        /// What the chain said.
        source: LedgerError,
    },
    /// A blocking task could not run.
    #[error("settler task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Receipts whose billing one read resolves.
const BILLING_CHUNK: usize = 1_000;
/// Reads one pass makes at most: a pass resolves up to this many chunks, then lets the other
/// steps run (the rest waits for the next tick).
const BILLING_CHUNKS: usize = 256;

/// Resolves the billing of every receipt awaiting payment whose payment has an outcome,
/// `chunk` at a time, oldest first, each read going on past the last (receipts whose payments
/// are still open are passed, not read again), until a read finds fewer than `chunk`; at most
/// [`BILLING_CHUNKS`] reads. Returns how many resolved. One chunk a pass would bill at most
/// `chunk` receipts a tick: under a steady paid load above that, the backlog (and the batches
/// that wait for it) would grow without end.
pub(crate) async fn resolve_all_billing(
    log: &crate::log::ReceiptLog,
    store: &cairn_x402::PaymentStore,
    chunk: usize,
) -> Result<usize, SettleError> {
    let mut resolved = 0;
    let mut after = None;
    for _ in 0..BILLING_CHUNKS {
        let waiting = log.awaiting_payment_after(chunk, after).await?;
        let full = waiting.len() >= chunk;
        let Some(last) = waiting.last() else {
            break;
        };
        after = Some(last.0);
        let store = store.clone();
        let outcomes = tokio::task::spawn_blocking(move || {
            let outcomes = waiting
                .into_iter()
                .filter_map(|(_, id, payment)| match store.outcome(payment) {
                    Ok(cairn_x402::store::Outcome::Paid) => Some(Ok((id, Billing::Final))),
                    Ok(cairn_x402::store::Outcome::Failed) => Some(Ok((id, Billing::Void))),
                    Ok(cairn_x402::store::Outcome::Open) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            // Every count just read as paid survives power loss before its receipt is billed.
            if outcomes.iter().any(|(_, b)| *b == Billing::Final) {
                store.sync()?;
            }
            Ok::<_, cairn_x402::X402Error>(outcomes)
        })
        .await??;
        let n = outcomes.len();
        log.resolve_billing(outcomes).await?;
        resolved += n;
        if !full {
            break;
        }
    }
    Ok(resolved)
}

impl Settler {
    pub(crate) fn open(
        cfg: SettlementConfig,
        key: PrivateKeySigner,
        log: crate::log::ReceiptLog,
        payments: Option<cairn_x402::PaymentStore>,
    ) -> Self {
        Self {
            chain: cfg.chain,
            key,
            policy: cfg.policy,
            liveness_checked: Mutex::new(None),
            log,
            payments,
        }
    }

    /// Runs until the process ends; errors are logged and retried on the next tick.
    pub(crate) async fn run(self) {
        loop {
            // A batch, attestation or redemption stuck under a risen base fee moves on even
            // when this pass has nothing new to send.
            if let Err(e) = self.chain.ledger().tend(&self.key).await {
                tracing::warn!(error = %e, "looking after a transaction still out");
            }
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "settlement step failed; retrying");
            }
            tokio::time::sleep(self.policy.tick).await;
        }
    }

    /// One pass: settle the billing of paid receipts, seal what is due, submit sealed
    /// batches, put collected attestations on chain, finalize (or expire) what is ripe. Each
    /// step runs whatever the others did; the first error is reported.
    pub(crate) async fn step(&self) -> Result<(), SettleError> {
        let results = [
            self.resolve_billing().await,
            async {
                while self.seal().await? {}
                Ok(())
            }
            .await,
            self.submit_sealed().await,
            self.attest_collected().await,
            self.finalize_ripe().await,
            self.keep_alive().await,
        ];
        results.into_iter().collect()
    }

    /// Receipts whose payment settled become batchable; those whose payment failed are voided
    /// (payloads dropped: no output without payment, no fee for the node to escrow).
    async fn resolve_billing(&self) -> Result<(), SettleError> {
        let Some(store) = &self.payments else {
            return Ok(());
        };
        resolve_all_billing(&self.log, store, BILLING_CHUNK)
            .await
            .map(drop)
    }

    /// Sends a registry heartbeat once half the heartbeat timeout has passed (checked at most
    /// once a minute), so a governance-set timeout never makes a working node inactive.
    async fn keep_alive(&self) -> Result<(), SettleError> {
        {
            let mut last = self
                .liveness_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        let timeout = self.chain.heartbeat_timeout().await?;
        if timeout == 0 {
            return Ok(());
        }
        let me = self.chain.node(self.key.address()).await?;
        if me.role.is_none() {
            return Ok(());
        }
        let now = crate::now_secs();
        if now.saturating_sub(me.last_heartbeat) >= timeout / 2 {
            let out = self.chain.heartbeat(&self.key).await?;
            tracing::info!(tx = %out.hash, "sent a registry heartbeat");
        }
        Ok(())
    }

    /// Submits `attestBatch` for every submitted batch that holds a quorum of signatures.
    async fn attest_collected(&self) -> Result<(), SettleError> {
        let collected = self.log.submitted_with_attestations().await?;
        if collected.iter().all(|(_, _, s)| s.is_empty()) {
            return Ok(());
        }
        let quorum = self.chain.quorum().await? as usize;
        for (local, id, sigs) in collected {
            if sigs.len() < quorum {
                continue;
            }
            let batch = self.chain.batch(id).await?;
            let mut signed = Vec::new();
            for (signer, sig) in &sigs {
                let (Ok(sig), signer) = (
                    alloy_primitives::Signature::try_from(sig.as_slice()),
                    alloy_primitives::Address::from_slice(signer),
                ) else {
                    continue;
                };
                // Only a canonical signature over this very batch by its stored signer goes on
                // chain: one bad entry would make the whole attestBatch revert.
                if self.chain.attestation_signer(&batch, &sig).ok() != Some(signer) {
                    tracing::warn!(batch = id, %signer, "dropping an attestation that does not verify");
                    continue;
                }
                // Still active? A verifier may have left since it signed.
                if self
                    .chain
                    .is_active(signer, cairn_ledger::Role::Verifier)
                    .await?
                {
                    signed.push((signer, sig));
                }
            }
            if signed.len() < quorum {
                continue;
            }
            match self.chain.attest_batch(&self.key, id, signed).await {
                Ok(out) => {
                    tracing::info!(batch = id, tx = %out.hash, "batch attested on chain");
                    self.log
                        .mark_batch(local, BatchState::Attested, None)
                        .await?;
                }
                Err(e) => tracing::warn!(batch = id, error = %e, "attestBatch failed; will retry"),
            }
        }
        Ok(())
    }

    /// Seals one batch if one is due; returns whether it did.
    async fn seal(&self) -> Result<bool, SettleError> {
        let head = self.chain.ledger().head().await?.number;
        let p = self.policy;
        let sealed = self
            .log
            .seal_due(p.max_receipts, p.max_age.as_secs(), head)
            .await?;
        if let Some((local, receipts, root)) = sealed {
            tracing::info!(batch = local, receipts, %root, "sealed a receipt batch");
        }
        Ok(sealed.is_some())
    }

    /// The on-chain batch this node already submitted under `root` since block `from`, if any.
    async fn find_submitted(
        &self,
        root: B256,
        from: u64,
    ) -> Result<Option<(u64, B256)>, SettleError> {
        let me = self.key.address();
        Ok(self
            .chain
            .submitted_batches(from)
            .await?
            .into_iter()
            .find(|(_, node, r, _)| *node == me && *r == root)
            .map(|(id, _, _, tx)| (id, tx)))
    }

    async fn submit_sealed(&self) -> Result<(), SettleError> {
        for b in self.log.sealed_batches().await? {
            if let Some(found) = self.find_submitted(b.root, b.sealed_block).await? {
                self.log
                    .mark_batch(b.local, BatchState::Submitted, Some(found))
                    .await?;
                continue;
            }
            match self
                .chain
                .submit_batch(&self.key, b.root, b.count, b.fees)
                .await
            {
                Ok((id, out)) => {
                    tracing::info!(batch = id, receipts = b.count, fees = %b.fees, tx = %out.hash, "submitted a receipt batch");
                    self.log
                        .mark_batch(b.local, BatchState::Submitted, Some((id, out.hash)))
                        .await?;
                }
                Err(LedgerError::Pending { hash, .. } | LedgerError::Busy { hash, .. }) => {
                    tracing::warn!(tx = %hash, "batch submission not mined yet; will reconcile");
                    return Ok(());
                }
                Err(LedgerError::Reverted { ref data, .. })
                    if let Some(id) = root_submitted(data) =>
                {
                    self.adopt(b.local, id).await?;
                }
                Err(source) => {
                    return Err(SettleError::Submit {
                        local: b.local,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Takes on-chain batch `id`, which the contract says holds sealed batch `local`'s root
    /// already, as that batch (sending it again would fail on every pass, every later batch
    /// behind it): a submission the log lost (restored from before it), whose receipts are in
    /// `id` and paid through it; or, when `id` was voided, the very receipts a fraud was
    /// proven on, never to be paid. [`Self::finalize_ripe`] follows it from there as any
    /// submitted batch (voided, attested, final).
    async fn adopt(&self, local: i64, id: u64) -> Result<(), SettleError> {
        tracing::warn!(
            batch = id,
            local,
            "the contract holds this batch's root already; taking its batch as this one"
        );
        self.log.adopt_batch(local, id).await?;
        Ok(())
    }

    async fn finalize_ripe(&self) -> Result<(), SettleError> {
        let open = self.log.open_batches().await?;
        if open.is_empty() {
            return Ok(());
        }
        let window = self.chain.challenge_window().await?;
        let attestation_timeout = self.chain.attestation_timeout().await?;
        // The next block's time: the head's, or the wall clock when no block was mined lately.
        let now = self
            .chain
            .ledger()
            .head()
            .await?
            .timestamp
            .max(crate::now_secs());
        for (local, id) in open {
            let b = self.chain.batch(id).await?;
            match b.status {
                BatchStatus::Attested if now >= b.attested_at + window => {
                    match self.chain.finalize(&self.key, id).await {
                        Ok(out) => {
                            tracing::info!(batch = id, tx = %out.hash, "finalized a receipt batch");
                            self.log
                                .mark_batch(local, BatchState::Finalized, None)
                                .await?;
                        }
                        Err(e) => {
                            tracing::warn!(batch = id, error = %e, "finalize failed; will retry")
                        }
                    }
                }
                BatchStatus::Attested => {
                    self.log
                        .mark_batch(local, BatchState::Attested, None)
                        .await?
                }
                BatchStatus::Submitted if now >= b.submitted_at + attestation_timeout => {
                    // No quorum attested it in time: take the fees back to the vault and seal
                    // its receipts again.
                    match self.chain.expire(&self.key, id).await {
                        Ok(out) => {
                            tracing::warn!(batch = id, tx = %out.hash, "expired an unattested batch; its receipts are sealed again");
                            self.log.reopen_batch(local).await?;
                        }
                        Err(e) => {
                            tracing::warn!(batch = id, error = %e, "expire failed; will retry")
                        }
                    }
                }
                BatchStatus::Expired => {
                    // Its receipts go into a new batch at once; the old one lapses (unlocking
                    // the stake) once nobody can challenge it any more.
                    self.log.reopen_batch(local).await?;
                    if now >= b.attested_at + window {
                        match self.chain.lapse(&self.key, id).await {
                            Ok(_) => self.log.mark_batch(local, BatchState::Lapsed, None).await?,
                            Err(e) => {
                                tracing::warn!(batch = id, error = %e, "lapse failed; will retry")
                            }
                        }
                    }
                }
                BatchStatus::Lapsed => self.log.mark_batch(local, BatchState::Lapsed, None).await?,
                BatchStatus::Finalized => {
                    self.log
                        .mark_batch(local, BatchState::Finalized, None)
                        .await?
                }
                BatchStatus::Voided => self.log.mark_batch(local, BatchState::Voided, None).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// The batch a `RootSubmitted` revert names: the contract holds this node's root already.
fn root_submitted(revert: &[u8]) -> Option<u64> {
    use alloy_sol_types::SolError;
    cairn_ledger::contracts::Settlement::RootSubmitted::abi_decode(revert)
        .ok()
        .map(|e| e.id.saturating_to())
}

#[cfg(test)]
mod tests;
