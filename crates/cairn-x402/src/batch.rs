//! Scheme `batch-settlement` (the x402 project's payment channels): the payer deposits into a
//! channel of the x402 batch-settlement contract once (an EIP-3009 or Permit2 authorization
//! the node submits, paying the gas), then sends with each request a cumulative voucher whose
//! ceiling is what was charged so far plus the most this request costs. The node checks it
//! without any chain call (configuration, signature, the channel's cached balance, and an
//! atomic step over what is owed in the same durable store as `prepaid`), charges the request
//! at most that, and periodically claims what every channel owes in one transaction, then
//! sweeps the claimed total to its payment vault (and so through the fee split).
//!
//! The official x402 client keeps the channel's charged total from each answer's
//! `PAYMENT-RESPONSE` (`extra.chargedAmount`, `extra.channelState`); a voucher that does not
//! fit is refused with the channel's state so the client can resynchronize (the corrective 402).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy_primitives::{Address, B256, Bytes, U256, aliases::U40};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{Eip712Domain, SolEvent, SolStruct, SolType};
use cairn_ledger::chain::{
    BatchChannelState, ChannelConfig, ClaimedVoucher, VoucherClaim, batch_voucher_hash,
    erc3009_collector_data, erc3009_deposit_nonce, permit2_collector_data, permit2_deposit_hash,
};
use cairn_ledger::contracts::{X402BatchSettlement, x402_addresses};
use cairn_ledger::{BatchContracts, Chain, LedgerError, LogFilter};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::prepaid::Accepted;
use crate::store::{ChannelRecord, PaymentStore, VoucherRefusal};
use crate::upto::{ApprovalTerms, eip2612_of};
use crate::wire::{PaymentRequirements, caip2};
use crate::{Reason, X402Error, now_secs};

/// The scheme's name.
pub const SCHEME: &str = "batch-settlement";

/// The withdraw delay the node asks channels to have: the spec's minimum, 15 minutes, which is
/// how long the node has to claim what it is owed once a payer asks for its money back.
pub const WITHDRAW_DELAY_SECS: u64 = 900;
const MIN_WITHDRAW_DELAY: u64 = 900;
const MAX_WITHDRAW_DELAY: u64 = 2_592_000;

/// Token units a channel must be charged between two transactions the node sends for it at its
/// own gas (a deposit, a refund), by default: about one L2 transaction's gas in a 6-decimal
/// dollar token (a thousandth of a dollar). Operators set theirs to what a transaction costs
/// them ([`Batch::with_gas_allowance`]).
pub const DEFAULT_GAS_ALLOWANCE: u64 = 1_000;

/// Deposits the node submits (and pays the gas of) are at least this many times the price.
pub const MIN_DEPOSIT_MULTIPLIER: u64 = 10;

/// Most claims in one transaction (the spec's default batch).
pub const MAX_CLAIMS_PER_TX: usize = 100;
const ERR_REFUND_AMOUNT: &str = "invalid_batch_settlement_evm_refund_amount_invalid";
/// A deposit or refund the node would send at its own gas for a channel charged less than the gas
/// allowance since the last one it sent.
pub const ERR_NOTHING_CHARGED: &str = "invalid_batch_settlement_evm_nothing_charged_since";

/// An authorization must stay valid at least this long after it arrives (the spec's margin).
const VALIDITY_MARGIN_SECS: u64 = 6;

const ERR_PAYLOAD_TYPE: &str = "invalid_batch_settlement_evm_payload_type";
const ERR_VOUCHER_PAYLOAD: &str = "invalid_batch_settlement_evm_voucher_payload";
const ERR_DEPOSIT_PAYLOAD: &str = "invalid_batch_settlement_evm_deposit_payload";
const ERR_CHANNEL_ID_MISMATCH: &str = "invalid_batch_settlement_evm_channel_id_mismatch";
const ERR_RECEIVER_MISMATCH: &str = "invalid_batch_settlement_evm_receiver_mismatch";
const ERR_RECEIVER_AUTHORIZER_MISMATCH: &str =
    "invalid_batch_settlement_evm_receiver_authorizer_mismatch";
const ERR_TOKEN_MISMATCH: &str = "invalid_batch_settlement_evm_token_mismatch";
const ERR_WITHDRAW_DELAY_MISMATCH: &str = "invalid_batch_settlement_evm_withdraw_delay_mismatch";
const ERR_WITHDRAW_DELAY_RANGE: &str = "invalid_batch_settlement_evm_withdraw_delay_out_of_range";
const ERR_VOUCHER_SIGNATURE: &str = "invalid_batch_settlement_evm_voucher_signature";
/// The channel has no deposit (yet): a deposit payload opens it.
pub const ERR_CHANNEL_NOT_FOUND: &str = "invalid_batch_settlement_evm_channel_not_found";
/// The voucher promises more than the channel holds: a deposit payload tops it up.
pub const ERR_EXCEEDS_BALANCE: &str = "invalid_batch_settlement_evm_cumulative_exceeds_balance";
/// The voucher is not the channel's next step: the corrective 402 carries the channel's state.
pub const ERR_CUMULATIVE_MISMATCH: &str = "invalid_batch_settlement_evm_cumulative_amount_mismatch";
const ERR_WITHDRAWAL_PENDING: &str = "invalid_batch_settlement_evm_withdrawal_pending";
const ERR_BELOW_MIN_DEPOSIT: &str = "invalid_batch_settlement_evm_deposit_below_min_deposit";
const ERR_DEPOSIT_FAILED: &str = "invalid_batch_settlement_evm_deposit_transaction_failed";
const ERR_DEPOSIT_SIMULATION: &str = "invalid_batch_settlement_evm_deposit_simulation_failed";
const ERR_RECEIVE_SIGNATURE: &str = "invalid_batch_settlement_evm_receive_authorization_signature";
const ERR_VALID_AFTER: &str = "invalid_batch_settlement_evm_payload_authorization_valid_after";
const ERR_VALID_BEFORE: &str = "invalid_batch_settlement_evm_payload_authorization_valid_before";
const ERR_PERMIT2_SPENDER: &str = "invalid_batch_settlement_evm_permit2_invalid_spender";
const ERR_PERMIT2_AMOUNT: &str = "invalid_batch_settlement_evm_permit2_amount_mismatch";
const ERR_PERMIT2_DEADLINE: &str = "invalid_batch_settlement_evm_permit2_deadline_expired";
const ERR_PERMIT2_SIGNATURE: &str = "invalid_batch_settlement_evm_permit2_invalid_signature";
const ERR_PERMIT2_ALLOWANCE: &str = "invalid_batch_settlement_evm_permit2_allowance_required";
const ERR_REFUND_PAYLOAD: &str = "invalid_batch_settlement_evm_refund_payload";
const ERR_REFUND_NO_BALANCE: &str = "invalid_batch_settlement_evm_refund_no_balance";
const ERR_CHANNEL_BUSY: &str = "invalid_batch_settlement_evm_channel_busy";
const ERR_PAYER_AUTHORIZER: &str = "invalid_batch_settlement_evm_payer_authorizer_required";

