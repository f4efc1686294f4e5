//! The tract engine: pure Rust, single-threaded, bit-exact within a CPU kernel tier.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoTValue, TDim, TVec,
    Tensor as TractTensor, TractResult, TypedSimplePlan,
};
use tract_onnx::tract_core::model::IntoRunnable;
use tract_onnx::tract_hir::infer::{Factoid, GenericFactoid};

use crate::{EngineError, ExecutionProfile, Plan, check_bool_data, order_inputs};
use cairn_core::{DataType, Tensor};

/// The tract version compiled in; part of every profile.
pub const TRACT_VERSION: &str = "0.23.9";

/// tract-onnx behind [`crate::Engine`].
pub struct TractEngine {
    profile: ExecutionProfile,
    onnx: tract_onnx::Onnx,
}

impl TractEngine {
    /// An engine whose profile names the instruction sets tract dispatches on in this process
    /// (fixed at process start by `TRACT_CPU_ISA`; see [`crate::tier_env`]).
    pub fn new() -> Self {
        Self {
            profile: ExecutionProfile {
                engine: "tract".into(),
                engine_version: TRACT_VERSION.into(),
                isa: crate::tier::effective_isa(),
                threads: 1,
            },
            onnx: tract_onnx::onnx(),
        }
    }
}

impl TractEngine {
    /// The profile of the generic (portable) tier on this architecture: what any verifier of
    /// the architecture reproduces, whatever its CPU.
    pub fn portable_profile() -> ExecutionProfile {
        ExecutionProfile {
            engine: "tract".into(),
            engine_version: TRACT_VERSION.into(),
            isa: crate::tier::portable_isa(),
            threads: 1,
        }
    }
}

impl Default for TractEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl crate::Engine for TractEngine {
    fn profile(&self) -> &ExecutionProfile {
        &self.profile
    }

    fn load(&self, model: &[u8]) -> Result<Arc<dyn Plan>, EngineError> {
        cairn_onnx::ensure_self_contained(model).map_err(|e| EngineError::Load(e.to_string()))?;
        let load = |e: tract_onnx::prelude::TractError| EngineError::Load(format!("{e:#}"));
        let mut model = self
            .onnx
            .model_for_read(&mut Cursor::new(model))
            .map_err(load)?;
        name_unknown_dims(&mut model).map_err(load)?;
        let inputs = model
            .input_outlets()
            .map_err(load)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let outlets = model.output_outlets().map_err(load)?.to_vec();
        let mut outputs = Vec::with_capacity(outlets.len());
        for (ix, o) in outlets.iter().enumerate() {
            let name = model
                .outlet_label(*o)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(o.node).name.clone());
            // tract may compute an integer output as a symbolic-dimension type (TDim); what the
            // caller gets is the type the graph declares.
            let declared = model
                .output_fact(ix)
                .map_err(load)?
                .datum_type
                .concretize()
                .and_then(data_type);
            outputs.push((name, declared));
        }
        let names = outputs.iter().map(|(n, _)| n.clone()).collect();
        let mode = match model
            .clone()
            .into_optimized()
            .and_then(|m| m.into_runnable())
        {
            Ok(plan) => Mode::Symbolic(plan),
            Err(_) => {
                // Some graphs only type-check once their input shapes are known (shape
                // arithmetic feeding Expand, as in magika). Those get one plan per distinct
                // input shape, built on first use and kept; the model must load with concrete
                // shapes to be accepted at all.
                Mode::PerShape {
                    model: Box::new(model),
                    plans: Mutex::new(HashMap::new()),
                }
            }
        };
        Ok(Arc::new(TractPlan {
            inputs,
            outputs: names,
            declared: outputs.into_iter().map(|(_, d)| d).collect(),
            mode,
        }))
    }
}

/// Gives every input dimension the model leaves unnamed (ONNX `dim {}`, as skl2onnx writes a
/// batch of `None`) a symbol of its own, so the plan stays symbolic instead of failing analysis.
fn name_unknown_dims(model: &mut InferenceModel) -> TractResult<()> {
    for ix in 0..model.inputs.len() {
        let mut fact = model.input_fact(ix)?.clone();
        let Some(rank) = fact.shape.rank().concretize() else {
            continue;
        };
        let mut changed = false;
        for d in 0..rank as usize {
            if fact.shape.dim(d) == Some(GenericFactoid::Any) {
                let sym = model.symbols.new_with_prefix("unk");
                fact.shape.set_dim(d, TDim::Sym(sym));
                changed = true;
            }
        }
        if changed {
            model.set_input_fact(ix, fact)?;
        }
    }
    Ok(())
}

struct TractPlan {
    inputs: Vec<String>,
    outputs: Vec<String>,
    declared: Vec<Option<DataType>>,
    mode: Mode,
}

/// Most concrete-shape plans kept per model.
const MAX_SHAPE_PLANS: usize = 16;

