//! The facilitator: verifies `exact` payments (locally, then the chain state a signature cannot
//! prove) and settles them by sending the EIP-3009 transfer. Used in-process by the node's
//! paywall and over HTTP by third-party resource servers (`POST /verify`, `POST /settle`,
//! `GET /supported`).
//!
//! Every settlement goes through the [`PaymentStore`] first, so an authorization is sent at most
//! once by this process; a transaction that is out but not confirmed is `settlement_pending` and
//! reconciled from the token's own record (`authorizationState`, and the `AuthorizationUsed` and
//! `Transfer` events of the transaction that used the nonce: the payer may have signed another
//! transfer with the same nonce, so a used nonce alone is no payment). A payment is marked pending
//! (durably, with any withheld answer) *before* its transfer is sent, so a restart knows which
//! reservations may have a transfer out (pending) and which never did (released); a pending
//! payment with no transaction on record is one whose sender died mid-send, and the reconciler
//! sends it again (EIP-3009's nonce lets at most one transfer through).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::Eip712Domain;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use cairn_ledger::{Chain, LedgerError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::exact::{self, CheckedExact};
use crate::store::{NewPayment, PaymentRecord, PaymentState, PaymentStore, Reserve};
use crate::wire::{
    PaymentPayload, PaymentPayloadV1, PaymentRequirements, PaymentRequirementsV1, SettleResponse,
    VerifyResponse, caip2, chain_id_of, v1_network,
};
use crate::{Reason, X402Error, now_secs};

mod batch;
mod http;
mod reconcile;
mod upto;

pub use http::*;

/// The outcome of one settlement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Confirmed in this transaction.
    Settled(String),
    /// Sent (or possibly sent) and not confirmed yet; tracked and reconciled.
    Pending(Option<String>),
    /// Not paid; the authorization may still be unused.
    Failed(Reason),
}

/// Verifies and settles `exact` payments on one chain and token.
pub struct Facilitator {
    chain: Chain,
    signer: PrivateKeySigner,
    store: PaymentStore,
    domain: Eip712Domain,
    token_name: String,
    token_version: String,
    policy: Option<Policy>,
    /// Payments whose transfer this process is sending right now (the reconciler leaves them).
    sending: Mutex<HashSet<B256>>,
    /// The chain's head as last read: a block at or before any use of an authorization checked
    /// from now on, kept with each reserved payment so its transfer is looked for from there
    /// (no extra call per payment; a stale value only widens the search).
    head: std::sync::atomic::AtomicU64,
    /// `upto` maximums each payer has reserved and not settled yet: a payer's next permit must
    /// be covered by their balance and Permit2 allowance beyond these, or permits whose
    /// maximums together exceed what they hold would each pass alone.
    open_upto: tokio::sync::Mutex<std::collections::HashMap<Address, U256>>,
}

/// Sends once more after a [`LedgerError::Busy`] that says the key's earlier transaction is
/// out no longer (mined just now, perhaps another role's: a node's roles share its key, and
/// its settler's round may have just seen a batch mined). Nothing was sent, so the next try
/// goes out; failing the payment would fail an honest payer for the node's own traffic. A
/// busy over a transaction still out after a whole wait is returned at once (another try would
/// wait as long again). A payment's call is safe to try again: its authorization's nonce is
/// spent at most once.
pub(crate) async fn past_busy<T, Fut>(mut send: impl FnMut() -> Fut) -> Result<T, LedgerError>
where
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    match send().await {
        Err(LedgerError::Busy {
            hash,
            nonce,
            cleared: true,
        }) => {
            tracing::debug!(%hash, nonce, "the key's earlier transaction is out no longer; sending once more");
            send().await
        }
        r => r,
    }
}

/// Removes a payment from the in-flight set when its send ends (or its task is dropped).
struct Sending<'a>(&'a Mutex<HashSet<B256>>, B256);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Who may use a facilitator served over HTTP and for what: it pays the gas of every
/// settlement, so only its operator's resource servers (holders of an API key) may ask, only to
/// pay the operator's own addresses, and not for dust.
#[derive(Clone, Debug)]
pub struct Policy {
    /// SHA-256 of each accepted bearer token (`Authorization: Bearer <token>`).
    pub api_key_hashes: Vec<[u8; 32]>,
    /// The only `payTo` addresses it settles to.
    pub pay_to: Vec<Address>,
    /// The smallest amount it settles.
    pub min_amount: U256,
}

