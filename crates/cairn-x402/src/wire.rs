//! x402 wire types, version 2 with version 1 beside it, and the base64 header codec.
//!
//! Amounts travel as decimal strings; addresses as 0x-hex (compared as bytes, never as text).

use alloy_primitives::{Address, U256};
use data_encoding::{BASE64, BASE64_NOPAD};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::X402Error;

/// v2: what an unpaid request is told to pay (base64 JSON).
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// v2: the client's payment (base64 JSON).
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// v2: the settlement result (base64 JSON).
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// v1: the client's payment.
pub const X_PAYMENT: &str = "x-payment";
/// v1: the settlement result.
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";

/// Largest payment header accepted (base64 text). An EIP-3009 payload is under 2 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Token amounts as decimal strings.
pub mod decimal {
    use alloy_primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serializes as a decimal string.
    pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Accepts a decimal string or a JSON integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let text = match &v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) if n.is_u64() => n.to_string(),
            _ => return Err(D::Error::custom("an amount must be a decimal string")),
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(D::Error::custom(format!(
                "amount {text:?} is not a decimal integer"
            )));
        }
        U256::from_str_radix(&text, 10).map_err(|_| D::Error::custom("amount out of range"))
    }
}

/// What a resource accepts as payment (x402 v2 `PaymentRequirements`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// `exact` or `prepaid`.
    pub scheme: String,
    /// CAIP-2 network, `eip155:<chainId>`.
    pub network: String,
    /// Price in the asset's smallest unit.
    #[serde(with = "decimal")]
    pub amount: U256,
    /// The token contract.
    pub asset: Address,
    /// Who is paid.
    pub pay_to: Address,
    /// How long an authorization must stay valid.
    pub max_timeout_seconds: u64,
    /// Scheme-specific data (`exact`: the token's EIP-712 `name` and `version`).
    #[serde(default)]
    pub extra: Value,
}

/// The resource a payment is for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    /// Its URL.
    pub url: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What it returns.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mime_type: String,
}

/// The v2 402 answer (`PAYMENT-REQUIRED` header).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u8,
    /// Why the request was refused, when a payment was offered and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is being paid for.
    pub resource: ResourceInfo,
    /// The offers.
    pub accepts: Vec<PaymentRequirements>,
    /// Extensions the server takes (`eip2612GasSponsoring` beside an `upto` offer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// v1 `PaymentRequirements` (named networks, `maxAmountRequired`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV1 {
    /// `exact`.
    pub scheme: String,
    /// A v1 network name (`base-sepolia`, `base`).
    pub network: String,
    /// Price in the asset's smallest unit.
    #[serde(with = "decimal")]
    pub max_amount_required: U256,
    /// The resource URL.
    pub resource: String,
    /// What it is.
    pub description: String,
    /// What it returns.
    pub mime_type: String,
    /// Who is paid.
    pub pay_to: Address,
    /// How long an authorization must stay valid.
    pub max_timeout_seconds: u64,
    /// The token contract.
    pub asset: Address,
    /// The token's EIP-712 `name` and `version`.
    #[serde(default)]
    pub extra: Value,
}

/// The v1 402 body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1 {
    /// Always 1.
    pub x402_version: u8,
    /// Why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The offers.
    pub accepts: Vec<PaymentRequirementsV1>,
}

/// A v2 payment (`PAYMENT-SIGNATURE`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// 2.
    pub x402_version: u8,
    /// The resource, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The offer the client chose, echoed.
    pub accepted: PaymentRequirements,
    /// Scheme-specific signed payload.
    pub payload: Value,
    /// Extensions, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
}

/// A v1 payment (`X-PAYMENT`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV1 {
    /// 1.
    pub x402_version: u8,
    /// The scheme.
    pub scheme: String,
    /// The v1 network name.
    pub network: String,
    /// Scheme-specific signed payload.
    pub payload: Value,
}

