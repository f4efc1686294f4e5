//! The durable payment store: every payment the node or facilitator has seen, keyed by the
//! authorization it spends, and every prepaid channel's accepted voucher.
//!
//! A payment is *reserved* (one SQLite transaction) before anything runs, so the same
//! authorization presented twice, in sequence or in parallel, finds the first reservation.
//!
//! A prepaid channel counts what its payer owes in `accepted` (requests that succeeded) and
//! `pending` (requests running now, at their most). A voucher for a request that costs at most
//! `p` is taken when its cumulative amount is exactly `accepted + pending + p`; the request's
//! success moves what it was charged (`p`, or less for a call charged per token) to accepted,
//! frees the rest, and keeps the voucher with its signature; its failure gives `p` back. A
//! voucher is a ceiling: the node claims `accepted` with its largest kept voucher, which is
//! never below it (the last request counted promised everything counted before it, and at
//! most as much as was then in flight), so a failed request or an unused maximum is never
//! charged.
//!
//! Taken vouchers live in memory only: a voucher whose request is still running when the
//! process stops is given back anyway, so writing it down would protect nothing. That makes
//! the process the file's only user (it is opened with an exclusive lock), and the one write
//! on a voucher's hot path is its count.
//!
//! A counted voucher goes to SQLite through the [`journal`]: the answer path appends one record
//! to a file, and a thread of its own applies the records to SQLite, many to a transaction.
//!
//! What survives what: `exact` reservations and their states, channel refreshes and redemptions
//! are fsynced (`synchronous=FULL`): an `exact` authorization must not be usable twice after a
//! power cut. A voucher's count follows the store's [`Durability`](cairn_sqlite::Durability):
//! `Full` fsyncs it before the answer leaves; `Normal` survives the process dying, and a power
//! cut may forget the last counts, whose vouchers are then given back (the node forgoes those
//! fees; a payer is never charged twice).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use alloy_primitives::{Address, B256, U256};
use rusqlite::{Connection, OptionalExtension, params};

use crate::X402Error;

mod channels;
mod journal;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    key        BLOB PRIMARY KEY,  -- keccak(token, payer, nonce) (exact)
    chain      INTEGER NOT NULL,
    scheme     TEXT NOT NULL,
    payer      BLOB NOT NULL,
    amount     TEXT NOT NULL,
    state      TEXT NOT NULL,     -- reserved | pending | settled | failed | released
    resource   TEXT NOT NULL,
    payload    TEXT NOT NULL,     -- the scheme payload, for reconciliation
    tx         TEXT,
    reason     TEXT,
    response   BLOB,              -- a withheld response while settlement is pending
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_open ON payments (state) WHERE state IN ('reserved', 'pending');
CREATE TABLE IF NOT EXISTS channels (
    id         BLOB PRIMARY KEY,  -- the escrow's channel id
    chain      INTEGER NOT NULL,
    payer      BLOB NOT NULL,
    payee      BLOB NOT NULL,
    salt       BLOB NOT NULL,
    deposited  TEXT NOT NULL,     -- as last read from the chain
    closing    INTEGER NOT NULL,  -- the payer asked for a withdrawal: no more vouchers
    accepted   TEXT NOT NULL,     -- highest cumulative voucher accepted
    signature  BLOB,              -- its signature
    redeemed   TEXT NOT NULL,     -- claimed on chain
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vouchers (
    key        BLOB PRIMARY KEY,  -- its payment reference: keccak(channel, cumulative, nonce)
    channel    BLOB NOT NULL,
    cumulative BLOB NOT NULL,     -- 32 bytes big-endian, so BLOB order is numeric order
    price      TEXT NOT NULL,
    signature  BLOB NOT NULL,
    state      TEXT NOT NULL,     -- reserved | settled | released
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vouchers_by_channel ON vouchers (channel, state, cumulative);
CREATE TABLE IF NOT EXISTS gas_turns (
    channel    BLOB PRIMARY KEY,  -- a batch-settlement channel
    charged    TEXT NOT NULL,     -- its charges when the node last sent a transaction for it at its own gas
    previous   TEXT,              -- the same before that one (given back if it never went out)
    updated_at INTEGER NOT NULL
);
";

/// A payment's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentState {
    /// Verified and held while the request runs.
    Reserved,
    /// A settlement transaction may be out; not confirmed yet.
    Pending,
    /// Paid.
    Settled,
    /// Settlement failed; the output was withheld.
    Failed,
    /// The request failed before settlement; the authorization was never used.
    Released,
}

impl PaymentState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Pending => "pending",
            Self::Settled => "settled",
            Self::Failed => "failed",
            Self::Released => "released",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "reserved" => Self::Reserved,
            "pending" => Self::Pending,
            "settled" => Self::Settled,
            "released" => Self::Released,
            _ => Self::Failed,
        }
    }
}

