//! Transactions on the embedded chain. Each is a signed EIP-2718 transaction, whether a Cairn role
//! sent it ([`Ledger::send`]: an EIP-1559 transaction offering no fee, signed here) or a wallet did
//! (`eth_sendRawTransaction`: [`EmbeddedLedger::send_raw`]); both are admitted by the same checks
//! and mined by [`EmbeddedLedger::mine`].

use alloy_consensus::{SignableTransaction, Transaction as _, TxEip1559, TxEnvelope, TxType};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};

use super::*;

/// The largest raw transaction accepted (geth's pool limit: four 32 KiB slots).
pub const MAX_RAW_TX_BYTES: usize = 128 * 1024;

/// A Cairn role's transaction: EIP-1559, no fee (the base fee is 0), the block's gas.
fn sign(chain_id: u64, nonce: u64, signer: &PrivateKeySigner, tx: &TxRequest) -> TxEnvelope {
    let unsigned = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: BLOCK_GAS_LIMIT,
        max_fee_per_gas: 0,
        max_priority_fee_per_gas: 0,
        to: match tx.to {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        },
        value: tx.value,
        access_list: Default::default(),
        input: tx.data.clone(),
    };
    let sig =
        cairn_core::sig::SigningKey::from_signer(signer).sign_prehash(&unsigned.signature_hash());
    TxEnvelope::Eip1559(unsigned.into_signed(sig))
}

/// Decodes a wallet's raw transaction and recovers its sender, refusing what this chain does not
/// take: trailing bytes, blob and set-code transactions, a missing or foreign chain id (no
/// replay from other chains), and a high-s signature.
pub(super) fn decode_raw(chain_id: u64, raw: &[u8]) -> Result<(TxEnvelope, Address), LedgerError> {
    if raw.len() > MAX_RAW_TX_BYTES {
        return Err(LedgerError::Invalid(format!(
            "the transaction is {} bytes; at most {MAX_RAW_TX_BYTES} are accepted",
            raw.len()
        )));
    }
    let mut rest = raw;
    let tx = TxEnvelope::decode_2718(&mut rest).map_err(|e| {
        LedgerError::Invalid(format!(
            "not a signed Ethereum transaction (EIP-2718 encoding): {e}"
        ))
    })?;
    if !rest.is_empty() {
        return Err(LedgerError::Invalid(format!(
            "{} bytes follow the transaction; send exactly one",
            rest.len()
        )));
    }
    if !matches!(
        tx.tx_type(),
        TxType::Legacy | TxType::Eip2930 | TxType::Eip1559
    ) {
        return Err(LedgerError::Invalid(format!(
            "transaction type {} is not accepted here; send a legacy, EIP-2930 or EIP-1559 transaction",
            tx.tx_type()
        )));
    }
    match tx.chain_id() {
        Some(id) if id == chain_id => {}
        Some(id) => {
            return Err(LedgerError::Invalid(format!(
                "the transaction is signed for chain {id}; this chain is {chain_id}"
            )));
        }
        None => {
            return Err(LedgerError::Invalid(format!(
                "the transaction names no chain id (pre-EIP-155), so it could be replayed on any chain; sign it for chain {chain_id}"
            )));
        }
    }
    let sender = cairn_core::sig::recover_prehash(tx.signature(), &tx.signature_hash())
        .map_err(|e| LedgerError::Invalid(format!("the transaction's signature: {e}")))?;
    Ok((tx, sender))
}

/// What revm runs for `tx`: its own nonce, gas and fees, so revm's checks (nonce, intrinsic gas,
/// the sender's funds) are the chain's.
pub(super) fn env_of(
    chain_id: u64,
    tx: &TxEnvelope,
    sender: Address,
) -> Result<TxEnv, LedgerError> {
    let mut b = TxEnv::builder()
        .tx_type(Some(tx.tx_type() as u8))
        .caller(sender)
        .kind(tx.kind())
        .data(tx.input().clone())
        .value(tx.value())
        .gas_limit(tx.gas_limit())
        .gas_price(tx.max_fee_per_gas())
        .gas_priority_fee(tx.max_priority_fee_per_gas())
        .nonce(tx.nonce())
        .chain_id(Some(chain_id));
    if let Some(list) = tx.access_list() {
        b = b.access_list(list.clone());
    }
    b.build()
        .map_err(|e| LedgerError::Invalid(format!("the transaction: {e:?}")))
}

