//! The entry's HTTP API: an OpenAI-compatible `POST /v1/chat/completions` (any chat client
//! can use the entry; the answer names its run record), `GET /v1/runs/{id}` (a signed run
//! record), `GET /v1/entry` (who the entry is, its skills and nodes), `GET /v1/schema/task`.
//!
//! Each turn spends the entry's payer's money on nodes, so turns run a few at a time (a 503
//! with `Retry-After` beyond), each under a spending cap, and the server can require a bearer
//! token. Run records hold what users wrote: there is no listing, only lookup by id (a 256-bit
//! hash nobody guesses).

use std::sync::Arc;

use alloy_primitives::B256;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_core::api::ErrorBody;
use serde::Deserialize;
use serde_json::json;

use crate::entry::{Entry, Message, Progress};
use crate::record::{RunRecord, SignedRecord};

/// The largest request body (a message is at most [`crate::task::MAX_INPUT_BYTES`]; history and
/// JSON escaping take the rest).
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// The header that names a turn's run record.
pub const RUN_HEADER: &str = "cairn-run-id";
/// The model name the entry answers as.
pub const MODEL: &str = "cairn-entry";

/// How the server is run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Turns at once.
    pub turns: usize,
    /// A bearer token every turn must carry, when set.
    pub token: Option<String>,
    /// Origins whose pages may call the API (the explorer's chat page).
    pub origins: Vec<String>,
    /// The most all turns together may spend in an hour (token units: charged plus at risk);
    /// beyond it turns wait for the next hour (`None`: no limit but each turn's own cap).
    pub budget_per_hour: Option<alloy_primitives::U256>,
    /// Callers pay their turns, when set.
    pub payments: Option<CallerPayments>,
}

/// Callers pay each turn with an x402 `upto` permit for the turn's cap (`--max-spend`), charged
/// what the turn's steps were charged (the total the run record names) before its answer
/// leaves; a turn that fails is charged nothing.
#[derive(Clone)]
pub struct CallerPayments(pub Arc<cairn_x402::Paywall>);

impl std::fmt::Debug for CallerPayments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallerPayments")
    }
}

/// A paywall's pricing for routes that price themselves (a turn's cap is known only once its
/// body is read): nothing is priced before.
pub struct PricedPerTurn;

impl cairn_x402::Pricing for PricedPerTurn {
    fn price<'a>(
        &'a self,
        _: &'a mut axum::http::request::Parts,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Option<cairn_x402::Price>, Response>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async { Ok(None) })
    }
}

/// Charges a paid turn what its record says it was charged: the `PAYMENT-RESPONSE` headers and
/// what the caller paid (for the turn's summary).
async fn charge(
    metered: cairn_x402::Metered,
    rec: &RunRecord,
) -> Result<(HeaderMap, serde_json::Value), String> {
    let amount = rec
        .total_charged
        .parse::<alloy_primitives::U256>()
        .map_err(|e| format!("the turn's total: {e}"))?;
    let paid = metered.paid().clone();
    let headers = metered.charge(amount).await.map_err(|e| e.to_string())?;
    let transaction = cairn_x402::client::settle_response(&headers)
        .map(|s| s.transaction)
        .filter(|t| !t.is_empty());
    Ok((
        headers,
        json!({
            "scheme": paid.scheme,
            "payer": paid.payer.to_checksum(None),
            "most": paid.amount.to_string(),
            "charged": amount.to_string(),
            "transaction": transaction,
        }),
    ))
}

/// The longest a payment check (chain calls) may take before the request is refused.
const PAYMENT_CHECK: std::time::Duration = std::time::Duration::from_secs(15);

fn unpaid(e: &str) -> Response {
    error(
        StatusCode::PAYMENT_REQUIRED,
        "payment_failed",
        format!("the turn ran but its charge failed, so its answer is withheld: {e}"),
    )
}

