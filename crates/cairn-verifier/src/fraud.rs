//! Fraud: proving a fault found in a sample with a quorum of peers, and confirming a peer's.

use super::*;

impl Verifier {
    pub(crate) async fn prove_fraud(
        &self,
        batch: &BatchInfo,
        tree: &ReceiptTree,
        f: Finding,
        mut verdict: BatchVerdict,
    ) -> Result<(), VerifyError> {
        let c = &self.0;
        let id = batch.id;
        let unavailable = |reason: String| VerifyError::Unavailable { batch: id, reason };
        let rh = f.receipt.signing_hash();
        let proof = tree
            .proof(rh)
            .ok_or_else(|| unavailable("the receipt is not in its own tree".into()))?;
        let mine = c
            .chain
            .sign_verdict(&c.key, id, rh, f.evidence)
            .map_err(|e| unavailable(e.to_string()))?;
        let claim = f.outcome.claim();
        let fraud = FraudRecord {
            batch_id: id,
            request_id: f.receipt.id(),
            receipt_hash: rh,
            evidence_hash: f.evidence,
            claim: claim.into(),
            claimed: None,
            finding: f.outcome.clone(),
            signature: mine.to_string(),
            origin: "own sample".into(),
        };
        c.store.put_fraud(&fraud)?;
        verdict.outcome = Some(VerdictOutcome::Fraud);
        verdict.fraud = Some(fraud);

        // Ask the other active verifiers to check the same receipt themselves.
        let quorum = c
            .chain
            .quorum()
            .await
            .map_err(|e| unavailable(e.to_string()))? as usize;
        let mut signed: Vec<(Address, Signature)> = vec![(self.address(), mine)];
        let peers = c
            .chain
            .active_nodes(Role::Verifier)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let request = ChallengeRequest {
            batch_id: id,
            receipt: (&f.receipt).into(),
            proof: proof.clone(),
            claim: claim.into(),
            payload_keys: self.shared_keys(rh),
        };
        let answers = self
            .gather_confirmations(peers, &request, f.evidence, rh, quorum, &mut signed)
            .await;
        verdict.peers = Some(answers);
        if signed.len() < quorum {
            c.store.put_batch(&verdict)?;
            return Err(unavailable(format!(
                "fraud on receipt {} confirmed by {} of the {quorum} verifiers needed; asking again",
                f.receipt.id(),
                signed.len()
            )));
        }
        self.submit_challenge(&f, proof, signed, verdict).await
    }

    /// Puts a quorum-signed fraud verdict on chain and records how it went: landed, or
    /// already voided by another verifier's identical challenge, or failed (asked again).
    async fn submit_challenge(
        &self,
        f: &Finding,
        proof: Vec<B256>,
        signed: Vec<(Address, Signature)>,
        mut verdict: BatchVerdict,
    ) -> Result<(), VerifyError> {
        let c = &self.0;
        let id = verdict.batch_id;
        let unavailable = |reason: String| VerifyError::Unavailable { batch: id, reason };
        let signers: Vec<String> = signed.iter().map(|(a, _)| a.to_checksum(None)).collect();
        match c
            .chain
            .challenge(&c.key, id, &f.receipt, proof, f.evidence, signed)
            .await
        {
            Ok(tx) => {
                verdict.outcome = Some(VerdictOutcome::Challenged);
                verdict.challenge = Some(ChallengeRecord {
                    tx: Some(tx.hash),
                    signers,
                    evidence_hash: Some(f.evidence),
                    error: None,
                    voided: None,
                });
                c.store.put_batch(&verdict)?;
                tracing::warn!(verifier = %self.address(), batch = id, receipt = %f.receipt.id(), "fraud proven on chain");
                Ok(())
            }
            Err(e) => {
                // Another verifier may have landed the same challenge first.
                let voided = matches!(
                    c.chain.batch(id).await.map(|b| b.status),
                    Ok(BatchStatus::Voided)
                );
                verdict.challenge = Some(ChallengeRecord {
                    tx: None,
                    signers,
                    evidence_hash: None,
                    error: Some(e.to_string()),
                    voided: Some(voided),
                });
                if voided {
                    verdict.outcome = Some(VerdictOutcome::Challenged);
                    c.store.put_batch(&verdict)?;
                    Ok(())
                } else {
                    verdict.outcome = Some(VerdictOutcome::Fraud);
                    c.store.put_batch(&verdict)?;
                    Err(unavailable(format!("submitting the challenge: {e}")))
                }
            }
        }
    }

