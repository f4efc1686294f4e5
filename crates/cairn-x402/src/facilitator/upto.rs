//! The facilitator's side of `upto`: the offer (naming this facilitator as the one that may
//! settle), local and chain checks, reservation in the durable store, and settling the amount a
//! call cost through the x402 `upto` proxy.

use cairn_ledger::UptoContracts;

use super::*;
use crate::upto::{self, CheckedUpto};

impl Facilitator {
    /// Permit2 and the `upto` proxy, when this chain has them.
    pub fn upto_contracts(&self) -> Option<UptoContracts> {
        self.chain.deployment().upto
    }

    /// The account that settles (and pays the gas): the `facilitatorAddress` payers name.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The `upto` offer for at most `max` paid to `pay_to`, when the chain has the contracts.
    pub fn upto_offer(
        &self,
        pay_to: Address,
        max: U256,
        max_timeout_seconds: u64,
    ) -> Option<PaymentRequirements> {
        self.upto_contracts()?;
        Some(PaymentRequirements {
            scheme: upto::SCHEME.into(),
            network: self.network(),
            amount: max,
            asset: self.token(),
            pay_to,
            max_timeout_seconds,
            extra: json!({
                "assetTransferMethod": "permit2",
                "facilitatorAddress": self.address(),
                "name": self.token_name,
                "version": self.token_version,
            }),
        })
    }

    /// Local checks of an `upto` payload against the offer `req` (scheme, network, asset, then
    /// the payload's terms and signature). Microseconds; no chain access.
    pub fn check_upto(
        &self,
        payload: &Value,
        extensions: Option<&Value>,
        req: &PaymentRequirements,
        now: u64,
    ) -> Result<CheckedUpto, X402Error> {
        let invalid = |code, m: String| Err(X402Error::Invalid(Reason::new(code, m)));
        let Some(contracts) = self.upto_contracts() else {
            return invalid(
                "unsupported_scheme",
                "this chain has no Permit2 and x402 upto proxy; pay with exact or prepaid".into(),
            );
        };
        if req.scheme != upto::SCHEME {
            return invalid(
                "invalid_upto_evm_scheme",
                format!("scheme {:?} is not upto", req.scheme),
            );
        }
        if chain_id_of(&req.network) != Some(self.chain_id()) {
            return invalid(
                "invalid_upto_evm_network_mismatch",
                format!(
                    "network {:?} is not this facilitator's {}",
                    req.network,
                    self.network()
                ),
            );
        }
        if req.asset != self.token() {
            return invalid(
                "permit2_token_mismatch",
                format!(
                    "asset {} is not the token {} settled here",
                    req.asset,
                    self.token()
                ),
            );
        }
        let parsed = upto::parse(payload).map_err(X402Error::Invalid)?;
        upto::verify_local(
            &parsed,
            extensions,
            req,
            &upto::Context {
                upto: &contracts,
                facilitator: self.address(),
                chain_id: self.chain_id(),
                token_domain: &self.domain,
                now,
            },
        )
    }

    /// What a signature cannot prove: the payer is a plain account (its ECDSA signature is what
    /// the contract checks), the Permit2 nonce is unused, and Permit2 may move, and the payer
    /// holds, the maximum beyond what their other open permits here may still take. `hold`:
    /// count this maximum as open until [`Facilitator::settle_upto`] or
    /// [`Facilitator::release_upto`] closes it.
    pub async fn check_upto_chain(&self, c: &CheckedUpto, hold: bool) -> Result<(), X402Error> {
        let a = &c.authorization;
        let contracts = self.chain.upto()?;
        let invalid = |code, m: String| Err(X402Error::Invalid(Reason::new(code, m)));
        if !self.chain.ledger().code(a.owner).await?.is_empty() {
            return invalid(
                "invalid_permit2_signature",
                format!(
                    "{} is a contract (or delegated) account; only plain accounts' ECDSA permits are taken here",
                    a.owner
                ),
            );
        }
        // Held across the reads: two permits of one payer are never checked against the same
        // balance at once.
        let mut open = self.open_upto.lock().await;
        let already = open.get(&a.owner).copied().unwrap_or_default();
        let needed = already.saturating_add(a.max);
        if self.chain.permit2_nonce_used(a.owner, a.nonce).await? {
            return invalid(
                "permit2_invalid_nonce",
                format!(
                    "Permit2 nonce {} of {} is already used; sign a new payment",
                    a.nonce, a.owner
                ),
            );
        }
        let allowance = self
            .chain
            .token_allowance(a.owner, contracts.permit2)
            .await?;
        // An EIP-2612 approval riding along replaces the allowance with the maximum when the
        // settlement submits it (whatever the allowance was), if it is still the payer's next
        // token nonce: other open permits must then fit inside it too.
        let approved = match &c.permit2612 {
            Some((permit, nonce)) => {
                let current = self.chain.token_nonce(a.owner).await?;
                if current != *nonce {
                    return invalid(
                        "eip2612_nonce_mismatch",
                        format!(
                            "the EIP-2612 approval was signed at nonce {nonce}; {}'s next is {current}: sign it again",
                            a.owner
                        ),
                    );
                }
                permit.value
            }
            None => allowance,
        };
        if approved < needed {
            return invalid(
                "permit2_allowance_required",
                format!(
                    "{} lets Permit2 ({}) move {allowance} of the token; this maximum ({}) and the open ones ({already}) need {needed}: approve Permit2 on the token for more",
                    a.owner, contracts.permit2, a.max
                ),
            );
        }
        let balance = self.chain.token_balance(a.owner).await?;
        if balance < needed {
            return invalid(
                "permit2_insufficient_balance",
                format!(
                    "{} holds {balance} of the token; this maximum ({}) and the open ones ({already}) need {needed}: fund the account",
                    a.owner, a.max
                ),
            );
        }
        if hold {
            open.insert(a.owner, needed);
        }
        Ok(())
    }

