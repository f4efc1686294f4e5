//! The index: what the follower read, in SQLite or PostgreSQL (sqlx `Any`, one SQL text for
//! both, as the hub's catalog does). Chain events are kept as they were emitted and everything
//! about a batch is derived from them at query time, so a reorganization is undone by deleting
//! the rows above the common ancestor.

use std::str::FromStr;

use alloy_primitives::B256;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Executor, Row};

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed.
    #[error("index database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored value does not parse.
    #[error("index holds a malformed value: {0}")]
    Corrupt(String),
    /// The URL names no supported database.
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, IndexError>;

pub use cairn_sql::Backend;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE idx_cursor (id BIGINT PRIMARY KEY, block BIGINT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE idx_blocks (number BIGINT PRIMARY KEY, hash TEXT NOT NULL, ts BIGINT NOT NULL);
CREATE TABLE idx_events (
    block BIGINT NOT NULL,
    log_index BIGINT NOT NULL,
    tx TEXT NOT NULL,
    ts BIGINT NOT NULL,
    contract TEXT NOT NULL,
    name TEXT NOT NULL,
    subject TEXT,
    batch_id BIGINT,
    data TEXT NOT NULL,
    PRIMARY KEY (block, log_index)
);
CREATE INDEX idx_events_name ON idx_events(name, block);
CREATE INDEX idx_events_subject ON idx_events(subject, block);
CREATE INDEX idx_events_batch ON idx_events(batch_id, block);
CREATE TABLE idx_batches (
    id BIGINT PRIMARY KEY,
    node TEXT NOT NULL,
    root TEXT NOT NULL,
    count BIGINT NOT NULL,
    fees TEXT NOT NULL,
    block BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    tx TEXT NOT NULL,
    listing TEXT NOT NULL,
    tries BIGINT NOT NULL,
    next_try BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX idx_batches_node ON idx_batches(node, id);
CREATE INDEX idx_batches_listing ON idx_batches(listing, next_try);
CREATE TABLE idx_receipts (
    batch_id BIGINT NOT NULL,
    leaf_index BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    node TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts BIGINT NOT NULL,
    price TEXT NOT NULL,
    payment_ref TEXT NOT NULL,
    profile_hash TEXT NOT NULL,
    digest TEXT NOT NULL,
    proof TEXT NOT NULL,
    seal TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (batch_id, leaf_index)
);
CREATE INDEX idx_receipts_request ON idx_receipts(request_id);
CREATE INDEX idx_receipts_model ON idx_receipts(model, ts);
CREATE INDEX idx_receipts_node ON idx_receipts(node, ts);
CREATE INDEX idx_receipts_ts ON idx_receipts(ts);
CREATE TABLE idx_nodes (
    address TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    active BIGINT NOT NULL,
    snapshot TEXT NOT NULL,
    live TEXT,
    latency_ms BIGINT,
    attestation TEXT,
    attestation_digest TEXT,
    updated BIGINT NOT NULL
);
CREATE TABLE idx_verdicts (
    verifier TEXT NOT NULL,
    batch_id BIGINT NOT NULL,
    node TEXT NOT NULL,
    outcome TEXT NOT NULL,
    sampled BIGINT NOT NULL,
    confirmed BIGINT NOT NULL,
    faults BIGINT NOT NULL,
    unverifiable BIGINT NOT NULL,
    frauds BIGINT NOT NULL,
    seen BIGINT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (verifier, batch_id)
);
CREATE INDEX idx_verdicts_batch ON idx_verdicts(batch_id);
CREATE INDEX idx_verdicts_seen ON idx_verdicts(seen);
CREATE TABLE idx_models (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    task TEXT,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE idx_model_tags (name TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (name, tag));
CREATE INDEX idx_model_tags_tag ON idx_model_tags(tag);
CREATE TABLE idx_model_files (
    cid TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (cid, name, version, path)
);
CREATE INDEX idx_model_files_name ON idx_model_files(name);
"#,
)];

/// One chain event as the index keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    /// Block number.
    pub block: u64,
    /// Position among the block's logs.
    pub log_index: u64,
    /// Transaction hash.
    pub tx: B256,
    /// The block's time.
    pub ts: u64,
    /// `registry`, `settlement` or `escrow`.
    pub contract: &'static str,
    /// The event's name.
    pub name: &'static str,
    /// The address it is about (checksummed), when one.
    pub subject: Option<String>,
    /// The batch it is about, when one.
    pub batch_id: Option<u64>,
    /// Its fields, JSON.
    pub data: serde_json::Value,
}