    /// Asks the other active verifiers, one by one until `signed` holds a quorum, to check the
    /// receipt of `request` themselves; each valid signature over the same evidence joins
    /// `signed`. Returns every peer's answer.
    async fn gather_confirmations(
        &self,
        peers: Vec<Address>,
        request: &ChallengeRequest,
        evidence: B256,
        rh: B256,
        quorum: usize,
        signed: &mut Vec<(Address, Signature)>,
    ) -> Vec<PeerAnswer> {
        let c = &self.0;
        let id = request.batch_id;
        let mut answers = Vec::new();
        for peer in peers.into_iter().filter(|p| *p != self.address()) {
            if signed.len() >= quorum {
                break;
            }
            let endpoint = match c.chain.node(peer).await {
                Ok(n) => n.endpoint,
                Err(e) => {
                    answers.push(PeerAnswer {
                        verifier: peer,
                        agreed: None,
                        error: Some(e.to_string()),
                    });
                    continue;
                }
            };
            match self.ask_peer(&endpoint, request).await {
                Ok((addr, sig, answered))
                    if addr == peer
                        && answered == evidence
                        && c.chain.verdict_signer(id, rh, answered, &sig).ok() == Some(peer) =>
                {
                    answers.push(PeerAnswer {
                        verifier: peer,
                        agreed: Some(true),
                        error: None,
                    });
                    signed.push((peer, sig));
                }
                Ok((_, _, answered)) => answers.push(PeerAnswer {
                    verifier: peer,
                    agreed: Some(false),
                    error: Some(format!(
                        "answered with evidence {answered} or a signature not its own"
                    )),
                }),
                Err(e) => answers.push(PeerAnswer {
                    verifier: peer,
                    agreed: None,
                    error: Some(e),
                }),
            }
        }
        answers
    }

