//! The node's HTTP API: KServe v2 under `/v2`, Cairn's own under `/v1`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{B256, U256};
use alloy_signer_local::PrivateKeySigner;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use cairn_core::tensor::tensors_hash;
use cairn_core::{BlobId, DataType, Tensor};
use cairn_node_api::{RECEIPT_SEAL_HEADER, SealChoice};
use cairn_onnx::{Dim, OnnxSignature};
use cairn_receipt::ReceiptJson;
use cairn_x402::Paid;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::{LoadedModel, ModelCache};
use crate::error::NodeError;
use crate::inference::{Charge, Inference, Signer, payload_token};
use crate::log::ReceiptLog;
use crate::pricing::PricedModel;
use crate::{Limits, NodeConfig};
use cairn_core::ErrorBody;
use cairn_node_api::kserve::{
    self, DecodeLimits, HEADER_LENGTH, KserveError, OutputBinary, ResponseOutput,
};
use cairn_node_api::{
    AttestationAccepted, AttestationRequest, BatchView, DomainInfo, FaultsInfo, Inclusion,
    InferParameters, InferResponse, LimitsInfo, Live, ModelMetadata, ModelPrice, ModelReady,
    NodeInfo, PaymentTerms, PrepaidChannel, Ready, ServerMetadata, SettlementInfo, StoredReceipt,
    TensorSpec, safetensors_io,
};
use utoipa::OpenApi;

mod body;
mod gateway;
mod infer;
mod meta;
mod openai;
mod prepaid;
mod receipts;

use body::*;
use infer::*;
use meta::*;
use openai::*;
use prepaid::*;
use receipts::*;

/// Shared node state.
#[derive(Clone)]
pub struct NodeState(Arc<Inner>);

/// Most refused requests held before their 503 at once: each holds a task and its connection,
/// so the hold stays cheap under any flood.
const MAX_HELD: usize = 8192;

/// Refusals per second a flood may cost the node at most (up to [`MAX_HOLD`]: ~2,000 held):
/// the hold grows with the number held so that however many connections re-send at once,
/// refusing stays a few percent of the CPU.
/// (Measured on 2 cores with 2,048 connections flooding the digits MLP: each refusal costs the
/// machine ~80–100 µs, the client's share included; at 1,000 a second the node completed
/// 0.88x its own 16-connection throughput, at 400 0.92–0.95x.)
const REFUSALS_PER_SEC: usize = 400;

/// The longest a refusal is held, whatever the flood: a client still hears within its timeout.
const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

struct Inner {
    cache: ModelCache,
    log: ReceiptLog,
    /// What `/v1/node` says about settlement (`None`: receipts stay local).
    settlement: Option<SettlementInfo>,
    chain: Option<cairn_ledger::Chain>,
    paywall: Option<Arc<cairn_x402::Paywall>>,
    /// What `/v1/node` says about payments.
    payments: Option<PaymentTerms>,
    /// Signs receipts (the node's key, the receipt domain, the payload-token key).
    signer: Arc<Signer>,
    price: U256,
    limits: Limits,
    hub_url: String,
    total: Arc<Semaphore>,
    per_model: Mutex<HashMap<BlobId, Arc<Semaphore>>>,
    workers: Arc<Semaphore>,
    /// Refused requests being held before their 503 ([`MAX_HELD`] at most).
    held: Arc<Semaphore>,
    /// Quick model calls run in place on the async workers, one per worker at most
    /// ([`in_place_slots`]).
    in_place: Arc<Semaphore>,
    body_budget: BodyBudget,
    faults: crate::Faults,
    /// Signed requests already seen, from payers and from verifiers (apart: payers cannot
    /// crowd verifiers out).
    payer_replay: cairn_core::auth::ReplayGuard,
    verifier_replay: cairn_core::auth::ReplayGuard,
    /// The registry's active verifiers (`None` without a chain).
    verifiers: Option<cairn_ledger::ActiveVerifiers>,
    /// The host of this node's registered endpoint, with when it was read.
    own_host: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Language models `GET /v1/models` lists.
    llm_models: Vec<String>,
    /// How LLM receipts are logged: `Final` (batched) once their profile is approved.
    llm_billing: crate::log::Billing,
    /// Serve language-model calls unpaid on a node that takes payments.
    llm_free: bool,
    /// What language-model calls cost (`None`: the node takes no payments).
    llm_prices: Option<crate::LlmPrices>,
    /// Language-model calls generating at once.
    llm_sessions: Arc<Semaphore>,
    /// The node's metrics (`GET /metrics`).
    metrics: crate::metrics::NodeMetrics,
    /// Model names relayed upstream, the client that relays them, and the relays in flight.
    upstreams: Vec<crate::upstream::Upstream>,
    upstream_http: reqwest::Client,
    relays: Arc<Semaphore>,
    /// The Oblivious HTTP gateway's key.
    ohttp: cairn_ohttp::GatewayKey,
    /// Evidence binding the node's key and the gateway's key configuration.
    evidence: Option<cairn_attest::Evidence>,
    /// The active verifiers' payload keys, which private calls' payloads are sealed to
    /// (`None` without a chain: private calls' payloads are not kept).
    verifier_keys: Option<crate::sealing::VerifierKeys>,
}

