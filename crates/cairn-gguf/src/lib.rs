//! Reads a GGUF language model's metadata — architecture, parameter count, quantization,
//! context length, vocabulary, chat template, whether a tokenizer is embedded — from a byte
//! stream in one forward pass, and checks that every tensor the header describes is present.
//!
//! An uploaded file is untrusted and may be gigabytes: what is kept is the (short) keys and the
//! scalar values, never array items ([`read_model`] keeps the tokenizer's arrays, within a
//! budget). Every length and count is checked against [`Limits`] before it sizes anything,
//! arrays (a vocabulary of 250,000 strings) are validated as they stream past, and the tensor
//! layout is held to the rules llama.cpp's loader enforces (known types, whole blocks, tensors in
//! order at aligned offsets). Whether an engine can run the model is the engine's check.

mod ggml;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufReader, Read};

pub use ggml::{GgmlType, file_type_name};

/// The media type the hub gives GGUF files.
pub const GGUF_MEDIA_TYPE: &str = "application/x-gguf";

/// Bounds on what a file may ask the reader to read or keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest string value (a chat template, a token) or key.
    pub max_string_bytes: u64,
    /// Most elements in one array (a vocabulary, its merges).
    pub max_array_len: u64,
    /// Most metadata entries.
    pub max_entries: u64,
    /// Most tensors.
    pub max_tensors: u64,
    /// Most bytes before the tensor data (metadata and tensor descriptions).
    pub max_header_bytes: u64,
    /// Longest metadata key (real keys are short dotted names).
    pub max_key_bytes: u64,
    /// Largest `general.alignment` accepted.
    pub max_alignment: u64,
    /// Most array items [`read_model`] keeps in memory (it keeps the tokenizer's arrays only).
    pub max_kept_items: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_string_bytes: 1 << 20,
            max_array_len: 1 << 24,
            max_entries: 1 << 16,
            max_tensors: 1 << 16,
            max_header_bytes: 512 << 20,
            max_key_bytes: 256,
            max_alignment: 1 << 20,
            max_kept_items: 4 << 20,
        }
    }
}

/// What is wrong with a file that was said to be GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Reading the stream failed.
    #[error("reading the model failed: {0}")]
    Io(io::Error),
    /// The first bytes are not `GGUF`.
    #[error("not a GGUF file: it starts with {0:02x?}, not the magic `GGUF`")]
    NotGguf([u8; 4]),
    /// A version this reader does not take.
    #[error("unsupported GGUF version {0}: {1}")]
    Version(u32, &'static str),
    /// The stream ended early.
    #[error("not a valid GGUF file: it is truncated ({0})")]
    Truncated(String),
    /// The bytes break the format.
    #[error("not a valid GGUF file: {what} (at byte {offset})")]
    Malformed {
        /// Where.
        offset: u64,
        /// What.
        what: String,
    },
    /// Well-formed, but missing or contradicting what a language model needs.
    #[error("not a usable GGUF model: {0}")]
    Inconsistent(String),
    /// Over one of the [`Limits`].
    #[error("GGUF file exceeds a limit: {0}")]
    Limit(String),
}

/// The tokenizer a GGUF file carries (`tokenizer.ggml.*`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GgufTokenizer {
    /// The tokenizer family (`gpt2` for byte-level BPE, `llama` for SentencePiece, …).
    pub model: String,
    /// The pre-tokenizer llama.cpp applies (`tokenizer.ggml.pre`), when named.
    pub pre: Option<String>,
    /// Tokens in the vocabulary.
    pub tokens: u64,
    /// BPE merges (0 for tokenizers without them).
    pub merges: u64,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<u32>,
    /// Whether a BOS token is prepended to a prompt.
    pub add_bos_token: Option<bool>,
}

