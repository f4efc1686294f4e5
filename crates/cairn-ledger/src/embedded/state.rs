//! Executing a transaction in revm, the state root, and committing a block to SQLite.

use super::*;

impl Inner {
    /// Runs `tx` on top of the current state without changing it.
    pub(super) fn execute(
        &self,
        chain_id: u64,
        caller: Address,
        tx: &TxRequest,
        read_only: bool,
    ) -> Result<ResultAndState, LedgerError> {
        let nonce = self
            .db
            .cache
            .accounts
            .get(&caller)
            .map(|a| a.info.nonce)
            .unwrap_or(0);
        let env = TxEnv::builder()
            .caller(caller)
            .kind(match tx.to {
                Some(to) => TxKind::Call(to),
                None => TxKind::Create,
            })
            .data(tx.data.clone())
            .value(tx.value)
            .gas_limit(BLOCK_GAS_LIMIT)
            .gas_price(0)
            .nonce(nonce)
            .chain_id(Some(chain_id))
            .build_fill();
        let timestamp = self.next_timestamp();
        let ctx: MainnetContext<_> = Context::new(WrapDatabaseRef(&self.db), SpecId::CANCUN);
        let mut evm = ctx
            .with_block(self.block_env(self.head.number + 1, timestamp))
            .modify_cfg_chained(|cfg| {
                cfg.chain_id = chain_id;
                cfg.disable_nonce_check = read_only;
            })
            .build_mainnet();
        let out = evm
            .transact(env)
            .map_err(|e| LedgerError::Evm(e.to_string()))?;
        Ok(ResultAndState::new(out.result, out.state))
    }

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
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_block(
        &mut self,
        timestamp: u64,
        tx_hash: B256,
        sender: Address,
        gas_used: u64,
        contract: Option<Address>,
        logs: &[Log],
        state: EvmState,
    ) -> Result<Head, LedgerError> {
        let number = self.head.number + 1;
        let hash = keccak256(
            [
                self.head.hash.as_slice(),
                &number.to_be_bytes(),
                &timestamp.to_be_bytes(),
                tx_hash.as_slice(),
            ]
            .concat(),
        );
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO blocks (number, timestamp, hash, tx) VALUES (?1, ?2, ?3, ?4)",
            params![
                number as i64,
                timestamp as i64,
                hash.as_slice(),
                tx_hash.as_slice()
            ],
        )?;
        tx.execute(
            "INSERT INTO txs (hash, block, sender, gas_used, contract) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                tx_hash.as_slice(),
                number as i64,
                sender.as_slice(),
                gas_used as i64,
                contract.map(|c| c.to_vec())
            ],
        )?;
        write_logs(&tx, number, tx_hash, logs)?;
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
