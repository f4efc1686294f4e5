//! Named tensors as they cross a Cairn boundary, and the canonical encoding receipts hash.
//!
//! A tensor's data is always raw little-endian bytes in row-major order, whatever wire form it
//! arrived in (JSON numbers, KServe binary, safetensors), so two encodings of the same values are
//! the same [`Tensor`] and hash alike.

use std::fmt;
use std::str::FromStr;

use alloy_primitives::B256;
use sha2::{Digest, Sha256};

/// Element types a Cairn tensor can hold, named as in the Open Inference Protocol (KServe v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// One byte per element, 0 or 1.
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    /// IEEE 754 half precision.
    Fp16,
    Fp32,
    Fp64,
}

impl DataType {
    /// Every supported type.
    pub const ALL: [DataType; 12] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    /// The KServe v2 name (`FP32`, `INT64`, …), also used in the canonical encoding.
    pub const fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// The type for an ONNX element type as `cairn-onnx` names it (`float`, `int64`, …), if
    /// Cairn carries it.
    pub fn from_onnx_name(name: &str) -> Option<DataType> {
        Some(match name {
            "float" => DataType::Fp32,
            "double" => DataType::Fp64,
            "float16" => DataType::Fp16,
            "bool" => DataType::Bool,
            "uint8" => DataType::Uint8,
            "uint16" => DataType::Uint16,
            "uint32" => DataType::Uint32,
            "uint64" => DataType::Uint64,
            "int8" => DataType::Int8,
            "int16" => DataType::Int16,
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataType {
    type Err = TensorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| TensorError::UnknownDataType(s.chars().take(32).collect()))
    }
}

/// Why a tensor or a set of tensors is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// Not one of the KServe v2 datatypes Cairn runs.
    #[error(
        "datatype `{0}` is not supported; use one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64"
    )]
    UnknownDataType(String),
    /// The data does not hold exactly `shape`'s element count.
    #[error(
        "tensor `{name}`: shape {shape:?} needs {expected} bytes of {dtype} data, got {actual}"
    )]
    DataLength {
        name: String,
        dtype: DataType,
        shape: Vec<u64>,
        expected: u128,
        actual: usize,
    },
    /// Two tensors share a name.
    #[error("tensor name `{0}` appears more than once")]
    DuplicateName(String),
    /// Names must be non-empty and short enough to log.
    #[error("tensor names must be 1 to 256 bytes long")]
    BadName,
}

