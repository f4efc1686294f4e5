//! Ways a node can be told to lie, for tests and demonstrations of slashing. The tensor lie
//! wraps the engine ([`LyingEngine`]), so the KServe path has no fault code in it; the
//! language-model lie ([`alter_answer`]) is one call on the OpenAI routes' whole answers.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::B256;
use cairn_core::{ExecutionProfile, Tensor};
use cairn_engine::{Engine, EngineError, Plan};

/// Ways a node can be told to cheat (tests and demonstrations of slashing).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Fraction of inferences whose output is altered (the lowest bit of the last output; a subtle lie) before it
    /// is hashed, signed and returned: a receipt that lies about the model's output.
    pub wrong_output_rate: f64,
    /// Refuse to hand out kept payloads (`/v1/receipts/{id}/input|output`), so samples cannot
    /// be re-executed.
    pub withhold_payloads: bool,
    /// Refuse a batch's payloads for this long after it is sealed (a node "down" or
    /// overloaded just when verifiers first ask), then serve them.
    pub payload_outage: Duration,
    /// Serve batch listings with every receipt's seal spoiled (its signature's first byte
    /// flipped; the signed content, so the leaves and the root, unchanged): a node hoping
    /// verifiers that refuse a bad seal never get as far as a lie.
    pub forge_listing_seals: bool,
}

impl Faults {
    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        self.wrong_output_rate > 0.0
            || self.withhold_payloads
            || !self.payload_outage.is_zero()
            || self.forge_listing_seals
    }

    /// Whether the payloads of a batch sealed at `sealed_at` (Unix seconds) are in the
    /// deliberate outage now.
    pub fn in_outage(&self, sealed_at: Option<i64>) -> bool {
        !self.payload_outage.is_zero()
            && sealed_at.is_some_and(|t| {
                crate::now_secs() < t.max(0) as u64 + self.payload_outage.as_secs()
            })
    }
}

/// An engine whose plans alter the last output of a `rate` fraction of runs (its first byte's
/// lowest bit: a subtle lie), which the node then hashes and signs as if honest.
pub struct LyingEngine {
    inner: Arc<dyn Engine>,
    rate: f64,
}

impl LyingEngine {
    /// `inner`, lying on a `rate` fraction of runs; `inner` itself when `rate` is zero.
    pub fn wrap(inner: Arc<dyn Engine>, rate: f64) -> Arc<dyn Engine> {
        if rate > 0.0 {
            Arc::new(Self { inner, rate })
        } else {
            inner
        }
    }
}

impl Engine for LyingEngine {
    fn profile(&self) -> &ExecutionProfile {
        self.inner.profile()
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn Plan>, EngineError> {
        Ok(Arc::new(LyingPlan {
            inner: self.inner.load(model)?,
            rate: self.rate,
        }))
    }
}

struct LyingPlan {
    inner: Arc<dyn Plan>,
    rate: f64,
}

impl Plan for LyingPlan {
    fn prepared(&self, inputs: &[Tensor]) -> bool {
        self.inner.prepared(inputs)
    }

    fn input_names(&self) -> &[String] {
        self.inner.input_names()
    }

    fn output_names(&self) -> &[String] {
        self.inner.output_names()
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let mut outputs = self.inner.run(inputs)?;
        if unit_random() < self.rate {
            corrupt_last_output(&mut outputs);
        }
        Ok(outputs)
    }
}

/// On a `rate` fraction of calls, alters a whole (not streamed) language-model answer before it
/// is hashed and signed: " (altered)" appended to its text, the lie a node that edits the
/// model's tokens tells.
pub fn alter_answer(rate: f64, body: &mut Vec<u8>) {
    if rate <= 0.0 || unit_random() >= rate {
        return;
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    for path in ["/choices/0/message/content", "/choices/0/text"] {
        if let Some(text) = v.pointer_mut(path)
            && let Some(s) = text.as_str()
        {
            *text = format!("{s} (altered)").into();
        }
    }
    if let Ok(b) = serde_json::to_vec(&v) {
        *body = b;
    }
}

/// A uniform draw in [0, 1).
fn unit_random() -> f64 {
    let r = B256::random();
    let mut b = [0u8; 8];
    b.copy_from_slice(&r[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Flips the lowest bit of the last output's first byte.
fn corrupt_last_output(outputs: &mut [Tensor]) {
    if let Some(t) = outputs.last_mut()
        && !t.data().is_empty()
    {
        let mut data = t.data().to_vec();
        data[0] ^= 1;
        if let Ok(altered) = Tensor::new(t.name(), t.dtype(), t.shape().to_vec(), data) {
            *t = altered;
        }
    }
}

/// A receipt's binary form with its seal spoiled ([`Faults::forge_listing_seals`]): the first
/// byte of its signature (its own, or its micro-batch root's) flipped. Bytes that do not parse
/// are returned as they are.
pub fn forge_seal(compact: &[u8]) -> Vec<u8> {
    let mut out = compact.to_vec();
    let Ok(mut read) = cairn_receipt::compact::read_entries(&[compact]) else {
        return out;
    };
    // The seal is last: an own signature is the final 65 bytes; a batch seal's signature comes
    // before the proof's length byte and its hashes.
    let after = match read.remove(0).receipt.seal {
        cairn_receipt::Seal::Own(_) => 0,
        cairn_receipt::Seal::Batch(b) => 1 + 32 * b.proof.len(),
    };
    if let Some(i) = out.len().checked_sub(after + 65) {
        out[i] ^= 1;
    }
    out
}
