//! Reads an ONNX model's signature — IR version, producer, opsets, and each graph input and
//! output with its element type and shape — from a byte stream, in one forward pass.
//!
//! A model can be gigabytes of weights around a few kilobytes of signature, and an uploaded file
//! is untrusted, so nothing is buffered but the small messages the signature needs: nodes and
//! initializer data are skipped as they stream past, each kept sub-message is capped in size,
//! nesting depth is capped by prost's recursion limit, and counts are capped by [`Limits`].

mod proto;

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};

use prost::Message;

mod walker;
use walker::*;

/// Bounds on what a model may ask the reader to keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single input/output/opset message kept in memory.
    pub max_message_bytes: u64,
    /// Largest string kept (names, producer).
    pub max_string_bytes: u64,
    /// Most inputs, outputs or opsets.
    pub max_entries: usize,
    /// Largest tensor rank.
    pub max_rank: usize,
    /// Most initializers whose names are kept (to tell weights from real inputs).
    pub max_initializers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_string_bytes: 64 << 10,
            max_entries: 4096,
            max_rank: 64,
            max_initializers: 1_000_000,
        }
    }
}

/// What is wrong with a file that was said to be ONNX.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// Reading the stream failed.
    #[error("reading the model failed: {0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a field.
    #[error("not a valid ONNX model: the file is truncated (ended inside a field at byte {0})")]
    Truncated(u64),
    /// The bytes are not a well-formed `ModelProto`.
    #[error("not a valid ONNX model: {what} (at byte {offset})")]
    Malformed {
        /// Where.
        offset: u64,
        /// What.
        what: String,
    },
    /// Well-formed protobuf, but missing what every model has.
    #[error("not a valid ONNX model: {0}")]
    Incomplete(&'static str),
    /// Over one of the [`Limits`].
    #[error("ONNX model exceeds a limit: {0}")]
    Limit(String),
    /// A tensor keeps its data in a file beside the model (ONNX external data): a runtime would
    /// read that path on the machine that loads the model.
    #[error(
        "the model is not self-contained: tensor `{0}` keeps its data in an external file; Cairn runs only models with their weights inside (save with onnx.save(..., save_as_external_data=False))"
    )]
    ExternalData(String),
}

/// An opset the model imports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Opset {
    /// Operator domain; empty is the default `ai.onnx` domain.
    pub domain: String,
    /// Opset version.
    pub version: i64,
}

/// One tensor dimension: a fixed size, a symbolic name, or unknown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic dimension such as `batch`.
    Symbolic(String),
    /// Neither is given.
    Unknown,
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ValueInfo {
    /// Tensor name, used to feed or fetch it.
    pub name: String,
    /// Type as onnxruntime spells it: `tensor(float)`, `seq(map(int64,tensor(float)))`, …
    #[serde(rename = "type")]
    pub type_name: String,
    /// Element type of a tensor (`float`, `int64`, …); `None` for sequences and maps.
    pub elem_type: Option<String>,
    /// Shape of a tensor, when the model states one.
    pub shape: Option<Vec<Dim>>,
}

/// The signature of an ONNX model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OnnxSignature {
    /// ONNX IR version.
    pub ir_version: i64,
    /// Tool that wrote the model.
    pub producer_name: String,
    /// Its version.
    pub producer_version: String,
    /// Imported opsets.
    pub opsets: Vec<Opset>,
    /// Graph inputs that are not initializers (what a caller feeds).
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

fn dim(d: &proto::Dimension) -> Dim {
    match &d.value {
        Some(proto::DimValue::Value(v)) => Dim::Fixed(*v),
        Some(proto::DimValue::Param(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
        _ => Dim::Unknown,
    }
}

/// onnxruntime's spelling of a type.
fn type_name(t: &proto::TypeProto) -> String {
    use proto::TypeValue as T;
    let inner = |b: &Option<Box<proto::TypeProto>>| match b {
        Some(t) => type_name(t),
        None => "undefined".to_owned(),
    };
    match &t.value {
        Some(T::Tensor(t)) => format!("tensor({})", elem_name(t.elem_type)),
        Some(T::SparseTensor(t)) => format!("sparse_tensor({})", elem_name(t.elem_type)),
        Some(T::Sequence(s)) => format!("seq({})", inner(&s.elem_type)),
        Some(T::Optional(s)) => format!("optional({})", inner(&s.elem_type)),
        Some(T::Map(m)) => format!("map({},{})", elem_name(m.key_type), inner(&m.value_type)),
        None => "undefined".to_owned(),
    }
}

/// `TensorProto.DataType` names as onnxruntime prints them.
fn elem_name(code: i32) -> String {
    const NAMES: [&str; 24] = [
        "undefined",
        "float",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "int32",
        "int64",
        "string",
        "bool",
        "float16",
        "double",
        "uint32",
        "uint64",
        "complex64",
        "complex128",
        "bfloat16",
        "float8e4m3fn",
        "float8e4m3fnuz",
        "float8e5m2",
        "float8e5m2fnuz",
        "uint4",
        "int4",
        "float4e2m1",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("unknown({code})"), |s| (*s).to_owned())
}

/// Reads the signature of the ONNX model in `reader`, consuming the stream to its end.
pub fn read_signature(reader: impl Read, limits: Limits) -> Result<OnnxSignature, OnnxError> {
    let mut walker = Walker {
        r: BufReader::with_capacity(64 << 10, reader),
        pos: 0,
        limits,
    };
    walker.model()
}

/// Checks that the model in `bytes` keeps all its tensor data inside (no ONNX external data
/// anywhere: initializers, constants, subgraphs, functions), as an engine must before it loads
/// a model whose runtime would otherwise open paths named by the file.
pub fn ensure_self_contained(bytes: &[u8]) -> Result<(), OnnxError> {
    match read_signature(bytes, Limits::default()) {
        // A model missing a part was still walked to its end: nothing external in it.
        Ok(_) | Err(OnnxError::Incomplete(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
