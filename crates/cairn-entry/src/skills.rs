//! The catalog of what models compute: for each model skill, how the hub marks a model that
//! computes it (a tag and an ONNX signature), how its input tensors are built from a sub-task's
//! inputs, and how its outputs are read back. Exact skills run in [`crate::exact`].

use std::path::Path;

use cairn_core::{BlobId, DataType, Tensor};
use cairn_hub_api::{HubClient, Search};
use serde::{Deserialize, Serialize};

use crate::task::{Skill, SubtaskInputs};

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
    /// The input tensor's name.
    pub input: String,
    /// Class labels, when the release ships them (magika's `config.min.json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The CID of the file the labels were read from (`cairn run verify --hub` reads it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_cid: Option<BlobId>,
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

/// Whether a signature is one the skill can feed and read.
fn fits(skill: Skill, sig: &cairn_onnx::OnnxSignature) -> Option<String> {
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
        Skill::Arithmetic | Skill::UnitConversion => false,
    };
    ok.then(|| input.name.clone())
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
                let Some(input) = f.onnx.as_ref().and_then(|s| fits(skill, s)) else {
                    continue;
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
                return Ok(ModelChoice {
                    reference: format!("{}@{}", repo.name, release.version),
                    cid: f.cid,
                    input,
                    labels,
                    labels_cid,
                });
            }
        }
    }
    Err(SkillError::NoModel(name))
}

/// magika's label list from its release's `config.min.json` (downloaded by CID, so checked).
pub async fn magika_labels(
    hub: &HubClient,
    cid: &BlobId,
    scratch: &Path,
) -> Result<Vec<String>, SkillError> {
    let path = scratch.join(format!(
        "{}.json",
        cid.to_sha256_string().trim_start_matches("sha256:")
    ));
    hub.download_at_most(cid, &path, 1 << 20, |_, _| {})
        .await
        .map_err(|e| SkillError::Hub(e.to_string()))?;
    let bytes = std::fs::read(&path).map_err(|e| SkillError::Hub(e.to_string()))?;
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

/// The input tensors of a model step.
pub fn build_inputs(
    skill: Skill,
    inputs: &SubtaskInputs,
    input_name: &str,
) -> Result<Vec<Tensor>, SkillError> {
    let bad = |m: &str| SkillError::Inputs(m.to_owned());
    let tensor = match (skill, inputs) {
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

/// Reads a model step's outputs.
pub fn read_outputs(
    skill: Skill,
    outputs: &[Tensor],
    labels: &[String],
) -> Result<ModelAnswer, SkillError> {
    match skill {
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

    #[test]
    fn inputs_are_checked_before_a_tensor_is_built() {
        let short = SubtaskInputs::File {
            content: " ab ".into(),
        };
        assert!(build_inputs(Skill::FileType, &short, "bytes").is_err());
        let px = SubtaskInputs::Pixels {
            pixels: vec![17; 64],
        };
        assert!(build_inputs(Skill::DigitRecognition, &px, "X").is_err());
        let px = SubtaskInputs::Pixels {
            pixels: vec![3; 64],
        };
        let t = build_inputs(Skill::DigitRecognition, &px, "X").unwrap();
        assert_eq!(t[0].shape(), &[1, 64]);
        assert!(build_inputs(Skill::FileType, &px, "X").is_err());
    }
}
