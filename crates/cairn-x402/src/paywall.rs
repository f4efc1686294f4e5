//! The paywall: an axum middleware (a tower layer via `axum::middleware::from_fn_with_state`)
//! that any route can sit behind.
//!
//! Per request: price it ([`Pricing`]); without a payment answer 402 with the offers (v2
//! `PAYMENT-REQUIRED` header and a v1 body); with one, check it locally, reserve it in the
//! durable store, run the route with [`Paid`] in the request's extensions, and then:
//! - the route failed (not 2xx): release the payment, nothing is charged;
//! - `exact`: settle on chain *before* the response leaves; a failed settlement withholds it
//!   (402 with the reason); a settlement sent but unconfirmed withholds it as
//!   `settlement_pending`, keeps it, and hands it over when the same payment is presented again
//!   after the transfer is confirmed (the model is not run twice, the client does not pay twice);
//! - `prepaid`: the voucher was accepted atomically before the run; nothing waits for the chain.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::exact::CheckedExact;
use crate::facilitator::{Facilitator, Settlement};
use crate::prepaid::{self, Prepaid};
use crate::store::{PaymentState, Reserve};
use crate::wire::{
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, PaymentPayload, PaymentPayloadV1,
    PaymentRequired, PaymentRequiredV1, PaymentRequirements, ResourceInfo, SettleResponse,
    X_PAYMENT, X_PAYMENT_RESPONSE, decode_header, encode_header, v1_network,
};
use crate::{Reason, X402Error, now_secs};

mod exact_flow;
mod metered;
mod prepaid_flow;
mod upto_flow;
pub(crate) use upto_flow::settle_response as upto_settle_response;

pub use metered::Metered;
mod presented;

/// What a request costs.
#[derive(Clone, Debug)]
pub struct Price {
    /// Amount in the token's smallest unit.
    pub amount: U256,
    /// What is being bought (shown to the payer).
    pub description: String,
}

/// Prices requests. `Ok(None)`: free, no payment asked. `Err(response)`: refuse before any
/// payment (e.g. an unknown model: 404, so nobody pays for nothing).
pub trait Pricing: Send + Sync + 'static {
    /// The price of this request. What the price was reckoned on may be put in the request's
    /// extensions, for the route to serve exactly what was paid for.
    fn price<'a>(
        &'a self,
        parts: &'a mut Parts,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Price>, Response>> + Send + 'a>>;
}

/// A payment the paywall accepted for this request (in the request's extensions).
#[derive(Clone, Debug)]
pub struct Paid {
    /// `exact` or `prepaid`.
    pub scheme: &'static str,
    /// Who pays.
    pub payer: Address,
    /// How much.
    pub amount: U256,
    /// The reference bound into the receipt (see [`crate::exact::payment_ref`] and
    /// [`crate::prepaid::Accepted::payment_ref`]).
    pub payment_ref: B256,
}

/// The answers a route already gave, by payment: a payment that was charged is answered again
/// when presented again with the same request (the client lost the first answer to a crash or a
/// cut connection), so no payer pays for an answer it never received. A payment's signature is
/// public once it is settled on chain, so the answer goes only to a request carrying the same
/// inputs as the one paid for.
pub trait KeptAnswers: Send + Sync + 'static {
    /// The answer already given to the request paid by `payment_ref`, if `body` (with
    /// `headers`) asks for the same thing.
    fn answer<'a>(
        &'a self,
        payment_ref: B256,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Option<Response>> + Send + 'a>>;
}

/// Largest request body read to look up a kept answer.
const MAX_REPLAY_BODY: usize = 64 << 20;
/// Bodies read at once to look up a kept answer: a settled payment is public, so anyone can
/// present one again, each with a body of up to [`MAX_REPLAY_BODY`].
const REPLAY_READS: usize = 4;

