//! Weight formats and the matrix–vector product on them.
//!
//! Activations are quantized to 8 bits per 32-element block the way ggml does it (Q8_0 for
//! Q4_0/Q8_0 weights, Q8_1 for Q4_1), each block's integer dot product is exact, and the
//! blocks' float terms are added in one fixed order. So a product's bits depend on the weights
//! and the input only — not on the CPU's vector width or the thread count — which is what lets
//! a verifier on another machine reproduce a node's tokens bit for bit.

use half::f16;

use crate::LlmError;

/// Elements per quantization block.
pub(crate) const QK: usize = 32;

/// A weight type the engine computes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl WeightType {
    pub(crate) fn from_ggml(t: cairn_gguf::GgmlType, tensor: &str) -> Result<Self, LlmError> {
        Ok(match t.name {
            "F32" => Self::F32,
            "F16" => Self::F16,
            "Q4_0" => Self::Q4_0,
            "Q4_1" => Self::Q4_1,
            "Q8_0" => Self::Q8_0,
            other => {
                return Err(LlmError::Unsupported(format!(
                    "tensor `{tensor}` is {other}; the engine computes with F32, F16, Q4_0, Q4_1 and Q8_0"
                )));
            }
        })
    }

    /// Bytes of one row of `cols` elements.
    pub(crate) fn row_bytes(self, cols: usize) -> usize {
        match self {
            Self::F32 => cols * 4,
            Self::F16 => cols * 2,
            Self::Q4_0 => cols / QK * 18,
            Self::Q4_1 => cols / QK * 20,
            Self::Q8_0 => cols / QK * 34,
        }
    }
}

/// A 2-D weight: `rows` rows of `cols` elements, unpacked at load into what the product reads:
/// per-block scales (and Q4_1 minimums) as f32 — exact, since f16 widens to f32 exactly — and
/// the quantized values; F16 weights widen to f32.
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    pub(crate) ty: WeightType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Per block: the scale.
    d: Vec<f32>,
    /// Per block: the minimum (Q4_1).
    m: Vec<f32>,
    /// Quantized values: 16 bytes of nibble pairs per Q4 block, 32 signed bytes per Q8_0 block.
    q: Vec<u8>,
    /// F32 and F16 weights, as f32.
    f: Vec<f32>,
}

