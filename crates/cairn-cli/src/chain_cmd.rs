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

mod status;
pub use status::*;

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
    Deploy {
        /// JSON-RPC endpoint.
        #[arg(long, env = "CAIRN_RPC")]
        rpc: String,
        /// The deployer's key file (it pays for gas).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the deployment.
        #[arg(long, default_value = "deployment.json")]
        out: PathBuf,
        /// An existing payment token (ERC-20 with EIP-3009, e.g. USDC) instead of deploying one.
        #[arg(long)]
        token: Option<Address>,
        /// Governance address (default: the deployer).
        #[arg(long)]
        governor: Option<Address>,
        /// Treasury address (default: the deployer).
        #[arg(long)]
        treasury: Option<Address>,
        /// Verifier signatures needed per batch.
        #[arg(long, default_value_t = 2)]
        quorum: u16,
        /// Seconds a batch can be challenged after attestation.
        #[arg(long, default_value_t = 86_400)]
        challenge_window: u64,
        /// Seconds a batch may wait for a verifier quorum's attestation; after that anyone may
        /// expire it (its fees go back to the node's vault).
        #[arg(long, default_value_t = 86_400)]
        attestation_timeout: u64,
        /// Approve an execution profile verifiers re-execute: a profile hash (0x…) or its
        /// canonical form (`engine=tract;version=…;isa=…;threads=1`, `\`, `;` and `=` in a field
        /// escaped with `\`); repeatable. The portable
        /// tract profile of this build is always approved.
        #[arg(long = "approve-profile", value_parser = parse_profile)]
        approve_profiles: Vec<B256>,
        /// Seconds before unbonded stake (and an escrow refund) can leave.
        #[arg(long, default_value_t = 7 * 86_400)]
        unbonding_delay: u64,
        #[arg(long, default_value_t = 60)]
        rpc_wait_secs: u64,
        /// Approve `dev` (software-key, not a TEE) evidence for both roles: local and test
        /// networks only.
        #[arg(long)]
        approve_dev_evidence: bool,
        /// Approve a TEE measurement for a role at deployment: ROLE=0xHEX (repeatable).
        #[arg(long = "approve-measurement", value_parser = parse_measurement)]
        approve_measurements: Vec<(Role, B256)>,
    },
    /// Show contracts, parameters, balances, registered nodes and recent batches.
    Status {
        #[command(flatten)]
        chain: ChainArgs,
        /// Read a devnet's embedded chain instead (read-only; works while the devnet runs).
        #[arg(long, conflicts_with = "rpc")]
        devnet_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Governance: approve (or --revoke) a TEE measurement for a role; nodes running a revoked
    /// one stop being active.
    Measurement {
        #[command(flatten)]
        chain: ChainArgs,
        /// The governor's key file.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The measurement (0x + 64 hex digits), or `dev` for software-key evidence.
        #[arg(long)]
        measurement: String,
        #[arg(long)]
        revoke: bool,
    },
    /// Governance: approve (or --revoke) an execution profile verifiers re-execute.
    Profile {
        #[command(flatten)]
        chain: ChainArgs,
        /// The governor's key file.
        #[arg(long)]
        key: PathBuf,
        /// A profile hash (0x…), its canonical form, or `portable` (this build's generic tract).
        #[arg(value_parser = parse_profile)]
        profile: B256,
        #[arg(long)]
        revoke: bool,
    },
    /// Governance: how many verifier approvals a registration needs.
    RegistrationQuorum {
        #[command(flatten)]
        chain: ChainArgs,
        /// The governor's key file.
        #[arg(long)]
        key: PathBuf,
        quorum: u16,
    },
    /// Register with dev evidence (the same as `cairn node register --attester dev`).
    Register {
        #[command(flatten)]
        chain: ChainArgs,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Stake in the token's smallest unit.
        #[arg(long)]
        stake: U256,
        /// Where the node or verifier is reached.
        #[arg(long)]
        endpoint: String,
    },
    /// Mint devnet tokens (the key needs the token's minter role).
    Mint {
        #[command(flatten)]
        chain: ChainArgs,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        to: Address,
        /// Amount in the token's smallest unit.
        #[arg(long)]
        amount: U256,
    },
}

pub async fn run(cmd: ChainCommand) -> anyhow::Result<()> {
    match cmd {
        ChainCommand::Deploy {
            rpc,
            key,
            out,
            token,
            governor,
            treasury,
            quorum,
            challenge_window,
            attestation_timeout,
            approve_profiles,
            unbonding_delay,
            rpc_wait_secs,
            approve_dev_evidence,
            approve_measurements,
        } => {
            let signer = crate::keyfile::load_or_create(&key)?;
            let ledger = RpcLedger::connect(&rpc, Duration::from_secs(rpc_wait_secs))
                .await
                .with_context(|| format!("connecting to {rpc}"))?;
            let me = signer.address();
            let params = DeployParams {
                token,
                verifier_quorum: quorum,
                challenge_window,
                attestation_timeout,
                approved_profiles: std::iter::once(
                    cairn_engine::TractEngine::portable_profile().hash(),
                )
                .chain(approve_profiles)
                .collect(),
                unbonding_delay,
                escrow_withdraw_delay: unbonding_delay,
                approved_measurements: approve_measurements
                    .into_iter()
                    .chain(
                        [Role::Inference, Role::Verifier]
                            .into_iter()
                            .filter(|_| approve_dev_evidence)
                            .map(|r| (r, cairn_core::DEV_MEASUREMENT)),
                    )
                    .collect(),
                ..DeployParams::devnet(governor.unwrap_or(me), treasury.unwrap_or(me))
            };
            let d = deploy(&ledger, &signer, &params).await?;
            d.save(&out)?;
            println!("deployed on chain {} ({rpc}):", d.chain_id);
            println!("{}", serde_json::to_string_pretty(&d)?);
            println!("wrote {}", out.display());
            Ok(())
        }
        ChainCommand::Status {
            chain,
            devnet_dir,
            json,
        } => {
            let chain = open_chain(&chain, devnet_dir.as_deref()).await?;
            let status = status(&chain).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        ChainCommand::Register {
            chain,
            key,
            role,
            stake,
            endpoint,
        } => {
            crate::verify_cmd::register_cmd(crate::verify_cmd::RegisterArgs {
                chain,
                key,
                role,
                stake,
                endpoint,
                attester: crate::verify_cmd::AttesterArg::Dev,
            })
            .await
        }
        ChainCommand::Measurement {
            chain,
            key,
            role,
            measurement,
            revoke,
        } => {
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
        ChainCommand::Profile {
            chain,
            key,
            profile,
            revoke,
        } => {
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
        ChainCommand::RegistrationQuorum { chain, key, quorum } => {
            let gov = crate::keyfile::load_or_create(&key)?;
            let chain = chain.connect().await?;
            chain.set_registration_quorum(&gov, quorum).await?;
            println!("registrations now need {quorum} verifier approvals");
            Ok(())
        }
        ChainCommand::Mint {
            chain,
            key,
            to,
            amount,
        } => {
            let signer = crate::keyfile::load_or_create(&key)?;
            let chain = chain.connect().await?;
            let out = chain.mint(&signer, to, amount).await?;
            println!("minted {amount} to {to} (tx {})", out.hash);
            Ok(())
        }
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
