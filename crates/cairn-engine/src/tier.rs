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
    /// A profile names an instruction set tract does not know.
    #[error("unknown instruction set `{0}` in the profile")]
    UnknownIsa(String),
    /// The CPU lacks a feature the tier or profile needs.
    #[error("this CPU lacks `{missing}`, which {wanted} needs; pick a lower tier (e.g. generic)")]
    Unsupported { wanted: String, missing: String },
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
pub fn tier_env(tier: CpuTier) -> Result<Option<String>, TierError> {
    use Isa::*;
    let keep: &[Isa] = match tier {
        CpuTier::Native => return Ok(None),
        CpuTier::Generic => &[],
        CpuTier::Avx2 => &[X86_64Avx, X86_64Avx2, X86_64Fma, X86_64F16c],
        CpuTier::Avx512 => &[X86_64Avx, X86_64Avx2, X86_64Fma, X86_64F16c, X86_64Avx512f],
    };
    pin_exactly(keep, &format!("the `{tier}` tier")).map(Some)
}

/// The `TRACT_CPU_ISA` value that makes tract dispatch on exactly `isa` (a profile's list, e.g.
/// `x86_64,avx,avx2,fma,f16c`), so a receipt's profile can be reproduced here.
pub fn isa_env_for(isa: &str) -> Result<String, TierError> {
    let keep = isa
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|token| {
            Isa::ALL
                .into_iter()
                .find(|i| i.name() == token)
                .ok_or_else(|| TierError::UnknownIsa(token.chars().take(32).collect()))
        })
        .collect::<Result<Vec<Isa>, _>>()?;
    pin_exactly(&keep, &format!("the profile `{isa}`"))
}

/// A `TRACT_CPU_ISA` value removing every feature of this architecture outside `keep`, so the
/// effective set is exactly `keep`; refused when this CPU lacks one of them.
fn pin_exactly(keep: &[Isa], wanted: &str) -> Result<String, TierError> {
    let have = probed();
    if let Some(missing) = keep
        .iter()
        .find(|i| !i.is_arch() && !have.iter().any(|h| h == **i))
    {
        return Err(TierError::Unsupported {
            wanted: wanted.to_owned(),
            missing: missing.name().to_owned(),
        });
    }
    let arch = have.arch();
    Ok(Isa::ALL
        .iter()
        .filter(|i| !i.is_arch() && Some(i.arch()) == arch && !keep.contains(i))
        .map(|i| format!("-{}", i.name()))
        .collect::<Vec<_>>()
        .join(","))
}

/// The instruction-set list of the generic tier on this architecture (the architecture alone),
/// as a profile names it.
pub(crate) fn portable_isa() -> String {
    let arch = probed().arch();
    Isa::ALL
        .iter()
        .find(|i| i.is_arch() && Some(i.arch()) == arch)
        .map_or_else(|| "-".to_string(), |i| i.name().to_string())
}

/// The instruction-set list tract dispatches on in this process, as the profile names it.
pub(crate) fn effective_isa() -> String {
    format!("{:?}", tract_linalg::isa::native())
}
