//! The byte-level BPE tokenizer a GGUF file carries (`tokenizer.ggml.model = "gpt2"`), splitting
//! and merging exactly as llama.cpp does, so the same text gives the same token ids.
//!
//! llama.cpp pre-tokenizes with a per-model list of regular expressions applied in turn, then
//! merges each piece's bytes by rank (lowest first, leftmost on ties). The expressions of the
//! GPT-2 family are implemented here by hand as llama.cpp's own `unicode_regex_split_custom_gpt2`
//! does (it too avoids a regex engine for them); other pre-tokenizers are refused by name.

use std::collections::HashMap;

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::LlmError;

/// How text is cut into pieces before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizer {
    /// GPT-2's expression.
    Gpt2,
    /// Every number character alone (`\p{N}`), then GPT-2's expression (StarCoder, SmolLM, …).
    DigitsThenGpt2,
}

impl PreTokenizer {
    /// llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) that use these expressions.
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt2" | "mpt" | "olmo" | "jais" | "trillion" => Self::Gpt2,
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva" => Self::DigitsThenGpt2,
            _ => return None,
        })
    }
}

/// A byte with no token of its own: it merges with nothing and, as in llama.cpp, yields no token.
const NO_TOKEN: u32 = u32::MAX;

/// GGUF's token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;

/// A byte-level BPE tokenizer read from a GGUF file.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Token text, byte-level encoded, by id.
    tokens: Vec<String>,
    /// `(left, right) → (rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The id of each byte's one-character token ([`NO_TOKEN`] when the vocabulary lacks it, as
    /// vocabularies do for bytes that never occur in UTF-8).
    byte_ids: [u32; 256],
    /// Control tokens (`<|im_start|>`…), by id.
    control: Vec<bool>,
    /// Control tokens by text, longest first (for [`Tokenizer::encode_with_control`]).
    control_texts: Vec<(String, u32)>,
    /// The byte each byte-level character stands for.
    byte_of: HashMap<char, u8>,
    pre: PreTokenizer,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
}

/// GPT-2's byte ↔ character table: printable bytes stand for themselves, the rest are moved
/// to U+0100 onwards so every byte is a visible character.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let keep = matches!(b, 33..=126 | 161..=172 | 174..=255);
        table[b as usize] = if keep {
            b as char
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    table
}

