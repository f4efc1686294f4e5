//! The hub's HTTP API.

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use cairn_catalog::{Catalog, now_secs};
use cairn_core::auth::{MAX_CLOCK_SKEW_SECS, SignedHeaders};
use cairn_core::{Address, BlobId, FilePath, ModelRef, RepoName, Version};
use cairn_hub_api::types::{
    CreateRelease, FileEntry, Health, NewRepo, Release, Repo, RepoDetail, RepoList, Resolved,
    Search,
};
use cairn_store::{BlobStore, StoreError};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use utoipa::OpenApi;

use crate::error::{ApiError, ErrorBody};

/// Media type recorded for ONNX files.
pub const ONNX_MEDIA_TYPE: &str = "application/onnx";
/// Largest JSON body a write may carry.
const MAX_JSON_BODY: usize = 256 << 10;

/// What the handlers share.
#[derive(Clone)]
pub struct HubState {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    store: BlobStore,
    max_upload_bytes: u64,
    owner_quota_bytes: u64,
    draft_ttl: std::time::Duration,
    gc: (std::time::Duration, std::time::Duration),
    public_hosts: Vec<String>,
}

impl HubState {
    /// State over a catalog and a blob store, with `config`'s bounds.
    pub fn new(catalog: Catalog, store: BlobStore, config: &crate::HubConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                store,
                max_upload_bytes: config.max_upload_bytes,
                owner_quota_bytes: config.owner_quota_bytes,
                draft_ttl: config.draft_ttl,
                gc: (config.gc_every, config.orphan_grace),
                public_hosts: config
                    .public_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            }),
        }
    }

    /// (how often to collect, how old an unattached blob must be).
    pub(crate) fn gc_schedule(&self) -> (std::time::Duration, std::time::Duration) {
        self.inner.gc
    }

    /// Deletes expired drafts, then the blobs no release holds that are older than `grace`.
    pub(crate) async fn collect(
        &self,
        grace: std::time::Duration,
    ) -> Result<(u64, usize), crate::HubError> {
        let i = &self.inner;
        let drafts = i
            .catalog
            .expire_drafts(now_secs() - i.draft_ttl.as_secs() as i64)
            .await?;
        let held = i.catalog.referenced_cids().await?;
        let cutoff = std::time::SystemTime::now() - grace;
        let mut blobs = 0;
        for (id, written) in i.store.list().await? {
            // Asked again right before deleting: an upload of the same bytes may have attached
            // it since the snapshot.
            if written < cutoff
                && !held.contains(&id.to_string())
                && !i.catalog.cid_held(&id).await?
            {
                i.store.delete(&id).await?;
                blobs += 1;
            }
        }
        Ok((drafts, blobs))
    }
}

/// The hub's routes, including `/openapi.json` and the Swagger UI at `/docs`.
pub fn router(state: HubState) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/v1/repos", post(create_repo).get(list_repos))
        .route("/v1/repos/{name}", get(show_repo))
        .route("/v1/repos/{name}/releases", post(create_release))
        .route(
            "/v1/repos/{name}/releases/{version}/publish",
            post(publish_release),
        )
        .route(
            "/v1/repos/{name}/releases/{version}/files/{*path}",
            put(upload_file).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/resolve/{*reference}", get(resolve))
        .route("/v1/blobs/{cid}", get(download_blob))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_route",
                "no such endpoint; see /openapi.json",
            )
        })
        .with_state(state);
    api.merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The OpenAPI description of the hub.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn Model Hub",
        description = "Content-addressed, versioned model registry. Reads are public. Writes are signed: \
        send `cairn-address`, `cairn-timestamp` (Unix seconds), `cairn-nonce` (16 random bytes, hex), \
        `cairn-content-sha256` (SHA-256 of the body, hex; for uploads the file's digest) and \
        `cairn-signature`: an EIP-191 personal_sign of \"Cairn signed request v2\\nhost: HOST[:PORT]\\nmethod: M\\ntarget: \
        PATH?QUERY\\nbody-sha256: HEX\\ntimestamp: T\\nnonce: HEX\". Every error is JSON {code, message}."
    ),
    paths(
        health,
        create_repo,
        list_repos,
        show_repo,
        create_release,
        publish_release,
        upload_file,
        resolve,
        download_blob
    ),
    components(schemas(ErrorBody, Health, CreateRelease, cairn_onnx::OnnxSignature))
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// A verified signer of a write request. The body digest it signed is checked by whoever reads
/// the body: [`SignedJson`] at once, uploads against the stored content's id.
struct Signer {
    address: Address,
    body_sha256: [u8; 32],
}

