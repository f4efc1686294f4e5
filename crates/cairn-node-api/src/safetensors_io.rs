//! Named tensors as safetensors bytes: the binary file form the CLI reads and writes, and how the
//! node keeps request and response payloads for verifiers.

use std::borrow::Cow;

use cairn_core::{DataType, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, View};

/// Why bytes are not a usable safetensors file.
#[derive(Debug, thiserror::Error)]
#[error("not a usable safetensors file: {0}")]
pub struct SafetensorsError(String);

fn dtype(d: DataType) -> Dtype {
    match d {
        DataType::Bool => Dtype::BOOL,
        DataType::Uint8 => Dtype::U8,
        DataType::Uint16 => Dtype::U16,
        DataType::Uint32 => Dtype::U32,
        DataType::Uint64 => Dtype::U64,
        DataType::Int8 => Dtype::I8,
        DataType::Int16 => Dtype::I16,
        DataType::Int32 => Dtype::I32,
        DataType::Int64 => Dtype::I64,
        DataType::Fp16 => Dtype::F16,
        DataType::Fp32 => Dtype::F32,
        DataType::Fp64 => Dtype::F64,
    }
}

fn data_type(d: Dtype) -> Option<DataType> {
    Some(match d {
        Dtype::BOOL => DataType::Bool,
        Dtype::U8 => DataType::Uint8,
        Dtype::U16 => DataType::Uint16,
        Dtype::U32 => DataType::Uint32,
        Dtype::U64 => DataType::Uint64,
        Dtype::I8 => DataType::Int8,
        Dtype::I16 => DataType::Int16,
        Dtype::I32 => DataType::Int32,
        Dtype::I64 => DataType::Int64,
        Dtype::F16 => DataType::Fp16,
        Dtype::F32 => DataType::Fp32,
        Dtype::F64 => DataType::Fp64,
        _ => return None,
    })
}

struct Ref<'a>(&'a Tensor, Vec<usize>);

impl View for Ref<'_> {
    fn dtype(&self) -> Dtype {
        dtype(self.0.dtype())
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.0.data())
    }
    fn data_len(&self) -> usize {
        self.0.data().len()
    }
}

/// Encodes tensors as a safetensors file.
pub fn encode(tensors: &[Tensor]) -> Vec<u8> {
    let views = tensors.iter().map(|t| {
        (
            t.name(),
            Ref(t, t.shape().iter().map(|&d| d as usize).collect()),
        )
    });
    safetensors::serialize(views, None).expect("tensors with consistent lengths serialize")
}

/// Decodes a safetensors file into tensors (sorted by name).
pub fn decode(bytes: &[u8]) -> Result<Vec<Tensor>, SafetensorsError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| SafetensorsError(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dt = data_type(view.dtype()).ok_or_else(|| {
            SafetensorsError(format!("`{name}` has unsupported dtype {:?}", view.dtype()))
        })?;
        let shape = view.shape().iter().map(|&d| d as u64).collect();
        out.push(
            Tensor::new(name, dt, shape, view.data().to_vec())
                .map_err(|e| SafetensorsError(e.to_string()))?,
        );
    }
    out.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = Tensor::new(
            "a",
            DataType::Int64,
            vec![2],
            vec![1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        let b = Tensor::new("b", DataType::Bool, vec![], vec![1]).unwrap();
        let bytes = encode(&[b.clone(), a.clone()]);
        assert_eq!(decode(&bytes).unwrap(), vec![a, b]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"garbage").is_err());
    }
}
