//! The inference node's HTTP API, defined once: the KServe v2 codec ([`kserve`]), the payload
//! file form ([`safetensors_io`]), the bodies of Cairn's own routes ([`types`]), where each route
//! is ([`urls`]) and [`NodeClient`]. The node serves these types; the CLI, the verifier and the
//! tests read them.

pub mod client;
pub mod fetch;
pub mod kserve;
pub mod openai;
pub mod safetensors_io;
pub mod types;
pub mod urls;

pub use cairn_core::ErrorBody;
pub use client::{ChatOutcome, InferOutcome, NodeClient, NodeClientError, PaymentMade};
pub use types::*;
pub use urls::{NodeUrls, Payload};

/// Header carrying the payload capability token in a response (and accepted in a request).
pub const PAYLOAD_TOKEN_HEADER: &str = "cairn-payload-token";

/// Media type of a batch listing in binary form (`cairn_receipt::compact`): what verifiers ask
/// `GET /v1/batches/{id}` for with `Accept`, since checking it costs a fraction of the JSON.
pub const RECEIPT_LISTING_TYPE: &str = "application/vnd.cairn.receipt-listing";

/// The most receipts a settlement batch may hold: a node seals no larger batch, and a verifier
/// refuses a larger one before fetching it (checking a batch costs a verifier one signature
/// recovery per receipt signed on its own, and the node names the count).
pub const MAX_BATCH_RECEIPTS: u64 = 65_536;

/// Request header choosing how the answer's receipt is signed: `own` (the default: a signature
/// over the receipt alone) or `batch` (one signature over the root of the receipts committed
/// together, with this receipt's Merkle proof; see `cairn_receipt::Seal`).
pub const RECEIPT_SEAL_HEADER: &str = "cairn-receipt-seal";

/// The media type of a private call's payload as a node keeps and serves it: sealed to the
/// verifiers active at the call (`cairn_ohttp::sealed`), opened only by them.
pub const SEALED_PAYLOAD_TYPE: &str = "application/vnd.cairn.sealed-payload";

/// How a caller asks for its receipt to be signed ([`RECEIPT_SEAL_HEADER`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SealChoice {
    /// The receipt's own signature.
    #[default]
    Own,
    /// One signature over the root of the micro-batch it was committed in.
    Batch,
}

impl SealChoice {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            SealChoice::Own => "own",
            SealChoice::Batch => "batch",
        }
    }
}

impl std::str::FromStr for SealChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "own" => Ok(SealChoice::Own),
            "batch" => Ok(SealChoice::Batch),
            other => Err(format!(
                "{RECEIPT_SEAL_HEADER} must be `own` or `batch`, not `{other}`"
            )),
        }
    }
}
