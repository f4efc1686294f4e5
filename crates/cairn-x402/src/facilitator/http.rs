//! The facilitator's face: `verify`, `settle` and `supported` as the x402 specification words
//! them, and their HTTP API.

use super::*;

impl Facilitator {
    /// `POST /verify`: would this payment settle now? Reserves nothing.
    pub async fn verify(&self, req: &FacilitatorRequest) -> VerifyResponse {
        if is_upto(req) {
            return self.verify_upto(req).await;
        }
        if batch::is_batch(req) {
            return self.verify_batch(req).await;
        }
        let checked = self
            .normalize(req)
            .and_then(|(payload, r)| self.check_exact(&payload, &r, now_secs()));
        let result = match checked {
            Ok(c) => self.check_chain(&c).await.map(|()| c.authorization.from),
            Err(e) => Err(e),
        };
        verify_answer(result, req)
    }

    /// `POST /settle`: verifies, reserves and settles. Idempotent for the same authorization: a
    /// retry after a timeout gets the first outcome, never a second transfer.
    pub async fn settle(&self, req: &FacilitatorRequest) -> SettleResponse {
        if is_upto(req) {
            return self.settle_upto_request(req).await;
        }
        if batch::is_batch(req) {
            return self.settle_batch(req).await;
        }
        let network = self.network_for(req.x402_version);
        let fail = |code: &str, payer: Option<Address>| SettleResponse {
            success: false,
            error_reason: Some(code.to_string()),
            transaction: String::new(),
            network: network.clone(),
            payer,
            amount: None,
            extra: None,
        };
        let (payload, r) = match self.normalize(req) {
            Ok(x) => x,
            Err(e) => return fail(e.code(), payer_of(req)),
        };
        let c = match self.check_exact(&payload, &r, now_secs()) {
            Ok(c) => c,
            Err(e) => return fail(e.code(), payer_of(req)),
        };
        let payer = Some(c.authorization.from);
        let (key, reserved) = match self.reserve(&c, "facilitator", &payload) {
            Ok(x) => x,
            Err(e) => return fail(e.code(), payer),
        };
        if let Reserve::Seen(rec) = reserved {
            let failed = reason_code(rec.reason.as_deref()).unwrap_or("transaction_failed");
            return self.settled_before(*rec, network, payer, failed).await;
        }
        if let Err(e) = self.check_chain(&c).await {
            self.store.release(key, Some(&e.to_string()));
            return fail(e.code(), payer);
        }
        match self.settle_reserved(key, &c, None).await {
            Settlement::Settled(tx) => SettleResponse {
                success: true,
                error_reason: None,
                transaction: tx,
                network,
                payer,
                amount: None,
                extra: None,
            },
            Settlement::Pending(tx) => SettleResponse {
                transaction: tx.unwrap_or_default(),
                ..fail("settlement_pending", payer)
            },
            Settlement::Failed(r) => fail(r.code, payer),
        }
    }

    /// A `/settle` retry for a payment presented before: its first outcome (reconciled when it
    /// was pending), never a second transfer; `failed` names a failure.
    pub(super) async fn settled_before(
        &self,
        mut rec: PaymentRecord,
        network: String,
        payer: Option<Address>,
        failed: &str,
    ) -> SettleResponse {
        if rec.state == PaymentState::Pending {
            rec.state = self.reconcile(&rec).await.unwrap_or(rec.state);
        }
        let answer = |success: bool, error: Option<&str>| SettleResponse {
            success,
            error_reason: error.map(str::to_string),
            transaction: rec.tx.clone().unwrap_or_default(),
            network: network.clone(),
            payer,
            amount: None,
            extra: None,
        };
        match rec.state {
            PaymentState::Settled => answer(true, None),
            PaymentState::Pending | PaymentState::Reserved => {
                answer(false, Some("settlement_pending"))
            }
            _ => SettleResponse {
                transaction: String::new(),
                ..answer(false, Some(failed))
            },
        }
    }

    /// `GET /supported`.
    pub fn supported(&self) -> Value {
        let mut kinds =
            vec![json!({"x402Version": 2, "scheme": "exact", "network": self.network()})];
        if self.upto_contracts().is_some() {
            kinds.push(
                json!({"x402Version": 2, "scheme": "upto", "network": self.network(),
                "extra": {"facilitatorAddress": self.address()}}),
            );
        }
        kinds.extend(self.batch_kind());
        if let Some(n) = v1_network(self.chain_id()) {
            kinds.push(json!({"x402Version": 1, "scheme": "exact", "network": n}));
        }
        json!({
            "kinds": kinds,
            "extensions": [],
            "signers": {"eip155:*": [self.signer.address().to_checksum(None)]},
        })
    }