impl Tokenizer {
    /// The tokenizer of a GGUF model.
    pub fn from_gguf(model: &cairn_gguf::GgufModel) -> Result<Self, LlmError> {
        let get = |key: &str| model.values.get(key);
        let kind = get("tokenizer.ggml.model").and_then(|v| v.as_str());
        if kind != Some("gpt2") {
            return Err(LlmError::Unsupported(format!(
                "tokenizer `{}`: only byte-level BPE (`gpt2`) tokenizers are supported",
                kind.unwrap_or("none")
            )));
        }
        let pre_name = get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("gpt2");
        let pre = PreTokenizer::from_name(pre_name).ok_or_else(|| {
            LlmError::Unsupported(format!(
                "pre-tokenizer `{pre_name}` (supported: gpt2, mpt, olmo, jais, trillion, starcoder, refact, command-r, smollm, codeshell, exaone, minerva)"
            ))
        })?;
        let strings = |key: &str| -> Result<Vec<String>, LlmError> {
            match get(key) {
                Some(cairn_gguf::MetaValue::Array { items, .. }) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| LlmError::Model(format!("`{key}` holds a non-string")))
                    })
                    .collect(),
                None => Ok(Vec::new()),
                Some(_) => Err(LlmError::Model(format!("`{key}` is not an array"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // The first of two equal texts wins, as in llama.cpp's `token_to_id`.
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let table = byte_chars();
        let mut byte_ids = [NO_TOKEN; 256];
        for (b, c) in table.iter().enumerate() {
            if let Some(id) = ids.get(&c.to_string()) {
                byte_ids[b] = *id;
            }
        }
        if byte_ids[b' ' as usize] == NO_TOKEN || byte_ids[b'a' as usize] == NO_TOKEN {
            return Err(LlmError::Model(
                "the vocabulary has no byte-level tokens for ASCII text; it is not a byte-level BPE vocabulary".into(),
            ));
        }
        let mut merges = HashMap::new();
        for (rank, m) in strings("tokenizer.ggml.merges")?.iter().enumerate() {
            let Some((l, r)) = m.split_once(' ') else {
                return Err(LlmError::Model(format!(
                    "merge {rank} (`{m}`) is not two tokens"
                )));
            };
            // A merge whose parts or result are not tokens can never apply to token ids.
            if let (Some(&l), Some(&r), Some(&joined)) =
                (ids.get(l), ids.get(r), ids.get(&format!("{l}{r}")))
            {
                merges.entry((l, r)).or_insert((rank as u32, joined));
            }
        }
        let types: Vec<i64> = match get("tokenizer.ggml.token_type") {
            Some(cairn_gguf::MetaValue::Array { items, .. }) => items
                .iter()
                .map(|v| match v {
                    cairn_gguf::MetaValue::Int(i) => *i,
                    cairn_gguf::MetaValue::Uint(u) => *u as i64,
                    _ => 1,
                })
                .collect(),
            _ => vec![1; n],
        };
        let control: Vec<bool> = types.iter().map(|t| *t == TOKEN_CONTROL).collect();
        let mut control_texts: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| control[*i] && !t.is_empty())
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        control_texts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let id = |key: &str| {
            get(key)
                .and_then(|v| v.as_u64())
                .filter(|&i| (i as usize) < n)
                .map(|i| i as u32)
        };
        Ok(Self {
            eos: id("tokenizer.ggml.eos_token_id"),
            bos: id("tokenizer.ggml.bos_token_id"),
            tokens,
            merges,
            byte_ids,
            control,
            control_texts,
            byte_of: table
                .iter()
                .enumerate()
                .map(|(b, c)| (*c, b as u8))
                .collect(),
            pre,
        })
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Whether `id` is a control token (`<|im_end|>`…), which text never produces.
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a control token by its text.
    pub fn control_id(&self, text: &str) -> Option<u32> {
        self.control_texts
            .iter()
            .find(|(t, _)| t == text)
            .map(|(_, id)| *id)
    }

    /// Token ids of `text` read as plain text: a control token's spelling inside it is text,
    /// never the control token (what user-supplied content must be).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut pieces = Vec::new();
        match self.pre {
            PreTokenizer::Gpt2 => gpt2_split(&chars, 0, chars.len(), &mut pieces),
            PreTokenizer::DigitsThenGpt2 => {
                let mut start = 0;
                for (i, c) in chars.iter().enumerate() {
                    if is_number(*c) {
                        gpt2_split(&chars, start, i, &mut pieces);
                        pieces.push((i, i + 1));
                        start = i + 1;
                    }
                }
                gpt2_split(&chars, start, chars.len(), &mut pieces);
            }
        }
        let mut buf = [0u8; 4];
        for (a, b) in pieces {
            let mut symbols: Vec<u32> = Vec::new();
            for c in &chars[a..b] {
                for byte in c.encode_utf8(&mut buf).bytes() {
                    symbols.push(self.byte_ids[byte as usize]);
                }
            }
            self.merge(&mut symbols);
            out.extend(symbols.into_iter().filter(|s| *s != NO_TOKEN));
        }
        out
    }

    /// Token ids of `text` where the exact spellings of control tokens become those tokens
    /// (for a chat template's own text, never for content).
    pub fn encode_with_control(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (i, _) in rest.char_indices() {
                for (t, id) in &self.control_texts {
                    if rest[i..].starts_with(t.as_str()) {
                        out.extend(self.encode(&rest[..i]));
                        out.push(*id);
                        rest = &rest[i + t.len()..];
                        continue 'outer;
                    }
                }
            }
            out.extend(self.encode(rest));
            break;
        }
        out
    }

