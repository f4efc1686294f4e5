//! Language-model calls, the same on the node and on a verifier: an OpenAI-compatible request
//! read into what the model runs (prompt tokens, sampling, limits), the generation, and the
//! exact bytes answered. The answer is a function of the request bytes, the model, the
//! receipt's request id and timestamp and nothing else, so a verifier given the request and the
//! receipt rebuilds the bytes the receipt's `responseHash` covers.
//!
//! The seed: with the request's `seed`, Keccak-256 of `"cairn.llm.seed.v1" ‖ 0x01 ‖ seed (i64
//! big-endian)` (the same request and seed give the same tokens on any node); without one, of
//! `"cairn.llm.seed.v1" ‖ 0x00 ‖ requestId` (fresh per call, and still reproducible from the
//! receipt).

use alloy_primitives::{B256, keccak256};
use cairn_core::ExecutionProfile;
use cairn_llm::{ChatMessage, Constraint, Grammar, Model, Sampler, Sampling, laid_out};
use cairn_node_api::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChunkChoice, CompletionRequest, Content, Delta, FunctionCall, FunctionDefinition, RequestError,
    ResponseFormat, SamplingParams, Stop, TextChoice, TextCompletion, ToolCall, ToolCallDelta,
    ToolChoice, Usage, parse_request,
};
use serde_json::Value;

/// Most positions (prompt and answer) a call may use, whatever the model's file claims: a
/// protocol constant, so a call without `max_tokens` ends at the same token on every node and
/// verifier (each position holds keys and values in memory: 46 KiB for SmolLM2-135M).
pub const MAX_CONTEXT: usize = 4096;

/// Largest request body a language-model call may have (a protocol constant, like the
/// context: a verifier refuses to replay more).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A bound on an answer's bytes, whole or streamed, that no honest call reaches: one event per
/// token of at most [`MAX_CONTEXT`], each under 1 KiB (ids, a pinned model's name, a token's
/// text escaped). Verifiers read no more of a kept answer.
pub const MAX_TRANSCRIPT_BYTES: usize = 16 << 20;

/// The version of what this module makes of a request: the parameters read, the answer's
/// bytes whole and streamed, the context. Part of the profile, so a change here is a new
/// profile, never a false mismatch between versions.
const RULES: &str = "openai-v2.ctx4096.tools-hermes";

/// The execution profile every language-model receipt names: cairn-llm's version and rules,
/// this module's, one thread. `isa` is `any`: the engine's float operations are the same bits
/// on every CPU path (AVX2 or portable), so verifiers need not share the node's CPU tier.
pub fn profile() -> ExecutionProfile {
    ExecutionProfile {
        engine: cairn_core::LLM_ENGINE.into(),
        engine_version: format!("{}+{RULES}", cairn_llm::ENGINE_VERSION),
        isa: "any".into(),
        threads: 1,
    }
}

/// The context a call on `model` runs in: [`MAX_CONTEXT`], or less when the model's is.
pub fn context_of(model: &Model) -> usize {
    model.weights.config.context.min(MAX_CONTEXT)
}

/// Which route a call came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
}

/// What was asked of the model, before a model is at hand.
#[derive(Clone, Debug)]
pub struct LlmRequest {
    /// Which route.
    pub endpoint: Endpoint,
    /// The model as the request names it (a CID or `name@version`).
    pub model: String,
    /// The conversation (chat) or the text to continue (completion).
    prompt: PromptSource,
    /// Most tokens to generate, when the request says.
    max_tokens: Option<u32>,
    temperature: f64,
    top_p: f64,
    top_k: u32,
    seed: Option<i64>,
    stop: Vec<String>,
    /// Answer as server-sent events.
    pub stream: bool,
    include_usage: bool,
    /// What the answer must be.
    shape: Shape,
}

/// What an answer must be: enforced by constrained decoding, so it always parses.
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    /// Any text.
    Text,
    /// One JSON value valid against this schema.
    Json(Value),
    /// Calls to these functions (or, with `auto`, an answer that is not a call).
    Tools {
        functions: Vec<FunctionDefinition>,
        choice: Choice,
        parallel: bool,
        /// What a non-call answer must be (`auto` only): text, or JSON by a schema.
        otherwise: Option<Value>,
    },
}

/// Which calls an answer with tools makes.
#[derive(Clone, Debug, PartialEq)]
enum Choice {
    /// The model decides: calls, or an answer.
    Auto,
    /// At least one call, to any of the functions.
    Required,
    /// One call, to this function.
    Named(String),
}

/// Most tools a request may offer.
const MAX_TOOLS: usize = 64;

/// How a call is written in the answer (and in the prompt, for a conversation's past calls):
/// the Hermes form that Qwen, Hermes and SmolLM3 are trained on, with the layout the grammar
/// fixes (`", "` and `": "`, no other whitespace).
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// A name OpenAI accepts for a function or a response format: `[a-zA-Z0-9_-]{1,64}`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The system text that offers `functions` to the model.
fn tools_prompt(functions: &[FunctionDefinition]) -> String {
    let mut text = String::from(
        "You may call functions to answer. They are described by these JSON schemas:\n<tools>\n",
    );
    for f in functions {
        let described = serde_json::json!({"type": "function", "function": f});
        text.push_str(&spaced_json(&described));
        text.push('\n');
    }
    text.push_str(
        "</tools>\nTo call a function, answer with <tool_call>{\"name\": <function name>, \"arguments\": <arguments object>}</tool_call> for each call, and nothing else.",
    );
    text
}

/// JSON in the layout answers are written in (`", "` and `": "`, as Python's `json.dumps`).
fn spaced_json(value: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            writer.write_all(if first { b"" } else { b", " })
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            writer.write_all(if first { b"" } else { b", " })
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    serde::Serialize::serialize(
        value,
        &mut serde_json::Serializer::with_formatter(&mut out, Spaced),
    )
    .expect("serializes");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// A past call, as the model would have written it.
fn call_text(call: &ToolCall) -> String {
    format!(
        "{CALL_OPEN}{{\"name\": {}, \"arguments\": {}}}{CALL_CLOSE}",
        Value::String(call.function.name.clone()),
        call.function.arguments
    )
}

#[derive(Clone, Debug)]
enum PromptSource {
    Chat(Vec<ChatMessage>),
    Text(String),
}

/// Why a call cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The request is malformed or asks for something not implemented (400).
    #[error("{message}")]
    Invalid {
        /// What is wrong and what to do.
        message: String,
        /// The field at fault.
        param: Option<String>,
    },
    /// The prompt and the tokens asked for do not fit the context (400).
    #[error("{0}")]
    ContextLength(String),
    /// The model failed on a request it accepted (500).
    #[error("{0}")]
    Model(String),
}

fn invalid(param: &str, message: impl Into<String>) -> CallError {
    CallError::Invalid {
        message: message.into(),
        param: Some(param.into()),
    }
}

impl From<RequestError> for CallError {
    fn from(e: RequestError) -> Self {
        CallError::Invalid {
            message: e.message,
            param: e.param,
        }
    }
}

