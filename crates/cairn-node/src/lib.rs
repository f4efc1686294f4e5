//! Inference node: runs ONNX models by CID behind the Open Inference Protocol (KServe v2), and
//! signs an EIP-712 receipt for every call.
//!
//! Request path: admission (bounded queues, 503 when full) → bounded body → KServe decode →
//! model cache (resolve name → CID, fetch and verify, load once) → inputs checked against the
//! model's signature → engine run on a worker (bounded concurrency, timeout) → hashes and
//! signature → receipt log commit → response.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::U256;
use alloy_signer_local::PrivateKeySigner;
use cairn_engine::Engine;
use cairn_receipt::ReceiptDomain;

pub mod batcher;
pub mod cache;
pub mod error;
pub mod faults;
pub mod inference;
pub mod llm;
pub mod log;
mod metrics;
mod names;
mod pricing;
pub mod registration;
pub mod sealing;
mod server;
pub mod upstream;

pub use batcher::{BatchPolicy, SettlementConfig};
pub use cairn_sqlite::Durability;
pub use error::NodeError;
pub use faults::Faults;
pub use pricing::{LlmPrices, TokenPrice};
pub use server::{NodeState, router};

/// Bounds on what one request and the node as a whole may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most input elements per request.
    pub max_elements: u64,
    /// Longest an inference may wait and run.
    pub timeout: Duration,
    /// Requests admitted (queued or running) per model ([`QUEUE_PER_WORKER`] per worker by
    /// default).
    pub queue_per_model: usize,
    /// Requests admitted (queued or running) over all models.
    pub queue_total: usize,
    /// Inferences running at once.
    pub workers: usize,
    /// How long a request refused for a full queue waits before its 503: a flood of clients
    /// that re-send at once would otherwise make refusing the node's main work.
    pub overload_hold: Duration,
    /// Largest outputs of one inference (kept for verifiers, who fetch at most 512 MiB).
    pub max_output_bytes: usize,
    /// Longest a request body may take to arrive.
    pub body_timeout: Duration,
    /// Memory for request bodies being read at once (a body without a length counts as
    /// `max_body_bytes`).
    pub body_budget_bytes: usize,
    /// Language-model calls generating at once (each also holds a worker): the rest wait up to
    /// `timeout`, then get 503. A call holds its session for its whole generation, so this
    /// keeps tensor inference from being starved by long answers.
    pub llm_sessions: usize,
    /// How long a group of batch-sealed receipts waits at most for the other batch-sealed
    /// requests being served, so that one signature covers them (zero: it never waits).
    pub batch_linger: Duration,
}

/// Requests admitted per model for each worker, by default. Under a flood the admitted wait
/// behind this many: 16 per worker keeps their latency within about twice what 16 clients
/// see at once (measured on 2 cores, digits MLP, by `loadgen` on the answered requests:
/// admitted p99 6.5 ms with 512 connections flooding against 3.7 ms with 16 clients, 11.6 ms
/// with 32 per worker; the old 256 per model gave 43–50 ms by the node's own histogram), while
/// the workers stay busy. More wait as 503s with `Retry-After`.
pub const QUEUE_PER_WORKER: usize = 16;

impl Default for Limits {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            max_body_bytes: 64 << 20,
            max_elements: 16 << 20,
            timeout: Duration::from_secs(30),
            queue_per_model: QUEUE_PER_WORKER.saturating_mul(workers.max(1)),
            queue_total: 1024,
            workers,
            overload_hold: Duration::from_millis(250),
            max_output_bytes: 256 << 20,
            body_timeout: Duration::from_secs(10),
            body_budget_bytes: 256 << 20,
            llm_sessions: 1,
            batch_linger: log::LINGER,
        }
    }
}

/// Everything a node needs.
pub struct NodeConfig {
    /// Where the model cache and the receipt log live.
    pub data_dir: PathBuf,
    /// The hub models are fetched from.
    pub hub_url: String,
    /// The node's signing key.
    pub key: PrivateKeySigner,
    /// The engine plans are prepared with.
    pub engine: Arc<dyn Engine>,
    /// The receipts' EIP-712 domain.
    pub domain: ReceiptDomain,
    /// Price per inference in the payment token's smallest unit.
    pub price: U256,
    /// Request and queue bounds.
    pub limits: Limits,
    /// Model cache size in bytes (files on disk and plans in memory).
    pub cache_bytes: u64,
    /// Largest model file the node fetches and loads.
    pub max_model_bytes: u64,
    /// How long a model name's resolution is served before the hub is asked again (a stale
    /// one keeps serving, refreshed in the background, and while the hub is away).
    pub name_refresh: Duration,
    /// How long request/response payloads are kept beside their receipts.
    pub retention: Duration,
    /// What a committed receipt survives: the process dying (`Normal`, the default: WAL, no
    /// fsync) or the machine losing power too (`Full`: every group commit waits for the disk).
    pub receipt_durability: Durability,
    /// Where receipts are settled; `None` keeps them local (no batches).
    pub settlement: Option<batcher::SettlementConfig>,
    /// x402 payments (needs `settlement`); `None` serves without asking for payment.
    pub payments: Option<PaymentConfig>,
    /// Language models `GET /v1/models` lists (CIDs or `name@version`); any other hub model
    /// can still be called by name.
    pub llm_models: Vec<String>,
    /// Model names relayed to other OpenAI-compatible servers (receipts marked `relayed`).
    pub llm_upstreams: Vec<upstream::Upstream>,
    /// Serve language-model calls unpaid (price 0) even when the node takes payments. Relayed
    /// calls are never charged per token (the upstream's usage cannot be checked), so a paid
    /// node relays only with this set.
    pub llm_free: bool,
    /// Deliberate misbehaviour, for showing that the verification network catches it. Off
    /// unless asked for; `/v1/node` reports it.
    pub faults: Faults,
    /// The key id of the node's Oblivious HTTP gateway key ([`gateway_key`]); a new id is a
    /// new key (rotation), which the node's attestation must then bind anew.
    pub ohttp_key_id: u8,
    /// Makes the evidence `GET /v1/attestation` serves (made once at start, binding the node's
    /// key and its gateway key configuration); `None`: the route answers 404.
    pub attester: Option<Arc<dyn cairn_attest::Attester>>,
    /// Serve this evidence instead (the one the registry records: `cairn node register
    /// --evidence-out`); checked at start to bind the node's key and gateway key.
    pub evidence: Option<cairn_attest::Evidence>,
}

