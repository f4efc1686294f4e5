//! The verifier's HTTP API, defined once: the bodies its routes take and answer with, and where
//! each route is ([`VerifierUrls`]). The verifier serves these types; its peers, the CLI and the
//! tests read them, verdict records included.

use alloy_primitives::{Address, B256};
use cairn_attest::{Evidence, Verified};
use cairn_core::ExecutionProfile;
use cairn_core::api::wire::checksummed;
use cairn_receipt::ReceiptJson;
use serde::{Deserialize, Serialize};
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
    /// The key nodes seal private calls' payloads to, so that this verifier can open them to
    /// re-execute (signed by the verifier's registered key).
    pub payload_key: Option<PayloadKey>,
}

/// A verifier's payload key: an HPKE key configuration (RFC 9458 §3 form) and the verifier's
/// EIP-191 signature over [`PayloadKey::message`], which ties it to the registered address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PayloadKey {
    /// The key configuration, hex.
    pub key_config: String,
    /// `personal_sign` of [`PayloadKey::message`] by the verifier's key, 0x-hex.
    pub signature: String,
}

impl PayloadKey {
    /// What the verifier signs: a label and the SHA-256 of the key configuration.
    pub fn message(config_hash: &[u8; 32]) -> Vec<u8> {
        [b"cairn.payload-key.v1\0".as_slice(), config_hash].concat()
    }
}

/// `GET /v1/verdicts?limit=`: the latest batch verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerdictList {
    /// Batch verdicts, newest first.
    pub verdicts: Vec<BatchVerdict>,
}

/// `GET /v1/verdicts/receipts/{id}`: the verdicts on one sampled receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptVerdicts {
    /// The receipt's request id, as asked.
    pub request_id: String,
    /// One per batch it was sampled in.
    pub verdicts: Vec<ReceiptVerdict>,
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
    /// For a private call's receipt: the data keys of its sealed payloads, which the asking
    /// verifier (a recipient) opened, so that a peer the node did not seal to can check too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload_keys: Vec<SharedPayloadKey>,
}

/// One sealed payload's data key, handed to a peer in a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SharedPayloadKey {
    /// `input` or `output`.
    pub payload: String,
    /// The 16-byte AES-128-GCM data key, hex.
    pub key: String,
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
    pub finding: Outcome,
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

/// How a sampled receipt fared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Re-executed and the output agrees (bit for bit, or within the tolerance stated).
    Confirmed {
        /// `bit-exact` or `tolerance <t>, max |difference| <d>`.
        comparison: String,
    },
    /// Re-executed and the output differs: the receipt is wrong.
    Mismatch {
        /// How it was compared and what differed.
        comparison: String,
        /// The output hash this verifier computed.
        recomputed: B256,
    },
    /// The node did not hand over the payload: every one of this verifier's own attempts,
    /// spread over its payload window, failed.
    Withheld {
        /// How many attempts failed, over how long, and what the node last answered.
        reason: String,
    },
    /// The node's payload does not hash to what the receipt binds.
    WrongPayload {
        /// Which payload.
        reason: String,
    },
    /// This verifier cannot re-execute this profile (another kernel tier, another engine it
    /// lacks): neither confirmation nor fault.
    Unverifiable {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Whether the outcome is evidence against the node.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Outcome::Mismatch { .. } | Outcome::Withheld { .. } | Outcome::WrongPayload { .. }
        )
    }

    /// The fraud evidence hash verifiers sign for a fault on receipt `rh`: one value for any
    /// kind of fault, so a node cannot split the verifiers by showing each a different one
    /// (withholding from one, a wrong input to another, the true input to a third) and keep
    /// every quorum from forming. Each verifier still signs only a fault it observed itself;
    /// which fault is kept in its verdict.
    pub fn evidence_hash(&self, rh: B256) -> Option<B256> {
        if !self.is_fault() {
            return None;
        }
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(b"cairn.fraud.v2");
        m.extend_from_slice(rh.as_slice());
        Some(alloy_primitives::keccak256(m))
    }

    /// The claim a fraud record names for this fault (`none` for a non-fault).
    pub fn claim(&self) -> &'static str {
        match self {
            Outcome::Mismatch { .. } => "output_mismatch",
            Outcome::Withheld { .. } => "payload_withheld",
            Outcome::WrongPayload { .. } => "wrong_payload",
            _ => "none",
        }
    }
}

