//! The batch half of the receipt log: sealing receipts into Merkle batches, the batches' local
//! state as the settler moves them along the chain, and the verifiers' attestations collected
//! for them. Every SQL statement on `batches` and `attestations` is here.

use alloy_primitives::{B256, U256};
use cairn_receipt::merkle::ReceiptTree;
use rusqlite::{Connection, OptionalExtension, params};

use super::{LogError, ReceiptLog, to32};

/// Columns of `batches` added after the first release.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('batches')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !have.iter().any(|c| c == "sealed_block") {
        conn.execute("ALTER TABLE batches ADD COLUMN sealed_block INTEGER", [])?;
    }
    // A batch that expired unattested has its receipts sealed again, often as the same set
    // (the same root), beside the expired one (which still lapses by its own row). Logs from
    // before kept roots unique and refused that seal on every pass: rebuilt once without it.
    let table: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'batches'",
        [],
        |r| r.get(0),
    )?;
    if table.contains("UNIQUE") {
        tracing::info!("receipt log: letting a root be sealed again (once)");
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE batches_rebuilt (
                 local INTEGER PRIMARY KEY AUTOINCREMENT,
                 root BLOB NOT NULL,
                 count INTEGER NOT NULL,
                 fees TEXT NOT NULL,
                 status TEXT NOT NULL,
                 chain_batch INTEGER,
                 tx BLOB,
                 sealed_at INTEGER NOT NULL,
                 sealed_block INTEGER
             );
             INSERT INTO batches_rebuilt
                 (local, root, count, fees, status, chain_batch, tx, sealed_at, sealed_block)
               SELECT local, root, count, fees, status, chain_batch, tx, sealed_at, sealed_block
               FROM batches;
             DROP TABLE batches;
             ALTER TABLE batches_rebuilt RENAME TO batches;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// A batch's local state, as the settler last saw it on chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchState {
    /// Sealed here, not submitted yet.
    Sealed,
    /// On chain, waiting for attestations.
    Submitted,
    /// Attested by a quorum; in its challenge window.
    Attested,
    /// Paid out.
    Finalized,
    /// Not attested in time; its receipts are sealed again.
    Expired,
    /// Expired and past its challenge window: the stake it bound is free.
    Lapsed,
    /// Voided by a fraud proof.
    Voided,
}

impl BatchState {
    /// The stored spelling (also what `/v1/receipts/{id}` and `/v1/batches/{id}` show).
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Sealed => "sealed",
            BatchState::Submitted => "submitted",
            BatchState::Attested => "attested",
            BatchState::Finalized => "finalized",
            BatchState::Expired => "expired",
            BatchState::Lapsed => "lapsed",
            BatchState::Voided => "voided",
        }
    }
}

/// A batch sealed here and not yet known to be submitted.
pub struct SealedBatch {
    /// Local id.
    pub local: i64,
    /// Merkle root.
    pub root: B256,
    /// Receipts in it.
    pub count: u32,
    /// Sum of their prices.
    pub fees: U256,
    /// The chain head when it was sealed: its submission cannot be older.
    pub sealed_block: u64,
}

/// (signer address bytes, 65-byte signature) as stored.
pub type SignerSig = (Vec<u8>, Vec<u8>);

/// A submitted batch with its receipts.
pub struct BatchListing {
    /// On-chain batch id.
    pub chain_batch: u64,
    /// Merkle root.
    pub root: [u8; 32],
    /// Receipts in it.
    pub count: u64,
    /// Sum of their prices, decimal.
    pub fees: String,
    /// Local state.
    pub status: String,
    /// The submitting transaction.
    pub tx: Option<[u8; 32]>,
    /// Each receipt, as its row holds it.
    pub(crate) receipts: Vec<super::StoredReceipt>,
}

