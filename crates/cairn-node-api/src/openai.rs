//! The OpenAI-compatible API's bodies: what `POST /v1/chat/completions`, `POST /v1/completions`
//! and `GET /v1/models` take and give, as the official `openai` clients spell them.
//!
//! Requests are read strictly: a field this node does not implement is refused by name rather
//! than ignored, so a caller never believes a parameter was honored when it was not. Responses
//! are serialized from these structs in field order, so the same generation always gives the
//! same bytes (what an LLM receipt's `responseHash` covers and a verifier rebuilds).

use alloy_primitives::U256;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Header naming the receipt of an OpenAI-compatible call (sent before the body, so a stream's
/// caller knows it from the start); the receipt is at `GET /v1/receipts/{id}` once the answer
/// is complete.
pub const RECEIPT_ID_HEADER: &str = "cairn-receipt-id";

/// A message's content: text, or an array of parts of which only `text` parts are taken.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts (`{"type": "text", "text": …}`).
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    /// `text` (the only kind a text model takes).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default)]
    pub text: Option<String>,
}

/// One message of a chat request.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (absent or null only for an assistant message that called tools).
    #[serde(default)]
    pub content: Option<Content>,
    /// A participant's name (kept out of the prompt; the chat template has no place for it).
    #[serde(default)]
    pub name: Option<String>,
    /// The calls an assistant message made (echoed back in a conversation that goes on).
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// `response_format`: what the answer must be.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Any text (the default).
    Text,
    /// One JSON object.
    JsonObject,
    /// One JSON value valid against a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    /// `[a-zA-Z0-9_-]{1,64}`.
    pub name: String,
    /// What the format is for (not shown to the model).
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON schema (absent: any JSON value).
    #[serde(default)]
    pub schema: Option<Value>,
    /// Accepted either way: every answer is held to the schema.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// One tool the model may call.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDefinition,
}

/// A function the model may call.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionDefinition {
    /// `[a-zA-Z0-9_-]{1,64}`.
    pub name: String,
    /// What it does (shown to the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments, a JSON schema for an object (absent: no arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Accepted either way: every call is held to `parameters`.
    #[serde(default, skip_serializing)]
    pub strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or one function by name.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(String),
    /// `{"type": "function", "function": {"name": …}}`.
    Function(NamedToolChoice),
}

/// A `tool_choice` naming one function.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedToolChoice {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which.
    pub function: NamedFunction,
}

/// A function by name.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    /// Its name.
    pub name: String,
}

/// A call the model made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// `call_` and 24 hex digits, derived from the receipt's request id.
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which function, with what.
    pub function: FunctionCall,
}

/// A function call's name and arguments.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    /// The function.
    pub name: String,
    /// Its arguments: a JSON object, as text.
    pub arguments: String,
}

/// A call in a stream: sent whole, once its arguments are complete.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ToolCallDelta {
    /// Its position among the answer's calls.
    pub index: u32,
    /// As in [`ToolCall`].
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which function, with what.
    pub function: FunctionCall,
}

/// `stop`: one string or up to four.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the usage (and `"usage": null` on every other chunk).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling parameters both endpoints share.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate (the older name).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// 0 to 2; 0 is greedy (the default is 1, as OpenAI's).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling's mass, in (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Keep at most this many most likely tokens (0: all). Not in OpenAI's API; llama.cpp's
    /// and vLLM's servers take it.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// The sampler's seed: the same request and seed give the same tokens.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Up to four strings that end the answer (not included in it).
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Choices to generate: only 1.
    #[serde(default)]
    pub n: Option<u32>,
    /// An end-user id (not used; never logged).
    #[serde(default)]
    pub user: Option<String>,
    /// Must be 0 or absent: penalties are not implemented.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Must be 0 or absent.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Must be false or absent.
    #[serde(default)]
    pub logprobs: Option<bool>,
}

