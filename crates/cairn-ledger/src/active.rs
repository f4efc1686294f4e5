//! The set of active verifiers as the registry last said it, refreshed at most every 30 s: a
//! service asks it for every signed request, so a stranger's request costs no chain read, and
//! while the chain is unreachable the last known set keeps serving.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use tokio::sync::Mutex;

use crate::{Chain, LedgerError, Role};

/// How long a read of the set is trusted.
const FRESH: Duration = Duration::from_secs(30);

/// The registry's active verifiers, cached.
pub struct ActiveVerifiers {
    chain: Chain,
    state: Mutex<Option<(HashSet<Address>, Instant)>>,
}

impl ActiveVerifiers {
    /// The active verifiers of `chain`'s registry.
    pub fn new(chain: Chain) -> Self {
        Self {
            chain,
            state: Mutex::new(None),
        }
    }

    /// Whether `who` is an active verifier. Reads the registry when the last read is older than
    /// 30 s; when that read fails, answers from the last known set (an error only if there is
    /// none yet).
    pub async fn contains(&self, who: Address) -> Result<bool, LedgerError> {
        let mut state = self.state.lock().await;
        let stale = state.as_ref().is_none_or(|(_, at)| at.elapsed() >= FRESH);
        if stale {
            match self.chain.active_nodes(Role::Verifier).await {
                Ok(list) => *state = Some((list.into_iter().collect(), Instant::now())),
                Err(e) if state.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the verifier set; using the last known one");
                    // Try again in 30 s, not on every request.
                    if let Some((_, at)) = state.as_mut() {
                        *at = Instant::now();
                    }
                }
            }
        }
        Ok(state.as_ref().is_some_and(|(set, _)| set.contains(&who)))
    }
}
