//! Verdicts and their evidence, kept in SQLite so they survive restarts and can be queried.

use std::path::Path;

use cairn_verifier_api::{BatchVerdict, FraudRecord, ReceiptVerdict, SampleRecord, VerdictOutcome};
use rusqlite::{Connection, OptionalExtension, params};

/// Errors of the verdict store.
#[derive(Debug, thiserror::Error)]
#[error("verdict store: {0}")]
pub struct StoreError(String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Rows by a stored label, as `(label, count)`.
pub type Counts = Vec<(String, u64)>;

/// One verifier's verdicts: per batch (JSON), per sampled receipt, and fraud verdicts it signed.
pub struct VerdictStore {
    db: cairn_sqlite::Shared,
}

impl VerdictStore {
    /// Opens (creating) the store at `path`; `:memory:` for a throwaway one.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = cairn_sqlite::open(path, cairn_sqlite::Durability::Full)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS batch_verdicts (
               batch_id INTEGER PRIMARY KEY, outcome TEXT NOT NULL, body TEXT NOT NULL,
               updated_at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS receipt_verdicts (
               request_id TEXT NOT NULL, batch_id INTEGER NOT NULL, body TEXT NOT NULL,
               PRIMARY KEY (request_id, batch_id));
             CREATE TABLE IF NOT EXISTS fraud_signed (
               batch_id INTEGER NOT NULL, receipt_hash TEXT NOT NULL, evidence_hash TEXT NOT NULL,
               body TEXT NOT NULL, PRIMARY KEY (batch_id, receipt_hash));
             CREATE TABLE IF NOT EXISTS payload_attempts (
               receipt_hash BLOB PRIMARY KEY, failures INTEGER NOT NULL,
               first_at INTEGER NOT NULL, last_at INTEGER NOT NULL, last_reason TEXT NOT NULL);",
        )?;
        Ok(Self {
            db: cairn_sqlite::Shared::new(db),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock()
    }

    /// Batches by verdict outcome, and sampled receipts by outcome (for `/metrics`).
    pub fn counts(&self) -> Result<(Counts, Counts), StoreError> {
        let db = self.db();
        let group = |sql: &str| -> Result<Counts, StoreError> {
            let mut stmt = db.prepare_cached(sql)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        Ok((
            group("SELECT outcome, COUNT(*) FROM batch_verdicts GROUP BY outcome")?,
            group(
                "SELECT COALESCE(json_extract(body, '$.outcome'), 'unknown'), COUNT(*)
                 FROM receipt_verdicts GROUP BY 1",
            )?,
        ))
    }

    /// Records (replaces) the verdict on a batch and its per-receipt findings.
    pub fn put_batch(&self, v: &BatchVerdict) -> Result<(), StoreError> {
        let outcome = v
            .outcome
            .ok_or_else(|| StoreError("a verdict without an outcome".into()))?;
        let body = serde_json::to_string(v).map_err(|e| StoreError(e.to_string()))?;
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO batch_verdicts (batch_id, outcome, body, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (batch_id) DO UPDATE SET outcome = ?2, body = ?3, updated_at = ?4",
            params![v.batch_id as i64, outcome.as_str(), body, now()],
        )?;
        for s in v.samples.iter().flatten() {
            let body = serde_json::to_string(s).map_err(|e| StoreError(e.to_string()))?;
            tx.execute(
                "INSERT OR REPLACE INTO receipt_verdicts (request_id, batch_id, body)
                 VALUES (?1, ?2, ?3)",
                params![s.request_id.to_string(), v.batch_id as i64, body],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The verdict on `batch`.
    pub fn batch(&self, batch: u64) -> Result<Option<BatchVerdict>, StoreError> {
        let body: Option<String> = self
            .db()
            .query_row(
                "SELECT body FROM batch_verdicts WHERE batch_id = ?1",
                params![batch as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// The outcome recorded for `batch`, if any.
    pub fn outcome(&self, batch: u64) -> Result<Option<VerdictOutcome>, StoreError> {
        let stored: Option<String> = self
            .db()
            .query_row(
                "SELECT outcome FROM batch_verdicts WHERE batch_id = ?1",
                params![batch as i64],
                |r| r.get(0),
            )
            .optional()?;
        stored
            .map(|s| {
                serde_json::from_value(serde_json::Value::String(s))
                    .map_err(|e| StoreError(format!("stored outcome: {e}")))
            })
            .transpose()
    }

    /// The most recent batch verdicts, newest first.
    pub fn recent(&self, limit: u32) -> Result<Vec<BatchVerdict>, StoreError> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT body FROM batch_verdicts ORDER BY updated_at DESC, batch_id DESC LIMIT ?1",
        )?;
        let rows = q.query_map(params![limit], |r| r.get::<_, String>(0))?;
        Ok(rows
            .filter_map(|r| r.ok())
            .filter_map(|b| serde_json::from_str(&b).ok())
            .collect())
    }

    /// What this verifier found about receipt `request_id` (one entry per batch it was in).
    pub fn receipt(&self, request_id: &str) -> Result<Vec<ReceiptVerdict>, StoreError> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT batch_id, body FROM receipt_verdicts WHERE request_id = ?1 ORDER BY batch_id",
        )?;
        let rows = q.query_map(params![request_id.to_ascii_lowercase()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        Ok(rows
            .filter_map(|r| r.ok())
            .filter_map(|(b, s)| {
                let sample: SampleRecord = serde_json::from_str(&s).ok()?;
                Some(ReceiptVerdict {
                    sample,
                    batch_id: b as u64,
                })
            })
            .collect())
    }

    /// Records a fraud verdict this verifier signed (its own finding or a peer's it confirmed).
    pub fn put_fraud(&self, f: &FraudRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(f).map_err(|e| StoreError(e.to_string()))?;
        self.db().execute(
            "INSERT OR REPLACE INTO fraud_signed (batch_id, receipt_hash, evidence_hash, body)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                f.batch_id as i64,
                f.receipt_hash.to_string(),
                f.evidence_hash.to_string(),
                body
            ],
        )?;
        Ok(())
    }

    /// The fraud verdicts signed on `batch`.
    pub fn frauds(&self, batch: u64) -> Result<Vec<FraudRecord>, StoreError> {
        let db = self.db();
        let mut q = db.prepare("SELECT body FROM fraud_signed WHERE batch_id = ?1")?;
        let rows = q.query_map(params![batch as i64], |r| r.get::<_, String>(0))?;
        Ok(rows
            .filter_map(|r| r.ok())
            .filter_map(|b| serde_json::from_str(&b).ok())
            .collect())
    }
}

/// This verifier's failed attempts to fetch one receipt's payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempts {
    /// Failed attempts so far (reset by a success).
    pub failures: u32,
    /// Unix seconds of the first failed attempt.
    pub first_at: u64,
    /// Unix seconds of the latest failed attempt.
    pub last_at: u64,
    /// What the node answered last.
    pub last_reason: String,
}

impl VerdictStore {
    /// The failed payload attempts recorded for receipt `rh`.
    pub fn attempts(&self, rh: &[u8; 32]) -> Result<Option<Attempts>, StoreError> {
        Ok(self
            .db()
            .query_row(
                "SELECT failures, first_at, last_at, last_reason FROM payload_attempts
                 WHERE receipt_hash = ?1",
                params![rh.as_slice()],
                |r| {
                    Ok(Attempts {
                        failures: r.get::<_, i64>(0)? as u32,
                        first_at: r.get::<_, i64>(1)? as u64,
                        last_at: r.get::<_, i64>(2)? as u64,
                        last_reason: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a failed attempt at `now`; returns the updated record.
    pub fn record_failure(
        &self,
        rh: &[u8; 32],
        now: u64,
        reason: &str,
    ) -> Result<Attempts, StoreError> {
        let reason: String = reason.chars().take(300).collect();
        self.db().execute(
            "INSERT INTO payload_attempts (receipt_hash, failures, first_at, last_at, last_reason)
             VALUES (?1, 1, ?2, ?2, ?3)
             ON CONFLICT (receipt_hash) DO UPDATE SET failures = failures + 1, last_at = ?2,
               last_reason = ?3",
            params![rh.as_slice(), now as i64, reason],
        )?;
        Ok(self.attempts(rh)?.expect("just written"))
    }

    /// Forgets the failures of receipt `rh` (the payload came); returns how many there were.
    pub fn clear_failures(&self, rh: &[u8; 32]) -> Result<u32, StoreError> {
        let had = self.attempts(rh)?.map_or(0, |a| a.failures);
        if had > 0 {
            self.db().execute(
                "DELETE FROM payload_attempts WHERE receipt_hash = ?1",
                params![rh.as_slice()],
            )?;
        }
        Ok(had)
    }
}

fn now() -> i64 {
    cairn_core::clock::now_millis() as i64
}
