//! When a channel's count is worth claiming at the node's gas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy_primitives::{B256, U256};

/// Longest a count below the gas allowance waits for its claim: well inside the shortest
/// withdrawal delay a payer could use to take it back unseen (batch-settlement's 15 minutes).
pub const CLAIM_WAIT: Duration = Duration::from_secs(300);

/// Claims (or redemptions) sent at the node's gas, paced: a channel's count is claimed once it
/// reaches the gas allowance, when its payer is withdrawing, when it has waited
/// [`CLAIM_WAIT`] since the channel's last claim, or on the first round after a start. A payer
/// charged a unit on each of many channels no longer costs the node a transaction (or a claim
/// entry) per unit per round, and what the node is owed is never left unclaimed for long.
pub(crate) struct ClaimPacing {
    allowance: U256,
    /// When each channel was last claimed by this process.
    last: Mutex<HashMap<B256, Instant>>,
}

impl ClaimPacing {
    pub(crate) fn new(allowance: U256) -> Self {
        Self {
            allowance,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether channel `id`, owing `owed` unclaimed, is claimed this round.
    pub(crate) fn due(&self, id: B256, owed: U256, closing: bool) -> bool {
        if closing || owed >= self.allowance.max(U256::from(1)) {
            return true;
        }
        let last = self.last.lock().expect("not poisoned");
        last.get(&id).is_none_or(|at| at.elapsed() >= CLAIM_WAIT)
    }

    /// Channel `id` was claimed (or tried) now.
    pub(crate) fn claimed(&self, id: B256) {
        let mut last = self.last.lock().expect("not poisoned");
        if last.len() >= 100_000 {
            // Entries past the wait are due anyway: forgetting them changes nothing.
            last.retain(|_, at| at.elapsed() < CLAIM_WAIT);
        }
        last.insert(id, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_below_the_allowance_waits_unless_first_withdrawing_or_old() {
        let p = ClaimPacing::new(U256::from(1_000u64));
        let (a, one) = (B256::repeat_byte(1), U256::from(1u64));
        assert!(p.due(a, one, false), "never claimed by this process");
        p.claimed(a);
        assert!(!p.due(a, one, false), "claimed just now");
        assert!(p.due(a, U256::from(1_000u64), false), "worth the allowance");
        assert!(p.due(a, one, true), "its payer is withdrawing");
        // Claimed a wait ago: due again.
        let long_ago = Instant::now().checked_sub(CLAIM_WAIT).unwrap();
        p.last.lock().unwrap().insert(a, long_ago);
        assert!(p.due(a, one, false));
        // An allowance of 0 claims any count every round.
        let any = ClaimPacing::new(U256::ZERO);
        any.claimed(a);
        assert!(any.due(a, one, false));
    }
}