impl Policy {
    /// Whether `authorization` (the header's value) carries an accepted token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        use sha2::Digest;
        let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        // Compare digests: the time taken says nothing about the token's prefix.
        let h: [u8; 32] = sha2::Sha256::digest(token.trim().as_bytes()).into();
        self.api_key_hashes.contains(&h)
    }
}

impl Facilitator {
    /// A facilitator that settles with `signer` (who pays the gas) and records in `store`.
    pub async fn new(
        chain: Chain,
        signer: PrivateKeySigner,
        store: PaymentStore,
    ) -> Result<Self, X402Error> {
        let domain = chain.token_domain().await?;
        let token_name = domain.name.as_deref().unwrap_or_default().to_string();
        let token_version = domain.version.as_deref().unwrap_or_default().to_string();
        let head = chain.ledger().head().await?.number;
        Ok(Self {
            chain,
            signer,
            store,
            domain,
            token_name,
            token_version,
            policy: None,
            sending: Mutex::new(HashSet::new()),
            head: head.into(),
            open_upto: Default::default(),
        })
    }

    /// Serves only under `policy` (see [`Policy`]).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Refuses requirements outside the policy (another payee, a dust amount).
    fn allowed(&self, r: &PaymentRequirements) -> Result<(), X402Error> {
        let Some(p) = &self.policy else {
            return Ok(());
        };
        if !p.pay_to.contains(&r.pay_to) {
            return Err(X402Error::Invalid(Reason::new(
                "invalid_payment_requirements",
                format!("this facilitator does not settle payments to {}", r.pay_to),
            )));
        }
        if r.amount < p.min_amount {
            return Err(X402Error::Invalid(Reason::new(
                "invalid_payment_requirements",
                format!(
                    "this facilitator settles amounts of at least {} token units",
                    p.min_amount
                ),
            )));
        }
        Ok(())
    }

    /// The chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The payment store.
    pub fn store(&self) -> &PaymentStore {
        &self.store
    }

    /// The token's EIP-712 domain (as the token reports it).
    pub fn token_domain(&self) -> &Eip712Domain {
        &self.domain
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain.deployment().chain_id
    }

    /// The payment token.
    pub fn token(&self) -> Address {
        self.chain.deployment().token
    }

    /// The CAIP-2 network.
    pub fn network(&self) -> String {
        caip2(self.chain_id())
    }

    /// The `exact` offer for `amount` paid to `pay_to`.
    pub fn exact_offer(
        &self,
        pay_to: Address,
        amount: U256,
        max_timeout_seconds: u64,
    ) -> PaymentRequirements {
        PaymentRequirements {
            scheme: "exact".into(),
            network: self.network(),
            amount,
            asset: self.token(),
            pay_to,
            max_timeout_seconds,
            extra: json!({"name": self.token_name, "version": self.token_version}),
        }
    }

    /// Local checks of an `exact` payload against the offer `req`: scheme, network, asset,
    /// recipient, value, time window, signature. Microseconds; no chain access.
    pub fn check_exact(
        &self,
        payload: &Value,
        req: &PaymentRequirements,
        now: u64,
    ) -> Result<CheckedExact, X402Error> {
        if req.scheme != "exact" {
            return Err(X402Error::Invalid(Reason::new(
                "unsupported_scheme",
                format!("scheme {:?} is not settled here; use \"exact\"", req.scheme),
            )));
        }
        if chain_id_of(&req.network) != Some(self.chain_id()) {
            return Err(X402Error::Invalid(Reason::new(
                "invalid_exact_evm_network_mismatch",
                format!(
                    "network {:?} is not this facilitator's {}",
                    req.network,
                    self.network()
                ),
            )));
        }
        if req.asset != self.token() {
            return Err(X402Error::Invalid(Reason::new(
                "invalid_exact_evm_failed_to_get_asset_info",
                format!(
                    "asset {} is not the token {} settled here",
                    req.asset,
                    self.token()
                ),
            )));
        }
        // Read before `check_chain` looks at the nonce: any use it does not see is later.
        let from_block = self.head.load(std::sync::atomic::Ordering::Relaxed);
        let parsed = exact::parse(payload).map_err(X402Error::Invalid)?;
        let mut c = exact::verify_local(&parsed, req, &self.domain, now)?;
        c.from_block = from_block;
        Ok(c)
    }

