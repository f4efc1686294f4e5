//! Governance: approve (or --revoke) a TEE measurement for a role; nodes running a revoked

use super::*;

/// Governance: approve (or --revoke) a TEE measurement for a role; nodes running a revoked
/// one stop being active.
#[derive(clap::Args)]
pub(crate) struct MeasurementArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// The governor's key file.
    #[arg(long)]
    pub(crate) key: PathBuf,
    #[arg(long, value_enum)]
    pub(crate) role: RoleArg,
    /// The measurement (0x + 64 hex digits), or `dev` for software-key evidence.
    #[arg(long)]
    pub(crate) measurement: String,
    #[arg(long)]
    pub(crate) revoke: bool,
}

/// Runs it.
pub(crate) async fn run(a: MeasurementArgs) -> anyhow::Result<()> {
    let MeasurementArgs {
        chain,
        key,
        role,
        measurement,
        revoke,
    } = a;
    let gov = crate::keyfile::load_or_create(&key)?;
    let chain = chain.connect().await?;
    let m = if measurement == "dev" {
        cairn_core::DEV_MEASUREMENT
    } else {
        measurement
            .parse()
            .context("--measurement: a 0x-prefixed 32-byte hex value, or `dev`")?
    };
    chain.set_measurement(&gov, role.into(), m, !revoke).await?;
    println!(
        "{} measurement {m} for {:?}",
        if revoke { "revoked" } else { "approved" },
        Role::from(role)
    );
    Ok(())
}
