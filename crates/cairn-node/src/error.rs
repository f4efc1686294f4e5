//! Node errors and their JSON form `{code, message}` (plus KServe's `error` field).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::ErrorBody;
use cairn_node_api::kserve::KserveError;

/// Everything a node request can fail with. Each variant has a stable machine code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Malformed request body or parameters.
    #[error("{0}")]
    BadRequest(String),
    /// A body that is not a KServe v2 request this node can run (its own machine codes).
    #[error(transparent)]
    Kserve(#[from] KserveError),
    /// Input names do not match the model's.
    #[error("{0}")]
    WrongInput(String),
    /// Input datatype does not match the model's.
    #[error("{0}")]
    WrongDatatype(String),
    /// An output name the model does not have.
    #[error("{0}")]
    UnknownOutput(String),
    /// Body over the size limit.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The model reference names nothing the hub knows.
    #[error("{0}")]
    ModelNotFound(String),
    /// Not a model reference.
    #[error("{0}")]
    BadModelRef(String),
    /// The file is not a loadable ONNX model.
    #[error("{0}")]
    InvalidModel(String),
    /// The model failed on valid inputs.
    #[error("{0}")]
    ModelFailed(String),
    /// Queues are full.
    #[error("{0}")]
    Overloaded(String),
    /// The inference did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// No such receipt.
    #[error("{0}")]
    ReceiptNotFound(String),
    /// The hub could not be reached.
    #[error("{0}")]
    HubUnavailable(String),
    /// No such endpoint.
    #[error("{0}")]
    NotFound(String),
    /// A body of a media type the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// An Oblivious HTTP envelope that does not open (its own machine codes).
    #[error("{message}")]
    Ohttp {
        /// `ohttp_…`, from [`cairn_ohttp::OhttpError::code`].
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// An attestation whose signer is not an active verifier (or unrecoverable).
    #[error("{0}")]
    NotAVerifier(String),
    /// A signature in its malleable high-s form.
    #[error("{0}")]
    SignatureNotCanonical(String),
    /// A route that needs a signed request (or a capability) got none, or a bad one.
    #[error("{0}")]
    Unauthorized(String),
    /// A signed request from someone who may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A call this node charges for without a way to pay it yet.
    #[error("{0}")]
    PaymentRequired(String),
    /// A payment or deposit the node refuses (reason code first).
    #[error("{0}")]
    PaymentRefused(String),
    /// The chain could not be reached or refused a read.
    #[error("{0}")]
    ChainUnavailable(String),
    /// A model of the other kind than the route runs.
    #[error("{0}")]
    WrongModelKind(String),
    /// The upstream server a model is relayed to is down, slow or answered with a failure.
    #[error("{0}")]
    Upstream(String),
    /// A language-model request this node cannot serve as asked.
    #[error(transparent)]
    Llm(#[from] crate::llm::CallError),
    /// Something on the node's side.
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    /// The stable machine code.
    pub fn code(&self) -> &'static str {
        use NodeError as E;
        match self {
            E::BadRequest(_) => "bad_request",
            E::Kserve(e) => e.code(),
            E::WrongInput(_) => "wrong_input",
            E::WrongDatatype(_) => "wrong_datatype",
            E::UnknownOutput(_) => "unknown_output",
            E::BodyTooLarge(_) => "body_too_large",
            E::ModelNotFound(_) => "model_not_found",
            E::BadModelRef(_) => "bad_model_ref",
            E::InvalidModel(_) => "invalid_model",
            E::ModelFailed(_) => "model_failed",
            E::Overloaded(_) => "overloaded",
            E::Timeout(_) => "timeout",
            E::ReceiptNotFound(_) => "receipt_not_found",
            E::HubUnavailable(_) => "hub_unavailable",
            E::NotFound(_) => "not_found",
            E::UnsupportedMediaType(_) => "unsupported_media_type",
            E::Ohttp { code, .. } => code,
            E::NotAVerifier(_) => "not_a_verifier",
            E::SignatureNotCanonical(_) => "signature_not_canonical",
            E::Unauthorized(_) => "unauthorized",
            E::Forbidden(_) => "forbidden",
            E::ChainUnavailable(_) => "chain_unavailable",
            E::PaymentRefused(_) => "payment_refused",
            E::PaymentRequired(_) => "payment_required",
            E::WrongModelKind(_) => "wrong_model_kind",
            E::Upstream(_) => "upstream_failed",
            E::Llm(crate::llm::CallError::Invalid { .. }) => "invalid_request",
            E::Llm(crate::llm::CallError::ContextLength(_)) => "context_length_exceeded",
            E::Llm(crate::llm::CallError::Model(_)) => "model_failed",
            E::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        use NodeError as E;
        match self {
            E::BadRequest(_)
            | E::Kserve(_)
            | E::WrongInput(_)
            | E::WrongDatatype(_)
            | E::UnknownOutput(_)
            | E::BadModelRef(_)
            | E::WrongModelKind(_)
            | E::Llm(crate::llm::CallError::Invalid { .. })
            | E::Llm(crate::llm::CallError::ContextLength(_))
            | E::SignatureNotCanonical(_)
            | E::Ohttp { .. } => StatusCode::BAD_REQUEST,
            E::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            E::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            E::Forbidden(_) => StatusCode::FORBIDDEN,
            E::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            E::ModelNotFound(_) | E::ReceiptNotFound(_) | E::NotFound(_) => StatusCode::NOT_FOUND,
            E::InvalidModel(_) | E::ModelFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            E::HubUnavailable(_) | E::ChainUnavailable(_) | E::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            E::NotAVerifier(_) => StatusCode::FORBIDDEN,
            E::PaymentRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            E::Internal(_) | E::Llm(crate::llm::CallError::Model(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// Cairn's error body plus `error`, which is what KServe clients (tritonclient) print.
#[derive(serde::Serialize)]
struct KserveErrorBody {
    #[serde(flatten)]
    body: ErrorBody,
    error: String,
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code(), message = %self, "request failed");
        }
        let message = self.to_string();
        let body = KserveErrorBody {
            error: message.clone(),
            body: ErrorBody::new(self.code(), message),
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<crate::log::LogError> for NodeError {
    fn from(e: crate::log::LogError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<crate::cache::CacheError> for NodeError {
    fn from(e: crate::cache::CacheError) -> Self {
        use crate::cache::CacheError as C;
        match e {
            C::BadRef(m) => Self::BadModelRef(m),
            C::NotFound(m) => Self::ModelNotFound(m),
            C::Invalid(m) => Self::InvalidModel(m),
            C::HubUnavailable(m) => Self::HubUnavailable(m),
            C::Local(_) => Self::Internal(e.to_string()),
            C::WrongKind(m) => Self::WrongModelKind(m),
        }
    }
}

impl From<crate::inference::InferenceError> for NodeError {
    fn from(e: crate::inference::InferenceError) -> Self {
        use crate::inference::InferenceError as I;
        match e {
            I::Input(m) => Self::WrongInput(m),
            I::Model(m) => Self::ModelFailed(m),
            I::OutputTooLarge { .. } => Self::ModelFailed(e.to_string()),
        }
    }
}

impl NodeError {
    /// The request field at fault, when the error names one.
    pub fn param(&self) -> Option<&str> {
        match self {
            NodeError::Llm(crate::llm::CallError::Invalid { param, .. }) => param.as_deref(),
            NodeError::ModelNotFound(_)
            | NodeError::BadModelRef(_)
            | NodeError::WrongModelKind(_)
            | NodeError::InvalidModel(_) => Some("model"),
            _ => None,
        }
    }

    /// The error as OpenAI's API spells it: `{"error": {message, type, param, code}}`, with
    /// Cairn's `code` and `message` beside it (what the OpenAI-compatible routes answer).
    pub fn openai_body(&self) -> cairn_node_api::openai::OpenAiErrorBody {
        let status = self.status();
        let kind = match status.as_u16() {
            401 => "authentication_error",
            402 => "payment_required",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "invalid_request_error",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        cairn_node_api::openai::OpenAiErrorBody::new(
            kind,
            self.code(),
            self.param(),
            self.to_string(),
        )
    }

    /// [`NodeError::openai_body`] as a response.
    pub fn into_openai_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code(), message = %self, "request failed");
        }
        let mut resp = (status, Json(self.openai_body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
