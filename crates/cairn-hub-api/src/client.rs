//! A client for the hub's API: what the CLI, the node and the tests use.

use std::path::Path;

use crate::types::{
    CreateRelease, FileEntry, Health, NewRepo, Release, Repo, RepoDetail, RepoList, Resolved,
    Search,
};
use alloy_signer_local::PrivateKeySigner;
use cairn_core::auth::RequestToSign;
use cairn_core::{BlobHasher, BlobId, FilePath, RepoName, Version};
use futures::StreamExt;
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use cairn_core::ErrorBody;

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub answered with an error.
    #[error("hub refused ({status}, {code}): {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The hub's machine code.
        code: String,
        /// The hub's message.
        message: String,
    },
    /// The hub could not be reached or the connection broke.
    #[error("cannot talk to the hub at {url}: {source}")]
    Http {
        /// Where.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// Downloaded bytes do not hash to the CID asked for.
    #[error("downloaded content does not match {expected} (got {actual}); nothing was kept")]
    DigestMismatch {
        /// Asked for.
        expected: BlobId,
        /// Received.
        actual: BlobId,
    },
    /// The hub sent fewer than `min_bytes` of a download (or not its answer's headers) in
    /// `secs` of waiting for it.
    #[error(
        "the hub at {url} sent fewer than {min_bytes} bytes in {secs} s; the download was \
         abandoned, try again"
    )]
    Stalled {
        /// Where.
        url: String,
        /// How long the client waited on the network.
        secs: f64,
        /// What it needed in that time.
        min_bytes: u64,
    },
    /// A write was attempted without a key.
    #[error("this operation is signed and the client has no key")]
    NoKey,
    /// Local file I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A bad base URL.
    #[error("invalid hub URL `{0}`")]
    BadUrl(String),
    /// The blob is larger than the caller accepts.
    #[error("{cid} is {size} bytes or more, over the {max} byte limit; nothing was kept")]
    TooLarge {
        /// The blob.
        cid: BlobId,
        /// Its size, or as much as was read.
        size: u64,
        /// The limit.
        max: u64,
    },
}

type Result<T> = std::result::Result<T, ClientError>;

/// A hub client, optionally holding a key for writes.
#[derive(Clone)]
pub struct HubClient {
    base: Url,
    http: reqwest::Client,
    signer: Option<PrivateKeySigner>,
    stall: std::time::Duration,
    min_progress: u64,
}

/// How long a download waits for the hub's answer, and the windows of waiting on the network
/// each of which must bring [`DOWNLOAD_MIN_PROGRESS`], by default: a hub that stops sending
/// mid-file, or sends a byte now and then, would otherwise hold the download for good. A hub
/// that stops is abandoned within two windows (the one it stopped in may have brought enough).
pub const DOWNLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// The bytes a download must receive in each [`DOWNLOAD_STALL`] of waiting on the network, by
/// default: 1 MiB per 30 s, ~35 KiB/s, far below any working link. The slowest download
/// kept going is then ~17 h for 2 GiB.
pub const DOWNLOAD_MIN_PROGRESS: u64 = 1 << 20;

