//! The durable receipt log (SQLite): every receipt with its request and response payloads, the
//! payloads kept for a retention window so verifiers can fetch them.
//!
//! Appends write whatever has queued up to an append-only journal in one write (group commit),
//! on the thread of the append that finds the journal free; a response is released only after
//! its receipt is written. A thread of its own then commits the entries to SQLite (WAL mode), in
//! large transactions, off the answer path: SQLite's checkpoints never hold an answer. When the
//! log opens, whatever the journal holds that SQLite does not is indexed first. Durability is
//! the operator's choice: by default ([`Durability::Normal`]) an answered receipt survives the
//! node process dying (kill -9) but may be lost with the machine's power; [`Durability::Full`]
//! makes every group wait for the disk. Reads share one connection of their own and first wait
//! until SQLite holds every receipt answered before they began.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256};
use cairn_receipt::{Claims, CompactReceipt, ReceiptJson, ReceiptSigner, SignedReceipt};
use cairn_sqlite::Durability;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

mod batches;
mod journal;
mod writer;

pub use batches::{BatchListing, BatchState, SealedBatch};
use writer::*;
pub use writer::{Coming, LINGER};

/// Where a receipt awaiting payment stands in the order they are read in (its creation
/// second and row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AwaitingPlace(i64, i64);

/// Whether a logged receipt counts (is batched, its payloads served).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Billing {
    /// Unpaid node, or its payment settled: it is batched and its payloads are served.
    Final,
    /// Paid with a payment not settled yet: neither batched nor served until it is.
    AwaitingPayment,
    /// Its payment failed: never batched, payloads dropped.
    Void,
    /// Kept and served but not batched: a language-model receipt, which the verification
    /// network does not re-execute yet (a batch holding one would be refused, the node's honest
    /// receipts with it).
    Local,
}

impl Billing {
    fn as_str(self) -> &'static str {
        match self {
            Billing::Final => "final",
            Billing::AwaitingPayment => "awaiting_payment",
            Billing::Void => "void",
            Billing::Local => "local",
        }
    }

    /// Its byte in the journal.
    fn code(self) -> u8 {
        match self {
            Billing::Final => 0,
            Billing::AwaitingPayment => 1,
            Billing::Void => 2,
            Billing::Local => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Billing::Final,
            1 => Billing::AwaitingPayment,
            2 => Billing::Void,
            3 => Billing::Local,
            _ => return None,
        })
    }

    fn parse(s: &str) -> Self {
        match s {
            "final" => Billing::Final,
            "awaiting_payment" => Billing::AwaitingPayment,
            "local" => Billing::Local,
            _ => Billing::Void,
        }
    }
}

/// One logged inference: a row of the log, built from its receipt by [`Entry::new`].
pub struct Entry {
    id: String,
    created_at: i64,
    model: String,
    receipt: EntryReceipt,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The receipt's EIP-712 signing hash (its Merkle leaf value).
    digest: [u8; 32],
    price: String,
    billing: Billing,
    payer: Option<[u8; 20]>,
    /// The payment's reference (looked up to settle [`Billing::AwaitingPayment`]).
    payment_ref: [u8; 32],
}

/// An entry's receipt: signed already, or to be signed by the writer with the other receipts
/// of its group commit under one root ([`ReceiptSigner::sign_batch`]).
enum EntryReceipt {
    /// The receipt signed: its JSON (for the caller) and binary form (what the log keeps; a
    /// receipt without one, see [`CompactReceipt`]'s `TryFrom`, is kept as JSON text).
    Signed(ReceiptJson, Option<CompactReceipt>),
    /// Claims the writer signs in a batch.
    ToSign(Box<Claims>),
    /// Written to the journal (its JSON went to the caller): the form SQLite keeps.
    Kept(StoredReceipt),
}

impl EntryReceipt {
    fn signed(r: &SignedReceipt) -> Self {
        EntryReceipt::Signed(ReceiptJson::from(r), CompactReceipt::try_from(r).ok())
    }
}

