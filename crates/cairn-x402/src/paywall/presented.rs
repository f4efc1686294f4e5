//! Reading the payment a request carries: `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1), and
//! the current offer it answers.

use super::*;

/// The payment in `headers`, or the 402 to answer with.
// The error is the answer itself, built once per request: boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub(super) fn read(headers: &HeaderMap, refusal: &Refusal<'_>) -> Result<Presented, Response> {
    let offers = refusal.offers;
    let (version, raw) = match (headers.get(PAYMENT_SIGNATURE), headers.get(X_PAYMENT)) {
        (Some(v), _) => (Version::V2, v.as_bytes().to_vec()),
        (None, Some(v)) => (Version::V1, v.as_bytes().to_vec()),
        (None, None) => {
            return Err(payment_required(
                refusal.resource,
                refusal.offers,
                None,
                None,
            ));
        }
    };
    let (offer, payload, extensions, stale) = match version {
        Version::V2 => {
            let pp: PaymentPayload = match decode_header("PAYMENT-SIGNATURE", &raw) {
                Ok(pp) => pp,
                Err(e) => return Err(refusal.refuse_err(e)),
            };
            if pp.x402_version != 2 {
                return Err(refusal.refuse(Reason::new(
                    "invalid_x402_version",
                    format!(
                        "PAYMENT-SIGNATURE carries x402Version {}; it must be 2 (v1 uses X-PAYMENT)",
                        pp.x402_version
                    ),
                )));
            }
            // The resource the payer echoes is what it agreed to buy (a node names the model's
            // CID there): a name that now stands for another model, priced the same, is not
            // sold on a payment made for the one before. A payer who echoes none binds none.
            // It is refused only where it would start a new run: a payment already charged
            // when the name still stood for the old model gets its kept answer again.
            let stale = pp
                .resource
                .as_ref()
                .filter(|r| !r.description.is_empty() && r.description != refusal.resource.description)
                .map(|_| {
                    Reason::new(
                        "invalid_payment_requirements",
                        format!(
                            "the payment was made for another resource than this request now buys ({:?}): it changed since the offer; nothing was charged, fetch the 402 again",
                            refusal.resource.description
                        ),
                    )
                });
            if let Some(o) = offers.iter().find(|o| o.same_offer(&pp.accepted)) {
                (o.clone(), pp.payload, pp.extensions, stale)
            } else if let Some(o) = offers.iter().find(|o| o.same_terms(&pp.accepted)) {
                // One of our offers at a price asked before: it pays for no new run, but a
                // payment charged before the price changed is answered again.
                let stale = Reason::new(
                    "invalid_payment_requirements",
                    format!(
                        "the payment pays {} token units where this now costs {}: the price changed since the offer; nothing was charged, fetch the 402 again",
                        pp.accepted.amount, o.amount
                    ),
                );
                let mut then = o.clone();
                then.amount = pp.accepted.amount;
                (then, pp.payload, pp.extensions, Some(stale))
            } else {
                return Err(refusal.refuse(Reason::new(
                    "invalid_payment_requirements",
                    "the payment answers no current offer (scheme, network, asset, payTo); fetch the 402 again",
                )));
            }
        }
        Version::V1 => {
            let pp: PaymentPayloadV1 = match decode_header("X-PAYMENT", &raw) {
                Ok(pp) => pp,
                Err(e) => return Err(refusal.refuse_err(e)),
            };
            let found = offers.iter().find(|o| {
                o.scheme == pp.scheme
                    && crate::wire::chain_id_of(&o.network).and_then(v1_network)
                        == Some(pp.network.as_str())
            });
            match found {
                Some(o) => (o.clone(), pp.payload, None, None),
                None => {
                    return Err(refusal.refuse(Reason::new(
                        "invalid_payment_requirements",
                        format!(
                            "no offer for scheme {:?} on network {:?}",
                            pp.scheme, pp.network
                        ),
                    )));
                }
            }
        }
    };
    Ok(Presented {
        version,
        offer,
        payload,
        extensions,
        stale,
    })
}