impl FromRequestParts<HubState> for Signer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HubState) -> Result<Self, ApiError> {
        let headers = SignedHeaders::from_lookup(|name| {
            parts.headers.get(name).and_then(|v| v.to_str().ok())
        })?;
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let now = now_secs().max(0) as u64;
        let host = request_host(parts, &state.inner.public_hosts);
        let address = headers.verify(host, parts.method.as_str(), target, now)?;
        let expires = (headers.timestamp + MAX_CLOCK_SKEW_SECS + 1) as i64;
        if !state
            .inner
            .catalog
            .use_nonce(address, &headers.nonce, expires)
            .await?
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "signature_replayed",
                "this signed request was already used; sign each request with a fresh nonce",
            ));
        }
        Ok(Self {
            address,
            body_sha256: headers.body_sha256,
        })
    }
}

/// An unsigned request has no signer; a signed one must verify.
impl axum::extract::OptionalFromRequestParts<HubState> for Signer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HubState,
    ) -> Result<Option<Self>, ApiError> {
        if !parts
            .headers
            .contains_key(cairn_core::auth::HEADER_SIGNATURE)
        {
            return Ok(None);
        }
        <Self as FromRequestParts<HubState>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// The host a request's signature must name: one of the hub's public hosts (the one the
/// request was sent to, when it is one), so a write signed for another hub and relayed here
/// with a forged `Host` is refused; the request's own `Host` when none is configured.
fn request_host<'a>(parts: &'a Parts, public: &'a [String]) -> &'a str {
    let sent = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    match public.first() {
        None => sent,
        Some(first) => public
            .iter()
            .find(|h| h.eq_ignore_ascii_case(sent))
            .unwrap_or(first),
    }
}

/// A signed request with a JSON body whose digest matches the signature.
struct SignedJson<T> {
    signer: Address,
    value: T,
}

impl<T: serde::de::DeserializeOwned> FromRequest<HubState> for SignedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HubState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let signer = Signer::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, MAX_JSON_BODY)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("JSON bodies are limited to {MAX_JSON_BODY} bytes"),
                )
            })?;
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != signer.body_sha256 {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "body_digest_mismatch",
                "the body does not match the signed cairn-content-sha256",
            ));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("invalid JSON body: {e}"),
            )
        })?;
        Ok(Self {
            signer: signer.address,
            value,
        })
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, ApiError>
where
    ApiError: From<T::Err>,
{
    s.parse().map_err(ApiError::from)
}

async fn owned_repo(state: &HubState, name: &RepoName, signer: Address) -> Result<Repo, ApiError> {
    let repo = state.inner.catalog.repo(name).await?;
    if repo.owner != signer {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_owner",
            format!(
                "only the owner of `{name}` ({}) may write to it; this request was signed by {signer}",
                repo.owner
            ),
        ));
    }
    Ok(repo)
}

#[utoipa::path(post, path = "/v1/repos", request_body = NewRepo,
    responses((status = 201, body = Repo), (status = 409, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_repo(
    State(state): State<HubState>,
    req: SignedJson<NewRepo>,
) -> Result<(StatusCode, Json<Repo>), ApiError> {
    let repo = state
        .inner
        .catalog
        .create_repo(req.signer, &req.value, now_secs())
        .await?;
    Ok((StatusCode::CREATED, Json(repo)))
}

#[utoipa::path(get, path = "/v1/repos", params(Search), responses((status = 200, body = RepoList)))]
async fn list_repos(
    State(state): State<HubState>,
    Query(search): Query<Search>,
) -> Result<Json<RepoList>, ApiError> {
    Ok(Json(RepoList {
        repos: state.inner.catalog.search(&search).await?,
    }))
}

#[utoipa::path(get, path = "/v1/repos/{name}", responses((status = 200, body = RepoDetail), (status = 404, body = ErrorBody)))]
async fn show_repo(
    State(state): State<HubState>,
    Path(name): Path<String>,
) -> Result<Json<RepoDetail>, ApiError> {
    Ok(Json(state.inner.catalog.repo_detail(&parse(&name)?).await?))
}

#[utoipa::path(post, path = "/v1/repos/{name}/releases", request_body = CreateRelease,
    responses((status = 201, description = "draft created", body = Release), (status = 200, description = "existing draft", body = Release),
              (status = 409, description = "already published", body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_release(
    State(state): State<HubState>,
    Path(name): Path<String>,
    req: SignedJson<CreateRelease>,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    let name: RepoName = parse(&name)?;
    owned_repo(&state, &name, req.signer).await?;
    let (release, created) = state
        .inner
        .catalog
        .create_release(&name, req.value.version, &req.value.notes, now_secs())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(release)))
}

#[utoipa::path(post, path = "/v1/repos/{name}/releases/{version}/publish",
    responses((status = 200, body = Release), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn publish_release(
    State(state): State<HubState>,
    Path((name, version)): Path<(String, String)>,
    req: SignedJson<serde_json::Value>,
) -> Result<Json<Release>, ApiError> {
    let name: RepoName = parse(&name)?;
    owned_repo(&state, &name, req.signer).await?;
    Ok(Json(
        state
            .inner
            .catalog
            .publish(&name, parse(&version)?, now_secs())
            .await?,
    ))
}

/// An ONNX file is one whose media type says so or whose name ends in `.onnx`.
fn is_onnx(media_type: &str, path: &FilePath) -> bool {
    media_type == ONNX_MEDIA_TYPE || path.as_str().ends_with(".onnx")
}

/// Most of an unread upload body the hub reads and drops before answering a refusal.
const DRAIN_BEFORE_REFUSING: usize = 16 << 20;

#[utoipa::path(put, path = "/v1/repos/{name}/releases/{version}/files/{path}",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file. `cairn-content-sha256` declares its digest (= its CID); a mismatch stores nothing."),
    responses((status = 201, body = FileEntry), (status = 422, description = "cid_mismatch or invalid_onnx", body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn upload_file(
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

async fn store_upload(
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
        let shown = path.clone();
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
        (stored, verdict_rx.await.ok())
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

/// A blocking `Read` over chunks arriving on a channel; end of stream when the sender is gone.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
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

#[utoipa::path(get, path = "/v1/resolve/{reference}",
    params(("reference" = String, Path, description = "`name`, `name@MAJOR.MINOR` or `name@MAJOR.MINOR/path`")),
    responses((status = 200, body = Resolved), (status = 404, body = ErrorBody), (status = 409, description = "ambiguous_file", body = ErrorBody)))]
async fn resolve(
    State(state): State<HubState>,
    Path(reference): Path<String>,
) -> Result<Json<Resolved>, ApiError> {
    match parse::<ModelRef>(&reference)? {
        ModelRef::Blob(id) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "already_a_cid",
            format!("{id} is already a content address; fetch it from /v1/blobs/{id}"),
        )),
        ModelRef::Named {
            repo,
            version,
            path,
        } => Ok(Json(
            state
                .inner
                .catalog
                .resolve(&repo, version, path.as_ref())
                .await?,
        )),
    }
}

/// Parses a single `bytes=` range against `size`. `Ok(None)` means "serve everything" (no
/// header, or a form this server does not split, such as several ranges).
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| ());
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n = num(suffix)?.min(size);
            size - n..size
        }
        (start, "") => num(start)?..size,
        (start, end) => num(start)?..num(end)?.saturating_add(1).min(size),
    };
    if range.start >= range.end || range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