/// A submitted batch, as its `BatchSubmitted` event states it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewBatch {
    /// Its id.
    pub id: u64,
    /// The node (checksummed).
    pub node: String,
    /// Merkle root.
    pub root: B256,
    /// Receipts.
    pub count: u64,
    /// Fees escrowed (decimal).
    pub fees: String,
    /// Block, time and transaction of its submission.
    pub block: u64,
    /// The block's time.
    pub ts: u64,
    /// The submitting transaction.
    pub tx: B256,
}

/// A batch whose receipts are still to be fetched.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingListing {
    /// The batch.
    pub batch: NewBatch,
    /// Fetches that failed so far.
    pub tries: u64,
}

/// One receipt of a batch, verified before it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiptRow {
    /// Its place among the batch's leaves.
    pub leaf_index: u64,
    /// The request id.
    pub request_id: B256,
    /// The node that signed it (checksummed).
    pub node: String,
    /// The model's CID.
    pub model: String,
    /// `tensor` or `llm`.
    pub kind: &'static str,
    /// The receipt's timestamp.
    pub ts: u64,
    /// Price (decimal).
    pub price: String,
    /// Payment reference.
    pub payment_ref: B256,
    /// Execution profile hash.
    pub profile_hash: B256,
    /// Its EIP-712 signing hash (its Merkle leaf value).
    pub digest: B256,
    /// Its proof to the batch root, computed once when the listing was checked (so a page
    /// view never rebuilds a tree of up to 65,536 leaves).
    pub proof: Vec<B256>,
    /// `own`, `batch`, or `invalid` (its seal does not verify).
    pub seal: &'static str,
    /// The receipt's JSON as the node served it.
    pub json: String,
}

/// A verifier's verdict on a batch, as it reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct VerdictRow {
    /// The verifier (checksummed).
    pub verifier: String,
    /// The batch.
    pub batch_id: u64,
    /// The batch's node.
    pub node: String,
    /// Its conclusion.
    pub outcome: String,
    /// Samples re-executed.
    pub sampled: u64,
    /// Samples that agreed.
    pub confirmed: u64,
    /// Samples found wrong (mismatch, wrong or withheld payload).
    pub faults: u64,
    /// Samples it could not check.
    pub unverifiable: u64,
    /// Fraud verdicts it signed on the batch.
    pub frauds: u64,
    /// When the index first saw it.
    pub seen: u64,
    /// The verdict as served.
    pub json: String,
}

/// A registered node as the index keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow<'a> {
    /// Its address (checksummed).
    pub address: &'a str,
    /// `inference` or `verifier`.
    pub role: &'a str,
    /// Counted active by the registry.
    pub active: bool,
    /// The registry's state of it.
    pub snapshot: &'a serde_json::Value,
    /// What its info route said and how long it took; `None` when it did not answer.
    pub live: Option<(&'a serde_json::Value, u64)>,
    /// The kind of the evidence it serves and that evidence's digest, when read this round
    /// and equal to the registry's (otherwise what was read before is kept).
    pub attestation: Option<(&'a str, B256)>,
    /// When it was read.
    pub now: u64,
}

/// A hub model as the index keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRow {
    /// Repository name.
    pub name: String,
    /// Owner (checksummed).
    pub owner: String,
    /// Task.
    pub task: Option<String>,
    /// Markdown description.
    pub description: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Tags.
    pub tags: Vec<String>,
    /// The repository with its releases, JSON.
    pub detail: String,
    /// Every file: (CID, version, path).
    pub files: Vec<(String, String, String)>,
}

fn corrupt(e: impl std::fmt::Display) -> IndexError {
    IndexError::Corrupt(e.to_string())
}

/// Parses a stored value.
pub(crate) fn parse<T: FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(corrupt)
}

/// Reads an unsigned column.
pub(crate) fn u(row: &AnyRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(corrupt)
}

