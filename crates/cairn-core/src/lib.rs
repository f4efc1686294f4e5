//! Shared Cairn types with no I/O: content addresses, names, versions, paths, tensors and their
//! canonical hash, execution profiles, and the signed-request scheme every write to a Cairn
//! service uses. The exception: a [`presign::Presigner`] keeps a thread that makes signature
//! nonces (OS randomness, the idle scheduling class).

pub mod api;
pub mod attestation;
pub mod auth;
mod blob_id;
pub mod clock;
pub mod keccak4;
mod names;
pub mod presign;
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

/// Puts the calling thread in Linux's idle scheduling class (`SCHED_IDLE`), for work that
/// may wait: it gets the CPU time other threads leave (its weight is 3 against a normal
/// thread's 1,024), and a thread that wakes takes its CPU at once. (At nice 19 the scheduler
/// lets a running thread finish its slice, which delayed answers by milliseconds.) An
/// unprivileged thread may enter the class but not leave it (beyond its `RLIMIT_NICE`, zero by
/// default), and a starved one holding a lock would stall whoever waits on it: it suits a
/// thread that holds none another waits on. Falls back to nice 19 where the class is refused;
/// elsewhere than Linux, a no-op.
pub fn run_only_when_idle() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread only; the parameter lives for the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            // SAFETY: setpriority changes only the nice value of this thread (its id).
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        }
    }
}
