//! The voucher journal: a counted voucher is one record appended to a file beside the store
//! (one `write`, and with [`Durability::Full`] one `fdatasync`) before its answer leaves, and
//! goes into SQLite later, many to a transaction, on a thread of its own. A count on the answer
//! path then costs no B-tree or write-ahead-log pages.
//!
//! Until SQLite holds a record, the store reads it from memory: what a channel is owed beyond
//! its row and which voucher keys were counted. Every other use of the connection first moves
//! the waiting records into SQLite ([`PaymentStore::with`]), so nothing else sees a lagging
//! table.
//!
//! A record is `len (u32 LE) | crc32 (u32 LE) | body`; the body starts with a version byte and
//! the record's sequence number. SQLite keeps the number of the last record it applied, in the
//! same transaction as the records, so applying is idempotent: when the store opens, the
//! records past that number are applied and the file is emptied. A record cut short by the end
//! of the file is a write the process was making when it stopped, never answered, and is
//! skipped. Damage before the end refuses the open under Full durability (it says which file,
//! and what moving it aside costs); under Normal, where a power cut may leave the last writes
//! out of order, the reading stops there and a copy is kept beside the file.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use alloy_primitives::{B256, U256};
use rusqlite::{Connection, OptionalExtension, params};

use crate::X402Error;

/// Layout of a record body; another value is refused, not misread.
const VERSION: u8 = 1;
/// Fixed part of a body: version, sequence, key, channel, cumulative, nonce, charged.
const FIXED: usize = 1 + 8 + 32 * 5;
/// A record claiming more than this is damage.
const MAX_BODY: usize = 1 << 20;
/// Records waiting for SQLite past which counts are refused (SQLite is refusing them): memory
/// stays bounded and the answers are withheld, their vouchers given back.
pub(super) const MAX_WAITING: usize = 1 << 16;
/// How long the applier lets records gather after the first one arrives: one transaction then
/// carries many (the answers never wait for it, and a read that needs SQLite applies what
/// waits itself). Each commit rewrites the last pages of every index it touches, so its cost
/// is mostly fixed: at 2 ms a c=8 prepaid load put ~5 records in each and the applier took
/// ~6% of the node's CPU.
const GATHER: Duration = Duration::from_millis(20);
/// Past this size, the file is rewritten with only the records SQLite does not hold yet.
const TRUNCATE_AT: u64 = 1 << 20;

/// SQLite's side: which record it applied last.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS voucher_journal (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    applied INTEGER NOT NULL      -- sequence number of the last journal record applied
);
INSERT OR IGNORE INTO voucher_journal (id, applied) VALUES (1, 0);
";

/// One counted voucher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Counted {
    pub(super) seq: u64,
    pub(super) key: B256,
    pub(super) channel: B256,
    pub(super) cumulative: U256,
    pub(super) nonce: B256,
    /// What the request was charged (at most the price the voucher was taken for).
    pub(super) charged: U256,
    pub(super) signature: Vec<u8>,
}

impl Counted {
    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(FIXED + self.signature.len());
        body.push(VERSION);
        body.extend_from_slice(&self.seq.to_le_bytes());
        body.extend_from_slice(self.key.as_slice());
        body.extend_from_slice(self.channel.as_slice());
        body.extend_from_slice(&self.cumulative.to_be_bytes::<32>());
        body.extend_from_slice(self.nonce.as_slice());
        body.extend_from_slice(&self.charged.to_be_bytes::<32>());
        body.extend_from_slice(&self.signature);
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode(body: &[u8]) -> Option<Self> {
        if body.len() < FIXED || body[0] != VERSION {
            return None;
        }
        let word = |i: usize| &body[9 + 32 * i..9 + 32 * (i + 1)];
        Some(Self {
            seq: u64::from_le_bytes(body[1..9].try_into().ok()?),
            key: B256::from_slice(word(0)),
            channel: B256::from_slice(word(1)),
            cumulative: U256::from_be_slice(word(2)),
            nonce: B256::from_slice(word(3)),
            charged: U256::from_be_slice(word(4)),
            signature: body[FIXED..].to_vec(),
        })
    }
}

/// The journal file and the records SQLite does not hold yet.
pub(super) struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    next: u64,
    full: bool,
    /// Why no more records are taken (a failed `fdatasync`: the page cache can no longer be
    /// trusted; the process must start again).
    broken: Option<String>,
    /// In sequence order.
    waiting: Vec<Counted>,
    /// Per channel, what its waiting records add to `accepted`.
    owed: HashMap<B256, U256>,
    keys: HashSet<B256>,
}