/// The node's Oblivious HTTP gateway key: derived from the node's own key (HKDF-SHA256 under
/// a label, then HPKE's DeriveKeyPair), so it needs no second secret to keep, and the same
/// `key_id` always gives the same key configuration, the one its attestation binds.
pub fn gateway_key(key: &PrivateKeySigner, key_id: u8) -> cairn_ohttp::GatewayKey {
    use sha2::Digest;
    // HKDF-Extract with a fixed label as salt is HMAC; SHA-256 over label, secret and id is
    // enough here: the output only seeds DeriveKeyPair, which extracts again.
    let ikm = sha2::Sha256::digest(
        [
            b"cairn.ohttp.gateway.v1\0".as_slice(),
            key.to_bytes().as_slice(),
            &[key_id],
        ]
        .concat(),
    );
    cairn_ohttp::GatewayKey::derive(key_id, &ikm)
}

/// A verifier's payload key: what nodes seal private calls' payloads to
/// ([`cairn_ohttp::sealed`]), derived from the verifier's key under its own label (so it is
/// never a gateway key), announced in `GET /v1/verifier` with the verifier's signature.
pub fn payload_key(key: &PrivateKeySigner) -> cairn_ohttp::GatewayKey {
    use sha2::Digest;
    let ikm = sha2::Sha256::digest(
        [
            b"cairn.payload-key.v1\0".as_slice(),
            key.to_bytes().as_slice(),
        ]
        .concat(),
    );
    cairn_ohttp::GatewayKey::derive(1, &ikm)
}

/// How the node is paid.
#[derive(Clone, Debug)]
pub struct PaymentConfig {
    /// Prices of particular models (a CID or name@version as configured; resolved to the CID a
    /// request runs, so a name and its CID cost the same). Others cost [`NodeConfig::price`].
    pub model_prices: Vec<(String, U256)>,
    /// What language-model calls cost, per 1,000 tokens (paid with prepaid vouchers only).
    pub llm_prices: pricing::LlmPrices,
    /// Offer the prepaid (escrow voucher) scheme beside `exact`.
    pub prepaid: bool,
    /// How often accepted vouchers are redeemed and pending settlements reconciled.
    pub redeem_every: Duration,
    /// Token units worth one transaction at the node's gas: what a `batch-settlement` channel
    /// must be charged between two deposits or refunds the node sends for it, and what a
    /// channel's count reaches before it is claimed or redeemed (sooner when its payer
    /// withdraws, or after [`cairn_x402::pacing::CLAIM_WAIT`]).
    pub gas_allowance: U256,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            model_prices: Vec::new(),
            llm_prices: pricing::LlmPrices::default(),
            prepaid: true,
            redeem_every: Duration::from_secs(30),
            gas_allowance: U256::from(cairn_x402::batch::DEFAULT_GAS_ALLOWANCE),
        }
    }
}

/// Opens the node's state (cache dir, receipt log).
pub async fn open(config: NodeConfig) -> Result<NodeState, NodeError> {
    server::open(config).await
}

/// Serves the node on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: NodeState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(cairn_serve::LingeringListener::new(listener), router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub(crate) use cairn_core::clock::now_secs;

/// CPU time the calling thread has used: what a piece of work cost, without the time its
/// thread waited for a core (on two busy cores that wait can be a hundred times the work).
/// `None` if the clock cannot be read.
pub(crate) fn thread_cpu_time() -> Option<std::time::Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is handed, which lives for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// A fresh receipt id: the time in seconds (8 bytes, big-endian) before 24 random bytes (192
/// bits: as unguessable as any id need be). The prefix says nothing the receipt's own
/// `timestamp` does not. Ids sort by the second they were made in (as bytes and as hex text),
/// so the receipt log's index on them grows within its last second's pages instead of taking
/// a random page anywhere per receipt. (Measured at 16 connections on the digits MLP, side by
/// side with random ids: the index thread's CPU about a third lower. Microseconds would halve
/// it, but would time each request far more finely than its receipt does.)
pub(crate) fn new_request_id() -> alloy_primitives::B256 {
    request_id_at(now_secs())
}

/// A receipt id made in second `secs` ([`new_request_id`]).
fn request_id_at(secs: u64) -> alloy_primitives::B256 {
    let mut id = alloy_primitives::B256::random();
    id[..8].copy_from_slice(&secs.to_be_bytes());
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn receipt_ids_sort_by_the_second_they_are_made_in() {
        let now = super::now_secs();
        let this: Vec<_> = (0..1000).map(|_| super::request_id_at(now)).collect();
        let distinct: std::collections::HashSet<_> = this.iter().collect();
        assert_eq!(distinct.len(), this.len());
        let next = super::request_id_at(now + 1);
        for id in &this {
            assert_eq!(id[..8], now.to_be_bytes());
            // As bytes and as the hex text the log keys rows by.
            assert!(*id < next);
            assert!(id.to_string() < next.to_string());
        }
        assert_eq!(
            super::new_request_id()[..8],
            super::now_secs().to_be_bytes()
        );
    }
}
