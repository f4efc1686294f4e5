//! Scheme `upto` on EVM (the official x402 package's): the payer signs a Permit2
//! `PermitWitnessTransferFrom` of at most a maximum, with the x402 `upto` proxy as spender and a
//! witness naming the recipient, the one facilitator that may settle it and when it becomes valid;
//! the resource server charges what the call cost, any amount up to the maximum, settled once
//! by that facilitator (0: no transaction). Checked here without the chain, in microseconds.

use alloy_primitives::{Address, B256, Bytes, Signature, U256, keccak256};
use alloy_sol_types::SolValue;
use cairn_ledger::{TokenPermit, UptoAuthorization, UptoContracts};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::{PaymentRequirements, decimal};
use crate::{Reason, X402Error};

/// The scheme's name.
pub const SCHEME: &str = "upto";

/// Seconds a permit must still be valid for when it is checked: the call runs, then its
/// settlement must land before the deadline, or the payer is served for free (the official
/// facilitator asks for 6 s, for a settlement right away; its clients sign `maxTimeoutSeconds`).
pub const DEADLINE_MARGIN_SECS: u64 = 120;

/// How far past `now + maxTimeoutSeconds` a deadline may lie (clients' clocks differ).
pub const DEADLINE_SLACK_SECS: u64 = 600;

/// Permit2's token permission as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permitted {
    /// The token.
    pub token: Address,
    /// The maximum.
    #[serde(with = "decimal")]
    pub amount: U256,
}

/// The witness as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WitnessWire {
    /// Who is paid.
    pub to: Address,
    /// Who may settle.
    pub facilitator: Address,
    /// Not valid before (Unix seconds).
    #[serde(with = "decimal")]
    pub valid_after: U256,
}

/// `permit2Authorization` as the official clients send it (decimal strings, 0x-hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Permit2Authorization {
    /// The payer.
    pub from: Address,
    /// The token and the maximum.
    pub permitted: Permitted,
    /// The spender: the `upto` proxy.
    pub spender: Address,
    /// The Permit2 nonce.
    #[serde(with = "decimal")]
    pub nonce: U256,
    /// Not valid after (Unix seconds).
    #[serde(with = "decimal")]
    pub deadline: U256,
    /// The witness.
    pub witness: WitnessWire,
}

/// The `upto` payload: `{permit2Authorization, signature}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UptoPayload {
    /// What was signed.
    pub permit2_authorization: Permit2Authorization,
    /// 65-byte ECDSA signature, 0x-hex.
    pub signature: Bytes,
}

/// An `upto` payment whose terms and signature are checked.
#[derive(Clone, Debug)]
pub struct CheckedUpto {
    /// What the payer signed.
    pub authorization: UptoAuthorization,
    /// The signature as sent (what the proxy is handed).
    pub signature: Bytes,
    /// The payer's EIP-2612 approval of Permit2 for the maximum (the `eip2612GasSponsoring`
    /// extension), with the token nonce it was signed at: settled in the same transaction, so
    /// a payer who never approved Permit2 pays without sending one.
    pub permit2612: Option<(TokenPermit, U256)>,
}

/// The extension key the official clients sign an EIP-2612 approval of Permit2 under.
pub const EIP2612_GAS_SPONSORING: &str = "eip2612GasSponsoring";

/// The 402's declaration that an EIP-2612 approval of Permit2 may ride along with an `upto`
/// permit (the settlement then approves and transfers in one transaction).
pub fn eip2612_extension_declaration() -> Value {
    let address = serde_json::json!({"type": "string", "pattern": "^0x[a-fA-F0-9]{40}$"});
    let number = serde_json::json!({"type": "string", "pattern": "^[0-9]+$"});
    serde_json::json!({
        EIP2612_GAS_SPONSORING: {
            "info": {
                "description": "An EIP-2612 permit approving the canonical Permit2 for the upto maximum is accepted and submitted with the settlement.",
                "version": "1",
            },
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "from": address, "asset": address, "spender": address,
                    "amount": number, "nonce": number, "deadline": number,
                    "signature": {"type": "string", "pattern": "^0x[a-fA-F0-9]+$"},
                    "version": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)*$"},
                },
                "required": ["from", "asset", "spender", "amount", "nonce", "deadline", "signature", "version"],
            },
        }
    })
}

/// The extension's `info` as the official clients send it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Eip2612Info {
    from: Address,
    asset: Address,
    spender: Address,
    #[serde(with = "decimal")]
    amount: U256,
    #[serde(with = "decimal")]
    nonce: U256,
    #[serde(with = "decimal")]
    deadline: U256,
    signature: Bytes,
}

/// What an EIP-2612 approval of Permit2 riding with a payment must approve.
pub(crate) struct ApprovalTerms {
    /// The payer.
    pub owner: Address,
    /// The token.
    pub token: Address,
    /// Permit2.
    pub permit2: Address,
    /// The value it must approve (the permit's maximum).
    pub amount: U256,
    /// It must not expire before this (the permit's deadline).
    pub deadline: U256,
}