fn half(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// An input vector quantized once for every matrix it multiplies.
pub(crate) struct Quantized {
    /// Per block: the scale, rounded through f16 as ggml stores it.
    d: Vec<f32>,
    /// Per block: `d * Σ qs`, rounded through f16 (Q8_1's `s`).
    s: Vec<f32>,
    /// Per block: `Σ qs`.
    sum: Vec<i32>,
    qs: Vec<i8>,
    x: Vec<f32>,
}

impl Quantized {
    pub(crate) fn new(x: &[f32]) -> Self {
        let blocks = x.len() / QK;
        let mut q = Quantized {
            d: Vec::with_capacity(blocks),
            s: Vec::with_capacity(blocks),
            sum: Vec::with_capacity(blocks),
            qs: vec![0; blocks * QK],
            x: x.to_vec(),
        };
        for b in 0..blocks {
            let xs = &x[b * QK..(b + 1) * QK];
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (j, v) in xs.iter().enumerate() {
                // ±127 by construction (an overflowing 1/d would give −128): the AVX2 product
                // takes |x| ≤ 127.
                let qv = (v * id).round().clamp(-127.0, 127.0) as i8;
                q.qs[b * QK + j] = qv;
                sum += i32::from(qv);
            }
            q.d.push(f16::from_f32(d).to_f32());
            q.s.push(f16::from_f32(sum as f32 * d).to_f32());
            q.sum.push(sum);
        }
        q
    }
}

impl Matrix {
    /// Bytes the matrix holds in memory (scales as f32, F16 weights widened to f32).
    pub(crate) fn memory_bytes(&self) -> usize {
        (self.d.len() + self.m.len() + self.f.len()) * std::mem::size_of::<f32>() + self.q.len()
    }

    /// Unpacks `data`, a ggml tensor of `rows` rows of `cols` elements of type `ty`.
    pub(crate) fn new(
        ty: WeightType,
        rows: usize,
        cols: usize,
        data: &[u8],
        name: &str,
    ) -> Result<Self, LlmError> {
        if !cols.is_multiple_of(QK) || data.len() != ty.row_bytes(cols) * rows {
            return Err(LlmError::Model(format!(
                "tensor `{name}` has {} bytes for {rows}×{cols} {ty:?}",
                data.len()
            )));
        }
        let mut m = Matrix {
            ty,
            rows,
            cols,
            d: Vec::new(),
            m: Vec::new(),
            q: Vec::new(),
            f: Vec::new(),
        };
        match ty {
            WeightType::F32 => {
                m.f = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            }
            WeightType::F16 => m.f = data.chunks_exact(2).map(half).collect(),
            WeightType::Q8_0 | WeightType::Q4_0 => {
                let size = if ty == WeightType::Q8_0 { 34 } else { 18 };
                for blk in data.chunks_exact(size) {
                    m.d.push(half(blk));
                    m.q.extend_from_slice(&blk[2..]);
                }
            }
            WeightType::Q4_1 => {
                for blk in data.chunks_exact(20) {
                    m.d.push(half(blk));
                    m.m.push(half(&blk[2..]));
                    m.q.extend_from_slice(&blk[4..]);
                }
            }
        }
        Ok(m)
    }

    /// Row `r` as floats (an embedding lookup).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let blocks = self.cols / QK;
        let b0 = r * blocks;
        match self.ty {
            WeightType::F32 | WeightType::F16 => {
                out.copy_from_slice(&self.f[r * self.cols..(r + 1) * self.cols]);
            }
            WeightType::Q8_0 => {
                for (i, o) in out.chunks_exact_mut(QK).enumerate() {
                    let d = self.d[b0 + i];
                    let q = &self.q[(b0 + i) * QK..(b0 + i + 1) * QK];
                    for (o, q) in o.iter_mut().zip(q) {
                        *o = d * f32::from(*q as i8);
                    }
                }
            }
            WeightType::Q4_0 | WeightType::Q4_1 => {
                let q4_1 = self.ty == WeightType::Q4_1;
                for (i, o) in out.chunks_exact_mut(QK).enumerate() {
                    let d = self.d[b0 + i];
                    let q = &self.q[(b0 + i) * 16..(b0 + i + 1) * 16];
                    for j in 0..16 {
                        let (lo, hi) = (f32::from(q[j] & 0xF), f32::from(q[j] >> 4));
                        if q4_1 {
                            let m = self.m[b0 + i];
                            o[j] = d * lo + m;
                            o[j + 16] = d * hi + m;
                        } else {
                            o[j] = d * (lo - 8.0);
                            o[j + 16] = d * (hi - 8.0);
                        }
                    }
                }
            }
        }
    }

    /// `outs[t][r] = row r · xs[t]` for every row and input: each row is read once for all
    /// inputs, and each product is the same number whatever else is computed beside it.
    pub(crate) fn matmul(
        &self,
        xs: &[Quantized],
        outs: &mut [Vec<f32>],
        pool: Option<&rayon::ThreadPool>,
    ) {
        debug_assert!(outs.iter().all(|o| o.len() == self.rows));
        let blocks = self.cols / QK;
        // Rows split among threads: a row is computed whole by one thread, so the split changes
        // no number.
        let threads = pool.map_or(1, |p| p.current_num_threads());
        if threads > 1 && self.rows >= 64 {
            let n = xs.len();
            let chunk = self.rows.div_ceil(threads);
            let mut parts: Vec<Vec<f32>> = vec![Vec::new(); self.rows.div_ceil(chunk)];
            pool.expect("threads > 1").scope(|s| {
                for (k, part) in parts.iter_mut().enumerate() {
                    s.spawn(move |_| {
                        let mut sums = vec![0i32; blocks];
                        let rows = k * chunk..((k + 1) * chunk).min(self.rows);
                        part.reserve(rows.len() * n);
                        for r in rows {
                            for x in xs {
                                part.push(self.dot(r, x, &mut sums));
                            }
                        }
                    });
                }
            });
            for (k, part) in parts.iter().enumerate() {
                for (i, v) in part.iter().enumerate() {
                    outs[i % n][k * chunk + i / n] = *v;
                }
            }
            return;
        }
        let mut sums = vec![0i32; blocks];
        for r in 0..self.rows {
            for (x, out) in xs.iter().zip(outs.iter_mut()) {
                out[r] = self.dot(r, x, &mut sums);
            }
        }
    }

    /// Row `r` · `x`: the blocks' exact integer products first, then their float terms added in
    /// block order.
    fn dot(&self, r: usize, x: &Quantized, sums: &mut [i32]) -> f32 {
        let blocks = self.cols / QK;
        let b0 = r * blocks;
        let mut sum = 0f32;
        match self.ty {
            WeightType::F32 | WeightType::F16 => {
                for (w, v) in self.f[r * self.cols..(r + 1) * self.cols].iter().zip(&x.x) {
                    sum += w * v;
                }
            }
            WeightType::Q8_0 => {
                block_sums_i8(&self.q[b0 * QK..(b0 + blocks) * QK], &x.qs, sums);
                for (i, sumi) in sums.iter().enumerate() {
                    sum += *sumi as f32 * (self.d[b0 + i] * x.d[i]);
                }
            }
            WeightType::Q4_0 => {
                block_sums_q4(&self.q[b0 * 16..(b0 + blocks) * 16], &x.qs, sums);
                for (i, sumi) in sums.iter().enumerate() {
                    // Σ (w − 8)·x = Σ w·x − 8·Σ x.
                    let sumi = sumi - 8 * x.sum[i];
                    sum += sumi as f32 * (self.d[b0 + i] * x.d[i]);
                }
            }
            WeightType::Q4_1 => {
                block_sums_q4(&self.q[b0 * 16..(b0 + blocks) * 16], &x.qs, sums);
                for (i, sumi) in sums.iter().enumerate() {
                    sum += (self.d[b0 + i] * x.d[i]) * *sumi as f32 + self.m[b0 + i] * x.s[i];
                }
            }
        }
        sum
    }
}

