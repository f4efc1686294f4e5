//! The paying side: read a 402, pick an offer, sign, and build the retry header.

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::SolStruct;
use axum::http::HeaderMap;

use crate::exact::{Authorization, ExactPayload, domain_from_offer};
use crate::prepaid::{self, PrepaidPayload};
use crate::wire::{
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PaymentPayload, PaymentRequired, PaymentRequirements,
    SettleResponse, X_PAYMENT_RESPONSE, chain_id_of, decode_header, encode_header,
};
use crate::{X402Error, now_secs};

/// The offers of a 402 answer (from its v2 `PAYMENT-REQUIRED` header).
pub fn offers(headers: &HeaderMap) -> Result<PaymentRequired, X402Error> {
    let h = headers.get(PAYMENT_REQUIRED).ok_or_else(|| {
        X402Error::Malformed("the 402 answer has no PAYMENT-REQUIRED header (not x402 v2)".into())
    })?;
    decode_header("PAYMENT-REQUIRED", h.as_bytes())
}

/// The settlement result of a paid answer, if it has one.
pub fn settle_response(headers: &HeaderMap) -> Option<SettleResponse> {
    let h = headers
        .get(PAYMENT_RESPONSE)
        .or_else(|| headers.get(X_PAYMENT_RESPONSE))?;
    decode_header("PAYMENT-RESPONSE", h.as_bytes()).ok()
}

/// The EVM chain id of `offer`'s network.
fn evm_chain_id(offer: &PaymentRequirements) -> Result<u64, X402Error> {
    chain_id_of(&offer.network).ok_or_else(|| {
        X402Error::Malformed(format!("network {:?} is not an EVM chain", offer.network))
    })
}

/// Signs an `exact` payment for `offer` and returns the `PAYMENT-SIGNATURE` value.
pub fn pay_exact(
    signer: &PrivateKeySigner,
    required: &PaymentRequired,
    offer: &PaymentRequirements,
) -> Result<String, X402Error> {
    let chain_id = evm_chain_id(offer)?;
    let authorization = Authorization {
        from: signer.address(),
        to: offer.pay_to,
        value: offer.amount,
        valid_after: U256::ZERO,
        valid_before: U256::from(now_secs() + offer.max_timeout_seconds.max(60)),
        nonce: B256::random(),
    };
    let hash = authorization
        .message()
        .eip712_signing_hash(&domain_from_offer(offer, chain_id));
    let sig = signer
        .sign_hash_sync(&hash)
        .map_err(|e| X402Error::Malformed(format!("signing: {e}")))?;
    let payload = ExactPayload {
        signature: Bytes::from(sig.as_bytes().to_vec()),
        authorization,
    };
    Ok(envelope(required, offer, serde_json::to_value(payload)))
}

/// Signs an `upto` permit for the offer's maximum, as the official clients do: a Permit2
/// witness transfer to the offer's `payTo`, settleable only by its `facilitatorAddress`, with a
/// random nonce, valid for `maxTimeoutSeconds`. The payer must have approved Permit2 on the token.
pub fn pay_upto(
    signer: &PrivateKeySigner,
    required: &PaymentRequired,
    offer: &PaymentRequirements,
) -> Result<String, X402Error> {
    use cairn_ledger::contracts::x402_addresses;
    let chain_id = evm_chain_id(offer)?;
    let facilitator: Address = offer
        .extra
        .get("facilitatorAddress")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| X402Error::Malformed("the upto offer names no facilitatorAddress".into()))?;
    let upto = cairn_ledger::UptoContracts {
        permit2: x402_addresses::PERMIT2,
        proxy: x402_addresses::UPTO_PERMIT2_PROXY,
    };
    let auth = cairn_ledger::UptoAuthorization {
        owner: signer.address(),
        token: offer.asset,
        max: offer.amount,
        nonce: U256::from_be_bytes(B256::random().0),
        // The node names the timeout: at most an hour, so a permit whose call failed on our
        // side is not settleable for long.
        deadline: U256::from(
            now_secs().saturating_add(offer.max_timeout_seconds.clamp(300, 3_600)),
        ),
        to: offer.pay_to,
        facilitator,
        valid_after: U256::ZERO,
    };
    let sig = signer
        .sign_hash_sync(&auth.signing_hash(chain_id, &upto))
        .map_err(|e| X402Error::Malformed(format!("signing: {e}")))?;
    let payload = crate::upto::UptoPayload {
        permit2_authorization: crate::upto::Permit2Authorization {
            from: auth.owner,
            permitted: crate::upto::Permitted {
                token: auth.token,
                amount: auth.max,
            },
            spender: upto.proxy,
            nonce: auth.nonce,
            deadline: auth.deadline,
            witness: crate::upto::WitnessWire {
                to: auth.to,
                facilitator: auth.facilitator,
                valid_after: auth.valid_after,
            },
        },
        signature: Bytes::from(sig.as_bytes().to_vec()),
    };
    Ok(envelope(required, offer, serde_json::to_value(payload)))
}

