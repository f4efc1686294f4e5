//! Group commit without a writer thread, and the payload sweep.
//!
//! An append queues its entry and, when no one holds the write connection, takes it and commits
//! whatever has queued (its own entry among it) in one transaction: at one request at a time
//! nothing changes threads on the way to the answer, and under load the entries that queue while
//! one group commits form the next group. Whoever lets go of the connection looks at the queue
//! again, so an entry queued meanwhile is never left behind.

use std::sync::{Mutex, MutexGuard, TryLockError, Weak};

use super::*;

/// Entries committed in one transaction at most.
const GROUP_MAX: usize = 512;
/// Groups one append (or other write) commits before it hands the rest of the queue to a task of
/// its own: its caller is waiting.
const GROUPS_PER_LEADER: usize = 2;
/// Payload bytes past which a group commit leaves the async worker (`block_in_place`) even when
/// it does not wait for the disk: copying megabytes into the WAL is not a quick step.
const LARGE_GROUP_BYTES: usize = 1 << 20;
/// WAL pages (estimated) after which the WAL is copied into the database (SQLite's checkpoint,
/// with its two fsyncs), on a blocking thread holding the connection, after the group's answers
/// went. Measured on the digits MLP (`scripts/bench-node.sh`, one connection, checkpoints inside
/// the commit): small checkpoints keep the slowest answers short (p99 1.0–1.6 ms at 250 pages,
/// 4.2–5.2 ms at SQLite's default 1,000, 16–17 ms at 4,000). A checkpoint on a thread of its
/// own running beside the commits was slower still.
const CHECKPOINT_PAGES: usize = 250;
/// Pages a group commit writes besides its rows (the indexes' leaves).
const PAGES_PER_GROUP: usize = 3;
/// Bytes of a row besides its payloads (the receipt's binary form, ids, hashes).
const ROW_BYTES: usize = 1_100;
/// Rows one statement of the payload sweep changes at most: a commit never waits long for it.
pub(super) const SWEEP_CHUNK: i64 = 256;

/// The write side: the queue, and the connection the append that finds it free commits with.
pub(super) struct Writer {
    queue: Mutex<Vec<Job>>,
    conn: Mutex<WriteSide>,
    durability: Durability,
    /// Where a commit that outlasts its leader goes on.
    runtime: tokio::runtime::Handle,
}

struct WriteSide {
    conn: Connection,
    sealer: Option<ReceiptSigner>,
    /// WAL pages written since the last checkpoint (estimated).
    pages: usize,
    /// A checkpoint task is on its way.
    checkpointing: bool,
}