/// Per block, the exact product of 32 signed weight bytes with the input's block.
pub(crate) fn block_sums_i8(w: &[u8], x: &[i8], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 is present; the function checks the slices' lengths.
        return unsafe { x86::block_sums(w, x, out, false) };
    }
    for (o, (w, x)) in out
        .iter_mut()
        .zip(w.chunks_exact(QK).zip(x.chunks_exact(QK)))
    {
        *o = dot_i8_portable(w, x);
    }
}

/// Per block, the exact product of 32 unsigned 4-bit weights (16 bytes: low nibbles are
/// elements 0–15, high nibbles 16–31) with the input's block.
pub(crate) fn block_sums_q4(w: &[u8], x: &[i8], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 is present; the function checks the slices' lengths.
        return unsafe { x86::block_sums(w, x, out, true) };
    }
    for (o, (w, x)) in out
        .iter_mut()
        .zip(w.chunks_exact(16).zip(x.chunks_exact(QK)))
    {
        *o = dot_q4_portable(w, x, 0);
    }
}

/// Exact integer dot product of a block of signed bytes with the input's block.
pub(crate) fn dot_i8_portable(w: &[u8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(a, b)| i32::from(*a as i8) * i32::from(*b))
        .sum()
}

/// Exact integer dot product of a block of 4-bit values (low nibbles are elements 0–15, high
/// nibbles 16–31), less `offset`, with the input's block.
pub(crate) fn dot_q4_portable(w: &[u8], x: &[i8], offset: i32) -> i32 {
    let (lo, hi) = x.split_at(16);
    let mut sum = 0i32;
    for j in 0..16 {
        sum += (i32::from(w[j] & 0xF) - offset) * i32::from(lo[j]);
        sum += (i32::from(w[j] >> 4) - offset) * i32::from(hi[j]);
    }
    sum
}

