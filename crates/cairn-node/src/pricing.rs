//! What an inference costs: the model a request names is resolved to its CID first, so a model
//! costs the same whether it is called by name, name@version or CID.

use std::future::Future;
use std::pin::Pin;

use alloy_primitives::U256;
use axum::http::{Method, request::Parts};
use axum::response::{IntoResponse, Response};
use cairn_x402::{Price, Pricing};

use crate::cache::ModelCache;

pub(crate) struct ModelPricing {
    pub(crate) cache: ModelCache,
    pub(crate) default: U256,
    pub(crate) models: Vec<(String, U256)>,
}

/// The model reference of `POST /v2/models/{model}[/versions/{v}]/infer`.
fn model_of(parts: &Parts) -> Option<String> {
    // GET is priced too: the x402 batch-settlement client probes a paid URL by GET for its
    // offers and sends its refund request there (the route itself answers only POST).
    if parts.method != Method::POST && parts.method != Method::GET {
        return None;
    }
    let rest = parts.uri.path().strip_prefix("/v2/models/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    match segs.as_slice() {
        [m, "infer"] => Some(decode(m)),
        [m, "versions", v, "infer"] => Some(format!("{}@{}", decode(m), decode(v))),
        _ => None,
    }
}

fn decode(s: &str) -> String {
    // Model references are plain ASCII; only `%40` (@) is worth undoing.
    s.replace("%40", "@")
}

impl Pricing for ModelPricing {
    fn price<'a>(
        &'a self,
        parts: &'a Parts,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Price>, Response>> + Send + 'a>> {
        Box::pin(async move {
            let Some(reference) = model_of(parts) else {
                return Ok(None);
            };
            let resolved = self
                .cache
                .resolve(&reference)
                .await
                .map_err(|e| crate::NodeError::from(e).into_response())?;
            let mut amount = self.default;
            for (key, price) in &self.models {
                match self.cache.resolve(key).await {
                    Ok(r) if r.cid == resolved.cid => {
                        amount = *price;
                        break;
                    }
                    Ok(_) => {}
                    // A priced model the hub cannot resolve now may be this one: never charge
                    // the default for it (a payer could call it by CID during an outage).
                    Err(e) if e.is_transient() => {
                        return Err(crate::NodeError::from(e).into_response());
                    }
                    Err(_) => {}
                }
            }
            if amount.is_zero() {
                return Ok(None);
            }
            Ok(Some(Price {
                amount,
                description: format!("one inference of {} ({reference})", resolved.cid),
            }))
        })
    }
}

pub use cairn_node_api::openai::TokenPrice;

/// What language-model calls cost on a node that takes payments.
#[derive(Clone, Debug, Default)]
pub struct LlmPrices {
    /// Models without a price of their own (`None`: such calls are refused, with a reason).
    pub default: Option<TokenPrice>,
    /// Prices of particular models (a CID or name@version, resolved to the CID a call runs).
    pub models: Vec<(String, TokenPrice)>,
}

impl LlmPrices {
    /// The price of the model `cid`; an error when a priced model the hub cannot resolve
    /// now may be this one (it is never charged the default instead).
    pub(crate) async fn of(
        &self,
        cache: &ModelCache,
        cid: cairn_core::BlobId,
    ) -> Result<Option<TokenPrice>, crate::cache::CacheError> {
        for (key, price) in &self.models {
            match cache.resolve(key).await {
                Ok(r) if r.cid == cid => return Ok(Some(*price)),
                Ok(_) => {}
                Err(e) if e.is_transient() => return Err(e),
                Err(_) => {}
            }
        }
        Ok(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A call by CID while the hub cannot resolve a priced name (it may name this very file)
    /// is refused, not charged the default price, which may be nothing.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_priced_name_the_hub_cannot_resolve_is_never_charged_the_default() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = format!("http://{}", listener.local_addr().unwrap());
        // A hub in trouble: every lookup fails with 503.
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(cairn_core::ErrorBody::new("down", "the hub is down")),
            )
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn cairn_engine::Engine> = Arc::new(cairn_engine::TractEngine::new());
        let hub = cairn_hub_api::HubClient::new(&hub, None).unwrap();
        let cache = ModelCache::new(dir.path().to_owned(), hub, engine, 1 << 20, 1 << 20);
        let pricing = ModelPricing {
            cache: cache.clone(),
            default: U256::ZERO,
            models: vec![("digits@1.0".into(), U256::from(1000))],
        };
        let cid = cairn_core::BlobId::of(b"the file digits@1.0 names");
        let req = axum::http::Request::post(format!("/v2/models/{cid}/infer"))
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let Err(refused) = pricing.price(&parts).await else {
            panic!("priced (or served free) with the priced name unresolvable")
        };
        assert_eq!(refused.status(), 502);
        // The same for a language model's token price.
        let prices = LlmPrices {
            default: None,
            models: vec![("digits@1.0".into(), TokenPrice::default())],
        };
        assert!(prices.of(&cache, cid).await.is_err());
    }
}
