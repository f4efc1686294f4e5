//! Scheme `exact` on EVM: an EIP-3009 `TransferWithAuthorization` signed by the payer, checked
//! here without the chain (decode, offer match, recipient, value, time window, signature).

use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use alloy_sol_types::{Eip712Domain, SolStruct, SolValue};
use cairn_ledger::chain::TransferWithAuthorization;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::{PaymentRequirements, decimal};
use crate::{Reason, X402Error};

/// Seconds an authorization must still be valid for when it is checked, so that settlement has
/// time to land.
pub const SETTLE_MARGIN_SECS: u64 = 6;

/// How far past `now + maxTimeoutSeconds` an authorization may stay valid (clients' clocks
/// differ; the official clients sign `now + maxTimeoutSeconds`).
pub const VALID_BEFORE_SLACK_SECS: u64 = 600;

/// The authorization as it travels (decimal strings, 0x-hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The payer.
    pub from: Address,
    /// The payee.
    pub to: Address,
    /// Amount.
    #[serde(with = "decimal")]
    pub value: U256,
    /// Not valid before (Unix seconds).
    #[serde(with = "decimal")]
    pub valid_after: U256,
    /// Not valid from (Unix seconds).
    #[serde(with = "decimal")]
    pub valid_before: U256,
    /// The payer's random nonce.
    pub nonce: B256,
}

/// The `exact` payload: `{signature, authorization}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactPayload {
    /// 65-byte ECDSA signature, 0x-hex.
    pub signature: alloy_primitives::Bytes,
    /// What was signed.
    pub authorization: Authorization,
}

/// An `exact` payment whose signature and terms are checked.
#[derive(Clone, Debug)]
pub struct CheckedExact {
    /// What was signed.
    pub authorization: Authorization,
    /// The signature, parsed.
    pub signature: Signature,
    /// A block at or before any use of the authorization that [`check_chain`] did not see (the
    /// head as known before that check): where a later search for its transfer starts.
    ///
    /// [`check_chain`]: crate::Facilitator::check_chain
    pub from_block: u64,
}

impl CheckedExact {
    /// The payment reference bound into receipts: keccak256(abi.encode(token, from, nonce)).
    pub fn payment_ref(&self, token: Address) -> B256 {
        payment_ref(token, self.authorization.from, self.authorization.nonce)
    }

    /// The token call that moves this payment (anyone may send it; the payer pays no gas).
    pub fn transfer_call(
        &self,
    ) -> cairn_ledger::contracts::CairnToken::transferWithAuthorization_1Call {
        let (a, sig) = (&self.authorization, &self.signature);
        cairn_ledger::contracts::CairnToken::transferWithAuthorization_1Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: a.valid_after,
            validBefore: a.valid_before,
            nonce: a.nonce,
            v: 27 + sig.v() as u8,
            r: sig.r().into(),
            s: sig.s().into(),
        }
    }
}

/// keccak256(abi.encode(token, payer, nonce)): one EIP-3009 authorization, chain-wide.
pub fn payment_ref(token: Address, payer: Address, nonce: B256) -> B256 {
    keccak256((token, payer, nonce).abi_encode())
}

impl Authorization {
    /// The typed message.
    pub fn message(&self) -> TransferWithAuthorization {
        TransferWithAuthorization {
            from: self.from,
            to: self.to,
            value: self.value,
            validAfter: self.valid_after,
            validBefore: self.valid_before,
            nonce: self.nonce,
        }
    }
}

/// Parses an `exact` payload.
pub fn parse(payload: &Value) -> Result<ExactPayload, Reason> {
    serde_json::from_value(payload.clone()).map_err(|e| {
        Reason::new(
            "invalid_exact_evm_payload",
            format!("the exact payload is not {{signature, authorization}}: {e}"),
        )
    })
}

/// Checks `payload` against the offer `req` at Unix time `now`. `domain` is the token's real
/// EIP-712 domain (the facilitator's knowledge, not the client's claim). No chain access.
pub fn verify_local(
    payload: &ExactPayload,
    req: &PaymentRequirements,
    domain: &Eip712Domain,
    now: u64,
) -> Result<CheckedExact, X402Error> {
    let a = &payload.authorization;
    let fail = |code: &'static str, msg: String| Err(X402Error::Invalid(Reason::new(code, msg)));
    if a.to != req.pay_to {
        return fail(
            "invalid_exact_evm_payload_recipient_mismatch",
            format!("the authorization pays {}, not {}", a.to, req.pay_to),
        );
    }
    if a.value != req.amount {
        return fail(
            "invalid_exact_evm_payload_authorization_value_mismatch",
            format!(
                "the authorization is for {}, the price is {}",
                a.value, req.amount
            ),
        );
    }
    if a.valid_after > U256::from(now) {
        return fail(
            "invalid_exact_evm_payload_authorization_valid_after",
            format!("the authorization is not valid before {}", a.valid_after),
        );
    }
    if a.valid_before < U256::from(now + SETTLE_MARGIN_SECS) {
        return fail(
            "invalid_exact_evm_payload_authorization_valid_before",
            format!(
                "the authorization expired (or expires within {SETTLE_MARGIN_SECS} s) at {}; sign a new one",
                a.valid_before
            ),
        );
    }
    // An authorization valid for long would keep a payment the payer cancelled (or used
    // elsewhere) open, and searched for, until then.
    let latest = now
        .saturating_add(req.max_timeout_seconds.max(60))
        .saturating_add(VALID_BEFORE_SLACK_SECS);
    if a.valid_before > U256::from(latest) {
        return fail(
            "invalid_exact_evm_payload_authorization_valid_before",
            format!(
                "the authorization is valid until {}, past now + maxTimeoutSeconds + {VALID_BEFORE_SLACK_SECS} s ({latest}); sign one that expires sooner",
                a.valid_before
            ),
        );
    }
    if payload.signature.len() != 65 {
        return fail(
            "invalid_exact_evm_payload_signature",
            format!(
                "the signature is {} bytes; a 65-byte ECDSA signature is needed (smart-wallet signatures are not supported)",
                payload.signature.len()
            ),
        );
    }
    let signature = Signature::try_from(payload.signature.as_ref()).map_err(|e| {
        X402Error::Invalid(Reason::new(
            "invalid_exact_evm_payload_signature",
            format!("the signature does not parse: {e}"),
        ))
    })?;
    let hash = a.message().eip712_signing_hash(domain);
    let signer = cairn_core::sig::recover_prehash(&signature, &hash)
        .ok()
        .ok_or_else(|| {
            X402Error::Invalid(Reason::new(
                "invalid_exact_evm_payload_signature",
                "no signer recovers from the signature (malformed or high-s)",
            ))
        })?;
    if signer != a.from {
        return fail(
            "invalid_exact_evm_payload_signature",
            format!(
                "the authorization is signed by {signer}, not by its payer {}",
                a.from
            ),
        );
    }
    Ok(CheckedExact {
        authorization: a.clone(),
        signature,
        from_block: 0,
    })
}

/// The token's EIP-712 domain as an offer's `extra` describes it.
pub fn domain_from_offer(req: &PaymentRequirements, chain_id: u64) -> Eip712Domain {
    let text = |k: &str| {
        req.extra
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Eip712Domain::new(
        Some(text("name").into()),
        Some(text("version").into()),
        Some(U256::from(chain_id)),
        Some(req.asset),
        None,
    )
}
