//! Prepaid channels as the node accounts them: deposits seen, vouchers accepted, redemptions.

use super::*;

impl PaymentStore {
    /// A channel.
    pub fn channel(&self, id: B256) -> Result<Option<ChannelRecord>, X402Error> {
        self.with(|c| channel(c, id))
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
        self.with(|c| {
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

    /// Takes voucher `key` (cumulative `cumulative`, signed `signature`) for a request at
    /// `price`, if it covers what is owed and in flight plus the price and stays within the
    /// deposit. Atomic: of two vouchers racing for the same step, one wins; a voucher is taken
    /// once (unless its request failed and gave it back).
    pub fn accept_voucher(
        &self,
        id: B256,
        key: B256,
        cumulative: U256,
        price: U256,
        signature: &[u8],
    ) -> Result<Result<(), VoucherRefusal>, X402Error> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let seen: Option<String> = tx
                .prepare_cached("SELECT state FROM vouchers WHERE key = ?1")?
                .query_row([key.as_slice()], |r| r.get(0))
                .optional()?;
            if seen.as_deref().is_some_and(|s| s != "released") {
                return Ok(Err(VoucherRefusal::AlreadyUsed));
            }
            let Some(ch) = channel(&tx, id)? else {
                return Ok(Err(VoucherRefusal::UnknownChannel));
            };
            if ch.closing {
                return Ok(Err(VoucherRefusal::Closing));
            }
            if cumulative > ch.deposited {
                return Ok(Err(VoucherRefusal::OverDeposit {
                    deposited: ch.deposited,
                }));
            }
            // Exactly the next step: a voucher promising more would never be the one redeemed
            // (redemption takes one not above what is owed), so a payer could use the service
            // on vouchers the node can never cash and withdraw the deposit.
            let owed = ch.accepted + ch.pending;
            if cumulative != owed + price {
                return Ok(Err(VoucherRefusal::NotNext { owed }));
            }
            tx.prepare_cached(
                "INSERT INTO vouchers (key, channel, cumulative, price, signature, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'reserved', ?6)
                 ON CONFLICT (key) DO UPDATE SET price = ?4, signature = ?5, state = 'reserved'",
            )?
            .execute(params![
                key.as_slice(),
                id.as_slice(),
                cumulative.to_be_bytes::<32>().as_slice(),
                price.to_string(),
                signature,
                now()
            ])?;
            tx.prepare_cached("UPDATE channels SET pending = ?2, updated_at = ?3 WHERE id = ?1")?
                .execute(params![id.as_slice(), (ch.pending + price).to_string(), now()])?;
            tx.commit()?;
            Ok(Ok(()))
        })
    }

    /// The request a taken voucher paid for succeeded: its price now counts as owed.
    pub fn commit_voucher(&self, key: B256) -> Result<(), X402Error> {
        self.finish_voucher(key, true)
    }

    /// The request failed: its price is given back and the voucher may be presented again.
    pub fn release_voucher(&self, key: B256) -> Result<(), X402Error> {
        self.finish_voucher(key, false)
    }

    pub(super) fn finish_voucher(&self, key: B256, succeeded: bool) -> Result<(), X402Error> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row: Option<(Vec<u8>, String)> = tx
                .prepare_cached(
                    "SELECT channel, price FROM vouchers WHERE key = ?1 AND state = 'reserved'",
                )?
                .query_row([key.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((id, price)) = row else {
                return Ok(());
            };
            let price = u256(price);
            let id = B256::try_from(id.as_slice()).unwrap_or_default();
            if let Some(ch) = channel(&tx, id)? {
                let accepted = if succeeded {
                    ch.accepted + price
                } else {
                    ch.accepted
                };
                tx.prepare_cached(
                    "UPDATE channels SET accepted = ?2, pending = ?3, updated_at = ?4 WHERE id = ?1",
                )?
                .execute(params![
                    id.as_slice(),
                    accepted.to_string(),
                    ch.pending.saturating_sub(price).to_string(),
                    now()
                ])?;
            }
            tx.prepare_cached("UPDATE vouchers SET state = ?2 WHERE key = ?1")?
                .execute(params![
                    key.as_slice(),
                    if succeeded { "settled" } else { "released" }
                ])?;
            tx.commit()
        })
    }

    /// The voucher to redeem for a channel: the largest counted one not above what is owed
    /// (`accepted`) and above what was already claimed. (cumulative, signature).
    pub fn redeemable(
        &self,
        id: B256,
        accepted: U256,
        redeemed: U256,
    ) -> Result<Option<(U256, Vec<u8>)>, X402Error> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT cumulative, signature FROM vouchers
                 WHERE channel = ?1 AND state = 'settled' AND cumulative <= ?2 AND cumulative > ?3
                 ORDER BY cumulative DESC LIMIT 1",
            )?
            .query_row(
                params![
                    id.as_slice(),
                    accepted.to_be_bytes::<32>().as_slice(),
                    redeemed.to_be_bytes::<32>().as_slice()
                ],
                |r| {
                    let b: Vec<u8> = r.get(0)?;
                    Ok((U256::from_be_slice(&b), r.get(1)?))
                },
            )
            .optional()
        })
    }

    /// Channels with accepted vouchers not yet redeemed.
    pub fn unredeemed(&self) -> Result<Vec<ChannelRecord>, X402Error> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {CHANNEL_COLUMNS} FROM channels WHERE accepted != redeemed"
            ))?;
            stmt.query_map([], channel_row)?.collect()
        })
    }

    /// Records a redemption.
    pub fn set_redeemed(&self, id: B256, redeemed: U256) -> Result<(), X402Error> {
        self.with(|c| {
            c.execute(
                "UPDATE channels SET redeemed = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.as_slice(), redeemed.to_string(), now()],
            )
            .map(drop)
        })
    }
}
