//! `cairn chain deploy|status|register|mint|serve|…`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use anyhow::{Context, bail};
use cairn_ledger::deploy::deploy;
use cairn_ledger::{Chain, DeployParams, Role, RpcLedger, dev_signer};
use clap::Subcommand;
use serde_json::{Value, json};

mod report;
pub use report::*;

mod deploy;
mod measurement;
mod mint;
mod profile;
mod register;
mod registration_quorum;
mod serve;
mod status;
pub(crate) use deploy::DeployArgs;
pub(crate) use measurement::MeasurementArgs;
pub(crate) use mint::MintArgs;
pub(crate) use profile::ProfileArgs;
pub(crate) use register::RegisterArgs;
pub(crate) use registration_quorum::RegistrationQuorumArgs;
pub(crate) use serve::ServeArgs;
pub(crate) use status::StatusArgs;

pub use crate::args::{ChainArgs, RoleArg, devnet_paths, open_chain};

fn parse_measurement(s: &str) -> Result<(Role, B256), String> {
    let (role, m) = s.split_once('=').ok_or("ROLE=0xHEX, e.g. inference=0x…")?;
    let m = m.parse().map_err(|e| format!("measurement: {e}"))?;
    Ok((role.parse()?, m))
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
    /// Serve the devnet's chain alone over Ethereum JSON-RPC (cast, web3.py, viem, wallets).
    Serve(ServeArgs),
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
        ChainCommand::Serve(a) => serve::run(a).await,
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