/// The settlement result (`PAYMENT-RESPONSE`, and the facilitator's `/settle` answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the payment is settled.
    pub success: bool,
    /// Why not, in the reference implementations' style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// The transaction (empty when none was sent; for `prepaid`, the payment reference).
    #[serde(default)]
    pub transaction: String,
    /// The network (CAIP-2 for v2, the name for v1).
    pub network: String,
    /// The payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<Address>,
    /// The amount settled, in the asset's smallest unit (`upto`: what the call cost, up to the
    /// signed maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Scheme-specific results (`batch-settlement`: the amount charged and the channel's state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// The facilitator's `/verify` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payment would settle.
    pub is_valid: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// The payer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<Address>,
    /// Scheme-specific results (`batch-settlement`: the channel's state on chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// CAIP-2 network of an EVM chain.
pub fn caip2(chain_id: u64) -> String {
    format!("eip155:{chain_id}")
}

/// The chain id of a CAIP-2 EVM network or a v1 network name.
pub fn chain_id_of(network: &str) -> Option<u64> {
    if let Some(id) = network.strip_prefix("eip155:") {
        return id.parse().ok();
    }
    V1_NETWORKS
        .iter()
        .find(|(name, _)| *name == network)
        .map(|(_, id)| *id)
}

/// The v1 name of a chain, when v1 clients know it.
pub fn v1_network(chain_id: u64) -> Option<&'static str> {
    V1_NETWORKS
        .iter()
        .find(|(_, id)| *id == chain_id)
        .map(|(name, _)| *name)
}

/// v1 network names (only these are meaningful to v1 clients).
const V1_NETWORKS: &[(&str, u64)] = &[
    ("base-sepolia", 84532),
    ("base", 8453),
    ("avalanche-fuji", 43113),
    ("avalanche", 43114),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("iotex", 4689),
];

/// Encodes a header value: standard base64 (padded) of the JSON.
pub fn encode_header<T: Serialize>(v: &T) -> String {
    BASE64.encode(&serde_json::to_vec(v).expect("wire types serialize"))
}

/// Decodes a header value: bounded, base64 (padded or not), then JSON.
pub fn decode_header<T: DeserializeOwned>(name: &str, text: &[u8]) -> Result<T, X402Error> {
    if text.len() > MAX_HEADER_BYTES {
        return Err(X402Error::Malformed(format!(
            "the {name} header is {} bytes; at most {MAX_HEADER_BYTES} are accepted",
            text.len()
        )));
    }
    let text = text.trim_ascii();
    let raw = BASE64
        .decode(text)
        .or_else(|_| BASE64_NOPAD.decode(text))
        .map_err(|e| X402Error::Malformed(format!("the {name} header is not base64: {e}")))?;
    serde_json::from_slice(&raw)
        .map_err(|e| X402Error::Malformed(format!("the {name} header's JSON is not valid: {e}")))
}

impl PaymentRequirements {
    /// The v1 form, when the network has a v1 name.
    pub fn to_v1(&self, resource: &ResourceInfo) -> Option<PaymentRequirementsV1> {
        let network = v1_network(chain_id_of(&self.network)?)?;
        Some(PaymentRequirementsV1 {
            scheme: self.scheme.clone(),
            network: network.to_string(),
            max_amount_required: self.amount,
            resource: resource.url.clone(),
            description: resource.description.clone(),
            mime_type: resource.mime_type.clone(),
            pay_to: self.pay_to,
            max_timeout_seconds: self.max_timeout_seconds,
            asset: self.asset,
            extra: self.extra.clone(),
        })
    }

    /// Whether `other` (an echoed offer) is this offer: same scheme, network, amount, asset
    /// and payee. `extra` and the timeout are not compared (clients may normalise them).
    pub fn same_offer(&self, other: &PaymentRequirements) -> bool {
        self.amount == other.amount && self.same_terms(other)
    }

    /// [`Self::same_offer`] at any price: the same scheme, network, asset and payee.
    pub fn same_terms(&self, other: &PaymentRequirements) -> bool {
        self.scheme == other.scheme
            && self.network == other.network
            && self.asset == other.asset
            && self.pay_to == other.pay_to
    }
}
