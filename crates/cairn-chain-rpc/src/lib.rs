//! The embedded chain over Ethereum JSON-RPC.
//!
//! `cairn devnet` keeps its chain in-process ([`EmbeddedLedger`]); this serves the same ledger
//! (one writer: the devnet's own process) with the methods wallets and libraries use, so web3.py,
//! viem, ethers, `cast` and the x402 packages' RPC paths can read it and send signed transactions
//! to it. JSON-RPC 2.0 over HTTP POST, single calls and batches.
//!
//! What differs from a public chain, by design: one transaction per block, mined when it arrives
//! (like anvil's automine); a transaction that would revert is refused with its revert data
//! instead of being mined with status 0; only the head's state is kept (state queries at older
//! blocks are refused); headers' `stateRoot` is zero. Dev methods (`evm_increaseTime`,
//! `evm_mine`, `anvil_setCode`) are off unless [`RpcConfig::dev_methods`] is set, since they let any local
//! process move the chain's clock past challenge windows.

mod filters;
mod methods;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cairn_ledger::EmbeddedLedger;
use cairn_serve::metrics::{Counter, EncodeLabelSet, Family, Metrics};
use serde_json::{Value, json};

/// The largest request body (a batch, or a call whose data is a contract's init code).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// The most calls in one batch.
pub const MAX_BATCH: usize = 100;

/// What the server offers beyond the standard methods.
#[derive(Clone, Debug, Default)]
pub struct RpcConfig {
    /// Serve `evm_increaseTime`, `evm_mine` and `anvil_setCode` (tests and local tools; never a
    /// shared chain).
    pub dev_methods: bool,
    /// Web origins (`http://127.0.0.1:7404`) whose pages may read the chain: CORS is granted to
    /// them, for the read methods only ([`READ_METHODS`]), so the explorer's pages check
    /// receipts against the chain themselves but no page can send a transaction. Any other
    /// origin gets no CORS grant, as before.
    pub read_origins: Vec<String>,
}

/// What a page of a [`RpcConfig::read_origins`] origin may call.
pub const READ_METHODS: &[&str] = &[
    "eth_chainId",
    "net_version",
    "web3_clientVersion",
    "eth_blockNumber",
    "eth_call",
    "eth_getBalance",
    "eth_getCode",
    "eth_getTransactionCount",
    "eth_getBlockByNumber",
    "eth_getBlockByHash",
    "eth_getTransactionByHash",
    "eth_getTransactionReceipt",
    "eth_getLogs",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    outcome: &'static str,
}

struct Rpc {
    ledger: Arc<EmbeddedLedger>,
    config: RpcConfig,
    calls: Family<CallLabels, Counter>,
    /// One request runs at a time: the ledger's work is synchronous, and the devnet's own roles
    /// share its lock, so a flood of calls queues here instead of taking every blocking thread.
    running: tokio::sync::Semaphore,
    filters: filters::Filters,
}

/// The JSON-RPC router (`POST /`) with `GET /metrics`.
pub fn router(ledger: Arc<EmbeddedLedger>, config: RpcConfig) -> Router {
    let mut metrics = Metrics::new("cairn_chain_rpc");
    let calls = Family::<CallLabels, Counter>::default();
    metrics.registry().register(
        "calls",
        "JSON-RPC calls answered, by method (unknown ones as `other`) and outcome",
        calls.clone(),
    );
    let rpc = Arc::new(Rpc {
        ledger,
        config,
        calls,
        running: tokio::sync::Semaphore::new(1),
        filters: Default::default(),
    });
    let app = Router::new()
        .route("/", post(handle).options(preflight))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(rpc);
    // The Host check covers `/metrics` too.
    cairn_serve::metrics::serve(app, Arc::new(metrics)).layer(axum::middleware::from_fn(local_only))
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ledger: Arc<EmbeddedLedger>,
    config: RpcConfig,
) -> std::io::Result<()> {
    axum::serve(listener, router(ledger, config)).await
}

/// A JSON-RPC error object.
#[derive(Debug)]
pub(crate) struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub(crate) fn params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }

    fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

impl From<cairn_ledger::LedgerError> for RpcError {
    fn from(e: cairn_ledger::LedgerError) -> Self {
        use cairn_ledger::LedgerError as L;
        match e {
            // What eth_call and eth_estimateGas answer for a revert (code 3, data = revert bytes),
            // which is what clients decode custom errors from.
            L::Reverted { reason, data } => Self {
                code: 3,
                message: format!("execution reverted: {reason}"),
                data: Some(Value::String(data.to_string())),
            },
            L::Invalid(m) | L::Evm(m) => Self::new(-32000, m),
            L::Unsupported(m) => Self::new(-32000, m),
            e => {
                tracing::error!(error = %e, "chain rpc: the ledger failed");
                Self::new(-32603, "internal error: the chain's store failed")
            }
        }
    }
}

fn reply(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

fn json_response(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Refuses a request whose `Host` is absent, unreadable, or neither `localhost` nor an IP
/// address: a DNS-rebinding page reaches loopback under its own domain name.
async fn local_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match host {
        Some(h) if local_host(h) => next.run(req).await,
        _ => refusal(
            StatusCode::FORBIDDEN,
            &format!(
                "requests for host {:?} are not served: address this chain as localhost or by IP",
                host.unwrap_or("(none)")
            ),
        ),
    }
}

/// Refuses a body that is not declared JSON: a page may POST `text/plain` cross-origin without
/// asking, while `application/json` needs a CORS preflight this server never grants. The
/// devnet's keys are public: a page the user visits must not spend them.
fn refused(headers: &HeaderMap) -> Option<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    (!json).then(|| {
        refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request as Content-Type: application/json",
        )
    })
}

