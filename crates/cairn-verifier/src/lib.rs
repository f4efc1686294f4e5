//! Verifier: follows the registry and the settlement contract, checks every receipt of every
//! submitted batch, re-executes a secret random sample on the receipts' execution profile,
//! co-signs the batches that hold up, and proves the ones that do not.
//!
//! Per batch:
//! 1. Every receipt is a valid EIP-712 receipt signed by the batch's node under the settlement
//!    contract's domain; the receipts rebuild the committed Merkle root; their count and summed
//!    prices equal the batch's; every model they name exists on the hub.
//! 2. A [`Sampler`] picks receipts from a per-verifier secret and the batch root. Each sampled
//!    receipt is re-executed ([`Reexecutor`]): input fetched from the node and checked against
//!    the input hash, model fetched by CID and hashed, outputs compared bit for bit (tract
//!    profiles) or within a stated tolerance (onnxruntime profiles). Payloads are fetched with
//!    signed requests (nodes hand them only to active verifiers and the payer). A failed fetch is
//!    never a verdict by itself: withholding is established only when every one of this
//!    verifier's own attempts, spread over its payload window, failed (a node restart or an
//!    overload shorter than the window costs the node nothing). A receipt this verifier cannot
//!    re-execute (a profile it does not run) makes it abstain: it never attests what it could
//!    not check.
//! 3. No fault: sign the `BatchAttestation` and hand it to the node (which lands a quorum).
//!    A fault: sign a `FraudVerdict`, ask the other active verifiers to re-check that receipt
//!    themselves (`POST /v1/challenges`, signed; only active verifiers are heard), and with a
//!    quorum of identical verdicts submit
//!    `Settlement.challenge` (receipt, inclusion proof, verdicts): the batch is voided, the node
//!    slashed, and the verdict's signers rewarded.
//!
//! Every verdict and its evidence are kept ([`VerdictStore`]) and served over HTTP
//! ([`server::router`]), which also approves registrations ([`Verifier::approve_registration`]).

pub mod economics;
pub mod fetch;
mod reexec;
pub mod server;
mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, B256, Signature, U256};
use alloy_signer_local::PrivateKeySigner;
use cairn_attest::{Evidence, Verified};
use cairn_ledger::contracts::Settlement;
use cairn_ledger::{BatchInfo, BatchStatus, Chain, RegistrationRequest, Role};
use cairn_node_api::{AttestationRequest, BatchReceipts, NodeUrls, Payload, safetensors_io};
use cairn_receipt::SignedReceipt;
use cairn_receipt::merkle::ReceiptTree;
use cairn_verifier_api::{
    ChallengeAnswer, ChallengeRequest, ErrorBody, VerifierInfo, VerifierUrls,
};
use serde_json::{Value, json};

pub use fetch::Fetcher;
pub use reexec::{Outcome, Payloads, Reexecutor, Sampler, max_abs_diff};
pub use store::{Attempts, StoreError, VerdictStore};

/// Why a batch was not co-signed, or a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The batch's receipts do not hold up; the verifier refuses to sign.
    #[error("batch {batch} refused: {reason}")]
    Refused {
        /// On-chain batch id.
        batch: u64,
        /// What was wrong.
        reason: String,
    },
    /// The node, a peer or the chain could not be reached, or a deadline has not passed; try
    /// again later.
    #[error("batch {batch}: {reason}")]
    Unavailable {
        /// On-chain batch id.
        batch: u64,
        /// What failed.
        reason: String,
    },
    /// A request without a valid signature (401), or signed by someone who may not make it
    /// (403).
    #[error("{reason}")]
    Unauthorized {
        /// `unauthorized` or `forbidden`.
        code: &'static str,
        /// What was wrong and what to do.
        reason: String,
    },
    /// A request to this verifier is wrong (bad receipt, proof, evidence...).
    #[error("{reason}")]
    BadRequest {
        /// Stable machine code.
        code: &'static str,
        /// What was wrong and what to do.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a verifier behaves.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// Fraction of each batch's receipts re-executed (0..=1).
    pub sample_rate: f64,
    /// The sampling secret (never shared, so nodes cannot predict samples).
    pub secret: B256,
    /// Over how long this verifier keeps trying to fetch a sampled payload before it holds the
    /// node to have withheld it: a restart or an overload shorter than this costs nothing.
    pub payload_window: Duration,
    /// How many attempts, evenly spread over the window, must all fail (at least 2).
    pub payload_attempts: u32,
    /// Largest payload or listing fetched from a node, in bytes.
    pub max_fetch_bytes: usize,
    /// Let node endpoints be loopback or private addresses (a local network only).
    pub allow_private_endpoints: bool,
    /// This verifier's own endpoint (registered): the host signed requests to it must name.
    pub endpoint: String,
    /// Which TEE evidence registrations may carry.
    pub attestation: cairn_attest::Policy,
    /// Longest validity a registration approval is given.
    pub approval_ttl: Duration,
    /// The hub that must hold every model a receipt names.
    pub hub_url: String,
}

