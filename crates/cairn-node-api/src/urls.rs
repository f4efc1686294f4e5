//! Where each route of a node is: the one place its paths are spelled for callers.

use alloy_primitives::{Address, B256};

/// Which payload of a receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The inputs the node kept.
    Input,
    /// The outputs it kept.
    Output,
}

impl Payload {
    /// `input` or `output`, as in the route.
    pub fn as_str(self) -> &'static str {
        match self {
            Payload::Input => "input",
            Payload::Output => "output",
        }
    }
}

/// The URLs of one node's routes, from its base URL (`http://127.0.0.1:7401`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeUrls {
    base: String,
}

impl NodeUrls {
    /// URLs under `base` (a trailing `/` is ignored).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v2/models/{model}/infer`.
    pub fn infer(&self, model: &str) -> String {
        format!("{}/v2/models/{model}/infer", self.base)
    }

    /// `GET /v2/models/{model}`.
    pub fn model(&self, model: &str) -> String {
        format!("{}/v2/models/{model}", self.base)
    }

    /// `POST /v1/chat/completions`.
    pub fn chat_completions(&self) -> String {
        format!("{}/v1/chat/completions", self.base)
    }

    /// `GET /v1/node`.
    pub fn info(&self) -> String {
        format!("{}/v1/node", self.base)
    }

    /// `GET /v1/receipts/{id}`.
    pub fn receipt(&self, id: B256) -> String {
        format!("{}/v1/receipts/{id}", self.base)
    }

    /// `GET /v1/receipts/{id}/input|output`.
    pub fn payload(&self, id: B256, which: Payload) -> String {
        format!("{}/v1/receipts/{id}/{}", self.base, which.as_str())
    }

    /// `GET /v1/batches/{id}`.
    pub fn batch(&self, id: u64) -> String {
        format!("{}/v1/batches/{id}", self.base)
    }

    /// `POST /v1/batches/{id}/attestations`.
    pub fn attestations(&self, id: u64) -> String {
        format!("{}/v1/batches/{id}/attestations", self.base)
    }

    /// `GET /v1/prepaid/{payer}?salt=`.
    pub fn prepaid_channel(&self, payer: Address, salt: B256) -> String {
        format!("{}/v1/prepaid/{payer}?salt={salt}", self.base)
    }

    /// `POST /v1/prepaid/deposits`.
    pub fn prepaid_deposits(&self) -> String {
        format!("{}/v1/prepaid/deposits", self.base)
    }
}