/// A GGUF model as read on upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GgufMetadata {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// Model architecture (`general.architecture`), e.g. `llama`.
    pub architecture: String,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.size_label`, e.g. `135M`.
    pub size_label: Option<String>,
    /// `general.license`.
    pub license: Option<String>,
    /// Weights, counted over the tensors the file holds.
    pub parameter_count: u64,
    /// The quantization the file was made with (`general.file_type`, else the type holding most
    /// bytes), e.g. `Q4_1`.
    pub quantization: String,
    /// Tensors per element type, e.g. `{"F32": 61, "Q4_1": 210, "Q8_0": 1}`.
    pub tensor_types: BTreeMap<String, u64>,
    /// Tensors.
    pub tensor_count: u64,
    /// Longest context the model was trained for, in tokens.
    pub context_length: Option<u64>,
    /// Width of the hidden state.
    pub embedding_length: Option<u64>,
    /// Transformer blocks.
    pub block_count: Option<u64>,
    /// Attention heads.
    pub head_count: Option<u64>,
    /// Key/value heads (fewer than `head_count` under grouped-query attention).
    pub head_count_kv: Option<u64>,
    /// Vocabulary size (`<arch>.vocab_size`, else the tokenizer's).
    pub vocab_size: Option<u64>,
    /// The embedded tokenizer; `None` when the file carries none.
    pub tokenizer: Option<GgufTokenizer>,
    /// The Jinja chat template (`tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// Byte offset of the tensor data.
    pub data_offset: u64,
    /// Bytes of tensor data.
    pub data_bytes: u64,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's `GGML_MAX_NAME`, the terminating NUL included.
const MAX_TENSOR_NAME: u64 = 63;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// GGUF value types.
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A metadata value. [`read_metadata`] keeps arrays only by element type and length (`items`
/// empty) and drops strings it does not report; [`read_model`] keeps everything.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// An unsigned integer of any width.
    Uint(u64),
    /// A signed integer of any width.
    Int(i64),
    /// An `f32` or `f64`.
    Float(f64),
    /// A bool.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// A string the reader validated and did not keep.
    Dropped,
    /// An array: its GGUF element type, length, and (when kept) its items.
    Array {
        /// GGUF value type of the elements.
        elem: u32,
        /// Elements.
        len: u64,
        /// The elements, when kept.
        items: Vec<MetaValue>,
    },
}

impl MetaValue {
    /// A non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::Uint(v) => Some(v),
            MetaValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number as `f64` (integers too).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Float(v) => Some(v),
            MetaValue::Uint(v) => Some(v as f64),
            MetaValue::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

use MetaValue as Value;

/// String values the reader keeps; every other string is validated and dropped.
const KEPT_STRINGS: &[&str] = &[
    "general.architecture",
    "general.name",
    "general.size_label",
    "general.license",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.chat_template",
];

struct Cursor<R> {
    inner: BufReader<R>,
    pos: u64,
    limits: Limits,
    scratch: Vec<u8>,
    /// Keep every string value and the tokenizer's array items ([`read_model`]).
    keep_all: bool,
    /// Array items kept so far.
    kept_items: u64,
}

impl<R: Read> Cursor<R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(GgufError::Truncated(
                format!("the file ends inside {what}, near byte {}", self.pos),
            )),
            Err(e) => Err(GgufError::Io(e)),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.exact(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn malformed(&self, what: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            offset: self.pos,
            what: what.into(),
        }
    }

