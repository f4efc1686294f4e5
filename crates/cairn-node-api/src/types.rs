//! The bodies of the node's routes, as the server writes them and the client reads them.

use alloy_primitives::{Address, B256, U256};
use cairn_core::api::wire::{checksummed, decimal};
use cairn_core::{BlobId, ExecutionProfile, Reproducibility};
use cairn_receipt::ReceiptJson;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kserve::ResponseOutput;

/// `GET /v2`: KServe v2 server metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    /// `cairn`.
    pub name: String,
    /// The node's version.
    pub version: String,
    /// KServe extensions served (`binary_tensor_data`).
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Live {
    /// Always `true` when answered.
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always `true` when answered.
    pub ready: bool,
}

/// One input or output of a model, KServe v2 style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TensorSpec {
    /// Graph name.
    pub name: String,
    /// KServe datatype (`FP32`, …), or the ONNX type name when it has none.
    pub datatype: String,
    /// Dimensions; `-1` where the model leaves one free.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{model}`: a model's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    /// The reference asked for.
    pub name: String,
    /// The release version, when asked by name.
    pub versions: Vec<String>,
    /// `onnx`.
    pub platform: String,
    /// The model file's CID.
    pub cid: BlobId,
    /// Inputs.
    pub inputs: Vec<TensorSpec>,
    /// Outputs.
    pub outputs: Vec<TensorSpec>,
}

/// `GET /v2/models/{model}/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelReady {
    /// The reference asked for.
    pub name: String,
    /// `true` (a model that is not ready is a 4xx answer).
    pub ready: bool,
}

/// `parameters` of an inference answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InferParameters {
    /// The signed receipt (EIP-712 typed data, signature, signer), as the node serialized it:
    /// [`ReceiptJson::verify`] makes it a `SignedReceipt`.
    #[schema(value_type = Object)]
    pub receipt: ReceiptJson,
    /// The capability to read this call's payloads (also in the `cairn-payload-token` header).
    #[schema(value_type = String)]
    pub payload_token: B256,
}

/// `POST /v2/models/{model}/infer`: the JSON part of an inference answer (binary outputs follow
/// it when `Inference-Header-Content-Length` is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InferResponse {
    /// The CID of the model that ran.
    pub model_name: BlobId,
    /// The release version when called by name, else empty.
    pub model_version: String,
    /// Outputs, as asked.
    pub outputs: Vec<ResponseOutput>,
    /// The receipt and the payload capability.
    pub parameters: InferParameters,
    /// The client's request id, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The EIP-712 domain receipts are signed under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainInfo {
    /// `Cairn`.
    pub name: String,
    /// `1`.
    pub version: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The settlement contract.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub verifying_contract: Address,
}

/// How the node settles its receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettlementInfo {
    /// The chain, in words.
    pub ledger: String,
    /// Where the contracts are.
    #[schema(value_type = Object)]
    pub deployment: cairn_ledger::Deployment,
    /// A batch is sealed at this many receipts…
    pub batch_max_receipts: usize,
    /// …or when its oldest receipt is this old.
    pub batch_max_age_secs: u64,
}

/// A price for one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelPrice {
    /// The model (a CID or a name).
    pub model: String,
    /// Token units per inference.
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub price: U256,
}

/// What a payer needs to pay this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentTerms {
    /// The node's payment vault: `payTo` of every offer, payee of its vouchers.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub pay_to: Address,
    /// The payment token.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub asset: Address,
    /// CAIP-2 network (`eip155:<chain id>`).
    pub network: String,
    /// x402 schemes taken, preferred first.
    pub schemes: Vec<String>,
    /// The escrow holding prepaid deposits.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub escrow: Address,
    /// The token's EIP-712 domain name.
    pub token_name: String,
    /// The token's EIP-712 domain version.
    pub token_version: String,
    /// Smallest gasless deposit the node relays.
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub min_deposit: U256,
    /// Price of a model without its own.
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub default_price: U256,
    /// Models with their own price.
    pub model_prices: Vec<ModelPrice>,
    /// Language-model prices per 1,000 tokens (paid with prepaid vouchers: a call's voucher
    /// covers its most, `max_tokens` included, and only its signed usage is charged).
    #[serde(default)]
    pub llm_prices: Vec<LlmPrice>,
    /// How often vouchers are redeemed on chain.
    pub redeem_every_secs: u64,
}

/// A language model's price per 1,000 tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlmPrice {
    /// A CID or name@version; `*` for models without a price of their own.
    pub model: String,
    /// Token units per 1,000 prompt tokens.
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub prompt_per_1k: U256,
    /// Token units per 1,000 completion tokens.
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub completion_per_1k: U256,
}

/// The faults a node was told to inject (shown so nobody mistakes it for an honest node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultsInfo {
    /// Fraction of outputs altered.
    pub wrong_output_rate: f64,
    /// Payloads refused.
    pub withhold_payloads: bool,
    /// Payloads refused for this long after a batch is sealed.
    pub payload_outage_secs: u64,
    /// Batch listings served with every seal spoiled.
    #[serde(default)]
    pub forge_listing_seals: bool,
}

/// The node's request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsInfo {
    /// Largest body.
    pub max_body_bytes: usize,
    /// Most tensor elements in one request.
    pub max_elements: u64,
    /// Inference deadline.
    pub timeout_ms: u64,
    /// Requests queued per model.
    pub queue_per_model: usize,
    /// Requests queued in all.
    pub queue_total: usize,
    /// Inferences at once.
    pub workers: usize,
}

