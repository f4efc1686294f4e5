//! Joining the registry: fresh evidence binding the node's key, approved by as many active
//! verifiers as the registry's quorum asks (each checks it over `POST /v1/registrations`, asked
//! with a request the node signs), then `NodeRegistry.register` (or `setEndpoint` for a node
//! that moves).

use std::time::Duration;

use alloy_primitives::{Address, Signature, U256};
use alloy_signer_local::PrivateKeySigner;
use cairn_attest::Attester;
use cairn_ledger::{Chain, LedgerError, RegistrationRequest, Role, TxOutcome};

use cairn_node_api::fetch::{Fetcher, registered_publicly};

use crate::now_secs;

/// Largest answer read from a verifier asked to approve a registration.
const MAX_APPROVAL_BYTES: usize = 64 << 10;

/// Why a registration did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The node's own evidence could not be made or does not verify.
    #[error("{0}")]
    Evidence(String),
    /// Fewer verifiers approved than the registry asks for.
    #[error("registration needs {needed} verifier approvals, got {got}:\n  {refusals}")]
    Quorum {
        /// The registry's quorum.
        needed: usize,
        /// Approvals received.
        got: usize,
        /// Each verifier that did not approve, and why.
        refusals: String,
    },
    /// The chain refused or could not be read.
    #[error(transparent)]
    Chain(#[from] LedgerError),
}

/// Registers `key` in `role` at `endpoint`: fresh evidence binding the key (and `ohttp_key`,
/// the node's Oblivious HTTP key configuration, whose hash fills the report data's second
/// half: the registry's evidence digest then pins the gateway key too), approved by as many
/// active verifiers as the registry's quorum asks (each checks it over `POST /v1/registrations`),
/// then `NodeRegistry.register`. An already registered node moves to `endpoint` the same way
/// (`setEndpoint` needs the same approvals), and one whose evidence no longer binds what it
/// serves (a rotated gateway key, a new image) renews it (`setAttestation`, the same approvals).
pub async fn register(
    chain: &Chain,
    key: &PrivateKeySigner,
    role: Role,
    endpoint: &str,
    stake: U256,
    attester: &dyn Attester,
    ohttp_key: Option<&[u8]>,
) -> Result<Registered, RegistrationError> {
    let info = chain.node(key.address()).await?;
    if let Some(current) = info.role {
        if info.endpoint != endpoint {
            let (req, approvals, evidence) =
                approved(chain, key, current, endpoint, attester, ohttp_key).await?;
            let tx = chain.set_endpoint(key, &req, approvals).await?;
            return Ok(Registered::new(tx, evidence));
        }
        let (fresh, _) = fresh_request(key, current, endpoint, attester, ohttp_key)?;
        if fresh.evidence_digest == info.evidence_digest {
            return Ok(Registered {
                tx: None,
                evidence: None,
            });
        }
        let (req, approvals, evidence) =
            approved(chain, key, current, endpoint, attester, ohttp_key).await?;
        let tx = chain.set_attestation(key, &req, approvals).await?;
        return Ok(Registered::new(tx, evidence));
    }
    let (req, approvals, evidence) =
        approved(chain, key, role, endpoint, attester, ohttp_key).await?;
    let tx = chain.register(key, &req, stake, approvals).await?;
    Ok(Registered::new(tx, evidence))
}

/// What [`register`] did.
#[derive(Debug)]
pub struct Registered {
    /// The transaction, when the registry changed.
    pub tx: Option<TxOutcome>,
    /// The evidence the registry now records the digest of (`None`: unchanged). A node serves
    /// it at `GET /v1/attestation` (`cairn node serve --evidence`), so clients find the digest.
    pub evidence: Option<cairn_attest::Evidence>,
}

impl Registered {
    fn new(tx: TxOutcome, evidence: cairn_attest::Evidence) -> Self {
        Self {
            tx: Some(tx),
            evidence: Some(evidence),
        }
    }
}

/// Moves a registered node to `endpoint` with fresh evidence approved by the verifiers.
pub async fn move_endpoint(
    chain: &Chain,
    key: &PrivateKeySigner,
    role: Role,
    endpoint: &str,
    attester: &dyn Attester,
    ohttp_key: Option<&[u8]>,
) -> Result<TxOutcome, RegistrationError> {
    let (req, approvals, _) = approved(chain, key, role, endpoint, attester, ohttp_key).await?;
    Ok(chain.set_endpoint(key, &req, approvals).await?)
}

/// A registration of `key` in `role` at `endpoint` on fresh evidence, with as many verifier
/// approvals as the registry asks for (each asked with a request signed by `key`).
async fn approved(
    chain: &Chain,
    key: &PrivateKeySigner,
    role: Role,
    endpoint: &str,
    attester: &dyn Attester,
    ohttp_key: Option<&[u8]>,
) -> Result<
    (
        RegistrationRequest,
        Vec<(Address, Signature)>,
        cairn_attest::Evidence,
    ),
    RegistrationError,
