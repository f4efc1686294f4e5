//! Scheme `prepaid`: the caller deposits into the Escrow contract once (channel = payer, payee,
//! salt) and then sends, with each request, a cumulative EIP-712 voucher whose ceiling is what
//! was charged so far plus the most this request costs, with a random nonce that makes it
//! distinct from every other voucher. The node checks it without any chain call (signature,
//! payee, the channel's cached deposit, and an atomic step over what is owed), charges the
//! request at most that, and periodically claims what is owed with the largest voucher, which
//! pays its payment vault (and so the fee split).
//!
//! It has the deposit / voucher / refund shape of x402's `batch-settlement` scheme but runs
//! against Cairn's own Escrow contract and typed data, so it is a scheme of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy_primitives::{Address, B256, Bytes, Signature, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{Eip712Domain, SolEvent, SolStruct, SolValue};
use cairn_ledger::chain::Voucher;
use cairn_ledger::contracts::Escrow;
use cairn_ledger::{Chain, LogFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{ChannelRecord, PaymentStore, VoucherRefusal};
use crate::wire::{PaymentRequirements, caip2, decimal};
use crate::{Reason, X402Error};

mod client;
pub use client::*;

/// The scheme's name.
pub const SCHEME: &str = "prepaid";

/// A voucher as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherWire {
    /// Who deposited.
    pub payer: Address,
    /// Who is paid (the node's payment vault).
    pub payee: Address,
    /// The payer's channel salt.
    pub salt: B256,
    /// The ceiling: everything charged on this channel so far plus this request's most.
    #[serde(with = "decimal")]
    pub cumulative_amount: U256,
    /// The payer's random choice: two vouchers with the same ceiling are still two vouchers.
    pub nonce: B256,
}

/// The `prepaid` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepaidPayload {
    /// The voucher.
    pub voucher: VoucherWire,
    /// The payer's 65-byte signature over it (Escrow's EIP-712 domain).
    pub signature: Bytes,
}

/// A voucher the node took for one request.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The escrow channel.
    pub channel: B256,
    /// The payer.
    pub payer: Address,
    /// The voucher's cumulative amount.
    pub cumulative: U256,
    /// The voucher's nonce.
    pub nonce: B256,
}

impl Accepted {
    /// The payment reference bound into receipts:
    /// keccak256(abi.encode(channel, cumulative, nonce)).
    pub fn payment_ref(&self) -> B256 {
        keccak256((self.channel, self.cumulative, self.nonce).abi_encode())
    }
}

/// The node's side of the prepaid scheme.
pub struct Prepaid {
    chain: Chain,
    store: PaymentStore,
    signer: PrivateKeySigner,
    payee: Address,
    domain: Eip712Domain,
    /// The domain's separator, hashed once rather than per voucher.
    separator: B256,
    scanned: AtomicU64,
    /// When counts are redeemed (each redemption is a transaction at the node's gas).
    pacing: crate::pacing::ClaimPacing,
}

fn invalid(code: &'static str, msg: String) -> X402Error {
    X402Error::Invalid(Reason::new(code, msg))
}

impl Prepaid {
    /// Vouchers to `payee` (the node's vault), redeemed by `signer` (the node's key).
    pub fn new(
        chain: Chain,
        store: PaymentStore,
        signer: PrivateKeySigner,
        payee: Address,
    ) -> Self {
        let domain = chain.escrow_domain();
        let start = chain.deployment().block;
        Self {
            chain,
            store,
            signer,
            payee,
            separator: domain.separator(),
            domain,
            scanned: AtomicU64::new(start),
            pacing: crate::pacing::ClaimPacing::new(U256::from(
                crate::batch::DEFAULT_GAS_ALLOWANCE,
            )),
        }
    }

    /// Redeems a channel's count once it reaches `allowance` token units (what a transaction
    /// costs the node), when its payer withdraws, or after a few minutes
    /// ([`crate::pacing::ClaimPacing`]). Default [`crate::batch::DEFAULT_GAS_ALLOWANCE`].
    pub fn with_gas_allowance(mut self, allowance: U256) -> Self {
        self.pacing = crate::pacing::ClaimPacing::new(allowance);
        self
    }