/// What a chat request's `response_format`, `tools`, `tool_choice` and `parallel_tool_calls`
/// ask the answer to be.
fn chat_shape(r: &ChatCompletionRequest) -> Result<Shape, CallError> {
    let format = match &r.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(serde_json::json!({"type": "object"})),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            if !valid_name(&json_schema.name) {
                return Err(invalid(
                    "response_format.json_schema.name",
                    "the name must be 1 to 64 of a-z, A-Z, 0-9, `_` and `-`",
                ));
            }
            let schema = json_schema
                .schema
                .clone()
                .unwrap_or_else(|| serde_json::json!({}));
            if !schema.is_object() {
                return Err(invalid(
                    "response_format.json_schema.schema",
                    "the schema must be a JSON object",
                ));
            }
            Some(schema)
        }
    };
    let tools = r.tools.as_deref().unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("at most {MAX_TOOLS} tools may be offered"),
        ));
    }
    let mut functions: Vec<FunctionDefinition> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(invalid(
                &format!("tools[{i}].type"),
                format!("`{}` is not a tool type; use `function`", t.kind),
            ));
        }
        let f = &t.function;
        if !valid_name(&f.name) {
            return Err(invalid(
                &format!("tools[{i}].function.name"),
                "a function's name must be 1 to 64 of a-z, A-Z, 0-9, `_` and `-`",
            ));
        }
        if functions.iter().any(|g| g.name == f.name) {
            return Err(invalid(
                &format!("tools[{i}].function.name"),
                format!("two tools are named `{}`", f.name),
            ));
        }
        if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(invalid(
                &format!("tools[{i}].function.parameters"),
                "parameters must be a JSON schema object",
            ));
        }
        functions.push(f.clone());
    }
    let choice = match &r.tool_choice {
        None => (!functions.is_empty()).then_some(Choice::Auto),
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "none" => None,
            "auto" => Some(Choice::Auto),
            "required" => Some(Choice::Required),
            other => {
                return Err(invalid(
                    "tool_choice",
                    format!("`{other}` is not none, auto, required or a function"),
                ));
            }
        },
        Some(ToolChoice::Function(named)) => {
            if named.kind != "function" {
                return Err(invalid(
                    "tool_choice.type",
                    format!("`{}` is not a tool type; use `function`", named.kind),
                ));
            }
            if !functions.iter().any(|f| f.name == named.function.name) {
                return Err(invalid(
                    "tool_choice.function.name",
                    format!("`{}` is not among the tools offered", named.function.name),
                ));
            }
            Some(Choice::Named(named.function.name.clone()))
        }
    };
    if functions.is_empty() && (choice.is_some() || r.tool_choice.is_some()) {
        return Err(invalid("tool_choice", "tool_choice needs `tools`"));
    }
    if functions.is_empty() && r.parallel_tool_calls.is_some() {
        return Err(invalid(
            "parallel_tool_calls",
            "parallel_tool_calls needs `tools`",
        ));
    }
    Ok(match choice {
        None => format.map_or(Shape::Text, Shape::Json),
        Some(choice) => Shape::Tools {
            functions,
            choice,
            parallel: r.parallel_tool_calls.unwrap_or(true),
            otherwise: format,
        },
    })
}

/// The Lark grammar of an answer with tools: calls written `<tool_call>{"name": …,
/// "arguments": …}</tool_call>` (one per line when several are allowed), each call's
/// arguments valid against its function's parameters; with `auto`, or instead an answer that
/// does not begin with `<` (text, or JSON by `otherwise`).
fn tools_grammar(
    functions: &[FunctionDefinition],
    choice: &Choice,
    parallel: bool,
    otherwise: &Option<Value>,
) -> String {
    let callable = functions
        .iter()
        .filter(|f| !matches!(choice, Choice::Named(n) if *n != f.name));
    let alternatives: Vec<Value> = callable
        .map(|f| {
            let arguments = f.parameters.clone().unwrap_or_else(
                || serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false}),
            );
            serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let call = laid_out(&serde_json::json!({"anyOf": alternatives}));
    let calls = if parallel && !matches!(choice, Choice::Named(_)) {
        "call (\"\\n\" call)*"
    } else {
        "call"
    };
    let start = match (choice, otherwise) {
        (Choice::Auto, None) => "start: calls | ANSWER?\nANSWER: /[^<][\\s\\S]*/".to_owned(),
        (Choice::Auto, Some(schema)) => format!("start: calls | %json {}", laid_out(schema)),
        _ => "start: calls".to_owned(),
    };
    format!(
        "{start}\ncalls: {calls}\ncall: {} %json {call} {}\n",
        Value::String(CALL_OPEN.into()),
        Value::String(CALL_CLOSE.into())
    )
}

impl LlmRequest {
    /// The most tokens the request asks to generate (absent: up to the context).
    pub fn max_tokens_asked(&self) -> Option<u32> {
        self.max_tokens
    }

    /// Reads a request body for `endpoint`, checking every parameter.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Self, CallError> {
        match endpoint {
            Endpoint::Chat => {
                let r: ChatCompletionRequest = parse_request(body)?;
                let shape = chat_shape(&r)?;
                if r.top_logprobs.is_some() {
                    return Err(invalid("top_logprobs", "logprobs are not implemented"));
                }
                if r.messages.is_empty() {
                    return Err(invalid("messages", "at least one message is needed"));
                }
                let mut messages = Vec::with_capacity(r.messages.len());
                for (i, m) in r.messages.iter().enumerate() {
                    let param = format!("messages[{i}]");
                    if !matches!(
                        m.role.as_str(),
                        "system" | "developer" | "user" | "assistant" | "tool"
                    ) {
                        return Err(invalid(
                            &format!("{param}.role"),
                            format!(
                                "role `{}` is not one of system, developer, user, assistant, tool",
                                m.role
                            ),
                        ));
                    }
                    let mut content = match &m.content {
                        None => String::new(),
                        Some(Content::Text(t)) => t.clone(),
                        Some(Content::Parts(parts)) => {
                            let mut text = String::new();
                            for p in parts {
                                match (p.kind.as_str(), &p.text) {
                                    ("text", Some(t)) => text.push_str(t),
                                    (kind, _) => {
                                        return Err(invalid(
                                            &format!("{param}.content"),
                                            format!(
                                                "a `{kind}` part cannot be given to a text model; send text parts"
                                            ),
                                        ));
                                    }
                                }
                            }
                            text
                        }
                    };
                    if m.tool_calls.is_some() && m.role != "assistant" {
                        return Err(invalid(
                            &format!("{param}.tool_calls"),
                            "only an assistant message makes tool calls",
                        ));
                    }
                    if m.tool_call_id.is_some() != (m.role == "tool") {
                        return Err(invalid(
                            &format!("{param}.tool_call_id"),
                            "a `tool` message names the call it answers (`tool_call_id`); no other message does",
                        ));
                    }
                    // Past calls are written as the model writes them.
                    for call in m.tool_calls.iter().flatten() {
                        if !content.is_empty() {
                            content.push('\n');
                        }
                        content.push_str(&call_text(call));
                    }
                    // The templates know `system`; a developer message is the same instruction.
                    // A tool's result goes back as the user's turn, marked (templates differ
                    // on a `tool` role; every one has `user`).
                    let role = match m.role.as_str() {
                        "developer" => "system".to_owned(),
                        "tool" => {
                            content = format!("<tool_response>\n{content}\n</tool_response>");
                            "user".to_owned()
                        }
                        other => other.to_owned(),
                    };
                    messages.push(ChatMessage { role, content });
                }
                // Offered tools go in the system message (the first, or a new one).
                if let Shape::Tools { functions, .. } = &shape {
                    let offer = tools_prompt(functions);
                    match messages.first_mut() {
                        Some(first) if first.role == "system" => {
                            first.content = format!("{}\n\n{offer}", first.content);
                        }
                        _ => messages.insert(
                            0,
                            ChatMessage {
                                role: "system".into(),
                                content: offer,
                            },
                        ),
                    }
                }
                let max = r.max_completion_tokens.or(r.sampling.max_tokens);
                let mut request = Self::from_sampling(
                    endpoint,
                    r.model,
                    PromptSource::Chat(messages),
                    max,
                    r.sampling,
                )?;
                request.shape = shape;
                Ok(request)
            }
            Endpoint::Completion => {
                let r: CompletionRequest = parse_request(body)?;
                if r.echo == Some(true) {
                    return Err(invalid("echo", "echo is not implemented"));
                }
                if r.suffix.is_some() {
                    return Err(invalid("suffix", "suffix is not implemented"));
                }
                if r.best_of.is_some_and(|b| b != 1) {
                    return Err(invalid("best_of", "only best_of = 1 is implemented"));
                }
                let text = match &r.prompt {
                    Value::String(s) => s.clone(),
                    Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                        a[0].as_str().unwrap_or_default().to_owned()
                    }
                    _ => {
                        return Err(invalid(
                            "prompt",
                            "the prompt must be one string (batches of prompts and token arrays are not implemented)",
                        ));
                    }
                };
                let max = r.sampling.max_tokens.or(Some(16));
                Self::from_sampling(endpoint, r.model, PromptSource::Text(text), max, r.sampling)
            }
        }
    }

    fn from_sampling(
        endpoint: Endpoint,
        model: String,
        prompt: PromptSource,
        max_tokens: Option<u32>,
        s: SamplingParams,
    ) -> Result<Self, CallError> {
        // A receipt names the exact model, and a verifier checks the request asked for it: the
        // request must pin it (a bare name follows new releases).
        match model.parse::<cairn_core::ModelRef>() {
            Ok(cairn_core::ModelRef::Named { version: None, .. }) => {
                return Err(invalid(
                    "model",
                    format!(
                        "`{model}` is not pinned: name a release (`{model}@1.0`) or a CID; GET /v1/models lists them"
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(invalid(
                    "model",
                    format!("`{model}` is not a model reference ({e}); use name@version or a CID"),
                ));
            }
        }
        if s.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n = 1 is implemented"));
        }
        if s.frequency_penalty.is_some_and(|p| p != 0.0) {
            return Err(invalid(
                "frequency_penalty",
                "penalties are not implemented",
            ));
        }
        if s.presence_penalty.is_some_and(|p| p != 0.0) {
            return Err(invalid("presence_penalty", "penalties are not implemented"));
        }
        if s.logprobs == Some(true) {
            return Err(invalid("logprobs", "logprobs are not implemented"));
        }
        let temperature = s.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        let top_p = s.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(invalid("top_p", "top_p must be in (0, 1]"));
        }
        if max_tokens == Some(0) {
            return Err(invalid("max_tokens", "max_tokens must be at least 1"));
        }
        let stop = match s.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(invalid(
                "stop",
                "at most 4 stop strings, each 1 to 256 bytes",
            ));
        }
        let stream = s.stream.unwrap_or(false);
        if s.stream_options.is_some() && !stream {
            return Err(invalid(
                "stream_options",
                "stream_options needs stream: true",
            ));
        }
        Ok(Self {
            endpoint,
            model,
            prompt,
            max_tokens,
            temperature,
            top_p,
            top_k: s.top_k.unwrap_or(0),
            seed: s.seed,
            stop,
            stream,
            include_usage: s
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            shape: Shape::Text,
        })
    }

    /// The grammar the answer is held to, compiled for `model` (`None`: any text). A grammar
    /// that does not compile is the request's fault; callers compile it before admitting the
    /// call, so a stream never opens on a request that cannot run.
    pub fn constraint(&self, model: &Model) -> Result<Option<Constraint>, CallError> {
        let Some(grammar) = self.grammar() else {
            return Ok(None);
        };
        model.constraint(&grammar).map(Some).map_err(|e| match e {
            cairn_llm::LlmError::Grammar(why) => invalid(
                self.shape_param(),
                format!("the answer's format cannot be enforced: {why}"),
            ),
            other => CallError::Model(other.to_string()),
        })
    }

    /// The request field a format that cannot be enforced came from.
    fn shape_param(&self) -> &'static str {
        match self.shape {
            Shape::Tools { .. } => "tools",
            _ => "response_format",
        }
    }

    /// The grammar the answer is held to, if any.
    fn grammar(&self) -> Option<Grammar> {
        match &self.shape {
            Shape::Text => None,
            Shape::Json(schema) => Some(Grammar::JsonSchema(schema.clone())),
            Shape::Tools {
                functions,
                choice,
                parallel,
                otherwise,
            } => Some(Grammar::Lark(tools_grammar(
                functions, choice, *parallel, otherwise,
            ))),
        }
    }

    /// The prompt's token ids for `model` (its chat template for a chat).
    pub fn prompt_tokens(&self, model: &Model) -> Result<Vec<u32>, CallError> {
        let tokens = match &self.prompt {
            PromptSource::Text(t) => model.tokenizer.encode(t),
            PromptSource::Chat(messages) => {
                let template = model.chat_template.as_ref().ok_or_else(|| {
                    invalid(
                        "model",
                        "the model has no chat template; use /v1/completions with a prompt",
                    )
                })?;
                template
                    .render(messages, true, &model.tokenizer)
                    .map_err(|e| invalid("messages", e.to_string()))?
            }
        };
        if tokens.is_empty() {
            return Err(invalid(
                "prompt",
                "the prompt is empty; give the model something to continue",
            ));
        }
        Ok(tokens)
    }

    /// The sampler's settings for the call with receipt id `request_id`.
    pub fn sampling(&self, request_id: B256) -> Sampling {
        let mut pre = b"cairn.llm.seed.v1".to_vec();
        match self.seed {
            Some(s) => {
                pre.push(1);
                pre.extend_from_slice(&s.to_be_bytes());
            }
            None => {
                pre.push(0);
                pre.extend_from_slice(request_id.as_slice());
            }
        }
        Sampling {
            temperature: self.temperature as f32,
            top_p: self.top_p as f32,
            top_k: self.top_k as usize,
            seed: keccak256(pre).0,
        }
    }
}

