//! The chain as Ethereum JSON-RPC serves it: blocks, transactions, receipts and logs in alloy's
//! RPC types (so they serialize as every tool expects), account state, calls and gas estimates.
//!
//! Every block has a real header and `keccak256(rlp(header))` is its hash, but its `stateRoot` is
//! zero: the state trie is not kept incrementally ([`Ledger::state_root`] builds it on demand).
//! Only the head's state is kept, so state queries name the latest block.

use alloy_consensus::{Header, Transaction as _, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_rpc_types_eth as rpc;

use super::*;

/// A block, by number, by hash, or the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockRef {
    /// The head.
    Latest,
    /// By number.
    Number(u64),
    /// By hash.
    Hash(B256),
}

/// A read-only call or a gas estimate (`eth_call`, `eth_estimateGas`).
#[derive(Clone, Debug, Default)]
pub struct CallRequest {
    /// The caller (the zero address when absent).
    pub from: Option<Address>,
    /// The callee; `None` runs `data` as init code.
    pub to: Option<Address>,
    /// Calldata or init code.
    pub data: Bytes,
    /// Wei sent along.
    pub value: U256,
    /// Gas available (at most the block's).
    pub gas: Option<u64>,
}

/// An account at the head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Its next nonce.
    pub nonce: u64,
    /// Native-coin balance, wei.
    pub balance: U256,
    /// Its code (empty for an externally owned account).
    pub code: Bytes,
}

/// The most logs one query returns; a wider one is refused with a request to narrow it.
pub const MAX_LOGS: usize = 10_000;

struct StoredTx {
    tx: TxEnvelope,
    sender: Address,
    block: u64,
    gas_used: u64,
    contract: Option<Address>,
}

fn corrupt(what: &str) -> LedgerError {
    LedgerError::Invalid(format!("corrupt {what} in the ledger store"))
}

