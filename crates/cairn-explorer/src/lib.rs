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

/// API requests served at once; more are answered 503 at once (each is a few indexed
/// queries, but the index is also the follower's).
const API_AT_ONCE: usize = 32;

async fn bounded(
    axum::extract::State(slots): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match slots.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            axum::Json(cairn_core::ErrorBody::new(
                "busy",
                "the explorer is answering as many requests as it takes at once; retry in a second",
            )),
        )
            .into_response(),
    }
}

/// The explorer's routes: the API, `/openapi.json`, `/metrics`, and the pages (which may read
/// the chain at the state's `browser_rpc`).
pub fn router(state: api::ApiState, metrics: Arc<metrics::IndexerMetrics>) -> axum::Router {
    use utoipa::OpenApi;
    let mut m = cairn_serve::metrics::Metrics::new("cairn_explorer");
    metrics.register(&mut m);
    let doc = api::ApiDoc::openapi();
    let slots = Arc::new(tokio::sync::Semaphore::new(API_AT_ONCE));
    let pages = web::pages(state.browser_rpc.as_deref(), state.entry.as_deref());
    let app = api::router(Arc::new(state))
        .layer(axum::middleware::from_fn_with_state(slots, bounded))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        )
        .fallback(pages);
    cairn_serve::metrics::serve(app, Arc::new(m))
}

/// Follows `chain` into the index at `index_url` and serves the explorer on `listener` until
/// `shutdown`; its pages check receipts against the chain at `browser_rpc` when given, and
/// its chat page talks to the chat entry at `entry`. The API
/// reads through connections of its own, so readers never take the follower's.
pub async fn serve(
    listener: tokio::net::TcpListener,
    chain: cairn_ledger::Chain,
    index_url: &str,
    config: FollowConfig,
    browser_rpc: Option<String>,
    entry: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let index = Index::connect(index_url).await?;
    let readers = Index::connect(index_url).await?;
    let metrics = Arc::new(metrics::IndexerMetrics::default());
    let mut state = api::ApiState::new(readers, chain.deployment().clone());
    state.browser_rpc = browser_rpc.as_deref().and_then(web::origin_url);
    state.entry = entry.as_deref().and_then(web::origin_url);
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
    Ok(served?)
}

/// Why the explorer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The index could not be opened.
    #[error("opening the explorer's index: {0}")]
    Index(#[from] IndexError),
    /// Serving failed.
    #[error("serving the explorer: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests;
