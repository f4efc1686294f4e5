//! Prepaid channels as the node accounts them: deposits seen, vouchers accepted, redemptions.

use super::*;

impl PaymentStore {
    /// A channel, with what its running requests have taken.
    pub fn channel(&self, id: B256) -> Result<Option<ChannelRecord>, X402Error> {
        let taken = self.taken();
        let pending = taken.pending.get(&id).copied().unwrap_or_default();
        Ok(self
            .with(|c| channel(c, id))?
            .map(|ch| ChannelRecord { pending, ..ch }))
    }

    /// Records what the chain says of a channel (deposit, withdrawal request, claimed).
    pub fn refresh_channel(
        &self,
        chain: u64,
        rec: &ChannelRecord,
        deposited: U256,
        closing: bool,
        claimed: U256,
    ) -> Result<(), X402Error> {
        self.durable(|c| {
            c.execute(
                "INSERT INTO channels (id, chain, payer, payee, salt, deposited, closing, accepted, redeemed, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET deposited = ?6, closing = ?7, updated_at = ?9",
                params![
                    rec.id.as_slice(),
                    chain as i64,
                    rec.payer.as_slice(),
                    rec.payee.as_slice(),
                    rec.salt.as_slice(),
                    deposited.to_string(),
                    closing,
                    claimed.to_string(),
                    now()
                ],
            )
            .map(drop)
        })
    }

    /// Takes voucher `key` (cumulative `cumulative`, nonce `nonce`, signed `signature`) for a
    /// request at `price`, if it covers what is owed and in flight plus the price and stays
    /// within the deposit. Atomic: of two vouchers racing for the same step, one wins; a voucher is taken
    /// once (unless its request failed and gave it back). Writes nothing: see the module doc.
    pub fn accept_voucher(
        &self,
        id: B256,
        key: B256,
        cumulative: U256,
        nonce: B256,
        price: U256,
        signature: &[u8],
    ) -> Result<Result<(), VoucherRefusal>, X402Error> {
        self.accept_voucher_again(id, key, cumulative, nonce, price, signature, false)
    }

    /// As [`PaymentStore::accept_voucher`]; with `again`, a voucher counted before is taken
    /// again when it is exactly the channel's next step (a scheme whose vouchers carry no nonce:
    /// the same ceiling recurs after a call that was charged less than its price, and taking it
    /// again still charges at most what the payer signed).
    #[allow(clippy::too_many_arguments)]
    pub fn accept_voucher_again(
        &self,
        id: B256,
        key: B256,
        cumulative: U256,
        nonce: B256,
        price: U256,
        signature: &[u8],
        again: bool,
    ) -> Result<Result<(), VoucherRefusal>, X402Error> {
        let mut taken = self.taken();
        if taken.locked.contains(&id) {
            return Ok(Err(VoucherRefusal::Locked));
        }
        if taken.vouchers.contains_key(&key) {
            return Ok(Err(VoucherRefusal::AlreadyUsed));
        }
        let pending = taken.pending.get(&id).copied().unwrap_or_default();
        // On the answer path: SQLite as it is, and what the journal holds beyond it (read with
        // the connection held, so the applier cannot move records between the two reads).
        let c = self.conn.lock();
        let refusal = (|| {
            let journal = self.journal.lock();
            let owed = journal.owed(&id);
            let counted = journal.counted(&key);
            drop(journal);
            let refusal = match channel(&c, id)?.map(|ch| ChannelRecord {
                accepted: ch.accepted + owed,
                ..ch
            }) {
                None => Some(VoucherRefusal::UnknownChannel),
                Some(ch) if ch.closing => Some(VoucherRefusal::Closing),
                Some(ch) if cumulative > ch.deposited => Some(VoucherRefusal::OverDeposit {
                    deposited: ch.deposited,
                }),
                // Exactly the next step: a higher ceiling would let more be claimed than the
                // payer owes (a voucher is claimable up to its amount), a lower one would not
                // cover what this request may cost.
                // Checked: a step that overflows is no step (U256's `+` wraps).
                Some(ch)
                    if ch
                        .accepted
                        .checked_add(pending)
                        .and_then(|a| a.checked_add(price))
                        != Some(cumulative) =>
                {
                    Some(VoucherRefusal::NotNext {
                        owed: ch.accepted.saturating_add(pending),
                    })
                }
                Some(_) => None,
            };
            // A counted voucher can still be the next step (a cheaper one before it failed
            // while it ran), so look it up every time: used, the paywall answers it again.
            let kept: Option<String> = if counted {
                Some("settled".into())
            } else {
                c.prepare_cached("SELECT state FROM vouchers WHERE key = ?1")?
                    .query_row([key.as_slice()], |r| r.get(0))
                    .optional()?
            };
            if kept.as_deref().is_some_and(|s| s != "released") && !(again && refusal.is_none()) {
                return Ok(Some(VoucherRefusal::AlreadyUsed));
            }
            Ok(refusal)
        })()
        .map_err(store_err)?;
        drop(c);
        if let Some(r) = refusal {
            return Ok(Err(r));
        }
        taken.vouchers.insert(
            key,
            TakenVoucher {
                channel: id,
                cumulative,
                nonce,
                price,
                signature: signature.to_vec(),
            },
        );
        taken.pending.insert(id, pending + price);
        Ok(Ok(()))
    }

