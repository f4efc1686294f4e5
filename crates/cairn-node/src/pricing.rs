//! What an inference costs: the model a request names is resolved to its CID first, so a model
//! costs the same whether it is called by name, name@version or CID.

use std::future::Future;
use std::pin::Pin;

use alloy_primitives::U256;
use axum::http::{Method, request::Parts};
use axum::response::{IntoResponse, Response};
use cairn_x402::{Price, Pricing};

use std::sync::Arc;

use crate::cache::{ModelCache, Resolution};

pub(crate) struct ModelPricing {
    pub(crate) cache: ModelCache,
    pub(crate) default: U256,
    pub(crate) models: Vec<(String, U256)>,
}

/// The model a paid request was priced for (in its extensions): the route runs this one, not
/// a second resolution of the name, which a release published meanwhile could change (the
/// payer would get, and pay for, a model the price was not reckoned on).
#[derive(Clone, Debug)]
pub(crate) struct PricedModel(pub(crate) Arc<Resolution>);

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
        [m, "infer"] => decode(m),
        [m, "versions", v, "infer"] => Some(format!("{}@{}", decode(m)?, decode(v)?)),
        _ => None,
    }
}

/// A path segment decoded as the route's `Path` extractor decodes it, so that the reference
/// priced is the reference the route names (a segment that is not UTF-8 once decoded is
/// refused by the route before it runs).
fn decode(s: &str) -> Option<String> {
    Some(
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()?
            .into_owned(),
    )
}

impl Pricing for ModelPricing {
    fn price<'a>(
        &'a self,
        parts: &'a mut Parts,
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
            let description = format!("one inference of {} ({reference})", resolved.cid);
            parts.extensions.insert(PricedModel(resolved));
            if amount.is_zero() {
                return Ok(None);
            }
            Ok(Some(Price {
                amount,
                description,
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
        let (mut parts, ()) = req.into_parts();
        let Err(refused) = pricing.price(&mut parts).await else {
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

    /// The reference priced is the one the route's `Path` reads, however it is encoded.
    #[test]
    fn the_reference_priced_is_the_one_the_route_reads() {
        let of = |method: Method, path: &str| {
            model_of(
                &axum::http::Request::builder()
                    .method(method)
                    .uri(path)
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0,
            )
        };
        assert_eq!(
            of(Method::POST, "/v2/models/digits%401.0/infer").as_deref(),
            Some("digits@1.0")
        );
        assert_eq!(
            of(Method::POST, "/v2/models/dig%69ts@1.0/infer").as_deref(),
            Some("digits@1.0")
        );
        assert_eq!(
            of(Method::POST, "/v2/models/digits/versions/1%2E0/infer").as_deref(),
            Some("digits@1.0")
        );
        assert_eq!(of(Method::POST, "/v2/models/%FF/infer"), None);
        assert_eq!(of(Method::PUT, "/v2/models/digits/infer"), None);
        assert_eq!(of(Method::POST, "/v2/models/digits/ready"), None);
    }

    /// A priced call carries the resolution its price was reckoned on, for the route to run:
    /// a release published after the price was set changes what the next call gets, never
    /// what this one runs.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_priced_call_carries_the_model_it_was_priced_for() {
        use std::sync::atomic::{AtomicU8, Ordering};
        let cid = |n: u8| cairn_core::BlobId::of(&[n]);
        let latest = Arc::new(AtomicU8::new(1));
        let now = latest.clone();
        let app = axum::Router::new().fallback(move || {
            let n = now.load(Ordering::SeqCst);
            async move {
                axum::Json(cairn_hub_api::Resolved {
                    repo: "digits".parse().unwrap(),
                    version: format!("1.{n}").parse().unwrap(),
                    file: cairn_hub_api::FileEntry {
                        path: "model.onnx".parse().unwrap(),
                        cid: cairn_core::BlobId::of(&[n]),
                        size: 1,
                        media_type: "application/onnx".into(),
                        onnx: None,
                        gguf: None,
                    },
                })
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn cairn_engine::Engine> = Arc::new(cairn_engine::TractEngine::new());
        let hub = cairn_hub_api::HubClient::new(&hub, None).unwrap();
        let cache = ModelCache::new(dir.path().to_owned(), hub, engine, 1 << 20, 1 << 20)
            .with_name_refresh(std::time::Duration::ZERO);
        let pricing = ModelPricing {
            cache,
            default: U256::from(7),
            models: vec![(cid(2).to_string(), U256::from(1000))],
        };
        let call = || {
            axum::http::Request::post("/v2/models/digits/infer")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let mut first = call();
        let price = pricing.price(&mut first).await.unwrap().unwrap();
        assert_eq!(price.amount, U256::from(7));
        // The next release, priced higher, is published while the first call is on its way.
        latest.store(2, Ordering::SeqCst);
        let mut second = call();
        let mut price = pricing.price(&mut second).await.unwrap().unwrap();
        // Up to 20 s: a loaded machine may take a while to run the background check.
        for _ in 0..1000 {
            if price.amount == U256::from(1000) {
                break;
            }
            // The check of the stale name runs in the background: the next call sees it.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            second = call();
            price = pricing.price(&mut second).await.unwrap().unwrap();
        }
        assert_eq!(price.amount, U256::from(1000));
        let priced = |parts: &Parts| parts.extensions.get::<PricedModel>().unwrap().0.cid;
        assert_eq!(priced(&first), cid(1));
        assert_eq!(priced(&second), cid(2));
    }
}
