//! Register with dev evidence (the same as `cairn node register --attester dev`).

use super::*;

/// Register with dev evidence (the same as `cairn node register --attester dev`).
#[derive(clap::Args)]
pub(crate) struct RegisterArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    #[arg(long)]
    pub(crate) key: PathBuf,
    #[arg(long, value_enum)]
    pub(crate) role: RoleArg,
    /// Stake in the token's smallest unit.
    #[arg(long)]
    pub(crate) stake: U256,
    /// Where the node or verifier is reached.
    #[arg(long)]
    pub(crate) endpoint: String,
}

/// Runs it.
pub(crate) async fn run(a: RegisterArgs) -> anyhow::Result<()> {
    let RegisterArgs {
        chain,
        key,
        role,
        stake,
        endpoint,
    } = a;
    crate::verify_cmd::register_cmd(crate::verify_cmd::RegisterArgs {
        chain,
        key,
        role,
        stake,
        endpoint,
        attester: crate::verify_cmd::AttesterArg::Dev,
        ohttp_key_id: 1,
        evidence_out: None,
    })
    .await
}
