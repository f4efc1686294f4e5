//! Deploying the contract set, the deployment file, and the devnet's well-known accounts.

use std::path::Path;

use alloy_primitives::{Address, Bytes, U256, keccak256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{SolCall, SolConstructor};
use serde::{Deserialize, Serialize};

use crate::contracts::{CairnToken, Escrow, NodeRegistry, Settlement, init_code};
use crate::{Ledger, LedgerError, TxRequest};

/// One token unit with 6 decimals.
pub const TOKEN_UNIT: u64 = 1_000_000;

/// The devnet's deterministic account `i`: key = keccak256("cairn-devnet-account-{i}").
/// Public knowledge: never use these keys on a real chain.
pub fn dev_signer(i: usize) -> PrivateKeySigner {
    let key = keccak256(format!("cairn-devnet-account-{i}"));
    PrivateKeySigner::from_bytes(&key).expect("a keccak output below the curve order")
}

/// Dev accounts `0..n`.
pub fn dev_signers(n: usize) -> Vec<PrivateKeySigner> {
    (0..n).map(dev_signer).collect()
}

/// Everything `deploy` needs to know.
#[derive(Clone, Debug)]
pub struct DeployParams {
    /// Receives governance roles; may differ from the deployer.
    pub governor: Address,
    /// Receives the protocol's share of fees and of slashed stake.
    pub treasury: Address,
    /// Use this ERC-20 (with EIP-3009, e.g. USDC) instead of deploying `CairnToken`.
    pub token: Option<Address>,
    /// Minimum stake of an inference node, token units.
    pub min_inference_stake: U256,
    /// Minimum stake of a verifier, token units.
    pub min_verifier_stake: U256,
    /// Seconds before unbonded stake can leave.
    pub unbonding_delay: u64,
    /// Verifier signatures needed on a batch or a fraud verdict.
    pub verifier_quorum: u16,
    /// Seconds a batch can be challenged after attestation.
    pub challenge_window: u64,
    /// Seconds after submission within which a batch must be attested, else it expires.
    pub attestation_timeout: u64,
    /// Verifiers' share of a batch's fees, basis points (the node gets the rest).
    pub verifier_bps: u16,
    /// Treasury's share of a batch's fees, basis points.
    pub treasury_bps: u16,
    /// Share of a node's stake slashed on proven fraud, basis points.
    pub slash_bps: u16,
    /// The challenger's share of the slashed stake, basis points.
    pub challenger_reward_bps: u16,
    /// Seconds between a payer's withdrawal request and its refund in the escrow.
    pub escrow_withdraw_delay: u64,
    /// Measurements approved per role at deployment (governance changes them later).
    pub approved_measurements: Vec<(crate::Role, alloy_primitives::B256)>,
    /// Execution profiles (hashes) approved at deployment: the ones the verifiers re-execute.
    pub approved_profiles: Vec<alloy_primitives::B256>,
}

impl DeployParams {
    /// Short windows for a local network; economics as in production.
    pub fn devnet(governor: Address, treasury: Address) -> Self {
        Self {
            governor,
            treasury,
            token: None,
            min_inference_stake: U256::from(100 * TOKEN_UNIT),
            min_verifier_stake: U256::from(50 * TOKEN_UNIT),
            unbonding_delay: 3_600,
            verifier_quorum: 2,
            challenge_window: 10,
            attestation_timeout: 600,
            verifier_bps: 1_000,
            treasury_bps: 500,
            slash_bps: 5_000,
            challenger_reward_bps: 2_000,
            escrow_withdraw_delay: 3_600,
            // Software-key evidence: only a local network should approve it.
            approved_measurements: vec![
                (crate::Role::Inference, cairn_core::DEV_MEASUREMENT),
                (crate::Role::Verifier, cairn_core::DEV_MEASUREMENT),
            ],
            approved_profiles: Vec::new(),
        }
    }
}

fn checksummed<S: serde::Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_checksum(None))
}

/// Where the contracts live on one chain; written by `cairn chain deploy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Payment token (ERC-20 with EIP-3009).
    #[serde(serialize_with = "checksummed")]
    pub token: Address,
    /// `NodeRegistry`.
    #[serde(serialize_with = "checksummed")]
    pub registry: Address,
    /// `Settlement`: also the receipts' EIP-712 verifying contract.
    #[serde(serialize_with = "checksummed")]
    pub settlement: Address,
    /// `Escrow` for prepaid vouchers.
    #[serde(serialize_with = "checksummed")]
    pub escrow: Address,
    /// Holder of the governance roles.
    #[serde(serialize_with = "checksummed")]
    pub governor: Address,
    /// Receiver of the protocol's fee share.
    #[serde(serialize_with = "checksummed")]
    pub treasury: Address,
    /// Block of the last deployment transaction; event scans start here.
    pub block: u64,
    /// The x402 `upto` scheme's contracts (Permit2 and its proxy, at their fixed addresses),
    /// when this chain has them; absent (older files, or a chain without them), `upto` is not
    /// offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<UptoContracts>,
    /// The x402 `batch-settlement` scheme's contracts (the channels and their deposit
    /// collectors, at their fixed addresses), when this chain has them; absent, the scheme is
    /// not offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchContracts>,
}

