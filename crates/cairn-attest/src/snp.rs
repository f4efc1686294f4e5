//! AMD SEV-SNP: the report's signature by the chip's VCEK, the VCEK's chain to AMD's ARK/ASK for
//! its product line (Milan, Genoa or Turin, as built into `sev`), each certificate within its
//! validity at the given clock, and a guest policy that forbids debugging.

use sev::certs::snp::{Certificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::{AttestError, Evidence, EvidenceKind, Measurement, Verified};

const KIND: EvidenceKind = EvidenceKind::SevSnp;

type Roots = fn() -> std::io::Result<Certificate>;
const PRODUCTS: [(&str, Roots, Roots); 3] = [
    ("Milan", builtin::milan::ark, builtin::milan::ask),
    ("Genoa", builtin::genoa::ark, builtin::genoa::ask),
    ("Turin", builtin::turin::ark, builtin::turin::ask),
];

fn within_validity(cert: &Certificate, what: &str, now: u64) -> Result<(), AttestError> {
    let x: x509_cert::Certificate = cert.clone().into();
    let v = &x.tbs_certificate.validity;
    let from = v.not_before.to_unix_duration().as_secs();
    let until = v.not_after.to_unix_duration().as_secs();
    if now < from || now > until {
        return Err(AttestError::Expired {
            kind: KIND,
            now,
            reason: format!("the {what} certificate is valid from {from} to {until}"),
        });
    }
    Ok(())
}

pub(crate) fn verify(e: &Evidence, now: u64) -> Result<Verified, AttestError> {
    let malformed = |reason: String| AttestError::Malformed { kind: KIND, reason };
    let report = AttestationReport::from_bytes(&e.document)
        .map_err(|err| malformed(format!("report: {err}")))?;
    if e.endorsements.is_empty() {
        return Err(malformed(
            "no VCEK: put the chip's VCEK (DER, from AMD's KDS) in `endorsements`".into(),
        ));
    }
    let vcek =
        Certificate::from_der(&e.endorsements).map_err(|err| malformed(format!("VCEK: {err}")))?;
    let mut found = None;
    for (name, ark, ask) in PRODUCTS {
        let (Ok(ark), Ok(ask)) = (ark(), ask()) else {
            continue;
        };
        let chain = Chain {
            ca: ca::Chain { ark, ask },
            vek: vcek.clone(),
        };
        if chain.verify().is_ok() {
            found = Some((name, chain));
            break;
        }
    }
    let (product, chain) = found.ok_or_else(|| AttestError::Forged {
        kind: KIND,
        reason: "the VCEK does not chain to AMD's Milan, Genoa or Turin root".into(),
    })?;
    within_validity(&chain.ca.ark, "ARK", now)?;
    within_validity(&chain.ca.ask, "ASK", now)?;
    within_validity(&chain.vek, "VCEK", now)?;
    (&chain, &report)
        .verify()
        .map_err(|err| AttestError::Forged {
            kind: KIND,
            reason: format!("the report's signature does not verify under the VCEK: {err}"),
        })?;
    if report.policy.debug_allowed() {
        return Err(AttestError::Untrusted {
            kind: KIND,
            reason: "the guest policy allows debugging (the host can read its memory)".into(),
        });
    }
    Ok(Verified {
        kind: KIND,
        tee: true,
        measurement: Measurement::of(KIND, &[&report.measurement]),
        registers: vec![alloy_primitives::hex::encode_prefixed(report.measurement)],
        report_data: report.report_data.to_vec(),
        detail: format!(
            "{product}, reported TCB {:?}, VMPL {}",
            report.reported_tcb, report.vmpl
        ),
        dev_signer: None,
    })
}
