//! TEE evidence for Cairn nodes: how a node obtains it ([`Attester`]) and how a verifier checks
//! it ([`verify`]).
//!
//! Evidence is worth something only when it binds the node's signing key: the 64 bytes of report
//! data a TEE signs carry [`report_data`] of the node's address (and, later, of its OHTTP key).
//! A verifier checks the hardware vendor's signature chain at a given clock (the samples shipped
//! with the verifying crates have expired certificates, so the clock is always an input), derives
//! a [`Measurement`] (the code identity governance approves per role), and checks the binding.
//!
//! | kind | document | endorsements | measurement over |
//! |---|---|---|---|
//! | `dev` | software-key statement (not a TEE) | none | the constant [`cairn_core::DEV_MEASUREMENT`] |
//! | `nitro` | NSM attestation document (COSE_Sign1, chain to the pinned AWS root) | none | PCR0, PCR1, PCR2 |
//! | `sev-snp` | attestation report (1184 bytes) | the chip's VCEK (DER), chained to AMD's ARK/ASK | MEASUREMENT |
//! | `tdx` | DCAP quote | collateral JSON (TCB info, QE identity, CRLs) | MRTD, RTMR0–2 |

mod dev;
mod nitro;
mod snp;
mod tdx;

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use dev::DevAttester;
#[cfg(feature = "nitro")]
pub use nitro::NsmDevice;
pub use nitro::{Nsm, NsmAttester};

/// Which kind of evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceKind {
    /// A software key's statement: proves key possession only. Not a TEE.
    Dev,
    /// AWS Nitro Enclaves (NSM attestation document).
    Nitro,
    /// AMD SEV-SNP attestation report.
    SevSnp,
    /// Intel TDX quote (DCAP).
    Tdx,
}

impl EvidenceKind {
    fn tag(self) -> &'static str {
        match self {
            EvidenceKind::Dev => "dev",
            EvidenceKind::Nitro => "nitro",
            EvidenceKind::SevSnp => "sev-snp",
            EvidenceKind::Tdx => "tdx",
        }
    }

    /// Whether evidence of this kind comes from a TEE.
    pub fn is_tee(self) -> bool {
        self != EvidenceKind::Dev
    }
}

impl std::fmt::Display for EvidenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.tag())
    }
}

/// Evidence as a node presents it: the signed document and what a verifier needs beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// What produced it.
    pub kind: EvidenceKind,
    /// The signed document (base64 in JSON).
    #[serde(with = "b64")]
    pub document: Vec<u8>,
    /// Vendor endorsements: SEV-SNP VCEK (DER), TDX collateral (JSON); empty otherwise.
    #[serde(with = "b64", default, skip_serializing_if = "Vec::is_empty")]
    pub endorsements: Vec<u8>,
}

/// Largest evidence accepted (documents and collateral are a few KiB to tens of KiB).
pub const MAX_EVIDENCE_BYTES: usize = 256 * 1024;

impl Evidence {
    /// SHA-256 over kind, document and endorsements: what the registry records.
    pub fn digest(&self) -> B256 {
        let mut h = Sha256::new();
        h.update(b"cairn.evidence.v1\0");
        h.update(self.kind.tag().as_bytes());
        h.update([0]);
        h.update((self.document.len() as u64).to_be_bytes());
        h.update(&self.document);
        h.update((self.endorsements.len() as u64).to_be_bytes());
        h.update(&self.endorsements);
        B256::from_slice(&h.finalize())
    }
}

/// A code identity: what governance approves per role (a `bytes32` in the registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Measurement(pub B256);

impl Measurement {
    /// The measurement of `kind` evidence reporting `registers` (in their fixed order).
    pub fn of(kind: EvidenceKind, registers: &[&[u8]]) -> Self {
        if kind == EvidenceKind::Dev {
            return Measurement(cairn_core::DEV_MEASUREMENT);
        }
        let mut h = Sha256::new();
        h.update(b"cairn.measurement.v1\0");
        h.update(kind.tag().as_bytes());
        h.update([0]);
        for r in registers {
            h.update((r.len() as u32).to_be_bytes());
            h.update(r);
        }
        Measurement(B256::from_slice(&h.finalize()))
    }
}

impl std::fmt::Display for Measurement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a verifier learned from evidence that checked out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// Its kind.
    pub kind: EvidenceKind,
    /// Whether a TEE produced it (`false` for dev evidence, said wherever it is shown).
    pub tee: bool,
    /// The code identity.
    pub measurement: Measurement,
    /// The raw registers the measurement is computed over, hex, for display.
    pub registers: Vec<String>,
    /// The 64 bytes the TEE signed for the caller (where the key binding lives).
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
    /// Vendor status worth showing (TDX TCB status, SEV-SNP TCB version, Nitro module id).
    pub detail: String,
    /// The key that signed dev evidence (dev only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_signer: Option<Address>,
}

