//! The verifier's HTTP API: its verdicts, fraud confirmations for peers, and registration
//! approvals. Errors are JSON `{code, message}`.

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_core::ErrorBody;
use cairn_ledger::RegistrationRequest;
use cairn_serve::metrics::{EncodeLabelSet, Family, Gauge, Metrics, Recounted, track};
use cairn_verifier_api::{
    BatchVerdict, ChallengeAnswer, ChallengeRequest, FraudsOnly, ReceiptVerdicts,
    RegistrationApproval, RegistrationBody, VerdictList, VerifierInfo,
};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::OpenApi;

use crate::{Verifier, VerifyError};

impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            VerifyError::BadRequest { code, .. } => {
                let status = match *code {
                    "claim_refuted" | "too_early" | "batch_closed" => StatusCode::CONFLICT,
                    "chain_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                (status, *code)
            }
            VerifyError::Unauthorized { code, .. } => (
                if *code == "forbidden" {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::UNAUTHORIZED
                },
                *code,
            ),
            VerifyError::Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "batch_refused"),
            VerifyError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            VerifyError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        (status, Json(ErrorBody::new(code, self.to_string()))).into_response()
    }
}

fn not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody::new("not_found", what)),
    )
        .into_response()
}

/// The routes: `GET /v1/verifier`, `GET /v1/verdicts?limit=`, `GET /v1/verdicts/batches/{id}`,
/// `GET /v1/verdicts/receipts/{requestId}`, `POST /v1/challenges`, `POST /v1/registrations`.
pub fn router(v: Verifier) -> Router {
    let m = Arc::new(VerifierMetrics::new());
    let routes = routes(v.clone(), &m);
    let gateway = crate::gateway::routes(v, routes.clone())
        .layer(axum::middleware::from_fn_with_state(m.http.clone(), track));
    routes.merge(gateway)
}

/// Every route but the gateway's.
fn routes(v: Verifier, m: &Arc<VerifierMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/verifier", get(info))
        .route("/v1/verdicts", get(recent))
        .route("/v1/verdicts/batches/{id}", get(batch))
        .route("/v1/verdicts/receipts/{id}", get(receipt))
        .route("/v1/challenges", post(challenge))
        .route("/v1/registrations", post(registration))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(v)
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .layer(axum::middleware::from_fn_with_state(m.http.clone(), track))
        .layer(axum::Extension(m.clone()))
}

/// The verifier's metric families.
struct VerifierMetrics {
    http: Arc<Metrics>,
    batches: Family<OutcomeLabel, Gauge>,
    samples: Family<OutcomeLabel, Gauge>,
    /// Read from the verdict store (two grouped counts over every verdict kept) at most every
    /// 15 s, off the async workers: scrapes in a loop cost one recount per period.
    recounted: Recounted<(crate::store::Counts, crate::store::Counts)>,
}

impl VerifierMetrics {
    fn new() -> Self {
        let mut m = Metrics::new("cairn_verifier");
        let batches = Family::<OutcomeLabel, Gauge>::default();
        m.registry().register(
            "batch_verdicts",
            "Batches this verifier holds a verdict on, by outcome",
            batches.clone(),
        );
        let samples = Family::<OutcomeLabel, Gauge>::default();
        m.registry().register(
            "samples",
            "Sampled receipts this verifier checked, by outcome",
            samples.clone(),
        );
        Self {
            http: Arc::new(m),
            batches,
            samples,
            recounted: Recounted::new(std::time::Duration::from_secs(15)),
        }
    }
}

#[utoipa::path(get, path = "/metrics",
    description = "Prometheus metrics (OpenMetrics text): requests by route template, method and status, batch verdicts and samples by outcome.",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics(
    State(v): State<Verifier>,
    axum::Extension(m): axum::Extension<Arc<VerifierMetrics>>,
) -> Response {
    let counts = m
        .recounted
        .get(|| async {
            tokio::task::spawn_blocking(move || v.0.store.counts().ok())
                .await
                .ok()
                .flatten()
                .ok_or(())
        })
        .await;
    if let Ok((b, s)) = counts {
        for (family, counts) in [(&m.batches, b), (&m.samples, s)] {
            family.clear();
            for (outcome, n) in counts {
                family
                    .get_or_create(&OutcomeLabel { outcome })
                    .set(n as i64);
            }
        }
    }
    m.http.response()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The OpenAPI description of the verifier's routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn verifier",
        description = "A verifier's verdicts on receipt batches, fraud confirmations for its peers and registration \
        approvals. `/v1/challenges` hears only requests signed by an active verifier, `/v1/registrations` only the \
        registering node's own key (`cairn-*` signed-request headers, host-bound). Every error is JSON {code, message}."
    ),
    paths(health, info, recent, batch, receipt, challenge, registration, metrics),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/health", responses((status = 200, body = String, description = "`ok`")))]
