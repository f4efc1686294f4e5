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

struct Walker<R> {
    r: BufReader<R>,
    pos: u64,
    limits: Limits,
}

impl<R: Read> Walker<R> {
    fn malformed<T>(&self, what: impl Into<String>) -> Result<T, OnnxError> {
        Err(OnnxError::Malformed {
            offset: self.pos,
            what: what.into(),
        })
    }

    fn byte(&mut self) -> Result<u8, OnnxError> {
        let mut b = [0u8];
        match self.r.read_exact(&mut b) {
            Ok(()) => {
                self.pos += 1;
                Ok(b[0])
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(OnnxError::Truncated(self.pos))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return self.malformed("varint overflows 64 bits");
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.malformed("varint longer than 10 bytes")
    }

    /// The next field's number and wire type, or `None` at `end` (or at end of stream when
    /// `end` is `None`).
    fn next_field(&mut self, end: Option<u64>) -> Result<Option<(u64, u8)>, OnnxError> {
        match end {
            Some(end) if self.pos == end => return Ok(None),
            Some(end) if self.pos > end => return self.malformed("field overruns its message"),
            Some(_) => {}
            None => {
                if self.r.fill_buf()?.is_empty() {
                    return Ok(None);
                }
            }
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        if field == 0 {
            return self.malformed("field number 0");
        }
        Ok(Some((field, wire)))
    }

    /// Reads a length prefix and returns where the field ends, checked against the parent.
    fn len_end(&mut self, parent_end: Option<u64>) -> Result<u64, OnnxError> {
        let len = self.varint()?;
        let end = self.pos.checked_add(len);
        match (end, parent_end) {
            (Some(e), Some(p)) if e <= p => Ok(e),
            (Some(e), None) => Ok(e),
            _ => self.malformed(format!("length {len} overruns its message")),
        }
    }

    fn skip_bytes(&mut self, n: u64) -> Result<(), OnnxError> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied < n {
            return Err(OnnxError::Truncated(self.pos));
        }
        Ok(())
    }

    fn skip(&mut self, wire: u8, parent_end: Option<u64>) -> Result<(), OnnxError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.skip_bytes(8),
            I32 => self.skip_bytes(4),
            LEN => {
                let end = self.len_end(parent_end)?;
                self.skip_bytes(end - self.pos)
            }
            other => self.malformed(format!("unsupported protobuf wire type {other}")),
        }
    }

    fn expect(&self, field: u64, wire: u8, want: u8) -> Result<(), OnnxError> {
        if wire == want {
            Ok(())
        } else {
            self.malformed(format!(
                "field {field} has wire type {wire}, expected {want}"
            ))
        }
    }

