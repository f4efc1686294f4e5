//! The task object (schema `cairn.task/1`): what a messy input asks for, separated into the goal,
//! constraints, computable sub-tasks with their inputs, what is missing, what no model here can
//! compute, and the noise with a reason for each span.
//!
//! The input is cut into segments (sentences, fenced code blocks, number tables). Rules read
//! what rules read better than a language model: numbers, units, expressions, tables, code
//! blocks, and instructions aimed at the entry itself. The language model labels the segments
//! under constrained decoding against [`DRAFT_SCHEMA`] (goal, constraints, skills, noise,
//! missing, by segment number); [`merge`] combines both so that a sub-task's inputs always come
//! from the text by rule, never from the model's imagination.

use serde::{Deserialize, Serialize};

use crate::exact::{self, ExactInputs};

/// The task object's schema id.
pub const SCHEMA: &str = "cairn.task/1";
/// The JSON Schema of [`TaskObject`], as published (`GET /v1/schema/task`).
pub const TASK_SCHEMA: &str = include_str!("../schema/task-v1.json");
/// The most input bytes a turn reads.
pub const MAX_INPUT_BYTES: usize = 128 * 1024;
/// The most segments a turn reads (a longer paste is refused before any work).
pub const MAX_SEGMENTS: usize = 600;
/// The most sub-tasks one turn runs.
pub const MAX_SUBTASKS: usize = 16;
/// The most computations read from one segment (the rest of a long one is not scanned).
const MAX_PER_SEGMENT: usize = 8;
/// The longest code block sent to the file-type classifier (its features read 1 KiB at each
/// end; the rest is kept only as the step's input).
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// What the input was refused for, before any work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Nothing but whitespace.
    #[error("the message is empty: write what you want computed or answered")]
    Empty,
    /// Over [`MAX_INPUT_BYTES`].
    #[error(
        "the message is {0} bytes; the entry reads at most {MAX_INPUT_BYTES}: paste the part that matters (the question, the figures, the file)"
    )]
    TooLong(usize),
    /// Over [`MAX_SEGMENTS`].
    #[error(
        "the message has {0} sentences or blocks; the entry reads at most {MAX_SEGMENTS}: paste the part that matters"
    )]
    TooManySegments(usize),
}

/// What a segment of the input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// A sentence or a line of prose.
    Text,
    /// A fenced code block (its contents, without the fences).
    Code,
    /// Consecutive lines of numbers.
    Table,
}

/// A piece of the input, numbered from 1 in reading order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Its number.
    pub n: u32,
    /// What it is.
    pub kind: SegmentKind,
    /// Its text, verbatim (trimmed).
    pub text: String,
}

/// The skills a sub-task can need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skill {
    /// Exact arithmetic (computed by the entry, recorded).
    Arithmetic,
    /// Exact unit conversion (computed by the entry, recorded).
    UnitConversion,
    /// An 8×8 handwritten digit image (64 values 0–16) to its digit: a hub model.
    DigitRecognition,
    /// A file's bytes to its type: a hub model (magika).
    FileType,
    /// How close in meaning texts are to the first one: a hub model (a sentence embedder).
    TextSimilarity,
}

impl Skill {
    /// Every skill, in a fixed order.
    pub const ALL: [Skill; 5] = [
        Skill::Arithmetic,
        Skill::UnitConversion,
        Skill::DigitRecognition,
        Skill::FileType,
        Skill::TextSimilarity,
    ];

    /// Its name in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Arithmetic => "arithmetic",
            Self::UnitConversion => "unit-conversion",
            Self::DigitRecognition => "digit-recognition",
            Self::FileType => "file-type",
            Self::TextSimilarity => "text-similarity",
        }
    }

    /// Whether the entry computes it itself (exactly) rather than a model on a node.
    pub fn is_exact(self) -> bool {
        matches!(self, Self::Arithmetic | Self::UnitConversion)
    }
}

/// A sub-task's inputs, extracted by rule from its segment. (serde cannot deny unknown fields
/// around a flattened enum; the exact inputs deny their own.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SubtaskInputs {
    /// An exact step.
    Exact {
        /// What to compute.
        #[serde(flatten)]
        inputs: ExactInputs,
    },
    /// 64 pixel values (0–16), row by row.
    Pixels {
        /// The values.
        pixels: Vec<u8>,
    },
    /// A file's content.
    File {
        /// The content, as pasted (UTF-8).
        content: String,
    },
    /// Quoted texts: the first is compared with each of the others.
    Texts {
        /// The texts, in the order quoted.
        texts: Vec<String>,
    },
}

/// A computable sub-task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subtask {
    /// `s1`, `s2`, … in reading order.
    pub id: String,
    /// What it needs.
    pub skill: Skill,
    /// The segment it comes from.
    pub segment: u32,
    /// Its inputs.
    pub inputs: SubtaskInputs,
}

