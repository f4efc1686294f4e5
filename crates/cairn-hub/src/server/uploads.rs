//! Uploads: a file's bytes streamed to the blob store while hashed and, for a model format the
//! hub reads (ONNX, GGUF), parsed.

use super::*;

/// A model format the hub reads on upload: a file of it that does not parse is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ModelFormat {
    Onnx,
    Gguf,
}

impl ModelFormat {
    /// The format a file is declared as: by its media type (parameters ignored), else by its
    /// name's extension in any case.
    pub(super) fn of(media_type: &str, path: &FilePath) -> Option<Self> {
        let path = path.as_str().to_ascii_lowercase();
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == ONNX_MEDIA_TYPE || path.ends_with(".onnx") {
            Some(Self::Onnx)
        } else if essence == cairn_gguf::GGUF_MEDIA_TYPE || path.ends_with(".gguf") {
            Some(Self::Gguf)
        } else {
            None
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            Self::Onnx => ONNX_MEDIA_TYPE,
            Self::Gguf => cairn_gguf::GGUF_MEDIA_TYPE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Onnx => "ONNX",
            Self::Gguf => "GGUF",
        }
    }

    /// The machine code of a refusal.
    fn invalid(self) -> &'static str {
        match self {
            Self::Onnx => "invalid_onnx",
            Self::Gguf => "invalid_gguf",
        }
    }
}

/// What the hub read from a model file.
enum Parsed {
    Onnx(cairn_onnx::OnnxSignature),
    Gguf(Box<cairn_gguf::GgufMetadata>),
}

/// Most of an unread upload body the hub reads and drops before answering a refusal.
pub(super) const DRAIN_BEFORE_REFUSING: usize = 16 << 20;

#[utoipa::path(put, path = "/v1/repos/{name}/releases/{version}/files/{path}",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file. `cairn-content-sha256` declares its digest (= its CID); a mismatch stores nothing."),
    responses((status = 201, body = FileEntry), (status = 422, description = "cid_mismatch, invalid_onnx or invalid_gguf", body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn upload_file(
    State(state): State<HubState>,
    Path((name, version, path)): Path<(String, String, String)>,
    signer: Result<Signer, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = Some(body);
    let result = match signer {
        Ok(signer) => store_upload(state, (name, version, path), signer, headers, &mut body).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(created) => created.into_response(),
        Err(e) => {
            // Refused before the body was read: read (and drop) a bounded part of it first, so a
            // client still sending a modest file reads this answer instead of a reset.
            if let Some(unread) = body {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    axum::body::to_bytes(unread, DRAIN_BEFORE_REFUSING),
                )
                .await;
            }
            // The body may be unread: make sure no client reuses this connection.
            let mut response = e.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

pub(super) async fn store_upload(
    state: HubState,
    (name, version, path): (String, String, String),
    signer: Signer,
    headers: HeaderMap,
    body: &mut Option<Body>,
) -> Result<(StatusCode, Json<FileEntry>), ApiError> {
    let (name, version, path): (RepoName, Version, FilePath) =
        (parse(&name)?, parse(&version)?, parse(&path)?);
    owned_repo(&state, &name, signer.address).await?;
    // Refuse early when the release is not an open draft, before any bytes are stored.
    state.inner.catalog.ensure_draft(&name, version).await?;
    // Each owner gets a bounded share of the store; a fresh key gets no more than any other.
    let used = state.inner.catalog.owner_usage(signer.address).await?;
    let left = state.inner.owner_quota_bytes.saturating_sub(used);
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if left == 0 || declared_len.is_some_and(|n| n > left) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "quota_exceeded",
            format!(
                "{} may store {} bytes and uses {used}; this file does not fit (delete drafts or ask the hub's operator)",
                signer.address, state.inner.owner_quota_bytes
            ),
        ));
    }
    let declared = BlobId::from_digest(signer.body_sha256);
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .unwrap_or("application/octet-stream")
        .to_owned();
    let format = ModelFormat::of(&media_type, &path);
    let media_type = match format {
        Some(f) => f.media_type().to_owned(),
        None => media_type,
    };
    // A model upload holds a blocking thread while its body arrives: a bounded number at once,
    // refused before any byte is read.
    let permit = match format {
        Some(f) => Some(
            Arc::clone(&state.inner.model_parses)
                .try_acquire_owned()
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        format!(
                            "the hub is reading {} {} uploads already; retry in a few seconds",
                            state.inner.max_model_parses,
                            f.name()
                        ),
                    )
                })?,
        ),
        None => None,
    };

    let body = body.take().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the upload body was already taken",
        )
    })?;
    let stream = idle_cut(
        body.into_data_stream().map_err(io::Error::other),
        state.inner.upload_idle,
    );
    let limit = state.inner.max_upload_bytes.min(left);
    let (stored, parsed) = match format {
        Some(format) => {
            let permit = permit.expect("taken for every model upload");
            store_model(
                &state,
                stream,
                declared,
                limit,
                path.clone(),
                format,
                permit,
            )
            .await?
        }
        None => (
            state.inner.store.put(stream, Some(declared), limit).await?,
            None,
        ),
    };
    let (onnx, gguf) = match parsed {
        Some(Parsed::Onnx(sig)) => (Some(sig), None),
        Some(Parsed::Gguf(meta)) => (None, Some(*meta)),
        None => (None, None),
    };
    let entry = FileEntry {
        path,
        cid: stored.id,
        size: stored.size,
        media_type,
        onnx,
        gguf,
    };
    state.inner.catalog.put_file(&name, version, &entry).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

