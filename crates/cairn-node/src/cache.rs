//! The model cache: blobs on disk by CID, prepared plans in memory, bounded in bytes (LRU), and
//! one load per model however many requests ask for it at once.
//!
//! Everything a stranger can make it fetch is bounded: a model over `max_model_bytes` is refused
//! while downloading, a file that is not a loadable model is deleted at once, and a failed load
//! is remembered for a minute (so calling it again costs nothing). Metadata routes read the
//! signature the hub recorded and never download. Names resolve through [`crate::names`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_core::{BlobId, ModelRef, Version};
use cairn_engine::{Engine, EngineError, Plan};
use cairn_hub_api::{ClientError, HubClient};
use cairn_onnx::OnnxSignature;
use moka::future::Cache;
use moka::policy::EvictionPolicy;

/// Why a model could not be resolved or loaded. Cloned because a failed load is remembered.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// Not a model reference.
    #[error("{0}")]
    BadRef(String),
    /// The hub knows no such model (or refused it).
    #[error("{0}")]
    NotFound(String),
    /// The file is too large or not a model this engine runs.
    #[error("{0}")]
    Invalid(String),
    /// The hub could not be reached or sent bytes that do not match the CID: not the model's
    /// fault, so never remembered as the model's (a name's lookup the hub left unanswered is
    /// refused again for a moment, `names::SILENT_TTL`).
    #[error("{0}")]
    HubUnavailable(String),
    /// This node's own disk or task trouble.
    #[error("model cache: {0}")]
    Local(String),
    /// A model of the other kind than the route runs (a language model asked for tensors, or
    /// the reverse).
    #[error("{0}")]
    WrongKind(String),
}

impl CacheError {
    /// Whether the fault lies with this side (hub down, our disk), not the model or reference:
    /// a verifier must not hold it against a node.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::HubUnavailable(_) | Self::Local(_))
    }
}

/// A model ready to run.
pub struct LoadedModel {
    /// The exact file.
    pub cid: BlobId,
    /// Bytes it takes: the file's size, or a language model's weights in memory when they are
    /// more (what the cache's bound counts).
    pub size: u64,
    /// What runs it.
    pub runs: Runs,
    /// How fast its calls ran lately.
    pub pace: Pace,
}

/// How long a model's calls took lately per input byte: whether the next one is quick enough to
/// run in place on an async worker (no thread hop) or must leave it. A slow call counts at once,
/// quick ones bring the figure down slowly, so a few cheap calls cannot hide an expensive kind.
#[derive(Debug, Default)]
pub struct Pace(AtomicU64);

impl Pace {
    /// A call's work (the engine and its receipt) that may run in place on an async worker.
    pub const IN_PLACE: Duration = Duration::from_micros(100);

    /// Whether a call on `bytes` of input is expected within [`Self::IN_PLACE`] (never before
    /// the model's first call).
    pub fn quick(&self, bytes: u64) -> bool {
        let ps_per_byte = self.0.load(Ordering::Relaxed);
        ps_per_byte != 0
            && (ps_per_byte as u128) * (bytes.max(1) as u128) < Self::IN_PLACE.as_nanos() * 1_000
    }

    /// Records that a call on `bytes` of input failed after `took`: only a slower rate counts
    /// (a call that failed early says nothing of what a real one costs; one that ran long and
    /// then failed does).
    pub fn record_failed(&self, bytes: u64, took: Duration) {
        let now =
            (took.as_nanos() * 1_000 / bytes.max(1) as u128).clamp(1, u64::MAX as u128) as u64;
        self.0.fetch_max(now, Ordering::Relaxed);
    }

    /// Records that a call on `bytes` of input ran in `took`: a slower rate replaces the
    /// figure, a quicker one moves it a sixteenth of the way.
    pub fn record(&self, bytes: u64, took: Duration) {
        let now =
            (took.as_nanos() * 1_000 / bytes.max(1) as u128).clamp(1, u64::MAX as u128) as u64;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |before| {
                Some(if before == 0 || now >= before {
                    now
                } else {
                    (before - (before - now) / 16).max(1)
                })
            });
    }
}