/// What one unit of gas cost the sender: the priority fee it offered (the base fee is 0), or a
/// legacy transaction's gas price.
pub(super) fn effective_gas_price(tx: &TxEnvelope) -> u128 {
    tx.effective_gas_price(Some(0))
}

impl EmbeddedLedger {
    /// Admits a wallet's signed transaction (`eth_sendRawTransaction`) and mines it in its own
    /// block. Refused, with nothing changed, when it is malformed, for another chain, signed in
    /// high-s form, already mined, out of nonce order, unaffordable, or would revert.
    pub fn send_raw(&self, raw: &[u8]) -> Result<TxOutcome, LedgerError> {
        let (tx, sender) = decode_raw(self.chain_id, raw)?;
        self.writable()?;
        self.mine(&mut self.lock(), tx, sender)
    }

    /// A Cairn role's transaction: its nonce is read, and it is signed and mined, under one hold
    /// of the lock, so concurrent senders (and wallets using the same key) cannot race it.
    pub(super) fn sign_and_mine(
        &self,
        signer: &PrivateKeySigner,
        tx: &TxRequest,
    ) -> Result<TxOutcome, LedgerError> {
        self.writable()?;
        let mut inner = self.lock();
        let nonce = inner.nonce(signer.address());
        let signed = sign(self.chain_id, nonce, signer, tx);
        self.mine(&mut inner, signed, signer.address())
    }

    /// Runs `tx` from `sender` on the head state and, when it succeeds, commits it as the next
    /// block.
    fn mine(
        &self,
        inner: &mut Inner,
        tx: TxEnvelope,
        sender: Address,
    ) -> Result<TxOutcome, LedgerError> {
        let hash = *tx.tx_hash();
        let known: Option<i64> = inner
            .conn
            .query_row(
                "SELECT block FROM txs WHERE hash = ?1",
                params![hash.as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(block) = known {
            return Err(LedgerError::Invalid(format!(
                "already known: transaction {hash} is mined (block {block})"
            )));
        }
        let env = env_of(self.chain_id, &tx, sender)?;
        let timestamp = inner.next_timestamp();
        let out = inner.execute(self.chain_id, env, false, timestamp)?;
        let gas_used = out.result.tx_gas_used();
        let (logs, contract) = match out.result {
            ExecutionResult::Success { logs, output, .. } => {
                let contract = output.address().copied();
                (logs, contract)
            }
            ExecutionResult::Revert { output, .. } => return Err(revert(output)),
            ExecutionResult::Halt { reason, .. } => {
                return Err(LedgerError::Evm(format!("halted: {reason:?}")));
            }
        };
        let head = inner.commit_block(
            timestamp,
            Some(state::Mined {
                tx: &tx,
                sender,
                gas_used,
                contract,
                logs: &logs,
            }),
            out.state,
        )?;
        Ok(TxOutcome {
            hash,
            block: head.number,
            gas_used,
            logs,
            contract_address: contract,
        })
    }

    /// Commits an empty block (`evm_mine` on a dev chain), at the clock's time.
    pub fn mine_empty(&self) -> Result<BlockInfo, LedgerError> {
        self.writable()?;
        let mut inner = self.lock();
        let timestamp = inner.next_timestamp();
        let head = inner.commit_block(timestamp, None, Default::default())?;
        Ok(BlockInfo {
            number: head.number,
            timestamp: head.timestamp,
        })
    }
}

/// The signed transaction's bytes as they are stored and served.
pub(super) fn encode(tx: &TxEnvelope) -> Vec<u8> {
    tx.encoded_2718()
}