    /// Reads a length-delimited field into memory, refusing more than `cap` bytes.
    fn bytes(
        &mut self,
        parent_end: Option<u64>,
        cap: u64,
        what: &str,
    ) -> Result<Vec<u8>, OnnxError> {
        let end = self.len_end(parent_end)?;
        let len = end - self.pos;
        if len > cap {
            return Err(OnnxError::Limit(format!(
                "{what} is {len} bytes, more than the {cap} allowed"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        match self.r.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(OnnxError::Truncated(self.pos));
            }
            Err(e) => return Err(e.into()),
        }
        self.pos = end;
        Ok(buf)
    }

    fn string(&mut self, parent_end: Option<u64>, what: &str) -> Result<String, OnnxError> {
        let bytes = self.bytes(parent_end, self.limits.max_string_bytes, what)?;
        String::from_utf8(bytes).or_else(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    fn decode<M: Message + Default>(
        &mut self,
        end: Option<u64>,
        what: &str,
    ) -> Result<M, OnnxError> {
        let offset = self.pos;
        let bytes = self.bytes(end, self.limits.max_message_bytes, what)?;
        M::decode(bytes.as_slice()).map_err(|e| OnnxError::Malformed {
            offset,
            what: format!("{what}: {e}"),
        })
    }

    /// Walks a `GraphProto` that is not the main graph's signature (a subgraph, a training
    /// graph): only to refuse external data in it.
    fn scan_graph(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match (field, wire) {
                (1, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_node(e, depth)?;
                }
                (5, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.tensor_name(e)?;
                }
                (15, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_sparse(e)?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        Ok(())
    }

    /// A `NodeProto` (field 5: attributes) or a `FunctionProto` (field 7: nodes).
    fn scan_node(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if field == 5 && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.scan_attribute(e, depth)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    fn scan_function(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if field == 7 && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.scan_node(e, depth)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    /// An `AttributeProto`: tensors (5, 10), graphs (6, 11), sparse tensors (22, 23).
    fn scan_attribute(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match (field, wire) {
                (5 | 10, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.tensor_name(e)?;
                }
                (6 | 11, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_graph(e, depth)?;
                }
                (22 | 23, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_sparse(e)?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        Ok(())
    }

    /// A `SparseTensorProto`: values (1) and indices (2) are tensors.
    fn scan_sparse(&mut self, end: u64) -> Result<(), OnnxError> {
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if (field == 1 || field == 2) && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.tensor_name(e)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    /// A `TrainingInfoProto`: its initialization (1) and algorithm (2) graphs.
    fn scan_training(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if (field == 1 || field == 2) && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.scan_graph(e, depth)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    fn deeper(&self, depth: u32) -> Result<u32, OnnxError> {
        if depth >= 64 {
            return Err(OnnxError::Limit(
                "subgraphs nested more than 64 deep".into(),
            ));
        }
        Ok(depth + 1)
    }

    fn model(&mut self) -> Result<OnnxSignature, OnnxError> {
        let mut ir_version = None;
        let mut producer_name = String::new();
        let mut producer_version = String::new();
        let mut opsets = Vec::new();
        let mut graph = None;
        while let Some((field, wire)) = self.next_field(None)? {
            match field {
                1 => {
                    self.expect(field, wire, VARINT)?;
                    ir_version = Some(self.varint()? as i64);
                }
                2 => {
                    self.expect(field, wire, LEN)?;
                    producer_name = self.string(None, "producer_name")?;
                }
                3 => {
                    self.expect(field, wire, LEN)?;
                    producer_version = self.string(None, "producer_version")?;
                }
                7 => {
                    self.expect(field, wire, LEN)?;
                    if graph.is_some() {
                        return self.malformed("the model has two graphs");
                    }
                    let end = self.len_end(None)?;
                    graph = Some(self.graph(end)?);
                }
                20 => {
                    self.expect(field, wire, LEN)?;
                    let end = self.len_end(None)?;
                    self.scan_training(end, 0)?;
                }
                25 => {
                    self.expect(field, wire, LEN)?;
                    let end = self.len_end(None)?;
                    self.scan_function(end, 0)?;
                }
                8 => {
                    self.expect(field, wire, LEN)?;
                    let op: proto::OperatorSetIdProto = self.decode(None, "opset_import")?;
                    opsets.push(Opset {
                        domain: op.domain,
                        version: op.version,
                    });
                    self.check_count(opsets.len(), "opset imports")?;
                }
                _ => self.skip(wire, None)?,
            }
        }
        let ir_version = ir_version.ok_or(OnnxError::Incomplete("no ir_version"))?;
        let (inputs, outputs, initializers) = graph.ok_or(OnnxError::Incomplete("no graph"))?;
        if opsets.is_empty() {
            return Err(OnnxError::Incomplete("no opset_import"));
        }
        if outputs.is_empty() {
            return Err(OnnxError::Incomplete("the graph has no outputs"));
        }
        let inputs = inputs
            .into_iter()
            .filter(|v: &ValueInfo| !initializers.contains(&v.name))
            .collect();
        Ok(OnnxSignature {
            ir_version,
            producer_name,
            producer_version,
            opsets,
            inputs,
            outputs,
        })
    }

    #[allow(clippy::type_complexity)]
    fn graph(
        &mut self,
        end: u64,
    ) -> Result<(Vec<ValueInfo>, Vec<ValueInfo>, HashSet<String>), OnnxError> {
        let (mut inputs, mut outputs, mut initializers) = (Vec::new(), Vec::new(), HashSet::new());
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match field {
                1 if wire == LEN => {
                    let node_end = self.len_end(Some(end))?;
                    self.scan_node(node_end, 0)?;
                }
                15 if wire == LEN => {
                    let sparse_end = self.len_end(Some(end))?;
                    self.scan_sparse(sparse_end)?;
                }
                5 => {
                    self.expect(field, wire, LEN)?;
                    let tensor_end = self.len_end(Some(end))?;
                    if let Some(name) = self.tensor_name(tensor_end)? {
                        initializers.insert(name);
                        if initializers.len() > self.limits.max_initializers {
                            return Err(OnnxError::Limit(format!(
                                "more than {} initializers",
                                self.limits.max_initializers
                            )));
                        }
                    }
                }
                11 | 12 => {
                    self.expect(field, wire, LEN)?;
                    let what = if field == 11 {
                        "graph input"
                    } else {
                        "graph output"
                    };
                    let info: proto::ValueInfoProto = self.decode(Some(end), what)?;
                    let value = self.value_info(info, what)?;
                    let list = if field == 11 {
                        &mut inputs
                    } else {
                        &mut outputs
                    };
                    list.push(value);
                    self.check_count(list.len(), "graph inputs or outputs")?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        Ok((inputs, outputs, initializers))
    }

    /// Streams through a `TensorProto`, keeping only its name (field 8), and refuses one whose
    /// data lives in an external file (`data_location` 14 = EXTERNAL, or `external_data` 13).
    fn tensor_name(&mut self, end: u64) -> Result<Option<String>, OnnxError> {
        let mut name = None;
        let mut external = false;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match (field, wire) {
                (8, LEN) => name = Some(self.string(Some(end), "tensor name")?),
                (14, VARINT) => external |= self.varint()? != 0,
                (13, LEN) => {
                    external = true;
                    self.skip(wire, Some(end))?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        if external {
            return Err(OnnxError::ExternalData(
                name.unwrap_or_else(|| "(unnamed)".into()),
            ));
        }
        Ok(name)
    }

    fn check_count(&self, n: usize, what: &str) -> Result<(), OnnxError> {
        if n > self.limits.max_entries {
            Err(OnnxError::Limit(format!(
                "more than {} {what}",
                self.limits.max_entries
            )))
        } else {
            Ok(())
        }
    }

    fn value_info(&self, info: proto::ValueInfoProto, what: &str) -> Result<ValueInfo, OnnxError> {
        if info.name.is_empty() {
            return self.malformed(format!("a {what} has no name"));
        }
        let ty = info.r#type.unwrap_or_default();
        let (elem_type, shape) = match &ty.value {
            Some(proto::TypeValue::Tensor(t)) | Some(proto::TypeValue::SparseTensor(t)) => {
                let shape = match &t.shape {
                    Some(s) if s.dim.len() > self.limits.max_rank => {
                        return Err(OnnxError::Limit(format!(
                            "{what} `{}` has rank {}, more than {}",
                            info.name,
                            s.dim.len(),
                            self.limits.max_rank
                        )));
                    }
                    Some(s) => Some(s.dim.iter().map(dim).collect()),
                    None => None,
                };
                (Some(elem_name(t.elem_type)), shape)
            }
            _ => (None, None),
        };
        Ok(ValueInfo {
            name: info.name,
            type_name: type_name(&ty),
            elem_type,
            shape,
        })
    }
}

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