/// `GET /v1/node`: who the node is and how it runs, settles and is paid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node's key: every receipt's signer.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub address: Address,
    /// The execution profile every receipt names.
    #[schema(value_type = Object)]
    pub profile: ExecutionProfile,
    /// Whether re-execution must match bit for bit.
    #[schema(value_type = String)]
    pub reproducibility: Reproducibility,
    /// The profile's hash, as receipts bind it.
    #[schema(value_type = String)]
    pub profile_hash: B256,
    /// The receipts' EIP-712 domain.
    pub domain: DomainInfo,
    /// The hub models are fetched from.
    pub hub: String,
    /// Default price per inference, token units.
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub price: U256,
    /// Settlement, when receipts go on chain.
    pub settlement: Option<SettlementInfo>,
    /// Payment terms, when inference is paid.
    pub payments: Option<PaymentTerms>,
    /// Injected faults, if any.
    pub faults: Option<FaultsInfo>,
    /// Models in memory.
    pub models_loaded: u64,
    /// Receipts in the log.
    pub receipts: i64,
    /// Request limits.
    pub limits: LimitsInfo,
    /// The node's version.
    pub version: String,
    /// Its Oblivious HTTP gateway (RFC 9458): requests sealed to this key configuration and
    /// POSTed to `/.well-known/ohttp-gateway` (through a relay) are served by the node's own
    /// routes. The configuration's SHA-256 is bound in the node's attestation report data.
    pub ohttp: Option<OhttpInfo>,
}

/// A node's Oblivious HTTP gateway key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OhttpInfo {
    /// The key configuration (RFC 9458 §3), hex.
    pub key_config: String,
    /// SHA-256 of the key configuration: the second half of the attestation's report data.
    #[schema(value_type = String)]
    pub key_config_hash: B256,
}

/// A receipt's place in a settled batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Inclusion {
    /// The batch's id on chain (`None` until submitted).
    pub id: Option<u64>,
    /// `sealed`, `submitted`, `attested`, `finalized`, `voided`, ….
    pub status: String,
    /// The batch's Merkle root.
    #[schema(value_type = String)]
    pub root: B256,
    /// The receipt's Merkle proof.
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<B256>,
    /// The submitting transaction.
    #[schema(value_type = Option<String>)]
    pub tx: Option<B256>,
    /// How leaves are hashed.
    pub leaf: String,
}

/// How leaves of a receipt batch are hashed.
pub const LEAF_RULE: &str =
    "keccak256(keccak256(abi.encode(signingHash))), OpenZeppelin StandardMerkleTree";

/// `GET /v1/receipts/{id}`: a receipt as the node keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredReceipt {
    /// The signed receipt (EIP-712 typed data, signature, signer), as stored: verify it.
    #[schema(value_type = Object)]
    pub receipt: ReceiptJson,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether its payloads are still kept.
    pub payloads_kept: bool,
    /// Its batch, once sealed.
    pub batch: Option<Inclusion>,
}

/// `POST /v1/batches/{id}/attestations` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestationRequest {
    /// 65-byte `r || s || v` signature over the batch's EIP-712 `BatchAttestation`, hex.
    pub signature: String,
}

/// `POST /v1/batches/{id}/attestations` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttestationAccepted {
    /// The batch.
    pub batch: u64,
    /// The verifier the signature recovers to.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub signer: Address,
    /// Signatures collected for the batch so far.
    pub collected: u64,
}

/// `GET /v1/batches/{id}`: a submitted batch with its receipts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    /// The batch's id on chain.
    pub id: u64,
    /// Merkle root.
    #[schema(value_type = String)]
    pub root: B256,
    /// Receipts in it.
    pub count: u64,
    /// Fees escrowed, token units (decimal).
    pub fees: String,
    /// Status as the node last saw it.
    pub status: String,
    /// The submitting transaction.
    #[schema(value_type = Option<String>)]
    pub tx: Option<B256>,
    /// The receipts, in leaf order, as stored: verify each.
    #[schema(value_type = Vec<Object>)]
    pub receipts: Vec<ReceiptJson>,
}

/// The part of a [`BatchView`] a verifier reads: the receipts, unchecked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BatchReceipts {
    /// The receipts, in leaf order.
    pub receipts: Vec<ReceiptJson>,
}

/// `GET /v1/prepaid/{payer}`, `POST /v1/prepaid/deposits`: a prepaid channel as the node
/// accounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrepaidChannel {
    /// The payer.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub payer: Address,
    /// The node's vault.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub payee: Address,
    /// The channel's salt.
    #[schema(value_type = String)]
    pub salt: B256,
    /// Whether the node knows a deposit in this channel.
    pub known: bool,
    /// Deposited (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    #[schema(value_type = Option<String>)]
    pub deposited: Option<U256>,
    /// The highest voucher the node accepted.
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub accepted: U256,
    /// Redeemed on chain (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    #[schema(value_type = Option<String>)]
    pub redeemed: Option<U256>,
    /// The payer started withdrawing (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing: Option<bool>,
}

mod opt_decimal {
    use alloy_primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<U256>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<U256>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| U256::from_str_radix(&t, 10).map_err(serde::de::Error::custom))
            .transpose()
    }
}