    /// The chain state a signature cannot prove: the nonce is unused and the payer holds the
    /// amount. Two reads.
    pub async fn check_chain(&self, c: &CheckedExact) -> Result<(), X402Error> {
        let a = &c.authorization;
        if self.chain.authorization_used(a.from, a.nonce).await? {
            return Err(X402Error::Invalid(Reason::new(
                "invalid_exact_evm_nonce_already_used",
                format!(
                    "authorization nonce {} of {} is already used; sign a new payment",
                    a.nonce, a.from
                ),
            )));
        }
        let balance = self.chain.token_balance(a.from).await?;
        if balance < a.value {
            return Err(X402Error::Invalid(Reason::new(
                "invalid_exact_evm_insufficient_balance",
                format!(
                    "{} holds {balance} of the token and the payment is {}; fund the account",
                    a.from, a.value
                ),
            )));
        }
        Ok(())
    }

    /// Sends the transfer of a reserved payment (key `key`) and records the outcome; `withheld`
    /// is the answer kept while the transfer is unconfirmed (a paywall without kept answers).
    /// Never sends an authorization the store does not hold as reserved by this caller.
    pub async fn settle_reserved(
        &self,
        key: B256,
        c: &CheckedExact,
        withheld: Option<&[u8]>,
    ) -> Settlement {
        let Some(_sending) = self.begin_send(key) else {
            return Settlement::Pending(None);
        };
        // Durably pending before anything leaves: a crash from here on may have a transfer out.
        if let Err(e) = self.store.mark_pending(key, withheld) {
            tracing::error!(%key, error = %e, "marking a payment pending");
            self.store.release(key, Some("the payment store failed"));
            return Settlement::Failed(Reason::new(
                "unexpected_settle_error",
                "the payment could not be recorded; nothing was sent, retry with the same payment",
            ));
        }
        self.send(key, c, withheld, false).await
    }

    /// Whether the transfer that used authorization `a` paid `a.to` its `a.value` (see
    /// [`Chain::authorization_paid`]), and by which transaction; `None` when no use is on
    /// record yet.
    pub(crate) async fn paid_to_us(
        &self,
        key: B256,
        a: &exact::Authorization,
    ) -> Result<Option<cairn_ledger::AuthorizationUse>, X402Error> {
        let from_block = self.store.get(key)?.and_then(|r| r.from_block).unwrap_or(0);
        Ok(self
            .chain
            .authorization_paid(a.from, a.nonce, a.to, a.value, from_block)
            .await?)
    }

