//! The node's Oblivious HTTP gateway (RFC 9458; RFC 9540's `/.well-known/ohttp-gateway`):
//! `GET` serves the key configuration, `POST` takes an encapsulated request, serves the Binary
//! HTTP request inside with the node's own routes (payments included: the x402 headers travel
//! inside) and seals the answer, whole (`message/ohttp-res`) or chunk by chunk as the inner
//! answer is produced (`message/ohttp-chunked-res`, for streams).
//!
//! The gateway sees what is asked, never who asks (a relay's address is all it gets), and logs
//! nothing of the plaintext.

use super::*;
use cairn_ohttp::message::{self, StreamedResponse};
use cairn_ohttp::{ChunkedSealer, KeyConfig, OhttpError};
use tower::ServiceExt;

/// Marks a request that came through the gateway: its payloads are kept sealed to the
/// verifiers ([`crate::sealing`]), never in plaintext.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Oblivious;

/// How a call's payloads are kept.
pub(crate) enum Keeping {
    /// As they are (a direct call).
    Plain,
    /// Sealed to these verifiers' keys (a private call; none: not kept, no verification).
    Sealed(Option<Arc<crate::sealing::Keys>>),
}

impl Keeping {
    /// Applies to `entry` before it is logged.
    pub(crate) fn apply(&self, entry: &mut crate::log::Entry) -> Result<(), NodeError> {
        let Keeping::Sealed(keys) = self else {
            return Ok(());
        };
        let recipients: Vec<cairn_ohttp::sealed::Recipient> = keys
            .iter()
            .flat_map(|k| k.keys.iter())
            .map(|(a, c)| cairn_ohttp::sealed::Recipient { id: a.0.0, key: c })
            .collect();
        entry
            .seal_payloads(&recipients)
            .map_err(|e| NodeError::Internal(format!("sealing the payloads: {e}")))
    }
}

impl NodeState {
    /// How a call is kept: a private one (`oblivious`) sealed to the verifiers, refused (503)
    /// when the node cannot seal to enough of them, since its receipt could then not be checked.
    pub(super) async fn keeping(&self, oblivious: bool) -> Result<Keeping, NodeError> {
        if !oblivious {
            return Ok(Keeping::Plain);
        }
        match &self.0.verifier_keys {
            None => Ok(Keeping::Sealed(None)),
            Some(v) => v
                .current()
                .await
                .map(|k| Keeping::Sealed(Some(k)))
                .map_err(NodeError::Overloaded),
        }
    }
}

/// Room for the Binary HTTP framing and the encapsulation around an inner body of `max` bytes:
/// headers, and a chunk's length and tag per 16 KiB.
fn envelope_overhead(max: usize) -> usize {
    (64 << 10) + max.div_ceil(cairn_ohttp::MAX_CHUNK) * 32
}

/// The gateway's routes, serving inner requests with `inner`.
pub(super) fn routes(state: NodeState, inner: Router) -> Router {
    let metrics = state.0.metrics.http.clone();
    Router::new()
        .route(cairn_ohttp::GATEWAY_PATH, get(keys).post(gateway))
        .with_state((state, inner))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            cairn_serve::metrics::track,
        ))
}