    /// A length-prefixed UTF-8 string, at most `max` bytes; read into scratch.
    fn string_bytes(&mut self, what: &str, max: u64) -> Result<&str, GgufError> {
        let len = self.u64(what)?;
        if len > max {
            return Err(GgufError::Limit(format!(
                "{what} at byte {} is {len} bytes long; at most {max} are accepted",
                self.pos
            )));
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(len as usize, 0);
        let read = self.exact(&mut buf, what);
        self.scratch = buf;
        read?;
        std::str::from_utf8(&self.scratch).map_err(|e| GgufError::Malformed {
            offset: self.pos,
            what: format!("{what} is not UTF-8 ({e})"),
        })
    }

    fn string(&mut self, what: &str, max: u64) -> Result<String, GgufError> {
        Ok(self.string_bytes(what, max)?.to_owned())
    }

    /// One value of type `ty`; strings are kept only when `keep`.
    fn value(&mut self, ty: u32, key: &str, keep: bool) -> Result<Value, GgufError> {
        const WHAT: &str = "a metadata value";
        Ok(match ty {
            vt::U8 => Value::Uint(self.array::<1>(WHAT)?[0].into()),
            vt::I8 => Value::Int(i8::from_le_bytes(self.array(WHAT)?).into()),
            vt::U16 => Value::Uint(u16::from_le_bytes(self.array(WHAT)?).into()),
            vt::I16 => Value::Int(i16::from_le_bytes(self.array(WHAT)?).into()),
            vt::U32 => Value::Uint(self.u32(WHAT)?.into()),
            vt::I32 => Value::Int(i32::from_le_bytes(self.array(WHAT)?).into()),
            vt::U64 => Value::Uint(self.u64(WHAT)?),
            vt::I64 => Value::Int(i64::from_le_bytes(self.array(WHAT)?)),
            vt::F32 => Value::Float(f32::from_le_bytes(self.array(WHAT)?).into()),
            vt::F64 => Value::Float(f64::from_le_bytes(self.array(WHAT)?)),
            vt::BOOL => match self.array::<1>(WHAT)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.malformed(format!("`{key}` is a bool stored as {b}"))),
            },
            vt::STRING => {
                let max = self.limits.max_string_bytes;
                if keep {
                    Value::Str(self.string(WHAT, max)?)
                } else {
                    self.string_bytes(WHAT, max)?;
                    Value::Dropped
                }
            }
            vt::ARRAY => {
                let elem = self.u32(WHAT)?;
                let len = self.u64(WHAT)?;
                if len > self.limits.max_array_len {
                    return Err(GgufError::Limit(format!(
                        "`{key}` is an array of {len} elements; at most {} are accepted",
                        self.limits.max_array_len
                    )));
                }
                if elem == vt::ARRAY {
                    return Err(self.malformed(format!(
                        "`{key}` is an array of arrays, which GGUF readers do not support"
                    )));
                }
                // The engine needs the tokenizer's arrays; other arrays are read and not kept.
                let keep_items = self.keep_all && key.starts_with("tokenizer.ggml.");
                if keep_items {
                    self.kept_items = self.kept_items.saturating_add(len);
                    if self.kept_items > self.limits.max_kept_items {
                        return Err(GgufError::Limit(format!(
                            "the tokenizer's arrays hold more than {} items",
                            self.limits.max_kept_items
                        )));
                    }
                }
                let mut items = Vec::new();
                for _ in 0..len {
                    let item = self.value(elem, key, keep_items)?;
                    if keep_items {
                        items.push(item);
                    }
                    self.check_header_size()?;
                }
                Value::Array { elem, len, items }
            }
            other => {
                return Err(self.malformed(format!("`{key}` has unknown value type {other}")));
            }
        })
    }

    fn check_header_size(&self) -> Result<(), GgufError> {
        if self.pos > self.limits.max_header_bytes {
            return Err(GgufError::Limit(format!(
                "the metadata and tensor descriptions run past {} bytes",
                self.limits.max_header_bytes
            )));
        }
        Ok(())
    }
}

/// One tensor as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Its shape, innermost (contiguous) dimension first, as ggml orders it.
    pub dims: Vec<u64>,
    /// Its element type.
    pub ty: GgmlType,
    /// Offset of its bytes from the start of the tensor data.
    pub offset: u64,
    /// Its bytes.
    pub bytes: u64,
}

/// A whole GGUF model read from memory: its metadata report, every metadata value, and every
/// tensor's place in the file.
#[derive(Debug, Clone)]
pub struct GgufModel {
    /// What [`read_metadata`] reports.
    pub metadata: GgufMetadata,
    /// Every metadata value, arrays with their items.
    pub values: HashMap<String, MetaValue>,
    /// Tensors, in file order.
    pub tensors: Vec<TensorInfo>,
}

impl GgufModel {
    /// The bytes of `tensor` inside `file` (the bytes this model was read from).
    pub fn tensor_bytes<'a>(&self, file: &'a [u8], tensor: &TensorInfo) -> &'a [u8] {
        let start = (self.metadata.data_offset + tensor.offset) as usize;
        &file[start..start + tensor.bytes as usize]
    }
}

