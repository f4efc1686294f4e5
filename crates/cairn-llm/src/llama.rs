//! The llama architecture's forward pass, in a fixed order of floating-point operations whatever
//! the batching of the prompt or the thread count (and `libm`'s exp/sin/cos, which are the same bits everywhere).

use std::sync::Arc;

use cairn_gguf::{GgufModel, MetaValue};

use crate::LlmError;
use crate::quant::{Matrix, Quantized, WeightType};

/// The shape of a llama model.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Hidden width.
    pub embedding: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Longest context trained for.
    pub context: usize,
    /// Vocabulary (rows of the output matrix).
    pub vocab: usize,
    /// RMS norm epsilon.
    pub norm_eps: f32,
    /// RoPE base frequency.
    pub rope_base: f64,
}

impl Config {
    fn head_dim(&self) -> usize {
        self.embedding / self.heads
    }

    /// Bytes of keys and values a session keeps per position: what a server budgets a
    /// session's context by (a file's claimed context is no budget).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers * self.head_dim() * self.kv_heads * 2 * std::mem::size_of::<f32>()
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// A tensor's type, shape and bytes in the file.
type Tensor<'a> = (WeightType, Vec<usize>, &'a [u8]);

/// A loaded model's weights, shared by every generation.
pub struct Weights {
    /// The model's shape.
    pub config: Config,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Matrix,
    /// Per pair of head dimensions, the RoPE inverse frequency.
    inv_freq: Vec<f64>,
}