/// An error answer's body read at most (bytes, and time): it is only a message.
const ERROR_BODY_MAX: usize = 64 * 1024;
const ERROR_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A partial download whose file no one holds locked is left alone this long after its last
/// write: its writer creates it and then locks it.
const PARTIAL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Where file locks are not supported, a partial download untouched this long is taken to be
/// abandoned (a live one writes within two [`DOWNLOAD_STALL`]s plus the disk's time).
const PARTIAL_UNLOCKED_ABANDONED: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the partial downloads [`HubClient::download`] left in `dir` that no one is
/// writing: a download holds its partial file locked (`flock`) until it is renamed into place
/// or removed, and a lock outlives neither its process nor its container, so a file that can
/// be locked is a dead download's (a crash's). Another process's download in progress (a
/// verifier sharing the directory, on this host or in another container) is left alone.
/// Only files named as this client names them are touched, and this process's own only when
/// untouched for [`PARTIAL_UNLOCKED_ABANDONED`] (on NFS, where Linux emulates `flock` with
/// POSIX locks, a process's two handles on one file do not exclude each other, and closing
/// one would drop the other's lock). Blocking, never on a hostile file (a FIFO or a link
/// is not opened as one); errors are ignored (what cannot be removed stays).
pub fn sweep_partials(dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let own = format!(".{}-", std::process::id());
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(writer) = partial_writer(&name.to_string_lossy()) else {
            continue;
        };
        // Not followed: a link is not a download, and nothing outside `dir` is touched.
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        // A future time (another host's clock) counts as now.
        let age = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        let ours = writer == own;
        if age < PARTIAL_GRACE || (ours && age < PARTIAL_UNLOCKED_ABANDONED) {
            continue;
        }
        // Opened for writing (NFS grants an exclusive lock only then), never blocking on a
        // FIFO swapped in meanwhile nor following a link; and still a file once open.
        let Ok(file) = std::fs::File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(e.path())
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let dead = match file.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(_)) => age > PARTIAL_UNLOCKED_ABANDONED,
        };
        if dead {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The `.{pid}-` part of a partial file's name as [`HubClient::download`] names them
/// (`.{file}.{cid}.{pid}-{16 hex digits}.partial`), or `None` for any other name.
fn partial_writer(name: &str) -> Option<String> {
    let stem = name.strip_prefix('.')?.strip_suffix(".partial")?;
    let (_, last) = stem.rsplit_once('.')?;
    let (pid, tag) = last.split_once('-')?;
    let digits = |s: &str, n: usize, hex: bool| {
        (1..=n).contains(&s.len())
            && s.bytes().all(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
    };
    (digits(pid, 10, false) && tag.len() == 16 && digits(tag, 16, true)).then(|| format!(".{pid}-"))
}

/// Creates a download's partial file new and locks it (see [`sweep_partials`]); where the
/// file system has no locks, unlocked.
async fn create_partial(path: &Path) -> std::io::Result<tokio::fs::File> {
    let path = path.to_owned();
    let file = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create_new(&path)?;
        match file.try_lock() {
            Ok(()) | Err(std::fs::TryLockError::Error(_)) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(format!(
                "{} was locked as soon as it was created",
                path.display()
            ))),
        }
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

impl HubClient {
    /// A client for the hub at `base` (e.g. `http://127.0.0.1:7400`).
    pub fn new(base: &str, signer: Option<PrivateKeySigner>) -> Result<Self> {
        let base = Url::parse(base).map_err(|_| ClientError::BadUrl(base.into()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        Ok(Self {
            base,
            http: reqwest::Client::new(),
            signer,
            stall: DOWNLOAD_STALL,
            min_progress: DOWNLOAD_MIN_PROGRESS,
        })
    }

    /// Abandons a download once the hub has sent fewer than `min_bytes` in a `stall` of
    /// waiting for it (by default [`DOWNLOAD_MIN_PROGRESS`] in [`DOWNLOAD_STALL`]). Only time
    /// spent waiting on the network counts: a slow disk is never the hub's fault. A `stall`
    /// under a millisecond counts as one.
    pub fn with_download_stall(mut self, stall: std::time::Duration, min_bytes: u64) -> Self {
        self.stall = stall.max(std::time::Duration::from_millis(1));
        self.min_progress = min_bytes.max(1);
        self
    }

    /// The address of the client's key, if it has one.
    pub fn signer_address(&self) -> Option<cairn_core::Address> {
        self.signer.as_ref().map(PrivateKeySigner::address)
    }

    /// The base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in new");
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        url
    }

    fn http_err(&self, url: &Url) -> impl FnOnce(reqwest::Error) -> ClientError + '_ {
        let url = url.to_string();
        move |source| ClientError::Http { url, source }
    }

    /// A request signed over its method, target and body digest.
    fn signed(
        &self,
        method: Method,
        url: Url,
        body_sha256: [u8; 32],
    ) -> Result<reqwest::RequestBuilder> {
        let signer = self.signer.as_ref().ok_or(ClientError::NoKey)?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let timestamp = cairn_core::clock::now_secs();
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let headers = RequestToSign {
            host: &host,
            method: method.as_str(),
            target: &target,
            body_sha256,
            timestamp,
            nonce,
        }
        .sign(signer);
        let mut req = self.http.request(method, url);
        for (name, value) in headers.to_pairs() {
            req = req.header(name, value);
        }
        Ok(req)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, T)> {
        let (client, req) = req.build_split();
        let req = req.map_err(|source| ClientError::Http {
            url: self.base.to_string(),
            source,
        })?;
        let url = req.url().clone();
        let resp = client.execute(req).await.map_err(self.http_err(&url))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(api_error(resp).await);
        }
        Ok((status, resp.json().await.map_err(self.http_err(&url))?))
    }

    async fn signed_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> Result<(StatusCode, T)> {
        let bytes = serde_json::to_vec(body).expect("serializable");
        let req = self
            .signed(method, self.url(segments), Sha256::digest(&bytes).into())?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        self.send(req).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health> {
        Ok(self.send(self.http.get(self.url(&["health"]))).await?.1)
    }

    /// Creates a repository owned by this client's key.
    pub async fn create_repo(&self, new: &NewRepo) -> Result<Repo> {
        Ok(self
            .signed_json(Method::POST, &["v1", "repos"], new)
            .await?
            .1)
    }

    /// Creates (or resumes) a draft release; true when created now.
    pub async fn create_release(
        &self,
        repo: &RepoName,
        version: Version,
        notes: &str,
    ) -> Result<(Release, bool)> {
        let body = CreateRelease {
            version,
            notes: notes.to_owned(),
        };
        let (status, release) = self
            .signed_json(
                Method::POST,
                &["v1", "repos", repo.as_str(), "releases"],
                &body,
            )
            .await?;
        Ok((release, status == StatusCode::CREATED))
    }

    /// Publishes a draft.
    pub async fn publish(&self, repo: &RepoName, version: Version) -> Result<Release> {
        let v = version.to_string();
        let segments = ["v1", "repos", repo.as_str(), "releases", &v, "publish"];
        Ok(self
            .signed_json(Method::POST, &segments, &serde_json::json!({}))
            .await?
            .1)
    }

    /// Uploads a file into a draft release. The file is hashed first: the digest is signed and
    /// declared, so the hub stores nothing unless it receives exactly these bytes.
    /// `progress` is called with the bytes sent so far.
    pub async fn upload_file(
        &self,
        repo: &RepoName,
        version: Version,
        path: &FilePath,
        file: &Path,
        media_type: &str,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<FileEntry> {
        let (cid, _) = hash_file(file).await?;
        self.upload_declared(repo, version, path, file, cid, media_type, progress)
            .await
    }

    /// [`HubClient::upload_file`] with the CID already known (the bytes must hash to it).
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_declared(
        &self,
        repo: &RepoName,
        version: Version,
        path: &FilePath,
        file: &Path,
        cid: BlobId,
        media_type: &str,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<FileEntry> {
        let v = version.to_string();
        let mut segments = vec!["v1", "repos", repo.as_str(), "releases", &v, "files"];
        segments.extend(path.as_str().split('/'));
        let url = self.url(&segments);
        let f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        let mut sent = 0u64;
        let stream =
            tokio_util::io::ReaderStream::with_capacity(f, 256 << 10).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    sent += c.len() as u64;
                    progress(sent);
                }
            });
        let req = self
            .signed(Method::PUT, url, *cid.digest())?
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        Ok(self.send(req).await?.1)
    }

    /// A repository with its releases.
    pub async fn repo(&self, name: &RepoName) -> Result<RepoDetail> {
        Ok(self
            .send(self.http.get(self.url(&["v1", "repos", name.as_str()])))
            .await?
            .1)
    }

    /// Repositories matching `search`.
    pub async fn search(&self, search: &Search) -> Result<Vec<Repo>> {
        let req = self.http.get(self.url(&["v1", "repos"])).query(search);
        Ok(self.send::<RepoList>(req).await?.1.repos)
    }

    /// Resolves `name[@version][/path]` to a file and its CID.
    pub async fn resolve(
        &self,
        repo: &RepoName,
        version: Option<Version>,
        path: Option<&FilePath>,
    ) -> Result<Resolved> {
        let mut head = repo.to_string();
        if let Some(v) = version {
            head = format!("{head}@{v}");
        }
        let mut segments = vec!["v1", "resolve", head.as_str()];
        if let Some(p) = path {
            segments.extend(p.as_str().split('/'));
        }
        Ok(self.send(self.http.get(self.url(&segments))).await?.1)
    }

    /// Downloads a blob to `out`, verifying it against `cid` before it appears there (it is
    /// written beside `out` and renamed into place only when the digest matches).
    /// `progress` is called with `(received, total)`.
    pub async fn download(
        &self,
        cid: &BlobId,
        out: &Path,
        progress: impl Fn(u64, u64),
    ) -> Result<u64> {
        self.download_at_most(cid, out, u64::MAX, progress).await
    }

    /// [`HubClient::download`], refusing a blob over `max` bytes (by its length, and while
    /// streaming whatever the length says).
    pub async fn download_at_most(
        &self,
        cid: &BlobId,
        out: &Path,
        max: u64,
        progress: impl Fn(u64, u64),
    ) -> Result<u64> {
        let id = cid.to_string();
        let url = self.url(&["v1", "blobs", &id]);
        let stalled = || ClientError::Stalled {
            url: url.to_string(),
            secs: self.stall.as_secs_f64(),
            min_bytes: self.min_progress,
        };
        let resp = tokio::time::timeout(self.stall, self.http.get(url.clone()).send())
            .await
            .map_err(|_| stalled())?
            .map_err(self.http_err(&url))?;
        if !resp.status().is_success() {
            return Err(api_error_within(resp, self.stall.min(ERROR_BODY_WAIT)).await);
        }
        let total = resp.content_length().unwrap_or(0);
        if total > max {
            return Err(ClientError::TooLarge {
                cid: *cid,
                size: total,
                max,
            });
        }
        let file_name = out
            .file_name()
            .map_or_else(|| "download".into(), |n| n.to_string_lossy().into_owned());
        // A name of its own per download: two processes fetching the same blob into one
        // directory must never write into one file (one's truncation would corrupt what the
        // other verified and renames into place).
        let mut tag = [0u8; 8];
        getrandom::fill(&mut tag).expect("the OS random source works");
        let tag = u64::from_le_bytes(tag);
        let partial = out.with_file_name(format!(
            ".{file_name}.{id}.{}-{tag:016x}.partial",
            std::process::id()
        ));
        // The file stays open, and locked, until it is renamed into place or removed.
        let result = async {
            let mut file = create_partial(&partial).await?;
            let mut hasher = BlobHasher::new();
            let mut body = resp.bytes_stream();
            // Each window of `stall` spent waiting on the network must bring `min_progress`
            // bytes: a hub that sends a byte just inside every silence bound is as stuck as
            // one that sends nothing, and holds the model's one load as long.
            let (mut waited, mut got) = (std::time::Duration::ZERO, 0u64);
            loop {
                let started = tokio::time::Instant::now();
                // `next` is cancel-safe: a wait cut at the window's end loses no bytes.
                let next = tokio::time::timeout(self.stall - waited, body.next()).await;
                waited += started.elapsed();
                let chunk = match next {
                    // The whole body came: however slowly the last window went, it is done.
                    Ok(None) => break,
                    Ok(Some(chunk)) => Some(chunk.map_err(self.http_err(&url))?),
                    // The window ended.
                    Err(_) => None,
                };
                got += chunk.as_ref().map_or(0, |c| c.len() as u64);
                if waited >= self.stall {
                    if got < self.min_progress {
                        return Err(stalled());
                    }
                    (waited, got) = (std::time::Duration::ZERO, 0);
                }
                let Some(chunk) = chunk else { continue };
                hasher.update(&chunk);
                if hasher.len() > max {
                    return Err(ClientError::TooLarge {
                        cid: *cid,
                        size: hasher.len(),
                        max,
                    });
                }
                file.write_all(&chunk).await?;
                progress(hasher.len(), total);
            }
            let len = hasher.len();
            let actual = hasher.finish();
            if actual != *cid {
                return Err(ClientError::DigestMismatch {
                    expected: *cid,
                    actual,
                });
            }
            file.sync_all().await?;
            Ok((len, file))
        }
        .await;
        match result {
            Ok((len, _locked)) => {
                // Renamed while still locked: a sweep never takes a finished download.
                if let Err(e) = tokio::fs::rename(&partial, out).await {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(e.into());
                }
                Ok(len)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }
}

/// Hashes a file on a blocking thread; returns its CID and size.
pub async fn hash_file(path: &Path) -> std::io::Result<(BlobId, u64)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || BlobHasher::hash_reader(std::fs::File::open(path)?))
        .await
        .map_err(std::io::Error::other)?
}

async fn api_error(resp: reqwest::Response) -> ClientError {
    api_error_within(resp, ERROR_BODY_WAIT).await
}

/// [`api_error`], reading the body for `wait` at most.
async fn api_error_within(mut resp: reqwest::Response, wait: std::time::Duration) -> ClientError {
    let status = resp.status();
    // Bounded: a server that trickles an endless error body must not hold the caller.
    let mut body = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = ERROR_BODY_MAX - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= ERROR_BODY_MAX {
                break;
            }
        }
    })
    .await;
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.code,
            message: e.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "unexpected_response".into(),
            message: String::from_utf8_lossy(&body).chars().take(500).collect(),
        },
    }
}
