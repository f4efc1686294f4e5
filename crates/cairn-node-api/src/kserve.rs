//! The Open Inference Protocol (KServe v2) wire format: JSON tensors and the binary-data
//! extension (`Inference-Header-Content-Length`), decoded into [`Tensor`]s with every size checked.

use cairn_core::{DataType, Tensor, tensor::element_count};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a body is not a KServe v2 request this node can run. Each variant is one machine code.
#[derive(Debug, thiserror::Error)]
pub enum KserveError {
    /// Malformed body or parameters (`bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// Unknown datatype (`invalid_datatype`).
    #[error("{0}")]
    InvalidDatatype(String),
    /// Shape does not fit the data (`invalid_shape`).
    #[error("{0}")]
    InvalidShape(String),
    /// A value the datatype cannot hold (`invalid_data`).
    #[error("{0}")]
    InvalidData(String),
    /// Too many tensor elements (`too_many_elements`).
    #[error("{0}")]
    TooManyElements(String),
}

impl KserveError {
    /// The stable machine code the node answers with.
    pub fn code(&self) -> &'static str {
        match self {
            KserveError::BadRequest(_) => "bad_request",
            KserveError::InvalidDatatype(_) => "invalid_datatype",
            KserveError::InvalidShape(_) => "invalid_shape",
            KserveError::InvalidData(_) => "invalid_data",
            KserveError::TooManyElements(_) => "too_many_elements",
        }
    }
}

/// Header naming the JSON part's length in a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// An inference request.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Client's request id, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Input tensors.
    pub inputs: Vec<RequestInput>,
    /// Outputs wanted (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
    /// Request parameters (`binary_data_output`; others are skipped unread).
    #[serde(default)]
    pub parameters: Option<RequestParams>,
}

/// The request parameters Cairn reads. Every other key is skipped without being built into a
/// value (a body of parameters costs no more memory than its text).
#[derive(Debug, Default, Deserialize)]
pub struct RequestParams {
    /// Outputs in binary unless listed otherwise.
    #[serde(default)]
    pub binary_data_output: Option<bool>,
}

/// The input parameters Cairn reads.
#[derive(Debug, Default, Deserialize)]
pub struct InputParams {
    /// The input's bytes follow the JSON part.
    #[serde(default)]
    pub binary_data_size: Option<u64>,
}

/// The output parameters Cairn reads.
#[derive(Debug, Default, Deserialize)]
pub struct OutputParams {
    /// This output in binary.
    #[serde(default)]
    pub binary_data: Option<bool>,
}

/// One input tensor on the wire.
#[derive(Debug, Deserialize)]
pub struct RequestInput {
    /// Graph input name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// KServe datatype (`FP32`, …).
    pub datatype: String,
    /// `binary_data_size` when the data follows the JSON.
    #[serde(default)]
    pub parameters: Option<InputParams>,
    /// Row-major values, flat or nested: kept as text and converted straight into the
    /// tensor's bytes once its type and size are known (never a tree of JSON values, which
    /// would take many times the body's size).
    #[serde(default)]
    pub data: Option<Box<serde_json::value::RawValue>>,
}

/// One requested output.
#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    /// Graph output name.
    pub name: String,
    /// `binary_data: true` asks for the binary form.
    #[serde(default)]
    pub parameters: Option<OutputParams>,
}

/// A response output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponseOutput {
    /// Name.
    pub name: String,
    /// KServe datatype.
    pub datatype: String,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// `binary_data_size` when the data is appended in binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<OutputBinary>,
    /// Values (JSON form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

/// The parameters of an output sent in binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputBinary {
    /// Bytes of this output after the JSON part, in output order.
    pub binary_data_size: u64,
}

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Most elements over all input tensors.
    pub max_elements: u64,
}

