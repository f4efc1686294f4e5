//! The explorer's HTTP API (`/api/v1/…`, in `/openapi.json`): reads of the index only, each
//! bounded (pages of at most 100 rows, series of at most 500 buckets), so an unauthenticated
//! caller costs a few indexed queries and never a request to another service.

use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::store::{Index, IndexError, i, parse, u};

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    /// The index.
    pub index: Index,
    /// The deployment followed.
    pub deployment: cairn_ledger::Deployment,
    /// The last `/api/v1/status` answer and when it was counted: it scans whole tables, so
    /// it is counted at most once a few seconds, whoever asks.
    pub status: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Status)>>>,
    /// The chain's JSON-RPC the pages read batch roots from (they check receipts against the
    /// chain themselves); `None`: they check against what this explorer read.
    pub browser_rpc: Option<String>,
    /// The chat entry the chat page talks to, when there is one.
    pub entry: Option<String>,
    /// Queries that read a stretch of the whole index (activity, the node and model listings
    /// with their counts) run one at a time: a few clients asking them in a loop would
    /// otherwise hold every reader connection, and every other route would wait on them.
    pub heavy: Arc<tokio::sync::Semaphore>,
    /// Activity answers by (bucket, buckets), each counted at most once a few seconds.
    pub activity: Arc<std::sync::Mutex<ActivityKept>>,
}

/// Activity answers by (bucket width, buckets), with when each was counted.
pub type ActivityKept = std::collections::HashMap<(u64, u64), (std::time::Instant, Activity)>;

/// How long a request waits for its turn at a heavy query before it is answered 503.
const HEAVY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long an activity answer is served again.
const ACTIVITY_FRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// A turn at the heavy queries ([`ApiState::heavy`]), or 503.
async fn heavy(s: &ApiState) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    match tokio::time::timeout(HEAVY_WAIT, s.heavy.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            cairn_core::ErrorBody::new(
                "busy",
                "the explorer is counting for another request; try again shortly",
            ),
        )),
    }
}

impl ApiState {
    /// The API over `index` for `deployment`.
    pub fn new(index: Index, deployment: cairn_ledger::Deployment) -> Self {
        Self {
            index,
            deployment,
            status: Arc::default(),
            browser_rpc: None,
            entry: None,
            heavy: Arc::new(tokio::sync::Semaphore::new(1)),
            activity: Arc::default(),
        }
    }
}

/// How long a counted status is served again.
const STATUS_FRESH: std::time::Duration = std::time::Duration::from_secs(3);

/// An API error: JSON `{code, message}` with its status.
#[derive(Debug)]
pub struct ApiError(StatusCode, cairn_core::ErrorBody);

impl ApiError {
    fn not_found(what: impl std::fmt::Display) -> Self {
        Self(
            StatusCode::NOT_FOUND,
            cairn_core::ErrorBody::new("not_found", format!("{what} is not in the index")),
        )
    }

    fn bad(code: &str, message: impl Into<String>) -> Self {
        Self(
            StatusCode::BAD_REQUEST,
            cairn_core::ErrorBody::new(code, message),
        )
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        tracing::warn!("explorer API: {e}");
        Self(
            StatusCode::SERVICE_UNAVAILABLE,
            cairn_core::ErrorBody::new(
                "index_unavailable",
                "the index could not be read; try again shortly",
            ),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        IndexError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A page of a listing.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Rows (1-100, default 50).
    pub limit: Option<u32>,
    /// Rows to skip (at most 1,000,000).
    pub offset: Option<u32>,
}

impl PageQuery {
    fn bounds(self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::bad("invalid_page", "limit must be 1 to 100"));
        }
        let offset = self.offset.unwrap_or(0);
        if offset > 1_000_000 {
            return Err(ApiError::bad(
                "invalid_page",
                "offset must be at most 1000000",
            ));
        }
        Ok((i64::from(limit), i64::from(offset)))
    }
}

/// A listing's `limit` and `offset`, checked.
fn page(limit: Option<u32>, offset: Option<u32>) -> Result<(i64, i64), ApiError> {
    PageQuery { limit, offset }.bounds()
}

/// An optional address filter, checked and spelled as the index stores addresses.
fn checksummed(s: Option<&str>) -> Result<Option<String>, ApiError> {
    Ok(s.map(address).transpose()?.map(|a| a.to_checksum(None)))
}

fn address(s: &str) -> Result<Address, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad(
            "invalid_address",
            format!("`{s}` is not an address: expected 0x and 40 hex digits"),
        )
    })
}

fn hash(s: &str) -> Result<B256, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad(
            "invalid_hash",
            format!("`{s}` is not a 32-byte hash: expected 0x and 64 hex digits"),
        )
    })
}

fn json_col(r: &AnyRow, col: &str) -> Result<Value, ApiError> {
    let s: Option<String> = r.try_get(col)?;
    Ok(s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null))
}

/// The batch state its latest event says.
const STATUS_SQL: &str = "COALESCE((SELECT e.name FROM idx_events e WHERE e.batch_id = b.id
    AND e.name IN ('BatchAttested', 'BatchFinalized', 'BatchExpired', 'BatchLapsed', 'BatchChallenged')
    ORDER BY e.block DESC, e.log_index DESC LIMIT 1), 'BatchSubmitted')";

fn status_of(event: &str) -> &'static str {
    match event {
        "BatchAttested" => "attested",
        "BatchFinalized" => "finalized",
        "BatchExpired" => "expired",
        "BatchLapsed" => "lapsed",
        "BatchChallenged" => "voided",
        _ => "submitted",
    }
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The settlement contract (the receipts' EIP-712 verifying contract).
    pub settlement: String,
    /// The registry.
    pub registry: String,
    /// The last block indexed.
    pub indexed_block: Option<u64>,
    /// Models on the hub.
    pub models: u64,
    /// Active inference nodes / all registered.
    pub nodes_active: u64,
    /// Registered inference nodes.
    pub nodes: u64,
    /// Active verifiers.
    pub verifiers_active: u64,
    /// Registered verifiers.
    pub verifiers: u64,
    /// Calls in indexed batches.
    pub calls: u64,
    /// Batches by state.
    pub batches: std::collections::BTreeMap<String, u64>,
    /// Fees of finalized batches (token units, decimal).
    pub fees_paid: String,
    /// The chain's JSON-RPC the pages read from, when configured.
    pub browser_rpc: Option<String>,
    /// The chat entry the chat page talks to, when configured.
    pub entry: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = Status)))]
