//! Checking a batch: the static checks every receipt must pass, the sample re-executed, and
//! the verdict (attest, refuse, abstain, or on to a fraud proof).

use super::*;
use cairn_core::BlobId;

/// What re-executing a batch's sample found.
pub(crate) struct SampleRun {
    /// Every sample re-executed.
    samples: Vec<SampleRecord>,
    /// The first fault, if any.
    finding: Option<Finding>,
    /// Why a sample is still waiting for its payloads, if one is.
    pending: Option<String>,
    /// Why a sample could not be checked here, if one could not.
    abstain: Option<String>,
}

/// A batch's listing that holds up ([`check_listing`]).
#[derive(Debug)]
pub struct CheckedBatch {
    /// The receipts' EIP-712 digests, in the listing's order.
    pub digests: Vec<B256>,
    /// The settlement tree they rebuild (its root is the batch's).
    pub tree: ReceiptTree,
    /// The receipts the verifier's secret sample picks, with their place in the listing:
    /// re-executed. Only these are kept; every other receipt is dropped once hashed, so a
    /// batch of 65,536 costs its digests and tree in memory, not its receipts.
    pub sampled: Vec<(usize, SignedReceipt)>,
    /// The models the receipts name, each once.
    pub models: BTreeSet<BlobId>,
    /// The execution profiles the receipts name, each once.
    pub profiles: HashSet<cairn_core::ExecutionProfile>,
}

/// What a dropped receipt's profile is swapped for (no allocation).
const NO_PROFILE: cairn_core::ExecutionProfile = cairn_core::ExecutionProfile {
    engine: String::new(),
    engine_version: String::new(),
    isa: String::new(),
    threads: 0,
};

