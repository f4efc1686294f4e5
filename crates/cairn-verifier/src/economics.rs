//! The rule that makes cheating unprofitable (see `docs/economics.md` at the repository root), and a simulation that
//! checks it by running the real [`Sampler`] over many batches.
//!
//! A node that cheats on a receipt saves `c` (at most the cost of computing it). Each of `V`
//! verifiers re-executes each receipt with probability `p`, independently (own secret), so one
//! bad receipt is caught with probability `d = 1 − (1 − p)^V`. A caught batch costs the node
//! `s·S` of its stake (slash share `s`, stake at least the registry minimum `S`) plus its share
//! of the batch's fees `B·f·(1 − v − t)`. Cheating on `k` receipts of a batch gains `k·c` and is
//! caught with probability `1 − (1 − d)^k ≥ … `, whose per-receipt value is largest at `k = 1`;
//! so cheating never pays when
//!
//! ```text
//!     c < d · (s·S + B·f·(1 − v − t))
//! ```

use alloy_primitives::{B256, keccak256};

use crate::Sampler;

/// The protocol's parameters that enter the rule.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Each verifier's sampling rate `p`.
    pub sample_rate: f64,
    /// Verifiers checking each batch, `V`.
    pub verifiers: u32,
    /// Share of stake slashed on a proven fraud, `s` (basis points).
    pub slash_bps: u16,
    /// The stake a node keeps at least while active, `S` (token units).
    pub min_stake: f64,
    /// Fee per call, `f` (token units).
    pub fee: f64,
    /// The node's share of fees, `1 − v − t` (basis points).
    pub node_share_bps: u16,
    /// Receipts per batch, `B`.
    pub batch_size: u32,
}

impl Params {
    /// The devnet's economics (`DeployParams::devnet`, `cairn devnet`) at a 5% sampling rate;
    /// the devnet samples 25% by default, which only strengthens the rule.
    pub fn devnet() -> Self {
        Self {
            sample_rate: 0.05,
            verifiers: 3,
            slash_bps: 5_000,
            min_stake: 100_000_000.0,
            fee: 1_000.0,
            node_share_bps: 8_500,
            batch_size: 16,
        }
    }

    /// Probability that one wrong receipt is re-executed by at least one verifier, `d`.
    pub fn detection(&self) -> f64 {
        1.0 - (1.0 - self.sample_rate).powi(self.verifiers as i32)
    }

    /// What a caught batch costs the node at least: `s·S + B·f·(1 − v − t)`.
    pub fn penalty(&self) -> f64 {
        self.slash_bps as f64 / 1e4 * self.min_stake
            + self.batch_size as f64 * self.fee * self.node_share_bps as f64 / 1e4
    }

    /// The largest saving per cheated call that cheating could ever recoup: `d · penalty`.
    /// The rule holds for a cheat saving `c` when `c` is below it.
    pub fn break_even_saving(&self) -> f64 {
        self.detection() * self.penalty()
    }

    /// Expected profit per batch of cheating on `k` receipts saving `c` each (negative: loss).
    pub fn expected_gain(&self, k: u32, c: f64) -> f64 {
        let caught = 1.0 - (1.0 - self.detection()).powi(k as i32);
        k as f64 * c - caught * self.penalty()
    }
}

/// What a simulation saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Batches simulated.
    pub batches: u64,
    /// Wrong receipts produced.
    pub cheated: u64,
    /// Wrong receipts that at least one verifier sampled.
    pub detected: u64,
    /// Batches with a wrong receipt.
    pub cheating_batches: u64,
    /// Of those, batches caught (and slashed).
    pub caught_batches: u64,
    /// The node's net result relative to honest work: savings minus slashes and lost fees.
    pub net_gain: f64,
}

/// A deterministic stream of 32-byte values (keccak in counter mode) for reproducible runs.
struct Stream(B256, u64);

impl Stream {
    fn next(&mut self) -> B256 {
        self.1 += 1;
        let mut m = [0u8; 40];
        m[..32].copy_from_slice(self.0.as_slice());
        m[32..].copy_from_slice(&self.1.to_be_bytes());
        keccak256(m)
    }