/// Something asked for that no skill here computes: said so, never invented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uncomputable {
    /// The segment that asks for it.
    pub segment: u32,
    /// What it would need (`text-similarity`, `translation`, …).
    pub need: String,
    /// Why it is not computed.
    pub reason: String,
}

/// Why a span is noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseReason {
    /// Greetings, thanks, filler.
    SmallTalk,
    /// A personal or incidental detail the goal does not depend on.
    Irrelevant,
    /// Instructions aimed at the entry or its model, not part of the task: never followed.
    InstructionToEntry,
}

/// A span judged noise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    /// The segment.
    pub segment: u32,
    /// Why.
    pub reason: NoiseReason,
}

/// Who parsed the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParsedBy {
    /// The rules' version.
    pub rules: String,
    /// The language model that labelled the segments, when one did (`name@version` or CID).
    pub llm: Option<String>,
    /// Its call's receipt id.
    pub llm_receipt: Option<String>,
    /// Why no model labelled them, when none did.
    pub llm_skipped: Option<String>,
}

/// The rules' version, recorded in every task object.
pub const RULES: &str = "cairn.rules/1";

/// The task object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskObject {
    /// [`SCHEMA`].
    pub schema: String,
    /// The input, cut into numbered segments.
    pub segments: Vec<Segment>,
    /// What the user wants, in their words.
    pub goal: String,
    /// The segments the goal comes from.
    pub goal_segments: Vec<u32>,
    /// Segments that constrain the answer.
    pub constraints: Vec<u32>,
    /// Computable sub-tasks.
    pub subtasks: Vec<Subtask>,
    /// What the user must say before a part can be computed.
    pub missing: Vec<String>,
    /// What was asked that nothing here computes.
    pub uncomputable: Vec<Uncomputable>,
    /// Noise.
    pub noise: Vec<Noise>,
    /// Who parsed it.
    pub parsed_by: ParsedBy,
}

impl TaskObject {
    /// The text of segment `n`.
    pub fn segment(&self, n: u32) -> &str {
        self.segments
            .iter()
            .find(|s| s.n == n)
            .map(|s| s.text.as_str())
            .unwrap_or("")
    }

    /// The task object's SHA-256 over its JSON bytes (field order fixed by the types).
    pub fn sha256(&self) -> alloy_primitives::B256 {
        crate::sha256(&serde_json::to_vec(self).expect("serializes"))
    }
}

// ---------------------------------------------------------------------------------------------
// Segmentation

/// Cuts `input` into segments: fenced code blocks whole, runs of number-only lines as one
/// table, and the rest sentence by sentence.
pub fn segment(input: &str) -> Result<Vec<Segment>, InputError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(InputError::TooLong(input.len()));
    }
    if input.trim().is_empty() {
        return Err(InputError::Empty);
    }
    let text = input.replace("\r\n", "\n");
    let mut out: Vec<(SegmentKind, String)> = Vec::new();
    let mut lines = text.lines().peekable();
    let mut table: Vec<&str> = Vec::new();
    let flush_table = |table: &mut Vec<&str>, out: &mut Vec<(SegmentKind, String)>| {
        if !table.is_empty() {
            out.push((SegmentKind::Table, table.join("\n")));
            table.clear();
        }
    };
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(_lang) = trimmed.strip_prefix("```") {
            flush_table(&mut table, &mut out);
            let mut code = Vec::new();
            for l in lines.by_ref() {
                if l.trim_start().starts_with("```") {
                    break;
                }
                code.push(l);
            }
            let body = code.join("\n");
            if !body.trim().is_empty() {
                out.push((SegmentKind::Code, body));
            }
            continue;
        }
        if is_number_row(trimmed) {
            table.push(trimmed);
            continue;
        }
        flush_table(&mut table, &mut out);
        for s in sentences(trimmed) {
            out.push((SegmentKind::Text, s));
        }
        if out.len() > MAX_SEGMENTS {
            return Err(InputError::TooManySegments(out.len()));
        }
    }
    flush_table(&mut table, &mut out);
    if out.len() > MAX_SEGMENTS {
        return Err(InputError::TooManySegments(out.len()));
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, (kind, text))| Segment {
            n: i as u32 + 1,
            kind,
            text,
        })
        .collect())
}

/// A line of at least two numbers and nothing but separators between them.
fn is_number_row(line: &str) -> bool {
    let mut numbers = 0;
    for tok in line.split(|c: char| c.is_whitespace() || c == ',' || c == '|' || c == ';') {
        if tok.is_empty() {
            continue;
        }
        if tok.parse::<f64>().is_err() {
            return false;
        }
        numbers += 1;
    }
    numbers >= 2
}

