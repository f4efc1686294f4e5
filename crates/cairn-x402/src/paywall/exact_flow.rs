//! A request paid with `exact` (an EIP-3009 transfer): checked locally, reserved in the durable
//! store, run, and settled on chain before the answer leaves. The same payment presented again is
//! answered from what was kept (never run or charged twice), or refused as a replay.

use super::*;

/// Runs `run` paid by the `exact` payment `pr`.
pub(super) async fn pay(p: &Paywall, run: Run, pr: Presented, refusal: &Refusal<'_>) -> Response {
    let f = &p.facilitator;
    // A payment already charged for this resource is answered from what was kept, whatever the
    // clock says of its authorization now (the client is retrying a lost answer).
    let run = match answered_before(p, run, &pr, refusal).await {
        Ok(run) => run,
        Err(resp) => return resp,
    };
    let checked: CheckedExact = match f.check_exact(&pr.payload, &pr.offer, now_secs()) {
        Ok(c) => c,
        Err(e) => return refusal.refuse_err(e),
    };
    let payer = checked.authorization.from;
    if let Some(r) = pr.stale.clone() {
        // Nothing reserved for a payment that cannot pay: one seen before is answered as such.
        return match f.store().seen(checked.payment_ref(f.token())) {
            Ok(Some(rec)) => presented_again(p, rec, &checked, &pr, refusal, run.body).await,
            Ok(None) => refusal.refuse(r),
            Err(e) => refusal.refuse_err(e),
        };
    }
    let (key, reserved) = match f.reserve(&checked, &refusal.resource.url, &pr.payload) {
        Ok(x) => x,
        Err(e) => return refusal.refuse_err(e),
    };
    if let Reserve::Seen(rec) = reserved {
        return presented_again(p, *rec, &checked, &pr, refusal, run.body).await;
    }
    if let Err(e) = f.check_chain(&checked).await {
        f.store().release(key, Some(&e.to_string()));
        return refusal.refuse_err(e);
    }
    // Without kept answers, the response is kept while its transfer confirms, for the request
    // that asked it: the body (of a payer who can pay) is read first, bounded, to know what.
    let (run, asked) = if p.kept.is_none() {
        let Run { parts, body, next } = run;
        let bytes = match axum::body::to_bytes(body, MAX_REPLAY_BODY).await {
            Ok(b) => b,
            Err(e) => {
                f.store().release(key, None);
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    axum::Json(cairn_core::ErrorBody::new(
                        "body_too_large",
                        format!(
                            "a paid request's body is read whole here, up to {MAX_REPLAY_BODY} bytes: {e}"
                        ),
                    )),
                )
                    .into_response();
            }
        };
        let asked = asked(&bytes);
        let body = Body::from(bytes);
        (Run { parts, body, next }, Some(asked))
    } else {
        (run, None)
    };
    let Run {
        mut parts,
        body,
        next,
    } = run;
    parts.extensions.insert(Paid {
        scheme: "exact",
        payer,
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
                axum::Json(cairn_core::ErrorBody::new(
                    "internal",
                    format!("reading the response: {e}"),
                )),
            )
                .into_response();
        }
    };
    // With kept answers a retry is answered from them (inputs checked); without, the response
    // itself is kept while the transfer is unconfirmed.
    let frozen = asked.map(|a| freeze(&rparts, &bytes, a));
    match f.settle_reserved(key, &checked, frozen.as_deref()).await {
        Settlement::Settled(tx) => {
            let mut resp = Response::from_parts(rparts, Body::from(bytes));
            let s = settle_response(&pr, true, None, Some(tx), payer);
            insert_settle(resp.headers_mut(), &s, pr.version);
            resp
        }
        Settlement::Pending(tx) => {
            let r = Reason::new(
                "settlement_pending",
                "the payment's transfer is sent and not confirmed yet; the result is kept: retry with the same payment shortly (you will not be charged twice)",
            );
            let s = settle_response(&pr, false, Some(r.code), tx, payer);
            refusal.unsettled(&r, &s, pr.version)
        }
        Settlement::Failed(r) => {
            let s = settle_response(&pr, false, Some(r.code), None, payer);
            refusal.unsettled(&r, &s, pr.version)
        }
    }
}