pub(crate) async fn open(c: NodeConfig) -> Result<NodeState, NodeError> {
    std::fs::create_dir_all(&c.data_dir)
        .map_err(|e| NodeError::Internal(format!("data dir {}: {e}", c.data_dir.display())))?;
    let hub = cairn_hub_api::HubClient::new(&c.hub_url, None)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let cache = ModelCache::new(
        c.data_dir.join("models"),
        hub,
        crate::faults::LyingEngine::wrap(c.engine, c.faults.wrong_output_rate),
        c.cache_bytes,
        c.max_model_bytes,
    )
    .with_name_refresh(c.name_refresh);
    let receipts = cairn_receipt::ReceiptSigner::new(
        cairn_core::sig::SigningKey::from_signer(&c.key),
        c.domain,
    )
    .presigned()
    .map_err(|e| NodeError::Internal(format!("starting the receipt presigner: {e}")))?;
    if receipts.presign_locked() == Some(false) {
        tracing::warn!(
            "the receipt signer's nonces could not be locked in memory (RLIMIT_MEMLOCK, `ulimit -l`); they may be written to swap, where a nonce with its signature gives the key away"
        );
    }
    let log_path = c.data_dir.join("receipts.sqlite");
    let log = ReceiptLog::open(
        &log_path,
        c.retention,
        c.receipt_durability,
        c.settlement.is_some(),
        Some(receipts.clone()),
    )
    .await?;
    log.linger(c.limits.batch_linger);
    let chain = c.settlement.as_ref().map(|cfg| cfg.chain.clone());
    let token_key = alloy_primitives::keccak256(
        [
            b"cairn.payload-token.v1".as_slice(),
            c.key.to_bytes().as_slice(),
        ]
        .concat(),
    );
    let llm_prices = c.payments.as_ref().map(|p| p.llm_prices.clone());
    let (paywall, payments, payment_store) = match (&chain, c.payments) {
        (Some(chain), Some(pc)) => {
            let kept = Arc::new(KeptFromLog {
                log: log.clone(),
                token_key,
            });
            let store = cairn_x402::PaymentStore::open(
                &c.data_dir.join("payments.sqlite"),
                c.receipt_durability,
            )
            .map_err(|e| NodeError::ChainUnavailable(format!("payments: {e}")))?;
            let (p, info, store) =
                open_paywall(store, chain, &c.key, &cache, c.price, pc, kept).await?;
            (Some(p), Some(info), Some(store))
        }
        (None, Some(_)) => {
            return Err(NodeError::Internal(
                "payments need a settlement chain (--rpc/--deployment, or the devnet)".into(),
            ));
        }
        _ => (None, None, None),
    };
    // Language-model receipts are batched once the network can check them: their profile
    // approved (a batch holding a receipt on an unapproved profile is refused whole).
    let llm_billing = match &chain {
        Some(ch) => {
            let approved = ch
                .profile_approved(crate::llm::profile().hash())
                .await
                .map_err(|e| NodeError::ChainUnavailable(format!("reading profiles: {e}")))?;
            if approved {
                crate::log::Billing::Final
            } else {
                tracing::warn!(profile = %crate::llm::profile(), "the language-model profile is not approved on this chain: LLM receipts are kept but not settled");
                crate::log::Billing::Local
            }
        }
        None => crate::log::Billing::Final,
    };
    let llm_prices = llm_prices.filter(|_| paywall.is_some());
    let settlement = start_settler(c.settlement, &c.domain, &c.key, &log, payment_store)?;
    let verifiers = chain.clone().map(cairn_ledger::ActiveVerifiers::new);
    let ohttp = crate::gateway_key(&c.key, c.ohttp_key_id);
    let evidence = match (c.evidence, &c.attester) {
        (Some(e), _) => {
            cairn_relay::client::check_key(
                ohttp.config(),
                c.key.address(),
                &e,
                None,
                crate::now_secs(),
                cairn_attest::Policy { allow_dev: true },
            )
            .map_err(|e| {
                NodeError::Internal(format!(
                    "the evidence given does not bind this node's key and gateway key ({e}); register again (cairn node register --evidence-out) with the same --ohttp-key-id"
                ))
            })?;
            Some(e)
        }
        (None, Some(a)) => Some(
            a.evidence(&cairn_attest::report_data(
                c.key.address(),
                Some(ohttp.config().encoded()),
            ))
            .map_err(|e| NodeError::Internal(format!("the node's evidence: {e}")))?,
        ),
        (None, None) => None,
    };
    let verifier_keys = chain
        .clone()
        .map(|chain| crate::sealing::VerifierKeys::new(chain, c.key.address()));
    let cache_lookups = cache.lookups();
    let total = Arc::new(Semaphore::new(c.limits.queue_total));
    {
        // More than one request admitted: busy.
        let (total, all) = (Arc::downgrade(&total), c.limits.queue_total);
        log.gather(move || {
            total
                .upgrade()
                .is_some_and(|t| t.available_permits() + 1 < all)
        })?;
    }
    Ok(NodeState(Arc::new(Inner {
        ohttp,
        evidence,
        verifier_keys,
        cache,
        log,
        settlement,
        chain,
        paywall,
        payments,
        signer: Arc::new(Signer {
            receipts,
            token_key,
            max_output_bytes: c.limits.max_output_bytes,
        }),
        price: c.price,
        limits: c.limits,
        hub_url: c.hub_url,
        total,
        per_model: Mutex::new(HashMap::new()),
        workers: Arc::new(Semaphore::new(c.limits.workers.max(1))),
        held: Arc::new(Semaphore::new(MAX_HELD)),
        in_place: Arc::new(Semaphore::new(in_place_slots())),
        body_budget: BodyBudget::new(c.limits.body_budget_bytes),
        faults: c.faults,
        payer_replay: cairn_core::auth::ReplayGuard::new(10_000, 100_000),
        verifier_replay: cairn_core::auth::ReplayGuard::new(100_000, 1_000),
        verifiers,
        own_host: tokio::sync::Mutex::new(None),
        llm_models: c.llm_models,
        llm_billing,
        llm_free: c.llm_free,
        llm_prices,
        metrics: crate::metrics::NodeMetrics::new(cache_lookups),
        llm_sessions: Arc::new(Semaphore::new(c.limits.llm_sessions.max(1))),
        upstreams: c.llm_upstreams,
        // Connecting is quick or never; an answer may take minutes (a whole one arrives at
        // its end), but a stream that goes quiet for 2 minutes is dead.
        // No redirects: an upstream must not point the node at another address.
        upstream_http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NodeError::Internal(format!("upstream client: {e}")))?,
        relays: Arc::new(Semaphore::new(crate::upstream::MAX_RELAYS)),
    })))
}

