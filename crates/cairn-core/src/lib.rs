//! Shared Cairn types with no I/O: content addresses, names, versions, paths, and the
//! signed-request scheme every write to a Cairn service uses.

pub mod auth;
mod blob_id;
mod names;

pub use alloy_primitives::Address;
pub use blob_id::{BlobHasher, BlobId, ParseBlobIdError};
pub use names::{FilePath, ModelRef, NameError, RepoName, Version};
