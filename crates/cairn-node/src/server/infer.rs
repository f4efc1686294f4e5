//! The inference route: admission, decoding, the model, signing, the log, the answer; and the
//! fault injection tests use to make a node lie.

use super::*;

impl Inner {
    /// How long a refusal is held, its own place among the held counted ([`hold_length`]).
    pub(super) fn hold_for(&self) -> std::time::Duration {
        hold_length(
            self.limits.overload_hold,
            MAX_HELD - self.held.available_permits(),
        )
    }

    /// Admits a request for `cid` or refuses it with 503 when a queue is full.
    pub(super) fn admit(
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

/// How long a refusal is held while `held` are (itself included): `base`, longer while many
/// are held at once, so that refusals come at most about [`REFUSALS_PER_SEC`] a second up to
/// [`MAX_HOLD`] (up to ~2,000 held; past that, up to `MAX_HELD` / `MAX_HOLD` a second). A `base`
/// of zero holds nothing.
pub(super) fn hold_length(base: std::time::Duration, held: usize) -> std::time::Duration {
    if base.is_zero() {
        return base;
    }
    let held = u32::try_from(held).unwrap_or(u32::MAX);
    let spread = std::time::Duration::from_secs(1) * held / REFUSALS_PER_SEC as u32;
    base.max(spread.min(MAX_HOLD))
}

/// Checks inputs against the model's signature, before anything runs.
pub(super) fn check_inputs(sig: &OnnxSignature, inputs: &[Tensor]) -> Result<(), NodeError> {
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
                return Err(KserveError::InvalidShape(format!(
                    "input `{}` must have shape [{}], got {:?}",
                    v.name,
                    want.join(", "),
                    t.shape()
                ))
                .into());
            }
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "kserve",
    params(("model" = String, Path, description = "a CID or `name@version`")),
    description = "KServe v2 inference: JSON tensors, or the binary extension (`Inference-Header-Content-Length`). \
    The answer carries the signed receipt in `parameters.receipt`: signed alone, or with header \
    `cairn-receipt-seal: batch` sealed by one signature over the root of the receipts committed with it \
    (`batchSignature`: the signed root's typed data and the receipt's Merkle proof). A paid node answers 402 with x402 offers \
    in `PAYMENT-REQUIRED`; send `PAYMENT-SIGNATURE`.",
    request_body(content = Object, description = "KServe v2 inference request"),
    responses((status = 200, body = InferResponse), (status = 402, description = "payment required (x402)", body = ErrorBody),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub(super) async fn infer(
    State(s): State<NodeState>,
    Path(model): Path<String>,
    paid: Option<Extension<Paid>>,
    priced: Option<Extension<PricedModel>>,
    oblivious: Option<Extension<super::gateway::Oblivious>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    run_infer(
        s,
        Model {
            reference: model,
            priced: priced.map(|p| p.0),
        },
        paid.map(|p| p.0),
        oblivious.is_some(),
        headers,
        body,
    )
    .await
}

#[utoipa::path(get, path = "/v2/models/{model}/infer", tag = "kserve",
    params(("model" = String, Path, description = "a CID or `name@version`")),
    description = "Not an inference (that is a POST): on a paid node the paywall answers it, with the x402 offers \
    (402) or, for an x402 `batch-settlement` cooperative refund request in `PAYMENT-SIGNATURE` (which the official client \
    sends by GET to the paid URL), the refund (200 with `PAYMENT-RESPONSE`). Anything else is 405, and a payment it \
    carried is not charged.",
    responses((status = 200, description = "a batch-settlement refund made"), (status = 402, body = ErrorBody),
              (status = 405, body = ErrorBody)))]
pub(super) async fn infer_get() -> Response {
    not_an_inference()
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/infer", tag = "kserve",
    params(("model" = String, Path), ("version" = String, Path)),
    description = "As `GET /v2/models/{model}/infer`.",
    responses((status = 200, description = "a batch-settlement refund made"), (status = 402, body = ErrorBody),
              (status = 405, body = ErrorBody)))]
pub(super) async fn infer_get_versioned() -> Response {
    not_an_inference()
}

fn not_an_inference() -> Response {
    let mut resp = (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody::new(
            "method_not_allowed",
            "inference is a POST; a GET here only answers x402 batch-settlement refund requests",
        )),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    resp
}

