//! The hub API's JSON bodies (the catalog's records are these too).

use cairn_core::{Address, BlobId, FilePath, RepoName, Version};
use cairn_gguf::GgufMetadata;
use cairn_onnx::OnnxSignature;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Fields of a new repository.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewRepo {
    /// Unique slug.
    pub name: RepoName,
    /// Markdown.
    #[serde(default)]
    pub description: String,
    /// What the models do, e.g. `image-classification`.
    #[serde(default)]
    pub task: Option<String>,
    /// SPDX license id.
    #[serde(default)]
    pub license: Option<String>,
    /// Search tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl NewRepo {
    /// Checks sizes and tag syntax; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.description.len() > 64 << 10 {
            return Err("description is longer than 64 KiB".into());
        }
        for (what, value) in [("task", &self.task), ("license", &self.license)] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > 64 || v.chars().any(char::is_control))
            {
                return Err(format!("{what} must be 1-64 printable characters"));
            }
        }
        if self.tags.len() > 32 {
            return Err("at most 32 tags".into());
        }
        for tag in &self.tags {
            let ok = (1..=64).contains(&tag.len())
                && tag
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !ok {
                return Err(format!(
                    "tag `{tag}` must be 1-64 characters of a-z, 0-9, `-`, `_`, `.`"
                ));
            }
        }
        Ok(())
    }
}

/// A repository: a named series of releases with one owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Repo {
    /// Unique slug.
    pub name: RepoName,
    /// The Ethereum address that created it; only it may publish.
    #[schema(value_type = String, example = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")]
    #[serde(serialize_with = "checksummed")]
    pub owner: Address,
    /// Markdown.
    pub description: String,
    /// What the models do.
    pub task: Option<String>,
    /// SPDX license id.
    pub license: Option<String>,
    /// Search tags.
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A file in a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// Path inside the release.
    pub path: FilePath,
    /// Content address of the bytes.
    pub cid: BlobId,
    /// Bytes.
    pub size: u64,
    /// Media type, e.g. `application/onnx`.
    pub media_type: String,
    /// For ONNX files, the model's signature as read on upload.
    pub onnx: Option<OnnxSignature>,
    /// For GGUF files, the language model's metadata as read on upload.
    #[serde(default)]
    pub gguf: Option<GgufMetadata>,
}

/// A release: immutable once published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    /// `MAJOR.MINOR`.
    pub version: Version,
    /// Release notes (Markdown).
    pub notes: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` while a draft that files can still be added to.
    pub published_at: Option<i64>,
    /// Files, by path.
    pub files: Vec<FileEntry>,
}

/// A repository with its releases, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RepoDetail {
    /// The repository.
    #[serde(flatten)]
    pub repo: Repo,
    /// The highest published version.
    pub latest: Option<Version>,
    /// Releases, highest version first.
    pub releases: Vec<Release>,
}

/// A label resolved to content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resolved {
    /// Repository.
    pub repo: RepoName,
    /// Release.
    pub version: Version,
    /// The file, with its CID.
    pub file: FileEntry,
}

/// Search filters; empty fields match everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// Text in the name or description.
    pub q: Option<String>,
    /// Exact task.
    pub task: Option<String>,
    /// Exact tag.
    pub tag: Option<String>,
    /// Page size (1-100, default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u32>,
}

/// Addresses go out in EIP-55 checksum form, as wallets show them.
fn checksummed<S: serde::Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_checksum(None))
}

/// `GET /health` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Hub version.
    pub version: String,
}

/// Matching repositories.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepoList {
    /// Repositories, by name.
    pub repos: Vec<Repo>,
}

/// A new release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateRelease {
    /// `MAJOR.MINOR`.
    pub version: Version,
    /// Markdown release notes.
    #[serde(default)]
    pub notes: String,
}