/// A decoded request: tensors plus what the client asked back.
pub struct Decoded {
    /// Client id.
    pub id: Option<String>,
    /// Inputs, in request order.
    pub inputs: Vec<Tensor>,
    /// Outputs asked for, with whether each is wanted in binary; `None` = all.
    pub outputs: Option<Vec<(String, bool)>>,
    /// Default binary flag for outputs not listed.
    pub binary_output: bool,
}

/// Decodes a body: JSON alone, or JSON of `json_len` bytes followed by binary tensor data.
pub fn decode(
    body: &[u8],
    json_len: Option<usize>,
    limits: DecodeLimits,
) -> Result<Decoded, KserveError> {
    let (head, mut binary) = match json_len {
        Some(n) if n > body.len() => {
            return Err(KserveError::BadRequest(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: InferRequest = serde_json::from_slice(head).map_err(|e| {
        KserveError::BadRequest(format!("the request is not valid KServe v2 JSON: {e}"))
    })?;
    let mut total: u128 = 0;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let dtype: DataType = input
            .datatype
            .parse()
            .map_err(|e: cairn_core::TensorError| {
                KserveError::InvalidDatatype(format!("input `{}`: {e}", input.name))
            })?;
        let shape = input
            .shape
            .iter()
            .map(|&d| u64::try_from(d))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| {
                KserveError::InvalidShape(format!(
                    "input `{}` has a negative dimension",
                    input.name
                ))
            })?;
        let count = element_count(&shape);
        total = total.saturating_add(count);
        if total > limits.max_elements as u128 {
            return Err(KserveError::TooManyElements(format!(
                "the inputs hold more than {} elements; send fewer or smaller tensors",
                limits.max_elements
            )));
        }
        let count = count as usize;
        let binary_size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
        let data = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(KserveError::BadRequest(format!(
                    "input `{}` has both `data` and binary_data_size",
                    input.name
                )));
            }
            (Some(size), None) => {
                if json_len.is_none() {
                    return Err(KserveError::BadRequest(format!(
                        "input `{}` declares binary data but the request has no {HEADER_LENGTH} header",
                        input.name
                    )));
                }
                let size = size as usize;
                if size > binary.len() {
                    return Err(KserveError::BadRequest(format!(
                        "input `{}` declares {size} binary bytes but only {} remain: the body is truncated",
                        input.name,
                        binary.len()
                    )));
                }
                let (this, rest) = binary.split_at(size);
                binary = rest;
                this.to_vec()
            }
            (None, Some(values)) => raw_values_to_bytes(&input.name, dtype, &values, count)?,
            (None, None) => {
                return Err(KserveError::BadRequest(format!(
                    "input `{}` has no data",
                    input.name
                )));
            }
        };
        let t = Tensor::new(input.name, dtype, shape, data)
            .map_err(|e| KserveError::InvalidShape(e.to_string()))?;
        inputs.push(t);
    }
    if !binary.is_empty() {
        return Err(KserveError::BadRequest(format!(
            "{} binary bytes follow the JSON that no input claims",
            binary.len()
        )));
    }
    cairn_core::tensor::check_unique_names(&inputs)
        .map_err(|e| KserveError::BadRequest(e.to_string()))?;
    let binary_output = req
        .parameters
        .as_ref()
        .and_then(|p| p.binary_data_output)
        .unwrap_or(false);
    let outputs = req.outputs.map(|outs| {
        outs.into_iter()
            .map(|o| {
                let bin = o
                    .parameters
                    .as_ref()
                    .and_then(|p| p.binary_data)
                    .unwrap_or(binary_output);
                (o.name, bin)
            })
            .collect()
    });
    Ok(Decoded {
        id: req.id,
        inputs,
        outputs,
        binary_output,
    })
}

/// One JSON scalar of a `data` array.
#[derive(Clone, Copy)]
enum Scalar {
    U(u64),
    I(i64),
    F(f64),
    B(bool),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::U(v) => write!(f, "{v}"),
            Scalar::I(v) => write!(f, "{v}"),
            Scalar::F(v) => write!(f, "{v}"),
            Scalar::B(v) => write!(f, "{v}"),
        }
    }
}

