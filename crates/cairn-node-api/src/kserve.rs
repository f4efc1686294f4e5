//! The Open Inference Protocol (KServe v2) wire format: JSON tensors and the binary-data
//! extension (`Inference-Header-Content-Length`), decoded into [`Tensor`]s with every size checked.

use cairn_core::{DataType, Tensor, tensor::element_count};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod json;
pub use json::*;

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
#[derive(Debug, Serialize, Deserialize)]
pub struct InferRequest {
    /// Client's request id, echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Input tensors.
    pub inputs: Vec<RequestInput>,
    /// Outputs wanted (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
    /// Request parameters (`binary_data_output`; others are skipped unread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<RequestParams>,
}

impl InferRequest {
    /// A request carrying `inputs` as JSON numbers, outputs asked in binary.
    pub fn json(inputs: &[Tensor]) -> Self {
        Self::new(inputs, |t| RequestInput {
            name: t.name().to_owned(),
            shape: t.shape().iter().map(|&d| d as i64).collect(),
            datatype: t.dtype().name().to_owned(),
            parameters: None,
            data: Some(json_array(t.dtype(), t.data()).0),
        })
    }

    /// The JSON part of a binary-extension request: each input's bytes follow it in order.
    pub fn binary(inputs: &[Tensor]) -> Self {
        Self::new(inputs, |t| RequestInput {
            name: t.name().to_owned(),
            shape: t.shape().iter().map(|&d| d as i64).collect(),
            datatype: t.dtype().name().to_owned(),
            parameters: Some(InputParams {
                binary_data_size: Some(t.data().len() as u64),
            }),
            data: None,
        })
    }

    fn new(inputs: &[Tensor], input: impl Fn(&Tensor) -> RequestInput) -> Self {
        Self {
            id: None,
            inputs: inputs.iter().map(input).collect(),
            outputs: None,
            parameters: Some(RequestParams {
                binary_data_output: Some(true),
            }),
        }
    }
}

/// The request parameters Cairn reads. Every other key is skipped without being built into a
/// value (a body of parameters costs no more memory than its text).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RequestParams {
    /// Outputs in binary unless listed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_data_output: Option<bool>,
}

/// The input parameters Cairn reads.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InputParams {
    /// The input's bytes follow the JSON part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_data_size: Option<u64>,
}

/// The output parameters Cairn reads.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OutputParams {
    /// This output in binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_data: Option<bool>,
}

/// One input tensor on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestInput {
    /// Graph input name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// KServe datatype (`FP32`, …).
    pub datatype: String,
    /// `binary_data_size` when the data follows the JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<InputParams>,
    /// Row-major values, flat or nested: kept as text and converted straight into the
    /// tensor's bytes once its type and size are known (never a tree of JSON values, which
    /// would take many times the body's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<serde_json::value::RawValue>>,
}

/// One requested output.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestOutput {
    /// Graph output name.
    pub name: String,
    /// `binary_data: true` asks for the binary form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    pub data: Option<RawJson>,
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
        let (dtype, shape) = dtype_and_shape(&input)?;
        let count = element_count(&shape);
        total = total.saturating_add(count);
        if total > limits.max_elements as u128 {
            return Err(KserveError::TooManyElements(format!(
                "the inputs hold more than {} elements; send fewer or smaller tensors",
                limits.max_elements
            )));
        }
        let data = input_data(
            &input,
            dtype,
            count as usize,
            json_len.is_some(),
            &mut binary,
        )?;
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

fn dtype_and_shape(input: &RequestInput) -> Result<(DataType, Vec<u64>), KserveError> {
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
            KserveError::InvalidShape(format!("input `{}` has a negative dimension", input.name))
        })?;
    Ok((dtype, shape))
}

/// An input's bytes: its JSON `data`, or its share of the binary tail (taken off `binary`).
fn input_data(
    input: &RequestInput,
    dtype: DataType,
    count: usize,
    has_binary: bool,
    binary: &mut &[u8],
) -> Result<Vec<u8>, KserveError> {
    let binary_size = input.parameters.as_ref().and_then(|p| p.binary_data_size);
    match (binary_size, &input.data) {
        (Some(_), Some(_)) => Err(KserveError::BadRequest(format!(
            "input `{}` has both `data` and binary_data_size",
            input.name
        ))),
        (Some(_), None) if !has_binary => Err(KserveError::BadRequest(format!(
            "input `{}` declares binary data but the request has no {HEADER_LENGTH} header",
            input.name
        ))),
        (Some(size), None) => {
            let size = size as usize;
            if size > binary.len() {
                return Err(KserveError::BadRequest(format!(
                    "input `{}` declares {size} binary bytes but only {} remain: the body is truncated",
                    input.name,
                    binary.len()
                )));
            }
            let (this, rest) = binary.split_at(size);
            *binary = rest;
            Ok(this.to_vec())
        }
        (None, Some(values)) => raw_values_to_bytes(&input.name, dtype, values, count),
        (None, None) => Err(KserveError::BadRequest(format!(
            "input `{}` has no data",
            input.name
        ))),
    }
}

#[cfg(test)]
mod tests;