/// What the turns of the current hour have spent.
#[derive(Default)]
struct Budget {
    since: Option<std::time::Instant>,
    spent: alloy_primitives::U256,
}

impl Budget {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Seconds until a turn may start, when the hour's budget is spent.
    fn wait(&mut self, budget: alloy_primitives::U256) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .since
            .is_none_or(|t| now.duration_since(t) >= Self::WINDOW)
        {
            self.since = Some(now);
            self.spent = alloy_primitives::U256::ZERO;
        }
        (self.spent >= budget).then(|| {
            let left = Self::WINDOW.saturating_sub(now.duration_since(self.since.unwrap_or(now)));
            left.as_secs().max(1)
        })
    }

    fn add(&mut self, r: &RunRecord) {
        let n = |s: &str| {
            s.parse::<alloy_primitives::U256>()
                .unwrap_or(alloy_primitives::U256::MAX)
        };
        self.spent = self
            .spent
            .saturating_add(n(&r.total_charged))
            .saturating_add(n(&r.at_risk));
    }
}

struct AppState {
    entry: Arc<Entry>,
    turns: Arc<tokio::sync::Semaphore>,
    /// Payment checks running (four per turn).
    checks: Arc<tokio::sync::Semaphore>,
    budget: Arc<std::sync::Mutex<Budget>>,
    config: ServerConfig,
    seen: std::sync::Mutex<Seen>,
}

/// How far a sealed request's `Date` may be from the entry's clock.
const DATE_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// The sealed requests taken lately, as two Bloom filters that take turns (each spans
/// [`Seen::WINDOW`], so one taken at any time is remembered at least that long): a relay that
/// sends one again (a replay makes the entry run and pay for the turn again) is refused. A
/// request is taken only with a `Date` within [`DATE_SKEW`], so remembering it for twice that
/// is enough. The memory is fixed (2 × 4 MiB, allocated at the first sealed request) and never
/// full: a flood of fresh requests only raises the odds that a new one is taken for a replay
/// (about one in 100,000 after a million in each window), which its client answers by
/// sealing anew.
struct Seen {
    filters: [Vec<u64>; 2],
    current: usize,
    since: std::time::Instant,
    /// Keys the filters' positions, so no one can aim a request at chosen bits.
    salt: [u8; 32],
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            filters: Default::default(),
            current: 0,
            since: std::time::Instant::now(),
            salt: alloy_primitives::B256::random().0,
        }
    }
}

impl Seen {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(2 * DATE_SKEW.as_secs());
    /// Bits per filter (a power of two) and positions per request.
    const BITS: usize = 1 << 25;
    const HASHES: usize = 8;

    /// Whether the request sealed with this header and encapsulated key is new; remembers it.
    fn first(&mut self, encapsulation: &[u8]) -> bool {
        use sha2::Digest;
        let now = std::time::Instant::now();
        if now.duration_since(self.since) >= Self::WINDOW {
            self.current ^= 1;
            self.filters[self.current].fill(0);
            self.since = now;
        }
        for f in &mut self.filters {
            f.resize(Self::BITS / 64, 0);
        }
        let digest = sha2::Sha256::new()
            .chain_update(self.salt)
            .chain_update(encapsulation)
            .finalize();
        let positions: Vec<usize> = digest
            .chunks_exact(4)
            .take(Self::HASHES)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as usize % Self::BITS)
            .collect();
        let held = |f: &Vec<u64>| positions.iter().all(|&p| f[p / 64] >> (p % 64) & 1 == 1);
        let seen = self.filters.iter().any(held);
        for &p in &positions {
            self.filters[self.current][p / 64] |= 1 << (p % 64);
        }
        !seen
    }
}

