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
    if parts.method != Method::POST {
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

/// A language model's price: token units per 1,000 prompt tokens and per 1,000 completion
/// tokens. A call is charged from its signed usage, rounded up to a whole unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenPrice {
    /// Units per 1,000 prompt tokens.
    pub prompt_per_1k: U256,
    /// Units per 1,000 completion tokens.
    pub completion_per_1k: U256,
}

impl TokenPrice {
    /// What `prompt` and `completion` tokens cost.
    pub fn charge(&self, prompt: u64, completion: u64) -> U256 {
        let units = self
            .prompt_per_1k
            .saturating_mul(U256::from(prompt))
            .saturating_add(
                self.completion_per_1k
                    .saturating_mul(U256::from(completion)),
            );
        units.div_ceil(U256::from(1_000u64))
    }

    /// Nothing to pay, whatever the usage.
    pub fn is_free(&self) -> bool {
        self.prompt_per_1k.is_zero() && self.completion_per_1k.is_zero()
    }
}

impl std::str::FromStr for TokenPrice {
    type Err = String;

    /// `PROMPT/COMPLETION`, each in token units per 1,000 tokens (`20/60`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, c) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not PROMPT/COMPLETION (token units per 1,000 tokens, e.g. 20/60)")
        })?;
        let units = |v: &str| {
            U256::from_str_radix(v.trim(), 10)
                .map_err(|e| format!("{v:?} is not a whole number of token units: {e}"))
        };
        Ok(Self {
            prompt_per_1k: units(p)?,
            completion_per_1k: units(c)?,
        })
    }
}

impl std::fmt::Display for TokenPrice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.prompt_per_1k, self.completion_per_1k)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_price_charges_the_usage_rounded_up() {
        let p: TokenPrice = "20/60".parse().unwrap();
        assert_eq!(p.charge(0, 0), U256::ZERO);
        // 100 × 20 + 7 × 60 = 2,420 per 1,000: 2.42, charged 3.
        assert_eq!(p.charge(100, 7), U256::from(3u64));
        assert_eq!(p.charge(1_000, 1_000), U256::from(80u64));
        assert_eq!(p.to_string(), "20/60");
        assert!("0/0".parse::<TokenPrice>().unwrap().is_free());
        for bad in ["20", "20/x", "-1/2", ""] {
            assert!(bad.parse::<TokenPrice>().is_err(), "{bad}");
        }
        // A price too large to multiply saturates instead of wrapping to a small charge.
        let huge = TokenPrice {
            prompt_per_1k: U256::MAX,
            completion_per_1k: U256::ZERO,
        };
        assert_eq!(huge.charge(2, 0), U256::MAX.div_ceil(U256::from(1_000u64)));
    }
}