/// Whether the AVX2 block products may run (detected once; the results are the same either way,
/// as integer sums are exact).
#[cfg(target_arch = "x86_64")]
#[inline]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        std::env::var("CAIRN_LLM_CPU").as_deref() != Ok("portable")
            && std::arch::is_x86_feature_detected!("avx2")
    })
}

/// The block products with AVX2: 32 byte products per instruction, eight blocks' sums at a
/// time, the same integers as the portable loops.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One block's eight partial sums (i32 lanes).
    ///
    /// # Safety
    /// AVX2 must be present; `w` must hold at least 16 (`q4`) or 32 bytes and `x` 32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block(w: &[u8], x: &[i8], q4: bool) -> __m256i {
        debug_assert!(w.len() >= if q4 { 16 } else { 32 } && x.len() >= 32);
        // SAFETY: the caller guarantees the lengths; loads are unaligned.
        let xv = unsafe { _mm256_loadu_si256(x.as_ptr().cast()) };
        let ones = _mm256_set1_epi16(1);
        if q4 {
            // SAFETY: as above (16 weight bytes).
            let raw = unsafe { _mm_loadu_si128(w.as_ptr().cast()) };
            let mask = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            let wv = _mm256_set_m128i(hi, lo);
            _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones)
        } else {
            // SAFETY: as above (32 weight bytes).
            let wv = unsafe { _mm256_loadu_si256(w.as_ptr().cast()) };
            // |w| × (x with w's sign): unsigned × signed, as maddubs needs; |−128| is 128
            // unsigned and |x| ≤ 127, so no pair sum saturates.
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
            _mm256_madd_epi16(p, ones)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// # Safety
    /// AVX2 must be present.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_sums(w: &[u8], x: &[i8], out: &mut [i32], q4: bool) {
        let wb = if q4 { 16 } else { 32 };
        let n = out.len();
        assert!(w.len() >= n * wb && x.len() >= n * 32);
        let mut i = 0;
        while i + 8 <= n {
            let b = |k: usize| (&w[(i + k) * wb..], &x[(i + k) * 32..]);
            let (w0, x0) = b(0);
            let (w1, x1) = b(1);
            let (w2, x2) = b(2);
            let (w3, x3) = b(3);
            let (w4, x4) = b(4);
            let (w5, x5) = b(5);
            let (w6, x6) = b(6);
            let (w7, x7) = b(7);
            // SAFETY: the assert above covers blocks i..i + 8.
            let p = unsafe {
                [
                    block(w0, x0, q4),
                    block(w1, x1, q4),
                    block(w2, x2, q4),
                    block(w3, x3, q4),
                    block(w4, x4, q4),
                    block(w5, x5, q4),
                    block(w6, x6, q4),
                    block(w7, x7, q4),
                ]
            };
            let s01 = _mm256_hadd_epi32(p[0], p[1]);
            let s23 = _mm256_hadd_epi32(p[2], p[3]);
            let s45 = _mm256_hadd_epi32(p[4], p[5]);
            let s67 = _mm256_hadd_epi32(p[6], p[7]);
            let s0123 = _mm256_hadd_epi32(s01, s23);
            let s4567 = _mm256_hadd_epi32(s45, s67);
            let sums = _mm256_add_epi32(
                _mm256_permute2x128_si256(s0123, s4567, 0x20),
                _mm256_permute2x128_si256(s0123, s4567, 0x31),
            );
            // SAFETY: `out[i..i + 8]` exists.
            unsafe { _mm256_storeu_si256(out[i..].as_mut_ptr().cast(), sums) };
            i += 8;
        }
        while i < n {
            // SAFETY: the assert above covers block i.
            out[i] = hsum(unsafe { block(&w[i * wb..], &x[i * 32..], q4) });
            i += 1;
        }
    }
}