/// A `u64` as SQL's BIGINT (values past `i64::MAX` never occur in what is stored: blocks,
/// ids and times; they saturate rather than wrap).
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The index.
#[derive(Clone, Debug)]
pub struct Index {
    pool: AnyPool,
    backend: Backend,
}

impl Index {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let (pool, backend) = cairn_sql::connect(
            url,
            cairn_sql::Open {
                what: "index",
                sqlite_connections: 4,
                postgres_connections: 8,
                // The index can be rebuilt from the chain: NORMAL is enough.
                sqlite_synchronous: "NORMAL",
                sqlite_extra: "",
            },
        )
        .await
        .map_err(|e| match e {
            cairn_sql::SqlError::Db(e) => IndexError::Db(e),
            e => IndexError::Invalid(e.to_string()),
        })?;
        cairn_sql::migrate(
            &pool,
            backend,
            cairn_sql::Migrations {
                what: "index",
                steps: MIGRATIONS,
                table: "idx_schema",
                lock: 7243452891,
            },
            |sql, _| sql.to_owned(),
        )
        .await?;
        Ok(Self { pool, backend })
    }

    /// Which database.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The last block read, with its hash.
    pub async fn cursor(&self) -> Result<Option<(u64, B256)>> {
        let row = sqlx::query("SELECT block, hash FROM idx_cursor WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((u(&r, "block")?, parse(&r.try_get::<String, _>("hash")?)?)))
            .transpose()
    }

    /// Stored block hashes at or below `below`, newest first: where a reorganization's common
    /// ancestor is looked for.
    pub async fn blocks_below(&self, below: u64, limit: u64) -> Result<Vec<(u64, B256)>> {
        let rows = sqlx::query(
            "SELECT number, hash FROM idx_blocks WHERE number <= $1 ORDER BY number DESC LIMIT $2",
        )
        .bind(i(below))
        .bind(i(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((u(r, "number")?, parse(&r.try_get::<String, _>("hash")?)?)))
            .collect()
    }

    /// Forgets everything read from blocks above `keep` (a reorganization replaced them); the
    /// cursor moves back to `keep` (or is cleared, to start over, when `keep` is `None`).
    pub async fn rollback(&self, keep: Option<(u64, B256)>) -> Result<()> {
        let above = keep.map_or(-1, |(n, _)| i(n));
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM idx_receipts WHERE batch_id IN (SELECT id FROM idx_batches WHERE block > $1)",
        )
        .bind(above)
        .execute(&mut *tx)
        .await?;
        for table in ["idx_batches", "idx_events"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE block > $1"))
                .bind(above)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM idx_blocks WHERE number > $1")
            .bind(above)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM idx_cursor WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        if let Some((n, h)) = keep {
            sqlx::query("INSERT INTO idx_cursor (id, block, hash) VALUES (1, $1, $2)")
                .bind(i(n))
                .bind(h.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes one range's events, the batches they submit and the blocks they came from, and
    /// moves the cursor to `to`, in one transaction: a crash leaves either all of it or none,
    /// and a range read twice adds nothing twice.
    pub async fn apply(
        &self,
        events: &[EventRow],
        batches: &[NewBatch],
        blocks: &[cairn_ledger::BlockStamp],
        to: cairn_ledger::BlockStamp,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for b in blocks.iter().chain(std::iter::once(&to)) {
            sqlx::query(
                "INSERT INTO idx_blocks (number, hash, ts) VALUES ($1, $2, $3)
                 ON CONFLICT (number) DO UPDATE SET hash = excluded.hash, ts = excluded.ts",
            )
            .bind(i(b.number))
            .bind(b.hash.to_string())
            .bind(i(b.timestamp))
            .execute(&mut *tx)
            .await?;
        }
        for e in events {
            sqlx::query(
                "INSERT INTO idx_events (block, log_index, tx, ts, contract, name, subject, batch_id, data)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (block, log_index) DO NOTHING",
            )
            .bind(i(e.block))
            .bind(i(e.log_index))
            .bind(e.tx.to_string())
            .bind(i(e.ts))
            .bind(e.contract)
            .bind(e.name)
            .bind(e.subject.clone())
            .bind(e.batch_id.map(i))
            .bind(e.data.to_string())
            .execute(&mut *tx)
            .await?;
        }
        for b in batches {
            sqlx::query(
                "INSERT INTO idx_batches (id, node, root, count, fees, block, ts, tx, listing, tries, next_try)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, 0) ON CONFLICT (id) DO NOTHING",
            )
            .bind(i(b.id))
            .bind(&b.node)
            .bind(b.root.to_string())
            .bind(i(b.count))
            .bind(&b.fees)
            .bind(i(b.block))
            .bind(i(b.ts))
            .bind(b.tx.to_string())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO idx_cursor (id, block, hash) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET block = excluded.block, hash = excluded.hash",
        )
        .bind(i(to.number))
        .bind(to.hash.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Batches whose receipts are due to be fetched at `now`, oldest first.
    pub async fn pending_listings(&self, now: u64, limit: u64) -> Result<Vec<PendingListing>> {
        let rows = sqlx::query(
            "SELECT id, node, root, count, fees, block, ts, tx, tries FROM idx_batches
             WHERE listing IN ('pending', 'unavailable') AND next_try <= $1 ORDER BY next_try, id LIMIT $2",
        )
        .bind(i(now))
        .bind(i(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingListing {
                    batch: batch_of(r)?,
                    tries: u(r, "tries")?,
                })
            })
            .collect()
    }

    /// Stores a batch's verified receipts and marks its listing read; `false` (nothing stored)
    /// when the batch is no longer the one they were checked against, or is already read.
    pub async fn store_listing(&self, batch: &NewBatch, receipts: &[ReceiptRow]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The batch must still be the one the listing was checked against: a reorganization
        // may have replaced it (same id, another root) while the listing was being fetched.
        let claimed = sqlx::query(
            "UPDATE idx_batches SET listing = 'indexed', error = NULL
             WHERE id = $1 AND root = $2 AND listing IN ('pending', 'unavailable')",
        )
        .bind(i(batch.id))
        .bind(batch.root.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            return Ok(false);
        }
        let batch = batch.id;
        for r in receipts {
            sqlx::query(
                "INSERT INTO idx_receipts (batch_id, leaf_index, request_id, node, model, kind, ts, price, payment_ref, profile_hash, digest, proof, seal, json)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (batch_id, leaf_index) DO NOTHING",
            )
            .bind(i(batch))
            .bind(i(r.leaf_index))
            .bind(r.request_id.to_string())
            .bind(&r.node)
            .bind(&r.model)
            .bind(r.kind)
            .bind(i(r.ts))
            .bind(&r.price)
            .bind(r.payment_ref.to_string())
            .bind(r.profile_hash.to_string())
            .bind(r.digest.to_string())
            .bind(serde_json::to_string(&r.proof).map_err(corrupt)?)
            .bind(r.seal)
            .bind(&r.json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records a listing not stored: `listing` is its state (`pending` or `unavailable`,
    /// asked again at `next_try`; `invalid` or `unpaid`, never asked again).
    pub async fn listing_failed(
        &self,
        batch: &NewBatch,
        error: &str,
        next_try: Option<u64>,
        listing: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idx_batches SET tries = tries + 1, next_try = $2, error = $3, listing = $4
             WHERE id = $1 AND root = $5",
        )
        .bind(i(batch.id))
        .bind(i(next_try.unwrap_or(0)))
        .bind(error)
        .bind(listing)
        .bind(batch.root.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every address a `NodeRegistered` event named, with the role it registered in.
    pub async fn registered(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT subject, data FROM idx_events WHERE name = 'NodeRegistered' ORDER BY block, log_index",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(String, String)> = Vec::new();
        for r in rows {
            let subject: String = r.try_get("subject")?;
            let data: serde_json::Value =
                serde_json::from_str(&r.try_get::<String, _>("data")?).map_err(corrupt)?;
            let role = data["role"].as_str().unwrap_or("inference").to_owned();
            if !out.iter().any(|(a, _)| *a == subject) {
                out.push((subject, role));
            }
        }
        Ok(out)
    }

    /// Replaces a node's snapshot (the registry's view, and what its own API said with how
    /// long it took; what it said last is kept when it does not answer).
    pub async fn upsert_node(&self, n: &NodeRow<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO idx_nodes (address, role, active, snapshot, live, latency_ms, attestation, attestation_digest, updated)
             VALUES ($1, $2, $3, $4, $5, $6, $8, $9, $7)
             ON CONFLICT (address) DO UPDATE SET role = excluded.role, active = excluded.active,
               snapshot = excluded.snapshot, live = COALESCE(excluded.live, idx_nodes.live),
               latency_ms = excluded.latency_ms,
               attestation = COALESCE(excluded.attestation, idx_nodes.attestation),
               attestation_digest = COALESCE(excluded.attestation_digest, idx_nodes.attestation_digest),
               updated = excluded.updated",
        )
        .bind(n.address)
        .bind(n.role)
        .bind(i64::from(n.active))
        .bind(n.snapshot.to_string())
        .bind(n.live.map(|(l, _)| l.to_string()))
        .bind(n.live.map(|(_, ms)| i(ms)))
        .bind(i(n.now))
        .bind(n.attestation.map(|(k, _)| k))
        .bind(n.attestation.map(|(_, d)| d.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The digest of the evidence last read from node `address`, when any.
    pub async fn attestation_digest(&self, address: &str) -> Result<Option<B256>> {
        let row = sqlx::query("SELECT attestation_digest FROM idx_nodes WHERE address = $1")
            .bind(address)
            .fetch_optional(&self.pool)
            .await?;
        match row.map(|r| r.try_get::<Option<String>, _>("attestation_digest")) {
            Some(Ok(Some(d))) => Ok(Some(parse(&d)?)),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        }
    }

    /// The node of batch `id`, when the index has it.
    pub async fn batch_node(&self, id: u64) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT node FROM idx_batches WHERE id = $1")
            .bind(i(id))
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("node"))
            .transpose()?)
    }

    /// Adds or updates a verifier's verdict (its first sighting time is kept).
    pub async fn upsert_verdict(&self, v: &VerdictRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO idx_verdicts (verifier, batch_id, node, outcome, sampled, confirmed, faults, unverifiable, frauds, seen, json)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (verifier, batch_id) DO UPDATE SET outcome = excluded.outcome,
               sampled = excluded.sampled, confirmed = excluded.confirmed, faults = excluded.faults,
               unverifiable = excluded.unverifiable, frauds = excluded.frauds, json = excluded.json",
        )
        .bind(&v.verifier)
        .bind(i(v.batch_id))
        .bind(&v.node)
        .bind(&v.outcome)
        .bind(i(v.sampled))
        .bind(i(v.confirmed))
        .bind(i(v.faults))
        .bind(i(v.unverifiable))
        .bind(i(v.frauds))
        .bind(i(v.seen))
        .bind(&v.json)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces the hub's models with `models` (those no longer listed are dropped).
    pub async fn replace_models(&self, models: &[ModelRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for table in ["idx_model_files", "idx_model_tags", "idx_models"] {
            tx.execute(format!("DELETE FROM {table}").as_str()).await?;
        }
        for m in models {
            sqlx::query(
                "INSERT INTO idx_models (name, owner, task, description, created_at, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&m.name)
            .bind(&m.owner)
            .bind(m.task.clone())
            .bind(&m.description)
            .bind(m.created_at)
            .bind(&m.detail)
            .execute(&mut *tx)
            .await?;
            for t in &m.tags {
                sqlx::query(
                    "INSERT INTO idx_model_tags (name, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(&m.name)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            }
            for (cid, version, path) in &m.files {
                sqlx::query(
                    "INSERT INTO idx_model_files (cid, name, version, path) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(cid)
                .bind(&m.name)
                .bind(version)
                .bind(path)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

pub(crate) fn batch_of(r: &AnyRow) -> Result<NewBatch> {
    Ok(NewBatch {
        id: u(r, "id")?,
        node: r.try_get("node")?,
        root: parse(&r.try_get::<String, _>("root")?)?,
        count: u(r, "count")?,
        fees: r.try_get("fees")?,
        block: u(r, "block")?,
        ts: u(r, "ts")?,
        tx: parse(&r.try_get::<String, _>("tx")?)?,
    })
}
