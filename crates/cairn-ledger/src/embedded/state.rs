//! Executing a transaction in revm, block headers and receipts, the state root, and committing a
//! block to SQLite.

use alloy_consensus::{
    EMPTY_OMMER_ROOT_HASH, Eip658Value, Header, Receipt, ReceiptEnvelope, TxEnvelope, TxType,
};
use alloy_primitives::Bloom;

use super::*;

/// A transaction that ran and is to be committed with its block.
pub(super) struct Mined<'a> {
    pub tx: &'a TxEnvelope,
    pub sender: Address,
    pub gas_used: u64,
    pub contract: Option<Address>,
    pub logs: &'a [Log],
}

/// The receipt of a block's one transaction (cumulative gas = its own gas; only successful
/// transactions are mined).
pub(super) fn receipt(tx_type: TxType, gas_used: u64, logs: &[Log]) -> ReceiptEnvelope {
    let receipt = Receipt {
        status: Eip658Value::Eip658(true),
        cumulative_gas_used: gas_used,
        logs: logs.to_vec(),
    };
    ReceiptEnvelope::from_typed(tx_type, receipt.with_bloom())
}

/// A block's header. The state root is zero: the state trie is not kept incrementally, and
/// rebuilding it from every account and slot per block would make each transaction's cost grow
/// with the chain's state (`Ledger::state_root` computes it on demand instead).
pub(super) fn header(
    parent: B256,
    number: u64,
    timestamp: u64,
    mined: Option<&Mined<'_>>,
) -> Header {
    let (transactions_root, receipts_root, logs_bloom, gas_used) = match mined {
        Some(m) => {
            let r = receipt(m.tx.tx_type(), m.gas_used, m.logs);
            (
                alloy_consensus::proofs::calculate_transaction_root(std::slice::from_ref(m.tx)),
                alloy_consensus::proofs::calculate_receipt_root(std::slice::from_ref(&r)),
                *r.logs_bloom(),
                m.gas_used,
            )
        }
        None => (EMPTY_ROOT_HASH, EMPTY_ROOT_HASH, Bloom::ZERO, 0),
    };
    Header {
        parent_hash: parent,
        ommers_hash: EMPTY_OMMER_ROOT_HASH,
        beneficiary: Address::ZERO,
        state_root: B256::ZERO,
        transactions_root,
        receipts_root,
        logs_bloom,
        difficulty: U256::ZERO,
        number,
        gas_limit: BLOCK_GAS_LIMIT,
        gas_used,
        timestamp,
        extra_data: Bytes::from_static(b"cairn embedded"),
        // Post-merge this field is PREVRANDAO, which blocks here take from the parent's hash.
        mix_hash: parent,
        nonce: Default::default(),
        base_fee_per_gas: Some(0),
        withdrawals_root: Some(EMPTY_ROOT_HASH),
        blob_gas_used: Some(0),
        excess_blob_gas: Some(0),
        parent_beacon_block_root: Some(B256::ZERO),
        requests_hash: None,
        block_access_list_hash: None,
        slot_number: None,
    }
}

impl Inner {
    /// A read-only call's environment: from `caller`, at most the block's gas, no fee.
    pub(super) fn call_env(&self, chain_id: u64, req: &CallRequest) -> Result<TxEnv, LedgerError> {
        let caller = req.from.unwrap_or_default();
        TxEnv::builder()
            .caller(caller)
            .kind(match req.to {
                Some(to) => TxKind::Call(to),
                None => TxKind::Create,
            })
            .data(req.data.clone())
            .value(req.value)
            .gas_limit(req.gas.unwrap_or(BLOCK_GAS_LIMIT).min(BLOCK_GAS_LIMIT))
            .gas_price(0)
            .nonce(self.nonce(caller))
            .chain_id(Some(chain_id))
            .build()
            .map_err(|e| LedgerError::Invalid(format!("the call: {e:?}")))
    }

    /// The next nonce of `who`.
    pub(super) fn nonce(&self, who: Address) -> u64 {
        self.db
            .cache
            .accounts
            .get(&who)
            .map(|a| a.info.nonce)
            .unwrap_or(0)
    }

    /// Runs `env` on top of the current state, in the next block at `timestamp` (the one that
    /// block will record), without changing it. `read_only` skips the nonce check (a call, not a
    /// transaction).
    pub(super) fn execute(
        &self,
        chain_id: u64,
        env: TxEnv,
        read_only: bool,
        timestamp: u64,
    ) -> Result<ResultAndState, LedgerError> {
        let ctx: MainnetContext<_> = Context::new(WrapDatabaseRef(&self.db), SpecId::CANCUN);
        let mut evm = ctx
            .with_block(self.block_env(self.head.number + 1, timestamp))
            .modify_cfg_chained(|cfg| {
                cfg.chain_id = chain_id;
                cfg.disable_nonce_check = read_only;
            })
            .build_mainnet();
        let out = evm.transact(env).map_err(refusal)?;
        Ok(ResultAndState::new(out.result, out.state))
    }

    /// The state root (built from every account and slot: on demand, never per block).
    pub(super) fn state_root(&self) -> B256 {
        let accounts = self.db.cache.accounts.iter().filter_map(|(address, acc)| {
            let storage: Vec<(B256, U256)> = acc
                .storage
                .iter()
                .filter(|(_, v)| !v.is_zero())
                .map(|(k, v)| (B256::from(*k), *v))
                .collect();
            let info = &acc.info;
            let empty = info.nonce == 0 && info.balance.is_zero() && info.code_hash == KECCAK_EMPTY;
            if empty && storage.is_empty() {
                return None;
            }
            let storage_root = if storage.is_empty() {
                EMPTY_ROOT_HASH
            } else {
                alloy_trie::root::storage_root_unhashed(storage)
            };
            Some((
                *address,
                TrieAccount {
                    nonce: info.nonce,
                    balance: info.balance,
                    storage_root,
                    code_hash: info.code_hash,
                },
            ))
        });
        alloy_trie::root::state_root_unhashed(accounts)
    }

