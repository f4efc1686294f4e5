//! `NodeRegistry`: registrations approved by verifiers, measurements, profiles, endpoints,
//! heartbeats and who is active.

use super::*;

impl Chain {
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

    /// Whether verifier `who` declared it re-executes `profile_hash`.
    pub async fn verifies_profile(
        &self,
        who: Address,
        profile_hash: B256,
    ) -> Result<bool, LedgerError> {
        self.view(
            self.deployment.registry,
            NodeRegistry::verifiesProfileCall {
                verifier: who,
                profileHash: profile_hash,
            },
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
}
