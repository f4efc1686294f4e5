//! `dev` evidence: a statement signed by the node's own software key. It proves possession of
//! the key and nothing about the code, so it reports [`cairn_core::DEV_MEASUREMENT`] and is
//! accepted only under a policy that allows it.

use alloy_primitives::{Signature, keccak256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;

use crate::{AttestError, Attester, Evidence, EvidenceKind, Measurement, Verified};

const MAGIC: &[u8; 20] = b"CAIRN-DEV-EVIDENCE-1";
const LEN: usize = MAGIC.len() + 64 + 65;

/// Signs dev evidence with a software key (the node's own).
pub struct DevAttester {
    key: PrivateKeySigner,
}

impl DevAttester {
    /// An attester signing with `key`.
    pub fn new(key: PrivateKeySigner) -> Self {
        Self { key }
    }
}

fn statement_hash(report_data: &[u8]) -> alloy_primitives::B256 {
    let mut m = Vec::with_capacity(MAGIC.len() + 64);
    m.extend_from_slice(MAGIC);
    m.extend_from_slice(report_data);
    keccak256(m)
}

impl Attester for DevAttester {
    fn kind(&self) -> EvidenceKind {
        EvidenceKind::Dev
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestError> {
        let sig = self
            .key
            .sign_hash_sync(&statement_hash(report_data))
            .map_err(|e| AttestError::Malformed {
                kind: EvidenceKind::Dev,
                reason: format!("signing: {e}"),
            })?;
        let mut document = Vec::with_capacity(LEN);
        document.extend_from_slice(MAGIC);
        document.extend_from_slice(report_data);
        document.extend_from_slice(&sig.as_bytes());
        Ok(Evidence {
            kind: EvidenceKind::Dev,
            document,
            endorsements: Vec::new(),
        })
    }
}

pub(crate) fn verify(e: &Evidence) -> Result<Verified, AttestError> {
    let d = &e.document;
    let malformed = |reason: &str| AttestError::Malformed {
        kind: EvidenceKind::Dev,
        reason: reason.into(),
    };
    if d.len() != LEN || &d[..MAGIC.len()] != MAGIC {
        return Err(malformed(
            "not a CAIRN-DEV-EVIDENCE-1 statement of 149 bytes",
        ));
    }
    let report_data = &d[MAGIC.len()..MAGIC.len() + 64];
    let sig = Signature::from_raw(&d[MAGIC.len() + 64..])
        .map_err(|e| malformed(&format!("signature: {e}")))?;
    // Only the canonical (low-s) form: the high-s twin would be a second spelling of one statement.
    let signer =
        cairn_core::sig::recover_prehash(&sig, &statement_hash(report_data)).map_err(|e| {
            AttestError::Forged {
                kind: EvidenceKind::Dev,
                reason: e.to_string(),
            }
        })?;
    Ok(Verified {
        kind: EvidenceKind::Dev,
        tee: false,
        measurement: Measurement::of(EvidenceKind::Dev, &[]),
        registers: Vec::new(),
        report_data: report_data.to_vec(),
        detail: "software key, not a TEE".into(),
        dev_signer: Some(signer),
    })
}
