//! The chat entry: a user's messy message becomes a task object (rules for numbers, units,
//! expressions, tables and code blocks; a language model under constrained decoding for the
//! goal, constraints and noise), each computable sub-task runs exactly here or on a hub model at
//! a node the router picks (paid, with its receipt), a language model writes the answer from the
//! results, and the turn is signed into a run record anyone can check (`cairn run verify`).

pub mod entry;
pub mod eval;
pub mod exact;
pub mod record;
pub mod router;
pub mod server;
pub mod skills;
pub mod store;
pub mod task;
pub mod verify;
pub mod wordpiece;

pub use entry::{Entry, EntryConfig, Message, Progress, TurnError};
pub use record::{RunRecord, SignedRecord};
pub use router::{Payer, Router};

/// SHA-256 as a `B256`.
pub fn sha256(bytes: &[u8]) -> alloy_primitives::B256 {
    use sha2::Digest;
    alloy_primitives::B256::from_slice(&sha2::Sha256::digest(bytes))
}