/// The x402 `batch-settlement` contracts, where the official clients expect them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchContracts {
    /// The payment channels (also the vouchers' EIP-712 verifying contract).
    #[serde(serialize_with = "checksummed")]
    pub settlement: Address,
    /// The deposit collector for EIP-3009 tokens.
    #[serde(serialize_with = "checksummed")]
    pub erc3009_collector: Address,
    /// The deposit collector through Permit2.
    #[serde(serialize_with = "checksummed")]
    pub permit2_collector: Address,
}

/// Permit2 and the x402 `upto` proxy, where the official clients expect them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UptoContracts {
    /// Permit2 (signature transfers).
    #[serde(serialize_with = "checksummed")]
    pub permit2: Address,
    /// The x402 `upto` Permit2 proxy: the spender payers sign for.
    #[serde(serialize_with = "checksummed")]
    pub proxy: Address,
}

/// Makes sure Permit2 and the x402 `upto` proxy are at the addresses the official clients expect:
/// code already there is used (on a public chain, Uniswap's Permit2 and the x402 project's proxy),
/// and on a dev chain (embedded, anvil) ours is placed there. `Ok(None)` when the chain has
/// neither and cannot be given them (a public chain without the proxy: `upto` is then not
/// offered).
pub async fn place_upto(ledger: &dyn Ledger) -> Result<Option<UptoContracts>, LedgerError> {
    use crate::contracts::x402_addresses;
    let placed = place(
        ledger,
        &[
            (x402_addresses::PERMIT2, "Permit2"),
            (x402_addresses::UPTO_PERMIT2_PROXY, "X402UptoPermit2Proxy"),
        ],
    )
    .await?;
    Ok(placed.then_some(UptoContracts {
        permit2: x402_addresses::PERMIT2,
        proxy: x402_addresses::UPTO_PERMIT2_PROXY,
    }))
}