/// What a loaded model runs on: the ONNX engine or the language-model engine (the file says
/// which: a GGUF file starts with `GGUF`).
pub enum Runs {
    /// An ONNX graph.
    Onnx {
        /// Inputs and outputs as the hub's parser reads them.
        signature: OnnxSignature,
        /// The engine's prepared plan.
        plan: Arc<dyn Plan>,
    },
    /// A GGUF language model.
    Llm(Arc<cairn_llm::Model>),
}

impl LoadedModel {
    /// The ONNX signature and plan, or why this model has none (it is a language model).
    pub fn onnx(&self) -> Result<(&OnnxSignature, &Arc<dyn Plan>), CacheError> {
        match &self.runs {
            Runs::Onnx { signature, plan } => Ok((signature, plan)),
            Runs::Llm(_) => Err(CacheError::WrongKind(format!(
                "{} is a language model: call it through /v1/chat/completions or /v1/completions",
                self.cid
            ))),
        }
    }

    /// The language model, or why this model is none (it is an ONNX graph).
    pub fn llm(&self) -> Result<&Arc<cairn_llm::Model>, CacheError> {
        match &self.runs {
            Runs::Llm(m) => Ok(m),
            Runs::Onnx { .. } => Err(CacheError::WrongKind(format!(
                "{} is an ONNX model, not a language model: call it through /v2/models/{{model}}/infer",
                self.cid
            ))),
        }
    }
}

/// What a reference resolved to.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The exact file.
    pub cid: BlobId,
    /// The release version, when the reference was a name.
    pub version: Option<Version>,
    /// The signature the hub recorded for the file, when the reference was a name.
    pub signature: Option<OnnxSignature>,
    /// The language-model metadata the hub recorded, when the reference was a name of a GGUF
    /// file.
    pub gguf: Option<cairn_gguf::GgufMetadata>,
}

/// How often a download sweeps the partial downloads a crash left, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How long a failed load is remembered.
const FAILED_TTL: Duration = Duration::from_secs(60);

/// The cache.
#[derive(Clone)]
pub struct ModelCache {
    dir: PathBuf,
    hub: HubClient,
    engine: Arc<dyn Engine>,
    plans: Cache<BlobId, Arc<LoadedModel>>,
    names: crate::names::Names,
    /// Loads that failed recently, with their error.
    failed: Cache<BlobId, CacheError>,
    max_model_bytes: u64,
    /// When partial downloads were last swept before a download.
    swept: Arc<std::sync::Mutex<std::time::Instant>>,
    lookups: CacheLookups,
}

/// Where [`ModelCache::get`] found each model: `memory` (a loaded plan), `disk` (the node's
/// copy, re-verified), `hub` (downloaded), `failed` (a recent failure remembered).
pub type CacheLookups = cairn_serve::metrics::Family<CacheSource, cairn_serve::metrics::Counter>;

/// The label of a [`CacheLookups`] series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, cairn_serve::metrics::EncodeLabelSet)]
pub struct CacheSource {
    source: &'static str,
}

impl ModelCache {
    /// A cache keeping at most `max_bytes` of model files (on disk and as loaded plans), each
    /// at most `max_model_bytes`. Partial downloads in `dir` no one is writing (a crash's)
    /// are removed, now and before each download ([`cairn_hub_api::sweep_partials`]).
    pub fn new(
        dir: PathBuf,
        hub: HubClient,
        engine: Arc<dyn Engine>,
        max_bytes: u64,
        max_model_bytes: u64,
    ) -> Self {
        cairn_hub_api::sweep_partials(&dir);
        let evict_dir = dir.clone();
        let plans = Cache::builder()
            .eviction_policy(EvictionPolicy::lru())
            // Weights are u32: count KiB.
            .weigher(|_, m: &Arc<LoadedModel>| (m.size / 1024 + 1).min(u32::MAX as u64) as u32)
            .max_capacity(max_bytes / 1024)
            .eviction_listener(move |cid: Arc<BlobId>, _, cause| {
                if cause.was_evicted() {
                    let _ = std::fs::remove_file(evict_dir.join(cid.to_string()));
                }
            })
            .build();
        let names = crate::names::Names::new(hub.clone());
        Self {
            dir,
            hub,
            engine,
            plans,
            names,
            failed: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(FAILED_TTL)
                .build(),
            max_model_bytes,
            swept: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            lookups: CacheLookups::default(),
        }
    }