/// The router.
pub fn router(entry: Arc<Entry>, config: ServerConfig) -> Router {
    let state = Arc::new(AppState {
        entry,
        turns: Arc::new(tokio::sync::Semaphore::new(config.turns.max(1))),
        checks: Arc::new(tokio::sync::Semaphore::new(4 * config.turns.max(1))),
        budget: Arc::default(),
        config,
        seen: Default::default(),
    });
    let inner = routes(state.clone());
    // The gateway serves sealed requests with the same routes (their own limits apply inside).
    Router::new()
        .route(cairn_ohttp::GATEWAY_PATH, get(gateway_keys).post(gateway))
        .with_state((state, inner.clone()))
        .merge(inner)
}

fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat)
                .options(preflight)
                // The handler reads the body itself, to refuse an oversized one in JSON.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/runs/{id}", get(run).options(preflight))
        .route("/v1/entry", get(info).options(preflight))
        .route("/v1/schema/task", get(schema))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fresh_if_sealed,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A request that came sealed through the gateway must carry a `Date` near the entry's clock
/// (RFC 9458 §6.5) and be new to the entry's memory of recent ones: a relay cannot replay one.
/// (Said inside the envelope: the relay learns nothing of it.)
async fn fresh_if_sealed(
    State(s): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(sealed) = req
        .extensions()
        .get::<cairn_relay::gateway::Oblivious>()
        .copied()
    else {
        return next.run(req).await;
    };
    let date = req
        .headers()
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let now = std::time::SystemTime::now();
    let fresh = date.is_some_and(|d| {
        let off = now.duration_since(d).or_else(|_| d.duration_since(now));
        off.is_ok_and(|o| o <= DATE_SKEW)
    });
    if !fresh {
        let mut r = error(
            StatusCode::BAD_REQUEST,
            "stale_request",
            format!(
                "a sealed request carries a Date within {} s of the entry's clock (its Date is in this answer's); check your clock",
                DATE_SKEW.as_secs()
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
            r.headers_mut().insert(header::DATE, v);
        }
        return r;
    }
    // Remembered only once it opened and is fresh: nothing else can fill the memory.
    if !s
        .seen
        .lock()
        .expect("seen lock")
        .first(&sealed.encapsulation)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "replayed_request",
            "this sealed request was already taken; seal each request anew",
        );
    }
    next.run(req).await
}

type GatewayState = (Arc<AppState>, Router);

/// `GET /.well-known/ohttp-gateway`: the entry's key configuration (its signature is in
/// `GET /v1/entry`).
async fn gateway_keys(State((s, _)): State<GatewayState>) -> Response {
    cairn_relay::gateway::keys(s.entry.ohttp_key())
}

/// `POST /.well-known/ohttp-gateway`: a sealed request to the entry's own routes, through a
/// relay: the relay sees who asks, the entry sees what (it must, to parse it), never who.
async fn gateway(
    State((s, inner)): State<GatewayState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let (sealed, chunked) =
        match cairn_relay::gateway::read_sealed(&headers, body, MAX_BODY_BYTES).await {
            Ok(read) => read,
            Err(e) => return error(e.status, e.code, e.message),
        };
    // A whole answer is at most a record (a few MiB); streamed ones are sealed as they come.
    match cairn_relay::gateway::serve(s.entry.ohttp_key(), inner, sealed, chunked, 16 << 20).await {
        Ok(r) => r,
        Err(e) => error(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    }
}

/// Serves the entry on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    entry: Arc<Entry>,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Arc::new(cairn_serve::metrics::Metrics::new("cairn_entry"));
    let app = cairn_serve::metrics::serve(router(entry, config), metrics);
    axum::serve(cairn_serve::LingeringListener::new(listener), app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

async fn cors(
    State(s): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| s.config.origins.iter().any(|a| a == o))
        .map(str::to_owned);
    let mut resp = next.run(req).await;
    if let Some(o) = origin
        && let Ok(v) = HeaderValue::from_str(&o)
    {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, authorization"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(RUN_HEADER),
        );
    }
    resp
}

async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn schema() -> Response {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        crate::task::TASK_SCHEMA,
    )
        .into_response()
}

