//! Verifier: follows the registry and the settlement contract, checks every receipt of every
//! submitted batch, re-executes a secret random sample on the receipts' execution profile,
//! co-signs the batches that hold up, and proves the ones that do not.
//!
//! Per batch:
//! 1. Every receipt is a well-formed EIP-712 receipt naming the batch's node under the
//!    settlement contract's domain; the receipts rebuild the committed Merkle root; their count
//!    and summed prices equal the batch's; every model they name exists on the hub. Seals
//!    (signatures) are not checked ([`check_listing`] says why).
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

pub mod assemble;
mod batch;
pub mod economics;
pub use cairn_node_api::fetch;
mod fraud;
mod gateway;
mod reexec;
mod registration;
mod sample;
pub mod server;
mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, B256, Signature, U256};
use alloy_signer_local::PrivateKeySigner;
use cairn_attest::{Evidence, Verified};
use cairn_ledger::{BatchInfo, BatchStatus, Chain, RegistrationRequest, Role};
use cairn_node_api::{AttestationRequest, BatchReceipts, NodeUrls, Payload, safetensors_io};
use cairn_receipt::SignedReceipt;
use cairn_receipt::merkle::ReceiptTree;
use cairn_verifier_api::{
    BatchVerdict, ChallengeAnswer, ChallengeRecord, ChallengeRequest, ErrorBody, FraudRecord,
    PeerAnswer, SampleRecord, VerdictOutcome, VerifierInfo, VerifierUrls,
};

pub use batch::{CheckedBatch, check_listing};
pub use fetch::Fetcher;
pub use reexec::{BatchSample, Outcome, Payloads, Reexecutor, Sampler, max_abs_diff};
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
    /// The key private calls' payloads are sealed to, and its signed announcement.
    payload_key: cairn_ohttp::GatewayKey,
    /// The Oblivious HTTP gateway's key (bound in the evidence it registers with).
    gateway_key: cairn_ohttp::GatewayKey,
    /// Data keys of sealed payloads this verifier opened (by receipt hash; output or not), handed
    /// to peers with a fraud challenge.
    data_keys: Mutex<HashMap<B256, Vec<(bool, cairn_ohttp::sealed::DataKey)>>>,
    payload_key_info: cairn_verifier_api::PayloadKey,
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

use cairn_core::clock::now_secs;

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
        let payload_key = cairn_node::payload_key(&key);
        let payload_key_info = {
            use alloy_signer::SignerSync;
            let message = cairn_verifier_api::PayloadKey::message(&payload_key.config().hash());
            let signature = key.sign_message_sync(&message).expect("a local key signs");
            cairn_verifier_api::PayloadKey {
                key_config: data_encoding::HEXLOWER.encode(payload_key.config().encoded()),
                signature: format!(
                    "0x{}",
                    data_encoding::HEXLOWER.encode(&signature.as_bytes())
                ),
            }
        };
        Self(Arc::new(Core {
            gateway_key: cairn_node::gateway_key(&key, 1),
            data_keys: Mutex::new(HashMap::new()),
            payload_key,
            payload_key_info,
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
            payload_key: Some(self.0.payload_key_info.clone()),
        }
    }

    /// Follows the chain forever, one pass every `tick`.
    pub async fn run(self, tick: Duration) {
        let mut follow = Follow::default();
        loop {
            // An attestation or fraud proof stuck under a risen base fee moves on (the next
            // one would otherwise wait behind it).
            if let Err(e) = self.0.chain.ledger().tend(&self.0.key).await {
                tracing::warn!(verifier = %self.address(), error = %e, "looking after a transaction still out");
            }
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
}

#[cfg(test)]
mod tests;
