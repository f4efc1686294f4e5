//! Group commit without a writer thread, the index thread, and the payload sweep.
//!
//! An append queues its entry and, when no one holds the journal, takes it and writes whatever
//! has queued (its own entry among it) to the journal in one write: at one request at a time
//! nothing changes threads on the way to the answer, and under load the entries that queue while
//! one group is written form the next group. Whoever lets go of the journal looks at the queue
//! again, so an entry queued meanwhile is never left behind. A queue of batch-sealed entries
//! alone may be held for the batch-sealed requests on their way ([`Coming`]): the last of them
//! to arrive or fail, or a timer at its deadline, leads it. The written entries wait in memory
//! for the index thread, which commits them to SQLite in large transactions (SQLite's WAL
//! checkpoints among them) off the answer path; a read first waits until SQLite holds every
//! entry answered before it began, and any other write first commits them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError, Weak};
use std::time::Instant;

use super::journal::{Closed, Journal};
use super::*;

/// Entries written to the journal in one group at most.
const GROUP_MAX: usize = 512;
/// Groups one append writes before it hands the rest of the queue to a task of its own: its
/// caller is waiting.
const GROUPS_PER_LEADER: usize = 2;
/// Payload bytes past which a group write leaves the async worker (`block_in_place`) even when
/// it does not wait for the disk: copying megabytes is not a quick step.
const LARGE_GROUP_BYTES: usize = 1 << 20;
/// Entries committed to SQLite in one transaction at most.
const INDEX_GROUP: usize = 4096;
/// How long a group of batch-sealed receipts waits at most for the batch-sealed requests still
/// being served ([`Coming`]) to join it and share its signature (the runtime's timer rounds
/// up to its next millisecond: 1–2 ms), by default ([`ReceiptLog::linger`]). With none on its
/// way it never waits.
pub const LINGER: Duration = Duration::from_millis(1);
/// The longest a group may be held ([`ReceiptLog::linger`]): its requests hold their admission
/// slots meanwhile.
pub const MAX_LINGER: Duration = Duration::from_millis(100);
/// Entries (or payload bytes) waiting for the index past which an append helps index them
/// before its answer goes: the journal never runs ahead of SQLite without bound.
const PENDING_MAX: usize = 16_384;
const PENDING_BYTES: usize = 64 << 20;
/// Past this many times those (only while SQLite refuses entries, since appends help index
/// before that), appends are refused before they are written: memory and disk stay bounded.
const PENDING_REFUSE: usize = 4;
/// How long a read waits for the index to take the entries answered before it began.
const INDEX_WAIT: Duration = Duration::from_secs(30);
/// How long the index thread, woken by an entry, lets more gather before it commits (a read
/// waiting for the index cuts it short), when the log gathers ([`ReceiptLog::gather`]).
///
/// [`ReceiptLog::gather`]: super::ReceiptLog::gather
const GATHER: Duration = Duration::from_millis(8);
/// Rows one statement of the payload sweep changes at most: the index never waits long for it.
pub(super) const SWEEP_CHUNK: i64 = 256;

