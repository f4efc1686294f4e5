//! The verifiers against real evidence shipped with the verifying crates (see
//! `testdata/README.md`), and tampered copies of it.

use alloy_primitives::Address;
use alloy_signer_local::PrivateKeySigner;
use aws_nitro_enclaves_nsm_api::api::{ErrorCode, Request, Response};

use crate::*;

const NITRO_DOC: &[u8] = include_bytes!("../testdata/nitro_attestation.cose");
/// When the Nitro sample was issued (its leaf certificate lives for hours).
const NITRO_ISSUED: u64 = 1_736_179_625;
const SNP_REPORT_HEX: &str = include_str!("../testdata/snp_report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("../testdata/snp_vcek_milan.der");
const TDX_QUOTE: &[u8] = include_bytes!("../testdata/tdx_quote");
const TDX_COLLATERAL: &[u8] = include_bytes!("../testdata/tdx_quote_collateral.json");
/// 2025-07-01: inside the sample collateral's validity (2025-06-19 to 2025-07-19).
const TDX_CLOCK: u64 = 1_751_328_000;
/// 2026-11-22, the day these tests were written: every sample but SEV-SNP's has expired.
const TODAY: u64 = 1_795_305_600;

const TEE: Policy = Policy { allow_dev: false };

fn nitro() -> Evidence {
    Evidence {
        kind: EvidenceKind::Nitro,
        document: NITRO_DOC.to_vec(),
        endorsements: Vec::new(),
    }
}

fn snp() -> Evidence {
    Evidence {
        kind: EvidenceKind::SevSnp,
        document: alloy_primitives::hex::decode(SNP_REPORT_HEX.trim()).unwrap(),
        endorsements: SNP_VCEK.to_vec(),
    }
}

fn tdx() -> Evidence {
    Evidence {
        kind: EvidenceKind::Tdx,
        document: TDX_QUOTE.to_vec(),
        endorsements: TDX_COLLATERAL.to_vec(),
    }
}

fn flip(mut v: Vec<u8>, at: usize) -> Vec<u8> {
    v[at] ^= 0x01;
    v
}

fn any_node() -> Address {
    PrivateKeySigner::random().address()
}

#[test]
fn nitro_sample_verifies_at_its_time_and_is_refused_today() {
    let v = verify(&nitro(), NITRO_ISSUED, TEE).unwrap();
    assert!(v.tee);
    assert_eq!(v.registers.len(), 3);
    assert!(v.detail.contains("i-0bee92034f3d60691-enc01943c5eaab3ad6a"));
    let e = verify(&nitro(), TODAY, TEE).unwrap_err();
    assert_eq!(e.code(), "evidence_expired", "{e}");
    // The sample carries no user data, so it binds no Cairn key.
    let e = check_binding(&v, any_node(), None).unwrap_err();
    assert_eq!(e.code(), "evidence_wrongly_bound", "{e}");
}

#[test]
fn tampered_nitro_documents_fail() {
    let len = NITRO_DOC.len();
    // The last bytes are the COSE signature; the middle is the payload (PCRs, certificates).
    for at in [len - 10, len / 2, 40] {
        let e = Evidence {
            document: flip(NITRO_DOC.to_vec(), at),
            ..nitro()
        };
        // Still well-formed COSE, so the only thing wrong is that AWS did not sign these bytes.
        let err = verify(&e, NITRO_ISSUED, TEE).unwrap_err();
        assert_eq!(err.code(), "evidence_forged", "byte {at}: {err}");
    }
    let truncated = Evidence {
        document: NITRO_DOC[..len / 3].to_vec(),
        ..nitro()
    };
    assert!(verify(&truncated, NITRO_ISSUED, TEE).is_err());
}

/// A module that answers like the NSM: it returns the sample document for an attestation
/// request carrying user data (which it records), and an error otherwise.
#[derive(Default)]
struct RecordedNsm {
    asked: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Nsm for RecordedNsm {
    fn process(&self, request: Request) -> Response {
        match request {
            Request::Attestation {
                user_data: Some(d),
                nonce: None,
                public_key: None,
            } => {
                self.asked.lock().unwrap().push(d.to_vec());
                Response::Attestation {
                    document: NITRO_DOC.to_vec(),
                }
            }
            _ => Response::Error(ErrorCode::InvalidArgument),
        }
    }
}

impl Nsm for std::sync::Arc<RecordedNsm> {
    fn process(&self, request: Request) -> Response {
        self.as_ref().process(request)
    }
}

struct RefusingNsm;

impl Nsm for RefusingNsm {
    fn process(&self, _: Request) -> Response {
        Response::Error(ErrorCode::InternalError)
    }
}

#[test]
fn the_nsm_attester_asks_for_the_report_data_and_returns_the_document() {
    let rd = report_data(any_node(), None);
    let nsm = std::sync::Arc::new(RecordedNsm::default());
    let e = NsmAttester::new(nsm.clone()).evidence(&rd).unwrap();
    // One request, carrying exactly the binding as user data (no nonce, no public key).
    assert_eq!(*nsm.asked.lock().unwrap(), vec![rd.to_vec()]);
    assert_eq!(e.kind, EvidenceKind::Nitro);
    assert_eq!(e.document, NITRO_DOC);
    assert!(verify(&e, NITRO_ISSUED, TEE).is_ok());
    let err = NsmAttester::new(RefusingNsm).evidence(&rd).unwrap_err();
    assert!(err.to_string().contains("InternalError"), "{err}");
}

#[test]
fn snp_sample_verifies_and_tampered_copies_fail() {
    let v = verify(&snp(), TODAY, TEE).unwrap();
    assert!(v.tee && v.detail.starts_with("Milan"), "{v:?}");
    assert_eq!(v.report_data.len(), 64);
    let e = check_binding(&v, any_node(), None).unwrap_err();
    assert_eq!(e.code(), "evidence_wrongly_bound");
    // A flipped bit in the signed body (as the sev crate's own test does).
    let e = verify(
        &Evidence {
            document: flip(snp().document, 21),
            ..snp()
        },
        TODAY,
        TEE,
    )
    .unwrap_err();
    assert_eq!(e.code(), "evidence_forged", "{e}");
    // The measurement itself.
    let e = verify(
        &Evidence {
            document: flip(snp().document, 0x90),
            ..snp()
        },
        TODAY,
        TEE,
    )
    .unwrap_err();
    assert_eq!(e.code(), "evidence_forged", "{e}");
    // A VCEK that is not AMD's.
    let e = verify(
        &Evidence {
            endorsements: flip(SNP_VCEK.to_vec(), 40),
            ..snp()
        },
        TODAY,
        TEE,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            AttestError::Forged { .. } | AttestError::Malformed { .. }
        ),
        "{e}"
    );
    // No VCEK at all.
    let e = verify(
        &Evidence {
            endorsements: Vec::new(),
            ..snp()
        },
        TODAY,
        TEE,
    )
    .unwrap_err();
    assert!(e.to_string().contains("VCEK"), "{e}");
    // After the VCEK expires (2030-04-03).
    let e = verify(&snp(), 1_920_000_000, TEE).unwrap_err();
    assert_eq!(e.code(), "evidence_expired", "{e}");
}

#[test]
fn tdx_sample_verifies_with_its_collateral_and_tampered_copies_fail() {
    let v = verify(&tdx(), TDX_CLOCK, TEE).unwrap();
    assert!(v.tee);
    assert_eq!(v.registers.len(), 4);
    assert!(v.detail.starts_with("TCB "), "{}", v.detail);
    let e = check_binding(&v, any_node(), None).unwrap_err();
    assert_eq!(e.code(), "evidence_wrongly_bound");
    let e = verify(&tdx(), TODAY, TEE).unwrap_err();
    assert_eq!(e.code(), "evidence_expired", "{e}");
    // A flipped byte in the TD report (MRTD lives at offset 48 + 136).
    let e = verify(
        &Evidence {
            document: flip(TDX_QUOTE.to_vec(), 48 + 140),
            ..tdx()
        },
        TDX_CLOCK,
        TEE,
    )
    .unwrap_err();
    assert_eq!(e.code(), "evidence_forged", "{e}");
    // Collateral whose TCB info was edited no longer matches Intel's signature over it.
    let mut c: serde_json::Value = serde_json::from_slice(TDX_COLLATERAL).unwrap();
    let tcb = c["tcb_info"]
        .as_str()
        .unwrap()
        .replacen("\"tcbLevels\"", "\"tcbLevels\" ", 1);
    c["tcb_info"] = tcb.into();
    let e = verify(
        &Evidence {
            endorsements: serde_json::to_vec(&c).unwrap(),
            ..tdx()
        },
        TDX_CLOCK,
        TEE,
    )
    .unwrap_err();
    assert_eq!(e.code(), "evidence_forged", "{e}");
    let e = verify(
        &Evidence {
            endorsements: b"{}".to_vec(),
            ..tdx()
        },
        TDX_CLOCK,
        TEE,
    )
    .unwrap_err();
    assert_eq!(e.code(), "evidence_malformed", "{e}");
}

#[test]
fn dev_evidence_binds_its_key_and_needs_a_permissive_policy() {
    let key = PrivateKeySigner::random();
    let node = key.address();
    let e = DevAttester::new(key)
        .evidence(&report_data(node, None))
        .unwrap();
    let e2: Evidence = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert_eq!(e, e2);
    assert_eq!(
        verify(&e, TODAY, TEE).unwrap_err().code(),
        "dev_evidence_refused"
    );
    let dev = Policy { allow_dev: true };
    let v = verify(&e, TODAY, dev).unwrap();
    assert!(!v.tee);
    assert_eq!(v.measurement.0, cairn_core::DEV_MEASUREMENT);
    check_binding(&v, node, None).unwrap();
    assert_eq!(
        check_binding(&v, any_node(), None).unwrap_err().code(),
        "evidence_wrongly_bound"
    );
    // Another key's statement about this node's binding.
    let other = DevAttester::new(PrivateKeySigner::random())
        .evidence(&report_data(node, None))
        .unwrap();
    let v = verify(&other, TODAY, dev).unwrap();
    assert!(
        check_binding(&v, node, None)
            .unwrap_err()
            .to_string()
            .contains("signed by")
    );
    // A changed byte in the key half of the report data: it names another key.
    let tampered = Evidence {
        document: flip(e.document.clone(), 20 + 5),
        ..e.clone()
    };
    let v = verify(&tampered, TODAY, dev).unwrap();
    let err = check_binding(&v, node, None).unwrap_err();
    assert_eq!(err.code(), "evidence_wrongly_bound");
    assert!(err.to_string().contains("names another key"), "{err}");
    // A changed byte in the reserved half: the binding still reads right, but the signature no
    // longer covers the statement, so it recovers to a stranger.
    let tampered = Evidence {
        document: flip(e.document.clone(), 20 + 40),
        ..e.clone()
    };
    let v = verify(&tampered, TODAY, dev).unwrap();
    assert_ne!(v.dev_signer, Some(node));
    let err = check_binding(&v, node, None).unwrap_err();
    assert_eq!(err.code(), "evidence_wrongly_bound");
    assert!(err.to_string().contains("signed by"), "{err}");
}

#[test]
fn oversized_and_mislabelled_evidence_is_refused() {
    let big = Evidence {
        document: vec![0; MAX_EVIDENCE_BYTES + 1],
        ..nitro()
    };
    assert_eq!(
        verify(&big, NITRO_ISSUED, TEE).unwrap_err().code(),
        "evidence_malformed"
    );
    // A TDX quote presented as a Nitro document.
    let e = Evidence {
        kind: EvidenceKind::Nitro,
        ..tdx()
    };
    assert!(verify(&e, TDX_CLOCK, TEE).is_err());
    let bad: Result<Evidence, _> =
        serde_json::from_str(r#"{"kind":"nitro","document":"not base64!"}"#);
    assert!(bad.is_err());
    let unknown: Result<Evidence, _> = serde_json::from_str(r#"{"kind":"sgx","document":""}"#);
    assert!(unknown.is_err());
}

#[test]
fn measurements_differ_by_kind_and_registers() {
    let a = Measurement::of(EvidenceKind::Nitro, &[b"x"]);
    assert_ne!(a, Measurement::of(EvidenceKind::Tdx, &[b"x"]));
    assert_ne!(a, Measurement::of(EvidenceKind::Nitro, &[b"y"]));
    assert_ne!(
        Measurement::of(EvidenceKind::Nitro, &[b"ab", b"c"]),
        Measurement::of(EvidenceKind::Nitro, &[b"a", b"bc"])
    );
}

#[test]
fn dev_evidence_with_the_high_s_twin_signature_is_refused() {
    let key = PrivateKeySigner::random();
    let node = key.address();
    let e = DevAttester::new(key)
        .evidence(&report_data(node, None))
        .unwrap();
    let at = e.document.len() - 65;
    let sig = alloy_primitives::Signature::from_raw(&e.document[at..]).unwrap();
    let mut twin = e.document.clone();
    twin[at..].copy_from_slice(&cairn_core::sig::malleate(&sig).as_bytes());
    let twin = Evidence {
        document: twin,
        ..e.clone()
    };
    // The twin recovers to the same key: a lax check would take a second form of one statement.
    let dev = Policy { allow_dev: true };
    let err = verify(&twin, TODAY, dev).unwrap_err();
    assert_eq!(err.code(), "evidence_forged", "{err}");
    assert!(
        err.to_string().contains("low-s") || err.to_string().contains("canonical"),
        "{err}"
    );
    verify(&e, TODAY, dev).unwrap();
}
