//! Re-execution of a receipt: fetch the input the node kept, check it is the one the receipt
//! binds, run the model (fetched by CID and hashed) on this verifier's engine, and compare.

use alloy_primitives::{B256, keccak256};
use cairn_core::tensor::tensors_hash;
use cairn_core::{DataType, Reproducibility, Tensor};
use cairn_node::cache::ModelCache;
use cairn_receipt::SignedReceipt;

pub use cairn_verifier_api::Outcome;

/// The payloads of a receipt as its node handed them over.
pub enum Payloads {
    /// A tensor inference's.
    Tensors {
        /// The inputs the node kept.
        inputs: Vec<Tensor>,
        /// The outputs it kept (fetched only for tolerance profiles).
        outputs: Option<Vec<Tensor>>,
    },
    /// A language-model call's.
    Llm {
        /// The exact request body.
        request: Vec<u8>,
        /// The bytes answered (fetched only for an answer that broke off).
        response: Option<Vec<u8>>,
    },
}

/// Re-executes receipts on this verifier's engine.
pub struct Reexecutor {
    cache: ModelCache,
    /// Largest |difference| accepted for tolerance profiles.
    tolerance: f64,
}

impl Reexecutor {
    /// A re-executor loading models through `cache` (fetched from its hub, hashed to the CID).
    pub fn new(cache: ModelCache, tolerance: f64) -> Self {
        Self { cache, tolerance }
    }

    /// The profile this verifier re-executes on.
    pub fn profile(&self) -> &cairn_core::ExecutionProfile {
        self.cache.engine().profile()
    }

    /// Why this verifier cannot check `r` at all (a bit-exact profile it does not run), if so.
    pub fn unverifiable(&self, r: &SignedReceipt) -> Option<Outcome> {
        if r.claims.llm.is_some() {
            let here = cairn_node::llm::profile();
            return (r.claims.profile != here).then(|| Outcome::Unverifiable {
                reason: format!(
                    "language-model profile {} is not this verifier's ({here})",
                    r.claims.profile
                ),
            });
        }
        let here = self.profile();
        let exact = r.claims.profile.reproducibility() == Reproducibility::Exact;
        (exact && *here != r.claims.profile).then(|| Outcome::Unverifiable {
            reason: format!(
                "bit-exact profile {} is not this verifier's ({here})",
                r.claims.profile
            ),
        })
    }

    /// Whether checking `r` needs the node's kept output too (tolerance profiles, and a
    /// language-model answer that broke off: it is replayed up to what was sent).
    pub fn needs_output(r: &SignedReceipt) -> bool {
        match r.claims.llm {
            Some(u) => !u.complete,
            None => r.claims.profile.reproducibility() != Reproducibility::Exact,
        }
    }

    /// Re-executes `r` on `p`, the payloads its node handed over. `Err`: a transient failure on
    /// this verifier's side (the hub unreachable, a failed task): ask again later.
    pub async fn check(&self, r: &SignedReceipt, p: Payloads) -> Result<Outcome, String> {
        if let Some(o) = self.unverifiable(r) {
            return Ok(o);
        }
        let exact = !Self::needs_output(r);
        let (inputs, outputs) = match p {
            Payloads::Tensors { inputs, outputs } => (inputs, outputs),
            Payloads::Llm { request, response } => {
                return self.check_llm(r, request, response).await;
            }
        };
        let claimed = match Self::kept_payloads(r, &inputs, outputs) {
            Ok(claimed) => claimed,
            Err(o) => return Ok(o),
        };
        let loaded = match self.cache.get(r.claims.model).await {
            Ok(l) => l,
            // The hub down, or this verifier's own trouble: not the node's fault; again later.
            Err(e) if e.is_transient() => {
                return Err(format!("model {}: {e}", r.claims.model));
            }
            Err(e) => {
                return Ok(Outcome::Unverifiable {
                    reason: format!("model {}: {e}", r.claims.model),
                });
            }
        };
        let plan = match loaded.onnx() {
            Ok((_, plan)) => plan.clone(),
            Err(e) => {
                return Ok(Outcome::Unverifiable {
                    reason: e.to_string(),
                });
            }
        };
        let ran = tokio::task::spawn_blocking(move || plan.run(&inputs)).await;
        let outputs = match ran {
            Ok(Ok(o)) => o,
            // On a bit-exact profile the node ran this very engine: a model that refuses the
            // kept input did not produce the output. Another engine refusing it proves nothing.
            Ok(Err(e)) if exact => {
                return Ok(Outcome::Mismatch {
                    comparison: format!("the model refuses the kept input: {e}"),
                    recomputed: B256::ZERO,
                });
            }
            Ok(Err(e)) => {
                return Ok(Outcome::Unverifiable {
                    reason: format!("this verifier's engine refuses the kept input: {e}"),
                });
            }
            Err(e) => return Err(format!("re-execution task: {e}")),
        };
        Ok(match claimed {
            None => Self::compare_exact(r, &outputs),
            Some(claimed) => self.compare_tolerance(&claimed, &outputs),
        })
    }

