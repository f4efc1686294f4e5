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
    let Some(chunked) = cairn_relay::gateway::chunked(&headers) else {
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the gateway takes {} or {} bodies",
                cairn_ohttp::REQUEST_TYPE,
                cairn_ohttp::CHUNKED_REQUEST_TYPE
            ),
        );
    };
    // The verifier's routes take bodies of at most 1 MiB.
    let max = (1 << 20) + cairn_relay::gateway::envelope_overhead(1 << 20);
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        axum::body::to_bytes(body, max),
    )
    .await;
    let sealed = match read {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("a sealed request here is at most {max} bytes"),
            );
        }
        Err(_) => {
            return fail(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request did not arrive within 10 s".into(),
            );
        }
    };
    match cairn_relay::gateway::serve(&v.0.gateway_key, inner, sealed, chunked, 64 << 20).await {
        Ok(r) => r,
        Err(e) => fail(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    }
}
