//! A request paid with a voucher on a channel (Cairn's `prepaid`, or x402 `batch-settlement`):
//! accepted atomically before the run, counted before the answer leaves, released when the
//! route fails.

use super::*;
use crate::batch::Batch;
use crate::prepaid::Accepted;

/// A voucher scheme's side of the node.
#[derive(Clone)]
pub(crate) enum Book {
    /// Cairn's prepaid vouchers against the Escrow contract.
    Prepaid(Arc<Prepaid>),
    /// The x402 batch-settlement channels.
    Batch(Arc<Batch>),
}

impl Book {
    pub(crate) fn scheme(&self) -> &'static str {
        match self {
            Self::Prepaid(_) => prepaid::SCHEME,
            Self::Batch(_) => crate::batch::SCHEME,
        }
    }

    /// Checks `payload` and takes its voucher for one request at `price`.
    pub(crate) async fn accept(
        &self,
        payload: &Value,
        extensions: Option<&Value>,
        price: U256,
    ) -> Result<Accepted, X402Error> {
        match self {
            Self::Prepaid(p) => p.accept(payload, price).await,
            Self::Batch(b) => b.accept(payload, extensions, price).await,
        }
    }

    /// Whether `r` says the voucher was presented before (its request may be answered again).
    fn seen_before(&self, r: &Reason) -> bool {
        match self {
            Self::Prepaid(_) => r.code == "invalid_prepaid_voucher_already_used",
            Self::Batch(_) => r.code == crate::batch::ERR_CUMULATIVE_MISMATCH,
        }
    }

    /// The payment reference of a voucher payload that was counted.
    fn counted(&self, payload: &Value) -> Result<Option<B256>, X402Error> {
        match self {
            Self::Prepaid(p) => p.counted(payload),
            Self::Batch(b) => b.counted(payload),
        }
    }

    /// Why a voucher counted for another request is refused.
    fn used(&self) -> Reason {
        match self {
            Self::Prepaid(_) => Reason::new(
                "invalid_prepaid_voucher_already_used",
                "this voucher was already taken for another request; sign the next one",
            ),
            Self::Batch(_) => Reason::new(
                crate::batch::ERR_CUMULATIVE_MISMATCH,
                "this voucher was already counted for another request; sign the next one from the channel's state",
            ),
        }
    }

    /// Gives a taken voucher back.
    pub(crate) fn release(&self, a: &Accepted) {
        match self {
            Self::Prepaid(p) => p.release(a),
            Self::Batch(b) => b.release(a),
        }
    }

    /// Counts a taken voucher at `charged`.
    pub(crate) fn commit(&self, a: &Accepted, charged: U256) -> Result<(), X402Error> {
        match self {
            Self::Prepaid(p) => p.commit(a, charged),
            Self::Batch(b) => b.commit(a, charged),
        }
    }

    /// The `PAYMENT-RESPONSE` of a voucher counted at `charged` (`None`: not yet charged).
    pub(crate) fn settled(
        &self,
        a: &Accepted,
        charged: Option<U256>,
        network: &str,
    ) -> SettleResponse {
        let (transaction, extra) = match self {
            // Prepaid: the payment reference stands for the transaction.
            Self::Prepaid(_) => (a.payment_ref().to_string(), None),
            // Batch-settlement: no transaction per request (the spec's empty one); the charge
            // and the channel's state, which the official client counts with.
            Self::Batch(b) => (
                String::new(),
                charged.map(|c| b.settled_extra(a.channel, c)),
            ),
        };
        SettleResponse {
            success: true,
            error_reason: None,
            transaction,
            network: network.to_string(),
            payer: Some(a.payer),
            amount: None,
            extra,
        }
    }

    /// The refusal of `payload` for `r`: a batch-settlement voucher that is not the channel's
    /// next step carries the channel's state in the offer (the corrective 402).
    fn refuse(&self, refusal: &Refusal<'_>, payload: &Value, r: Reason) -> Response {
        if let Self::Batch(b) = self
            && r.code == crate::batch::ERR_CUMULATIVE_MISMATCH
            && let Some(state) = b.corrective(payload)
        {
            let offers: Vec<PaymentRequirements> = refusal
                .offers
                .iter()
                .cloned()
                .map(|mut o| {
                    if o.scheme == crate::batch::SCHEME
                        && let (Some(extra), Some(state)) =
                            (o.extra.as_object_mut(), state.as_object())
                    {
                        extra.extend(state.clone());
                    }
                    o
                })
                .collect();
            return payment_required(refusal.resource, &offers, Some(&r), None);
        }
        refusal.refuse(r)
    }

    /// The answer to a `batch-settlement` refund request, which `presented` may be (the route
    /// never runs for it): `None` when it is a payment.
    pub(crate) async fn refund(
        &self,
        presented: &Presented,
        refusal: &Refusal<'_>,
    ) -> Option<Response> {
        let Self::Batch(b) = self else {
            return None;
        };
        if presented.payload.get("type").and_then(Value::as_str) != Some("refund") {
            return None;
        }
        Some(match b.refund(&presented.payload).await {
            Ok(r) => {
                let s = SettleResponse {
                    success: true,
                    error_reason: None,
                    transaction: r.transaction.to_string(),
                    network: presented.offer.network.clone(),
                    payer: Some(r.payer),
                    amount: Some(r.amount.to_string()),
                    extra: Some(json!({"channelState": b.channel_state(r.channel)})),
                };
                let mut resp = axum::Json(json!({
                    "refunded": r.amount.to_string(),
                    "channelId": r.channel,
                    "transaction": r.transaction,
                }))
                .into_response();
                insert_settle(resp.headers_mut(), &s, presented.version);
                resp
            }
            Err(X402Error::Invalid(r)) => self.refuse(refusal, &presented.payload, r),
            Err(e) => refusal.refuse_err(e),
        })
    }

    /// `resp`, the kept answer of the voucher counted as `key`, with its `PAYMENT-RESPONSE`.
    fn answered_again(&self, presented: &Presented, key: B256, mut resp: Response) -> Response {
        // Batch-settlement: nothing more charged, and where the channel stands (a client new to
        // the channel counts from it).
        let (transaction, extra) = match self {
            Self::Prepaid(_) => (key.to_string(), None),
            Self::Batch(b) => (
                String::new(),
                presented
                    .payload
                    .get("voucher")
                    .and_then(|v| v.get("channelId")?.as_str()?.parse::<B256>().ok())
                    .map(|id| b.settled_extra(id, U256::ZERO)),
            ),
        };
        let s = SettleResponse {
            success: true,
            error_reason: None,
            transaction,
            network: presented.offer.network.clone(),
            payer: None,
            amount: None,
            extra,
        };
        insert_settle(resp.headers_mut(), &s, presented.version);
        resp
    }

    /// Takes the voucher `presented` carries for a request at `price`, or answers: the kept
    /// answer of a counted voucher presented again with the same request (`kept`), else the
    /// refusal.
    // The error is the answer itself, built once per request: boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn take(
        &self,
        presented: &Presented,
        price: U256,
        refusal: &Refusal<'_>,
        kept: impl AsyncFnOnce(B256) -> Option<Response>,
    ) -> Result<Accepted, Response> {
        if let Some(r) = &presented.stale {
            // Never accepted: accepting may take a deposit on chain, at the node's gas. A
            // voucher counted before the change is answered again.
            return Err(match self.counted(&presented.payload) {
                Ok(Some(key)) => match kept(key).await {
                    Some(resp) => self.answered_again(presented, key, resp),
                    None => self.refuse(refusal, &presented.payload, self.used()),
                },
                Ok(None) => refusal.refuse(r.clone()),
                Err(e) => refusal.refuse_err(e),
            });
        }
        match self
            .accept(&presented.payload, presented.extensions.as_ref(), price)
            .await
        {
            Ok(a) => Ok(a),
            Err(X402Error::Invalid(r)) if self.seen_before(&r) => {
                // This voucher paid for a request already: if it was counted, answer it again.
                if let Ok(Some(key)) = self.counted(&presented.payload)
                    && let Some(resp) = kept(key).await
                {
                    return Err(self.answered_again(presented, key, resp));
                }
                Err(self.refuse(refusal, &presented.payload, r))
            }
            Err(X402Error::Invalid(r)) => Err(self.refuse(refusal, &presented.payload, r)),
            Err(e) => Err(refusal.refuse_err(e)),
        }
    }
}

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
    let Some(book) = p.book(&presented.offer.scheme) else {
        return refusal.refuse(Reason::new(
            "unsupported_scheme",
            format!("{} is not enabled on this node", presented.offer.scheme),
        ));
    };
    if let Some(resp) = book.refund(&presented, refusal).await {
        return resp;
    }
    let headers = parts.headers.clone();
    let (body, accepted) = {
        // The body is read only when a voucher presented again may be answered from the kept
        // answers; otherwise it goes to the route untouched.
        let cell = std::sync::Mutex::new(Some(body));
        let taken = book
            .take(&presented, presented.offer.amount, refusal, async |key| {
                let body = cell.lock().expect("not poisoned").take()?;
                p.kept_answer(key, &headers, body).await
            })
            .await;
        match taken {
            Ok(a) => (cell.into_inner().expect("not poisoned"), a),
            Err(resp) => return resp,
        }
    };
    let Some(body) = body else {
        return refusal.refuse(Reason::new(
            "internal",
            "the request body was consumed; send the request again",
        ));
    };
    let paid = Paid {
        scheme: book.scheme(),
        payer: accepted.payer,
        amount: presented.offer.amount,
        payment_ref: accepted.payment_ref(),
    };
    parts.extensions.insert(paid.clone());
    // Given back however this ends short of being counted, a panic in the route included: a
    // voucher left taken would block its channel's next step until the node restarts.
    let taken = GiveBack(&book, &accepted);
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !resp.status().is_success() {
        return resp;
    }
    // Counted before the output leaves: an answer the store did not count is withheld.
    if let Err(e) = book.commit(&accepted, presented.offer.amount) {
        tracing::error!(error = %e, "counting a voucher");
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
    let s = book.settled(
        &accepted,
        Some(presented.offer.amount),
        &presented.offer.network,
    );
    insert_settle(resp.headers_mut(), &s, presented.version);
    resp
}

/// Gives a taken voucher back when dropped.
struct GiveBack<'a>(&'a Book, &'a Accepted);

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}
