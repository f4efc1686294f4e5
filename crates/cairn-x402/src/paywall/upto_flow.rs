//! A request paid with `upto` (a Permit2 authorization of at most the price): checked locally
//! and against the chain, reserved in the durable store (used once), run, and settled for the
//! price before the answer leaves; a route that fails is charged nothing (no transaction).

use super::*;
use crate::upto::CheckedUpto;

/// Takes an `upto` payment for `offer`: checked, reserved, its chain state read. The key and
/// the checked authorization, or the answer refusing it (a replay included).
// The error is the answer itself, built once per request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub(super) async fn take(
    f: &Facilitator,
    payload: &Value,
    offer: &PaymentRequirements,
    refusal: &Refusal<'_>,
) -> Result<(B256, CheckedUpto), Response> {
    let checked = f
        .check_upto(payload, offer, now_secs())
        .map_err(|e| refusal.refuse_err(e))?;
    let (key, reserved) = f
        .reserve_upto(&checked, &refusal.resource.url, payload)
        .map_err(|e| refusal.refuse_err(e))?;
    if let Reserve::Seen(rec) = reserved {
        return Err(refusal.refuse(Reason::new(
            "permit2_invalid_nonce",
            format!(
                "this permit (nonce {}) was already presented ({}); sign a new one",
                checked.authorization.nonce,
                match rec.state {
                    PaymentState::Reserved => "it is in use by a request running now",
                    PaymentState::Settled => "it is spent",
                    PaymentState::Pending => "its settlement is pending",
                    _ => "its settlement failed",
                }
            ),
        )));
    }
    if let Err(e) = f.check_upto_chain(&checked).await {
        f.store().release(key, Some(&e.to_string()));
        return Err(refusal.refuse_err(e));
    }
    Ok((key, checked))
}

/// The `PAYMENT-RESPONSE` of an `upto` settlement of `amount`.
pub(super) fn settle_response(
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
        amount: Some(amount.to_string()),
    }
}

/// Runs `run` paid by the `upto` payment `pr`, charging the offer's amount.
pub(super) async fn pay(p: &Paywall, run: Run, pr: Presented, refusal: &Refusal<'_>) -> Response {
    let f = &p.facilitator;
    let (key, checked) = match take(f, &pr.payload, &pr.offer, refusal).await {
        Ok(x) => x,
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