/// `localhost` or an IP literal, with or without a port.
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6.split_once(']').is_some_and(|(a, port)| {
                a.parse::<std::net::Ipv6Addr>().is_ok()
                    && (port.is_empty() || port.starts_with(':'))
            });
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn refusal(status: StatusCode, message: &str) -> Response {
    let body = reply(Value::Null, Err(RpcError::new(-32600, message)));
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The origin of a page the config lets read the chain, when the request comes from one.
fn read_origin(rpc: &Rpc, headers: &HeaderMap) -> Option<header::HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    // `null` is what sandboxed and file pages send: never a page anyone configured.
    if text == "null" {
        return None;
    }
    rpc.config
        .read_origins
        .iter()
        .any(|o| o.trim_end_matches('/') == text)
        .then(|| origin.clone())
}

/// A CORS preflight: granted to the configured read origins only.
async fn preflight(State(rpc): State<Arc<Rpc>>, headers: HeaderMap) -> Response {
    match read_origin(&rpc, &headers) {
        Some(origin) => (
            StatusCode::NO_CONTENT,
            [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    header::HeaderValue::from_static("POST"),
                ),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    header::HeaderValue::from_static("content-type"),
                ),
                (
                    header::ACCESS_CONTROL_MAX_AGE,
                    header::HeaderValue::from_static("600"),
                ),
                (header::VARY, header::HeaderValue::from_static("Origin")),
            ],
        )
            .into_response(),
        None => refusal(
            StatusCode::FORBIDDEN,
            "cross-origin requests are not served to this origin",
        ),
    }
}

async fn handle(State(rpc): State<Arc<Rpc>>, headers: HeaderMap, body: Bytes) -> Response {
    let origin = read_origin(&rpc, &headers);
    let mut resp = answer(rpc, origin.is_some(), &headers, body).await;
    if let Some(origin) = origin {
        resp.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        resp.headers_mut()
            .insert(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    resp
}

async fn answer(rpc: Arc<Rpc>, read_only: bool, headers: &HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refused(headers) {
        return r;
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(reply(
                Value::Null,
                Err(RpcError::new(-32700, format!("parse error: {e}"))),
            ));
        }
    };
    let Ok(_turn) = rpc.running.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    // The ledger's work is synchronous (revm, SQLite): keep it off the async workers.
    let rpc = rpc.clone();
    let out = tokio::task::spawn_blocking(move || match parsed {
        Value::Array(calls) if calls.is_empty() => Some(reply(
            Value::Null,
            Err(RpcError::new(-32600, "invalid request: an empty batch")),
        )),
        Value::Array(calls) if calls.len() > MAX_BATCH => Some(reply(
            Value::Null,
            Err(RpcError::new(
                -32600,
                format!(
                    "invalid request: a batch of {} calls; at most {MAX_BATCH}",
                    calls.len()
                ),
            )),
        )),
        Value::Array(calls) => {
            let answers: Vec<Value> = calls
                .into_iter()
                .filter_map(|c| rpc.one(c, read_only))
                .collect();
            // A batch of notifications only gets no answer at all.
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        call => rpc.one(call, read_only),
    })
    .await;
    match out {
        Ok(Some(v)) => json_response(v),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "chain rpc: a call panicked");
            json_response(reply(
                Value::Null,
                Err(RpcError::new(-32603, "internal error")),
            ))
        }
    }
}

impl Rpc {
    /// One call (a read method only, for a page of a read origin); `None` for a notification
    /// (no `id`), which gets no answer.
    fn one(&self, call: Value, read_only: bool) -> Option<Value> {
        let Value::Object(mut call) = call else {
            return Some(reply(
                Value::Null,
                Err(RpcError::new(
                    -32600,
                    "invalid request: a call is a JSON object",
                )),
            ));
        };
        let id = call.remove("id");
        let notification = id.is_none();
        let id = id.unwrap_or(Value::Null);
        if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
            return Some(reply(
                Value::Null,
                Err(RpcError::new(
                    -32600,
                    "invalid request: id must be a number, a string or null",
                )),
            ));
        }
        let Some(Value::String(method)) = call.remove("method") else {
            return Some(reply(
                id,
                Err(RpcError::new(
                    -32600,
                    "invalid request: method must be a string",
                )),
            ));
        };
        let params = match call.remove("params") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(p)) => p,
            Some(_) => {
                return Some(reply(
                    id,
                    Err(RpcError::params("params must be an array (by position)")),
                ));
            }
        };
        if read_only && !READ_METHODS.contains(&method.as_str()) {
            return (!notification).then(|| {
                reply(
                    id,
                    Err(RpcError::new(
                        -32601,
                        format!("{method} is not offered to web pages; they may only read"),
                    )),
                )
            });
        }
        let (label, result) = methods::dispatch(self, &method, params);
        self.calls
            .get_or_create(&CallLabels {
                method: label,
                outcome: if result.is_ok() { "ok" } else { "error" },
            })
            .inc();
        (!notification).then(|| reply(id, result))
    }
}
