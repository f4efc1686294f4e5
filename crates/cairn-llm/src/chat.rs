//! Chat templates: a conversation rendered by the model's own Jinja template into token ids,
//! with message contents tokenized as plain text, so a message that spells `<|im_end|>` cannot
//! forge the conversation's structure.

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value, context};

use crate::{LlmError, Tokenizer};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// Its text.
    pub content: String,
}

/// Instructions a template may execute for one rendering (minijinja's fuel): ample for any
/// real template and conversation, and a bound on a hostile one.
const FUEL: u64 = 5_000_000;

/// A model's chat template, compiled.
pub struct ChatTemplate {
    env: Environment<'static>,
}

/// Marks a message's content in the rendered text: private-use characters that the template's
/// own text cannot contain by accident, numbered by message.
fn marker(i: usize) -> String {
    format!("\u{F8F0}{i}\u{F8F1}")
}

impl ChatTemplate {
    /// Compiles `source`, the model's `tokenizer.chat_template`.
    pub fn new(source: &str) -> Result<Self, LlmError> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| LlmError::Template(e.to_string()))?;
        Ok(Self { env })
    }

    /// The token ids of `messages` as the model expects them, with the assistant's turn opened
    /// when `add_generation_prompt`. The template's own text may name control tokens; the
    /// messages' contents never become control tokens.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tokenizer: &Tokenizer,
    ) -> Result<Vec<u32>, LlmError> {
        let stand_ins: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage {
                role: m.role.clone(),
                content: marker(i),
            })
            .collect();
        let text = self
            .env
            .get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => stand_ins,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => "",
                    eos_token => "",
                })
            })
            .map_err(|e| LlmError::Template(e.to_string()))?;
        // Split the rendering at the markers: template text may hold control tokens, contents not.
        let mut ids = Vec::new();
        let mut rest = text.as_str();
        let mut used = vec![false; messages.len()];
        while let Some(start) = rest.find('\u{F8F0}') {
            let after = &rest[start + '\u{F8F0}'.len_utf8()..];
            let end = after
                .find('\u{F8F1}')
                .ok_or_else(|| LlmError::Template("the template cut a message's content".into()))?;
            let i: usize = after[..end].parse().map_err(|_| {
                LlmError::Template("the template altered a message's content".into())
            })?;
            let message = messages.get(i).ok_or_else(|| {
                LlmError::Template("the template altered a message's content".into())
            })?;
            ids.extend(tokenizer.encode_with_control(&rest[..start]));
            ids.extend(tokenizer.encode(&message.content));
            used[i] = true;
            rest = &after[end + '\u{F8F1}'.len_utf8()..];
        }
        ids.extend(tokenizer.encode_with_control(rest));
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(LlmError::Template(format!(
                "the template left out message {i} ({}); the model cannot be prompted with it",
                messages[i].role
            )));
        }
        Ok(ids)
    }
}