    /// Looks a known name up again, in the background, once `every` has passed since its
    /// last lookup (by default [`crate::names`]' 10 s): a bare name follows a new release on
    /// the calls after that check.
    pub fn with_name_refresh(mut self, every: Duration) -> Self {
        self.names.set_refresh(every);
        self
    }

    /// Counts of where models were found, for the node's metrics.
    pub fn lookups(&self) -> CacheLookups {
        self.lookups.clone()
    }

    fn count(&self, source: &'static str) {
        self.lookups.get_or_create(&CacheSource { source }).inc();
    }

    /// The model `cid` if it is loaded (never loads).
    pub async fn loaded_model(&self, cid: &BlobId) -> Option<Arc<LoadedModel>> {
        self.plans.get(cid).await
    }

    /// The engine plans are prepared with.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Models in memory.
    pub fn loaded(&self) -> u64 {
        self.plans.entry_count()
    }

    /// Resolves a reference (`bafkrei…`, `sha256:…`, `name`, `name@1.0`) to a CID.
    pub async fn resolve(&self, reference: &str) -> Result<Arc<Resolution>, CacheError> {
        let parsed: ModelRef = reference.parse().map_err(|e| {
            CacheError::BadRef(format!(
                "`{reference}` is not a model reference ({e}); use a CID or name@version"
            ))
        })?;
        let (repo, version, path) = match parsed {
            ModelRef::Blob(cid) => {
                return Ok(Arc::new(Resolution {
                    cid,
                    version: None,
                    signature: None,
                    gguf: None,
                }));
            }
            ModelRef::Named {
                repo,
                version,
                path,
            } => (repo, version, path),
        };
        self.names.resolve(reference, repo, version, path).await
    }

    /// The loaded model for `cid`: from memory, else from disk (re-verified), else from the hub
    /// (verified while downloading). Concurrent callers for one CID share a single load.
    pub async fn get(&self, cid: BlobId) -> Result<Arc<LoadedModel>, CacheError> {
        if let Some(e) = self.failed.get(&cid).await {
            self.count("failed");
            return Err(e);
        }
        if let Some(m) = self.plans.get(&cid).await {
            self.count("memory");
            return Ok(m);
        }
        match self.plans.try_get_with(cid, self.load(cid)).await {
            Ok(m) => Ok(m),
            Err(e) => {
                // A missing or broken model stays so for a while: remember it, so a flood of
                // calls for it costs one download, not one each (a loader that crashes on it included).
                // A hub outage is not remembered.
                let e = CacheError::clone(&e);
                if !matches!(e, CacheError::HubUnavailable(_)) {
                    self.failed.insert(cid, e.clone()).await;
                }
                Err(e)
            }
        }
    }

