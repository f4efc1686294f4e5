//! Typed access to the deployed contracts over any [`Ledger`], and the EIP-712 messages
//! (batch attestation, fraud verdict, voucher) that are signed off chain.

use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes, Signature, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::{Eip712Domain, SolCall, SolEvent, SolStruct, sol};
use serde::Serialize;

use crate::contracts::{CairnToken, Escrow, NodeRegistry, Settlement};
use crate::{Deployment, Ledger, LedgerError, TxOutcome, TxRequest};

sol! {
    /// A verifier's signature that it checked a batch.
    struct BatchAttestation {
        uint256 batchId;
        bytes32 root;
        uint32 count;
        uint256 fees;
    }
    /// A verifier's signature that a receipt in a batch is wrong.
    struct FraudVerdict {
        uint256 batchId;
        bytes32 receiptHash;
        bytes32 evidenceHash;
    }
    /// EIP-3009's transfer authorization, signed by the payer.
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
    /// EIP-3009's receive authorization (only `to` may submit it), signed by the payer.
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
    /// A verifier's approval of a node's registration (or new evidence) in the registry.
    struct Registration {
        address node;
        uint8 role;
        string endpoint;
        bytes32 measurement;
        bytes32 evidenceDigest;
        uint64 deadline;
    }
    /// A payer's cumulative ceiling for a payee in the escrow; `nonce` (the payer's random
    /// choice) makes each voucher distinct.
    struct Voucher {
        address payer;
        address payee;
        bytes32 salt;
        uint256 cumulativeAmount;
        bytes32 nonce;
    }
}

/// Token amounts as decimal strings in JSON (alloy's default is hex).
fn decimal<S: serde::Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

mod batch;
mod escrow;
mod registry;
mod settlement;
mod token;
mod upto;
pub use batch::{
    BatchChannelState, ChannelConfig, ClaimedVoucher, VoucherClaim, batch_channel_id,
    batch_claims_hash, batch_domain, batch_refund_hash, batch_voucher_hash, erc3009_collector_data,
    erc3009_deposit_nonce, permit2_collector_data, permit2_deposit_hash, typed as batch_typed,
};
pub use settlement::Challenged;
pub use token::AuthorizationUse;
pub use upto::{Permit, TokenPermit, UptoAuthorization, permit2_domain};

/// A registry role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs models and signs receipts.
    Inference,
    /// Checks batches and co-signs them.
    Verifier,
}

impl Role {
    /// The registry's numeric role.
    pub fn code(self) -> u8 {
        match self {
            Role::Inference => 1,
            Role::Verifier => 2,
        }
    }

    /// The role of a registry code; `None` for 0 (unregistered) or unknown codes.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Role::Inference),
            2 => Some(Role::Verifier),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inference" => Ok(Role::Inference),
            "verifier" => Ok(Role::Verifier),
            other => Err(format!("unknown role `{other}` (inference | verifier)")),
        }
    }
}

/// What a quorum of verifiers approves before a node enters the registry: the node, its role and
/// endpoint, the measurement its evidence reports and the evidence's digest, until `deadline`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRequest {
    /// The registering node's address (its signing key).
    pub node: Address,
    /// The role it registers in.
    pub role: Role,
    /// Where it is reached.
    pub endpoint: String,
    /// The code identity its evidence reports (approved per role by governance).
    pub measurement: B256,
    /// SHA-256 of the evidence the verifiers checked.
    pub evidence_digest: B256,
    /// Unix seconds after which the approval is void.
    pub deadline: u64,
}

impl RegistrationRequest {
    /// A registration on the dev measurement with no evidence digest and no deadline: for chains
    /// whose registration quorum is 0 (the first verifiers, tests of the contracts).
    pub fn dev(node: Address, role: Role, endpoint: &str) -> Self {
        Self {
            node,
            role,
            endpoint: endpoint.into(),
            measurement: cairn_core::DEV_MEASUREMENT,
            evidence_digest: B256::ZERO,
            deadline: u64::MAX,
        }
    }

    fn typed(&self) -> Registration {
        Registration {
            node: self.node,
            role: self.role.code(),
            endpoint: self.endpoint.clone(),
            measurement: self.measurement,
            evidenceDigest: self.evidence_digest,
            deadline: self.deadline,
        }
    }
}

/// A registered node as the registry holds it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node's address.
    pub address: Address,
    /// Its role; `None` when not registered.
    pub role: Option<Role>,
    /// Not disabled by governance.
    pub enabled: bool,
    /// Where it is reached.
    pub endpoint: String,
    /// Active stake, token units.
    #[serde(serialize_with = "decimal")]
    pub stake: U256,
    /// Stake waiting out the unbonding delay.
    #[serde(serialize_with = "decimal")]
    pub unbonding: U256,
    /// Unix seconds of its last heartbeat.
    pub last_heartbeat: u64,
    /// The code identity its evidence reported.
    pub measurement: B256,
    /// SHA-256 of the evidence the verifiers approved.
    pub evidence_digest: B256,
    /// Whether governance still approves `measurement` for its role.
    pub measurement_approved: bool,
    /// Registered, enabled, staked enough, running an approved measurement, and alive.
    pub active: bool,
}