/// Reads a whole GGUF file held in memory, keeping every value (vocabularies included) and every
/// tensor's description; the same checks as [`read_metadata`] apply.
pub fn read_model(file: &[u8], limits: Limits) -> Result<GgufModel, GgufError> {
    let (metadata, values, tensors) = read(file, limits, true)?;
    Ok(GgufModel {
        metadata,
        values,
        tensors,
    })
}

/// Reads the metadata of the GGUF file `reader` yields, to its end: the whole stream is read,
/// since a file whose tensor data is cut short is refused too.
pub fn read_metadata<R: Read>(reader: R, limits: Limits) -> Result<GgufMetadata, GgufError> {
    read(reader, limits, false).map(|(metadata, _, _)| metadata)
}

type Read3 = (GgufMetadata, HashMap<String, MetaValue>, Vec<TensorInfo>);

fn read<R: Read>(reader: R, limits: Limits, keep_all: bool) -> Result<Read3, GgufError> {
    let mut c = Cursor {
        inner: BufReader::with_capacity(64 << 10, reader),
        pos: 0,
        limits,
        scratch: Vec::new(),
        keep_all,
        kept_items: 0,
    };
    let magic: [u8; 4] = c.array("the magic number")?;
    if &magic != MAGIC {
        return Err(GgufError::NotGguf(magic));
    }
    let version = c.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(GgufError::Version(
                1,
                "version 1 used 32-bit counts and is obsolete; convert the model again with a current llama.cpp",
            ));
        }
        v if v.swap_bytes() <= 3 => {
            return Err(GgufError::Version(
                v,
                "the file is big-endian; Cairn reads little-endian GGUF only",
            ));
        }
        v => return Err(GgufError::Version(v, "versions 2 and 3 are supported")),
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    if n_tensors > limits.max_tensors {
        return Err(GgufError::Limit(format!(
            "the file declares {n_tensors} tensors; at most {} are accepted",
            limits.max_tensors
        )));
    }
    if n_kv > limits.max_entries {
        return Err(GgufError::Limit(format!(
            "the file declares {n_kv} metadata entries; at most {} are accepted",
            limits.max_entries
        )));
    }

    let mut kv: HashMap<String, Value> = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string("a metadata key", limits.max_key_bytes)?;
        if key.is_empty() {
            return Err(c.malformed("a metadata key is empty"));
        }
        if kv.contains_key(&key) {
            return Err(c.malformed(format!("metadata key `{key}` appears twice")));
        }
        let ty = c.u32(&format!("the type of `{key}`"))?;
        // llama.cpp reads the alignment as a u32 and aborts on any other type.
        if key == "general.alignment" && ty != vt::U32 {
            return Err(GgufError::Inconsistent(format!(
                "general.alignment has value type {ty}; llama.cpp requires a u32"
            )));
        }
        let keep = keep_all || KEPT_STRINGS.contains(&key.as_str());
        let value = c.value(ty, &key, keep).map_err(|e| match e {
            GgufError::Truncated(msg) => {
                GgufError::Truncated(format!("{msg}, the value of `{key}`"))
            }
            e => e,
        })?;
        c.check_header_size()?;
        kv.insert(key, value);
    }

    // llama.cpp reads the alignment as a u32; anything else is refused, as is an alignment
    // whose padding would be larger than any real file's.
    let alignment = match kv.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::Uint(a))
            if a.is_power_of_two() && *a <= limits.max_alignment.min(u32::MAX.into()) =>
        {
            *a
        }
        Some(v) => {
            return Err(GgufError::Inconsistent(format!(
                "general.alignment is {v:?}; it must be a power of two of at most {} bytes",
                limits.max_alignment
            )));
        }
    };

    let mut names = HashSet::new();
    let mut spans = Vec::with_capacity(n_tensors.min(4096) as usize);
    let mut types: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut parameters = 0u64;
    let mut expected_offset = 0u64;
    for i in 0..n_tensors {
        let name = c.string(&format!("the name of tensor {i}"), MAX_TENSOR_NAME)?;
        if !names.insert(name.clone()) {
            return Err(c.malformed(format!("tensor `{name}` appears twice")));
        }
        let n_dims = c.u32(&format!("the rank of `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.malformed(format!(
                "tensor `{name}` has {n_dims} dimensions; ggml tensors have 1 to {MAX_DIMS}"
            )));
        }
        let mut elements = 1u64;
        let mut first = 0;
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let dim = c.u64(&format!("the shape of `{name}`"))?;
            if dim == 0 || dim > i64::MAX as u64 {
                return Err(c.malformed(format!("tensor `{name}` has dimension {d} of size {dim}")));
            }
            if d == 0 {
                first = dim;
            }
            dims.push(dim);
            elements = elements
                .checked_mul(dim)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| c.malformed(format!("tensor `{name}` has too many elements")))?;
        }
        let type_id = c.u32(&format!("the type of `{name}`"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            c.malformed(format!(
                "tensor `{name}` has element type {type_id}, which ggml does not define"
            ))
        })?;
        let bytes = ty.bytes(first, elements).ok_or_else(|| {
            c.malformed(match first.is_multiple_of(ty.block) {
                false => format!(
                    "tensor `{name}` of type {} has a first dimension of {first}, not a whole number of {}-element blocks",
                    ty.name, ty.block
                ),
                true => format!("tensor `{name}` is larger than 2^64 bytes"),
            })
        })?;
        let offset = c.u64(&format!("the offset of `{name}`"))?;
        if offset != expected_offset {
            return Err(c.malformed(format!(
                "tensor `{name}` starts at data offset {offset}, but the tensors before it end at {expected_offset} (GGUF lays tensors out in order, each aligned to {alignment} bytes)"
            )));
        }
        expected_offset = bytes
            .checked_next_multiple_of(alignment)
            .and_then(|b| offset.checked_add(b))
            .ok_or_else(|| c.malformed(format!("tensor `{name}` ends past 2^64 bytes")))?;
        parameters = parameters.saturating_add(elements);
        let entry = types.entry(ty.name).or_default();
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(bytes);
        spans.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            bytes,
        });
        c.check_header_size()?;
    }

    // The data starts at the next aligned offset; the padding is read and not kept.
    let data_offset = c
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| c.malformed("the header ends past 2^64 bytes"))?;
    let padding = data_offset - c.pos;
    let skipped =
        io::copy(&mut (&mut c.inner).take(padding), &mut io::sink()).map_err(GgufError::Io)?;
    if skipped < padding {
        return Err(GgufError::Truncated(format!(
            "the file ends inside the padding before the tensor data, near byte {}",
            c.pos + skipped
        )));
    }
    c.pos = data_offset;
    let data_len = io::copy(&mut c.inner, &mut io::sink()).map_err(GgufError::Io)?;
    if let Some(last) = spans.last() {
        let needed = last.offset.saturating_add(last.bytes);
        if data_len < needed {
            return Err(GgufError::Truncated(format!(
                "the tensor data holds {data_len} bytes, but tensor `{}` needs bytes up to {needed}; the file is {} bytes and should be at least {}",
                last.name,
                data_offset.saturating_add(data_len),
                data_offset.saturating_add(needed)
            )));
        }
    }
    if data_len > expected_offset {
        return Err(GgufError::Malformed {
            offset: data_offset + expected_offset,
            what: format!(
                "{} bytes follow the last tensor's data",
                data_len - expected_offset
            ),
        });
    }

    let metadata = build(
        version,
        &kv,
        types,
        parameters,
        n_tensors,
        data_offset,
        data_len,
    )?;
    Ok((metadata, kv, spans))
}