/// The journal, shared by the store's clones and its applier thread.
pub(super) struct Shared {
    journal: Mutex<Journal>,
    /// Rung when a record is appended.
    bell: Condvar,
    /// An apply pass could not put the connection back to FULL: the next use tries first, and
    /// is refused if it still cannot.
    weakened: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> X402Error + '_ {
    move |e| X402Error::Store(format!("voucher journal {}: {e}", path.display()))
}

/// What reading a journal file found.
struct Found {
    records: Vec<Counted>,
    /// Where damage stopped the reading (Normal durability only; Full refuses to open).
    damaged_at: Option<usize>,
}

/// The records in `bytes` (a journal file), up to a torn tail. Damage (a length no record has, a
/// checksum that fails, a body that does not decode) refuses the open under Full durability,
/// where every record was on disk before its answer left. Under Normal a power cut may leave
/// the page cache's last writes out of order or zero-filled, and the documented cost is the
/// last counts: the reading stops there and says so.
fn read_records(path: &Path, bytes: &[u8], full: bool) -> Result<Found, X402Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let fits = (FIXED..=MAX_BODY).contains(&len);
        if fits && at + 8 + len > bytes.len() {
            // Cut short by the end of the file: the write a stopped process was making.
            break;
        }
        let record = fits
            .then(|| &bytes[at + 8..at + 8 + len])
            .filter(|body| crc32fast::hash(body) == crc)
            .and_then(Counted::decode);
        let Some(record) = record else {
            if !full {
                tracing::error!(
                    path = %path.display(),
                    at,
                    "the voucher journal is damaged (a power cut under process durability?); \
                     the counts from here on are lost, the node forgoes those fees"
                );
                return Ok(Found {
                    records: out,
                    damaged_at: Some(at),
                });
            }
            return Err(X402Error::Store(format!(
                "voucher journal {}: the record at byte {at} is damaged or from a newer \
                 version; the counts in it are not in the store. Move the file aside to open \
                 the store without them (the node forgoes those fees; no payer is charged twice)",
                path.display()
            )));
        };
        out.push(record);
        at += 8 + len;
    }
    Ok(Found {
        records: out,
        damaged_at: None,
    })
}

/// Applies `records` in `tx`: each channel's `accepted` moves by what its records charged, each
/// voucher is kept (counted) for redemption, and the last record's number is noted.
fn apply(tx: &rusqlite::Transaction<'_>, records: &[Counted]) -> rusqlite::Result<()> {
    let Some(last) = records.last() else {
        return Ok(());
    };
    // Records SQLite holds already (a pass whose bookkeeping failed after its commit) are not
    // counted twice.
    let done: i64 = tx
        .prepare_cached("SELECT applied FROM voucher_journal WHERE id = 1")?
        .query_row([], |r| r.get(0))?;
    let now = super::now();
    let mut owed: HashMap<B256, U256> = HashMap::new();
    for r in records.iter().filter(|r| r.seq > done as u64) {
        *owed.entry(r.channel).or_default() += r.charged;
        tx.prepare_cached(
            "INSERT INTO vouchers (key, channel, cumulative, price, signature, state, created_at, nonce)
             VALUES (?1, ?2, ?3, ?4, ?5, 'settled', ?6, ?7)
             ON CONFLICT (key) DO UPDATE SET price = ?4, signature = ?5, state = 'settled', nonce = ?7",
        )?
        .execute(params![
            r.key.as_slice(),
            r.channel.as_slice(),
            r.cumulative.to_be_bytes::<32>().as_slice(),
            r.charged.to_string(),
            r.signature,
            now,
            r.nonce.as_slice()
        ])?;
    }
    for (channel, charged) in owed {
        let accepted: Option<String> = tx
            .prepare_cached("SELECT accepted FROM channels WHERE id = ?1")?
            .query_row([channel.as_slice()], |r| r.get(0))
            .optional()?;
        // A voucher is taken only on a channel the store holds, and channels are never
        // deleted; a missing row is left to the reads that would show it.
        let Some(accepted) = accepted else {
            tracing::error!(%channel, "a counted voucher's channel is not in the payment store");
            continue;
        };
        tx.prepare_cached("UPDATE channels SET accepted = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![
                channel.as_slice(),
                (super::u256(accepted) + charged).to_string(),
                now
            ])?;
    }
    tx.prepare_cached("UPDATE voucher_journal SET applied = max(applied, ?1) WHERE id = 1")?
        .execute([last.seq as i64])?;
    Ok(())
}