/// Checks that receipts are signed for the settlement contract and starts the settler.
fn start_settler(
    settlement: Option<crate::batcher::SettlementConfig>,
    domain: &cairn_receipt::ReceiptDomain,
    key: &PrivateKeySigner,
    log: &ReceiptLog,
    payment_store: Option<cairn_x402::PaymentStore>,
) -> Result<Option<SettlementInfo>, NodeError> {
    Ok(match settlement {
        Some(cfg) => {
            let d = cfg.chain.deployment();
            if domain.chain_id != d.chain_id || domain.verifying_contract != d.settlement {
                return Err(NodeError::Internal(format!(
                    "receipt domain (chain {}, contract {}) is not the settlement contract (chain {}, {})",
                    domain.chain_id, domain.verifying_contract, d.chain_id, d.settlement
                )));
            }
            let info = SettlementInfo {
                ledger: cfg.chain.ledger().describe(),
                deployment: d.clone(),
                batch_max_receipts: cfg.policy.max_receipts,
                batch_max_age_secs: cfg.policy.max_age.as_secs(),
            };
            let settler =
                crate::batcher::Settler::open(cfg, key.clone(), log.clone(), payment_store);
            tokio::spawn(settler.run());
            Some(info)
        }
        None => None,
    })
}

/// Smallest gasless deposit the node relays (it pays the gas): ten inferences, at least 1.
fn min_deposit(price: U256) -> U256 {
    (price * U256::from(10)).max(U256::from(1))
}

