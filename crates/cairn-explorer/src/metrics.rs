//! The indexer's own metrics, beside the HTTP ones every service has.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// What the follower counts.
#[derive(Default, Debug)]
pub struct IndexerMetrics {
    /// Chain events written.
    pub events: Counter,
    /// Receipts written (from verified batch listings).
    pub receipts: Counter,
    /// Batch listings that could not be fetched or did not verify.
    pub listing_failures: Counter,
    /// Reorganizations undone.
    pub reorgs: Counter,
    /// Rounds that failed (retried).
    pub round_errors: Counter,
    /// The chain's head at the last round.
    pub head: Gauge,
    /// The last block indexed.
    pub block: Gauge,
}

impl IndexerMetrics {
    /// Registers every family in `m`'s registry.
    pub fn register(self: &std::sync::Arc<Self>, m: &mut cairn_serve::metrics::Metrics) {
        let r = m.registry();
        r.register(
            "indexer_events",
            "Chain events indexed",
            self.events.clone(),
        );
        r.register(
            "indexer_receipts",
            "Receipts indexed from verified batch listings",
            self.receipts.clone(),
        );
        r.register(
            "indexer_listing_failures",
            "Batch listings not fetched or not matching their root on chain",
            self.listing_failures.clone(),
        );
        r.register(
            "indexer_reorgs",
            "Chain reorganizations undone",
            self.reorgs.clone(),
        );
        r.register(
            "indexer_round_errors",
            "Indexer rounds that failed and were retried",
            self.round_errors.clone(),
        );
        r.register(
            "indexer_head_block",
            "The chain's head block",
            self.head.clone(),
        );
        r.register(
            "indexer_indexed_block",
            "The last block indexed",
            self.block.clone(),
        );
    }
}
