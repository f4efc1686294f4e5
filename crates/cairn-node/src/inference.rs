//! The inference core: runs a prepared model on inputs and signs what came out, with the log
//! entry that must be committed before the answer goes out. It knows nothing of HTTP, queues or
//! payments' wire forms; the KServe route adapts it.

use alloy_primitives::{B256, U256};
use cairn_core::tensor::tensors_hash;
use cairn_core::{BlobId, ExecutionProfile, Tensor};
use cairn_engine::{EngineError, Plan};
use cairn_node_api::SealChoice;
use cairn_node_api::safetensors_io;
use cairn_receipt::{Claims, ReceiptSigner};

use crate::log::{Billing, Entry, ToLog};

/// What signs receipts, and the bounds on what it signs.
pub struct Signer {
    /// The node's key and the receipts' EIP-712 domain.
    pub receipts: ReceiptSigner,
    /// Keys the payload capability tokens.
    pub token_key: B256,
    /// Largest outputs signed: verifiers must be able to fetch what is kept.
    pub max_output_bytes: usize,
}

/// What a call is charged, and how its receipt is billed.
#[derive(Clone, Copy, Debug)]
pub struct Charge {
    /// The receipt's price.
    pub price: U256,
    /// The payment's reference (zero when unpaid).
    pub payment_ref: B256,
    /// `AwaitingPayment` until a payment settles; `Final` for a node that is not paid.
    pub billing: Billing,
    /// Who paid.
    pub payer: Option<alloy_primitives::Address>,
}

impl Charge {
    /// The charge of a call: what `paid` paid; on a node that takes payments, nothing without
    /// one; else the node's own `price`. A paid receipt counts only once its payment settles.
    pub fn of(paid: Option<&cairn_x402::Paid>, takes_payments: bool, price: U256) -> Self {
        match paid {
            Some(p) => Self {
                price: p.amount,
                payment_ref: p.payment_ref,
                billing: Billing::AwaitingPayment,
                payer: Some(p.payer),
            },
            None => Self {
                price: if takes_payments { U256::ZERO } else { price },
                payment_ref: B256::ZERO,
                billing: Billing::Final,
                payer: None,
            },
        }
    }
}

/// Why an inference produced no receipt.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The inputs do not fit the model (the caller's fault).
    #[error("{0}")]
    Input(String),
    /// The model failed on inputs it accepted.
    #[error("{0}")]
    Model(String),
    /// The outputs are larger than this node signs and keeps.
    #[error("the outputs take {bytes} bytes, over this node's {limit} byte limit")]
    OutputTooLarge {
        /// Their size.
        bytes: usize,
        /// The node's limit.
        limit: usize,
    },
}

/// One inference; its receipt is in the log [`Entry`] (signed there for a batch seal), and
/// [`crate::log::ReceiptLog::append`] hands it back committed.
pub struct Inference {
    /// Every output of the model, in graph order.
    pub outputs: Vec<Tensor>,
    /// The capability to read this receipt's payloads.
    pub token: B256,
}

/// Runs `plan` (the model `model`, on `profile`) and signs the result (`seal`: here, or with the
/// other receipts the log commits with it). Blocking and CPU-bound.
pub fn run(
    plan: &dyn Plan,
    model: BlobId,
    profile: ExecutionProfile,
    inputs: &[Tensor],
    charge: Charge,
    signer: &Signer,
    seal: SealChoice,
) -> Result<(Inference, Entry), InferenceError> {
    let outputs = plan.run(inputs).map_err(|e| match e {
        EngineError::Input(m) => InferenceError::Input(m),
        EngineError::Run(m) => InferenceError::Model(m),
        other => InferenceError::Model(other.to_string()),
    })?;
    let out_bytes: usize = outputs.iter().map(|t| t.data().len()).sum();
    if out_bytes > signer.max_output_bytes {
        return Err(InferenceError::OutputTooLarge {
            bytes: out_bytes,
            limit: signer.max_output_bytes,
        });
    }
    let claims = Claims {
        request_id: crate::new_request_id(),
        model,
        input_hash: tensors_hash(inputs),
        output_hash: tensors_hash(&outputs),
        profile,
        timestamp: crate::now_secs(),
        price: charge.price,
        payment_ref: charge.payment_ref,
        llm: None,
    };
    let token = payload_token(&signer.token_key, claims.request_id);
    let (receipt, digest) = match seal {
        SealChoice::Own => {
            let (receipt, digest) = signer.receipts.sign_with_digest(claims);
            (ToLog::Signed(receipt), digest)
        }
        SealChoice::Batch => {
            let digest = signer.receipts.digest(&claims);
            (ToLog::ToSign(claims), digest)
        }
    };
    let entry = Entry::new(
        receipt,
        digest,
        safetensors_io::encode(inputs),
        safetensors_io::encode(&outputs),
        charge.billing,
        charge.payer,
    );
    Ok((Inference { outputs, token }, entry))
}

/// The capability token that lets whoever holds it read receipt `id`'s payloads (handed to the
/// caller with the response).
pub fn payload_token(key: &B256, id: B256) -> B256 {
    alloy_primitives::keccak256([key.as_slice(), id.as_slice()].concat())
}