/// The write side: the append queue, the journal the append that finds it free writes the
/// queue to, and the SQLite connection the entries are indexed with.
pub(super) struct Writer {
    queue: Mutex<Queue>,
    journal: Mutex<JournalSide>,
    /// Entries written to the journal, not yet committed to SQLite.
    pending: Mutex<Pending>,
    /// Signalled (to both index threads) when entries join an empty `pending`, and when a
    /// read waits for the index. Woken, an index thread lets entries gather for [`GATHER`]
    /// once the log gathers (`busy` set): each commit costs a wake-up of the index thread
    /// (paid by the answering worker) and rewrites the last pages of every index, so fewer,
    /// larger commits cost far less per entry. Measured on this 2-core VM, digits MLP, side by
    /// side in one run: at 16 connections ~155 → ~128 µs of node CPU per answer, +15–30%
    /// answers per second; at one connection (six rounds against a commit per entry) 212 →
    /// 178 µs of CPU per answer and wrk p50 200 → 184 µs (the index thread had taken a fifth
    /// of the node's CPU). A commit of 8 ms of entries is a burst, though, which lengthened
    /// the tail at one connection (p99 980 → 1,305 µs) until the [`Shift::Quiet`] thread took
    /// the commits made while the node is not busy (p99 848 µs).
    work: Condvar,
    /// A read waits for the index: commit what has gathered now.
    hurry: std::sync::atomic::AtomicBool,
    /// Whether the node serves more than one request now ([`ReceiptLog::gather`]); while it
    /// is unset, the [`Shift::Main`] thread commits each entry as it comes.
    ///
    /// [`ReceiptLog::gather`]: super::ReceiptLog::gather
    pub(super) busy: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    index: Mutex<IndexSide>,
    /// What SQLite holds.
    indexed: Mutex<Progress>,
    /// Signalled when `indexed` changes.
    progressed: Condvar,
    /// Sequence number of the last entry written to the journal (and so answered, or about to
    /// be).
    appended: AtomicU64,
    /// Writes other than appends waiting for `index`: the index thread lets them in between
    /// its transactions.
    writers_waiting: std::sync::atomic::AtomicUsize,
    /// The journal directory's lock ([`journal::lock`]): one log per journal, for as long as
    /// this writer lives.
    _lock: std::fs::File,
    durability: Durability,
    /// Where a group write that outlasts its leader goes on.
    runtime: tokio::runtime::Handle,
}

/// Appends waiting for the journal.
pub(super) struct Queue {
    jobs: Vec<Job>,
    /// How many of `jobs` are sealed on their own (never held).
    own: usize,
    /// Batch-sealed requests admitted whose entries have not come ([`Coming`]).
    coming: usize,
    /// When the oldest of `jobs` came.
    since: Option<Instant>,
    /// A task will lead the queue at this time (a held group's deadline).
    wake: Option<Instant>,
    /// How long a group of batch-sealed entries waits at most for those coming.
    pub(super) linger: Duration,
}

/// A batch-sealed request the node admitted, on its way to the log: a group of batch-sealed
/// entries waits for it ([`LINGER`] at most). Its entry's append ends it, or its drop (the
/// request failed), which lets a group held for it go.
pub struct Coming(Option<Arc<Writer>>);

impl Drop for Coming {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            let waiting = {
                let mut q = lock(&w.queue);
                q.coming -= 1;
                !q.jobs.is_empty()
            };
            if waiting {
                w.lead();
            }
        }
    }
}

struct JournalSide {
    journal: Journal,
    sealer: Option<ReceiptSigner>,
}

struct IndexSide {
    conn: Connection,
    /// Segments no longer written, removed once SQLite holds their last entry.
    closed: Vec<Closed>,
}

#[derive(Default)]
struct Pending {
    rows: VecDeque<(u64, Entry)>,
    bytes: usize,
    closed: Vec<Closed>,
}

struct Progress {
    /// Sequence number of the last entry SQLite holds.
    seq: u64,
    /// Why the last attempt to index failed, until one succeeds.
    failure: Option<String>,
}

/// One group's answers, sent once the group is written.
type Answers = Vec<(
    oneshot::Sender<Result<ReceiptJson, String>>,
    Result<ReceiptJson, String>,
)>;

impl Writer {
    /// A writer appending to `journal` (whose entries SQLite, on `conn`, holds all of) and
    /// indexing on `conn`.
    pub(super) fn new(
        conn: Connection,
        journal: Journal,
        lock_file: std::fs::File,
        sealer: Option<ReceiptSigner>,
        durability: Durability,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let last = journal.last();
        Self {
            queue: Mutex::new(Queue {
                jobs: Vec::new(),
                own: 0,
                coming: 0,
                since: None,
                wake: None,
                linger: LINGER,
            }),
            journal: Mutex::new(JournalSide { journal, sealer }),
            pending: Mutex::new(Pending::default()),
            work: Condvar::new(),
            index: Mutex::new(IndexSide {
                conn,
                closed: Vec::new(),
            }),
            indexed: Mutex::new(Progress {
                seq: last,
                failure: None,
            }),
            progressed: Condvar::new(),
            appended: AtomicU64::new(last),
            writers_waiting: std::sync::atomic::AtomicUsize::new(0),
            hurry: std::sync::atomic::AtomicBool::new(false),
            busy: std::sync::OnceLock::new(),
            _lock: lock_file,
            durability,
            runtime,
        }
    }