    /// Merges adjacent symbols by rank, lowest first and leftmost on ties, until none applies:
    /// llama.cpp's order, kept in a heap over a linked list so a long piece costs n log n.
    fn merge(&self, symbols: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let n = symbols.len();
        if n < 2 {
            return;
        }
        const NONE: usize = usize::MAX;
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut alive = vec![true; n];
        // (rank, left position, left id, right id): a popped pair is acted on only if both
        // symbols are still what they were when it was pushed.
        let mut heap = BinaryHeap::new();
        let pair = |heap: &mut BinaryHeap<_>, symbols: &[u32], i: usize, j: usize| {
            if let Some(&(rank, _)) = self.merges.get(&(symbols[i], symbols[j])) {
                heap.push(Reverse((rank, i, symbols[i], symbols[j])));
            }
        };
        for i in 0..n - 1 {
            pair(&mut heap, symbols, i, i + 1);
        }
        while let Some(Reverse((_, i, l, r))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j == NONE || symbols[i] != l || symbols[j] != r {
                continue;
            }
            symbols[i] = self.merges[&(l, r)].1;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE {
                pair(&mut heap, symbols, prev[i], i);
            }
            if next[i] != NONE {
                pair(&mut heap, symbols, i, next[i]);
            }
        }
        let mut k = 0;
        for i in 0..n {
            if alive[i] {
                symbols[k] = symbols[i];
                k += 1;
            }
        }
        symbols.truncate(k);
    }

    /// The vocabulary's spelling of token `id` (a control token's name, `<|im_end|>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes token `id` stands for; control tokens stand for none.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        if self.is_control(id) {
            return Vec::new();
        }
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(text.len());
        let mut buf = [0u8; 4];
        for c in text.chars() {
            match self.byte_of.get(&c) {
                Some(b) => out.push(*b),
                // Not a byte-level character: the token is plain text.
                None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
            }
        }
        out
    }

    /// The text of `ids` (invalid UTF-8 from a cut multi-byte character shown as U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| self.token_bytes(*id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn is_letter(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Letter
}

fn is_number(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Number
}

/// Splits `chars[start..end]` by GPT-2's expression
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`, a character no
/// alternative matches standing alone: the pieces as `(from, to)` indices.
fn gpt2_split(chars: &[char], start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    #[derive(Clone, Copy)]
    struct Flags {
        letter: bool,
        number: bool,
        space: bool,
        inside: bool,
    }
    let flags = |i: usize| -> Flags {
        if i < start || i >= end {
            return Flags {
                letter: false,
                number: false,
                space: false,
                inside: false,
            };
        }
        let c = chars[i];
        Flags {
            letter: is_letter(c),
            number: is_number(c),
            space: c.is_whitespace(),
            inside: true,
        }
    };
    let mut prev = start;
    let mut emit = |to: usize, out: &mut Vec<(usize, usize)>| {
        if to > prev {
            out.push((prev, to));
        }
        prev = to;
    };
    let mut pos = start;
    while pos < end {
        let c = chars[pos];
        if c == '\'' && pos + 1 < end {
            let n = chars[pos + 1];
            if matches!(n, 's' | 't' | 'm' | 'd') {
                pos += 2;
                emit(pos, out);
                continue;
            }
            if pos + 2 < end {
                let nn = chars[pos + 2];
                if matches!((n, nn), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    emit(pos, out);
                    continue;
                }
            }
        }
        let lead = usize::from(c == ' ');
        let f = flags(pos + lead);
        if f.letter {
            pos += lead;
            while flags(pos).letter {
                pos += 1;
            }
            emit(pos, out);
            continue;
        }
        if f.number {
            pos += lead;
            while flags(pos).number {
                pos += 1;
            }
            emit(pos, out);
            continue;
        }
        let other = |f: Flags| f.inside && !(f.space || f.letter || f.number);
        if other(f) {
            pos += lead;
            while other(flags(pos)) {
                pos += 1;
            }
            emit(pos, out);
            continue;
        }
        let mut spaces = 0;
        while flags(pos + spaces).space {
            spaces += 1;
        }
        if spaces > 1 && pos + spaces < end {
            pos += spaces - 1;
            emit(pos, out);
            continue;
        }
        if spaces > 0 {
            pos += spaces;
            emit(pos, out);
            continue;
        }
        pos += 1;
        emit(pos, out);
    }
}