/// The settlement answer for `pr`, in its version's network naming.
fn settle_response(
    pr: &Presented,
    success: bool,
    reason: Option<&str>,
    tx: Option<String>,
    payer: Address,
) -> SettleResponse {
    let network = match pr.version {
        Version::V2 => pr.offer.network.clone(),
        Version::V1 => crate::wire::chain_id_of(&pr.offer.network)
            .and_then(v1_network)
            .unwrap_or_default()
            .to_string(),
    };
    SettleResponse {
        success,
        error_reason: reason.map(str::to_string),
        transaction: tx.unwrap_or_default(),
        network,
        payer: Some(payer),
        amount: None,
        extra: None,
    }
}

/// A payment already settled (or being settled) for this resource, with its answer kept: the
/// kept answer, or 402 while the transfer is unconfirmed or when the payment went elsewhere.
/// `Ok(run)`: not such a payment; go on.
// The error is the answer itself, built once per request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
async fn answered_before(
    p: &Paywall,
    run: Run,
    pr: &Presented,
    refusal: &Refusal<'_>,
) -> Result<Run, Response> {
    let f = &p.facilitator;
    let Ok(parsed) = crate::exact::parse(&pr.payload) else {
        return Ok(run);
    };
    let a = &parsed.authorization;
    let key = crate::exact::payment_ref(pr.offer.asset, a.from, a.nonce);
    let Ok(Some(mut rec)) = f.store().get(key) else {
        return Ok(run);
    };
    if rec.resource != refusal.resource.url
        || rec.response.is_some()
        || !matches!(rec.state, PaymentState::Settled | PaymentState::Pending)
    {
        return Ok(run);
    }
    if rec.state == PaymentState::Pending {
        rec.state = f.reconcile(&rec).await.unwrap_or(rec.state);
    }
    if rec.state == PaymentState::Settled
        && let Some(mut resp) = p.kept_answer(key, &run.parts.headers, run.body).await
    {
        let s = settle_response(pr, true, None, rec.tx.clone(), rec.payer);
        insert_settle(resp.headers_mut(), &s, pr.version);
        return Err(resp);
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
    let s = settle_response(pr, false, Some(r.code), rec.tx.clone(), rec.payer);
    Err(refusal.unsettled(&r, &s, pr.version))
}

/// The same payment again: a withheld response of this very resource, to a request that
/// `asked` the same, is handed over once its transfer is confirmed (a paywall without kept
/// answers); anything else is a replay.
async fn presented_again(
    p: &Paywall,
    mut rec: crate::store::PaymentRecord,
    checked: &CheckedExact,
    pr: &Presented,
    refusal: &Refusal<'_>,
    body: Body,
) -> Response {
    let f = &p.facilitator;
    let payer = checked.authorization.from;
    if rec.response.is_some() && rec.resource == refusal.resource.url {
        if rec.state == PaymentState::Pending {
            rec.state = f.reconcile(&rec).await.unwrap_or(rec.state);
        }
        match rec.state {
            PaymentState::Settled => {
                // Read only for a payment with a response kept, at most a few at once.
                let asked = p.replay_body(body).await.map(|b| asked(&b));
                if let Some(mut resp) = rec
                    .response
                    .as_deref()
                    .zip(asked)
                    .and_then(|(frozen, asked)| thaw(frozen, asked))
                {
                    let s = settle_response(pr, true, None, rec.tx.clone(), payer);
                    insert_settle(resp.headers_mut(), &s, pr.version);
                    return resp;
                }
            }
            PaymentState::Pending => {
                let r = Reason::new(
                    "settlement_pending",
                    "the payment's transfer is sent and not confirmed yet; retry with the same payment shortly (you will not be charged twice)",
                );
                let s = settle_response(pr, false, Some(r.code), rec.tx.clone(), payer);
                return refusal.unsettled(&r, &s, pr.version);
            }
            _ => {}
        }
    }
    refusal.refuse(Reason::new(
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
    ))
}
