//! Content-addressed blob store over any [`ObjectStore`]: a local directory by default, any
//! S3-compatible service for scale-out.
//!
//! Invariant: an object at `blobs/<cid>` always holds exactly the bytes whose SHA-256 is the CID.
//! Writes stream through a hasher into a multipart upload that only becomes visible when it is
//! completed, and it is completed only once the digest is known to be right. An aborted or
//! crashed upload leaves nothing under `blobs/`, and never blocks a retry.

use std::io;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cairn_core::{BlobHasher, BlobId};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart,
};

/// Multipart chunk size: above S3's 5 MiB minimum part, small enough to bound memory.
const CHUNK_BYTES: usize = 8 << 20;
/// Parts in flight per upload; with [`CHUNK_BYTES`] this bounds an upload's buffers to ~24 MiB.
const PARTS_IN_FLIGHT: usize = 2;

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No blob with this id.
    #[error("no blob {0}")]
    NotFound(BlobId),
    /// The bytes received do not hash to the id that was declared.
    #[error(
        "content does not match the declared id: declared {expected}, received {actual} ({size} bytes); nothing was stored"
    )]
    DigestMismatch {
        /// What the writer declared.
        expected: BlobId,
        /// What the bytes hash to.
        actual: BlobId,
        /// How many bytes arrived.
        size: u64,
    },
    /// The body went over the size limit.
    #[error("blob is larger than the {limit}-byte limit; nothing was stored")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The incoming body failed (dropped connection, truncated stream).
    #[error("the upload stream failed after {received} bytes: {source}; nothing was stored")]
    Body {
        /// Bytes received before the failure.
        received: u64,
        /// The stream's error.
        source: io::Error,
    },
    /// The caller's check of the complete content failed (e.g. a file said to be ONNX is not).
    #[error("{0}; nothing was stored")]
    Rejected(String),
    /// A byte range outside the blob.
    #[error("range {start}..{end} is outside the blob's {size} bytes")]
    BadRange {
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// Blob size.
        size: u64,
    },
    /// The backing store failed.
    #[error("blob storage failed: {0}")]
    Backend(#[from] object_store::Error),
    /// Local I/O around the store failed.
    #[error("blob storage I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob {
    /// The content's id.
    pub id: BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// False when identical content was already stored (it is kept once).
    pub newly_stored: bool,
}

/// A blob being read.
pub struct BlobRead {
    /// The whole blob's size.
    pub size: u64,
    /// The bytes this read returns.
    pub range: Range<u64>,
    /// The bytes.
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// Where blobs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Dir(std::path::PathBuf),
    /// An S3 bucket, with an optional endpoint for S3-compatible services.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
        /// Endpoint URL, e.g. `http://127.0.0.1:9000`; AWS when `None`.
        endpoint: Option<String>,
    },
}

impl Location {
    /// `s3://bucket[/prefix]` (credentials, region and endpoint from the usual `AWS_*` environment
    /// variables, or `endpoint`) or a directory path.
    pub fn parse(s: &str, endpoint: Option<String>) -> Self {
        match s.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.trim_matches('/').to_owned(),
                    endpoint,
                }
            }
            None => Self::Dir(s.into()),
        }
    }
}

/// The content-addressed blob store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    local_dir: Option<std::path::PathBuf>,
}

