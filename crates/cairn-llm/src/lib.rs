//! Language models from GGUF files, run so that a verifier can reproduce a node's tokens bit for
//! bit: a tokenizer that gives llama.cpp's token ids, a llama forward pass on quantized weights
//! whose floating-point operations happen in one fixed order whatever the CPU path, the thread
//! count or the batching of the prompt, and sampling that is greedy with a defined tie-break or
//! seeded with a named generator (ChaCha20).

mod chat;
mod grammar;
mod llama;
mod quant;
mod sample;
mod tokenizer;

use std::sync::Arc;

pub use chat::{ChatMessage, ChatTemplate};
pub use grammar::{Constraint, GRAMMAR_ENGINE, Grammar, laid_out};
pub use llama::{Config, Session, Weights};
pub use sample::{Sampler, Sampling, argmax};
pub use tokenizer::Tokenizer;

/// The engine's version and the rules a generation follows, as an execution profile names them:
/// the tokenizer (llama.cpp's byte-level BPE), batch size 1, no prefix cache kept across
/// requests, greedy decoding with the lowest id winning ties, and sampling by top-k then top-p in
/// f64 with ChaCha20 keyed by a 32-byte seed, one 53-bit draw per token; grammars masked by
/// [`GRAMMAR_ENGINE`].
pub const ENGINE_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "+bpe-llamacpp.batch1.no-prefix-cache.greedy-lowest-id.chacha20-topk-topp-f64.llguidance-1.9.1.toktrie-1.9.1.regex-syntax-0.8.11"
);

/// What went wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The file is not a GGUF model.
    #[error(transparent)]
    Gguf(#[from] cairn_gguf::GgufError),
    /// The model uses something the engine does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The model's parts contradict each other.
    #[error("inconsistent model: {0}")]
    Model(String),
    /// A request the model cannot take (a token outside its vocabulary, more tokens than its
    /// context).
    #[error("{0}")]
    Input(String),
    /// The chat template does not compile, or fails on a conversation.
    #[error("chat template: {0}")]
    Template(String),
    /// A grammar (a JSON schema, a Lark grammar) does not compile, or its parser gave up.
    #[error("grammar: {0}")]
    Grammar(String),
}

/// A loaded language model: tokenizer and weights.
pub struct Model {
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its weights, shared by sessions.
    pub weights: Arc<Weights>,
    /// What the hub reports of it.
    pub metadata: cairn_gguf::GgufMetadata,
    /// Its chat template, when it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Threads generation runs on (see [`Model::set_threads`]).
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The vocabulary as grammars see it, built at the first constrained call.
    grammars: std::sync::OnceLock<Result<grammar::Grammars, String>>,
}

impl Model {
    /// Loads a GGUF model from its bytes.
    pub fn load(file: &[u8]) -> Result<Self, LlmError> {
        let gguf = cairn_gguf::read_model(file, cairn_gguf::Limits::default())?;
        // A vocabulary the embedding cannot back is refused before the tokenizer is built.
        let rows = gguf
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .and_then(|t| t.dims.get(1).copied());
        let tokens = gguf.metadata.tokenizer.as_ref().map(|t| t.tokens);
        if rows.is_none() || tokens != rows {
            return Err(LlmError::Model(format!(
                "the tokenizer has {} tokens and the embedding {} rows",
                tokens.map_or("no".into(), |t| t.to_string()),
                rows.map_or("no".into(), |r| r.to_string())
            )));
        }
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let weights = Weights::from_gguf(&gguf, file)?;
        if tokenizer.vocab_size() != weights.config.vocab {
            return Err(LlmError::Model(format!(
                "the tokenizer has {} tokens and the output layer {}",
                tokenizer.vocab_size(),
                weights.config.vocab
            )));
        }
        let chat_template = match &gguf.metadata.chat_template {
            Some(source) => Some(ChatTemplate::new(source)?),
            None => None,
        };
        Ok(Self {
            tokenizer,
            weights: Arc::new(weights),
            metadata: gguf.metadata,
            chat_template,
            pool: None,
            grammars: std::sync::OnceLock::new(),
        })
    }

    /// Runs each generation's matrix products on `threads` threads (1: the calling thread).
    /// Rows are split among threads whole, so the tokens and logits are the same bits.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), LlmError> {
        self.pool = match threads {
            0 | 1 => None,
            n => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("cairn-llm-{i}"))
                    .build()
                    .map_err(|e| LlmError::Unsupported(format!("{threads} threads: {e}")))?,
            )),
        };
        Ok(())
    }

    /// `grammar` compiled against this model's vocabulary, ready to mask a generation.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint, LlmError> {
        self.grammars
            .get_or_init(|| grammar::Grammars::new(&self.tokenizer).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| LlmError::Unsupported(e.clone()))?
            .constraint(grammar)
    }

    /// A fresh generation session on this model's threads.
    pub fn session(&self) -> Session {
        Session::with_pool(Arc::clone(&self.weights), self.pool.clone())
    }

    /// Generates up to `max_tokens` after `prompt`, stopping after the end-of-sequence token or
    /// at the end of the model's context; `on_token` sees each token as it is chosen and may
    /// stop the generation by returning false.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: Sampling,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, LlmError> {
        self.generate_constrained(prompt, max_tokens, sampling, None, on_token)
    }

    /// [`Model::generate`] held to `constraint`: only tokens it allows are sampled, and the
    /// generation also ends where the grammar is complete.
    pub fn generate_constrained(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: Sampling,
        mut constraint: Option<Constraint>,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, LlmError> {
        let mut session = self.session();
        let mut sampler = Sampler::new(sampling);
        let mut logits = session.feed(prompt)?;
        let mut out = Vec::new();
        let context = self.weights.config.context;
        while out.len() < max_tokens && !logits.is_empty() {
            if let Some(c) = constraint.as_mut() {
                c.mask(&mut logits)?;
            }
            let next = sampler.sample(&logits);
            out.push(next);
            if Some(next) == self.tokenizer.eos || !on_token(next) || session.position >= context {
                break;
            }
            if let Some(c) = constraint.as_mut() {
                c.accept(next)?;
                if c.is_done() {
                    break;
                }
            }
            logits = session.step(next)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