/// Opens the journal at `path` beside the store on `conn` (whose schema is in place): applies
/// the records SQLite lacks and empties the file.
pub(super) fn open(
    conn: &mut Connection,
    path: &Path,
    full: bool,
) -> Result<Arc<Shared>, X402Error> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    let Found {
        records,
        damaged_at,
    } = read_records(path, &bytes, full)?;
    let store_err = |e: rusqlite::Error| X402Error::Store(e.to_string());
    let applied: i64 = conn
        .query_row(
            "SELECT applied FROM voucher_journal WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .map_err(store_err)?;
    let applied = applied as u64;
    let last = records.last().map_or(0, |r| r.seq).max(applied);
    let missing: Vec<Counted> = records.into_iter().filter(|r| r.seq > applied).collect();
    if !missing.is_empty() {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(store_err)?;
        apply(&tx, &missing).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        tracing::info!(
            records = missing.len(),
            "voucher counts from the journal applied to the payment store"
        );
    }
    if let Some(at) = damaged_at {
        // Kept for an operator, never deleted unread.
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".damaged-at-{at}"));
        std::fs::write(&aside, &bytes).map_err(io_err(path))?;
    }
    if !bytes.is_empty() {
        // SQLite must hold them before the file lets go of them.
        if full {
            conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
                .map_err(store_err)?;
        }
        file.set_len(0).map_err(io_err(path))?;
    }
    if full && let Some(dir) = path.parent() {
        // The file's name is durable before a record in it is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(Arc::new(Shared {
        journal: Mutex::new(Journal {
            path: path.to_owned(),
            file,
            len: 0,
            next: last + 1,
            full,
            broken: None,
            waiting: Vec::new(),
            owed: HashMap::new(),
            keys: HashSet::new(),
        }),
        bell: Condvar::new(),
        weakened: std::sync::atomic::AtomicBool::new(false),
    }))
}

/// A voucher to count (its sequence number is the journal's to give).
pub(super) struct ToCount<'a> {
    pub(super) key: B256,
    pub(super) channel: B256,
    pub(super) cumulative: U256,
    pub(super) nonce: B256,
    pub(super) charged: U256,
    pub(super) signature: &'a [u8],
}

impl Journal {
    /// Appends `c` (durable as the store's counts are) and holds it until SQLite does.
    pub(super) fn append(&mut self, c: ToCount<'_>) -> Result<(), X402Error> {
        if let Some(why) = &self.broken {
            return Err(X402Error::Store(why.clone()));
        }
        if self.waiting.len() >= MAX_WAITING {
            return Err(X402Error::Store(format!(
                "{} voucher counts are waiting for the payment store, which is not taking \
                 them; retry later",
                self.waiting.len()
            )));
        }
        let record = Counted {
            seq: self.next,
            key: c.key,
            channel: c.channel,
            cumulative: c.cumulative,
            nonce: c.nonce,
            charged: c.charged,
            signature: c.signature.to_vec(),
        };
        let bytes = record.encode();
        if let Err(e) = self.file.write_all(&bytes) {
            // Whatever part was written is a torn tail to the next open, unless a later record
            // lands after it: cut it off, or take no more records.
            if let Err(cut) = self.file.set_len(self.len) {
                self.broken = Some(format!(
                    "voucher journal {}: a write failed ({e}) and its part could not be cut off \
                     ({cut}); restart the node",
                    self.path.display()
                ));
            }
            return Err(io_err(&self.path)(e));
        }
        if self.full
            && let Err(e) = self.file.sync_data()
        {
            let _ = self.file.set_len(self.len);
            let why = format!(
                "voucher journal {}: the disk refused a sync ({e}); restart the node",
                self.path.display()
            );
            self.broken = Some(why.clone());
            return Err(X402Error::Store(why));
        }
        self.len += bytes.len() as u64;
        self.next += 1;
        *self.owed.entry(record.channel).or_default() += record.charged;
        self.keys.insert(record.key);
        self.waiting.push(record);
        Ok(())
    }

    /// What channel `id`'s waiting records add to its `accepted`.
    pub(super) fn owed(&self, id: &B256) -> U256 {
        self.owed.get(id).copied().unwrap_or_default()
    }

    /// Whether voucher `key` was counted and waits for SQLite.
    pub(super) fn counted(&self, key: &B256) -> bool {
        self.keys.contains(key)
    }

    /// SQLite now holds the first `n` waiting records.
    /// Forgets the first `n` waiting records, now in SQLite; `durable`: that commit was at the
    /// store's own durability, so the file may drop them (only then is it compacted).
    fn applied(&mut self, n: usize, durable: bool) {
        for r in self.waiting.drain(..n) {
            self.keys.remove(&r.key);
            if let Some(o) = self.owed.get_mut(&r.channel) {
                *o = o.saturating_sub(r.charged);
                if o.is_zero() {
                    self.owed.remove(&r.channel);
                }
            }
        }
        if durable
            && self.len >= TRUNCATE_AT
            && let Err(e) = self.compact()
        {
            tracing::warn!(error = %e, "compacting the voucher journal; it goes on growing");
        }
    }