/// Who the entry is and what it computes: read from what it already knows (no hub or node is
/// asked on behalf of an unauthenticated caller), and nothing about its nodes or traffic.
async fn info(State(s): State<Arc<AppState>>) -> Response {
    let mut skills = Vec::new();
    for skill in crate::task::Skill::ALL {
        let runs_on = if skill.is_exact() {
            json!({"computed_by": "the entry, exactly"})
        } else {
            match s.entry.known_model(skill) {
                Some(m) => json!({"model": m.reference, "cid": m.cid.to_string()}),
                None => json!({"model": null, "note": "looked up on the hub when a turn needs it"}),
            }
        };
        skills.push(
            json!({"skill": skill.as_str(), "tag": crate::skills::tag(skill), "runs_on": runs_on}),
        );
    }
    Json(json!({
        "address": s.entry.address().to_checksum(None),
        "llm": s.entry.llm(),
        "task_schema": crate::task::SCHEMA,
        "run_schema": crate::record::SCHEMA,
        "skills": skills,
        "auth": s.config.token.is_some(),
        "ohttp": {
            "gateway": cairn_ohttp::GATEWAY_PATH,
            "key_config": alloy_primitives::hex::encode_prefixed(s.entry.ohttp_key().config().encoded()),
            "signature": s.entry.ohttp_keys_signature(),
        },
    }))
    .into_response()
}

async fn run(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<B256>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_run_id",
            "a run id is 0x and 64 hex digits",
        );
    };
    match s.entry.store().get(id) {
        Ok(Some(text)) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no run {id} here"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_failed",
            e.to_string(),
        ),
    }
}