fn invalid(code: &'static str, msg: impl Into<String>) -> X402Error {
    X402Error::Invalid(Reason::new(code, msg))
}

/// An unsigned integer as the wire carries it: a decimal or `0x` hex string, or a JSON integer.
mod uint {
    use alloy_primitives::U256;
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let text = match &v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) if n.is_u64() => n.to_string(),
            _ => return Err(D::Error::custom("expected an unsigned integer")),
        };
        let parsed = match text.strip_prefix("0x") {
            Some(hex) if !hex.is_empty() && hex.len() <= 64 => U256::from_str_radix(hex, 16),
            None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                U256::from_str_radix(&text, 10)
            }
            _ => {
                return Err(D::Error::custom(format!(
                    "{text:?} is not an unsigned integer"
                )));
            }
        };
        parsed.map_err(|_| D::Error::custom(format!("{text:?} is out of range")))
    }
}

/// A channel's identity as it travels.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ConfigWire {
    payer: Address,
    payer_authorizer: Address,
    receiver: Address,
    receiver_authorizer: Address,
    token: Address,
    withdraw_delay: u64,
    salt: B256,
}

impl ConfigWire {
    /// The payer.
    pub(crate) fn payer(&self) -> Address {
        self.payer
    }

    /// The receiver.
    pub(crate) fn receiver(&self) -> Address {
        self.receiver
    }

    /// The config as the contract takes it.
    pub(crate) fn config(&self) -> ChannelConfig {
        ChannelConfig {
            payer: self.payer,
            payerAuthorizer: self.payer_authorizer,
            receiver: self.receiver,
            receiverAuthorizer: self.receiver_authorizer,
            token: self.token,
            withdrawDelay: U40::from(self.withdraw_delay.min(u64::from(u32::MAX))),
            salt: self.salt,
        }
    }

    /// Who signs the vouchers: the payer authorizer, or the payer when there is none.
    fn voucher_signer(&self) -> Address {
        if self.payer_authorizer.is_zero() {
            self.payer
        } else {
            self.payer_authorizer
        }
    }
}