/// Stores a model upload while it is parsed from the same stream: one pass, and a file that
/// does not parse is never stored.
async fn store_model(
    state: &HubState,
    stream: impl futures::Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    declared: BlobId,
    limit: u64,
    path: FilePath,
    format: ModelFormat,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(cairn_store::StoredBlob, Option<Parsed>), ApiError> {
    // Tee the stream into the reader on a blocking thread: one pass, bounded memory. A reader
    // that refuses the file records why at once (`refusal`).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let refusal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let shown = path;
    let describe =
        move |e: String| format!("file `{shown}` is declared as {} but {e}", format.name());
    let parser = {
        let refusal = Arc::clone(&refusal);
        let describe = describe.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the reader is done with the blocking thread.
            let _permit = permit;
            let reader = ChannelReader::new(rx);
            let result = match format {
                ModelFormat::Onnx => {
                    cairn_onnx::read_signature(reader, cairn_onnx::Limits::default())
                        .map(Parsed::Onnx)
                        .map_err(|e| e.to_string())
                }
                ModelFormat::Gguf => {
                    cairn_gguf::read_metadata(reader, cairn_gguf::Limits::default())
                        .map(|m| Parsed::Gguf(Box::new(m)))
                        .map_err(|e| e.to_string())
                }
            };
            if let Err(e) = &result {
                *refusal.lock().expect("not poisoned") = Some(describe(e.clone()));
            }
            result
        })
    };
    // Both readers read to the end of the file, so a reader that hangs up early has refused
    // the file (or crashed): the upload stops there, after a bounded part of the rest is read
    // so a client still sending reads the answer rather than a reset.
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let stopped = Arc::clone(&stopped);
        let after = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        stream
            .and_then(move |chunk| {
                let tx = tx.clone();
                let (stopped, after) = (Arc::clone(&stopped), Arc::clone(&after));
                async move {
                    if tx.send(chunk.clone()).await.is_err() {
                        let read =
                            after.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                        if read + chunk.len() > DRAIN_BEFORE_REFUSING {
                            stopped.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(io::Error::other("the file was refused"));
                        }
                    }
                    Ok(chunk)
                }
            })
            .boxed()
    };
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
    let check = async move {
        let result = parser
            .await
            .map_err(|e| format!("{} reader crashed: {e}", format.name()))?;
        match result {
            Ok(parsed) => {
                let _ = verdict_tx.send(parsed);
                Ok(())
            }
            Err(e) => Err(describe(e)),
        }
    };
    let refused =
        |reason: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format.invalid(), reason);
    let stored = state
        .inner
        .store
        .put_checked(stream, Some(declared), limit, check)
        .await
        .map_err(|e| {
            let reason = refusal.lock().expect("not poisoned").take();
            let stopped = stopped.load(std::sync::atomic::Ordering::Relaxed);
            match (e, reason) {
                (StoreError::Rejected(reason), _) => refused(reason),
                // Stopped because the reader hung up: its reason, or its crash.
                (_, Some(reason)) if stopped => refused(reason),
                (_, None) if stopped => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!(
                        "the {} reader stopped before the end of the file",
                        format.name()
                    ),
                ),
                // The store's or the stream's own failure (too large, over quota, CID mismatch,
                // a client gone quiet) comes first: the reader it cut off would only say
                // "truncated".
                (e, _) => e.into(),
            }
        })?;
    Ok((stored, verdict_rx.await.ok()))
}

/// `stream`, ended with an error when no chunk arrives for `idle`.
fn idle_cut(
    stream: impl futures::Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    idle: std::time::Duration,
) -> futures::stream::BoxStream<'static, Result<Bytes, io::Error>> {
    futures::stream::unfold(Some(stream.boxed()), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no upload data for {} s", idle.as_secs()),
                )),
                None,
            )),
        }
    })
    .boxed()
}

/// A blocking `Read` over chunks arriving on a channel; end of stream when the sender is gone.
pub(super) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub(super) fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
