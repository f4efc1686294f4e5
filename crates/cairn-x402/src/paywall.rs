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
    /// The price of this request.
    fn price<'a>(
        &'a self,
        parts: &'a Parts,
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

/// The paywall's configuration and parts.
pub struct Paywall {
    facilitator: Arc<Facilitator>,
    prepaid: Option<Arc<Prepaid>>,
    pricing: Arc<dyn Pricing>,
    pay_to: Address,
    max_timeout_seconds: u64,
    kept: Option<Arc<dyn KeptAnswers>>,
}

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
            pricing,
            pay_to,
            max_timeout_seconds: 300,
            kept: None,
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
        let bytes = axum::body::to_bytes(body, MAX_REPLAY_BODY).await.ok()?;
        kept.answer(payment_ref, headers, &bytes).await
    }

    /// The offers for `price`: `prepaid` first when enabled (the cheap path), then `exact`.
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
        offers
    }

    /// The facilitator.
    pub fn facilitator(&self) -> &Arc<Facilitator> {
        &self.facilitator
    }

    /// The prepaid side, when enabled.
    pub fn prepaid(&self) -> Option<&Arc<Prepaid>> {
        self.prepaid.as_ref()
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
            axum::Json(
                json!({"code": "internal", "message": format!("the paid request failed: {e}")}),
            ),
        )
            .into_response(),
    }
}