/// The metadata from what the pass kept, checked for consistency.
fn build(
    version: u32,
    kv: &HashMap<String, Value>,
    types: BTreeMap<&'static str, (u64, u64)>,
    parameter_count: u64,
    tensor_count: u64,
    data_offset: u64,
    data_bytes: u64,
) -> Result<GgufMetadata, GgufError> {
    let string = |key: &str| -> Result<Option<String>, GgufError> {
        match kv.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(GgufError::Inconsistent(format!("`{key}` is not a string"))),
        }
    };
    let number = |key: &str| -> Result<Option<u64>, GgufError> {
        match kv.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                GgufError::Inconsistent(format!("`{key}` is not a non-negative integer"))
            }),
        }
    };
    let architecture = string("general.architecture")?.ok_or_else(|| {
        GgufError::Inconsistent(
            "`general.architecture` is missing; every GGUF model names it".into(),
        )
    })?;
    let arch = |suffix: &str| number(&format!("{architecture}.{suffix}"));

    let tokenizer = match string("tokenizer.ggml.model")? {
        None => None,
        Some(model) => Some(tokenizer(kv, model, &string, &number)?),
    };
    let quantization = match number("general.file_type")? {
        Some(ft) => file_type_name(ft)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("file type {ft}")),
        None => types
            .iter()
            .max_by_key(|(_, (_, bytes))| *bytes)
            .map(|(name, _)| (*name).to_owned())
            .unwrap_or_else(|| "none".into()),
    };
    Ok(GgufMetadata {
        version,
        name: string("general.name")?,
        size_label: string("general.size_label")?,
        license: string("general.license")?,
        parameter_count,
        quantization,
        tensor_types: types
            .into_iter()
            .map(|(name, (count, _))| (name.to_owned(), count))
            .collect(),
        tensor_count,
        context_length: arch("context_length")?,
        embedding_length: arch("embedding_length")?,
        block_count: arch("block_count")?,
        head_count: arch("attention.head_count")?,
        head_count_kv: arch("attention.head_count_kv")?,
        vocab_size: arch("vocab_size")?.or(tokenizer.as_ref().map(|t| t.tokens)),
        tokenizer,
        chat_template: string("tokenizer.chat_template")?,
        data_offset,
        data_bytes,
        architecture,
    })
}

