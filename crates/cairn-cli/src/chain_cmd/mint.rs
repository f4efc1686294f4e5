//! Mint devnet tokens (the key needs the token's minter role).

use super::*;

/// Mint devnet tokens (the key needs the token's minter role).
#[derive(clap::Args)]
pub(crate) struct MintArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    #[arg(long)]
    pub(crate) key: PathBuf,
    #[arg(long)]
    pub(crate) to: Address,
    /// Amount in the token's smallest unit.
    #[arg(long)]
    pub(crate) amount: U256,
}

/// Runs it.
pub(crate) async fn run(a: MintArgs) -> anyhow::Result<()> {
    let MintArgs {
        chain,
        key,
        to,
        amount,
    } = a;
    let signer = crate::keyfile::load_or_create(&key)?;
    let chain = chain.connect().await?;
    let out = chain.mint(&signer, to, amount).await?;
    println!("minted {amount} to {to} (tx {})", out.hash);
    Ok(())
}