type ShapeKey = Vec<(DatumType, Vec<usize>)>;

enum Mode {
    /// One plan with symbolic dims serves every shape.
    Symbolic(Arc<TypedSimplePlan>),
    /// One plan per input shape, for graphs tract can only type with concrete shapes.
    PerShape {
        model: Box<InferenceModel>,
        plans: Mutex<HashMap<ShapeKey, Arc<TypedSimplePlan>>>,
    },
}

impl Mode {
    fn plan(
        &self,
        values: &[tract_onnx::prelude::TValue],
    ) -> Result<Arc<TypedSimplePlan>, EngineError> {
        match self {
            Mode::Symbolic(p) => Ok(p.clone()),
            Mode::PerShape { model, plans } => {
                let key: ShapeKey = values
                    .iter()
                    .map(|v| (v.datum_type(), v.shape().to_vec()))
                    .collect();
                if let Some(p) = plans.lock().expect("plans").get(&key) {
                    return Ok(p.clone());
                }
                let mut m = (**model).clone();
                for (ix, (dt, shape)) in key.iter().enumerate() {
                    m.set_input_fact(ix, InferenceFact::dt_shape(*dt, shape.clone()))
                        .map_err(|e| EngineError::Input(format!("{e:#}")))?;
                }
                let plan = m
                    .into_optimized()
                    .and_then(|m| m.into_runnable())
                    .map_err(|e| EngineError::Load(format!("{e:#}")))?;
                let mut map = plans.lock().expect("plans");
                if map.len() >= MAX_SHAPE_PLANS
                    && let Some(k) = map.keys().next().cloned()
                {
                    map.remove(&k);
                }
                map.insert(key, plan.clone());
                Ok(plan)
            }
        }
    }
}

fn datum_type(dt: DataType) -> DatumType {
    match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
    }
}

fn data_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        _ => return None,
    })
}

fn to_tract(t: &Tensor) -> Result<TractTensor, EngineError> {
    check_bool_data(t)?;
    let shape = t
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| EngineError::Input(format!("tensor `{}` is too large", t.name())))?;
    // SAFETY: every bit pattern is a valid value of the numeric types, BOOL bytes were checked
    // to be 0 or 1 above, and from_raw_dt checks the length against the shape. Data is
    // little-endian, as on every target Cairn builds for.
    unsafe { TractTensor::from_raw_dt(datum_type(t.dtype()), &shape, t.data()) }
        .map_err(|e| EngineError::Input(format!("tensor `{}`: {e}", t.name())))
}

fn from_tract(
    name: &str,
    t: &TractTensor,
    declared: Option<DataType>,
) -> Result<Tensor, EngineError> {
    // ONNX has no dimension type: a TDim output is an int64 in the graph's terms.
    let declared = declared.or((t.datum_type() == DatumType::TDim).then_some(DataType::Int64));
    let cast;
    let t = match declared {
        Some(d) if data_type(t.datum_type()) != Some(d) => {
            cast = t
                .cast_to_dt(datum_type(d))
                .map_err(|e| EngineError::Output(format!("`{name}`: {e}")))?;
            &*cast
        }
        _ => t,
    };
    let dtype = data_type(t.datum_type()).ok_or_else(|| {
        EngineError::Output(format!("`{name}` has element type {:?}", t.datum_type()))
    })?;
    if !t.is_plain_ram() {
        return Err(EngineError::Output(format!(
            "`{name}` is not a plain in-memory tensor"
        )));
    }
    let shape = t.shape().iter().map(|&d| d as u64).collect();
    Tensor::new(name, dtype, shape, t.as_bytes().to_vec())
        .map_err(|e| EngineError::Output(e.to_string()))
}

impl Plan for TractPlan {
    fn prepared(&self, inputs: &[Tensor]) -> bool {
        match &self.mode {
            Mode::Symbolic(_) => true,
            Mode::PerShape { plans, .. } => {
                let Ok(ordered) = order_inputs(&self.inputs, inputs) else {
                    return false;
                };
                let key: ShapeKey = ordered
                    .iter()
                    .map(|t| {
                        let shape = t.shape().iter().map(|&d| d as usize).collect();
                        (datum_type(t.dtype()), shape)
                    })
                    .collect();
                plans.lock().expect("plans").contains_key(&key)
            }
        }
    }

    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let ordered = order_inputs(&self.inputs, inputs)?;
        let values: TVec<_> = ordered
            .into_iter()
            .map(|t| to_tract(t).map(|t| t.into_tvalue()))
            .collect::<Result<_, _>>()?;
        let out = self
            .mode
            .plan(&values)?
            .run(values)
            .map_err(|e| EngineError::Run(format!("{e:#}")))?;
        out.iter()
            .zip(self.outputs.iter().zip(&self.declared))
            .map(|(v, (name, declared))| from_tract(name, v, *declared))
            .collect()
    }
}
