//! `Settlement`: receipt batches from submission through attestation, challenge and payout.

use super::*;

impl Chain {
    /// Submits a batch, approving first what of its fees the node's payment vault does not
    /// hold (and the settlement contract may not move already); returns its id.
    pub async fn submit_batch(
        &self,
        node: &PrivateKeySigner,
        root: B256,
        count: u32,
        fees: U256,
    ) -> Result<(u64, TxOutcome), LedgerError> {
        if !fees.is_zero() {
            // Fees come from the vault first (only this node's own submissions take from it,
            // so it holds at least this much when the submission runs).
            let vault = self.vault_of(node.address()).await?;
            let owed = fees.saturating_sub(self.token_balance(vault).await?);
            if !owed.is_zero()
                && self
                    .token_allowance(node.address(), self.deployment.settlement)
                    .await?
                    < owed
            {
                self.approve(node, self.deployment.settlement, owed).await?;
            }
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
                ..Default::default()
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
                ..Default::default()
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

    /// Challenges a receipt (either kind) in a batch with its inclusion proof and a verifier
    /// quorum's verdict.
    pub async fn challenge(
        &self,
        challenger: &PrivateKeySigner,
        batch_id: u64,
        receipt: impl Into<Challenged>,
        proof: Vec<B256>,
        evidence_hash: B256,
        verdicts: Vec<(Address, Signature)>,
    ) -> Result<TxOutcome, LedgerError> {
        let id = U256::from(batch_id);
        let verdict_signatures = sorted_signatures(verdicts);
        let to = self.deployment.settlement;
        match receipt.into() {
            Challenged::Tensor(receipt) => {
                self.exec(
                    challenger,
                    to,
                    Settlement::challengeCall {
                        id,
                        receipt,
                        proof,
                        evidenceHash: evidence_hash,
                        verdictSignatures: verdict_signatures,
                    },
                )
                .await
            }
            Challenged::Llm(receipt) => {
                self.exec(
                    challenger,
                    to,
                    Settlement::challengeLlmCall {
                        id,
                        receipt,
                        proof,
                        evidenceHash: evidence_hash,
                        verdictSignatures: verdict_signatures,
                    },
                )
                .await
            }
        }
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
}

/// A receipt as `Settlement` takes it in a challenge: a tensor inference's or a language-model
/// call's.
#[derive(Clone, Debug)]
pub enum Challenged {
    /// `challenge(…, Receipt, …)`.
    Tensor(Settlement::Receipt),
    /// `challengeLlm(…, LlmReceipt, …)`.
    Llm(Settlement::LlmReceipt),
}

impl From<Settlement::Receipt> for Challenged {
    fn from(r: Settlement::Receipt) -> Self {
        Self::Tensor(r)
    }
}

impl From<Settlement::LlmReceipt> for Challenged {
    fn from(r: Settlement::LlmReceipt) -> Self {
        Self::Llm(r)
    }
}

impl From<&cairn_receipt::SignedReceipt> for Challenged {
    /// The signed receipt's message, field for field.
    fn from(r: &cairn_receipt::SignedReceipt) -> Self {
        match r.message() {
            cairn_receipt::Message::Tensor(m) => Settlement::Receipt {
                requestId: m.requestId,
                model: m.model,
                inputHash: m.inputHash,
                outputHash: m.outputHash,
                profileHash: m.profileHash,
                node: m.node,
                timestamp: m.timestamp,
                price: m.price,
                paymentRef: m.paymentRef,
            }
            .into(),
            cairn_receipt::Message::Llm(m) => Settlement::LlmReceipt {
                requestId: m.requestId,
                model: m.model,
                requestHash: m.requestHash,
                responseHash: m.responseHash,
                promptTokens: m.promptTokens,
                completionTokens: m.completionTokens,
                complete: m.complete,
                profileHash: m.profileHash,
                node: m.node,
                timestamp: m.timestamp,
                price: m.price,
                paymentRef: m.paymentRef,
            }
            .into(),
        }
    }
}
