//! A request the route prices itself once it has read it, and charges what it used after it
//! ran: a language-model call costs its tokens, whose most is known only once the prompt is
//! tokenized and `max_tokens` read. Paid with a prepaid voucher for the most (a ceiling); the
//! route counts the actual charge before its answer's last bytes leave.

use super::*;
use crate::prepaid::Accepted;

/// A metered request's payment: taken for the most the request may cost, counted at what it
/// did cost ([`Metered::charge`]), given back if dropped uncounted (the request failed).
pub struct Metered {
    prepaid: Arc<Prepaid>,
    accepted: Accepted,
    paid: Paid,
    settle: HeaderMap,
    counted: bool,
}

impl Metered {
    /// The payment as the receipt binds it (`amount` is the most; the charge comes later).
    pub fn paid(&self) -> &Paid {
        &self.paid
    }

    /// The `PAYMENT-RESPONSE` header (and its CORS exposure): the voucher taken, by its
    /// reference.
    pub fn settle_headers(&self) -> &HeaderMap {
        &self.settle
    }

    /// Counts the request at `amount` (at most [`Paid::amount`]); the rest of the ceiling is
    /// never claimed. Fails when the count cannot be recorded: the answer must then be withheld.
    pub fn charge(mut self, amount: U256) -> Result<(), X402Error> {
        self.prepaid.commit(&self.accepted, amount)?;
        self.counted = true;
        Ok(())
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if !self.counted {
            self.prepaid.release(&self.accepted);
        }
    }
}

impl Paywall {
    /// Takes the payment for a request to `uri` (`body`) that costs at most `most` (described
    /// by `what`), or answers: 402 with the prepaid offer for `most` when `headers` carry no
    /// payment or one that does not fit it; a voucher that already paid for this very request
    /// gets its kept answer again. Only prepaid vouchers can pay a metered request: an `exact`
    /// transfer cannot be for less than the amount it names.
    // The error is the answer itself, built once per request: boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    pub async fn take_metered(
        &self,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &[u8],
        most: U256,
        what: String,
    ) -> Result<Metered, Response> {
        let price = Price {
            amount: most,
            description: what,
        };
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let resource = ResourceInfo {
            url: format!(
                "http://{host}{}",
                uri.path_and_query().map_or("/", |p| p.as_str())
            ),
            description: price.description.clone(),
            mime_type: "application/json".into(),
        };
        let Some(pre) = self.prepaid.clone() else {
            return Err(payment_required(
                &resource,
                &[],
                Some(&Reason::new(
                    "unsupported_scheme",
                    "this call is charged by what it uses, which only prepaid vouchers can pay, and this node does not take them; its operator can enable them with --prepaid",
                )),
                None,
            ));
        };
        let offers = vec![pre.offer(most, self.max_timeout_seconds)];
        let refusal = Refusal {
            resource: &resource,
            offers: &offers,
        };
        let presented = presented::read(headers, &refusal)?;
        if presented.offer.scheme != prepaid::SCHEME {
            return Err(refusal.refuse(Reason::new(
                "unsupported_scheme",
                "this call is charged by what it uses: pay with a prepaid voucher for the offered most",
            )));
        }
        let accepted = match pre.accept(&presented.payload, most).await {
            Ok(a) => a,
            Err(X402Error::Invalid(r)) if r.code == "invalid_prepaid_voucher_already_used" => {
                // It paid for a call already: if that call was counted and was this one, its
                // answer again (the client lost it), else the refusal.
                if let Some(key) = pre.counted(&presented.payload)
                    && let Some(kept) = &self.kept
                    && let Some(mut resp) = kept.answer(key, headers, body).await
                {
                    let s = SettleResponse {
                        success: true,
                        error_reason: None,
                        transaction: key.to_string(),
                        network: presented.offer.network.clone(),
                        payer: None,
                    };
                    insert_settle(resp.headers_mut(), &s, presented.version);
                    return Err(resp);
                }
                return Err(refusal.refuse(r));
            }
            Err(e) => return Err(refusal.refuse_err(e)),
        };
        let paid = Paid {
            scheme: prepaid::SCHEME,
            payer: accepted.payer,
            amount: most,
            payment_ref: accepted.payment_ref(),
        };
        let s = SettleResponse {
            success: true,
            error_reason: None,
            transaction: paid.payment_ref.to_string(),
            network: presented.offer.network.clone(),
            payer: Some(paid.payer),
        };
        let mut settle = HeaderMap::new();
        insert_settle(&mut settle, &s, presented.version);
        Ok(Metered {
            prepaid: pre,
            accepted,
            paid,
            settle,
            counted: false,
        })
    }
}
