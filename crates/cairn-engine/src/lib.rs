//! ONNX execution behind one trait, with two real engines:
//!
//! - [`TractEngine`] (`tract-onnx`, pure Rust): the default and the *verifiable* engine. Within one
//!   [`ExecutionProfile`] (engine version, CPU kernel tier, one thread) the same model and input
//!   give the same output bits in any process on any machine of that tier.
//! - `OrtEngine` (feature `ort`): ONNX Runtime loaded at run time from a shared library. Faster;
//!   its results are re-checked with a tolerance, and its profile says so.
//!
//! An engine turns model bytes into a [`Plan`] once (parse, optimize); every request reuses it.

use std::sync::Arc;

pub use cairn_core::{DataType, ExecutionProfile, Reproducibility, Tensor};

mod tier;
mod tract;

#[cfg(feature = "ort")]
mod ort_engine;

#[cfg(feature = "ort")]
pub use ort_engine::{OrtEngine, OrtOptions};
pub use tier::{CpuTier, TierError, isa_env_for, tier_env};
pub use tract::TractEngine;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bytes are not a model this engine can prepare (not ONNX, unsupported operator, …).
    #[error("the model cannot be loaded: {0}")]
    Load(String),
    /// The inputs do not fit the model (missing or unknown name, wrong type or rank).
    #[error("{0}")]
    Input(String),
    /// The model failed while running on valid inputs.
    #[error("the model failed while running: {0}")]
    Run(String),
    /// The engine produced a value Cairn cannot carry (a sequence, a map, a string tensor, …).
    #[error("the model produced an output Cairn cannot return: {0}")]
    Output(String),
    /// The engine itself is not available (e.g. the ONNX Runtime library did not load).
    #[error("the engine is not available: {0}")]
    Unavailable(String),
}

/// An execution engine: prepares plans from model bytes.
pub trait Engine: Send + Sync + 'static {
    /// The profile every plan from this engine runs under.
    fn profile(&self) -> &ExecutionProfile;

    /// Parses and optimizes a model once. CPU-heavy: call it off the async runtime.
    fn load(&self, model: &[u8]) -> Result<Arc<dyn Plan>, EngineError>;
}

/// A prepared model, shared by every request for it.
pub trait Plan: Send + Sync {
    /// Input names in graph order.
    fn input_names(&self) -> &[String];

    /// Output names in graph order.
    fn output_names(&self) -> &[String];

    /// Runs the model. `inputs` may come in any order and must name every graph input once;
    /// every graph output is returned, in graph order. Blocking and CPU-bound.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError>;

    /// Whether a call on `inputs` finds its plan prepared (one plan serves every shape, or
    /// one was built for these shapes), so it builds none first: the node runs a call in place
    /// only then. Conservative by default.
    fn prepared(&self, inputs: &[Tensor]) -> bool {
        let _ = inputs;
        false
    }
}

/// Puts `inputs` in the order of `names`, refusing missing, unknown and repeated names.
pub(crate) fn order_inputs<'a>(
    names: &[String],
    inputs: &'a [Tensor],
) -> Result<Vec<&'a Tensor>, EngineError> {
    cairn_core::tensor::check_unique_names(inputs)
        .map_err(|e| EngineError::Input(e.to_string()))?;
    if let Some(t) = inputs.iter().find(|t| !names.iter().any(|n| n == t.name())) {
        return Err(EngineError::Input(format!(
            "the model has no input `{}`; its inputs are {names:?}",
            t.name()
        )));
    }
    names
        .iter()
        .map(|n| {
            inputs
                .iter()
                .find(|t| t.name() == n)
                .ok_or_else(|| EngineError::Input(format!("input `{n}` is missing")))
        })
        .collect()
}

/// Refuses BOOL data that is not 0 or 1: engines read it as a native bool.
pub(crate) fn check_bool_data(t: &Tensor) -> Result<(), EngineError> {
    if t.dtype() == DataType::Bool && t.data().iter().any(|&b| b > 1) {
        return Err(EngineError::Input(format!(
            "BOOL tensor `{}` holds a byte other than 0 or 1",
            t.name()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
