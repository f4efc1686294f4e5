//! The OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions` and
//! `GET /v1/models`. A call is admitted like an inference (the same queues, a worker for the
//! whole generation), runs on the language-model engine ([`crate::llm`]) and is answered
//! whole or as server-sent events; its LLM receipt binds the exact request body and every
//! byte answered, and is committed before the answer's last bytes leave. The receipt's id is
//! in the `cairn-receipt-id` header; the receipt is at `GET /v1/receipts/{id}`.

use super::*;
use crate::llm::{Endpoint, Identity, LlmRequest, sha256};
use crate::log::{Entry, ToLog};
use cairn_node_api::openai::{ModelCard, ModelList, OpenAiErrorBody, RECEIPT_ID_HEADER};
use cairn_receipt::{Claims, LlmUsage};
use futures::StreamExt;

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    description = "OpenAI-compatible chat completion on a hub language model (`model`: its CID or `name@version`), \
    whole or streamed (`stream: true`, server-sent events ending `data: [DONE]`). `response_format` (`json_object`, \
    `json_schema`) and `tools` with `tool_choice` (`none`, `auto`, `required`, a function) are enforced token by token \
    (constrained decoding), so the answer always parses; calls come back as `tool_calls`. A model name the node relays \
    (`--upstream`) goes to that server byte for byte under a `relayed` receipt. Parameters this node does not \
    implement are refused by name. The answer's `cairn-receipt-id` header names its LLM receipt (EIP-712 \
    `LlmReceipt`: the request body's and the answer's SHA-256, token counts, profile), at `GET /v1/receipts/{id}` once \
    the answer is complete. On a node that takes payments a call is charged per token (`payments.llmPrices` in \
    `GET /v1/node`): the 402 offers a prepaid voucher for its most (`TokenPrice::most`: from the body's length and `max_tokens`, \
    before anything is loaded), the receipt's price is \
    what its usage costs (a stream the reader leaves: what it was sent), and the same voucher with the same request \
    gets the answer it paid for again. A stream's reader that takes no event for the node's timeout is treated as gone.",
    request_body(content = Object, description = "an OpenAI chat completion request"),
    responses((status = 200, description = "`chat.completion`, or `text/event-stream` of `chat.completion.chunk`"),
              (status = 400, body = OpenAiErrorBody), (status = 402, body = OpenAiErrorBody),
              (status = 404, body = OpenAiErrorBody), (status = 413, body = OpenAiErrorBody),
              (status = 503, body = OpenAiErrorBody)))]
pub(super) async fn chat_completions(
    State(s): State<NodeState>,
    oblivious: Option<Extension<super::gateway::Oblivious>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    llm_call(s, Endpoint::Chat, oblivious.is_some(), uri, headers, body)
        .await
        .unwrap_or_else(NodeError::into_openai_response)
}

#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    description = "OpenAI-compatible text completion (one string `prompt`), whole or streamed; receipts as for chat completions.",
    request_body(content = Object, description = "an OpenAI completion request"),
    responses((status = 200, description = "`text_completion`, or `text/event-stream` of them"),
              (status = 400, body = OpenAiErrorBody), (status = 404, body = OpenAiErrorBody)))]
pub(super) async fn completions(
    State(s): State<NodeState>,
    oblivious: Option<Extension<super::gateway::Oblivious>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    llm_call(
        s,
        Endpoint::Completion,
        oblivious.is_some(),
        uri,
        headers,
        body,
    )
    .await
    .unwrap_or_else(NodeError::into_openai_response)
}

#[utoipa::path(get, path = "/v1/models", tag = "openai",
    description = "The language models this node lists (`--llm-model`), with the metadata the hub read from each file.",
    responses((status = 200, body = ModelList), (status = 502, body = OpenAiErrorBody)))]
pub(super) async fn models(State(s): State<NodeState>) -> Response {
    let mut data: Vec<ModelCard> =
        s.0.upstreams
            .iter()
            .map(|u| ModelCard {
                id: u.name.clone(),
                object: "model".into(),
                created: 0,
                owned_by: "upstream".into(),
                cid: u.model_id().to_string(),
                gguf: serde_json::Value::Null,
            })
            .collect();
    for reference in &s.0.llm_models {
        match s.0.cache.resolve(reference).await {
            Ok(r) => data.push(ModelCard {
                id: reference.clone(),
                object: "model".into(),
                created: 0,
                owned_by: "cairn-hub".into(),
                cid: r.cid.to_string(),
                gguf: serde_json::to_value(&r.gguf).unwrap_or_default(),
            }),
            Err(e) => return NodeError::from(e).into_openai_response(),
        }
    }
    Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response()
}

