//! The client's side of private calls: seal requests to a gateway's key, send them through
//! a relay, open the answers; check the key against the node's attestation first.
//!
//! [`PrivateRoute::local_proxy`] serves the route on a loopback port, so any HTTP client (the
//! node client with its payments, the `openai` packages) makes private calls by pointing at it:
//! every request goes out sealed, in chunked OHTTP so streamed answers arrive as produced.

use std::net::SocketAddr;
use std::pin::Pin;

use alloy_primitives::{Address, B256};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_core::ErrorBody;
use cairn_ohttp::message::{self, Streamed, StreamedReader};
use cairn_ohttp::{KeyConfig, OhttpError};
use futures::{Stream, StreamExt};

/// Why a private call failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// The relay could not be reached or refused the request.
    #[error("the relay at {url}: {message}")]
    Relay {
        /// The relay resource.
        url: String,
        /// What it said.
        message: String,
    },
    /// The envelope did not open, or what was inside is not HTTP.
    #[error(transparent)]
    Ohttp(#[from] OhttpError),
    /// The gateway's key is not the one the node attested to.
    #[error("the gateway's key is not the node's attested one: {0}")]
    Key(String),
}

/// The largest answer read (a node keeps at most 256 MiB of outputs; JSON takes more).
const MAX_ANSWER_BYTES: usize = 1 << 30;

/// A gateway reached through a relay, with the key configuration requests are sealed to.
#[derive(Clone)]
pub struct PrivateRoute {
    http: reqwest::Client,
    url: String,
    config: KeyConfig,
}

/// A streamed answer: its status and headers, then its body as it is opened.
pub struct StreamedAnswer {
    /// The inner status.
    pub status: http::StatusCode,
    /// The inner headers.
    pub headers: http::HeaderMap,
    /// The inner body; ends with an error if the answer was cut before its final chunk.
    pub body: Pin<Box<dyn Stream<Item = Result<Bytes, PrivateError>> + Send>>,
}

impl PrivateRoute {
    /// The route to gateway `name` through the relay at `relay` (`http://…`), its key
    /// configuration fetched through the relay (so the gateway does not see the client's
    /// address even then).
    pub async fn open(relay: &str, name: &str) -> Result<Self, PrivateError> {
        let url = format!("{}/gateways/{name}", relay.trim_end_matches('/'));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| relay_error(&url, e))?;
        let resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| relay_error(&url, e))?;
        let bytes = checked(&url, resp, cairn_ohttp::KEYS_TYPE)
            .await?
            .bytes()
            .await;
        let bytes = bytes.map_err(|e| relay_error(&url, e))?;
        let config =
            KeyConfig::decode_list(&bytes)?
                .into_iter()
                .next()
                .ok_or(OhttpError::Suite(
                    "the gateway offers no key configuration Cairn speaks".into(),
                ))?;
        Ok(Self { http, url, config })
    }

    /// The key configuration requests are sealed to.
    pub fn key_config(&self) -> &KeyConfig {
        &self.config
    }

    /// Sends `req` as one `message/ohttp-req`; the answer as one `message/ohttp-res`.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, PrivateError> {
        let (sealed, opener) =
            cairn_ohttp::encapsulate(&self.config, &message::encode_request(&req))?;
        let resp = self
            .http
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, cairn_ohttp::REQUEST_TYPE)
            .body(sealed)
            .send()
            .await
            .map_err(|e| relay_error(&self.url, e))?;
        let mut resp = checked(&self.url, resp, cairn_ohttp::RESPONSE_TYPE).await?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| relay_error(&self.url, e))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                return Err(OhttpError::Chunk("an answer over 1 GiB").into());
            }
        }
        Ok(message::decode_response(&opener.open(&body)?)?)
    }

    /// Sends `req` in chunked OHTTP; the answer's head once it arrives, then its body piece
    /// by piece as the gateway seals it.
    pub async fn send_streamed(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<StreamedAnswer, PrivateError> {
        let (sealed, opener) =
            cairn_ohttp::encapsulate_chunked(&self.config, &message::encode_request(&req))?;
        let url = self.url.clone();
        let resp = self
            .http
            .post(&url)
            .header(
                http::header::CONTENT_TYPE,
                cairn_ohttp::CHUNKED_REQUEST_TYPE,
            )
            .body(sealed)
            .send()
            .await
            .map_err(|e| relay_error(&url, e))?;
        let resp = checked(&url, resp, cairn_ohttp::CHUNKED_RESPONSE_TYPE).await?;
        let mut pieces = Box::pin(opened(url, resp.bytes_stream(), opener));
        // The head comes first.
        let (status, headers) = loop {
            match pieces.next().await {
                Some(Ok(Streamed::Head(s, h))) => break (s, h),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(OhttpError::Truncated("the answer ended before its head").into());
                }
            }
        };
        let body = pieces.filter_map(|e| async move {
            match e {
                Ok(Streamed::Data(d)) => Some(Ok(d)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        });
        Ok(StreamedAnswer {
            status,
            headers,
            body: Box::pin(body),
        })
    }

    /// Serves this route on `127.0.0.1` (an OS-assigned port): each request it takes goes out
    /// sealed through the relay, its answer streamed back as it is opened. Bodies over
    /// `max_body` bytes are refused.
    pub async fn local_proxy(
        self,
        max_body: usize,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(move |req: http::Request<Body>| {
            let route = self.clone();
            async move { route.proxy(req, max_body).await }
        });
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            // A streamed answer is many small writes (see cairn_serve's listener).
            let _ = tcp.set_nodelay(true);
        });
        Ok((
            addr,
            tokio::spawn(async move { axum::serve(listener, app).await }),
        ))
    }

    async fn proxy(&self, req: http::Request<Body>, max_body: usize) -> Response {
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, max_body).await else {
            return error(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the private proxy sends bodies of at most {max_body} bytes"),
            );
        };
        let mut inner = http::Request::builder()
            .method(parts.method)
            .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        for (name, value) in &parts.headers {
            // Only what the call needs goes inside: a client's user agent, cookies, bearer
            // tokens or platform headers would let the node link its calls.
            if forwarded(name.as_str()) {
                inner = inner.header(name, value);
            }
        }
        // The request's date, by this machine's clock whatever the client said (a gateway
        // refuses stale requests, RFC 9458 §6.5; a client's own clock would tell it apart).
        inner = inner.header(
            http::header::DATE,
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        );
        let Ok(inner) = inner.body(body) else {
            return error(
                http::StatusCode::BAD_REQUEST,
                "bad_request",
                "not an HTTP request the proxy can seal".into(),
            );
        };
        match self.send_streamed(inner).await {
            Ok(a) => {
                let mut resp = Response::builder().status(a.status);
                for (name, value) in &a.headers {
                    if !matches!(
                        name.as_str(),
                        "content-length" | "transfer-encoding" | "connection"
                    ) {
                        resp = resp.header(name, value);
                    }
                }
                let body = a
                    .body
                    .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
                resp.body(Body::from_stream(body)).unwrap_or_else(|e| {
                    error(
                        http::StatusCode::BAD_GATEWAY,
                        "private_call_failed",
                        e.to_string(),
                    )
                })
            }
            Err(e) => error(
                http::StatusCode::BAD_GATEWAY,
                "private_call_failed",
                e.to_string(),
            ),
        }
    }
}

