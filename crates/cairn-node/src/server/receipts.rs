//! Receipts, their batches and payloads: `/v1/receipts/…`, `/v1/batches/…`, and who may read a
//! payload.

use super::*;

#[utoipa::path(get, path = "/v1/receipts/{id}", tag = "node",
    params(("id" = String, Path, description = "the receipt's request id, hex")),
    responses((status = 200, body = StoredReceipt), (status = 404, body = ErrorBody)))]
pub(super) async fn receipt(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<Json<StoredReceipt>, NodeError> {
    let stored =
        s.0.log
            .get(&id.to_ascii_lowercase())
            .await?
            .ok_or_else(|| NodeError::ReceiptNotFound(format!("no receipt `{id}` on this node")))?;
    let receipt = stored.receipt;
    let batch = stored.batch.map(|b| Inclusion {
        id: b.chain_batch,
        status: b.status,
        root: B256::from(b.root),
        proof: b.proof.iter().map(|p| B256::from(*p)).collect(),
        tx: b.tx.map(B256::from),
        leaf: cairn_node_api::LEAF_RULE.into(),
    });
    Ok(Json(StoredReceipt {
        receipt,
        created_at: stored.created_at,
        payloads_kept: stored.payloads,
        batch,
    }))
}

/// A verifier hands in its signature over one of this node's batches; the node puts a quorum
/// of them on chain.
#[utoipa::path(post, path = "/v1/batches/{id}/attestations", tag = "node",
    params(("id" = u64, Path, description = "the batch's id on chain")),
    request_body = AttestationRequest,
    responses((status = 200, body = AttestationAccepted), (status = 403, description = "not an active verifier", body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn add_attestation(
    State(s): State<NodeState>,
    Path(id): Path<u64>,
    body: axum::body::Bytes,
) -> Result<Json<AttestationAccepted>, NodeError> {
    let chain = s.0.chain.as_ref().ok_or_else(|| {
        NodeError::NotFound("this node does not settle receipts on a chain".into())
    })?;
    let body: AttestationRequest = serde_json::from_slice(&body)
        .map_err(|e| NodeError::BadRequest(format!("expected {{\"signature\": \"0x…\"}}: {e}")))?;
    let bytes = alloy_primitives::hex::decode(body.signature.trim_start_matches("0x"))
        .map_err(|e| NodeError::BadRequest(format!("signature is not hex: {e}")))?;
    let signature = alloy_primitives::Signature::try_from(bytes.as_slice())
        .map_err(|e| NodeError::BadRequest(format!("not a 65-byte signature: {e}")))?;
    // The contract refuses high-s signatures: storing one would let anyone swap a verifier's
    // good signature for its twin and block the batch's attestation.
    if !cairn_core::sig::is_low_s(&signature) {
        return Err(NodeError::SignatureNotCanonical(
            "the signature's s is in the upper half of the curve order; send the low-s form".into(),
        ));
    }
    let batch = chain
        .batch(id)
        .await
        .map_err(|e| NodeError::ChainUnavailable(e.to_string()))?;
    if batch.status == cairn_ledger::BatchStatus::Unknown {
        return Err(NodeError::ReceiptNotFound(format!(
            "no batch {id} on chain"
        )));
    }
    if batch.node != s.address() {
        return Err(NodeError::BadRequest(format!(
            "batch {id} belongs to {}, not this node",
            batch.node
        )));
    }
    let signer = chain
        .attestation_signer(&batch, &signature)
        .map_err(|e| NodeError::NotAVerifier(e.to_string()))?;
    let active = match &s.0.verifiers {
        Some(v) => v
            .contains(signer)
            .await
            .map_err(|e| NodeError::ChainUnavailable(e.to_string()))?,
        None => false,
    };
    if !active {
        return Err(NodeError::NotAVerifier(format!(
            "the signature recovers to {signer}, which is not an active verifier for batch {id} \
             (a signature over other batch fields recovers to a stranger)"
        )));
    }
    // A signer's first valid signature stays: a later one (even a valid one) never replaces it.
    let collected =
        s.0.log
            .add_attestation(id, signer.0.0, signature.as_bytes().to_vec())
            .await?;
    Ok(Json(AttestationAccepted {
        batch: id,
        signer,
        collected,
    }))
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "node",
    params(("id" = u64, Path, description = "the batch's id on chain"),
           ("accept" = Option<String>, Header, description = "`application/vnd.cairn.receipt-listing` for the receipts alone in binary form (what verifiers read)")),
    responses((status = 200, body = BatchView,
               description = "the batch as JSON, or its receipts as `application/vnd.cairn.receipt-listing`"),
              (status = 404, body = ErrorBody)))]
pub(super) async fn batch(
    State(s): State<NodeState>,
    Path(id): Path<u64>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, NodeError> {
    let b = s.0.log.batch_receipts(id).await?.ok_or_else(|| {
        NodeError::ReceiptNotFound(format!("no submitted batch {id} from this node"))
    })?;
    let corrupt = |e: cairn_receipt::ReceiptError| {
        NodeError::Internal(format!("a stored receipt of batch {id} is unreadable: {e}"))
    };
    // Binary when asked for and every row holds it (a batch with rows from before the binary
    // form is served as JSON, which verifiers read too: nothing is re-encoded here).
    let binary = accepts(&headers, cairn_node_api::RECEIPT_LISTING_TYPE)
        && b.receipts.iter().all(|r| r.compact().is_some());
    let vary = (axum::http::header::VARY, "accept");
    let head = (b.chain_batch, b.root, b.count, b.fees, b.status, b.tx);
    if binary {
        let forge = s.0.faults.forge_listing_seals;
        let entries: Vec<std::borrow::Cow<[u8]>> = b
            .receipts
            .iter()
            .filter_map(|r| r.compact())
            .map(|c| match forge {
                true => crate::faults::forge_seal(c.as_bytes()).into(),
                false => c.as_bytes().into(),
            })
            .collect();
        let body = cairn_receipt::compact::encode_listing(entries.iter().map(|e| e.as_ref()));
        return Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    cairn_node_api::RECEIPT_LISTING_TYPE,
                ),
                vary,
            ],
            body,
        )
            .into_response());
    }
    // Rendering JSON from the binary form is CPU work (no signature is recovered): off the
    // async workers.
    let receipts = tokio::task::spawn_blocking(move || {
        b.receipts
            .into_iter()
            .map(|r| r.json())
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| NodeError::Internal(format!("rendering batch {id}: {e}")))?
    .map_err(corrupt)?;
    let view = Json(BatchView {
        id: head.0,
        root: B256::from(head.1),
        count: head.2,
        fees: head.3,
        status: head.4,
        tx: head.5.map(B256::from),
        receipts,
    });
    Ok(([vary], view).into_response())
}

