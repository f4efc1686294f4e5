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

mod blobs;
mod signed;
mod uploads;

use blobs::*;
use signed::*;
use uploads::*;

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
    /// Permits to read a model upload (see `HubConfig::max_model_parses`).
    model_parses: Arc<tokio::sync::Semaphore>,
    max_model_parses: usize,
    upload_idle: std::time::Duration,
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
                model_parses: Arc::new(tokio::sync::Semaphore::new(config.max_model_parses)),
                max_model_parses: config.max_model_parses,
                upload_idle: config.upload_idle,
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
    let api = api
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()));
    // `GET /metrics`: requests by route template, method and status, and their latency.
    cairn_serve::metrics::serve(
        api,
        std::sync::Arc::new(cairn_serve::metrics::Metrics::new("cairn_hub")),
    )
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
