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
use cairn_engine::EngineError;
use cairn_onnx::{Dim, OnnxSignature};
use cairn_receipt::{Claims, ReceiptDomain};
use cairn_x402::Paid;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::{LoadedModel, ModelCache};
use crate::error::NodeError;
use crate::log::{Billing, Entry, ReceiptLog};
use crate::{Limits, NodeConfig, now_secs};
use cairn_core::ErrorBody;
use cairn_node_api::kserve::{self, DecodeLimits, HEADER_LENGTH, OutputBinary, ResponseOutput};
use cairn_node_api::{
    AttestationAccepted, AttestationRequest, BatchView, DomainInfo, FaultsInfo, Inclusion,
    InferParameters, InferResponse, LimitsInfo, Live, ModelMetadata, ModelPrice, ModelReady,
    NodeInfo, PaymentTerms, PrepaidChannel, Ready, ServerMetadata, SettlementInfo, StoredReceipt,
    TensorSpec, safetensors_io,
};
use utoipa::OpenApi;

/// Shared node state.
#[derive(Clone)]
pub struct NodeState(Arc<Inner>);

struct Inner {
    cache: ModelCache,
    log: ReceiptLog,
    /// What `/v1/node` says about settlement (`None`: receipts stay local).
    settlement: Option<SettlementInfo>,
    chain: Option<cairn_ledger::Chain>,
    paywall: Option<Arc<cairn_x402::Paywall>>,
    /// What `/v1/node` says about payments.
    payments: Option<PaymentTerms>,
    key: PrivateKeySigner,
    domain: ReceiptDomain,
    price: U256,
    limits: Limits,
    hub_url: String,
    total: Arc<Semaphore>,
    per_model: Mutex<HashMap<BlobId, Arc<Semaphore>>>,
    workers: Arc<Semaphore>,
    body_budget: BodyBudget,
    faults: crate::Faults,
    /// Keys the capability tokens that let a caller read its own payloads.
    token_key: B256,
    /// Signed requests already seen, from payers and from verifiers (apart: payers cannot
    /// crowd verifiers out).
    payer_replay: cairn_core::auth::ReplayGuard,
    verifier_replay: cairn_core::auth::ReplayGuard,
    /// The registry's active verifiers (`None` without a chain).
    verifiers: Option<cairn_ledger::ActiveVerifiers>,
    /// The host of this node's registered endpoint, with when it was read.
    own_host: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
}

pub(crate) async fn open(c: NodeConfig) -> Result<NodeState, NodeError> {
    std::fs::create_dir_all(&c.data_dir)
        .map_err(|e| NodeError::Internal(format!("data dir {}: {e}", c.data_dir.display())))?;
    let hub = cairn_hub_api::HubClient::new(&c.hub_url, None)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let cache = ModelCache::new(
        c.data_dir.join("models"),
        hub,
        c.engine,
        c.cache_bytes,
        c.max_model_bytes,
    );
    let log_path = c.data_dir.join("receipts.sqlite");
    let log = ReceiptLog::open(
        &log_path,
        c.retention,
        c.fsync_receipts,
        c.settlement.is_some(),
    )
    .await?;
    let chain = c.settlement.as_ref().map(|cfg| cfg.chain.clone());
    let token_key = alloy_primitives::keccak256(
        [
            b"cairn.payload-token.v1".as_slice(),
            c.key.to_bytes().as_slice(),
        ]
        .concat(),
    );
    let (paywall, payments, payment_store) = match (&chain, c.payments) {
        (Some(chain), Some(pc)) => {
            let kept = Arc::new(KeptFromLog {
                log: log.clone(),
                token_key,
            });
            let (p, info, store) =
                open_paywall(&c.data_dir, chain, &c.key, &cache, c.price, pc, kept).await?;
            (Some(p), Some(info), Some(store))
        }
        (None, Some(_)) => {
            return Err(NodeError::Internal(
                "payments need a settlement chain (--rpc/--deployment, or the devnet)".into(),
            ));
        }
        _ => (None, None, None),
    };
    let settlement = match c.settlement {
        Some(cfg) => {
            let d = cfg.chain.deployment();
            if c.domain.chain_id != d.chain_id || c.domain.verifying_contract != d.settlement {
                return Err(NodeError::Internal(format!(
                    "receipt domain (chain {}, contract {}) is not the settlement contract (chain {}, {})",
                    c.domain.chain_id, c.domain.verifying_contract, d.chain_id, d.settlement
                )));
            }
            let info = SettlementInfo {
                ledger: cfg.chain.ledger().describe(),
                deployment: d.clone(),
                batch_max_receipts: cfg.policy.max_receipts,
                batch_max_age_secs: cfg.policy.max_age.as_secs(),
            };
            let settler = crate::batcher::Settler::open(
                &log_path,
                cfg,
                c.key.clone(),
                log.clone(),
                payment_store,
            )?;
            tokio::spawn(settler.run());
            Some(info)
        }
        None => None,
    };
    let verifiers = chain.clone().map(cairn_ledger::ActiveVerifiers::new);
    Ok(NodeState(Arc::new(Inner {
        cache,
        log,
        settlement,
        chain,
        paywall,
        payments,
        key: c.key,
        domain: c.domain,
        price: c.price,
        limits: c.limits,
        hub_url: c.hub_url,
        total: Arc::new(Semaphore::new(c.limits.queue_total)),
        per_model: Mutex::new(HashMap::new()),
        workers: Arc::new(Semaphore::new(c.limits.workers.max(1))),
        body_budget: BodyBudget::new(c.limits.body_budget_bytes),
        faults: c.faults,
        token_key,
        payer_replay: cairn_core::auth::ReplayGuard::new(10_000, 100_000),
        verifier_replay: cairn_core::auth::ReplayGuard::new(100_000, 1_000),
        verifiers,
        own_host: tokio::sync::Mutex::new(None),
    })))
}