/// Whether `Accept` names `media_type` (any case) with a non-zero quality.
fn accepts(headers: &axum::http::HeaderMap, media_type: &str) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case(media_type))
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        })
}

pub use cairn_node_api::PAYLOAD_TOKEN_HEADER;

impl NodeState {
    /// The host signed requests to this node must name: its registered endpoint's (a request
    /// signed for another node and relayed here is refused); the request's own `Host` while the
    /// node is not registered on a chain.
    async fn signed_host(&self, parts: &axum::http::request::Parts) -> String {
        if let Some(chain) = &self.0.chain {
            let mut cached = self.0.own_host.lock().await;
            let stale = cached
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= Duration::from_secs(60));
            if stale
                && let Ok(n) = chain.node(self.address()).await
                && let Some((host, _)) = cairn_core::auth::host_and_target(&n.endpoint)
            {
                *cached = Some((host, std::time::Instant::now()));
            }
            if let Some((host, _)) = cached.as_ref() {
                return host.clone();
            }
        }
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_ascii_lowercase()
    }

    /// Who may read receipt `id`'s payloads: the holder of its capability token, its payer and
    /// active verifiers (signed requests). Anyone else learns nothing, not even whether it
    /// exists.
    async fn authorize_payload(
        &self,
        id: B256,
        payer: Option<[u8; 20]>,
        parts: &axum::http::request::Parts,
    ) -> Result<(), NodeError> {
        let token = parts
            .headers
            .get(PAYLOAD_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                parts
                    .uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            });
        if let Some(t) = token {
            // Compared in constant time: how far a guess matches must not show in the timing.
            let want = payload_token(&self.0.signer.token_key, id);
            if t.parse::<B256>().is_ok_and(|got| {
                subtle::ConstantTimeEq::ct_eq(got.as_slice(), want.as_slice()).into()
            }) {
                return Ok(());
            }
            return Err(NodeError::Forbidden(
                "this payload token is not the one issued with the receipt".into(),
            ));
        }
        let host = self.signed_host(parts).await;
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let unauthorized = |e: cairn_core::auth::AuthError| {
            NodeError::Unauthorized(format!(
                "payloads go only to the caller who paid (its payload token, or a request signed by the payer) and to active verifiers (signed requests): {e}"
            ))
        };
        let (headers, signer) = cairn_core::auth::verify_request(
            |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
            &host,
            parts.method.as_str(),
            target,
            b"",
        )
        .map_err(unauthorized)?;
        // Who it is first, replay second: strangers never reach (or fill) the replay guards.
        let guard = if payer == Some(signer.0.0) {
            &self.0.payer_replay
        } else {
            let known = match &self.0.verifiers {
                Some(v) => v
                    .contains(signer)
                    .await
                    .map_err(|e| NodeError::ChainUnavailable(e.to_string()))?,
                None => false,
            };
            if !known {
                return Err(NodeError::Forbidden(format!(
                    "{signer} neither paid for this receipt nor is an active verifier"
                )));
            }
            &self.0.verifier_replay
        };
        guard
            .check(&headers, cairn_core::auth::unix_now())
            .map_err(unauthorized)
    }
}