#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "kserve",
    params(("model" = String, Path), ("version" = String, Path)),
    request_body(content = Object, description = "KServe v2 inference request"),
    responses((status = 200, body = InferResponse), (status = 402, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub(super) async fn infer_versioned(
    State(s): State<NodeState>,
    Path((model, version)): Path<(String, String)>,
    paid: Option<Extension<Paid>>,
    priced: Option<Extension<PricedModel>>,
    oblivious: Option<Extension<super::gateway::Oblivious>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    run_infer(
        s,
        Model {
            reference: format!("{model}@{version}"),
            priced: priced.map(|p| p.0),
        },
        paid.map(|p| p.0),
        oblivious.is_some(),
        headers,
        body,
    )
    .await
}

/// The model a call names, and what the paywall resolved it to when it priced the call.
pub(super) struct Model {
    pub(super) reference: String,
    pub(super) priced: Option<PricedModel>,
}

pub(super) async fn run_infer(
    s: NodeState,
    model: Model,
    paid: Option<Paid>,
    oblivious: bool,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    let i = &s.0;
    let seal = match headers.get(RECEIPT_SEAL_HEADER) {
        None => SealChoice::Own,
        Some(v) => v
            .to_str()
            .map_err(|_| NodeError::BadRequest(format!("{RECEIPT_SEAL_HEADER} is not text")))?
            .parse()
            .map_err(NodeError::BadRequest)?,
    };
    // A priced call runs the model its price was reckoned on; a name is resolved once.
    let resolved = match model.priced {
        Some(PricedModel(resolved)) => resolved,
        // A paying node prices every call of these routes first: one that was not priced
        // must not run free.
        None if i.paywall.is_some() => {
            return Err(NodeError::Internal(
                "the call reached the model unpriced; nothing ran".into(),
            ));
        }
        None => i.cache.resolve(&model.reference).await?,
    };

    let read = i.read_request(&headers, body).await?;
    // After the body is read against the budget: waiting for keys holds no uncounted memory.
    let keeping = s.keeping(oblivious).await?;
    // Admitted only with a whole request in hand (a slow sender holds no slot), and before it is
    // decoded: under a flood, a refusal costs no parsing.
    let _permits = match i.admit(resolved.cid) {
        Ok(p) => p,
        Err(e) => {
            // Held before it is answered: a client that re-sends at once (a flood's
            // connections do) cannot turn refusals into the node's main work. A held request
            // keeps only its task (body and headers go first), and at most `MAX_HELD` are held:
            // past that the refusal is immediate.
            drop((read, headers));
            if let Ok(held) = i.held.clone().try_acquire_owned() {
                tokio::time::sleep(i.hold_for()).await;
                drop(held);
            }
            return Err(e);
        }
    };
    // Groups of batch-sealed receipts wait for this one's (until it is appended, or fails).
    let coming = (seal == SealChoice::Batch).then(|| i.log.coming());
    let decoded = kserve::decode(
        &read.body,
        read.json_len,
        DecodeLimits {
            max_elements: i.limits.max_elements,
        },
    )?;
    // The body's bytes and their share of the memory budget go before the request queues.
    drop(read);

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
    let (signature, plan) = loaded.onnx()?;
    check_inputs(signature, &decoded.inputs)?;
    let wanted = wanted_outputs(plan.output_names(), decoded.outputs, decoded.binary_output)?;

    let worker = tokio::time::timeout_at(deadline, i.workers.clone().acquire_owned())
        .await
        .map_err(|_| timeout())?
        .map_err(|_| NodeError::Internal("worker pool closed".into()))?;
    let inputs = decoded.inputs;
    let charge = Charge::of(paid.as_ref(), i.paywall.is_some(), i.price);
    let profile = i.cache.engine().profile().clone();
    let engine = profile.engine.clone();
    let signer = i.signer.clone();
    let input_bytes: u64 = inputs.iter().map(|t| t.data().len() as u64).sum();
    let in_place = (loaded.pace.quick(input_bytes) && plan.prepared(&inputs))
        .then(|| i.in_place.clone().try_acquire_owned().ok())
        .flatten();
    let work = move || {
        let _worker = worker;
        // CPU time, not wall time: a call preempted on a busy machine is not a slow call.
        let started = crate::thread_cpu_time();
        let (_, plan) = loaded
            .onnx()
            .map_err(|e| crate::inference::InferenceError::Input(e.to_string()))?;
        let ran =
            crate::inference::run(&**plan, loaded.cid, profile, &inputs, charge, &signer, seal);
        if let (Some(start), Some(end)) = (started, crate::thread_cpu_time()) {
            let took = end.saturating_sub(start);
            if ran.is_ok() {
                loaded.pace.record(input_bytes, took);
            } else {
                loaded.pace.record_failed(input_bytes, took);
            }
        }
        ran
    };
    // A call as quick as parsing its request runs right here on the async worker: a model with
    // one plan for every shape whose calls of this size have been quick, one such call at a
    // time. Otherwise, on the multi-threaded runtime, the worker hands its other tasks on and
    // runs it (the worker permit already bounds how many run at once; it saves two thread hops
    // per request); elsewhere it goes to the blocking pool.
    let (ran, mut entry) = if let Some(_one) = in_place {
        i.metrics.placed(crate::metrics::Placement::InPlace);
        work()?
    } else if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        i.metrics.placed(crate::metrics::Placement::HandedOff);
        tokio::task::block_in_place(work)?
    } else {
        i.metrics.placed(crate::metrics::Placement::BlockingPool);
        tokio::time::timeout_at(deadline, tokio::task::spawn_blocking(work))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| NodeError::Internal(format!("inference task: {e}")))??
    };
    keeping.apply(&mut entry)?;
    let receipt = i.log.append_coming(entry, coming).await?;
    i.metrics.answered(
        crate::metrics::CallKind::Onnx,
        &resolved.cid,
        &engine,
        paid.as_ref().map(|p| p.scheme),
    );
    Ok(respond(&resolved, decoded.id, wanted, ran, receipt))
}