/// Where [`Writer::lead`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum On {
    /// An async worker: a commit that waits for the disk or copies megabytes leaves it first.
    Runtime,
    /// A thread that may block.
    Thread,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        sealer: Option<ReceiptSigner>,
        durability: Durability,
        runtime: tokio::runtime::Handle,
    ) -> rusqlite::Result<Self> {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Self {
            queue: Mutex::new(Vec::new()),
            conn: Mutex::new(WriteSide {
                conn,
                sealer,
                pages: 0,
                checkpointing: false,
            }),
            durability,
            runtime,
        })
    }

    /// Queues `job` and commits the queue unless another append is committing (which then
    /// takes it). Call from within the log's Tokio runtime.
    pub(super) fn append(self: &Arc<Self>, job: Job) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job);
        self.lead(On::Runtime);
    }

    /// Runs `f` on the write connection once it is free (blocking), its commits as durable as
    /// `durability` asks at least, then commits what queued meanwhile (also if `f` panics).
    /// For writes other than appends, on a thread that may block.
    pub(super) fn with_conn<T>(
        self: &Arc<Self>,
        durability: Durability,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        struct LeadAfter<'a>(&'a Arc<Writer>);
        impl Drop for LeadAfter<'_> {
            fn drop(&mut self) {
                self.0.lead(On::Thread);
            }
        }
        /// Puts the connection's own durability back before the connection is let go, however
        /// `f` ended (a panic included).
        struct Restore<'a> {
            side: MutexGuard<'a, WriteSide>,
            to: Option<&'static str>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                if let Some(to) = self.to
                    && let Err(e) = self.side.conn.pragma_update(None, "synchronous", to)
                {
                    tracing::error!(error = %e, "receipt log: restoring its durability");
                }
            }
        }
        let _after = LeadAfter(self);
        let stricter = durability == Durability::Full && self.durability != Durability::Full;
        let mut side = Restore {
            side: self.side(),
            to: stricter.then_some(sync_pragma(self.durability)),
        };
        if stricter {
            side.side.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        // What `f` wrote is not counted: a checkpoint follows it (these writes are rare).
        side.side.pages = side.side.pages.max(CHECKPOINT_PAGES);
        f(&side.side.conn)
    }

    /// Copies the WAL into the database, holding the connection (appends queue meanwhile and
    /// are committed after it). On a thread that may block.
    fn checkpoint(self: &Arc<Self>) {
        {
            let mut side = self.side();
            if let Err(e) = side
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                tracing::warn!(error = %e, "receipt log checkpoint failed");
            }
            side.pages = 0;
            side.checkpointing = false;
        }
        self.lead(On::Thread);
    }

    fn side(&self) -> MutexGuard<'_, WriteSide> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits queued groups while the connection is free, at most [`GROUPS_PER_LEADER`]
    /// before a task of the runtime takes over.
    fn lead(self: &Arc<Self>, on: On) {
        let leaves_worker = on == On::Runtime
            && self.runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
        let mut groups = 0;
        loop {
            let mut side = match self.conn.try_lock() {
                Ok(side) => side,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let take = queue.len().min(GROUP_MAX);
                queue.drain(..take).collect::<Vec<_>>()
            };
            if !batch.is_empty() {
                let bytes: usize = batch
                    .iter()
                    .map(|(e, _)| e.input.len() + e.output.len())
                    .sum();
                side.pages += PAGES_PER_GROUP + (batch.len() * ROW_BYTES + bytes).div_ceil(4096);
                if leaves_worker
                    && (self.durability == Durability::Full || bytes > LARGE_GROUP_BYTES)
                {
                    tokio::task::block_in_place(|| commit_group(&mut side, batch));
                } else {
                    commit_group(&mut side, batch);
                }
                groups += 1;
            }
            if side.pages >= CHECKPOINT_PAGES && !side.checkpointing {
                side.checkpointing = true;
                let this = self.clone();
                self.runtime.spawn_blocking(move || this.checkpoint());
            }
            drop(side);
            if self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            if groups >= GROUPS_PER_LEADER {
                let this = self.clone();
                self.runtime.spawn(async move { this.lead(On::Runtime) });
                return;
            }
        }
    }
}

/// SQLite's `synchronous` for `durability`.
fn sync_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    }
}

/// Signs the group's batch-sealed receipts, commits the group and answers each of its appends.
fn commit_group(side: &mut WriteSide, mut batch: Vec<Job>) {
    let result = guarded(|| {
        seal(side.sealer.as_ref(), &mut batch);
        commit(&mut side.conn, &batch).map_err(|e| e.to_string())
    });
    if let Err(e) = &result {
        tracing::error!(error = %e, "receipt log commit failed");
    }
    for (entry, done) in batch {
        let _ = done.send(result.clone().and_then(|()| match entry.receipt {
            EntryReceipt::Signed(json, _) => Ok(json),
            EntryReceipt::ToSign(_) => Err("the receipt was not signed".into()),
        }));
    }
}

/// One chunk of the sweep: payloads of rows created before `?1`, at most `?2` rows.
pub(super) fn sweep_sql(settles: bool) -> &'static str {
    if settles {
        // Through the rows that still have payloads (the batch index would walk every row
        // of every final batch, swept or not, each chunk).
        "UPDATE receipts SET input = NULL, output = NULL WHERE rowid IN
           (SELECT rowid FROM receipts INDEXED BY receipts_kept
            WHERE created_at < ?1 AND input IS NOT NULL AND batch IN
              (SELECT local FROM batches WHERE status IN ('finalized', 'voided')) LIMIT ?2)"
    } else {
        "UPDATE receipts SET input = NULL, output = NULL WHERE rowid IN
           (SELECT rowid FROM receipts INDEXED BY receipts_kept
            WHERE created_at < ?1 AND input IS NOT NULL LIMIT ?2)"
    }
}

