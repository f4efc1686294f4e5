//! The catalog of what models compute: for each model skill, how the hub marks a model that
//! computes it (a tag and an ONNX signature), how its input tensors are built from a sub-task's
//! inputs, and how its outputs are read back. Exact skills run in [`crate::exact`].

use std::path::Path;
use std::sync::Arc;

use cairn_core::{BlobId, DataType, Tensor};
use cairn_hub_api::{HubClient, Search};
use serde::{Deserialize, Serialize};

use crate::task::{Skill, SubtaskInputs};
use crate::wordpiece::Vocab;

/// The hub tag a model carries to offer a skill (`skill-digit-recognition`).
pub fn tag(skill: Skill) -> String {
    format!("skill-{}", skill.as_str())
}

/// Why a model skill cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    /// No model on the hub offers it with a signature the entry can feed.
    #[error(
        "no model on the hub computes {0} (none tagged skill-{0} with a matching ONNX signature)"
    )]
    NoModel(&'static str),
    /// The hub could not be asked.
    #[error("the hub: {0}")]
    Hub(String),
    /// The inputs do not fit the skill.
    #[error("{0}")]
    Inputs(String),
    /// The outputs are not what the signature promised.
    #[error("the model's outputs: {0}")]
    Outputs(String),
}

/// A hub model chosen for a skill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelChoice {
    /// `name@version`.
    pub reference: String,
    /// The ONNX file's CID.
    pub cid: BlobId,
    /// The input tensor's name (the first, when it takes several).
    pub input: String,
    /// Its other inputs' names, when it takes several (a sentence embedder's attention mask).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_inputs: Vec<String>,
    /// Class labels, when the release ships them (magika's `config.min.json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The CID of the file the labels were read from (`cairn run verify --hub` reads it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_cid: Option<BlobId>,
    /// The CID of the tokenizer's vocabulary the release ships (a sentence embedder's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_cid: Option<BlobId>,
    /// That vocabulary, read (not recorded: its CID is).
    #[serde(skip)]
    pub vocab: Option<Arc<Vocab>>,
}

/// What a model step's outputs say, kept in the run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAnswer {
    /// The answer in words (`7`, `rust`).
    pub label: String,
    /// The model's score for it (0–1).
    pub score: f64,
    /// Whether the score passes the model's own threshold for a confident answer.
    pub confident: bool,
}

fn is_float(t: &str) -> bool {
    t == "tensor(float)"
}