impl EntryReceipt {
    fn claims(&self) -> Option<&Claims> {
        match self {
            EntryReceipt::Signed(..) | EntryReceipt::Kept(_) => None,
            EntryReceipt::ToSign(c) => Some(c),
        }
    }
}

/// A receipt on its way to the log.
pub enum ToLog {
    /// Signed on its own already.
    Signed(SignedReceipt),
    /// Claims the writer signs with the rest of their group commit.
    ToSign(Claims),
}

impl Entry {
    /// Bytes of its payloads.
    fn payload_bytes(&self) -> usize {
        self.input.len() + self.output.len()
    }

    /// Keeps this call's payloads as a private call's are kept: sealed to `recipients` (the
    /// verifiers; [`cairn_ohttp::sealed`]), each bound to this receipt and which payload it is;
    /// with no recipients (no verification network), not at all.
    pub fn seal_payloads(
        &mut self,
        recipients: &[cairn_ohttp::sealed::Recipient<'_>],
    ) -> Result<(), cairn_ohttp::OhttpError> {
        if recipients.is_empty() {
            self.input = Vec::new();
            self.output = Vec::new();
            return Ok(());
        }
        let caller = crate::sealing::kept_key(&self.input);
        let seal = |bytes: &[u8], output: bool| {
            cairn_ohttp::sealed::seal_payload_for(
                recipients,
                // The answer is kept for its caller too (a retried payment gets it back).
                output.then_some(&caller),
                &crate::sealing::context(&self.id, output),
                bytes,
            )
        };
        let (input, output) = (seal(&self.input, false)?, seal(&self.output, true)?);
        self.input = input;
        self.output = output;
        Ok(())
    }

    /// The row of `receipt` (its EIP-712 `digest` too): signed already, or claims the writer
    /// signs in a batch. With the payloads it binds (safetensors) and whether it counts yet;
    /// `payer`: who paid (may read the payloads with a signed request).
    pub fn new(
        receipt: ToLog,
        digest: B256,
        input: Vec<u8>,
        output: Vec<u8>,
        billing: Billing,
        payer: Option<Address>,
    ) -> Self {
        let claims = match &receipt {
            ToLog::Signed(r) => &r.claims,
            ToLog::ToSign(c) => c,
        };
        Self {
            id: claims.request_id.to_string(),
            created_at: claims.timestamp as i64,
            model: claims.model.to_string(),
            input,
            output,
            digest: digest.0,
            price: claims.price.to_string(),
            billing,
            payer: payer.map(|p| p.0.0),
            payment_ref: claims.payment_ref.0,
            receipt: match receipt {
                ToLog::Signed(r) => EntryReceipt::signed(&r),
                ToLog::ToSign(c) => EntryReceipt::ToSign(Box::new(c)),
            },
        }
    }
}

/// A stored receipt as served back.
pub struct Stored {
    /// The receipt, as stored (verify it to use it).
    pub receipt: ReceiptJson,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether the payloads are still kept.
    pub payloads: bool,
    /// The batch it was committed in, once sealed.
    pub batch: Option<BatchRef>,
    /// Whether it counts.
    pub billing: Billing,
    /// Who paid for it.
    pub payer: Option<[u8; 20]>,
}

/// Where a receipt sits in a batch.
#[derive(Clone, Debug)]
pub struct BatchRef {
    /// The batch's id on chain, once submitted.
    pub chain_batch: Option<u64>,
    /// Merkle root.
    pub root: [u8; 32],
    /// Sibling path of the receipt's leaf.
    pub proof: Vec<[u8; 32]>,
    /// Local state: sealed, submitted, finalized, voided.
    pub status: String,
    /// The submitting transaction.
    pub tx: Option<[u8; 32]>,
    /// Unix seconds it was sealed.
    pub sealed_at: i64,
}

/// An entry and where its committed receipt goes.
type Job = (Entry, oneshot::Sender<Result<ReceiptJson, String>>);

/// Handle to the log.
#[derive(Clone)]
pub struct ReceiptLog {
    /// The read connection (WAL: reads never wait behind the writer).
    reader: Arc<cairn_sqlite::Shared>,
    writer: Arc<Writer>,
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
CREATE TABLE IF NOT EXISTS batches (
    local INTEGER PRIMARY KEY AUTOINCREMENT,
    root BLOB NOT NULL,
    count INTEGER NOT NULL,
    fees TEXT NOT NULL,
    status TEXT NOT NULL,
    chain_batch INTEGER,
    tx BLOB,
    sealed_at INTEGER NOT NULL
);
";

/// Verifiers' signatures collected for a batch, until the batch is attested on chain.
const ATTESTATIONS: &str = "
CREATE TABLE IF NOT EXISTS attestations (
    chain_batch INTEGER NOT NULL,
    signer BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (chain_batch, signer)
) WITHOUT ROWID;
";

/// Columns added after the first release; added in place to an older log.
const MIGRATIONS: [(&str, &str); 8] = [
    ("digest", "ALTER TABLE receipts ADD COLUMN digest BLOB"),
    ("price", "ALTER TABLE receipts ADD COLUMN price TEXT"),
    ("batch", "ALTER TABLE receipts ADD COLUMN batch INTEGER"),
    ("proof", "ALTER TABLE receipts ADD COLUMN proof BLOB"),
    (
        "billing",
        "ALTER TABLE receipts ADD COLUMN billing TEXT NOT NULL DEFAULT 'final'",
    ),
    ("payer", "ALTER TABLE receipts ADD COLUMN payer BLOB"),
    (
        "payment_ref",
        "ALTER TABLE receipts ADD COLUMN payment_ref BLOB",
    ),
    // The receipt's binary form (`cairn_receipt::compact`), ~1/6 of its JSON; `receipt` is
    // empty where it is set. Rows written before it keep their JSON text.
    ("compact", "ALTER TABLE receipts ADD COLUMN compact BLOB"),
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let mut have = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('receipts')")?;
        for name in stmt.query_map([], |r| r.get::<_, String>(0))? {
            have.push(name?);
        }
    }
    for (column, sql) in MIGRATIONS {
        if !have.iter().any(|h| h == column) {
            conn.execute(sql, [])?;
        }
    }
    batches::migrate(conn)?;
    // Every index an insert touches is a page the commit writes (and a WAL frame a checkpoint
    // copies and syncs): an unbatched receipt is in no batch and an unpaid one has no payment,
    // so neither index holds them (`batch = ?` and `payment_ref = ?` imply IS NOT NULL, so
    // lookups still use them). An older log's full indexes are replaced once, its unpaid rows'
    // zero references cleared first so the new index does not hold them either.
    let had_full_payment_index: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'receipts_by_payment'",
        [],
        |r| r.get(0),
    )?;
    if had_full_payment_index > 0 {
        tracing::info!("receipt log: rebuilding the payment index (once)");
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             DROP INDEX receipts_by_payment;
             UPDATE receipts SET payment_ref = NULL WHERE payment_ref = zeroblob(32);
             COMMIT;",
        )?;
    }
    // The payload sweep looks for old rows that still have payloads: swept rows leave the
    // index, so a sweep never reads them again, and the batch is in it, so rows kept for an
    // open batch are skipped without reading them (the full index on created_at it replaces
    // served nothing else).
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         DROP INDEX IF EXISTS receipts_created_at;
         CREATE INDEX IF NOT EXISTS receipts_kept ON receipts (created_at, batch)
           WHERE input IS NOT NULL;
         CREATE INDEX IF NOT EXISTS receipts_unbatched ON receipts (created_at) WHERE batch IS NULL;
         DROP INDEX IF EXISTS receipts_by_batch;
         CREATE INDEX IF NOT EXISTS receipts_in_batch ON receipts (batch) WHERE batch IS NOT NULL;
         CREATE INDEX IF NOT EXISTS receipts_awaiting ON receipts (created_at)
           WHERE billing = 'awaiting_payment';
         CREATE INDEX IF NOT EXISTS receipts_paid_by ON receipts (payment_ref)
           WHERE payment_ref IS NOT NULL;
         COMMIT;",
    )
}