/// The payer's EIP-2612 approval in `extensions`, checked against the terms `a` (same payer
/// and token, Permit2 as spender, the amount as value, valid long enough, signed by the payer
/// under the token's `domain`). `Ok(None)` when absent.
pub(crate) fn eip2612_of(
    extensions: Option<&Value>,
    a: &ApprovalTerms,
    domain: &alloy_sol_types::Eip712Domain,
    now: u64,
) -> Result<Option<(TokenPermit, U256)>, X402Error> {
    use alloy_sol_types::SolStruct;
    let Some(info) = extensions.and_then(|e| e.get(EIP2612_GAS_SPONSORING)?.get("info")) else {
        return Ok(None);
    };
    // A declaration echoed back without a signature is no approval.
    if info.get("signature").is_none() {
        return Ok(None);
    }
    let bad = |code: &'static str, m: String| Err(X402Error::Invalid(Reason::new(code, m)));
    let info: Eip2612Info = match serde_json::from_value(info.clone()) {
        Ok(i) => i,
        Err(e) => {
            return bad(
                "invalid_eip2612_extension_format",
                format!("the eip2612GasSponsoring info: {e}"),
            );
        }
    };
    if info.from != a.owner {
        return bad(
            "eip2612_from_mismatch",
            format!(
                "the approval is from {}, the permit's payer is {}",
                info.from, a.owner
            ),
        );
    }
    if info.asset != a.token {
        return bad(
            "eip2612_asset_mismatch",
            format!(
                "the approval is for token {}, the permit's is {}",
                info.asset, a.token
            ),
        );
    }
    if info.spender != a.permit2 {
        return bad(
            "eip2612_spender_not_permit2",
            format!(
                "the approval names spender {}, not Permit2 {}",
                info.spender, a.permit2
            ),
        );
    }
    if info.amount != a.amount {
        return bad(
            "permit2_2612_amount_mismatch",
            format!(
                "the approval is for {}, the permit's maximum is {}",
                info.amount, a.amount
            ),
        );
    }
    // Valid as long as the permit it approves for (the official client signs them alike): a
    // settlement within the permit's time must not meet an expired approval.
    if info.deadline < a.deadline || info.deadline < U256::from(now + DEADLINE_MARGIN_SECS) {
        return bad(
            "eip2612_deadline_expired",
            format!(
                "the approval expires at {}, before the permit ({}): sign it for as long",
                info.deadline, a.deadline
            ),
        );
    }
    if info.signature.len() != 65 || !matches!(info.signature[64], 27 | 28) {
        return bad(
            "invalid_eip2612_extension_format",
            "the approval's signature is not a 65-byte ECDSA signature with v 27 or 28".into(),
        );
    }
    let signature = Signature::try_from(info.signature.as_ref()).map_err(|e| {
        X402Error::Invalid(Reason::new(
            "invalid_eip2612_extension_format",
            format!("the approval's signature: {e}"),
        ))
    })?;
    let message = cairn_ledger::chain::Permit {
        owner: info.from,
        spender: info.spender,
        value: info.amount,
        nonce: info.nonce,
        deadline: info.deadline,
    };
    let signer = cairn_core::sig::recover_prehash(&signature, &message.eip712_signing_hash(domain));
    if signer != Ok(a.owner) {
        return bad(
            "eip2612_signature_invalid",
            "the approval is not signed by the payer (or is in high-s form)".into(),
        );
    }
    Ok(Some((
        TokenPermit {
            value: info.amount,
            deadline: info.deadline,
            signature,
        },
        info.nonce,
    )))
}

impl CheckedUpto {
    /// The payment reference bound into receipts: keccak256(abi.encode(permit2, payer, nonce)),
    /// one Permit2 authorization chain-wide.
    pub fn payment_ref(&self, permit2: Address) -> B256 {
        payment_ref(permit2, self.authorization.owner, self.authorization.nonce)
    }
}

/// keccak256(abi.encode(permit2, owner, nonce)).
pub fn payment_ref(permit2: Address, owner: Address, nonce: U256) -> B256 {
    keccak256((permit2, owner, nonce).abi_encode())
}

/// Parses an `upto` payload.
pub fn parse(payload: &Value) -> Result<UptoPayload, Reason> {
    serde_json::from_value(payload.clone()).map_err(|e| {
        Reason::new(
            "invalid_permit2_payload_format",
            format!("the upto payload is not {{permit2Authorization, signature}}: {e}"),
        )
    })
}

/// What [`verify_local`] checks a payment against besides its offer.
pub struct Context<'a> {
    /// Permit2 and the proxy.
    pub upto: &'a UptoContracts,
    /// Who settles here.
    pub facilitator: Address,
    /// The chain.
    pub chain_id: u64,
    /// The token's EIP-712 domain (as the token reports it), for an EIP-2612 approval.
    pub token_domain: &'a alloy_sol_types::Eip712Domain,
    /// Unix seconds.
    pub now: u64,
}

