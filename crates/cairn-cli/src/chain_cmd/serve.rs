//! `cairn chain serve`: the devnet's chain alone, over Ethereum JSON-RPC.

use super::*;

/// Serve the devnet's embedded chain (set up on first use) over Ethereum JSON-RPC, without the
/// hub, node and verifiers.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The devnet data dir whose chain to serve (`cairn devnet`'s default when absent). Not
    /// while a devnet runs on it: one process writes a chain.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Chain id (fixed when the data dir is first created).
    #[arg(long, default_value_t = 31337)]
    pub(crate) chain_id: u64,
    #[command(flatten)]
    pub(crate) rpc: crate::args::RpcServeArgs,
}

/// Runs it until interrupted.
pub(crate) async fn run(a: ServeArgs) -> anyhow::Result<()> {
    let data_dir = crate::devnet::data_dir_or_default(a.data_dir);
    // The devnet's defaults, so `cairn devnet` can later resume this chain.
    let (chain, ledger) = devnet_chain(&data_dir, a.chain_id, 10, 300).await?;
    let (url, task) = a.rpc.start(ledger, Vec::new()).await?;
    println!("Cairn chain");
    println!("  data dir: {}", data_dir.display());
    print_devnet(&chain).await?;
    println!("  chain rpc: {url}");
    tokio::select! {
        r = task => r?.context("serving JSON-RPC")?,
        _ = crate::shutdown_signal() => {}
    }
    Ok(())
}
