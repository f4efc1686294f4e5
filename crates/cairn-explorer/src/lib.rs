//! The explorer: an indexer that follows a Cairn deployment (its chain's events, the batches'
//! receipts from their nodes, the verifiers' verdicts, the hub's models) into SQLite or
//! PostgreSQL, the typed HTTP API over that index, and the web pages that read it.
//!
//! Nothing the explorer shows is taken on a service's word where the chain can check it: a
//! batch's receipts are stored only when each verifies and together they make the root on
//! chain, and the pages check a receipt's signature and inclusion proof again in the browser.

pub mod api;
pub mod follow;
pub mod metrics;
pub mod store;
pub mod web;

use std::sync::Arc;

pub use follow::{FollowConfig, Follower, Round};
pub use store::{Backend, Index, IndexError};

/// The explorer's routes: the API, `/openapi.json`, `/metrics`, and the pages.
pub fn router(state: api::ApiState, metrics: Arc<metrics::IndexerMetrics>) -> axum::Router {
    use utoipa::OpenApi;
    let mut m = cairn_serve::metrics::Metrics::new("cairn_explorer");
    metrics.register(&mut m);
    let doc = api::ApiDoc::openapi();
    let app = api::router(Arc::new(state))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        )
        .fallback(axum::routing::get(web::serve));
    cairn_serve::metrics::serve(app, Arc::new(m))
}

/// Follows `chain` into `index` and serves the explorer on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    chain: cairn_ledger::Chain,
    index: Index,
    config: FollowConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Arc::new(metrics::IndexerMetrics::default());
    let state = api::ApiState {
        index: index.clone(),
        deployment: chain.deployment().clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = Follower::new(chain, index, config, metrics.clone());
    let follow = tokio::spawn(async move {
        let mut rx = stop_rx;
        follower
            .run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });
    let app = router(state, metrics);
    let listener =
        axum::serve::ListenerExt::tap_io(cairn_serve::LingeringListener::new(listener), |_| {});
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    let _ = follow.await;
    served
}

#[cfg(test)]
mod tests;