/// A voucher as it travels.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoucherWire {
    channel_id: B256,
    #[serde(with = "uint")]
    max_claimable_amount: U256,
    signature: Bytes,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Erc3009Wire {
    #[serde(with = "uint")]
    valid_after: U256,
    #[serde(with = "uint")]
    valid_before: U256,
    #[serde(with = "uint")]
    salt: U256,
    signature: Bytes,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PermittedWire {
    token: Address,
    #[serde(with = "uint")]
    amount: U256,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WitnessWire {
    channel_id: B256,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Permit2Wire {
    from: Address,
    permitted: PermittedWire,
    spender: Address,
    #[serde(with = "uint")]
    nonce: U256,
    #[serde(with = "uint")]
    deadline: U256,
    witness: WitnessWire,
    signature: Bytes,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthorizationWire {
    erc3009_authorization: Option<Erc3009Wire>,
    permit2_authorization: Option<Permit2Wire>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DepositWire {
    #[serde(with = "uint")]
    pub(crate) amount: U256,
    authorization: AuthorizationWire,
}

/// The scheme's payloads (by `type`).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Payload {
    #[serde(rename_all = "camelCase")]
    Deposit {
        channel_config: ConfigWire,
        voucher: VoucherWire,
        deposit: Box<DepositWire>,
    },
    #[serde(rename_all = "camelCase")]
    Voucher {
        channel_config: ConfigWire,
        voucher: VoucherWire,
    },
    #[serde(rename_all = "camelCase")]
    Refund {
        channel_config: ConfigWire,
        voucher: VoucherWire,
        #[serde(default, with = "opt_uint")]
        amount: Option<U256>,
    },
}

/// An optional [`uint`].
mod opt_uint {
    use alloy_primitives::U256;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<U256>, D::Error> {
        super::uint::deserialize(d).map(Some)
    }
}

/// A voucher checked against the offer and its signer.
pub(crate) struct Checked {
    pub config: ConfigWire,
    pub id: B256,
    pub max: U256,
    pub signature: Bytes,
    pub deposit: Option<DepositWire>,
    /// A cooperative refund request (of at most this much, or all that is unclaimed).
    pub refund: Option<Option<U256>>,
}

/// A refund sent with no known outcome.
#[derive(Clone, Copy)]
struct Unsure {
    /// The channel's refund nonce before it.
    nonce: U256,
    /// When it was sent (the channel is held shut until the chain says, at most ten minutes).
    since: std::time::Instant,
}

/// The node's side of `batch-settlement`.
pub struct Batch {
    chain: Chain,
    store: PaymentStore,
    signer: PrivateKeySigner,
    receiver: Address,
    contracts: BatchContracts,
    token_domain: Eip712Domain,
    scanned: AtomicU64,
    /// Channels whose refund was sent with no known outcome.
    unsure: std::sync::Mutex<std::collections::HashMap<B256, Unsure>>,
    /// What a channel must be charged between two transactions the node sends for it at its
    /// own gas; see [`Batch::spend_gas`].
    gas_allowance: U256,
    /// When counts are claimed.
    pacing: crate::pacing::ClaimPacing,
}

impl Batch {
    /// Channels paying `receiver` (the node's vault), authorized and claimed by `signer` (the
    /// node's key, which also pays the gas of the deposits it submits). `None` when the chain
    /// has no batch-settlement contracts.
    pub async fn new(
        chain: Chain,
        store: PaymentStore,
        signer: PrivateKeySigner,
        receiver: Address,
    ) -> Result<Option<Self>, X402Error> {
        let Some(contracts) = chain.deployment().batch else {
            return Ok(None);
        };
        let token_domain = chain.token_domain().await?;
        let start = chain.deployment().block;
        Ok(Some(Self {
            chain,
            store,
            signer,
            receiver,
            contracts,
            token_domain,
            scanned: AtomicU64::new(start),
            unsure: Default::default(),
            gas_allowance: U256::from(DEFAULT_GAS_ALLOWANCE),
            pacing: crate::pacing::ClaimPacing::new(U256::from(DEFAULT_GAS_ALLOWANCE)),
        }))
    }

    /// Sends a deposit or a refund for a channel at the node's gas only once the channel was
    /// charged `allowance` token units (0: anything) since the last one the node sent for it.
    /// Default [`DEFAULT_GAS_ALLOWANCE`].
    pub fn with_gas_allowance(mut self, allowance: U256) -> Self {
        self.gas_allowance = allowance;
        self.pacing = crate::pacing::ClaimPacing::new(allowance);
        self
    }

    /// The offer for `amount`: what the official client needs to build the channel config (the
    /// receiver authorizer, the withdraw delay), the token's EIP-712 domain for its EIP-3009
    /// deposit, and the smallest deposit the node submits.
    pub fn offer(&self, amount: U256, max_timeout_seconds: u64) -> PaymentRequirements {
        PaymentRequirements {
            scheme: SCHEME.into(),
            network: caip2(self.chain.deployment().chain_id),
            amount,
            asset: self.chain.deployment().token,
            pay_to: self.receiver,
            max_timeout_seconds,
            extra: json!({
                "receiverAuthorizer": self.signer.address().to_checksum(None),
                "withdrawDelay": WITHDRAW_DELAY_SECS,
                "name": self.token_domain.name.as_deref().unwrap_or_default(),
                "version": self.token_domain.version.as_deref().unwrap_or_default(),
                "assetTransferMethod": "eip3009",
                "minDeposit": self.min_deposit(amount).to_string(),
            }),
        }
    }

    /// The receiver (the node's vault).
    pub fn receiver(&self) -> Address {
        self.receiver
    }

    /// Checks a payload and accepts its voucher for one request at `price` (the offer's
    /// amount). A deposit payload's deposit is submitted first (one transaction); a voucher
    /// needs no chain call unless the channel is new to the node or goes past its cached
    /// balance.
    pub async fn accept(
        &self,
        payload: &Value,
        extensions: Option<&Value>,
        price: U256,
    ) -> Result<Accepted, X402Error> {
        let c = self.check(payload)?;
        if c.refund.is_some() {
            return Err(invalid(
                ERR_REFUND_PAYLOAD,
                "a refund request pays for nothing",
            ));
        }
        if let Some(d) = &c.deposit {
            self.deposit(&c, d, extensions, price).await?;
        }
        let accepted = Accepted {
            channel: c.id,
            payer: c.config.payer,
            cumulative: c.max,
            nonce: B256::ZERO,
        };
        let key = accepted.payment_ref();
        // Vouchers carry no nonce: a ceiling counted before recurs as the next step after a
        // call charged less than its price, and is taken again then.
        let take = || {
            self.store
                .accept_voucher_again(c.id, key, c.max, B256::ZERO, price, &c.signature, true)
        };
        let mut outcome = take()?;
        if matches!(
            outcome,
            Err(VoucherRefusal::UnknownChannel
                | VoucherRefusal::OverDeposit { .. }
                | VoucherRefusal::Closing)
        ) {
            self.refresh(&c.config.config(), c.id).await?;
            outcome = take()?;
        }
        outcome
            .map(|()| accepted)
            .map_err(|r| refusal(r, c.max, price))
    }

    /// What this node's channels must be.
    fn terms(&self) -> Terms {
        Terms {
            chain_id: self.chain.deployment().chain_id,
            receiver: self.receiver,
            receiver_authorizer: self.signer.address(),
            token: self.chain.deployment().token,
            withdraw_delay: Some(WITHDRAW_DELAY_SECS),
        }
    }

    /// The payload's voucher, for this node's offers and signed by its channel's voucher signer.
    fn check(&self, payload: &Value) -> Result<Checked, X402Error> {
        check_payload(payload, &self.terms())
    }

    /// Checks a deposit's authorization and submits it (the node pays the gas), then records
    /// the channel as the chain has it.
    async fn deposit(
        &self,
        c: &Checked,
        d: &DepositWire,
        extensions: Option<&Value>,
        price: U256,
    ) -> Result<(), X402Error> {
        let min = self.min_deposit(price);
        if d.amount < min {
            return Err(invalid(
                ERR_BELOW_MIN_DEPOSIT,
                format!(
                    "a deposit through this node must be at least {min} token units (the offer's minDeposit); it pays the deposit's gas"
                ),
            ));
        }
        if d.amount > U256::from(u128::MAX) {
            return Err(invalid(
                ERR_DEPOSIT_PAYLOAD,
                "the deposit does not fit a uint128",
            ));
        }
        let config = c.config.config();
        let cx = DepositCx {
            chain: &self.chain,
            contracts: self.contracts,
            token_domain: &self.token_domain,
        };
        let (collector, data) = cx.collector_data(c, d, extensions, now_secs()).await?;
        cx.simulate(&config, d.amount, collector, &data).await?;
        let charged = self
            .store
            .channel(c.id)?
            .map_or(U256::ZERO, |ch| ch.accepted);
        self.spend_gas(c.id, charged)?;
        let sent = self
            .chain
            .batch_deposit(
                &self.signer,
                &config,
                d.amount.to::<u128>(),
                collector,
                data,
            )
            .await
            .map_err(X402Error::from);
        if matches!(&sent, Err(e) if !may_have_sent(e)) {
            self.unspend_gas(c.id, charged);
        }
        sent.map_err(|e| match e {
            X402Error::Chain(LedgerError::Reverted { reason, .. }) => invalid(
                ERR_DEPOSIT_FAILED,
                format!("the deposit was refused by the chain: {reason}"),
            ),
            other => other,
        })?;
        self.refresh(&config, c.id).await
    }

    /// Takes the right to send one transaction at the node's gas for channel `id`, charged
    /// `charged` so far: a deposit or a refund is sent for a payer only once the channel was
    /// charged the gas allowance since the last one (a channel's first is free). Otherwise a
    /// payer could have the node send deposits whose calls it lets fail, or that it is charged
    /// a unit for, and refunds of them, for next to nothing. Given back with
    /// [`Batch::unspend_gas`] if nothing is sent.
    fn spend_gas(&self, id: B256, charged: U256) -> Result<(), X402Error> {
        self.store
            .take_gas_turn(id, charged, self.gas_allowance)?
            .map_err(|short| {
                invalid(
                    ERR_NOTHING_CHARGED,
                    format!(
                        "this node sends a deposit or a refund at its own gas for a channel once the channel was charged {} token units since the last one it sent for it; {short} more first: pay for calls, or deposit or withdraw on the contract yourself (initiateWithdraw, then finalizeWithdraw after the delay)",
                        self.gas_allowance.max(U256::from(1))
                    ),
                )
            })
    }

    /// Gives back what [`Batch::spend_gas`] took at `charged`: nothing was sent.
    fn unspend_gas(&self, id: B256, charged: U256) {
        if let Err(e) = self.store.give_gas_turn_back(id, charged) {
            tracing::warn!(channel = %id, error = %e, "giving back a channel's turn at the node's gas");
        }
    }

    /// The smallest deposit the node submits (and pays the gas of) for a request at `price`:
    /// [`MIN_DEPOSIT_MULTIPLIER`] times the price, and enough that spending it earns the
    /// channel its next transaction at the node's gas (a top-up, a refund) with a call to spare.
    pub fn min_deposit(&self, price: U256) -> U256 {
        min_deposit(price).max(self.gas_allowance.saturating_add(price))
    }

    /// Reads the channel from the chain and records it.
    async fn refresh(&self, config: &ChannelConfig, id: B256) -> Result<(), X402Error> {
        let st = self.chain.batch_channel(id).await?;
        if st.balance.is_zero() && st.total_claimed.is_zero() {
            return Ok(());
        }
        self.record(config, id, &st)
    }

    fn record(
        &self,
        config: &ChannelConfig,
        id: B256,
        st: &BatchChannelState,
    ) -> Result<(), X402Error> {
        let rec = ChannelRecord {
            id,
            payer: config.payer,
            payee: config.receiver,
            salt: config.salt,
            deposited: st.balance,
            closing: st.withdraw_requested_at != 0,
            accepted: st.total_claimed,
            pending: U256::ZERO,
            redeemed: st.total_claimed,
        };
        self.store.refresh_batch_channel(
            self.chain.deployment().chain_id,
            &rec,
            &<ChannelConfig as SolType>::abi_encode(config),
        )
    }

    /// A payer's cooperative refund (the official client's `refund`): with its voucher for what
    /// it was charged (exactly the node's count), the node claims that and refunds up to `amount`
    /// of the rest (all of it by default) in one transaction. New vouchers on the channel wait
    /// meanwhile; a request running on it makes the refund wait (`channel_busy`).
    pub async fn refund(&self, payload: &Value) -> Result<Refunded, X402Error> {
        let c = self.check(payload)?;
        let Some(asked) = c.refund else {
            return Err(invalid(ERR_REFUND_PAYLOAD, "not a refund payload"));
        };
        let config = c.config.config();
        if self.store.channel(c.id)?.is_none() {
            self.refresh(&config, c.id).await?;
        }
        if self.store.channel(c.id)?.is_none() {
            return Err(invalid(ERR_CHANNEL_NOT_FOUND, "the channel has no deposit"));
        }
        // Held shut to new vouchers, atomically with checking that none is taken: no request
        // is served from under the refund.
        if !self.store.lock_channel(c.id) {
            return Err(invalid(
                ERR_CHANNEL_BUSY,
                "a request paid from this channel is running (or a refund is); ask for the refund once it has answered",
            ));
        }
        let before = self.chain.batch_channel(c.id).await;
        let out = match &before {
            Ok(st) => self.refund_idle(&c, &config, asked, st).await,
            Err(_) => Err(invalid(
                ERR_CHANNEL_BUSY,
                "the channel could not be read; retry",
            )),
        };
        match (&out, before) {
            // Sent, outcome unknown: shut until the chain says (the claim round looks). Its
            // turn at the node's gas stays used, even if it never lands: a stuck transaction
            // may still land after any wait, and a turn given back twice is a free one.
            (Err(X402Error::Chain(LedgerError::Pending { .. })), Ok(st)) => {
                self.unsure.lock().expect("not poisoned").insert(
                    c.id,
                    Unsure {
                        nonce: st.refund_nonce,
                        since: std::time::Instant::now(),
                    },
                );
            }
            _ => self.reopen(c.id).await,
        }
        out
    }

    /// Records a channel as the chain has it now and opens it to vouchers again.
    async fn reopen(&self, id: B256) {
        let read = match self.chain.batch_channel(id).await {
            Ok(st) => self.store.mark_batch_channel(id, &st),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = read {
            tracing::warn!(channel = %id, error = %e, "reading a channel after a refund");
        }
        self.store.unlock_channel(id);
    }

    /// Opens the channels whose refund's outcome was unknown once the chain shows it landed
    /// (its refund nonce moved on), or after ten minutes (it was dropped).
    async fn settle_unsure(&self) {
        let unsure: Vec<(B256, Unsure)> = self
            .unsure
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        for (id, u) in unsure {
            let landed = match self.chain.batch_channel(id).await {
                Ok(st) => st.refund_nonce > u.nonce,
                Err(_) => continue,
            };
            if landed || u.since.elapsed() > Duration::from_secs(600) {
                self.unsure.lock().expect("not poisoned").remove(&id);
                self.reopen(id).await;
            }
        }
    }

    async fn refund_idle(
        &self,
        c: &Checked,
        config: &ChannelConfig,
        asked: Option<U256>,
        st: &BatchChannelState,
    ) -> Result<Refunded, X402Error> {
        let Some(ch) = self.store.channel(c.id)? else {
            return Err(invalid(ERR_CHANNEL_NOT_FOUND, "the channel has no deposit"));
        };
        if c.max != ch.accepted {
            return Err(invalid(
                ERR_CUMULATIVE_MISMATCH,
                format!(
                    "the refund's voucher is for {}; {} was charged on this channel",
                    c.max, ch.accepted
                ),
            ));
        }
        let available = st.balance.saturating_sub(ch.accepted.max(st.total_claimed));
        let amount = match asked {
            None => available,
            Some(a) if a.is_zero() => {
                return Err(invalid(ERR_REFUND_AMOUNT, "a refund is of more than 0"));
            }
            Some(a) => a,
        };
        if available.is_zero() || amount > available {
            return Err(invalid(
                ERR_REFUND_NO_BALANCE,
                format!("{available} of the channel is unclaimed; {amount} was asked for"),
            ));
        }
        self.spend_gas(c.id, ch.accepted)?;
        // The voucher the payer just signed covers what it owes: claim that with the refund.
        let claims = if ch.accepted > st.total_claimed {
            vec![VoucherClaim {
                voucher: ClaimedVoucher {
                    channel: config.clone(),
                    maxClaimableAmount: c.max.saturating_to(),
                },
                signature: c.signature.clone(),
                totalClaimed: ch.accepted.saturating_to(),
            }]
        } else {
            Vec::new()
        };
        let sent = async {
            self.store.sync()?;
            self.chain
                .batch_claim_and_refund(&self.signer, claims, config, amount.saturating_to())
                .await
                .map_err(X402Error::from)
        }
        .await;
        if matches!(&sent, Err(e) if !may_have_sent(e)) {
            self.unspend_gas(c.id, ch.accepted);
        }
        let tx = sent.map_err(|e| match e {
            X402Error::Chain(LedgerError::Reverted { reason, .. }) => invalid(
                "invalid_batch_settlement_evm_refund_transaction_failed",
                format!("the refund was refused by the chain: {reason}"),
            ),
            other => other,
        })?;
        if ch.accepted > ch.redeemed {
            self.store.set_redeemed(c.id, ch.accepted)?;
        }
        Ok(Refunded {
            payer: c.config.payer,
            channel: c.id,
            amount,
            transaction: tx.hash,
        })
    }

    /// Gives back a voucher whose request failed (not charged).
    pub fn release(&self, a: &Accepted) {
        if let Err(e) = self.store.release_voucher(a.payment_ref()) {
            tracing::warn!(error = %e, "releasing a batch-settlement voucher");
        }
    }

    /// Counts a voucher whose request succeeded and costs `charged` (at most its price).
    pub fn commit(&self, a: &Accepted, charged: U256) -> Result<(), X402Error> {
        self.store.commit_voucher(a.payment_ref(), charged)
    }

    /// The `PAYMENT-RESPONSE` extra of a request charged `charged` on channel `id`: the charge
    /// and the channel's state, which the official client checks against its own count.
    pub fn settled_extra(&self, id: B256, charged: U256) -> Value {
        json!({
            "chargedAmount": charged.to_string(),
            "channelState": self.channel_state(id),
        })
    }

    /// The channel's state as the node counts it (the official client's `channelState`).
    pub fn channel_state(&self, id: B256) -> Value {
        let Ok(Some(ch)) = self.store.channel(id) else {
            return json!({ "channelId": id });
        };
        json!({
            "channelId": id,
            "balance": ch.deposited.to_string(),
            "totalClaimed": ch.redeemed.to_string(),
            "chargedCumulativeAmount": ch.accepted.to_string(),
        })
    }

    /// The corrective state for a refused voucher in `payload`: the channel's charged total and
    /// the payer's own latest counted voucher, so the official client can check the signature
    /// is its own and sign the next step. `None` when the node has nothing on that channel.
    pub fn corrective(&self, payload: &Value) -> Option<Value> {
        let id = payload.get("voucher")?.get("channelId")?.as_str()?;
        let id: B256 = id.parse().ok()?;
        let ch = self.store.channel(id).ok()??;
        let (max, _, sig) = self.store.redeemable(id, U256::ZERO).ok()??;
        Some(json!({
            "channelState": {
                "channelId": id,
                "balance": ch.deposited.to_string(),
                "totalClaimed": ch.redeemed.to_string(),
                "chargedCumulativeAmount": ch.accepted.to_string(),
            },
            "voucherState": {
                "signedMaxClaimable": max.to_string(),
                "signature": Bytes::from(sig),
            },
        }))
    }

    /// The payment reference of a voucher payload that was counted (its request succeeded);
    /// `None` for a payload that does not check.
    pub fn counted(&self, payload: &Value) -> Result<Option<B256>, X402Error> {
        let Ok(c) = self.check(payload) else {
            return Ok(None);
        };
        let key = Accepted {
            channel: c.id,
            payer: c.config.payer,
            cumulative: c.max,
            nonce: B256::ZERO,
        }
        .payment_ref();
        Ok((self.store.outcome(key)? == crate::store::Outcome::Paid).then_some(key))
    }

    /// One round: channels whose payer asked to withdraw are marked (no new vouchers) and
    /// claimed now, within the withdraw delay; then what every channel owes is claimed as
    /// [`crate::pacing::ClaimPacing`] says, up to [`MAX_CLAIMS_PER_TX`] channels a transaction,
    /// and the claimed total is swept to the vault. Returns how many channels were claimed.
    pub async fn claim_due(&self) -> Result<usize, X402Error> {
        self.settle_unsure().await;
        // A failed look at withdrawals does not stop the claims: they are what protects the
        // node within the delay.
        if let Err(e) = self.watch_withdrawals().await {
            tracing::warn!(error = %e, "looking for batch-settlement withdrawals");
        }
        let mut due = Vec::new();
        for (c, config) in self.store.unclaimed_batch()? {
            let Some((cumulative, _, sig)) = self.store.redeemable(c.id, c.redeemed)? else {
                continue;
            };
            // What is owed, under the largest counted voucher (which covers it).
            let amount = c.accepted.min(cumulative);
            if amount <= c.redeemed {
                continue;
            }
            // A claim costs the node gas too (`ClaimPacing`).
            if !self.pacing.due(c.id, amount - c.redeemed, c.closing) {
                continue;
            }
            self.pacing.claimed(c.id);
            let Ok(config) = <ChannelConfig as SolType>::abi_decode(&config) else {
                tracing::warn!(channel = %c.id, "a stored channel config does not decode");
                continue;
            };
            due.push((
                c.id,
                amount,
                VoucherClaim {
                    voucher: ClaimedVoucher {
                        channel: config,
                        maxClaimableAmount: cumulative.saturating_to::<u128>(),
                    },
                    signature: sig.into(),
                    totalClaimed: amount.saturating_to::<u128>(),
                },
            ));
        }
        let mut claimed = 0;
        for chunk in due.chunks(MAX_CLAIMS_PER_TX) {
            // Never claim on a count a power cut could still undo.
            self.store.sync()?;
            let claims: Vec<VoucherClaim> = chunk.iter().map(|(_, _, v)| v.clone()).collect();
            let sent = self.chain.batch_claim(&self.signer, claims).await;
            if let Err(e) = &sent {
                tracing::warn!(error = %e, rows = chunk.len(), "a batch claim failed; claiming its channels one by one");
            }
            for (id, amount, claim) in chunk {
                if sent.is_err()
                    && let Err(e) = self
                        .chain
                        .batch_claim(&self.signer, vec![claim.clone()])
                        .await
                {
                    tracing::warn!(channel = %id, error = %e, "claiming a channel");
                }
                // Take the chain's word: a claim sent before a crash may have landed.
                let st = match self.chain.batch_channel(*id).await {
                    Ok(st) => st,
                    Err(e) => {
                        tracing::warn!(channel = %id, error = %e, "reading a claimed channel");
                        continue;
                    }
                };
                if st.total_claimed >= *amount {
                    self.store
                        .set_redeemed(*id, st.total_claimed.min(*amount))?;
                    claimed += 1;
                }
            }
        }
        let token = self.chain.deployment().token;
        let (total, settled) = self.chain.batch_receiver(self.receiver, token).await?;
        if total > settled {
            self.chain
                .batch_settle(&self.signer, self.receiver, token)
                .await?;
        }
        Ok(claimed)
    }

    /// Marks the channels whose payer asked to withdraw since the last look.
    async fn watch_withdrawals(&self) -> Result<(), X402Error> {
        let from = self.scanned.load(Ordering::Relaxed);
        let head = self.chain.ledger().head().await?.number;
        if head < from {
            return Ok(());
        }
        let logs = self
            .chain
            .ledger()
            .logs(LogFilter {
                address: Some(self.contracts.settlement),
                topic0: Some(X402BatchSettlement::WithdrawInitiated::SIGNATURE_HASH),
                from_block: from,
                ..Default::default()
            })
            .await?;
        for l in logs {
            let Ok(ev) = X402BatchSettlement::WithdrawInitiated::decode_log(&l.log) else {
                continue;
            };
            if self.store.channel(ev.channelId)?.is_none() {
                continue;
            }
            let st = self.chain.batch_channel(ev.channelId).await?;
            self.store.mark_batch_channel(ev.channelId, &st)?;
        }
        self.scanned.store(head + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Claims every `every` (at most a fifth of the withdraw delay: a payer's withdrawal must
    /// meet several rounds), forever.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let every = every.min(Duration::from_secs(WITHDRAW_DELAY_SECS / 5));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.claim_due().await {
                tracing::warn!(error = %e, "batch-settlement claim round");
            }
        }
    }
}

/// What a channel must be to pay an offer.
pub(crate) struct Terms {
    /// The chain.
    pub chain_id: u64,
    /// Who is paid.
    pub receiver: Address,
    /// Who claims.
    pub receiver_authorizer: Address,
    /// The token.
    pub token: Address,
    /// The withdraw delay, when the offer names one.
    pub withdraw_delay: Option<u64>,
}

/// The payload's voucher (with its deposit, if any), for a channel of terms `t` and signed by
/// the channel's voucher signer. No chain access.
pub(crate) fn check_payload(payload: &Value, t: &Terms) -> Result<Checked, X402Error> {
    match payload.get("type").and_then(Value::as_str) {
        Some("deposit" | "voucher" | "refund") => {}
        other => {
            return Err(invalid(
                ERR_PAYLOAD_TYPE,
                format!(
                    "the payload's type is {other:?}; a paid request carries a deposit or voucher payload"
                ),
            ));
        }
    }
    let p: Payload = serde_json::from_value(payload.clone()).map_err(|e| {
        invalid(
            ERR_VOUCHER_PAYLOAD,
            format!("the batch-settlement payload is not a deposit or voucher payload: {e}"),
        )
    })?;
    let mut refund = None;
    let (config, voucher, deposit) = match p {
        Payload::Deposit {
            channel_config,
            voucher,
            deposit,
        } => (channel_config, voucher, Some(*deposit)),
        Payload::Voucher {
            channel_config,
            voucher,
        } => (channel_config, voucher, None),
        Payload::Refund {
            channel_config,
            voucher,
            amount,
        } => {
            refund = Some(amount);
            (channel_config, voucher, None)
        }
    };
    // With no payer authorizer the contract checks the payer by ERC-1271 whenever it has code
    // (a smart account, or an EOA that delegates with EIP-7702 later), which a local check
    // cannot foresee: a voucher served now could be unclaimable then.
    if config.payer_authorizer.is_zero() {
        return Err(invalid(
            ERR_PAYER_AUTHORIZER,
            "the channel has no payerAuthorizer; name the key that signs the vouchers (the official client does so by default)",
        ));
    }
    if config.receiver != t.receiver {
        return Err(invalid(
            ERR_RECEIVER_MISMATCH,
            format!(
                "the channel pays {}, not the offer's payTo {}",
                config.receiver, t.receiver
            ),
        ));
    }
    if config.receiver_authorizer != t.receiver_authorizer {
        return Err(invalid(
            ERR_RECEIVER_AUTHORIZER_MISMATCH,
            format!(
                "the channel's receiver authorizer is {}, not the offer's receiverAuthorizer {}",
                config.receiver_authorizer, t.receiver_authorizer
            ),
        ));
    }
    if config.token != t.token {
        return Err(invalid(
            ERR_TOKEN_MISMATCH,
            format!(
                "the channel is in token {}, the offer asks for {}",
                config.token, t.token
            ),
        ));
    }
    if t.withdraw_delay.is_some_and(|d| d != config.withdraw_delay) {
        return Err(invalid(
            ERR_WITHDRAW_DELAY_MISMATCH,
            format!(
                "the channel's withdraw delay is {} s; the offer's is {:?} s",
                config.withdraw_delay, t.withdraw_delay
            ),
        ));
    }
    if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&config.withdraw_delay) {
        return Err(invalid(
            ERR_WITHDRAW_DELAY_RANGE,
            format!(
                "the channel's withdraw delay is {} s; it must be {MIN_WITHDRAW_DELAY} to {MAX_WITHDRAW_DELAY} s",
                config.withdraw_delay
            ),
        ));
    }
    let id = cairn_ledger::chain::batch_channel_id(t.chain_id, &config.config());
    if voucher.channel_id != id {
        return Err(invalid(
            ERR_CHANNEL_ID_MISMATCH,
            format!(
                "the voucher is for channel {}, the channel config's id is {id}",
                voucher.channel_id
            ),
        ));
    }
    if voucher.max_claimable_amount > U256::from(u128::MAX) {
        return Err(invalid(
            ERR_VOUCHER_PAYLOAD,
            "maxClaimableAmount does not fit a uint128",
        ));
    }
    let max = voucher.max_claimable_amount.to::<u128>();
    let sig = cairn_core::sig::parse_rsv(&voucher.signature).map_err(|e| {
        invalid(
            ERR_VOUCHER_SIGNATURE,
            format!("the voucher's signature: {e}"),
        )
    })?;
    let hash = batch_voucher_hash(t.chain_id, id, max);
    let signer = cairn_core::sig::recover_prehash(&sig, &hash).map_err(|_| {
        invalid(
            ERR_VOUCHER_SIGNATURE,
            "no signer recovers from the voucher's signature (malformed or high-s)",
        )
    })?;
    if signer != config.voucher_signer() {
        return Err(invalid(
            ERR_VOUCHER_SIGNATURE,
            format!(
                "the voucher is signed by {signer}, not by the channel's voucher signer {}",
                config.voucher_signer()
            ),
        ));
    }
    Ok(Checked {
        config,
        id,
        max: voucher.max_claimable_amount,
        signature: voucher.signature,
        deposit,
        refund,
    })
}

/// What checking a deposit needs: the chain (a Permit2 allowance), the collectors, and the
/// token's EIP-712 domain (its EIP-3009 signatures).
pub(crate) struct DepositCx<'a> {
    pub chain: &'a Chain,
    pub contracts: BatchContracts,
    pub token_domain: &'a Eip712Domain,
}

impl DepositCx<'_> {
    /// Runs the deposit as a call first (`eth_call`): a payer without the funds, a used or
    /// foreign authorization, fails here, before anyone signs or pays for a transaction.
    pub(crate) async fn simulate(
        &self,
        config: &ChannelConfig,
        amount: U256,
        collector: Address,
        data: &Bytes,
    ) -> Result<(), X402Error> {
        use alloy_sol_types::SolCall;
        let call = X402BatchSettlement::depositCall {
            config: config.clone(),
            amount: amount.saturating_to(),
            collector,
            collectorData: data.clone(),
        };
        match self
            .chain
            .ledger()
            .call(self.contracts.settlement, call.abi_encode().into())
            .await
        {
            Ok(_) => Ok(()),
            Err(LedgerError::Reverted { reason, .. }) => Err(invalid(
                ERR_DEPOSIT_SIMULATION,
                format!("the deposit would fail: {reason}"),
            )),
            Err(e) => Err(X402Error::Chain(e)),
        }
    }

    /// The collector and its `collectorData` for the deposit `d` of the checked voucher `c`,
    /// once the payer's authorization checks out.
    pub(crate) async fn collector_data(
        &self,
        c: &Checked,
        d: &DepositWire,
        extensions: Option<&Value>,
        now: u64,
    ) -> Result<(Address, Bytes), X402Error> {
        if d.amount.is_zero() || d.amount > U256::from(u128::MAX) {
            return Err(invalid(
                ERR_DEPOSIT_PAYLOAD,
                "the deposit must be more than 0 and fit a uint128",
            ));
        }
        match (
            &d.authorization.erc3009_authorization,
            &d.authorization.permit2_authorization,
        ) {
            (Some(a), None) => Ok((
                self.contracts.erc3009_collector,
                self.check_erc3009(c, d.amount, a, now)?,
            )),
            (None, Some(a)) => Ok((
                self.contracts.permit2_collector,
                self.check_permit2(c, d.amount, a, extensions, now).await?,
            )),
            _ => Err(invalid(
                ERR_DEPOSIT_PAYLOAD,
                "a deposit carries exactly one of erc3009Authorization and permit2Authorization",
            )),
        }
    }

    /// The `collectorData` of an EIP-3009 deposit, once its signature is the payer's.
    fn check_erc3009(
        &self,
        c: &Checked,
        amount: U256,
        a: &Erc3009Wire,
        now: u64,
    ) -> Result<Bytes, X402Error> {
        if a.valid_after > U256::from(now) {
            return Err(invalid(
                ERR_VALID_AFTER,
                format!("the authorization is valid only after {}", a.valid_after),
            ));
        }
        if a.valid_before < U256::from(now + VALIDITY_MARGIN_SECS) {
            return Err(invalid(
                ERR_VALID_BEFORE,
                format!(
                    "the authorization expired (or expires within {VALIDITY_MARGIN_SECS} s) at {}",
                    a.valid_before
                ),
            ));
        }
        let msg = cairn_ledger::chain::ReceiveWithAuthorization {
            from: c.config.payer,
            to: self.contracts.erc3009_collector,
            value: amount,
            validAfter: a.valid_after,
            validBefore: a.valid_before,
            nonce: erc3009_deposit_nonce(c.id, a.salt),
        };
        let recovered = cairn_core::sig::parse_rsv(&a.signature).ok().and_then(|s| {
            cairn_core::sig::recover_prehash(&s, &msg.eip712_signing_hash(self.token_domain)).ok()
        });
        if recovered != Some(c.config.payer) {
            return Err(invalid(
                ERR_RECEIVE_SIGNATURE,
                "the deposit's ReceiveWithAuthorization is not signed by the channel's payer for this channel and amount (or is in high-s form)",
            ));
        }
        Ok(erc3009_collector_data(
            a.valid_after,
            a.valid_before,
            a.salt,
            &a.signature,
        ))
    }

    /// The `collectorData` of a Permit2 deposit, once its terms and signature check out and
    /// Permit2 may move the payer's tokens (an approval, or one riding in `extensions`).
    async fn check_permit2(
        &self,
        c: &Checked,
        amount: U256,
        a: &Permit2Wire,
        extensions: Option<&Value>,
        now: u64,
    ) -> Result<Bytes, X402Error> {
        let chain_id = self.chain.deployment().chain_id;
        if a.from != c.config.payer {
            return Err(invalid(
                ERR_PERMIT2_SIGNATURE,
                format!(
                    "the permit is from {}, the channel's payer is {}",
                    a.from, c.config.payer
                ),
            ));
        }
        if a.spender != self.contracts.permit2_collector {
            return Err(invalid(
                ERR_PERMIT2_SPENDER,
                format!(
                    "the permit names spender {}, not the Permit2 deposit collector {}",
                    a.spender, self.contracts.permit2_collector
                ),
            ));
        }
        if a.permitted.token != c.config.token {
            return Err(invalid(
                ERR_TOKEN_MISMATCH,
                format!("the permit moves token {}", a.permitted.token),
            ));
        }
        if a.permitted.amount != amount {
            return Err(invalid(
                ERR_PERMIT2_AMOUNT,
                format!(
                    "the permit is for {}, the deposit for {amount}",
                    a.permitted.amount
                ),
            ));
        }
        if a.witness.channel_id != c.id {
            return Err(invalid(
                ERR_CHANNEL_ID_MISMATCH,
                "the permit's witness names another channel",
            ));
        }
        if a.deadline < U256::from(now + VALIDITY_MARGIN_SECS) {
            return Err(invalid(
                ERR_PERMIT2_DEADLINE,
                format!("the permit expired at {}", a.deadline),
            ));
        }
        let hash = permit2_deposit_hash(
            chain_id,
            a.permitted.token,
            amount,
            a.nonce,
            a.deadline,
            c.id,
        );
        let recovered = cairn_core::sig::parse_rsv(&a.signature)
            .ok()
            .and_then(|s| cairn_core::sig::recover_prehash(&s, &hash).ok());
        if recovered != Some(c.config.payer) {
            return Err(invalid(
                ERR_PERMIT2_SIGNATURE,
                "the permit is not signed by the channel's payer (or is in high-s form)",
            ));
        }
        let terms = ApprovalTerms {
            owner: c.config.payer,
            token: c.config.token,
            permit2: x402_addresses::PERMIT2,
            amount,
            deadline: a.deadline,
        };
        let permit = eip2612_of(extensions, &terms, self.token_domain, now)?;
        if permit.is_none()
            && self
                .chain
                .token_allowance(c.config.payer, x402_addresses::PERMIT2)
                .await?
                < amount
        {
            return Err(invalid(
                ERR_PERMIT2_ALLOWANCE,
                format!(
                    "{} has not approved Permit2 for {amount}; approve it once (cairn pay approve-permit2) or sign an EIP-2612 approval into the payment",
                    c.config.payer
                ),
            ));
        }
        Ok(permit2_collector_data(
            a.nonce,
            a.deadline,
            &a.signature,
            permit.as_ref().map(|(p, _)| p),
        ))
    }
}

/// A cooperative refund made.
#[derive(Clone, Debug)]
pub struct Refunded {
    /// Who got it.
    pub payer: Address,
    /// From which channel.
    pub channel: B256,
    /// How much.
    pub amount: U256,
    /// The transaction (claim and refund).
    pub transaction: B256,
}

/// Whether a failed send may have put a transaction out at the node's gas: one sent and not
/// mined, or a revert (which may be a mined one). Anything else failed before sending, and an
/// honest payer must not lose its turn to an RPC endpoint's hiccup.
fn may_have_sent(e: &X402Error) -> bool {
    matches!(
        e,
        X402Error::Chain(LedgerError::Pending { .. } | LedgerError::Reverted { .. })
    )
}

/// The smallest deposit the node submits for a request at `price`.
pub fn min_deposit(price: U256) -> U256 {
    price.saturating_mul(U256::from(MIN_DEPOSIT_MULTIPLIER))
}

/// What the node answers a voucher the payment store refused.
fn refusal(r: VoucherRefusal, max: U256, price: U256) -> X402Error {
    match r {
        VoucherRefusal::Locked => invalid(
            ERR_CHANNEL_BUSY,
            "a cooperative refund is being made on this channel; retry once it is done",
        ),
        VoucherRefusal::AlreadyUsed => invalid(
            ERR_CUMULATIVE_MISMATCH,
            format!(
                "the voucher for {max} already paid for a request; sign the channel's next step (the 402's channelState says what was charged)"
            ),
        ),
        VoucherRefusal::UnknownChannel => invalid(
            ERR_CHANNEL_NOT_FOUND,
            "the channel has no deposit; send a deposit payload first",
        ),
        VoucherRefusal::Closing => invalid(
            ERR_WITHDRAWAL_PENDING,
            "the payer asked to withdraw this channel; finalize or cancel the withdrawal, or pay on a new channel (another salt)",
        ),
        VoucherRefusal::OverDeposit { deposited } => invalid(
            ERR_EXCEEDS_BALANCE,
            format!(
                "the voucher promises {max} but the channel holds {deposited}; top it up with a deposit payload"
            ),
        ),
        VoucherRefusal::NotNext { owed } => invalid(
            ERR_CUMULATIVE_MISMATCH,
            format!(
                "the voucher promises {max} in total; {owed} is charged or in flight and the price is {price}, so it must be exactly {}",
                owed.saturating_add(price)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_in_decimal_and_hex_and_nothing_else() {
        #[derive(Deserialize)]
        struct N {
            #[serde(with = "uint")]
            n: U256,
        }
        let n = |v: Value| serde_json::from_value::<N>(json!({ "n": v })).map(|n| n.n);
        assert_eq!(n(json!("1000")).unwrap(), U256::from(1000));
        assert_eq!(n(json!("0xff")).unwrap(), U256::from(255));
        assert_eq!(n(json!(7)).unwrap(), U256::from(7));
        for bad in [
            json!("-1"),
            json!("1e3"),
            json!("0x"),
            json!(""),
            json!(1.5),
            json!(null),
        ] {
            assert!(n(bad.clone()).is_err(), "{bad} was read as a number");
        }
        let too_long = format!("0x1{}", "0".repeat(64));
        assert!(n(json!(too_long)).is_err());
    }
}
