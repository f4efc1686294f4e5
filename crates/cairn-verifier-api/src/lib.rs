//! The verifier's HTTP API, defined once: the bodies its routes take and answer with, and where
//! each route is ([`VerifierUrls`]). The verifier serves these types; its peers, the CLI and the
//! tests read them. Verdict records are the verifier's stored JSON objects, served as kept.

use alloy_primitives::{Address, B256};
use cairn_attest::{Evidence, Verified};
use cairn_core::ExecutionProfile;
use cairn_core::api::wire::checksummed;
use cairn_receipt::ReceiptJson;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use cairn_core::ErrorBody;

/// `GET /v1/verifier`: who the verifier is and how it checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifierInfo {
    /// The verifier's key.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub address: Address,
    /// The profile it re-executes on.
    #[schema(value_type = Object)]
    pub profile: ExecutionProfile,
    /// Fraction of receipts re-executed.
    pub sample_rate: f64,
    /// The profile's hash.
    #[schema(value_type = String)]
    pub profile_hash: B256,
    /// Failed payload fetches count as withholding only when spread over this long.
    pub payload_window_secs: u64,
    /// …and only after this many.
    pub payload_attempts: u32,
    /// Whether it approves registrations backed by dev (non-TEE) evidence.
    pub accepts_dev_evidence: bool,
    /// The settlement contract it follows.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub settlement: Address,
}

/// `GET /v1/verdicts?limit=`: the latest batch verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerdictList {
    /// Batch verdicts, newest first.
    #[schema(value_type = Vec<Object>)]
    pub verdicts: Vec<Value>,
}

/// `GET /v1/verdicts/receipts/{id}`: the verdicts on one sampled receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptVerdicts {
    /// The receipt's request id, as asked.
    pub request_id: String,
    /// One per batch it was sampled in.
    #[schema(value_type = Vec<Object>)]
    pub verdicts: Vec<Value>,
}

/// `POST /v1/challenges` body: a peer asks this verifier to check a receipt it found fraudulent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The batch on chain.
    pub batch_id: u64,
    /// The receipt (checked by the verifier).
    #[schema(value_type = Object)]
    pub receipt: ReceiptJson,
    /// Its Merkle proof in the batch.
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<B256>,
    /// What the asking verifier found (`output_mismatch`, `payload_withheld`, …).
    pub claim: String,
}

/// `POST /v1/challenges` answer: this verifier's own signature over the fraud verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeAnswer {
    /// The signing verifier.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub verifier: Address,
    /// Its EIP-712 `FraudVerdict` signature, hex.
    pub signature: String,
    /// The evidence hash it signed.
    #[schema(value_type = String)]
    pub evidence_hash: B256,
    /// What it observed itself.
    #[schema(value_type = Object)]
    pub finding: Value,
}

/// `POST /v1/registrations` body, signed by the registering node's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationBody {
    /// The node.
    #[schema(value_type = String)]
    pub node: Address,
    /// `inference` or `verifier`.
    pub role: String,
    /// Where it serves.
    pub endpoint: String,
    /// Its code identity.
    #[schema(value_type = String)]
    pub measurement: B256,
    /// The digest of its evidence.
    #[schema(value_type = String)]
    pub evidence_digest: B256,
    /// Unix seconds after which the approval is void.
    pub deadline: u64,
    /// The TEE (or dev) evidence binding its key.
    #[schema(value_type = Object)]
    pub evidence: Evidence,
}

/// `POST /v1/registrations` answer: this verifier's EIP-712 `Registration` signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegistrationApproval {
    /// The approving verifier.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub verifier: Address,
    /// Its signature, hex.
    pub signature: String,
    /// What it learned from the evidence.
    #[schema(value_type = Object)]
    pub verified: Verified,
}

/// The URLs of one verifier's routes, from its base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierUrls {
    base: String,
}

impl VerifierUrls {
    /// URLs under `base` (a trailing `/` is ignored).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// `GET /v1/verifier`.
    pub fn info(&self) -> String {
        format!("{}/v1/verifier", self.base)
    }

    /// `GET /v1/verdicts/batches/{id}`.
    pub fn batch_verdict(&self, id: u64) -> String {
        format!("{}/v1/verdicts/batches/{id}", self.base)
    }

    /// `GET /v1/verdicts/receipts/{id}`.
    pub fn receipt_verdicts(&self, id: B256) -> String {
        format!("{}/v1/verdicts/receipts/{id}", self.base)
    }

    /// `POST /v1/challenges`.
    pub fn challenges(&self) -> String {
        format!("{}/v1/challenges", self.base)
    }

    /// `POST /v1/registrations`.
    pub fn registrations(&self) -> String {
        format!("{}/v1/registrations", self.base)
    }
}