/// Who the answer says it is from: the receipt's id and time, and the profile's fingerprint.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The receipt's request id.
    pub request_id: B256,
    /// The receipt's timestamp.
    pub created: u64,
    /// The execution profile's hash.
    pub fingerprint: B256,
}

/// A generation's outcome.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The tokens sampled.
    pub tokens: Vec<u32>,
    /// The prompt's length in tokens.
    pub prompt_tokens: u32,
    /// Tokens counted (for a stream cut short: those whose text reached the sink).
    pub completion_tokens: u32,
    /// Whether the answer was delivered whole.
    pub complete: bool,
    /// Bytes still to send: the whole body (not streamed), or the stream's last events (the
    /// finish chunk, the usage chunk, `[DONE]`); empty for a stream cut short.
    pub tail: Vec<u8>,
    /// Every byte of the answer: what the sink took, then `tail`. The receipt's `responseHash`
    /// is its SHA-256.
    pub transcript: Vec<u8>,
}

/// How many tokens `request` may generate after a prompt of `prompt` tokens within `context`
/// positions: what it asks for (all the room left when it does not say), or why it cannot.
pub fn max_tokens(request: &LlmRequest, prompt: usize, context: usize) -> Result<usize, CallError> {
    let room = context.saturating_sub(prompt);
    if room == 0 {
        return Err(CallError::ContextLength(format!(
            "the prompt is {prompt} tokens; this node serves at most {context} tokens of context for this model. Shorten the prompt"
        )));
    }
    match request.max_tokens {
        Some(m) if m as usize > room => Err(CallError::ContextLength(format!(
            "the prompt ({prompt} tokens) and max_tokens ({m}) exceed this node's {context}-token context for this model; ask for at most {room} tokens"
        ))),
        Some(m) => Ok(m as usize),
        None => Ok(room),
    }
}