    /// Closes a held permit's maximum (see [`Facilitator::check_upto_chain`]).
    async fn close_upto(&self, c: &CheckedUpto) {
        let a = &c.authorization;
        let mut open = self.open_upto.lock().await;
        if let Some(v) = open.get_mut(&a.owner) {
            *v = v.saturating_sub(a.max);
            if v.is_zero() {
                open.remove(&a.owner);
            }
        }
    }

    /// Gives a reserved `upto` payment back uncharged (its call failed or was refused): the
    /// permit may be presented again.
    pub async fn release_upto(&self, key: B256, c: &CheckedUpto, why: Option<&str>) {
        self.store.release(key, why);
        self.close_upto(c).await;
    }

    /// The payment reference of the permit `c` (the key its record has in the store).
    pub fn upto_key(&self, c: &CheckedUpto) -> Result<B256, X402Error> {
        Ok(c.payment_ref(self.chain.upto()?.permit2))
    }

    /// Reserves a checked `upto` payment for a request on `resource`; its key is the payment
    /// reference.
    pub fn reserve_upto(
        &self,
        c: &CheckedUpto,
        resource: &str,
        payload: &Value,
    ) -> Result<(B256, Reserve), X402Error> {
        let key = self.upto_key(c)?;
        let payload = payload.to_string();
        let head = self.head.load(std::sync::atomic::Ordering::Relaxed);
        let r = self.store.reserve(&NewPayment {
            key,
            chain: self.chain_id(),
            scheme: upto::SCHEME,
            payer: c.authorization.owner,
            amount: c.authorization.max,
            resource,
            payload: &payload,
            from_block: head,
        })?;
        Ok((key, r))
    }

    /// Settles `amount` (at most the maximum) of a reserved `upto` payment and records the
    /// outcome. Nothing to settle (0) sends no transaction. Never settles a payment the store
    /// does not hold as reserved by this caller.
    pub async fn settle_upto(&self, key: B256, c: &CheckedUpto, amount: U256) -> Settlement {
        let outcome = self.settle_upto_inner(key, c, amount).await;
        self.close_upto(c).await;
        outcome
    }

