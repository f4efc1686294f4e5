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
            req,
            &contracts,
            self.address(),
            self.chain_id(),
            now,
        )
    }

    /// What a signature cannot prove: the Permit2 nonce is unused, Permit2 may move the
    /// maximum, and the payer holds it. Three reads.
    pub async fn check_upto_chain(&self, c: &CheckedUpto) -> Result<(), X402Error> {
        let a = &c.authorization;
        let contracts = self.chain.upto()?;
        let invalid = |code, m: String| Err(X402Error::Invalid(Reason::new(code, m)));
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
        if allowance < a.max {
            return invalid(
                "permit2_allowance_required",
                format!(
                    "{} lets Permit2 ({}) move {allowance} of the token and the maximum is {}; approve Permit2 on the token first",
                    a.owner, contracts.permit2, a.max
                ),
            );
        }
        let balance = self.chain.token_balance(a.owner).await?;
        if balance < a.max {
            return invalid(
                "permit2_insufficient_balance",
                format!(
                    "{} holds {balance} of the token and the maximum is {}; fund the account",
                    a.owner, a.max
                ),
            );
        }
        Ok(())
    }

    /// Reserves a checked `upto` payment for a request on `resource`; its key is the payment
    /// reference.
    pub fn reserve_upto(
        &self,
        c: &CheckedUpto,
        resource: &str,
        payload: &Value,
    ) -> Result<(B256, Reserve), X402Error> {
        let permit2 = self.chain.upto()?.permit2;
        let key = c.payment_ref(permit2);
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
        let a = &c.authorization;
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
        let outcome = match self
            .chain
            .settle_upto(&self.signer, a, amount, c.signature.clone())
            .await
        {
            Ok(out) => Settlement::Settled(out.hash.to_string()),
            Err(LedgerError::Pending { hash, .. }) => Settlement::Pending(Some(hash.to_string())),
            Err(LedgerError::Reverted { reason, .. }) => Settlement::Failed(Reason::new(
                revert_code(&reason),
                format!("the settlement reverted: {reason}"),
            )),
            // Not sent (refused before broadcast): whether anything is out is read from Permit2.
            Err(e) => match self.chain.permit2_nonce_used(a.owner, a.nonce).await {
                Ok(false) => Settlement::Failed(Reason::new(
                    "invalid_upto_evm_transaction_failed",
                    format!("the settlement could not be sent: {e}"),
                )),
                _ => Settlement::Pending(None),
            },
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

    /// A pending `upto` settlement looked at again: settled once its Permit2 nonce is used
    /// (only the named facilitator, this one, can use it through the proxy; a payer who revoked
    /// it instead costs this node the call, never the payer), failed once its deadline passed
    /// unused, else still pending.
    pub(super) async fn reconcile_upto(
        &self,
        rec: &PaymentRecord,
    ) -> Result<PaymentState, X402Error> {
        let p = upto::parse(&serde_json::from_str(&rec.payload).unwrap_or(Value::Null))
            .map_err(X402Error::Invalid)?;
        let a = &p.permit2_authorization;
        let (state, reason) = if self.chain.permit2_nonce_used(a.from, a.nonce).await? {
            (PaymentState::Settled, None)
        } else if a.deadline <= U256::from(now_secs()) {
            (
                PaymentState::Failed,
                Some("the permit expired before its settlement was mined"),
            )
        } else {
            (PaymentState::Pending, None)
        };
        if state != PaymentState::Pending {
            self.store.set_state(rec.key, state, None, reason, None)?;
        }
        Ok(state)
    }
}

/// The official facilitator's reason for a proxy or Permit2 revert.
fn revert_code(reason: &str) -> &'static str {
    [
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
    ]
    .iter()
    .find(|(name, _)| reason.contains(name))
    .map_or("invalid_upto_evm_transaction_failed", |(_, code)| code)
}