/// Drops payloads older than `retention` (receipts stay) on a thread of its own, until the log
/// is dropped. A verifier may ask for any payload of an open batch (and of a receipt not yet
/// batched): with `settles`, those stay until their batch is final, however old.
pub(super) fn sweeper(writer: Weak<Writer>, retention: Duration, settles: bool) {
    let every = Duration::from_secs(60).min(retention.max(Duration::from_secs(1)));
    let sql = sweep_sql(settles);
    loop {
        std::thread::sleep(every);
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let cutoff = crate::now_secs() as i64 - retention.as_secs() as i64;
        loop {
            // A chunk at a time: appends queue meanwhile and are committed before the next.
            match writer.with_conn(writer.durability, |c| {
                c.execute(sql, params![cutoff, SWEEP_CHUNK])
            }) {
                Ok(n) if n as i64 == SWEEP_CHUNK => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "receipt payload sweep failed");
                    break;
                }
            }
        }
    }
}

/// Signs the group's batch-sealed receipts under one root; if that fails, their jobs get the
/// error and leave the group.
pub(super) fn seal(sealer: Option<&ReceiptSigner>, batch: &mut Vec<Job>) {
    let to_sign: Vec<Claims> = batch
        .iter()
        .filter_map(|(e, _)| e.receipt.claims().cloned())
        .collect();
    if to_sign.is_empty() {
        return;
    }
    let signed = match sealer {
        Some(s) => s.sign_batch(to_sign).map_err(|e| e.to_string()),
        None => Err("this receipt log signs no batches".into()),
    };
    match signed {
        Ok(receipts) => {
            let mut receipts = receipts.into_iter();
            for (e, _) in batch.iter_mut() {
                if e.receipt.claims().is_some() {
                    let r = receipts.next().expect("one receipt per claim");
                    e.receipt = EntryReceipt::signed(&r);
                }
            }
        }
        Err(reason) => {
            tracing::error!(error = %reason, "signing a receipt batch failed");
            let (fail, keep): (Vec<Job>, Vec<Job>) = std::mem::take(batch)
                .into_iter()
                .partition(|(e, _)| e.receipt.claims().is_some());
            *batch = keep;
            for (_, done) in fail {
                let _ = done.send(Err(reason.clone()));
            }
        }
    }
}

/// Runs one group's signing and commit so that a panic in it (a bug) fails that group's
/// requests with the reason instead of stopping the writer and with it every later append. A
/// transaction open when it panicked is rolled back as it unwinds.
pub(super) fn guarded(group: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(group)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(format!(
            "the receipt log failed on this group ({why}); none of it was kept, retry"
        ))
    })
}

pub(super) fn commit(conn: &mut Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        // A payment is held by one request at a time: an earlier receipt under the same
        // reference is from a run whose payment was given back (the process stopped, or the
        // answer was lost) and must never bill it too.
        let mut stale = tx.prepare_cached(
            "UPDATE receipts SET billing = 'void', input = NULL, output = NULL
             WHERE payment_ref = ?1 AND billing = 'awaiting_payment'",
        )?;
        for (e, _) in batch {
            if e.billing == Billing::AwaitingPayment && e.payment_ref != [0; 32] {
                stale.execute(params![e.payment_ref.as_slice()])?;
            }
        }
        let mut stmt = tx.prepare_cached(
            "INSERT INTO receipts (id, created_at, model, receipt, compact, input, output, digest,
                                   price, billing, payer, payment_ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for (e, _) in batch {
            let EntryReceipt::Signed(json, compact) = &e.receipt else {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "receipt {} is not signed",
                    e.id
                )));
            };
            stmt.execute(params![
                e.id,
                e.created_at,
                e.model,
                // The JSON text only for a receipt with no binary form.
                if compact.is_some() { "" } else { json.as_str() },
                compact.as_ref().map(|c| c.as_bytes()),
                e.input,
                e.output,
                e.digest.as_slice(),
                e.price,
                e.billing.as_str(),
                e.payer.as_ref().map(|p| p.as_slice()),
                // No payment, no reference (and no entry in the index of references).
                (e.payment_ref != [0; 32]).then_some(e.payment_ref.as_slice()),
            ])?;
        }
    }
    tx.commit()
}