async fn health() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/v1/verifier", responses((status = 200, body = VerifierInfo)))]
async fn info(State(v): State<Verifier>) -> Json<VerifierInfo> {
    Json(v.info())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Limit {
    /// How many (default 50, at most 500).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/verdicts", params(Limit), responses((status = 200, body = VerdictList)))]
async fn recent(
    State(v): State<Verifier>,
    Query(q): Query<Limit>,
) -> Result<Json<VerdictList>, VerifyError> {
    let verdicts = v.store().recent(q.limit.unwrap_or(50).min(500))?;
    Ok(Json(VerdictList { verdicts }))
}

#[utoipa::path(get, path = "/v1/verdicts/batches/{id}", params(("id" = u64, Path, description = "the batch's id on chain")),
    responses((status = 200, body = BatchVerdict, description = "the verdict with every fraud signed on the batch (or only the frauds, `FraudsOnly`, when this verifier signed one for a peer)"),
              (status = 404, body = ErrorBody)))]
async fn batch(State(v): State<Verifier>, Path(id): Path<u64>) -> Result<Response, VerifyError> {
    match v.store().batch(id)? {
        Some(mut b) => {
            b.frauds = Some(v.store().frauds(id)?);
            Ok(Json(b).into_response())
        }
        None => {
            let frauds = v.store().frauds(id)?;
            if frauds.is_empty() {
                Ok(not_found(format!(
                    "no verdict on batch {id} (not seen yet, or not this deployment's)"
                )))
            } else {
                Ok(Json(FraudsOnly {
                    batch_id: id,
                    frauds,
                })
                .into_response())
            }
        }
    }
}

#[utoipa::path(get, path = "/v1/verdicts/receipts/{id}", params(("id" = String, Path, description = "the receipt's request id")),
    responses((status = 200, body = ReceiptVerdicts), (status = 404, body = ErrorBody)))]
async fn receipt(
    State(v): State<Verifier>,
    Path(id): Path<String>,
) -> Result<Response, VerifyError> {
    let found = v.store().receipt(&id)?;
    if found.is_empty() {
        return Ok(not_found(format!(
            "receipt {id} was not sampled by this verifier (or its batch is not checked yet)"
        )));
    }
    Ok(Json(ReceiptVerdicts {
        request_id: id,
        verdicts: found,
    })
    .into_response())
}

/// The headers and signer of a signed request (401 when it is missing or does not verify).
fn signer(
    v: &Verifier,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<(cairn_core::auth::SignedHeaders, alloy_primitives::Address), VerifyError> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    v.authenticate(
        |name| headers.get(name).and_then(|h| h.to_str().ok()),
        host,
        method.as_str(),
        target,
        body,
    )
}

/// `POST /v1/challenges`: only active verifiers are heard (a signed request), so nobody else
/// can make this verifier re-execute anything or obtain its signature.
#[utoipa::path(post, path = "/v1/challenges", request_body = ChallengeRequest,
    responses((status = 200, body = ChallengeAnswer), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, description = "claim_refuted, too_early or batch_closed", body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn challenge(
    State(v): State<Verifier>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ChallengeAnswer>, VerifyError> {
    let (signed, caller) = signer(&v, &method, &uri, &headers, &body)?;
    if !v.is_active_verifier(caller).await? {
        return Err(VerifyError::Unauthorized {
            code: "forbidden",
            reason: format!(
                "{caller} is not an active verifier; only verifiers ask for fraud confirmations"
            ),
        });
    }
    v.replay(&signed, true)?;
    let req: ChallengeRequest =
        serde_json::from_slice(&body).map_err(|e| VerifyError::BadRequest {
            code: "invalid_request",
            reason: format!("{e}: send {{batchId, receipt, proof, claim}}"),
        })?;
    Ok(Json(
        v.confirm_fraud(
            req.batch_id,
            &req.receipt,
            req.proof,
            &req.claim,
            &req.payload_keys,
        )
        .await?,
    ))
}

/// `POST /v1/registrations`: signed by the registering node's own key (it proves it holds the
/// key its evidence binds before any evidence is checked).
#[utoipa::path(post, path = "/v1/registrations", request_body = RegistrationBody,
    responses((status = 200, body = RegistrationApproval), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn registration(
    State(v): State<Verifier>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<RegistrationApproval>, VerifyError> {
    let (signed, caller) = signer(&v, &method, &uri, &headers, &body)?;
    let bad = |reason: String| VerifyError::BadRequest {
        code: "invalid_request",
        reason,
    };
    let b: RegistrationBody = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "{e}: send {{node, role, endpoint, measurement, evidenceDigest, deadline, evidence}}"
        ))
    })?;
    if caller != b.node {
        return Err(VerifyError::Unauthorized {
            code: "forbidden",
            reason: format!(
                "the request is signed by {caller}, not by the registering node {}",
                b.node
            ),
        });
    }
    v.replay(&signed, false)?;
    let req = RegistrationRequest {
        node: b.node,
        role: b.role.parse().map_err(bad)?,
        endpoint: b.endpoint,
        measurement: b.measurement,
        evidence_digest: b.evidence_digest,
        deadline: b.deadline,
    };
    let (sig, verified) = v.approve_registration(&req, &b.evidence).await?;
    Ok(Json(RegistrationApproval {
        verifier: v.address(),
        signature: sig.to_string(),
        verified,
    }))
}