/// Signs a `prepaid` voucher worth `cumulative` in total on channel `salt`.
pub fn pay_prepaid(
    signer: &PrivateKeySigner,
    required: &PaymentRequired,
    offer: &PaymentRequirements,
    salt: B256,
    cumulative: U256,
) -> Result<String, X402Error> {
    let domain = prepaid::domain_from_offer(offer).ok_or_else(|| {
        X402Error::Malformed("the prepaid offer lacks its escrow, name or version".into())
    })?;
    let payload: PrepaidPayload =
        prepaid::sign_voucher(signer, offer.pay_to, salt, cumulative, &domain)?;
    Ok(envelope(required, offer, serde_json::to_value(payload)))
}

/// A payer's `batch-settlement` channel with the node behind `offer`: the channel config and
/// id, and what the payer has been charged on it so far (as the node's `PAYMENT-RESPONSE`s
/// said). Each payment signs a voucher for that plus the offer's amount; the first (or one past
/// the balance) also deposits.
#[derive(Clone, Debug)]
pub struct BatchChannel {
    /// The channel's identity.
    pub config: cairn_ledger::chain::ChannelConfig,
    /// Its id on the offer's chain.
    pub id: B256,
    /// Charged so far.
    pub charged: U256,
    /// Deposited so far.
    pub balance: U256,
}