/// Splits a line into sentences at `.`, `!`, `?` followed by a space (a decimal point has a
/// digit after it, so numbers stay whole).
fn sentences(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = line.as_bytes();
    for (i, c) in line.char_indices() {
        if matches!(c, '.' | '!' | '?' | '。' | '！' | '？') {
            let next = i + c.len_utf8();
            if next >= bytes.len() || bytes[next] == b' ' {
                let s = line[start..next].trim();
                if !s.is_empty() {
                    out.push(s.to_owned());
                }
                start = next;
            }
        }
    }
    let rest = line[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rules

fn lower_words(text: &str) -> String {
    format!(" {} ", text.to_lowercase())
}

/// Whether any needle occurs in `haystack` as whole words: a needle that starts (ends) with a
/// letter or digit must not have one just before (after) it, so `act as` is not found in
/// `impact assessment`, nor `draw ` in `withdraw `.
fn has_any(haystack: &str, needles: &[&str]) -> bool {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    needles.iter().any(|n| {
        let starts = n.chars().next().is_some_and(char::is_alphanumeric);
        let ends = n.chars().next_back().is_some_and(char::is_alphanumeric);
        haystack.match_indices(n).any(|(i, _)| {
            (!starts || !word(haystack[..i].chars().next_back()))
                && (!ends || !word(haystack[i + n.len()..].chars().next()))
        })
    })
}

const INJECTION: &[&str] = &[
    "ignore previous",
    "ignore all",
    "ignore the above",
    "ignore the previous",
    "ignore your",
    "ignore earlier",
    "disregard",
    "you are now",
    "system prompt",
    "new schema",
    "change the schema",
    "output only",
    "respond only with",
    "call the tool",
    "call tool",
    "run the command",
    "execute the",
    "rm -rf",
    "<|im_start|>",
    "<|im_end|>",
    "jailbreak",
    "developer mode",
    "pretend you",
    "act as",
    "reveal your",
    "send all",
    "transfer all",
    "ignorez",
    "ignoriere",
];

const CHATTER: &[&str] = &[
    " hi ",
    " hi,",
    " hello",
    " hey ",
    " hey,",
    "thanks",
    "thank you",
    " lol",
    "haha",
    ":)",
    ";)",
    " btw",
    "by the way",
    "anyway",
    " my cat",
    " my dog",
    "lunch",
    "coffee",
    "weather",
    "weekend",
    "vacation",
    "holiday",
    "birthday",
    "traffic",
    " movie",
    "football",
    " game last",
    "sorry for",
    "hope you",
    "good morning",
    "cheers",
    " bonjour",
    " merci",
    " hola",
    " gracias",
    " danke",
    " hallo",
    "how are you",
    "long day",
    "just saying",
    "fun fact",
    "unrelated",
    "off topic",
    "off-topic",
    "my mom",
    "my kids",
    "dinner",
    "pizza",
    "tea ",
];

const CONSTRAINT: &[&str] = &[
    " must ",
    " should ",
    " need to ",
    " needs to ",
    " has to ",
    " have to ",
    " at most ",
    " at least ",
    " no more than ",
    " less than ",
    " under ",
    " within ",
    " budget",
    " deadline",
    " only ",
    " don't ",
    " do not ",
    " without ",
    " limit",
    " maximum",
    " minimum",
    " round to",
    " decimal places",
    " precision",
    " keep it ",
    " keep the ",
    " no later than",
];

const GOAL_START: &[&str] = &[
    "what",
    "how",
    "which",
    "who",
    "when",
    "where",
    "why",
    "can you",
    "could you",
    "please",
    "compute",
    "calculate",
    "convert",
    "identify",
    "classify",
    "tell me",
    "find",
    "figure out",
    "estimate",
    "determine",
    "check",
    "give me",
    "help",
    "i need",
    "i want",
    "i'd like",
    "recognize",
    "recognise",
    "detect",
    "combien",
    "quel",
    "quelle",
    "calcule",
    "convertis",
    "wie",
    "was ",
    "welche",
    "berechne",
    "rechne",
    "cuánto",
    "cuanto",
    "cuál",
    "qué",
    "calcula",
    "convierte",
];

/// Asks how close texts are in meaning.
const SIMILARITY_ASK: &[&str] = &[
    "how similar",
    "similarity",
    "paraphrase",
    "same meaning",
    "most similar",
    "closest in meaning",
    "similar in meaning",
    "semantically",
];
/// The most texts one similarity sub-task compares.
pub const MAX_TEXTS: usize = 8;
/// The longest quoted text taken, in bytes (the embedder reads 128 tokens of it).
pub const MAX_TEXT_BYTES: usize = 2048;

/// The texts a segment quotes: in double quotes, curly quotes or guillemets, or in single
/// quotes that stand apart from words (so apostrophes, straight or curly, are not taken for
/// quotes). A text is cut at [`MAX_TEXT_BYTES`].
fn quoted(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let apart = |i: Option<usize>| {
        i.and_then(|i| chars.get(i))
            .is_none_or(|c| !c.is_alphanumeric())
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let close = match chars[i] {
            '"' => '"',
            '“' => '”',
            '‘' => '’',
            '«' => '»',
            '\'' if apart(i.checked_sub(1)) => '\'',
            _ => {
                i += 1;
                continue;
            }
        };
        let end = (i + 1..chars.len())
            .find(|j| chars[*j] == close && (!matches!(close, '\'' | '’') || apart(Some(j + 1))));
        // An opening quote never closed is not a quote: look on after it.
        let Some(end) = end else {
            i += 1;
            continue;
        };
        let mut t = chars[i + 1..end]
            .iter()
            .collect::<String>()
            .trim()
            .to_owned();
        if t.len() > MAX_TEXT_BYTES {
            let mut cut = MAX_TEXT_BYTES;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
        }
        if !t.is_empty() {
            out.push(t);
        }
        i = end + 1;
    }
    out
}

/// Needs no skill here computes: the cue and what it would need.
const UNCOMPUTABLE: &[(&[&str], &str, &str)] = &[
    (
        &[
            "translate",
            "translation",
            "traduire",
            "übersetze",
            "traducir",
        ],
        "translation",
        "no translation model is published on this network",
    ),
    (
        &[
            "forecast",
            "predict the price",
            "stock price",
            "predict tomorrow",
            "will the price",
        ],
        "forecasting",
        "no forecasting model is published on this network, and none would know tomorrow",
    ),
    (
        &[
            "draw ",
            "generate an image",
            "make a picture",
            "render an image",
        ],
        "image-generation",
        "no image-generation model is published on this network",
    ),
    (
        &[
            "right now",
            "current weather",
            "latest news",
            "today's price",
            "look up",
            "search the web",
        ],
        "live-lookup",
        "the entry has no access to live data",
    ),
    (
        &["sentiment"],
        "sentiment",
        "no sentiment model is published on this network",
    ),
];

const FILE_ASK: &[&str] = &[
    "file type",
    "filetype",
    "what language",
    "which language",
    "what kind of file",
    "what type of file",
    "what format",
    "which format",
    "file format",
    "what is this file",
    "identify the file",
    "detect the",
    "classify this file",
    "classify the file",
    "kind of file",
    "type of this file",
    "type of the file",
    "what is this code",
    "language is this",
    "language is it",
];

const DIGIT_ASK: &[&str] = &["digit", "handwritten", "8x8", "8×8", "chiffre", "ziffer"];

/// Arithmetic words turned into operators before expressions are looked for.
const WORD_OPS: &[(&str, &str)] = &[
    (" plus ", " + "),
    (" minus ", " - "),
    (" times ", " * "),
    (" multiplied by ", " * "),
    (" divided by ", " / "),
    (" to the power of ", " ^ "),
    (" squared", " ^ 2"),
    (" cubed", " ^ 3"),
    ("% of ", "% * "),
    (" percent of ", "% * "),
];

/// Expressions in `text`: runs of numbers and operators with at least two numbers and an
/// operator between them, that evaluate.
pub fn expressions(text: &str) -> Vec<String> {
    let mut t = format!(" {} ", text.to_lowercase());
    for (w, op) in WORD_OPS {
        t = t.replace(w, op);
    }
    let t = strip_thousands(&t);
    let allowed = |c: char| {
        c.is_ascii_digit()
            || matches!(
                c,
                '.' | '+' | '-' | '*' | '/' | '^' | '×' | '÷' | '(' | ')' | '%' | ' ' | '−'
            )
            || c == 'x'
    };
    let mut out = Vec::new();
    let chars: Vec<char> = t.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !allowed(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && allowed(chars[i]) {
            i += 1;
        }
        // An `x` that is part of a word was cut by the letters around it; trim what cannot start
        // or end an expression.
        let run: String = chars[start..i].iter().collect();
        let run = run
            .trim_matches(|c: char| !(c.is_ascii_digit() || c == '(' || c == ')' || c == '%'))
            .trim()
            .to_owned();
        if let Some(e) = accept_expression(&run) {
            out.push(e);
            if out.len() >= MAX_PER_SEGMENT {
                break;
            }
        }
    }
    out
}

fn accept_expression(run: &str) -> Option<String> {
    // Balance parentheses a sentence may have cut.
    let mut run = run.trim_start_matches(')').to_owned();
    let opens = run.matches('(').count();
    let closes = run.matches(')').count();
    if closes > opens && run.ends_with(')') {
        run.pop();
    }
    let numbers = run
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty())
        .count();
    let has_op = run
        .chars()
        .any(|c| matches!(c, '+' | '*' | '/' | '^' | '×' | '÷' | 'x'))
        || run.contains(" - ")
        || run.contains(" − ")
        || run.contains(")-")
        || run.contains("-(");
    // `2026-12-06`, `3-4 days`: a dash without spaces is a date or a range, not a subtraction.
    let dashed = run
        .as_bytes()
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b'-' && w[2].is_ascii_digit());
    if numbers < 2 || !has_op || dashed {
        return None;
    }
    let expr = run.replace('x', "*").replace('−', "-");
    exact::evaluate(&expr).ok().map(|_| expr)
}

