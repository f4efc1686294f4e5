//! Show contracts, parameters, balances, registered nodes and recent batches.

use super::*;

/// Show contracts, parameters, balances, registered nodes and recent batches.
#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// Read a devnet's embedded chain instead (read-only; works while the devnet runs).
    #[arg(long, conflicts_with = "rpc")]
    pub(crate) devnet_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs it.
pub(crate) async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let StatusArgs {
        chain,
        devnet_dir,
        json,
    } = a;
    let chain = open_chain(&chain, devnet_dir.as_deref()).await?;
    let status = status(&chain).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}