impl BatchChannel {
    /// The channel `payer` has with the node behind `offer`, under `salt`.
    pub fn new(payer: Address, offer: &PaymentRequirements, salt: B256) -> Result<Self, X402Error> {
        let chain_id = evm_chain_id(offer)?;
        let authorizer: Address = offer
            .extra
            .get("receiverAuthorizer")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| X402Error::Malformed("the offer names no receiverAuthorizer".into()))?;
        let delay = offer
            .extra
            .get("withdrawDelay")
            .and_then(|v| v.as_u64())
            .unwrap_or(crate::batch::WITHDRAW_DELAY_SECS);
        // The payer's money is locked this long after asking for it back: the node names it,
        // the payer bounds it.
        if !(crate::batch::WITHDRAW_DELAY_SECS..=MAX_PAYER_WITHDRAW_DELAY).contains(&delay) {
            return Err(X402Error::Malformed(format!(
                "the offer's withdrawDelay of {delay} s is outside what this client accepts ({}–{MAX_PAYER_WITHDRAW_DELAY} s): your deposit would be locked that long",
                crate::batch::WITHDRAW_DELAY_SECS
            )));
        }
        let config = cairn_ledger::chain::ChannelConfig {
            payer,
            payerAuthorizer: payer,
            receiver: offer.pay_to,
            receiverAuthorizer: authorizer,
            token: offer.asset,
            withdrawDelay: alloy_primitives::aliases::U40::from(delay),
            salt,
        };
        let id = cairn_ledger::chain::batch_channel_id(chain_id, &config);
        Ok(Self {
            config,
            id,
            charged: U256::ZERO,
            balance: U256::ZERO,
        })
    }

    /// The `PAYMENT-SIGNATURE` value paying `offer` from this channel: a voucher for what was
    /// charged plus the offer's amount, with an EIP-3009 deposit of `deposit` first when that
    /// is more than the balance (the deposit is counted into the balance here).
    pub fn pay(
        &mut self,
        signer: &PrivateKeySigner,
        required: &PaymentRequired,
        offer: &PaymentRequirements,
        deposit: U256,
    ) -> Result<String, X402Error> {
        let payload = self.payload(signer, offer, deposit)?;
        Ok(envelope(required, offer, Ok(payload)))
    }

    /// The payload itself (see [`BatchChannel::pay`]).
    pub fn payload(
        &mut self,
        signer: &PrivateKeySigner,
        offer: &PaymentRequirements,
        deposit: U256,
    ) -> Result<serde_json::Value, X402Error> {
        let chain_id = evm_chain_id(offer)?;
        let sign = |hash: B256| {
            signer
                .sign_hash_sync(&hash)
                .map(|s| Bytes::from(s.as_bytes().to_vec()))
                .map_err(|e| X402Error::Malformed(format!("signing: {e}")))
        };
        let max = self
            .charged
            .checked_add(offer.amount)
            .filter(|m| *m <= U256::from(u128::MAX))
            .ok_or_else(|| {
                X402Error::Malformed("the voucher's total is past what a channel holds".into())
            })?;
        let voucher = serde_json::json!({
            "channelId": self.id,
            "maxClaimableAmount": max.to_string(),
            "signature": sign(cairn_ledger::chain::batch_voucher_hash(
                chain_id,
                self.id,
                max.to::<u128>(),
            ))?,
        });
        let config = serde_json::json!({
            "payer": self.config.payer,
            "payerAuthorizer": self.config.payerAuthorizer,
            "receiver": self.config.receiver,
            "receiverAuthorizer": self.config.receiverAuthorizer,
            "token": self.config.token,
            "withdrawDelay": self.config.withdrawDelay.to::<u64>(),
            "salt": self.config.salt,
        });
        if max <= self.balance {
            return Ok(serde_json::json!({
                "type": "voucher", "channelConfig": config, "voucher": voucher,
            }));
        }
        let deposit = deposit.max(max - self.balance);
        let salt = U256::from_be_bytes(B256::random().0);
        // As for an `upto` permit: the node names the lifetime, at most an hour.
        let valid_before =
            U256::from(now_secs().saturating_add(offer.max_timeout_seconds.clamp(60, 3_600)));
        let message = cairn_ledger::chain::ReceiveWithAuthorization {
            from: signer.address(),
            to: cairn_ledger::contracts::x402_addresses::ERC3009_DEPOSIT_COLLECTOR,
            value: deposit,
            validAfter: U256::ZERO,
            validBefore: valid_before,
            nonce: cairn_ledger::chain::erc3009_deposit_nonce(self.id, salt),
        };
        let signature = sign(message.eip712_signing_hash(&domain_from_offer(offer, chain_id)))?;
        self.balance += deposit;
        Ok(serde_json::json!({
            "type": "deposit",
            "channelConfig": config,
            "voucher": voucher,
            "deposit": {
                "amount": deposit.to_string(),
                "authorization": {"erc3009Authorization": {
                    "validAfter": "0",
                    "validBefore": valid_before.to_string(),
                    "salt": B256::from(salt),
                    "signature": signature,
                }},
            },
        }))
    }

    /// A cooperative refund request of `amount` (all that is unclaimed when `None`): the
    /// channel's config and a voucher for exactly what was charged.
    pub fn refund_payload(
        &self,
        signer: &PrivateKeySigner,
        offer: &PaymentRequirements,
        amount: Option<U256>,
    ) -> Result<serde_json::Value, X402Error> {
        let mut zero = self.clone();
        zero.balance = U256::MAX;
        let mut p = zero.payload(
            signer,
            &PaymentRequirements {
                amount: U256::ZERO,
                ..offer.clone()
            },
            U256::ZERO,
        )?;
        p["type"] = "refund".into();
        if let Some(a) = amount {
            p["amount"] = a.to_string().into();
        }
        Ok(p)
    }

    /// The node's state of this channel in `offer`, as a 402 that refused a voucher carries it
    /// (the corrective 402), when it names this channel.
    pub fn corrective(&self, offer: &PaymentRequirements) -> Option<Corrective> {
        let state = offer.extra.get("channelState")?;
        if state.get("channelId")?.as_str()?.parse::<B256>().ok()? != self.id {
            return None;
        }
        let amount = |v: &serde_json::Value, k: &str| v.get(k)?.as_str()?.parse::<U256>().ok();
        // The payer's own latest voucher as the node holds it: proof of a ceiling it signed
        // (on another machine, or in a call whose answer never arrived), taken only when the
        // signature is the payer authorizer's over this channel.
        let signed = offer.extra.get("voucherState").and_then(|v| {
            let max = amount(v, "signedMaxClaimable")?;
            let sig: Bytes = v.get("signature")?.as_str()?.parse().ok()?;
            let sig = cairn_core::sig::parse_rsv(&sig).ok()?;
            let hash = cairn_ledger::chain::batch_voucher_hash(
                evm_chain_id(offer).ok()?,
                self.id,
                u128::try_from(max).ok()?,
            );
            (cairn_core::sig::recover_prehash(&sig, &hash).ok()? == self.config.payerAuthorizer)
                .then_some(max)
        });
        Some(Corrective {
            charged: amount(state, "chargedCumulativeAmount")?,
            balance: amount(state, "balance")?,
            signed,
        })
    }

    /// Counts what the node's `PAYMENT-RESPONSE` says this payment of (at most) `most` was
    /// charged; never more than `most`, whatever the node says.
    pub fn charged(&mut self, response: &SettleResponse, most: U256) {
        if let Some(c) = response
            .extra
            .as_ref()
            .and_then(|e| e.get("chargedAmount")?.as_str()?.parse::<U256>().ok())
        {
            self.charged += c.min(most);
        }
    }
}

