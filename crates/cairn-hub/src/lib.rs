//! The Model Hub: a content-addressed, versioned model registry served over HTTP, and the
//! client that talks to it.

pub mod error;
pub mod server;

use std::net::SocketAddr;

use cairn_catalog::Catalog;
use cairn_store::{BlobStore, Location};

pub use cairn_hub_api::{ClientError, HubClient, client};
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
    /// Most bytes the files of one owner's repositories may take, drafts included.
    pub owner_quota_bytes: u64,
    /// A draft release not published within this is deleted with its files.
    pub draft_ttl: std::time::Duration,
    /// How often expired drafts and unattached blobs are collected.
    pub gc_every: std::time::Duration,
    /// How old a blob no release holds must be before it is collected (an upload's catalog
    /// write follows its store write by a moment).
    pub orphan_grace: std::time::Duration,
    /// The `host[:port]` names clients reach this hub by: signed writes must name one. Empty:
    /// the `Host` each request arrives with (a hub that does not know its names).
    pub public_hosts: Vec<String>,
    /// Model uploads (ONNX, GGUF) read at once: each holds a blocking thread for as long as
    /// its body takes to arrive, so more are refused with 503 until one ends.
    pub max_model_parses: usize,
    /// An upload that sends nothing for this long is cut off (it holds a connection, a store
    /// upload and, for a model, a reader).
    pub upload_idle: std::time::Duration,
}

impl HubConfig {
    /// Defaults for a hub at `catalog_url` with blobs at `blobs`.
    pub fn new(catalog_url: String, blobs: Location) -> Self {
        Self {
            catalog_url,
            blobs,
            max_upload_bytes: 16 << 30,
            owner_quota_bytes: 64 << 30,
            draft_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
            gc_every: std::time::Duration::from_secs(600),
            orphan_grace: std::time::Duration::from_secs(3600),
            public_hosts: Vec::new(),
            max_model_parses: 32,
            upload_idle: std::time::Duration::from_secs(60),
        }
    }
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
    Ok(HubState::new(catalog, store, config))
}

/// One collection pass: deletes expired drafts (with their files), then every blob no release
/// holds that is older than `grace`. Returns (drafts, blobs) removed.
pub async fn collect_garbage(
    state: &HubState,
    grace: std::time::Duration,
) -> Result<(u64, usize), HubError> {
    state.collect(grace).await
}

/// Serves the hub on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HubState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HubError> {
    let collector = state.clone();
    let (every, grace) = state.gc_schedule();
    tokio::spawn(async move {
        loop {
            match collector.collect(grace).await {
                Ok((0, 0)) => {}
                Ok((drafts, blobs)) => {
                    tracing::info!(
                        drafts,
                        blobs,
                        "collected expired drafts and unattached blobs"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
            tokio::time::sleep(every).await;
        }
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // The no-op tap gives the lingering listener axum's `ConnectInfo<SocketAddr>`.
    let listener =
        axum::serve::ListenerExt::tap_io(cairn_serve::LingeringListener::new(listener), |_| {});
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
