//! Governance: how many verifier approvals a registration needs.

use super::*;

/// Governance: how many verifier approvals a registration needs.
#[derive(clap::Args)]
pub(crate) struct RegistrationQuorumArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// The governor's key file.
    #[arg(long)]
    pub(crate) key: PathBuf,
    pub(crate) quorum: u16,
}

/// Runs it.
pub(crate) async fn run(a: RegistrationQuorumArgs) -> anyhow::Result<()> {
    let RegistrationQuorumArgs { chain, key, quorum } = a;
    let gov = crate::keyfile::load_or_create(&key)?;
    let chain = chain.connect().await?;
    chain.set_registration_quorum(&gov, quorum).await?;
    println!("registrations now need {quorum} verifier approvals");
    Ok(())
}