/// What the endpoint reads of an OpenAI chat request. Sampling fields are read and ignored
/// (the entry decides how its models sample, so a run is re-executable); fields that would
/// change what the entry does and that it does not do are refused by name.
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    tools: Option<serde_json::Value>,
    #[serde(default)]
    functions: Option<serde_json::Value>,
    #[serde(default)]
    response_format: Option<serde_json::Value>,
    #[serde(flatten)]
    #[allow(dead_code)]
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: MessageContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl MessageContent {
    fn text(&self) -> Result<String, String> {
        match self {
            Self::Text(t) => Ok(t.clone()),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.clone()),
                    (kind, _) => Err(format!(
                        "content parts of type {kind:?} are not read by the entry: send text"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("\n")),
        }
    }
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

async fn chat(
    State(s): State<Arc<AppState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(token) = &s.config.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            use subtle::ConstantTimeEq;
            bool::from(g.as_bytes().ct_eq(token.as_bytes()))
        });
        if !ok {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this entry needs `Authorization: Bearer <token>`",
            );
        }
    }
    // A JSON body only: a page elsewhere can post text/plain without asking (no CORS
    // preflight), and each turn spends the entry's money.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the chat request as JSON (content-type: application/json)",
        );
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_long",
            format!(
                "the request is over {MAX_BODY_BYTES} bytes; the entry reads a message of at most {} bytes: paste the part that matters",
                crate::task::MAX_INPUT_BYTES
            ),
        );
    };
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("the body is not a chat request: {e}")),
    };
    if req.n.is_some_and(|n| n != 1) {
        return bad("n: the entry answers once per turn (n = 1)");
    }
    for (name, v) in [
        ("tools", &req.tools),
        ("functions", &req.functions),
        ("response_format", &req.response_format),
    ] {
        if v.is_some() {
            return bad(format!(
                "{name}: the entry decides which tools run and how it answers; send only messages"
            ));
        }
    }
    let mut texts = Vec::new();
    for m in &req.messages {
        match m.content.text() {
            Ok(t) => texts.push((m.role.as_str(), t)),
            Err(e) => return bad(e),
        }
    }
    let Some(pos) = texts.iter().rposition(|(role, _)| *role == "user") else {
        return bad("messages: there is no user message to answer");
    };
    // System messages are the client's, not the user's: the entry's own instructions stand.
    let history: Vec<Message> = texts[..pos]
        .iter()
        .filter(|(role, _)| matches!(*role, "user" | "assistant"))
        .map(|(role, t)| Message {
            role: (*role).to_owned(),
            content: t.clone(),
        })
        .collect();
    let input = texts[pos].1.clone();
    // Refuse bad input before taking a turn's permit.
    if let Err(e) = crate::task::segment(&input) {
        return input_error(&e);
    }
    if let Some(budget) = s.config.budget_per_hour
        && let Some(secs) = s.budget.lock().expect("budget lock").wait(budget)
    {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "budget_spent",
            format!("the entry has spent what it may this hour; try again in {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let busy = |what: &str| {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("the entry is {what}; try again in a few seconds"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    };
    const TURNS_FULL: &str = "taking as many turns as it runs at once";
    // A busy entry refuses before a payment is checked (chain calls, perhaps a deposit the
    // entry submits).
    if s.turns.available_permits() == 0 {
        return busy(TURNS_FULL);
    }
    // Paid for before the turn's slot is taken: a caller whose payment fails (an unfunded key
    // costs nothing to sign with) holds no turn, only one of the checks' own slots. A check
    // runs in a task of its own, holding its slot until it ends, so one that outlasts its
    // deadline still ends (and gives back what it took) instead of being cut off halfway, and
    // a slow chain holds at most every check slot, never more work.
    let metered = match &s.config.payments {
        Some(p) => {
            // A request that carries no payment is answered its offers at once (no chain
            // call) and needs no slot; one that does waits its turn briefly (first come,
            // first served), so a burst of bogus payments delays honest ones rather than
            // turning them away at once.
            let presents = [
                cairn_x402::wire::PAYMENT_SIGNATURE,
                cairn_x402::wire::X_PAYMENT,
            ]
            .iter()
            .any(|h| headers.contains_key(*h));
            let slot = if presents {
                let wait = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    s.checks.clone().acquire_owned(),
                );
                match wait.await {
                    Ok(Ok(slot)) => Some(slot),
                    _ => return busy("checking as many payments as it checks at once"),
                }
            } else {
                None
            };
            let most = s.entry.max_spend();
            let what = format!(
                "a chat turn at the Cairn entry {}: at most {most} token units, charged what its steps on the network's nodes were charged",
                s.entry.address()
            );
            let wall = p.0.clone();
            let (uri, headers, body) = (uri.clone(), headers.clone(), body.clone());
            let check = tokio::spawn(async move {
                let taken = wall.take_metered(&uri, &headers, &body, most, what).await;
                drop(slot);
                taken
            });
            match tokio::time::timeout(PAYMENT_CHECK, check).await {
                Ok(Ok(Ok(m))) => Some(m),
                Ok(Ok(Err(refused))) => return refused,
                Ok(Err(_)) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "payment_check_failed",
                        "the payment check stopped unexpectedly; nothing was charged, try again",
                    );
                }
                Err(_) => {
                    let mut r = error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "payment_check_timeout",
                        "the payment could not be checked against the chain in time; nothing was charged, try again",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                    return r;
                }
            }
        }
        None => None,
    };
    // Taken by another turn meanwhile: the payment (dropped) is given back.
    let Ok(permit) = s.turns.clone().try_acquire_owned() else {
        return busy(TURNS_FULL);
    };
    let entry = s.entry.clone();
    let budget = s.budget.clone();
    if req.stream {
        return stream_turn(entry, input, history, permit, budget, metered).await;
    }
    // The turn runs to its record, and is charged, even if the caller leaves: what it paid is
    // accounted for.
    let turn = tokio::spawn(async move {
        let r = entry.turn(&input, &history, None).await;
        if let Ok((_, rec)) = &r {
            budget.lock().expect("budget lock").add(rec);
        }
        drop(permit);
        let paid = match (&r, metered) {
            (Ok((_, rec)), Some(m)) => Some(charge(m, rec).await),
            _ => None,
        };
        (r, paid)
    });
    let Ok((result, paid)) = turn.await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "turn_failed",
            "the turn stopped unexpectedly; nothing more was run",
        );
    };
    match result {
        Ok((signed, rec)) => {
            let mut body = completion(&signed, &rec);
            let settled = match paid {
                Some(Err(e)) => return unpaid(&e),
                Some(Ok((headers, paid_by))) => {
                    body["cairn"]["paid_by"] = paid_by;
                    headers
                }
                None => HeaderMap::new(),
            };
            let mut resp = Json(body).into_response();
            resp.headers_mut().extend(settled);
            if let Ok(v) = HeaderValue::from_str(&signed.id.to_string()) {
                resp.headers_mut().insert(RUN_HEADER, v);
            }
            resp
        }
        Err(e) => turn_error(e),
    }
}