async fn status(State(s): State<Arc<ApiState>>) -> ApiResult<Status> {
    let mut cached = s.status.lock().await;
    if let Some((at, status)) = cached.as_ref()
        && at.elapsed() < STATUS_FRESH
    {
        return Ok(Json(status.clone()));
    }
    let status = count_status(&s).await?;
    *cached = Some((std::time::Instant::now(), status.clone()));
    Ok(Json(status))
}

async fn count_status(s: &ApiState) -> Result<Status, ApiError> {
    let pool = s.index.pool();
    let count = |sql: &'static str| async move {
        let r = sqlx::query(sql).fetch_one(pool).await?;
        u(&r, "n")
    };
    let cursor = s.index.cursor().await?;
    let mut batches = std::collections::BTreeMap::new();
    for r in sqlx::query(&format!(
        "SELECT {STATUS_SQL} AS st, COUNT(*) AS n FROM idx_batches b GROUP BY st"
    ))
    .fetch_all(pool)
    .await?
    {
        let st: String = r.try_get("st")?;
        *batches.entry(status_of(&st).to_owned()).or_default() += u(&r, "n")?;
    }
    let mut fees = U256::ZERO;
    for r in sqlx::query("SELECT data FROM idx_events WHERE name = 'BatchFinalized'")
        .fetch_all(pool)
        .await?
    {
        let d = json_col(&r, "data")?;
        for k in ["toNode", "toVerifiers", "toTreasury"] {
            fees += d[k]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(U256::ZERO);
        }
    }
    Ok(Status {
        chain_id: s.deployment.chain_id,
        settlement: s.deployment.settlement.to_checksum(None),
        registry: s.deployment.registry.to_checksum(None),
        indexed_block: cursor.map(|c| c.0),
        models: count("SELECT COUNT(*) AS n FROM idx_models").await?,
        nodes_active: count(
            "SELECT COUNT(*) AS n FROM idx_nodes WHERE role = 'inference' AND active = 1",
        )
        .await?,
        nodes: count("SELECT COUNT(*) AS n FROM idx_nodes WHERE role = 'inference'").await?,
        verifiers_active: count(
            "SELECT COUNT(*) AS n FROM idx_nodes WHERE role = 'verifier' AND active = 1",
        )
        .await?,
        verifiers: count("SELECT COUNT(*) AS n FROM idx_nodes WHERE role = 'verifier'").await?,
        calls: count("SELECT COUNT(*) AS n FROM idx_receipts").await?,
        batches,
        fees_paid: fees.to_string(),
        browser_rpc: s.browser_rpc.clone(),
        entry: s.entry.clone(),
    })
}

/// Model search filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelQuery {
    /// Text in the name or description.
    pub q: Option<String>,
    /// Exact task.
    pub task: Option<String>,
    /// Exact tag.
    pub tag: Option<String>,
    /// Rows (1-100, default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
}

/// A model in a listing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSummary {
    /// Repository name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Task.
    pub task: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Markdown description.
    pub description: String,
    /// Calls in indexed batches, over every file of every release.
    pub calls: u64,
}

/// `GET /api/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// This page.
    pub models: Vec<ModelSummary>,
    /// Every match.
    pub total: u64,
}

fn like(q: &str) -> String {
    let escaped = q
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

async fn tags_of(index: &Index, name: &str) -> Result<Vec<String>, ApiError> {
    Ok(
        sqlx::query("SELECT tag FROM idx_model_tags WHERE name = $1 ORDER BY tag")
            .bind(name)
            .fetch_all(index.pool())
            .await?
            .iter()
            .map(|r| r.try_get("tag"))
            .collect::<Result<_, _>>()?,
    )
}

async fn model_calls(index: &Index, name: &str) -> Result<u64, ApiError> {
    let r = sqlx::query(
        "SELECT COUNT(*) AS n FROM idx_receipts WHERE model IN (SELECT cid FROM idx_model_files WHERE name = $1)",
    )
    .bind(name)
    .fetch_one(index.pool())
    .await?;
    Ok(u(&r, "n")?)
}

#[utoipa::path(get, path = "/api/v1/models", params(ModelQuery),
    responses((status = 200, body = ModelList), (status = 400, body = cairn_core::ErrorBody)))]
async fn models(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<ModelQuery>,
) -> ApiResult<ModelList> {
    let (limit, offset) = page(q.limit, q.offset)?;
    let _turn = heavy(&s).await?;
    if q.q.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(ApiError::bad(
            "invalid_query",
            "q must be at most 200 bytes",
        ));
    }
    let filter = "FROM idx_models m WHERE ($1 = '' OR LOWER(m.name) LIKE $2 ESCAPE '\\' OR LOWER(m.description) LIKE $2 ESCAPE '\\')
        AND ($3 = '' OR m.task = $3)
        AND ($4 = '' OR EXISTS (SELECT 1 FROM idx_model_tags t WHERE t.name = m.name AND t.tag = $4))";
    let text = q.q.clone().unwrap_or_default();
    let total = sqlx::query(&format!("SELECT COUNT(*) AS n {filter}"))
        .bind(&text)
        .bind(like(&text))
        .bind(q.task.clone().unwrap_or_default())
        .bind(q.tag.clone().unwrap_or_default())
        .fetch_one(s.index.pool())
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT m.name, m.owner, m.task, m.description {filter} ORDER BY m.name LIMIT $5 OFFSET $6"
    ))
    .bind(&text)
    .bind(like(&text))
    .bind(q.task.clone().unwrap_or_default())
    .bind(q.tag.clone().unwrap_or_default())
    .bind(limit)
    .bind(offset)
    .fetch_all(s.index.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get("name")?;
        out.push(ModelSummary {
            tags: tags_of(&s.index, &name).await?,
            calls: model_calls(&s.index, &name).await?,
            owner: r.try_get("owner")?,
            task: r.try_get("task")?,
            description: r.try_get("description")?,
            name,
        });
    }
    Ok(Json(ModelList {
        models: out,
        total: u(&total, "n")?,
    }))
}