/// The paywall in front of inference: `exact` through the in-process facilitator (the node's
/// key pays the gas), `prepaid` vouchers to the node's payment vault.
async fn open_paywall(
    store: cairn_x402::PaymentStore,
    chain: &cairn_ledger::Chain,
    key: &PrivateKeySigner,
    cache: &ModelCache,
    default_price: U256,
    pc: crate::PaymentConfig,
    kept: Arc<KeptFromLog>,
) -> Result<
    (
        Arc<cairn_x402::Paywall>,
        PaymentTerms,
        cairn_x402::PaymentStore,
    ),
    NodeError,
> {
    let x = |e: cairn_x402::X402Error| NodeError::ChainUnavailable(format!("payments: {e}"));
    let facilitator = Arc::new(
        cairn_x402::Facilitator::new(chain.clone(), key.clone(), store.clone())
            .await
            .map_err(x)?,
    );
    let vault = chain
        .vault_of(key.address())
        .await
        .map_err(|e| NodeError::ChainUnavailable(format!("reading the payment vault: {e}")))?;
    let prepaid = pc.prepaid.then(|| {
        Arc::new(
            cairn_x402::prepaid::Prepaid::new(chain.clone(), store.clone(), key.clone(), vault)
                .with_gas_allowance(pc.gas_allowance),
        )
    });
    // The x402 batch-settlement channels, wherever the chain has their contracts.
    let batch = cairn_x402::batch::Batch::new(chain.clone(), store.clone(), key.clone(), vault)
        .await
        .map_err(x)?
        .map(|b| Arc::new(b.with_gas_allowance(pc.gas_allowance)));
    tokio::spawn(facilitator.clone().reconcile_loop(pc.redeem_every));
    if let Some(p) = &prepaid {
        tokio::spawn(p.clone().run(pc.redeem_every));
    }
    if let Some(b) = &batch {
        tokio::spawn(b.clone().run(pc.redeem_every));
    }
    let pricing = Arc::new(crate::pricing::ModelPricing {
        cache: cache.clone(),
        default: default_price,
        models: pc.model_prices.clone(),
    });
    let info = payment_terms(
        chain,
        &facilitator,
        vault,
        prepaid.is_some(),
        &pc,
        default_price,
    );
    let mut paywall =
        cairn_x402::Paywall::new(facilitator, prepaid, pricing, vault).with_kept_answers(kept);
    if let Some(b) = batch {
        paywall = paywall.with_batch(b);
    }
    Ok((Arc::new(paywall), info, store))
}

/// What the node's 402 answers and `/v1/payments` tell a payer.
fn payment_terms(
    chain: &cairn_ledger::Chain,
    facilitator: &cairn_x402::Facilitator,
    vault: alloy_primitives::Address,
    prepaid: bool,
    pc: &crate::PaymentConfig,
    default_price: U256,
) -> PaymentTerms {
    let d = chain.deployment();
    let schemes = [
        (prepaid, "prepaid"),
        (true, "exact"),
        (d.upto.is_some(), cairn_x402::upto::SCHEME),
        (d.batch.is_some(), cairn_x402::batch::SCHEME),
    ];
    PaymentTerms {
        pay_to: vault,
        asset: chain.deployment().token,
        network: cairn_x402::wire::caip2(chain.deployment().chain_id),
        schemes: schemes
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| s.to_string())
            .collect(),
        escrow: chain.deployment().escrow,
        token_name: facilitator
            .token_domain()
            .name
            .as_deref()
            .unwrap_or_default()
            .into(),
        token_version: facilitator
            .token_domain()
            .version
            .as_deref()
            .unwrap_or_default()
            .into(),
        min_deposit: min_deposit(default_price),
        default_price,
        model_prices: pc
            .model_prices
            .iter()
            .map(|(m, p)| ModelPrice {
                model: m.clone(),
                price: *p,
            })
            .collect(),
        llm_prices: pc
            .llm_prices
            .default
            .iter()
            .map(|p| ("*".to_string(), p))
            .chain(pc.llm_prices.models.iter().map(|(m, p)| (m.clone(), p)))
            .map(|(model, p)| cairn_node_api::LlmPrice {
                model,
                prompt_per_1k: p.prompt_per_1k,
                completion_per_1k: p.completion_per_1k,
            })
            .collect(),
        redeem_every_secs: pc.redeem_every.as_secs(),
    }
}

impl NodeState {
    /// The node's address (the receipts' signer).
    pub fn address(&self) -> alloy_primitives::Address {
        self.0.signer.receipts.address()
    }