/// One verifier identity watching one deployment. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Verifier(Arc<Core>);

struct Core {
    chain: Chain,
    key: PrivateKeySigner,
    fetch: Fetcher,
    reexec: Reexecutor,
    sampler: Sampler,
    store: VerdictStore,
    config: VerifierConfig,
    /// Models known to exist on the hub.
    on_hub: Mutex<HashSet<cairn_core::BlobId>>,
    /// Profiles found checkable, with when (re-read after a minute, so revocations apply).
    approved_profiles: Mutex<HashMap<B256, u64>>,
    /// The registry's active verifiers.
    active: cairn_ledger::ActiveVerifiers,
    /// Signed requests already seen: peers' and registrants'.
    peer_replay: cairn_core::auth::ReplayGuard,
    registration_replay: cairn_core::auth::ReplayGuard,
    /// Samples finished (by receipt hash): one fetch and re-execution per receipt, however
    /// often its batch is looked at again or a peer asks.
    finished: Mutex<HashMap<B256, (Outcome, u32)>>,
}

/// What sampling one receipt gave.
enum Sampled {
    /// A finding (confirmation, fault or abstention), after `failures` failed fetch attempts.
    Done(Outcome, u32),
    /// The payload did not come yet; the series of attempts goes on.
    Pending(String),
}

/// A fraud finding: what was wrong with which receipt.
struct Finding {
    receipt: SignedReceipt,
    outcome: Outcome,
    evidence: B256,
}

