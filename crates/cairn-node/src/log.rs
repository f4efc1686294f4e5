//! The durable receipt log (SQLite): every receipt with its request and response payloads, the
//! payloads kept for a retention window so verifiers can fetch them.
//!
//! Writes go through one writer task that commits whatever has queued up in one transaction
//! (group commit), and a response is released only after its receipt is committed.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::NodeError;

/// One logged inference.
pub struct Entry {
    /// `0x…` request id.
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Model CID.
    pub model: String,
    /// The receipt JSON.
    pub receipt: String,
    /// Inputs as safetensors.
    pub input: Vec<u8>,
    /// Outputs as safetensors.
    pub output: Vec<u8>,
}

/// A stored receipt as served back.
pub struct Stored {
    /// Receipt JSON.
    pub receipt: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether the payloads are still kept.
    pub payloads: bool,
}

type Job = (Entry, oneshot::Sender<Result<(), String>>);

/// Handle to the log.
#[derive(Clone)]
pub struct ReceiptLog {
    pool: SqlitePool,
    tx: mpsc::Sender<Job>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    receipt TEXT NOT NULL,
    input BLOB,
    output BLOB
);
CREATE INDEX IF NOT EXISTS receipts_created_at ON receipts (created_at);
";

impl ReceiptLog {
    /// Opens (creating) the log at `path` and starts its writer and its retention sweeper.
    pub async fn open(path: &Path, retention: Duration) -> Result<Self, NodeError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| NodeError::Internal(format!("receipt log {}: {e}", path.display())))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(|e| NodeError::Internal(format!("receipt log schema: {e}")))?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(pool.clone(), rx));
        tokio::spawn(sweeper(pool.clone(), retention));
        Ok(Self { pool, tx })
    }

    /// Appends an entry; returns once it is committed.
    pub async fn append(&self, entry: Entry) -> Result<(), NodeError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entry, done))
            .await
            .map_err(|_| NodeError::Internal("the receipt log writer stopped".into()))?;
        wait.await
            .map_err(|_| NodeError::Internal("the receipt log writer stopped".into()))?
            .map_err(|e| NodeError::Internal(format!("receipt log write failed: {e}")))
    }

    /// A receipt by id.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, NodeError> {
        let row = sqlx::query(
            "SELECT receipt, created_at, input IS NOT NULL AS kept FROM receipts WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok(row.map(|r| Stored {
            receipt: r.get(0),
            created_at: r.get(1),
            payloads: r.get::<bool, _>(2),
        }))
    }

    /// A kept payload (`input` or `output`) as safetensors.
    pub async fn payload(&self, id: &str, output: bool) -> Result<Option<Vec<u8>>, NodeError> {
        let sql = if output {
            "SELECT output FROM receipts WHERE id = ?"
        } else {
            "SELECT input FROM receipts WHERE id = ?"
        };
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok(row.and_then(|r| r.get::<Option<Vec<u8>>, _>(0)))
    }

    /// Number of receipts.
    pub async fn count(&self) -> Result<i64, NodeError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM receipts")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))
    }
}

async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let result = commit(&pool, &batch).await.map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "receipt log commit failed");
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

async fn commit(pool: &SqlitePool, batch: &[Job]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (e, _) in batch {
        sqlx::query("INSERT INTO receipts (id, created_at, model, receipt, input, output) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&e.id)
            .bind(e.created_at)
            .bind(&e.model)
            .bind(&e.receipt)
            .bind(&e.input)
            .bind(&e.output)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Drops payloads older than the retention window (receipts stay).
async fn sweeper(pool: SqlitePool, retention: Duration) {
    let mut tick =
        tokio::time::interval(Duration::from_secs(60).min(retention.max(Duration::from_secs(1))));
    loop {
        tick.tick().await;
        let cutoff = crate::now_secs() as i64 - retention.as_secs() as i64;
        if let Err(e) = sqlx::query(
            "UPDATE receipts SET input = NULL, output = NULL WHERE created_at < ? AND input IS NOT NULL",
        )
        .bind(cutoff)
        .execute(&pool)
        .await
        {
            tracing::warn!(error = %e, "receipt payload sweep failed");
        }
    }
}