impl Inner {
    fn block_row(&self, at: BlockRef) -> Result<Option<(u64, B256, Header)>, LedgerError> {
        let map = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        };
        let row = match at {
            BlockRef::Latest => self
                .conn
                .prepare_cached("SELECT number, hash, header FROM blocks WHERE number = ?1")?
                .query_row(params![self.head.number as i64], map)
                .optional()?,
            BlockRef::Number(n) => {
                if n > self.head.number {
                    return Ok(None);
                }
                self.conn
                    .prepare_cached("SELECT number, hash, header FROM blocks WHERE number = ?1")?
                    .query_row(params![n as i64], map)
                    .optional()?
            }
            BlockRef::Hash(h) => self
                .conn
                .prepare_cached("SELECT number, hash, header FROM blocks WHERE hash = ?1")?
                .query_row(params![h.as_slice()], map)
                .optional()?,
        };
        let Some((number, hash, header)) = row else {
            return Ok(None);
        };
        let header = alloy_rlp::Decodable::decode(&mut header.as_slice())
            .map_err(|_| corrupt("block header"))?;
        let hash = B256::try_from(hash.as_slice()).map_err(|_| corrupt("block hash"))?;
        Ok(Some((number, hash, header)))
    }

    fn stored_tx(&self, hash: B256) -> Result<Option<StoredTx>, LedgerError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT raw, sender, block, gas_used, contract FROM txs WHERE hash = ?1",
            )?
            .query_row(params![hash.as_slice()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })
            .optional()?;
        let Some((raw, sender, block, gas_used, contract)) = row else {
            return Ok(None);
        };
        let tx =
            TxEnvelope::decode_2718(&mut raw.as_slice()).map_err(|_| corrupt("transaction"))?;
        Ok(Some(StoredTx {
            tx,
            sender: Address::try_from(sender.as_slice()).map_err(|_| corrupt("sender"))?,
            block: block as u64,
            gas_used: gas_used as u64,
            contract: contract
                .map(|c| Address::try_from(c.as_slice()).map_err(|_| corrupt("contract address")))
                .transpose()?,
        }))
    }

    fn block_tx_hash(&self, number: u64) -> Result<Option<B256>, LedgerError> {
        let tx: Option<Option<Vec<u8>>> = self
            .conn
            .prepare_cached("SELECT tx FROM blocks WHERE number = ?1")?
            .query_row(params![number as i64], |r| r.get(0))
            .optional()?;
        tx.flatten()
            .map(|t| B256::try_from(t.as_slice()).map_err(|_| corrupt("transaction hash")))
            .transpose()
    }

    /// Logs of blocks `from..=to` (narrowed in SQL by one address and one first topic when
    /// given) that `wanted` keeps, read row by row; more than `limit` is an error.
    fn logs_of(
        &self,
        from: u64,
        to: u64,
        narrow: (Option<Address>, Option<B256>),
        wanted: &dyn Fn(&Log) -> bool,
        limit: usize,
    ) -> Result<Vec<rpc::Log>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT l.block, l.idx, l.tx, l.address, l.topics, l.data, b.hash, b.timestamp
             FROM logs l JOIN blocks b ON b.number = l.block
             WHERE l.block >= ?1 AND l.block <= ?2 AND (?3 IS NULL OR l.address = ?3)
               AND (?4 IS NULL OR l.topic0 = ?4)
             ORDER BY l.block, l.idx",
        )?;
        let rows = stmt.query_map(
            params![
                from.min(i64::MAX as u64) as i64,
                to.min(i64::MAX as u64) as i64,
                narrow.0.map(|a| a.to_vec()),
                narrow.1.map(|t| t.to_vec())
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                    r.get::<_, i64>(7)? as u64,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (block, idx, tx, address, topics, data, hash, timestamp) = row?;
            let topics = topics.chunks_exact(32).map(B256::from_slice).collect();
            let log = Log::new(Address::from_slice(&address), topics, data.into())
                .ok_or_else(|| corrupt("log"))?;
            if !wanted(&log) {
                continue;
            }
            if out.len() == limit {
                return Err(LedgerError::Invalid(format!(
                    "query returned more than {limit} results; query a narrower block range"
                )));
            }
            out.push(rpc_log(
                log,
                block,
                B256::from_slice(&hash),
                timestamp,
                B256::from_slice(&tx),
                idx,
            ));
        }
        Ok(out)
    }
}

fn rpc_log(
    log: Log,
    block: u64,
    block_hash: B256,
    timestamp: u64,
    tx: B256,
    index: u64,
) -> rpc::Log {
    rpc::Log {
        inner: log,
        block_hash: Some(block_hash),
        block_number: Some(block),
        block_timestamp: Some(timestamp),
        transaction_hash: Some(tx),
        transaction_index: Some(0),
        log_index: Some(index),
        removed: false,
    }
}

impl EmbeddedLedger {
    /// An account's nonce, balance and code at the head.
    pub fn account(&self, who: Address) -> AccountState {
        let inner = self.lock();
        let Some(acc) = inner.db.cache.accounts.get(&who) else {
            return AccountState::default();
        };
        AccountState {
            nonce: acc.info.nonce,
            balance: acc.info.balance,
            code: acc
                .info
                .code
                .as_ref()
                .map(|c| c.original_bytes())
                .unwrap_or_default(),
        }
    }

    /// A storage slot's value at the head.
    pub fn storage_at(&self, who: Address, slot: U256) -> U256 {
        let inner = self.lock();
        inner
            .db
            .cache
            .accounts
            .get(&who)
            .and_then(|a| a.storage.get(&slot).copied())
            .unwrap_or_default()
    }

    /// Runs a read-only call on the head state.
    pub fn call_as(&self, req: &CallRequest) -> Result<Bytes, LedgerError> {
        let inner = self.lock();
        let env = inner.call_env(self.chain_id, req)?;
        let at = inner.next_timestamp();
        match inner.execute(self.chain_id, env, true, at)?.result {
            ExecutionResult::Success { output, .. } => Ok(output.into_data()),
            ExecutionResult::Revert { output, .. } => Err(revert(output)),
            ExecutionResult::Halt { reason, .. } => {
                Err(LedgerError::Evm(format!("halted: {reason:?}")))
            }
        }
    }