async fn paid_request(p: Arc<Paywall>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let price = match p.pricing.price(&parts).await {
        Ok(Some(price)) => price,
        Ok(None) => return next.run(Request::from_parts(parts, body)).await,
        Err(resp) => return resp,
    };
    let resource = resource_of(&parts, &price);
    let offers = p.offers(&price);
    let (version, raw) = match (
        parts.headers.get(PAYMENT_SIGNATURE),
        parts.headers.get(X_PAYMENT),
    ) {
        (Some(v), _) => (Version::V2, v.as_bytes().to_vec()),
        (None, Some(v)) => (Version::V1, v.as_bytes().to_vec()),
        (None, None) => return payment_required(&resource, &offers, None, None),
    };
    let refuse = |r: Reason| payment_required(&resource, &offers, Some(&r), None);
    let refuse_err = |e: X402Error| match e {
        X402Error::Invalid(r) => refuse(r),
        X402Error::Malformed(m) => refuse(Reason::new("invalid_payload", m)),
        other => {
            tracing::error!(error = %other, "payment check failed on our side");
            let code = other.code();
            (
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({"code": code, "message": format!("the payment could not be checked: {other}; retry")})),
            )
                .into_response()
        }
    };
    let (offer, payload) = match version {
        Version::V2 => {
            let pp: PaymentPayload = match decode_header("PAYMENT-SIGNATURE", &raw) {
                Ok(pp) => pp,
                Err(e) => return refuse_err(e),
            };
            if pp.x402_version != 2 {
                return refuse(Reason::new(
                    "invalid_x402_version",
                    format!(
                        "PAYMENT-SIGNATURE carries x402Version {}; it must be 2 (v1 uses X-PAYMENT)",
                        pp.x402_version
                    ),
                ));
            }
            match offers.iter().find(|o| o.same_offer(&pp.accepted)) {
                Some(o) => (o.clone(), pp.payload),
                None => {
                    return refuse(Reason::new(
                        "invalid_payment_requirements",
                        "the payment answers no current offer (scheme, network, amount, asset, payTo); fetch the 402 again",
                    ));
                }
            }
        }
        Version::V1 => {
            let pp: PaymentPayloadV1 = match decode_header("X-PAYMENT", &raw) {
                Ok(pp) => pp,
                Err(e) => return refuse_err(e),
            };
            let found = offers.iter().find(|o| {
                o.scheme == pp.scheme
                    && crate::wire::chain_id_of(&o.network).and_then(v1_network)
                        == Some(pp.network.as_str())
            });
            match found {
                Some(o) => (o.clone(), pp.payload),
                None => {
                    return refuse(Reason::new(
                        "invalid_payment_requirements",
                        format!(
                            "no offer for scheme {:?} on network {:?}",
                            pp.scheme, pp.network
                        ),
                    ));
                }
            }
        }
    };

    if offer.scheme == prepaid::SCHEME {
        let Some(pre) = p.prepaid.clone() else {
            return refuse(Reason::new("unsupported_scheme", "prepaid is not enabled"));
        };
        let accepted = match pre.accept(&payload, offer.amount).await {
            Ok(a) => a,
            Err(X402Error::Invalid(r)) if r.code == "invalid_prepaid_voucher_already_used" => {
                // This voucher paid for a request already: if it was counted, answer it again.
                if let Some(key) = pre.counted(&payload)
                    && let Some(mut resp) = p.kept_answer(key, &parts.headers, body).await
                {
                    let s = SettleResponse {
                        success: true,
                        error_reason: None,
                        transaction: key.to_string(),
                        network: offer.network.clone(),
                        payer: None,
                    };
                    insert_settle(resp.headers_mut(), &s, version);
                    return resp;
                }
                return refuse(r);
            }
            Err(e) => return refuse_err(e),
        };
        let paid = Paid {
            scheme: "prepaid",
            payer: accepted.payer,
            amount: offer.amount,
            payment_ref: accepted.payment_ref(),
        };
        parts.extensions.insert(paid.clone());
        let mut resp = next.run(Request::from_parts(parts, body)).await;
        if !resp.status().is_success() {
            pre.release(&accepted);
            return resp;
        }
        // Counted before the output leaves: an answer the store did not count is withheld.
        if let Err(e) = pre.commit(&accepted) {
            tracing::error!(error = %e, "counting a prepaid voucher");
            pre.release(&accepted);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"code": e.code(), "message": format!("the payment could not be recorded: {e}; retry with the same voucher")})),
            )
                .into_response();
        }
        let s = SettleResponse {
            success: true,
            error_reason: None,
            transaction: paid.payment_ref.to_string(),
            network: offer.network.clone(),
            payer: Some(paid.payer),
        };
        insert_settle(resp.headers_mut(), &s, version);
        return resp;
    }

    // exact
    let f = &p.facilitator;
    let network = match version {
        Version::V2 => offer.network.clone(),
        Version::V1 => crate::wire::chain_id_of(&offer.network)
            .and_then(v1_network)
            .unwrap_or_default()
            .to_string(),
    };
    let settle_response =
        |success: bool, reason: Option<&str>, tx: Option<String>, payer: Address| SettleResponse {
            success,
            error_reason: reason.map(str::to_string),
            transaction: tx.unwrap_or_default(),
            network: network.clone(),
            payer: Some(payer),
        };
    // A payment already charged for this resource is answered from what was kept, whatever the
    // clock says of its authorization now (the client is retrying a lost answer).
    if let Ok(parsed) = crate::exact::parse(&payload) {
        let a = &parsed.authorization;
        let key = crate::exact::payment_ref(offer.asset, a.from, a.nonce);
        if let Ok(Some(mut rec)) = f.store().get(key)
            && rec.resource == resource.url
            && rec.response.is_none()
            && matches!(rec.state, PaymentState::Settled | PaymentState::Pending)
        {
            if rec.state == PaymentState::Pending {
                rec.state = f.reconcile(&rec).await.unwrap_or(rec.state);
            }
            if rec.state == PaymentState::Settled
                && let Some(mut resp) = p.kept_answer(key, &parts.headers, body).await
            {
                let s = settle_response(true, None, rec.tx.clone(), rec.payer);
                insert_settle(resp.headers_mut(), &s, version);
                return resp;
            }
            let r = if rec.state == PaymentState::Pending {
                Reason::new(
                    "settlement_pending",
                    "the payment's transfer is sent and not confirmed yet; retry with the same payment shortly (you will not be charged twice)",
                )
            } else {
                Reason::new(
                    "invalid_exact_evm_nonce_already_used",
                    "this payment was spent on another request; sign a new one",
                )
            };
            let s = settle_response(false, Some(r.code), rec.tx.clone(), rec.payer);
            return payment_required(&resource, &offers, Some(&r), Some((&s, version)));
        }
    }
    let checked: CheckedExact = match f.check_exact(&payload, &offer, now_secs()) {
        Ok(c) => c,
        Err(e) => return refuse_err(e),
    };
    let payer = checked.authorization.from;
    let (key, reserved) = match f.reserve(&checked, &resource.url, &payload) {
        Ok(x) => x,
        Err(e) => return refuse_err(e),
    };
    if let Reserve::Seen(mut rec) = reserved {
        // The same payment again: a withheld response of this very resource is handed over
        // once its transfer is confirmed (a paywall without kept answers); anything else is a
        // replay.
        if rec.response.is_some() && rec.resource == resource.url {
            if rec.state == PaymentState::Pending {
                rec.state = f.reconcile(&rec).await.unwrap_or(rec.state);
            }
            match rec.state {
                PaymentState::Settled => {
                    if let Some(mut resp) = rec.response.as_deref().and_then(thaw) {
                        let s = settle_response(true, None, rec.tx.clone(), payer);
                        insert_settle(resp.headers_mut(), &s, version);
                        return resp;
                    }
                }
                PaymentState::Pending => {
                    let r = Reason::new(
                        "settlement_pending",
                        "the payment's transfer is sent and not confirmed yet; retry with the same payment shortly (you will not be charged twice)",
                    );
                    let s = settle_response(false, Some(r.code), rec.tx.clone(), payer);
                    return payment_required(&resource, &offers, Some(&r), Some((&s, version)));
                }
                _ => {}
            }
        }
        return refuse(Reason::new(
            "invalid_exact_evm_nonce_already_used",
            format!(
                "this payment (nonce {}) was already presented ({}); sign a new one",
                checked.authorization.nonce,
                match rec.state {
                    PaymentState::Reserved => "it is in use by a request running now",
                    PaymentState::Settled => "it is spent",
                    PaymentState::Pending => "its settlement is pending",
                    _ => "its settlement failed",
                }
            ),
        ));
    }
    if let Err(e) = f.check_chain(&checked).await {
        f.store().release(key, Some(&e.to_string()));
        return refuse_err(e);
    }
    parts.extensions.insert(Paid {
        scheme: "exact",
        payer: checked.authorization.from,
        amount: checked.authorization.value,
        payment_ref: key,
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    if !resp.status().is_success() {
        f.store().release(key, None);
        return resp;
    }
    let (rparts, rbody) = resp.into_parts();
    let bytes = match axum::body::to_bytes(rbody, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            f.store()
                .release(key, Some("the response could not be read"));
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(
                    json!({"code": "internal", "message": format!("reading the response: {e}")}),
                ),
            )
                .into_response();
        }
    };
    // With kept answers a retry is answered from them (inputs checked); without, the response
    // itself is kept while the transfer is unconfirmed.
    let frozen = p.kept.is_none().then(|| freeze(&rparts, &bytes));
    match f.settle_reserved(key, &checked, frozen.as_deref()).await {
        Settlement::Settled(tx) => {
            let mut resp = Response::from_parts(rparts, Body::from(bytes));
            let s = settle_response(true, None, Some(tx), payer);
            insert_settle(resp.headers_mut(), &s, version);
            resp
        }
        Settlement::Pending(tx) => {
            let r = Reason::new(
                "settlement_pending",
                "the payment's transfer is sent and not confirmed yet; the result is kept: retry with the same payment shortly (you will not be charged twice)",
            );
            let s = settle_response(false, Some(r.code), tx, payer);
            payment_required(&resource, &offers, Some(&r), Some((&s, version)))
        }
        Settlement::Failed(r) => {
            let s = settle_response(false, Some(r.code), None, payer);
            payment_required(&resource, &offers, Some(&r), Some((&s, version)))
        }
    }
}

/// A response kept while its payment settles: JSON head (status, headers), a newline, the body.
fn freeze(parts: &axum::http::response::Parts, body: &Bytes) -> Vec<u8> {
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut out = serde_json::to_vec(&json!({"status": parts.status.as_u16(), "headers": headers}))
        .expect("serializes");
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn thaw(frozen: &[u8]) -> Option<Response> {
    let nl = frozen.iter().position(|&b| b == b'\n')?;
    let head: Value = serde_json::from_slice(&frozen[..nl]).ok()?;
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