/// Runs `request` on `model` with prompt `prompt` (from [`LlmRequest::prompt_tokens`]), at most
/// `context` positions in all. A stream's events go to `sink` as they are made, except the last
/// ones (in [`Generated::tail`], sent once the receipt is committed); `sink` returns false when
/// the client is gone, which ends the generation (for a whole answer it is called with no
/// bytes after each token, to ask just that).
pub fn generate(
    model: &Model,
    request: &LlmRequest,
    prompt: &[u32],
    context: usize,
    id: &Identity,
    mut constraint: Option<Constraint>,
    mut sink: impl FnMut(&[u8]) -> bool,
) -> Result<Generated, CallError> {
    let max_tokens = max_tokens(request, prompt.len(), context)?;
    let model_error = |e: cairn_llm::LlmError| CallError::Model(e.to_string());
    let render = Render {
        request,
        id,
        model_name: &request.model,
    };
    let mut transcript = Vec::new();
    let mut text = TextStream::new(&request.stop);
    let mut calls = CallStream::new(id.request_id);
    let mut mode = match &request.shape {
        Shape::Tools {
            choice: Choice::Auto,
            ..
        } => Mode::Undecided,
        Shape::Tools { .. } => Mode::Calls,
        _ => Mode::Text,
    };
    let mut sent_tokens = 0u32;
    let mut complete = true;
    if request.stream {
        let first = render.first_event();
        if !first.is_empty() {
            if !sink(&first) {
                return Ok(Generated {
                    tokens: Vec::new(),
                    prompt_tokens: prompt.len() as u32,
                    completion_tokens: 0,
                    complete: false,
                    tail: Vec::new(),
                    transcript: Vec::new(),
                });
            }
            transcript.extend_from_slice(&first);
        }
    }
    let mut session = model.session();
    let mut sampler = Sampler::new(request.sampling(id.request_id));
    let mut logits = session.feed(prompt).map_err(model_error)?;
    let mut tokens = Vec::new();
    let mut finish = "length";
    while tokens.len() < max_tokens {
        if let Some(c) = constraint.as_mut() {
            c.mask(&mut logits).map_err(model_error)?;
        }
        let next = sampler.sample(&logits);
        tokens.push(next);
        // The end of the turn: the model's end token or any other control token.
        if Some(next) == model.tokenizer.eos || model.tokenizer.is_control(next) {
            finish = "stop";
            break;
        }
        let mut done = false;
        if let Some(c) = constraint.as_mut() {
            c.accept(next).map_err(model_error)?;
            done = c.is_done();
        }
        let bytes = model.tokenizer.token_bytes(next);
        let mut stopped = false;
        match mode {
            Mode::Text => stopped = text.push(&bytes),
            Mode::Calls => calls.push(&bytes).map_err(CallError::Model)?,
            Mode::Undecided => {
                calls.raw.extend_from_slice(&bytes);
                // An answer with tools is calls when it begins with `<` (the grammar allows
                // nothing else there), text otherwise.
                if let Some(first) = calls.raw.first() {
                    if *first == b'<' {
                        mode = Mode::Calls;
                        calls.read_calls().map_err(CallError::Model)?;
                    } else {
                        mode = Mode::Text;
                        stopped = text.push(&std::mem::take(&mut calls.raw));
                    }
                }
            }
        }
        if request.stream {
            let event = match mode {
                Mode::Text => {
                    let piece = text.take_ready();
                    (!piece.is_empty()).then(|| render.piece_event(&piece))
                }
                Mode::Calls => calls
                    .take_ready()
                    .map(|(at, new)| render.calls_event(at, new)),
                Mode::Undecided => None,
            };
            if let Some(event) = event {
                if !sink(&event) {
                    complete = false;
                    break;
                }
                transcript.extend_from_slice(&event);
                sent_tokens = tokens.len() as u32;
            } else if !sink(&[]) {
                // Nothing to send for this token (a call still being written, text held
                // back): the reader is asked whether it is still there all the same.
                complete = false;
                break;
            }
        } else if !sink(&[]) {
            // A whole answer's caller is asked between tokens whether it is still there.
            complete = false;
            break;
        }
        if stopped || done {
            finish = "stop";
            break;
        }
        if tokens.len() == max_tokens {
            break;
        }
        logits = session.step(next).map_err(model_error)?;
    }
    let prompt_tokens = prompt.len() as u32;
    if !complete {
        return Ok(Generated {
            tokens,
            prompt_tokens,
            completion_tokens: sent_tokens,
            complete: false,
            tail: Vec::new(),
            transcript,
        });
    }
    // Calls that ran to their end (not cut by the length) are the answer.
    let called = mode == Mode::Calls && finish == "stop";
    if called {
        finish = "tool_calls";
    }
    let completion_tokens = tokens.len() as u32;
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let tail = if request.stream {
        let mut tail = Vec::new();
        if mode == Mode::Text {
            let rest = text.finish();
            if !rest.is_empty() {
                tail.extend(render.piece_event(&rest));
            }
        }
        tail.extend(render.finish_events(finish, usage));
        tail
    } else if mode == Mode::Calls {
        // Cut by the length: the calls complete by then, as a stream sends them.
        render.whole(Answer::Calls(calls.calls), finish, usage)
    } else {
        render.whole(Answer::Text(text.finish_all()), finish, usage)
    };
    transcript.extend_from_slice(&tail);
    Ok(Generated {
        tokens,
        prompt_tokens,
        completion_tokens,
        complete: true,
        tail,
        transcript,
    })
}

/// What an answer with tools turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing written yet (`auto`).
    Undecided,
    /// Text (stop strings apply).
    Text,
    /// Tool calls (stop strings do not apply: they could cut a call in half).
    Calls,
}

/// The answer of a whole (not streamed) call.
enum Answer {
    Text(String),
    Calls(Vec<ToolCall>),
}

/// Tool calls as they are written: the bytes so far, and the calls already complete.
struct CallStream {
    request_id: B256,
    raw: Vec<u8>,
    /// Bytes of `raw` read into `calls`.
    read: usize,
    calls: Vec<ToolCall>,
    /// Calls already released.
    released: usize,
}

impl CallStream {
    fn new(request_id: B256) -> Self {
        Self {
            request_id,
            raw: Vec::new(),
            read: 0,
            calls: Vec::new(),
            released: 0,
        }
    }

    /// Adds a token's bytes, reading every call they complete. A call is `<tool_call>`, one
    /// JSON object read by a JSON parser (so `</tool_call>` inside an argument string is
    /// text), then `</tool_call>`; calls are separated by a newline.
    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.raw.extend_from_slice(bytes);
        // A call can only end on `>`: other bytes complete nothing.
        if bytes.contains(&b'>') {
            self.read_calls()?;
        }
        Ok(())
    }

    /// Reads every call complete in the bytes so far.
    fn read_calls(&mut self) -> Result<(), String> {
        loop {
            let mut at = self.read;
            if !self.calls.is_empty() && self.raw.get(at) == Some(&b'\n') {
                at += 1;
            }
            let rest = &self.raw[at..];
            if rest.len() < CALL_OPEN.len() {
                return Ok(());
            }
            if !rest.starts_with(CALL_OPEN.as_bytes()) {
                return Err("the answer's calls are not in the tool-call form".into());
            }
            let json = &rest[CALL_OPEN.len()..];
            let mut values = serde_json::Deserializer::from_slice(json).into_iter::<Written<'_>>();
            let written = match values.next() {
                Some(Ok(w)) => w,
                Some(Err(e)) if e.is_eof() => return Ok(()),
                None => return Ok(()),
                Some(Err(e)) => {
                    return Err(format!(
                        "a tool call the grammar allowed does not parse: {e}"
                    ));
                }
            };
            let after = &json[values.byte_offset()..];
            if after.len() < CALL_CLOSE.len() {
                return Ok(());
            }
            if !after.starts_with(CALL_CLOSE.as_bytes()) {
                return Err("a tool call's object is not followed by </tool_call>".into());
            }
            let call = self.call(written.name, written.arguments.get().to_owned());
            self.calls.push(call);
            self.read = self.raw.len() - (after.len() - CALL_CLOSE.len());
        }
    }

    /// The `index`-th call, its id derived from the receipt's request id.
    fn call(&self, name: String, arguments: String) -> ToolCall {
        let mut pre = b"cairn.llm.call.v1".to_vec();
        pre.extend_from_slice(self.request_id.as_slice());
        pre.extend_from_slice(&(self.calls.len() as u32).to_be_bytes());
        ToolCall {
            id: format!(
                "call_{}",
                alloy_primitives::hex::encode(&keccak256(pre)[..12])
            ),
            kind: "function".into(),
            function: FunctionCall { name, arguments },
        }
    }

    /// Calls complete since the last release, with the index of the first.
    fn take_ready(&mut self) -> Option<(usize, &[ToolCall])> {
        let at = self.released;
        self.released = self.calls.len();
        (at < self.calls.len()).then(|| (at, &self.calls[at..]))
    }
}

/// One call as the model writes it; the arguments' bytes are kept as written.
#[derive(serde::Deserialize)]
struct Written<'a> {
    name: String,
    #[serde(borrow)]
    arguments: &'a serde_json::value::RawValue,
}

/// SHA-256, as a receipt's request and response hashes are.
pub fn sha256(bytes: &[u8]) -> B256 {
    use sha2::Digest;
    B256::from_slice(&sha2::Sha256::digest(bytes))
}

/// Which route a kept request body was sent to: a chat names `messages`, a completion
/// `prompt`, and each route refuses the other's field.
pub fn endpoint_of(body: &[u8]) -> Option<Endpoint> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object()?;
    match (o.contains_key("messages"), o.contains_key("prompt")) {
        (true, false) => Some(Endpoint::Chat),
        (false, true) => Some(Endpoint::Completion),
        _ => None,
    }
}

/// What running a language-model receipt's request again found.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// The same prompt, the same tokens counted and the same answer bytes.
    Same {
        /// Tokens generated.
        tokens: u32,
    },
    /// The receipt says something this request and model do not give.
    Differs {
        /// What differs.
        what: String,
        /// The SHA-256 of the answer rebuilt here.
        recomputed: B256,
    },
    /// The request cannot be run here: not evidence either way.
    CannotRun(String),
}