    /// The request a taken voucher paid for succeeded and costs `charged` (at most the price it
    /// was taken for): that now counts as owed, the rest of the price is freed, and the voucher
    /// is kept for redemption (durable as the store's `counts` say). On an error the voucher
    /// stays taken: the caller gives it back.
    pub fn commit_voucher(&self, key: B256, charged: U256) -> Result<(), X402Error> {
        self.finish_voucher(key, Some(charged))
    }

    /// The request failed: its price is given back and the voucher may be presented again.
    pub fn release_voucher(&self, key: B256) -> Result<(), X402Error> {
        self.finish_voucher(key, None)
    }

    pub(super) fn finish_voucher(&self, key: B256, charged: Option<U256>) -> Result<(), X402Error> {
        let mut taken = self.taken();
        let Some(v) = taken.vouchers.get(&key).cloned() else {
            // Giving back twice is harmless; counting what was not taken would let an answer
            // out unpaid.
            return if charged.is_some() {
                Err(X402Error::Store(format!("voucher {key} is not taken")))
            } else {
                Ok(())
            };
        };
        if let Some(charged) = charged {
            if charged > v.price {
                return Err(X402Error::Store(format!(
                    "voucher {key} was taken for at most {} and cannot be charged {charged}",
                    v.price
                )));
            }
            // One record appended: SQLite takes it later ([`super::journal`]).
            self.journal.lock().append(super::journal::ToCount {
                key,
                channel: v.channel,
                cumulative: v.cumulative,
                nonce: v.nonce,
                charged,
                signature: &v.signature,
            })?;
            self.journal.ring();
        }
        taken.vouchers.remove(&key);
        let left = taken
            .pending
            .get(&v.channel)
            .copied()
            .unwrap_or_default()
            .saturating_sub(v.price);
        if left.is_zero() {
            taken.pending.remove(&v.channel);
        } else {
            taken.pending.insert(v.channel, left);
        }
        Ok(())
    }

