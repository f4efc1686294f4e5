//! The node's metrics at `GET /metrics`: its HTTP requests (from `cairn-serve`), the inferences
//! it ran by model, engine and kind, the tokens it generated, the receipts it signed, the calls
//! paid by scheme, and, read at each scrape, its queues and its batches by state.

use std::sync::Arc;

use cairn_serve::metrics::{
    BoundedLabels, Counter, EncodeLabelSet, Family, Gauge, Metrics, Recounted,
};

/// Distinct model CIDs that get series of their own (the rest count as `other`).
const MAX_MODEL_LABELS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InferenceLabels {
    model: String,
    engine: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemeLabel {
    scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NonceLabel {
    nonce: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlacementLabel {
    placement: &'static str,
}

/// Where a model call ran.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Placement {
    /// On the async worker that took the request (a quick call).
    InPlace,
    /// On that worker's thread, its other tasks handed to another (`block_in_place`).
    HandedOff,
    /// On the blocking pool (a runtime without `block_in_place`).
    BlockingPool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// What kind of call a receipt is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CallKind {
    /// A tensor inference.
    Onnx,
    /// A language-model call run here.
    Llm,
    /// A language-model call relayed upstream.
    Relayed,
}

impl CallKind {
    fn as_str(self) -> &'static str {
        match self {
            CallKind::Onnx => "onnx",
            CallKind::Llm => "llm",
            CallKind::Relayed => "relayed",
        }
    }
}

/// The node's metric families.
pub(crate) struct NodeMetrics {
    /// The registry and the HTTP families.
    pub(crate) http: Arc<Metrics>,
    inferences: Family<InferenceLabels, Counter>,
    tokens: Family<KindLabel, Counter>,
    receipts: Counter,
    paid: Family<SchemeLabel, Counter>,
    refused: Family<CodeLabel, Counter>,
    queued: Gauge,
    workers_busy: Gauge,
    llm_sessions_busy: Gauge,
    /// Model calls by placement, in [`Placement`]'s order.
    placed: [Counter; 3],
    batches: Family<StatusLabel, Gauge>,
    /// Receipt signatures by nonce, brought up to the signer's counts at a scrape (the lock:
    /// two scrapes at once would add the same signatures twice).
    nonces: std::sync::Mutex<Family<NonceLabel, Counter>>,
    /// Batches by state, recounted at most every 15 s.
    pub(crate) batch_counts: Recounted<Vec<(String, u64)>>,
    models: BoundedLabels,
}

impl NodeMetrics {
    pub(crate) fn new(cache_lookups: crate::cache::CacheLookups) -> Self {
        let mut m = Metrics::new("cairn_node");
        let r = m.registry();
        r.register(
            "model_cache_lookups",
            "Models asked of the model cache, by where they were found (memory, disk, hub, or a recent failure remembered)",
            cache_lookups,
        );
        let inferences = Family::default();
        r.register(
            "inferences",
            "Calls answered with a signed receipt, by model CID, engine and kind (onnx, llm, relayed)",
            inferences.clone(),
        );
        let tokens = Family::default();
        r.register(
            "llm_tokens",
            "Language-model tokens in answered calls, by kind (prompt, completion)",
            tokens.clone(),
        );
        let receipts = Counter::default();
        r.register(
            "receipts_signed",
            "Receipts signed and committed",
            receipts.clone(),
        );
        let paid = Family::default();
        r.register(
            "receipts_with_payment",
            "Receipts signed for calls carrying a payment the node accepted (checked locally; an exact payment settles after), by x402 scheme",
            paid.clone(),
        );
        let refused = Family::default();
        r.register(
            "payments_refused",
            "Calls answered 402 by the paywall, by the answer's code (payment_required when none was presented; otherwise why the payment was refused)",
            refused.clone(),
        );
        let queued = Gauge::default();
        r.register(
            "queue_in_use",
            "Admission slots taken (requests admitted and not yet answered)",
            queued.clone(),
        );
        let workers_busy = Gauge::default();
        r.register(
            "workers_busy",
            "Workers running a model",
            workers_busy.clone(),
        );
        let llm_sessions_busy = Gauge::default();
        r.register(
            "llm_sessions_busy",
            "Language-model sessions generating",
            llm_sessions_busy.clone(),
        );
        let nonces = Family::default();
        r.register(
            "receipt_signature_nonces",
            "Receipt signatures by nonce: presigned (made ahead of time in idle CPU time) or rfc6979 (the pool was empty: the machine left the presigning thread no idle time)",
            nonces.clone(),
        );
        let placements = Family::<PlacementLabel, Counter>::default();
        r.register(
            "model_calls_placed",
            "ONNX model calls by where they ran: in_place (a quick call, on the async worker), handed_off (the worker's other tasks handed to another thread first), blocking_pool",
            placements.clone(),
        );
        let placed = ["in_place", "handed_off", "blocking_pool"].map(|placement| {
            placements
                .get_or_create(&PlacementLabel { placement })
                .clone()
        });
        let batches = Family::default();
        r.register(
            "batches",
            "Receipt batches in the node's log, by state",
            batches.clone(),
        );
        Self {
            http: Arc::new(m),
            inferences,
            tokens,
            receipts,
            paid,
            refused,
            queued,
            workers_busy,
            llm_sessions_busy,
            placed,
            batches,
            nonces: std::sync::Mutex::new(nonces),
            batch_counts: Recounted::new(std::time::Duration::from_secs(15)),
            models: BoundedLabels::new(MAX_MODEL_LABELS),
        }
    }

    /// One call answered under a committed receipt.
    pub(crate) fn answered(
        &self,
        kind: CallKind,
        model: &cairn_core::BlobId,
        engine: &str,
        paid: Option<&'static str>,
    ) {
        self.inferences
            .get_or_create(&InferenceLabels {
                model: self.models.label(&model.to_string()),
                engine: engine.to_owned(),
                kind: kind.as_str(),
            })
            .inc();
        self.receipts.inc();
        if let Some(scheme) = paid {
            self.paid.get_or_create(&SchemeLabel { scheme }).inc();
        }
    }

    /// A model call placed.
    pub(crate) fn placed(&self, placement: Placement) {
        self.placed[placement as usize].inc();
    }

    /// A 402 the paywall answered, by its code.
    pub(crate) fn refused(&self, code: &'static str) {
        self.refused.get_or_create(&CodeLabel { code }).inc();
    }

    /// A language-model call's usage.
    pub(crate) fn tokens(&self, prompt: u32, completion: u32) {
        self.tokens
            .get_or_create(&KindLabel { kind: "prompt" })
            .inc_by(prompt.into());
        self.tokens
            .get_or_create(&KindLabel { kind: "completion" })
            .inc_by(completion.into());
    }

    /// The gauges read at a scrape.
    pub(crate) fn set_load(&self, queued: usize, workers: usize, sessions: usize) {
        self.queued.set(queued as i64);
        self.workers_busy.set(workers as i64);
        self.llm_sessions_busy.set(sessions as i64);
    }

    /// Receipt signatures by nonce, as the signer counts them, read at a scrape.
    pub(crate) fn set_nonces(&self, presigned: u64, rfc6979: u64) {
        let family = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        for (nonce, now) in [("presigned", presigned), ("rfc6979", rfc6979)] {
            let c = family.get_or_create(&NonceLabel { nonce });
            c.inc_by(now.saturating_sub(c.get()));
        }
    }

    /// Batches by state, read at a scrape.
    pub(crate) fn set_batches(&self, counts: &[(String, u64)]) {
        // A batch moves between states: a state it left must not keep its old count.
        self.batches.clear();
        for (status, n) in counts {
            self.batches
                .get_or_create(&StatusLabel {
                    status: status.clone(),
                })
                .set(*n as i64);
        }
    }
}
