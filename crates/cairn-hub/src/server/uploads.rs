//! Uploads: a file's bytes streamed to the blob store while hashed and, for ONNX, parsed.

use super::*;

/// An ONNX file is one whose media type says so or whose name ends in `.onnx`.
pub(super) fn is_onnx(media_type: &str, path: &FilePath) -> bool {
    media_type == ONNX_MEDIA_TYPE || path.as_str().ends_with(".onnx")
}

/// Most of an unread upload body the hub reads and drops before answering a refusal.
pub(super) const DRAIN_BEFORE_REFUSING: usize = 16 << 20;

#[utoipa::path(put, path = "/v1/repos/{name}/releases/{version}/files/{path}",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file. `cairn-content-sha256` declares its digest (= its CID); a mismatch stores nothing."),
    responses((status = 201, body = FileEntry), (status = 422, description = "cid_mismatch or invalid_onnx", body = ErrorBody),
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
    let onnx = is_onnx(&media_type, &path);
    let media_type = if onnx {
        ONNX_MEDIA_TYPE.to_owned()
    } else {
        media_type
    };

    let body = body.take().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the upload body was already taken",
        )
    })?;
    let stream = body.into_data_stream().map_err(io::Error::other);
    let limit = state.inner.max_upload_bytes.min(left);
    let (stored, signature) = if onnx {
        store_onnx(&state, stream, declared, limit, path.clone()).await?
    } else {
        (
            state.inner.store.put(stream, Some(declared), limit).await?,
            None,
        )
    };
    let entry = FileEntry {
        path,
        cid: stored.id,
        size: stored.size,
        media_type,
        onnx: signature,
    };
    state.inner.catalog.put_file(&name, version, &entry).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

/// Stores an ONNX upload while its signature is read from the same stream: one pass, and a
/// file that does not parse is never stored.
async fn store_onnx(
    state: &HubState,
    stream: impl futures::Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    declared: BlobId,
    limit: u64,
    path: FilePath,
) -> Result<(cairn_store::StoredBlob, Option<cairn_onnx::OnnxSignature>), ApiError> {
    // Tee the stream into the ONNX reader on a blocking thread: one pass, bounded memory.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let parser = tokio::task::spawn_blocking(move || {
        cairn_onnx::read_signature(ChannelReader::new(rx), cairn_onnx::Limits::default())
    });
    let stream = stream
        .and_then(move |chunk| {
            let tx = tx.clone();
            async move {
                // A parser that already failed has hung up; its verdict is collected below.
                let _ = tx.send(chunk.clone()).await;
                Ok(chunk)
            }
        })
        .boxed();
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
    let shown = path;
    let check = async move {
        let result = parser
            .await
            .map_err(|e| format!("ONNX reader crashed: {e}"))?;
        match result {
            Ok(sig) => {
                let _ = verdict_tx.send(sig);
                Ok(())
            }
            Err(e) => Err(format!("file `{shown}` is declared as ONNX but {e}")),
        }
    };
    let stored = state
        .inner
        .store
        .put_checked(stream, Some(declared), limit, check)
        .await?;
    Ok((stored, verdict_rx.await.ok()))
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
