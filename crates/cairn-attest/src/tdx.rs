//! Intel TDX: the quote verified with its DCAP collateral (PCK chain to Intel's root, CRLs, TCB
//! info, QE identity) by `dcap-qvl` at the given clock; TCB statuses that mean the platform is
//! compromised (`Revoked`, `OutOfDate*`) are refused.

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Report;

use crate::{AttestError, Evidence, EvidenceKind, Measurement, Verified};

const KIND: EvidenceKind = EvidenceKind::Tdx;

/// TCB statuses accepted: current, or current with configuration/hardening advisories.
const ACCEPTED: [&str; 4] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
];

pub(crate) fn verify(e: &Evidence, now: u64) -> Result<Verified, AttestError> {
    let collateral: QuoteCollateralV3 =
        serde_json::from_slice(&e.endorsements).map_err(|err| AttestError::Malformed {
            kind: KIND,
            reason: format!("collateral (JSON, as PCCS serves it): {err}"),
        })?;
    let report = dcap_qvl::verify::verify(&e.document, &collateral, now).map_err(|err| {
        let reason = format!("{err:#}");
        let lower = reason.to_ascii_lowercase();
        if lower.contains("expired") || lower.contains("not yet valid") {
            AttestError::Expired {
                kind: KIND,
                now,
                reason,
            }
        } else if lower.contains("decode")
            || lower.contains("parse")
            || lower.contains("unsupported")
        {
            AttestError::Malformed { kind: KIND, reason }
        } else {
            AttestError::Forged { kind: KIND, reason }
        }
    })?;
    if !ACCEPTED.contains(&report.status.as_str()) {
        return Err(AttestError::Untrusted {
            kind: KIND,
            reason: format!("TCB status {}", report.status),
        });
    }
    let td = match &report.report {
        Report::TD10(r) => r,
        Report::TD15(r) => &r.base,
        Report::TD15Ex(r) => &r.base.base,
        Report::SgxEnclave(_) => {
            return Err(AttestError::Malformed {
                kind: KIND,
                reason: "an SGX enclave quote, not a TD quote".into(),
            });
        }
    };
    if td.td_attributes[0] & 1 != 0 {
        return Err(AttestError::Untrusted {
            kind: KIND,
            reason: "the TD is debuggable (TDATTRIBUTES.DEBUG)".into(),
        });
    }
    let regs: [&[u8]; 4] = [&td.mr_td, &td.rt_mr0, &td.rt_mr1, &td.rt_mr2];
    Ok(Verified {
        kind: KIND,
        tee: true,
        measurement: Measurement::of(KIND, &regs),
        registers: regs
            .iter()
            .map(alloy_primitives::hex::encode_prefixed)
            .collect(),
        report_data: td.report_data.to_vec(),
        detail: format!(
            "TCB {}{}",
            report.status,
            if report.advisory_ids.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.advisory_ids.join(", "))
            }
        ),
        dev_signer: None,
    })
}