pub(super) async fn payload(
    s: &NodeState,
    id: &str,
    output: bool,
    parts: &axum::http::request::Parts,
) -> Result<Response, NodeError> {
    let hidden = || {
        NodeError::ReceiptNotFound(format!(
            "no retrievable payload for receipt `{id}` (unknown, unpaid, or past retention)"
        ))
    };
    let rid: B256 = id.parse().map_err(|_| hidden())?;
    let key = rid.to_string();
    let stored = s.0.log.get(&key).await?;
    // Authorize before saying anything about the receipt.
    s.authorize_payload(rid, stored.as_ref().and_then(|r| r.payer), parts)
        .await?;
    let stored = stored.ok_or_else(hidden)?;
    if s.0.faults.withhold_payloads
        || s.0
            .faults
            .in_outage(stored.batch.as_ref().map(|b| b.sealed_at))
    {
        return Err(NodeError::Overloaded(
            "payloads are not available right now; retry later".into(),
        ));
    }
    let bytes = s.0.log.payload(&key, output).await?.ok_or_else(hidden)?;
    // A private call's payload is kept sealed to the verifiers: anyone else gets ciphertext.
    let media = if cairn_ohttp::sealed::is_sealed_payload(&bytes) {
        cairn_node_api::SEALED_PAYLOAD_TYPE
    } else {
        "application/octet-stream"
    };
    Ok(([(header::CONTENT_TYPE, media)], bytes).into_response())
}

#[utoipa::path(get, path = "/v1/receipts/{id}/input", tag = "node",
    params(("id" = String, Path)),
    description = "The inputs the node kept, as safetensors: for the holder of the call's `cairn-payload-token`, \
    or a request signed by the payer or an active verifier. Anyone else learns nothing about the receipt.",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn receipt_input(
    State(s): State<NodeState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, NodeError> {
    let (parts, _) = req.into_parts();
    payload(&s, &id, false, &parts).await
}

#[utoipa::path(get, path = "/v1/receipts/{id}/output", tag = "node",
    params(("id" = String, Path)),
    description = "The outputs the node kept, as safetensors; who may read them as for the input.",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn receipt_output(
    State(s): State<NodeState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, NodeError> {
    let (parts, _) = req.into_parts();
    payload(&s, &id, true, &parts).await
}
