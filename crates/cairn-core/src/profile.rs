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
    /// Not computed by the node: relayed to an upstream server. The receipt binds what was
    /// sent and what came back; nothing can be re-executed.
    Relayed,
}

/// The language-model engine's name in a profile (`cairn-llm`).
pub const LLM_ENGINE: &str = "cairn-llm";

/// The engine a relayed call's profile names: the node forwarded it to an upstream server.
pub const RELAYED_ENGINE: &str = "relayed";

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
    /// `engine=tract;version=0.23.9;isa=x86_64,avx2;threads=1`. `\`, `;` and `=` inside a field
    /// are escaped with `\`, so two different profiles never share a form (and a hash).
    pub fn canonical(&self) -> String {
        fn esc(s: &str) -> std::borrow::Cow<'_, str> {
            if !s.contains(['\\', ';', '=']) {
                return s.into();
            }
            let mut out = String::with_capacity(s.len() + 4);
            for c in s.chars() {
                if matches!(c, '\\' | ';' | '=') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.into()
        }
        format!(
            "engine={};version={};isa={};threads={}",
            esc(&self.engine),
            esc(&self.engine_version),
            esc(&self.isa),
            self.threads
        )
    }

    /// Keccak-256 of [`ExecutionProfile::canonical`]: the `profileHash` in a receipt.
    pub fn hash(&self) -> B256 {
        keccak256(self.canonical().as_bytes())
    }

    /// Whether results from this profile are bit-exact (tract, cairn-llm), tolerance-checked
    /// (onnxruntime) or relayed (not computed by the node at all).
    pub fn reproducibility(&self) -> Reproducibility {
        // tract pins its kernels per CPU tier; cairn-llm's float operations happen in one order
        // on every CPU path.
        if self.engine == "tract" || self.engine == LLM_ENGINE {
            Reproducibility::Exact
        } else if self.engine == RELAYED_ENGINE {
            Reproducibility::Relayed
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
        q.engine_version = "0.23.10".into();
        assert_ne!(p.hash(), q.hash());
        q = p.clone();
        q.engine = "onnxruntime".into();
        assert_ne!(p.hash(), q.hash());
        assert_eq!(q.reproducibility(), Reproducibility::Tolerance);
        // Field boundaries are unambiguous: moving text between fields changes the hash.
        let a = ExecutionProfile {
            engine: "tract;version=1".into(),
            engine_version: "2".into(),
            ..p.clone()
        };
        let b = ExecutionProfile {
            engine: "tract".into(),
            engine_version: "1;version=2".into(),
            ..p.clone()
        };
        assert_ne!(a.hash(), b.hash(), "{} vs {}", a.canonical(), b.canonical());
    }
}