/// `POST /v1/chat/completions` (read through [`parse_request`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    /// A model on the hub: its CID or `name@version`.
    pub model: String,
    /// The conversation.
    pub messages: Vec<RequestMessage>,
    /// Most tokens to generate (the newer name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Text (the default), a JSON object, or JSON valid against a schema: enforced token by
    /// token, so the answer always parses.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (at most 64).
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    /// Whether and which tools must be called (default `auto` with tools, `none` without).
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// Whether an answer may make several calls (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Must be absent: `logprobs` is not implemented.
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: SamplingParams,
}

/// `POST /v1/completions` (read through [`parse_request`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct CompletionRequest {
    /// A model on the hub: its CID or `name@version`.
    pub model: String,
    /// The text to continue (one string).
    pub prompt: Value,
    /// Must be false or absent.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Must be absent.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Must be 1 or absent.
    #[serde(default)]
    pub best_of: Option<u32>,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: SamplingParams,
}

/// The fields [`SamplingParams`] reads.
const SAMPLING_FIELDS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
];

/// A request body that names only fields this node implements (serde's `deny_unknown_fields`
/// does not hold across a flattened struct): the JSON object, or which field is unknown.
pub trait KnownFields {
    /// The top-level fields besides [`SamplingParams`]'s.
    const FIELDS: &'static [&'static str];
}

impl KnownFields for ChatCompletionRequest {
    const FIELDS: &'static [&'static str] = &[
        "model",
        "messages",
        "max_completion_tokens",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "top_logprobs",
    ];
}

impl KnownFields for CompletionRequest {
    const FIELDS: &'static [&'static str] = &["model", "prompt", "echo", "suffix", "best_of"];
}

/// Why a request body was not read: the message, and the field at fault when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    /// What is wrong and what to do.
    pub message: String,
    /// The field.
    pub param: Option<String>,
}

/// Reads a request body: a JSON object naming only the fields `T` implements.
pub fn parse_request<T: KnownFields + serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| RequestError {
        message: format!("the body is not JSON: {e}"),
        param: None,
    })?;
    let Some(object) = value.as_object() else {
        return Err(RequestError {
            message: "the body must be a JSON object".into(),
            param: None,
        });
    };
    if let Some(k) = object
        .keys()
        .find(|k| !T::FIELDS.contains(&k.as_str()) && !SAMPLING_FIELDS.contains(&k.as_str()))
    {
        return Err(RequestError {
            message: format!(
                "unrecognized request argument `{k}`: this node does not implement it"
            ),
            param: Some(k.clone()),
        });
    }
    serde_json::from_value(value).map_err(|e| RequestError {
        message: format!("the request is malformed: {e}"),
        param: None,
    })
}

/// Token counts.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt as the model saw it.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

/// The assistant's message in a chat completion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: String,
    /// The generated text (null when the answer is tool calls).
    pub content: Option<String>,
    /// Always null (no refusals are generated separately).
    pub refusal: Option<String>,
    /// The calls the answer makes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One choice of a chat completion.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatChoice {
    /// 0.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// Always null.
    pub logprobs: Option<Value>,
    /// `stop` (end of turn, a stop string, a complete structured answer), `tool_calls` or
    /// `length` (max tokens or the context's end).
    pub finish_reason: String,
}

/// `chat.completion`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    /// `chatcmpl-` and the receipt's request id.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds (the receipt's timestamp).
    pub created: u64,
    /// The model as the request named it.
    pub model: String,
    /// The execution profile's hash: the same fingerprint, the same engine and rules.
    pub system_fingerprint: String,
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// A streamed delta.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<String>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content: Option<String>,
    /// Calls completed since the last chunk.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One choice of a streamed chunk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    /// 0.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Always null.
    pub logprobs: Option<Value>,
    /// Null until the last choice chunk.
    pub finish_reason: Option<String>,
}