    /// The offer for `amount`.
    pub fn offer(&self, amount: U256, max_timeout_seconds: u64) -> PaymentRequirements {
        let d = self.chain.deployment();
        PaymentRequirements {
            scheme: SCHEME.into(),
            network: caip2(d.chain_id),
            amount,
            asset: d.token,
            pay_to: self.payee,
            max_timeout_seconds,
            extra: json!({
                "escrow": d.escrow.to_checksum(None),
                "name": self.domain.name.as_deref().unwrap_or_default(),
                "version": self.domain.version.as_deref().unwrap_or_default(),
            }),
        }
    }

    /// The payee (the node's vault).
    pub fn payee(&self) -> Address {
        self.payee
    }

    /// Checks a voucher and accepts it for one request at `price`. No chain call unless the
    /// channel is new to the node or the voucher goes past the cached deposit (a top-up).
    pub async fn accept(&self, payload: &Value, price: U256) -> Result<Accepted, X402Error> {
        let p = self.signed_voucher(payload)?;
        let v = &p.voucher;
        let id = Chain::channel_id(v.payer, v.payee, v.salt);
        let accepted = Accepted {
            channel: id,
            payer: v.payer,
            cumulative: v.cumulative_amount,
            nonce: v.nonce,
        };
        let key = accepted.payment_ref();
        let take = || {
            self.store
                .accept_voucher(id, key, v.cumulative_amount, v.nonce, price, &p.signature)
        };
        let mut outcome = take()?;
        // A channel new to the node, a voucher past the cached deposit (a top-up) or a channel
        // marked closing (a new deposit cancels a withdrawal request): read the chain once and
        // try again.
        if matches!(
            outcome,
            Err(VoucherRefusal::UnknownChannel
                | VoucherRefusal::OverDeposit { .. }
                | VoucherRefusal::Closing)
        ) {
            self.refresh(v.payer, v.payee, v.salt).await?;
            outcome = take()?;
        }
        outcome.map(|()| accepted).map_err(|r| refusal(r, v, price))
    }

    /// The voucher in `payload`, to this node's vault and signed by its payer.
    fn signed_voucher(&self, payload: &Value) -> Result<PrepaidPayload, X402Error> {
        let p = PrepaidPayload::deserialize(payload).map_err(|e| {
            invalid(
                "invalid_prepaid_payload",
                format!("the prepaid payload is not {{voucher, signature}}: {e}"),
            )
        })?;
        let v = &p.voucher;
        if v.payee != self.payee {
            return Err(invalid(
                "invalid_prepaid_payee",
                format!(
                    "the voucher pays {}, not this node's vault {}",
                    v.payee, self.payee
                ),
            ));
        }
        // Kept and redeemed as sent: only a v the escrow's ecrecover reads (27 or 28).
        let sig = cairn_core::sig::parse_rsv(&p.signature)
            .map_err(|e| invalid("invalid_prepaid_signature", format!("the signature: {e}")))?;
        let msg = Voucher {
            payer: v.payer,
            payee: v.payee,
            salt: v.salt,
            cumulativeAmount: v.cumulative_amount,
            nonce: v.nonce,
        };
        let signer = cairn_core::sig::recover_prehash(
            &sig,
            &cairn_core::sig::eip712_digest(&self.separator, &msg.eip712_hash_struct()),
        )
        .ok()
        .ok_or_else(|| {
            invalid(
                "invalid_prepaid_signature",
                "no signer recovers from the signature (malformed or high-s)".into(),
            )
        })?;
        if signer != v.payer {
            return Err(invalid(
                "invalid_prepaid_signature",
                format!(
                    "the voucher is signed by {signer}, not by its payer {}",
                    v.payer
                ),
            ));
        }
        Ok(p)
    }

