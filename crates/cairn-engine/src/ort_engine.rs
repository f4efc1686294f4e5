//! The ONNX Runtime engine, through `ort` with the library loaded at run time.
//!
//! The library comes from the pinned PyPI `onnxruntime` wheel (`scripts/install-onnxruntime.sh`),
//! so nothing is downloaded at build time. Results vary with kernels and threads at the level of
//! floating-point rounding: profiles from this engine are [`crate::Reproducibility::Tolerance`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use crate::{EngineError, ExecutionProfile, Plan, check_bool_data, order_inputs};
use cairn_core::{DataType, Tensor};

/// How to set up ONNX Runtime.
#[derive(Clone, Debug)]
pub struct OrtOptions {
    /// Path of `libonnxruntime.so.1.31.x`.
    pub library: PathBuf,
    /// Intra-op threads per inference.
    pub threads: usize,
    /// Sessions per model, i.e. inferences of one model that may run at once.
    pub parallel: usize,
}

/// ONNX Runtime behind [`crate::Engine`].
pub struct OrtEngine {
    profile: ExecutionProfile,
    options: OrtOptions,
    env: ort::environment::Environment,
}

impl OrtEngine {
    /// Loads the library (once per process) and reads its version for the profile.
    pub fn new(options: OrtOptions) -> Result<Self, EngineError> {
        if !Path::new(&options.library).is_file() {
            return Err(EngineError::Unavailable(format!(
                "no ONNX Runtime library at {}; run scripts/install-onnxruntime.sh or pass --ort-library",
                options.library.display()
            )));
        }
        let env = ort::init_from(&options.library)
            .map_err(|e| EngineError::Unavailable(format!("{}: {e}", options.library.display())))?
            .with_name("cairn")
            .build()
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let version = library_version(&options.library);
        Ok(Self {
            profile: ExecutionProfile {
                engine: "onnxruntime".into(),
                engine_version: version,
                isa: crate::tier::effective_isa(),
                threads: options.threads as u32,
            },
            options,
            env,
        })
    }
}

/// The version from the build-info string (`git-branch=rel-1.31.1`), else from the file name.
fn library_version(path: &Path) -> String {
    let info = ort::info();
    if let Some(v) = info
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("git-branch=rel-"))
    {
        return v.to_owned();
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_prefix("libonnxruntime.so.")
        .unwrap_or("unknown")
        .to_owned()
}

impl crate::Engine for OrtEngine {
    fn profile(&self) -> &ExecutionProfile {
        &self.profile
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn Plan>, EngineError> {
        // ONNX Runtime reads external data from paths the file names (relative to the working
        // directory when loading from memory): never hand it such a model.
        cairn_onnx::ensure_self_contained(model).map_err(|e| EngineError::Load(e.to_string()))?;
        let load = |e: ort::Error| EngineError::Load(e.to_string());
        let mut sessions = Vec::with_capacity(self.options.parallel.max(1));
        for _ in 0..self.options.parallel.max(1) {
            let session = Session::builder(&self.env)
                .map_err(load)?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| load(e.into()))?
                .with_intra_threads(self.options.threads.max(1))
                .map_err(|e| load(e.into()))?
                .with_inter_threads(1)
                .map_err(|e| load(e.into()))?
                .commit_from_memory(model)
                .map_err(load)?;
            sessions.push(Mutex::new(session));
        }
        let first = sessions[0].lock().expect("fresh session");
        let inputs = first.inputs().iter().map(|o| o.name().to_owned()).collect();
        let outputs = first
            .outputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        drop(first);
        Ok(Arc::new(OrtPlan {
            inputs,
            outputs,
            sessions,
        }))
    }
}

struct OrtPlan {
    inputs: Vec<String>,
    outputs: Vec<String>,
    sessions: Vec<Mutex<Session>>,
}

macro_rules! le_vec {
    ($bytes:expr, $t:ty) => {
        $bytes
            .chunks_exact(size_of::<$t>())
            .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
            .collect::<Vec<$t>>()
    };
}

