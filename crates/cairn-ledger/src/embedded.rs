//! The embedded chain: revm runs the contracts in-process; every account, slot, block, transaction
//! and log is written to SQLite in one transaction per block before the in-memory state moves, so a
//! `kill -9` loses nothing that was reported as mined.
//!
//! One transaction per block (like anvil's automine). Every transaction is a signed Ethereum
//! transaction (EIP-2718), whether a Cairn role sent it through [`Ledger::send`] or a wallet
//! through [`EmbeddedLedger::send_raw`], so its hash is the one every tool computes; blocks carry
//! real headers (`keccak256(rlp(header))` is the block hash) except for the state root, which is
//! zero (see [`query`]). Gas is metered; the base fee is 0, so a transaction pays only the priority
//! fee it offers (Cairn's own pay none). A transaction that would revert is refused, not mined.
//! Block timestamps follow the wall clock plus an offset that [`Ledger::advance_time`] moves
//! forward; they never go backwards.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use alloy_primitives::{Address, B256, Bytes, Log, TxKind, U256};
use alloy_signer_local::PrivateKeySigner;
use alloy_trie::{EMPTY_ROOT_HASH, KECCAK_EMPTY, TrieAccount};
use async_trait::async_trait;
use revm::context::result::{ExecutionResult, ResultAndState};
use revm::context::{BlockEnv, Context, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::database_interface::WrapDatabaseRef;
use revm::handler::MainnetContext;
use revm::primitives::hardfork::SpecId;
use revm::state::{AccountInfo, Bytecode, EvmState};
use revm::{DatabaseCommit, ExecuteEvm, MainBuilder};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{BlockInfo, Ledger, LedgerError, LogFilter, LogRecord, TxOutcome, TxRequest};

pub mod query;
mod state;
#[cfg(test)]
mod tests;
mod tx;

pub use query::{BlockRef, CallRequest};

/// Gas available to one block (and so to one transaction).
pub const BLOCK_GAS_LIMIT: u64 = 60_000_000;

/// revm in-process, persisted in a SQLite file.
pub struct EmbeddedLedger {
    chain_id: u64,
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Held for the writer's lifetime: one process writes a chain, or the in-memory states of
    /// two writers would drift apart. `None` for a read-only view.
    _lock: Option<std::fs::File>,
}

struct Inner {
    db: CacheDB<EmptyDB>,
    conn: Connection,
    head: Head,
    time_offset: u64,
}

#[derive(Clone, Copy)]
struct Head {
    number: u64,
    timestamp: u64,
    hash: B256,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
  number INTEGER PRIMARY KEY, timestamp INTEGER NOT NULL, hash BLOB NOT NULL UNIQUE, tx BLOB,
  header BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
  hash BLOB PRIMARY KEY, block INTEGER NOT NULL, sender BLOB NOT NULL, gas_used INTEGER NOT NULL,
  contract BLOB, raw BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
  block INTEGER NOT NULL, idx INTEGER NOT NULL, tx BLOB NOT NULL, address BLOB NOT NULL,
  topic0 BLOB, topics BLOB NOT NULL, data BLOB NOT NULL, PRIMARY KEY (block, idx)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS logs_by_address ON logs (address, topic0, block);
CREATE TABLE IF NOT EXISTS accounts (
  address BLOB PRIMARY KEY, nonce INTEGER NOT NULL, balance BLOB NOT NULL, code_hash BLOB NOT NULL)
  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS code (hash BLOB PRIMARY KEY, code BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS storage (
  address BLOB NOT NULL, slot BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (address, slot))
  WITHOUT ROWID;
";

use cairn_core::clock::now_secs;

/// The store's layout version: 2 = signed transactions and block headers are kept.
const FORMAT: u64 = 2;

impl EmbeddedLedger {
    /// Opens the chain stored at `path`, or creates it with `genesis` native balances.
    /// Reopening checks that the stored chain id is `chain_id`.
    pub fn open(
        path: &Path,
        chain_id: u64,
        genesis: &[(Address, U256)],
    ) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| LedgerError::Invalid(format!("{}: {e}", dir.display())))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| LedgerError::Invalid(format!("{}: {e}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(LedgerError::Invalid(format!(
                "{} is in use by another process (a running devnet?); stop it, or read it with `cairn chain status`",
                path.display()
            )));
        }
        let mut ledger = Self::open_inner(path, chain_id, genesis)?;
        ledger._lock = Some(lock);
        Ok(ledger)
    }

    /// A read-only view of a chain another process may be writing (WAL snapshot at open).
    /// Sends fail with [`LedgerError::Unsupported`].
    pub fn open_read_only(path: &Path, chain_id: u64) -> Result<Self, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Invalid(format!(
                "no embedded chain at {}",
                path.display()
            )));
        }
        Self::open_inner(path, chain_id, &[])
    }

    fn open_inner(
        path: &Path,
        chain_id: u64,
        genesis: &[(Address, U256)],
    ) -> Result<Self, LedgerError> {
        // WAL + NORMAL: a committed block survives a process kill; only an OS crash can cost the
        // last blocks.
        let conn = cairn_sqlite::open(path, cairn_sqlite::Durability::Normal)?;
        conn.execute_batch(SCHEMA)?;

        let stored: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'chain_id'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let mut inner = match stored {
            Some(bytes) => {
                let stored_id = u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                    LedgerError::Invalid("corrupt chain id in the ledger store".into())
                })?);
                if stored_id != chain_id {
                    return Err(LedgerError::Invalid(format!(
                        "{} holds chain {stored_id}, not {chain_id}; use another data dir",
                        path.display()
                    )));
                }
                let inner = Inner::load(conn)?;
                if inner.meta_u64("format")? != Some(FORMAT) {
                    return Err(LedgerError::Invalid(format!(
                        "{} was made by an older Cairn that kept no signed transactions or block headers; \
                         remove its data dir (or start the devnet with another --data-dir)",
                        path.display()
                    )));
                }
                inner
            }
            None => Inner::genesis(conn, chain_id, genesis)?,
        };
        inner.time_offset = inner.meta_u64("time_offset")?.unwrap_or(0);
        Ok(Self {
            chain_id,
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
            _lock: None,
        })
    }

    fn writable(&self) -> Result<(), LedgerError> {
        if self._lock.is_none() {
            return Err(LedgerError::Unsupported(format!(
                "{} is open read-only",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock happens before any state moves (state is committed to
        // SQLite first, then to memory), so the data is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn genesis(
        mut conn: Connection,
        chain_id: u64,
        alloc: &[(Address, U256)],
    ) -> Result<Self, LedgerError> {
        let mut db = CacheDB::new(EmptyDB::default());
        let timestamp = now_secs();
        let header = state::header(B256::ZERO, 0, timestamp, None);
        let hash = header.hash_slow();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('chain_id', ?1), ('format', ?2)",
            params![
                chain_id.to_be_bytes().to_vec(),
                FORMAT.to_be_bytes().to_vec()
            ],
        )?;
        for (address, balance) in alloc {
            tx.execute(
                "INSERT OR REPLACE INTO accounts (address, nonce, balance, code_hash) VALUES (?1, 0, ?2, ?3)",
                params![address.as_slice(), balance.to_be_bytes::<32>().to_vec(), KECCAK_EMPTY.as_slice()],
            )?;
            db.insert_account_info(*address, AccountInfo::from_balance(*balance));
        }
        tx.execute(
            "INSERT INTO blocks (number, timestamp, hash, tx, header) VALUES (0, ?1, ?2, NULL, ?3)",
            params![
                timestamp as i64,
                hash.as_slice(),
                alloy_rlp::encode(&header)
            ],
        )?;
        tx.commit()?;
        Ok(Self {
            db,
            conn,
            head: Head {
                number: 0,
                timestamp,
                hash,
            },
            time_offset: 0,
        })
    }

    fn load(conn: Connection) -> Result<Self, LedgerError> {
        let mut db = CacheDB::new(EmptyDB::default());
        {
            let mut code_stmt = conn.prepare("SELECT code FROM code WHERE hash = ?1")?;
            let mut stmt =
                conn.prepare("SELECT address, nonce, balance, code_hash FROM accounts")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?;
            for row in rows {
                let (address, nonce, balance, code_hash) = row?;
                let address = Address::try_from(address.as_slice())
                    .map_err(|_| LedgerError::Invalid("corrupt address in ledger store".into()))?;
                let code_hash = B256::try_from(code_hash.as_slice()).map_err(|_| {
                    LedgerError::Invalid("corrupt code hash in ledger store".into())
                })?;
                let code = if code_hash == KECCAK_EMPTY {
                    Bytecode::default()
                } else {
                    let bytes: Vec<u8> =
                        code_stmt.query_row(params![code_hash.as_slice()], |r| r.get(0))?;
                    Bytecode::new_raw(bytes.into())
                };
                db.insert_account_info(
                    address,
                    AccountInfo::new(U256::from_be_slice(&balance), nonce as u64, code_hash, code),
                );
            }
            let mut stmt = conn.prepare("SELECT address, slot, value FROM storage")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            for row in rows {
                let (address, slot, value) = row?;
                let address = Address::try_from(address.as_slice())
                    .map_err(|_| LedgerError::Invalid("corrupt address in ledger store".into()))?;
                db.insert_account_storage(
                    address,
                    U256::from_be_slice(&slot),
                    U256::from_be_slice(&value),
                )
                .map_err(|e| LedgerError::Evm(e.to_string()))?;
            }
        }
        let head = conn.query_row(
            "SELECT number, timestamp, hash FROM blocks ORDER BY number DESC LIMIT 1",
            [],
            |r| {
                Ok(Head {
                    number: r.get::<_, i64>(0)? as u64,
                    timestamp: r.get::<_, i64>(1)? as u64,
                    hash: B256::from_slice(&r.get::<_, Vec<u8>>(2)?),
                })
            },
        )?;
        Ok(Self {
            db,
            conn,
            head,
            time_offset: 0,
        })
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>, LedgerError> {
        let v: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    fn next_timestamp(&self) -> u64 {
        (now_secs() + self.time_offset).max(self.head.timestamp)
    }

    fn block_env(&self, number: u64, timestamp: u64) -> BlockEnv {
        BlockEnv {
            number: U256::from(number),
            timestamp: U256::from(timestamp),
            gas_limit: BLOCK_GAS_LIMIT,
            basefee: 0,
            prevrandao: Some(self.head.hash),
            ..Default::default()
        }
    }
}

fn revert(output: Bytes) -> LedgerError {
    LedgerError::Reverted {
        reason: crate::contracts::decode_revert(&output),
        data: output,
    }
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn describe(&self) -> String {
        format!(
            "embedded revm chain {} at {}",
            self.chain_id,
            self.path.display()
        )
    }

    async fn call(&self, to: Address, data: Bytes) -> Result<Bytes, LedgerError> {
        self.call_as(&CallRequest {
            to: Some(to),
            data,
            ..CallRequest::default()
        })
    }

    async fn send(
        &self,
        signer: &PrivateKeySigner,
        tx: TxRequest,
    ) -> Result<TxOutcome, LedgerError> {
        if signer.chain_id().is_some_and(|id| id != self.chain_id) {
            return Err(LedgerError::Invalid(format!(
                "signer is bound to chain {:?}, this ledger is chain {}",
                signer.chain_id(),
                self.chain_id
            )));
        }
        self.sign_and_mine(signer, &tx)
    }

    async fn head(&self) -> Result<BlockInfo, LedgerError> {
        let inner = self.lock();
        Ok(BlockInfo {
            number: inner.head.number,
            timestamp: inner.head.timestamp,
        })
    }

    async fn block_at(&self, number: u64) -> Result<Option<crate::BlockStamp>, LedgerError> {
        Ok(self
            .block(query::BlockRef::Number(number), false)?
            .map(|b| crate::BlockStamp {
                number,
                hash: b.header.hash,
                timestamp: b.header.inner.timestamp,
            }))
    }

    async fn balance(&self, who: Address) -> Result<U256, LedgerError> {
        Ok(self
            .lock()
            .db
            .cache
            .accounts
            .get(&who)
            .map(|a| a.info.balance)
            .unwrap_or_default())
    }

    async fn logs(&self, filter: LogFilter) -> Result<Vec<LogRecord>, LedgerError> {
        let inner = self.lock();
        let mut stmt = inner.conn.prepare_cached(
            "SELECT block, tx, address, topics, data, idx FROM logs
             WHERE block >= ?1 AND block <= ?4 AND (?2 IS NULL OR address = ?2)
               AND (?3 IS NULL OR topic0 = ?3)
             ORDER BY block, idx",
        )?;
        let rows = stmt.query_map(
            params![
                filter.from_block as i64,
                filter.address.map(|a| a.to_vec()),
                filter.topic0.map(|t| t.to_vec()),
                filter
                    .to_block
                    .map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (block, tx, address, topics, data, index) = row?;
            let topics: Vec<B256> = topics.chunks_exact(32).map(B256::from_slice).collect();
            let wanted = |i: usize, t: Option<B256>| t.is_none_or(|t| topics.get(i) == Some(&t));
            if !(wanted(1, filter.topic1) && wanted(2, filter.topic2)) {
                continue;
            }
            let log = Log::new(Address::from_slice(&address), topics, data.into())
                .ok_or_else(|| LedgerError::Invalid("corrupt log in ledger store".into()))?;
            out.push(LogRecord {
                block: block as u64,
                tx: B256::from_slice(&tx),
                index: index as u64,
                log,
            });
        }
        Ok(out)
    }

    async fn state_root(&self) -> Result<B256, LedgerError> {
        Ok(self.lock().state_root())
    }

    async fn code(&self, who: Address) -> Result<Bytes, LedgerError> {
        Ok(self.account(who).code)
    }

    async fn dev_set_code(&self, who: Address, code: Bytes) -> Result<(), LedgerError> {
        self.writable()?;
        let mut inner = self.lock();
        let mut info = inner
            .db
            .cache
            .accounts
            .get(&who)
            .map(|a| a.info.clone())
            .unwrap_or_default();
        let bytecode = Bytecode::new_raw(code.clone());
        info.code_hash = bytecode.hash_slow();
        info.code = Some(bytecode);
        // Stored first, then applied in memory, like a block.
        let tx = inner.conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO accounts (address, nonce, balance, code_hash) VALUES (?1, ?2, ?3, ?4)",
            params![
                who.as_slice(),
                info.nonce as i64,
                info.balance.to_be_bytes::<32>().to_vec(),
                info.code_hash.as_slice()
            ],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO code (hash, code) VALUES (?1, ?2)",
            params![info.code_hash.as_slice(), code.to_vec()],
        )?;
        tx.commit()?;
        inner.db.insert_account_info(who, info);
        Ok(())
    }

    async fn advance_time(&self, secs: u64) -> Result<(), LedgerError> {
        self.writable()?;
        let mut inner = self.lock();
        let offset = inner.time_offset.saturating_add(secs);
        // Stored first: memory moves only once the clock survives a restart.
        inner.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('time_offset', ?1)",
            params![offset.to_be_bytes().to_vec()],
        )?;
        inner.time_offset = offset;
        Ok(())
    }
}