/// Ready-to-run calls of a model.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageExamples {
    /// With the `cairn` CLI.
    pub cli: String,
    /// With curl, KServe v2 JSON.
    pub curl: String,
    /// With the KServe (Triton) Python client.
    pub python: String,
    /// For a language model: with the `openai` Python client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openai: Option<String>,
}

/// `GET /api/v1/models/{name}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPage {
    /// The repository with its releases and files (the hub's `RepoDetail`).
    #[schema(value_type = Object)]
    pub detail: Value,
    /// Calls in indexed batches.
    pub calls: u64,
    /// Active inference nodes that served one of its files.
    pub nodes: Vec<String>,
    /// How to call it.
    pub examples: UsageExamples,
}

pub(crate) fn examples(name: &str, detail: &Value, node: &str) -> UsageExamples {
    let version = detail["latest"].as_str().unwrap_or("1.0");
    let label = format!("{name}@{version}");
    let release = detail["releases"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["version"] == version));
    let files = release
        .and_then(|r| r["files"].as_array())
        .cloned()
        .unwrap_or_default();
    let gguf = files.iter().any(|f| !f["gguf"].is_null());
    let input = files
        .iter()
        .find_map(|f| {
            f["onnx"]["inputs"]
                .as_array()
                .and_then(|i| i.first())
                .cloned()
        })
        .unwrap_or(Value::Null);
    let in_name = input["name"].as_str().unwrap_or("input");
    // ONNX element types as KServe v2 names them.
    let dtype = match input["elem_type"].as_str().unwrap_or("float") {
        "double" => "FP64",
        "float16" => "FP16",
        "int64" => "INT64",
        "int32" => "INT32",
        "int16" => "INT16",
        "int8" => "INT8",
        "uint8" => "UINT8",
        "uint16" => "UINT16",
        "uint32" => "UINT32",
        "uint64" => "UINT64",
        "bool" => "BOOL",
        "string" => "BYTES",
        _ => "FP32",
    };
    let shape: Vec<i64> = input["shape"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|d| d.as_i64().filter(|d| *d > 0).unwrap_or(1))
                .collect()
        })
        .unwrap_or_else(|| vec![1]);
    let elements = shape.iter().product::<i64>().clamp(1, 16) as usize;
    let body = serde_json::json!({"inputs": [{
        "name": in_name, "shape": shape, "datatype": dtype, "data": vec![0; elements],
    }]})
    .to_string();
    // Every value from a publisher or an operator is quoted for the shell, or written as a
    // JSON string (which Python reads as the same string): a copied line runs nothing else.
    let q = shell_quote;
    let py = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let hostport = node
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let shape_s = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    UsageExamples {
        cli: if gguf {
            format!("cairn llm {} --node {} --payer-key payer.key", q(&label), q(node))
        } else {
            format!(
                "cairn infer {} --node {} --input input.json --payer-key payer.key",
                q(&label),
                q(node)
            )
        },
        curl: format!(
            "curl -s {} -H 'content-type: application/json' -d {}",
            q(&format!("{node}/v2/models/{label}/infer")),
            q(&body)
        ),
        python: format!(
            "import tritonclient.http as http\nclient = http.InferenceServerClient({})\n\
             x = http.InferInput({}, [{shape_s}], {})\n\
             x.set_data_from_numpy(your_array)\n\
             result = client.infer({}, [x])",
            py(hostport),
            py(in_name),
            py(dtype),
            py(&label)
        ),
        openai: gguf.then(|| {
            format!(
                "from openai import OpenAI\nclient = OpenAI(base_url={}, api_key=\"unused\")\n\
                 reply = client.chat.completions.create(model={}, messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}])\n\
                 print(reply.choices[0].message.content)",
                py(&format!("{node}/v1")),
                py(&label)
            )
        }),
    }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The endpoint to show in a model's usage lines: the active node that served it most, else
/// any active node; only an http(s) URL (anything else is shown as a placeholder).
async fn example_node(index: &Index, name: &str) -> Result<String, ApiError> {
    let row = sqlx::query(
        "SELECT n.snapshot AS snapshot FROM idx_nodes n
         LEFT JOIN (SELECT node, COUNT(*) AS c FROM idx_receipts
                    WHERE model IN (SELECT cid FROM idx_model_files WHERE name = $1) GROUP BY node) r
           ON r.node = n.address
         WHERE n.role = 'inference' AND n.active = 1
         ORDER BY COALESCE(r.c, 0) DESC, n.address LIMIT 1",
    )
    .bind(name)
    .fetch_optional(index.pool())
    .await?;
    let endpoint = match row {
        Some(r) => json_col(&r, "snapshot")?["endpoint"]
            .as_str()
            .map(str::to_owned),
        None => None,
    };
    Ok(endpoint
        .and_then(|e| reqwest::Url::parse(&e).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.username().is_empty())
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "http://NODE".into()))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", params(("name" = String, Path, description = "Repository name")),
    responses((status = 200, body = ModelPage), (status = 404, body = cairn_core::ErrorBody)))]
async fn model(State(s): State<Arc<ApiState>>, Path(name): Path<String>) -> ApiResult<ModelPage> {
    let row = sqlx::query("SELECT detail FROM idx_models WHERE name = $1")
        .bind(&name)
        .fetch_optional(s.index.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("model `{}`", truncate(&name))))?;
    let detail = json_col(&row, "detail")?;
    let nodes: Vec<String> = sqlx::query(
        "SELECT DISTINCT r.node FROM idx_receipts r JOIN idx_nodes n ON n.address = r.node
         WHERE n.active = 1 AND r.model IN (SELECT cid FROM idx_model_files WHERE name = $1) ORDER BY r.node LIMIT 100",
    )
    .bind(&name)
    .fetch_all(s.index.pool())
    .await?
    .iter()
    .map(|r| r.try_get("node"))
    .collect::<Result<_, _>>()?;
    let node = example_node(&s.index, &name).await?;
    Ok(Json(ModelPage {
        examples: examples(&name, &detail, &node),
        calls: model_calls(&s.index, &name).await?,
        detail,
        nodes,
    }))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A registered node or verifier.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Its key.
    pub address: String,
    /// `inference` or `verifier`.
    pub role: String,
    /// Counted active by the registry.
    pub active: bool,
    /// The registry's state of it (stake, endpoint, heartbeat, measurement, evidence digest).
    #[schema(value_type = Object)]
    pub registry: Value,
    /// What its own info route last said (profile, prices, models), when it answered.
    #[schema(value_type = Object)]
    pub live: Value,
    /// Whether its evidence is the development kind (a software key, not a TEE).
    pub dev_evidence: bool,
    /// The kind of the evidence it serves when that is the evidence the registry records
    /// (`dev`, `nitro`, `sev-snp`, `tdx`); absent when not read or not matching.
    pub attestation_kind: Option<String>,
    /// Receipts in indexed batches (inference nodes).
    pub receipts: u64,
    /// Batches submitted.
    pub batches: u64,
    /// Verdicts it reported (verifiers).
    pub verdicts: u64,
    /// Times it was slashed.
    pub slashes: u64,
    /// When the index last read it (Unix seconds).
    pub updated: u64,
    /// How long its info route took to answer the indexer last time (milliseconds; absent
    /// when it did not answer).
    pub latency_ms: Option<u64>,
}

