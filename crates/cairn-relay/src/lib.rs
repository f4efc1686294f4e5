//! The Oblivious HTTP relay (RFC 9458 §6.1): clients POST sealed requests here, the relay
//! forwards each to the gateway it names and streams the sealed answer back.
//!
//! What the relay may and may not do, and how this one keeps to it:
//! - It sees who sends (the client's address) and never what: bodies are sealed to the
//!   gateway, and the relay passes them through as they stream, keeping none.
//! - The gateway must not learn who sends: only the body, its media type and its length go on;
//!   no client header is forwarded, none is added (no `Forwarded`, no `Via`).
//! - It forwards only to the gateways it is configured for (no open proxy), only the OHTTP
//!   media types, bodies of bounded size, and a bounded number of requests at once, overall
//!   and per client address (an IPv4 address, an IPv6 /64), each within a deadline; one
//!   client holds at most its share of the memory for requests being read and sent on.
//! - `GET /gateways` names the gateways and nothing else (where the relay reaches them may be
//!   inside its operator's network).
//! - Key configurations (`GET`) are fetched through it too, so even that fetch does not show
//!   the client's address to the gateway.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_core::ErrorBody;
use futures::StreamExt;

pub mod client;
pub mod gateway;

/// A gateway the relay forwards to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Gateway {
    /// The name clients address it by (`POST /gateways/{name}`).
    pub name: String,
    /// The gateway's resource, e.g. `http://127.0.0.1:7401/.well-known/ohttp-gateway`.
    pub url: String,
    /// Reached only at public addresses, through [`RelayConfig::public_http`] (a registered
    /// node's endpoint, which its node chose: it must not make the relay reach the network it
    /// runs in). Listed by name only, as every gateway is.
    #[serde(default, skip)]
    pub public_only: bool,
}

/// The relay's bounds.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The gateways it forwards to.
    pub gateways: Vec<Gateway>,
    /// Largest sealed request body.
    pub max_body_bytes: usize,
    /// Requests forwarded at once, over all clients.
    pub max_in_flight: usize,
    /// Requests forwarded at once for one client address.
    pub max_per_client: usize,
    /// How long a gateway may take to start answering, and to send each next piece.
    pub gateway_timeout: Duration,
    /// Longest a client may take to send its sealed request.
    pub body_timeout: Duration,
    /// Longest a forwarded request may take, from sending it on to the answer's last byte (a
    /// gateway trickling its answer holds a slot no longer).
    pub answer_timeout: Duration,
    /// Memory for sealed requests being held at once, over all clients.
    pub body_budget_bytes: usize,
    /// The most of that memory one client address holds at once (at least one largest body).
    pub body_budget_per_client_bytes: usize,
    /// Requests a second one client address may send (bursts of twice that).
    pub max_rate_per_client: f64,
    /// The client for [`Gateway::public_only`] gateways: one whose resolver yields public
    /// addresses only. Without it such gateways are refused.
    pub public_http: Option<reqwest::Client>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            gateways: Vec::new(),
            max_body_bytes: (64 << 20) + (64 << 10),
            max_in_flight: 256,
            max_per_client: 16,
            gateway_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(600),
            body_budget_bytes: 256 << 20,
            body_budget_per_client_bytes: (64 << 20) + (64 << 10),
            max_rate_per_client: 50.0,
            public_http: None,
        }
    }
}

/// Why the relay did not forward a request.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay is configured for no gateway of that name.
    #[error("this relay forwards to no gateway named {0:?}; GET /gateways lists them")]
    UnknownGateway(String),
    /// Not an OHTTP media type.
    #[error("the relay forwards only {0} bodies")]
    MediaType(String),
    /// Body over the bound.
    #[error("the sealed request is over {0} bytes")]
    TooLarge(usize),
    /// Too many requests at once from this client or overall.
    #[error("{0}; retry in a moment")]
    Busy(String),
    /// The gateway could not be reached or failed.
    #[error("the gateway did not answer: {0}")]
    Gateway(String),
    /// The request did not arrive within the body deadline.
    #[error("the request did not arrive within {0:?}; send it at once")]
    Slow(Duration),
}

