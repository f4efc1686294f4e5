//! Choosing the next token: greedy with a defined tie-break, or seeded sampling with a named
//! generator, so that a verifier given the same logits and seed picks the same token.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probability reaches this (1 = all).
    pub top_p: f32,
    /// Keep at most this many most likely tokens (0 = all).
    pub top_k: usize,
    /// The generator's seed: ChaCha20 keyed with these 32 bytes.
    pub seed: [u8; 32],
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: [0; 32],
        }
    }
}

/// A sampler: its generator advances once per sampled token.
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha20Rng,
}

impl Sampler {
    /// A sampler seeded from `sampling.seed`.
    pub fn new(sampling: Sampling) -> Self {
        let rng = ChaCha20Rng::from_seed(sampling.seed);
        Self { sampling, rng }
    }

    /// The next token given the logits. Greedy takes the highest logit, the lowest id on ties.
    /// Sampling orders tokens by logit (ties by id), keeps `top_k` of them and then the
    /// shortest prefix whose probability reaches `top_p`, and walks the kept probabilities
    /// (softmax at the temperature, in f64) with one uniform draw of 53 bits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.sampling.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|a, b| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        });
        if self.sampling.top_k > 0 {
            order.truncate(self.sampling.top_k);
        }
        let t = f64::from(self.sampling.temperature);
        let max = f64::from(logits[order[0] as usize]);
        let weights: Vec<f64> = order
            .iter()
            .map(|i| libm::exp((f64::from(logits[*i as usize]) - max) / t))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        if self.sampling.top_p < 1.0 {
            let mut cum = 0.0;
            for (n, w) in weights.iter().enumerate() {
                cum += w / total;
                if cum >= f64::from(self.sampling.top_p) {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept: f64 = weights[..keep].iter().sum();
        let u = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) * kept;
        let mut cum = 0.0;
        for (n, w) in weights[..keep].iter().enumerate() {
            cum += w;
            if u < cum {
                return order[n];
            }
        }
        order[keep - 1]
    }
}

/// The index of the highest value, the lowest index on ties (NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] || logits[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}
