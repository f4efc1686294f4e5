//! The inference node's HTTP API, defined once: the KServe v2 codec ([`kserve`]), the payload
//! file form ([`safetensors_io`]), the bodies of Cairn's own routes ([`types`]), where each route
//! is ([`urls`]) and [`NodeClient`]. The node serves these types; the CLI, the verifier and the
//! tests read them.

pub mod client;
pub mod kserve;
pub mod safetensors_io;
pub mod types;
pub mod urls;

pub use cairn_core::ErrorBody;
pub use client::{InferOutcome, NodeClient, NodeClientError, PaymentMade};
pub use types::*;
pub use urls::{NodeUrls, Payload};

/// Header carrying the payload capability token in a response (and accepted in a request).
pub const PAYLOAD_TOKEN_HEADER: &str = "cairn-payload-token";