    fn unit(&mut self) -> f64 {
        let h = self.next();
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[..8]);
        (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `batches` batches of a node that returns a wrong output on a fraction `cheat_rate` of
/// calls, each saving `saving`, against `params.verifiers` verifiers sampling with the real
/// [`Sampler`] (own secrets, each batch's random root, each receipt's random hash).
pub fn simulate(params: &Params, cheat_rate: f64, saving: f64, batches: u64, seed: u64) -> Outcome {
    let mut rng = Stream(keccak256(seed.to_be_bytes()), 0);
    let samplers: Vec<Sampler> = (0..params.verifiers)
        .map(|_| Sampler::new(rng.next(), params.sample_rate))
        .collect();
    let mut o = Outcome {
        batches,
        ..Outcome::default()
    };
    for _ in 0..batches {
        let root = rng.next();
        let mut bad_here = 0u64;
        let mut caught = false;
        for _ in 0..params.batch_size {
            let rh = rng.next();
            if rng.unit() >= cheat_rate {
                continue;
            }
            bad_here += 1;
            if samplers.iter().any(|s| s.sampled(root, rh)) {
                o.detected += 1;
                caught = true;
            }
        }
        o.cheated += bad_here;
        o.net_gain += bad_here as f64 * saving;
        if bad_here > 0 {
            o.cheating_batches += 1;
        }
        if caught {
            o.caught_batches += 1;
            o.net_gain -= params.penalty();
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binomial standard deviation of a rate estimate.
    fn sigma(p: f64, n: u64) -> f64 {
        (p * (1.0 - p) / n as f64).sqrt()
    }

    #[test]
    fn detection_and_balances_match_the_formula() {
        // Sampling at 20% with 3 verifiers, a node cheating on 10% of calls.
        let p = Params {
            sample_rate: 0.2,
            ..Params::devnet()
        };
        let o = simulate(&p, 0.1, 1_000.0, 20_000, 7);
        let d = p.detection();
        let seen = o.detected as f64 / o.cheated as f64;
        assert!(
            (seen - d).abs() < 4.0 * sigma(d, o.cheated),
            "per-receipt detection {seen:.4} vs formula {d:.4} over {} wrong receipts",
            o.cheated
        );
        // Per batch: P(caught | k wrong) = 1 − (1 − d)^k, averaged over k ~ Binomial(B, q).
        let q = 0.1;
        let b = p.batch_size as i32;
        let caught_formula = 1.0 - (1.0 - q * d).powi(b);
        let caught_seen = o.caught_batches as f64 / o.batches as f64;
        assert!(
            (caught_seen - caught_formula).abs() < 4.0 * sigma(caught_formula, o.batches),
            "batches caught {caught_seen:.4} vs formula {caught_formula:.4}"
        );
        // The balance: the expected gain per batch from the formula, against the simulated one.
        let expected = o.batches as f64 * (q * b as f64 * 1_000.0 - caught_formula * p.penalty());
        let rel = (o.net_gain - expected).abs() / expected.abs();
        assert!(rel < 0.05, "net {} vs expected {expected}", o.net_gain);
        assert!(o.net_gain < 0.0, "cheating paid: {}", o.net_gain);
    }

    #[test]
    fn cheating_pays_exactly_when_the_rule_is_broken() {
        // A stake so small that the rule fails: cheating on every call of every batch pays.
        let weak = Params {
            sample_rate: 0.01,
            verifiers: 1,
            min_stake: 1_000.0,
            fee: 10.0,
            batch_size: 4,
            ..Params::devnet()
        };
        let saving = 50.0;
        assert!(saving > weak.break_even_saving());
        let o = simulate(&weak, 1.0, saving, 20_000, 11);
        assert!(
            o.net_gain > 0.0,
            "rule broken, yet cheating lost {}",
            o.net_gain
        );
        // The same node with the rule holding (stake raised) loses by cheating, even once per
        // batch (the most profitable pattern).
        let strong = Params {
            min_stake: 100_000.0,
            ..weak
        };
        assert!(saving < strong.break_even_saving());
        for rate in [1.0, 0.25] {
            let o = simulate(&strong, rate, saving, 20_000, 13);
            assert!(
                o.net_gain < 0.0,
                "rule holds, yet cheating at {rate} gained {}",
                o.net_gain
            );
        }
        assert!(strong.expected_gain(1, saving) < 0.0);
    }

    #[test]
    fn the_devnet_defaults_satisfy_the_rule() {
        let p = Params::devnet();
        // A cheat can save at most what the call costs to compute, which the fee covers.
        let c = p.fee;
        assert!(
            c < p.break_even_saving(),
            "c = {c}, break-even {}",
            p.break_even_saving()
        );
        assert!(p.expected_gain(1, c) < 0.0);
        let sampled_more = Params {
            sample_rate: 0.25,
            ..p
        };
        assert!(c < sampled_more.break_even_saving());
        let o = simulate(&p, 0.05, c, 10_000, 3);
        assert!(o.caught_batches > 0 && o.net_gain < 0.0, "{o:?}");
    }
}
