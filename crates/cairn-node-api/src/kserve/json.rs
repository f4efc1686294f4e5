//! JSON tensor data: a `data` array streamed straight into tensor bytes (never a tree of values), and bytes back to JSON.

use super::*;
use serde_json::value::RawValue;

/// One JSON scalar of a `data` array.
#[derive(Clone, Copy)]
pub(super) enum Scalar {
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
pub(super) struct Sink<'n> {
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
    pub(super) fn push(&mut self, v: Scalar) -> Result<(), KserveError> {
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

    pub(super) fn convert(&mut self, v: Scalar) -> Result<(), KserveError> {
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
    pub(super) fn scalar<E: serde::de::Error>(&mut self, v: Scalar) -> Result<(), E> {
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

pub(super) fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, limit: usize) -> bool {
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
    json_array(dtype, data).value().expect("a JSON array")
}

/// [`bytes_to_json`] as JSON text, written straight from the bytes: what an answer carries.
/// Floats take their shortest round-tripping form for their own width (an f32 prints as the
/// f32 it is, so parsing it back as f32 is exact), integers their decimal form.
pub fn json_array(dtype: DataType, data: &[u8]) -> RawJson {
    let mut out = String::with_capacity(2 + data.len() * 4);
    out.push('[');
    let mut floats = ryu::Buffer::new();
    let mut ints = itoa::Buffer::new();
    macro_rules! each {
        ($t:ty, |$x:ident| $text:expr) => {
            for (i, c) in data.chunks_exact(size_of::<$t>()).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let $x = <$t>::from_le_bytes(c.try_into().expect("chunk"));
                out.push_str($text);
            }
        };
    }
    match dtype {
        DataType::Bool => each!(u8, |x| if x != 0 { "true" } else { "false" }),
        DataType::Uint8 => each!(u8, |x| ints.format(x)),
        DataType::Uint16 => each!(u16, |x| ints.format(x)),
        DataType::Uint32 => each!(u32, |x| ints.format(x)),
        DataType::Uint64 => each!(u64, |x| ints.format(x)),
        DataType::Int8 => each!(i8, |x| ints.format(x)),
        DataType::Int16 => each!(i16, |x| ints.format(x)),
        DataType::Int32 => each!(i32, |x| ints.format(x)),
        DataType::Int64 => each!(i64, |x| ints.format(x)),
        DataType::Fp16 => each!(half::f16, |x| if x.is_finite() {
            floats.format_finite(x.to_f64())
        } else {
            "null"
        }),
        DataType::Fp32 => each!(f32, |x| if x.is_finite() {
            floats.format_finite(x)
        } else {
            "null"
        }),
        DataType::Fp64 => each!(f64, |x| if x.is_finite() {
            floats.format_finite(x)
        } else {
            "null"
        }),
    }
    out.push(']');
    RawJson(RawValue::from_string(out).expect("a JSON array"))
}

/// JSON text kept as it was written or received (a tensor's `data`): serialized verbatim,
/// compared as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    /// The JSON value it holds.
    pub fn value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}