/// The longest withdraw delay this client accepts in a node's offer (1 day; the scheme allows
/// up to 30): how long a payer's unspent deposit can stay locked after asking for it back.
pub const MAX_PAYER_WITHDRAW_DELAY: u64 = 86_400;

/// A `batch-settlement` channel as the node's corrective 402 describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrective {
    /// What the node counts as charged on the channel.
    pub charged: U256,
    /// What the node says the channel holds.
    pub balance: U256,
    /// The ceiling of the payer's own latest voucher the node holds, when its signature checks.
    pub signed: Option<U256>,
}

fn envelope(
    required: &PaymentRequired,
    offer: &PaymentRequirements,
    payload: serde_json::Result<serde_json::Value>,
) -> String {
    encode_header(&PaymentPayload {
        x402_version: 2,
        resource: Some(required.resource.clone()),
        accepted: offer.clone(),
        payload: payload.expect("payloads serialize"),
        extensions: None,
    })
}

/// The payer's own account of one prepaid channel: how much its requests that succeeded cost
/// in total, and the highest ceiling it ever signed. The next voucher is what is owed plus the
/// price; what is owed is the node's count only when that is no more than the highest ceiling
/// signed (a call counted whose charge this machine never learned: a cut connection, a crash),
/// since the node can claim that much with a voucher it holds anyway; otherwise this account's
/// figure. So a node that misreports what it accepted cannot obtain a larger voucher (at worst
/// it refuses service). One small JSON file per channel, replaced atomically.
#[derive(Clone, Debug)]
pub struct PrepaidAccount {
    path: std::path::PathBuf,
    /// Everything paid on the channel by requests that succeeded, as this machine knows it.
    pub paid: U256,
    /// The highest ceiling this machine signed a voucher for on the channel.
    pub signed: U256,
    /// What the channel holds as last learned (a `batch-settlement` channel, whose deposits
    /// ride on payments: the node's `channelState`, or this machine's own deposit).
    pub deposited: U256,
}

impl PrepaidAccount {
    /// The account file of the channel (`escrow` on `chain_id`, `channel` id) under `dir`.
    pub fn path(
        dir: &std::path::Path,
        chain_id: u64,
        escrow: alloy_primitives::Address,
        channel: B256,
    ) -> std::path::PathBuf {
        dir.join(format!("{chain_id}-{escrow}-{channel}.json"))
    }