/// `1,234,567` → `1234567` (only where every group after a comma has three digits).
fn strip_thousands(t: &str) -> String {
    let chars: Vec<char> = t.chars().collect();
    let mut out = String::with_capacity(t.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == ','
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.len() > i + 3
            && chars[i + 1..i + 4].iter().all(|c| c.is_ascii_digit())
            && !chars.get(i + 4).is_some_and(|c| c.is_ascii_digit())
        {
            continue;
        }
        out.push(c);
    }
    out
}

/// Conversions in `text`: `5 km to miles`, `100 °F in celsius`, `how many feet in 3 m`.
pub fn conversions(text: &str) -> Vec<ExactInputs> {
    let tokens: Vec<String> = text
        .split_whitespace()
        .map(|t| {
            t.trim_end_matches(['?', '.', ',', '!', ';', ':', ')'])
                .trim_start_matches('(')
                .to_owned()
        })
        .filter(|t| !t.is_empty())
        .collect();
    // Split `5km` into `5` `km`; join `degrees celsius`.
    let mut toks: Vec<String> = Vec::new();
    for t in tokens {
        let split = t
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '-'))
            .map(|(i, _)| i);
        match split {
            Some(i) if i > 0 && t[..i].parse::<f64>().is_ok() => {
                toks.push(t[..i].to_owned());
                toks.push(t[i..].to_owned());
            }
            _ => toks.push(t),
        }
    }
    let mut joined: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let lower = toks[i].to_lowercase();
        if (lower == "degrees" || lower == "degree") && i + 1 < toks.len() {
            joined.push(format!("degrees {}", toks[i + 1]));
            i += 2;
        } else {
            joined.push(toks[i].clone());
            i += 1;
        }
    }
    let num = |s: &str| {
        let v = s.strip_prefix('-').unwrap_or(s);
        (!v.is_empty()
            && v.chars().all(|c| c.is_ascii_digit() || c == '.')
            && exact::Ratio::parse_decimal(v).is_ok())
        .then(|| s.to_owned())
    };
    let conn = |s: &str| {
        matches!(
            s.to_lowercase().as_str(),
            "to" | "in" | "into" | "as" | "en" | "nach" | "a" | "in:"
        )
    };
    let mut out = Vec::new();
    let w = &joined;
    let mut k = 0;
    while k < w.len() {
        // N unit (to|in) unit
        if k + 3 < w.len()
            && let Some(v) = num(&w[k])
            && let (Some(from), Some(to)) =
                (exact::unit_symbol(&w[k + 1]), exact::unit_symbol(&w[k + 3]))
            && conn(&w[k + 2])
        {
            out.push(ExactInputs::Convert {
                value: v,
                from: from.into(),
                to: to.into(),
            });
            if out.len() >= MAX_PER_SEGMENT {
                break;
            }
            k += 4;
            continue;
        }
        // how many unit (is|are|in) N unit
        if k + 5 < w.len()
            && w[k].eq_ignore_ascii_case("how")
            && w[k + 1].eq_ignore_ascii_case("many")
            && let Some(to) = exact::unit_symbol(&w[k + 2])
            && matches!(w[k + 3].to_lowercase().as_str(), "is" | "are" | "in")
            && let Some(v) = num(&w[k + 4])
            && let Some(from) = exact::unit_symbol(&w[k + 5])
        {
            out.push(ExactInputs::Convert {
                value: v,
                from: from.into(),
                to: to.into(),
            });
            k += 6;
            continue;
        }
        k += 1;
    }
    out
}