    async fn load(&self, cid: BlobId) -> Result<Arc<LoadedModel>, CacheError> {
        let path = self.dir.join(cid.to_string());
        let mut bytes = None;
        if let Ok(b) = tokio::fs::read(&path).await {
            // Disk can rot or be edited: trust only bytes that still hash to the CID.
            let (b, ok) = tokio::task::spawn_blocking(move || {
                let ok = BlobId::of(&b) == cid;
                (b, ok)
            })
            .await
            .map_err(|e| CacheError::Local(format!("hash task: {e}")))?;
            if ok {
                self.count("disk");
                bytes = Some(b);
            } else {
                tracing::warn!(%cid, "cached model file does not match its CID; fetching again");
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        let bytes = match bytes {
            Some(b) => b,
            None => {
                tokio::fs::create_dir_all(&self.dir)
                    .await
                    .map_err(|e| CacheError::Local(format!("dir: {e}")))?;
                // What a crash left (say, a restart too quick for its start-up sweep to see),
                // at most once a minute, in the background.
                let sweep = {
                    let mut swept = self.swept.lock().expect("sweep time");
                    let due = swept.elapsed() >= SWEEP_EVERY;
                    if due {
                        *swept = std::time::Instant::now();
                    }
                    due
                };
                if sweep {
                    let dir = self.dir.clone();
                    tokio::task::spawn_blocking(move || cairn_hub_api::sweep_partials(&dir));
                }
                // A hub that stops sending, or trickles, is abandoned (`DOWNLOAD_STALL`, the
                // client's).
                self.hub
                    .download_at_most(&cid, &path, self.max_model_bytes, |_, _| {})
                    .await
                    .map_err(|e| hub_error(&cid.to_string(), e))?;
                self.count("hub");
                tokio::fs::read(&path)
                    .await
                    .map_err(|e| CacheError::Local(format!("read: {e}")))?
            }
        };
        if bytes.len() as u64 > self.max_model_bytes {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(CacheError::Invalid(format!(
                "{cid} is {} bytes, over this node's {} byte model limit",
                bytes.len(),
                self.max_model_bytes
            )));
        }
        let engine = self.engine.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            if bytes.starts_with(b"GGUF") {
                let model = cairn_llm::Model::load(&bytes).map_err(|e| {
                    CacheError::Invalid(format!(
                        "{cid} is not a language model this node runs: {e}"
                    ))
                })?;
                let size = (bytes.len() as u64).max(model.weights.memory_bytes() as u64);
                return Ok(LoadedModel {
                    cid,
                    size,
                    pace: Pace::default(),
                    runs: Runs::Llm(Arc::new(model)),
                });
            }
            let signature = cairn_onnx::read_signature(&bytes[..], cairn_onnx::Limits::default())
                .map_err(|e| {
                CacheError::Invalid(format!("{cid} is not a valid ONNX model: {e}"))
            })?;
            let plan = engine.load(&bytes).map_err(|e| match e {
                EngineError::Load(m) => CacheError::Invalid(format!("{cid} cannot be loaded: {m}")),
                other => CacheError::Invalid(format!("{cid}: {other}")),
            })?;
            Ok::<_, CacheError>(LoadedModel {
                cid,
                size: bytes.len() as u64,
                pace: Pace::default(),
                runs: Runs::Onnx { signature, plan },
            })
        })
        .await
        .map_err(|e| CacheError::Local(format!("load task: {e}")));
        let loaded = match loaded {
            Ok(Ok(l)) => l,
            Ok(Err(e)) | Err(e) => {
                // Not a model this engine runs: keep nothing of it on disk.
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
        };
        tracing::info!(%cid, bytes = loaded.size, "model loaded");
        Ok(Arc::new(loaded))
    }
}

pub(crate) fn hub_error(reference: &str, e: ClientError) -> CacheError {
    match e {
        ClientError::Api {
            status, message, ..
        } if status.as_u16() == 404 => {
            CacheError::NotFound(format!("the hub has no model `{reference}`: {message}"))
        }
        // The hub's own trouble (5xx, rate limit) says nothing about the model: try again later.
        ClientError::Api { status, .. } if status.is_server_error() || status.as_u16() == 429 => {
            CacheError::HubUnavailable(e.to_string())
        }
        ClientError::Api { message, .. } => {
            CacheError::NotFound(format!("the hub refused `{reference}`: {message}"))
        }
        ClientError::DigestMismatch { .. } => CacheError::HubUnavailable(e.to_string()),
        ClientError::TooLarge { .. } => CacheError::Invalid(e.to_string()),
        other => CacheError::HubUnavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of 1 MiB over `dir`, fetching from `hub`, running tract.
    fn test_cache(dir: &std::path::Path, hub: HubClient) -> ModelCache {
        let engine: Arc<dyn Engine> = Arc::new(cairn_engine::TractEngine::new());
        ModelCache::new(dir.to_owned(), hub, engine, 1 << 20, 1 << 20)
    }

    /// A model runs in place only once its calls have been seen to be quick for their size:
    /// never on its first call, and not for an input large enough to take longer.
    #[test]
    fn only_calls_seen_to_be_quick_run_in_place() {
        let pace = Pace::default();
        assert!(!pace.quick(256), "unknown before the first call");
        pace.record(256, Duration::from_micros(20));
        assert!(pace.quick(256));
        assert!(!pace.quick(256 * 10), "ten times the input, about 200 µs");
        // One slow call counts at once; a few quick ones do not hide it.
        pace.record(256, Duration::from_millis(10));
        assert!(!pace.quick(256));
        for _ in 0..20 {
            pace.record(256, Duration::from_micros(20));
        }
        assert!(!pace.quick(256), "twenty quick calls after a slow one");
        for _ in 0..200 {
            pace.record(256, Duration::from_micros(20));
        }
        assert!(pace.quick(256));
        // A failure counts only when it was slow.
        let failed = Pace::default();
        failed.record_failed(256, Duration::from_micros(1));
        failed.record(256, Duration::from_micros(20));
        assert!(failed.quick(256));
        failed.record_failed(256, Duration::from_millis(5));
        assert!(!failed.quick(256));
        // An empty input counts as one byte, never as free.
        pace.record(0, Duration::from_millis(1));
        assert!(!pace.quick(0));
    }

    /// At start, partial downloads no one holds locked (a crash's) are swept; one a live
    /// download holds (another process's, or another container's, sharing the directory), one
    /// just created (its writer locks it next), this process's own unless long untouched, a
    /// link, and files not named as downloads are left alone.
    #[test]
    fn partial_downloads_left_by_a_crash_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let ago = |secs| std::time::SystemTime::now() - Duration::from_secs(secs);
        let written = |name: &str, secs| {
            let f = std::fs::File::create(path(name)).unwrap();
            f.set_modified(ago(secs)).unwrap();
            f
        };
        let old = |name: &str| written(name, 3600);
        drop(old(".m.bafkreiabc.41-00000000deadbeef.partial"));
        let pid = std::process::id();
        drop(old(&format!(
            ".m.bafkreiabc.{pid}-00000000deadbeef.partial"
        )));
        let ours = format!(".m.bafkreiabc.{pid}-00000000cafebabe.partial");
        drop(written(&ours, 300));
        drop(old("another-tool.partial"));
        let live = old(".m.bafkreiabc.42-00000000deadbeef.partial");
        live.lock().unwrap();
        std::fs::write(
            path(".m.bafkreiabc.43-00000000deadbeef.partial"),
            b"just now",
        )
        .unwrap();
        std::fs::write(outside.path().join("kept"), b"not the cache's").unwrap();
        let link = ".m.bafkreiabc.44-00000000deadbeef.partial";
        std::os::unix::fs::symlink(outside.path().join("kept"), path(link)).unwrap();
        std::fs::write(path("bafkreikeep"), b"whole").unwrap();
        test_cache(
            dir.path(),
            HubClient::new("http://127.0.0.1:9", None).unwrap(),
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut kept = vec![
            ".m.bafkreiabc.42-00000000deadbeef.partial".to_string(),
            ".m.bafkreiabc.43-00000000deadbeef.partial".into(),
            link.into(),
            ours,
            "another-tool.partial".into(),
            "bafkreikeep".into(),
        ];
        kept.sort();
        assert_eq!(left, kept);
        assert!(outside.path().join("kept").exists());
        // Once its writer lets go (it died), the next sweep takes it.
        drop(live);
        cairn_hub_api::sweep_partials(dir.path());
        assert!(!path(".m.bafkreiabc.42-00000000deadbeef.partial").exists());
    }

    /// A hub that answers every request with `status` and an error body.
    async fn hub_answering(status: u16) -> HubClient {
        hub_counting(status).await.0
    }

    /// [`hub_answering`], and how many requests it got.
    async fn hub_counting(status: u16) -> (HubClient, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        let asked = Arc::new(AtomicU64::new(0));
        let count = asked.clone();
        let app = axum::Router::new().fallback(move || async move {
            count.fetch_add(1, Ordering::Relaxed);
            (
                status,
                axum::Json(cairn_core::ErrorBody::new("busy", "the hub is busy")),
            )
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (HubClient::new(&url, None).unwrap(), asked)
    }

    /// A hub serving one blob in chunks `gap` apart, then (when `stop`) nothing more.
    async fn hub_sending(chunks: Vec<&'static [u8]>, gap: Duration, stop: bool) -> HubClient {
        use futures::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(move || {
            let chunks = chunks.clone();
            async move {
                let sent = futures::stream::iter(chunks).then(move |c| async move {
                    tokio::time::sleep(gap).await;
                    Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(c))
                });
                if stop {
                    axum::body::Body::from_stream(sent.chain(futures::stream::pending()))
                } else {
                    axum::body::Body::from_stream(sent)
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        HubClient::new(&url, None).unwrap()
    }

    /// A hub that sends part of a model and then nothing: the load is abandoned as the hub's
    /// trouble (not remembered against the model), its partial file removed, and the next call
    /// tries again, instead of every call for the model waiting on one load for good. A hub
    /// that keeps sending, however long the whole takes, is waited for.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_download_the_hub_stops_sending_is_abandoned() {
        let stall = Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(cairn_engine::TractEngine::new());
        let hub = hub_sending(vec![b"ONNX, the first bytes of it"], Duration::ZERO, true).await;
        let cache = ModelCache::new(
            dir.path().to_owned(),
            hub.with_download_stall(stall, 16),
            engine.clone(),
            1 << 20,
            1 << 20,
        );
        let cid = BlobId::of(b"a model the hub starts sending and never finishes");
        for _ in 0..2 {
            let load = tokio::time::timeout(Duration::from_secs(20), cache.get(cid));
            let Err(e) = load.await.expect("the load waited on the silent hub") else {
                panic!("loaded half a model")
            };
            assert!(matches!(e, CacheError::HubUnavailable(_)), "{e:?}");
            assert!(e.to_string().contains("sent fewer than 16 bytes"), "{e}");
            assert!(cache.failed.get(&cid).await.is_none());
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
            assert!(left.is_empty(), "{left:?}");
        }
        // Ten chunks 100 ms apart: a second in all, never 300 ms silent. The bytes arrive
        // whole (they are no model, which is the next check).
        let chunks: Vec<&'static [u8]> = vec![b"not a model; "; 10];
        let whole = chunks.concat();
        let hub = hub_sending(chunks, Duration::from_millis(100), false).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(
            dir.path().to_owned(),
            hub.with_download_stall(stall, 1),
            engine,
            1 << 20,
            1 << 20,
        );
        let Err(e) = cache.get(BlobId::of(&whole)).await else {
            panic!("loaded bytes that are no model")
        };
        assert!(matches!(e, CacheError::Invalid(_)), "{e:?}");
    }

    /// A hub that refuses a download with an error body it never finishes sending is heard
    /// within the stall bound: the refusal, not a load held for good.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_error_answer_that_never_ends_is_not_waited_for() {
        use futures::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(|| async {
            let endless = futures::stream::once(async {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"{\"code\":"))
            })
            .chain(futures::stream::pending());
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::body::Body::from_stream(endless),
            )
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hub = HubClient::new(&url, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = test_cache(
            dir.path(),
            hub.with_download_stall(Duration::from_millis(300), 1),
        );
        let load = cache.get(BlobId::of(b"a model the hub refuses, slowly"));
        let Err(e) = tokio::time::timeout(Duration::from_secs(5), load)
            .await
            .expect("the load waited on the endless error body")
        else {
            panic!("loaded a model the hub refused")
        };
        assert!(e.is_transient(), "{e:?}");
    }

    /// A hub that sends a byte just inside every silence bound (here 1 byte per 100 ms against
    /// a 300 ms bound, 10 s for the whole) is abandoned once a bound's worth of waiting brings
    /// less than the minimum, not waited on for the whole file.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_download_the_hub_trickles_is_abandoned() {
        let chunks: Vec<&'static [u8]> = vec![b"x"; 100];
        let cid = BlobId::of(&chunks.concat());
        let hub = hub_sending(chunks, Duration::from_millis(100), false).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = test_cache(
            dir.path(),
            hub.with_download_stall(Duration::from_millis(300), 16),
        );
        let started = std::time::Instant::now();
        let Err(e) = cache.get(cid).await else {
            panic!("loaded bytes that are no model")
        };
        assert!(matches!(e, CacheError::HubUnavailable(_)), "{e:?}");
        assert!(e.to_string().contains("fewer than 16 bytes"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Two downloads of one blob into one directory at once (two processes sharing a models
    /// directory) each write a file of their own: the file left in place is the blob, whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_downloads_of_one_blob_never_share_a_file() {
        let chunks: Vec<&'static [u8]> = vec![b"0123456789abcdef"; 8];
        let whole = chunks.concat();
        let cid = BlobId::of(&whole);
        let hub = hub_sending(chunks, Duration::from_millis(40), false).await;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(cid.to_string());
        let second = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            hub.download_at_most(&cid, &out, 1 << 20, |_, _| {}).await
        };
        let (a, b) = tokio::join!(hub.download_at_most(&cid, &out, 1 << 20, |_, _| {}), second);
        assert_eq!(a.unwrap(), whole.len() as u64);
        assert_eq!(b.unwrap(), whole.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), whole);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    /// A download in progress holds its partial file locked: a sweep (another process
    /// starting on the same directory), even one that finds the file long untouched, leaves
    /// it, and the download completes.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_sweep_leaves_a_download_in_progress() {
        use futures::StreamExt;
        let (first, rest): (&'static [u8], &'static [u8]) = (b"the first part; ", b"the rest");
        let whole = [first, rest].concat();
        let cid = BlobId::of(&whole);
        // The hub sends the first part, then holds the rest until the sweep is done.
        let go = Arc::new(tokio::sync::Notify::new());
        let release = go.clone();
        let app = axum::Router::new().fallback(move || {
            let go = go.clone();
            async move {
                let parts = futures::stream::iter([Ok::<_, std::convert::Infallible>(
                    bytes::Bytes::from_static(first),
                )])
                .chain(futures::stream::once(async move {
                    go.notified().await;
                    Ok(bytes::Bytes::from_static(rest))
                }));
                axum::body::Body::from_stream(parts)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hub = HubClient::new(&url, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(cid.to_string());
        let sweep = async {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let partial = loop {
                let found = std::fs::read_dir(dir.path()).unwrap().flatten().find(|e| {
                    e.file_name().to_string_lossy().ends_with(".partial")
                        && e.metadata().unwrap().len() == first.len() as u64
                });
                if let Some(e) = found {
                    break e.path();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no download under way"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            // Untouched for an hour, as far as its time says: only its lock keeps it.
            let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
            std::fs::File::options()
                .append(true)
                .open(&partial)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
            cairn_hub_api::sweep_partials(dir.path());
            assert!(partial.exists(), "the sweep took a live download's file");
            release.notify_one();
        };
        let (got, ()) = tokio::join!(hub.download_at_most(&cid, &out, 1 << 20, |_, _| {}), sweep);
        assert_eq!(got.unwrap(), whole.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), whole);
    }

    /// A wrong name repeated costs the hub one lookup per `UNKNOWN_TTL`, not one per
    /// call; a hub in trouble is asked again on the next call (nothing is remembered).
    #[tokio::test(flavor = "multi_thread")]
    async fn an_unknown_name_is_remembered_a_hub_outage_is_not() {
        for (status, lookups) in [(404, 1), (503, 5)] {
            let dir = tempfile::tempdir().unwrap();
            let (hub, asked) = hub_counting(status).await;
            let cache = test_cache(dir.path(), hub);
            for _ in 0..5 {
                let e = cache.resolve("nosuch@1.0").await.unwrap_err();
                assert_eq!(matches!(e, CacheError::NotFound(_)), status == 404, "{e:?}");
            }
            assert_eq!(asked.load(Ordering::Relaxed), lookups, "{status}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_hub_in_trouble_is_transient_not_a_missing_model() {
        let cid = BlobId::of(b"a model the hub cannot serve right now");
        for status in [500, 502, 503, 429] {
            let dir = tempfile::tempdir().unwrap();
            let cache = test_cache(dir.path(), hub_answering(status).await);
            let e = cache.resolve("digits@1.0").await.unwrap_err();
            assert!(
                matches!(e, CacheError::HubUnavailable(_)),
                "{status}: {e:?}"
            );
            let Err(e) = cache.get(cid).await else {
                panic!("{status}: loaded a model the hub never served")
            };
            assert!(e.is_transient(), "{status}: {e:?}");
            // Not remembered: the next call asks the hub again.
            assert!(cache.failed.get(&cid).await.is_none(), "{status}");
        }
        // A hub that has no such model: that is the model's fault, and remembered.
        let dir = tempfile::tempdir().unwrap();
        let cache = test_cache(dir.path(), hub_answering(404).await);
        let Err(e) = cache.get(cid).await else {
            panic!("loaded a model the hub does not have")
        };
        assert!(matches!(e, CacheError::NotFound(_)), "{e:?}");
        assert!(cache.failed.get(&cid).await.is_some());
    }
}