/// The paywall's configuration and parts.
pub struct Paywall {
    facilitator: Arc<Facilitator>,
    prepaid: Option<Arc<Prepaid>>,
    batch: Option<Arc<crate::batch::Batch>>,
    pricing: Arc<dyn Pricing>,
    pay_to: Address,
    max_timeout_seconds: u64,
    kept: Option<Arc<dyn KeptAnswers>>,
    /// The offers at the prices asked lately: they depend on the price alone, and building
    /// them on every paid request cost more than reading its payment.
    offered: std::sync::Mutex<HashMap<U256, Arc<[PaymentRequirements]>>>,
    /// Bounds the bodies read for payments presented again ([`REPLAY_READS`]).
    replay_reads: tokio::sync::Semaphore,
}

/// Prices whose offers are kept; past it the memory starts again.
const OFFERED_PRICES: usize = 256;

impl Paywall {
    /// Payments go to `pay_to` (for a Cairn node: its payment vault).
    pub fn new(
        facilitator: Arc<Facilitator>,
        prepaid: Option<Arc<Prepaid>>,
        pricing: Arc<dyn Pricing>,
        pay_to: Address,
    ) -> Self {
        Self {
            facilitator,
            prepaid,
            batch: None,
            pricing,
            pay_to,
            max_timeout_seconds: 300,
            kept: None,
            offered: Default::default(),
            replay_reads: tokio::sync::Semaphore::new(REPLAY_READS),
        }
    }

    /// Takes x402 `batch-settlement` vouchers on `batch`'s channels.
    pub fn with_batch(mut self, batch: Arc<crate::batch::Batch>) -> Self {
        self.batch = Some(batch);
        self
    }

    /// The voucher scheme named `scheme`, when enabled.
    fn book(&self, scheme: &str) -> Option<prepaid_flow::Book> {
        match scheme {
            prepaid::SCHEME => self.prepaid.clone().map(prepaid_flow::Book::Prepaid),
            crate::batch::SCHEME => self.batch.clone().map(prepaid_flow::Book::Batch),
            _ => None,
        }
    }

    /// Answers a charged payment presented again from `kept`.
    pub fn with_kept_answers(mut self, kept: Arc<dyn KeptAnswers>) -> Self {
        self.kept = Some(kept);
        self
    }

    /// The kept answer of `payment_ref` for this request (`body` is read, bounded).
    async fn kept_answer(
        &self,
        payment_ref: B256,
        headers: &HeaderMap,
        body: Body,
    ) -> Option<Response> {
        let kept = self.kept.as_ref()?;
        let bytes = self.replay_body(body).await?;
        kept.answer(payment_ref, headers, &bytes).await
    }

    /// The body of a payment presented again, read (bounded) [`REPLAY_READS`] at a time.
    async fn replay_body(&self, body: Body) -> Option<Bytes> {
        let _permit = self.replay_reads.acquire().await.ok()?;
        axum::body::to_bytes(body, MAX_REPLAY_BODY).await.ok()
    }

    /// The offers for `price`: `prepaid` first when enabled (the cheap path), then `exact`, then
    /// `upto` and `batch-settlement` when the chain has their contracts.
    pub fn offers(&self, price: &Price) -> Vec<PaymentRequirements> {
        let mut offers = Vec::new();
        if let Some(p) = &self.prepaid {
            offers.push(p.offer(price.amount, self.max_timeout_seconds));
        }
        offers.push(self.facilitator.exact_offer(
            self.pay_to,
            price.amount,
            self.max_timeout_seconds,
        ));
        offers.extend(self.facilitator.upto_offer(
            self.pay_to,
            price.amount,
            self.max_timeout_seconds,
        ));
        offers.extend(
            self.batch
                .iter()
                .map(|b| b.offer(price.amount, self.max_timeout_seconds)),
        );
        offers
    }

    /// [`Paywall::offers`], built once per price.
    fn offers_at(&self, price: &Price) -> Arc<[PaymentRequirements]> {
        let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = offered.get(&price.amount) {
            return o.clone();
        }
        if offered.len() >= OFFERED_PRICES {
            offered.clear();
        }
        let o: Arc<[PaymentRequirements]> = self.offers(price).into();
        offered.insert(price.amount, o.clone());
        o
    }

    /// The facilitator.
    pub fn facilitator(&self) -> &Arc<Facilitator> {
        &self.facilitator
    }