/// 64 integers 0–16 in a segment (words around them ignored): an 8×8 digit image.
fn pixels(seg: &Segment) -> Option<Vec<u8>> {
    let nums: Vec<&str> = seg
        .text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '|' || c == ';')
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
        .collect();
    if nums.len() != 64 {
        return None;
    }
    nums.iter()
        .map(|t| t.parse::<u8>().ok().filter(|v| *v <= 16))
        .collect()
}

/// What the rules make of the segments.
#[derive(Debug, Clone, Default)]
pub struct RuleView {
    /// Sub-tasks by rule: (segment, skill, inputs).
    pub subtasks: Vec<(u32, Skill, SubtaskInputs)>,
    /// Goal segments.
    pub goal: Vec<u32>,
    /// Constraint segments.
    pub constraints: Vec<u32>,
    /// Noise by rule.
    pub noise: Vec<Noise>,
    /// Uncomputable needs.
    pub uncomputable: Vec<Uncomputable>,
    /// Missing information.
    pub missing: Vec<String>,
}

/// Applies the rules to the segments.
pub fn rules(segments: &[Segment]) -> RuleView {
    let mut v = RuleView::default();
    let prose: String = segments
        .iter()
        .filter(|s| s.kind == SegmentKind::Text)
        .map(|s| lower_words(&s.text))
        .collect();
    let asks_file = has_any(&prose, FILE_ASK);
    let asks_digit = has_any(&prose, DIGIT_ASK);
    let mut injected = std::collections::BTreeSet::new();
    for s in segments.iter().filter(|s| s.kind == SegmentKind::Text) {
        if has_any(&lower_words(&s.text), INJECTION) {
            injected.insert(s.n);
            v.noise.push(Noise {
                segment: s.n,
                reason: NoiseReason::InstructionToEntry,
            });
        }
    }
    let mut computed = std::collections::BTreeSet::new();
    for s in segments {
        // Past the most a turn runs, it is enough to know there were more.
        if injected.contains(&s.n) || v.subtasks.len() > MAX_SUBTASKS {
            continue;
        }
        match s.kind {
            SegmentKind::Code => {
                if asks_file {
                    let mut content = s.text.clone();
                    if content.len() > MAX_FILE_BYTES {
                        let mut cut = MAX_FILE_BYTES;
                        while !content.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        content.truncate(cut);
                    }
                    v.subtasks
                        .push((s.n, Skill::FileType, SubtaskInputs::File { content }));
                    computed.insert(s.n);
                }
            }
            // A table, or a line, of 64 values 0-16: a digit image.
            SegmentKind::Table | SegmentKind::Text if let Some(p) = pixels(s) => {
                v.subtasks.push((
                    s.n,
                    Skill::DigitRecognition,
                    SubtaskInputs::Pixels { pixels: p },
                ));
                computed.insert(s.n);
            }
            SegmentKind::Table => {}
            SegmentKind::Text => {
                let found =
                    conversions(&s.text)
                        .into_iter()
                        .map(|c| (Skill::UnitConversion, c))
                        .chain(expressions(&s.text).into_iter().map(|e| {
                            (Skill::Arithmetic, ExactInputs::Arithmetic { expression: e })
                        }));
                for (skill, inputs) in found {
                    let inputs = SubtaskInputs::Exact { inputs };
                    // The same computation asked twice runs once.
                    if !v.subtasks.iter().any(|t| t.1 == skill && t.2 == inputs) {
                        v.subtasks.push((s.n, skill, inputs));
                    }
                }
                let texts = quoted(&s.text);
                if texts.len() >= 2 && has_any(&lower_words(&s.text), SIMILARITY_ASK) {
                    v.subtasks.push((
                        s.n,
                        Skill::TextSimilarity,
                        SubtaskInputs::Texts {
                            texts: texts.into_iter().take(MAX_TEXTS).collect(),
                        },
                    ));
                }
                if v.subtasks.iter().any(|t| t.0 == s.n) {
                    computed.insert(s.n);
                }
            }
        }
    }
    for s in segments.iter().filter(|s| s.kind == SegmentKind::Text) {
        if injected.contains(&s.n) {
            continue;
        }
        let l = lower_words(&s.text);
        let trimmed = l.trim_start();
        let question = s.text.contains('?') || s.text.contains('？') || s.text.contains('¿');
        let imperative = GOAL_START.iter().any(|g| trimmed.starts_with(g));
        let mut asks = false;
        for (cues, need, reason) in UNCOMPUTABLE {
            if has_any(&l, cues) {
                v.uncomputable.push(Uncomputable {
                    segment: s.n,
                    need: (*need).into(),
                    reason: (*reason).into(),
                });
                asks = true;
                break;
            }
        }
        if question || imperative || asks || computed.contains(&s.n) {
            v.goal.push(s.n);
        } else if has_any(&l, CONSTRAINT) {
            v.constraints.push(s.n);
        } else if has_any(&l, CHATTER) {
            v.noise.push(Noise {
                segment: s.n,
                reason: NoiseReason::SmallTalk,
            });
        }
    }
    // A goal sentence that is chatter too ("haha anyway what is 2+2?") stays a goal; one that
    // is only chatter with a question mark ("how are you?") is small talk.
    v.goal.retain(|n| {
        let s = &segments[*n as usize - 1];
        let l = lower_words(&s.text);
        let chat_only = has_any(
            &l,
            &["how are you", "how's it going", "what's up", "how was your"],
        ) && !computed.contains(n);
        if chat_only {
            v.noise.push(Noise {
                segment: *n,
                reason: NoiseReason::SmallTalk,
            });
        }
        !chat_only
    });
    // Asked for but not given.
    if asks_file && !v.subtasks.iter().any(|t| t.1 == Skill::FileType) {
        v.missing
            .push("the file's content, pasted between ``` fences, to identify its type".into());
    }
    if has_any(&prose, SIMILARITY_ASK) && !v.subtasks.iter().any(|t| t.1 == Skill::TextSimilarity) {
        v.missing.push(
            "the texts to compare, each in quotes (\"…\"), the first compared with the others"
                .into(),
        );
    }
    if asks_digit && !v.subtasks.iter().any(|t| t.1 == Skill::DigitRecognition) {
        v.missing.push(
            "the 8×8 image as 64 numbers from 0 to 16 (row by row), to recognize the digit".into(),
        );
    }
    if has_any(&prose, &[" convert", "conversion"])
        && !v.subtasks.iter().any(|t| t.1 == Skill::UnitConversion)
        && v.uncomputable.is_empty()
    {
        v.missing.push(
            "the quantity with its unit and the unit to convert to (e.g. \"5 km to miles\")".into(),
        );
    }
    // Irrelevant: prose that is neither goal, constraint, computation nor already noise, tells
    // of someone's life (a personal detail), and shares no word or number with the goal. Other
    // unlabelled prose is context, left to the language model to judge.
    let goal_words: std::collections::BTreeSet<String> = v
        .goal
        .iter()
        .chain(computed.iter())
        .flat_map(|n| content_words(&segments[*n as usize - 1].text))
        .collect();
    for s in segments.iter().filter(|s| s.kind == SegmentKind::Text) {
        let n = s.n;
        if v.goal.contains(&n)
            || v.constraints.contains(&n)
            || computed.contains(&n)
            || v.noise.iter().any(|x| x.segment == n)
            || v.uncomputable.iter().any(|x| x.segment == n)
        {
            continue;
        }
        let words = content_words(&s.text);
        let personal = has_any(&lower_words(&s.text), PERSONAL);
        if !v.goal.is_empty() && personal && words.iter().all(|w| !goal_words.contains(w)) {
            v.noise.push(Noise {
                segment: n,
                reason: NoiseReason::Irrelevant,
            });
        }
    }
    v.noise.sort_by_key(|x| x.segment);
    v.noise.dedup_by_key(|x| x.segment);
    v
}