    async fn settle_upto_inner(&self, key: B256, c: &CheckedUpto, amount: U256) -> Settlement {
        let a = &c.authorization;
        if a.deadline <= U256::from(now_secs()) {
            self.store
                .release(key, Some("the permit expired before the call ended"));
            return Settlement::Failed(Reason::new(
                "permit2_deadline_expired",
                "the permit expired before the call ended; sign one valid for longer",
            ));
        }
        if amount > a.max {
            self.store
                .release(key, Some("charged more than the signed maximum"));
            return Settlement::Failed(Reason::new(
                "invalid_upto_evm_payload_settlement_exceeds_amount",
                format!("the charge {amount} is above the signed maximum {}", a.max),
            ));
        }
        if amount.is_zero() {
            if let Err(e) = self
                .store
                .set_state(key, PaymentState::Settled, None, None, None)
            {
                tracing::error!(%key, error = %e, "recording a zero settlement");
            }
            return Settlement::Settled(String::new());
        }
        let Some(_sending) = self.begin_send(key) else {
            return Settlement::Pending(None);
        };
        if let Err(e) = self.store.mark_pending(key, None) {
            tracing::error!(%key, error = %e, "marking a payment pending");
            self.store.release(key, Some("the payment store failed"));
            return Settlement::Failed(Reason::new(
                "unexpected_settle_error",
                "the payment could not be recorded; nothing was sent, retry with the same payment",
            ));
        }
        let sent = super::past_busy(|| async {
            match &c.permit2612 {
                Some((permit, _)) => {
                    self.chain
                        .settle_upto_with_permit(
                            &self.signer,
                            permit,
                            a,
                            amount,
                            c.signature.clone(),
                        )
                        .await
                }
                None => {
                    self.chain
                        .settle_upto(&self.signer, a, amount, c.signature.clone())
                        .await
                }
            }
        })
        .await;
        let outcome = match sent {
            Ok(out) => Settlement::Settled(out.hash.to_string()),
            Err(LedgerError::Pending { hash, .. }) => Settlement::Pending(Some(hash.to_string())),
            Err(LedgerError::Reverted { reason, .. }) => Settlement::Failed(Reason::new(
                revert_code(&reason),
                format!("the settlement reverted: {reason}"),
            )),
            // Nothing was sent (refused before broadcast, or our sender still busy after one
            // more try): a use of the nonce now would be someone else's, so this payment failed.
            Err(e) => Settlement::Failed(Reason::new(
                SEND_FAILED,
                format!("the settlement could not be sent: {e}"),
            )),
        };
        let (state, tx, reason) = match &outcome {
            Settlement::Settled(tx) => (PaymentState::Settled, Some(tx.as_str()), None),
            Settlement::Pending(tx) => (PaymentState::Pending, tx.as_deref(), None),
            Settlement::Failed(r) => (PaymentState::Failed, None, Some(r.to_string())),
        };
        if let Err(e) = self
            .store
            .set_state(key, state, tx, reason.as_deref(), None)
        {
            tracing::error!(%key, error = %e, "recording a settlement outcome");
        }
        outcome
    }

    /// A pending `upto` settlement looked at again: settled once the proxy's `Settled` event
    /// for this payer, this facilitator and this nonce is on chain (searched from the block
    /// noted at reservation); failed when the nonce was used otherwise (the payer revoked it)
    /// or the deadline passed unused; else still pending.
    pub(super) async fn reconcile_upto(
        &self,
        rec: &PaymentRecord,
    ) -> Result<PaymentState, X402Error> {
        let p = upto::parse(&serde_json::from_str(&rec.payload).unwrap_or(Value::Null))
            .map_err(X402Error::Invalid)?;
        let a = &p.permit2_authorization;
        let mut paid_by = None;
        let (state, reason) = if self.chain.permit2_nonce_used(a.from, a.nonce).await? {
            if let Some(tx) = self
                .upto_settled(a.from, a.nonce, rec.from_block.unwrap_or(0))
                .await?
            {
                // As the chain has it: a replacement with higher fees has another hash.
                paid_by = Some(tx.to_string());
                (PaymentState::Settled, None)
            } else {
                (
                    PaymentState::Failed,
                    Some("the permit's nonce was used, by no settlement of this facilitator"),
                )
            }
        } else if a.deadline <= U256::from(now_secs()) {
            (
                PaymentState::Failed,
                Some("the permit expired before its settlement was mined"),
            )
        } else {
            (PaymentState::Pending, None)
        };
        if state != PaymentState::Pending {
            self.store
                .set_state(rec.key, state, paid_by.as_deref(), reason, None)?;
        }
        Ok(state)
    }
}

impl Facilitator {
    /// The transaction in which the `upto` proxy logged a settlement of `owner`'s permit
    /// `nonce` by this facilitator since `from_block`, if it did.
    async fn upto_settled(
        &self,
        owner: Address,
        nonce: U256,
        from_block: u64,
    ) -> Result<Option<B256>, X402Error> {
        use alloy_sol_types::SolEvent;
        use cairn_ledger::contracts::X402UptoPermit2Proxy::Settled;
        let logs = self
            .chain
            .ledger()
            .logs(cairn_ledger::LogFilter {
                address: Some(self.chain.upto()?.proxy),
                topic0: Some(Settled::SIGNATURE_HASH),
                topic1: Some(owner.into_word()),
                from_block,
                ..Default::default()
            })
            .await?;
        Ok(logs
            .iter()
            .find(|l| {
                Settled::decode_log_data(&l.log.data)
                    .is_ok_and(|e| e.nonce == nonce && e.facilitator == self.address())
            })
            .map(|l| l.tx))
    }
}

/// The official facilitator's reasons for proxy and Permit2 reverts, by the revert's name.
const REVERT_CODES: &[(&str, &str)] = &[
    ("Permit2612AmountMismatch", "permit2_2612_amount_mismatch"),
    ("AmountExceedsPermitted", "upto_amount_exceeds_permitted"),
    ("UnauthorizedFacilitator", "upto_unauthorized_facilitator"),
    ("InvalidDestination", "permit2_invalid_destination"),
    ("InvalidOwner", "permit2_invalid_owner"),
    ("PaymentTooEarly", "permit2_payment_too_early"),
    ("InvalidSigner", "invalid_permit2_signature"),
    ("SignatureExpired", "invalid_permit2_signature"),
    ("InvalidNonce", "permit2_invalid_nonce"),
    ("InvalidAmount", "permit2_invalid_amount"),
];

