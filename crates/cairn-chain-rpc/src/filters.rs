//! Polled filters (`eth_newFilter`, `eth_newBlockFilter`, `eth_getFilterChanges`,
//! `eth_getFilterLogs`, `eth_uninstallFilter`), as ethers' and web3.py's event subscriptions use
//! them over HTTP: in memory, at most [`MAX_FILTERS`], each dropped after [`IDLE`] unpolled (as
//! geth does), so nobody can make the server keep state without end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy_primitives::{B256, U256};
use alloy_rpc_types_eth::Filter;

/// The most filters installed at once.
pub const MAX_FILTERS: usize = 256;
/// A filter not polled for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(300);

/// What a filter watches.
#[derive(Clone, Debug)]
pub(crate) enum Watch {
    /// Logs matching the filter.
    Logs(Box<Filter>),
    /// New blocks' hashes.
    Blocks,
}

#[derive(Debug)]
struct Entry {
    watch: Watch,
    /// The last block already reported.
    seen: u64,
    polled: Instant,
}

/// The installed filters.
#[derive(Default)]
pub(crate) struct Filters {
    inner: Mutex<HashMap<U256, Entry>>,
}

impl Filters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<U256, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs `watch`, reporting what comes after block `head`; its id, or `None` when
    /// [`MAX_FILTERS`] are installed (idle ones are dropped first).
    pub(crate) fn install(&self, watch: Watch, head: u64) -> Option<U256> {
        let mut map = self.lock();
        map.retain(|_, e| e.polled.elapsed() < IDLE);
        if map.len() >= MAX_FILTERS {
            return None;
        }
        // Random ids: one client cannot guess (and poll away) another's filter.
        let id = U256::from_be_bytes(B256::random().0);
        map.insert(
            id,
            Entry {
                watch,
                seen: head,
                polled: Instant::now(),
            },
        );
        Some(id)
    }

    /// The filter `id` and the last block it reported, without moving it: the caller
    /// [`Filters::advance`]s it once its answer is made, so a poll that fails loses nothing.
    pub(crate) fn peek(&self, id: U256) -> Option<(Watch, u64)> {
        let map = self.lock();
        let e = map.get(&id).filter(|e| e.polled.elapsed() < IDLE)?;
        Some((e.watch.clone(), e.seen))
    }

    /// Marks blocks up to `to` reported by a successful poll (and the filter as alive).
    pub(crate) fn advance(&self, id: U256, to: u64) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.seen = to.max(e.seen);
            e.polled = Instant::now();
        }
    }

    /// Removes `id`; whether it was there.
    pub(crate) fn remove(&self, id: U256) -> bool {
        self.lock().remove(&id).is_some()
    }
}
