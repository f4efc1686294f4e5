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
    /// A payer's cumulative promise to a payee in the escrow.
    struct Voucher {
        address payer;
        address payee;
        bytes32 salt;
        uint256 cumulativeAmount;
    }
}

/// Token amounts as decimal strings in JSON (alloy's default is hex).
fn decimal<S: serde::Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

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

    // ---- token ----

    /// Payment-token balance of `who`.
    pub async fn token_balance(&self, who: Address) -> Result<U256, LedgerError> {
        self.view(
            self.deployment.token,
            CairnToken::balanceOfCall { account: who },
        )
        .await
    }

    /// Mints devnet tokens (the signer needs the minter role).
    pub async fn mint(
        &self,
        minter: &PrivateKeySigner,
        to: Address,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            minter,
            self.deployment.token,
            CairnToken::mintCall { to, amount },
        )
        .await
    }

    /// Plain token transfer.
    pub async fn transfer(
        &self,
        from: &PrivateKeySigner,
        to: Address,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            from,
            self.deployment.token,
            CairnToken::transferCall { to, value: amount },
        )
        .await
    }

    /// Lets `spender` move up to `amount` of the owner's tokens.
    pub async fn approve(
        &self,
        owner: &PrivateKeySigner,
        spender: Address,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            owner,
            self.deployment.token,
            CairnToken::approveCall {
                spender,
                value: amount,
            },
        )
        .await
    }

    /// The payment token's EIP-712 domain, as it reports it (ERC-5267 `eip712Domain()`).
    pub async fn token_domain(&self) -> Result<Eip712Domain, LedgerError> {
        let d = self
            .view(self.deployment.token, CairnToken::eip712DomainCall {})
            .await?;
        Ok(Eip712Domain::new(
            Some(d.name.into()),
            Some(d.version.into()),
            Some(d.chainId),
            Some(d.verifyingContract),
            None,
        ))
    }

    /// An EIP-3009 `transferWithAuthorization` call signed by `from` (anyone may send it).
    pub async fn transfer_authorization(
        &self,
        from: &PrivateKeySigner,
        to: Address,
        value: U256,
        valid_before: u64,
        nonce: B256,
    ) -> Result<CairnToken::transferWithAuthorizationCall, LedgerError> {
        let msg = TransferWithAuthorization {
            from: from.address(),
            to,
            value,
            validAfter: U256::ZERO,
            validBefore: U256::from(valid_before),
            nonce,
        };
        let sig = sign(from, msg.eip712_signing_hash(&self.token_domain().await?))?;
        Ok(CairnToken::transferWithAuthorizationCall {
            from: msg.from,
            to,
            value,
            validAfter: msg.validAfter,
            validBefore: msg.validBefore,
            nonce,
            v: 27 + sig.v() as u8,
            r: sig.r().into(),
            s: sig.s().into(),
        })
    }

    /// Whether `authorizer` has used (or cancelled) EIP-3009 `nonce`.
    pub async fn authorization_used(
        &self,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool, LedgerError> {
        self.view(
            self.deployment.token,
            CairnToken::authorizationStateCall { authorizer, nonce },
        )
        .await
    }

    /// Sends a signed EIP-3009 transfer (any sender may; the payer pays no gas).
    pub async fn send_authorization(
        &self,
        sender: &PrivateKeySigner,
        call: CairnToken::transferWithAuthorizationCall,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(sender, self.deployment.token, call).await
    }

    /// The payment vault of inference node `node`: its x402 `payTo` and voucher payee, whose
    /// funds can only become that node's batch fees.
    pub async fn vault_of(&self, node: Address) -> Result<Address, LedgerError> {
        self.view(self.deployment.settlement, Settlement::vaultOfCall { node })
            .await
    }

    // ---- registry ----

    /// The registry's EIP-712 domain (registration approvals are signed under it).
    pub fn registry_domain(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some("CairnRegistry".into()),
            Some("1".into()),
            Some(U256::from(self.deployment.chain_id)),
            Some(self.deployment.registry),
            None,
        )
    }

    /// The digest a verifier signs to approve `r`.
    pub fn registration_hash(&self, r: &RegistrationRequest) -> B256 {
        r.typed().eip712_signing_hash(&self.registry_domain())
    }

    /// Signs an approval of `r` as `verifier`.
    pub fn sign_registration(
        &self,
        verifier: &PrivateKeySigner,
        r: &RegistrationRequest,
    ) -> Result<Signature, LedgerError> {
        sign(verifier, self.registration_hash(r))
    }

    /// Who signed an approval of `r`.
    pub fn registration_signer(
        &self,
        r: &RegistrationRequest,
        signature: &Signature,
    ) -> Result<Address, LedgerError> {
        cairn_core::sig::recover_prehash(signature, &self.registration_hash(r))
            .map_err(|e| LedgerError::Invalid(format!("registration signature: {e}")))
    }

    /// Approves the stake and registers `signer` as `r` describes, with the verifiers' approvals
    /// (sorted by signer as the contract requires; none while the registration quorum is 0).
    pub async fn register(
        &self,
        signer: &PrivateKeySigner,
        r: &RegistrationRequest,
        stake: U256,
        approvals: Vec<(Address, Signature)>,
    ) -> Result<TxOutcome, LedgerError> {
        self.approve(signer, self.deployment.registry, stake)
            .await?;
        self.exec(
            signer,
            self.deployment.registry,
            NodeRegistry::registerCall {
                role: r.role.code(),
                endpoint: r.endpoint.clone(),
                stake,
                attestationDigest: r.evidence_digest,
                measurement: r.measurement,
                deadline: r.deadline,
                verifierSignatures: sorted_signatures(approvals),
            },
        )
        .await
    }

    /// Replaces the signer's evidence with `r`'s (same role and endpoint), approved by verifiers.
    pub async fn set_attestation(
        &self,
        signer: &PrivateKeySigner,
        r: &RegistrationRequest,
        approvals: Vec<(Address, Signature)>,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            signer,
            self.deployment.registry,
            NodeRegistry::setAttestationCall {
                digest: r.evidence_digest,
                measurement: r.measurement,
                deadline: r.deadline,
                verifierSignatures: sorted_signatures(approvals),
            },
        )
        .await
    }

    /// Governance: approves or revokes `measurement` for `role`.
    pub async fn set_measurement(
        &self,
        governor: &PrivateKeySigner,
        role: Role,
        measurement: B256,
        approved: bool,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            governor,
            self.deployment.registry,
            NodeRegistry::setMeasurementCall {
                role: role.code(),
                measurement,
                approved,
            },
        )
        .await
    }

    /// Whether governance approves `measurement` for `role`.
    pub async fn measurement_approved(
        &self,
        role: Role,
        measurement: B256,
    ) -> Result<bool, LedgerError> {
        self.view(
            self.deployment.registry,
            NodeRegistry::approvedMeasurementCall {
                role: role.code(),
                measurement,
            },
        )
        .await
    }

    /// Governance: the number of verifier approvals a registration needs.
    pub async fn set_registration_quorum(
        &self,
        governor: &PrivateKeySigner,
        quorum: u16,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            governor,
            self.deployment.registry,
            NodeRegistry::setRegistrationQuorumCall { quorum },
        )
        .await
    }

    /// The number of verifier approvals a registration needs.
    pub async fn registration_quorum(&self) -> Result<u16, LedgerError> {
        self.view(
            self.deployment.registry,
            NodeRegistry::registrationQuorumCall {},
        )
        .await
    }

    /// Governance: enables or disables a registered node.
    pub async fn set_enabled(
        &self,
        governor: &PrivateKeySigner,
        node: Address,
        enabled: bool,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            governor,
            self.deployment.registry,
            NodeRegistry::setEnabledCall { node, enabled },
        )
        .await
    }

    /// Moves the signer's node to `r.endpoint` with `r`'s evidence, approved by verifiers.
    pub async fn set_endpoint(
        &self,
        signer: &PrivateKeySigner,
        r: &RegistrationRequest,
        approvals: Vec<(Address, Signature)>,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            signer,
            self.deployment.registry,
            NodeRegistry::setEndpointCall {
                endpoint: r.endpoint.clone(),
                attestationDigest: r.evidence_digest,
                measurement: r.measurement,
                deadline: r.deadline,
                verifierSignatures: sorted_signatures(approvals),
            },
        )
        .await
    }

    /// Governance: moves `node` to `endpoint` without verifier approvals.
    pub async fn set_endpoint_for(
        &self,
        governor: &PrivateKeySigner,
        node: Address,
        endpoint: &str,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            governor,
            self.deployment.registry,
            NodeRegistry::setEndpointForCall {
                node,
                endpoint: endpoint.into(),
            },
        )
        .await
    }

    /// Governance: approves or withdraws an execution profile (by hash) the network re-executes.
    pub async fn set_profile(
        &self,
        governor: &PrivateKeySigner,
        profile_hash: B256,
        approved: bool,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            governor,
            self.deployment.registry,
            NodeRegistry::setProfileCall {
                profileHash: profile_hash,
                approved,
            },
        )
        .await
    }

    /// Whether governance approves execution profile `profile_hash`.
    pub async fn profile_approved(&self, profile_hash: B256) -> Result<bool, LedgerError> {
        self.view(
            self.deployment.registry,
            NodeRegistry::approvedProfileCall {
                profileHash: profile_hash,
            },
        )
        .await
    }

    /// A verifier declares the execution profile it re-executes on.
    pub async fn declare_profile(
        &self,
        verifier: &PrivateKeySigner,
        profile_hash: B256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            verifier,
            self.deployment.registry,
            NodeRegistry::declareProfileCall {
                profileHash: profile_hash,
            },
        )
        .await
    }

    /// The profile verifier `who` declared (zero: none).
    pub async fn verifier_profile(&self, who: Address) -> Result<B256, LedgerError> {
        self.view(
            self.deployment.registry,
            NodeRegistry::verifierProfileCall { verifier: who },
        )
        .await
    }

    /// How many active verifiers declared `profile_hash`.
    pub async fn profile_verifiers(&self, profile_hash: B256) -> Result<u64, LedgerError> {
        let total: U256 = self
            .view(self.deployment.registry, NodeRegistry::nodeCountCall {})
            .await?;
        let n: U256 = self
            .view(
                self.deployment.registry,
                NodeRegistry::profileVerifiersCall {
                    profileHash: profile_hash,
                    offset: U256::ZERO,
                    limit: total,
                },
            )
            .await?;
        Ok(n.saturating_to())
    }

    /// Batches of `node` still open (locking its stake).
    pub async fn open_batches(&self, node: Address) -> Result<u64, LedgerError> {
        let n: U256 = self
            .view(
                self.deployment.registry,
                NodeRegistry::openBatchesCall { node },
            )
            .await?;
        Ok(n.saturating_to())
    }

    /// Seconds after its last heartbeat a node stops being active (0: never).
    pub async fn heartbeat_timeout(&self) -> Result<u64, LedgerError> {
        self.view(
            self.deployment.registry,
            NodeRegistry::heartbeatTimeoutCall {},
        )
        .await
    }

    /// Records that the signer's node is alive.
    pub async fn heartbeat(&self, signer: &PrivateKeySigner) -> Result<TxOutcome, LedgerError> {
        self.exec(
            signer,
            self.deployment.registry,
            NodeRegistry::heartbeatCall {},
        )
        .await
    }

    /// A registration as the registry holds it, with whether it is active.
    pub async fn node(&self, who: Address) -> Result<NodeInfo, LedgerError> {
        let n = self
            .view(
                self.deployment.registry,
                NodeRegistry::getNodeCall { node: who },
            )
            .await?;
        let role = Role::from_code(n.role);
        let (active, measurement_approved) = match role {
            Some(r) => (
                self.view(
                    self.deployment.registry,
                    NodeRegistry::isActiveCall {
                        node: who,
                        role: r.code(),
                    },
                )
                .await?,
                self.measurement_approved(r, n.measurement).await?,
            ),
            None => (false, false),
        };
        Ok(NodeInfo {
            address: who,
            role,
            enabled: n.enabled,
            endpoint: n.endpoint,
            stake: n.stake,
            unbonding: n.unbonding,
            last_heartbeat: n.lastHeartbeat,
            measurement: n.measurement,
            evidence_digest: n.attestationDigest,
            measurement_approved,
            active,
        })
    }

    /// Active nodes of `role` (all registrations scanned in pages).
    pub async fn active_nodes(&self, role: Role) -> Result<Vec<Address>, LedgerError> {
        let total: U256 = self
            .view(self.deployment.registry, NodeRegistry::nodeCountCall {})
            .await?;
        let total = total.saturating_to::<u64>();
        let mut out = Vec::new();
        let page = 200u64;
        let mut offset = 0;
        while offset < total {
            let found = self
                .view(
                    self.deployment.registry,
                    NodeRegistry::activeNodesCall {
                        role: role.code(),
                        offset: U256::from(offset),
                        limit: U256::from(page),
                    },
                )
                .await?;
            out.extend(found);
            offset += page;
        }
        Ok(out)
    }

    // ---- settlement ----

    /// Approves the fees and submits a batch; returns its id.
    pub async fn submit_batch(
        &self,
        node: &PrivateKeySigner,
        root: B256,
        count: u32,
        fees: U256,
    ) -> Result<(u64, TxOutcome), LedgerError> {
        if !fees.is_zero() {
            self.approve(node, self.deployment.settlement, fees).await?;
        }
        let out = self
            .exec(
                node,
                self.deployment.settlement,
                Settlement::submitBatchCall { root, count, fees },
            )
            .await?;
        let id = out
            .logs
            .iter()
            .find_map(|l| Settlement::BatchSubmitted::decode_log(l).ok())
            .map(|e| e.id.saturating_to::<u64>())
            .ok_or_else(|| LedgerError::Invalid("submitBatch emitted no BatchSubmitted".into()))?;
        Ok((id, out))
    }

    /// Every node ever registered (its `NodeRegistered` events), in registration order.
    pub async fn registered_nodes(&self) -> Result<Vec<Address>, LedgerError> {
        let logs = self
            .ledger
            .logs(crate::LogFilter {
                address: Some(self.deployment.registry),
                topic0: Some(NodeRegistry::NodeRegistered::SIGNATURE_HASH),
                from_block: self.deployment.block,
            })
            .await?;
        Ok(logs
            .iter()
            .filter_map(|l| NodeRegistry::NodeRegistered::decode_log(&l.log).ok())
            .map(|e| e.node)
            .collect())
    }

    /// Every `BatchSubmitted` from block `from_block` on (at the earliest the deployment's):
    /// (batch id, node, root, transaction).
    pub async fn submitted_batches(
        &self,
        from_block: u64,
    ) -> Result<Vec<(u64, Address, B256, B256)>, LedgerError> {
        let logs = self
            .ledger
            .logs(crate::LogFilter {
                address: Some(self.deployment.settlement),
                topic0: Some(Settlement::BatchSubmitted::SIGNATURE_HASH),
                from_block: from_block.max(self.deployment.block),
            })
            .await?;
        Ok(logs
            .iter()
            .filter_map(|l| {
                let e = Settlement::BatchSubmitted::decode_log(&l.log).ok()?;
                Some((e.id.saturating_to(), e.node, e.root, l.tx))
            })
            .collect())
    }

    /// The attestation a verifier signs for a batch (computed locally from the batch fields).
    pub fn attestation(&self, batch: &BatchInfo) -> BatchAttestation {
        BatchAttestation {
            batchId: U256::from(batch.id),
            root: batch.root,
            count: batch.count,
            fees: batch.fees,
        }
    }

    /// Signs a batch attestation as `verifier`.
    pub fn sign_attestation(
        &self,
        verifier: &PrivateKeySigner,
        batch: &BatchInfo,
    ) -> Result<Signature, LedgerError> {
        sign(
            verifier,
            self.attestation(batch)
                .eip712_signing_hash(&self.settlement_domain()),
        )
    }

    /// Signs a fraud verdict as `verifier`.
    pub fn sign_verdict(
        &self,
        verifier: &PrivateKeySigner,
        batch_id: u64,
        receipt_hash: B256,
        evidence_hash: B256,
    ) -> Result<Signature, LedgerError> {
        let verdict = FraudVerdict {
            batchId: U256::from(batch_id),
            receiptHash: receipt_hash,
            evidenceHash: evidence_hash,
        };
        sign(
            verifier,
            verdict.eip712_signing_hash(&self.settlement_domain()),
        )
    }

    /// Submits attestations; `signed` pairs are sorted by signer as the contract requires.
    pub async fn attest_batch(
        &self,
        sender: &PrivateKeySigner,
        batch_id: u64,
        signed: Vec<(Address, Signature)>,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.settlement,
            Settlement::attestBatchCall {
                id: U256::from(batch_id),
                signatures: sorted_signatures(signed),
            },
        )
        .await
    }

    /// Pays out an attested batch whose challenge window has passed.
    pub async fn finalize(
        &self,
        sender: &PrivateKeySigner,
        batch_id: u64,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.settlement,
            Settlement::finalizeCall {
                id: U256::from(batch_id),
            },
        )
        .await
    }

    /// Expires a batch no quorum attested in time: its fees go back to the node's vault.
    pub async fn expire(
        &self,
        sender: &PrivateKeySigner,
        batch_id: u64,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.settlement,
            Settlement::expireCall {
                id: U256::from(batch_id),
            },
        )
        .await
    }

    /// Closes an expired batch past its challenge window (unlocks the node's stake).
    pub async fn lapse(
        &self,
        sender: &PrivateKeySigner,
        batch_id: u64,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.settlement,
            Settlement::lapseCall {
                id: U256::from(batch_id),
            },
        )
        .await
    }

    /// Seconds after submission within which a batch must be attested.
    pub async fn attestation_timeout(&self) -> Result<u64, LedgerError> {
        self.view(
            self.deployment.settlement,
            Settlement::attestationTimeoutCall {},
        )
        .await
    }

    /// Challenges a receipt in a batch with its inclusion proof and a verifier quorum's verdict.
    pub async fn challenge(
        &self,
        challenger: &PrivateKeySigner,
        batch_id: u64,
        receipt: Settlement::Receipt,
        proof: Vec<B256>,
        evidence_hash: B256,
        verdicts: Vec<(Address, Signature)>,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            challenger,
            self.deployment.settlement,
            Settlement::challengeCall {
                id: U256::from(batch_id),
                receipt,
                proof,
                evidenceHash: evidence_hash,
                verdictSignatures: sorted_signatures(verdicts),
            },
        )
        .await
    }

    /// A batch as the settlement contract holds it.
    pub async fn batch(&self, id: u64) -> Result<BatchInfo, LedgerError> {
        let b = self
            .view(
                self.deployment.settlement,
                Settlement::getBatchCall { id: U256::from(id) },
            )
            .await?;
        Ok(BatchInfo {
            id,
            node: b.node,
            root: b.root,
            count: b.count,
            fees: b.fees,
            submitted_at: b.submittedAt,
            attested_at: b.attestedAt,
            status: match b.status {
                1 => BatchStatus::Submitted,
                2 => BatchStatus::Attested,
                3 => BatchStatus::Finalized,
                4 => BatchStatus::Voided,
                5 => BatchStatus::Expired,
                6 => BatchStatus::Lapsed,
                _ => BatchStatus::Unknown,
            },
            verifiers: b.verifiers,
        })
    }

    /// Number of batches ever submitted (ids are 1..=count).
    pub async fn batch_count(&self) -> Result<u64, LedgerError> {
        let n: U256 = self
            .view(self.deployment.settlement, Settlement::batchCountCall {})
            .await?;
        Ok(n.saturating_to())
    }

    /// Asks the contract whether `receipt_hash` is in batch `id` under `proof`.
    pub async fn verify_inclusion(
        &self,
        id: u64,
        receipt_hash: B256,
        proof: Vec<B256>,
    ) -> Result<bool, LedgerError> {
        self.view(
            self.deployment.settlement,
            Settlement::verifyInclusionCall {
                id: U256::from(id),
                receiptDigest: receipt_hash,
                proof,
            },
        )
        .await
    }

    /// Verifier signatures a batch needs.
    pub async fn quorum(&self) -> Result<u16, LedgerError> {
        self.view(
            self.deployment.settlement,
            Settlement::verifierQuorumCall {},
        )
        .await
    }

    /// Whether `who` is an active node of `role`.
    pub async fn is_active(&self, who: Address, role: Role) -> Result<bool, LedgerError> {
        self.view(
            self.deployment.registry,
            NodeRegistry::isActiveCall {
                node: who,
                role: role.code(),
            },
        )
        .await
    }

    /// Recovers who signed `signature` over batch `batch`'s attestation.
    pub fn attestation_signer(
        &self,
        batch: &BatchInfo,
        signature: &Signature,
    ) -> Result<Address, LedgerError> {
        let hash = self
            .attestation(batch)
            .eip712_signing_hash(&self.settlement_domain());
        cairn_core::sig::recover_prehash(signature, &hash)
            .map_err(|e| LedgerError::Invalid(format!("attestation or verdict signature: {e}")))
    }

    /// Who signed a fraud verdict on receipt `receipt_hash` of batch `batch_id`.
    pub fn verdict_signer(
        &self,
        batch_id: u64,
        receipt_hash: B256,
        evidence_hash: B256,
        signature: &Signature,
    ) -> Result<Address, LedgerError> {
        let hash = FraudVerdict {
            batchId: U256::from(batch_id),
            receiptHash: receipt_hash,
            evidenceHash: evidence_hash,
        }
        .eip712_signing_hash(&self.settlement_domain());
        cairn_core::sig::recover_prehash(signature, &hash)
            .map_err(|e| LedgerError::Invalid(format!("attestation or verdict signature: {e}")))
    }

    /// Seconds a batch can be challenged after attestation.
    pub async fn challenge_window(&self) -> Result<u64, LedgerError> {
        self.view(
            self.deployment.settlement,
            Settlement::challengeWindowCall {},
        )
        .await
    }

    // ---- escrow ----

    /// Approves and deposits into the (payer, payee, salt) channel.
    pub async fn deposit(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
        amount: U256,
    ) -> Result<TxOutcome, LedgerError> {
        self.approve(payer, self.deployment.escrow, amount).await?;
        self.exec(
            payer,
            self.deployment.escrow,
            Escrow::depositCall {
                payee,
                salt,
                amount,
            },
        )
        .await
    }

    /// The EIP-3009 nonce a payer signs to deposit into channel (payer, payee, salt) with
    /// `entropy`: it binds the channel, so the deposit cannot be redirected.
    pub fn deposit_nonce(payer: Address, payee: Address, salt: B256, entropy: B256) -> B256 {
        alloy_primitives::keccak256(alloy_sol_types::SolValue::abi_encode(&(
            Self::channel_id(payer, payee, salt),
            entropy,
        )))
    }

    /// Deposits into the (payer, payee, salt) channel with the payer's EIP-3009
    /// `ReceiveWithAuthorization` to the escrow, whose nonce is [`Chain::deposit_nonce`] of
    /// `entropy`: anyone may send it, the payer pays no gas.
    #[allow(clippy::too_many_arguments)]
    pub async fn deposit_with_authorization(
        &self,
        sender: &PrivateKeySigner,
        payer: Address,
        payee: Address,
        salt: B256,
        amount: U256,
        valid_before: U256,
        entropy: B256,
        signature: &Signature,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.escrow,
            Escrow::depositWithAuthorizationCall {
                payer,
                payee,
                salt,
                amount,
                validAfter: U256::ZERO,
                validBefore: valid_before,
                entropy,
                v: 27 + signature.v() as u8,
                r: signature.r().into(),
                s: signature.s().into(),
            },
        )
        .await
    }

    /// Signs a cumulative voucher as `payer` (no transaction).
    pub fn sign_voucher(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
        cumulative: U256,
    ) -> Result<Signature, LedgerError> {
        let voucher = Voucher {
            payer: payer.address(),
            payee,
            salt,
            cumulativeAmount: cumulative,
        };
        sign(payer, voucher.eip712_signing_hash(&self.escrow_domain()))
    }

    /// Redeems a cumulative voucher; pays the payee what it adds.
    pub async fn redeem(
        &self,
        sender: &PrivateKeySigner,
        payer: Address,
        payee: Address,
        salt: B256,
        cumulative: U256,
        signature: &Signature,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            sender,
            self.deployment.escrow,
            Escrow::redeemCall {
                payer,
                payee,
                salt,
                cumulativeAmount: cumulative,
                signature: Bytes::from(signature.as_bytes().to_vec()),
            },
        )
        .await
    }

    /// Starts the payer's refund delay for a channel.
    pub async fn request_withdrawal(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            payer,
            self.deployment.escrow,
            Escrow::requestWithdrawalCall { payee, salt },
        )
        .await
    }

    /// Refunds the channel's unredeemed rest to the payer after the delay.
    pub async fn withdraw(
        &self,
        payer: &PrivateKeySigner,
        payee: Address,
        salt: B256,
    ) -> Result<TxOutcome, LedgerError> {
        self.exec(
            payer,
            self.deployment.escrow,
            Escrow::withdrawCall { payee, salt },
        )
        .await
    }

    /// (deposited, claimed) of a channel.
    pub async fn channel(
        &self,
        payer: Address,
        payee: Address,
        salt: B256,
    ) -> Result<(U256, U256), LedgerError> {
        let c = self.channel_state(payer, payee, salt).await?;
        Ok((c.deposited, c.claimed))
    }

    /// A channel's full state (deposited, claimed, refund time; zero when none was asked).
    pub async fn channel_state(
        &self,
        payer: Address,
        payee: Address,
        salt: B256,
    ) -> Result<ChannelState, LedgerError> {
        let c = self
            .view(
                self.deployment.escrow,
                Escrow::getChannelCall { payer, payee, salt },
            )
            .await?;
        Ok(ChannelState {
            deposited: c.deposited,
            claimed: c.claimed,
            withdrawable_at: c.withdrawableAt,
        })
    }

    /// The escrow's id of the (payer, payee, salt) channel.
    pub fn channel_id(payer: Address, payee: Address, salt: B256) -> B256 {
        alloy_primitives::keccak256(alloy_sol_types::SolValue::abi_encode(&(payer, payee, salt)))
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