/// Smallest gasless deposit the node relays (it pays the gas): ten inferences, at least 1.
fn min_deposit(price: U256) -> U256 {
    (price * U256::from(10)).max(U256::from(1))
}

/// The paywall in front of inference: `exact` through the in-process facilitator (the node's
/// key pays the gas), `prepaid` vouchers to the node's payment vault.
async fn open_paywall(
    data_dir: &std::path::Path,
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
    let store = cairn_x402::PaymentStore::open(&data_dir.join("payments.sqlite")).map_err(x)?;
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
        Arc::new(cairn_x402::prepaid::Prepaid::new(
            chain.clone(),
            store.clone(),
            key.clone(),
            vault,
        ))
    });
    tokio::spawn(facilitator.clone().reconcile_loop(pc.redeem_every));
    if let Some(p) = &prepaid {
        tokio::spawn(p.clone().run(pc.redeem_every));
    }
    let pricing = Arc::new(crate::pricing::ModelPricing {
        cache: cache.clone(),
        default: default_price,
        models: pc.model_prices.clone(),
    });
    let schemes: &[&str] = if prepaid.is_some() {
        &["prepaid", "exact"]
    } else {
        &["exact"]
    };
    let info = PaymentTerms {
        pay_to: vault,
        asset: chain.deployment().token,
        network: cairn_x402::wire::caip2(chain.deployment().chain_id),
        schemes: schemes.iter().map(|s| s.to_string()).collect(),
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
        redeem_every_secs: pc.redeem_every.as_secs(),
    };
    let paywall =
        cairn_x402::Paywall::new(facilitator, prepaid, pricing, vault).with_kept_answers(kept);
    Ok((Arc::new(paywall), info, store))
}

impl NodeState {
    /// The node's address (the receipts' signer).
    pub fn address(&self) -> alloy_primitives::Address {
        self.0.key.address()
    }

    /// The engine's profile.
    pub fn profile(&self) -> &cairn_core::ExecutionProfile {
        self.0.cache.engine().profile()
    }
}

/// The node's routes.
pub fn router(state: NodeState) -> Router {
    let mut paid = Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_versioned),
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
        .route("/v1/receipts/{id}", get(receipt))
        .route("/v1/batches/{id}", get(batch))
        .route("/v1/batches/{id}/attestations", post(add_attestation))
        .route("/v1/receipts/{id}/input", get(receipt_input))
        .route("/v1/receipts/{id}/output", get(receipt_output))
        .fallback(|| async { NodeError::NotFound("no such endpoint; see /openapi.json".into()) })
        .with_state(state)
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
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
        server_metadata,
        live,
        ready,
        model_metadata,
        model_metadata_versioned,
        model_ready,
        infer,
        infer_versioned,
        node_info,
        receipt,
        receipt_input,
        receipt_output,
        batch,
        add_attestation,
        prepaid_channel,
        prepaid_deposit
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/v2", tag = "kserve", responses((status = 200, body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "cairn".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })
}

#[utoipa::path(get, path = "/v2/health/live", tag = "kserve", responses((status = 200, body = Live)))]
async fn live() -> Json<Live> {
    Json(Live { live: true })
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "kserve", responses((status = 200, body = Ready)))]
async fn ready() -> Json<Ready> {
    Json(Ready { ready: true })
}