impl NodeInfo {
    /// Why the registry does not count this node as active, at chain time `now` under a
    /// `heartbeat_timeout` (0: none). An active node normally has none; a node the contract
    /// counts inactive with no visible cause lacks stake.
    pub fn inactive_because(&self, now: u64, heartbeat_timeout: u64) -> Vec<&'static str> {
        let mut why = Vec::new();
        if !self.enabled {
            why.push("disabled by governance");
        }
        if !self.measurement_approved {
            why.push("measurement revoked");
        }
        if heartbeat_timeout > 0 && now > self.last_heartbeat + heartbeat_timeout {
            why.push("heartbeat lapsed");
        }
        if !self.active && why.is_empty() {
            why.push("stake below the minimum");
        }
        why
    }
}

/// A batch's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    /// No such batch.
    Unknown,
    /// Root and fees are on chain; waiting for attestation.
    Submitted,
    /// A verifier quorum signed; the challenge window runs.
    Attested,
    /// Fees paid out.
    Finalized,
    /// Proven wrong by a challenge; fees went to the treasury.
    Voided,
    /// Not attested within the attestation timeout; fees went back to the node's vault. Still
    /// challengeable for the challenge window (from `attested_at`, its expiry time).
    Expired,
    /// Expired and past its challenge window: closed.
    Lapsed,
}

impl BatchStatus {
    /// Whether the batch can still change (and so still locks the node's stake and payloads).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            BatchStatus::Submitted | BatchStatus::Attested | BatchStatus::Expired
        )
    }
}

/// A batch as the settlement contract holds it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchInfo {
    /// Batch id (from 1).
    pub id: u64,
    /// The node that submitted it.
    pub node: Address,
    /// Merkle root of its receipts.
    pub root: B256,
    /// Receipts in it.
    pub count: u32,
    /// Fees escrowed with it, token units.
    #[serde(serialize_with = "decimal")]
    pub fees: U256,
    /// Unix seconds of submission.
    pub submitted_at: u64,
    /// Unix seconds of attestation (0 before).
    pub attested_at: u64,
    /// Where it is in its lifecycle.
    pub status: BatchStatus,
    /// The verifiers whose attestation was recorded.
    pub verifiers: Vec<Address>,
}

/// A prepaid channel in the escrow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    /// Deposited in total, token units.
    #[serde(serialize_with = "decimal")]
    pub deposited: U256,
    /// Paid out to the payee so far.
    #[serde(serialize_with = "decimal")]
    pub claimed: U256,
    /// When the payer may take the rest back (0: no withdrawal requested).
    pub withdrawable_at: u64,
}

/// The contracts of one [`Deployment`] on one [`Ledger`].
#[derive(Clone)]
pub struct Chain {
    ledger: Arc<dyn Ledger>,
    deployment: Deployment,
}

impl Chain {
    /// Binds a deployment to the ledger it lives on; their chain ids must agree.
    pub fn new(ledger: Arc<dyn Ledger>, deployment: Deployment) -> Result<Self, LedgerError> {
        if ledger.chain_id() != deployment.chain_id {
            return Err(LedgerError::Invalid(format!(
                "the deployment is for chain {}, the ledger is chain {}",
                deployment.chain_id,
                ledger.chain_id()
            )));
        }
        Ok(Self { ledger, deployment })
    }

    /// The ledger the contracts live on.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// The contract addresses.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The receipts' (and attestations', verdicts') EIP-712 domain: the settlement contract.
    pub fn settlement_domain(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some("Cairn".into()),
            Some("1".into()),
            Some(U256::from(self.deployment.chain_id)),
            Some(self.deployment.settlement),
            None,
        )
    }

    /// The escrow's vouchers' EIP-712 domain.
    pub fn escrow_domain(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some("Cairn Escrow".into()),
            Some("1".into()),
            Some(U256::from(self.deployment.chain_id)),
            Some(self.deployment.escrow),
            None,
        )
    }

    async fn view<C: SolCall>(&self, to: Address, call: C) -> Result<C::Return, LedgerError> {
        let out = self.ledger.call(to, call.abi_encode().into()).await?;
        C::abi_decode_returns(&out)
            .map_err(|e| LedgerError::Invalid(format!("bad return data from {to}: {e}")))
    }

    async fn exec<C: SolCall>(
        &self,
        signer: &PrivateKeySigner,
        to: Address,
        call: C,
    ) -> Result<TxOutcome, LedgerError> {
        self.ledger
            .send(
                signer,
                TxRequest {
                    to: Some(to),
                    data: call.abi_encode().into(),
                    value: U256::ZERO,
                },
            )
            .await
    }
}

fn sign(signer: &PrivateKeySigner, hash: B256) -> Result<Signature, LedgerError> {
    signer
        .sign_hash_sync(&hash)
        .map_err(|e| LedgerError::Invalid(format!("signing: {e}")))
}

fn sorted_signatures(mut signed: Vec<(Address, Signature)>) -> Vec<Bytes> {
    signed.sort_by_key(|(a, _)| *a);
    signed
        .into_iter()
        .map(|(_, s)| Bytes::from(s.as_bytes().to_vec()))
        .collect()
}