pub(super) fn respond(
    resolved: &crate::cache::Resolution,
    id: Option<String>,
    wanted: Vec<(String, bool)>,
    ran: Inference,
    receipt: ReceiptJson,
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
                data: Some(kserve::json_array(t.dtype(), t.data())),
            });
        }
    }
    let body = InferResponse {
        model_name: resolved.cid,
        model_version: resolved.version.map(|v| v.to_string()).unwrap_or_default(),
        outputs,
        parameters: InferParameters {
            receipt,
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

/// A request body read whole, holding its share of the body memory budget until dropped.
pub(super) struct ReadRequest {
    pub(super) body: axum::body::Bytes,
    /// The length of the JSON part when binary tensors follow it.
    json_len: Option<usize>,
    _reading: Option<OwnedSemaphorePermit>,
}

impl Inner {
    /// Reads the body within the node's size, time and memory bounds, with the length of its
    /// JSON part when binary tensors follow.
    pub(super) async fn read_request(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<ReadRequest, NodeError> {
        let i = self;
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
        // Held until the body is decoded: its bytes count against the memory budget.
        let (body, reading) = read_body(body, max, i.limits.body_timeout, &i.body_budget)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => too_large(),
                e => read_error(e, i),
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
        Ok(ReadRequest {
            body,
            json_len,
            _reading: reading,
        })
    }
}

/// The outputs to answer with, each with whether it goes in binary: those `asked` (each must
/// exist), else all of them with the request's default.
fn wanted_outputs(
    names: &[String],
    asked: Option<Vec<(String, bool)>>,
    binary: bool,
) -> Result<Vec<(String, bool)>, NodeError> {
    let Some(list) = asked else {
        return Ok(names.iter().map(|n| (n.clone(), binary)).collect());
    };
    if let Some((n, _)) = list.iter().find(|(n, _)| !names.iter().any(|m| m == n)) {
        return Err(NodeError::UnknownOutput(format!(
            "the model has no output `{n}`; its outputs are {names:?}"
        )));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_held_longer_so_that_refusals_stay_few() {
        let base = Duration::from_millis(250);
        // A few refused at once: the configured hold.
        assert_eq!(hold_length(base, 1), base);
        assert_eq!(hold_length(base, 100), base);
        // Thousands of connections re-sending at once: each waits its share of the rate.
        assert_eq!(hold_length(base, 1_000), Duration::from_millis(2_500));
        for held in [101, 500, 1_000, 1_999] {
            let per_sec = held as f64 / hold_length(base, held).as_secs_f64();
            assert!(
                per_sec <= REFUSALS_PER_SEC as f64 + 1e-6,
                "{held}: {per_sec}/s"
            );
        }
        // A client still hears within MAX_HOLD, and a longer configured hold is kept.
        assert_eq!(hold_length(base, MAX_HELD), MAX_HOLD);
        assert_eq!(hold_length(base, usize::MAX), MAX_HOLD);
        let long = Duration::from_secs(10);
        assert_eq!(hold_length(long, MAX_HELD), long);
        // Holding turned off stays off.
        assert_eq!(hold_length(Duration::ZERO, MAX_HELD), Duration::ZERO);
    }
}