/// `GET /api/v1/nodes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Inference nodes and verifiers.
    pub nodes: Vec<NodeSummary>,
}

/// Node listing filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// `inference` or `verifier`.
    pub role: Option<String>,
    /// Rows (1-100, default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
}

async fn node_summary(index: &Index, r: &AnyRow) -> Result<NodeSummary, ApiError> {
    let address: String = r.try_get("address")?;
    let registry = json_col(r, "snapshot")?;
    let n = |sql: &'static str| {
        let address = address.clone();
        async move {
            let row = sqlx::query(sql)
                .bind(address)
                .fetch_one(index.pool())
                .await?;
            Ok::<_, ApiError>(u(&row, "n")?)
        }
    };
    let measurement = registry["measurement"].as_str().unwrap_or_default();
    Ok(NodeSummary {
        role: r.try_get("role")?,
        active: u(r, "active")? == 1,
        dev_evidence: measurement.parse::<B256>().ok() == Some(cairn_core::DEV_MEASUREMENT),
        live: json_col(r, "live")?,
        // Shown only while it is the evidence the registry records now.
        attestation_kind: r
            .try_get::<Option<String>, _>("attestation_digest")?
            .filter(|d| {
                registry["evidenceDigest"]
                    .as_str()
                    .is_some_and(|r| r.eq_ignore_ascii_case(d))
            })
            .and_then(|_| r.try_get::<Option<String>, _>("attestation").ok().flatten()),
        receipts: n("SELECT COUNT(*) AS n FROM idx_receipts WHERE node = $1").await?,
        batches: n("SELECT COUNT(*) AS n FROM idx_batches WHERE node = $1").await?,
        verdicts: n("SELECT COUNT(*) AS n FROM idx_verdicts WHERE verifier = $1").await?,
        slashes: n("SELECT COUNT(*) AS n FROM idx_events WHERE name = 'Slashed' AND subject = $1")
            .await?,
        updated: u(r, "updated")?,
        latency_ms: r
            .try_get::<Option<i64>, _>("latency_ms")?
            .and_then(|v| u64::try_from(v).ok()),
        registry,
        address,
    })
}

#[utoipa::path(get, path = "/api/v1/nodes", params(NodeQuery),
    responses((status = 200, body = NodeList), (status = 400, body = cairn_core::ErrorBody)))]
async fn nodes(State(s): State<Arc<ApiState>>, Query(q): Query<NodeQuery>) -> ApiResult<NodeList> {
    let (limit, offset) = page(q.limit, q.offset)?;
    let _turn = heavy(&s).await?;
    let role = q.role.unwrap_or_default();
    if !["", "inference", "verifier"].contains(&role.as_str()) {
        return Err(ApiError::bad(
            "invalid_role",
            "role must be inference or verifier",
        ));
    }
    let rows = sqlx::query(
        "SELECT * FROM idx_nodes WHERE ($1 = '' OR role = $1) ORDER BY role, active DESC, address LIMIT $2 OFFSET $3",
    )
    .bind(&role)
    .bind(limit)
    .bind(offset)
    .fetch_all(s.index.pool())
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        out.push(node_summary(&s.index, r).await?);
    }
    Ok(Json(NodeList { nodes: out }))
}

/// A chain event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainEvent {
    /// Block.
    pub block: u64,
    /// Block time.
    pub ts: u64,
    /// Transaction.
    pub tx: String,
    /// Event name.
    pub name: String,
    /// Its fields.
    #[schema(value_type = Object)]
    pub data: Value,
}

fn event_of(r: &AnyRow) -> Result<ChainEvent, ApiError> {
    Ok(ChainEvent {
        block: u(r, "block")?,
        ts: u(r, "ts")?,
        tx: r.try_get("tx")?,
        name: r.try_get("name")?,
        data: json_col(r, "data")?,
    })
}

/// `GET /api/v1/nodes/{address}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePage {
    /// The node.
    pub node: NodeSummary,
    /// Its registry events, newest first (at most 100).
    pub events: Vec<ChainEvent>,
    /// Its latest batches (at most 20).
    pub batches: Vec<BatchSummary>,
}

#[utoipa::path(get, path = "/api/v1/nodes/{address}", params(("address" = String, Path, description = "The node's or verifier's address")),
    responses((status = 200, body = NodePage), (status = 400, body = cairn_core::ErrorBody), (status = 404, body = cairn_core::ErrorBody)))]
async fn node(State(s): State<Arc<ApiState>>, Path(a): Path<String>) -> ApiResult<NodePage> {
    let a = address(&a)?.to_checksum(None);
    let r = sqlx::query("SELECT * FROM idx_nodes WHERE address = $1")
        .bind(&a)
        .fetch_optional(s.index.pool())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("node {a}")))?;
    let events = sqlx::query(
        "SELECT * FROM idx_events WHERE subject = $1 ORDER BY block DESC, log_index DESC LIMIT 100",
    )
    .bind(&a)
    .fetch_all(s.index.pool())
    .await?
    .iter()
    .map(event_of)
    .collect::<Result<_, _>>()?;
    let batches = batch_rows(&s.index, Some(&a), 20, 0).await?;
    Ok(Json(NodePage {
        node: node_summary(&s.index, &r).await?,
        events,
        batches,
    }))
}