/// Streams the scalars of a (nested) JSON array into the bytes of one tensor. A value of the
/// wrong kind is remembered and counting goes on: a wrong element count is reported first.
struct Sink<'n> {
    name: &'n str,
    dtype: DataType,
    count: usize,
    seen: usize,
    out: Vec<u8>,
    err: Option<KserveError>,
    bad: Option<KserveError>,
}

impl Sink<'_> {
    /// Takes the next value; `Err` only when there are more values than the shape holds.
    fn push(&mut self, v: Scalar) -> Result<(), KserveError> {
        if self.seen >= self.count {
            self.seen += 1;
            return Err(KserveError::InvalidShape(format!(
                "input `{}`: its shape holds {} elements but `data` has more than {}",
                self.name, self.count, self.count
            )));
        }
        if self.bad.is_none()
            && let Err(e) = self.convert(v)
        {
            self.bad = Some(e);
        }
        self.seen += 1;
        Ok(())
    }

    fn convert(&mut self, v: Scalar) -> Result<(), KserveError> {
        let i = self.seen;
        let (name, dtype) = (self.name, self.dtype);
        let bad = || {
            KserveError::InvalidData(format!(
                "input `{name}`: element {i} ({v}) is not a valid {dtype} value"
            ))
        };
        macro_rules! int {
            ($t:ty) => {{
                let x: $t = match v {
                    Scalar::U(u) => <$t>::try_from(u).map_err(|_| bad())?,
                    Scalar::I(s) => <$t>::try_from(s).map_err(|_| bad())?,
                    _ => return Err(bad()),
                };
                self.out.extend_from_slice(&x.to_le_bytes());
            }};
        }
        let float = || match v {
            Scalar::U(u) => Ok(u as f64),
            Scalar::I(s) => Ok(s as f64),
            Scalar::F(f) => Ok(f),
            Scalar::B(_) => Err(bad()),
        };
        match dtype {
            DataType::Bool => self.out.push(match v {
                Scalar::B(b) => b as u8,
                Scalar::U(0) | Scalar::I(0) => 0,
                Scalar::U(1) | Scalar::I(1) => 1,
                _ => return Err(bad()),
            }),
            DataType::Uint8 => int!(u8),
            DataType::Uint16 => int!(u16),
            DataType::Uint32 => int!(u32),
            DataType::Uint64 => int!(u64),
            DataType::Int8 => int!(i8),
            DataType::Int16 => int!(i16),
            DataType::Int32 => int!(i32),
            DataType::Int64 => int!(i64),
            DataType::Fp16 => {
                let x = float()?;
                self.out
                    .extend_from_slice(&half::f16::from_f64(x).to_le_bytes())
            }
            DataType::Fp32 => {
                let x = float()?;
                self.out.extend_from_slice(&(x as f32).to_le_bytes())
            }
            DataType::Fp64 => {
                let x = float()?;
                self.out.extend_from_slice(&x.to_le_bytes())
            }
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut Sink<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Sink<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("numbers or booleans, in flat or nested arrays")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(Scalar::U(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Scalar::I(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Scalar::F(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Scalar::B(v))
    }
}

impl Sink<'_> {
    fn scalar<E: serde::de::Error>(&mut self, v: Scalar) -> Result<(), E> {
        self.push(v).map_err(|e| {
            let m = e.to_string();
            self.err = Some(e);
            E::custom(m)
        })
    }
}

/// Converts the JSON text of a `data` field (flat or nested arrays) to raw little-endian bytes
/// of `dtype`, in one pass and with memory bounded by the tensor's own size.
pub(crate) fn raw_values_to_bytes(
    name: &str,
    dtype: DataType,
    raw: &serde_json::value::RawValue,
    count: usize,
) -> Result<Vec<u8>, KserveError> {
    let mut sink = Sink {
        name,
        dtype,
        count,
        seen: 0,
        out: Vec::with_capacity(count.saturating_mul(dtype.size()).min(64 << 20)),
        err: None,
        bad: None,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let parsed = serde::de::DeserializeSeed::deserialize(&mut sink, &mut de);
    if let Some(e) = sink.err.take() {
        return Err(e);
    }
    if let Err(e) = parsed {
        return Err(KserveError::InvalidData(format!(
            "input `{name}`: `data` must hold numbers or booleans in (nested) arrays: {e}"
        )));
    }
    if sink.seen != count {
        return Err(KserveError::InvalidShape(format!(
            "input `{name}`: its shape holds {count} elements but `data` has {}",
            sink.seen
        )));
    }
    match sink.bad {
        Some(e) => Err(e),
        None => Ok(sink.out),
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, limit: usize) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|i| flatten(i, out, limit)),
        other => {
            out.push(other);
            out.len() <= limit
        }
    }
}

/// Converts JSON values (flat or nested) to raw little-endian bytes of `dtype`.
pub(crate) fn json_values_to_bytes(
    name: &str,
    dtype: DataType,
    values: &Value,
    count: usize,
) -> Result<Vec<u8>, KserveError> {
    let mut flat = Vec::with_capacity(count.min(1 << 20));
    if !flatten(values, &mut flat, count) || flat.len() != count {
        return Err(KserveError::InvalidShape(format!(
            "input `{name}`: its shape holds {count} elements but `data` has {}",
            if flat.len() > count {
                format!("more than {count}")
            } else {
                flat.len().to_string()
            }
        )));
    }
    let mut sink = Sink {
        name,
        dtype,
        count,
        seen: 0,
        out: Vec::with_capacity(count * dtype.size()),
        err: None,
        bad: None,
    };
    for (i, v) in flat.iter().enumerate() {
        let scalar = match v {
            Value::Bool(b) => Scalar::B(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Scalar::U(u),
                (_, Some(x), _) => Scalar::I(x),
                (_, _, Some(f)) => Scalar::F(f),
                _ => unreachable!("a JSON number is one of the three"),
            },
            other => {
                return Err(KserveError::InvalidData(format!(
                    "input `{name}`: element {i} ({other}) is not a valid {dtype} value"
                )));
            }
        };
        sink.push(scalar)?;
    }
    match sink.bad {
        Some(e) => Err(e),
        None => Ok(sink.out),
    }
}

/// Raw little-endian bytes of `dtype` as a flat JSON array (non-finite floats become `null`,
/// which JSON cannot otherwise carry; ask for binary output to get them exactly).
pub fn bytes_to_json(dtype: DataType, data: &[u8]) -> Value {
    macro_rules! each {
        ($t:ty, $f:expr) => {
            Value::Array(
                data.chunks_exact(size_of::<$t>())
                    .map(|c| $f(<$t>::from_le_bytes(c.try_into().expect("chunk"))))
                    .collect(),
            )
        };
    }
    let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    match dtype {
        DataType::Bool => Value::Array(data.iter().map(|&b| Value::Bool(b != 0)).collect()),
        DataType::Uint8 => each!(u8, Value::from),
        DataType::Uint16 => each!(u16, Value::from),
        DataType::Uint32 => each!(u32, Value::from),
        DataType::Uint64 => each!(u64, Value::from),
        DataType::Int8 => each!(i8, Value::from),
        DataType::Int16 => each!(i16, Value::from),
        DataType::Int32 => each!(i32, Value::from),
        DataType::Int64 => each!(i64, Value::from),
        DataType::Fp16 => each!(half::f16, |x: half::f16| float(x.to_f64())),
        // f32 through its shortest decimal form, so that parsing it back as f32 is exact.
        DataType::Fp32 => each!(f32, |x: f32| if x.is_finite() {
            serde_json::from_str(&x.to_string()).unwrap_or(Value::Null)
        } else {
            Value::Null
        }),
        DataType::Fp64 => each!(f64, float),
    }
}

#[cfg(test)]
mod tests;