fn dims(v: &cairn_onnx::ValueInfo) -> Vec<Option<i64>> {
    v.shape
        .as_ref()
        .map(|s| {
            s.iter()
                .map(|d| match d {
                    cairn_onnx::Dim::Fixed(n) => Some(*n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The inputs a sentence embedder may take (BERT's names); any other input does not fit.
const TEXT_INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

/// Whether a signature is one the skill can feed and read: its input names.
fn fits(skill: Skill, sig: &cairn_onnx::OnnxSignature) -> Option<Vec<String>> {
    if skill == Skill::TextSimilarity {
        let names: Vec<&str> = sig.inputs.iter().map(|i| i.name.as_str()).collect();
        let ok = names.len() >= 2
            && names[..2] == TEXT_INPUTS[..2]
            && names.iter().all(|n| TEXT_INPUTS.contains(n))
            && sig
                .inputs
                .iter()
                .all(|i| i.type_name == "tensor(int64)" && dims(i).len() == 2)
            && sig
                .outputs
                .iter()
                .any(|o| is_float(&o.type_name) && matches!(dims(o).len(), 2 | 3));
        return ok.then(|| names.into_iter().map(str::to_owned).collect());
    }
    let [input] = sig.inputs.as_slice() else {
        return None;
    };
    let d = dims(input);
    let ok = match skill {
        Skill::DigitRecognition => {
            is_float(&input.type_name)
                && d.len() == 2
                && d[1] == Some(64)
                && sig.outputs.iter().any(|o| o.type_name == "tensor(int64)")
                && sig.outputs.iter().any(|o| {
                    is_float(&o.type_name) && dims(o).last().copied().flatten() == Some(10)
                })
        }
        Skill::FileType => {
            input.type_name == "tensor(int32)"
                && d.len() == 2
                && d[1] == Some(2048)
                && sig.outputs.iter().any(|o| is_float(&o.type_name))
        }
        Skill::Arithmetic | Skill::UnitConversion | Skill::TextSimilarity => false,
    };
    ok.then(|| vec![input.name.clone()])
}

/// Finds the model the hub offers for `skill`: repositories tagged for it (owned by one of
/// `publishers`, when any are named: a tag alone is anyone's to set), newest release first,
/// the first ONNX file whose signature fits.
pub async fn find_model(
    hub: &HubClient,
    skill: Skill,
    scratch: &Path,
    publishers: &[alloy_primitives::Address],
) -> Result<ModelChoice, SkillError> {
    let name = skill.as_str();
    let repos = hub
        .search(&Search {
            tag: Some(tag(skill)),
            limit: Some(20),
            ..Default::default()
        })
        .await
        .map_err(|e| SkillError::Hub(e.to_string()))?;
    for repo in repos
        .into_iter()
        .filter(|r| publishers.is_empty() || publishers.contains(&r.owner))
    {
        let detail = hub
            .repo(&repo.name)
            .await
            .map_err(|e| SkillError::Hub(e.to_string()))?;
        for release in detail.releases.iter().filter(|r| r.published_at.is_some()) {
            for f in &release.files {
                let Some(mut inputs) = f.onnx.as_ref().and_then(|s| fits(skill, s)) else {
                    continue;
                };
                let (vocab, vocab_cid) = match skill {
                    Skill::TextSimilarity => {
                        let file = release
                            .files
                            .iter()
                            .find(|c| c.path.as_str().ends_with("vocab.json"))
                            .ok_or(SkillError::NoModel(name))?;
                        (
                            Some(Arc::new(read_vocab(hub, &file.cid, scratch).await?)),
                            Some(file.cid),
                        )
                    }
                    _ => (None, None),
                };
                let (labels, labels_cid) = match skill {
                    Skill::FileType => {
                        let config = release
                            .files
                            .iter()
                            .find(|c| c.path.as_str().ends_with("config.min.json"))
                            .ok_or(SkillError::NoModel(name))?;
                        (
                            magika_labels(hub, &config.cid, scratch).await?,
                            Some(config.cid),
                        )
                    }
                    _ => (Vec::new(), None),
                };
                let input = inputs.remove(0);
                return Ok(ModelChoice {
                    reference: format!("{}@{}", repo.name, release.version),
                    cid: f.cid,
                    input,
                    more_inputs: inputs,
                    labels,
                    labels_cid,
                    vocab_cid,
                    vocab,
                });
            }
        }
    }
    Err(SkillError::NoModel(name))
}

/// A small file of a release, by CID (so checked), at most 1 MiB.
async fn small_file(hub: &HubClient, cid: &BlobId, scratch: &Path) -> Result<Vec<u8>, SkillError> {
    let path = scratch.join(format!(
        "{}.json",
        cid.to_sha256_string().trim_start_matches("sha256:")
    ));
    hub.download_at_most(cid, &path, 1 << 20, |_, _| {})
        .await
        .map_err(|e| SkillError::Hub(e.to_string()))?;
    std::fs::read(&path).map_err(|e| SkillError::Hub(e.to_string()))
}

/// A sentence embedder's vocabulary from its release's `vocab.json`.
pub async fn read_vocab(
    hub: &HubClient,
    cid: &BlobId,
    scratch: &Path,
) -> Result<Vocab, SkillError> {
    Vocab::from_json(&small_file(hub, cid, scratch).await?)
        .map_err(|e| SkillError::Hub(e.to_string()))
}

/// magika's label list from its release's `config.min.json` (downloaded by CID, so checked).
pub async fn magika_labels(
    hub: &HubClient,
    cid: &BlobId,
    scratch: &Path,
) -> Result<Vec<String>, SkillError> {
    let bytes = small_file(hub, cid, scratch).await?;
    #[derive(Deserialize)]
    struct Config {
        target_labels_space: Vec<String>,
    }
    let c: Config = serde_json::from_slice(&bytes)
        .map_err(|e| SkillError::Hub(format!("magika's config: {e}")))?;
    Ok(c.target_labels_space)
}

/// magika's byte features: 1 KiB from the start after leading whitespace, 1 KiB from the end
/// before trailing whitespace, padded with 256 (its `standard_v3_3` configuration).
pub fn magika_features(content: &[u8]) -> Vec<i32> {
    const SIDE: usize = 1024;
    const PAD: i32 = 256;
    let start = content
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(content.len());
    let end = content
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let beg = &content[start..content.len().min(start + SIDE)];
    let tail_src = &content[..end];
    let tail = &tail_src[tail_src.len().saturating_sub(SIDE)..];
    let mut out = Vec::with_capacity(2 * SIDE);
    out.extend(beg.iter().map(|b| i32::from(*b)));
    out.resize(SIDE, PAD);
    out.extend(std::iter::repeat_n(PAD, SIDE - tail.len()));
    out.extend(tail.iter().map(|b| i32::from(*b)));
    out
}

/// The fewest bytes magika classifies with its model (its `min_file_size_for_dl`).
pub const MAGIKA_MIN_BYTES: usize = 8;

/// The token ids of a step's texts, by the model's vocabulary (none for other skills).
pub fn tokens(
    skill: Skill,
    inputs: &SubtaskInputs,
    model: &ModelChoice,
) -> Result<Vec<Vec<u32>>, SkillError> {
    match (skill, inputs) {
        (Skill::TextSimilarity, SubtaskInputs::Texts { texts }) => {
            let vocab = model.vocab.as_ref().ok_or_else(|| {
                SkillError::Inputs(format!("{} came without its vocabulary", model.reference))
            })?;
            Ok(texts.iter().map(|t| vocab.encode(t)).collect())
        }
        _ => Ok(Vec::new()),
    }
}

/// A sentence embedder's inputs: the ids padded with 0 to the longest, the attention mask, and
/// token types (all 0), under the model's input names.
fn text_inputs(
    texts: &[String],
    tokens: &[Vec<u32>],
    model: &ModelChoice,
) -> Result<Vec<Tensor>, SkillError> {
    let bad = |m: String| SkillError::Inputs(m);
    if texts.len() < 2 || texts.len() > crate::task::MAX_TEXTS || tokens.len() != texts.len() {
        return Err(bad(format!(
            "{} texts with {} token lists: 2 to {} texts are compared",
            texts.len(),
            tokens.len(),
            crate::task::MAX_TEXTS
        )));
    }
    if tokens
        .iter()
        .any(|t| t.len() < 2 || t.len() > crate::wordpiece::MAX_TOKENS)
    {
        return Err(bad(format!(
            "each text is 2 to {} tokens",
            crate::wordpiece::MAX_TOKENS
        )));
    }
    let width = tokens.iter().map(Vec::len).max().unwrap_or(0);
    let rows = |f: &dyn Fn(&[u32], usize) -> i64| -> Vec<u8> {
        tokens
            .iter()
            .flat_map(|t| (0..width).map(move |i| f(t, i)))
            .flat_map(i64::to_le_bytes)
            .collect()
    };
    let shape = vec![tokens.len() as u64, width as u64];
    std::iter::once(&model.input)
        .chain(&model.more_inputs)
        .map(|name| {
            let data = match name.as_str() {
                "input_ids" => rows(&|t, i| t.get(i).map_or(0, |v| i64::from(*v))),
                "attention_mask" => rows(&|t, i| i64::from(i < t.len())),
                "token_type_ids" => rows(&|_, _| 0),
                other => return Err(bad(format!("an input {other} a text model does not take"))),
            };
            Tensor::new(name, DataType::Int64, shape.clone(), data)
                .map_err(|e| SkillError::Inputs(e.to_string()))
        })
        .collect()
}

/// The input tensors of a model step (`tokens`: a text step's, from [`tokens`]).
pub fn build_inputs(
    skill: Skill,
    inputs: &SubtaskInputs,
    model: &ModelChoice,
    tokens: &[Vec<u32>],
) -> Result<Vec<Tensor>, SkillError> {
    let bad = |m: &str| SkillError::Inputs(m.to_owned());
    let input_name = model.input.as_str();
    let tensor = match (skill, inputs) {
        (Skill::TextSimilarity, SubtaskInputs::Texts { texts }) => {
            return text_inputs(texts, tokens, model);
        }
        (Skill::DigitRecognition, SubtaskInputs::Pixels { pixels }) => {
            if pixels.len() != 64 || pixels.iter().any(|p| *p > 16) {
                return Err(bad("an 8×8 digit image is 64 values from 0 to 16"));
            }
            let data = pixels
                .iter()
                .flat_map(|p| f32::from(*p).to_le_bytes())
                .collect();
            Tensor::new(input_name, DataType::Fp32, vec![1, 64], data)
        }
        (Skill::FileType, SubtaskInputs::File { content }) => {
            if content.trim().len() < MAGIKA_MIN_BYTES {
                return Err(bad(
                    "the file is too short to classify (under 8 bytes after trimming whitespace)",
                ));
            }
            let data = magika_features(content.as_bytes())
                .into_iter()
                .flat_map(i32::to_le_bytes)
                .collect();
            Tensor::new(input_name, DataType::Int32, vec![1, 2048], data)
        }
        _ => return Err(bad("these inputs are not this skill's")),
    };
    tensor
        .map(|t| vec![t])
        .map_err(|e| SkillError::Inputs(e.to_string()))
}

fn floats(t: &Tensor) -> Result<Vec<f32>, SkillError> {
    if t.dtype() != DataType::Fp32 {
        return Err(SkillError::Outputs(format!("{} is not float32", t.name())));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Each text's embedding: the token states `[n, L, d]` averaged over each text's tokens (the
/// embedder's mean pooling), else a pooled output `[n, d]` when the model gives only that.
fn embeddings(outputs: &[Tensor], tokens: &[Vec<u32>]) -> Result<Vec<Vec<f64>>, SkillError> {
    let n = tokens.len();
    let bad = |m: String| SkillError::Outputs(m);
    let fits = |t: &&Tensor, rank: usize| {
        t.dtype() == DataType::Fp32
            && t.shape().len() == rank
            && t.shape()[0] == n as u64
            && t.shape()[1..].iter().all(|x| *x > 0)
    };
    if let Some(states) = outputs.iter().find(|t| fits(t, 3)) {
        let (l, d) = (states.shape()[1] as usize, states.shape()[2] as usize);
        let v = floats(states)?;
        if n.checked_mul(l).and_then(|x| x.checked_mul(d)) != Some(v.len()) {
            return Err(bad("the states' shape does not match their data".into()));
        }
        return tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.len() > l || t.is_empty() {
                    return Err(bad("fewer states than tokens".into()));
                }
                let mut e = vec![0f64; d];
                for row in v[i * l * d..].chunks_exact(d).take(t.len()) {
                    e.iter_mut().zip(row).for_each(|(a, x)| *a += f64::from(*x));
                }
                Ok(e.into_iter().map(|a| a / t.len() as f64).collect())
            })
            .collect();
    }
    let pooled = outputs
        .iter()
        .find(|t| fits(t, 2))
        .ok_or_else(|| bad(format!("no float [{n}, L, d] or [{n}, d] output")))?;
    let d = pooled.shape()[1] as usize;
    Ok(floats(pooled)?
        .chunks_exact(d)
        .map(|r| r.iter().map(|x| f64::from(*x)).collect())
        .collect())
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let d = norm(a) * norm(b);
    if d == 0.0 { 0.0 } else { dot / d }
}

/// The cosine similarity a paraphrase embedder gives texts that mean about the same.
pub const SIMILAR: f64 = 0.5;

/// Reads a model step's outputs (`tokens`: a text step's).
pub fn read_outputs(
    skill: Skill,
    outputs: &[Tensor],
    labels: &[String],
    tokens: &[Vec<u32>],
) -> Result<ModelAnswer, SkillError> {
    match skill {
        Skill::TextSimilarity => {
            let e = embeddings(outputs, tokens)?;
            if e.len() < 2 {
                return Err(SkillError::Outputs("fewer than two embeddings".into()));
            }
            let sims: Vec<f64> = e[1..].iter().map(|x| cosine(&e[0], x)).collect();
            if sims.iter().any(|s| !s.is_finite()) {
                return Err(SkillError::Outputs("a similarity is not a number".into()));
            }
            // One pair: its cosine. More: each text's, to the first, in the order quoted.
            let label = if let [s] = sims.as_slice() {
                format!("{s:.2}")
            } else {
                sims.iter()
                    .enumerate()
                    .map(|(i, s)| format!("#{}: {s:.2}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let best = sims.iter().copied().fold(f64::MIN, f64::max);
            Ok(ModelAnswer {
                label,
                score: best,
                confident: best >= SIMILAR,
            })
        }
        Skill::DigitRecognition => {
            let label = outputs
                .iter()
                .find(|t| t.dtype() == DataType::Int64)
                .ok_or_else(|| SkillError::Outputs("no int64 label".into()))?;
            let probs = outputs
                .iter()
                .find(|t| t.dtype() == DataType::Fp32)
                .map(floats)
                .transpose()?
                .ok_or_else(|| SkillError::Outputs("no probabilities".into()))?;
            let digit = i64::from_le_bytes(
                label
                    .data()
                    .get(..8)
                    .ok_or_else(|| SkillError::Outputs("an empty label".into()))?
                    .try_into()
                    .expect("8 bytes"),
            );
            let score = usize::try_from(digit)
                .ok()
                .and_then(|i| probs.get(i))
                .copied()
                .ok_or_else(|| SkillError::Outputs(format!("label {digit} is not a digit")))?;
            Ok(ModelAnswer {
                label: digit.to_string(),
                score: f64::from(score),
                confident: score >= 0.5,
            })
        }
        Skill::FileType => {
            let scores = floats(
                outputs
                    .first()
                    .ok_or_else(|| SkillError::Outputs("no scores".into()))?,
            )?;
            if labels.is_empty() || scores.len() != labels.len() {
                return Err(SkillError::Outputs(format!(
                    "{} scores for {} labels",
                    scores.len(),
                    labels.len()
                )));
            }
            // Highest score, lowest index on ties: the same answer from the same bits.
            let (i, s) = scores
                .iter()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |best, (i, s)| if *s > best.1 { (i, *s) } else { best },
                );
            Ok(ModelAnswer {
                label: labels[i].clone(),
                score: f64::from(s),
                confident: s >= 0.5,
            })
        }
        Skill::Arithmetic | Skill::UnitConversion => {
            Err(SkillError::Outputs("an exact skill has no model".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magika_features_pad_and_strip_as_magika_does() {
        let f = magika_features(b"  \n fn main() {}\n\n");
        assert_eq!(f.len(), 2048);
        assert_eq!(
            &f[..4],
            &[
                i32::from(b'f'),
                i32::from(b'n'),
                i32::from(b' '),
                i32::from(b'm')
            ]
        );
        assert_eq!(f[13], 10);
        assert_eq!(f[14], 256);
        assert_eq!(f[2047], i32::from(b'}'));
        assert_eq!(f[1024], 256);
        let long: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let f = magika_features(&long);
        assert_eq!(f[0], i32::from(b'a'));
        assert_eq!(f[1023], i32::from(long[1023]));
        assert_eq!(f[1024], i32::from(long[5000 - 1024]));
        assert_eq!(f[2047], i32::from(long[4999]));
    }

    fn model(input: &str, more: &[&str]) -> ModelChoice {
        ModelChoice {
            reference: "m@1.0".into(),
            cid: BlobId::of(b"m"),
            input: input.into(),
            more_inputs: more.iter().map(|m| (*m).to_owned()).collect(),
            labels: Vec::new(),
            labels_cid: None,
            vocab_cid: None,
            vocab: None,
        }
    }

    #[test]
    fn inputs_are_checked_before_a_tensor_is_built() {
        let short = SubtaskInputs::File {
            content: " ab ".into(),
        };
        assert!(build_inputs(Skill::FileType, &short, &model("bytes", &[]), &[]).is_err());
        let px = SubtaskInputs::Pixels {
            pixels: vec![17; 64],
        };
        let x = model("X", &[]);
        assert!(build_inputs(Skill::DigitRecognition, &px, &x, &[]).is_err());
        let px = SubtaskInputs::Pixels {
            pixels: vec![3; 64],
        };
        let t = build_inputs(Skill::DigitRecognition, &px, &x, &[]).unwrap();
        assert_eq!(t[0].shape(), &[1, 64]);
        assert!(build_inputs(Skill::FileType, &px, &x, &[]).is_err());
    }

    #[test]
    fn texts_become_padded_ids_and_a_mask_and_their_similarity_is_read_either_way() {
        let texts = SubtaskInputs::Texts {
            texts: vec!["a".into(), "b c".into()],
        };
        let m = model("input_ids", &["attention_mask", "token_type_ids"]);
        let tokens = vec![vec![101, 7, 102], vec![101, 8, 9, 102]];
        let t = build_inputs(Skill::TextSimilarity, &texts, &m, &tokens).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].shape(), &[2, 4]);
        let ints = |t: &Tensor| -> Vec<i64> {
            t.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        assert_eq!(ints(&t[0]), vec![101, 7, 102, 0, 101, 8, 9, 102]);
        assert_eq!(ints(&t[1]), vec![1, 1, 1, 0, 1, 1, 1, 1]);
        assert_eq!(ints(&t[2]), vec![0; 8]);
        // Token lists that do not match the texts, or no vocabulary: refused.
        assert!(build_inputs(Skill::TextSimilarity, &texts, &m, &tokens[..1]).is_err());
        assert!(tokens_for_missing_vocab(&texts, &m));
        // Pooled [2, 2] outputs, and the same as token states [2, 4, 2] averaged over the mask
        // (the padding's states must not count).
        let f = |v: &[f32], shape: Vec<u64>| {
            Tensor::new(
                "o",
                DataType::Fp32,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
            .unwrap()
        };
        let pooled = f(&[1.0, 0.0, 1.0, 1.0], vec![2, 2]);
        let a = read_outputs(Skill::TextSimilarity, &[pooled], &[], &tokens).unwrap();
        let states = f(
            &[
                1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 99.0, 99.0, //
                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
            ],
            vec![2, 4, 2],
        );
        let b = read_outputs(Skill::TextSimilarity, &[states], &[], &tokens).unwrap();
        assert_eq!(a.label, "0.71");
        assert_eq!(a, b);
        assert!(a.confident);
    }

    fn tokens_for_missing_vocab(texts: &SubtaskInputs, m: &ModelChoice) -> bool {
        tokens(Skill::TextSimilarity, texts, m)
            .unwrap_err()
            .to_string()
            .contains("without its vocabulary")
    }
}