/// What the store holds about one payment.
#[derive(Clone, Debug)]
pub struct PaymentRecord {
    /// Its key.
    pub key: B256,
    /// Scheme.
    pub scheme: String,
    /// Payer.
    pub payer: Address,
    /// Amount.
    pub amount: U256,
    /// State.
    pub state: PaymentState,
    /// The resource it paid for.
    pub resource: String,
    /// The scheme payload (JSON).
    pub payload: String,
    /// Settlement transaction, when known.
    pub tx: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// The withheld response (status, headers JSON, body) while pending.
    pub response: Option<Vec<u8>>,
    /// A block at or before the one that may hold its transfer (where to look for it).
    pub from_block: Option<u64>,
}

/// A new payment to reserve.
pub struct NewPayment<'a> {
    /// Its key.
    pub key: B256,
    /// Chain id.
    pub chain: u64,
    /// Scheme.
    pub scheme: &'a str,
    /// Payer.
    pub payer: Address,
    /// Amount.
    pub amount: U256,
    /// The resource.
    pub resource: &'a str,
    /// The scheme payload (JSON).
    pub payload: &'a str,
    /// A block at or before any use of it the checks did not see.
    pub from_block: u64,
}

/// A prepaid channel as the node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The escrow's channel id.
    pub id: B256,
    /// Payer.
    pub payer: Address,
    /// Payee.
    pub payee: Address,
    /// The payer's salt.
    pub salt: B256,
    /// Deposited, as last read from the chain.
    pub deposited: U256,
    /// The payer asked for a withdrawal.
    pub closing: bool,
    /// What the payer owes for requests that succeeded (cumulative, from the channel's start).
    pub accepted: U256,
    /// What requests running now will add when they succeed.
    pub pending: U256,
    /// Claimed on chain.
    pub redeemed: U256,
}

/// How a payment ended, as far as the store knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Settled (exact) or counted (prepaid): its receipt is billable.
    Paid,
    /// Failed or given back: its receipt must never be billed or served.
    Failed,
    /// Still running or settling.
    Open,
}

/// The store (SQLite, WAL). Cheap to clone.
#[derive(Clone)]
pub struct PaymentStore {
    conn: Arc<cairn_sqlite::Shared>,
    counts: cairn_sqlite::Durability,
    /// Vouchers taken for requests running now. Lock order: this, then `conn`, then
    /// `journal`.
    taken: Arc<Mutex<Taken>>,
    /// Counted vouchers SQLite does not hold yet ([`journal`]).
    journal: Arc<journal::Shared>,
}

/// Vouchers whose requests are running.
#[derive(Default)]
struct Taken {
    vouchers: HashMap<B256, TakenVoucher>,
    /// Per channel, the sum of its taken vouchers' prices (the most each may be charged).
    pending: HashMap<B256, U256>,
    /// Channels held shut to new vouchers (a cooperative refund on its way, or one whose
    /// outcome is not known yet).
    locked: std::collections::HashSet<B256>,
}