impl Weights {
    /// Bytes the weights hold in memory: what a cache of loaded models must count (more than
    /// the file's for F16 tensors, widened to f32, and for an output layer tied to the
    /// embedding, which is held twice).
    pub fn memory_bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.memory_bytes())
                    .sum::<usize>()
                    + (l.attn_norm.len() + l.ffn_norm.len()) * f
            })
            .sum();
        self.embed.memory_bytes()
            + self.output.memory_bytes()
            + layers
            + self.norm.len() * f
            + self.inv_freq.len() * std::mem::size_of::<f64>()
    }

    /// The weights of a llama-architecture GGUF model held in `file`.
    pub fn from_gguf(model: &GgufModel, file: &[u8]) -> Result<Self, LlmError> {
        let arch = model.metadata.architecture.as_str();
        if arch != "llama" {
            return Err(LlmError::Unsupported(format!(
                "architecture `{arch}`: the engine runs llama-architecture models"
            )));
        }
        let num = |key: &str| -> Result<usize, LlmError> {
            model
                .values
                .get(&format!("llama.{key}"))
                .and_then(MetaValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| LlmError::Model(format!("`llama.{key}` is missing")))
        };
        let float = |key: &str, default: f64| {
            model
                .values
                .get(&format!("llama.{key}"))
                .and_then(MetaValue::as_f64)
                .unwrap_or(default)
        };
        let embedding = num("embedding_length")?;
        let heads = num("attention.head_count")?;
        let kv_heads = model
            .values
            .get("llama.attention.head_count_kv")
            .and_then(MetaValue::as_u64)
            .map_or(heads, |v| v as usize);
        if heads == 0 || kv_heads == 0 || embedding % heads != 0 || heads % kv_heads != 0 {
            return Err(LlmError::Model(format!(
                "{heads} heads, {kv_heads} key/value heads and width {embedding} do not divide"
            )));
        }
        if (embedding / heads) % 2 != 0 {
            return Err(LlmError::Model("the head width is odd".into()));
        }
        if let Some(rope) = model
            .values
            .get("llama.rope.dimension_count")
            .and_then(MetaValue::as_u64)
            && rope as usize != embedding / heads
        {
            return Err(LlmError::Unsupported(
                "partial rotary embeddings (rope.dimension_count below the head width)".into(),
            ));
        }
        let by_name: std::collections::HashMap<&str, &cairn_gguf::TensorInfo> =
            model.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let tensor = |name: &str| -> Result<Tensor<'_>, LlmError> {
            let t = by_name
                .get(name)
                .ok_or_else(|| LlmError::Model(format!("tensor `{name}` is missing")))?;
            let ty = WeightType::from_ggml(t.ty, name)?;
            let dims = t.dims.iter().map(|d| *d as usize).collect();
            Ok((ty, dims, model.tensor_bytes(file, t)))
        };
        let matrix = |name: &str, cols: usize| -> Result<Matrix, LlmError> {
            let (ty, dims, data) = tensor(name)?;
            if dims.len() != 2 || dims[0] != cols {
                return Err(LlmError::Model(format!(
                    "tensor `{name}` has shape {dims:?}; expected {cols} columns"
                )));
            }
            Matrix::new(ty, dims[1], cols, data, name)
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, LlmError> {
            let (ty, dims, data) = tensor(name)?;
            if ty != WeightType::F32 || dims != [len] {
                return Err(LlmError::Model(format!(
                    "tensor `{name}` is {ty:?} {dims:?}; expected F32 [{len}]"
                )));
            }
            Ok(data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let layers_n = num("block_count")?;
        // Nine tensors a block: a count the file cannot back is refused before it sizes anything.
        if layers_n == 0 || layers_n > model.tensors.len() / 9 {
            return Err(LlmError::Model(format!(
                "{layers_n} blocks, but the file holds {} tensors",
                model.tensors.len()
            )));
        }
        let embed = matrix("token_embd.weight", embedding)?;
        let head_dim = embedding / heads;
        let kv_dim = head_dim * kv_heads;
        let mut layers = Vec::with_capacity(layers_n);
        let mut ffn = 0;
        for i in 0..layers_n {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            let gate = matrix(&n("ffn_gate"), embedding)?;
            if i > 0 && gate.rows != ffn {
                return Err(LlmError::Model(format!(
                    "block {i} has a feed-forward width of {}, block 0 of {ffn}",
                    gate.rows
                )));
            }
            ffn = gate.rows;
            let layer = Layer {
                attn_norm: vector(&n("attn_norm"), embedding)?,
                wq: matrix(&n("attn_q"), embedding)?,
                wk: matrix(&n("attn_k"), embedding)?,
                wv: matrix(&n("attn_v"), embedding)?,
                wo: matrix(&n("attn_output"), embedding)?,
                ffn_norm: vector(&n("ffn_norm"), embedding)?,
                up: matrix(&n("ffn_up"), embedding)?,
                down: matrix(&n("ffn_down"), ffn)?,
                gate,
            };
            for (m, rows) in [
                (&layer.wq, embedding),
                (&layer.wk, kv_dim),
                (&layer.wv, kv_dim),
                (&layer.wo, embedding),
                (&layer.up, ffn),
                (&layer.down, embedding),
            ] {
                if m.rows != rows {
                    return Err(LlmError::Model(format!(
                        "block {i} has a matrix of {} rows where {rows} belong",
                        m.rows
                    )));
                }
            }
            layers.push(layer);
        }
        // Tied embeddings: without `output.weight` the embedding matrix projects to logits.
        let output = match model.tensors.iter().any(|t| t.name == "output.weight") {
            true => matrix("output.weight", embedding)?,
            false => embed.clone(),
        };
        if output.rows != embed.rows {
            return Err(LlmError::Model(format!(
                "the embedding has {} rows and the output layer {}",
                embed.rows, output.rows
            )));
        }
        let context = num("context_length")?;
        if context == 0 {
            return Err(LlmError::Model("the context length is 0".into()));
        }
        let rope_base = float("rope.freq_base", 10_000.0);
        let inv_freq = (0..head_dim / 2)
            .map(|i| libm::pow(rope_base, -2.0 * i as f64 / head_dim as f64))
            .collect();
        Ok(Self {
            config: Config {
                embedding,
                layers: layers_n,
                heads,
                kv_heads,
                ffn,
                context,
                vocab: output.rows,
                norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5) as f32,
                rope_base,
            },
            norm: vector("output_norm.weight", embedding)?,
            embed,
            layers,
            output,
            inv_freq,
        })
    }
}

