//! CPU kernel tiers for tract, pinned through `TRACT_CPU_ISA`.
//!
//! tract probes the CPU once per process and reads `TRACT_CPU_ISA` at that moment, so a tier is
//! chosen by setting the variable before the process starts (the CLI re-executes itself). Output
//! bits are identical within a tier and differ between tiers, which is why a receipt's profile
//! names the exact instruction-set list in force.

use std::fmt;
use std::str::FromStr;

use tract_linalg::isa::{Isa, IsaSet};

/// A kernel tier a node can be pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuTier {
    /// Whatever this CPU offers (fastest; reproducible only on CPUs with the same features).
    Native,
    /// Portable scalar/baseline kernels: any verifier on the same architecture can reproduce it.
    Generic,
    /// x86-64 AVX2 + FMA (+ F16C), no AVX-512.
    Avx2,
    /// x86-64 AVX-512F on top of AVX2 + FMA, without VNNI/FP16/AMX extensions.
    Avx512,
}

/// Why a tier cannot be used on this machine.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// Unknown tier name.
    #[error("unknown CPU tier `{0}`; use native, generic, avx2 or avx512")]
    Unknown(String),
    /// The CPU lacks a feature the tier needs.
    #[error(
        "this CPU lacks `{missing}`, which the `{tier}` tier needs; pick a lower tier (e.g. generic)"
    )]
    Unsupported { tier: CpuTier, missing: String },
}

impl fmt::Display for CpuTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuTier::Native => "native",
            CpuTier::Generic => "generic",
            CpuTier::Avx2 => "avx2",
            CpuTier::Avx512 => "avx512",
        })
    }
}

impl FromStr for CpuTier {
    type Err = TierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "native" => CpuTier::Native,
            "generic" => CpuTier::Generic,
            "avx2" => CpuTier::Avx2,
            "avx512" => CpuTier::Avx512,
            other => return Err(TierError::Unknown(other.chars().take(32).collect())),
        })
    }
}

/// What this CPU offers, before any `TRACT_CPU_ISA` edit.
fn probed() -> IsaSet {
    #[cfg(target_arch = "x86_64")]
    return tract_linalg::x86_64::isa_set();
    #[cfg(not(target_arch = "x86_64"))]
    return tract_linalg::isa::native();
}

/// The `TRACT_CPU_ISA` value that pins `tier` on this machine, or `None` for [`CpuTier::Native`].
/// The value removes every feature outside the tier, so the effective set is exactly the tier's.
pub fn tier_env(tier: CpuTier) -> Result<Option<String>, TierError> {
    use Isa::*;
    let keep: &[Isa] = match tier {
        CpuTier::Native => return Ok(None),
        CpuTier::Generic => &[],
        CpuTier::Avx2 => &[X86_64Avx, X86_64Avx2, X86_64Fma, X86_64F16c],
        CpuTier::Avx512 => &[X86_64Avx, X86_64Avx2, X86_64Fma, X86_64F16c, X86_64Avx512f],
    };
    let have = probed();
    if let Some(missing) = keep.iter().find(|i| !have.iter().any(|h| h == **i)) {
        return Err(TierError::Unsupported {
            tier,
            missing: missing.name().to_owned(),
        });
    }
    let arch = have.arch();
    let spec: Vec<String> = Isa::ALL
        .iter()
        .filter(|i| !i.is_arch() && Some(i.arch()) == arch && !keep.contains(i))
        .map(|i| format!("-{}", i.name()))
        .collect();
    Ok(Some(spec.join(",")))
}

/// The `TRACT_CPU_ISA` value that makes tract dispatch on exactly `isa` (a profile's list, e.g.
/// `x86_64,avx,avx2,fma,f16c`), so a receipt's profile can be reproduced here.
pub fn isa_env_for(isa: &str) -> Result<String, TierError> {
    let have = probed();
    let mut keep = Vec::new();
    for token in isa.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some(i) = Isa::ALL.iter().find(|i| i.name() == token) else {
            return Err(TierError::Unknown(token.chars().take(32).collect()));
        };
        if !have.iter().any(|h| h == *i) {
            return Err(TierError::Unsupported {
                tier: CpuTier::Native,
                missing: token.to_owned(),
            });
        }
        keep.push(*i);
    }
    let arch = have.arch();
    Ok(Isa::ALL
        .iter()
        .filter(|i| !i.is_arch() && Some(i.arch()) == arch && !keep.contains(i))
        .map(|i| format!("-{}", i.name()))
        .collect::<Vec<_>>()
        .join(","))
}

/// The instruction-set list tract dispatches on in this process, as the profile names it.
pub(crate) fn effective_isa() -> String {
    format!("{:?}", tract_linalg::isa::native())
}
