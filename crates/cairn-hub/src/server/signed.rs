//! Signed writes: the signer of a request, checked before its body is read.

use super::*;

/// A verified signer of a write request. The body digest it signed is checked by whoever reads
/// the body: [`SignedJson`] at once, uploads against the stored content's id.
pub(super) struct Signer {
    pub(super) address: Address,
    pub(super) body_sha256: [u8; 32],
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
pub(super) fn request_host<'a>(parts: &'a Parts, public: &'a [String]) -> &'a str {
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
pub(super) struct SignedJson<T> {
    pub(super) signer: Address,
    pub(super) value: T,
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
