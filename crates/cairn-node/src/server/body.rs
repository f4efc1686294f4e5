//! Reading a request body within a size limit, a deadline and a shared memory budget.

use super::*;

/// Memory for request bodies being read, in KiB permits, taken as the bytes arrive: a slow
/// sender holds only what it has sent, and only until the body deadline.
pub(super) struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    pub(super) fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new((bytes / 1024).max(1))))
    }
}

/// Why a body could not be read.
pub(super) enum ReadError {
    TooLarge,
    Slow,
    Budget,
    Broken(String),
}

/// The node's error for a body that could not be read.
pub(super) fn read_error(e: ReadError, i: &Inner) -> NodeError {
    match e {
        ReadError::TooLarge => NodeError::BodyTooLarge(format!(
            "the body is over the node's limit of {} bytes (plus the envelope); send less",
            i.limits.max_body_bytes
        )),
        ReadError::Slow => NodeError::Timeout(format!(
            "the request body did not arrive within {:?}; send it at once",
            i.limits.body_timeout
        )),
        ReadError::Budget => NodeError::Overloaded(
            "the node is reading as many request bodies as it has memory for; retry after a moment"
                .into(),
        ),
        ReadError::Broken(e) => NodeError::BadRequest(format!("the body could not be read: {e}")),
    }
}

/// Reads a request body of at most `max` bytes within `deadline`, holding budget for every
/// byte received; returns the body and the budget it holds.
pub(super) async fn read_body(
    body: Body,
    max: usize,
    deadline: Duration,
    budget: &BodyBudget,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ReadError> {
    use http_body_util::BodyExt;
    let read = async {
        let mut body = body;
        let mut buf = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut held_kib = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
            let want = buf.len().div_ceil(1024);
            if want > held_kib {
                let more = u32::try_from(want - held_kib).map_err(|_| ReadError::Budget)?;
                let p = budget
                    .0
                    .clone()
                    .try_acquire_many_owned(more)
                    .map_err(|_| ReadError::Budget)?;
                match held.as_mut() {
                    Some(h) => h.merge(p),
                    None => held = Some(p),
                }
                held_kib = want;
            }
        }
        Ok((Bytes::from(buf), held))
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ReadError::Slow)?
}