/// A receipt as a row holds it: its binary form (rows written since the `compact` column), or
/// its JSON text (older rows, and a receipt with no binary form). A log written by this version
/// cannot be read by an older one (its rows' `receipt` text is empty).
pub(crate) enum StoredReceipt {
    /// JSON text, as older versions wrote it.
    Json(ReceiptJson),
    /// The binary form.
    Compact(CompactReceipt),
}

impl StoredReceipt {
    /// Reads columns `receipt` and `compact` of a row.
    fn from_row(r: &rusqlite::Row<'_>, text: usize, compact: usize) -> rusqlite::Result<Self> {
        let bad = |i, e: cairn_receipt::ReceiptError| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        };
        Ok(match r.get::<_, Option<Vec<u8>>>(compact)? {
            Some(b) => StoredReceipt::Compact(CompactReceipt::from_bytes(b)),
            None => {
                StoredReceipt::Json(ReceiptJson::from_text(r.get(text)?).map_err(|e| bad(text, e))?)
            }
        })
    }

    /// The JSON form (rendered, not checked: whoever reads it verifies it).
    pub(crate) fn json(self) -> Result<ReceiptJson, cairn_receipt::ReceiptError> {
        match self {
            StoredReceipt::Json(j) => Ok(j),
            StoredReceipt::Compact(c) => c.to_json(),
        }
    }

    /// The binary form, when the row holds it.
    pub(crate) fn compact(&self) -> Option<&CompactReceipt> {
        match self {
            StoredReceipt::Json(_) => None,
            StoredReceipt::Compact(c) => Some(c),
        }
    }
}

