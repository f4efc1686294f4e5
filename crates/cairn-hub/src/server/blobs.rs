//! Reads: labels resolved to content, and blobs served with ranges and validators.

use super::*;

#[utoipa::path(get, path = "/v1/resolve/{reference}",
    params(("reference" = String, Path, description = "`name`, `name@MAJOR.MINOR` or `name@MAJOR.MINOR/path`")),
    responses((status = 200, body = Resolved), (status = 404, body = ErrorBody), (status = 409, description = "ambiguous_file", body = ErrorBody)))]
pub(super) async fn resolve(
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
pub(super) fn byte_range(
    headers: &HeaderMap,
    size: u64,
) -> Result<Option<std::ops::Range<u64>>, ()> {
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
pub(super) async fn download_blob(
    State(state): State<HubState>,
    method: Method,
    Path(cid): Path<String>,
    signer: Option<Signer>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: BlobId = parse(&cid)?;
    ensure_visible(&state, &id, signer.as_ref()).await?;
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
    let range = match byte_range(&headers, size) {
        Ok(r) => r,
        Err(()) => return Ok(unsatisfiable(size)),
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

/// Only files of published releases are served to anyone: a draft's bytes are its owner's
/// (a request signed by the owner reads them), and nobody can make a node fetch what no
/// release vouches for.
async fn ensure_visible(
    state: &HubState,
    id: &BlobId,
    signer: Option<&Signer>,
) -> Result<(), ApiError> {
    let visible = state.inner.catalog.blob_published(id).await?
        || match signer {
            Some(s) => state.inner.catalog.blob_in_drafts_of(id, s.address).await?,
            None => false,
        };
    if !visible {
        return Err(StoreError::NotFound(*id).into());
    }
    Ok(())
}

/// 416 with the blob's size, as RFC 9110 asks.
fn unsatisfiable(size: u64) -> Response {
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
}