type Lookup<'a, T> = dyn Fn(&str) -> Result<Option<T>, GgufError> + 'a;

/// The embedded tokenizer, its arrays checked against each other: an engine indexes token
/// types and scores by token id, and special ids into the vocabulary.
fn tokenizer(
    kv: &HashMap<String, Value>,
    model: String,
    string: &Lookup<String>,
    number: &Lookup<u64>,
) -> Result<GgufTokenizer, GgufError> {
    let array = |key: &str, elem: u32| -> Result<Option<u64>, GgufError> {
        match kv.get(key) {
            None => Ok(None),
            Some(Value::Array { elem: e, len, .. }) if *e == elem => Ok(Some(*len)),
            Some(_) => Err(GgufError::Inconsistent(format!(
                "`{key}` is not an array of the type GGUF tokenizers use"
            ))),
        }
    };
    let tokens = array("tokenizer.ggml.tokens", vt::STRING)?.ok_or_else(|| {
        GgufError::Inconsistent(format!(
            "the file names tokenizer `{model}` but has no `tokenizer.ggml.tokens`"
        ))
    })?;
    if tokens == 0 {
        return Err(GgufError::Inconsistent(
            "the tokenizer's vocabulary is empty".into(),
        ));
    }
    for (key, elem) in [
        ("tokenizer.ggml.token_type", vt::I32),
        ("tokenizer.ggml.scores", vt::F32),
    ] {
        if let Some(n) = array(key, elem)?
            && n != tokens
        {
            return Err(GgufError::Inconsistent(format!(
                "`{key}` has {n} entries for a vocabulary of {tokens} tokens"
            )));
        }
    }
    let merges = array("tokenizer.ggml.merges", vt::STRING)?.unwrap_or(0);
    let id = |key: &str| -> Result<Option<u32>, GgufError> {
        match number(key)? {
            None => Ok(None),
            Some(id) if id < tokens => Ok(Some(id as u32)),
            Some(id) => Err(GgufError::Inconsistent(format!(
                "`{key}` is {id}, outside the vocabulary of {tokens} tokens"
            ))),
        }
    };
    for key in [
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        id(key)?;
    }
    let add_bos_token = match kv.get("tokenizer.ggml.add_bos_token") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(GgufError::Inconsistent(
                "`tokenizer.ggml.add_bos_token` is not a bool".into(),
            ));
        }
    };
    Ok(GgufTokenizer {
        pre: string("tokenizer.ggml.pre")?,
        tokens,
        merges,
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: id("tokenizer.ggml.eos_token_id")?,
        add_bos_token,
        model,
    })
}

#[cfg(test)]
mod tests;
