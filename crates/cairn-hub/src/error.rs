//! Every HTTP error is JSON `{code, message}`: a stable machine code and a sentence for people.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_catalog::CatalogError;
pub use cairn_core::ErrorBody;
use cairn_core::auth::AuthError;
use cairn_core::{NameError, ParseBlobIdError};
use cairn_store::StoreError;

/// An error with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
}

impl ApiError {
    /// An error from its parts.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody::new(self.code, self.message);
        (self.status, Json(body)).into_response()
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        use CatalogError as E;
        let (status, code) = match &e {
            E::RepoExists(_) => (StatusCode::CONFLICT, "repo_exists"),
            E::RepoNotFound(_) => (StatusCode::NOT_FOUND, "repo_not_found"),
            E::ReleaseNotFound { .. } => (StatusCode::NOT_FOUND, "release_not_found"),
            E::ReleasePublished { .. } => (StatusCode::CONFLICT, "release_published"),
            E::NoPublishedRelease(_) => (StatusCode::NOT_FOUND, "no_published_release"),
            E::EmptyRelease { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "release_empty"),
            E::FileNotFound { .. } => (StatusCode::NOT_FOUND, "file_not_found"),
            E::AmbiguousFile { .. } => (StatusCode::CONFLICT, "ambiguous_file"),
            E::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            E::Database(_) | E::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "catalog_error"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StoreError as E;
        let (status, code) = match &e {
            E::NotFound(_) => (StatusCode::NOT_FOUND, "blob_not_found"),
            E::DigestMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "cid_mismatch"),
            E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            E::Body { .. } => (StatusCode::BAD_REQUEST, "upload_interrupted"),
            E::BadRange { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"),
            E::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_file"),
            E::Backend(_) | E::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Missing(_) => "signature_missing",
            AuthError::Malformed(..) => "signature_malformed",
            AuthError::WrongSigner { .. }
            | AuthError::InvalidSignature
            | AuthError::NotCanonical(_)
            | AuthError::BodyMismatch => "signature_invalid",
            AuthError::Stale { .. } => "signature_stale",
            AuthError::Replayed => "signature_replayed",
        };
        Self::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        let code = match &e {
            NameError::RepoName(_) => "invalid_repo_name",
            NameError::Version(_) => "invalid_version",
            NameError::FilePath { .. } => "invalid_path",
            NameError::Ref(_) => "invalid_ref",
        };
        Self::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<ParseBlobIdError> for ApiError {
    fn from(e: ParseBlobIdError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_blob_id", e.to_string())
    }
}