    /// Claims `key` for one sender in this process.
    fn begin_send(&self, key: B256) -> Option<Sending<'_>> {
        let mut set = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(key).then(|| Sending(&self.sending, key))
    }

    /// Sends a pending payment's transfer and records the outcome. `resumed`: a transfer of
    /// ours may already be out (a sender died mid-send), so a revert over a used nonce is ours.
    async fn send(
        &self,
        key: B256,
        c: &CheckedExact,
        withheld: Option<&[u8]>,
        resumed: bool,
    ) -> Settlement {
        let a = &c.authorization;
        let outcome = if a.valid_before <= U256::from(now_secs()) {
            Settlement::Failed(Reason::new(
                "invalid_exact_evm_payload_authorization_valid_before",
                "the authorization expired before it could be settled; sign a new one",
            ))
        } else {
            match past_busy(|| {
                self.chain
                    .send_authorization(&self.signer, c.transfer_call())
            })
            .await
            {
                Ok(out) => Settlement::Settled(out.hash.to_string()),
                Err(LedgerError::Pending { hash, .. }) => {
                    Settlement::Pending(Some(hash.to_string()))
                }
                Err(LedgerError::Reverted { reason, .. }) => {
                    // Tell a used nonce apart from other reverts (balance moved, expired, …),
                    // and our own earlier transfer from the payer's other one with that nonce.
                    match self.chain.authorization_used(a.from, a.nonce).await {
                        Err(e) => {
                            // Unknown: the reconciler looks again.
                            tracing::warn!(%key, error = %e, "reading an authorization's state");
                            Settlement::Pending(None)
                        }
                        Ok(false) => Settlement::Failed(Reason::new(
                            "invalid_exact_evm_transaction_simulation_failed",
                            format!("the transfer reverted: {reason}"),
                        )),
                        Ok(true) => match self.paid_to_us(key, a).await {
                            // Our own earlier transfer (a sender died before recording it), or
                            // the same authorization relayed by someone else: we are paid, and
                            // failing here would charge the payer for nothing.
                            Ok(Some(u)) if u.paid => Settlement::Settled(u.tx.to_string()),
                            Ok(Some(_)) => Settlement::Failed(Reason::new(
                                "invalid_exact_evm_nonce_already_used",
                                "the authorization's nonce was used by another transfer",
                            )),
                            // Not readable yet: the reconciler looks again.
                            Ok(None) => Settlement::Pending(None),
                            Err(e) => {
                                tracing::warn!(%key, error = %e, "looking for a payment's transfer");
                                Settlement::Pending(None)
                            }
                        },
                    }
                }
                // Nothing sent, the key still busy (perhaps with this payment's own transfer, a
                // resumed one): left pending, never failed while a transfer of it may be out.
                // The reconciler sends it once the key is free, or fails it when it expires.
                Err(LedgerError::Busy { .. }) => Settlement::Pending(None),
                // Not sent (refused before broadcast) but unknown: check the token's record.
                Err(e) => match self.chain.authorization_used(a.from, a.nonce).await {
                    Ok(false) => Settlement::Failed(Reason::new(
                        "transaction_failed",
                        format!("the transfer could not be sent: {e}"),
                    )),
                    _ => Settlement::Pending(None),
                },
            }
        };
        let (state, tx, reason) = match &outcome {
            Settlement::Settled(tx) => (
                PaymentState::Settled,
                Some(tx.as_str()).filter(|t| !t.is_empty()),
                None,
            ),
            Settlement::Pending(tx) => (PaymentState::Pending, tx.as_deref(), None),
            Settlement::Failed(r) => (PaymentState::Failed, None, Some(r.to_string())),
        };
        // The answer stays kept while the transfer is unconfirmed, and after a resumed one
        // settles (its payer was never handed it); a live sender hands it over itself.
        let keep = match (&outcome, resumed) {
            (Settlement::Pending(_), _) | (Settlement::Settled(_), true) => withheld,
            _ => None,
        };
        if let Err(e) = self
            .store
            .set_state(key, state, tx, reason.as_deref(), keep)
        {
            tracing::error!(%key, error = %e, "recording a settlement outcome");
        }
        outcome
    }

    /// Reserves a checked payment in the store for a request on `resource`; its key is the
    /// payment reference.
    pub fn reserve(
        &self,
        c: &CheckedExact,
        resource: &str,
        payload: &Value,
    ) -> Result<(B256, Reserve), X402Error> {
        let key = c.payment_ref(self.token());
        let payload = payload.to_string();
        let r = self.store.reserve(&NewPayment {
            key,
            chain: self.chain_id(),
            scheme: "exact",
            payer: c.authorization.from,
            amount: c.authorization.value,
            resource,
            payload: &payload,
            from_block: c.from_block,
        })?;
        Ok((key, r))
    }

    // ---- the HTTP API's operations ----

    fn normalize(
        &self,
        req: &FacilitatorRequest,
    ) -> Result<(Value, PaymentRequirements), X402Error> {
        let bad = |m: String| X402Error::Malformed(m);
        match req.x402_version {
            2 => {
                let r: PaymentRequirements =
                    serde_json::from_value(req.payment_requirements.clone())
                        .map_err(|e| bad(format!("paymentRequirements: {e}")))?;
                self.allowed(&r)?;
                let p: PaymentPayload = serde_json::from_value(req.payment_payload.clone())
                    .map_err(|e| bad(format!("paymentPayload: {e}")))?;
                if !r.same_offer(&p.accepted) {
                    return Err(X402Error::Invalid(Reason::new(
                        "invalid_payment_requirements",
                        "the payment's accepted offer is not the requirements given",
                    )));
                }
                Ok((p.payload, r))
            }
            1 => {
                let p: PaymentPayloadV1 = serde_json::from_value(req.payment_payload.clone())
                    .map_err(|e| bad(format!("paymentPayload: {e}")))?;
                let r: PaymentRequirementsV1 =
                    serde_json::from_value(req.payment_requirements.clone())
                        .map_err(|e| bad(format!("paymentRequirements: {e}")))?;
                if p.scheme != r.scheme || p.network != r.network {
                    return Err(X402Error::Invalid(Reason::new(
                        "invalid_payment_requirements",
                        "the payment's scheme or network is not the requirements'",
                    )));
                }
                let network = chain_id_of(&r.network).map(caip2).unwrap_or(r.network);
                let r = PaymentRequirements {
                    scheme: r.scheme,
                    network,
                    amount: r.max_amount_required,
                    asset: r.asset,
                    pay_to: r.pay_to,
                    max_timeout_seconds: r.max_timeout_seconds,
                    extra: r.extra,
                };
                self.allowed(&r)?;
                Ok((p.payload, r))
            }
            v => Err(bad(format!("x402Version {v} is not supported; use 1 or 2"))),
        }
    }

    fn network_for(&self, version: u8) -> String {
        match version {
            1 => v1_network(self.chain_id())
                .map(str::to_string)
                .unwrap_or_else(|| self.network()),
            _ => self.network(),
        }
    }
}