/// Why evidence was refused. [`AttestError::code`] is the stable machine code.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// Not parseable as its kind says.
    #[error("malformed {kind} evidence: {reason}")]
    Malformed {
        /// Claimed kind.
        kind: EvidenceKind,
        /// What was wrong.
        reason: String,
    },
    /// A signature or certificate chain does not verify.
    #[error("{kind} evidence does not verify: {reason}")]
    Forged {
        /// Claimed kind.
        kind: EvidenceKind,
        /// What failed.
        reason: String,
    },
    /// A certificate or collateral is outside its validity at the verification clock.
    #[error("{kind} evidence is not valid at {now}: {reason}")]
    Expired {
        /// Claimed kind.
        kind: EvidenceKind,
        /// The clock used (Unix seconds).
        now: u64,
        /// What expired.
        reason: String,
    },
    /// Genuine, but the platform is not in an acceptable state (revoked or out-of-date TCB,
    /// a debuggable guest).
    #[error("{kind} platform not acceptable: {reason}")]
    Untrusted {
        /// Kind.
        kind: EvidenceKind,
        /// Why.
        reason: String,
    },
    /// Dev evidence where the policy wants a TEE.
    #[error(
        "dev evidence is not a TEE, and this verifier's policy does not accept it (only a devnet does)"
    )]
    DevNotAllowed,
    /// The evidence does not bind the node's key.
    #[error("the evidence does not bind node {node}: {reason}")]
    WrongBinding {
        /// The node claiming it.
        node: Address,
        /// What differs.
        reason: String,
    },
    /// The measurement is not approved for the role.
    #[error("measurement {measurement} is not approved for {role}")]
    NotApproved {
        /// The measurement reported.
        measurement: Measurement,
        /// The role asked for.
        role: String,
    },
}

impl AttestError {
    /// A stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::Malformed { .. } => "evidence_malformed",
            AttestError::Forged { .. } => "evidence_forged",
            AttestError::Expired { .. } => "evidence_expired",
            AttestError::Untrusted { .. } => "evidence_untrusted",
            AttestError::DevNotAllowed => "dev_evidence_refused",
            AttestError::WrongBinding { .. } => "evidence_wrongly_bound",
            AttestError::NotApproved { .. } => "measurement_not_approved",
        }
    }
}

/// The 64 report-data bytes that bind evidence to a node: SHA-256 of the node's address under a
/// domain label, then SHA-256 of its OHTTP key configuration (zeros until it has one).
pub fn report_data(node: Address, ohttp_key: Option<&[u8]>) -> [u8; 64] {
    let mut out = [0u8; 64];
    let mut h = Sha256::new();
    h.update(b"cairn.attestation.binding.v1\0");
    h.update(node.as_slice());
    out[..32].copy_from_slice(&h.finalize());
    if let Some(k) = ohttp_key {
        out[32..].copy_from_slice(&Sha256::digest(k));
    }
    out
}

/// Produces evidence whose report data is `report_data` (see [`report_data`]).
pub trait Attester: Send + Sync {
    /// The kind produced.
    fn kind(&self) -> EvidenceKind;
    /// Fresh evidence carrying `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestError>;
}

/// What a verifier accepts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// Accept `dev` evidence (devnet only).
    pub allow_dev: bool,
}

/// Checks `evidence`'s signatures and chain at `now` (Unix seconds) under `policy`.
pub fn verify(evidence: &Evidence, now: u64, policy: Policy) -> Result<Verified, AttestError> {
    if evidence.document.len() + evidence.endorsements.len() > MAX_EVIDENCE_BYTES {
        return Err(AttestError::Malformed {
            kind: evidence.kind,
            reason: format!("larger than {MAX_EVIDENCE_BYTES} bytes"),
        });
    }
    match evidence.kind {
        EvidenceKind::Dev if !policy.allow_dev => Err(AttestError::DevNotAllowed),
        EvidenceKind::Dev => dev::verify(evidence),
        EvidenceKind::Nitro => nitro::verify(evidence, now),
        EvidenceKind::SevSnp => snp::verify(evidence, now),
        EvidenceKind::Tdx => tdx::verify(evidence, now),
    }
}

/// Checks that verified evidence binds `node` (and `ohttp_key`, when given).
pub fn check_binding(
    v: &Verified,
    node: Address,
    ohttp_key: Option<&[u8]>,
) -> Result<(), AttestError> {
    let wrong = |reason: String| AttestError::WrongBinding { node, reason };
    let want = report_data(node, ohttp_key);
    if v.report_data.len() != 64 {
        return Err(wrong(format!(
            "the report data is {} bytes, not the 64 of a Cairn binding",
            v.report_data.len()
        )));
    }
    if v.report_data[..32] != want[..32] {
        return Err(wrong("the report data names another key".into()));
    }
    if ohttp_key.is_some() && v.report_data[32..] != want[32..] {
        return Err(wrong("the report data names another OHTTP key".into()));
    }
    if let Some(signer) = v.dev_signer
        && signer != node
    {
        return Err(wrong(format!("the dev statement is signed by {signer}")));
    }
    Ok(())
}

mod b64 {
    use data_encoding::BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() > super::MAX_EVIDENCE_BYTES * 4 / 3 + 4 {
            return Err(serde::de::Error::custom("evidence field too large"));
        }
        BASE64
            .decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&alloy_primitives::hex::encode_prefixed(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        alloy_primitives::hex::decode(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