    /// Writes the block, the transaction, its logs and its state diff in one SQLite transaction,
    /// then applies the diff in memory.
    pub(super) fn commit_block(
        &mut self,
        timestamp: u64,
        mined: Option<Mined<'_>>,
        state: EvmState,
    ) -> Result<Head, LedgerError> {
        let number = self.head.number + 1;
        let header = header(self.head.hash, number, timestamp, mined.as_ref());
        let hash = header.hash_slow();
        let tx_hash = mined.as_ref().map(|m| *m.tx.tx_hash());
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO blocks (number, timestamp, hash, tx, header) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                number as i64,
                timestamp as i64,
                hash.as_slice(),
                tx_hash.map(|h| h.to_vec()),
                alloy_rlp::encode(&header)
            ],
        )?;
        if let Some(m) = &mined {
            let tx_hash = *m.tx.tx_hash();
            tx.execute(
                "INSERT INTO txs (hash, block, sender, gas_used, contract, raw) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    tx_hash.as_slice(),
                    number as i64,
                    m.sender.as_slice(),
                    m.gas_used as i64,
                    m.contract.map(|c| c.to_vec()),
                    super::tx::encode(m.tx)
                ],
            )?;
            write_logs(&tx, number, tx_hash, m.logs)?;
        }
        write_state(&tx, &state)?;
        tx.commit()?;
        self.db.commit(state);
        self.head = Head {
            number,
            timestamp,
            hash,
        };
        Ok(self.head)
    }
}

/// Why revm refused to run a transaction, in the words geth uses (which wallets and libraries
/// match on: "nonce too low", "insufficient funds").
fn refusal<E: std::fmt::Display>(e: revm::context::result::EVMError<E>) -> LedgerError {
    use revm::context::result::{EVMError, InvalidTransaction as I};
    let m = match &e {
        EVMError::Transaction(I::NonceTooLow { tx, state }) => {
            format!("nonce too low: next nonce {state}, tx nonce {tx}")
        }
        EVMError::Transaction(I::NonceTooHigh { tx, state }) => format!(
            "nonce too high: next nonce {state}, tx nonce {tx} (this chain mines each transaction at once and queues none)"
        ),
        EVMError::Transaction(I::LackOfFundForMaxFee { fee, balance }) => {
            format!("insufficient funds for gas * price + value: balance {balance}, tx cost {fee}")
        }
        _ => e.to_string(),
    };
    LedgerError::Evm(m)
}

/// The transaction's logs, in order.
fn write_logs(
    tx: &rusqlite::Transaction<'_>,
    number: u64,
    tx_hash: B256,
    logs: &[Log],
) -> rusqlite::Result<()> {
    for (idx, log) in logs.iter().enumerate() {
        let topics: Vec<u8> = log.topics().iter().flat_map(|t| t.0).collect();
        tx.execute(
            "INSERT INTO logs (block, idx, tx, address, topic0, topics, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                number as i64,
                idx as i64,
                tx_hash.as_slice(),
                log.address.as_slice(),
                log.topics().first().map(|t| t.to_vec()),
                topics,
                log.data.data.to_vec()
            ],
        )?;
    }
    Ok(())
}

/// The accounts, code and storage slots the transaction touched (cleared ones deleted).
fn write_state(tx: &rusqlite::Transaction<'_>, state: &EvmState) -> rusqlite::Result<()> {
    for (address, account) in state {
        if !account.is_touched() {
            continue;
        }
        let a = address.as_slice();
        if account.is_selfdestructed() || account.is_created() {
            tx.execute("DELETE FROM storage WHERE address = ?1", params![a])?;
        }
        if account.is_selfdestructed() {
            tx.execute("DELETE FROM accounts WHERE address = ?1", params![a])?;
            continue;
        }
        let info = &account.info;
        tx.execute(
            "INSERT OR REPLACE INTO accounts (address, nonce, balance, code_hash) VALUES (?1, ?2, ?3, ?4)",
            params![a, info.nonce as i64, info.balance.to_be_bytes::<32>().to_vec(), info.code_hash.as_slice()],
        )?;
        if let Some(code) = &info.code
            && info.code_hash != KECCAK_EMPTY
        {
            tx.execute(
                "INSERT OR IGNORE INTO code (hash, code) VALUES (?1, ?2)",
                params![info.code_hash.as_slice(), code.original_bytes().to_vec()],
            )?;
        }
        for (slot, value) in &account.storage {
            if !value.is_changed() {
                continue;
            }
            let slot = slot.to_be_bytes::<32>();
            let present = value.present_value();
            if present.is_zero() {
                tx.execute(
                    "DELETE FROM storage WHERE address = ?1 AND slot = ?2",
                    params![a, slot.to_vec()],
                )?;
            } else {
                tx.execute(
                    "INSERT OR REPLACE INTO storage (address, slot, value) VALUES (?1, ?2, ?3)",
                    params![a, slot.to_vec(), present.to_be_bytes::<32>().to_vec()],
                )?;
            }
        }
    }
    Ok(())
}