    /// The payment reference of a voucher payload that was counted (its request succeeded);
    /// `None` for a voucher that is not one of ours, signed by its payer.
    pub fn counted(&self, payload: &Value) -> Result<Option<B256>, X402Error> {
        let Ok(p) = self.signed_voucher(payload) else {
            return Ok(None);
        };
        let v = &p.voucher;
        let key = Accepted {
            channel: Chain::channel_id(v.payer, v.payee, v.salt),
            payer: v.payer,
            cumulative: v.cumulative_amount,
            nonce: v.nonce,
        }
        .payment_ref();
        Ok((self.store.outcome(key)? == crate::store::Outcome::Paid).then_some(key))
    }

    /// Gives back a voucher whose request failed (not charged).
    pub fn release(&self, a: &Accepted) {
        if let Err(e) = self.store.release_voucher(a.payment_ref()) {
            tracing::warn!(error = %e, "releasing a voucher");
        }
    }

    /// Counts a voucher whose request succeeded and costs `charged` (at most what it was
    /// accepted for; the rest is never claimed).
    pub fn commit(&self, a: &Accepted, charged: U256) -> Result<(), X402Error> {
        self.store.commit_voucher(a.payment_ref(), charged)
    }

    /// Submits a payer's gasless deposit into its channel with this node (the node pays the
    /// gas, so deposits under `min` are refused), then refreshes the channel.
    pub async fn deposit(
        &self,
        d: &DepositAuthorization,
        min: U256,
    ) -> Result<ChannelRecord, X402Error> {
        if d.amount < min {
            return Err(invalid(
                "invalid_prepaid_deposit_amount",
                format!("a deposit through the node must be at least {min} token units"),
            ));
        }
        let sig = Signature::try_from(d.signature.as_ref()).map_err(|e| {
            invalid(
                "invalid_prepaid_signature",
                format!("the signature does not parse: {e}"),
            )
        })?;
        self.chain
            .deposit_with_authorization(
                &self.signer,
                d.payer,
                self.payee,
                d.salt,
                d.amount,
                d.valid_before,
                d.entropy,
                &sig,
            )
            .await
            .map_err(|e| match e {
                cairn_ledger::LedgerError::Reverted { reason, .. } => invalid(
                    "invalid_prepaid_deposit",
                    format!("the deposit was refused by the chain: {reason}"),
                ),
                other => X402Error::Chain(other),
            })?;
        self.refresh(d.payer, self.payee, d.salt).await?;
        self.status(d.payer, d.salt)?.ok_or_else(|| {
            X402Error::Store("the deposit landed but the channel is not recorded".into())
        })
    }

    /// The channel as the node knows it.
    pub fn status(&self, payer: Address, salt: B256) -> Result<Option<ChannelRecord>, X402Error> {
        self.store
            .channel(Chain::channel_id(payer, self.payee, salt))
    }

    async fn refresh(&self, payer: Address, payee: Address, salt: B256) -> Result<(), X402Error> {
        let st = self.chain.channel_state(payer, payee, salt).await?;
        if st.deposited.is_zero() {
            return Ok(());
        }
        let rec = ChannelRecord {
            id: Chain::channel_id(payer, payee, salt),
            payer,
            payee,
            salt,
            deposited: st.deposited,
            closing: st.withdrawable_at != 0,
            accepted: st.claimed,
            pending: U256::ZERO,
            redeemed: st.claimed,
        };
        self.store.refresh_channel(
            self.chain.deployment().chain_id,
            &rec,
            st.deposited,
            st.withdrawable_at != 0,
            st.claimed,
        )?;
        Ok(())
    }