fn to_ort(t: &Tensor) -> Result<DynValue, EngineError> {
    check_bool_data(t)?;
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let d = t.data();
    let err = |e: ort::Error| EngineError::Input(format!("tensor `{}`: {e}", t.name()));
    Ok(match t.dtype() {
        DataType::Bool => {
            OrtTensor::from_array((shape, d.iter().map(|&b| b != 0).collect::<Vec<bool>>()))
                .map_err(err)?
                .into_dyn()
        }
        DataType::Uint8 => OrtTensor::from_array((shape, d.to_vec()))
            .map_err(err)?
            .into_dyn(),
        DataType::Int8 => OrtTensor::from_array((shape, le_vec!(d, i8)))
            .map_err(err)?
            .into_dyn(),
        DataType::Uint16 => OrtTensor::from_array((shape, le_vec!(d, u16)))
            .map_err(err)?
            .into_dyn(),
        DataType::Int16 => OrtTensor::from_array((shape, le_vec!(d, i16)))
            .map_err(err)?
            .into_dyn(),
        DataType::Uint32 => OrtTensor::from_array((shape, le_vec!(d, u32)))
            .map_err(err)?
            .into_dyn(),
        DataType::Int32 => OrtTensor::from_array((shape, le_vec!(d, i32)))
            .map_err(err)?
            .into_dyn(),
        DataType::Uint64 => OrtTensor::from_array((shape, le_vec!(d, u64)))
            .map_err(err)?
            .into_dyn(),
        DataType::Int64 => OrtTensor::from_array((shape, le_vec!(d, i64)))
            .map_err(err)?
            .into_dyn(),
        DataType::Fp32 => OrtTensor::from_array((shape, le_vec!(d, f32)))
            .map_err(err)?
            .into_dyn(),
        DataType::Fp64 => OrtTensor::from_array((shape, le_vec!(d, f64)))
            .map_err(err)?
            .into_dyn(),
        DataType::Fp16 => {
            return Err(EngineError::Input(format!(
                "tensor `{}`: FP16 is not supported by the onnxruntime engine; use tract",
                t.name()
            )));
        }
    })
}

macro_rules! extract {
    ($v:expr, $name:expr, $t:ty, $dt:expr) => {{
        let (shape, data) = $v
            .try_extract_tensor::<$t>()
            .map_err(|e| EngineError::Output(format!("`{}`: {e}", $name)))?;
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        (
            $dt,
            shape.iter().map(|&d| d as u64).collect::<Vec<u64>>(),
            bytes,
        )
    }};
}

fn from_ort(name: &str, v: &DynValue) -> Result<Tensor, EngineError> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(EngineError::Output(format!("`{name}` is not a tensor")));
    };
    let (dtype, shape, bytes) = match ty {
        TensorElementType::Bool => {
            let (shape, data) = v
                .try_extract_tensor::<bool>()
                .map_err(|e| EngineError::Output(format!("`{name}`: {e}")))?;
            let bytes = data.iter().map(|&b| b as u8).collect();
            (
                DataType::Bool,
                shape.iter().map(|&d| d as u64).collect(),
                bytes,
            )
        }
        TensorElementType::Uint8 => extract!(v, name, u8, DataType::Uint8),
        TensorElementType::Int8 => extract!(v, name, i8, DataType::Int8),
        TensorElementType::Uint16 => extract!(v, name, u16, DataType::Uint16),
        TensorElementType::Int16 => extract!(v, name, i16, DataType::Int16),
        TensorElementType::Uint32 => extract!(v, name, u32, DataType::Uint32),
        TensorElementType::Int32 => extract!(v, name, i32, DataType::Int32),
        TensorElementType::Uint64 => extract!(v, name, u64, DataType::Uint64),
        TensorElementType::Int64 => extract!(v, name, i64, DataType::Int64),
        TensorElementType::Float32 => extract!(v, name, f32, DataType::Fp32),
        TensorElementType::Float64 => extract!(v, name, f64, DataType::Fp64),
        other => {
            return Err(EngineError::Output(format!(
                "`{name}` has element type {other:?}"
            )));
        }
    };
    Tensor::new(name, dtype, shape, bytes).map_err(|e| EngineError::Output(e.to_string()))
}

impl Plan for OrtPlan {
    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let ordered = order_inputs(&self.inputs, inputs)?;
        let values: Vec<(String, DynValue)> = ordered
            .into_iter()
            .map(|t| to_ort(t).map(|v| (t.name().to_owned(), v)))
            .collect::<Result<_, _>>()?;
        // Take a free session; when every one is busy, wait for the first.
        let mut guard = None;
        for s in &self.sessions {
            match s.try_lock() {
                Ok(g) => {
                    guard = Some(g);
                    break;
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Poisoned(p)) => {
                    guard = Some(p.into_inner());
                    break;
                }
            }
        }
        let mut session = match guard {
            Some(g) => g,
            None => self.sessions[0].lock().unwrap_or_else(|p| p.into_inner()),
        };
        let outputs = session
            .run(values)
            .map_err(|e| EngineError::Run(e.to_string()))?;
        self.outputs
            .iter()
            .map(|name| {
                let v = outputs
                    .get(name)
                    .ok_or_else(|| EngineError::Output(format!("`{name}` was not produced")))?;
                from_ort(name, v)
            })
            .collect()
    }
}