/// A batch in a listing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    /// Its id on chain.
    pub id: u64,
    /// Its node.
    pub node: String,
    /// Merkle root.
    pub root: String,
    /// Receipts.
    pub count: u64,
    /// Fees escrowed (decimal).
    pub fees: String,
    /// Submission time.
    pub ts: u64,
    /// The submitting transaction.
    pub tx: String,
    /// `submitted`, `attested`, `finalized`, `expired`, `lapsed` or `voided`.
    pub status: String,
    /// Whether its receipts are indexed: `indexed`, `pending`, `unavailable` (the node did not
    /// serve them) or `invalid` (they did not make the root on chain).
    pub listing: String,
    /// Why the listing is not indexed.
    pub listing_error: Option<String>,
}

/// The batch listing's statement, with or without a node: one each, since with
/// `($1 = '' OR node = $1)` the planner walks every batch by id, and a node with few batches
/// (or none) read the whole table.
pub(crate) fn batch_sql(by_node: bool) -> String {
    let (filter, limit) = if by_node {
        ("WHERE b.node = $1", "LIMIT $2 OFFSET $3")
    } else {
        ("", "LIMIT $1 OFFSET $2")
    };
    format!("SELECT b.*, {STATUS_SQL} AS st FROM idx_batches b {filter} ORDER BY b.id DESC {limit}")
}

/// Batches counted, with or without a node (as [`batch_sql`]).
pub(crate) fn batch_count_sql(by_node: bool) -> &'static str {
    if by_node {
        "SELECT COUNT(*) AS n FROM idx_batches WHERE node = $1"
    } else {
        "SELECT COUNT(*) AS n FROM idx_batches"
    }
}

async fn batch_rows(
    index: &Index,
    node: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<BatchSummary>, ApiError> {
    let sql = batch_sql(node.is_some());
    let mut query = sqlx::query(&sql);
    if let Some(n) = node {
        query = query.bind(n);
    }
    let rows = query
        .bind(limit)
        .bind(offset)
        .fetch_all(index.pool())
        .await?;
    rows.iter().map(batch_summary).collect()
}

fn batch_summary(r: &AnyRow) -> Result<BatchSummary, ApiError> {
    Ok(BatchSummary {
        id: u(r, "id")?,
        node: r.try_get("node")?,
        root: r.try_get("root")?,
        count: u(r, "count")?,
        fees: r.try_get("fees")?,
        ts: u(r, "ts")?,
        tx: r.try_get("tx")?,
        status: status_of(&r.try_get::<String, _>("st")?).to_owned(),
        listing: r.try_get("listing")?,
        listing_error: r.try_get("error")?,
    })
}

/// `GET /api/v1/batches`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    /// Newest first.
    pub batches: Vec<BatchSummary>,
    /// Every batch.
    pub total: u64,
}

/// Batch listing filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchQuery {
    /// Only this node's.
    pub node: Option<String>,
    /// Rows (1-100, default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/batches", params(BatchQuery),
    responses((status = 200, body = BatchList), (status = 400, body = cairn_core::ErrorBody)))]
async fn batches(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<BatchQuery>,
) -> ApiResult<BatchList> {
    let (limit, offset) = page(q.limit, q.offset)?;
    let node = checksummed(q.node.as_deref())?;
    let mut count = sqlx::query(batch_count_sql(node.is_some()));
    if let Some(n) = &node {
        count = count.bind(n.clone());
    }
    let total = count.fetch_one(s.index.pool()).await?;
    Ok(Json(BatchList {
        batches: batch_rows(&s.index, node.as_deref(), limit, offset).await?,
        total: u(&total, "n")?,
    }))
}

/// A receipt in a listing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptSummary {
    /// Request id.
    pub request_id: String,
    /// Batch.
    pub batch_id: u64,
    /// Signer.
    pub node: String,
    /// Model CID.
    pub model: String,
    /// The hub models whose files have that CID (`name@version`).
    pub model_names: Vec<String>,
    /// `tensor` or `llm`.
    pub kind: String,
    /// Receipt time.
    pub ts: u64,
    /// Price (decimal).
    pub price: String,
    /// `own` (signed alone), `batch` (a signed micro-batch root and a proof), or `invalid` (a
    /// seal in the node's listing that does not verify; the content is still the node's
    /// commitment on chain).
    pub seal: String,
}

async fn receipt_summary(index: &Index, r: &AnyRow) -> Result<ReceiptSummary, ApiError> {
    let model: String = r.try_get("model")?;
    let names = sqlx::query(
        "SELECT DISTINCT name, version FROM idx_model_files WHERE cid = $1 ORDER BY name, version LIMIT 10",
    )
    .bind(&model)
    .fetch_all(index.pool())
    .await?
    .iter()
    .map(|n| {
        Ok(format!(
            "{}@{}",
            n.try_get::<String, _>("name")?,
            n.try_get::<String, _>("version")?
        ))
    })
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(ReceiptSummary {
        request_id: r.try_get("request_id")?,
        batch_id: u(r, "batch_id")?,
        node: r.try_get("node")?,
        model,
        model_names: names,
        kind: r.try_get("kind")?,
        ts: u(r, "ts")?,
        price: r.try_get("price")?,
        seal: r.try_get("seal")?,
    })
}

/// `GET /api/v1/batches/{id}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchPage {
    /// The batch.
    pub batch: BatchSummary,
    /// Its events: submitted, attested, finalized, …
    pub timeline: Vec<ChainEvent>,
    /// What each verifier reported on it.
    pub verdicts: Vec<VerdictSummary>,
    /// A page of its receipts, in leaf order.
    pub receipts: Vec<ReceiptSummary>,
}

/// A verifier's verdict on a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerdictSummary {
    /// The verifier.
    pub verifier: String,
    /// The batch.
    pub batch_id: u64,
    /// `attested`, `confirmed`, `refused`, `abstained`, `fraud`, `challenged` or `pending`.
    pub outcome: String,
    /// Samples re-executed.
    pub sampled: u64,
    /// That agreed.
    pub confirmed: u64,
    /// Found wrong.
    pub faults: u64,
    /// It could not check.
    pub unverifiable: u64,
    /// Fraud verdicts it signed.
    pub frauds: u64,
    /// The verdict as the verifier served it.
    #[schema(value_type = Object)]
    pub detail: Value,
}