/// The request headers the proxy seals into a call (allow-list): the body's type and framing,
/// what answer is accepted, the x402 payment headers and Cairn's own. (The proxy adds a
/// `Date` of its own.)
fn forwarded(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "accept"
            | "inference-header-content-length"
            | "payment-signature"
            | "x-payment"
    ) || name.starts_with("cairn-")
}

fn error(status: http::StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
}

fn relay_error(url: &str, e: reqwest::Error) -> PrivateError {
    PrivateError::Relay {
        url: url.to_owned(),
        message: e.without_url().to_string(),
    }
}

/// The relay's answer if it is a success of the expected media type; else the error it (or
/// the gateway) gave, read from its JSON body.
async fn checked(
    url: &str,
    resp: reqwest::Response,
    media: &str,
) -> Result<reqwest::Response, PrivateError> {
    let ok_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(media));
    if resp.status().is_success() && ok_type {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.bytes().await.ok().and_then(|b| ErrorBody::parse(&b));
    Err(PrivateError::Relay {
        url: url.to_owned(),
        message: match body {
            Some(b) => format!("{status} {}: {}", b.code, b.message),
            None => format!("{status}, not {media}"),
        },
    })
}

/// The sealed answer's bytes opened and read as Binary HTTP, piece by piece; a stream that
/// ends before the final chunk or before the response's end is an error.
fn opened(
    url: String,
    bytes: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    opener: cairn_ohttp::ChunkedOpener,
) -> impl Stream<Item = Result<Streamed, PrivateError>> + Send {
    struct St<S> {
        bytes: Pin<Box<S>>,
        opener: Option<cairn_ohttp::ChunkedOpener>,
        reader: StreamedReader,
        ready: std::collections::VecDeque<Streamed>,
        url: String,
    }
    let st = St {
        bytes: Box::pin(bytes),
        opener: Some(opener),
        reader: StreamedReader::default(),
        ready: Default::default(),
        url,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.ready.pop_front() {
                return Some((Ok(e), st));
            }
            let opener = st.opener.as_mut()?;
            let plain = match st.bytes.next().await {
                Some(Ok(b)) => opener.push(&b),
                Some(Err(e)) => {
                    st.opener = None;
                    return Some((Err(relay_error(&st.url, e)), st));
                }
                // The stream ended: the final chunk must be there, and the answer whole.
                None => st
                    .opener
                    .take()
                    .expect("checked above")
                    .finish()
                    .and_then(|last| {
                        let events = st.reader.push(&last)?;
                        if !st.reader.is_done() {
                            return Err(OhttpError::Truncated("the answer's content"));
                        }
                        st.ready.extend(events);
                        Ok(Vec::new())
                    }),
            };
            match plain.and_then(|p| st.reader.push(&p)) {
                Ok(events) => st.ready.extend(events),
                Err(e) => {
                    st.opener = None;
                    return Some((Err(e.into()), st));
                }
            }
        }
    })
}

/// Checks `config` is the gateway key node `node` attested to: `evidence` verifies (under
/// `policy`, at `now`), its report data binds `node` and the configuration's hash, and, when
/// the registry's record is given, its digest is the one the registry holds for the node.
pub fn check_key(
    config: &KeyConfig,
    node: Address,
    evidence: &cairn_attest::Evidence,
    registered_digest: Option<B256>,
    now: u64,
    policy: cairn_attest::Policy,
) -> Result<(), PrivateError> {
    if let Some(d) = registered_digest
        && evidence.digest() != d
    {
        return Err(PrivateError::Key(format!(
            "the node's evidence is not the one the registry records for {node}"
        )));
    }
    let verified = cairn_attest::verify(evidence, now, policy)
        .map_err(|e| PrivateError::Key(e.to_string()))?;
    cairn_attest::check_binding(&verified, node, Some(config.encoded()))
        .map_err(|e| PrivateError::Key(e.to_string()))
}