    /// The prepaid side, when enabled.
    pub fn prepaid(&self) -> Option<&Arc<Prepaid>> {
        self.prepaid.as_ref()
    }

    /// The batch-settlement side, when the chain has its contracts.
    pub fn batch(&self) -> Option<&Arc<crate::batch::Batch>> {
        self.batch.as_ref()
    }
}

/// Which header carried the payment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The 402 answer: v2 in `PAYMENT-REQUIRED`, v1 (and Cairn's `{code, message}`) in the body.
fn payment_required(
    resource: &ResourceInfo,
    offers: &[PaymentRequirements],
    reason: Option<&Reason>,
    settle: Option<(&SettleResponse, Version)>,
) -> Response {
    let error = reason.map(|r| r.code.to_string());
    let v2 = PaymentRequired {
        x402_version: 2,
        error: error.clone(),
        resource: resource.clone(),
        accepts: offers.to_vec(),
        extensions: offers
            .iter()
            .any(|o| o.scheme == crate::upto::SCHEME)
            .then(crate::upto::eip2612_extension_declaration),
    };
    let v1 = PaymentRequiredV1 {
        x402_version: 1,
        error: error.clone(),
        accepts: offers
            .iter()
            .filter(|o| o.scheme == "exact")
            .filter_map(|o| o.to_v1(resource))
            .collect(),
    };
    let (code, message) = match reason {
        Some(r) => (r.code, r.message.clone()),
        None => (
            "payment_required",
            format!(
                "this costs {} token units; pay with one of the offers in the PAYMENT-REQUIRED header (x402)",
                offers.first().map(|o| o.amount).unwrap_or_default()
            ),
        ),
    };
    let mut body = serde_json::to_value(&v1).expect("serializes");
    body["code"] = Value::String(code.to_string());
    body["message"] = Value::String(message);
    let mut resp = (StatusCode::PAYMENT_REQUIRED, axum::Json(body)).into_response();
    resp.extensions_mut().insert(PaymentRefused { code });
    let h = resp.headers_mut();
    h.insert(
        HeaderName::from_static(PAYMENT_REQUIRED),
        HeaderValue::from_str(&encode_header(&v2)).expect("base64 is a header value"),
    );
    if let Some((s, v)) = settle {
        insert_settle(h, s, v);
    }
    resp
}

/// Set on every 402 the paywall answers (a response extension, never sent): why no payment
/// was taken, for the server's metrics. `payment_required` when none was presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaymentRefused {
    /// The answer's stable machine code.
    pub code: &'static str,
}

fn insert_settle(h: &mut HeaderMap, s: &SettleResponse, v: Version) {
    let name = match v {
        Version::V2 => PAYMENT_RESPONSE,
        Version::V1 => X_PAYMENT_RESPONSE,
    };
    h.insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(&encode_header(s)).expect("base64 is a header value"),
    );
    h.insert(
        axum::http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"),
    );
}

fn resource_of(parts: &Parts, price: &Price) -> ResourceInfo {
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    ResourceInfo {
        url: format!("http://{host}{path}"),
        description: price.description.clone(),
        mime_type: "application/json".into(),
    }
}

/// The middleware. Use it as
/// `router.layer(axum::middleware::from_fn_with_state(paywall, cairn_x402::paywall::middleware))`.
///
/// A paid request runs to its end (route, settlement, store) in a task of its own: a client
/// that hangs up mid-way cannot leave a payment half settled or a voucher half counted.
pub async fn middleware(State(p): State<Arc<Paywall>>, req: Request, next: Next) -> Response {
    match tokio::spawn(paid_request(p, req, next)).await {
        Ok(resp) => resp,
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(cairn_core::ErrorBody::new(
                "internal",
                format!("the paid request failed: {e}"),
            )),
        )
            .into_response(),
    }
}

