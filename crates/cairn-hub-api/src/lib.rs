//! The Model Hub's HTTP API, defined once: its request and response bodies (which the catalog
//! stores too) and [`HubClient`], the client the CLI, the node, the verifier and the tests use.
//! Depending on this crate does not pull in the hub's catalog or blob store.

pub mod client;
pub mod types;

pub use cairn_core::ErrorBody;
pub use client::{ClientError, HubClient, hash_file, sweep_partials};
pub use types::{
    CreateRelease, FileEntry, Health, NewRepo, Release, Repo, RepoDetail, RepoList, Resolved,
    Search,
};