/// The static checks of a batch (see the crate docs) given its node's listing, binary
/// ([`cairn_receipt::compact`], what verifiers ask for) or the JSON `BatchView`: as many
/// receipts as the batch claims, each parsed strictly and naming the batch's node under
/// `domain`, together rebuilding the committed root with the escrowed fees; and which of them
/// `sampler` picks for re-execution.
///
/// No seal (a receipt's signature, or its micro-batch proof and root signature) is checked:
/// `submitBatch`, sent by the node's own key, commits it to every leaf, and each leaf's
/// message names the node (what `Settlement.challenge` compares), so a seal protects only the
/// client it was handed to, who checked it then. Refusing a batch over a bad seal would even
/// hand a lying node a way out: spoil the seal of the receipt it lied on, and verifiers that
/// sample it refuse the batch instead of proving the lie. Recovering seals was also ~90% of a
/// verifier's work. `Err`: why the batch is refused.
pub fn check_listing(
    batch: &BatchInfo,
    listing: &[u8],
    domain: &cairn_receipt::ReceiptDomain,
    sampler: &Sampler,
) -> Result<CheckedBatch, String> {
    let listed_vs_count = |listed: usize| {
        (listed != batch.count as usize)
            .then(|| format!("{listed} receipts listed, the batch claims {}", batch.count))
    };
    let does_not_parse =
        |i: usize, e: cairn_receipt::ReceiptError| format!("receipt {i} does not parse: {e}");
    let draw = sampler.batch(batch.root);
    // A listing of another size than the batch is refused before anything is hashed or
    // reserved (and `handle` refused a batch over `MAX_BATCH_RECEIPTS` before fetching it).
    enum Listed<'a> {
        Binary(Vec<&'a [u8]>),
        Json(Vec<cairn_receipt::ReceiptJson>),
    }
    let listed = if listing.starts_with(b"CRNL") {
        Listed::Binary(
            cairn_receipt::compact::listing_entries(listing)
                .map_err(|e| format!("the node's binary listing is unreadable: {e}"))?,
        )
    } else {
        Listed::Json(
            serde_json::from_slice::<BatchReceipts>(listing)
                .map_err(|e| format!("the node's listing has no `receipts` array: {e}"))?
                .receipts,
        )
    };
    let n = match &listed {
        Listed::Binary(entries) => entries.len(),
        Listed::Json(list) => list.len(),
    };
    if let Some(e) = listed_vs_count(n) {
        return Err(e);
    }
    let mut digests: Vec<B256> = Vec::with_capacity(n);
    let mut leaves = Vec::with_capacity(n);
    let mut sampled = Vec::new();
    let mut models = BTreeSet::new();
    let mut profiles = HashSet::new();
    // A batch's receipts mostly name one model and one profile: each is compared with the
    // last receipt's before its set is touched.
    let mut last_model = None;
    let mut last_profile: Option<cairn_core::ExecutionProfile> = None;
    let mut fees = U256::ZERO;
    let mut take = |i: usize, v: cairn_receipt::compact::Verified| -> Result<(), String> {
        let mut r = v.receipt;
        if r.signer != batch.node {
            return Err(format!(
                "receipt {} is signed by {}, not the batch's node",
                r.id(),
                r.signer
            ));
        }
        if r.domain != *domain {
            return Err(format!(
                "receipt {} is not addressed to this settlement contract",
                r.id()
            ));
        }
        fees += r.claims.price;
        digests.push(v.digest);
        leaves.push((v.leaf, v.digest));
        let picked = draw.picks(v.digest);
        if last_model != Some(r.claims.model) {
            models.insert(r.claims.model);
            last_model = Some(r.claims.model);
        }
        if last_profile.as_ref() != Some(&r.claims.profile) {
            // A receipt not kept gives its profile up rather than have it copied.
            let p = if picked {
                r.claims.profile.clone()
            } else {
                std::mem::replace(&mut r.claims.profile, NO_PROFILE)
            };
            if !profiles.contains(&p) {
                profiles.insert(p.clone());
            }
            last_profile = Some(p);
        }
        if picked {
            sampled.push((i, r));
        }
        Ok(())
    };
    // Each entry goes straight where it is kept: no list of every parsed receipt in between.
    match &listed {
        Listed::Binary(entries) => cairn_receipt::compact::read_each(entries, |i, v| {
            take(i, v.map_err(|e| does_not_parse(i, e))?)
        })?,
        Listed::Json(list) => {
            for (i, j) in list.iter().enumerate() {
                take(i, j.read().map_err(|e| does_not_parse(i, e))?)?;
            }
        }
    }
    let tree = ReceiptTree::from_leaves(leaves).map_err(|e| e.to_string())?;
    if tree.root() != batch.root {
        return Err(format!(
            "the receipts rebuild root {}, the batch committed {}",
            tree.root(),
            batch.root
        ));
    }
    if fees != batch.fees {
        return Err(format!(
            "the receipts' prices sum to {fees}, the batch escrowed {}",
            batch.fees
        ));
    }
    Ok(CheckedBatch {
        digests,
        tree,
        sampled,
        models,
        profiles,
    })
}