fn verdict_of(r: &AnyRow) -> Result<VerdictSummary, ApiError> {
    Ok(VerdictSummary {
        verifier: r.try_get("verifier")?,
        batch_id: u(r, "batch_id")?,
        outcome: r.try_get("outcome")?,
        sampled: u(r, "sampled")?,
        confirmed: u(r, "confirmed")?,
        faults: u(r, "faults")?,
        unverifiable: u(r, "unverifiable")?,
        frauds: u(r, "frauds")?,
        detail: json_col(r, "json")?,
    })
}

async fn verdicts_of(index: &Index, batch: u64) -> Result<Vec<VerdictSummary>, ApiError> {
    sqlx::query("SELECT * FROM idx_verdicts WHERE batch_id = $1 ORDER BY verifier")
        .bind(i(batch))
        .fetch_all(index.pool())
        .await?
        .iter()
        .map(verdict_of)
        .collect()
}

#[utoipa::path(get, path = "/api/v1/batches/{id}", params(("id" = u64, Path, description = "Batch id"), PageQuery),
    responses((status = 200, body = BatchPage), (status = 404, body = cairn_core::ErrorBody)))]
async fn batch(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<u64>,
    Query(page): Query<PageQuery>,
) -> ApiResult<BatchPage> {
    let (limit, offset) = page.bounds()?;
    let r = sqlx::query(&format!(
        "SELECT b.*, {STATUS_SQL} AS st FROM idx_batches b WHERE b.id = $1"
    ))
    .bind(i(id))
    .fetch_optional(s.index.pool())
    .await?
    .ok_or_else(|| ApiError::not_found(format!("batch {id}")))?;
    let timeline =
        sqlx::query("SELECT * FROM idx_events WHERE batch_id = $1 ORDER BY block, log_index")
            .bind(i(id))
            .fetch_all(s.index.pool())
            .await?
            .iter()
            .map(event_of)
            .collect::<Result<_, _>>()?;
    let rows = sqlx::query(
        "SELECT * FROM idx_receipts WHERE batch_id = $1 ORDER BY leaf_index LIMIT $2 OFFSET $3",
    )
    .bind(i(id))
    .bind(limit)
    .bind(offset)
    .fetch_all(s.index.pool())
    .await?;
    let mut receipts = Vec::new();
    for r in &rows {
        receipts.push(receipt_summary(&s.index, r).await?);
    }
    Ok(Json(BatchPage {
        batch: batch_summary(&r)?,
        timeline,
        verdicts: verdicts_of(&s.index, id).await?,
        receipts,
    }))
}

/// Receipt listing filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReceiptQuery {
    /// Only this model (CID).
    pub model: Option<String>,
    /// Only this node's.
    pub node: Option<String>,
    /// Rows (1-100, default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
}

/// `GET /api/v1/receipts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptList {
    /// Newest first.
    pub receipts: Vec<ReceiptSummary>,
}

#[utoipa::path(get, path = "/api/v1/receipts", params(ReceiptQuery),
    responses((status = 200, body = ReceiptList), (status = 400, body = cairn_core::ErrorBody)))]
async fn receipts(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<ReceiptQuery>,
) -> ApiResult<ReceiptList> {
    let (limit, offset) = page(q.limit, q.offset)?;
    let node = checksummed(q.node.as_deref())?;
    let model = match q.model.as_deref() {
        Some(m) => Some(
            m.parse::<cairn_core::BlobId>()
                .map_err(|e| ApiError::bad("invalid_cid", format!("`{}`: {e}", truncate(m))))?
                .to_string(),
        ),
        None => None,
    };
    // One statement per filter: with `($1 = '' OR node = $1)` the planner cannot use the node
    // or model index, and a filter that matches nothing walked the whole index.
    let (filter, values): (&str, Vec<String>) = match (node, model) {
        (Some(n), Some(m)) => ("WHERE node = $1 AND model = $2", vec![n, m]),
        (Some(n), None) => ("WHERE node = $1", vec![n]),
        (None, Some(m)) => ("WHERE model = $1", vec![m]),
        (None, None) => ("", Vec::new()),
    };
    let sql = format!(
        "SELECT * FROM idx_receipts {filter} ORDER BY ts DESC, batch_id DESC, leaf_index LIMIT ${} OFFSET ${}",
        values.len() + 1,
        values.len() + 2
    );
    let mut query = sqlx::query(&sql);
    for v in values {
        query = query.bind(v);
    }
    let rows = query
        .bind(limit)
        .bind(offset)
        .fetch_all(s.index.pool())
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        out.push(receipt_summary(&s.index, r).await?);
    }
    Ok(Json(ReceiptList { receipts: out }))
}

/// Where one call's payment went: the price and payment reference are what the node signed
/// in the receipt; the payout is the chain's (`BatchFinalized`), shared out by that price.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFlow {
    /// What the call cost (decimal token units).
    pub price: String,
    /// The payment it names (x402 transaction or voucher; zero when unpaid).
    pub payment_ref: String,
    /// The node's payment vault, where x402 payments and vouchers land.
    pub vault: Option<String>,
    /// Whether its batch's fees were paid out.
    pub settled: bool,
    /// This call's share of the payout, by the batch's split: node, verifiers, treasury.
    pub to_node: Option<String>,
    /// The verifiers' share.
    pub to_verifiers: Option<String>,
    /// The treasury's share.
    pub to_treasury: Option<String>,
    /// The verifiers that attested the batch (who shared the verifiers' part).
    pub verifiers: Vec<String>,
}

/// `GET /api/v1/receipts/{id}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptPage {
    /// The listing's summary.
    pub summary: ReceiptSummary,
    /// The receipt exactly as its node served it: EIP-712 typed data and signature (check
    /// them yourself).
    #[schema(value_type = Object)]
    pub receipt: Value,
    /// Its batch.
    pub batch: BatchSummary,
    /// Its EIP-712 signing hash (the batch's Merkle leaf value).
    pub digest: String,
    /// Its proof to the batch root (OpenZeppelin `StandardMerkleTree`, leaf =
    /// keccak256(keccak256(digest))).
    pub proof: Vec<String>,
    /// What verifiers said about this receipt when they sampled it.
    #[schema(value_type = Vec<Object>)]
    pub samples: Vec<Value>,
    /// Where the payment went.
    pub flow: PaymentFlow,
}

