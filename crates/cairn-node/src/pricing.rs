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
                if let Ok(r) = self.cache.resolve(key).await
                    && r.cid == resolved.cid
                {
                    amount = *price;
                    break;
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
    /// The price of the model `cid`.
    pub(crate) async fn of(
        &self,
        cache: &ModelCache,
        cid: cairn_core::BlobId,
    ) -> Option<TokenPrice> {
        for (key, price) in &self.models {
            if let Ok(r) = cache.resolve(key).await
                && r.cid == cid
            {
                return Some(*price);
            }
        }
        self.default
    }
}
