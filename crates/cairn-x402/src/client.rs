//! The paying side: read a 402, pick an offer, sign, and build the retry header.

use alloy_primitives::{B256, Bytes, U256};
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

/// Signs an `exact` payment for `offer` and returns the `PAYMENT-SIGNATURE` value.
pub fn pay_exact(
    signer: &PrivateKeySigner,
    required: &PaymentRequired,
    offer: &PaymentRequirements,
) -> Result<String, X402Error> {
    let chain_id = chain_id_of(&offer.network).ok_or_else(|| {
        X402Error::Malformed(format!("network {:?} is not an EVM chain", offer.network))
    })?;
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