> {
    let me = key.address();
    let (req, evidence) = fresh_request(key, role, endpoint, attester, ohttp_key)?;
    let quorum = chain.registration_quorum().await? as usize;
    let mut approvals: Vec<(Address, Signature)> = Vec::new();
    if quorum == 0 {
        return Ok((req, approvals, evidence));
    }
    let mut refusals = Vec::new();
    // Verifiers are reached as this node is: at public addresses only, unless the node itself
    // is registered on a local network (a verifier's endpoint must not make the operator's
    // machine post into the network it runs in).
    let http = Fetcher::new(
        Duration::from_secs(30),
        MAX_APPROVAL_BYTES,
        !registered_publicly(endpoint),
    );
    let body = serde_json::to_vec(&cairn_verifier_api::RegistrationBody {
        node: req.node,
        role: match req.role {
            Role::Inference => "inference",
            Role::Verifier => "verifier",
        }
        .into(),
        endpoint: req.endpoint.clone(),
        measurement: req.measurement,
        evidence_digest: req.evidence_digest,
        deadline: req.deadline,
        evidence: evidence.clone(),
    })
    .expect("a registration body serializes");
    for v in chain.active_nodes(Role::Verifier).await? {
        if approvals.len() >= quorum {
            break;
        }
        if v == me {
            continue;
        }
        let ep = chain.node(v).await?.endpoint;
        let url = cairn_verifier_api::VerifierUrls::new(&ep).registrations();
        let answer = post_signed(&http, key, &url, &body).await;
        match answer {
            Ok((s, b)) if s.is_success() => {
                let sig = serde_json::from_slice::<cairn_verifier_api::RegistrationApproval>(&b)
                    .ok()
                    .and_then(|a| a.signature.parse::<Signature>().ok());
                let Some(sig) = sig else {
                    refusals.push(format!("{v}: an approval without a signature"));
                    continue;
                };
                if chain.registration_signer(&req, &sig).ok() == Some(v) {
                    approvals.push((v, sig));
                } else {
                    refusals.push(format!("{v}: signature is not its own (or not canonical)"));
                }
            }
            Ok((s, b)) => {
                let e = cairn_core::ErrorBody::parse(&b)
                    .unwrap_or_else(|| cairn_core::ErrorBody::new("?", ""));
                refusals.push(format!("{v}: {s} {}: {}", e.code, e.message))
            }
            Err(e) => refusals.push(format!("{v}: {e}")),
        }
    }
    if approvals.len() < quorum {
        return Err(RegistrationError::Quorum {
            needed: quorum,
            got: approvals.len(),
            refusals: refusals.join("\n  "),
        });
    }
    Ok((req, approvals, evidence))
}

/// A registration request of `key` in `role` at `endpoint`, on fresh evidence from `attester`
/// (checked here first: verifiers check it again).
fn fresh_request(
    key: &PrivateKeySigner,
    role: Role,
    endpoint: &str,
    attester: &dyn Attester,
    ohttp_key: Option<&[u8]>,
) -> Result<(RegistrationRequest, cairn_attest::Evidence), RegistrationError> {
    let me = key.address();
    let evidence = attester
        .evidence(&cairn_attest::report_data(me, ohttp_key))
        .map_err(|e| RegistrationError::Evidence(e.to_string()))?;
    let verified = cairn_attest::verify(
        &evidence,
        now_secs(),
        cairn_attest::Policy { allow_dev: true },
    )
    .map_err(|e| {
        RegistrationError::Evidence(format!("the attester's own evidence does not verify: {e}"))
    })?;
    let req = RegistrationRequest {
        node: me,
        role,
        endpoint: endpoint.to_string(),
        measurement: verified.measurement.0,
        evidence_digest: evidence.digest(),
        deadline: now_secs() + 300,
    };
    Ok((req, evidence))
}

/// POSTs `body` to `url` signed by `key`; the status and body, or why nothing came back.
async fn post_signed(
    http: &Fetcher,
    key: &PrivateKeySigner,
    url: &str,
    body: &[u8],
) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let parsed = http.check_url(url)?;
    let signed = cairn_core::auth::sign_url(key, "POST", url, body)
        .ok_or_else(|| format!("{url} is not an http(s) URL"))?;
    let mut r = http
        .client()
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    for (k, val) in signed.to_pairs() {
        r = r.header(k, val);
    }
    tokio::time::timeout(Duration::from_secs(30), http.send(url, r))
        .await
        .unwrap_or_else(|_| Err(format!("{url}: no answer within 30 s")))
}