/// Makes sure each named contract's code is at its address: code already there is used, and
/// on a dev chain ours is placed. `false` when one is missing and the chain cannot be given it.
async fn place(ledger: &dyn Ledger, contracts: &[(Address, &str)]) -> Result<bool, LedgerError> {
    for &(address, name) in contracts {
        if !ledger.code(address).await?.is_empty() {
            continue;
        }
        match ledger
            .dev_set_code(address, crate::contracts::runtime_code(name))
            .await
        {
            Ok(()) => {}
            Err(LedgerError::Unsupported(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// As [`place_upto`], for the x402 `batch-settlement` channels and their deposit collectors
/// (the Permit2 collector needs Permit2, which [`place_upto`] places first).
pub async fn place_batch(ledger: &dyn Ledger) -> Result<Option<BatchContracts>, LedgerError> {
    use crate::contracts::x402_addresses;
    let placed = place(
        ledger,
        &[
            (x402_addresses::BATCH_SETTLEMENT, "X402BatchSettlement"),
            (
                x402_addresses::ERC3009_DEPOSIT_COLLECTOR,
                "ERC3009DepositCollector",
            ),
            (
                x402_addresses::PERMIT2_DEPOSIT_COLLECTOR,
                "Permit2DepositCollector",
            ),
        ],
    )
    .await?;
    Ok(placed.then_some(BatchContracts {
        settlement: x402_addresses::BATCH_SETTLEMENT,
        erc3009_collector: x402_addresses::ERC3009_DEPOSIT_COLLECTOR,
        permit2_collector: x402_addresses::PERMIT2_DEPOSIT_COLLECTOR,
    }))
}

impl Deployment {
    /// Reads a deployment file.
    pub fn load(path: &Path) -> Result<Self, LedgerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LedgerError::Invalid(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            LedgerError::Invalid(format!("{} is not a deployment file: {e}", path.display()))
        })
    }

    /// Writes it (pretty JSON), replacing the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), LedgerError> {
        let io = |e: std::io::Error| LedgerError::Invalid(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(self).expect("plain struct serializes");
        std::fs::write(&tmp, text + "\n").map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

async fn create(
    ledger: &dyn Ledger,
    deployer: &PrivateKeySigner,
    name: &str,
    args: Vec<u8>,
) -> Result<(Address, u64), LedgerError> {
    let mut code = init_code(name).to_vec();
    code.extend_from_slice(&args);
    let out = ledger
        .send(
            deployer,
            TxRequest {
                to: None,
                data: Bytes::from(code),
                value: U256::ZERO,
            },
        )
        .await?;
    let address = out
        .contract_address
        .ok_or_else(|| LedgerError::Invalid(format!("deploying {name} created no contract")))?;
    Ok((address, out.block))
}

async fn call(
    ledger: &dyn Ledger,
    signer: &PrivateKeySigner,
    to: Address,
    data: Vec<u8>,
) -> Result<u64, LedgerError> {
    let out = ledger
        .send(
            signer,
            TxRequest {
                to: Some(to),
                data: data.into(),
                value: U256::ZERO,
            },
        )
        .await?;
    Ok(out.block)
}

/// Lets the settlement slash, approves the initial measurements and profiles, and hands the
/// registry's governance to `params.governor` when the deployer is someone else. Returns the
/// block of the last transaction.
async fn configure_registry(
    ledger: &dyn Ledger,
    deployer: &PrivateKeySigner,
    params: &DeployParams,
    registry: Address,
    settlement: Address,
) -> Result<u64, LedgerError> {
    let me = deployer.address();
    let slasher = keccak256("SLASHER_ROLE");
    let mut block = call(
        ledger,
        deployer,
        registry,
        NodeRegistry::grantRoleCall {
            role: slasher,
            account: settlement,
        }
        .abi_encode(),
    )
    .await?;
    for (role, measurement) in &params.approved_measurements {
        block = call(
            ledger,
            deployer,
            registry,
            NodeRegistry::setMeasurementCall {
                role: role.code(),
                measurement: *measurement,
                approved: true,
            }
            .abi_encode(),
        )
        .await?;
    }
    for profile in &params.approved_profiles {
        block = call(
            ledger,
            deployer,
            registry,
            NodeRegistry::setProfileCall {
                profileHash: *profile,
                approved: true,
            }
            .abi_encode(),
        )
        .await?;
    }
    if params.governor != me {
        block = hand_over(ledger, deployer, registry, params.governor).await?;
    }
    Ok(block)
}

/// Gives `governor` the registry's admin and governor roles and renounces the deployer's.
async fn hand_over(
    ledger: &dyn Ledger,
    deployer: &PrivateKeySigner,
    registry: Address,
    governor: Address,
) -> Result<u64, LedgerError> {
    let me = deployer.address();
    let governor_role = keccak256("GOVERNOR_ROLE");
    let mut last = 0;
    for role in [alloy_primitives::B256::ZERO, governor_role] {
        call(
            ledger,
            deployer,
            registry,
            NodeRegistry::grantRoleCall {
                role,
                account: governor,
            }
            .abi_encode(),
        )
        .await?;
    }
    for role in [governor_role, alloy_primitives::B256::ZERO] {
        last = call(
            ledger,
            deployer,
            registry,
            NodeRegistry::renounceRoleCall {
                role,
                callerConfirmation: me,
            }
            .abi_encode(),
        )
        .await?;
    }
    Ok(last)
}

/// Deploys token (unless given), registry, settlement and escrow; lets the settlement slash;
/// hands governance to `params.governor` when the deployer is someone else.
pub async fn deploy(
    ledger: &dyn Ledger,
    deployer: &PrivateKeySigner,
    params: &DeployParams,
) -> Result<Deployment, LedgerError> {
    let me = deployer.address();
    let token = match params.token {
        Some(t) => t,
        None => {
            let args = CairnToken::constructorCall {
                name_: "Cairn USD".into(),
                symbol_: "cUSD".into(),
                admin: params.governor,
            }
            .abi_encode();
            create(ledger, deployer, "CairnToken", args).await?.0
        }
    };
    let (registry, _) = create(
        ledger,
        deployer,
        "NodeRegistry",
        NodeRegistry::constructorCall {
            stakeToken_: token,
            governor: me,
            minInferenceStake: params.min_inference_stake,
            minVerifierStake: params.min_verifier_stake,
            unbondingDelay_: params.unbonding_delay,
        }
        .abi_encode(),
    )
    .await?;
    let (settlement, _) = create(
        ledger,
        deployer,
        "Settlement",
        Settlement::constructorCall {
            feeToken_: token,
            registry_: registry,
            governor: params.governor,
            p: Settlement::Params {
                treasury: params.treasury,
                verifierQuorum: params.verifier_quorum,
                challengeWindow: params.challenge_window,
                attestationTimeout: params.attestation_timeout,
                verifierBps: params.verifier_bps,
                treasuryBps: params.treasury_bps,
                slashBps: params.slash_bps,
                challengerRewardBps: params.challenger_reward_bps,
            },
        }
        .abi_encode(),
    )
    .await?;
    let (escrow, _) = create(
        ledger,
        deployer,
        "Escrow",
        Escrow::constructorCall {
            token_: token,
            withdrawDelay_: params.escrow_withdraw_delay,
            vaults_: settlement,
        }
        .abi_encode(),
    )
    .await?;
    let block = configure_registry(ledger, deployer, params, registry, settlement).await?;
    let upto = place_upto(ledger).await?;
    let batch = match upto {
        Some(_) => place_batch(ledger).await?,
        None => None,
    };
    Ok(Deployment {
        chain_id: ledger.chain_id(),
        token,
        registry,
        settlement,
        escrow,
        governor: params.governor,
        treasury: params.treasury,
        block,
        upto,
        batch,
    })
}