#[utoipa::path(get, path = "/v1/blobs/{cid}",
    params(("cid" = String, Path, description = "`bafkrei…` or `sha256:<hex>`")),
    responses((status = 200, description = "the bytes; ETag is the CID, cached forever", content_type = "application/octet-stream"),
              (status = 206, description = "a byte range"), (status = 304, description = "not modified"),
              (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
async fn download_blob(
    State(state): State<HubState>,
    method: Method,
    Path(cid): Path<String>,
    signer: Option<Signer>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: BlobId = parse(&cid)?;
    // Only files of published releases are served to anyone: a draft's bytes are its owner's
    // (a request signed by the owner reads them), and nobody can make a node fetch what no
    // release vouches for.
    let visible = state.inner.catalog.blob_published(&id).await?
        || match &signer {
            Some(s) => {
                state
                    .inner
                    .catalog
                    .blob_in_drafts_of(&id, s.address)
                    .await?
            }
            None => false,
        };
    if !visible {
        return Err(StoreError::NotFound(id).into());
    }
    let etag = format!("\"{id}\"");
    let common = [
        (header::ETAG, etag.clone()),
        (
            header::CACHE_CONTROL,
            "public, max-age=31536000, immutable".to_owned(),
        ),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
    ];
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let size = state
        .inner
        .store
        .size(&id)
        .await?
        .ok_or(StoreError::NotFound(id))?;
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let range = byte_range(&headers, size).map_err(|()| {
        let mut e = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the requested range is outside the blob's {size} bytes"),
        )
        .into_response();
        e.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
        );
        e
    });
    let range = match range {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    let (status, span) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    let mut response = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let read = state
            .inner
            .store
            .get(&id, range.filter(|r| *r != (0..size)))
            .await?;
        Response::new(Body::from_stream(read.stream))
    };
    *response.status_mut() = status;
    let h = response.headers_mut();
    for (name, value) in common {
        h.insert(name, HeaderValue::from_str(&value).expect("ascii"));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {}-{}/{size}", span.start, span.end - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("ascii"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_in_the_openapi_document() {
        use utoipa::OpenApi;
        cairn_core::api::assert_routes_documented(
            include_str!("server.rs"),
            &super::ApiDoc::openapi(),
        );
    }

    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        byte_range(&h, size)
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(range("bytes=-10", 100), Ok(Some(90..100)));
        assert_eq!(range("bytes=-1000", 100), Ok(Some(0..100)));
        assert_eq!(range("bytes=50-1000", 100), Ok(Some(50..100)));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=9-3", 100), Err(()));
        assert_eq!(range("bytes=0-0", 0), Err(()));
        assert_eq!(range("bytes=x-1", 100), Err(()));
        assert_eq!(byte_range(&HeaderMap::new(), 5), Ok(None));
    }
}