/// Reads, admits and runs one call.
async fn llm_call(
    s: NodeState,
    endpoint: Endpoint,
    oblivious: bool,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    let i = &s.0;
    // On a node that takes payments, calls are charged per token unless its operator said not.
    let charged = i.paywall.is_some() && !i.llm_free;
    let read = i.read_request(&headers, body).await?;
    // The protocol's bound (verifiers replay no more), checked before anything is parsed.
    let most = crate::llm::MAX_REQUEST_BYTES;
    if read.body.len() > most {
        return Err(NodeError::BodyTooLarge(format!(
            "a language-model request is at most {most} bytes; shorten the prompt"
        )));
    }
    // A model name relayed upstream: the body goes there as it is.
    if let Some((name, stream)) = crate::upstream::route_of(&read.body)
        && let Some(up) = i.upstreams.iter().find(|u| u.name == name)
    {
        if oblivious {
            return Err(NodeError::BadRequest(format!(
                "model `{name}` is relayed to another provider, which would see the request in the clear; a private call cannot use it"
            )));
        }
        if charged {
            return Err(NodeError::PaymentRequired(
                "relayed calls are not charged per token (the upstream's usage cannot be checked), so a node that takes payments relays only when its operator serves them unpaid with --llm-free".into(),
            ));
        }
        let body = read.body.to_vec();
        drop(read);
        return relay(
            s.clone(),
            up.clone(),
            endpoint,
            body,
            stream,
            Arc::new(super::gateway::Keeping::Plain),
        )
        .await;
    }
    // After the body is read against the budget: waiting for keys holds no uncounted memory.
    let keeping = Arc::new(s.keeping(oblivious).await?);
    let request = LlmRequest::parse(endpoint, &read.body)?;
    let resolved = i.cache.resolve(&request.model).await?;
    if resolved.signature.is_some() {
        return Err(NodeError::WrongModelKind(format!(
            "`{}` is an ONNX model; call it through /v2/models/{{model}}/infer",
            request.model
        )));
    }
    let price = match &i.llm_prices {
        Some(prices) if charged => {
            let p = prices.of(&i.cache, resolved.cid).await?.ok_or_else(|| {
                NodeError::PaymentRequired(format!(
                    "this node takes payments and sets no price for `{}`; its operator sets one with --llm-price (or serves language models unpaid with --llm-free)",
                    request.model
                ))
            })?;
            Some(p).filter(|p| !p.is_free())
        }
        _ => None,
    };
    // A voucher for the most the call can cost, bounded from the body's length and
    // `max_tokens` (nothing is loaded or tokenized for a caller that has not paid): it is
    // charged what the receipt's usage costs, and given back if the call fails.
    let metered = match (price, &i.paywall) {
        (Some(p), Some(wall)) => {
            let most = p.most(read.body.len(), request.max_tokens_asked());
            let what = format!(
                "a language-model call on {} ({}): at most {most} token units, {p} per 1,000 prompt/completion tokens, charged by its usage",
                resolved.cid, request.model
            );
            match wall
                .take_metered(&uri, &headers, &read.body, most, what)
                .await
            {
                Ok(m) => Some(m),
                Err(refused) => return Ok(refused),
            }
        }
        _ => None,
    };
    let permits = i.admit(resolved.cid)?;
    let loaded = tokio::time::timeout(i.limits.timeout, i.cache.get(resolved.cid))
        .await
        .map_err(|_| {
            NodeError::Timeout(format!(
                "the model did not load within {:?}",
                i.limits.timeout
            ))
        })??;
    let model = Arc::clone(loaded.llm()?);
    let context = crate::llm::context_of(&model);
    // The prompt is tokenized (and its length checked) and the answer's grammar compiled
    // before anything is answered, so a call that cannot run is an HTTP error (its voucher
    // given back), not a broken stream.
    let (model, request, prompt) = tokio::task::spawn_blocking(move || {
        let prompt = request.prompt_tokens(&model);
        (model, request, prompt)
    })
    .await
    .map_err(|e| NodeError::Internal(format!("tokenizer task: {e}")))?;
    let prompt = prompt?;
    crate::llm::max_tokens(&request, prompt.len(), context)?;
    // A session, then a worker, each waited for at most the node's timeout: long answers
    // cannot starve tensor inference, nor queue without end.
    let busy = || {
        NodeError::Overloaded(
            "the node's language-model sessions are busy; retry after a moment".into(),
        )
    };
    let session = tokio::time::timeout(i.limits.timeout, i.llm_sessions.clone().acquire_owned())
        .await
        .map_err(|_| busy())?
        .map_err(|_| NodeError::Internal("session pool closed".into()))?;
    let (model, request, constraint) = tokio::task::spawn_blocking(move || {
        let constraint = request.constraint(&model);
        (model, request, constraint)
    })
    .await
    .map_err(|e| NodeError::Internal(format!("grammar task: {e}")))?;
    let constraint = constraint?;
    let worker = tokio::time::timeout(i.limits.timeout, i.workers.clone().acquire_owned())
        .await
        .map_err(|_| busy())?
        .map_err(|_| NodeError::Internal("worker pool closed".into()))?;
    let worker = (worker, session);
    let profile = crate::llm::profile();
    let id = Identity {
        request_id: crate::new_request_id(),
        created: crate::now_secs(),
        fingerprint: profile.hash(),
    };
    let call = Call {
        state: s.clone(),
        cid: resolved.cid,
        request_body: read.body.to_vec(),
        profile,
        id,
        price: price.unwrap_or_default(),
        paid: metered.as_ref().map(|m| m.paid().clone()),
        keeping,
    };
    drop(read);
    let receipt_id =
        HeaderValue::from_str(&call.id.request_id.to_string()).expect("hex is a header value");
    let settle = metered.as_ref().map(|m| m.settle_headers().clone());
    if !request.stream {
        // A caller that hangs up stops the generation: this handler is dropped with it.
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _hung_up = HangUp(gone.clone());
        let (generated, call) = tokio::task::spawn_blocking(move || {
            let _held = (worker, permits);
            let g = crate::llm::generate(
                &model,
                &request,
                &prompt,
                context,
                &call.id,
                constraint,
                |_| !gone.load(std::sync::atomic::Ordering::Relaxed),
            );
            (g, call)
        })
        .await
        .map_err(|e| NodeError::Internal(format!("generation task: {e}")))?;
        let mut generated = generated?;
        let lie = s.0.faults.wrong_output_rate;
        if lie > 0.0 {
            crate::faults::alter_answer(lie, &mut generated.tail);
            generated.transcript = generated.tail.clone();
        }
        let charge = call.commit(&generated).await?;
        // Charged before the answer leaves: an answer whose charge was not made is withheld.
        let settled = match metered {
            Some(m) => Some(m.charge(charge).await.map_err(uncounted)?),
            None => None,
        };
        let mut resp = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            generated.tail,
        )
            .into_response();
        resp.headers_mut().insert(RECEIPT_ID_HEADER, receipt_id);
        resp.headers_mut().extend(settled.unwrap_or_default());
        return Ok(resp);
    }
    // A stream: events go out as they are made, through a one-slot channel, so a client that
    // stops reading stops the generation (and is charged for what it was sent).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let handle = tokio::runtime::Handle::current();
    // A reader that takes no event for 10 s (or the node's timeout, if shorter) is gone.
    let stall = i.limits.timeout.min(Duration::from_secs(10));
    tokio::task::spawn_blocking(move || {
        let _held = (worker, permits);
        // Every event, the last ones included, waits at most `stall` for the reader.
        let send = |event: Bytes| {
            matches!(
                handle.block_on(tokio::time::timeout(stall, tx.send(event))),
                Ok(Ok(()))
            )
        };
        // An empty slice asks whether the reader is still there, without sending.
        let generated = crate::llm::generate(
            &model,
            &request,
            &prompt,
            context,
            &call.id,
            constraint,
            |b| {
                if b.is_empty() {
                    !tx.is_closed()
                } else {
                    send(Bytes::copy_from_slice(b))
                }
            },
        );
        match generated {
            Ok(g) => {
                // The receipt and the charge are committed before the last events leave; a
                // stream cut short is charged what it delivered.
                let committed = handle.block_on(async {
                    let charge = call.commit(&g).await?;
                    if let Some(m) = metered {
                        m.charge(charge).await.map_err(uncounted)?;
                    }
                    Ok::<_, NodeError>(())
                });
                match committed {
                    Ok(()) => {
                        if !g.tail.is_empty() {
                            send(Bytes::from(g.tail));
                        }
                    }
                    Err(e) => {
                        send(error_event(&e));
                    }
                }
            }
            Err(e) => {
                send(error_event(&NodeError::Llm(e)));
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(RECEIPT_ID_HEADER, receipt_id);
    h.extend(settle.unwrap_or_default());
    Ok(resp)
}

/// A charge the payment store could not record: the answer is withheld, the voucher given back.
fn uncounted(e: cairn_x402::X402Error) -> NodeError {
    match e {
        // The payer's permit could not be settled (revoked, funds moved): nothing was charged,
        // and the answer is withheld.
        cairn_x402::X402Error::Invalid(r) => NodeError::PaymentRefused(format!(
            "the payment could not be settled ({r}); nothing was charged: sign a new payment"
        )),
        e => NodeError::Internal(format!(
            "the payment could not be recorded: {e}; retry with the same payment"
        )),
    }
}

/// Relays a call to `up`: the body as the client sent it, the answer as it came back (a stream
/// as its chunks arrive, the last held until the receipt is committed), under a `relayed`
/// receipt binding both. An upstream that cannot be reached, or answers with a failure, is a
/// 502 with its reason; a request it refuses (4xx) gets its answer as it gave it.
async fn relay(
    s: NodeState,
    up: crate::upstream::Upstream,
    endpoint: Endpoint,
    body: Vec<u8>,
    stream: bool,
    keeping: Arc<super::gateway::Keeping>,
) -> Result<Response, NodeError> {
    let i = &s.0;
    let permit = i.relays.clone().try_acquire_owned().map_err(|_| {
        NodeError::Overloaded(format!(
            "{} relayed calls are in flight; retry after a moment",
            crate::upstream::MAX_RELAYS
        ))
    })?;
    let mut req = i
        .upstream_http
        .post(up.url(endpoint))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.clone());
    if let Some(key) = &up.key {
        req = req.bearer_auth(key);
    }
    let failed = |what: String| NodeError::Upstream(format!("upstream `{}`: {what}", up.name));
    let deadline = tokio::time::Instant::now() + crate::upstream::RELAY_DEADLINE;
    let resp = tokio::time::timeout_at(deadline, req.send())
        .await
        .map_err(|_| failed("did not answer in time".into()))?
        .map_err(|e| {
            failed(format!(
                "not reachable ({}); retry later or call another node",
                without_url(&e)
            ))
        })?;
    let status = resp.status();
    let upstream_receipt = resp.headers().get(RECEIPT_ID_HEADER).cloned();
    let mut answer = resp.bytes_stream();
    if !status.is_success() {
        // The upstream's refusal of the request itself is passed on as it gave it; anything
        // else (its keys, limits, failures, redirects) is named by status only, since its
        // words may carry the operator's account details.
        if matches!(status.as_u16(), 400 | 404 | 413 | 422) {
            let mut text = Vec::new();
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, answer.next()).await {
                text.extend_from_slice(&chunk);
                if text.len() > 64 << 10 {
                    return Err(failed(format!("refused the request ({status})")));
                }
            }
            return Ok((status, [(header::CONTENT_TYPE, "application/json")], text).into_response());
        }
        if status.as_u16() == 429 {
            return Err(NodeError::Overloaded(format!(
                "upstream `{}` is limiting this node's calls; retry later",
                up.name
            )));
        }
        return Err(failed(format!("answered {status}")));
    }
    let call = Relayed {
        state: s.clone(),
        model: up.model_id(),
        request_body: body,
        id: B256::random(),
        created: crate::now_secs(),
        stream,
        keeping,
    };
    let receipt_id = HeaderValue::from_str(&call.id.to_string()).expect("hex is a header value");
    let mut headers = HeaderMap::new();
    headers.insert(RECEIPT_ID_HEADER, receipt_id);
    if let Some(theirs) = upstream_receipt {
        headers.insert(UPSTREAM_RECEIPT_ID_HEADER, theirs);
    }
    if !stream {
        let mut bytes = Vec::new();
        while let Some(chunk) = tokio::time::timeout_at(deadline, answer.next())
            .await
            .map_err(|_| failed("did not finish its answer in time".into()))?
        {
            let chunk = chunk.map_err(|e| failed(format!("broke off ({})", without_url(&e))))?;
            if bytes.len() + chunk.len() > crate::upstream::MAX_ANSWER_BYTES {
                return Err(failed(format!(
                    "answered more than {} bytes",
                    crate::upstream::MAX_ANSWER_BYTES
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        drop(permit);
        call.commit(&bytes, true).await?;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok((StatusCode::OK, headers, bytes).into_response());
    }
    // A stream: each chunk goes on when the next arrives; the last once the receipt is in.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stall = i.limits.timeout.min(Duration::from_secs(10));
    tokio::spawn(async move {
        let _held = permit;
        let send = |event: Bytes| {
            let tx = tx.clone();
            async move {
                matches!(
                    tokio::time::timeout(stall, tx.send(event)).await,
                    Ok(Ok(()))
                )
            }
        };
        let mut transcript = Vec::new();
        let mut held: Option<Bytes> = None;
        let mut broke = None;
        let mut gone = false;
        loop {
            // The upstream's next chunk, unless the client leaves first (an upstream that
            // stalls must not hold the relay until the deadline for a client long gone).
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, answer.next()) => next,
                () = tx.closed() => {
                    gone = true;
                    break;
                }
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    broke = Some("did not finish its answer in time".into());
                    break;
                }
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    broke = Some(without_url(&e));
                    break;
                }
            };
            // An upstream that never ends is cut off, as a whole answer that big would be.
            if transcript.len() + chunk.len() > crate::upstream::MAX_ANSWER_BYTES {
                broke = Some(format!(
                    "sent more than {} bytes",
                    crate::upstream::MAX_ANSWER_BYTES
                ));
                break;
            }
            if let Some(prev) = held.replace(chunk) {
                if !send(prev.clone()).await {
                    gone = true;
                    break;
                }
                transcript.extend_from_slice(&prev);
            }
        }
        // The client gone or the upstream broken: the receipt binds what was delivered. A
        // stream is whole when it ended with `[DONE]`.
        if !gone && broke.is_none() {
            if let Some(last) = &held {
                transcript.extend_from_slice(last);
            }
            if !transcript.ends_with(b"data: [DONE]\n\n") {
                broke = Some("ended without `data: [DONE]`".into());
                // What it sent is delivered: the receipt binds all of it.
                if let Some(last) = held.take() {
                    send(last).await;
                }
            }
        }
        let complete = !gone && broke.is_none();
        match call.commit(&transcript, complete).await {
            Ok(()) if complete => {
                if let Some(last) = held {
                    send(last).await;
                }
            }
            Ok(()) => {
                if let Some(why) = broke {
                    let e =
                        NodeError::Upstream(format!("upstream `{}` broke off ({why})", up.name));
                    send(error_event(&e)).await;
                }
            }
            Err(e) => {
                send(error_event(&e)).await;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok((StatusCode::OK, headers, Body::from_stream(stream)).into_response())
}

/// Header naming, on a relayed answer, the receipt the upstream gave (when it is a Cairn node).
pub const UPSTREAM_RECEIPT_ID_HEADER: &str = "cairn-upstream-receipt-id";

/// A client error without its URL (which may name a private upstream).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(at) = e.find(" for url (") {
        e.truncate(at);
    }
    e
}

/// What a relayed call's receipt needs.
struct Relayed {
    state: NodeState,
    model: BlobId,
    request_body: Vec<u8>,
    id: B256,
    created: u64,
    stream: bool,
    /// How its payloads are kept (sealed, for a private call).
    keeping: Arc<super::gateway::Keeping>,
}

impl Relayed {
    /// Signs the `relayed` receipt over the request and `answer` (what the client was given)
    /// and commits it; it is kept and served, never batched.
    async fn commit(&self, answer: &[u8], complete: bool) -> Result<(), NodeError> {
        let usage = crate::upstream::usage_of(answer, self.stream);
        let claims = Claims {
            request_id: self.id,
            model: self.model,
            input_hash: sha256(&self.request_body),
            output_hash: sha256(answer),
            profile: crate::upstream::Upstream::profile(),
            timestamp: self.created,
            price: U256::ZERO,
            payment_ref: B256::ZERO,
            llm: Some(LlmUsage {
                prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
                completion_tokens: usage.map_or(0, |u| u.completion_tokens),
                complete,
            }),
        };
        let (receipt, digest) = self.state.0.signer.receipts.sign_with_digest(claims);
        let mut entry = Entry::new(
            ToLog::Signed(receipt),
            digest,
            self.request_body.clone(),
            answer.to_vec(),
            crate::log::Billing::Local,
            None,
        );
        self.keeping.apply(&mut entry)?;
        self.state.0.log.append(entry).await?;
        let m = &self.state.0.metrics;
        m.answered(
            crate::metrics::CallKind::Relayed,
            &self.model,
            crate::upstream::Upstream::profile().engine.as_str(),
            None,
        );
        if let Some(u) = usage {
            m.tokens(u.prompt_tokens, u.completion_tokens);
        }
        Ok(())
    }
}

/// Raises its flag when dropped: the request handler holding it is gone.
struct HangUp(Arc<std::sync::atomic::AtomicBool>);

impl Drop for HangUp {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An error after the stream began: an event with the OpenAI error object (the `openai`
/// clients raise it), then the end of the stream.
fn error_event(e: &NodeError) -> Bytes {
    let mut out = b"data: ".to_vec();
    serde_json::to_writer(&mut out, &e.openai_body()).expect("serializes");
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// What a call's receipt needs besides the generation.
struct Call {
    state: NodeState,
    cid: BlobId,
    request_body: Vec<u8>,
    profile: cairn_core::ExecutionProfile,
    id: Identity,
    /// What its tokens cost (zero: unpaid).
    price: crate::TokenPrice,
    /// The voucher paying for it, when paid.
    paid: Option<Paid>,
    /// How its payloads are kept (sealed, for a private call).
    keeping: Arc<super::gateway::Keeping>,
}

impl Call {
    /// Signs the receipt of `g` (its price: what its usage costs, never over the voucher's
    /// step) and commits it with the request and the answer's bytes. Returns the charge.
    async fn commit(&self, g: &crate::llm::Generated) -> Result<U256, NodeError> {
        let mut charge = self
            .price
            .charge(g.prompt_tokens.into(), g.completion_tokens.into());
        if let Some(p) = &self.paid {
            // Only a prompt rendering to more tokens than its body has bytes reaches this.
            charge = charge.min(p.amount);
        }
        let claims = Claims {
            request_id: self.id.request_id,
            model: self.cid,
            input_hash: sha256(&self.request_body),
            output_hash: sha256(&g.transcript),
            profile: self.profile.clone(),
            timestamp: self.id.created,
            price: charge,
            payment_ref: self.paid.as_ref().map_or(B256::ZERO, |p| p.payment_ref),
            llm: Some(LlmUsage {
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                complete: g.complete,
            }),
        };
        let (receipt, digest) = self.state.0.signer.receipts.sign_with_digest(claims);
        let mut entry = Entry::new(
            ToLog::Signed(receipt),
            digest,
            self.request_body.clone(),
            g.transcript.clone(),
            // A paid receipt is batched once its voucher is counted (or voided if never).
            match (&self.paid, self.state.0.llm_billing) {
                (Some(_), crate::log::Billing::Final) => crate::log::Billing::AwaitingPayment,
                (_, billing) => billing,
            },
            self.paid.as_ref().map(|p| p.payer),
        );
        self.keeping.apply(&mut entry)?;
        self.state.0.log.append(entry).await?;
        let m = &self.state.0.metrics;
        m.answered(
            crate::metrics::CallKind::Llm,
            &self.cid,
            &self.profile.engine,
            self.paid.as_ref().map(|p| p.scheme),
        );
        m.tokens(g.prompt_tokens, g.completion_tokens);
        Ok(charge)
    }
}