#[utoipa::path(get, path = "/v1/node", tag = "node", responses((status = 200, body = NodeInfo)))]
async fn node_info(State(s): State<NodeState>) -> Result<Json<NodeInfo>, NodeError> {
    let i = &s.0;
    let profile = i.cache.engine().profile();
    Ok(Json(NodeInfo {
        address: i.key.address(),
        profile: profile.clone(),
        reproducibility: profile.reproducibility(),
        profile_hash: profile.hash(),
        domain: DomainInfo {
            name: "Cairn".into(),
            version: "1".into(),
            chain_id: i.domain.chain_id,
            verifying_contract: i.domain.verifying_contract,
        },
        hub: i.hub_url.clone(),
        price: i.price,
        settlement: i.settlement.clone(),
        payments: i.payments.clone(),
        faults: i.faults.any().then(|| FaultsInfo {
            wrong_output_rate: i.faults.wrong_output_rate,
            withhold_payloads: i.faults.withhold_payloads,
            payload_outage_secs: i.faults.payload_outage.as_secs(),
        }),
        models_loaded: i.cache.loaded(),
        receipts: i.log.count().await?,
        limits: LimitsInfo {
            max_body_bytes: i.limits.max_body_bytes,
            max_elements: i.limits.max_elements,
            timeout_ms: i.limits.timeout.as_millis() as u64,
            queue_per_model: i.limits.queue_per_model,
            queue_total: i.limits.queue_total,
            workers: i.limits.workers,
        },
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

fn onnx_datatype(elem: Option<&str>) -> Option<DataType> {
    elem.and_then(DataType::from_onnx_name)
}

fn describe(values: &[cairn_onnx::ValueInfo]) -> Vec<TensorSpec> {
    values
        .iter()
        .map(|v| {
            let shape: Vec<i64> = v
                .shape
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    _ => -1,
                })
                .collect();
            TensorSpec {
                name: v.name.clone(),
                datatype: onnx_datatype(v.elem_type.as_deref())
                    .map_or(v.type_name.as_str(), |d| d.name())
                    .into(),
                shape,
            }
        })
        .collect()
}

/// Model metadata from the loaded model or the signature the hub recorded: a free route never
/// makes the node download anything.
async fn metadata(s: &NodeState, reference: &str) -> Result<Json<ModelMetadata>, NodeError> {
    let r = s.0.cache.resolve(reference).await?;
    let loaded = s.0.cache.loaded_model(&r.cid).await;
    let signature = match (&loaded, &r.signature) {
        (Some(m), _) => &m.signature,
        (None, Some(sig)) => sig,
        (None, None) => {
            return Err(NodeError::ModelNotFound(format!(
                "{} is not loaded on this node; ask by name@version for the hub's description, or run it once",
                r.cid
            )));
        }
    };
    Ok(Json(ModelMetadata {
        name: reference.into(),
        versions: r.version.map(|v| vec![v.to_string()]).unwrap_or_default(),
        platform: "onnx".into(),
        cid: r.cid,
        inputs: describe(&signature.inputs),
        outputs: describe(&signature.outputs),
    }))
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "kserve",
    params(("model" = String, Path, description = "a CID or `name@version`")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_metadata(
    State(s): State<NodeState>,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, NodeError> {
    metadata(&s, &model).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "kserve",
    params(("model" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
async fn model_metadata_versioned(
    State(s): State<NodeState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, NodeError> {
    metadata(&s, &format!("{model}@{version}")).await
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "kserve",
    params(("model" = String, Path)),
    responses((status = 200, body = ModelReady), (status = 400, description = "not loaded yet", body = ErrorBody)))]
async fn model_ready(
    State(s): State<NodeState>,
    Path(model): Path<String>,
) -> Result<Json<ModelReady>, NodeError> {
    // Ready means loaded: asking never loads (that is what a paid inference does).
    let r = s.0.cache.resolve(&model).await?;
    // Ready: loaded, or a published model the hub describes (it loads on its first paid
    // inference). A bare CID not loaded yet is not: asking never downloads anything.
    if r.signature.is_none() && s.0.cache.loaded_model(&r.cid).await.is_none() {
        // KServe v2: a 4xx status says "not ready".
        return Err(NodeError::BadRequest(format!(
            "{model} is not loaded on this node yet; it loads on its first inference"
        )));
    }
    Ok(Json(ModelReady {
        name: model,
        ready: true,
    }))
}

#[utoipa::path(get, path = "/v1/receipts/{id}", tag = "node",
    params(("id" = String, Path, description = "the receipt's request id, hex")),
    responses((status = 200, body = StoredReceipt), (status = 404, body = ErrorBody)))]
async fn receipt(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<Json<StoredReceipt>, NodeError> {
    let stored =
        s.0.log
            .get(&id.to_ascii_lowercase())
            .await?
            .ok_or_else(|| NodeError::ReceiptNotFound(format!("no receipt `{id}` on this node")))?;
    let receipt = cairn_receipt::ReceiptJson::from_text(stored.receipt)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let batch = stored.batch.map(|b| Inclusion {
        id: b.chain_batch,
        status: b.status,
        root: B256::from(b.root),
        proof: b.proof.iter().map(|p| B256::from(*p)).collect(),
        tx: b.tx.map(B256::from),
        leaf: cairn_node_api::LEAF_RULE.into(),
    });
    Ok(Json(StoredReceipt {
        receipt,
        created_at: stored.created_at,
        payloads_kept: stored.payloads,
        batch,
    }))
}

/// A verifier hands in its signature over one of this node's batches; the node puts a quorum
/// of them on chain.
#[utoipa::path(post, path = "/v1/batches/{id}/attestations", tag = "node",
    params(("id" = u64, Path, description = "the batch's id on chain")),
    request_body = AttestationRequest,
    responses((status = 200, body = AttestationAccepted), (status = 403, description = "not an active verifier", body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_attestation(
    State(s): State<NodeState>,
    Path(id): Path<u64>,
    body: axum::body::Bytes,
) -> Result<Json<AttestationAccepted>, NodeError> {
    let chain = s.0.chain.as_ref().ok_or_else(|| {
        NodeError::NotFound("this node does not settle receipts on a chain".into())
    })?;
    let body: AttestationRequest = serde_json::from_slice(&body)
        .map_err(|e| NodeError::BadRequest(format!("expected {{\"signature\": \"0x…\"}}: {e}")))?;
    let bytes = alloy_primitives::hex::decode(body.signature.trim_start_matches("0x"))
        .map_err(|e| NodeError::BadRequest(format!("signature is not hex: {e}")))?;
    let signature = alloy_primitives::Signature::try_from(bytes.as_slice())
        .map_err(|e| NodeError::BadRequest(format!("not a 65-byte signature: {e}")))?;
    // The contract refuses high-s signatures: storing one would let anyone swap a verifier's
    // good signature for its twin and block the batch's attestation.
    if !cairn_core::sig::is_low_s(&signature) {
        return Err(NodeError::SignatureNotCanonical(
            "the signature's s is in the upper half of the curve order; send the low-s form".into(),
        ));
    }
    let batch = chain
        .batch(id)
        .await
        .map_err(|e| NodeError::ChainUnavailable(e.to_string()))?;
    if batch.status == cairn_ledger::BatchStatus::Unknown {
        return Err(NodeError::ReceiptNotFound(format!(
            "no batch {id} on chain"
        )));
    }
    if batch.node != s.address() {
        return Err(NodeError::BadRequest(format!(
            "batch {id} belongs to {}, not this node",
            batch.node
        )));
    }
    let signer = chain
        .attestation_signer(&batch, &signature)
        .map_err(|e| NodeError::NotAVerifier(e.to_string()))?;
    let active = match &s.0.verifiers {
        Some(v) => v
            .contains(signer)
            .await
            .map_err(|e| NodeError::ChainUnavailable(e.to_string()))?,
        None => false,
    };
    if !active {
        return Err(NodeError::NotAVerifier(format!(
            "the signature recovers to {signer}, which is not an active verifier for batch {id} \
             (a signature over other batch fields recovers to a stranger)"
        )));
    }
    // A signer's first valid signature stays: a later one (even a valid one) never replaces it.
    let collected =
        s.0.log
            .add_attestation(id, signer.0.0, signature.as_bytes().to_vec())
            .await?;
    Ok(Json(AttestationAccepted {
        batch: id,
        signer,
        collected,
    }))
}

#[utoipa::path(get, path = "/v1/batches/{id}", tag = "node",
    params(("id" = u64, Path, description = "the batch's id on chain")),
    responses((status = 200, body = BatchView), (status = 404, body = ErrorBody)))]
async fn batch(
    State(s): State<NodeState>,
    Path(id): Path<u64>,
) -> Result<Json<BatchView>, NodeError> {
    let b = s.0.log.batch_receipts(id).await?.ok_or_else(|| {
        NodeError::ReceiptNotFound(format!("no submitted batch {id} from this node"))
    })?;
    let receipts = b
        .receipts
        .into_iter()
        .map(cairn_receipt::ReceiptJson::from_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    Ok(Json(BatchView {
        id: b.chain_batch,
        root: B256::from(b.root),
        count: b.count,
        fees: b.fees,
        status: b.status,
        tx: b.tx.map(B256::from),
        receipts,
    }))
}

/// The capability token that lets whoever holds it read receipt `id`'s payloads (handed to the
/// caller with the response).
fn payload_token(key: &B256, id: B256) -> B256 {
    alloy_primitives::keccak256([key.as_slice(), id.as_slice()].concat())
}

pub use cairn_node_api::PAYLOAD_TOKEN_HEADER;

impl NodeState {
    /// The host signed requests to this node must name: its registered endpoint's (a request
    /// signed for another node and relayed here is refused); the request's own `Host` while the
    /// node is not registered on a chain.
    async fn signed_host(&self, parts: &axum::http::request::Parts) -> String {
        if let Some(chain) = &self.0.chain {
            let mut cached = self.0.own_host.lock().await;
            let stale = cached
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= Duration::from_secs(60));
            if stale
                && let Ok(n) = chain.node(self.address()).await
                && let Some((host, _)) = cairn_core::auth::host_and_target(&n.endpoint)
            {
                *cached = Some((host, std::time::Instant::now()));
            }
            if let Some((host, _)) = cached.as_ref() {
                return host.clone();
            }
        }
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_ascii_lowercase()
    }

    /// Who may read receipt `id`'s payloads: the holder of its capability token, its payer and
    /// active verifiers (signed requests). Anyone else learns nothing, not even whether it
    /// exists.
    async fn authorize_payload(
        &self,
        id: B256,
        payer: Option<[u8; 20]>,
        parts: &axum::http::request::Parts,
    ) -> Result<(), NodeError> {
        let token = parts
            .headers
            .get(PAYLOAD_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                parts
                    .uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            });
        if let Some(t) = token {
            // Compared in constant time: how far a guess matches must not show in the timing.
            let want = payload_token(&self.0.token_key, id);
            if t.parse::<B256>().is_ok_and(|got| {
                subtle::ConstantTimeEq::ct_eq(got.as_slice(), want.as_slice()).into()
            }) {
                return Ok(());
            }
            return Err(NodeError::Forbidden(
                "this payload token is not the one issued with the receipt".into(),
            ));
        }
        let host = self.signed_host(parts).await;
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let unauthorized = |e: cairn_core::auth::AuthError| {
            NodeError::Unauthorized(format!(
                "payloads go only to the caller who paid (its payload token, or a request signed by the payer) and to active verifiers (signed requests): {e}"
            ))
        };
        let (headers, signer) = cairn_core::auth::verify_request(
            |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
            &host,
            parts.method.as_str(),
            target,
            b"",
        )
        .map_err(unauthorized)?;
        // Who it is first, replay second: strangers never reach (or fill) the replay guards.
        let guard = if payer == Some(signer.0.0) {
            &self.0.payer_replay
        } else {
            let known = match &self.0.verifiers {
                Some(v) => v
                    .contains(signer)
                    .await
                    .map_err(|e| NodeError::ChainUnavailable(e.to_string()))?,
                None => false,
            };
            if !known {
                return Err(NodeError::Forbidden(format!(
                    "{signer} neither paid for this receipt nor is an active verifier"
                )));
            }
            &self.0.verifier_replay
        };
        guard
            .check(&headers, cairn_core::auth::unix_now())
            .map_err(unauthorized)
    }
}

async fn payload(
    s: &NodeState,
    id: &str,
    output: bool,
    parts: &axum::http::request::Parts,
) -> Result<Response, NodeError> {
    let hidden = || {
        NodeError::ReceiptNotFound(format!(
            "no retrievable payload for receipt `{id}` (unknown, unpaid, or past retention)"
        ))
    };
    let rid: B256 = id.parse().map_err(|_| hidden())?;
    let key = rid.to_string();
    let stored = s.0.log.get(&key).await?;
    // Authorize before saying anything about the receipt.
    s.authorize_payload(rid, stored.as_ref().and_then(|r| r.payer), parts)
        .await?;
    let stored = stored.ok_or_else(hidden)?;
    if s.0.faults.withhold_payloads
        || s.0
            .faults
            .in_outage(stored.batch.as_ref().map(|b| b.sealed_at))
    {
        return Err(NodeError::Overloaded(
            "payloads are not available right now; retry later".into(),
        ));
    }
    let bytes = s.0.log.payload(&key, output).await?.ok_or_else(hidden)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// A uniform draw in [0, 1).
fn unit_random() -> f64 {
    let r = B256::random();
    let mut b = [0u8; 8];
    b.copy_from_slice(&r[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Flips the lowest bit of the last output's first byte (the `wrong_output_rate` fault).
fn corrupt_last_output(outputs: &mut [Tensor]) {
    if let Some(t) = outputs.last_mut()
        && !t.data().is_empty()
    {
        let mut data = t.data().to_vec();
        data[0] ^= 1;
        if let Ok(altered) = Tensor::new(t.name(), t.dtype(), t.shape().to_vec(), data) {
            *t = altered;
        }
    }
}

#[utoipa::path(get, path = "/v1/receipts/{id}/input", tag = "node",
    params(("id" = String, Path)),
    description = "The inputs the node kept, as safetensors: for the holder of the call's `cairn-payload-token`, \
    or a request signed by the payer or an active verifier. Anyone else learns nothing about the receipt.",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn receipt_input(
    State(s): State<NodeState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, NodeError> {
    let (parts, _) = req.into_parts();
    payload(&s, &id, false, &parts).await
}

#[utoipa::path(get, path = "/v1/receipts/{id}/output", tag = "node",
    params(("id" = String, Path)),
    description = "The outputs the node kept, as safetensors; who may read them as for the input.",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn receipt_output(
    State(s): State<NodeState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, NodeError> {
    let (parts, _) = req.into_parts();
    payload(&s, &id, true, &parts).await
}

/// Memory for request bodies being read, in KiB permits, taken as the bytes arrive: a slow
/// sender holds only what it has sent, and only until the body deadline.
struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new((bytes / 1024).max(1))))
    }
}

/// Why a body could not be read.
enum ReadError {
    TooLarge,
    Slow,
    Budget,
    Broken(String),
}

/// Reads a request body of at most `max` bytes within `deadline`, holding budget for every
/// byte received; returns the body and the budget it holds.
async fn read_body(
    body: Body,
    max: usize,
    deadline: Duration,
    budget: &BodyBudget,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ReadError> {
    use http_body_util::BodyExt;
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut held_kib = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
            let want = buf.len().div_ceil(1024);
            if want > held_kib {
                let more = u32::try_from(want - held_kib).map_err(|_| ReadError::Budget)?;
                let p = budget
                    .0
                    .clone()
                    .try_acquire_many_owned(more)
                    .map_err(|_| ReadError::Budget)?;
                match held.as_mut() {
                    Some(h) => h.merge(p),
                    None => held = Some(p),
                }
                held_kib = want;
            }
        }
        Ok((Bytes::from(buf), held))
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ReadError::Slow)?
}

impl Inner {
    /// Admits a request for `cid` or refuses it with 503 when a queue is full.
    fn admit(
        &self,
        cid: BlobId,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), NodeError> {
        let full = || NodeError::Overloaded("the node is at capacity; retry after a moment".into());
        let total = self.total.clone().try_acquire_owned().map_err(|_| full())?;
        let sem = {
            let mut map = self.per_model.lock().expect("per-model queues");
            if map.len() > 10_000 {
                let cap = self.limits.queue_per_model;
                map.retain(|_, s| s.available_permits() < cap);
            }
            map.entry(cid)
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.queue_per_model)))
                .clone()
        };
        let model = sem.try_acquire_owned().map_err(|_| {
            NodeError::Overloaded(format!("the queue for {cid} is full; retry after a moment"))
        })?;
        Ok((total, model))
    }
}

/// Checks inputs against the model's signature, before anything runs.
fn check_inputs(sig: &OnnxSignature, inputs: &[Tensor]) -> Result<(), NodeError> {
    let expected = || {
        sig.inputs
            .iter()
            .map(|v| format!("{} ({})", v.name, v.type_name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for t in inputs {
        if !sig.inputs.iter().any(|v| v.name == t.name()) {
            return Err(NodeError::WrongInput(format!(
                "the model has no input `{}`; it takes {}",
                t.name(),
                expected()
            )));
        }
    }
    for v in &sig.inputs {
        let Some(t) = inputs.iter().find(|t| t.name() == v.name) else {
            return Err(NodeError::WrongInput(format!(
                "input `{}` is missing; the model takes {}",
                v.name,
                expected()
            )));
        };
        let Some(dt) = onnx_datatype(v.elem_type.as_deref()) else {
            return Err(NodeError::WrongDatatype(format!(
                "input `{}` is {}, which Cairn cannot feed",
                v.name, v.type_name
            )));
        };
        if t.dtype() != dt {
            return Err(NodeError::WrongDatatype(format!(
                "input `{}` must be {dt}, got {}",
                v.name,
                t.dtype()
            )));
        }
        if let Some(dims) = &v.shape {
            let fits = dims.len() == t.shape().len()
                && dims.iter().zip(t.shape()).all(|(d, &n)| match d {
                    Dim::Fixed(f) => *f < 0 || *f as u64 == n,
                    _ => true,
                });
            if !fits {
                let want: Vec<String> = dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => n.to_string(),
                        Dim::Symbolic(s) => s.clone(),
                        Dim::Unknown => "?".into(),
                    })
                    .collect();
                return Err(NodeError::InvalidShape(format!(
                    "input `{}` must have shape [{}], got {:?}",
                    v.name,
                    want.join(", "),
                    t.shape()
                )));
            }
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "kserve",
    params(("model" = String, Path, description = "a CID or `name@version`")),
    description = "KServe v2 inference: JSON tensors, or the binary extension (`Inference-Header-Content-Length`). \
    The answer carries the signed receipt in `parameters.receipt`. A paid node answers 402 with x402 offers \
    in `PAYMENT-REQUIRED`; send `PAYMENT-SIGNATURE`.",
    request_body(content = Object, description = "KServe v2 inference request"),
    responses((status = 200, body = InferResponse), (status = 402, description = "payment required (x402)", body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)))]
async fn infer(
    State(s): State<NodeState>,
    Path(model): Path<String>,
    paid: Option<Extension<Paid>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    run_infer(s, model, paid.map(|p| p.0), headers, body).await
}

#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "kserve",
    params(("model" = String, Path), ("version" = String, Path)),
    request_body(content = Object, description = "KServe v2 inference request"),
    responses((status = 200, body = InferResponse), (status = 402, body = ErrorBody), (status = 400, body = ErrorBody)))]
async fn infer_versioned(
    State(s): State<NodeState>,
    Path((model, version)): Path<(String, String)>,
    paid: Option<Extension<Paid>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    run_infer(
        s,
        format!("{model}@{version}"),
        paid.map(|p| p.0),
        headers,
        body,
    )
    .await
}

/// `POST /v1/prepaid/deposits`: submits a payer's gasless deposit (EIP-3009
/// `ReceiveWithAuthorization` to the escrow) into its channel with this node.
#[utoipa::path(post, path = "/v1/prepaid/deposits", tag = "payments",
    request_body(content = Object, description = "a deposit authorization {payer, salt, amount, validBefore, nonce, signature}"),
    responses((status = 200, body = PrepaidChannel), (status = 422, description = "payment_refused", body = ErrorBody),
              (status = 404, description = "no prepaid on this node", body = ErrorBody)))]
async fn prepaid_deposit(
    State(s): State<NodeState>,
    body: Bytes,
) -> Result<Json<PrepaidChannel>, NodeError> {
    let Some(pre) = s.0.paywall.as_ref().and_then(|p| p.prepaid()) else {
        return Err(NodeError::NotFound(
            "this node does not take prepaid vouchers".into(),
        ));
    };
    let d: cairn_x402::prepaid::DepositAuthorization = serde_json::from_slice(&body)
        .map_err(|e| NodeError::BadRequest(format!("the body must be a deposit authorization {{payer, salt, amount, validBefore, nonce, signature}}: {e}")))?;
    let c = pre
        .deposit(&d, min_deposit(s.0.price))
        .await
        .map_err(|e| match e {
            cairn_x402::X402Error::Invalid(r) => NodeError::PaymentRefused(r.to_string()),
            other => NodeError::ChainUnavailable(other.to_string()),
        })?;
    Ok(Json(channel(&c)))
}

/// A prepaid channel as the node accounts it.
fn channel(c: &cairn_x402::store::ChannelRecord) -> PrepaidChannel {
    PrepaidChannel {
        payer: c.payer,
        payee: c.payee,
        salt: c.salt,
        known: true,
        deposited: Some(c.deposited),
        accepted: c.accepted,
        redeemed: Some(c.redeemed),
        closing: Some(c.closing),
    }
}

/// `GET /v1/prepaid/{payer}?salt=0x…`: the payer's prepaid channel with this node, as the node
/// accounts it (what a client needs to sign its next cumulative voucher).
#[utoipa::path(get, path = "/v1/prepaid/{payer}", tag = "payments",
    params(("payer" = String, Path, description = "the payer's address"),
           ("salt" = Option<String>, Query, description = "the channel's salt (32 bytes hex; default zero)")),
    responses((status = 200, body = PrepaidChannel), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn prepaid_channel(
    State(s): State<NodeState>,
    Path(payer): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Result<Json<PrepaidChannel>, NodeError> {
    let Some(pre) = s.0.paywall.as_ref().and_then(|p| p.prepaid()) else {
        return Err(NodeError::NotFound(
            "this node does not take prepaid vouchers".into(),
        ));
    };
    let payer: alloy_primitives::Address = payer
        .parse()
        .map_err(|e| NodeError::BadRequest(format!("payer {payer:?} is not an address: {e}")))?;
    let salt: B256 = match q.get("salt") {
        Some(v) => v.parse().map_err(|e| {
            NodeError::BadRequest(format!("salt {v:?} is not 32 bytes of hex: {e}"))
        })?,
        None => B256::ZERO,
    };
    let rec = pre
        .status(payer, salt)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    Ok(Json(match rec {
        Some(c) => channel(&c),
        None => PrepaidChannel {
            payer,
            payee: pre.payee(),
            salt,
            known: false,
            deposited: None,
            accepted: U256::ZERO,
            redeemed: None,
            closing: None,
        },
    }))
}

/// Answers a paid request presented again from the receipt log: the receipt and the kept
/// outputs (JSON), so a client that lost the answer to a crash gets it without paying twice.
struct KeptFromLog {
    log: ReceiptLog,
    token_key: B256,
}

impl cairn_x402::KeptAnswers for KeptFromLog {
    fn answer<'a>(
        &'a self,
        payment_ref: B256,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Response>> + Send + 'a>> {
        Box::pin(async move {
            let (receipt, output) = self.log.by_payment(payment_ref).await.ok()??;
            let receipt = cairn_receipt::ReceiptJson::from_text(receipt)
                .ok()?
                .verify()
                .ok()?;
            // Only a request carrying the very inputs paid for gets the answer (the payment's
            // signature is public on chain; the inputs are not).
            let json_len = match headers.get(HEADER_LENGTH) {
                Some(v) => Some(v.to_str().ok()?.parse::<usize>().ok()?),
                None => None,
            };
            let limits = DecodeLimits {
                max_elements: u64::MAX,
            };
            let asked = kserve::decode(body, json_len, limits).ok()?;
            if tensors_hash(&asked.inputs) != receipt.claims.input_hash {
                return None;
            }
            let outputs = safetensors_io::decode(&output).ok()?;
            let id = receipt.id();
            let cid = receipt.claims.model;
            let wanted = outputs
                .iter()
                .map(|t| (t.name().to_string(), false))
                .collect();
            let resolved = crate::cache::Resolution {
                cid,
                version: None,
                signature: None,
            };
            let ran = Ran {
                outputs,
                receipt,
                token: payload_token(&self.token_key, id),
            };
            Some(respond(&resolved, None, wanted, ran))
        })
    }
}

/// What the worker hands back.
struct Ran {
    outputs: Vec<Tensor>,
    receipt: cairn_receipt::SignedReceipt,
    /// The capability to read this receipt's payloads.
    token: B256,
}

async fn run_infer(
    s: NodeState,
    reference: String,
    paid: Option<Paid>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    let i = &s.0;
    let resolved = i.cache.resolve(&reference).await?;

    let max = i.limits.max_body_bytes;
    let too_large = || {
        NodeError::BodyTooLarge(format!(
            "the body is over {max} bytes; send smaller tensors"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(too_large());
    }
    // Bodies being read hold memory (as their bytes arrive), not inference slots, and only
    // until the body deadline: a slow sender ties up neither for long.
    let (body, reading) = read_body(body, max, i.limits.body_timeout, &i.body_budget)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => too_large(),
            ReadError::Slow => NodeError::Timeout(format!(
                "the request body did not arrive within {:?}; send it at once",
                i.limits.body_timeout
            )),
            ReadError::Budget => NodeError::Overloaded(
                "the node is reading as many request bodies as it has memory for; retry after a moment".into(),
            ),
            ReadError::Broken(e) => {
                NodeError::BadRequest(format!("the body could not be read: {e}"))
            }
        })?;
    let json_len = match headers.get(HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    NodeError::BadRequest(format!("{HEADER_LENGTH} must be a byte count"))
                })?,
        ),
        None => None,
    };
    let decoded = kserve::decode(
        &body,
        json_len,
        DecodeLimits {
            max_elements: i.limits.max_elements,
        },
    )?;
    drop(body);
    drop(reading);
    // Admitted only with a whole, decoded request in hand.
    let _permits = i.admit(resolved.cid)?;

    // Inputs that cannot fit the model are refused before it is fetched or loaded (from the
    // signature the hub recorded, for a name): a bad request costs no download.
    if let Some(sig) = &resolved.signature {
        check_inputs(sig, &decoded.inputs)?;
    }
    let deadline = tokio::time::Instant::now() + i.limits.timeout;
    let timeout = || {
        NodeError::Timeout(format!(
            "the inference did not finish within {:?}",
            i.limits.timeout
        ))
    };
    let loaded: Arc<LoadedModel> = tokio::time::timeout_at(deadline, i.cache.get(resolved.cid))
        .await
        .map_err(|_| timeout())??;
    check_inputs(&loaded.signature, &decoded.inputs)?;
    let names = loaded.plan.output_names();
    let wanted: Vec<(String, bool)> = match decoded.outputs {
        Some(list) => {
            for (n, _) in &list {
                if !names.iter().any(|m| m == n) {
                    return Err(NodeError::UnknownOutput(format!(
                        "the model has no output `{n}`; its outputs are {names:?}"
                    )));
                }
            }
            list
        }
        None => names
            .iter()
            .map(|n| (n.clone(), decoded.binary_output))
            .collect(),
    };

    let worker = tokio::time::timeout_at(deadline, i.workers.clone().acquire_owned())
        .await
        .map_err(|_| timeout())?
        .map_err(|_| NodeError::Internal("worker pool closed".into()))?;
    let inputs = decoded.inputs;
    let key = i.key.clone();
    let domain = i.domain;
    // A paid request's receipt carries what was paid and the payment's reference.
    let (price, payment_ref) = match &paid {
        Some(p) => (p.amount, p.payment_ref),
        None if i.paywall.is_some() => (U256::ZERO, B256::ZERO),
        None => (i.price, B256::ZERO),
    };
    let profile = i.cache.engine().profile().clone();
    let model_cid = loaded.cid;
    // A paid receipt counts only once its payment settles (the paywall settles after this
    // route); until then it is neither batched nor are its payloads served.
    let (billing, payer) = match &paid {
        Some(p) => (Billing::AwaitingPayment, Some(p.payer.0.0)),
        None => (Billing::Final, None),
    };
    let cheat = i.faults.wrong_output_rate > 0.0 && unit_random() < i.faults.wrong_output_rate;
    let token_key = i.token_key;
    let max_output = i.limits.max_output_bytes;
    let work = move || {
        let _worker = worker;
        let mut outputs = loaded.plan.run(&inputs).map_err(|e| match e {
            EngineError::Input(m) => NodeError::WrongInput(m),
            EngineError::Run(m) => NodeError::ModelFailed(m),
            other => NodeError::ModelFailed(other.to_string()),
        })?;
        // Verifiers must be able to fetch what is kept: outputs past the bound get no receipt.
        let out_bytes: usize = outputs.iter().map(|t| t.data().len()).sum();
        if out_bytes > max_output {
            return Err(NodeError::ModelFailed(format!(
                "the outputs take {out_bytes} bytes, over this node's {max_output} byte limit"
            )));
        }
        if cheat {
            corrupt_last_output(&mut outputs);
        }
        let claims = Claims {
            request_id: B256::random(),
            model: model_cid,
            input_hash: tensors_hash(&inputs),
            output_hash: tensors_hash(&outputs),
            profile,
            timestamp: now_secs(),
            price,
            payment_ref,
        };
        let receipt = claims
            .sign(domain, &key)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let entry = Entry {
            id: receipt.id().to_string(),
            created_at: receipt.claims.timestamp as i64,
            model: model_cid.to_string(),
            receipt: receipt.to_json().to_string(),
            input: safetensors_io::encode(&inputs),
            output: safetensors_io::encode(&outputs),
            digest: receipt.signing_hash().0,
            price: price.to_string(),
            billing,
            payer,
            payment_ref: payment_ref.0,
        };
        Ok::<_, NodeError>((
            Ran {
                token: payload_token(&token_key, receipt.id()),
                outputs,
                receipt,
            },
            entry,
        ))
    };
    // On the multi-threaded runtime the model runs in place: the worker permit already bounds
    // how many run at once, and it saves two thread hops per request. Elsewhere it goes to the
    // blocking pool.
    let (ran, entry) = if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(work)?
    } else {
        tokio::time::timeout_at(deadline, tokio::task::spawn_blocking(work))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| NodeError::Internal(format!("inference task: {e}")))??
    };
    i.log.append(entry).await?;
    Ok(respond(&resolved, decoded.id, wanted, ran))
}