/// The follower state of [`Verifier::run`].
#[derive(Default)]
struct Follow {
    /// Batches handled (co-signed, refused, challenged, or past needing anything).
    done: HashSet<u64>,
    /// Where the next event scan starts.
    next_block: u64,
    /// Batches to look at again.
    retry: BTreeSet<u64>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The receipt as the settlement contract takes it.
pub fn as_settlement(r: &SignedReceipt) -> Settlement::Receipt {
    let m = r.message();
    Settlement::Receipt {
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
}

impl Verifier {
    /// A verifier signing with `key` (registered as a verifier to count), re-executing with
    /// `reexec`, keeping verdicts in `store`.
    pub fn new(
        chain: Chain,
        key: PrivateKeySigner,
        reexec: Reexecutor,
        store: VerdictStore,
        config: VerifierConfig,
    ) -> Self {
        let fetch = Fetcher::new(
            Duration::from_secs(20),
            config.max_fetch_bytes,
            config.allow_private_endpoints,
        );
        let active = cairn_ledger::ActiveVerifiers::new(chain.clone());
        Self(Arc::new(Core {
            sampler: Sampler::new(config.secret, config.sample_rate),
            chain,
            key,
            fetch,
            reexec,
            store,
            config,
            on_hub: Mutex::new(HashSet::new()),
            approved_profiles: Mutex::new(HashMap::new()),
            active,
            peer_replay: cairn_core::auth::ReplayGuard::new(100_000, 1_000),
            registration_replay: cairn_core::auth::ReplayGuard::new(100, 100_000),
            finished: Mutex::new(HashMap::new()),
        }))
    }

    /// This verifier's address.
    pub fn address(&self) -> Address {
        self.0.key.address()
    }

    /// The chain it follows.
    pub fn chain(&self) -> &Chain {
        &self.0.chain
    }

    /// Its verdicts.
    pub fn store(&self) -> &VerdictStore {
        &self.0.store
    }

    /// What `GET /v1/verifier` says.
    pub fn info(&self) -> VerifierInfo {
        VerifierInfo {
            address: self.address(),
            profile: self.0.reexec.profile().clone(),
            sample_rate: self.0.sampler.rate(),
            profile_hash: self.0.reexec.profile().hash(),
            payload_window_secs: self.0.config.payload_window.as_secs(),
            payload_attempts: self.0.config.payload_attempts,
            accepts_dev_evidence: self.0.config.attestation.allow_dev,
            settlement: self.0.chain.deployment().settlement,
        }
    }

    /// Follows the chain forever, one pass every `tick`.
    pub async fn run(self, tick: Duration) {
        let mut follow = Follow::default();
        loop {
            if let Err(e) = self.step(&mut follow).await {
                tracing::warn!(verifier = %self.address(), error = %e, "verifier pass failed");
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// One pass over submitted batches not yet handled.
    async fn step(&self, f: &mut Follow) -> Result<(), cairn_ledger::LedgerError> {
        let chain = &self.0.chain;
        let head = chain.ledger().head().await?.number;
        // Nodes refuse a log range that starts past their head: scan only when there is news.
        let submitted = if head >= f.next_block {
            let found = chain.submitted_batches(f.next_block).await?;
            f.next_block = head + 1;
            found
        } else {
            Vec::new()
        };
        let mut ids: BTreeSet<u64> = std::mem::take(&mut f.retry);
        ids.extend(submitted.into_iter().map(|(id, _, _, _)| id));
        for id in ids {
            if f.done.contains(&id) {
                continue;
            }
            match self.handle(id).await {
                Ok(()) => {
                    f.done.insert(id);
                }
                Err(e @ VerifyError::Unavailable { .. }) => {
                    tracing::info!(verifier = %self.address(), error = %e, "will retry");
                    f.retry.insert(id);
                }
                Err(e) => {
                    tracing::error!(verifier = %self.address(), error = %e, "batch handled with an error");
                    f.done.insert(id);
                }
            }
        }
        Ok(())
    }

    /// Checks batch `id` and acts on it: attest, refuse, or prove fraud. `Unavailable` means
    /// "look again later".
    pub async fn handle(&self, id: u64) -> Result<(), VerifyError> {
        let unavailable = |reason: String| VerifyError::Unavailable { batch: id, reason };
        let c = &self.0;
        if matches!(
            c.store.outcome(id)?.as_deref(),
            Some("attested" | "refused" | "challenged" | "confirmed" | "abstained")
        ) {
            return Ok(());
        }
        let batch = c
            .chain
            .batch(id)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let window_open = match batch.status {
            BatchStatus::Submitted => true,
            // An expired batch can still be challenged for a window (from its expiry): a fraud
            // already found goes on to its proof.
            BatchStatus::Attested | BatchStatus::Expired
                if batch.status == BatchStatus::Attested || !c.store.frauds(id)?.is_empty() =>
            {
                let w = c
                    .chain
                    .challenge_window()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                now_secs() < batch.attested_at + w
            }
            _ => false,
        };
        if !window_open {
            return Ok(());
        }
        let node = c
            .chain
            .node(batch.node)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let urls = NodeUrls::new(&node.endpoint);
        let base = urls.base().to_string();
        let url = urls.batch(id);
        let listing = match c.fetch.signed_get(&c.key, &url).await {
            Ok((status, body)) if status.is_success() => {
                // Not JSON at all (a proxy's page): ask again; JSON that is not a listing is the
                // node's answer, checked below.
                serde_json::from_slice::<serde::de::IgnoredAny>(&body)
                    .map_err(|e| unavailable(format!("reading the batch from {base}: {e}")))?;
                body
            }
            Ok((status, _)) => {
                return Err(unavailable(format!(
                    "fetching the batch from {base}: {status}"
                )));
            }
            Err(e) => return Err(unavailable(format!("fetching the batch: {e}"))),
        };
        let mut verdict = json!({
            "batchId": id,
            "node": batch.node.to_checksum(None),
            "root": batch.root.to_string(),
            "count": batch.count,
            "verifier": self.address().to_checksum(None),
            "sampleRate": c.sampler.rate(),
            "profile": c.reexec.profile().to_string(),
        });
        let refuse = |verdict: &mut Value, reason: String| {
            verdict["outcome"] = "refused".into();
            verdict["reason"] = reason.clone().into();
            c.store.put_batch(id, "refused", verdict)?;
            Err(VerifyError::Refused { batch: id, reason })
        };
        let (receipts, tree) = match self.check(&batch, &listing) {
            Ok(x) => x,
            Err(VerifyError::Refused { reason, .. }) => return refuse(&mut verdict, reason),
            Err(e) => return Err(e),
        };
        if let Err(reason) = self.models_on_hub(&receipts).await {
            return refuse(&mut verdict, reason);
        }
        match self.profiles_approved(&receipts).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return refuse(&mut verdict, reason),
            Err(e) => return Err(unavailable(e)),
        }

        // Re-execute the sample.
        let mut samples = Vec::new();
        let mut finding: Option<Finding> = None;
        let mut pending = None;
        let mut abstain = None;
        for r in &receipts {
            let rh = r.signing_hash();
            if !c.sampler.sampled(batch.root, rh) {
                continue;
            }
            let (outcome, failures) = match self.sample(&base, r).await? {
                Sampled::Done(o, f) => (o, f),
                Sampled::Pending(why) => {
                    pending.get_or_insert(why);
                    continue;
                }
            };
            let mut s = serde_json::to_value(&outcome).unwrap_or_default();
            s["requestId"] = r.id().to_string().into();
            s["receiptHash"] = rh.to_string().into();
            s["payloadFailures"] = failures.into();
            samples.push(s);
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
        verdict["samples"] = samples.into();
        verdict["sampled"] = verdict["samples"].as_array().map_or(0, Vec::len).into();
        if let Some(f) = finding {
            return self.prove_fraud(&batch, &tree, f, verdict).await;
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
            verdict["outcome"] = "abstained".into();
            verdict["reason"] = reason.into();
            c.store.put_batch(id, "abstained", &verdict)?;
            return Ok(());
        }
        if batch.status != BatchStatus::Submitted {
            verdict["outcome"] = "confirmed".into();
            c.store.put_batch(id, "confirmed", &verdict)?;
            return Ok(());
        }
        let signature = self.attestation(&batch)?;
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
        verdict["outcome"] = "attested".into();
        verdict["attestation"] = signature.to_string().into();
        c.store.put_batch(id, "attested", &verdict)?;
        tracing::info!(verifier = %self.address(), batch = id, "attested");
        Ok(())
    }

    /// Samples receipt `r` of a node reached at `base`: the payloads (one attempt at most per
    /// attempt interval), then the re-execution.
    async fn sample(&self, base: &str, r: &SignedReceipt) -> Result<Sampled, VerifyError> {
        let c = &self.0;
        if let Some(o) = c.reexec.unverifiable(r) {
            return Ok(Sampled::Done(o, 0));
        }
        let rh = r.signing_hash();
        if let Some((o, f)) = c.finished.lock().expect("finished").get(&rh).cloned() {
            return Ok(Sampled::Done(o, f));
        }
        let now = now_secs();
        let window = c.config.payload_window.as_secs();
        let attempts = c.config.payload_attempts.max(2);
        let spacing = window / u64::from(attempts - 1);
        let withheld = |a: &Attempts| {
            (a.failures >= attempts && a.last_at.saturating_sub(a.first_at) >= window).then(|| {
                Outcome::Withheld {
                    reason: format!(
                        "{} attempts over {} s failed; the last: {}",
                        a.failures,
                        a.last_at - a.first_at,
                        a.last_reason
                    ),
                }
            })
        };
        if let Some(a) = c.store.attempts(&rh.0)? {
            if let Some(o) = withheld(&a) {
                return Ok(Sampled::Done(o, a.failures));
            }
            if now < a.last_at + spacing {
                return Ok(Sampled::Pending(format!(
                    "receipt {}: payload not handed over yet ({} of {attempts} attempts failed; next in {} s)",
                    r.id(),
                    a.failures,
                    a.last_at + spacing - now
                )));
            }
        }
        match self.fetch_payloads(base, r).await {
            Ok(p) => {
                let outcome = match c.reexec.check(r, p).await {
                    Ok(o) => o,
                    Err(why) => {
                        return Ok(Sampled::Pending(format!(
                            "receipt {}: could not re-execute here yet: {why}",
                            r.id()
                        )));
                    }
                };
                let failures = c.store.clear_failures(&rh.0)?;
                let mut done = c.finished.lock().expect("finished");
                if done.len() > 100_000 {
                    done.clear();
                }
                done.insert(rh, (outcome.clone(), failures));
                Ok(Sampled::Done(outcome, failures))
            }
            Err(reason) => {
                let a = c.store.record_failure(&rh.0, now, &reason)?;
                tracing::info!(verifier = %self.address(), receipt = %r.id(), failures = a.failures, %reason, "payload fetch failed");
                Ok(match withheld(&a) {
                    Some(o) => Sampled::Done(o, a.failures),
                    None => Sampled::Pending(format!(
                        "receipt {}: payload not handed over ({} of {attempts} attempts failed): {reason}",
                        r.id(),
                        a.failures
                    )),
                })
            }
        }
    }

    /// The payloads of `r` from its node (input; output too for tolerance profiles). Any failure
    /// (unreachable, slow, an error status, an undecodable body) is one failed attempt.
    async fn fetch_payloads(&self, base: &str, r: &SignedReceipt) -> Result<Payloads, String> {
        let urls = NodeUrls::new(base);
        let urls = &urls;
        let get = |which: Payload| async move {
            let url = urls.payload(r.id(), which);
            let (status, body) = self.0.fetch.signed_get(&self.0.key, &url).await?;
            if !status.is_success() {
                return Err(format!(
                    "GET {url}: {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            }
            safetensors_io::decode(&body).map_err(|e| format!("{} payload: {e}", which.as_str()))
        };
        let inputs = get(Payload::Input).await?;
        let outputs = if Reexecutor::needs_output(r) {
            Some(get(Payload::Output).await?)
        } else {
            None
        };
        Ok(Payloads { inputs, outputs })
    }

    /// Every receipt runs on a profile the network can check: approved by governance and, for
    /// a bit-exact profile, declared by at least a quorum of active verifiers (any verifier
    /// compares tolerance profiles). Read from the chain at most once a minute per profile.
    async fn profiles_approved(
        &self,
        receipts: &[SignedReceipt],
    ) -> Result<Result<(), String>, String> {
        let c = &self.0;
        let now = now_secs();
        let wanted: BTreeMap<B256, &SignedReceipt> = receipts
            .iter()
            .map(|r| (r.claims.profile.hash(), r))
            .collect();
        let mut quorum = None;
        for (h, r) in wanted {
            let fresh = c
                .approved_profiles
                .lock()
                .expect("profiles")
                .get(&h)
                .is_some_and(|at| now < at + 60);
            if fresh {
                continue;
            }
            let p = &r.claims.profile;
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

    /// The static checks of a batch (see the crate docs); the receipts and their tree.
    pub fn check(
        &self,
        batch: &BatchInfo,
        listing: &[u8],
    ) -> Result<(Vec<SignedReceipt>, ReceiptTree), VerifyError> {
        let refuse = |reason: String| VerifyError::Refused {
            batch: batch.id,
            reason,
        };
        let list = serde_json::from_slice::<BatchReceipts>(listing)
            .map_err(|e| refuse(format!("the node's listing has no `receipts` array: {e}")))?
            .receipts;
        let d = self.0.chain.deployment();
        let mut receipts = Vec::with_capacity(list.len());
        let mut digests: Vec<B256> = Vec::with_capacity(list.len());
        let mut fees = U256::ZERO;
        for (i, r) in list.iter().enumerate() {
            let r = r
                .verify()
                .map_err(|e| refuse(format!("receipt {i} does not verify: {e}")))?;
            if r.signer != batch.node {
                return Err(refuse(format!(
                    "receipt {} is signed by {}, not the batch's node",
                    r.id(),
                    r.signer
                )));
            }
            if r.domain.chain_id != d.chain_id || r.domain.verifying_contract != d.settlement {
                return Err(refuse(format!(
                    "receipt {} is not addressed to this settlement contract",
                    r.id()
                )));
            }
            fees += r.claims.price;
            digests.push(r.signing_hash());
            receipts.push(r);
        }
        if digests.len() != batch.count as usize {
            return Err(refuse(format!(
                "{} receipts listed, the batch claims {}",
                digests.len(),
                batch.count
            )));
        }
        let tree = ReceiptTree::new(&digests).map_err(|e| refuse(e.to_string()))?;
        if tree.root() != batch.root {
            return Err(refuse(format!(
                "the receipts rebuild root {}, the batch committed {}",
                tree.root(),
                batch.root
            )));
        }
        if fees != batch.fees {
            return Err(refuse(format!(
                "the receipts' prices sum to {fees}, the batch escrowed {}",
                batch.fees
            )));
        }
        Ok((receipts, tree))
    }

    /// Every model the receipts name is on the hub (HEAD /v1/blobs/{cid}, remembered).
    async fn models_on_hub(&self, receipts: &[SignedReceipt]) -> Result<(), String> {
        let c = &self.0;
        let wanted: BTreeSet<_> = receipts.iter().map(|r| r.claims.model).collect();
        for cid in wanted {
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

    async fn prove_fraud(
        &self,
        batch: &BatchInfo,
        tree: &ReceiptTree,
        f: Finding,
        mut verdict: Value,
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
        let claim = claim_of(&f.outcome);
        let fraud = json!({
            "batchId": id,
            "requestId": f.receipt.id().to_string(),
            "receiptHash": rh.to_string(),
            "evidenceHash": f.evidence.to_string(),
            "claim": claim,
            "finding": f.outcome,
            "signature": mine.to_string(),
            "origin": "own sample",
        });
        c.store.put_fraud(id, &fraud)?;
        verdict["outcome"] = "fraud".into();
        verdict["fraud"] = fraud;

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
        };
        let mut answers = Vec::new();
        for peer in peers.into_iter().filter(|p| *p != self.address()) {
            if signed.len() >= quorum {
                break;
            }
            let endpoint = match c.chain.node(peer).await {
                Ok(n) => n.endpoint,
                Err(e) => {
                    answers
                        .push(json!({"verifier": peer.to_checksum(None), "error": e.to_string()}));
                    continue;
                }
            };
            match self.ask_peer(&endpoint, &request).await {
                Ok((addr, sig, evidence))
                    if addr == peer
                        && evidence == f.evidence
                        && c.chain.verdict_signer(id, rh, evidence, &sig).ok() == Some(peer) =>
                {
                    answers.push(json!({"verifier": peer.to_checksum(None), "agreed": true}));
                    signed.push((peer, sig));
                }
                Ok((_, _, evidence)) => answers.push(json!({
                    "verifier": peer.to_checksum(None),
                    "agreed": false,
                    "error": format!("answered with evidence {evidence} or a signature not its own"),
                })),
                Err(e) => answers.push(json!({"verifier": peer.to_checksum(None), "error": e})),
            }
        }
        verdict["peers"] = answers.into();
        if signed.len() < quorum {
            c.store.put_batch(id, "fraud", &verdict)?;
            return Err(unavailable(format!(
                "fraud on receipt {} confirmed by {} of the {quorum} verifiers needed; asking again",
                f.receipt.id(),
                signed.len()
            )));
        }
        let signers: Vec<String> = signed.iter().map(|(a, _)| a.to_checksum(None)).collect();
        match c
            .chain
            .challenge(
                &c.key,
                id,
                as_settlement(&f.receipt),
                proof,
                f.evidence,
                signed,
            )
            .await
        {
            Ok(tx) => {
                verdict["outcome"] = "challenged".into();
                verdict["challenge"] = json!({
                    "tx": tx.hash.to_string(),
                    "signers": signers,
                    "evidenceHash": f.evidence.to_string(),
                });
                c.store.put_batch(id, "challenged", &verdict)?;
                tracing::warn!(verifier = %self.address(), batch = id, receipt = %f.receipt.id(), "fraud proven on chain");
                Ok(())
            }
            Err(e) => {
                // Another verifier may have landed the same challenge first.
                let voided = matches!(
                    c.chain.batch(id).await.map(|b| b.status),
                    Ok(BatchStatus::Voided)
                );
                verdict["outcome"] = "challenged".into();
                verdict["challenge"] =
                    json!({"signers": signers, "error": e.to_string(), "voided": voided});
                if voided {
                    c.store.put_batch(id, "challenged", &verdict)?;
                    Ok(())
                } else {
                    c.store.put_batch(id, "fraud", &verdict)?;
                    Err(unavailable(format!("submitting the challenge: {e}")))
                }
            }
        }
    }

    async fn ask_peer(
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

    /// Whether `who` is an active verifier (the registry's set, read at most every 30 s; the
    /// last known set while the chain is unreachable).
    pub async fn is_active_verifier(&self, who: Address) -> Result<bool, VerifyError> {
        self.0
            .active
            .contains(who)
            .await
            .map_err(|e| VerifyError::BadRequest {
                code: "chain_unavailable",
                reason: e.to_string(),
            })
    }

    /// Checks a signed request (`lookup` reads its headers) to this verifier: signature over
    /// this verifier's own host (its registered endpoint's; `request_host` when it has none),
    /// clock and body digest. Returns the headers and the signer; anything wrong is 401. The
    /// caller checks who the signer is, then replay ([`Verifier::replay`]).
    pub fn authenticate<'h>(
        &self,
        lookup: impl Fn(&'static str) -> Option<&'h str>,
        request_host: &str,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> Result<(cairn_core::auth::SignedHeaders, Address), VerifyError> {
        let host = cairn_core::auth::host_and_target(&self.0.config.endpoint)
            .map_or_else(|| request_host.to_ascii_lowercase(), |(h, _)| h);
        cairn_core::auth::verify_request(lookup, &host, method, target, body).map_err(|e| {
            VerifyError::Unauthorized {
                code: "unauthorized",
                reason: format!("{e} (this route takes requests signed with the cairn-* headers)"),
            }
        })
    }

    /// Accepts an authorized signed request once: peers' and registrants' apart, so neither
    /// can crowd out the other.
    pub fn replay(
        &self,
        h: &cairn_core::auth::SignedHeaders,
        peer: bool,
    ) -> Result<(), VerifyError> {
        let guard = if peer {
            &self.0.peer_replay
        } else {
            &self.0.registration_replay
        };
        guard
            .check(h, cairn_core::auth::unix_now())
            .map_err(|e| VerifyError::Unauthorized {
                code: "unauthorized",
                reason: e.to_string(),
            })
    }

    /// A peer's request: re-check receipt `receipt` of batch `batch_id` (included under `proof`)
    /// and, when this verifier finds the same kind of fault itself, sign the fraud verdict.
    pub async fn confirm_fraud(
        &self,
        batch_id: u64,
        receipt: &cairn_receipt::ReceiptJson,
        proof: Vec<B256>,
        claim: &str,
    ) -> Result<ChallengeAnswer, VerifyError> {
        let c = &self.0;
        let bad = |code: &'static str, reason: String| VerifyError::BadRequest { code, reason };
        let unavailable = |reason: String| VerifyError::Unavailable {
            batch: batch_id,
            reason,
        };
        let r = receipt.verify().map_err(|e| {
            bad(
                "invalid_receipt",
                format!("the receipt does not verify: {e}"),
            )
        })?;
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
        // One re-execution per receipt however often a peer asks (`sample` remembers it); a
        // withholding series goes on at its own pace (one attempt per interval).
        let node = c
            .chain
            .node(batch.node)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let outcome = match self.sample(node.endpoint.trim_end_matches('/'), &r).await? {
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
        let fraud = json!({
            "batchId": batch_id,
            "requestId": r.id().to_string(),
            "receiptHash": rh.to_string(),
            "evidenceHash": evidence.to_string(),
            "claim": claim_of(&outcome),
            "claimed": claim,
            "finding": outcome,
            "signature": signature.to_string(),
            "origin": "peer request",
        });
        c.store.put_fraud(batch_id, &fraud)?;
        Ok(ChallengeAnswer {
            verifier: self.address(),
            signature: signature.to_string(),
            evidence_hash: evidence,
            finding: fraud["finding"].clone(),
        })
    }

    /// Checks a node's evidence for registration `req` and signs the approval: the evidence
    /// verifies (at this verifier's clock and policy), reports `req.measurement`, hashes to
    /// `req.evidence_digest`, binds `req.node`, the measurement is approved for the role on
    /// chain, and the deadline is near.
    pub async fn approve_registration(
        &self,
        req: &RegistrationRequest,
        evidence: &Evidence,
    ) -> Result<(Signature, Verified), VerifyError> {
        let c = &self.0;
        let bad = |code: &'static str, reason: String| VerifyError::BadRequest { code, reason };
        let now = now_secs();
        let attest = |e: cairn_attest::AttestError| VerifyError::BadRequest {
            code: e.code(),
            reason: e.to_string(),
        };
        let v = cairn_attest::verify(evidence, now, c.config.attestation).map_err(attest)?;
        if evidence.digest() != req.evidence_digest {
            return Err(bad(
                "evidence_digest_mismatch",
                format!(
                    "the evidence hashes to {}, the registration names {}",
                    evidence.digest(),
                    req.evidence_digest
                ),
            ));
        }
        if v.measurement.0 != req.measurement {
            return Err(bad(
                "measurement_mismatch",
                format!(
                    "the evidence reports measurement {}, the registration names {}",
                    v.measurement, req.measurement
                ),
            ));
        }
        cairn_attest::check_binding(&v, req.node, None).map_err(attest)?;
        fetch::check_url(&req.endpoint, c.config.allow_private_endpoints)
            .map_err(|e| bad("endpoint_not_public", e))?;
        let approved = c
            .chain
            .measurement_approved(req.role, req.measurement)
            .await
            .map_err(|e| bad("chain_unavailable", e.to_string()))?;
        if !approved {
            return Err(attest(cairn_attest::AttestError::NotApproved {
                measurement: v.measurement,
                role: format!("{:?}", req.role).to_ascii_lowercase(),
            }));
        }
        if req.deadline <= now || req.deadline > now + c.config.approval_ttl.as_secs() {
            return Err(bad(
                "bad_deadline",
                format!(
                    "the deadline must be in the next {} s",
                    c.config.approval_ttl.as_secs()
                ),
            ));
        }
        let sig = c
            .chain
            .sign_registration(&c.key, req)
            .map_err(|e| bad("signing_failed", e.to_string()))?;
        tracing::info!(verifier = %self.address(), node = %req.node, kind = %v.kind, "approved a registration");
        Ok((sig, v))
    }
}

fn claim_of(o: &Outcome) -> &'static str {
    match o {
        Outcome::Mismatch { .. } => "output_mismatch",
        Outcome::Withheld { .. } => "payload_withheld",
        Outcome::WrongPayload { .. } => "wrong_payload",
        _ => "none",
    }
}

#[cfg(test)]
mod tests;