    pub(crate) async fn ask_peer(
        &self,
        endpoint: &str,
        request: &ChallengeRequest,
    ) -> Result<(Address, Signature, B256), String> {
        let url = VerifierUrls::new(endpoint).challenges();
        let body = serde_json::to_vec(request).expect("serializes");
        let (status, answer) = self.0.fetch.signed_post(&self.0.key, &url, body).await?;
        if !status.is_success() {
            let e = ErrorBody::parse(&answer).unwrap_or_else(|| ErrorBody::new("?", ""));
            return Err(format!("{status} {}: {}", e.code, e.message));
        }
        let a: ChallengeAnswer = serde_json::from_slice(&answer).map_err(|e| {
            format!(
                "{url} answered {}: {e}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            )
        })?;
        let signature = a
            .signature
            .parse()
            .map_err(|e| format!("{url} answered a signature that does not parse: {e}"))?;
        Ok((a.verifier, signature, a.evidence_hash))
    }

    /// A peer's request: re-check receipt `receipt` of batch `batch_id` (included under `proof`)
    /// and, when this verifier finds the same kind of fault itself, sign the fraud verdict.
    pub async fn confirm_fraud(
        &self,
        batch_id: u64,
        receipt: &cairn_receipt::ReceiptJson,
        proof: Vec<B256>,
        claim: &str,
        payload_keys: &[cairn_verifier_api::SharedPayloadKey],
    ) -> Result<ChallengeAnswer, VerifyError> {
        let c = &self.0;
        let bad = |code: &'static str, reason: String| VerifyError::BadRequest { code, reason };
        let unavailable = |reason: String| VerifyError::Unavailable {
            batch: batch_id,
            reason,
        };
        // Its content, not its seal: the batch's node committed the leaf on chain, and a node
        // that spoils the seals it lists must not escape a proof (see `check_listing`).
        let r = receipt
            .read()
            .map_err(|e| {
                bad(
                    "invalid_receipt",
                    format!("the receipt does not parse: {e}"),
                )
            })?
            .receipt;
        let rh = r.signing_hash();
        let batch = self.challengeable(batch_id, &r, proof).await?;
        // One re-execution per receipt however often a peer asks (`sample` remembers it); a
        // withholding series goes on at its own pace (one attempt per interval).
        let node = c
            .chain
            .node(batch.node)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        // Keys that do not parse are ignored: a peer's bad key never counts against the node.
        let shared: Vec<(bool, cairn_ohttp::sealed::DataKey)> = payload_keys
            .iter()
            .filter_map(|k| {
                let key = data_encoding::HEXLOWER_PERMISSIVE
                    .decode(k.key.as_bytes())
                    .ok()?
                    .try_into()
                    .ok()?;
                Some((k.payload == "output", key))
            })
            .take(2)
            .collect();
        let outcome = match self
            .sample(node.endpoint.trim_end_matches('/'), &r, &shared)
            .await?
        {
            Sampled::Pending(why) => {
                return Err(bad(
                    "too_early",
                    format!(
                        "{why}; this verifier establishes withholding itself over its own window: ask again later"
                    ),
                ));
            }
            Sampled::Done(o, _) => o,
        };
        let Some(evidence) = outcome.evidence_hash(rh) else {
            return Err(bad(
                "claim_refuted",
                format!(
                    "re-checked receipt {} myself: {}",
                    r.id(),
                    serde_json::to_string(&outcome).unwrap_or_default()
                ),
            ));
        };
        let signature = c
            .chain
            .sign_verdict(&c.key, batch_id, rh, evidence)
            .map_err(|e| unavailable(e.to_string()))?;
        let fraud = FraudRecord {
            batch_id,
            request_id: r.id(),
            receipt_hash: rh,
            evidence_hash: evidence,
            claim: outcome.claim().into(),
            claimed: Some(claim.into()),
            finding: outcome.clone(),
            signature: signature.to_string(),
            origin: "peer request".into(),
        };
        c.store.put_fraud(&fraud)?;
        Ok(ChallengeAnswer {
            verifier: self.address(),
            signature: signature.to_string(),
            evidence_hash: evidence,
            finding: outcome,
        })
    }

    /// The batch `batch_id` when a challenge against receipt `r` (under `proof`) can still
    /// land: open, signed by its node, and included in its root.
    async fn challengeable(
        &self,
        batch_id: u64,
        r: &SignedReceipt,
        proof: Vec<B256>,
    ) -> Result<BatchInfo, VerifyError> {
        let c = &self.0;
        let bad = |code: &'static str, reason: String| VerifyError::BadRequest { code, reason };
        let unavailable = |reason: String| VerifyError::Unavailable {
            batch: batch_id,
            reason,
        };
        let rh = r.signing_hash();
        let batch = c
            .chain
            .batch(batch_id)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !matches!(
            batch.status,
            BatchStatus::Submitted | BatchStatus::Attested | BatchStatus::Expired
        ) {
            return Err(bad(
                "batch_closed",
                format!(
                    "batch {batch_id} is {:?}: nothing to challenge",
                    batch.status
                ),
            ));
        }
        if r.signer != batch.node {
            return Err(bad(
                "wrong_node",
                "the receipt is not signed by the batch's node".into(),
            ));
        }
        let included = c
            .chain
            .verify_inclusion(batch_id, rh, proof)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !included {
            return Err(bad(
                "not_in_batch",
                "the proof does not put the receipt in the batch's root".into(),
            ));
        }
        Ok(batch)
    }
}

impl Verifier {
    /// The data keys of receipt `rh`'s sealed payloads this verifier opened, for a challenge.
    pub(crate) fn shared_keys(&self, rh: B256) -> Vec<cairn_verifier_api::SharedPayloadKey> {
        let keys = self.0.data_keys.lock().expect("data keys");
        keys.get(&rh)
            .into_iter()
            .flatten()
            .map(|(output, key)| cairn_verifier_api::SharedPayloadKey {
                payload: if *output { "output" } else { "input" }.into(),
                key: data_encoding::HEXLOWER.encode(key),
            })
            .collect()
    }
}