    /// Replaces the file by one holding only the records SQLite does not hold yet (written
    /// beside it, then renamed over it: a stop at any point leaves one whole file).
    fn compact(&mut self) -> std::io::Result<()> {
        let mut next = self.path.as_os_str().to_owned();
        next.push(".next");
        let next = PathBuf::from(next);
        let bytes: Vec<u8> = self.waiting.iter().flat_map(Counted::encode).collect();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&next)?;
        file.set_len(0)?;
        file.write_all(&bytes)?;
        if self.full {
            file.sync_data()?;
        }
        std::fs::rename(&next, &self.path)?;
        if self.full
            && let Some(dir) = self.path.parent()
        {
            File::open(dir)?.sync_all()?;
        }
        self.file = file;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

/// Moves every waiting record into SQLite, in one transaction. Called with the connection
/// held (lock order: connection, then journal).
pub(super) fn flush(conn: &mut Connection, shared: &Shared) -> Result<(), X402Error> {
    let records = shared.lock().waiting.clone();
    flush_these(conn, shared, records)
}

#[cfg(test)]
pub(super) fn flush_all_but_last(conn: &mut Connection, shared: &Shared) {
    let mut records = shared.lock().waiting.clone();
    records.pop();
    flush_these(conn, shared, records).unwrap();
}

/// Applies `records`, the first waiting ones.
fn flush_these(
    conn: &mut Connection,
    shared: &Shared,
    records: Vec<Counted>,
) -> Result<(), X402Error> {
    if shared.weakened.load(std::sync::atomic::Ordering::Acquire) {
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(|e| {
                X402Error::Store(format!(
                    "the payment store cannot wait for the disk again (synchronous = FULL: {e})"
                ))
            })?;
        shared
            .weakened
            .store(false, std::sync::atomic::Ordering::Release);
    }
    if records.is_empty() {
        return Ok(());
    }
    // Under power durability each record is on disk in the journal already, so applying it
    // need not wait for the disk too (takes wait for this connection meanwhile): a power cut
    // that undoes the transaction leaves the records for the next open to apply. Only the
    // commit after which the journal may drop applied records (compaction) waits, and it makes
    // the earlier ones durable with it (the write-ahead log is synced in order).
    let relaxed = {
        let j = shared.lock();
        j.full && j.len < TRUNCATE_AT
    };
    /// Puts the connection back to FULL however the pass ends (an error, a panic): every
    /// other write on it (exact payments, redemptions) waits for the disk.
    struct Relaxed<'a>(&'a mut Connection, bool, &'a Shared);
    impl Drop for Relaxed<'_> {
        fn drop(&mut self) {
            if self.1
                && let Err(e) = self.0.execute_batch("PRAGMA synchronous = FULL")
            {
                tracing::error!(error = %e, "payment store: restoring synchronous = FULL");
                self.2
                    .weakened
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }
    let conn = Relaxed(conn, relaxed, shared);
    if relaxed {
        conn.0
            .execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|e| X402Error::Store(format!("setting synchronous = NORMAL: {e}")))?;
    }
    let applied = conn
        .0
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .and_then(|tx| {
            apply(&tx, &records)?;
            tx.commit()
        });
    drop(conn);
    if applied.is_ok() {
        // SQLite holds them: never applied again from here, whatever happens next.
        shared.lock().applied(records.len(), !relaxed);
    }
    applied.map_err(|e| {
        X402Error::Store(format!(
            "{} counted vouchers wait in the journal and the payment store refused them \
             ({e}); the store answers once it takes them",
            records.len()
        ))
    })?;
    Ok(())
}

impl Shared {
    /// Wakes the applier.
    pub(super) fn ring(&self) {
        self.bell.notify_one();
    }
}

/// The applier: moves waiting records into SQLite soon after they arrive, until the store's
/// last clone is gone.
pub(super) fn spawn_applier(conn: Weak<cairn_sqlite::Shared>, shared: Weak<Shared>) {
    let run = move || {
        loop {
            {
                let Some(s) = shared.upgrade() else { return };
                let mut j = s.lock();
                if j.waiting.is_empty() {
                    // Checks now and then whether the store is gone.
                    j = s
                        .bell
                        .wait_timeout(j, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if j.waiting.is_empty() {
                    continue;
                }
            }
            std::thread::sleep(GATHER);
            let (Some(c), Some(s)) = (conn.upgrade(), shared.upgrade()) else {
                return;
            };
            let failed = flush(&mut c.lock(), &s).err();
            drop((c, s));
            if let Some(e) = failed {
                // Retried; the answers go on meanwhile (bounded by MAX_WAITING), and reads
                // that need SQLite say why they fail.
                tracing::error!(error = %e, "applying voucher counts to the payment store");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("cairn-voucher-apply".into())
        .spawn(run)
    {
        // Without it, every other use of the store still applies the records first.
        tracing::error!(error = %e, "starting the voucher applier");
    }
}
