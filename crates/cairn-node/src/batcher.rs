//! Settles the node's receipts: seals them into Merkle batches (by size or age), submits each
//! root with its fees to the settlement contract, and finalizes its batches once attested and
//! past the challenge window, which pays the node, the verifiers and the treasury.
//!
//! Sealing is local and durable first (the batch row and every receipt's proof commit in one
//! SQLite transaction), submission second. A batch whose submission may have gone out (an RPC
//! timeout) is looked up by its root in the contract's `BatchSubmitted` events (from the block
//! it was sealed at) before anything is sent again, so a root is never submitted (and its fees
//! escrowed) twice.
//!
//! Only receipts that count are sealed: a paid receipt waits until its payment settled (looked
//! up in the payment store each pass) and is voided, payloads dropped, when it failed. A batch
//! no verifier quorum attests in time is expired (its fees return to the node's vault) and its
//! receipts are sealed again. Each step runs on its own: one that fails (a batch whose fees the
//! node cannot cover, say) never stops the others.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{B256, U256};
use alloy_signer_local::PrivateKeySigner;
use cairn_ledger::{BatchStatus, Chain, LedgerError};
use cairn_receipt::merkle::ReceiptTree;
use rusqlite::{Connection, params};

use crate::error::NodeError;
use crate::log::Billing;

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

/// (signer address bytes, 65-byte signature) as stored.
type SignerSig = (Vec<u8>, Vec<u8>);

struct Sealed {
    local: i64,
    root: B256,
    count: u32,
    fees: U256,
    /// The chain head when it was sealed: its submission cannot be older.
    sealed_block: u64,
}

/// The settler task's state.
pub(crate) struct Settler {
    conn: Arc<Mutex<Connection>>,
    chain: Chain,
    key: PrivateKeySigner,
    policy: BatchPolicy,
    liveness_checked: Mutex<Option<std::time::Instant>>,
    log: crate::log::ReceiptLog,
    payments: Option<cairn_x402::PaymentStore>,
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(format!("settler: {e}"))
}