/// One re-executed sample, as the verifier keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SampleRecord {
    /// How it fared.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub outcome: Outcome,
    /// The receipt.
    #[schema(value_type = String)]
    pub request_id: B256,
    /// Its EIP-712 signing hash (its batch's Merkle leaf).
    #[schema(value_type = String)]
    pub receipt_hash: B256,
    /// Payload fetches that failed before this finding.
    pub payload_failures: u32,
}

/// A fraud verdict this verifier signed: its own finding, or a peer's it confirmed itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FraudRecord {
    /// The batch on chain.
    pub batch_id: u64,
    /// The receipt.
    #[schema(value_type = String)]
    pub request_id: B256,
    /// Its signing hash.
    #[schema(value_type = String)]
    pub receipt_hash: B256,
    /// The evidence hash signed (one value for any fault on this receipt).
    #[schema(value_type = String)]
    pub evidence_hash: B256,
    /// The fault this verifier observed.
    pub claim: String,
    /// The fault the asking peer claimed (confirmations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed: Option<String>,
    /// What this verifier found.
    #[schema(value_type = Object)]
    pub finding: Outcome,
    /// Its EIP-712 `FraudVerdict` signature, hex.
    pub signature: String,
    /// `own sample` or `peer request`.
    pub origin: String,
}

/// A peer's answer to a fraud confirmation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerAnswer {
    /// The peer.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub verifier: Address,
    /// Whether it signed the same verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreed: Option<bool>,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The fraud challenge sent on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeRecord {
    /// Its transaction, when it went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tx: Option<B256>,
    /// The verdict's signers (checksummed addresses).
    pub signers: Vec<String>,
    /// The evidence hash proven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub evidence_hash: Option<B256>,
    /// Why it did not go through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the batch is voided anyway (another verifier's challenge landed first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided: Option<bool>,
}

/// What a verifier concluded about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerdictOutcome {
    /// The batch breaks a rule every receipt must keep: not attested.
    Refused,
    /// A sample could not be checked here: neither attested nor accused.
    Abstained,
    /// Checked after the batch left `Submitted`: nothing to attest any more.
    Confirmed,
    /// Checked and co-signed.
    Attested,
    /// A fault found, its challenge not on chain (yet).
    Fraud,
    /// A fault proven on chain.
    Challenged,
}

impl VerdictOutcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictOutcome::Refused => "refused",
            VerdictOutcome::Abstained => "abstained",
            VerdictOutcome::Confirmed => "confirmed",
            VerdictOutcome::Attested => "attested",
            VerdictOutcome::Fraud => "fraud",
            VerdictOutcome::Challenged => "challenged",
        }
    }

    /// Whether the verifier is done with the batch.
    pub fn is_final(self) -> bool {
        !matches!(self, VerdictOutcome::Fraud)
    }
}

/// A verifier's verdict on one batch, as it keeps and serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchVerdict {
    /// The batch on chain.
    pub batch_id: u64,
    /// Its node.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub node: Address,
    /// Its Merkle root.
    #[schema(value_type = String)]
    pub root: B256,
    /// Receipts in it.
    pub count: u32,
    /// This verifier.
    #[serde(serialize_with = "checksummed")]
    #[schema(value_type = String)]
    pub verifier: Address,
    /// Its sampling rate.
    pub sample_rate: f64,
    /// The profile it re-executes on.
    pub profile: String,
    /// The samples re-executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<SampleRecord>>,
    /// How many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<usize>,
    /// The conclusion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<VerdictOutcome>,
    /// Why it refused or abstained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its attestation signature, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// Its own fraud finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraud: Option<FraudRecord>,
    /// Its peers' answers to the confirmation request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerAnswer>>,
    /// The challenge on chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<ChallengeRecord>,
    /// Every fraud verdict it signed on the batch (filled when served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frauds: Option<Vec<FraudRecord>>,
}

/// A sampled receipt's verdict in one batch (`GET /v1/verdicts/receipts/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptVerdict {
    /// The sample.
    #[serde(flatten)]
    pub sample: SampleRecord,
    /// The batch it was sampled in.
    pub batch_id: u64,
}

/// `GET /v1/verdicts/batches/{id}` for a batch without a verdict of its own but with frauds this
/// verifier signed for a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FraudsOnly {
    /// The batch.
    pub batch_id: u64,
    /// The frauds signed on it.
    pub frauds: Vec<FraudRecord>,
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