    /// The least gas (within 1.5 %, as geth estimates) with which `req` succeeds on the head
    /// state; its revert when it fails even with all the gas it may use. The lock is taken per
    /// run, so the chain's writers are not held up for the whole search.
    pub fn estimate_gas(&self, req: &CallRequest) -> Result<u64, LedgerError> {
        let run = |gas: u64| -> Result<ExecutionResult, LedgerError> {
            let inner = self.lock();
            let env = inner.call_env(
                self.chain_id,
                &CallRequest {
                    gas: Some(gas),
                    ..req.clone()
                },
            )?;
            let at = inner.next_timestamp();
            Ok(inner.execute(self.chain_id, env, true, at)?.result)
        };
        let cap = req.gas.unwrap_or(BLOCK_GAS_LIMIT).min(BLOCK_GAS_LIMIT);
        let first = run(cap)?;
        let used = first.tx_gas_used();
        match first {
            ExecutionResult::Success { .. } => {}
            ExecutionResult::Revert { output, .. } => return Err(revert(output)),
            ExecutionResult::Halt { reason, .. } => {
                return Err(LedgerError::Evm(format!(
                    "halted with {cap} gas: {reason:?}"
                )));
            }
        }
        // Exactly what it used suffices unless refunds or the 1/64 a call keeps back need more
        // (a plain transfer: 21,000, as every node answers).
        if used < cap && run(used)?.is_success() {
            return Ok(used);
        }
        // Below what it used (after refunds) it cannot succeed; with the cap it does.
        let (mut lo, mut hi) = (used, cap);
        // The usual answer: what it used plus the 1/64 a call keeps back.
        let guess = (used + used / 63 + 2_300).min(hi);
        if guess < hi && run(guess)?.is_success() {
            hi = guess;
        }
        while hi - lo > 1 && (hi - lo) as f64 / hi as f64 > 0.015 {
            let mid = lo + (hi - lo) / 2;
            if run(mid)?.is_success() {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(hi)
    }

    /// The number `at` names, when that block exists.
    pub fn block_number(&self, at: BlockRef) -> Result<Option<u64>, LedgerError> {
        let inner = self.lock();
        Ok(match at {
            BlockRef::Latest => Some(inner.head.number),
            BlockRef::Number(n) => (n <= inner.head.number).then_some(n),
            BlockRef::Hash(_) => inner.block_row(at)?.map(|(n, ..)| n),
        })
    }

    /// A block, with its transaction whole (`full`) or by hash.
    pub fn block(&self, at: BlockRef, full: bool) -> Result<Option<rpc::Block>, LedgerError> {
        let inner = self.lock();
        let Some((number, hash, header)) = inner.block_row(at)? else {
            return Ok(None);
        };
        let txs = match inner.block_tx_hash(number)? {
            Some(h) => vec![inner.stored_tx(h)?.ok_or_else(|| corrupt("block"))?],
            None => vec![],
        };
        let body = alloy_consensus::Block {
            header: header.clone(),
            body: alloy_consensus::BlockBody {
                transactions: txs.iter().map(|t| t.tx.clone()).collect::<Vec<_>>(),
                ommers: vec![],
                withdrawals: Some(Default::default()),
            },
        };
        let size = alloy_rlp::Encodable::length(&body);
        let transactions = if full {
            rpc::BlockTransactions::Full(
                txs.into_iter()
                    .map(|t| rpc_transaction(t, hash, header.timestamp))
                    .collect(),
            )
        } else {
            rpc::BlockTransactions::Hashes(txs.iter().map(|t| *t.tx.tx_hash()).collect())
        };
        Ok(Some(rpc::Block {
            header: rpc::Header {
                hash,
                inner: header,
                total_difficulty: Some(U256::ZERO),
                size: Some(U256::from(size)),
            },
            uncles: vec![],
            transactions,
            withdrawals: Some(Default::default()),
        }))
    }

    /// A mined transaction.
    pub fn transaction(&self, hash: B256) -> Result<Option<rpc::Transaction>, LedgerError> {
        let inner = self.lock();
        let Some(t) = inner.stored_tx(hash)? else {
            return Ok(None);
        };
        let (_, block_hash, header) = inner
            .block_row(BlockRef::Number(t.block))?
            .ok_or_else(|| corrupt("transaction's block"))?;
        Ok(Some(rpc_transaction(t, block_hash, header.timestamp)))
    }

    /// A mined transaction's receipt (every mined transaction succeeded).
    pub fn receipt(&self, hash: B256) -> Result<Option<rpc::TransactionReceipt>, LedgerError> {
        let inner = self.lock();
        let Some(t) = inner.stored_tx(hash)? else {
            return Ok(None);
        };
        let (_, block_hash, _) = inner
            .block_row(BlockRef::Number(t.block))?
            .ok_or_else(|| corrupt("transaction's block"))?;
        let logs = inner.logs_of(t.block, t.block, (None, None), &|_| true, usize::MAX)?;
        let bloom = alloy_primitives::logs_bloom(logs.iter().map(|l| &l.inner));
        let receipt = alloy_consensus::Receipt {
            status: alloy_consensus::Eip658Value::Eip658(true),
            cumulative_gas_used: t.gas_used,
            logs,
        };
        let inner_receipt = alloy_consensus::ReceiptEnvelope::from_typed(
            t.tx.tx_type(),
            alloy_consensus::ReceiptWithBloom::new(receipt, bloom),
        );
        Ok(Some(rpc::TransactionReceipt {
            inner: inner_receipt,
            transaction_hash: hash,
            transaction_index: Some(0),
            block_hash: Some(block_hash),
            block_number: Some(t.block),
            gas_used: t.gas_used,
            effective_gas_price: tx::effective_gas_price(&t.tx),
            blob_gas_used: None,
            blob_gas_price: None,
            from: t.sender,
            to: t.tx.to(),
            contract_address: t.contract,
        }))
    }

    /// Logs of blocks `from..=to` (clamped to the head) that `wanted` keeps, oldest first; at
    /// most [`MAX_LOGS`]. `narrow` (one address, one first topic) lets SQL skip the rest.
    pub fn logs_matching(
        &self,
        from: u64,
        to: u64,
        narrow: (Option<Address>, Option<B256>),
        wanted: impl Fn(&Log) -> bool,
    ) -> Result<Vec<rpc::Log>, LedgerError> {
        let inner = self.lock();
        let to = to.min(inner.head.number);
        if from > to {
            return Ok(vec![]);
        }
        inner.logs_of(from, to, narrow, &wanted, MAX_LOGS)
    }

    /// Gas used by each of blocks `from..=to` (for `eth_feeHistory`).
    pub fn gas_used(&self, from: u64, to: u64) -> Result<Vec<u64>, LedgerError> {
        let inner = self.lock();
        let mut out = Vec::new();
        for n in from..=to.min(inner.head.number) {
            let (_, _, header) = inner
                .block_row(BlockRef::Number(n))?
                .ok_or_else(|| corrupt("block"))?;
            out.push(header.gas_used);
        }
        Ok(out)
    }
}

fn rpc_transaction(t: StoredTx, block_hash: B256, timestamp: u64) -> rpc::Transaction {
    let price = tx::effective_gas_price(&t.tx);
    rpc::Transaction {
        inner: alloy_consensus::transaction::Recovered::new_unchecked(t.tx, t.sender),
        block_hash: Some(block_hash),
        block_number: Some(t.block),
        transaction_index: Some(0),
        effective_gas_price: Some(price),
        block_timestamp: Some(timestamp),
    }
}
