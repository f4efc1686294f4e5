//! The Model Hub: a content-addressed, versioned model registry served over HTTP, and the
//! client that talks to it.

pub mod client;
pub mod error;
pub mod server;

use std::net::SocketAddr;

use cairn_catalog::Catalog;
use cairn_store::{BlobStore, Location};

pub use client::{ClientError, HubClient};
pub use server::{HubState, router};

/// Where a hub keeps its state.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub catalog_url: String,
    /// Blob directory or S3 bucket.
    pub blobs: Location,
    /// Largest file accepted.
    pub max_upload_bytes: u64,
}

/// Hub start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The catalog could not be opened or migrated.
    #[error(transparent)]
    Catalog(#[from] cairn_catalog::CatalogError),
    /// The blob store could not be opened.
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    /// The socket failed.
    #[error("HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the hub's state, sweeping leftovers of uploads interrupted by a crash.
pub async fn open(config: &HubConfig) -> Result<HubState, HubError> {
    let catalog = Catalog::connect(&config.catalog_url).await?;
    let store = BlobStore::open(&config.blobs)?;
    let swept = store.sweep(std::time::Duration::from_secs(3600)).await?;
    if swept > 0 {
        tracing::info!(swept, "removed leftovers of interrupted uploads");
    }
    Ok(HubState::new(catalog, store, config.max_upload_bytes))
}

/// Serves the hub on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HubState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
