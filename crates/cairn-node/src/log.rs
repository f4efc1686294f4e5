//! The durable receipt log (SQLite): every receipt with its request and response payloads, the
//! payloads kept for a retention window so verifiers can fetch them.
//!
//! One writer thread owns the write connection and commits whatever has queued up in one
//! transaction (group commit); a response is released only after its receipt is committed. The
//! log is SQLite in WAL mode: by default a commit survives the node process dying (kill -9) but
//! may be lost with the machine's power; `fsync_each_commit` makes every group commit wait for
//! the disk. Reads share one connection of their own, so they never wait behind the writer.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

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
    /// The read connection (WAL: reads never wait behind the writer).
    reader: Arc<Mutex<Connection>>,
    tx: mpsc::SyncSender<Job>,
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

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(format!("receipt log: {e}"))
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(conn)
}

impl ReceiptLog {
    /// Opens (creating) the log at `path` and starts its writer thread, which also drops
    /// payloads older than `retention`.
    pub async fn open(
        path: &Path,
        retention: Duration,
        fsync_each_commit: bool,
    ) -> Result<Self, NodeError> {
        let conn = connect(path).map_err(internal)?;
        conn.pragma_update(
            None,
            "synchronous",
            if fsync_each_commit { "FULL" } else { "NORMAL" },
        )
        .map_err(internal)?;
        conn.execute_batch(SCHEMA).map_err(internal)?;
        let (tx, rx) = mpsc::sync_channel(4096);
        std::thread::Builder::new()
            .name("cairn-receipt-log".into())
            .spawn(move || writer(conn, rx, retention))
            .map_err(internal)?;
        let reader = Arc::new(Mutex::new(connect(path).map_err(internal)?));
        Ok(Self { reader, tx })
    }

    /// Appends an entry; returns once it is committed.
    pub async fn append(&self, entry: Entry) -> Result<(), NodeError> {
        let (done, wait) = oneshot::channel();
        let stopped = || NodeError::Internal("the receipt log writer stopped".into());
        match self.tx.try_send((entry, done)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                // The writer is behind: wait for room off the async threads.
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(job).map_err(|_| ()))
                    .await
                    .map_err(internal)?
                    .map_err(|_| stopped())?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        wait.await
            .map_err(|_| stopped())?
            .map_err(|e| NodeError::Internal(format!("receipt log write failed: {e}")))
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, NodeError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// A receipt by id.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, NodeError> {
        let id = id.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT receipt, created_at, input IS NOT NULL FROM receipts WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Stored {
                        receipt: r.get(0)?,
                        created_at: r.get(1)?,
                        payloads: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// A kept payload (`input` or `output`) as safetensors.
    pub async fn payload(&self, id: &str, output: bool) -> Result<Option<Vec<u8>>, NodeError> {
        let id = id.to_owned();
        let sql = if output {
            "SELECT output FROM receipts WHERE id = ?1"
        } else {
            "SELECT input FROM receipts WHERE id = ?1"
        };
        self.read(move |c| {
            c.query_row(sql, params![id], |r| r.get::<_, Option<Vec<u8>>>(0))
                .optional()
                .map(Option::flatten)
        })
        .await
    }

    /// Number of receipts.
    pub async fn count(&self) -> Result<i64, NodeError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM receipts", [], |r| r.get(0)))
            .await
    }
}

/// The writer thread: commits whatever has queued (up to 512 entries) in one transaction, and
/// drops payloads older than the retention window (receipts stay).
fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>, retention: Duration) {
    let mut last_sweep = Instant::now();
    let sweep_every = Duration::from_secs(60).min(retention.max(Duration::from_secs(1)));
    loop {
        let first = match rx.recv_timeout(sweep_every) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let result = commit(&mut conn, &batch).map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, "receipt log commit failed");
            }
            for (_, done) in batch {
                let _ = done.send(result.clone());
            }
        }
        if last_sweep.elapsed() >= sweep_every {
            last_sweep = Instant::now();
            let cutoff = crate::now_secs() as i64 - retention.as_secs() as i64;
            if let Err(e) = conn.execute(
                "UPDATE receipts SET input = NULL, output = NULL WHERE created_at < ?1 AND input IS NOT NULL",
                params![cutoff],
            ) {
                tracing::warn!(error = %e, "receipt payload sweep failed");
            }
        }
    }
}

fn commit(conn: &mut Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO receipts (id, created_at, model, receipt, input, output) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (e, _) in batch {
            stmt.execute(params![
                e.id,
                e.created_at,
                e.model,
                e.receipt,
                e.input,
                e.output
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn appends_reads_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let log = ReceiptLog::open(
            &dir.path().join("r.sqlite"),
            Duration::from_secs(3600),
            true,
        )
        .await
        .unwrap();
        let entry = |id: &str| Entry {
            id: id.into(),
            created_at: 1,
            model: "m".into(),
            receipt: "{}".into(),
            input: vec![1],
            output: vec![2],
        };
        log.append(entry("a")).await.unwrap();
        assert!(log.append(entry("a")).await.is_err());
        let got = log.get("a").await.unwrap().unwrap();
        assert!(got.payloads);
        assert_eq!(log.payload("a", true).await.unwrap(), Some(vec![2]));
        assert!(log.get("b").await.unwrap().is_none());
        assert_eq!(log.count().await.unwrap(), 1);
    }
}