/// Markers of a personal or incidental detail.
const PERSONAL: &[&str] = &[
    " my ",
    " i ",
    " i'm ",
    " i've ",
    " me ",
    " our cto",
    " our ceo",
    " grandma",
    " grandpa",
    " neighbour",
    " neighbor",
    " wife",
    " husband",
    " friend",
    " flight",
    " hotel",
    " kids",
    " mom ",
    " dad ",
    " brother",
    " sister",
    " boss ",
    " marathon",
    " vacation",
    " holiday",
];

/// Lowercase words of four letters or more (a crude stem: trailing `s` dropped) and numbers.
fn content_words(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "what", "that", "this", "with", "have", "from", "there", "their", "about", "would",
        "could", "should", "which", "when", "where", "your", "just", "also", "into", "than",
        "then", "them", "they", "will", "been", "were", "does", "much", "many", "some", "please",
        "tell", "need", "want",
    ];
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| {
            (w.chars().count() >= 4 || w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty())
                && !STOP.contains(w)
        })
        .map(|w| w.trim_end_matches('s').to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The language model's draft

/// What the language model decodes, constrained by [`DRAFT_SCHEMA`]: labels by segment number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// Goal segments.
    #[serde(default)]
    pub goal: Vec<u32>,
    /// Constraint segments.
    #[serde(default)]
    pub constraints: Vec<u32>,
    /// Segments that need a computation, with the skill.
    #[serde(default)]
    pub compute: Vec<DraftCompute>,
    /// Noise segments with a reason.
    #[serde(default)]
    pub noise: Vec<Noise>,
}