/// [`StoredReceipt::from_row`] as JSON.
fn row_json(r: &rusqlite::Row<'_>, text: usize, compact: usize) -> rusqlite::Result<ReceiptJson> {
    StoredReceipt::from_row(r, text, compact)?
        .json()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                compact,
                rusqlite::types::Type::Blob,
                Box::new(e),
            )
        })
}

/// What the receipt log can fail with. None of it is the caller's fault: the node answers 500.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// SQLite refused a statement (disk full, corrupt file, schema drift).
    #[error("receipt log: {0}")]
    Db(#[from] rusqlite::Error),
    /// The group commit that held the entry stopped before it answered (a bug, or the runtime
    /// shutting down).
    #[error("the receipt log writer stopped")]
    WriterStopped,
    /// The writer could not keep the group this entry was in, or SQLite does not hold what
    /// was answered yet (the index is behind its journal).
    #[error("receipt log write failed: {0}")]
    WriteFailed(String),
    /// A blocking task or thread could not run.
    #[error("receipt log task: {0}")]
    Task(String),
    /// The journal could not be read or started.
    #[error("{0}")]
    Journal(String),
}

impl LogError {
    /// Adds what an operator can do.
    fn with_hint(self, hint: &str) -> Self {
        LogError::Journal(format!("{self}; {hint}"))
    }
}

impl From<tokio::task::JoinError> for LogError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(e.to_string())
    }
}

impl ReceiptLog {
    /// Lets the index threads gather entries into larger commits (a read that waits for the
    /// index still gets it at once), those while `busy` says no more than one request is
    /// served at the lowest CPU priority ([`writer::Shift`]). Set once; a log without it
    /// commits each entry as it comes.
    pub fn gather(&self, busy: impl Fn() -> bool + Send + Sync + 'static) -> Result<(), LogError> {
        if self.writer.busy.set(Box::new(busy)).is_err() {
            return Ok(());
        }
        let weak = Arc::downgrade(&self.writer);
        std::thread::Builder::new()
            .name("cairn-receipt-quiet".into())
            .spawn(move || indexer(weak, writer::Shift::Quiet))
            .map(drop)
            .map_err(|e| LogError::Task(e.to_string()))
    }

