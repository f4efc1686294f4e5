//! KServe v2 metadata and health routes, and `/v1/node`: what the node is and runs.

use super::*;

#[utoipa::path(get, path = "/v2", tag = "kserve", responses((status = 200, body = ServerMetadata)))]
pub(super) async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "cairn".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })
}

#[utoipa::path(get, path = "/v2/health/live", tag = "kserve", responses((status = 200, body = Live)))]
pub(super) async fn live() -> Json<Live> {
    Json(Live { live: true })
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "kserve", responses((status = 200, body = Ready)))]
pub(super) async fn ready() -> Json<Ready> {
    Json(Ready { ready: true })
}

#[utoipa::path(get, path = "/v1/node", tag = "node", responses((status = 200, body = NodeInfo)))]
pub(super) async fn node_info(State(s): State<NodeState>) -> Result<Json<NodeInfo>, NodeError> {
    let i = &s.0;
    let profile = i.cache.engine().profile();
    Ok(Json(NodeInfo {
        address: i.signer.receipts.address(),
        profile: profile.clone(),
        reproducibility: profile.reproducibility(),
        profile_hash: profile.hash(),
        domain: DomainInfo {
            name: "Cairn".into(),
            version: "1".into(),
            chain_id: i.signer.receipts.domain().chain_id,
            verifying_contract: i.signer.receipts.domain().verifying_contract,
        },
        hub: i.hub_url.clone(),
        price: i.price,
        settlement: i.settlement.clone(),
        payments: i.payments.clone(),
        faults: i.faults.any().then(|| FaultsInfo {
            wrong_output_rate: i.faults.wrong_output_rate,
            withhold_payloads: i.faults.withhold_payloads,
            payload_outage_secs: i.faults.payload_outage.as_secs(),
            forge_listing_seals: i.faults.forge_listing_seals,
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
        ohttp: Some(cairn_node_api::OhttpInfo {
            key_config: data_encoding::HEXLOWER.encode(i.ohttp.config().encoded()),
            key_config_hash: i.ohttp.config().hash().into(),
        }),
    }))
}

pub(super) fn onnx_datatype(elem: Option<&str>) -> Option<DataType> {
    elem.and_then(DataType::from_onnx_name)
}

pub(super) fn describe(values: &[cairn_onnx::ValueInfo]) -> Vec<TensorSpec> {
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
pub(super) async fn metadata(
    s: &NodeState,
    reference: &str,
) -> Result<Json<ModelMetadata>, NodeError> {
    let r = s.0.cache.resolve(reference).await?;
    let loaded = s.0.cache.loaded_model(&r.cid).await;
    let signature = match (&loaded, &r.signature) {
        (Some(m), _) => m.onnx()?.0,
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
pub(super) async fn model_metadata(
    State(s): State<NodeState>,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, NodeError> {
    metadata(&s, &model).await
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "kserve",
    params(("model" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody)))]
pub(super) async fn model_metadata_versioned(
    State(s): State<NodeState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, NodeError> {
    metadata(&s, &format!("{model}@{version}")).await
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "kserve",
    params(("model" = String, Path)),
    responses((status = 200, body = ModelReady), (status = 400, description = "not loaded yet", body = ErrorBody)))]
pub(super) async fn model_ready(
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

/// `GET /v1/attestation`: the node's evidence, binding its key and its gateway's key
/// configuration (report data: [`cairn_attest::report_data`]); the registry holds its digest.
#[utoipa::path(get, path = "/v1/attestation", tag = "node",
    description = "The node's TEE evidence (or dev evidence on a devnet): its report data binds the node's address and the SHA-256 of its OHTTP key configuration; the registry records the evidence's digest.",
    responses((status = 200, description = "The evidence", body = Object), (status = 404, description = "The node has no attester", body = ErrorBody)))]
pub(super) async fn attestation(
    State(s): State<NodeState>,
) -> Result<Json<cairn_attest::Evidence>, NodeError> {
    s.0.evidence.clone().map(Json).ok_or_else(|| {
        NodeError::NotFound("this node serves no evidence (started without an attester)".into())
    })
}
