//! A request paid with a prepaid voucher: accepted atomically before the run, counted before the
//! answer leaves, released when the route fails.

use super::*;
use crate::prepaid::Accepted;

/// Runs `run` paid by the voucher `presented` carries.
pub(super) async fn pay(
    p: &Paywall,
    run: Run,
    presented: Presented,
    refusal: &Refusal<'_>,
) -> Response {
    let Run {
        mut parts,
        body,
        next,
    } = run;
    let Presented {
        version,
        offer,
        payload,
        ..
    } = presented;
    let Some(pre) = p.prepaid.clone() else {
        return refusal.refuse(Reason::new("unsupported_scheme", "prepaid is not enabled"));
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
                    amount: None,
                };
                insert_settle(resp.headers_mut(), &s, version);
                return resp;
            }
            return refusal.refuse(r);
        }
        Err(e) => return refusal.refuse_err(e),
    };
    let paid = Paid {
        scheme: "prepaid",
        payer: accepted.payer,
        amount: offer.amount,
        payment_ref: accepted.payment_ref(),
    };
    parts.extensions.insert(paid.clone());
    // Given back however this ends short of being counted, a panic in the route included: a
    // voucher left taken would block its channel's next step until the node restarts.
    let taken = GiveBack(&pre, &accepted);
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !resp.status().is_success() {
        return resp;
    }
    // Counted before the output leaves: an answer the store did not count is withheld.
    if let Err(e) = pre.commit(&accepted, offer.amount) {
        tracing::error!(error = %e, "counting a prepaid voucher");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(cairn_core::ErrorBody::new(
                e.code(),
                format!("the payment could not be recorded: {e}; retry with the same voucher"),
            )),
        )
            .into_response();
    }
    // Counted: giving it back now is a no-op, skip it.
    std::mem::forget(taken);
    let s = SettleResponse {
        success: true,
        error_reason: None,
        transaction: paid.payment_ref.to_string(),
        network: offer.network.clone(),
        payer: Some(paid.payer),
        amount: None,
    };
    insert_settle(resp.headers_mut(), &s, version);
    resp
}

/// Gives a taken voucher back when dropped.
struct GiveBack<'a>(&'a Prepaid, &'a Accepted);

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}