#[utoipa::path(get, path = "/api/v1/receipts/{id}", params(("id" = String, Path, description = "Request id (0x…)")),
    responses((status = 200, body = ReceiptPage), (status = 400, body = cairn_core::ErrorBody), (status = 404, body = cairn_core::ErrorBody)))]
async fn receipt(State(s): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<ReceiptPage> {
    let id = hash(&id)?;
    let r =
        sqlx::query("SELECT * FROM idx_receipts WHERE request_id = $1 ORDER BY batch_id LIMIT 1")
            .bind(id.to_string())
            .fetch_optional(s.index.pool())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("receipt {id}")))?;
    let summary = receipt_summary(&s.index, &r).await?;
    let receipt: Value = serde_json::from_str(&r.try_get::<String, _>("json")?)
        .map_err(|e| IndexError::Corrupt(e.to_string()))?;
    let b = sqlx::query(&format!(
        "SELECT b.*, {STATUS_SQL} AS st FROM idx_batches b WHERE b.id = $1"
    ))
    .bind(i(summary.batch_id))
    .fetch_one(s.index.pool())
    .await?;
    let batch = batch_summary(&b)?;
    // Digest and proof as the index computed them when it checked the listing against the root.
    let digest: B256 = parse(&r.try_get::<String, _>("digest")?)?;
    let proof: Vec<B256> = serde_json::from_str(&r.try_get::<String, _>("proof")?)
        .map_err(|e| IndexError::Corrupt(e.to_string()))?;
    let mut samples = Vec::new();
    for v in verdicts_of(&s.index, summary.batch_id).await? {
        for sample in v.detail["samples"].as_array().into_iter().flatten() {
            if sample["requestId"].as_str() == Some(&id.to_string()) {
                let mut sample = sample.clone();
                sample["verifier"] = Value::String(v.verifier.clone());
                samples.push(sample);
            }
        }
    }
    let flow = flow(
        &s.index,
        &summary,
        &r.try_get::<String, _>("payment_ref")?,
        &batch,
    )
    .await?;
    Ok(Json(ReceiptPage {
        summary,
        receipt,
        batch,
        digest: digest.to_string(),
        proof: proof.iter().map(|p| p.to_string()).collect(),
        samples,
        flow,
    }))
}

async fn flow(
    index: &Index,
    summary: &ReceiptSummary,
    payment_ref: &str,
    batch: &BatchSummary,
) -> Result<PaymentFlow, ApiError> {
    let vault = sqlx::query(
        "SELECT data FROM idx_events WHERE name = 'VaultDeployed' AND subject = $1 ORDER BY block LIMIT 1",
    )
    .bind(&summary.node)
    .fetch_optional(index.pool())
    .await?
    .map(|r| json_col(&r, "data"))
    .transpose()?
    .and_then(|d| d["vault"].as_str().map(str::to_owned));
    let events =
        sqlx::query("SELECT * FROM idx_events WHERE batch_id = $1 ORDER BY block, log_index")
            .bind(i(batch.id))
            .fetch_all(index.pool())
            .await?;
    let mut flow = PaymentFlow {
        price: summary.price.clone(),
        payment_ref: payment_ref.to_owned(),
        vault,
        settled: false,
        to_node: None,
        to_verifiers: None,
        to_treasury: None,
        verifiers: Vec::new(),
    };
    let price: U256 = summary.price.parse().unwrap_or_default();
    let fees: U256 = batch.fees.parse().unwrap_or_default();
    for e in &events {
        let d = json_col(e, "data")?;
        match e.try_get::<String, _>("name")?.as_str() {
            "BatchAttested" => {
                flow.verifiers = d["verifiers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            }
            "BatchFinalized" if !fees.is_zero() => {
                // Each call's share of the payout is its price's share of the batch's fees,
                // rounded down for verifiers and treasury; the node gets the rest of it, as the
                // contract gives the node the rest of a batch.
                let part = |k: &str| -> U256 {
                    d[k].as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_default()
                };
                // The price is the node's claim: at most the whole batch's fees counts.
                let price = price.min(fees);
                let share = |v: U256| v.checked_mul(price).map_or(U256::ZERO, |x| x / fees);
                let paid = part("toNode")
                    .saturating_add(part("toVerifiers"))
                    .saturating_add(part("toTreasury"));
                let mine = share(paid);
                let verifiers = share(part("toVerifiers"));
                let treasury = share(part("toTreasury")).min(mine - verifiers.min(mine));
                flow.settled = true;
                flow.to_node = Some(
                    mine.saturating_sub(verifiers)
                        .saturating_sub(treasury)
                        .to_string(),
                );
                flow.to_verifiers = Some(verifiers.to_string());
                flow.to_treasury = Some(treasury.to_string());
            }
            "BatchFinalized" => flow.settled = true,
            _ => {}
        }
    }
    Ok(flow)
}

/// Series bucket width.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// `minute` (default), `hour` or `day`.
    pub bucket: Option<String>,
    /// Buckets back from now (1-500, default 60).
    pub buckets: Option<u32>,
}

/// One bucket of a series.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Bucket start, Unix seconds.
    pub t: u64,
    /// What is counted (a model CID, node address, or a kind).
    pub key: String,
    /// The count or sum.
    pub value: f64,
}

/// `GET /api/v1/activity`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// Bucket width, seconds.
    pub bucket: u64,
    /// First bucket.
    pub from: u64,
    /// Calls per bucket by model CID (receipt time).
    pub calls_by_model: Vec<Point>,
    /// Calls per bucket by node.
    pub calls_by_node: Vec<Point>,
    /// Verifier activity per bucket: as the verifiers report it, when the index first saw
    /// each verdict (`samples`, `confirmed`, `faults`, `frauds reported`, `verdicts`), and
    /// `frauds proven` (successful challenges on chain, by block time).
    pub verification: Vec<Point>,
    /// Seconds from submission to finalization, per finalized batch (key: batch id; t: when
    /// finalized).
    pub settlement_latency: Vec<Point>,
    /// Fees paid out per bucket (token units).
    pub fees: Vec<Point>,
}