    /// The voucher to claim `accepted` with on a channel that has `redeemed` so far: the
    /// largest counted one, when it is above what was redeemed (cumulative, nonce, signature).
    /// It covers `accepted` (see the module doc); the claim is `min(accepted, cumulative)`.
    pub fn redeemable(
        &self,
        id: B256,
        redeemed: U256,
    ) -> Result<Option<(U256, B256, Vec<u8>)>, X402Error> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT cumulative, nonce, signature FROM vouchers
                 WHERE channel = ?1 AND state = 'settled' AND cumulative > ?2
                 ORDER BY cumulative DESC LIMIT 1",
            )?
            .query_row(
                params![id.as_slice(), redeemed.to_be_bytes::<32>().as_slice()],
                |r| {
                    let b: Vec<u8> = r.get(0)?;
                    let n: Vec<u8> = r.get(1)?;
                    Ok((
                        U256::from_be_slice(&b),
                        B256::left_padding_from(&n),
                        r.get(2)?,
                    ))
                },
            )
            .optional()
        })
    }

    /// Prepaid (Escrow) channels with accepted vouchers not yet redeemed.
    pub fn unredeemed(&self) -> Result<Vec<ChannelRecord>, X402Error> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {CHANNEL_COLUMNS} FROM channels WHERE accepted != redeemed AND config IS NULL"
            ))?;
            stmt.query_map([], channel_row)?.collect()
        })
    }

    /// Records what the chain says of an x402 `batch-settlement` channel (its ABI-encoded
    /// `config` kept to claim with): balance and a pending withdrawal; a channel new to the node
    /// starts at what the chain says was claimed.
    pub fn refresh_batch_channel(
        &self,
        chain: u64,
        rec: &ChannelRecord,
        config: &[u8],
    ) -> Result<(), X402Error> {
        self.durable(|c| {
            c.execute(
                "INSERT INTO channels (id, chain, payer, payee, salt, deposited, closing, accepted, redeemed, updated_at, config)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)
                 ON CONFLICT (id) DO UPDATE SET deposited = ?6, closing = ?7, updated_at = ?9",
                params![
                    rec.id.as_slice(),
                    chain as i64,
                    rec.payer.as_slice(),
                    rec.payee.as_slice(),
                    rec.salt.as_slice(),
                    rec.deposited.to_string(),
                    rec.closing,
                    rec.redeemed.to_string(),
                    now(),
                    config
                ],
            )
            .map(drop)
        })
    }

    /// Records a `batch-settlement` channel's balance and pending withdrawal as the chain has
    /// them now.
    pub fn mark_batch_channel(
        &self,
        id: B256,
        st: &cairn_ledger::chain::BatchChannelState,
    ) -> Result<(), X402Error> {
        self.durable(|c| {
            c.execute(
                "UPDATE channels SET deposited = ?2, closing = ?3, updated_at = ?4 WHERE id = ?1",
                params![
                    id.as_slice(),
                    st.balance.to_string(),
                    st.withdraw_requested_at != 0,
                    now()
                ],
            )
            .map(drop)
        })
    }

    /// Holds channel `id` shut to new vouchers, if no voucher is taken on it now (atomic with
    /// taking one): `false` when one is (a request paid from it is running).
    pub fn lock_channel(&self, id: B256) -> bool {
        let mut taken = self.taken();
        if taken.pending.get(&id).is_some_and(|p| !p.is_zero()) || taken.locked.contains(&id) {
            return false;
        }
        taken.locked.insert(id);
        true
    }

    /// Opens a channel [`PaymentStore::lock_channel`] held.
    pub fn unlock_channel(&self, id: B256) {
        self.taken().locked.remove(&id);
    }

    /// `batch-settlement` channels with accepted vouchers not yet claimed, with their configs.
    pub fn unclaimed_batch(&self) -> Result<Vec<(ChannelRecord, Vec<u8>)>, X402Error> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {CHANNEL_COLUMNS}, config FROM channels WHERE accepted != redeemed AND config IS NOT NULL"
            ))?;
            stmt.query_map([], |r| Ok((channel_row(r)?, r.get::<_, Vec<u8>>(9)?)))?
                .collect()
        })
    }

    /// Takes channel `id`'s turn at a transaction sent at the node's own gas (a deposit, a
    /// refund), the channel having been charged `charged` so far: its first is free, and each
    /// later one waits until `allowance` (at least 1) more was charged since the last. Atomic, and
    /// on disk before the transaction goes out, so neither a race nor a restart gives a turn
    /// twice. `Err(short)`: how much more must be charged first.
    pub fn take_gas_turn(
        &self,
        id: B256,
        charged: U256,
        allowance: U256,
    ) -> Result<Result<(), U256>, X402Error> {
        self.durable(|c| {
            let before = gas_turn(c, id)?;
            if let Some(at) = before {
                let due = at.saturating_add(allowance.max(U256::from(1)));
                if charged < due {
                    return Ok(Err(due - charged));
                }
            }
            c.execute(
                "INSERT INTO gas_turns (channel, charged, previous, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (channel) DO UPDATE SET charged = ?2, previous = ?3, updated_at = ?4",
                params![
                    id.as_slice(),
                    charged.to_string(),
                    before.map(|b| b.to_string()),
                    now()
                ],
            )?;
            Ok(Ok(()))
        })
    }

    /// Gives back the turn [`PaymentStore::take_gas_turn`] took at `charged`: its transaction
    /// surely never went out. Only if no later one took the channel's turn since (charges only
    /// grow, so a turn's value is never taken twice).
    pub fn give_gas_turn_back(&self, id: B256, charged: U256) -> Result<(), X402Error> {
        self.durable(|c| {
            if gas_turn(c, id)? != Some(charged) {
                return Ok(());
            }
            c.execute(
                "UPDATE gas_turns SET charged = previous, previous = NULL, updated_at = ?2
                 WHERE channel = ?1 AND previous IS NOT NULL",
                params![id.as_slice(), now()],
            )?;
            c.execute(
                "DELETE FROM gas_turns WHERE channel = ?1 AND charged = ?2",
                params![id.as_slice(), charged.to_string()],
            )
            .map(drop)
        })
    }

    /// Records a redemption.
    pub fn set_redeemed(&self, id: B256, redeemed: U256) -> Result<(), X402Error> {
        self.durable(|c| {
            c.execute(
                "UPDATE channels SET redeemed = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.as_slice(), redeemed.to_string(), now()],
            )
            .map(drop)
        })
    }
}

/// What channel `id` had been charged when the node last sent a transaction for it at its own
/// gas.
fn gas_turn(c: &Connection, id: B256) -> rusqlite::Result<Option<U256>> {
    c.query_row(
        "SELECT charged FROM gas_turns WHERE channel = ?1",
        [id.as_slice()],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map(|v| v.map(u256))
}