    /// One round: marks channels whose payer asked to withdraw (so no new vouchers are taken),
    /// then claims what every channel owes, paced ([`Prepaid::with_gas_allowance`]). Returns how
    /// many channels were redeemed.
    pub async fn redeem_due(&self) -> Result<usize, X402Error> {
        let from = self.scanned.load(Ordering::Relaxed);
        let head = self.chain.ledger().head().await?.number;
        if head >= from {
            let logs = self
                .chain
                .ledger()
                .logs(LogFilter {
                    address: Some(self.chain.deployment().escrow),
                    topic0: Some(Escrow::WithdrawalRequested::SIGNATURE_HASH),
                    from_block: from,
                    ..Default::default()
                })
                .await?;
            for l in logs {
                let Ok(ev) = Escrow::WithdrawalRequested::decode_log(&l.log) else {
                    continue;
                };
                if let Some(c) = self.store.channel(ev.channel)? {
                    self.refresh(c.payer, c.payee, c.salt).await?;
                }
            }
            self.scanned.store(head + 1, Ordering::Relaxed);
        }
        let mut redeemed = 0;
        for c in self.store.unredeemed()? {
            // What is owed, claimed with the largest counted voucher (a ceiling that covers it):
            // never a failed request's price nor a per-token call's unused maximum.
            let Some((cumulative, nonce, sig)) = self.store.redeemable(c.id, c.redeemed)? else {
                continue;
            };
            let amount = c.accepted.min(cumulative);
            if amount <= c.redeemed {
                continue;
            }
            // Each redemption is a transaction at the node's gas (`ClaimPacing`).
            if !self.pacing.due(c.id, amount - c.redeemed, c.closing) {
                continue;
            }
            self.pacing.claimed(c.id);
            let Ok(sig) = Signature::try_from(sig.as_slice()) else {
                continue;
            };
            // Never redeem on a count a power cut could still undo (read just above).
            self.store.sync()?;
            match self
                .chain
                .redeem(
                    &self.signer,
                    &Voucher {
                        payer: c.payer,
                        payee: c.payee,
                        salt: c.salt,
                        cumulativeAmount: cumulative,
                        nonce,
                    },
                    amount,
                    &sig,
                )
                .await
            {
                Ok(_) => {
                    self.store.set_redeemed(c.id, amount)?;
                    redeemed += 1;
                }
                Err(e) => {
                    // A redemption sent before a crash may have landed: take the chain's word.
                    let st = self.chain.channel_state(c.payer, c.payee, c.salt).await?;
                    if st.claimed >= amount {
                        self.store.set_redeemed(c.id, st.claimed)?;
                    } else {
                        tracing::warn!(channel = %c.id, error = %e, "redeeming a voucher");
                    }
                }
            }
        }
        Ok(redeemed)
    }

    /// Redeems every `every`, forever.
    pub async fn run(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.redeem_due().await {
                tracing::warn!(error = %e, "prepaid redemption round");
            }
        }
    }
}

/// What the node answers a voucher the payment store refused.
fn refusal(r: VoucherRefusal, v: &VoucherWire, price: U256) -> X402Error {
    match r {
        VoucherRefusal::Locked => invalid(
            "invalid_prepaid_channel_busy",
            "the channel is busy; retry".to_string(),
        ),
        VoucherRefusal::AlreadyUsed => invalid(
            "invalid_prepaid_voucher_already_used",
            "this voucher was already taken for another request; sign the next one".into(),
        ),
        VoucherRefusal::UnknownChannel => invalid(
            "invalid_prepaid_no_deposit",
            format!(
                "{} has no deposit for this node; deposit first (cairn pay deposit)",
                v.payer
            ),
        ),
        VoucherRefusal::Closing => invalid(
            "invalid_prepaid_channel_closing",
            "the payer asked to withdraw this channel; deposit on a new salt or pay with exact"
                .to_string(),
        ),
        VoucherRefusal::OverDeposit { deposited } => invalid(
            "invalid_prepaid_insufficient_deposit",
            format!(
                "the voucher promises {} but {deposited} is deposited; top up the deposit",
                v.cumulative_amount
            ),
        ),
        VoucherRefusal::NotNext { owed } => invalid(
            "invalid_prepaid_voucher_amount",
            format!(
                "the voucher promises {} in total; {owed} is owed or in flight and the price is {price}, so it must be exactly {}",
                v.cumulative_amount,
                owed.saturating_add(price)
            ),
        ),
    }
}