/// Attention scores computed side by side (see [`Session::feed`]).
const LANES: usize = 8;

/// One generation's state: the keys and values of every position so far.
pub struct Session {
    weights: Arc<Weights>,
    /// Per layer: `positions × kv_dim` keys, then values.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Positions processed.
    pub position: usize,
    /// Threads the matrix products run on (none: the calling thread).
    pool: Option<Arc<rayon::ThreadPool>>,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * w;
    }
}

impl Session {
    /// A fresh session over shared weights.
    pub fn new(weights: Arc<Weights>) -> Self {
        let n = weights.config.layers;
        Self {
            weights,
            keys: vec![Vec::new(); n],
            values: vec![Vec::new(); n],
            position: 0,
            pool: None,
        }
    }

    /// A fresh session whose matrix products run on `pool`; every number is the one a
    /// single-threaded session computes.
    pub fn with_pool(weights: Arc<Weights>, pool: Option<Arc<rayon::ThreadPool>>) -> Self {
        Self {
            pool,
            ..Self::new(weights)
        }
    }

    /// Feeds `token` at the next position and returns the logits for the one after it.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, LlmError> {
        self.feed(&[token])
    }

    /// Feeds `tokens` at the next positions and returns the logits after the last one (empty
    /// for no tokens). Each weight row is read once for all of them; every number computed is
    /// the one feeding them one at a time computes, in the same order.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, LlmError> {
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let w = Arc::clone(&self.weights);
        let c = &w.config;
        if let Some(t) = tokens.iter().find(|t| **t as usize >= c.vocab) {
            return Err(LlmError::Input(format!(
                "token {t} is outside the vocabulary of {}",
                c.vocab
            )));
        }
        if self.position + n > c.context {
            return Err(LlmError::Input(format!(
                "{} tokens after {} exceed the model's context of {}",
                n, self.position, c.context
            )));
        }
        let (dim, hd) = (c.embedding, c.head_dim());
        let kv_dim = hd * c.kv_heads;
        let group = c.heads / c.kv_heads;
        let start = self.position;
        let pool = self.pool.as_deref();
        let buf = |len: usize| vec![vec![0f32; len]; n];
        let mut x = buf(dim);
        for (x, t) in x.iter_mut().zip(tokens) {
            w.embed.dequantize_row(*t as usize, x);
        }
        let (mut h, mut q, mut att, mut o) = (buf(dim), buf(dim), buf(dim), buf(dim));
        let (mut k, mut v) = (buf(kv_dim), buf(kv_dim));
        let (mut g, mut u) = (buf(c.ffn), buf(c.ffn));
        let mut scores = vec![0f32; start + n];
        // Per position: the rotation of each pair of head dimensions.
        let rotations: Vec<(Vec<f32>, Vec<f32>)> = (start..start + n)
            .map(|pos| {
                w.inv_freq
                    .iter()
                    .map(|f| {
                        let a = pos as f64 * f;
                        (libm::sin(a) as f32, libm::cos(a) as f32)
                    })
                    .unzip()
            })
            .collect();
        let rope = |x: &mut [f32], (sin, cos): &(Vec<f32>, Vec<f32>)| {
            for head in x.chunks_exact_mut(hd) {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * cos[i] - b * sin[i];
                    pair[1] = a * sin[i] + b * cos[i];
                }
            }
        };
        let quantize =
            |vs: &[Vec<f32>]| -> Vec<Quantized> { vs.iter().map(|v| Quantized::new(v)).collect() };
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in w.layers.iter().enumerate() {
            for (x, h) in x.iter().zip(h.iter_mut()) {
                rms_norm(x, &layer.attn_norm, c.norm_eps, h);
            }
            let hq = quantize(&h);
            layer.wq.matmul(&hq, &mut q, pool);
            layer.wk.matmul(&hq, &mut k, pool);
            layer.wv.matmul(&hq, &mut v, pool);
            for t in 0..n {
                rope(&mut q[t], &rotations[t]);
                rope(&mut k[t], &rotations[t]);
                self.keys[l].extend_from_slice(&k[t]);
                self.values[l].extend_from_slice(&v[t]);
            }
            let (keys, values) = (&self.keys[l], &self.values[l]);
            for t in 0..n {
                // Causal: position start + t sees the keys up to its own.
                let scores = &mut scores[..start + t + 1];
                for head in 0..c.heads {
                    let qh = &q[t][head * hd..(head + 1) * hd];
                    let kvh = head / group;
                    let key = |p: usize| &keys[p * kv_dim + kvh * hd..][..hd];
                    let mut max = f32::NEG_INFINITY;
                    // Eight positions' dot products at once: each is still summed in dimension
                    // order (the same bits), but eight independent sums keep the CPU busy.
                    let mut p = 0;
                    while p + LANES <= scores.len() {
                        let ks: [&[f32]; LANES] = std::array::from_fn(|j| key(p + j));
                        let mut dots = [0f32; LANES];
                        for (i, a) in qh.iter().enumerate() {
                            for (d, k) in dots.iter_mut().zip(&ks) {
                                *d += a * k[i];
                            }
                        }
                        for (s, d) in scores[p..p + LANES].iter_mut().zip(dots) {
                            *s = d * scale;
                            max = max.max(*s);
                        }
                        p += LANES;
                    }
                    for (p, s) in scores.iter_mut().enumerate().skip(p) {
                        let mut dot = 0f32;
                        for (a, b) in qh.iter().zip(key(p)) {
                            dot += a * b;
                        }
                        *s = dot * scale;
                        max = max.max(*s);
                    }
                    let mut total = 0f32;
                    for s in scores.iter_mut() {
                        *s = libm::expf(*s - max);
                        total += *s;
                    }
                    let out = &mut att[t][head * hd..(head + 1) * hd];
                    out.fill(0.0);
                    for (p, s) in scores.iter().enumerate() {
                        let weight = s / total;
                        let vp = &values[p * kv_dim + kvh * hd..p * kv_dim + (kvh + 1) * hd];
                        for (o, v) in out.iter_mut().zip(vp) {
                            *o += weight * v;
                        }
                    }
                }
            }
            layer.wo.matmul(&quantize(&att), &mut o, pool);
            for (x, o) in x.iter_mut().zip(&o) {
                for (x, o) in x.iter_mut().zip(o) {
                    *x += o;
                }
            }
            for (x, h) in x.iter().zip(h.iter_mut()) {
                rms_norm(x, &layer.ffn_norm, c.norm_eps, h);
            }
            let hq = quantize(&h);
            layer.gate.matmul(&hq, &mut g, pool);
            layer.up.matmul(&hq, &mut u, pool);
            for (g, u) in g.iter_mut().zip(&u) {
                for (g, u) in g.iter_mut().zip(u) {
                    *g = *g / (1.0 + libm::expf(-*g)) * u;
                }
            }
            layer.down.matmul(&quantize(&g), &mut o, pool);
            for (x, o) in x.iter_mut().zip(&o) {
                for (x, o) in x.iter_mut().zip(o) {
                    *x += o;
                }
            }
        }
        // Only the last position's logits are asked for.
        let mut last = vec![0f32; dim];
        rms_norm(&x[n - 1], &w.norm, c.norm_eps, &mut last);
        let mut logits = vec![vec![0f32; c.vocab]];
        w.output.matmul(&[Quantized::new(&last)], &mut logits, pool);
        self.position += n;
        Ok(logits.pop().expect("one row"))
    }
}
