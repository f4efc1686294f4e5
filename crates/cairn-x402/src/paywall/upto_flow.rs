//! A request paid with `upto` (a Permit2 authorization of at most the price): checked locally
//! and against the chain, reserved in the durable store (used once), run, and settled for the
//! price before the answer leaves; a route that fails is charged nothing (no transaction).

use super::*;
use crate::upto::CheckedUpto;

/// An `upto` payment as taken: fresh (checked, reserved, its maximum held) or presented before.
pub(super) enum Taken {
    /// Reserved now under its key.
    Fresh(B256, Box<CheckedUpto>),
    /// Presented before (this record): a lost answer's retry, or a replay.
    Seen(B256, Box<crate::store::PaymentRecord>),
}

/// Takes an `upto` payment for `offer`: checked, reserved, its chain state read and its maximum
/// held. Or the answer refusing it.
// The error is the answer itself, built once per request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub(super) async fn take(
    f: &Facilitator,
    pr: &Presented,
    refusal: &Refusal<'_>,
) -> Result<Taken, Response> {
    if pr.version == Version::V1 {
        return Err(refusal.refuse(Reason::new(
            "invalid_x402_version",
            "upto is an x402 version 2 scheme: send it in PAYMENT-SIGNATURE",
        )));
    }
    let checked = f
        .check_upto(&pr.payload, pr.extensions.as_ref(), &pr.offer, now_secs())
        .map_err(|e| refusal.refuse_err(e))?;
    if let Some(r) = &pr.stale {
        // Nothing reserved for a permit that cannot pay: one seen before is answered as such.
        let key = f.upto_key(&checked).map_err(|e| refusal.refuse_err(e))?;
        return match f.store().seen(key) {
            Ok(Some(rec)) => Ok(Taken::Seen(key, Box::new(rec))),
            Ok(None) => Err(refusal.refuse(r.clone())),
            Err(e) => Err(refusal.refuse_err(e)),
        };
    }
    let (key, reserved) = f
        .reserve_upto(&checked, &refusal.resource.url, &pr.payload)
        .map_err(|e| refusal.refuse_err(e))?;
    if let Reserve::Seen(rec) = reserved {
        return Ok(Taken::Seen(key, rec));
    }
    if let Err(e) = f.check_upto_chain(&checked, true).await {
        f.store().release(key, Some(&e.to_string()));
        return Err(refusal.refuse_err(e));
    }
    Ok(Taken::Fresh(key, Box::new(checked)))
}

/// A permit presented again: the answer it paid for when it was charged for this very resource
/// and the kept answer matches the request (the client lost it), else the refusal.
pub(super) fn presented_again(
    rec: &crate::store::PaymentRecord,
    kept: Option<Response>,
    pr: &Presented,
    refusal: &Refusal<'_>,
) -> Response {
    let charged = matches!(rec.state, PaymentState::Settled | PaymentState::Pending);
    if charged
        && rec.resource == refusal.resource.url
        && let Some(mut resp) = kept
    {
        let s = SettleResponse {
            success: rec.state == PaymentState::Settled,
            error_reason: (rec.state == PaymentState::Pending).then(|| "settlement_pending".into()),
            transaction: rec.tx.clone().unwrap_or_default(),
            network: pr.offer.network.clone(),
            payer: Some(rec.payer),
            amount: None,
            extra: None,
        };
        insert_settle(resp.headers_mut(), &s, pr.version);
        return resp;
    }
    refusal.refuse(Reason::new(
        "permit2_invalid_nonce",
        format!(
            "this permit was already presented ({}); sign a new one",
            match rec.state {
                PaymentState::Reserved => "it is in use by a request running now",
                PaymentState::Settled | PaymentState::Pending => "it paid for another request",
                _ => "its settlement failed",
            }
        ),
    ))
}

/// The `PAYMENT-RESPONSE` of an `upto` settlement of `amount`.
pub(crate) fn settle_response(
    network: &str,
    payer: Address,
    amount: U256,
    outcome: &Settlement,
) -> SettleResponse {
    let (success, error_reason, transaction) = match outcome {
        Settlement::Settled(tx) => (true, None, tx.clone()),
        Settlement::Pending(tx) => (
            false,
            Some("settlement_pending".to_string()),
            tx.clone().unwrap_or_default(),
        ),
        Settlement::Failed(r) => (false, Some(r.code.to_string()), String::new()),
    };
    SettleResponse {
        success,
        error_reason,
        transaction,
        network: network.to_string(),
        payer: Some(payer),
        // What was charged; a failed settlement charged nothing and names no amount.
        amount: (!matches!(outcome, Settlement::Failed(_))).then(|| amount.to_string()),
        extra: None,
    }
}

/// Runs `run` paid by the `upto` payment `pr`, charging the offer's amount.
pub(super) async fn pay(p: &Paywall, run: Run, pr: Presented, refusal: &Refusal<'_>) -> Response {
    let f = &p.facilitator;
    let (key, checked) = match take(f, &pr, refusal).await {
        Ok(Taken::Fresh(key, checked)) => (key, *checked),
        Ok(Taken::Seen(key, rec)) => {
            let kept = p.kept_answer(key, &run.parts.headers, run.body).await;
            return presented_again(&rec, kept, &pr, refusal);
        }
        Err(resp) => return resp,
    };
    let payer = checked.authorization.owner;
    let price = pr.offer.amount;
    let Run {
        mut parts,
        body,
        next,
    } = run;
    parts.extensions.insert(Paid {
        scheme: crate::upto::SCHEME,
        payer,
        amount: price,
        payment_ref: key,
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    if !resp.status().is_success() {
        f.release_upto(key, &checked, None).await;
        return resp;
    }
    let (rparts, rbody) = resp.into_parts();
    let bytes = match axum::body::to_bytes(rbody, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            f.release_upto(key, &checked, Some("the response could not be read"))
                .await;
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
    let outcome = f.settle_upto(key, &checked, price).await;
    let s = settle_response(&pr.offer.network, payer, price, &outcome);
    match outcome {
        // Settled, or sent and not confirmed yet: the answer is the payer's (a settlement that
        // never lands costs this node the call, never the payer an answer it paid for).
        Settlement::Settled(_) | Settlement::Pending(_) => {
            let mut resp = Response::from_parts(rparts, Body::from(bytes));
            insert_settle(resp.headers_mut(), &s, pr.version);
            resp
        }
        Settlement::Failed(r) => refusal.unsettled(&r, &s, pr.version),
    }
}
