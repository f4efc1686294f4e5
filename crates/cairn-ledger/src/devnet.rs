//! The devnet's chain: well-known dev accounts, and a genesis that deploys the contracts, funds
//! the accounts and registers the genesis verifiers on an embedded chain.

use std::path::PathBuf;
use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};

use crate::deploy::deploy;
use crate::{
    Chain, DeployParams, Deployment, EmbeddedLedger, LedgerError, RegistrationRequest, Role,
    dev_signer,
};

/// The devnet's well-known accounts: (index, role).
pub const ACCOUNTS: [(usize, &str); 10] = [
    (0, "governor, deployer, token minter"),
    (1, "treasury"),
    (2, "inference node"),
    (3, "verifier"),
    (4, "verifier"),
    (5, "verifier"),
    (6, "user"),
    (7, "user"),
    (8, "user"),
    (9, "user"),
];
/// The devnet's verifiers.
pub const VERIFIERS: [usize; 3] = [3, 4, 5];
/// The devnet's inference node account.
pub const NODE: usize = 2;
/// The devnet account whose key file `cairn devnet` writes for paying.
pub const PAYER: usize = 6;

/// Where the devnet's chain lives and how it starts.
pub struct Genesis {
    /// The embedded chain's state.
    pub ledger_path: PathBuf,
    /// The deployment file; its presence means the chain is fully set up.
    pub deployment_path: PathBuf,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Batches' challenge window, seconds.
    pub challenge_window: u64,
    /// Seconds a batch may wait for attestation before it can be expired.
    pub attestation_timeout: u64,
    /// Execution profiles governance approves at genesis.
    pub approved_profiles: Vec<B256>,
}

/// `ledger` with the contracts deployed by the devnet's governor on the devnet's default
/// parameters, and nothing else (no account funded, no verifier registered): where tests start.
pub async fn deployed(ledger: Arc<dyn crate::Ledger>) -> Result<Chain, LedgerError> {
    let gov = dev_signer(0);
    let params = DeployParams::devnet(gov.address(), dev_signer(1).address());
    let d = deploy(ledger.as_ref(), &gov, &params).await?;
    Chain::new(ledger, d)
}

/// Opens (or creates: genesis, deploy, fund, register verifiers) the devnet's embedded chain: the
/// contracts bound to it, and the ledger itself (what its JSON-RPC server serves).
pub async fn open(g: &Genesis) -> Result<(Chain, Arc<EmbeddedLedger>), LedgerError> {
    let Genesis {
        ledger_path,
        deployment_path,
        chain_id,
        challenge_window,
        attestation_timeout,
        ..
    } = g;
    let genesis: Vec<(Address, U256)> = ACCOUNTS
        .iter()
        .map(|(i, _)| (dev_signer(*i).address(), U256::from(10u128.pow(22))))
        .collect();
    let ledger = Arc::new(EmbeddedLedger::open(ledger_path, *chain_id, &genesis)?);
    if deployment_path.exists() {
        let d = Deployment::load(deployment_path)?;
        return Ok((Chain::new(ledger.clone(), d)?, ledger));
    }
    let gov = dev_signer(0);
    let params = DeployParams {
        challenge_window: *challenge_window,
        attestation_timeout: *attestation_timeout,
        approved_profiles: g.approved_profiles.clone(),
        ..DeployParams::devnet(gov.address(), dev_signer(1).address())
    };
    let d = deploy(ledger.as_ref(), &gov, &params).await?;
    let chain = Chain::new(ledger.clone(), d.clone())?;
    let unit = U256::from(crate::deploy::TOKEN_UNIT);
    for (i, _) in ACCOUNTS.iter().skip(2) {
        chain
            .mint(
                &gov,
                dev_signer(*i).address(),
                U256::from(1_000_000u64) * unit,
            )
            .await?;
    }
    // The genesis verifiers join while registrations need no approvals; from then on every
    // registration (the node's included) needs two of them.
    for i in VERIFIERS {
        let key = dev_signer(i);
        chain
            .register(
                &key,
                &RegistrationRequest::dev(key.address(), Role::Verifier, "devnet:starting"),
                U256::from(100u64) * unit,
                vec![],
            )
            .await?;
    }
    chain.set_registration_quorum(&gov, 2).await?;
    // Written last: its presence means the chain is fully set up.
    d.save(deployment_path)?;
    Ok((chain, ledger))
}