/// A named tensor: element type, shape and raw little-endian row-major data.
#[derive(Clone, PartialEq, Eq)]
pub struct Tensor {
    name: String,
    dtype: DataType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Tensor {
    /// A tensor whose data length matches its shape and type.
    pub fn new(
        name: impl Into<String>,
        dtype: DataType,
        shape: Vec<u64>,
        data: Vec<u8>,
    ) -> Result<Self, TensorError> {
        let name = name.into();
        if name.is_empty() || name.len() > 256 {
            return Err(TensorError::BadName);
        }
        let expected = element_count(&shape).saturating_mul(dtype.size() as u128);
        if expected != data.len() as u128 {
            return Err(TensorError::DataLength {
                name,
                dtype,
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            name,
            dtype,
            shape,
            data,
        })
    }

    /// The tensor's name (an ONNX graph input or output name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Element type.
    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Raw little-endian, row-major bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the raw bytes out.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn len(&self) -> u64 {
        (self.data.len() / self.dtype.size()) as u64
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Product of `shape`, in u128 so that hostile shapes cannot overflow before they are refused.
pub fn element_count(shape: &[u64]) -> u128 {
    shape
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .unwrap_or(u128::MAX)
}

/// Refuses a set of tensors with a repeated name.
pub fn check_unique_names(tensors: &[Tensor]) -> Result<(), TensorError> {
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name()).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(TensorError::DuplicateName(w[0].to_owned())),
        None => Ok(()),
    }
}

/// Domain separator at the start of the canonical encoding.
const CANONICAL_TAG: &[u8] = b"cairn.tensors.v1\0";

/// SHA-256 of the canonical encoding of a set of named tensors: what receipts bind as input and
/// output hashes.
///
/// The encoding is `"cairn.tensors.v1\0"`, the tensor count as u32, then each tensor in byte
/// order of its name: name length (u32) and UTF-8 bytes, datatype name length (u32) and ASCII
/// bytes (`FP32`), rank (u32), each dimension (u64), data length (u64) and the raw little-endian
/// data. Integers are little-endian. The order of `tensors` does not matter.
pub fn tensors_hash(tensors: &[Tensor]) -> B256 {
    let mut sorted: Vec<&Tensor> = tensors.iter().collect();
    sorted.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut h = Sha256::new();
    h.update(CANONICAL_TAG);
    h.update((sorted.len() as u32).to_le_bytes());
    for t in sorted {
        h.update((t.name.len() as u32).to_le_bytes());
        h.update(t.name.as_bytes());
        let dtype = t.dtype.name();
        h.update((dtype.len() as u32).to_le_bytes());
        h.update(dtype.as_bytes());
        h.update((t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            h.update(d.to_le_bytes());
        }
        h.update((t.data.len() as u64).to_le_bytes());
        h.update(&t.data);
    }
    B256::from(<[u8; 32]>::from(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(name: &str, shape: Vec<u64>, v: &[f32]) -> Tensor {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Tensor::new(name, DataType::Fp32, shape, data).unwrap()
    }

    #[test]
    fn hash_ignores_order_and_binds_every_part() {
        let a = f32s("a", vec![2], &[1.0, 2.0]);
        let b = f32s("b", vec![1], &[3.0]);
        let h = tensors_hash(&[a.clone(), b.clone()]);
        assert_eq!(h, tensors_hash(&[b.clone(), a.clone()]));
        // Name, shape, dtype and data each change the hash.
        assert_ne!(
            h,
            tensors_hash(&[f32s("c", vec![2], &[1.0, 2.0]), b.clone()])
        );
        assert_ne!(
            h,
            tensors_hash(&[f32s("a", vec![2, 1], &[1.0, 2.0]), b.clone()])
        );
        assert_ne!(
            h,
            tensors_hash(&[f32s("a", vec![2], &[1.0, 2.5]), b.clone()])
        );
        let as_i32 = Tensor::new("a", DataType::Int32, vec![2], a.data().to_vec()).unwrap();
        assert_ne!(h, tensors_hash(&[as_i32, b.clone()]));
        assert_ne!(h, tensors_hash(&[a]));
    }

    #[test]
    fn known_answer() {
        // Computed independently with Python: hashlib.sha256 over the documented layout.
        let t = f32s("x", vec![1, 2], &[1.0, -2.0]);
        assert_eq!(
            tensors_hash(&[t]).to_string(),
            "0x7a7287a30502a87a3ea3af1afb8c9d22ea84ffef78f98a64a89445f32e632cbc"
        );
    }

    #[test]
    fn refuses_length_mismatch_and_overflowing_shapes() {
        let err = Tensor::new("x", DataType::Fp32, vec![3], vec![0; 8]).unwrap_err();
        assert!(err.to_string().contains("needs 12 bytes"), "{err}");
        let huge = Tensor::new("x", DataType::Fp64, vec![u64::MAX, u64::MAX, 4], vec![]);
        assert!(huge.is_err());
        assert!(Tensor::new("", DataType::Fp32, vec![0], vec![]).is_err());
        let a = f32s("a", vec![1], &[1.0]);
        assert_eq!(
            check_unique_names(&[a.clone(), a]),
            Err(TensorError::DuplicateName("a".into()))
        );
    }

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(d.name().parse::<DataType>().unwrap(), d);
        }
        assert!("STRING".parse::<DataType>().is_err());
        assert_eq!(DataType::from_onnx_name("float"), Some(DataType::Fp32));
        assert_eq!(DataType::from_onnx_name("string"), None);
    }
}