async fn paid_request(p: Arc<Paywall>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let price = match p.pricing.price(&mut parts).await {
        Ok(Some(price)) => price,
        Ok(None) => return next.run(Request::from_parts(parts, body)).await,
        Err(resp) => return resp,
    };
    let resource = resource_of(&parts, &price);
    let offers = p.offers_at(&price);
    let refusal = Refusal {
        resource: &resource,
        offers: &offers,
    };
    let presented = match presented::read(&parts.headers, &refusal) {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let run = Run { parts, body, next };
    match presented.offer.scheme.as_str() {
        prepaid::SCHEME | crate::batch::SCHEME => {
            prepaid_flow::pay(&p, run, presented, &refusal).await
        }
        crate::upto::SCHEME => upto_flow::pay(&p, run, presented, &refusal).await,
        _ => exact_flow::pay(&p, run, presented, &refusal).await,
    }
}

/// How a request that pays for `resource` is refused: 402 with the current `offers`.
struct Refusal<'a> {
    resource: &'a ResourceInfo,
    offers: &'a [PaymentRequirements],
}

impl Refusal<'_> {
    /// A payment refused for `r`.
    fn refuse(&self, r: Reason) -> Response {
        payment_required(self.resource, self.offers, Some(&r), None)
    }

    /// A payment refused for `e`; a fault on this side is 502, "retry", not a refusal.
    fn refuse_err(&self, e: X402Error) -> Response {
        match e {
            X402Error::Invalid(r) => self.refuse(r),
            X402Error::Malformed(m) => self.refuse(Reason::new("invalid_payload", m)),
            other => {
                tracing::error!(error = %other, "payment check failed on our side");
                let code = other.code();
                (
                    StatusCode::BAD_GATEWAY,
                    axum::Json(cairn_core::ErrorBody::new(
                        code,
                        format!("the payment could not be checked: {other}; retry"),
                    )),
                )
                    .into_response()
            }
        }
    }

    /// A payment not (yet) settled: 402 for `r`, with the settlement answer `s`.
    fn unsettled(&self, r: &Reason, s: &SettleResponse, v: Version) -> Response {
        payment_required(self.resource, self.offers, Some(r), Some((s, v)))
    }
}

/// The request a payment pays for, until it runs.
struct Run {
    parts: Parts,
    body: Body,
    next: Next,
}

/// A payment as presented: which header carried it, the offer it answers, its payload.
struct Presented {
    version: Version,
    offer: PaymentRequirements,
    payload: Value,
    /// The v2 payload's `extensions` (an `upto` payer's EIP-2612 approval of Permit2).
    extensions: Option<Value>,
    /// Why it cannot pay for a new run: the payer echoed a resource other than the one this
    /// request buys now (what a name stands for changed since the offer). It may still be
    /// answered again for what it already paid.
    stale: Option<Reason>,
}

/// What a request asked (its body's SHA-256): a withheld answer goes only to a request asking
/// the same, since the payment itself is public once its transfer is out.
fn asked(body: &[u8]) -> B256 {
    use sha2::Digest;
    B256::from_slice(&sha2::Sha256::digest(body))
}

/// A response kept while its payment settles, for the request that `asked` it: JSON head
/// (status, headers, asked), a newline, the body.
fn freeze(parts: &axum::http::response::Parts, body: &Bytes, asked: B256) -> Vec<u8> {
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut out = serde_json::to_vec(
        &json!({"status": parts.status.as_u16(), "headers": headers, "asked": asked}),
    )
    .expect("serializes");
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// The response [`freeze`] kept, if it was asked as `asked` (one kept with no record of what
/// asked it goes to nobody).
fn thaw(frozen: &[u8], asked: B256) -> Option<Response> {
    let nl = frozen.iter().position(|&b| b == b'\n')?;
    let head: Value = serde_json::from_slice(&frozen[..nl]).ok()?;
    if head.get("asked")?.as_str()?.parse::<B256>().ok()? != asked {
        return None;
    }
    let status = StatusCode::from_u16(head["status"].as_u64()? as u16).ok()?;
    let mut resp = Response::new(Body::from(frozen[nl + 1..].to_vec()));
    *resp.status_mut() = status;
    for pair in head["headers"].as_array()? {
        let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::from_str(v)) {
            resp.headers_mut().append(k, v);
        }
    }
    Some(resp)
}