    /// A language-model receipt: the kept request (and a broken-off answer) must hash to what
    /// the receipt binds, then the request is run again ([`cairn_node::llm::replay`]). Only a
    /// request that runs here and gives other counts or bytes is evidence.
    async fn check_llm(
        &self,
        r: &SignedReceipt,
        request: Vec<u8>,
        response: Option<Vec<u8>>,
    ) -> Result<Outcome, String> {
        use cairn_node::llm::{Replay, sha256};
        if sha256(&request) != r.claims.input_hash {
            return Ok(Outcome::WrongPayload {
                reason: "the request the node kept does not hash to the receipt's requestHash"
                    .into(),
            });
        }
        match &response {
            Some(b) if sha256(b) != r.claims.output_hash => {
                return Ok(Outcome::WrongPayload {
                    reason: "the answer the node kept does not hash to the receipt's responseHash"
                        .into(),
                });
            }
            None if Self::needs_output(r) => {
                return Ok(Outcome::Unverifiable {
                    reason: "an answer that broke off needs the bytes the node sent".into(),
                });
            }
            _ => {}
        }
        // The model the request asked for must be the one the receipt names (a node that
        // answers with another model is caught here, however well that model replays).
        let asked = serde_json::from_slice::<serde_json::Value>(&request)
            .ok()
            .and_then(|v| v.get("model")?.as_str().map(str::to_owned));
        let Some(asked) = asked else {
            return Ok(Outcome::Unverifiable {
                reason: "the kept request names no model".into(),
            });
        };
        match asked.parse::<cairn_core::ModelRef>() {
            Ok(cairn_core::ModelRef::Named { version: None, .. }) | Err(_) => {
                return Ok(Outcome::Unverifiable {
                    reason: format!("the kept request's model `{asked}` is not pinned"),
                });
            }
            Ok(_) => match self.cache.resolve(&asked).await {
                Ok(res) if res.cid != r.claims.model => {
                    return Ok(Outcome::Mismatch {
                        comparison: format!(
                            "the request asked for `{asked}` ({}), the receipt names {}",
                            res.cid, r.claims.model
                        ),
                        recomputed: B256::ZERO,
                    });
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => return Err(format!("resolving `{asked}`: {e}")),
                Err(e) => {
                    return Ok(Outcome::Unverifiable {
                        reason: format!("resolving `{asked}`: {e}"),
                    });
                }
            },
        }
        let loaded = match self.cache.get(r.claims.model).await {
            Ok(l) => l,
            Err(e) if e.is_transient() => return Err(format!("model {}: {e}", r.claims.model)),
            Err(e) => {
                return Ok(Outcome::Unverifiable {
                    reason: format!("model {}: {e}", r.claims.model),
                });
            }
        };
        let model = match loaded.llm() {
            Ok(m) => m.clone(),
            // An honest node signs language-model receipts only for language models.
            Err(e) => {
                return Ok(Outcome::Mismatch {
                    comparison: e.to_string(),
                    recomputed: B256::ZERO,
                });
            }
        };
        let claims = r.claims.clone();
        let replay = tokio::task::spawn_blocking(move || {
            cairn_node::llm::replay(&model, &request, &claims, response.as_deref())
        })
        .await
        .map_err(|e| format!("re-execution task: {e}"))?;
        Ok(match replay {
            Replay::Same { tokens } => Outcome::Confirmed {
                comparison: format!("bit-exact: the same {tokens} tokens and answer bytes"),
            },
            Replay::Differs { what, recomputed } => Outcome::Mismatch {
                comparison: what,
                recomputed,
            },
            Replay::CannotRun(why) => Outcome::Unverifiable { reason: why },
        })
    }

    /// Checks the kept payloads against the receipt's hashes; returns the kept output a
    /// tolerance profile is compared with (`None` for bit-exact profiles), or the verdict.
    fn kept_payloads(
        r: &SignedReceipt,
        inputs: &[Tensor],
        outputs: Option<Vec<Tensor>>,
    ) -> Result<Option<Vec<Tensor>>, Outcome> {
        if tensors_hash(inputs) != r.claims.input_hash {
            return Err(Outcome::WrongPayload {
                reason: "the input the node kept does not hash to the receipt's input hash".into(),
            });
        }
        match outputs {
            Some(o) if tensors_hash(&o) != r.claims.output_hash => Err(Outcome::WrongPayload {
                reason: "the output the node kept does not hash to the receipt's output hash"
                    .into(),
            }),
            Some(o) => Ok(Some(o)),
            None if !Self::needs_output(r) => Ok(None),
            None => Err(Outcome::Unverifiable {
                reason: "a tolerance profile needs the node's kept output".into(),
            }),
        }
    }

    /// A bit-exact profile: the recomputed output must hash to what the receipt binds.
    fn compare_exact(r: &SignedReceipt, outputs: &[Tensor]) -> Outcome {
        let recomputed = tensors_hash(outputs);
        if recomputed == r.claims.output_hash {
            Outcome::Confirmed {
                comparison: "bit-exact".into(),
            }
        } else {
            Outcome::Mismatch {
                comparison: format!(
                    "bit-exact profile: output hash {recomputed}, the receipt binds {}",
                    r.claims.output_hash
                ),
                recomputed,
            }
        }
    }

    /// A tolerance profile (onnxruntime): compare values with the node's own output. Two
    /// engines can differ past any tolerance on a model built to amplify their differences,
    /// so a difference is not proof of fraud: this verifier abstains (never attests it).
    fn compare_tolerance(&self, claimed: &[Tensor], outputs: &[Tensor]) -> Outcome {
        match max_abs_diff(claimed, outputs) {
            Ok(d) if d <= self.tolerance => Outcome::Confirmed {
                comparison: format!("tolerance {:e}, max |difference| {d:e}", self.tolerance),
            },
            Ok(d) => Outcome::Unverifiable {
                reason: format!(
                    "tolerance {:e} exceeded across engines (max |difference| {d:e}): not proof, no attestation",
                    self.tolerance
                ),
            },
            Err(e) => Outcome::Unverifiable {
                reason: format!("outputs differ across engines ({e}): not proof, no attestation"),
            },
        }
    }
}

/// Largest absolute difference between same-named tensors: floats by value, other types must be
/// equal (any difference is infinite).
pub fn max_abs_diff(a: &[Tensor], b: &[Tensor]) -> Result<f64, String> {
    let mut max = 0f64;
    for x in a {
        let y = b
            .iter()
            .find(|y| y.name() == x.name())
            .ok_or_else(|| format!("re-execution produced no `{}`", x.name()))?;
        if x.dtype() != y.dtype() || x.shape() != y.shape() {
            return Err(format!("`{}` differs in type or shape", x.name()));
        }
        let vals = |t: &Tensor| -> Option<Vec<f64>> {
            let d = t.data();
            match t.dtype() {
                DataType::Fp32 => Some(
                    d.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                        .collect(),
                ),
                DataType::Fp64 => Some(
                    d.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                ),
                _ => None,
            }
        };
        match (vals(x), vals(y)) {
            (Some(p), Some(q)) => {
                for (u, v) in p.iter().zip(&q) {
                    let d = (u - v).abs();
                    if d.is_nan() {
                        return Ok(f64::INFINITY);
                    }
                    max = max.max(d);
                }
            }
            _ if x.data() != y.data() => return Ok(f64::INFINITY),
            _ => {}
        }
    }
    Ok(max)
}

/// Decides which receipts of a batch a verifier re-executes: SipHash-2-4 of the receipt hash
/// under a key that is keccak(secret ‖ batch root), below `rate`. The node learns the secret
/// never and the root only after committing, so it cannot tell which receipts will be checked;
/// verifiers sample independently. One keccak per batch, then ~20 ns per receipt (a keccak each
/// was ~7% of a verifier's whole check).
#[derive(Clone)]
pub struct Sampler {
    secret: B256,
    threshold: u64,
    rate: f64,
}

impl Sampler {
    /// Samples a fraction `rate` (0..=1) with `secret`.
    pub fn new(secret: B256, rate: f64) -> Self {
        let rate = rate.clamp(0.0, 1.0);
        let threshold = if rate >= 1.0 {
            u64::MAX
        } else {
            (rate * u64::MAX as f64) as u64
        };
        Self {
            secret,
            threshold,
            rate,
        }
    }

    /// The sampling rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The draw for the batch with `root`.
    pub fn batch(&self, root: B256) -> BatchSample {
        let mut m = [0u8; 64];
        m[..32].copy_from_slice(self.secret.as_slice());
        m[32..].copy_from_slice(root.as_slice());
        let key: [u8; 16] = keccak256(m)[..16].try_into().expect("16 bytes");
        BatchSample {
            key: siphasher::sip::SipHasher24::new_with_key(&key),
            threshold: self.threshold,
            none: self.rate <= 0.0,
        }
    }

    /// Whether receipt `rh` of the batch with `root` is re-executed.
    pub fn sampled(&self, root: B256, rh: B256) -> bool {
        self.batch(root).picks(rh)
    }
}

/// A [`Sampler`]'s draw over one batch.
#[derive(Clone)]
pub struct BatchSample {
    key: siphasher::sip::SipHasher24,
    threshold: u64,
    none: bool,
}

impl BatchSample {
    /// Whether receipt `rh` of this batch is re-executed.
    pub fn picks(&self, rh: B256) -> bool {
        use std::hash::Hasher;
        if self.none {
            return false;
        }
        let mut h = self.key;
        h.write(rh.as_slice());
        h.finish() <= self.threshold
    }
}
