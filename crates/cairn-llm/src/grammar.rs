//! Constrained decoding: a grammar (a JSON schema, or a Lark grammar that may embed schemas)
//! decides which tokens may come next, and the others are taken out of the logits before the
//! sampler sees them, so the answer always parses. The parser is llguidance (the one
//! llama.cpp, vLLM and SGLang use); its masks are a function of the grammar and the tokens so
//! far, bounded by step counts (never by time), so a verifier replaying a constrained call
//! masks exactly as the node did.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::{LlmError, Tokenizer};

/// The releases masks come from (llguidance, its token trie, its regex parser's Unicode
/// tables): part of the engine's version, since other releases may allow other tokens. The
/// workspace pins each exactly.
pub const GRAMMAR_ENGINE: &str = "llguidance-1.9.1.toktrie-1.9.1.regex-syntax-0.8.11";

/// Most lexer states one grammar may build (see [`Grammars::new`]).
const MAX_LEXER_STATES: usize = 50_000;

/// What a generation is held to.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// One JSON value valid against this JSON schema, printed with `", "` and `": "` between
    /// items and no other whitespace.
    JsonSchema(serde_json::Value),
    /// A Lark grammar (llguidance's dialect: `%json { … }` embeds a schema).
    Lark(String),
}

/// `schema` with the one layout JSON is printed in under a grammar: `", "` and `": "` between
/// items and no other whitespace, so the model cannot spend its tokens on whitespace (readable
/// like Python's `json.dumps`). A schema's own `x-guidance` options are replaced, not merged.
/// For schemas embedded in a Lark grammar (`%json`).
pub fn laid_out(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(o) = schema.as_object_mut() {
        o.insert(
            "x-guidance".into(),
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            }),
        );
    }
    schema
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(laid_out(schema)),
            Grammar::Lark(source) => TopLevelGrammar::from_lark(source.clone()),
        }
    }
}

/// A model's vocabulary as the grammar parser sees it: each token's bytes, control tokens
/// marked so that no grammar's text can produce them.
pub(crate) struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    pub(crate) fn new(tokenizer: &Tokenizer) -> Result<Self, LlmError> {
        let eos = tokenizer.eos.ok_or_else(|| {
            LlmError::Unsupported("constrained decoding needs an end token".into())
        })?;
        let words: Vec<Vec<u8>> = (0..tokenizer.vocab_size() as u32)
            .map(|id| {
                if tokenizer.is_control(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or("").as_bytes());
                    w
                } else {
                    tokenizer.token_bytes(id)
                }
            })
            .collect();
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| LlmError::Unsupported(e.to_string()))?;
        factory.quiet();
        // Every bound is a count, never a time, so a replay fails or succeeds as the call did:
        // the defaults bound a step's work (~20 ms at most); lexer states (1-2 kB each) are
        // capped at a fifth of the default so one hostile grammar holds at most ~100 MB.
        // Errors name the grammar, not the parser's state (a request's text is not echoed).
        *factory.limits_mut() = ParserLimits {
            max_lexer_states: MAX_LEXER_STATES,
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Self { factory })
    }

    pub(crate) fn constraint(&self, grammar: &Grammar) -> Result<Constraint, LlmError> {
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| LlmError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(LlmError::Grammar(e)),
            None => Ok(Constraint { matcher }),
        }
    }
}

/// A grammar being followed through one generation.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Sets the logit of every token the grammar does not allow next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), LlmError> {
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|e| LlmError::Grammar(e.to_string()))?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves past `token` (one the last mask allowed).
    pub fn accept(&mut self, token: u32) -> Result<(), LlmError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| LlmError::Grammar(e.to_string()))
    }

    /// Whether the grammar is complete and allows nothing more: the generation ends here.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
