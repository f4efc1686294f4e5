//! AWS Nitro Enclaves: the attester asks the Nitro Secure Module for a document carrying the
//! report data; the verifier checks the COSE_Sign1 signature and the certificate chain to the
//! pinned AWS Nitro root (both by `nitro_attest`) at the given clock.

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use serde_bytes::ByteBuf;
use time::OffsetDateTime;

use crate::{AttestError, Attester, Evidence, EvidenceKind, Measurement, Verified};

/// The request/response seam of the Nitro Secure Module: [`NsmDevice`] inside an enclave
/// (feature `nitro`), anything that answers like it in tests.
pub trait Nsm: Send + Sync {
    /// Sends one request and returns the module's response.
    fn process(&self, request: Request) -> Response;
}

/// Evidence from the NSM: `user_data` = the report data, the whole COSE document as evidence.
pub struct NsmAttester<N: Nsm> {
    nsm: N,
}

impl<N: Nsm> NsmAttester<N> {
    /// An attester over `nsm`.
    pub fn new(nsm: N) -> Self {
        Self { nsm }
    }
}

impl<N: Nsm> Attester for NsmAttester<N> {
    fn kind(&self) -> EvidenceKind {
        EvidenceKind::Nitro
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, AttestError> {
        let request = Request::Attestation {
            user_data: Some(ByteBuf::from(report_data.to_vec())),
            nonce: None,
            public_key: None,
        };
        match self.nsm.process(request) {
            Response::Attestation { document } => Ok(Evidence {
                kind: EvidenceKind::Nitro,
                document,
                endorsements: Vec::new(),
            }),
            Response::Error(code) => Err(AttestError::Malformed {
                kind: EvidenceKind::Nitro,
                reason: format!("the NSM refused the attestation request: {code:?}"),
            }),
            other => Err(AttestError::Malformed {
                kind: EvidenceKind::Nitro,
                reason: format!("the NSM answered an attestation request with {other:?}"),
            }),
        }
    }
}

/// `/dev/nsm`, the Nitro Secure Module as seen from inside an enclave.
#[cfg(feature = "nitro")]
pub struct NsmDevice {
    fd: i32,
}

#[cfg(feature = "nitro")]
impl NsmDevice {
    /// Opens `/dev/nsm`; fails outside a Nitro enclave.
    pub fn open() -> std::io::Result<Self> {
        let fd = aws_nitro_enclaves_nsm_api::driver::nsm_init();
        if fd < 0 {
            return Err(std::io::Error::other(
                "cannot open /dev/nsm: not inside an AWS Nitro enclave",
            ));
        }
        Ok(Self { fd })
    }
}

#[cfg(feature = "nitro")]
impl Nsm for NsmDevice {
    fn process(&self, request: Request) -> Response {
        aws_nitro_enclaves_nsm_api::driver::nsm_process_request(self.fd, request)
    }
}

#[cfg(feature = "nitro")]
impl Drop for NsmDevice {
    fn drop(&mut self) {
        aws_nitro_enclaves_nsm_api::driver::nsm_exit(self.fd);
    }
}

pub(crate) fn verify(e: &Evidence, now: u64) -> Result<Verified, AttestError> {
    let kind = EvidenceKind::Nitro;
    let clock = i64::try_from(now)
        .ok()
        .and_then(|n| OffsetDateTime::from_unix_timestamp(n).ok())
        .ok_or_else(|| AttestError::Malformed {
            kind,
            reason: format!("clock {now} out of range"),
        })?;
    let unparsed: nitro_attest::UnparsedAttestationDoc<'_> = e.document.as_slice().into();
    let doc = unparsed.parse_and_verify(clock).map_err(|err| match err {
        nitro_attest::Error::CertificateExpired { .. }
        | nitro_attest::Error::CertificateNotYetValid { .. } => AttestError::Expired {
            kind,
            now,
            reason: err.to_string(),
        },
        nitro_attest::Error::CoseSignatureMalformed(_)
        | nitro_attest::Error::CosePayloadMissing
        | nitro_attest::Error::CosePayloadMalformed { .. }
        | nitro_attest::Error::NoCertificatesFound => AttestError::Malformed {
            kind,
            reason: err.to_string(),
        },
        other => AttestError::Forged {
            kind,
            reason: other.to_string(),
        },
    })?;
    // PCR0-2: enclave image, kernel + bootstrap, application. A debug-mode enclave reports all
    // zeros, and its memory is readable by the host.
    let mut registers = Vec::new();
    for i in 0..3u16 {
        let pcr = doc.pcrs.get(&i).ok_or_else(|| AttestError::Malformed {
            kind,
            reason: format!("no PCR{i}"),
        })?;
        registers.push(pcr.value.clone());
    }
    if registers.iter().all(|r| r.iter().all(|b| *b == 0)) {
        return Err(AttestError::Untrusted {
            kind,
            reason: "PCR0-2 are zero: a debug-mode enclave".into(),
        });
    }
    let refs: Vec<&[u8]> = registers.iter().map(Vec::as_slice).collect();
    Ok(Verified {
        kind,
        tee: true,
        measurement: Measurement::of(kind, &refs),
        registers: registers
            .iter()
            .map(alloy_primitives::hex::encode_prefixed)
            .collect(),
        report_data: doc.user_data.map(|b| b.into_vec()).unwrap_or_default(),
        detail: format!("module {}, issued {}", doc.module_id, doc.timestamp),
        dev_signer: None,
    })
}
