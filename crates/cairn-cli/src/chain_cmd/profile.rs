//! Governance: approve (or --revoke) an execution profile verifiers re-execute.

use super::*;

/// Governance: approve (or --revoke) an execution profile verifiers re-execute.
#[derive(clap::Args)]
pub(crate) struct ProfileArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// The governor's key file.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// A profile hash (0x…), its canonical form, or `portable` (this build's generic tract).
    #[arg(value_parser = parse_profile)]
    pub(crate) profile: B256,
    #[arg(long)]
    pub(crate) revoke: bool,
}

/// Runs it.
pub(crate) async fn run(a: ProfileArgs) -> anyhow::Result<()> {
    let ProfileArgs {
        chain,
        key,
        profile,
        revoke,
    } = a;
    let gov = crate::keyfile::load_or_create(&key)?;
    let chain = chain.connect().await?;
    chain.set_profile(&gov, profile, !revoke).await?;
    let checkers = chain.profile_verifiers(profile).await?;
    println!(
        "{} profile {profile}; {checkers} active verifier(s) declare it",
        if revoke { "revoked" } else { "approved" }
    );
    Ok(())
}
