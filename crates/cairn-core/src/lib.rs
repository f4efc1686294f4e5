//! Shared Cairn types with no I/O: content addresses, names, versions, paths, tensors and their
//! canonical hash, execution profiles, and the signed-request scheme every write to a Cairn
//! service uses.

pub mod api;
pub mod attestation;
pub mod auth;
mod blob_id;
pub mod clock;
mod names;
mod profile;
pub mod sig;
pub mod tensor;

pub use alloy_primitives::{Address, B256};
pub use api::ErrorBody;
pub use attestation::DEV_MEASUREMENT;
pub use blob_id::{BlobHasher, BlobId, ParseBlobIdError};
pub use names::{FilePath, ModelRef, NameError, RepoName, Version};
pub use profile::{ExecutionProfile, LLM_ENGINE, RELAYED_ENGINE, Reproducibility};
pub use tensor::{DataType, Tensor, TensorError};