impl BlobStore {
    /// Opens (creating if needed) a store at `location`.
    pub fn open(location: &Location) -> Result<Self, StoreError> {
        match location {
            Location::Dir(dir) => Self::local(dir),
            Location::S3 {
                bucket,
                prefix,
                endpoint,
            } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let s3 = builder.build()?;
                let inner: Arc<dyn ObjectStore> = match prefix.as_str() {
                    "" => Arc::new(s3),
                    p => Arc::new(PrefixStore::new(s3, p)),
                };
                Ok(Self {
                    inner,
                    local_dir: None,
                })
            }
        }
    }

    /// A store in a local directory. Writes are fsynced before they become visible.
    pub fn local(dir: &FsPath) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let fs = LocalFileSystem::new_with_prefix(dir)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Self {
            inner: Arc::new(fs),
            local_dir: Some(dir.to_owned()),
        })
    }

    fn blob_path(id: &BlobId) -> Path {
        Path::from(format!("blobs/{id}"))
    }

    /// Streams `body` into the store. With `expected`, the bytes must hash to it or nothing is
    /// stored; without, the id is whatever they hash to. Memory stays bounded whatever the size.
    pub async fn put<S>(
        &self,
        body: S,
        expected: Option<BlobId>,
        max_size: u64,
    ) -> Result<StoredBlob, StoreError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + Unpin,
    {
        self.put_checked(body, expected, max_size, std::future::ready(Ok(())))
            .await
    }

    /// [`BlobStore::put`], with `check` awaited once the whole body has arrived (and the body
    /// stream has been dropped) but before the blob becomes visible: an `Err` from it stores
    /// nothing. Used to refuse content that does not parse, without a second read.
    pub async fn put_checked<S, C>(
        &self,
        mut body: S,
        expected: Option<BlobId>,
        max_size: u64,
        check: C,
    ) -> Result<StoredBlob, StoreError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + Unpin,
        C: Future<Output = Result<(), String>> + Send,
    {
        let already = match &expected {
            Some(id) => self.size(id).await?.is_some(),
            None => false,
        };
        // Known id: upload straight to its final key, invisible until completed. Unknown id:
        // upload to a staging key and move it once the id is known.
        let target = match &expected {
            Some(id) => Self::blob_path(id),
            None => Path::from(format!("staging/{}", random_hex())),
        };
        let mut writer = match already {
            true => None,
            false => Some(WriteMultipart::new_with_chunk_size(
                self.inner.put_multipart(&target).await?,
                CHUNK_BYTES,
            )),
        };
        let (hasher, failure) = Self::stream_into(&mut body, writer.as_mut(), max_size).await;
        // Closing the stream tells anything fed from it (e.g. a parser behind `check`) it ended.
        drop(body);
        let size = hasher.len();
        let id = hasher.finish();
        let failure = failure.or(match expected {
            Some(expected) if expected != id => Some(StoreError::DigestMismatch {
                expected,
                actual: id,
                size,
            }),
            _ => None,
        });
        let failure = match failure {
            Some(e) => Some(e),
            None => check.await.err().map(StoreError::Rejected),
        };
        if let Some(err) = failure {
            if let Some(w) = writer
                && let Err(e) = w.abort().await
            {
                tracing::warn!(error = %e, "aborting a failed upload failed");
            }
            return Err(err);
        }
        let Some(writer) = writer else {
            return Ok(StoredBlob {
                id,
                size,
                newly_stored: false,
            });
        };
        writer.finish().await?;
        let newly_stored = match expected {
            Some(_) => !already,
            None => self.move_staged(&target, &id).await?,
        };
        Ok(StoredBlob {
            id,
            size,
            newly_stored,
        })
    }

    /// Moves a staged upload to its blob's key, or drops it when the blob is already there;
    /// returns whether it was new.
    async fn move_staged(&self, staged: &Path, id: &BlobId) -> Result<bool, StoreError> {
        let newly_stored = self.size(id).await?.is_none();
        if newly_stored {
            self.inner.rename(staged, &Self::blob_path(id)).await?;
        } else {
            self.inner.delete(staged).await?;
        }
        Ok(newly_stored)
    }

    /// Hashes `body` into `writer` (when there is one) up to `max_size` bytes; the hash so far
    /// and what stopped it early, if anything.
    async fn stream_into<S>(
        body: &mut S,
        mut writer: Option<&mut WriteMultipart>,
        max_size: u64,
    ) -> (BlobHasher, Option<StoreError>)
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + Unpin,
    {
        let mut hasher = BlobHasher::new();
        let failure = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Err(source)) => {
                    break Some(StoreError::Body {
                        received: hasher.len(),
                        source,
                    });
                }
                Some(Ok(chunk)) => chunk,
            };
            if hasher.len() + chunk.len() as u64 > max_size {
                break Some(StoreError::TooLarge { limit: max_size });
            }
            hasher.update(&chunk);
            if let Some(w) = writer.as_deref_mut()
                && let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await
            {
                break Some(e.into());
            }
            if let Some(w) = writer.as_deref_mut() {
                w.put(chunk);
            }
        };
        (hasher, failure)
    }

    /// The size of a stored blob, or `None`.
    pub async fn size(&self, id: &BlobId) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&Self::blob_path(id)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a blob, or the byte range `range` of it (which the caller has checked against the
    /// size from [`BlobStore::size`]).
    pub async fn get(
        &self,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead, StoreError> {
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..Default::default()
        };
        let result = match self.inner.get_opts(&Self::blob_path(id), options).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Err(StoreError::NotFound(*id)),
            Err(e) => return Err(e.into()),
        };
        let size = result.meta.size;
        let got = result.range.clone();
        if let Some(want) = range
            && want != got
        {
            return Err(StoreError::BadRange {
                start: want.start,
                end: want.end,
                size,
            });
        }
        let stream = match result.payload {
            // object_store reads local files 8 KiB per blocking task; large reads keep a local
            // hub's downloads near disk speed.
            GetResultPayload::File(file, _) => local_file_stream(file, got.clone())?,
            GetResultPayload::Stream(s) => s.map_err(StoreError::from).boxed(),
        };
        Ok(BlobRead {
            size,
            range: got,
            stream,
        })
    }

    /// Every stored blob with when it was written.
    pub async fn list(&self) -> Result<Vec<(BlobId, SystemTime)>, StoreError> {
        let metas: Vec<_> = self
            .inner
            .list(Some(&Path::from("blobs")))
            .try_collect()
            .await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let id: BlobId = m.location.filename()?.parse().ok()?;
                Some((id, SystemTime::from(m.last_modified)))
            })
            .collect())
    }

    /// Deletes a blob (absent is fine).
    pub async fn delete(&self, id: &BlobId) -> Result<(), StoreError> {
        match self.inner.delete(&Self::blob_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes leftovers of uploads interrupted by a crash (staging objects, and for a local
    /// directory the hidden `…#n` part files) older than `age`. Returns how many were removed.
    /// Incomplete S3 multipart uploads are invisible and are best expired by a bucket lifecycle
    /// rule (`AbortIncompleteMultipartUpload`).
    pub async fn sweep(&self, age: Duration) -> Result<usize, StoreError> {
        let cutoff = SystemTime::now() - age;
        let mut removed = 0;
        let staged: Vec<_> = self
            .inner
            .list(Some(&Path::from("staging")))
            .try_collect()
            .await?;
        for meta in staged {
            if SystemTime::from(meta.last_modified) < cutoff {
                self.inner.delete(&meta.location).await?;
                removed += 1;
            }
        }
        if let Some(dir) = &self.local_dir {
            for sub in ["blobs", "staging"] {
                let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let stale = entry.file_name().to_string_lossy().contains('#')
                        && entry
                            .metadata()
                            .and_then(|m| m.modified())
                            .is_ok_and(|t| t < cutoff);
                    if stale {
                        std::fs::remove_file(entry.path())?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

fn local_file_stream(
    mut file: std::fs::File,
    range: Range<u64>,
) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
    use std::io::Seek;
    use tokio::io::AsyncReadExt;
    file.seek(io::SeekFrom::Start(range.start))?;
    let reader = tokio::fs::File::from_std(file).take(range.end - range.start);
    Ok(tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20)
        .map_err(StoreError::from)
        .boxed())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