#[derive(Clone)]
struct TakenVoucher {
    channel: B256,
    cumulative: U256,
    nonce: B256,
    price: U256,
    signature: Vec<u8>,
}

fn now() -> i64 {
    cairn_core::clock::now_secs() as i64
}

fn store_err(e: rusqlite::Error) -> X402Error {
    X402Error::Store(e.to_string())
}

fn u256(s: String) -> U256 {
    U256::from_str_radix(&s, 10).unwrap_or_default()
}

/// Why a reservation was refused.
#[derive(Debug)]
pub enum Reserve {
    /// Reserved now.
    Reserved,
    /// The payment was seen before.
    Seen(Box<PaymentRecord>),
}

impl PaymentStore {
    /// Opens (or creates) the store at `path`; counted vouchers survive `counts` (see the
    /// module's doc for what the other steps survive).
    pub fn open(path: &Path, counts: cairn_sqlite::Durability) -> Result<Self, X402Error> {
        let store = Self::open_unapplied(path, counts)?;
        journal::spawn_applier(Arc::downgrade(&store.conn), Arc::downgrade(&store.journal));
        Ok(store)
    }

    /// The voucher journal beside the store at `path`.
    pub(crate) fn journal_path(path: &Path) -> std::path::PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push("-vouchers");
        p.into()
    }

    /// [`PaymentStore::open`] without the thread that moves counted vouchers into SQLite (every
    /// other use of the connection still does it first).
    pub(crate) fn open_unapplied(
        path: &Path,
        counts: cairn_sqlite::Durability,
    ) -> Result<Self, X402Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| X402Error::Store(format!("{}: {e}", dir.display())))?;
        }
        // Commits follow `counts`; the steps that must survive power loss whatever `counts` is
        // say so (`durable`).
        let busy = |e: rusqlite::Error| {
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
                X402Error::Store(format!(
                    "{} is in use by another process (is another node running on this data \
                     directory?); stop it first",
                    path.display()
                ))
            } else {
                store_err(e)
            }
        };
        let mut conn = cairn_sqlite::open_exclusive(path, counts).map_err(busy)?;
        conn.execute_batch(SCHEMA).map_err(busy)?;
        conn.execute_batch(journal::SCHEMA).map_err(store_err)?;
        let have: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('channels')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(store_err)?;
        let have_payments: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('payments')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(store_err)?;
        let have_vouchers: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('vouchers')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(store_err)?;
        // Vouchers before nonces: kept readable, never redeemable against an escrow that
        // signs nonces (their zero nonce fails the signature, the payer is not charged).
        if !have_vouchers.iter().any(|c| c == "nonce") {
            conn.execute(
                "ALTER TABLE vouchers ADD COLUMN nonce BLOB NOT NULL DEFAULT x''",
                [],
            )
            .map_err(store_err)?;
        }
        if !have_payments.iter().any(|c| c == "from_block") {
            conn.execute("ALTER TABLE payments ADD COLUMN from_block INTEGER", [])
                .map_err(store_err)?;
        }
        // A channel of the x402 `batch-settlement` contract keeps its whole config (ABI
        // encoded) to claim with; a prepaid (Escrow) channel has none.
        if !have.iter().any(|c| c == "config") {
            conn.execute("ALTER TABLE channels ADD COLUMN config BLOB", [])
                .map_err(store_err)?;
        }
        if !have.iter().any(|c| c == "pending") {
            conn.execute(
                "ALTER TABLE channels ADD COLUMN pending TEXT NOT NULL DEFAULT '0'",
                [],
            )
            .map_err(store_err)?;
        }
        // Requests that were running when the process stopped did not answer: give their
        // payments (and vouchers an earlier version kept while taken) back. An exact payment
        // is marked pending before its transfer is sent, so one still reserved never had a
        // transfer out.
        conn.execute_batch(
            "UPDATE vouchers SET state = 'released' WHERE state = 'reserved';
             UPDATE channels SET pending = '0';
             UPDATE payments SET state = 'released',
                    reason = 'the process stopped before this payment was settled'
              WHERE state = 'reserved';",
        )
        .map_err(store_err)?;
        let journal = journal::open(
            &mut conn,
            &Self::journal_path(path),
            counts == cairn_sqlite::Durability::Full,
        )?;
        Ok(Self {
            conn: Arc::new(cairn_sqlite::Shared::new(conn)),
            counts,
            taken: Arc::default(),
            journal,
        })
    }

    fn taken(&self) -> MutexGuard<'_, Taken> {
        // The map is consistent between statements: a panic cannot leave half an update.
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many counted vouchers SQLite holds, read without moving the journal's records in.
    #[cfg(test)]
    pub(crate) fn applied_vouchers(&self) -> i64 {
        self.conn
            .lock()
            .query_row(
                "SELECT count(*) FROM vouchers WHERE state = 'settled'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Applies every waiting count but the last, as an applier pass does when a count arrives
    /// during its transaction.
    #[cfg(test)]
    pub(crate) fn flush_all_but_last(&self) {
        let mut c = self.conn.lock();
        journal::flush_all_but_last(&mut c, &self.journal);
    }

    /// The connection's `synchronous` level now (1 is `NORMAL`, 2 is `FULL`).
    #[cfg(test)]
    pub(crate) fn synchronous(&self) -> i64 {
        self.conn
            .lock()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    }

    /// Runs `f` on the connection, once SQLite holds every counted voucher.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, X402Error> {
        let mut c = self.conn.lock();
        journal::flush(&mut c, &self.journal)?;
        f(&mut c).map_err(store_err)
    }

    /// Runs `f` with its commits waiting for the disk, whatever the store's durability.
    pub(crate) fn durable<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, X402Error> {
        if self.counts == cairn_sqlite::Durability::Full {
            return self.with(f);
        }
        let mut c = self.conn.lock();
        c.execute_batch("PRAGMA synchronous = FULL")
            .map_err(store_err)?;
        let out = journal::flush(&mut c, &self.journal).and_then(|()| f(&mut c).map_err(store_err));
        // Back to the store's level; a failure here leaves the connection safer, not weaker.
        let _ = c.execute_batch("PRAGMA synchronous = NORMAL");
        out
    }

    /// Makes every count so far survive power loss (a checkpoint syncs the write-ahead log
    /// first); a no-op under power durability, where each count's journal record is on disk
    /// before its answer (a power cut leaves it for the next open to apply). Called before counts are
    /// billed or redeemed, so nothing is billed or redeemed on a count a power cut could undo.
    pub fn sync(&self) -> Result<(), X402Error> {
        if self.counts == cairn_sqlite::Durability::Full {
            return Ok(());
        }
        let busy = self
            .with(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)))?;
        // The store has one connection, so nothing should hold the checkpoint back; if
        // something did, the counts are not known to be on disk.
        if busy != 0 {
            return Err(X402Error::Store(
                "the payment store's checkpoint was held back; counts not yet synced".into(),
            ));
        }
        Ok(())
    }

    /// The payment `key` if it was seen before, as [`PaymentStore::reserve`] counts it: any
    /// record but a `released` one. Reads only.
    pub fn seen(&self, key: B256) -> Result<Option<PaymentRecord>, X402Error> {
        Ok(self.get(key)?.filter(seen_before))
    }

    /// Reserves a payment, unless its key was seen before. A `released` payment (its request
    /// failed, the authorization was never used) can be reserved again.
    pub fn reserve(&self, p: &NewPayment<'_>) -> Result<Reserve, X402Error> {
        let seen = self.durable(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(r) = get(&tx, p.key)?.filter(seen_before) {
                tx.commit()?;
                return Ok(Some(r));
            }
            tx.prepare_cached(
                "INSERT INTO payments (key, chain, scheme, payer, amount, state, resource, payload, created_at, updated_at, from_block)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'reserved', ?6, ?7, ?8, ?8, ?9)
                 ON CONFLICT (key) DO UPDATE SET state = 'reserved', resource = ?6, payload = ?7, updated_at = ?8,
                                                 from_block = ?9",
            )?
            .execute(params![
                    p.key.as_slice(),
                    p.chain as i64,
                    p.scheme,
                    p.payer.as_slice(),
                    p.amount.to_string(),
                    p.resource,
                    p.payload,
                    now(),
                    p.from_block as i64
                ])?;
            tx.commit()?;
            Ok(None)
        })?;
        Ok(match seen {
            Some(r) => Reserve::Seen(Box::new(r)),
            None => Reserve::Reserved,
        })
    }

    /// Moves a payment to `state` with its transaction, reason and withheld response.
    pub fn set_state(
        &self,
        key: B256,
        state: PaymentState,
        tx: Option<&str>,
        reason: Option<&str>,
        response: Option<&[u8]>,
    ) -> Result<(), X402Error> {
        self.durable(|c| {
            c.prepare_cached(
                "UPDATE payments SET state = ?2, tx = COALESCE(?3, tx), reason = ?4, response = ?5, updated_at = ?6 WHERE key = ?1",
            )?
            .execute(params![key.as_slice(), state.as_str(), tx, reason, response, now()])
            .map(drop)
        })
    }

    /// Marks a reserved payment pending before its transfer is sent (fsynced), with the answer
    /// withheld meanwhile. Where its transfer is searched from was set at `reserve`.
    pub fn mark_pending(&self, key: B256, withheld: Option<&[u8]>) -> Result<(), X402Error> {
        self.durable(|c| {
            c.prepare_cached(
                "UPDATE payments SET state = 'pending', reason = NULL, response = ?2,
                        updated_at = ?3 WHERE key = ?1",
            )?
            .execute(params![key.as_slice(), withheld, now()])
            .map(drop)
        })
    }

    /// Gives a reserved payment back (its request failed or was refused before settlement: the
    /// authorization was never used, so it may be presented again). A store failure is logged:
    /// the payment then stays reserved and the payer signs a new one.
    /// Only a payment still reserved is given back: one whose settlement was sent (pending) or
    /// recorded stays as it is, whoever drops it.
    pub fn release(&self, key: B256, why: Option<&str>) {
        let released = self.durable(|c| {
            c.prepare_cached(
                "UPDATE payments SET state = 'released', reason = ?2, response = NULL, updated_at = ?3
                 WHERE key = ?1 AND state = 'reserved'",
            )?
            .execute(params![key.as_slice(), why, now()])
            .map(drop)
        });
        if let Err(e) = released {
            tracing::error!(%key, error = %e, "releasing a payment");
        }
    }

    /// One payment.
    pub fn get(&self, key: B256) -> Result<Option<PaymentRecord>, X402Error> {
        self.with(|c| get(c, key))
    }

    /// Payments still pending settlement (for the reconciler).
    pub fn pending(&self) -> Result<Vec<PaymentRecord>, X402Error> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM payments WHERE state = 'pending' ORDER BY created_at LIMIT 1000"
            ))?;
            stmt.query_map([], row)?.collect()
        })
    }

    /// How the payment with reference `key` (an `exact` key or a voucher's reference) ended.
    pub fn outcome(&self, key: B256) -> Result<Outcome, X402Error> {
        let taken = self.taken();
        if taken.vouchers.contains_key(&key) {
            return Ok(Outcome::Open);
        }
        self.with(|c| {
            let state: Option<String> = c
                .prepare_cached("SELECT state FROM payments WHERE key = ?1")?
                .query_row([key.as_slice()], |r| r.get(0))
                .optional()?;
            let state = match state {
                Some(s) => Some(s),
                None => c
                    .prepare_cached("SELECT state FROM vouchers WHERE key = ?1")?
                    .query_row([key.as_slice()], |r| r.get(0))
                    .optional()?,
            };
            Ok(match state.as_deref() {
                Some("settled") => Outcome::Paid,
                Some("reserved" | "pending") => Outcome::Open,
                _ => Outcome::Failed,
            })
        })
    }

    /// How many payments are in each state.
    pub fn counts(&self) -> Result<Vec<(String, i64)>, X402Error> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT state, COUNT(*) FROM payments GROUP BY state ORDER BY state")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    // ---- prepaid channels ----
}