/// Runs a receipt's kept `request` on `model` again, as the node that signed `claims` must
/// have, and compares: prompt tokens, tokens generated, whether the answer was whole, and the
/// answer's bytes (their SHA-256 with the receipt's; an answer that broke off is rebuilt up to
/// the bytes the node kept, `kept_response`, which the caller has checked against the receipt).
/// The work is bounded as the node's was: [`MAX_REQUEST_BYTES`] and [`MAX_CONTEXT`].
pub fn replay(
    model: &Model,
    request: &[u8],
    claims: &cairn_receipt::Claims,
    kept_response: Option<&[u8]>,
) -> Replay {
    let Some(usage) = claims.llm else {
        return Replay::CannotRun("not a language-model receipt".into());
    };
    if request.len() > MAX_REQUEST_BYTES {
        return Replay::CannotRun(format!(
            "the kept request is {} bytes, over the {MAX_REQUEST_BYTES} any node takes",
            request.len()
        ));
    }
    let Some(endpoint) = endpoint_of(request) else {
        return Replay::CannotRun("the kept request names neither `messages` nor `prompt`".into());
    };
    let parsed = match LlmRequest::parse(endpoint, request) {
        Ok(p) => p,
        Err(e) => return Replay::CannotRun(format!("the kept request does not parse here: {e}")),
    };
    let prompt = match parsed.prompt_tokens(model) {
        Ok(p) => p,
        Err(e) => {
            return Replay::CannotRun(format!("the kept request cannot be prompted here: {e}"));
        }
    };
    let recomputed = B256::ZERO;
    if prompt.len() != usage.prompt_tokens as usize {
        return Replay::Differs {
            what: format!(
                "the prompt is {} tokens, the receipt counts {}",
                prompt.len(),
                usage.prompt_tokens
            ),
            recomputed,
        };
    }
    // The node's own context: a call without `max_tokens` ran until its end (or the turn's).
    let context = context_of(model);
    let id = Identity {
        request_id: claims.request_id,
        created: claims.timestamp,
        fingerprint: claims.profile.hash(),
    };
    let constraint = match parsed.constraint(model) {
        Ok(c) => c,
        Err(e) => return Replay::CannotRun(format!("the kept request's format: {e}")),
    };
    let limit = kept_response.map(<[u8]>::len);
    let mut sent = 0usize;
    let generated = generate(
        model,
        &parsed,
        &prompt,
        context,
        &id,
        constraint,
        |b| match limit {
            Some(l) if sent + b.len() > l => false,
            _ => {
                sent += b.len();
                true
            }
        },
    );
    let g = match generated {
        Ok(g) => g,
        Err(e) => return Replay::CannotRun(format!("the generation failed here: {e}")),
    };
    let recomputed = sha256(&g.transcript);
    if g.complete != usage.complete || g.completion_tokens != usage.completion_tokens {
        return Replay::Differs {
            what: format!(
                "{} tokens{} here; the receipt counts {}{}",
                g.completion_tokens,
                if g.complete { "" } else { " before the cut" },
                usage.completion_tokens,
                if usage.complete {
                    ""
                } else {
                    " before the cut"
                }
            ),
            recomputed,
        };
    }
    if recomputed != claims.output_hash {
        let at = kept_response
            .map(|k| {
                k.iter()
                    .zip(&g.transcript)
                    .position(|(a, b)| a != b)
                    .unwrap_or(k.len().min(g.transcript.len()))
            })
            .map(|i| format!(" (first difference at byte {i})"))
            .unwrap_or_default();
        return Replay::Differs {
            what: format!(
                "the answer hashes to {recomputed} here, the receipt binds {}{at}",
                claims.output_hash
            ),
            recomputed,
        };
    }
    Replay::Same {
        tokens: g.completion_tokens,
    }
}

/// The answer's bytes.
struct Render<'a> {
    request: &'a LlmRequest,
    id: &'a Identity,
    model_name: &'a str,
}

fn sse(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    serde_json::to_writer(&mut out, value).expect("serializes");
    out.extend_from_slice(b"\n\n");
    out
}

impl Render<'_> {
    fn chat_id(&self) -> String {
        let prefix = match self.request.endpoint {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completion => "cmpl-",
        };
        format!(
            "{prefix}{}",
            alloy_primitives::hex::encode(self.id.request_id)
        )
    }

    fn fingerprint(&self) -> String {
        format!(
            "cairn-{}",
            alloy_primitives::hex::encode(&self.id.fingerprint[..8])
        )
    }

    /// `null` on every chunk when the usage comes last; absent otherwise.
    fn chunk_usage(&self) -> Option<Option<Usage>> {
        self.request.include_usage.then_some(None)
    }

    /// A `chat.completion.chunk` with these choices and usage.
    fn chunk(
        &self,
        choices: Vec<ChunkChoice>,
        usage: Option<Option<Usage>>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.chat_id(),
            object: "chat.completion.chunk".into(),
            created: self.id.created,
            model: self.model_name.into(),
            system_fingerprint: self.fingerprint(),
            choices,
            usage,
        }
    }

    /// A `text_completion` (whole, or a chunk of a stream) with these choices and usage.
    fn text(&self, choices: Vec<TextChoice>, usage: Option<Option<Usage>>) -> TextCompletion {
        TextCompletion {
            id: self.chat_id(),
            object: "text_completion".into(),
            created: self.id.created,
            model: self.model_name.into(),
            system_fingerprint: self.fingerprint(),
            choices,
            usage,
        }
    }

    fn chat_chunk(&self, delta: Delta, finish: Option<&str>) -> Vec<u8> {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish.map(str::to_owned),
        };
        sse(&self.chunk(vec![choice], self.chunk_usage()))
    }

    fn text_chunk(&self, text: &str, finish: Option<&str>) -> Vec<u8> {
        sse(&self.text(vec![text_choice(text, finish)], self.chunk_usage()))
    }

    /// A chat stream opens with the assistant's role.
    fn first_event(&self) -> Vec<u8> {
        match self.request.endpoint {
            Endpoint::Chat => self.chat_chunk(
                Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    tool_calls: None,
                },
                None,
            ),
            Endpoint::Completion => Vec::new(),
        }
    }

    fn piece_event(&self, text: &str) -> Vec<u8> {
        match self.request.endpoint {
            Endpoint::Chat => self.chat_chunk(
                Delta {
                    role: None,
                    content: Some(text.into()),
                    tool_calls: None,
                },
                None,
            ),
            Endpoint::Completion => self.text_chunk(text, None),
        }
    }

    /// Calls complete since the last event, the first at index `at`, each sent whole.
    fn calls_event(&self, at: usize, calls: &[ToolCall]) -> Vec<u8> {
        let deltas = calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCallDelta {
                index: (at + i) as u32,
                id: c.id.clone(),
                kind: c.kind.clone(),
                function: c.function.clone(),
            })
            .collect();
        self.chat_chunk(
            Delta {
                role: None,
                content: None,
                tool_calls: Some(deltas),
            },
            None,
        )
    }

    fn finish_events(&self, finish: &str, usage: Usage) -> Vec<u8> {
        let mut out = match self.request.endpoint {
            Endpoint::Chat => self.chat_chunk(Delta::default(), Some(finish)),
            Endpoint::Completion => self.text_chunk("", Some(finish)),
        };
        if self.request.include_usage {
            out.extend(match self.request.endpoint {
                Endpoint::Chat => sse(&self.chunk(Vec::new(), Some(Some(usage)))),
                Endpoint::Completion => sse(&self.text(Vec::new(), Some(Some(usage)))),
            });
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    fn whole(&self, answer: Answer, finish: &str, usage: Usage) -> Vec<u8> {
        let (content, tool_calls) = match answer {
            Answer::Text(text) => (Some(text), None),
            Answer::Calls(calls) => (None, Some(calls)),
        };
        match self.request.endpoint {
            Endpoint::Chat => serde_json::to_vec(&ChatCompletion {
                id: self.chat_id(),
                object: "chat.completion".into(),
                created: self.id.created,
                model: self.model_name.into(),
                system_fingerprint: self.fingerprint(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content,
                        refusal: None,
                        tool_calls,
                    },
                    logprobs: None,
                    finish_reason: finish.into(),
                }],
                usage,
            }),
            Endpoint::Completion => serde_json::to_vec(&self.text(
                vec![text_choice(
                    content.as_deref().unwrap_or_default(),
                    Some(finish),
                )],
                Some(Some(usage)),
            )),
        }
        .expect("serializes")
    }
}

fn text_choice(text: &str, finish: Option<&str>) -> TextChoice {
    TextChoice {
        text: text.into(),
        index: 0,
        logprobs: None,
        finish_reason: finish.map(str::to_owned),
    }
}

