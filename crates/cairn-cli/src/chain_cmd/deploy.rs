//! Deploy the contracts (token unless --token, registry, settlement, escrow) to a chain and

use super::*;

/// Deploy the contracts (token unless --token, registry, settlement, escrow) to a chain and
/// write the deployment file.
#[derive(clap::Args)]
pub(crate) struct DeployArgs {
    /// JSON-RPC endpoint.
    #[arg(long, env = "CAIRN_RPC")]
    pub(crate) rpc: String,
    /// The deployer's key file (it pays for gas).
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Where to write the deployment.
    #[arg(long, default_value = "deployment.json")]
    pub(crate) out: PathBuf,
    /// An existing payment token (ERC-20 with EIP-3009, e.g. USDC) instead of deploying one.
    #[arg(long)]
    pub(crate) token: Option<Address>,
    /// Governance address (default: the deployer).
    #[arg(long)]
    pub(crate) governor: Option<Address>,
    /// Treasury address (default: the deployer).
    #[arg(long)]
    pub(crate) treasury: Option<Address>,
    /// Verifier signatures needed per batch.
    #[arg(long, default_value_t = 2)]
    pub(crate) quorum: u16,
    /// Seconds a batch can be challenged after attestation.
    #[arg(long, default_value_t = 86_400)]
    pub(crate) challenge_window: u64,
    /// Seconds a batch may wait for a verifier quorum's attestation; after that anyone may
    /// expire it (its fees go back to the node's vault).
    #[arg(long, default_value_t = 86_400)]
    pub(crate) attestation_timeout: u64,
    /// Approve an execution profile verifiers re-execute: a profile hash (0x…) or its
    /// canonical form (`engine=tract;version=…;isa=…;threads=1`, `\`, `;` and `=` in a field
    /// escaped with `\`); repeatable. The portable
    /// tract profile of this build is always approved.
    #[arg(long = "approve-profile", value_parser = parse_profile)]
    pub(crate) approve_profiles: Vec<B256>,
    /// Seconds before unbonded stake (and an escrow refund) can leave.
    #[arg(long, default_value_t = 7 * 86_400)]
    pub(crate) unbonding_delay: u64,
    #[arg(long, default_value_t = 60)]
    pub(crate) rpc_wait_secs: u64,
    /// Approve `dev` (software-key, not a TEE) evidence for both roles: local and test
    /// networks only.
    #[arg(long)]
    pub(crate) approve_dev_evidence: bool,
    /// Approve a TEE measurement for a role at deployment: ROLE=0xHEX (repeatable).
    #[arg(long = "approve-measurement", value_parser = parse_measurement)]
    pub(crate) approve_measurements: Vec<(Role, B256)>,
}

/// Runs it.
pub(crate) async fn run(a: DeployArgs) -> anyhow::Result<()> {
    let DeployArgs {
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
    } = a;
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
        approved_profiles: std::iter::once(cairn_engine::TractEngine::portable_profile().hash())
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
    if d.upto.is_none() {
        println!(
            "x402 upto: not available on this chain: it has no Permit2 at {} or no x402 upto proxy at {} (the x402 project deploys them; on a dev chain `cairn chain deploy` places them)",
            cairn_ledger::contracts::x402_addresses::PERMIT2,
            cairn_ledger::contracts::x402_addresses::UPTO_PERMIT2_PROXY
        );
    }
    Ok(())
}