/// Why a voucher was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoucherRefusal {
    /// The node has not seen the channel.
    UnknownChannel,
    /// The payer asked for a withdrawal.
    Closing,
    /// The voucher promises more than was deposited.
    OverDeposit {
        /// The deposit.
        deposited: U256,
    },
    /// The voucher is not what is owed and in flight plus the price.
    NotNext {
        /// Owed and in flight so far.
        owed: U256,
    },
    /// This very voucher was already taken.
    AlreadyUsed,
    /// The channel is held shut while something settles on it (a cooperative refund).
    Locked,
}

const COLUMNS: &str =
    "key, scheme, payer, amount, state, resource, payload, tx, reason, response, from_block";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PaymentRecord> {
    let key: Vec<u8> = r.get(0)?;
    let payer: Vec<u8> = r.get(2)?;
    let state: String = r.get(4)?;
    Ok(PaymentRecord {
        key: B256::try_from(key.as_slice()).unwrap_or_default(),
        scheme: r.get(1)?,
        payer: Address::try_from(payer.as_slice()).unwrap_or_default(),
        amount: u256(r.get(3)?),
        state: PaymentState::parse(&state),
        resource: r.get(5)?,
        payload: r.get(6)?,
        tx: r.get(7)?,
        reason: r.get(8)?,
        response: r.get(9)?,
        from_block: r.get::<_, Option<i64>>(10)?.map(|b| b.max(0) as u64),
    })
}