#[utoipa::path(get, path = "/api/v1/activity", params(ActivityQuery),
    responses((status = 200, body = Activity), (status = 400, body = cairn_core::ErrorBody)))]
async fn activity(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<ActivityQuery>,
) -> ApiResult<Activity> {
    let bucket: u64 = match q.bucket.as_deref().unwrap_or("minute") {
        "minute" => 60,
        "hour" => 3600,
        "day" => 86400,
        other => {
            return Err(ApiError::bad(
                "invalid_bucket",
                format!("bucket `{}` is not minute, hour or day", truncate(other)),
            ));
        }
    };
    let n = u64::from(q.buckets.unwrap_or(60));
    if !(1..=500).contains(&n) {
        return Err(ApiError::bad("invalid_bucket", "buckets must be 1 to 500"));
    }
    let fresh = |s: &ApiState| {
        let kept = s.activity.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(&(bucket, n))
            .filter(|(at, _)| at.elapsed() < ACTIVITY_FRESH)
            .map(|(_, a)| a.clone())
    };
    if let Some(a) = fresh(&s) {
        return Ok(Json(a));
    }
    let _turn = heavy(&s).await?;
    // Counted meanwhile by the request before this one.
    if let Some(a) = fresh(&s) {
        return Ok(Json(a));
    }
    let a = count_activity(&s, bucket, n).await?;
    let mut kept = s.activity.lock().unwrap_or_else(|p| p.into_inner());
    kept.retain(|_, (at, _)| at.elapsed() < ACTIVITY_FRESH);
    kept.insert((bucket, n), (std::time::Instant::now(), a.clone()));
    Ok(Json(a))
}

/// The activity series over the last `n` buckets of `bucket` seconds.
async fn count_activity(s: &ApiState, bucket: u64, n: u64) -> Result<Activity, ApiError> {
    let now = cairn_core::clock::now_secs();
    let from = (now / bucket).saturating_sub(n - 1) * bucket;
    // Times are the nodes' and the index's own: nothing after the last bucket is counted.
    let until = (now / bucket + 1) * bucket;
    let pool = s.index.pool();
    let series = |sql: String| async move {
        let rows = sqlx::query(&sql)
            .bind(i(bucket))
            .bind(i(from))
            .bind(i(until))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Point {
                    t: u(r, "t")?,
                    key: r.try_get("k")?,
                    value: u(r, "v")? as f64,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
    };
    let calls_by_model = series(
        "SELECT (ts / $1) * $1 AS t, model AS k, COUNT(*) AS v FROM idx_receipts WHERE ts >= $2 AND ts < $3
         GROUP BY (ts / $1) * $1, model ORDER BY t, k"
            .into(),
    )
    .await?;
    let calls_by_node = series(
        "SELECT (ts / $1) * $1 AS t, node AS k, COUNT(*) AS v FROM idx_receipts WHERE ts >= $2 AND ts < $3
         GROUP BY (ts / $1) * $1, node ORDER BY t, k"
            .into(),
    )
    .await?;
    let mut verification = Vec::new();
    for (k, col) in [
        ("samples", "sampled"),
        ("confirmed", "confirmed"),
        ("faults", "faults"),
        ("frauds reported", "frauds"),
        ("verdicts", "1"),
    ] {
        for mut p in series(format!(
            "SELECT (seen / $1) * $1 AS t, '' AS k, CAST(SUM({col}) AS BIGINT) AS v FROM idx_verdicts WHERE seen >= $2 AND seen < $3
             GROUP BY (seen / $1) * $1 ORDER BY t"
        ))
        .await?
        {
            p.key = k.into();
            verification.push(p);
        }
    }
    // Frauds proven: challenges that succeeded on chain (not what a verifier says).
    for mut p in series(
        "SELECT (ts / $1) * $1 AS t, '' AS k, COUNT(*) AS v FROM idx_events
         WHERE name = 'BatchChallenged' AND ts >= $2 AND ts < $3 GROUP BY (ts / $1) * $1 ORDER BY t"
            .into(),
    )
    .await?
    {
        p.key = "frauds proven".into();
        verification.push(p);
    }
    let mut settlement_latency = Vec::new();
    let mut fees = std::collections::BTreeMap::<u64, U256>::new();
    for r in sqlx::query(
        "SELECT e.ts AS fin, e.data AS data, b.ts AS sub, b.id AS id FROM idx_events e
         JOIN idx_batches b ON b.id = e.batch_id WHERE e.name = 'BatchFinalized' AND e.ts >= $1 ORDER BY e.ts",
    )
    .bind(i(from))
    .fetch_all(pool)
    .await?
    {
        let fin = u(&r, "fin")?;
        settlement_latency.push(Point {
            t: fin,
            key: u(&r, "id")?.to_string(),
            value: fin.saturating_sub(u(&r, "sub")?) as f64,
        });
        let d = json_col(&r, "data")?;
        let total = ["toNode", "toVerifiers", "toTreasury"]
            .iter()
            .map(|k| d[*k].as_str().and_then(|v| v.parse::<U256>().ok()).unwrap_or_default())
            .fold(U256::ZERO, |a, b| a + b);
        *fees.entry(fin / bucket * bucket).or_default() += total;
    }
    Ok(Activity {
        bucket,
        from,
        calls_by_model,
        calls_by_node,
        verification,
        settlement_latency,
        fees: fees
            .into_iter()
            .map(|(t, v)| Point {
                t,
                key: "fees".into(),
                value: v.to_string().parse().unwrap_or(f64::MAX),
            })
            .collect(),
    })
}

/// The explorer API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn explorer API",
        description = "What the explorer's indexer read from the chain, the hub, the nodes and the verifiers."
    ),
    paths(
        status, models, model, nodes, node, batches, batch, receipts, receipt, activity
    ),
    components(schemas(cairn_core::ErrorBody))
)]
pub struct ApiDoc;

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/models", get(models))
        .route("/api/v1/models/{name}", get(model))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{address}", get(node))
        .route("/api/v1/batches", get(batches))
        .route("/api/v1/batches/{id}", get(batch))
        .route("/api/v1/receipts", get(receipts))
        .route("/api/v1/receipts/{id}", get(receipt))
        .route("/api/v1/activity", get(activity))
        .with_state(state)
}