impl Verifier {
    /// Checks batch `id` and acts on it: attest, refuse, or prove fraud. `Unavailable` means
    /// "look again later".
    pub async fn handle(&self, id: u64) -> Result<(), VerifyError> {
        let unavailable = |reason: String| VerifyError::Unavailable { batch: id, reason };
        let c = &self.0;
        if c.store.outcome(id)?.is_some_and(VerdictOutcome::is_final) {
            return Ok(());
        }
        let batch = c
            .chain
            .batch(id)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !self.still_open(&batch).await? {
            return Ok(());
        }
        let node = c
            .chain
            .node(batch.node)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let urls = NodeUrls::new(&node.endpoint);
        let base = urls.base().to_string();
        let mut verdict = self.fresh_verdict(&batch);
        // The node names the count, and checking costs this verifier per receipt: a batch over
        // the network's bound is refused before anything is fetched.
        if u64::from(batch.count) > cairn_node_api::MAX_BATCH_RECEIPTS {
            let reason = format!(
                "the batch claims {} receipts; batches hold at most {}",
                batch.count,
                cairn_node_api::MAX_BATCH_RECEIPTS
            );
            verdict.outcome = Some(VerdictOutcome::Refused);
            verdict.reason = Some(reason.clone());
            c.store.put_batch(&verdict)?;
            return Err(VerifyError::Refused { batch: id, reason });
        }
        let listing = self.fetch_listing(&urls, id).await?;
        let checked = match self.checked(&batch, &listing).await? {
            Ok(x) => x,
            Err(reason) => {
                verdict.outcome = Some(VerdictOutcome::Refused);
                verdict.reason = Some(reason.clone());
                c.store.put_batch(&verdict)?;
                return Err(VerifyError::Refused { batch: id, reason });
            }
        };
        let SampleRun {
            samples,
            finding,
            pending,
            abstain,
        } = self.sample_batch(&checked, &base).await?;
        verdict.sampled = Some(samples.len());
        verdict.samples = Some(samples);
        if let Some(f) = finding {
            return self.prove_fraud(&batch, &checked.tree, f, verdict).await;
        }
        if let Some(why) = pending {
            return Err(unavailable(why));
        }
        // A fraud this verifier signed for a peer counts too: never attest a batch it accused.
        if !c.store.frauds(id)?.is_empty() {
            return Ok(());
        }
        if let Some(reason) = abstain {
            // Never attest what could not be checked; the batch waits for verifiers that can.
            verdict.outcome = Some(VerdictOutcome::Abstained);
            verdict.reason = Some(reason);
            c.store.put_batch(&verdict)?;
            return Ok(());
        }
        if batch.status != BatchStatus::Submitted {
            verdict.outcome = Some(VerdictOutcome::Confirmed);
            c.store.put_batch(&verdict)?;
            return Ok(());
        }
        let signature = self.hand_in_attestation(&batch, &urls).await?;
        verdict.outcome = Some(VerdictOutcome::Attested);
        verdict.attestation = Some(signature.to_string());
        c.store.put_batch(&verdict)?;
        tracing::info!(verifier = %self.address(), batch = id, "attested");
        Ok(())
    }