/// `chat.completion.chunk`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletionChunk {
    /// The same for every chunk of a stream.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as the request named it.
    pub model: String,
    /// As in [`ChatCompletion`].
    pub system_fingerprint: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// With `include_usage`: null, then the counts in the last chunk. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub usage: Option<Option<Usage>>,
}

/// One choice of a text completion (or of one of its chunks).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TextChoice {
    /// The generated text (for a chunk: what is new).
    pub text: String,
    /// 0.
    pub index: u32,
    /// Always null.
    pub logprobs: Option<Value>,
    /// Null until the end.
    pub finish_reason: Option<String>,
}

/// `text_completion` (the whole answer, or a chunk of a stream).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TextCompletion {
    /// `cmpl-` and the receipt's request id.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as the request named it.
    pub model: String,
    /// As in [`ChatCompletion`].
    pub system_fingerprint: String,
    /// One choice, or none in a stream's usage chunk.
    pub choices: Vec<TextChoice>,
    /// Token counts (a stream: as in [`ChatCompletionChunk::usage`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub usage: Option<Option<Usage>>,
}

/// One model of `GET /v1/models`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelCard {
    /// How to name it in a request: `name@version` (or the CID).
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds of its release (0 when unknown).
    pub created: u64,
    /// The repository's owner.
    pub owned_by: String,
    /// The exact file (its content ID).
    pub cid: String,
    /// What the hub read from the file: architecture, parameters, quantization, context,
    /// vocabulary, chat template.
    #[schema(value_type = Object)]
    pub gguf: Value,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The language models this node serves.
    pub data: Vec<ModelCard>,
}

/// An OpenAI-shaped error (`{"error": {…}}`), with Cairn's own `code` and `message` beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    /// Stable machine code (the same as `error.code`).
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
    /// The error as OpenAI's clients read it.
    pub error: OpenAiError,
}