    /// The facilitator's HTTP API, with `GET /metrics` (requests by route and status: a
    /// settlement's outcome is its status).
    pub fn router(self: std::sync::Arc<Self>) -> Router {
        let api = Router::new()
            .route("/verify", post(http_verify))
            .route("/settle", post(http_settle))
            .route("/supported", get(http_supported))
            .with_state(self);
        cairn_serve::metrics::serve(
            api,
            std::sync::Arc::new(cairn_serve::metrics::Metrics::new("cairn_facilitator")),
        )
    }
}

/// `/verify`'s answer: valid for the payer, or the reason and the payer the request names.
pub(super) fn verify_answer(
    result: Result<Address, X402Error>,
    req: &FacilitatorRequest,
) -> VerifyResponse {
    match result {
        Ok(payer) => VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            payer: Some(payer),
            extra: None,
        },
        Err(e) => VerifyResponse {
            is_valid: false,
            invalid_reason: Some(e.code().to_string()),
            payer: payer_of(req),
            extra: None,
        },
    }
}

/// The reason code at the front of a stored `code: message` reason.
pub(super) fn reason_code(stored: Option<&str>) -> Option<&'static str> {
    let code = stored?.split(':').next()?.trim();
    KNOWN_CODES.iter().copied().find(|c| *c == code)
}

pub(super) const KNOWN_CODES: &[&str] = &[
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_transaction_simulation_failed",
    "invalid_exact_evm_payload_authorization_valid_before",
    "invalid_exact_evm_insufficient_balance",
    "transaction_failed",
];

pub(super) fn payer_of(req: &FacilitatorRequest) -> Option<Address> {
    let payload = &req.payment_payload["payload"];
    let p = match payload.get("permit2Authorization") {
        Some(a) => &a["from"],
        None => &payload["authorization"]["from"],
    };
    p.as_str()?.parse().ok()
}

/// Whether the request is for scheme `upto` (v2 only).
fn is_upto(req: &FacilitatorRequest) -> bool {
    req.payment_requirements["scheme"] == crate::upto::SCHEME
}

/// The body of `POST /verify` and `POST /settle`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// 1 or 2.
    #[serde(default = "two")]
    pub x402_version: u8,
    /// The client's payment (v2 `PaymentPayload` or v1 `PaymentPayloadV1`).
    pub payment_payload: Value,
    /// The requirements it answers.
    pub payment_requirements: Value,
}

pub(super) fn two() -> u8 {
    2
}

pub(super) type Shared = std::sync::Arc<Facilitator>;

/// JSON bodies that do not parse get a JSON error, not axum's plain text.
pub(super) fn parse_body(
    body: &[u8],
) -> Result<FacilitatorRequest, (axum::http::StatusCode, Json<Value>)> {
    serde_json::from_slice(body).map_err(|e| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({
                "code": "invalid_request",
                "message": format!("the body must be {{x402Version, paymentPayload, paymentRequirements}}: {e}"),
                "isValid": false,
                "success": false,
                "invalidReason": "invalid_payload",
                "errorReason": "invalid_payload",
            })),
        )
    })
}

/// Refuses a request without an accepted API key (when the facilitator has a policy), before
/// anything is parsed or read from the chain.
pub(super) fn admit(
    f: &Facilitator,
    headers: &axum::http::HeaderMap,
) -> Result<(), (axum::http::StatusCode, Json<Value>)> {
    let Some(p) = &f.policy else { return Ok(()) };
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if p.admits(auth) {
        return Ok(());
    }
    Err((
        axum::http::StatusCode::UNAUTHORIZED,
        Json(json!({
            "code": "unauthorized",
            "message": "this facilitator serves its operator's resource servers: send `Authorization: Bearer <api key>`",
            "isValid": false,
            "success": false,
            "invalidReason": "unauthorized",
            "errorReason": "unauthorized",
        })),
    ))
}

pub(super) async fn http_verify(
    State(f): State<Shared>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<VerifyResponse>, (axum::http::StatusCode, Json<Value>)> {
    admit(&f, &headers)?;
    let req = parse_body(&body)?;
    Ok(Json(f.verify(&req).await))
}

pub(super) async fn http_settle(
    State(f): State<Shared>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<SettleResponse>, (axum::http::StatusCode, Json<Value>)> {
    admit(&f, &headers)?;
    let req = parse_body(&body)?;
    Ok(Json(f.settle(&req).await))
}

pub(super) async fn http_supported(State(f): State<Shared>) -> Json<Value> {
    Json(f.supported())
}