/// A settlement that failed otherwise (reverted for another reason, or never sent).
const SEND_FAILED: &str = "invalid_upto_evm_transaction_failed";

/// The official facilitator's reason for a proxy or Permit2 revert.
fn revert_code(reason: &str) -> &'static str {
    REVERT_CODES
        .iter()
        .find(|(name, _)| reason.contains(name))
        .map_or(SEND_FAILED, |(_, code)| code)
}

/// The code a failed `upto` payment's stored reason starts with, when it is one of ours: a
/// retry gets the first outcome (a permit never used is not reported as used).
fn failed_code(stored: Option<&str>) -> Option<&'static str> {
    let code = stored?.split(':').next()?.trim();
    REVERT_CODES
        .iter()
        .map(|(_, c)| *c)
        .chain([SEND_FAILED])
        .find(|c| *c == code)
}

impl Facilitator {
    /// The payload and requirements of an `upto` request, and the requirements as verified: the
    /// signed maximum in place of the amount (a settle request names the amount to charge). The
    /// payment must answer those requirements in everything else.
    fn upto_request(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<(Value, PaymentRequirements, PaymentRequirements), X402Error> {
        let bad = |m: String| X402Error::Malformed(m);
        if req.x402_version != 2 {
            return Err(bad("upto is an x402 version 2 scheme".into()));
        }
        let r: PaymentRequirements = serde_json::from_value(req.payment_requirements.clone())
            .map_err(|e| bad(format!("paymentRequirements: {e}")))?;
        let p: PaymentPayload = serde_json::from_value(req.payment_payload.clone())
            .map_err(|e| bad(format!("paymentPayload: {e}")))?;
        let max = p.accepted.amount;
        let as_verified = PaymentRequirements {
            amount: max,
            ..r.clone()
        };
        if !as_verified.same_offer(&p.accepted) {
            return Err(X402Error::Invalid(Reason::new(
                "invalid_payment_requirements",
                "the payment's accepted offer is not the requirements given",
            )));
        }
        self.allowed(&PaymentRequirements {
            amount: max,
            ..r.clone()
        })?;
        Ok((p.payload, r, as_verified))
    }

    pub(super) async fn verify_upto(&self, req: &FacilitatorRequest) -> VerifyResponse {
        let extensions = req.payment_payload.get("extensions");
        let result = match self.upto_request(req).and_then(|(payload, _, verified)| {
            self.check_upto(&payload, extensions, &verified, now_secs())
        }) {
            Ok(c) => self
                .check_upto_chain(&c, false)
                .await
                .map(|()| c.authorization.owner),
            Err(e) => Err(e),
        };
        verify_answer(result, req)
    }

    /// `POST /settle` for `upto`: charges the requirements' `amount` (at most the signed
    /// maximum; 0 sends nothing). Idempotent for the same permit: a retry gets the first outcome.
    pub(super) async fn settle_upto_request(&self, req: &FacilitatorRequest) -> SettleResponse {
        let network = self.network();
        let fail = |code: &str, payer: Option<Address>| SettleResponse {
            success: false,
            error_reason: Some(code.to_string()),
            transaction: String::new(),
            network: network.clone(),
            payer,
            amount: None,
            extra: None,
        };
        let (payload, r, verified) = match self.upto_request(req) {
            Ok(x) => x,
            Err(e) => return fail(e.code(), payer_of(req)),
        };
        let extensions = req.payment_payload.get("extensions");
        let c = match self.check_upto(&payload, extensions, &verified, now_secs()) {
            Ok(c) => c,
            Err(e) => return fail(e.code(), payer_of(req)),
        };
        let payer = Some(c.authorization.owner);
        let (key, reserved) = match self.reserve_upto(&c, "facilitator", &payload) {
            Ok(x) => x,
            Err(e) => return fail(e.code(), payer),
        };
        if let Reserve::Seen(rec) = reserved {
            let failed = failed_code(rec.reason.as_deref()).unwrap_or("permit2_invalid_nonce");
            return self.settled_before(*rec, network, payer, failed).await;
        }
        if let Err(e) = self.check_upto_chain(&c, true).await {
            self.store.release(key, Some(&e.to_string()));
            return fail(e.code(), payer);
        }
        let outcome = self.settle_upto(key, &c, r.amount).await;
        crate::paywall::upto_settle_response(&network, c.authorization.owner, r.amount, &outcome)
    }
}