    /// The engine's profile.
    pub fn profile(&self) -> &cairn_core::ExecutionProfile {
        self.0.cache.engine().profile()
    }
}

/// The node's routes.
pub fn router(state: NodeState) -> Router {
    let routes = routes(state.clone());
    routes.clone().merge(gateway::routes(state, routes))
}

/// Every route but the gateway's (whose requests are served by these).
fn routes(state: NodeState) -> Router {
    let mut paid = Router::new()
        .route("/v2/models/{model}/infer", post(infer).get(infer_get))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_versioned).get(infer_get_versioned),
        );
    if let Some(p) = &state.0.paywall {
        paid = paid.route_layer(axum::middleware::from_fn_with_state(
            p.clone(),
            cairn_x402::paywall::middleware,
        ));
    }
    Router::new()
        .merge(paid)
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_versioned),
        )
        .route("/v1/prepaid/{payer}", get(prepaid_channel))
        .route("/v1/prepaid/deposits", post(prepaid_deposit))
        .route("/v1/node", get(node_info))
        .route("/v1/attestation", get(attestation))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/receipts/{id}", get(receipt))
        .route("/v1/batches/{id}", get(batch))
        .route("/v1/batches/{id}/attestations", post(add_attestation))
        .route("/v1/receipts/{id}/input", get(receipt_input))
        .route("/v1/receipts/{id}/output", get(receipt_output))
        .route("/metrics", get(metrics))
        .fallback(|| async { NodeError::NotFound("no such endpoint; see /openapi.json".into()) })
        .with_state(state.clone())
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_refusals,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.0.metrics.http.clone(),
            cairn_serve::metrics::track,
        ))
}

/// Counts the paywall's 402s by their code (the paywall marks each; paid routes and the
/// language-model routes alike).
async fn count_refusals(
    State(s): State<NodeState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    if let Some(r) = resp
        .extensions()
        .get::<cairn_x402::paywall::PaymentRefused>()
    {
        s.0.metrics.refused(r.code);
    }
    resp
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text). Unauthenticated and cheap: counters
/// kept as calls are answered, the queues read, and batches by state recounted at most every
/// 15 s.
#[utoipa::path(get, path = "/metrics", tag = "node",
    description = "Prometheus metrics (OpenMetrics text): requests by route template, method and status; calls by model, engine and kind; tokens; receipts; receipt signatures by nonce; payments accepted by scheme and refused by code; model cache lookups by source; queues; batches by state.",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics(State(s): State<NodeState>) -> Response {
    let i = &s.0;
    let in_use = |cap: usize, sem: &Semaphore| cap.saturating_sub(sem.available_permits());
    i.metrics.set_load(
        in_use(i.limits.queue_total, &i.total),
        in_use(i.limits.workers.max(1), &i.workers),
        in_use(i.limits.llm_sessions.max(1), &i.llm_sessions),
    );
    if let Some((presigned, rfc6979)) = i.signer.receipts.presign_counts() {
        i.metrics.set_nonces(presigned, rfc6979);
    }
    if let Ok(counts) = i.metrics.batch_counts.get(|| i.log.batch_counts()).await {
        i.metrics.set_batches(&counts);
    }
    i.metrics.http.response()
}

/// The OpenAPI description of the node's routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cairn inference node",
        description = "KServe v2 inference under `/v2` with an EIP-712 receipt for every call; Cairn's own routes \
        under `/v1`. Every error is JSON {code, message} (plus `error` for KServe clients)."
    ),
    paths(
        metrics,
        server_metadata,
        attestation,
        live,
        ready,
        model_metadata,
        model_metadata_versioned,
        model_ready,
        infer,
        infer_versioned,
        infer_get,
        infer_get_versioned,
        node_info,
        receipt,
        receipt_input,
        receipt_output,
        batch,
        add_attestation,
        prepaid_channel,
        prepaid_deposit,
        chat_completions,
        completions,
        models
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// Quick model calls that may run in place at once: one per async worker. A quick call takes
/// about as long as parsing its request, and in place it saves the thread handoff
/// `block_in_place` makes (digits MLP at 16 connections, `scripts/bench-node.sh`: 3.5x the
/// peer's answers per second with two slots on two workers, 3.0x with one). A call misjudged
/// as quick holds its worker once: its time is recorded, and the next call of its size is not
/// quick.
fn in_place_slots() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod docs_tests {
    use utoipa::OpenApi;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        cairn_core::api::assert_routes_documented(
            include_str!("mod.rs"),
            &super::ApiDoc::openapi(),
        );
    }
}