fn get(c: &Connection, key: B256) -> rusqlite::Result<Option<PaymentRecord>> {
    c.prepare_cached(
        "SELECT key, scheme, payer, amount, state, resource, payload, tx, reason, response,
                from_block
         FROM payments WHERE key = ?1",
    )?
    .query_row([key.as_slice()], row)
    .optional()
}

const CHANNEL_COLUMNS: &str =
    "id, payer, payee, salt, deposited, closing, accepted, pending, redeemed";

fn channel_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChannelRecord> {
    let b = |i: usize| -> rusqlite::Result<Vec<u8>> { r.get(i) };
    Ok(ChannelRecord {
        id: B256::try_from(b(0)?.as_slice()).unwrap_or_default(),
        payer: Address::try_from(b(1)?.as_slice()).unwrap_or_default(),
        payee: Address::try_from(b(2)?.as_slice()).unwrap_or_default(),
        salt: B256::try_from(b(3)?.as_slice()).unwrap_or_default(),
        deposited: u256(r.get(4)?),
        closing: r.get(5)?,
        accepted: u256(r.get(6)?),
        pending: u256(r.get(7)?),
        redeemed: u256(r.get(8)?),
    })
}

fn channel(c: &Connection, id: B256) -> rusqlite::Result<Option<ChannelRecord>> {
    c.prepare_cached(
        "SELECT id, payer, payee, salt, deposited, closing, accepted, pending, redeemed
         FROM channels WHERE id = ?1",
    )?
    .query_row([id.as_slice()], channel_row)
    .optional()
}

/// Whether a stored payment counts as seen: anything but released (a released one's request
/// failed and its authorization was never used).
fn seen_before(r: &PaymentRecord) -> bool {
    r.state != PaymentState::Released
}