/// A segment the model says needs computing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftCompute {
    /// The segment.
    pub segment: u32,
    /// A skill name, or `other`.
    pub skill: String,
}

/// The JSON Schema the language model's output is constrained to.
pub const DRAFT_SCHEMA: &str = include_str!("../schema/draft-v1.json");

/// Combines the rules' view with the model's draft (if any) into the task object. Rules win
/// where they spoke: a sub-task's inputs come only from rules; a segment the rules computed
/// or found aimed at the entry keeps that label whatever the model said.
pub fn merge(
    segments: Vec<Segment>,
    r: RuleView,
    draft: Option<&Draft>,
    parsed_by: ParsedBy,
) -> TaskObject {
    let count = segments.len() as u32;
    let valid = |n: &u32| *n >= 1 && *n <= count;
    let computed: std::collections::BTreeSet<u32> = r.subtasks.iter().map(|t| t.0).collect();
    let instruction: std::collections::BTreeSet<u32> = r
        .noise
        .iter()
        .filter(|x| x.reason == NoiseReason::InstructionToEntry)
        .map(|x| x.segment)
        .collect();
    let mut goal = r.goal.clone();
    let mut constraints = r.constraints.clone();
    let mut noise = r.noise.clone();
    let mut uncomputable = r.uncomputable.clone();
    let is_code = |n: u32| segments[n as usize - 1].kind != SegmentKind::Text;
    if let Some(d) = draft {
        if goal.is_empty() {
            goal.extend(
                d.goal
                    .iter()
                    .filter(|n| valid(n) && !instruction.contains(n) && !is_code(**n)),
            );
        }
        for n in d.constraints.iter().filter(|n| valid(n)) {
            if !instruction.contains(n)
                && !goal.contains(n)
                && !is_code(*n)
                && !constraints.contains(n)
                && !computed.contains(n)
                && !noise.iter().any(|x| x.segment == *n)
            {
                constraints.push(*n);
            }
        }
        for c in d.compute.iter().filter(|c| valid(&c.segment)) {
            let n = c.segment;
            if computed.contains(&n)
                || instruction.contains(&n)
                || uncomputable.iter().any(|u| u.segment == n)
                || is_code(n)
            {
                continue;
            }
            // The model saw something to compute where no rule found inputs: said, not invented.
            let known = Skill::ALL.iter().any(|s| s.as_str() == c.skill);
            uncomputable.push(Uncomputable {
                segment: n,
                need: if known {
                    c.skill.clone()
                } else {
                    "other".into()
                },
                reason: if known {
                    format!("no {} inputs could be read from this text", c.skill)
                } else {
                    "no skill on this network computes it".into()
                },
            });
        }
        for x in d.noise.iter().filter(|x| valid(&x.segment)) {
            let n = x.segment;
            if computed.contains(&n)
                || goal.contains(&n)
                || constraints.contains(&n)
                || uncomputable.iter().any(|u| u.segment == n)
                || noise.iter().any(|y| y.segment == n)
                || is_code(n)
            {
                continue;
            }
            noise.push(x.clone());
        }
    }
    goal.sort_unstable();
    goal.dedup();
    constraints.sort_unstable();
    noise.sort_by_key(|x| x.segment);
    uncomputable.sort_by_key(|u| u.segment);
    let mut missing = r.missing.clone();
    let mut subtasks: Vec<Subtask> = r
        .subtasks
        .into_iter()
        .enumerate()
        .map(|(i, (segment, skill, inputs))| Subtask {
            id: format!("s{}", i + 1),
            skill,
            segment,
            inputs,
        })
        .collect();
    if subtasks.len() > MAX_SUBTASKS {
        missing.push(format!(
            "a shorter request: it holds {} computations, the entry runs at most {MAX_SUBTASKS} per turn (the first {MAX_SUBTASKS} ran)",
            subtasks.len()
        ));
        subtasks.truncate(MAX_SUBTASKS);
    }
    let goal_text = if goal.is_empty() {
        segments
            .iter()
            .find(|s| {
                s.kind == SegmentKind::Text
                    && !noise.iter().any(|x| x.segment == s.n)
                    && !constraints.contains(&s.n)
            })
            .map(|s| s.text.clone())
            .unwrap_or_default()
    } else {
        goal.iter()
            .map(|n| segments[*n as usize - 1].text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if goal_text.is_empty() && subtasks.is_empty() {
        missing.push("what you want to know or have computed".into());
    }
    TaskObject {
        schema: SCHEMA.into(),
        segments,
        goal: goal_text,
        goal_segments: goal,
        constraints,
        subtasks,
        missing,
        uncomputable,
        noise,
        parsed_by,
    }
}

/// Rules only: the task object when no language model labels the segments.
pub fn parse_by_rules(input: &str) -> Result<TaskObject, InputError> {
    let segments = segment(input)?;
    let r = rules(&segments);
    Ok(merge(
        segments,
        r,
        None,
        ParsedBy {
            rules: RULES.into(),
            llm: None,
            llm_receipt: None,
            llm_skipped: Some("no language model was asked".into()),
        },
    ))
}

#[cfg(test)]
mod tests;