fn input_error(e: &crate::task::InputError) -> Response {
    use crate::task::InputError;
    match e {
        InputError::Empty => error(StatusCode::BAD_REQUEST, "empty_input", e.to_string()),
        InputError::TooLong(_) | InputError::TooManySegments(_) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_long",
            e.to_string(),
        ),
    }
}

fn turn_error(e: crate::TurnError) -> Response {
    match e {
        crate::TurnError::Input(e) => input_error(&e),
        crate::TurnError::Store(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_failed",
            e.to_string(),
        ),
    }
}

/// A turn's summary for clients: the task, the steps, what was paid, the record's id.
pub fn summary(signed: &SignedRecord, r: &RunRecord) -> serde_json::Value {
    let steps: Vec<_> = r
        .steps
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "skill": s.skill.as_str(),
                "status": s.status,
                "result": s.result,
                "error": s.error,
                "model": s.run.as_ref().map(|m| m.model.reference.clone()),
                "cid": s.run.as_ref().map(|m| m.model.cid.to_string()),
                "node": s.run.as_ref().map(|m| m.node.address.to_checksum(None)),
                "receipt": s.run.as_ref().and_then(|m| m.receipt.verify().ok()).map(|x| x.id().to_string()),
                "charged": s.run.as_ref().map(|m| m.payment.charged.clone()),
                "scheme": s.run.as_ref().map(|m| m.payment.scheme.clone()),
                "attempts": s.attempts,
            })
        })
        .collect();
    json!({
        "run": signed.id.to_string(),
        "record": format!("/v1/runs/{}", signed.id),
        "entry": r.entry.to_checksum(None),
        "task": {
            "goal": r.task.goal,
            "subtasks": r.task.subtasks.len(),
            "noise": r.task.noise.iter().map(|n| json!({"segment": n.segment, "reason": n.reason, "text": r.task.segment(n.segment)})).collect::<Vec<_>>(),
            "missing": r.task.missing,
            "uncomputable": r.task.uncomputable,
            "parsed_by": r.task.parsed_by,
        },
        "steps": steps,
        "total_charged": r.total_charged,
        "answer": r.answer.text,
    })
}

fn usage(r: &RunRecord) -> (u64, u64) {
    let mut p = 0u64;
    let mut c = 0u64;
    for call in r.parse.iter().chain(r.answer.llm.iter()) {
        if let Ok(rc) = call.receipt.verify()
            && let Some(u) = rc.claims.llm
        {
            p += u64::from(u.prompt_tokens);
            c += u64::from(u.completion_tokens);
        }
    }
    (p, c)
}

fn completion(signed: &SignedRecord, r: &RunRecord) -> serde_json::Value {
    let (p, c) = usage(r);
    json!({
        "id": format!("chatcmpl-{}", signed.id),
        "object": "chat.completion",
        "created": r.created_at,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": r.answer.text},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        "cairn": summary(signed, r),
    })
}