/// `GET /.well-known/ohttp-gateway`: the key configuration (`application/ohttp-keys`).
async fn keys(State((s, _)): State<(NodeState, Router)>) -> Response {
    (
        [
            (header::CONTENT_TYPE, cairn_ohttp::KEYS_TYPE),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        KeyConfig::encode_list(&[s.0.ohttp.config()]),
    )
        .into_response()
}

impl From<OhttpError> for NodeError {
    fn from(e: OhttpError) -> Self {
        NodeError::Ohttp {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// `POST /.well-known/ohttp-gateway`: an encapsulated request.
async fn gateway(
    State((s, inner)): State<(NodeState, Router)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    let i = &s.0;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let chunked = match media.as_deref() {
        Some(cairn_ohttp::REQUEST_TYPE) => false,
        Some(cairn_ohttp::CHUNKED_REQUEST_TYPE) => true,
        _ => {
            return Err(NodeError::UnsupportedMediaType(format!(
                "the gateway takes {} or {} bodies; seal the request to the key configuration at GET {}",
                cairn_ohttp::REQUEST_TYPE,
                cairn_ohttp::CHUNKED_REQUEST_TYPE,
                cairn_ohttp::GATEWAY_PATH
            )));
        }
    };
    let max = i.limits.max_body_bytes + envelope_overhead(i.limits.max_body_bytes);
    let (sealed, reading) = read_body(body, max, i.limits.body_timeout, &i.body_budget)
        .await
        .map_err(|e| read_error(e, i))?;
    // Opening costs an X25519 and a few hashes: refused bodies cost no more than that. The
    // envelope and its budget go before the inner request is served (which reads its body
    // against the budget again).
    if !chunked {
        let (plain, sealer) = i.ohttp.decapsulate(&sealed)?;
        drop((sealed, reading));
        let resp = serve_inner(inner, plain).await?;
        let (parts, body) = resp.into_parts();
        // A whole answer is held to be sealed: JSON tensors take a few times their bytes.
        let limit = i.limits.max_output_bytes.saturating_mul(4) + (1 << 20);
        let answer = match axum::body::to_bytes(body, limit).await {
            Ok(body) => message::encode_response(parts.status, &parts.headers, &body),
            // Said inside the envelope: the relay learns nothing of it.
            Err(e) => {
                let e = NodeError::Internal(format!(
                    "the answer could not be sealed whole ({e}); send the request as {} to have it streamed",
                    cairn_ohttp::CHUNKED_REQUEST_TYPE
                ))
                .into_response();
                let (parts, body) = e.into_parts();
                let body = axum::body::to_bytes(body, 1 << 16)
                    .await
                    .unwrap_or_default();
                message::encode_response(parts.status, &parts.headers, &body)
            }
        };
        return Ok((
            [
                (header::CONTENT_TYPE, cairn_ohttp::RESPONSE_TYPE),
                (header::CACHE_CONTROL, "no-store"),
            ],
            sealer.seal(&answer),
        )
            .into_response());
    }
    let (plain, sealer) = i.ohttp.decapsulate_chunked(&sealed)?;
    drop((sealed, reading));
    let resp = serve_inner(inner, plain).await?;
    let (parts, body) = resp.into_parts();
    let head = StreamedResponse::head(parts.status, &parts.headers);
    Ok((
        [
            (header::CONTENT_TYPE, cairn_ohttp::CHUNKED_RESPONSE_TYPE),
            (header::CACHE_CONTROL, "no-store"),
            (HeaderName::from_static("incremental"), "?1"),
        ],
        Body::from_stream(sealed_stream(sealer, head, body)),
    )
        .into_response())
}

/// Serves a Binary HTTP request with the node's routes. The inner request carries no client
/// address and no gateway route: an envelope inside an envelope is a 404.
async fn serve_inner(inner: Router, plain: Vec<u8>) -> Result<Response, NodeError> {
    let mut req = message::decode_request(&plain)?;
    drop(plain);
    req.extensions_mut().insert(Oblivious);
    let resp = inner
        .oneshot(req.map(Body::from))
        .await
        .unwrap_or_else(|e| match e {});
    Ok(resp)
}

/// The inner answer's head, then each piece of its body as it comes, sealed as chunks; the
/// final chunk closes it. A body that fails midway ends without a final chunk, which the
/// client reads as cut, never as whole.
fn sealed_stream(
    sealer: ChunkedSealer,
    head: Vec<u8>,
    body: Body,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    use http_body_util::BodyExt;
    enum St {
        Head(ChunkedSealer, Vec<u8>, Body),
        Body(ChunkedSealer, Body),
        Done,
    }
    futures::stream::unfold(St::Head(sealer, head, body), |st| async move {
        match st {
            St::Head(mut sealer, head, body) => {
                let mut out = Vec::new();
                for piece in head.chunks(cairn_ohttp::MAX_CHUNK) {
                    out.extend(sealer.chunk(piece));
                }
                Some((Ok(Bytes::from(out)), St::Body(sealer, body)))
            }
            St::Body(mut sealer, mut body) => loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        // Each piece is framed (≤ 8 bytes) then sealed in one chunk.
                        let mut out = Vec::new();
                        for piece in data.chunks(cairn_ohttp::MAX_CHUNK - 8) {
                            out.extend(sealer.chunk(&StreamedResponse::content(piece)));
                        }
                        return Some((Ok(Bytes::from(out)), St::Body(sealer, body)));
                    }
                    Some(Err(e)) => {
                        return Some((Err(std::io::Error::other(e.to_string())), St::Done));
                    }
                    None => {
                        let out = sealer.finish(&StreamedResponse::end());
                        return Some((Ok(Bytes::from(out)), St::Done));
                    }
                }
            },
            St::Done => None,
        }
    })
}