    /// Every receipt runs on a profile the network can check: approved by governance and, for
    /// a bit-exact profile, declared by at least a quorum of active verifiers (any verifier
    /// compares tolerance profiles). Read from the chain at most once a minute per profile.
    pub(crate) async fn profiles_approved(
        &self,
        profiles: &HashSet<cairn_core::ExecutionProfile>,
    ) -> Result<Result<(), String>, String> {
        let c = &self.0;
        let now = now_secs();
        // Hashed once per distinct profile (a batch's receipts mostly share one), not per
        // receipt; asked in the order of their hashes.
        let wanted: BTreeMap<B256, &cairn_core::ExecutionProfile> =
            profiles.iter().map(|p| (p.hash(), p)).collect();
        let mut quorum = None;
        for (h, p) in wanted {
            let fresh = c
                .approved_profiles
                .lock()
                .expect("profiles")
                .get(&h)
                .is_some_and(|at| now < at + 60);
            if fresh {
                continue;
            }
            if !c
                .chain
                .profile_approved(h)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(Err(format!(
                    "receipts run on profile {p} ({h}), which the registry does not approve: no verifier quorum is known to re-execute it"
                )));
            }
            if p.reproducibility() == cairn_core::Reproducibility::Exact {
                let q = match quorum {
                    Some(q) => q,
                    None => {
                        let q = u64::from(c.chain.quorum().await.map_err(|e| e.to_string())?);
                        quorum = Some(q);
                        q
                    }
                };
                let declared = c
                    .chain
                    .profile_verifiers(h)
                    .await
                    .map_err(|e| e.to_string())?;
                if declared < q {
                    return Ok(Err(format!(
                        "receipts run on profile {p} ({h}), which {declared} active verifier(s) re-execute; a quorum of {q} must"
                    )));
                }
            }
            c.approved_profiles.lock().expect("profiles").insert(h, now);
        }
        Ok(Ok(()))
    }

    /// This verifier's attestation of `batch` (the EIP-712 signature `Settlement.attestBatch`
    /// takes), handed to the batch's node once the batch holds up.
    pub(crate) fn attestation(&self, batch: &BatchInfo) -> Result<Signature, VerifyError> {
        self.0
            .chain
            .sign_attestation(&self.0.key, batch)
            .map_err(|e| VerifyError::Unavailable {
                batch: batch.id,
                reason: e.to_string(),
            })
    }

    /// The static checks of a batch ([`check_listing`] under this deployment's domain and this
    /// verifier's secret sample).
    pub fn check(&self, batch: &BatchInfo, listing: &[u8]) -> Result<CheckedBatch, VerifyError> {
        let d = self.0.chain.deployment();
        let domain = cairn_receipt::ReceiptDomain {
            chain_id: d.chain_id,
            verifying_contract: d.settlement,
        };
        check_listing(batch, listing, &domain, &self.0.sampler).map_err(|reason| {
            VerifyError::Refused {
                batch: batch.id,
                reason,
            }
        })
    }

    /// Every model the receipts name is on the hub (HEAD /v1/blobs/{cid}, remembered).
    pub(crate) async fn models_on_hub(&self, models: &BTreeSet<BlobId>) -> Result<(), String> {
        let c = &self.0;
        for &cid in models {
            if c.on_hub.lock().expect("hub set").contains(&cid) {
                continue;
            }
            let url = format!("{}/v1/blobs/{cid}", c.config.hub_url.trim_end_matches('/'));
            let resp = c.fetch.client().head(&url).send().await.map_err(|e| {
                // The hub being down is not the node's fault, but the batch waits for it.
                format!("cannot reach the hub to check model {cid}: {e}")
            })?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Err(format!("model {cid} named by a receipt is not on the hub"));
            }
            if !resp.status().is_success() {
                return Err(format!("the hub answers {} for model {cid}", resp.status()));
            }
            c.on_hub.lock().expect("hub set").insert(cid);
        }
        Ok(())
    }

    /// A verdict on `batch` with nothing concluded yet.
    fn fresh_verdict(&self, batch: &BatchInfo) -> BatchVerdict {
        BatchVerdict {
            batch_id: batch.id,
            node: batch.node,
            root: batch.root,
            count: batch.count,
            verifier: self.address(),
            sample_rate: self.0.sampler.rate(),
            profile: self.0.reexec.profile().to_string(),
            samples: None,
            sampled: None,
            outcome: None,
            reason: None,
            attestation: None,
            fraud: None,
            peers: None,
            challenge: None,
            frauds: None,
        }
    }

    /// Every rule a batch must keep before any sampling: its listing ([`Verifier::check`]), its
    /// models on the hub, its profiles approved. `Ok(Err(reason))`: refused.
    async fn checked(
        &self,
        batch: &BatchInfo,
        listing: &[u8],
    ) -> Result<Result<CheckedBatch, String>, VerifyError> {
        // A batch holds up to 65,536 receipts to parse and hash (~3 µs each): CPU work that must
        // not stall the async workers (or, in one process, the node beside them).
        let checked = {
            let (v, b, l) = (self.clone(), batch.clone(), listing.to_vec());
            tokio::task::spawn_blocking(move || v.check(&b, &l))
                .await
                .map_err(|e| VerifyError::Unavailable {
                    batch: batch.id,
                    reason: format!("the check task failed: {e}"),
                })?
        };
        let checked = match checked {
            Ok(x) => x,
            Err(VerifyError::Refused { reason, .. }) => return Ok(Err(reason)),
            Err(e) => return Err(e),
        };
        if let Err(reason) = self.models_on_hub(&checked.models).await {
            return Ok(Err(reason));
        }
        match self.profiles_approved(&checked.profiles).await {
            Ok(Ok(())) => Ok(Ok(checked)),
            Ok(Err(reason)) => Ok(Err(reason)),
            Err(e) => Err(VerifyError::Unavailable {
                batch: batch.id,
                reason: e,
            }),
        }
    }

    /// Whether batch `batch` is still worth checking: submitted, or attested (or expired with a
    /// fraud already found) and inside its challenge window.
    async fn still_open(&self, batch: &BatchInfo) -> Result<bool, VerifyError> {
        let c = &self.0;
        Ok(match batch.status {
            BatchStatus::Submitted => true,
            // An expired batch can still be challenged for a window (from its expiry): a fraud
            // already found goes on to its proof.
            BatchStatus::Attested | BatchStatus::Expired
                if batch.status == BatchStatus::Attested
                    || !c.store.frauds(batch.id)?.is_empty() =>
            {
                let w = c
                    .chain
                    .challenge_window()
                    .await
                    .map_err(|e| VerifyError::Unavailable {
                        batch: batch.id,
                        reason: e.to_string(),
                    })?;
                now_secs() < batch.attested_at + w
            }
            _ => false,
        })
    }

    /// The node's listing of batch `id` (`GET /v1/batches/{id}`, signed), asked for in binary
    /// form ([`cairn_node_api::RECEIPT_LISTING_TYPE`]; a node that only speaks JSON answers
    /// JSON). Neither binary nor JSON (a proxy's page) is "ask again"; a listing that does not
    /// hold up is the node's answer, checked by [`Verifier::check`].
    async fn fetch_listing(&self, urls: &NodeUrls, id: u64) -> Result<Vec<u8>, VerifyError> {
        let c = &self.0;
        let unavailable = |reason: String| VerifyError::Unavailable { batch: id, reason };
        let base = urls.base();
        let accept = format!(
            "{}, application/json;q=0.5",
            cairn_node_api::RECEIPT_LISTING_TYPE
        );
        match c
            .fetch
            .signed_get_as(&c.key, &urls.batch(id), &accept)
            .await
        {
            Ok((status, body)) if status.is_success() && body.starts_with(b"CRNL") => Ok(body),
            Ok((status, body)) if status.is_success() => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&body)
                    .map_err(|e| unavailable(format!("reading the batch from {base}: {e}")))?;
                Ok(body)
            }
            Ok((status, _)) => Err(unavailable(format!(
                "fetching the batch from {base}: {status}"
            ))),
            Err(e) => Err(unavailable(format!("fetching the batch: {e}"))),
        }
    }

    /// Re-executes the receipts of a batch this verifier's secret sample picked ([`CheckedBatch::sampled`]).
    async fn sample_batch(
        &self,
        checked: &CheckedBatch,
        base: &str,
    ) -> Result<SampleRun, VerifyError> {
        let mut samples = Vec::new();
        let mut finding: Option<Finding> = None;
        let mut pending = None;
        let mut abstain = None;
        for (i, r) in &checked.sampled {
            let rh = checked.digests[*i];
            let (outcome, failures) = match self.sample(base, r, &[]).await? {
                Sampled::Done(o, f) => (o, f),
                Sampled::Pending(why) => {
                    pending.get_or_insert(why);
                    continue;
                }
            };
            samples.push(SampleRecord {
                outcome: outcome.clone(),
                request_id: r.id(),
                receipt_hash: rh,
                payload_failures: failures,
            });
            if let Outcome::Unverifiable { reason } = &outcome {
                abstain.get_or_insert(format!("receipt {}: {reason}", r.id()));
            }
            if finding.is_none()
                && let Some(evidence) = outcome.evidence_hash(rh)
            {
                finding = Some(Finding {
                    receipt: r.clone(),
                    outcome,
                    evidence,
                });
            }
        }
        Ok(SampleRun {
            samples,
            finding,
            pending,
            abstain,
        })
    }

    /// Signs the attestation of `batch` and hands it to its node, which puts a quorum on chain.
    async fn hand_in_attestation(
        &self,
        batch: &BatchInfo,
        urls: &NodeUrls,
    ) -> Result<alloy_primitives::Signature, VerifyError> {
        let c = &self.0;
        let id = batch.id;
        let unavailable = |reason: String| VerifyError::Unavailable { batch: id, reason };
        let base = urls.base();
        let signature = self.attestation(batch)?;
        let body = serde_json::to_vec(&AttestationRequest {
            signature: signature.to_string(),
        })
        .expect("serializes");
        let url = urls.attestations(id);
        match c.fetch.signed_post(&c.key, &url, body).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, body)) => {
                return Err(unavailable(format!(
                    "handing the attestation to {base}: {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )));
            }
            Err(e) => return Err(unavailable(format!("handing the attestation: {e}"))),
        }
        Ok(signature)
    }
}