impl Settler {
    pub(crate) fn open(
        log_path: &Path,
        cfg: SettlementConfig,
        key: PrivateKeySigner,
        log: crate::log::ReceiptLog,
        payments: Option<cairn_x402::PaymentStore>,
    ) -> Result<Self, NodeError> {
        let conn = Connection::open(PathBuf::from(log_path)).map_err(internal)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(internal)?;
        let have: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('batches')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(internal)?;
        if !have.iter().any(|c| c == "sealed_block") {
            conn.execute("ALTER TABLE batches ADD COLUMN sealed_block INTEGER", [])
                .map_err(internal)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            chain: cfg.chain,
            key,
            policy: cfg.policy,
            liveness_checked: Mutex::new(None),
            log,
            payments,
        })
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, NodeError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// Runs until the process ends; errors are logged and retried on the next tick.
    pub(crate) async fn run(self) {
        loop {
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "settlement step failed; retrying");
            }
            tokio::time::sleep(self.policy.tick).await;
        }
    }

    /// One pass: settle the billing of paid receipts, seal what is due, submit sealed
    /// batches, put collected attestations on chain, finalize (or expire) what is ripe. Each
    /// step runs whatever the others did; the first error is reported.
    pub(crate) async fn step(&self) -> Result<(), NodeError> {
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
    async fn resolve_billing(&self) -> Result<(), NodeError> {
        let Some(store) = &self.payments else {
            return Ok(());
        };
        let waiting = self.log.awaiting_payment(1_000).await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let store = store.clone();
        let outcomes = tokio::task::spawn_blocking(move || {
            waiting
                .into_iter()
                .filter_map(|(id, payment)| match store.outcome(payment) {
                    Ok(cairn_x402::store::Outcome::Paid) => Some(Ok((id, Billing::Final))),
                    Ok(cairn_x402::store::Outcome::Failed) => Some(Ok((id, Billing::Void))),
                    Ok(cairn_x402::store::Outcome::Open) => None,
                    Err(e) => Some(Err(internal(e))),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(internal)??;
        self.log.resolve_billing(outcomes).await
    }

    /// Sends a registry heartbeat once half the heartbeat timeout has passed (checked at most
    /// once a minute), so a governance-set timeout never makes a working node inactive.
    async fn keep_alive(&self) -> Result<(), NodeError> {
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
        let timeout = self.chain.heartbeat_timeout().await.map_err(internal)?;
        if timeout == 0 {
            return Ok(());
        }
        let me = self
            .chain
            .node(self.key.address())
            .await
            .map_err(internal)?;
        if me.role.is_none() {
            return Ok(());
        }
        let now = crate::now_secs();
        if now.saturating_sub(me.last_heartbeat) >= timeout / 2 {
            let out = self.chain.heartbeat(&self.key).await.map_err(internal)?;
            tracing::info!(tx = %out.hash, "sent a registry heartbeat");
        }
        Ok(())
    }

    /// Submits `attestBatch` for every submitted batch that holds a quorum of signatures.
    async fn attest_collected(&self) -> Result<(), NodeError> {
        let collected: Vec<(i64, u64, Vec<SignerSig>)> = self
            .db(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT local, chain_batch FROM batches WHERE status = 'submitted' ORDER BY local",
                )?;
                let batches: Vec<(i64, i64)> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut sigs = c.prepare_cached(
                    "SELECT signer, signature FROM attestations WHERE chain_batch = ?1",
                )?;
                let mut out = Vec::new();
                for (local, id) in batches {
                    let s: Vec<SignerSig> = sigs
                        .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    out.push((local, id as u64, s));
                }
                Ok(out)
            })
            .await?;
        if collected.iter().all(|(_, _, s)| s.is_empty()) {
            return Ok(());
        }
        let quorum = self.chain.quorum().await.map_err(internal)? as usize;
        for (local, id, sigs) in collected {
            if sigs.len() < quorum {
                continue;
            }
            let batch = self.chain.batch(id).await.map_err(internal)?;
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
                    .await
                    .map_err(internal)?
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
                    self.mark(local, "attested", None).await?;
                }
                Err(e) => tracing::warn!(batch = id, error = %e, "attestBatch failed; will retry"),
            }
        }
        Ok(())
    }

    /// Seals one batch if one is due; returns whether it did.
    async fn seal(&self) -> Result<bool, NodeError> {
        let policy = self.policy;
        let head = self.chain.ledger().head().await.map_err(internal)?.number;
        self.db(move |c| {
            let now = crate::now_secs() as i64;
            // Receipts from before settlement existed have no digest and stay out of batches;
            // paid ones wait for their payment.
            let rows: Vec<(String, Vec<u8>, String, i64)> = {
                let mut stmt = c.prepare_cached(
                    "SELECT id, digest, price, created_at FROM receipts
                     WHERE batch IS NULL AND length(digest) = 32 AND price IS NOT NULL
                       AND billing = 'final'
                     ORDER BY created_at, id LIMIT ?1",
                )?;
                stmt.query_map(params![policy.max_receipts as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            let Some(oldest) = rows.first().map(|r| r.3) else {
                return Ok(false);
            };
            if rows.len() < policy.max_receipts && now - oldest < policy.max_age.as_secs() as i64 {
                return Ok(false);
            }
            let digests: Vec<B256> = rows.iter().map(|r| B256::from_slice(&r.1)).collect();
            let tree = ReceiptTree::new(&digests)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let mut fees = U256::ZERO;
            for (id, _, price, _) in &rows {
                let price: U256 = price.parse().map_err(|e| {
                    rusqlite::Error::ToSqlConversionFailure(
                        format!("receipt {id} has an unreadable price {price:?}: {e}").into(),
                    )
                })?;
                fees += price;
            }
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO batches (root, count, fees, status, sealed_at, sealed_block)
                 VALUES (?1, ?2, ?3, 'sealed', ?4, ?5)",
                params![tree.root().as_slice(), rows.len() as i64, fees.to_string(), now, head as i64],
            )?;
            let local = tx.last_insert_rowid();
            {
                let mut upd =
                    tx.prepare_cached("UPDATE receipts SET batch = ?1, proof = ?2 WHERE id = ?3")?;
                for (row, digest) in rows.iter().zip(&digests) {
                    let proof: Vec<u8> = tree
                        .proof(*digest)
                        .expect("digest is in the tree")
                        .iter()
                        .flat_map(|p| p.0)
                        .collect();
                    upd.execute(params![local, proof, row.0])?;
                }
            }
            tx.commit()?;
            tracing::info!(batch = local, receipts = rows.len(), root = %tree.root(), "sealed a receipt batch");
            Ok(true)
        })
        .await
    }

    async fn sealed(&self) -> Result<Vec<Sealed>, NodeError> {
        self.db(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT local, root, count, fees, sealed_block FROM batches
                 WHERE status = 'sealed' ORDER BY local",
            )?;
            stmt.query_map([], |r| {
                Ok(Sealed {
                    local: r.get(0)?,
                    root: B256::from_slice(&r.get::<_, Vec<u8>>(1)?),
                    count: r.get::<_, i64>(2)? as u32,
                    fees: {
                        let fees: String = r.get(3)?;
                        fees.parse().map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                3,
                                rusqlite::types::Type::Text,
                                format!("batch fees {fees:?}: {e}").into(),
                            )
                        })?
                    },
                    sealed_block: r.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
                })
            })?
            .collect()
        })
        .await
    }

    /// The on-chain batch this node already submitted under `root` since block `from`, if any.
    async fn find_submitted(
        &self,
        root: B256,
        from: u64,
    ) -> Result<Option<(u64, B256)>, NodeError> {
        let me = self.key.address();
        Ok(self
            .chain
            .submitted_batches(from)
            .await
            .map_err(internal)?
            .into_iter()
            .find(|(_, node, r, _)| *node == me && *r == root)
            .map(|(id, _, _, tx)| (id, tx)))
    }

    async fn mark(
        &self,
        local: i64,
        status: &'static str,
        chain: Option<(u64, B256)>,
    ) -> Result<(), NodeError> {
        self.db(move |c| {
            match chain {
                Some((id, tx)) => c.execute(
                    "UPDATE batches SET status = ?1, chain_batch = ?2, tx = ?3 WHERE local = ?4",
                    params![status, id as i64, tx.as_slice(), local],
                )?,
                None => c.execute(
                    "UPDATE batches SET status = ?1 WHERE local = ?2",
                    params![status, local],
                )?,
            };
            Ok(())
        })
        .await
    }

    /// Marks an expired batch and frees its receipts to be sealed into a new one.
    async fn reopen(&self, local: i64) -> Result<(), NodeError> {
        self.db(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE batches SET status = 'expired' WHERE local = ?1",
                params![local],
            )?;
            tx.execute(
                "UPDATE receipts SET batch = NULL, proof = NULL WHERE batch = ?1",
                params![local],
            )?;
            tx.commit()
        })
        .await
    }

    async fn submit_sealed(&self) -> Result<(), NodeError> {
        for b in self.sealed().await? {
            if let Some(found) = self.find_submitted(b.root, b.sealed_block).await? {
                self.mark(b.local, "submitted", Some(found)).await?;
                continue;
            }
            match self
                .chain
                .submit_batch(&self.key, b.root, b.count, b.fees)
                .await
            {
                Ok((id, out)) => {
                    tracing::info!(batch = id, receipts = b.count, fees = %b.fees, tx = %out.hash, "submitted a receipt batch");
                    self.mark(b.local, "submitted", Some((id, out.hash)))
                        .await?;
                }
                Err(LedgerError::Pending { hash, .. }) => {
                    tracing::warn!(tx = %hash, "batch submission not mined yet; will reconcile");
                    return Ok(());
                }
                Err(e) => return Err(internal(format!("submitting batch {}: {e}", b.local))),
            }
        }
        Ok(())
    }

    async fn finalize_ripe(&self) -> Result<(), NodeError> {
        let open: Vec<(i64, u64)> = self
            .db(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT local, chain_batch FROM batches
                     WHERE status IN ('submitted', 'attested', 'expired') ORDER BY local",
                )?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                    .collect()
            })
            .await?;
        if open.is_empty() {
            return Ok(());
        }
        let window = self.chain.challenge_window().await.map_err(internal)?;
        let attestation_timeout = self.chain.attestation_timeout().await.map_err(internal)?;
        // The next block's time: the head's, or the wall clock when no block was mined lately.
        let now = self
            .chain
            .ledger()
            .head()
            .await
            .map_err(internal)?
            .timestamp
            .max(crate::now_secs());
        for (local, id) in open {
            let b = self.chain.batch(id).await.map_err(internal)?;
            match b.status {
                BatchStatus::Attested if now >= b.attested_at + window => {
                    match self.chain.finalize(&self.key, id).await {
                        Ok(out) => {
                            tracing::info!(batch = id, tx = %out.hash, "finalized a receipt batch");
                            self.mark(local, "finalized", None).await?;
                        }
                        Err(e) => {
                            tracing::warn!(batch = id, error = %e, "finalize failed; will retry")
                        }
                    }
                }
                BatchStatus::Attested => self.mark(local, "attested", None).await?,
                BatchStatus::Submitted if now >= b.submitted_at + attestation_timeout => {
                    // No quorum attested it in time: take the fees back to the vault and seal
                    // its receipts again.
                    match self.chain.expire(&self.key, id).await {
                        Ok(out) => {
                            tracing::warn!(batch = id, tx = %out.hash, "expired an unattested batch; its receipts are sealed again");
                            self.reopen(local).await?;
                        }
                        Err(e) => {
                            tracing::warn!(batch = id, error = %e, "expire failed; will retry")
                        }
                    }
                }
                BatchStatus::Expired => {
                    // Its receipts go into a new batch at once; the old one lapses (unlocking
                    // the stake) once nobody can challenge it any more.
                    self.reopen(local).await?;
                    if now >= b.attested_at + window {
                        match self.chain.lapse(&self.key, id).await {
                            Ok(_) => self.mark(local, "lapsed", None).await?,
                            Err(e) => {
                                tracing::warn!(batch = id, error = %e, "lapse failed; will retry")
                            }
                        }
                    }
                }
                BatchStatus::Lapsed => self.mark(local, "lapsed", None).await?,
                BatchStatus::Finalized => self.mark(local, "finalized", None).await?,
                BatchStatus::Voided => self.mark(local, "voided", None).await?,
                _ => {}
            }
        }
        Ok(())
    }
}
