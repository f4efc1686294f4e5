//! Upstream providers: model names a node relays to another OpenAI-compatible server
//! (llama.cpp's server, vLLM, Ollama, a hosted API, another Cairn node). The request body goes
//! upstream byte for byte and the answer comes back byte for byte; the node signs an LLM
//! receipt whose profile says `relayed` (nothing the node computed, nothing a verifier can
//! re-execute) and which binds exactly those bytes. Relayed receipts are kept and served, never
//! batched: no verifier quorum can check them.

use cairn_core::{BlobId, ExecutionProfile};
use cairn_node_api::openai::Usage;

use crate::llm::Endpoint;

/// Relayed calls in flight at once (each holds two connections and up to
/// [`MAX_ANSWER_BYTES`] of answer).
pub const MAX_RELAYS: usize = 16;

/// Longest a relayed call may take, streamed or not.
pub const RELAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Largest whole answer taken from an upstream.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// An OpenAI-compatible server some model names are relayed to.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The model name clients call, sent upstream unchanged.
    pub name: String,
    /// Its API base, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// A bearer key sent upstream (read from the environment at start).
    pub key: Option<String>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("key", &self.key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Upstream {
    /// Reads `NAME=URL[,key-env=VAR]`; `env` gives VAR's value.
    pub fn parse(spec: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let usage = "an upstream is NAME=URL[,key-env=VAR], e.g. llama=http://127.0.0.1:8080/v1";
        let (name, rest) = spec.split_once('=').ok_or(usage)?;
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(format!("`{name}` is not a model name; {usage}"));
        }
        let mut parts = rest.split(',');
        let base_url = parts.next().unwrap_or_default().trim_end_matches('/');
        let url = reqwest::Url::parse(base_url)
            .map_err(|e| format!("`{base_url}` is not an http(s) URL ({e}); {usage}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("`{base_url}` is not an http(s) URL; {usage}"));
        }
        let mut key = None;
        for option in parts {
            match option.split_once('=') {
                Some(("key-env", var)) => {
                    key = Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                        format!("upstream `{name}`: the environment variable {var} is not set")
                    })?);
                }
                _ => return Err(format!("`{option}` is not an upstream option; {usage}")),
            }
        }
        Ok(Self {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            key,
        })
    }

    /// The profile relayed receipts name: engine `relayed`, the API they were relayed over.
    pub fn profile() -> ExecutionProfile {
        ExecutionProfile {
            engine: cairn_core::RELAYED_ENGINE.into(),
            engine_version: "openai-v1".into(),
            isa: "none".into(),
            threads: 0,
        }
    }

    /// What a relayed receipt names as its model: the content ID of `cairn.upstream.v1\nNAME`
    /// (there is no model file to address; the upstream's address stays private).
    pub fn model_id(&self) -> BlobId {
        BlobId::of(format!("cairn.upstream.v1\n{}", self.name).as_bytes())
    }

    /// Where a call through `endpoint` goes.
    pub fn url(&self, endpoint: Endpoint) -> String {
        let path = match endpoint {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completion => "completions",
        };
        format!("{}/{path}", self.base_url)
    }
}

/// The `model` and `stream` a request body names, read without judging the rest (that is the
/// upstream's to do).
pub fn route_of(body: &[u8]) -> Option<(String, bool)> {
    #[derive(serde::Deserialize)]
    struct Route {
        model: String,
        #[serde(default)]
        stream: Option<bool>,
    }
    let r: Route = serde_json::from_slice(body).ok()?;
    Some((r.model, r.stream.unwrap_or(false)))
}

/// The token counts an upstream reported: a whole answer's `usage`, or the last `usage` a
/// stream's events carried.
pub fn usage_of(answer: &[u8], stream: bool) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        #[serde(default)]
        usage: Option<Usage>,
    }
    if !stream {
        return serde_json::from_slice::<WithUsage>(answer).ok()?.usage;
    }
    std::str::from_utf8(answer)
        .ok()?
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str::<WithUsage>(d.trim()).ok()?.usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_read_with_their_key_from_the_environment() {
        let env = |v: &str| (v == "KEY").then(|| "sk-1".to_string());
        let u = Upstream::parse("gpt=https://api.example.com/v1/,key-env=KEY", env).unwrap();
        assert_eq!(u.base_url, "https://api.example.com/v1");
        assert_eq!(u.key.as_deref(), Some("sk-1"));
        assert_eq!(
            u.url(Endpoint::Chat),
            "https://api.example.com/v1/chat/completions"
        );
        assert!(
            !format!("{u:?}").contains("sk-1"),
            "the key stays out of logs"
        );
        for (bad, says) in [
            ("gpt", "NAME=URL"),
            ("=http://x/v1", "not a model name"),
            ("gpt=ftp://x/v1", "not an http(s) URL"),
            ("gpt=not a url", "not an http(s) URL"),
            ("gpt=http://x/v1,key-env=NOPE", "NOPE is not set"),
            ("gpt=http://x/v1,retries=3", "not an upstream option"),
        ] {
            let e = Upstream::parse(bad, env).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn usage_is_read_from_a_whole_answer_or_a_streams_last_usage() {
        let whole =
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        assert_eq!(usage_of(whole, false).unwrap().completion_tokens, 2);
        let stream = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":7,\"total_tokens\":10}}\n\ndata: [DONE]\n\n";
        assert_eq!(usage_of(stream, true).unwrap().completion_tokens, 7);
        assert_eq!(usage_of(b"data: [DONE]\n\n", true), None);
    }
}