    /// Sets how long a group of batch-sealed entries waits at most for those on their way
    /// ([`writer::LINGER`] by default; zero: never).
    pub fn linger(&self, linger: Duration) {
        self.writer.set_linger(linger.min(writer::MAX_LINGER));
    }

    /// A batch-sealed request admitted, on its way to the log: a group of batch-sealed entries
    /// waits for it ([`writer::LINGER`] at most) so that one signature covers them all, until
    /// the guard goes with its entry ([`Self::append_coming`]) or is dropped.
    pub fn coming(&self) -> Coming {
        self.writer.coming()
    }

    /// Opens (creating) the log at `path`: group commits sign their batch-sealed receipts with
    /// `sealer` (one signature per group); a sweep thread drops payloads older than
    /// `retention` once nothing can still ask for them (with `settles`: only receipts whose
    /// batch is final).
    pub async fn open(
        path: &Path,
        retention: Duration,
        durability: Durability,
        settles: bool,
        sealer: Option<ReceiptSigner>,
    ) -> Result<Self, LogError> {
        // The journal's lock first: a second node on the same data directory is refused before
        // it changes anything (a migration under the running node's feet).
        let dir = path.with_extension("journal");
        let lock_file = journal::lock(&dir)?;
        let mut conn = cairn_sqlite::open(path, durability)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        conn.execute_batch(ATTESTATIONS)?;
        let journal = recover(&mut conn, &dir, durability)?;
        let writer = Arc::new(Writer::new(
            conn,
            journal,
            lock_file,
            sealer,
            durability,
            tokio::runtime::Handle::current(),
        ));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| LogError::Task(e.to_string()))
        };
        let weak = Arc::downgrade(&writer);
        spawn(
            "cairn-receipt-index",
            Box::new(move || indexer(weak, writer::Shift::Main)),
        )?;
        let weak = Arc::downgrade(&writer);
        spawn(
            "cairn-receipt-sweep",
            Box::new(move || sweeper(weak, retention, settles)),
        )?;
        let reader = Arc::new(cairn_sqlite::Shared::new(cairn_sqlite::open(
            path,
            Durability::Full,
        )?));
        Ok(Self { reader, writer })
    }

    /// Appends an entry; returns its receipt once it is written to the journal (as durable as
    /// the log's durability; SQLite takes it a moment later, before any read that follows).
    pub async fn append(&self, entry: Entry) -> Result<ReceiptJson, LogError> {
        self.append_coming(entry, None).await
    }

    /// [`Self::append`] of the entry `coming` ([`Self::coming`]) announced.
    pub async fn append_coming(
        &self,
        entry: Entry,
        coming: Option<Coming>,
    ) -> Result<ReceiptJson, LogError> {
        let (done, wait) = oneshot::channel();
        self.writer.append((entry, done), coming);
        wait.await
            .map_err(|_| LogError::WriterStopped)?
            .map_err(|e| LogError::WriteFailed(e.to_string()))
    }

    /// Runs `f` on the write connection, off the async workers, its commits waiting for the
    /// disk whatever the log's durability (settlement state, such as a batch sealed before its
    /// root is sent, must survive a power cut). Every write that is not an append goes here, so
    /// a commit never waits for another connection's write lock (SQLite's busy wait would hold
    /// the async worker committing).
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LogError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || writer.with_conn(Durability::Full, f)).await?
    }

    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LogError> {
        let (reader, writer) = (self.reader.clone(), self.writer.clone());
        let seq = writer.appended();
        tokio::task::spawn_blocking(move || {
            writer.wait_indexed(seq)?;
            Ok(f(&reader.lock())?)
        })
        .await?
    }

    /// A receipt by id.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, LogError> {
        let id = id.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT r.receipt, r.created_at, r.input IS NOT NULL, r.proof, b.root, b.status,
                        b.chain_batch, b.tx, b.sealed_at, r.billing, r.payer, r.compact
                 FROM receipts r LEFT JOIN batches b ON b.local = r.batch WHERE r.id = ?1",
                params![id],
                |r| {
                    let root: Option<Vec<u8>> = r.get(4)?;
                    let batch = match root {
                        Some(root) => Some(BatchRef {
                            root: to32(&root),
                            proof: r
                                .get::<_, Option<Vec<u8>>>(3)?
                                .unwrap_or_default()
                                .chunks_exact(32)
                                .map(to32)
                                .collect(),
                            status: r.get(5)?,
                            chain_batch: r.get::<_, Option<i64>>(6)?.map(|n| n as u64),
                            tx: r.get::<_, Option<Vec<u8>>>(7)?.map(|t| to32(&t)),
                            sealed_at: r.get(8)?,
                        }),
                        None => None,
                    };
                    Ok(Stored {
                        receipt: row_json(r, 0, 11)?,
                        created_at: r.get(1)?,
                        payloads: r.get(2)?,
                        batch,
                        billing: Billing::parse(&r.get::<_, String>(9)?),
                        payer: r
                            .get::<_, Option<Vec<u8>>>(10)?
                            .and_then(|p| p.try_into().ok()),
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// A kept payload (`input` or `output`) as safetensors, of a receipt that counts.
    pub async fn payload(&self, id: &str, output: bool) -> Result<Option<Vec<u8>>, LogError> {
        let id = id.to_owned();
        let sql = if output {
            "SELECT output FROM receipts WHERE id = ?1 AND billing IN ('final', 'local')"
        } else {
            "SELECT input FROM receipts WHERE id = ?1 AND billing IN ('final', 'local')"
        };
        self.read(move |c| {
            c.query_row(sql, params![id], |r| r.get::<_, Option<Vec<u8>>>(0))
                .optional()
                .map(Option::flatten)
        })
        .await
    }

    /// The receipt (JSON) and kept output of the request paid by `payment_ref`, unless its
    /// payment failed.
    pub async fn by_payment(
        &self,
        payment_ref: B256,
    ) -> Result<Option<(ReceiptJson, Vec<u8>)>, LogError> {
        // No payment is no reference: nothing was paid by it.
        if payment_ref == B256::ZERO {
            return Ok(None);
        }
        self.read(move |c| {
            c.query_row(
                "SELECT receipt, output, compact FROM receipts
                 WHERE payment_ref = ?1 AND billing != 'void' AND output IS NOT NULL LIMIT 1",
                params![payment_ref.as_slice()],
                |r| Ok((row_json(r, 0, 2)?, r.get(1)?)),
            )
            .optional()
        })
        .await
    }

    /// Receipts waiting for their payment to settle: (id, payment reference), oldest first.
    pub async fn awaiting_payment(&self, limit: usize) -> Result<Vec<(String, B256)>, LogError> {
        Ok(self
            .awaiting_payment_after(limit, None)
            .await?
            .into_iter()
            .map(|(_, id, p)| (id, p))
            .collect())
    }

    /// As [`Self::awaiting_payment`], after `after` (the place of the last of an earlier read):
    /// (place, id, payment reference). Read after read, a reader passes receipts whose payments
    /// are still open instead of reading them again.
    pub async fn awaiting_payment_after(
        &self,
        limit: usize,
        after: Option<AwaitingPlace>,
    ) -> Result<Vec<(AwaitingPlace, String, B256)>, LogError> {
        let (at, row) = after.map_or((i64::MIN, i64::MIN), |p| (p.0, p.1));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT created_at, rowid, id, payment_ref FROM receipts
                 WHERE billing = 'awaiting_payment' AND (created_at, rowid) > (?2, ?3)
                 ORDER BY created_at, rowid LIMIT ?1",
            )?;
            stmt.query_map(params![limit as i64, at, row], |r| {
                let p: Option<Vec<u8>> = r.get(3)?;
                Ok((
                    AwaitingPlace(r.get(0)?, r.get(1)?),
                    r.get(2)?,
                    B256::from(to32(&p.unwrap_or_default())),
                ))
            })?
            .collect()
        })
        .await
    }

    /// Settles the billing of receipts whose payments resolved: `Final` ones become batchable,
    /// `Void` ones lose their payloads at once (no output without payment).
    pub async fn resolve_billing(&self, outcomes: Vec<(String, Billing)>) -> Result<(), LogError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.write(move |c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut fin = tx.prepare_cached(
                    "UPDATE receipts SET billing = 'final' WHERE id = ?1 AND billing = 'awaiting_payment'",
                )?;
                let mut void = tx.prepare_cached(
                    "UPDATE receipts SET billing = 'void', input = NULL, output = NULL
                     WHERE id = ?1 AND billing = 'awaiting_payment'",
                )?;
                for (id, b) in &outcomes {
                    match b {
                        Billing::Final => fin.execute(params![id])?,
                        Billing::Void => void.execute(params![id])?,
                        Billing::AwaitingPayment | Billing::Local => 0,
                    };
                }
            }
            tx.commit()
        })
        .await
    }

    /// Number of receipts.
    pub async fn count(&self) -> Result<i64, LogError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM receipts", [], |r| r.get(0)))
            .await
    }
}

