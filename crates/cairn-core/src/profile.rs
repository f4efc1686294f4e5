//! Execution profiles: what must match for two runs to give the same output bits.

use std::fmt;

use alloy_primitives::{B256, keccak256};

/// How an engine's results can be re-checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reproducibility {
    /// Same profile, model and input give the same bits: compare output hashes.
    Exact,
    /// Results vary within floating-point tolerance: compare values with a stated tolerance.
    Tolerance,
}

/// Which engine ran a model and how: engine and version, the CPU kernel set it dispatched to, and
/// the thread count. Receipts bind [`ExecutionProfile::hash`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionProfile {
    /// `tract` or `onnxruntime`.
    pub engine: String,
    /// The engine's exact version.
    pub engine_version: String,
    /// The instruction sets the engine's kernels may use, comma-separated in the engine's own
    /// order (`x86_64,avx,avx2,fma,f16c`); `x86_64` alone is the portable generic tier.
    pub isa: String,
    /// Threads one inference may use.
    pub threads: u32,
}

impl ExecutionProfile {
    /// The canonical one-line form that [`ExecutionProfile::hash`] covers:
    /// `engine=tract;version=0.23.9;isa=x86_64,avx2;threads=1`.
    pub fn canonical(&self) -> String {
        format!(
            "engine={};version={};isa={};threads={}",
            self.engine, self.engine_version, self.isa, self.threads
        )
    }

    /// Keccak-256 of [`ExecutionProfile::canonical`]: the `profileHash` in a receipt.
    pub fn hash(&self) -> B256 {
        keccak256(self.canonical().as_bytes())
    }

    /// Whether results from this profile are bit-exact (tract) or tolerance-checked (onnxruntime).
    pub fn reproducibility(&self) -> Reproducibility {
        if self.engine == "tract" {
            Reproducibility::Exact
        } else {
            Reproducibility::Tolerance
        }
    }
}

impl fmt::Display for ExecutionProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field() {
        let p = ExecutionProfile {
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            isa: "x86_64".into(),
            threads: 1,
        };
        assert_eq!(
            p.canonical(),
            "engine=tract;version=0.23.9;isa=x86_64;threads=1"
        );
        assert_eq!(p.reproducibility(), Reproducibility::Exact);
        let mut q = p.clone();
        q.isa = "x86_64,avx2".into();
        assert_ne!(p.hash(), q.hash());
        q = p.clone();
        q.threads = 2;
        assert_ne!(p.hash(), q.hash());
        q = p.clone();
        q.engine = "onnxruntime".into();
        assert_eq!(q.reproducibility(), Reproducibility::Tolerance);
    }
}
