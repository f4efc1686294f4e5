//! Settlements left in flight by a crash or a timeout, finished or released from what the chain
//! says.

use super::*;

/// How long past its expiry a used authorization whose transfer is not found stays pending
/// (clocks differ from the chain's; logs are indexed after the state changes).
const UNSEEN_USE_GRACE_SECS: u64 = 300;

impl Facilitator {
    /// Looks at a pending payment again: settled once the token records its nonce as used by
    /// a transfer to the payee of the amount; failed when the nonce went to another transfer
    /// (the payer signed two with one nonce) or expired unused; else still pending.
    pub async fn reconcile(&self, rec: &PaymentRecord) -> Result<PaymentState, X402Error> {
        if rec.state != PaymentState::Pending {
            return Ok(rec.state);
        }
        if rec.scheme == crate::upto::SCHEME {
            return self.reconcile_upto(rec).await;
        }
        let p = exact::parse(&serde_json::from_str(&rec.payload).unwrap_or(Value::Null))
            .map_err(X402Error::Invalid)?;
        let a = &p.authorization;
        // The transaction that paid, as the chain has it: not always the one this facilitator
        // noted (a sender's replacement with higher fees, a relay by someone else).
        let mut paid_by = None;
        let (state, reason) = if self.chain.authorization_used(a.from, a.nonce).await? {
            match self.paid_to_us(rec.key, a).await? {
                Some(u) if u.paid => {
                    paid_by = Some(u.tx.to_string());
                    (PaymentState::Settled, None)
                }
                Some(_) => (
                    PaymentState::Failed,
                    Some("the payer's nonce was used by another transfer, not this payment"),
                ),
                // Ours is sent after the payment's `from_block` was taken, so once the
                // authorization has expired (with a grace for clocks and log indexing) a use
                // not found since then is not ours.
                None if a
                    .valid_before
                    .saturating_add(U256::from(UNSEEN_USE_GRACE_SECS))
                    <= U256::from(now_secs()) =>
                {
                    (
                        PaymentState::Failed,
                        Some("the payer's nonce was used, by no transfer to this payee on record"),
                    )
                }
                // Used, but its transfer is not readable yet: look again next round.
                None => (PaymentState::Pending, None),
            }
        } else if a.valid_before <= U256::from(now_secs()) {
            (
                PaymentState::Failed,
                Some("the authorization expired before its transfer was mined"),
            )
        } else {
            (PaymentState::Pending, None)
        };
        if state != PaymentState::Pending {
            // A failed payment's withheld answer is dropped: it was never paid for.
            let keep = (state == PaymentState::Settled)
                .then_some(rec.response.as_deref())
                .flatten();
            self.store
                .set_state(rec.key, state, paid_by.as_deref(), reason, keep)?;
        }
        Ok(state)
    }

    /// Reconciles pending payments every `every`, forever: see [`Facilitator::resume`].
    pub async fn reconcile_loop(self: std::sync::Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.reconcile_all().await;
        }
    }

    /// One pass of the reconciler over every pending payment.
    pub async fn reconcile_all(&self) {
        // A transfer priced out by a risen base fee is re-priced now, not at the next payment
        // (without one it would wait until its authorization expired, its answer withheld).
        if let Err(e) = self.chain.ledger().tend(&self.signer).await {
            tracing::warn!(error = %e, "looking after a transfer still out");
        }
        match self.chain.ledger().head().await {
            Ok(h) => self
                .head
                .store(h.number, std::sync::atomic::Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "reading the chain head"),
        }
        match self.store.pending() {
            Ok(list) => {
                tracing::debug!(pending = list.len(), "reconciling payments");
                for rec in list {
                    if let Err(e) = self.resume(&rec).await {
                        tracing::warn!(key = %rec.key, error = %e, "reconciling a payment");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing pending payments"),
        }
    }

    /// Reconciles a pending payment and, when its sender died before a transaction was on
    /// record and the authorization is still unused and valid, sends its transfer again (the
    /// payer was answered, or the answer is kept: they must not lose it for our crash).
    pub async fn resume(&self, rec: &PaymentRecord) -> Result<PaymentState, X402Error> {
        let Some(_sending) = self.begin_send(rec.key) else {
            return Ok(rec.state);
        };
        let state = self.reconcile(rec).await?;
        tracing::debug!(key = %rec.key, ?state, tx = ?rec.tx, "reconciled a payment");
        if state != PaymentState::Pending || rec.tx.is_some() || rec.scheme != "exact" {
            return Ok(state);
        }
        let p = exact::parse(&serde_json::from_str(&rec.payload).unwrap_or(Value::Null))
            .map_err(X402Error::Invalid)?;
        let signature =
            alloy_primitives::Signature::try_from(p.signature.as_ref()).map_err(|e| {
                X402Error::Invalid(Reason::new(
                    "invalid_exact_evm_payload_signature",
                    format!("the kept signature does not parse: {e}"),
                ))
            })?;
        let c = CheckedExact {
            authorization: p.authorization,
            signature,
            from_block: rec.from_block.unwrap_or(0),
        };
        tracing::info!(key = %rec.key, "sending the transfer of a payment whose sender stopped mid-send");
        Ok(
            match self.send(rec.key, &c, rec.response.as_deref(), true).await {
                Settlement::Settled(_) => PaymentState::Settled,
                Settlement::Pending(_) => PaymentState::Pending,
                Settlement::Failed(_) => PaymentState::Failed,
            },
        )
    }
}
