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

/// Inputs whose products with one row are computed side by side (see [`Matrix::dots`]).
const TOGETHER: usize = 8;

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

/// [`TOGETHER`] inputs' per-block terms side by side (`[block * TOGETHER + input]`), so a
/// row's float terms for all of them load as one vector per block.
struct Lanes {
    d: Vec<f32>,
    s: Vec<f32>,
    sum: Vec<i32>,
}

impl Lanes {
    fn new(xs: &[Quantized]) -> Self {
        let blocks = xs[0].d.len();
        let mut l = Lanes {
            d: Vec::with_capacity(blocks * TOGETHER),
            s: Vec::with_capacity(blocks * TOGETHER),
            sum: Vec::with_capacity(blocks * TOGETHER),
        };
        for i in 0..blocks {
            for x in xs {
                l.d.push(x.d[i]);
                l.s.push(x.s[i]);
                l.sum.push(x.sum[i]);
            }
        }
        l
    }
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
        // Inputs [`TOGETHER`] at a time, their per-block terms laid side by side once.
        let lanes: Vec<Lanes> = xs.chunks_exact(TOGETHER).map(Lanes::new).collect();
        let scratch = || {
            (
                vec![vec![0i32; blocks]; TOGETHER],
                vec![0i32; blocks * TOGETHER],
            )
        };
        // Rows split among threads: a row is computed whole by one thread, so the split changes
        // no number.
        let threads = pool.map_or(1, |p| p.current_num_threads());
        if threads > 1 && self.rows >= 64 {
            let n = xs.len();
            let chunk = self.rows.div_ceil(threads);
            let mut parts: Vec<Vec<f32>> = vec![Vec::new(); self.rows.div_ceil(chunk)];
            let lanes = &lanes;
            pool.expect("threads > 1").scope(|s| {
                for (k, part) in parts.iter_mut().enumerate() {
                    s.spawn(move |_| {
                        let mut scratch = scratch();
                        let rows = k * chunk..((k + 1) * chunk).min(self.rows);
                        part.resize(rows.len() * n, 0.0);
                        for (i, r) in rows.enumerate() {
                            self.row(r, xs, lanes, &mut scratch, |t, v| part[i * n + t] = v);
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
        let mut scratch = scratch();
        (0..self.rows).for_each(|r| self.row(r, xs, &lanes, &mut scratch, |t, v| outs[t][r] = v));
    }

    /// Row `r` · every input, given to `out(t, value)`: [`TOGETHER`] inputs at a time.
    fn row(
        &self,
        r: usize,
        xs: &[Quantized],
        lanes: &[Lanes],
        (sums, sums_t): &mut (Vec<Vec<i32>>, Vec<i32>),
        mut out: impl FnMut(usize, f32),
    ) {
        for (g, lanes) in lanes.iter().enumerate() {
            let t = g * TOGETHER;
            let vs = self.dots(r, &xs[t..t + TOGETHER], lanes, sums, sums_t);
            for (j, v) in vs.into_iter().enumerate() {
                out(t + j, v);
            }
        }
        for (t, x) in xs.iter().enumerate().skip(lanes.len() * TOGETHER) {
            out(t, self.dot(r, x, &mut sums[0]));
        }
    }

    /// Row `r` · each of [`TOGETHER`] inputs: each is exactly [`Matrix::dot`]'s number (its
    /// float terms added in block order), but the sums run side by side: for 4-bit weights,
    /// lane by lane in vector registers (the same operations on each lane), the weights
    /// unpacked once for all inputs.
    fn dots(
        &self,
        r: usize,
        xs: &[Quantized],
        lanes: &Lanes,
        sums: &mut [Vec<i32>],
        sums_t: &mut [i32],
    ) -> [f32; TOGETHER] {
        const N: usize = TOGETHER;
        let blocks = self.cols / QK;
        let b0 = r * blocks;
        let mut acc = [0f32; N];
        match self.ty {
            WeightType::F32 | WeightType::F16 => {
                return std::array::from_fn(|j| self.dot(r, &xs[j], &mut sums[j]));
            }
            WeightType::Q8_0 => {
                for (x, s) in xs.iter().zip(sums.iter_mut()) {
                    block_sums_i8(&self.q[b0 * QK..(b0 + blocks) * QK], &x.qs, s);
                }
                for (i, d) in self.d[b0..b0 + blocks].iter().enumerate() {
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a += sums[j][i] as f32 * (d * xs[j].d[i]);
                    }
                }
            }
            WeightType::Q4_0 | WeightType::Q4_1 => {
                let qs: [&[i8]; N] = std::array::from_fn(|j| xs[j].qs.as_slice());
                block_sums_q4_x8(&self.q[b0 * 16..(b0 + blocks) * 16], &qs, sums_t);
                let d = &self.d[b0..b0 + blocks];
                if self.ty == WeightType::Q4_1 {
                    let m = &self.m[b0..b0 + blocks];
                    for i in 0..blocks {
                        let (d, m) = (d[i], m[i]);
                        let si: &[i32; N] = sums_t[i * N..][..N].try_into().expect("N lanes");
                        let xd: &[f32; N] = lanes.d[i * N..][..N].try_into().expect("N lanes");
                        let xs: &[f32; N] = lanes.s[i * N..][..N].try_into().expect("N lanes");
                        for j in 0..N {
                            acc[j] += (d * xd[j]) * si[j] as f32 + m * xs[j];
                        }
                    }
                } else {
                    for (i, d) in d.iter().enumerate() {
                        let si: &[i32; N] = sums_t[i * N..][..N].try_into().expect("N lanes");
                        let xd: &[f32; N] = lanes.d[i * N..][..N].try_into().expect("N lanes");
                        let xsum: &[i32; N] = lanes.sum[i * N..][..N].try_into().expect("N lanes");
                        for j in 0..N {
                            // Σ (w − 8)·x = Σ w·x − 8·Σ x.
                            let sumi = si[j] - 8 * xsum[j];
                            acc[j] += sumi as f32 * (d * xd[j]);
                        }
                    }
                }
            }
        }
        acc
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

/// [`block_sums_q4`] of one row with each of [`TOGETHER`] inputs, laid side by side:
/// `out[block * TOGETHER + input]`; the row's weights are unpacked once for all of them.
pub(crate) fn block_sums_q4_x8(w: &[u8], xs: &[&[i8]; TOGETHER], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 is present; the function checks the slices' lengths.
        return unsafe { x86::block_sums_q4_x8(w, xs, out) };
    }
    let blocks = w.len() / 16;
    let mut one = vec![0i32; blocks];
    for (j, x) in xs.iter().enumerate() {
        block_sums_q4(w, x, &mut one);
        for (i, v) in one.iter().enumerate() {
            out[i * TOGETHER + j] = *v;
        }
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
            let wv = unsafe { unpack_q4(w) };
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

    /// Eight blocks' partial sums (one vector each) reduced to one vector of the eight sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sums8(p: [__m256i; 8]) -> __m256i {
        let s01 = _mm256_hadd_epi32(p[0], p[1]);
        let s23 = _mm256_hadd_epi32(p[2], p[3]);
        let s45 = _mm256_hadd_epi32(p[4], p[5]);
        let s67 = _mm256_hadd_epi32(p[6], p[7]);
        let s0123 = _mm256_hadd_epi32(s01, s23);
        let s4567 = _mm256_hadd_epi32(s45, s67);
        _mm256_add_epi32(
            _mm256_permute2x128_si256(s0123, s4567, 0x20),
            _mm256_permute2x128_si256(s0123, s4567, 0x31),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// 16 bytes of 4-bit weights as 32 unsigned bytes (low nibbles first).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn unpack_q4(w: &[u8]) -> __m256i {
        debug_assert!(w.len() >= 16);
        // SAFETY: the caller guarantees 16 bytes; the load is unaligned.
        let raw = unsafe { _mm_loadu_si128(w.as_ptr().cast()) };
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// [`super::block_sums_q4_x8`]: per eight blocks, each input's eight sums, then the 8×8
    /// transposed so each block's sums for the eight inputs are stored together.
    ///
    /// # Safety
    /// AVX2 must be present.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block_sums_q4_x8(w: &[u8], xs: &[&[i8]; 8], out: &mut [i32]) {
        let n = w.len() / 16;
        assert!(xs.iter().all(|x| x.len() >= n * 32));
        assert!(out.len() >= n * 8);
        let ones = _mm256_set1_epi16(1);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `w` holds blocks i..i + 8 (n = w.len() / 16).
            let wv: [__m256i; 8] =
                std::array::from_fn(|k| unsafe { unpack_q4(&w[(i + k) * 16..]) });
            // Per input: its sums for blocks i..i + 8.
            let v: [__m256i; 8] = std::array::from_fn(|j| {
                // SAFETY: each input holds n blocks of 32 (asserted above).
                let p: [__m256i; 8] = std::array::from_fn(|k| {
                    let xv = unsafe { _mm256_loadu_si256(xs[j][(i + k) * 32..].as_ptr().cast()) };
                    _mm256_madd_epi16(_mm256_maddubs_epi16(wv[k], xv), ones)
                });
                sums8(p)
            });
            // Transposed: per block, the eight inputs' sums.
            let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
            let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
            let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
            let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
            let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
            let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
            let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
            let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            let rows = [
                _mm256_permute2x128_si256(u0, u4, 0x20),
                _mm256_permute2x128_si256(u1, u5, 0x20),
                _mm256_permute2x128_si256(u2, u6, 0x20),
                _mm256_permute2x128_si256(u3, u7, 0x20),
                _mm256_permute2x128_si256(u0, u4, 0x31),
                _mm256_permute2x128_si256(u1, u5, 0x31),
                _mm256_permute2x128_si256(u2, u6, 0x31),
                _mm256_permute2x128_si256(u3, u7, 0x31),
            ];
            for (k, row) in rows.into_iter().enumerate() {
                // SAFETY: `out` holds n * 8 (asserted above).
                unsafe { _mm256_storeu_si256(out[(i + k) * 8..].as_mut_ptr().cast(), row) };
            }
            i += 8;
        }
        while i < n {
            for (j, x) in xs.iter().enumerate() {
                // SAFETY: the asserts above cover block i.
                out[i * 8 + j] = hsum(unsafe { block(&w[i * 16..], &x[i * 32..], true) });
            }
            i += 1;
        }
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
            let sums = sums8(p);
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