/// Generated text as it grows: bytes decoded as UTF-8 (a character cut between tokens waits for
/// its rest; bytes that can never be UTF-8 become U+FFFD), cut at the first stop string, and
/// released only when no stop string could still begin in it.
struct TextStream<'a> {
    stops: &'a [String],
    text: String,
    pending: Vec<u8>,
    /// Bytes of `text` released.
    released: usize,
    /// Bytes of `text` already searched for stop strings.
    searched: usize,
    /// `text` was cut at a stop string: nothing more comes.
    stopped: bool,
}

impl<'a> TextStream<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            text: String::new(),
            pending: Vec::new(),
            released: 0,
            searched: 0,
            stopped: false,
        }
    }

    /// Adds a token's bytes; true when a stop string has now appeared (the text ends before it).
    fn push(&mut self, bytes: &[u8]) -> bool {
        self.pending.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let ok = e.valid_up_to();
                    self.text
                        .push_str(std::str::from_utf8(&self.pending[..ok]).expect("valid prefix"));
                    match e.error_len() {
                        Some(bad) => {
                            self.text.push('\u{FFFD}');
                            self.pending.drain(..ok + bad);
                        }
                        None => {
                            self.pending.drain(..ok);
                            break;
                        }
                    }
                }
            }
        }
        // A stop string wholly after the released text (released text holds none, nor the
        // start of one), and not wholly in text searched before.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.released.max(self.searched.saturating_sub(longest));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.searched = self.text.len();
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| from + p))
            .min()
        {
            self.text.truncate(at);
            self.pending.clear();
            self.stopped = true;
        }
        self.stopped
    }

    /// Text that can be released now: up to the end, less a tail that could begin a stop string.
    fn take_ready(&mut self) -> String {
        let mut end = self.text.len();
        if !self.stopped {
            for (k, _) in self.text[self.released..].char_indices() {
                let k = self.released + k;
                let tail = &self.text[k..];
                if self
                    .stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
                {
                    end = k;
                    break;
                }
            }
        }
        let out = self.text[self.released..end].to_owned();
        self.released = end;
        out
    }

    /// Everything not released yet, at the end (a cut character as U+FFFD).
    fn finish(&mut self) -> String {
        if !self.pending.is_empty() && !self.stopped {
            self.text.push('\u{FFFD}');
            self.pending.clear();
        }
        let out = self.text[self.released..].to_owned();
        self.released = self.text.len();
        out
    }

    /// The whole text, at the end.
    fn finish_all(&mut self) -> String {
        self.finish();
        std::mem::take(&mut self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_released_only_when_no_stop_string_can_begin_in_it() {
        let stops = vec!["END".to_string()];
        let mut t = TextStream::new(&stops);
        assert!(!t.push(b"hello E"));
        assert_eq!(t.take_ready(), "hello ");
        assert!(!t.push(b"N"));
        assert_eq!(t.take_ready(), "");
        assert!(!t.push(b"x"));
        assert_eq!(t.take_ready(), "ENx");
        assert!(t.push(b" and END more"));
        assert_eq!(t.take_ready(), " and ");
        assert_eq!(t.finish(), "");
    }

    #[test]
    fn a_character_cut_between_tokens_waits_for_its_rest() {
        let mut t = TextStream::new(&[]);
        let e = "é".as_bytes();
        t.push(&e[..1]);
        assert_eq!(t.take_ready(), "");
        t.push(&e[1..]);
        assert_eq!(t.take_ready(), "é");
        t.push(&[0xff, b'a']);
        assert_eq!(t.take_ready(), "\u{FFFD}a");
        t.push(&e[..1]);
        assert_eq!(t.finish(), "\u{FFFD}");
    }

    #[test]
    fn parameters_the_node_does_not_implement_are_refused_by_name() {
        let chat = |body: &str| LlmRequest::parse(Endpoint::Chat, body.as_bytes());
        let param = |r: Result<LlmRequest, CallError>| match r {
            Err(CallError::Invalid { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        let m = r#""model":"m@1.0","messages":[{"role":"user","content":"hi"}]"#;
        assert!(chat(&format!("{{{m}}}")).is_ok());
        for (extra, field) in [
            (r#""logit_bias":{}"#, "logit_bias"),
            (r#""n":2"#, "n"),
            (
                r#""tools":[{"type":"retrieval","function":{"name":"f"}}]"#,
                "tools[0].type",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"get weather"}}]"#,
                "tools[0].function.name",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"f","parameters":[]}}]"#,
                "tools[0].function.parameters",
            ),
            (r#""tool_choice":"required""#, "tool_choice"),
            (r#""parallel_tool_calls":false"#, "parallel_tool_calls"),
            (
                r#""tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"sometimes""#,
                "tool_choice",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}"#,
                "tool_choice.function.name",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"a b"}}"#,
                "response_format.json_schema.name",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"a","schema":true}}"#,
                "response_format.json_schema.schema",
            ),
            (r#""temperature":3"#, "temperature"),
            (r#""top_p":0"#, "top_p"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
            (r#""presence_penalty":0.5"#, "presence_penalty"),
            (r#""max_tokens":0"#, "max_tokens"),
            (
                r#""stream_options":{"include_usage":true}"#,
                "stream_options",
            ),
        ] {
            assert_eq!(
                param(chat(&format!("{{{m},{extra}}}"))).as_deref(),
                Some(field),
                "{extra}"
            );
        }
        assert_eq!(
            param(chat(
                r#"{"model":"m@1.0","messages":[{"role":"robot","content":"hi"}]}"#
            ))
            .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(chat(
                r#"{"model":"m@1.0","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#
            ))
            .as_deref(),
            Some("messages[0].content")
        );
        assert!(matches!(
            chat("{not json"),
            Err(CallError::Invalid { param: None, .. })
        ));
        let c = LlmRequest::parse(
            Endpoint::Completion,
            br#"{"model":"m@1.0","prompt":["one"],"max_tokens":3}"#,
        )
        .unwrap();
        assert_eq!(c.max_tokens, Some(3));
        assert!(
            LlmRequest::parse(Endpoint::Completion, br#"{"model":"m@1.0","prompt":[1,2]}"#)
                .is_err()
        );
    }

    /// The devnet's model, when the test environment has it (scripts/test-deps.sh).
    fn model() -> Option<Model> {
        let Some(path) = std::env::var_os("CAIRN_LLM_MODEL") else {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                "CAIRN_LLM_MODEL is not set; run scripts/test.sh"
            );
            eprintln!("SKIPPED: CAIRN_LLM_MODEL is not set");
            return None;
        };
        Some(Model::load(&std::fs::read(path).unwrap()).unwrap())
    }

    /// A call as the node makes it: its claims (as the receipt signs them) and the bytes it sent,
    /// cut after `cut` events when given (a reader that left).
    fn call(model: &Model, body: &str, cut: Option<usize>) -> (cairn_receipt::Claims, Vec<u8>) {
        let endpoint = endpoint_of(body.as_bytes()).unwrap();
        let request = LlmRequest::parse(endpoint, body.as_bytes()).unwrap();
        let prompt = request.prompt_tokens(model).unwrap();
        let id = Identity {
            request_id: B256::repeat_byte(9),
            created: 1_800_000_000,
            fingerprint: profile().hash(),
        };
        let mut events = 0;
        let constraint = request.constraint(model).unwrap();
        let g = generate(
            model,
            &request,
            &prompt,
            context_of(model),
            &id,
            constraint,
            |b| {
                if b.is_empty() {
                    return true;
                }
                events += 1;
                cut.is_none_or(|c| events <= c)
            },
        )
        .unwrap();
        let claims = cairn_receipt::Claims {
            request_id: id.request_id,
            model: cairn_core::BlobId::of(b"the model"),
            input_hash: sha256(body.as_bytes()),
            output_hash: sha256(&g.transcript),
            profile: profile(),
            timestamp: id.created,
            price: alloy_primitives::U256::ZERO,
            payment_ref: B256::ZERO,
            llm: Some(cairn_receipt::LlmUsage {
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                complete: g.complete,
            }),
        };
        (claims, g.transcript)
    }

    /// A verifier's replay confirms an honest call, whole or streamed, cut short or not, with
    /// or without `max_tokens`; it catches altered bytes and altered counts.
    #[test]
    fn replay_confirms_honest_calls_and_catches_altered_ones() {
        let Some(m) = model() else { return };
        let chat = |extra: &str| {
            format!(
                r#"{{"model":"m@1.0","messages":[{{"role":"user","content":"Count to twenty."}}]{extra}}}"#
            )
        };
        for (body, cut) in [
            (chat(r#","max_tokens":12,"temperature":0"#), None),
            (chat(r#","max_tokens":12,"temperature":0.9,"seed":3"#), None),
            (chat(r#","max_tokens":12,"stream":true,"stream_options":{"include_usage":true}"#), None),
            (chat(r#","max_tokens":40,"stream":true,"temperature":0"#), Some(4)),
            // No max_tokens, the reader gone after 3 events: replayed up to the bytes sent.
            (chat(r#","stream":true,"temperature":0"#), Some(3)),
            (
                r#"{"model":"m@1.0","prompt":"1, 2, 3,","max_tokens":10,"temperature":0,"stop":[" 6"]}"#.to_string(),
                None,
            ),
        ] {
            let (claims, sent) = call(&m, &body, cut);
            let kept = (!claims.llm.unwrap().complete).then_some(sent.as_slice());
            assert!(
                matches!(replay(&m, body.as_bytes(), &claims, kept), Replay::Same { .. }),
                "{body} cut {cut:?}: {:?}",
                replay(&m, body.as_bytes(), &claims, kept)
            );
            // Other answer bytes.
            let mut lied = claims.clone();
            lied.output_hash = sha256(b"another answer");
            assert!(matches!(
                replay(&m, body.as_bytes(), &lied, kept),
                Replay::Differs { .. }
            ), "{body}");
            // Other counts.
            let mut lied = claims.clone();
            let mut u = lied.llm.unwrap();
            u.completion_tokens += 1;
            lied.llm = Some(u);
            assert!(matches!(
                replay(&m, body.as_bytes(), &lied, kept),
                Replay::Differs { .. }
            ), "{body}");
        }
    }

    #[test]
    fn a_model_must_be_pinned_and_a_prompt_not_empty() {
        let e = LlmRequest::parse(
            Endpoint::Chat,
            br#"{"model":"smollm2","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, CallError::Invalid { ref param, .. } if param.as_deref() == Some("model")),
            "{e:?}"
        );
        let Some(m) = model() else { return };
        let r =
            LlmRequest::parse(Endpoint::Completion, br#"{"model":"m@1.0","prompt":""}"#).unwrap();
        assert!(matches!(
            r.prompt_tokens(&m),
            Err(CallError::Invalid { param: Some(p), .. }) if p == "prompt"
        ));
    }

    /// The answer's bytes are part of the profile (`RULES`): pinned here, byte for byte, so a
    /// change to them cannot slip in without a new profile.
    #[test]
    fn the_answer_bytes_are_pinned() {
        let id = Identity {
            request_id: B256::repeat_byte(0xab),
            created: 1_800_000_000,
            fingerprint: B256::repeat_byte(0xcd),
        };
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        };
        let head = |object: &str, prefix: &str| {
            format!(
                r#""id":"{prefix}-{}","object":"{object}","created":1800000000,"model":"m@1.0","system_fingerprint":"cairn-cdcdcdcdcdcdcdcd""#,
                "ab".repeat(32)
            )
        };
        let completion = LlmRequest::parse(
            Endpoint::Completion,
            br#"{"model":"m@1.0","prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        let r = Render {
            request: &completion,
            id: &id,
            model_name: "m@1.0",
        };
        let h = head("text_completion", "cmpl");
        assert_eq!(r.first_event(), b"");
        assert_eq!(
            String::from_utf8(r.piece_event("hi")).unwrap(),
            format!(
                r#"data: {{{h},"choices":[{{"text":"hi","index":0,"logprobs":null,"finish_reason":null}}],"usage":null}}"#
            ) + "\n\n"
        );
        assert_eq!(
            String::from_utf8(r.finish_events("stop", usage)).unwrap(),
            format!(
                r#"data: {{{h},"choices":[{{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#
            ) + "\n\n"
                + &format!(
                    r#"data: {{{h},"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}"#
                )
                + "\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            String::from_utf8(r.whole(Answer::Text("hi".into()), "length", usage)).unwrap(),
            format!(
                r#"{{{h},"choices":[{{"text":"hi","index":0,"logprobs":null,"finish_reason":"length"}}],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}"#
            )
        );
        let chat = LlmRequest::parse(
            Endpoint::Chat,
            br#"{"model":"m@1.0","messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        let r = Render {
            request: &chat,
            id: &id,
            model_name: "m@1.0",
        };
        let h = head("chat.completion.chunk", "chatcmpl");
        assert_eq!(
            String::from_utf8(r.first_event()).unwrap(),
            format!(
                r#"data: {{{h},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
            ) + "\n\n"
        );
        assert_eq!(
            String::from_utf8(r.finish_events("stop", usage)).unwrap(),
            format!(
                r#"data: {{{h},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#
            ) + "\n\ndata: [DONE]\n\n"
        );
        let call = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: r#"{"x": 1}"#.into(),
            },
        };
        assert_eq!(
            String::from_utf8(r.calls_event(1, std::slice::from_ref(&call))).unwrap(),
            format!(
                r#"data: {{{h},"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":1,"id":"call_1","type":"function","function":{{"name":"f","arguments":"{{\"x\": 1}}"}}}}]}},"logprobs":null,"finish_reason":null}}]}}"#
            ) + "\n\n"
        );
        let h = head("chat.completion", "chatcmpl");
        assert_eq!(
            String::from_utf8(r.whole(Answer::Text("hi".into()), "stop", usage)).unwrap(),
            format!(
                r#"{{{h},"choices":[{{"index":0,"message":{{"role":"assistant","content":"hi","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}"#
            )
        );
        assert_eq!(
            String::from_utf8(r.whole(Answer::Calls(vec![call]), "tool_calls", usage)).unwrap(),
            format!(
                r#"{{{h},"choices":[{{"index":0,"message":{{"role":"assistant","content":null,"refusal":null,"tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"f","arguments":"{{\"x\": 1}}"}}}}]}},"logprobs":null,"finish_reason":"tool_calls"}}],"usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}"#
            )
        );
    }

    /// The tools text is part of the prompt (and so of every replay): a schema's keys keep
    /// the request's order (serde_json's `preserve_order`, which llguidance needs too), in the
    /// layout calls are written in.
    #[test]
    fn offered_tools_are_written_in_the_requests_order() {
        let body = br#"{"model":"m@1.0","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}}}]}"#;
        let r = LlmRequest::parse(Endpoint::Chat, body).unwrap();
        let PromptSource::Chat(messages) = &r.prompt else {
            panic!("a chat")
        };
        assert_eq!(messages[0].role, "system");
        assert!(
            messages[0].content.contains(
                r#"{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}}}}}"#
            ),
            "{}",
            messages[0].content
        );
    }

    /// `</tool_call>` inside an argument string is text: a call ends where its JSON object
    /// does.
    #[test]
    fn a_closing_tag_inside_an_argument_is_text() {
        let mut calls = CallStream::new(B256::ZERO);
        let text = r#"<tool_call>{"name": "f", "arguments": {"html": "</tool_call>"}}</tool_call>
<tool_call>{"name": "g", "arguments": {}}</tool_call>"#;
        for b in text.as_bytes().chunks(3) {
            calls.push(b).unwrap();
        }
        let got: Vec<(&str, &str)> = calls
            .calls
            .iter()
            .map(|c| (c.function.name.as_str(), c.function.arguments.as_str()))
            .collect();
        assert_eq!(got, [("f", r#"{"html": "</tool_call>"}"#), ("g", "{}")]);
        assert_ne!(calls.calls[0].id, calls.calls[1].id);
        assert!(
            CallStream::new(B256::ZERO)
                .push(b"<tool_call>{}</tool_call>")
                .is_err()
        );
    }

    #[test]
    fn the_seed_comes_from_the_request_seed_or_the_receipt_id() {
        let parse = |body: &str| LlmRequest::parse(Endpoint::Chat, body.as_bytes()).unwrap();
        let m = r#""model":"m@1.0","messages":[{"role":"user","content":"hi"}]"#;
        let seeded = parse(&format!("{{{m},\"seed\":7}}"));
        let a = B256::repeat_byte(1);
        let b = B256::repeat_byte(2);
        assert_eq!(seeded.sampling(a).seed, seeded.sampling(b).seed);
        let unseeded = parse(&format!("{{{m}}}"));
        assert_ne!(unseeded.sampling(a).seed, unseeded.sampling(b).seed);
        assert_ne!(unseeded.sampling(a).seed, seeded.sampling(a).seed);
        assert_eq!(unseeded.sampling(a).temperature, 1.0);
    }

    /// The answer a call gave: a whole body, or a stream's events put back together (content
    /// and tool calls), with its finish reason.
    fn answer(sent: &[u8], stream: bool) -> (Option<String>, Vec<ToolCall>, String) {
        if !stream {
            let c: ChatCompletion = serde_json::from_slice(sent).unwrap();
            let m = c.choices[0].message.clone();
            return (
                m.content,
                m.tool_calls.unwrap_or_default(),
                c.choices[0].finish_reason.clone(),
            );
        }
        let (mut content, mut calls, mut finish) = (None::<String>, Vec::new(), String::new());
        for event in std::str::from_utf8(sent).unwrap().split("\n\n") {
            let Some(data) = event.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let chunk: ChatCompletionChunk = serde_json::from_str(data).unwrap();
            for choice in chunk.choices {
                if let Some(t) = choice.delta.content {
                    content.get_or_insert_default().push_str(&t);
                }
                for d in choice.delta.tool_calls.unwrap_or_default() {
                    assert_eq!(d.index as usize, calls.len());
                    calls.push(ToolCall {
                        id: d.id,
                        kind: d.kind,
                        function: d.function,
                    });
                }
                if let Some(f) = choice.finish_reason {
                    finish = f;
                }
            }
        }
        (content.filter(|c| !c.is_empty()), calls, finish)
    }

    fn replays(m: &Model, body: &str, claims: &cairn_receipt::Claims) {
        assert!(
            matches!(
                replay(m, body.as_bytes(), claims, None),
                Replay::Same { .. }
            ),
            "{body}: {:?}",
            replay(m, body.as_bytes(), claims, None)
        );
    }

    /// `response_format` holds the answer to JSON (any object, or valid against a schema, its
    /// properties in the schema's order), whole or streamed, greedy or sampled hot; a verifier
    /// replays it to the same bytes.
    #[test]
    fn structured_answers_always_parse_and_replay() {
        let Some(m) = model() else { return };
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 30},
                "year": {"type": "integer", "minimum": 1800, "maximum": 2100},
                "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "crime"]}, "minItems": 1, "maxItems": 2}
            },
            "required": ["title", "year", "genres"],
            "additionalProperties": false
        });
        let formats = [
            serde_json::json!({"type": "json_object"}),
            serde_json::json!({"type": "json_schema", "json_schema": {"name": "film", "schema": schema, "strict": true}}),
        ];
        for (i, format) in formats.iter().enumerate() {
            for extra in [
                r#""temperature":0"#,
                r#""temperature":1.5,"seed":11,"stream":true"#,
            ] {
                let body = format!(
                    r#"{{"model":"m@1.0","messages":[{{"role":"user","content":"Name a film as JSON."}}],"max_tokens":160,"response_format":{format},{extra}}}"#
                );
                let stream = extra.contains("stream");
                let (claims, sent) = call(&m, &body, None);
                let (content, calls, finish) = answer(&sent, stream);
                assert!(calls.is_empty());
                assert_eq!(finish, "stop", "{body}: {content:?}");
                let content = content.unwrap();
                let v: Value = serde_json::from_str(&content)
                    .unwrap_or_else(|e| panic!("{body}: {e}: {content}"));
                assert!(v.is_object(), "{content}");
                if i == 1 {
                    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
                    assert_eq!(keys, ["title", "year", "genres"], "{content}");
                    assert!((1800..=2100).contains(&v["year"].as_i64().unwrap()));
                    let genres = v["genres"].as_array().unwrap();
                    assert!((1..=2).contains(&genres.len()), "{content}");
                    assert!(content.starts_with(r#"{"title": ""#), "{content}");
                }
                replays(&m, &body, &claims);
            }
        }
    }

    /// Tools: `required` and a named choice always give calls whose arguments validate against
    /// the function's parameters (finish `tool_calls`, content null), whole or streamed (each
    /// call sent whole); `auto` gives calls or text; a conversation goes on with the calls'
    /// results; every answer replays to the same bytes.
    #[test]
    fn tool_calls_always_validate_and_replay() {
        let Some(m) = model() else { return };
        let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"The weather in a city now.","parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":40},"unit":{"enum":["celsius","fahrenheit"]}},"required":["city","unit"],"additionalProperties":false}}},{"type":"function","function":{"name":"get_time","description":"The local time in a city.","parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":40}},"required":["city"],"additionalProperties":false}}}]"#;
        let ask = r#"[{"role":"user","content":"What is the weather in Paris?"}]"#;
        for (choice, extra) in [
            (
                r#""required""#,
                r#""temperature":0,"parallel_tool_calls":false"#,
            ),
            (
                r#""required""#,
                r#""temperature":1.2,"seed":5,"stream":true"#,
            ),
            (
                r#"{"type":"function","function":{"name":"get_time"}}"#,
                r#""temperature":0,"stream":true"#,
            ),
            (r#""auto""#, r#""temperature":1,"seed":2,"stream":true"#),
        ] {
            let body = format!(
                r#"{{"model":"m@1.0","messages":{ask},"tools":{tools},"tool_choice":{choice},"max_tokens":60,{extra}}}"#
            );
            let stream = extra.contains("stream");
            let (claims, sent) = call(&m, &body, None);
            let (content, calls, finish) = answer(&sent, stream);
            if choice == r#""auto""# && calls.is_empty() {
                assert!(finish == "stop" || finish == "length", "{body}");
                assert!(!content.unwrap_or_default().starts_with('<'));
            } else {
                // Several calls may run into the length: those complete are the answer.
                let parallel =
                    !body.contains("parallel_tool_calls") && !choice.contains("get_time");
                if !(parallel && finish == "length") {
                    assert_eq!(finish, "tool_calls", "{body}: {content:?}");
                }
                assert_eq!(content, None, "{body}");
                assert!(!calls.is_empty());
                for c in &calls {
                    assert!(c.id.starts_with("call_") && c.id.len() == 29, "{}", c.id);
                    let args: Value = serde_json::from_str(&c.function.arguments).unwrap();
                    let args = args.as_object().unwrap();
                    assert!(args["city"].is_string(), "{args:?}");
                    match c.function.name.as_str() {
                        "get_weather" => {
                            assert!(!choice.contains("get_time"));
                            assert!(matches!(
                                args["unit"].as_str(),
                                Some("celsius" | "fahrenheit")
                            ));
                            assert_eq!(args.len(), 2);
                        }
                        "get_time" => assert_eq!(args.len(), 1),
                        other => panic!("{other}"),
                    }
                }
                if !parallel {
                    assert_eq!(calls.len(), 1);
                }
            }
            replays(&m, &body, &claims);
        }
        // The conversation goes on: the call and its result in the prompt.
        let body = format!(
            r#"{{"model":"m@1.0","messages":[{{"role":"user","content":"Weather in Paris?"}},{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\": \"Paris\", \"unit\": \"celsius\"}}"}}}}]}},{{"role":"tool","tool_call_id":"call_1","content":"18 degrees, sunny"}}],"tools":{tools},"max_tokens":24,"temperature":0}}"#
        );
        let request = LlmRequest::parse(Endpoint::Chat, body.as_bytes()).unwrap();
        let prompt = m.tokenizer.decode(&request.prompt_tokens(&m).unwrap());
        for part in [
            "<tools>\n{\"type\": \"function\"",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}</tool_call>",
            "<tool_response>\n18 degrees, sunny\n</tool_response>",
        ] {
            assert!(prompt.contains(part), "{part} not in {prompt}");
        }
        let (claims, _) = call(&m, &body, None);
        replays(&m, &body, &claims);
    }

    /// A schema that cannot be enforced is refused with the reason (the server compiles it
    /// before admitting the call, so no stream opens).
    #[test]
    fn a_format_that_cannot_be_enforced_is_refused_with_its_reason() {
        let Some(m) = model() else { return };
        let body = r#"{"model":"m@1.0","messages":[{"role":"user","content":"x"}],"stream":true,"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"object","properties":{"a":false},"required":["a"]}}}}"#;
        let request = LlmRequest::parse(Endpoint::Chat, body.as_bytes()).unwrap();
        let e = match request.constraint(&m) {
            Err(e) => e,
            Ok(_) => panic!("an unsatisfiable schema compiled"),
        };
        match e {
            CallError::Invalid { param, message } => {
                assert_eq!(param.as_deref(), Some("response_format"));
                assert!(message.contains("nsatisfiable"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