/// Commits to SQLite whatever the journal in `dir` holds that it does not (entries answered
/// before the process stopped), removes the segments read, and starts the next one.
fn recover(
    conn: &mut Connection,
    dir: &Path,
    durability: Durability,
) -> Result<journal::Journal, LogError> {
    let segments = journal::segments(dir)?;
    let mut rows: Vec<Entry> = Vec::new();
    let mut indexed = 0usize;
    let mut damaged = Vec::new();
    for (_, path) in &segments {
        let mut flush = |conn: &mut Connection, rows: &mut Vec<Entry>| -> Result<(), LogError> {
            commit(conn, rows.iter())?;
            indexed += rows.len();
            rows.clear();
            Ok(())
        };
        // In journal order, each entry SQLite does not hold yet (a receipt id is 32 random
        // bytes: one SQLite holds is this very entry, indexed before the process stopped).
        let replayed = journal::replay(path, |entry| {
            let held = conn
                .prepare_cached("SELECT 1 FROM receipts WHERE id = ?1")?
                .exists(params![entry.id])?;
            if !held {
                rows.push(entry);
                if rows.len() >= 1024 {
                    flush(conn, &mut rows)?;
                }
            }
            Ok(())
        })?;
        if !rows.is_empty() {
            flush(conn, &mut rows)?;
        }
        if replayed.damaged {
            damaged.push(path.clone());
        }
    }
    if indexed > 0 {
        tracing::info!(
            entries = indexed,
            "receipt log: indexed what the journal held"
        );
        // On the disk before the segments go, whatever the log's durability.
        conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
    }
    for (_, path) in &segments {
        if damaged.contains(path) {
            let mut aside = path.clone().into_os_string();
            aside.push(".damaged");
            if let Err(e) = std::fs::rename(path, &aside) {
                tracing::error!(error = %e, path = %path.display(), "receipt journal: setting a damaged segment aside");
            }
        } else {
            journal::remove(path);
        }
    }
    let next = segments.last().map_or(1, |s| s.0 + 1);
    Ok(journal::Journal::create(dir, next, durability)?)
}

pub(crate) fn to32(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = b.len().min(32);
    out[..n].copy_from_slice(&b[..n]);
    out
}

#[cfg(test)]
mod tests;