/// Checks `payload` (and the EIP-2612 approval in `extensions`, if any) against the offer
/// `req`: spender, recipient, facilitator, time window, maximum, token, signature. No chain
/// access.
pub fn verify_local(
    payload: &UptoPayload,
    extensions: Option<&Value>,
    req: &PaymentRequirements,
    cx: &Context<'_>,
) -> Result<CheckedUpto, X402Error> {
    let (upto, facilitator, chain_id, now) = (cx.upto, cx.facilitator, cx.chain_id, cx.now);
    let a = &payload.permit2_authorization;
    let fail = |code: &'static str, msg: String| Err(X402Error::Invalid(Reason::new(code, msg)));
    if a.spender != upto.proxy {
        return fail(
            "invalid_permit2_spender",
            format!(
                "the permit names spender {}, not the x402 upto proxy {}",
                a.spender, upto.proxy
            ),
        );
    }
    if a.witness.to != req.pay_to {
        return fail(
            "invalid_permit2_recipient_mismatch",
            format!("the permit pays {}, not {}", a.witness.to, req.pay_to),
        );
    }
    if a.witness.facilitator != facilitator {
        return fail(
            "upto_facilitator_mismatch",
            format!(
                "the permit lets {} settle it; this server settles with {facilitator} (the offer's facilitatorAddress)",
                a.witness.facilitator
            ),
        );
    }
    if a.deadline < U256::from(now + DEADLINE_MARGIN_SECS) {
        return fail(
            "permit2_deadline_expired",
            format!(
                "the permit expired (or expires within {DEADLINE_MARGIN_SECS} s) at {}; sign a new one",
                a.deadline
            ),
        );
    }
    // A permit valid for long keeps a payment the payer may revoke open until then.
    let latest = now
        .saturating_add(req.max_timeout_seconds.max(60))
        .saturating_add(DEADLINE_SLACK_SECS);
    if a.deadline > U256::from(latest) {
        return fail(
            "permit2_deadline_expired",
            format!(
                "the permit is valid until {}, past now + maxTimeoutSeconds + {DEADLINE_SLACK_SECS} s ({latest}); sign one that expires sooner",
                a.deadline
            ),
        );
    }
    if a.witness.valid_after > U256::from(now) {
        return fail(
            "permit2_not_yet_valid",
            format!("the permit is not valid before {}", a.witness.valid_after),
        );
    }
    if a.permitted.amount != req.amount {
        return fail(
            "permit2_amount_mismatch",
            format!(
                "the permit's maximum is {}, the offer's is {}",
                a.permitted.amount, req.amount
            ),
        );
    }
    if a.permitted.token != req.asset {
        return fail(
            "permit2_token_mismatch",
            format!(
                "the permit is for token {}, the offer's is {}",
                a.permitted.token, req.asset
            ),
        );
    }
    if payload.signature.len() != 65 {
        return fail(
            "invalid_permit2_signature",
            format!(
                "the signature is {} bytes; a 65-byte ECDSA signature is needed (smart-wallet signatures are not supported)",
                payload.signature.len()
            ),
        );
    }
    // The contract (OpenZeppelin's ECDSA) takes v = 27 or 28 only; any other form that parses
    // here would pass this check and then fail to settle after the call ran.
    if !matches!(payload.signature[64], 27 | 28) {
        return fail(
            "invalid_permit2_signature",
            format!(
                "the signature's v is {}; send it as 27 or 28",
                payload.signature[64]
            ),
        );
    }
    let authorization = UptoAuthorization {
        owner: a.from,
        token: a.permitted.token,
        max: a.permitted.amount,
        nonce: a.nonce,
        deadline: a.deadline,
        to: a.witness.to,
        facilitator: a.witness.facilitator,
        valid_after: a.witness.valid_after,
    };
    // Settled as sent: only a v Permit2's ecrecover reads (27 or 28).
    let signature = cairn_core::sig::parse_rsv(&payload.signature).map_err(|e| {
        X402Error::Invalid(Reason::new(
            "invalid_permit2_signature",
            format!("the signature: {e}"),
        ))
    })?;
    let hash = authorization.signing_hash(chain_id, upto);
    let signer = cairn_core::sig::recover_prehash(&signature, &hash).map_err(|e| {
        X402Error::Invalid(Reason::new(
            "invalid_permit2_signature",
            format!("no signer recovers from the signature: {e}"),
        ))
    })?;
    if signer != a.from {
        return fail(
            "invalid_permit2_signature",
            format!(
                "the permit is signed by {signer}, not by its payer {}",
                a.from
            ),
        );
    }
    let terms = ApprovalTerms {
        owner: authorization.owner,
        token: authorization.token,
        permit2: upto.permit2,
        amount: authorization.max,
        deadline: authorization.deadline,
    };
    let permit2612 = eip2612_of(extensions, &terms, cx.token_domain, now)?;
    Ok(CheckedUpto {
        authorization,
        signature: payload.signature.clone(),
        permit2612,
    })
}