fn respond(
    resolved: &crate::cache::Resolution,
    id: Option<String>,
    wanted: Vec<(String, bool)>,
    ran: Ran,
) -> Response {
    let mut binary: Vec<u8> = Vec::new();
    let mut outputs = Vec::with_capacity(wanted.len());
    for (name, bin) in wanted {
        let t = ran
            .outputs
            .iter()
            .find(|t| t.name() == name)
            .expect("checked output name");
        if bin {
            binary.extend_from_slice(t.data());
            outputs.push(ResponseOutput {
                name,
                datatype: t.dtype().name().into(),
                shape: t.shape().to_vec(),
                parameters: Some(OutputBinary {
                    binary_data_size: t.data().len() as u64,
                }),
                data: None,
            });
        } else {
            outputs.push(ResponseOutput {
                name,
                datatype: t.dtype().name().into(),
                shape: t.shape().to_vec(),
                parameters: None,
                data: Some(kserve::bytes_to_json(t.dtype(), t.data())),
            });
        }
    }
    let body = InferResponse {
        model_name: resolved.cid,
        model_version: resolved.version.map(|v| v.to_string()).unwrap_or_default(),
        outputs,
        parameters: InferParameters {
            receipt: ran.receipt,
            payload_token: ran.token,
        },
        id,
    };
    let head = serde_json::to_vec(&body).expect("response serializes");
    let token = HeaderValue::from_str(&ran.token.to_string()).expect("hex is a header value");
    if binary.is_empty() {
        let mut resp = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            head,
        )
            .into_response();
        resp.headers_mut().insert(PAYLOAD_TOKEN_HEADER, token);
        return resp;
    }
    let json_len = head.len();
    let mut all = head;
    all.extend_from_slice(&binary);
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        all,
    )
        .into_response();
    resp.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    resp.headers_mut().insert(PAYLOAD_TOKEN_HEADER, token);
    resp
}

#[cfg(test)]
mod docs_tests {
    use utoipa::OpenApi;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        cairn_core::api::assert_routes_documented(
            include_str!("server.rs"),
            &super::ApiDoc::openapi(),
        );
    }
}
