//! `cairn explorer serve`: the indexer and the explorer's pages for a deployment on any chain.

use anyhow::Context;
use std::net::SocketAddr;

/// `cairn explorer …`.
#[derive(clap::Subcommand)]
pub enum ExplorerCommand {
    /// Index a deployment (its chain, the batches' receipts, the verifiers' verdicts, the hub's
    /// models) and serve the explorer's pages and API.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7404")]
        listen: SocketAddr,
        /// The index: `sqlite://PATH` or `postgres://…` (one explorer per index: its follower
        /// writes it).
        #[arg(long, env = "CAIRN_EXPLORER_INDEX")]
        index: String,
        /// The hub whose models are shown.
        #[arg(long, env = "CAIRN_HUB")]
        hub: Option<String>,
        /// Seconds between indexer rounds.
        #[arg(long, default_value_t = 2)]
        every_secs: u64,
        /// The chain's JSON-RPC URL the pages read batch roots from, to check receipts against
        /// the chain themselves (it must allow this explorer's origin: CORS).
        #[arg(long)]
        browser_rpc: Option<String>,
        /// The chat entry its chat page talks to (it must allow this explorer's origin:
        /// `cairn entry serve --origin`).
        #[arg(long)]
        entry: Option<String>,
        /// Fetch from registered endpoints on private, loopback or link-local addresses (a
        /// local network); by default they are skipped, so a registered endpoint cannot make
        /// the indexer probe the network it runs in.
        #[arg(long)]
        allow_private_endpoints: bool,
        #[command(flatten)]
        chain: crate::args::ChainArgs,
    },
}

/// `cairn explorer serve`.
pub async fn run(cmd: ExplorerCommand) -> anyhow::Result<()> {
    let ExplorerCommand::Serve {
        listen,
        index,
        hub,
        every_secs,
        browser_rpc,
        entry,
        allow_private_endpoints,
        chain,
    } = cmd;
    for (flag, url) in [("--browser-rpc", &browser_rpc), ("--entry", &entry)] {
        if let Some(url) = url
            && cairn_explorer::web::origin_url(url).is_none()
        {
            anyhow::bail!(
                "{flag} {url}: expected a plain http(s) URL (scheme, host, port and path only)"
            );
        }
    }
    let chain = chain.connect().await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("explorer: http://{}", listener.local_addr()?);
    cairn_explorer::serve(
        listener,
        chain,
        &index,
        cairn_explorer::FollowConfig {
            hub,
            every: std::time::Duration::from_secs(every_secs.max(1)),
            allow_private: allow_private_endpoints,
            ..Default::default()
        },
        browser_rpc,
        entry,
        crate::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Starts the devnet's explorer on `listener` over `chain`, indexing into the data dir; its
/// pages read the chain at `rpc`. Its URL and task.
pub async fn start_devnet(
    listener: tokio::net::TcpListener,
    data_dir: &std::path::Path,
    chain: cairn_ledger::Chain,
    hub: &str,
    rpc: &str,
    entry: &str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    String,
    tokio::task::JoinHandle<Result<(), cairn_explorer::ServeError>>,
)> {
    let index = format!("sqlite://{}", data_dir.join("explorer.db").display());
    let rpc = rpc.to_owned();
    let entry = entry.to_owned();
    let url = format!("http://{}", listener.local_addr()?);
    let config = cairn_explorer::FollowConfig {
        hub: Some(hub.to_owned()),
        every: std::time::Duration::from_secs(1),
        // The devnet's services all listen on loopback, and its hub is small.
        allow_private: true,
        hub_every: std::time::Duration::from_secs(2),
        nodes_every: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    Ok((
        url,
        tokio::spawn(async move {
            cairn_explorer::serve(
                listener,
                chain,
                &index,
                config,
                Some(rpc),
                Some(entry),
                stop,
            )
            .await
        }),
    ))
}