    /// Reads the account at `path`; `None` when this machine keeps none for the channel.
    pub fn load(path: &std::path::Path) -> Result<Option<Self>, X402Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(X402Error::Store(format!("{}: {e}", path.display()))),
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            X402Error::Store(format!("{} is not an account file: {e}", path.display()))
        })?;
        let amount = |k: &str| v[k].as_str().and_then(|s| U256::from_str_radix(s, 10).ok());
        let paid = amount("paid")
            .ok_or_else(|| X402Error::Store(format!("{} has no `paid` amount", path.display())))?;
        Ok(Some(Self {
            path: path.to_owned(),
            paid,
            signed: amount("signed").unwrap_or(paid).max(paid),
            deposited: amount("deposited").unwrap_or_default(),
        }))
    }

    /// A new account at `path` starting from `paid`, written at once.
    pub fn create(path: &std::path::Path, paid: U256) -> Result<Self, X402Error> {
        let a = Self {
            path: path.to_owned(),
            paid,
            signed: paid,
            deposited: U256::ZERO,
        };
        a.save()?;
        Ok(a)
    }

    /// What is owed on the channel when the node counts `node_count`: its count if it is no
    /// more than the highest ceiling signed, else this account's figure (never more than the
    /// node's count: a node that lost counts to a power cut only ever costs the payer less).
    pub fn owed(&self, node_count: U256) -> U256 {
        if node_count <= self.signed {
            node_count
        } else {
            self.paid.min(node_count)
        }
    }

    /// Records a voucher about to be signed for `ceiling`, before it leaves this machine.
    pub fn signing(&mut self, ceiling: U256) -> Result<(), X402Error> {
        if ceiling > self.signed {
            self.signed = ceiling;
            self.save()?;
        }
        Ok(())
    }

    /// Records that everything owed after a request that succeeded is `cumulative`.
    pub fn record(&mut self, cumulative: U256) -> Result<(), X402Error> {
        if cumulative > self.paid {
            self.paid = cumulative;
            self.signed = self.signed.max(cumulative);
            self.save()?;
        }
        Ok(())
    }

    /// Records that the voucher for `ceiling`, signed when the highest ceiling was `before`,
    /// was refused: it paid for nothing, so it proves nothing about what is owed.
    pub fn refused(&mut self, ceiling: U256, before: U256) -> Result<(), X402Error> {
        if self.signed == ceiling && before < ceiling {
            self.signed = before.max(self.paid);
            self.save()?;
        }
        Ok(())
    }

    /// Records what the channel holds, as last learned.
    pub fn set_deposited(&mut self, deposited: U256) -> Result<(), X402Error> {
        if deposited != self.deposited {
            self.deposited = deposited;
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), X402Error> {
        let io = |e: std::io::Error| X402Error::Store(format!("{}: {e}", self.path.display()));
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        // Its own temporary file: two processes saving at once each rename a whole file.
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::json!({
                "paid": self.paid.to_string(),
                "signed": self.signed.to_string(),
                "deposited": self.deposited.to_string(),
            })
            .to_string(),
        )
        .map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod account_tests {
    use super::*;

    /// The node's count is taken only within the ceilings this machine signed: a call it was
    /// charged for but never heard back from, yes; a count inflated past every signed ceiling,
    /// no (this account's figure then, whatever the node says).
    #[test]
    fn the_nodes_count_is_owed_only_within_what_was_signed() {
        let dir = tempfile::tempdir().unwrap();
        let path = PrepaidAccount::path(dir.path(), 1, alloy_primitives::Address::ZERO, B256::ZERO);
        let mut a = PrepaidAccount::create(&path, U256::from(10u64)).unwrap();
        a.signing(U256::from(40u64)).unwrap();
        let a = PrepaidAccount::load(&path).unwrap().unwrap();
        assert_eq!(a.signed, U256::from(40u64));
        assert_eq!(a.owed(U256::from(25u64)), U256::from(25u64));
        assert_eq!(a.owed(U256::from(4u64)), U256::from(4u64));
        assert_eq!(a.owed(U256::from(41u64)), U256::from(10u64));
    }

    /// A refused voucher's ceiling is forgotten (it paid for nothing), unless something signed
    /// since went higher.
    #[test]
    fn a_refused_voucher_gives_its_ceiling_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = PrepaidAccount::path(dir.path(), 1, alloy_primitives::Address::ZERO, B256::ZERO);
        let mut a = PrepaidAccount::create(&path, U256::from(10u64)).unwrap();
        a.signing(U256::from(20u64)).unwrap();
        a.refused(U256::from(20u64), U256::from(10u64)).unwrap();
        assert_eq!(
            PrepaidAccount::load(&path).unwrap().unwrap().signed,
            U256::from(10u64)
        );
        a.signing(U256::from(30u64)).unwrap();
        a.refused(U256::from(20u64), U256::from(10u64)).unwrap();
        assert_eq!(a.signed, U256::from(30u64));
    }

    #[test]
    fn the_account_only_grows_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = PrepaidAccount::path(dir.path(), 1, alloy_primitives::Address::ZERO, B256::ZERO);
        assert!(PrepaidAccount::load(&path).unwrap().is_none());
        let mut a = PrepaidAccount::create(&path, U256::from(5u64)).unwrap();
        a.record(U256::from(9u64)).unwrap();
        a.record(U256::from(7u64)).unwrap();
        assert_eq!(
            PrepaidAccount::load(&path).unwrap().unwrap().paid,
            U256::from(9u64)
        );
    }
}