impl ReceiptLog {
    /// The receipts (in leaf order of nothing in particular) of a batch by its on-chain id.
    pub async fn batch_receipts(&self, chain_batch: u64) -> Result<Option<BatchListing>, LogError> {
        self.read(move |c| {
            let head = c
                .query_row(
                    // Two rows name one chain batch only after the settler took a batch the
                    // contract held already (`adopt_batch`): the later one holds its receipts.
                    "SELECT local, root, count, fees, status, tx FROM batches WHERE chain_batch = ?1
                     ORDER BY local DESC LIMIT 1",
                    params![chain_batch as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, Option<Vec<u8>>>(5)?,
                        ))
                    },
                )
                .optional()?;
            let Some((local, root, count, fees, status, tx)) = head else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT receipt, compact FROM receipts WHERE batch = ?1 ORDER BY id",
            )?;
            let receipts = stmt
                .query_map(params![local], |r| super::StoredReceipt::from_row(r, 0, 1))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(BatchListing {
                chain_batch,
                root: to32(&root),
                count: count as u64,
                fees,
                status,
                tx: tx.map(|t| to32(&t)),
                receipts,
            }))
        })
        .await
    }

    /// Records a verifier's attestation signature for an on-chain batch; returns how many
    /// distinct signers the batch now has.
    pub async fn add_attestation(
        &self,
        chain_batch: u64,
        signer: [u8; 20],
        signature: Vec<u8>,
    ) -> Result<u64, LogError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO attestations (chain_batch, signer, signature) VALUES (?1, ?2, ?3)
                 ON CONFLICT (chain_batch, signer) DO NOTHING",
                params![chain_batch as i64, signer.as_slice(), signature],
            )?;
            c.query_row(
                "SELECT COUNT(*) FROM attestations WHERE chain_batch = ?1",
                params![chain_batch as i64],
                |r| r.get::<_, i64>(0).map(|n| n as u64),
            )
        })
        .await
    }

    /// Seals the oldest unbatched billable receipts into one batch when `max_receipts` wait or
    /// the oldest is `max_age_secs` old: the batch row and every receipt's proof commit in one
    /// transaction. `head`: the chain head now. Returns (local id, receipts, root) when it did.
    pub async fn seal_due(
        &self,
        max_receipts: usize,
        max_age_secs: u64,
        head: u64,
    ) -> Result<Option<(i64, usize, B256)>, LogError> {
        self.write(move |c| {
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
                stmt.query_map(params![max_receipts as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            let Some(oldest) = rows.first().map(|r| r.3) else {
                return Ok(None);
            };
            if rows.len() < max_receipts && now - oldest < max_age_secs as i64 {
                return Ok(None);
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
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO batches (root, count, fees, status, sealed_at, sealed_block)
                 VALUES (?1, ?2, ?3, 'sealed', ?4, ?5)",
                params![
                    tree.root().as_slice(),
                    rows.len() as i64,
                    fees.to_string(),
                    now,
                    head as i64
                ],
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
            Ok(Some((local, rows.len(), tree.root())))
        })
        .await
    }

    /// Batches sealed and not yet known to be submitted, oldest first.
    pub async fn sealed_batches(&self) -> Result<Vec<SealedBatch>, LogError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT local, root, count, fees, sealed_block FROM batches
                 WHERE status = 'sealed' ORDER BY local",
            )?;
            stmt.query_map([], |r| {
                Ok(SealedBatch {
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

    /// Submitted batches with the attestation signatures collected for each:
    /// (local id, on-chain id, signatures).
    pub async fn submitted_with_attestations(
        &self,
    ) -> Result<Vec<(i64, u64, Vec<SignerSig>)>, LogError> {
        self.read(|c| {
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
        .await
    }

    /// Batches on chain and not settled yet (submitted, attested or expired):
    /// (local id, on-chain id).
    pub async fn open_batches(&self) -> Result<Vec<(i64, u64)>, LogError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT local, chain_batch FROM batches
                 WHERE status IN ('submitted', 'attested', 'expired') ORDER BY local",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect()
        })
        .await
    }

    /// How many batches are in each state (for `/metrics`).
    pub async fn batch_counts(&self) -> Result<Vec<(String, u64)>, LogError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT status, COUNT(*) FROM batches GROUP BY status")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect()
        })
        .await
    }

    /// Records a batch's new state, with its on-chain id and submitting transaction once known.
    /// Records sealed batch `local` as submitted: on-chain batch `chain_batch` holds its root
    /// already (a submission this log lost; its transaction is not known).
    pub async fn adopt_batch(&self, local: i64, chain_batch: u64) -> Result<(), LogError> {
        self.write(move |c| {
            c.execute(
                "UPDATE batches SET status = 'submitted', chain_batch = ?1 WHERE local = ?2",
                params![chain_batch as i64, local],
            )
        })
        .await
        .map(drop)
    }

    pub async fn mark_batch(
        &self,
        local: i64,
        state: BatchState,
        chain: Option<(u64, B256)>,
    ) -> Result<(), LogError> {
        self.write(move |c| {
            match chain {
                Some((id, tx)) => c.execute(
                    "UPDATE batches SET status = ?1, chain_batch = ?2, tx = ?3 WHERE local = ?4",
                    params![state.as_str(), id as i64, tx.as_slice(), local],
                )?,
                None => c.execute(
                    "UPDATE batches SET status = ?1 WHERE local = ?2",
                    params![state.as_str(), local],
                )?,
            };
            Ok(())
        })
        .await
    }

    /// Marks an expired batch and frees its receipts to be sealed into a new one.
    pub async fn reopen_batch(&self, local: i64) -> Result<(), LogError> {
        self.write(move |c| {
            let tx = c.unchecked_transaction()?;
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
}