/// The answering model's text as it is streamed live: leading whitespace dropped and trailing
/// whitespace held back, so what was sent is the start of the answer as the turn composes it
/// (the model's text, trimmed, then the results).
#[derive(Default)]
struct LiveAnswer {
    sent: String,
    held: String,
}

impl LiveAnswer {
    /// The piece to send for the model's next text, if any.
    fn push(&mut self, d: &str) -> Option<String> {
        let d = if self.sent.is_empty() && self.held.is_empty() {
            d.trim_start()
        } else {
            d
        };
        self.held.push_str(d);
        let keep = self.held.trim_end().len();
        if keep == 0 {
            return None;
        }
        let piece: String = self.held.drain(..keep).collect();
        self.sent.push_str(&piece);
        Some(piece)
    }
}

/// A streamed turn: progress as SSE comments (clients skip them) and the answering model's
/// text as it is written, then the rest of the answer in chunks, the last one carrying the run
/// record's summary, then `[DONE]`.
async fn stream_turn(
    entry: Arc<Entry>,
    input: String,
    history: Vec<Message>,
    permit: tokio::sync::OwnedSemaphorePermit,
    budget: Arc<std::sync::Mutex<Budget>>,
    metered: Option<cairn_x402::Metered>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let created = cairn_core::clock::now_secs();
    // One id for every chunk of the stream (the run record's id comes in the last one).
    let stream_id = format!("chatcmpl-{}", B256::random());
    let chunk = {
        let stream_id = stream_id.clone();
        move |delta: serde_json::Value, finish: Option<&str>, extra: Option<serde_json::Value>| {
            let mut c = json!({
                "id": stream_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            if let Some(x) = extra {
                c["cairn"] = x;
            }
            format!("data: {c}\n\n")
        }
    };
    let progress_tx = tx.clone();
    // A paid turn's results leave only once it is charged: progress names the steps, not what
    // they found, and the answer is not streamed as it is written.
    let redact = metered.is_some();
    let live = chunk.clone();
    let forwarder = tokio::spawn(async move {
        let mut answer = LiveAnswer::default();
        while let Some(p) = prx.recv().await {
            let line = match p {
                Progress::Parsed { subtasks, noise } => {
                    format!(": cairn parsed {subtasks} sub-tasks, {noise} noise spans\n\n")
                }
                Progress::Step { id, skill, .. } if redact => {
                    format!(": cairn step {id} {} ran\n\n", skill.as_str())
                }
                Progress::Step { id, skill, outcome } => format!(
                    ": cairn step {id} {} {}\n\n",
                    skill.as_str(),
                    outcome.replace(['\n', '\r'], " ")
                ),
                Progress::Answer(_) if redact => continue,
                Progress::Answer(d) => {
                    let first = answer.sent.is_empty();
                    let Some(piece) = answer.push(&d) else {
                        continue;
                    };
                    let mut line = String::new();
                    if first {
                        line = live(json!({"role": "assistant", "content": ""}), None, None);
                    }
                    line.push_str(&live(json!({"content": piece}), None, None));
                    line
                }
            };
            if progress_tx.send(line).is_err() {
                break;
            }
        }
        answer.sent
    });
    tokio::spawn(async move {
        let result = entry.turn(&input, &history, Some(ptx)).await;
        if let Ok((_, rec)) = &result {
            budget.lock().expect("budget lock").add(rec);
        }
        drop(permit);
        // Every piece streamed live has gone out (the turn has dropped its progress sender).
        let sent = forwarder.await.unwrap_or_default();
        // Charged before the answer's first byte: a charge that fails withholds it.
        let paid = match (&result, metered) {
            (Ok((_, rec)), Some(m)) => match charge(m, rec).await {
                Ok((_, paid_by)) => Some(paid_by),
                Err(e) => {
                    let body = json!({"error": {"code": "payment_failed", "message": format!("the turn ran but its charge failed, so its answer is withheld: {e}")}});
                    let _ = tx.send(format!("data: {body}\n\n"));
                    let _ = tx.send("data: [DONE]\n\n".into());
                    return;
                }
            },
            _ => None,
        };
        match result {
            Ok((signed, rec)) => {
                if sent.is_empty() {
                    let _ = tx.send(chunk(
                        json!({"role": "assistant", "content": ""}),
                        None,
                        None,
                    ));
                }
                // The rest of the answer: what follows the live text, or (a model that failed
                // midway, its answer taken from another node or dropped) the whole answer
                // after a note, so the streamed text ends as the record's answer.
                let rest = match rec.answer.text.strip_prefix(sent.as_str()) {
                    Some(rest) => rest.to_owned(),
                    None => format!(
                        "\n\n(the answering model's text above broke off; the answer:)\n\n{}",
                        rec.answer.text
                    ),
                };
                let mut piece = String::new();
                for word in rest.split_inclusive(' ') {
                    piece.push_str(word);
                    if piece.len() >= 24 {
                        let _ = tx.send(chunk(json!({"content": piece}), None, None));
                        piece = String::new();
                    }
                }
                if !piece.is_empty() {
                    let _ = tx.send(chunk(json!({"content": piece}), None, None));
                }
                let mut sum = summary(&signed, &rec);
                if let Some(p) = paid {
                    sum["paid_by"] = p;
                }
                let _ = tx.send(chunk(json!({}), Some("stop"), Some(sum)));
            }
            Err(e) => {
                let body = json!({"error": {"code": "turn_failed", "message": e.to_string()}});
                let _ = tx.send(format!("data: {body}\n\n"));
            }
        }
        let _ = tx.send("data: [DONE]\n\n".into());
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|s| {
            (
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(s)),
                rx,
            )
        })
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(axum::body::Body::from_stream(stream))
        .expect("a response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_request_is_taken_once_for_at_least_a_window() {
        let mut seen = Seen::default();
        let a = [1u8; cairn_relay::gateway::ENCAPSULATION];
        let b = [2u8; cairn_relay::gateway::ENCAPSULATION];
        assert!(seen.first(&a));
        assert!(!seen.first(&a));
        assert!(seen.first(&b));
        // A window on, the filters turn: what was taken is still held.
        seen.since -= Seen::WINDOW;
        assert!(!seen.first(&a));
        let c = [3u8; cairn_relay::gateway::ENCAPSULATION];
        assert!(seen.first(&c));
        // Another window on, what was taken two windows ago (and no Date lets in) is let go.
        seen.since -= Seen::WINDOW;
        assert!(seen.first(&b));
        assert!(!seen.first(&c));
        // Fresh requests are new, even after many (the memory is never full).
        let fresh = (0..100_000u32).filter(|i| {
            let mut e = [0u8; cairn_relay::gateway::ENCAPSULATION];
            e[..4].copy_from_slice(&i.to_le_bytes());
            e[4] = 9;
            seen.first(&e)
        });
        assert_eq!(fresh.count(), 100_000);
    }

    #[test]
    fn the_live_answer_is_the_start_of_the_composed_one() {
        let mut a = LiveAnswer::default();
        let pieces: Vec<Option<String>> = ["  \n", " The", " digit", " is 0.", " \n ", "\n"]
            .iter()
            .map(|d| a.push(d))
            .collect();
        assert_eq!(
            pieces,
            vec![
                None,
                Some("The".into()),
                Some(" digit".into()),
                Some(" is 0.".into()),
                None,
                None
            ]
        );
        // What the turn composes from the same text begins with what was sent.
        let model = "  \n The digit is 0. \n \n";
        let task = crate::task::parse_by_rules("What is 2 + 2?").unwrap();
        let composed = crate::entry::compose(&task, &[], Some(model));
        assert!(composed.starts_with(&a.sent), "{composed:?}");
        assert_eq!(a.sent, "The digit is 0.");
    }
}
