//! Prepaid channels (`/v1/prepaid/…`) and answers kept for a paid request presented again.

use super::*;

/// `POST /v1/prepaid/deposits`: submits a payer's gasless deposit (EIP-3009
/// `ReceiveWithAuthorization` to the escrow) into its channel with this node.
#[utoipa::path(post, path = "/v1/prepaid/deposits", tag = "payments",
    request_body(content = Object, description = "a deposit authorization {payer, salt, amount, validBefore, nonce, signature}"),
    responses((status = 200, body = PrepaidChannel), (status = 422, description = "payment_refused", body = ErrorBody),
              (status = 404, description = "no prepaid on this node", body = ErrorBody)))]
pub(super) async fn prepaid_deposit(
    State(s): State<NodeState>,
    body: Bytes,
) -> Result<Json<PrepaidChannel>, NodeError> {
    let Some(pre) = s.0.paywall.as_ref().and_then(|p| p.prepaid()) else {
        return Err(NodeError::NotFound(
            "this node does not take prepaid vouchers".into(),
        ));
    };
    let d: cairn_x402::prepaid::DepositAuthorization = serde_json::from_slice(&body)
        .map_err(|e| NodeError::BadRequest(format!("the body must be a deposit authorization {{payer, salt, amount, validBefore, nonce, signature}}: {e}")))?;
    let c = pre
        .deposit(&d, min_deposit(s.0.price))
        .await
        .map_err(|e| match e {
            cairn_x402::X402Error::Invalid(r) => NodeError::PaymentRefused(r.to_string()),
            other => NodeError::ChainUnavailable(other.to_string()),
        })?;
    Ok(Json(channel(&c)))
}

/// A prepaid channel as the node accounts it.
pub(super) fn channel(c: &cairn_x402::store::ChannelRecord) -> PrepaidChannel {
    PrepaidChannel {
        payer: c.payer,
        payee: c.payee,
        salt: c.salt,
        known: true,
        deposited: Some(c.deposited),
        accepted: c.accepted,
        redeemed: Some(c.redeemed),
        closing: Some(c.closing),
    }
}

/// `GET /v1/prepaid/{payer}?salt=0x…`: the payer's prepaid channel with this node, as the node
/// accounts it (what a client needs to sign its next cumulative voucher).
#[utoipa::path(get, path = "/v1/prepaid/{payer}", tag = "payments",
    params(("payer" = String, Path, description = "the payer's address"),
           ("salt" = Option<String>, Query, description = "the channel's salt (32 bytes hex; default zero)")),
    responses((status = 200, body = PrepaidChannel), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn prepaid_channel(
    State(s): State<NodeState>,
    Path(payer): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Result<Json<PrepaidChannel>, NodeError> {
    let Some(pre) = s.0.paywall.as_ref().and_then(|p| p.prepaid()) else {
        return Err(NodeError::NotFound(
            "this node does not take prepaid vouchers".into(),
        ));
    };
    let payer: alloy_primitives::Address = payer
        .parse()
        .map_err(|e| NodeError::BadRequest(format!("payer {payer:?} is not an address: {e}")))?;
    let salt: B256 = match q.get("salt") {
        Some(v) => v.parse().map_err(|e| {
            NodeError::BadRequest(format!("salt {v:?} is not 32 bytes of hex: {e}"))
        })?,
        None => B256::ZERO,
    };
    let rec = pre
        .status(payer, salt)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    Ok(Json(match rec {
        Some(c) => channel(&c),
        None => PrepaidChannel {
            payer,
            payee: pre.payee(),
            salt,
            known: false,
            deposited: None,
            accepted: U256::ZERO,
            redeemed: None,
            closing: None,
        },
    }))
}

/// Answers a paid request presented again from the receipt log: the receipt and the kept
/// outputs (JSON), so a client that lost the answer to a crash gets it without paying twice.
pub(super) struct KeptFromLog {
    pub(super) log: ReceiptLog,
    pub(super) token_key: B256,
}

impl cairn_x402::KeptAnswers for KeptFromLog {
    fn answer<'a>(
        &'a self,
        payment_ref: B256,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Response>> + Send + 'a>> {
        Box::pin(async move {
            let (receipt_json, output) = match self.log.by_payment(payment_ref).await {
                Ok(kept) => kept?,
                // The log cannot tell yet (its index is behind its journal): the payer is told
                // so and retries, instead of being answered as if nothing was kept.
                Err(e) => return Some(crate::error::NodeError::from(e).into_response()),
            };
            let receipt = receipt_json.verify().ok()?;
            // Only a request carrying the very inputs paid for gets the answer (the payment's
            // signature is public on chain; the inputs are not).
            if receipt.claims.llm.is_some() {
                // A language-model call: the same request bytes, the same answer bytes.
                if crate::llm::sha256(body) != receipt.claims.input_hash {
                    return None;
                }
                let output = kept_output(output, body, &receipt)?;
                let kind = if output.starts_with(b"data: ") {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                let id = HeaderValue::from_str(&receipt.id().to_string()).ok()?;
                let mut resp =
                    (StatusCode::OK, [(header::CONTENT_TYPE, kind)], output).into_response();
                resp.headers_mut()
                    .insert(cairn_node_api::openai::RECEIPT_ID_HEADER, id);
                return Some(resp);
            }
            let json_len = match headers.get(HEADER_LENGTH) {
                Some(v) => Some(v.to_str().ok()?.parse::<usize>().ok()?),
                None => None,
            };
            let limits = DecodeLimits {
                max_elements: u64::MAX,
            };
            let asked = kserve::decode(body, json_len, limits).ok()?;
            if tensors_hash(&asked.inputs) != receipt.claims.input_hash {
                return None;
            }
            let output = kept_output(output, &safetensors_io::encode(&asked.inputs), &receipt)?;
            let outputs = safetensors_io::decode(&output).ok()?;
            let id = receipt.id();
            let cid = receipt.claims.model;
            let wanted = outputs
                .iter()
                .map(|t| (t.name().to_string(), false))
                .collect();
            let resolved = crate::cache::Resolution {
                cid,
                version: None,
                signature: None,
                gguf: None,
            };
            let ran = Inference {
                outputs,
                token: payload_token(&self.token_key, id),
            };
            Some(respond(&resolved, None, wanted, ran, receipt_json))
        })
    }
}

/// A kept output as the caller gets it back: as it is, or (a private call's, sealed) opened with
/// the key the caller's own request gives.
fn kept_output(
    output: Vec<u8>,
    input: &[u8],
    receipt: &cairn_receipt::SignedReceipt,
) -> Option<Vec<u8>> {
    if !cairn_ohttp::sealed::is_sealed_payload(&output) {
        return Some(output);
    }
    cairn_ohttp::sealed::open_as_caller(
        &crate::sealing::kept_key(input),
        &crate::sealing::context(&receipt.id().to_string(), true),
        &output,
    )
    .ok()
}