/// The inner error object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OpenAiError {
    /// What went wrong and what to do.
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, `server_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// Stable machine code.
    pub code: String,
}

impl OpenAiErrorBody {
    /// An error from its parts.
    pub fn new(kind: &str, code: &str, param: Option<&str>, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            code: code.into(),
            message: message.clone(),
            error: OpenAiError {
                message,
                kind: kind.into(),
                param: param.map(str::to_owned),
                code: code.into(),
            },
        }
    }
}

/// A language model's price: token units per 1,000 prompt tokens and per 1,000 completion
/// tokens. A call is charged from its signed usage, rounded up to a whole unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenPrice {
    /// Units per 1,000 prompt tokens.
    pub prompt_per_1k: U256,
    /// Units per 1,000 completion tokens.
    pub completion_per_1k: U256,
}

/// Tokens a request body's bytes can render to beyond one per byte: the chat template's and
/// the tool instructions' own text.
pub const TEMPLATE_TOKENS: u64 = 1024;

/// The context a language-model call runs in at most (a protocol constant; the node's
/// `llm::MAX_CONTEXT`).
pub const MAX_CONTEXT_TOKENS: u64 = 4096;

impl TokenPrice {
    /// The most a call with a `body_bytes`-byte request asking for `max_tokens` can cost,
    /// known before its prompt is tokenized (so a call is priced without loading the model):
    /// a prompt of at most one token per body byte plus [`TEMPLATE_TOKENS`], an answer of at
    /// most `max_tokens`, each within [`MAX_CONTEXT_TOKENS`]. Payer and node compute the same.
    pub fn most(&self, body_bytes: usize, max_tokens: Option<u32>) -> U256 {
        let prompt = (body_bytes as u64)
            .saturating_add(TEMPLATE_TOKENS)
            .min(MAX_CONTEXT_TOKENS);
        let answer =
            max_tokens.map_or(MAX_CONTEXT_TOKENS, |m| u64::from(m).min(MAX_CONTEXT_TOKENS));
        self.charge(prompt, answer)
    }

    /// What `prompt` and `completion` tokens cost.
    pub fn charge(&self, prompt: u64, completion: u64) -> U256 {
        let units = self
            .prompt_per_1k
            .saturating_mul(U256::from(prompt))
            .saturating_add(
                self.completion_per_1k
                    .saturating_mul(U256::from(completion)),
            );
        units.div_ceil(U256::from(1_000u64))
    }

    /// Nothing to pay, whatever the usage.
    pub fn is_free(&self) -> bool {
        self.prompt_per_1k.is_zero() && self.completion_per_1k.is_zero()
    }
}

impl std::str::FromStr for TokenPrice {
    type Err = String;

    /// `PROMPT/COMPLETION`, each in token units per 1,000 tokens (`20/60`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, c) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not PROMPT/COMPLETION (token units per 1,000 tokens, e.g. 20/60)")
        })?;
        let units = |v: &str| {
            U256::from_str_radix(v.trim(), 10)
                .map_err(|e| format!("{v:?} is not a whole number of token units: {e}"))
        };
        Ok(Self {
            prompt_per_1k: units(p)?,
            completion_per_1k: units(c)?,
        })
    }
}

impl std::fmt::Display for TokenPrice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.prompt_per_1k, self.completion_per_1k)
    }
}

/// Server-sent events read piece by piece as the WHATWG rules frame them: lines end in CRLF,
/// LF or CR (a CRLF split between two pieces is one line end); a leading BOM is skipped; `data`
/// lines are joined by LF; a blank line ends an event; lines starting `:` are comments. Each
/// byte is looked at once. An event the stream ends before is no event. Bytes that are not
/// UTF-8, or an event over [`SseReader::MAX_EVENT`], stop the reader (see [`SseReader::broken`]).
#[derive(Debug, Default)]
pub struct SseReader {
    line: Vec<u8>,
    data: Option<String>,
    after_cr: bool,
    started: bool,
    broken: Option<String>,
}

/// What a server-sent event stream carries, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A comment line's text (after the `:`).
    Comment(String),
    /// A whole event's data.
    Event(String),
}

impl SseReader {
    /// The longest line or event read.
    pub const MAX_EVENT: usize = 1 << 20;

    /// Takes the next bytes of the stream; the comments and whole events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.broken.is_some() {
                break;
            }
            let after_cr = std::mem::take(&mut self.after_cr);
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(&mut out);
                }
                _ if self.line.len() >= Self::MAX_EVENT => {
                    self.broken = Some(format!("a line over {} bytes", Self::MAX_EVENT));
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    /// Why the reader stopped, if it did.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        let mut line = std::mem::take(&mut self.line);
        if !std::mem::replace(&mut self.started, true) && line.starts_with(b"\xEF\xBB\xBF") {
            line.drain(..3);
        }
        let Ok(line) = String::from_utf8(line) else {
            self.broken = Some("the stream is not UTF-8".into());
            return;
        };
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                out.push(SseItem::Event(d));
            }
            return;
        }
        if let Some(c) = line.strip_prefix(':') {
            out.push(SseItem::Comment(c.to_owned()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        if field != "data" {
            return;
        }
        let data = match &mut self.data {
            Some(d) => {
                d.push('\n');
                d
            }
            None => self.data.insert(String::new()),
        };
        data.push_str(value);
        if data.len() > Self::MAX_EVENT {
            self.broken = Some(format!("an event over {} bytes", Self::MAX_EVENT));
        }
    }
}

/// Reads a streamed chat answer (server-sent events of `chat.completion.chunk`) as it arrives:
/// the text of each event, in order, read as [`stream_text`] reads the whole (events it cannot
/// read, and anything after `[DONE]`, show nothing).
#[derive(Debug, Default)]
pub struct SseText {
    reader: SseReader,
    done: bool,
}

impl SseText {
    /// Takes the next bytes of the stream; the text of each event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for item in self.reader.feed(bytes) {
            let SseItem::Event(data) = item else { continue };
            if self.done {
                break;
            }
            match event_text(&data) {
                Ok(Event::Done) => self.done = true,
                Ok(Event::Text(Some(t))) => out.push(t),
                Ok(Event::Text(None)) | Err(_) => {}
            }
        }
        out
    }
}

/// What one event says.
enum Event {
    /// `[DONE]`: the stream is over.
    Done,
    /// A chunk, with the text of its choice 0 (if any).
    Text(Option<String>),
}

fn event_text(data: &str) -> Result<Event, String> {
    // As the official clients read it.
    if data.starts_with("[DONE]") {
        return Ok(Event::Done);
    }
    let v: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("an event is not JSON: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!(
            "the stream ended in an error: {}",
            e["message"].as_str().unwrap_or("?")
        ));
    }
    // Choice 0 by its index; a chunk whose choices carry no index, by position.
    let text = v["choices"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["index"].as_u64() == Some(0))
                .or_else(|| cs.first().filter(|c| c.get("index").is_none()))
        })
        .and_then(|c| c["delta"]["content"].as_str())
        .map(str::to_owned);
    Ok(Event::Text(text))
}

/// The whole text of a streamed chat answer, as a standard client reads it: the content of
/// choice 0 in each event, in order, up to `[DONE]`, which must end it. An error event, an
/// event that is not JSON, bytes that are not UTF-8, an event after `[DONE]` or none at all
/// (an answer that is not a stream, or one cut short) is an error.
pub fn stream_text(bytes: &[u8]) -> Result<String, String> {
    let mut reader = SseReader::default();
    let items = reader.feed(bytes);
    if let Some(why) = reader.broken() {
        return Err(why.to_owned());
    }
    let mut out = String::new();
    let mut done = false;
    for item in items {
        let SseItem::Event(data) = item else { continue };
        if done {
            return Err("an event after [DONE]".into());
        }
        match event_text(&data)? {
            Event::Done => done = true,
            Event::Text(Some(t)) => out.push_str(&t),
            Event::Text(None) => {}
        }
    }
    if !done {
        return Err("the stream did not end with [DONE]".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_price_charges_the_usage_rounded_up() {
        let p: TokenPrice = "100/400".parse().unwrap();
        // 20 body bytes: at most 1,044 prompt tokens; 24 answer tokens: 114 units.
        assert_eq!(p.most(20, Some(24)), U256::from(114u64));
        // Without max_tokens, and past the context, each part is the context.
        assert_eq!(p.most(1 << 20, None), U256::from(2_048u64));
        let p: TokenPrice = "20/60".parse().unwrap();
        assert_eq!(p.charge(0, 0), U256::ZERO);
        // 100 × 20 + 7 × 60 = 2,420 per 1,000: 2.42, charged 3.
        assert_eq!(p.charge(100, 7), U256::from(3u64));
        assert_eq!(p.charge(1_000, 1_000), U256::from(80u64));
        assert_eq!(p.to_string(), "20/60");
        assert!("0/0".parse::<TokenPrice>().unwrap().is_free());
        for bad in ["20", "20/x", "-1/2", ""] {
            assert!(bad.parse::<TokenPrice>().is_err(), "{bad}");
        }
        // A price too large to multiply saturates instead of wrapping to a small charge.
        let huge = TokenPrice {
            prompt_per_1k: U256::MAX,
            completion_per_1k: U256::ZERO,
        };
        assert_eq!(huge.charge(2, 0), U256::MAX.div_ceil(U256::from(1_000u64)));
    }

    #[test]
    fn a_streamed_answers_text_is_read_whole_or_piece_by_piece() {
        let chunk = |t: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": {"content": t}}]})
            )
        };
        let stream = format!(
            "data: {}\n\n{}{}data: [DONE]\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            chunk("Hel"),
            chunk("lo\n\nthere")
        );
        assert_eq!(stream_text(stream.as_bytes()).unwrap(), "Hello\n\nthere");
        // Split anywhere, the pieces add up to the same text.
        let mut live = SseText::default();
        let mut got = String::new();
        for b in stream.as_bytes().chunks(7) {
            got.extend(live.push(b));
        }
        assert_eq!(got, "Hello\n\nthere");
        // An error event, or an event that is not JSON, is an error.
        let bad = format!(
            "{}data: {{\"error\": {{\"message\": \"out\"}}}}\n\n",
            chunk("a")
        );
        assert!(stream_text(bad.as_bytes()).unwrap_err().contains("out"));
        assert!(stream_text(b"data: {oops\n\n").is_err());
        // Framed as SSE frames it: CRLF and CR line ends, comments, data split over lines,
        // choice 0 by its index, nothing after [DONE], no event without its blank line.
        let crlf = stream.replace('\n', "\r\n");
        assert_eq!(stream_text(crlf.as_bytes()).unwrap(), "Hello\n\nthere");
        let cr = stream.replace('\n', "\r");
        assert_eq!(stream_text(cr.as_bytes()).unwrap(), "Hello\n\nthere");
        let mut live = SseText::default();
        let got: String = crlf
            .as_bytes()
            .chunks(1)
            .flat_map(|b| live.push(b))
            .collect();
        assert_eq!(got, "Hello\n\nthere");
        let two = "\u{feff}: keep-alive\n\ndata: {\"choices\": [{\"index\": 1, \"delta\": {\"content\": \"no\"}},\ndata: {\"index\": 0, \"delta\": {\"content\": \"yes\"}}]}\n\ndata:[DONE]\n\n";
        assert_eq!(stream_text(two.as_bytes()).unwrap(), "yes");
        let unindexed =
            "data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(stream_text(unindexed.as_bytes()).unwrap(), "hi");
        let after = format!("{stream}{}", chunk("more"));
        assert!(
            stream_text(after.as_bytes())
                .unwrap_err()
                .contains("after [DONE]")
        );
        // A stream cut short, or an answer that is no stream, is not read as whole.
        let cut = format!("{}data: {{\"choices\": []}}", chunk("a"));
        assert!(stream_text(cut.as_bytes()).unwrap_err().contains("[DONE]"));
        assert!(stream_text(br#"{"choices": []}"#).is_err());
        // The event a trailing CR closes is read alike whole and live.
        let late = format!("{}\n\r", stream.trim_end());
        assert_eq!(stream_text(late.as_bytes()).unwrap(), "Hello\n\nthere");
        let mut live = SseText::default();
        let got: String = late
            .as_bytes()
            .iter()
            .flat_map(|b| live.push(&[*b]))
            .collect();
        assert_eq!(got, "Hello\n\nthere");
        // Bytes that are not UTF-8 stop the reader for good (a character split between
        // pieces does not), and so does an endless line.
        let mut r = SseReader::default();
        let euro = "data: \u{20ac}\n\n".as_bytes();
        let mut items = r.feed(&euro[..7]);
        items.extend(r.feed(&euro[7..]));
        assert_eq!(items, vec![SseItem::Event("\u{20ac}".into())]);
        assert!(r.feed(b"data: \xff\n\ndata: x\n\n").is_empty());
        assert!(r.broken().unwrap().contains("UTF-8"));
        assert!(stream_text(b"data: \xff\n\ndata: [DONE]\n\n").is_err());
        let mut r = SseReader::default();
        let long = vec![b'a'; SseReader::MAX_EVENT + 1];
        assert!(r.feed(&long).is_empty() && r.broken().is_some());
        assert_eq!(
            SseReader::default().feed(b": cairn step 1\r\nevent: x\r\ndata\r\ndata: b\r\n\r\n"),
            vec![
                SseItem::Comment(" cairn step 1".into()),
                SseItem::Event("\nb".into())
            ]
        );
    }
}