impl RelayError {
    fn status(&self) -> StatusCode {
        match self {
            Self::UnknownGateway(_) => StatusCode::NOT_FOUND,
            Self::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Gateway(_) => StatusCode::BAD_GATEWAY,
            Self::Slow(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::UnknownGateway(_) => "unknown_gateway",
            Self::MediaType(_) => "unsupported_media_type",
            Self::TooLarge(_) => "body_too_large",
            Self::Busy(_) => "relay_busy",
            Self::Gateway(_) => "gateway_unavailable",
            Self::Slow(_) => "request_timeout",
        }
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status(),
            axum::Json(ErrorBody::new(self.code(), self.to_string())),
        )
            .into_response();
        if matches!(self, Self::Busy(_)) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

struct Inner {
    config: RelayConfig,
    /// Name → gateway resource; replaced whole when the registry's list is read again.
    gateways: std::sync::RwLock<Arc<Vec<Gateway>>>,
    /// Per client: tokens left and when they were last counted.
    rates: Mutex<HashMap<IpAddr, (f64, std::time::Instant)>>,
    http: reqwest::Client,
    in_flight: Arc<tokio::sync::Semaphore>,
    per_client: Mutex<HashMap<IpAddr, ClientUse>>,
    /// Sealed request bytes held, in KiB permits.
    body_budget: Arc<tokio::sync::Semaphore>,
}

/// The relay's state.
#[derive(Clone)]
pub struct Relay(Arc<Inner>);

/// What one client address holds.
#[derive(Default)]
struct ClientUse {
    /// Requests in flight.
    slots: usize,
    /// KiB of the body budget its requests hold.
    body_kib: usize,
}

/// A request slot held for one client until its answer has been streamed.
struct Slot {
    relay: Relay,
    ip: IpAddr,
    /// KiB of the body budget this request holds (counted against its client's share).
    body_kib: usize,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Slot {
    /// Counts `kib` more of the body budget against the client's share, if it has room.
    fn hold_body(&mut self, kib: usize) -> Result<(), RelayError> {
        let share = (self.relay.0.config.body_budget_per_client_bytes)
            .max(self.relay.0.config.max_body_bytes)
            .div_ceil(1024);
        let mut m = self.relay.0.per_client.lock().expect("not poisoned");
        let c = m.entry(self.ip).or_default();
        if c.body_kib + kib > share {
            return Err(RelayError::Busy(
                "this address's requests hold all the memory one client may have; send the next once they have gone on".into(),
            ));
        }
        c.body_kib += kib;
        self.body_kib += kib;
        Ok(())
    }

    /// Gives the body budget counted with [`Slot::hold_body`] back (the gateway has begun to
    /// answer).
    fn release_body(&mut self) {
        let mut m = self.relay.0.per_client.lock().expect("not poisoned");
        if let Some(c) = m.get_mut(&self.ip) {
            c.body_kib -= self.body_kib;
        }
        self.body_kib = 0;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_body();
        let mut m = self.relay.0.per_client.lock().expect("not poisoned");
        if let Some(c) = m.get_mut(&self.ip) {
            c.slots -= 1;
            if c.slots == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Relay {
    /// A relay for `config`'s gateways.
    pub fn new(config: RelayConfig) -> Result<Self, RelayError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(config.gateway_timeout)
            .build()
            .map_err(|e| RelayError::Gateway(e.to_string()))?;
        let gateways = std::sync::RwLock::new(Arc::new(config.gateways.clone()));
        Ok(Self(Arc::new(Inner {
            rates: Mutex::new(HashMap::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                (config.body_budget_bytes / 1024).max(1),
            )),
            config,
            gateways,
            http,
            per_client: Mutex::new(HashMap::new()),
        })))
    }

    /// The relay's routes: `GET /gateways`, and per gateway `GET` (its key configurations)
    /// and `POST` (a sealed request) at `/gateways/{name}`; `GET /metrics` counts requests by
    /// route template and status only (never by gateway or client: the relay's counters must
    /// not tell an onlooker who talks to which node).
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/gateways", get(list))
            .route("/gateways/{name}", get(keys).post(forward))
            .with_state(self.clone());
        cairn_serve::metrics::serve(
            routes,
            Arc::new(cairn_serve::metrics::Metrics::new("cairn_relay")),
        )
    }

    /// Replaces the gateways forwarded to (a registry's active nodes, read again).
    pub fn set_gateways(&self, gateways: Vec<Gateway>) {
        *self.0.gateways.write().expect("not poisoned") = Arc::new(gateways);
    }

    /// The gateways forwarded to.
    pub fn gateways(&self) -> Arc<Vec<Gateway>> {
        self.0.gateways.read().expect("not poisoned").clone()
    }

    /// The gateway named `name`: its URL and the client that may reach it.
    fn gateway(&self, name: &str) -> Result<(String, reqwest::Client), RelayError> {
        let g = self
            .gateways()
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(name))
            .cloned()
            .ok_or_else(|| RelayError::UnknownGateway(name.chars().take(64).collect()))?;
        let http = if g.public_only {
            self.0.config.public_http.clone().ok_or_else(|| {
                RelayError::Gateway("this relay has no client for registered gateways".into())
            })?
        } else {
            self.0.http.clone()
        };
        Ok((g.url, http))
    }

    /// Takes one request from `ip`'s allowance (a token bucket: `max_rate_per_client` a
    /// second, bursts of twice that).
    fn rate(&self, ip: IpAddr) -> Result<(), RelayError> {
        let rate = self.0.config.max_rate_per_client;
        let burst = rate * 2.0;
        let now = std::time::Instant::now();
        let mut m = self.0.rates.lock().expect("not poisoned");
        if m.len() > 100_000 {
            // Forget the clients whose bucket has filled again: they hold nothing back.
            m.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = m.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + (now - *at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return Err(RelayError::Busy(format!(
                "more than {rate} requests a second from this address"
            )));
        }
        *tokens -= 1.0;
        Ok(())
    }

    fn slot(&self, ip: IpAddr) -> Result<Slot, RelayError> {
        let ip = client_of(ip);
        self.rate(ip)?;
        let permit = self
            .0
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| RelayError::Busy("the relay is forwarding all it can".into()))?;
        let mut m = self.0.per_client.lock().expect("not poisoned");
        let c = m.entry(ip).or_default();
        if c.slots >= self.0.config.max_per_client {
            return Err(RelayError::Busy(format!(
                "{} requests from this address are in flight already",
                self.0.config.max_per_client
            )));
        }
        c.slots += 1;
        Ok(Slot {
            relay: self.clone(),
            ip,
            body_kib: 0,
            _permit: permit,
        })
    }
}

/// Whom a request counts against: its IPv4 address, or its IPv6 /64 (one host holds a /64,
/// so counting single IPv6 addresses would be no bound).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A gateway as `GET /gateways` lists it: its name only (where the relay reaches it is the
/// operator's business, and may be inside its network).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    /// The name clients address it by.
    pub name: String,
}

/// `GET /gateways`: the gateways this relay forwards to, by name.
async fn list(State(r): State<Relay>) -> axum::Json<Vec<Listed>> {
    axum::Json(
        r.gateways()
            .iter()
            .map(|g| Listed {
                name: g.name.clone(),
            })
            .collect(),
    )
}

/// `GET /gateways/{name}`: the gateway's key configurations, fetched for the client.
async fn keys(
    State(r): State<Relay>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Result<Response, RelayError> {
    let (url, http) = r.gateway(&name)?;
    let slot = r.slot(peer.ip())?;
    let deadline = tokio::time::Instant::now() + r.0.config.answer_timeout;
    let resp = sent(&r, deadline, http.get(&url)).await?;
    pass_back(resp, slot, cairn_ohttp::KEYS_TYPE, deadline).await
}

/// `POST /gateways/{name}`: forwards a sealed request, streams the sealed answer back.
async fn forward(
    State(r): State<Relay>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RelayError> {
    let (url, http) = r.gateway(&name)?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(essence);
    let (media, answer_type) = match media.as_deref() {
        Some(m @ cairn_ohttp::REQUEST_TYPE) => (m.to_owned(), cairn_ohttp::RESPONSE_TYPE),
        Some(m @ cairn_ohttp::CHUNKED_REQUEST_TYPE) => {
            (m.to_owned(), cairn_ohttp::CHUNKED_RESPONSE_TYPE)
        }
        _ => {
            return Err(RelayError::MediaType(format!(
                "{} and {}",
                cairn_ohttp::REQUEST_TYPE,
                cairn_ohttp::CHUNKED_REQUEST_TYPE
            )));
        }
    };
    let max = r.0.config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(RelayError::TooLarge(max));
    }
    let mut slot = r.slot(peer.ip())?;
    // The request is read whole (bounded in size, time and shared memory) before it goes on,
    // so a slow client holds a slot for a while, never a connection to the gateway.
    let (sealed, held) = read_body(&r, &mut slot, body, max).await?;
    let deadline = tokio::time::Instant::now() + r.0.config.answer_timeout;
    let resp = sent(
        &r,
        deadline,
        http.post(&url)
            .header(header::CONTENT_TYPE, media)
            .body(sealed),
    )
    .await?;
    drop(held);
    slot.release_body();
    pass_back(resp, slot, answer_type, deadline).await
}

/// `req` sent to a gateway, its answer's head in by `deadline` and within the gateway timeout
/// (until then the sealed request's memory is held).
async fn sent(
    r: &Relay,
    deadline: tokio::time::Instant,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, RelayError> {
    let head = deadline.min(tokio::time::Instant::now() + r.0.config.gateway_timeout);
    tokio::time::timeout_at(head, req.send())
        .await
        .map_err(|_| RelayError::Gateway("it did not start answering in time".into()))?
        .map_err(|e| RelayError::Gateway(e.without_url().to_string()))
}

/// Reads a sealed request of at most `max` bytes within the body deadline, holding budget for
/// its bytes as they arrive (the relay's and its client's share); the caller gives it back once
/// the gateway has begun to answer (its bytes are surely written by then).
async fn read_body(
    r: &Relay,
    slot: &mut Slot,
    body: Body,
    max: usize,
) -> Result<(bytes::Bytes, Option<tokio::sync::OwnedSemaphorePermit>), RelayError> {
    use http_body_util::BodyExt;
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| RelayError::Gateway(format!("reading the request: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(RelayError::TooLarge(max));
            }
            buf.extend_from_slice(&data);
            let want = buf.len().div_ceil(1024) as u32;
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
            if want > have {
                slot.hold_body((want - have) as usize)?;
                let more =
                    r.0.body_budget
                        .clone()
                        .try_acquire_many_owned(want - have)
                        .map_err(|_| {
                            RelayError::Busy(
                                "the relay holds all the requests it has memory for".into(),
                            )
                        })?;
                match held.as_mut() {
                    Some(h) => h.merge(more),
                    None => held = Some(more),
                }
            }
        }
        Ok((bytes::Bytes::from(buf), held))
    };
    tokio::time::timeout(r.0.config.body_timeout, read)
        .await
        .map_err(|_| RelayError::Slow(r.0.config.body_timeout))?
}

/// The gateway's answer, streamed back with only its status, media type and (for chunked
/// answers) `Incremental`; the slot is held until the last byte has gone.
async fn pass_back(
    resp: reqwest::Response,
    slot: Slot,
    expected: &'static str,
    deadline: tokio::time::Instant,
) -> Result<Response, RelayError> {
    let status = resp.status();
    let media = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| header::HeaderValue::from_static("application/octet-stream"));
    // Only a gateway's sealed answer (or key configurations) is passed on: whatever else
    // answered at that URL is not shown through the relay's origin.
    let essence = essence(media.to_str().unwrap_or(""));
    if essence != expected {
        // A gateway's own refusal ({code, message}: a key it no longer holds, a body too
        // large) is rebuilt and passed on, so a client can act on it; nothing else.
        if (status.is_client_error() || status.is_server_error())
            && essence == "application/json"
            && let Ok(Some(e)) = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(10)),
                error_body(resp),
            )
            .await
        {
            drop(slot);
            return Ok((status, axum::Json(e)).into_response());
        }
        // Neither the status nor the media type is told: they would map what answers there.
        return Err(RelayError::Gateway(format!(
            "what answered is not an Oblivious HTTP gateway ({expected}); the relay passes on only that"
        )));
    }
    // A task of its own owns the gateway's answer and the slot, and hands the answer on
    // through a short queue until the deadline, whoever is slow: a gateway trickling it or a
    // client that stops reading (the server would stop asking for more, and a deadline checked
    // only when asked would never come). At the deadline both go, the slot with them.
    let limit = slot.relay.0.config.answer_timeout;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let _slot = slot;
        let mut body = resp.bytes_stream();
        let late =
            || std::io::Error::other(format!("the gateway's answer took longer than {limit:?}"));
        loop {
            let next = match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(Ok(b))) => Ok(b),
                Ok(Some(Err(e))) => Err(std::io::Error::other(e)),
                Ok(None) => return,
                Err(_) => Err(late()),
            };
            let last = next.is_err();
            match tokio::time::timeout_at(deadline, tx.send(next)).await {
                Ok(Ok(())) if !last => {}
                // The client went, or would not take it in time (it is cut off: the stream
                // ends without its last piece), or that was the error that ends it.
                _ => return,
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut out = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, media)
        .header(header::CACHE_CONTROL, "no-store");
    if expected == cairn_ohttp::CHUNKED_RESPONSE_TYPE {
        out = out.header("incremental", "?1");
    }
    out.body(Body::from_stream(stream))
        .map_err(|e| RelayError::Gateway(e.to_string()))
}

/// A media type's essence (RFC 9110 §8.3.1): its type and subtype, lower-case.
fn essence(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A gateway's JSON refusal, read within 4 KiB: its `code` and `message`, nothing else.
async fn error_body(mut resp: reqwest::Response) -> Option<ErrorBody> {
    const MAX: usize = 4096;
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX {
            return None;
        }
    }
    #[derive(serde::Deserialize)]
    struct Refusal {
        code: String,
        message: String,
    }
    let r: Refusal = serde_json::from_slice(&buf).ok()?;
    Some(ErrorBody::new(r.code, r.message))
}

/// Serves the relay on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    relay: Relay,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = relay
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener =
        axum::serve::ListenerExt::tap_io(cairn_serve::LingeringListener::new(listener), |_| {});
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::client_of;
    use std::net::IpAddr;

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_ne!(client_of(a), client_of(c));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(client_of(mapped), "203.0.113.7".parse::<IpAddr>().unwrap());
    }
}
