//! Approving a node's registration: its evidence checked at this verifier's clock and policy.

use super::*;

impl Verifier {
    /// Checks a node's evidence for registration `req` and signs the approval: the evidence
    /// verifies (at this verifier's clock and policy), reports `req.measurement`, hashes to
    /// `req.evidence_digest`, binds `req.node`, the measurement is approved for the role on
    /// chain, and the deadline is near.
    pub async fn approve_registration(
        &self,
        req: &RegistrationRequest,
        evidence: &Evidence,
    ) -> Result<(Signature, Verified), VerifyError> {
        let c = &self.0;
        let bad = |code: &'static str, reason: String| VerifyError::BadRequest { code, reason };
        let now = now_secs();
        let attest = |e: cairn_attest::AttestError| VerifyError::BadRequest {
            code: e.code(),
            reason: e.to_string(),
        };
        let v = cairn_attest::verify(evidence, now, c.config.attestation).map_err(attest)?;
        if evidence.digest() != req.evidence_digest {
            return Err(bad(
                "evidence_digest_mismatch",
                format!(
                    "the evidence hashes to {}, the registration names {}",
                    evidence.digest(),
                    req.evidence_digest
                ),
            ));
        }
        if v.measurement.0 != req.measurement {
            return Err(bad(
                "measurement_mismatch",
                format!(
                    "the evidence reports measurement {}, the registration names {}",
                    v.measurement, req.measurement
                ),
            ));
        }
        cairn_attest::check_binding(&v, req.node, None).map_err(attest)?;
        fetch::check_url(&req.endpoint, c.config.allow_private_endpoints)
            .map_err(|e| bad("endpoint_not_public", e))?;
        let approved = c
            .chain
            .measurement_approved(req.role, req.measurement)
            .await
            .map_err(|e| bad("chain_unavailable", e.to_string()))?;
        if !approved {
            return Err(attest(cairn_attest::AttestError::NotApproved {
                measurement: v.measurement,
                role: format!("{:?}", req.role).to_ascii_lowercase(),
            }));
        }
        if req.deadline <= now || req.deadline > now + c.config.approval_ttl.as_secs() {
            return Err(bad(
                "bad_deadline",
                format!(
                    "the deadline must be in the next {} s",
                    c.config.approval_ttl.as_secs()
                ),
            ));
        }
        let sig = c
            .chain
            .sign_registration(&c.key, req)
            .map_err(|e| bad("signing_failed", e.to_string()))?;
        tracing::info!(verifier = %self.address(), node = %req.node, kind = %v.kind, "approved a registration");
        Ok((sig, v))
    }
}