    /// Queues `job` and writes the queue unless another append is writing (which then takes
    /// it). Call from within the log's Tokio runtime.
    pub(super) fn append(self: &Arc<Self>, job: Job, coming: Option<Coming>) {
        {
            let mut q = lock(&self.queue);
            q.since.get_or_insert_with(Instant::now);
            q.own += usize::from(job.0.receipt.claims().is_none());
            q.jobs.push(job);
            // Here, not at its drop: the count and the queue change together.
            if coming.and_then(|mut c| c.0.take()).is_some() {
                q.coming -= 1;
            }
        }
        self.lead();
    }

    /// Sets how long a group of batch-sealed entries waits at most for those coming.
    pub(super) fn set_linger(&self, linger: Duration) {
        lock(&self.queue).linger = linger;
    }

    /// A batch-sealed request admitted: groups wait for its entry until the returned guard
    /// goes with the entry's append, or is dropped.
    pub(super) fn coming(self: &Arc<Self>) -> Coming {
        lock(&self.queue).coming += 1;
        Coming(Some(self.clone()))
    }

    /// Whether the queue is to be written now. A queue of batch-sealed receipts alone is held
    /// (one signature covers a group, and signing is most of what a small group costs) while
    /// batch-sealed requests are on their way ([`Coming`]), for the linger at most; a task is
    /// then set to lead it at its deadline.
    fn due(self: &Arc<Self>, q: &mut Queue) -> bool {
        if q.jobs.is_empty() {
            return false;
        }
        let Some(since) = q.since else { return true };
        // A linger past what `Instant` can add (no caller sets one) holds nothing.
        let Some(deadline) = since.checked_add(q.linger) else {
            return true;
        };
        let now = Instant::now();
        if q.coming == 0 || q.own > 0 || q.jobs.len() >= GROUP_MAX || now >= deadline {
            return true;
        }
        // A timer due already may never have run (its runtime shutting down): set another.
        if q.wake.is_none_or(|w| w > deadline || w <= now) {
            q.wake = Some(deadline);
            let this = self.clone();
            self.runtime.spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                {
                    let mut q = lock(&this.queue);
                    if q.wake == Some(deadline) {
                        q.wake = None;
                    }
                }
                this.lead();
            });
        }
        false
    }

    /// Runs `f` on the SQLite connection once it is free (blocking) and holds every entry
    /// answered so far, its commits as durable as `durability` asks at least. For writes other
    /// than appends, on a thread that may block.
    pub(super) fn with_conn<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, LogError> {
        /// Puts the connection's own durability back before the connection is let go, however
        /// `f` ended (a panic included).
        struct Restore<'a> {
            side: MutexGuard<'a, IndexSide>,
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
        self.writers_waiting.fetch_add(1, Ordering::AcqRel);
        let mut side = lock(&self.index);
        self.writers_waiting.fetch_sub(1, Ordering::AcqRel);
        // Read after the lock is held: everything answered before `f` runs is in SQLite.
        let target = self.appended.load(Ordering::Acquire);
        self.index_locked(&mut side, target, usize::MAX, INDEX_GROUP, false)
            .map_err(LogError::WriteFailed)?;
        let stricter = durability == Durability::Full && self.durability != Durability::Full;
        let side = Restore {
            side,
            to: stricter.then_some(sync_pragma(self.durability)),
        };
        if stricter {
            side.side.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        Ok(f(&side.side.conn)?)
    }

    /// Sequence number of the last entry answered (or about to be).
    pub(super) fn appended(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// Waits (blocking) until SQLite holds entry `seq`; fails at once while indexing fails,
    /// and after [`INDEX_WAIT`].
    pub(super) fn wait_indexed(&self, seq: u64) -> Result<(), LogError> {
        let deadline = Instant::now() + INDEX_WAIT;
        if lock(&self.indexed).seq < seq {
            // Set under the lock the index thread gathers under, so it cannot miss it.
            let p = lock(&self.pending);
            self.hurry.store(true, Ordering::Release);
            drop(p);
            self.work.notify_all();
        }
        let mut p = lock(&self.indexed);
        while p.seq < seq {
            let now = Instant::now();
            if let Some(why) = &p.failure {
                return Err(LogError::WriteFailed(format!(
                    "the receipt index is behind its journal ({why})"
                )));
            }
            if now >= deadline {
                return Err(LogError::WriteFailed(
                    "the receipt index is behind its journal".into(),
                ));
            }
            p = self
                .progressed
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Commits to SQLite every entry answered so far (blocking), one transaction of at most
    /// `group` entries per hold of the connection, letting a waiting write in between;
    /// `yielding`, it gives its CPU up before each entry while the node is idle (see
    /// [`Shift::Quiet`]).
    fn index_answered(&self, group: usize, yielding: bool) -> Result<(), String> {
        let target = self.appended();
        loop {
            while self.writers_waiting.load(Ordering::Acquire) > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let mut side = lock(&self.index);
            if !self.index_locked(&mut side, target, 1, group, yielding)? {
                return Ok(());
            }
        }
    }

    /// Commits pending entries numbered up to `target`, at most `transactions` of at most
    /// `group` entries; returns whether any numbered up to `target` are left.
    fn index_locked(
        &self,
        side: &mut IndexSide,
        target: u64,
        transactions: usize,
        group: usize,
        yielding: bool,
    ) -> Result<bool, String> {
        for _ in 0..transactions {
            let (rows, closed) = {
                let mut p = lock(&self.pending);
                let n = p
                    .rows
                    .iter()
                    .take(group)
                    .take_while(|r| r.0 <= target)
                    .count();
                if n == 0 {
                    return Ok(false);
                }
                let rows: Vec<(u64, Entry)> = p.rows.drain(..n).collect();
                p.bytes -= rows.iter().map(|r| r.1.payload_bytes()).sum::<usize>();
                (rows, std::mem::take(&mut p.closed))
            };
            side.closed.extend(closed);
            let last = rows.last().expect("n > 0").0;
            let result = guarded(|| {
                let entries = rows.iter().map(|r| {
                    if yielding && self.idle() {
                        std::thread::yield_now();
                    }
                    &r.1
                });
                commit(&mut side.conn, entries).map_err(|e| e.to_string())
            });
            let mut progress = lock(&self.indexed);
            match result {
                Ok(()) => {
                    progress.seq = last;
                    progress.failure = None;
                    drop(progress);
                    self.progressed.notify_all();
                    side.closed.retain(|c| {
                        let done = c.last <= last;
                        if done {
                            journal::remove(&c.path);
                        }
                        !done
                    });
                }
                Err(e) => {
                    // The entries are in the journal and answered: they wait for the next try.
                    progress.failure = Some(e.clone());
                    drop(progress);
                    self.progressed.notify_all();
                    let mut p = lock(&self.pending);
                    p.bytes += rows.iter().map(|r| r.1.payload_bytes()).sum::<usize>();
                    for row in rows.into_iter().rev() {
                        p.rows.push_front(row);
                    }
                    return Err(e);
                }
            }
        }
        Ok(lock(&self.pending)
            .rows
            .front()
            .is_some_and(|r| r.0 <= target))
    }

    /// Writes queued groups while the journal is free, at most [`GROUPS_PER_LEADER`] before a
    /// task of the runtime takes over.
    /// On a worker of the log's runtime: a write that waits for the disk or copies megabytes
    /// leaves it first.
    fn lead(self: &Arc<Self>) {
        let leaves_worker =
            self.runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
        let mut groups = 0;
        loop {
            let mut side = match self.journal.try_lock() {
                Ok(side) => side,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let batch = {
                let mut q = lock(&self.queue);
                if self.due(&mut q) {
                    let take = q.jobs.len().min(GROUP_MAX);
                    let batch = q.jobs.drain(..take).collect::<Vec<_>>();
                    // What is left came first: it keeps its time, and is due at once.
                    q.own = q
                        .jobs
                        .iter()
                        .filter(|(e, _)| e.receipt.claims().is_none())
                        .count();
                    if q.jobs.is_empty() {
                        q.since = None;
                    }
                    batch
                } else {
                    Vec::new()
                }
            };
            let mut answers = Vec::new();
            let mut behind = false;
            if !batch.is_empty() {
                let bytes: usize = batch.iter().map(|(e, _)| e.payload_bytes()).sum();
                let blocks = self.durability == Durability::Full || bytes > LARGE_GROUP_BYTES;
                if leaves_worker && blocks {
                    tokio::task::block_in_place(|| {
                        (answers, behind) = self.write_group(&mut side, batch)
                    });
                } else {
                    (answers, behind) = self.write_group(&mut side, batch);
                }
                groups += 1;
            }
            drop(side);
            if behind {
                // Backpressure: this group's answers wait while SQLite catches up.
                let help = || {
                    if let Err(e) = self.index_answered(INDEX_GROUP, false) {
                        tracing::error!(error = %e, "receipt index: catching up failed");
                    }
                };
                if leaves_worker {
                    tokio::task::block_in_place(help);
                } else {
                    help();
                }
            }
            for (done, answer) in answers {
                let _ = done.send(answer);
            }
            // Checked after the journal is let go: an append that came meanwhile and found it
            // held left its entry to this leader.
            if !self.due(&mut lock(&self.queue)) {
                return;
            }
            if groups >= GROUPS_PER_LEADER {
                let this = self.clone();
                self.runtime.spawn(async move { this.lead() });
                return;
            }
        }
    }

    /// Signs the group's batch-sealed receipts and writes the group to the journal; its
    /// entries then wait for the index. Returns each append's answer, and whether the index
    /// is so far behind that this group should wait for it.
    fn write_group(&self, side: &mut JournalSide, mut batch: Vec<Job>) -> (Answers, bool) {
        let refused = {
            let p = lock(&self.pending);
            (p.rows.len() > PENDING_REFUSE * PENDING_MAX
                || p.bytes > PENDING_REFUSE * PENDING_BYTES)
                .then(|| {
                    let why = lock(&self.indexed).failure.clone().unwrap_or_default();
                    format!(
                        "the receipt index is far behind its journal ({why}); nothing was \
                         kept, retry shortly"
                    )
                })
        };
        if let Some(why) = refused {
            tracing::error!(error = %why, "receipt log: refusing appends");
            return (failed(batch, &why), false);
        }
        let written = guarded(|| {
            seal(side.sealer.as_ref(), &mut batch);
            let entries: Vec<&Entry> = batch.iter().map(|(e, _)| e).collect();
            side.journal.write(&entries)
        });
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "receipt journal write failed");
                return (failed(batch, &e), false);
            }
        };
        let first = written.last + 1 - batch.len() as u64;
        let mut answers = Vec::with_capacity(batch.len());
        let (behind, wake) = {
            let mut p = lock(&self.pending);
            let before = p.rows.len();
            for (i, (mut entry, done)) in batch.into_iter().enumerate() {
                let kept = match std::mem::replace(
                    &mut entry.receipt,
                    EntryReceipt::Kept(StoredReceipt::Compact(CompactReceipt::from_bytes(
                        Vec::new(),
                    ))),
                ) {
                    EntryReceipt::Signed(json, Some(compact)) => {
                        answers.push((done, Ok(json)));
                        StoredReceipt::Compact(compact)
                    }
                    EntryReceipt::Signed(json, None) => {
                        answers.push((done, Ok(json.clone())));
                        StoredReceipt::Json(json)
                    }
                    EntryReceipt::Kept(kept) => {
                        answers.push((done, Err("the receipt was kept already".into())));
                        kept
                    }
                    EntryReceipt::ToSign(_) => unreachable!("a written entry is signed"),
                };
                entry.receipt = EntryReceipt::Kept(kept);
                p.bytes += entry.payload_bytes();
                p.rows.push_back((first + i as u64, entry));
            }
            if let Some(closed) = written.closed {
                p.closed.push(closed);
            }
            // Under the lock, once they are in `pending`: a read that waits for them (and
            // hurries the index thread) never finds the index thread committing without them.
            self.appended.store(written.last, Ordering::Release);
            (
                p.rows.len() > PENDING_MAX || p.bytes > PENDING_BYTES,
                before == 0,
            )
        };
        if wake {
            self.work.notify_all();
        }
        (answers, behind)
    }
}

/// Every job of `batch` answered with `why`.
fn failed(batch: Vec<Job>, why: &str) -> Answers {
    batch
        .into_iter()
        .map(|(_, done)| (done, Err(why.to_owned())))
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which of the index threads commits now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shift {
    /// Every commit until the log gathers ([`Writer::busy`] set); then those that begin while
    /// the node is busy: the index keeps up with load at the answering threads' priority.
    /// Also any commit a read waits for, or once [`QUIET_MAX`] entries wait: other work on
    /// the machine may starve the quiet thread.
    Main,
    /// The commits that begin while the node is not busy, at the lowest CPU priority (nice
    /// 19), so a commit's burst yields to an answer on its way. A second thread, because an
    /// unprivileged thread may lower its priority but never raise it again. It also gives its
    /// CPU up before each entry it inserts while the node stays idle: the scheduler lets a
    /// thread it picked run out its slice, nice 19 or not, and a commit of 8 ms of entries at
    /// one connection (~1 ms of CPU) kept a worker woken on its CPU waiting that long (the
    /// node's p99 at one connection ~2 ms; with the yields, and the presigner's, 0.5–1.0 ms,
    /// p50 unchanged). It yields holding the index and an open transaction, so only while no
    /// one could wait for them: once the node is busy or a write waits, the transaction
    /// finishes without yielding.
    Quiet,
}

/// Entries waiting past which the [`Shift::Main`] thread commits them, whatever the load.
const QUIET_MAX: usize = 1024;
/// Entries the [`Shift::Quiet`] thread commits in one transaction at most.
const QUIET_GROUP: usize = 128;

impl Writer {
    /// Whether the node serves at most one request and no write waits for the index: a
    /// quiet commit may then give its CPU up, holding the index, without anyone waiting on it.
    fn idle(&self) -> bool {
        self.writers_waiting.load(Ordering::Acquire) == 0 && self.busy.get().is_none_or(|b| !b())
    }

    /// Whether `shift` makes the next commit (of `pending`; its lock held).
    fn on_shift(&self, shift: Shift, pending: &Pending) -> bool {
        let Some(busy) = self.busy.get() else {
            return shift == Shift::Main;
        };
        match shift {
            Shift::Quiet => !busy(),
            Shift::Main => {
                busy() || self.hurry.load(Ordering::Acquire) || pending.rows.len() >= QUIET_MAX
            }
        }
    }
}

/// Commits pending entries to SQLite as they come, on a thread of its own, in its `shift`,
/// until the log is dropped (within 100 ms: the journal's lock goes with it); a failure is
/// retried a second later (the entries stay in the journal meanwhile).
pub(super) fn indexer(writer: Weak<Writer>, shift: Shift) {
    #[cfg(target_os = "linux")]
    if shift == Shift::Quiet {
        // SAFETY: setpriority changes only the nice value of this thread (its id, from gettid).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    }
    loop {
        let Some(w) = writer.upgrade() else {
            return;
        };
        {
            let mut p = lock(&w.pending);
            if p.rows.is_empty() || !w.on_shift(shift, &p) {
                p = w
                    .work
                    .wait_timeout(p, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Entries waiting in the other's shift are its to commit (the wake reached it
            // too); at worst, when the node's load turns meanwhile, they wait 100 ms.
            if !w.on_shift(shift, &p) {
                continue;
            }
            if !p.rows.is_empty() && w.busy.get().is_some() {
                let until = Instant::now() + GATHER;
                while !w.hurry.load(Ordering::Acquire) {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    p = w
                        .work
                        .wait_timeout(p, until - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            if !p.rows.is_empty() && shift == Shift::Main {
                // A read's hurry is spent on the main thread's commit that follows (the quiet
                // one may be starved); one that came before its entries did waits for them.
                w.hurry.store(false, Ordering::Release);
            }
        }
        // The quiet thread holds the connection for short transactions only: the main thread
        // may need it meanwhile, and a starved thread at nice 19 may hold it long.
        let group = match shift {
            Shift::Main => INDEX_GROUP,
            Shift::Quiet => QUIET_GROUP,
        };
        if let Err(e) = w.index_answered(group, shift == Shift::Quiet) {
            tracing::error!(error = %e, "receipt index: commit failed, retrying");
            drop(w);
            std::thread::sleep(Duration::from_secs(1));
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

/// Runs one group's signing and write (or one index commit) so that a panic in it (a bug)
/// fails that group with the reason instead of stopping the writer and with it every later
/// append. A transaction open when it panicked is rolled back as it unwinds.
pub(super) fn guarded<T>(group: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
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

/// Commits `entries` (signed) to SQLite in one transaction.
pub(super) fn commit<'a>(
    conn: &mut Connection,
    entries: impl Iterator<Item = &'a Entry>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stale = tx.prepare_cached(
            "UPDATE receipts SET billing = 'void', input = NULL, output = NULL
             WHERE payment_ref = ?1 AND billing = 'awaiting_payment' AND id <> ?2",
        )?;
        // A receipt id is 32 random bytes: one seen again is an entry replayed from the
        // journal after SQLite took it (a crash between the two), and the first one stays.
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO receipts (id, created_at, model, receipt, compact, input,
                                   output, digest, price, billing, payer, payment_ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for e in entries {
            let (json, compact) = match &e.receipt {
                EntryReceipt::Signed(json, compact) => (json.as_str(), compact.as_ref()),
                EntryReceipt::Kept(StoredReceipt::Json(json)) => (json.as_str(), None),
                EntryReceipt::Kept(StoredReceipt::Compact(c)) => ("", Some(c)),
                EntryReceipt::ToSign(_) => {
                    return Err(rusqlite::Error::InvalidParameterName(format!(
                        "receipt {} is not signed",
                        e.id
                    )));
                }
            };
            let inserted = stmt.execute(params![
                e.id,
                e.created_at,
                e.model,
                // The JSON text only for a receipt with no binary form.
                if compact.is_some() { "" } else { json },
                compact.map(|c| c.as_bytes()),
                e.input,
                e.output,
                e.digest.as_slice(),
                e.price,
                e.billing.as_str(),
                e.payer.as_ref().map(|p| p.as_slice()),
                // No payment, no reference (and no entry in the index of references).
                (e.payment_ref != [0; 32]).then_some(e.payment_ref.as_slice()),
            ])?;
            if inserted == 0 {
                tracing::warn!(id = %e.id, "receipt log: an entry SQLite holds already, skipped");
                continue;
            }
            // A payment is held by one request at a time: an earlier receipt under the same
            // reference (in this transaction too) is from a run whose payment was given back
            // (the process stopped, or the answer was lost) and must never bill it too.
            if e.billing == Billing::AwaitingPayment && e.payment_ref != [0; 32] {
                stale.execute(params![e.payment_ref.as_slice(), e.id])?;
            }
        }
    }
    tx.commit()
}
