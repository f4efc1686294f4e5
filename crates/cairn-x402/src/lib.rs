//! x402 payments for Cairn.
//!
//! - [`wire`]: the protocol's JSON and headers, version 2 with version 1 beside it.
//! - [`exact`]: scheme `exact` on EVM (EIP-3009), checked locally in microseconds.
//! - [`prepaid`]: Cairn's prepaid scheme: cumulative EIP-712 vouchers against the Escrow
//!   contract, checked without any chain call and redeemed periodically.
//! - [`upto`]: scheme `upto` on EVM (Permit2 witness transfers through the x402 `upto` proxy):
//!   the payer authorizes a maximum, the call is charged what it cost.
//! - [`batch`]: scheme `batch-settlement` (the x402 project's payment channels): a deposit
//!   once, then a cumulative voucher per request, checked without a chain call and claimed in
//!   batches.
//! - [`store`]: the durable payment store (no authorization runs twice).
//! - [`facilitator`]: verify and settle `exact` payments on a [`cairn_ledger::Chain`], plus the
//!   standard facilitator HTTP API (`/verify`, `/settle`, `/supported`).
//! - [`paywall`]: an axum/tower layer that prices a request, answers 402, reserves the payment,
//!   runs the route, settles, and only then releases the response.
//! - [`client`]: the paying side (choose an offer, sign, build the header).

pub mod batch;
pub mod client;
pub mod exact;
pub mod facilitator;
pub mod pacing;
pub mod paywall;
pub mod prepaid;
pub mod store;
pub mod upto;
pub mod wire;

pub use facilitator::Facilitator;
pub use paywall::{KeptAnswers, Metered, Paid, Paywall, Price, Pricing};
pub use store::PaymentStore;

/// A refusal with a machine reason in the reference implementations' style and a human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// Stable machine code (`invalid_exact_evm_payload_signature`, …).
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
}

impl Reason {
    /// A reason.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Errors of the payment layer.
#[derive(Debug, thiserror::Error)]
pub enum X402Error {
    /// A header or body that does not decode.
    #[error("{0}")]
    Malformed(String),
    /// A well-formed payment that is refused.
    #[error("{0}")]
    Invalid(Reason),
    /// The chain could not be read or written.
    #[error("chain: {0}")]
    Chain(#[from] cairn_ledger::LedgerError),
    /// The payment store failed.
    #[error("payment store: {0}")]
    Store(String),
}

impl X402Error {
    /// The machine reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "invalid_payload",
            Self::Invalid(r) => r.code,
            Self::Chain(_) => "unexpected_chain_error",
            Self::Store(_) => "unexpected_store_error",
        }
    }
}

pub(crate) use cairn_core::clock::now_secs;

#[cfg(test)]
mod paywall_tests;
#[cfg(test)]
mod tests;
