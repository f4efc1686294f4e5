//! A request the route prices itself once it has read it, and charges what it used after it
//! ran: a language-model call costs its tokens, whose most is known only once the prompt is
//! tokenized and `max_tokens` read. Paid with a prepaid voucher for the most (a ceiling) or an
//! x402 `upto` permit of the most; the route charges the actual cost before its answer's last
//! bytes leave (a voucher counted, a permit settled on chain for that amount).

use super::*;
use crate::prepaid::Accepted;
use crate::upto::CheckedUpto;
use prepaid_flow::Book;

/// A metered request's payment: taken for the most the request may cost, charged at what it
/// did cost ([`Metered::charge`]), given back if dropped uncharged (the request failed).
pub struct Metered {
    taken: Taken,
    paid: Paid,
    settle: HeaderMap,
    version: Version,
    network: String,
    charged: bool,
}

/// What pays a metered request.
enum Taken {
    /// A voucher (prepaid or batch-settlement) for the most.
    Voucher { book: Book, accepted: Accepted },
    /// An `upto` permit of the most, reserved under `key`.
    Upto {
        facilitator: Arc<Facilitator>,
        key: B256,
        checked: Box<CheckedUpto>,
    },
}

impl Metered {
    /// The payment as the receipt binds it (`amount` is the most; the charge comes later).
    pub fn paid(&self) -> &Paid {
        &self.paid
    }

    /// The `PAYMENT-RESPONSE` header (and its CORS exposure) as known before the charge (a
    /// stream's head leaves with this one): the voucher taken, by its reference; nothing for an
    /// `upto` permit, which is settled only once the call has ended.
    pub fn settle_headers(&self) -> &HeaderMap {
        &self.settle
    }

    /// Charges the request `amount` (at most [`Paid::amount`]); the rest of the most is never
    /// claimed. A voucher is counted; a permit is settled on chain for `amount` (0: no
    /// transaction). The `PAYMENT-RESPONSE` header as settled, for an answer whose head has not
    /// left yet. Fails when the charge cannot be made or recorded: the answer must then be
    /// withheld (and the payer is charged nothing).
    pub async fn charge(mut self, amount: U256) -> Result<HeaderMap, X402Error> {
        let headers = match &self.taken {
            Taken::Voucher { book, accepted } => {
                book.commit(accepted, amount)?;
                let s = book.settled(accepted, Some(amount), &self.network);
                let mut h = HeaderMap::new();
                insert_settle(&mut h, &s, self.version);
                h
            }
            Taken::Upto {
                facilitator,
                key,
                checked,
            } => {
                // From here the settlement owns the payment, in a task of its own: a request
                // dropped while it is on its way (the client hung up) neither gives back a
                // permit being settled nor leaves a settlement half recorded.
                self.charged = true;
                let (f, key, c) = (facilitator.clone(), *key, checked.clone());
                let outcome = tokio::spawn(async move { f.settle_upto(key, &c, amount).await })
                    .await
                    .map_err(|e| X402Error::Store(format!("the settlement task failed: {e}")))?;
                if let Settlement::Failed(r) = &outcome {
                    return Err(X402Error::Invalid(r.clone()));
                }
                let s =
                    upto_flow::settle_response(&self.network, self.paid.payer, amount, &outcome);
                let mut h = HeaderMap::new();
                insert_settle(&mut h, &s, self.version);
                h
            }
        };
        self.charged = true;
        Ok(headers)
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if self.charged {
            return;
        }
        match &self.taken {
            Taken::Voucher { book, accepted } => book.release(accepted),
            Taken::Upto {
                facilitator,
                key,
                checked,
            } => {
                // Its maximum is closed by a task (closing waits for a lock); the permit itself
                // is given back now.
                facilitator.store().release(*key, None);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let (f, key, c) = (facilitator.clone(), *key, checked.clone());
                    rt.spawn(async move { f.release_upto(key, &c, None).await });
                }
            }
        }
    }
}

impl Paywall {
    /// Takes the payment for a request to `uri` (`body`) that costs at most `most` (described
    /// by `what`), or answers: 402 with the prepaid and `upto` offers for `most` when `headers`
    /// carry no payment or one that does not fit it; a voucher that already paid for this very
    /// request gets its kept answer again. Only a prepaid voucher or an `upto` permit can pay a
    /// metered request: an `exact` transfer cannot be for less than the amount it names.
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
        let mut offers: Vec<PaymentRequirements> = self
            .prepaid
            .iter()
            .map(|pre| pre.offer(most, self.max_timeout_seconds))
            .collect();
        offers.extend(
            self.facilitator
                .upto_offer(self.pay_to, most, self.max_timeout_seconds),
        );
        offers.extend(
            self.batch
                .iter()
                .map(|b| b.offer(most, self.max_timeout_seconds)),
        );
        if offers.is_empty() {
            return Err(payment_required(
                &resource,
                &[],
                Some(&Reason::new(
                    "unsupported_scheme",
                    "this call is charged by what it uses, which only prepaid vouchers or x402 upto permits can pay, and this node takes neither; its operator can enable prepaid vouchers with --prepaid",
                )),
                None,
            ));
        }
        let refusal = Refusal {
            resource: &resource,
            offers: &offers,
        };
        let presented = presented::read(headers, &refusal)?;
        if presented.offer.scheme == crate::upto::SCHEME {
            let f = self.facilitator.clone();
            let (key, checked) = match upto_flow::take(&f, &presented, &refusal).await? {
                upto_flow::Taken::Fresh(key, checked) => (key, checked),
                upto_flow::Taken::Seen(key, rec) => {
                    let kept = match &self.kept {
                        Some(k) => k.answer(key, headers, body).await,
                        None => None,
                    };
                    return Err(upto_flow::presented_again(&rec, kept, &presented, &refusal));
                }
            };
            let paid = Paid {
                scheme: crate::upto::SCHEME,
                payer: checked.authorization.owner,
                amount: most,
                payment_ref: key,
            };
            // Nothing is settled before the call ends: a stream's head, which leaves first,
            // claims no settlement (an answer given whole carries the settled one).
            let settle = HeaderMap::new();
            return Ok(Metered {
                taken: Taken::Upto {
                    facilitator: f,
                    key,
                    checked,
                },
                paid,
                settle,
                version: presented.version,
                network: presented.offer.network.clone(),
                charged: false,
            });
        }
        let Some(book) = self.book(&presented.offer.scheme) else {
            return Err(refusal.refuse(Reason::new(
                "unsupported_scheme",
                "this call is charged by what it uses: pay with a prepaid or batch-settlement voucher or an upto permit for the offered most",
            )));
        };
        if let Some(resp) = book.refund(&presented, &refusal).await {
            return Err(resp);
        }
        let accepted = book
            .take(&presented, most, &refusal, async |key| match &self.kept {
                Some(kept) => kept.answer(key, headers, body).await,
                None => None,
            })
            .await?;
        let paid = Paid {
            scheme: book.scheme(),
            payer: accepted.payer,
            amount: most,
            payment_ref: accepted.payment_ref(),
        };
        // A stream's head leaves before the charge is known: it names the voucher taken.
        let s = book.settled(&accepted, None, &presented.offer.network);
        let mut settle = HeaderMap::new();
        insert_settle(&mut settle, &s, presented.version);
        Ok(Metered {
            taken: Taken::Voucher { book, accepted },
            paid,
            settle,
            version: presented.version,
            network: presented.offer.network.clone(),
            charged: false,
        })
    }
}
