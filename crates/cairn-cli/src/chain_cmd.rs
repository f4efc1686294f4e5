//! `cairn chain deploy|status|register|mint` and `cairn verifier run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use anyhow::{Context, bail};
use cairn_ledger::deploy::deploy;
use cairn_ledger::{Chain, DeployParams, Deployment, EmbeddedLedger, Role, RpcLedger, dev_signer};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

mod report;
pub use report::*;

mod deploy;
mod measurement;
mod mint;
mod profile;
mod register;
mod registration_quorum;
mod status;
pub(crate) use deploy::DeployArgs;
pub(crate) use measurement::MeasurementArgs;
pub(crate) use mint::MintArgs;
pub(crate) use profile::ProfileArgs;
pub(crate) use register::RegisterArgs;
pub(crate) use registration_quorum::RegistrationQuorumArgs;
pub(crate) use status::StatusArgs;

/// Where the chain is.
#[derive(Args, Clone, Debug)]
pub struct ChainArgs {
    /// JSON-RPC endpoint of an EVM chain (anvil, Base, …).
    #[arg(long, env = "CAIRN_RPC")]
    pub rpc: Option<String>,
    /// Deployment file written by `cairn chain deploy`.
    #[arg(long, env = "CAIRN_DEPLOYMENT")]
    pub deployment: Option<PathBuf>,
    /// Longest wait for a transaction to be mined, in seconds.
    #[arg(long, default_value_t = 60)]
    pub rpc_wait_secs: u64,
    /// Most blocks one `eth_getLogs` request spans (public endpoints cap it).
    #[arg(long, default_value_t = cairn_ledger::rpc::DEFAULT_LOG_WINDOW)]
    pub rpc_log_window: u64,
}

impl ChainArgs {
    /// The RPC ledger and the deployment on it.
    pub async fn connect(&self) -> anyhow::Result<Chain> {
        let (Some(rpc), Some(deployment)) = (&self.rpc, &self.deployment) else {
            bail!("settling on a chain needs both --rpc URL and --deployment FILE");
        };
        let ledger = RpcLedger::connect(rpc, Duration::from_secs(self.rpc_wait_secs))
            .await
            .with_context(|| format!("connecting to {rpc}"))?
            .with_log_window(self.rpc_log_window);
        let d = Deployment::load(deployment)?;
        Ok(Chain::new(Arc::new(ledger), d)?)
    }
}

fn parse_measurement(s: &str) -> Result<(Role, B256), String> {
    let (role, m) = s.split_once('=').ok_or("ROLE=0xHEX, e.g. inference=0x…")?;
    let m = m.parse().map_err(|e| format!("measurement: {e}"))?;
    Ok((role.parse()?, m))
}

/// Paths of a devnet's embedded chain inside its data dir.
pub fn devnet_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("chain");
    (dir.join("ledger.sqlite"), dir.join("deployment.json"))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Inference,
    Verifier,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Inference => Role::Inference,
            RoleArg::Verifier => Role::Verifier,
        }
    }
}

#[derive(Subcommand)]
pub enum ChainCommand {
    /// Deploy the contracts (token unless --token, registry, settlement, escrow) to a chain and
    /// write the deployment file.
    Deploy(DeployArgs),
    /// Show contracts, parameters, balances, registered nodes and recent batches.
    Status(StatusArgs),
    /// Governance: approve (or --revoke) a TEE measurement for a role; nodes running a revoked
    /// one stop being active.
    Measurement(MeasurementArgs),
    /// Governance: approve (or --revoke) an execution profile verifiers re-execute.
    Profile(ProfileArgs),
    /// Governance: how many verifier approvals a registration needs.
    RegistrationQuorum(RegistrationQuorumArgs),
    /// Register with dev evidence (the same as `cairn node register --attester dev`).
    Register(RegisterArgs),
    /// Mint devnet tokens (the key needs the token's minter role).
    Mint(MintArgs),
}

pub async fn run(cmd: ChainCommand) -> anyhow::Result<()> {
    match cmd {
        ChainCommand::Deploy(a) => deploy::run(a).await,
        ChainCommand::Status(a) => status::run(a).await,
        ChainCommand::Measurement(a) => measurement::run(a).await,
        ChainCommand::Profile(a) => profile::run(a).await,
        ChainCommand::RegistrationQuorum(a) => registration_quorum::run(a).await,
        ChainCommand::Register(a) => register::run(a).await,
        ChainCommand::Mint(a) => mint::run(a).await,
    }
}

/// A profile as `--approve-profile` / `chain profile` take it.
fn parse_profile(s: &str) -> Result<B256, String> {
    if s == "portable" {
        return Ok(cairn_engine::TractEngine::portable_profile().hash());
    }
    if s.starts_with("0x") {
        return s
            .parse()
            .map_err(|e| format!("{s:?} is not a 32-byte hex profile hash: {e}"));
    }
    if s.starts_with("engine=") {
        return Ok(alloy_primitives::keccak256(s.as_bytes()));
    }
    Err(format!(
        "{s:?} is not a profile: give its hash (0x…), its canonical form (engine=…;version=…;isa=…;threads=…) or `portable`"
    ))
}

/// The chain named by `--rpc/--deployment`, or a devnet's embedded chain read-only.
pub async fn open_chain(args: &ChainArgs, devnet_dir: Option<&Path>) -> anyhow::Result<Chain> {
    match devnet_dir {
        Some(dir) => {
            let (ledger, deployment) = devnet_paths(dir);
            let d = Deployment::load(&deployment)?;
            let l = EmbeddedLedger::open_read_only(&ledger, d.chain_id)?;
            Ok(Chain::new(Arc::new(l), d)?)
        }
        None => args.connect().await,
    }
}
