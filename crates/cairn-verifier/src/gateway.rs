//! The verifier's Oblivious HTTP gateway ([`cairn_relay::gateway`] in front of its own
//! routes): what a client asks of verdicts stays between it and the verifier, the relay sees
//! only who asks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, extract::State};
use cairn_core::ErrorBody;

use crate::Verifier;

/// `GET` and `POST /.well-known/ohttp-gateway`, serving inner requests with `inner`.
pub(crate) fn routes(v: Verifier, inner: Router) -> Router {
    Router::new()
        .route(cairn_ohttp::GATEWAY_PATH, get(gateway_keys).post(gateway))
        .with_state((v, inner))
}

/// `GET /.well-known/ohttp-gateway`: the verifier's gateway key configuration.
async fn gateway_keys(State((v, _)): State<(Verifier, Router)>) -> Response {
    cairn_relay::gateway::keys(&v.0.gateway_key)
}

/// `POST /.well-known/ohttp-gateway`: a sealed request to this verifier's own routes (what a
/// client asks of verdicts stays between it and the verifier, the relay sees only who asks).
async fn gateway(
    State((v, inner)): State<(Verifier, Router)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let fail = |status: StatusCode, code: &str, message: String| {
        (status, Json(ErrorBody::new(code, message))).into_response()
    };
    // The verifier's routes take bodies of at most 1 MiB.
    let (sealed, chunked) = match cairn_relay::gateway::read_sealed(&headers, body, 1 << 20).await {
        Ok(read) => read,
        Err(e) => return fail(e.status, e.code, e.message),
    };
    match cairn_relay::gateway::serve(&v.0.gateway_key, inner, sealed, chunked, 64 << 20).await {
        Ok(r) => r,
        Err(e) => fail(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    }
}
