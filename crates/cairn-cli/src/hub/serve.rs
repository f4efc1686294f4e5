//! `cairn hub serve`: a hub over a catalog and a blob store.

use super::*;

/// Serve a hub against the given catalog and blob store.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub(crate) listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
    #[arg(long, env = "CAIRN_CATALOG")]
    pub(crate) catalog: String,
    /// A directory, or `s3://BUCKET[/PREFIX]` (credentials from AWS_* variables).
    #[arg(long, env = "CAIRN_BLOBS")]
    pub(crate) blobs: String,
    /// Endpoint of an S3-compatible service (MinIO, moto, …).
    #[arg(long, env = "CAIRN_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Largest accepted file, in bytes.
    #[arg(long, default_value_t = 16 << 30)]
    pub(crate) max_upload_bytes: u64,
    /// Most bytes one owner's repositories may hold, drafts included.
    #[arg(long, default_value_t = 64 << 30)]
    pub(crate) owner_quota_bytes: u64,
    /// Seconds a draft release may stay unpublished before it and its files are deleted.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub(crate) draft_ttl_secs: u64,
    /// The `host[:port]` clients reach this hub by (repeatable): signed writes must name
    /// one. Default: the listen address when it is a concrete one.
    #[arg(long = "public-host")]
    pub(crate) public_hosts: Vec<String>,
    /// Model uploads (ONNX, GGUF) read at once; more are answered 503 until one ends.
    #[arg(long, env = "CAIRN_HUB_MAX_MODEL_PARSES", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) max_model_parses: u32,
    /// Seconds an upload may send nothing before it is cut off.
    #[arg(long, env = "CAIRN_HUB_UPLOAD_IDLE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) upload_idle_secs: u64,
    /// Seconds between collections of expired drafts and unattached blobs.
    #[arg(long, hide = true, default_value_t = 600)]
    pub(crate) gc_every_secs: u64,
    /// Seconds a blob no release holds is kept before it is collected.
    #[arg(long, hide = true, default_value_t = 3600)]
    pub(crate) orphan_grace_secs: u64,
}

/// Runs it.
pub(crate) async fn run(a: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        listen,
        catalog,
        blobs,
        s3_endpoint,
        max_upload_bytes,
        owner_quota_bytes,
        draft_ttl_secs,
        gc_every_secs,
        orphan_grace_secs,
        public_hosts,
        max_model_parses,
        upload_idle_secs,
    } = a;
    let config = HubConfig {
        max_upload_bytes,
        owner_quota_bytes,
        draft_ttl: std::time::Duration::from_secs(draft_ttl_secs),
        gc_every: std::time::Duration::from_secs(gc_every_secs.max(1)),
        orphan_grace: std::time::Duration::from_secs(orphan_grace_secs),
        public_hosts,
        max_model_parses: max_model_parses as usize,
        upload_idle: std::time::Duration::from_secs(upload_idle_secs),
        ..HubConfig::new(catalog, Location::parse(&blobs, s3_endpoint))
    };
    let (listener, state) = serve_hub(config, listen).await?;
    println!("hub: http://{}", listener.local_addr()?);
    cairn_hub::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}
