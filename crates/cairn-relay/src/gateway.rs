//! An Oblivious HTTP gateway in front of any axum router (RFC 9458; RFC 9540's
//! `/.well-known/ohttp-gateway`): opens an encapsulated request, serves the Binary HTTP
//! request inside with the router, and seals the answer, whole (`message/ohttp-res`) or chunk
//! by chunk as the inner answer is produced (`message/ohttp-chunked-res`). Nodes and verifiers
//! put it in front of their own routes; reading the envelope (size, time, memory) is theirs.
//!
//! The gateway sees what is asked, never who asks, and logs nothing of the plaintext.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_ohttp::message::{self, StreamedResponse};
use cairn_ohttp::{ChunkedSealer, GatewayKey, KeyConfig, OhttpError};
use tower::ServiceExt;

/// Marks a request that came through a gateway (a request extension only [`serve`] sets).
#[derive(Clone, Copy, Debug)]
pub struct Oblivious {
    /// The envelope's header and encapsulated key: fresh for every sealing and bound to the
    /// rest (no other opens it), so a gateway that takes each request once remembers these.
    pub encapsulation: [u8; ENCAPSULATION],
}

/// The length of an envelope's header and encapsulated key (X25519).
pub const ENCAPSULATION: usize = 7 + 32;

/// `GET /.well-known/ohttp-gateway`: the key configuration (`application/ohttp-keys`).
pub fn keys(key: &GatewayKey) -> Response {
    (
        [
            (header::CONTENT_TYPE, cairn_ohttp::KEYS_TYPE),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        KeyConfig::encode_list(&[key.config()]),
    )
        .into_response()
}

/// Whether a POST's media type is a chunked request (`Some(true)`), a whole one, or neither.
pub fn chunked(headers: &HeaderMap) -> Option<bool> {
    let media = headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        cairn_ohttp::REQUEST_TYPE => Some(false),
        cairn_ohttp::CHUNKED_REQUEST_TYPE => Some(true),
        _ => None,
    }
}

/// Why a sealed request was not read: the status, a machine code and a human message.
#[derive(Debug)]
pub struct Unread {
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// The machine code.
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
}

/// Reads a POSTed sealed request whose inner body is at most `max_inner` bytes, within 10 s
/// (a slow sender holds nothing longer): the envelope and whether it is chunked. For gateways
/// that hold the whole envelope in memory (the node reads its own within its body budget).
pub async fn read_sealed(
    headers: &HeaderMap,
    body: Body,
    max_inner: usize,
) -> Result<(Bytes, bool), Unread> {
    let Some(chunked) = chunked(headers) else {
        return Err(Unread {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: format!(
                "the gateway takes {} or {} bodies",
                cairn_ohttp::REQUEST_TYPE,
                cairn_ohttp::CHUNKED_REQUEST_TYPE
            ),
        });
    };
    let max = max_inner + envelope_overhead(max_inner);
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        axum::body::to_bytes(body, max),
    )
    .await;
    match read {
        Ok(Ok(b)) => Ok((b, chunked)),
        Ok(Err(_)) => Err(Unread {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            message: format!("a sealed request here is at most {max} bytes"),
        }),
        Err(_) => Err(Unread {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            message: "the request did not arrive within 10 s".into(),
        }),
    }
}

/// Room for the Binary HTTP framing and the encapsulation around an inner body of `max` bytes:
/// headers, and a chunk's length and tag per 16 KiB.
pub fn envelope_overhead(max: usize) -> usize {
    (64 << 10) + max.div_ceil(cairn_ohttp::MAX_CHUNK) * 32
}

/// Serves the sealed request `sealed` with `inner` and seals its answer (a whole answer held up
/// to `answer_limit` bytes; past that, an error sealed in its place). The envelope is dropped
/// before the inner request is served.
pub async fn serve(
    key: &GatewayKey,
    inner: Router,
    sealed: Bytes,
    chunked: bool,
    answer_limit: usize,
) -> Result<Response, OhttpError> {
    if !chunked {
        let (plain, sealer) = key.decapsulate(&sealed)?;
        let mark = oblivious(&sealed);
        drop(sealed);
        let resp = serve_inner(inner, plain, mark).await?;
        let (parts, body) = resp.into_parts();
        let answer = match axum::body::to_bytes(body, answer_limit).await {
            Ok(body) => message::encode_response(parts.status, &parts.headers, &body),
            // Said inside the envelope: the relay learns nothing of it.
            Err(e) => {
                let body = serde_json::to_vec(&cairn_core::ErrorBody::new(
                    "answer_too_large",
                    format!(
                        "the answer could not be sealed whole ({e}); send the request as {} to have it streamed",
                        cairn_ohttp::CHUNKED_REQUEST_TYPE
                    ),
                ))
                .expect("serializes");
                let mut h = HeaderMap::new();
                h.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                message::encode_response(StatusCode::INTERNAL_SERVER_ERROR, &h, &body)
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
    let (plain, sealer) = key.decapsulate_chunked(&sealed)?;
    let mark = oblivious(&sealed);
    drop(sealed);
    let resp = serve_inner(inner, plain, mark).await?;
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

/// The mark of a request that opened (so at least a header and a key long).
fn oblivious(sealed: &[u8]) -> Oblivious {
    let mut encapsulation = [0; ENCAPSULATION];
    let n = sealed.len().min(ENCAPSULATION);
    encapsulation[..n].copy_from_slice(&sealed[..n]);
    Oblivious { encapsulation }
}

/// Serves a Binary HTTP request with `inner`. The inner request carries no client address and
/// is marked [`Oblivious`].
async fn serve_inner(
    inner: Router,
    plain: Vec<u8>,
    mark: Oblivious,
) -> Result<Response, OhttpError> {
    let mut req = message::decode_request(&plain)?;
    drop(plain);
    req.extensions_mut().insert(mark);
    Ok(inner
        .oneshot(req.map(Body::from))
        .await
        .unwrap_or_else(|e| match e {}))
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
