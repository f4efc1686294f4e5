//! Model names (`digits@1.0`, `digits`) resolved to the exact file at the hub, without the hub
//! on an answer's path once a name is known.
//!
//! A known name's resolution serves; after the refresh interval one lookup at a time checks it
//! again in the background, and a hub that is down, slow or failing leaves it in service (the
//! receipt names the exact file either way). Only a bare name (the latest release, which a new
//! release moves) unconfirmed for [`MAX_UNCONFIRMED`] waits for its lookup, and even then takes
//! its old resolution when the hub is unavailable. A name the hub answers 404 for is forgotten
//! and remembered as unknown for a few seconds; a new name whose lookup the hub left unanswered
//! is refused at once for up to [`SILENT_TTL`] while one lookup at a time goes on behind the
//! refusals (a silent hub costs the callers of a name one timeout, not one per call), and known
//! names keep serving. Lookups are bounded in time
//! ([`HUB_LOOKUP_TIMEOUT`]) and in number at once ([`MAX_LOOKUPS`]): a stranger sending
//! distinct names cannot make the node hold a socket per name at a silent hub.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_core::{FilePath, RepoName, Version};
use cairn_hub_api::{ClientError, HubClient};
use moka::future::Cache;
use moka::ops::compute::Op;
use tokio::sync::Semaphore;

use crate::cache::{CacheError, Resolution, hub_error};

/// How long a name's resolution is served before it is looked up again, by default.
pub(crate) const NAME_REFRESH: Duration = Duration::from_secs(10);
/// How long a bare name may go without the hub confirming it before a call waits for the
/// lookup (it may name a superseded release by then).
pub(crate) const MAX_UNCONFIRMED: Duration = Duration::from_secs(60);
/// How long a name's lookup at the hub may take before it counts as the hub being unavailable.
pub(crate) const HUB_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lookups at the hub at once; past it a new name is refused as `hub_unavailable` at once.
pub(crate) const MAX_LOOKUPS: usize = 32;
/// How long a name the hub does not know is remembered as unknown: a client repeating a
/// wrong name costs the hub a lookup per this, not one per call.
pub(crate) const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// How long a new name whose lookup the hub left unanswered is refused without asking again:
/// short, since whoever slows the hub for a moment makes the name fail for this long after.
pub(crate) const SILENT_TTL: Duration = Duration::from_secs(2);
/// Names kept.
const CAPACITY: u64 = 10_000;

/// A name's resolution, when the hub last confirmed it, and when to ask again.
struct Named {
    resolution: Arc<Resolution>,
    confirmed: Instant,
    next_check: Instant,
    /// A lookup checking it is on its way.
    checking: AtomicBool,
}

impl Named {
    fn new(resolution: Arc<Resolution>, confirmed: Instant, refresh: Duration) -> Arc<Self> {
        Arc::new(Self {
            resolution,
            confirmed,
            next_check: Instant::now() + refresh,
            checking: AtomicBool::new(false),
        })
    }
}

/// Lets a name be checked again however its check ended (a panic included).
struct Checking(Arc<Named>);

impl Drop for Checking {
    fn drop(&mut self) {
        self.0.checking.store(false, Ordering::Release);
    }
}

/// A name as parsed from a reference.
struct Name {
    reference: String,
    repo: RepoName,
    version: Option<Version>,
    path: Option<FilePath>,
}

/// A new name whose lookup the hub left unanswered.
struct Silent {
    error: CacheError,
    /// A lookup behind the refusals is on its way.
    probing: AtomicBool,
}

/// Why a lookup failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// The hub answered 404: the name is not there.
    Gone,
    /// The hub did not answer within the lookup timeout.
    Silent,
    /// Anything else (a refusal, too many lookups at once).
    Other,
}

/// Names resolved at the hub (see the module docs).
#[derive(Clone)]
pub(crate) struct Names {
    hub: HubClient,
    known: Cache<String, Arc<Named>>,
    /// New names the hub said it does not know, for [`UNKNOWN_TTL`].
    unknown: Cache<String, CacheError>,
    /// New names whose lookup the hub left unanswered, for [`SILENT_TTL`].
    silent: Cache<String, Arc<Silent>>,
    lookup_timeout: Duration,
    permits: Arc<Semaphore>,
    refresh: Duration,
    max_unconfirmed: Duration,
}

impl Names {
    pub(crate) fn new(hub: HubClient) -> Self {
        Self {
            hub,
            known: Cache::builder().max_capacity(CAPACITY).build(),
            unknown: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(UNKNOWN_TTL)
                .build(),
            silent: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(SILENT_TTL)
                .build(),
            permits: Arc::new(Semaphore::new(MAX_LOOKUPS)),
            lookup_timeout: HUB_LOOKUP_TIMEOUT,
            refresh: NAME_REFRESH,
            max_unconfirmed: MAX_UNCONFIRMED,
        }
    }

    pub(crate) fn set_refresh(&mut self, every: Duration) {
        self.refresh = every;
    }

    /// The resolution of `reference`, a name.
    pub(crate) async fn resolve(
        &self,
        reference: &str,
        repo: RepoName,
        version: Option<Version>,
        path: Option<FilePath>,
    ) -> Result<Arc<Resolution>, CacheError> {
        let bare = version.is_none();
        // Built only off the fast path (a known name within its interval allocates nothing).
        let name = move || Name {
            reference: reference.to_owned(),
            repo,
            version,
            path,
        };
        if let Some(known) = self.known.get(reference).await {
            let now = Instant::now();
            if now < known.next_check || known.checking.swap(true, Ordering::AcqRel) {
                return Ok(known.resolution.clone());
            }
            let checking = Checking(known.clone());
            let name = name();
            if bare && now.duration_since(known.confirmed) >= self.max_unconfirmed {
                return self.check(name, checking).await;
            }
            let names = self.clone();
            tokio::spawn(async move { names.check(name, checking).await });
            return Ok(known.resolution.clone());
        }
        if let Some(e) = self.unknown.get(reference).await {
            return Err(e);
        }
        if let Some(silent) = self.silent.get(reference).await {
            // Refused at once; one lookup at a time goes on behind it, so the name serves again
            // as soon as the hub answers, not when the refusal expires.
            if !silent.probing.swap(true, Ordering::AcqRel) {
                let (names, name) = (self.clone(), name());
                tokio::spawn(async move {
                    let reference = name.reference.clone();
                    if names.first_lookup(name).await.is_ok() {
                        names.silent.invalidate(&reference).await;
                    }
                });
            }
            return Err(silent.error.clone());
        }
        self.first_lookup(name())
            .await
            .map(|named| named.resolution.clone())
    }

    /// A name's first lookup, shared by concurrent first calls; a 404 is remembered as unknown,
    /// a lookup the hub left unanswered as silent.
    async fn first_lookup(&self, name: Name) -> Result<Arc<Named>, CacheError> {
        self.known
            .try_get_with(name.reference.clone(), async {
                match self.lookup(&name).await {
                    Ok(r) => Ok(Named::new(Arc::new(r), Instant::now(), self.refresh)),
                    Err((e, miss)) => {
                        match miss {
                            Miss::Gone => {
                                self.unknown.insert(name.reference.clone(), e.clone()).await
                            }
                            Miss::Silent => {
                                let silent = Arc::new(Silent {
                                    error: e.clone(),
                                    probing: AtomicBool::new(false),
                                });
                                self.silent.insert(name.reference.clone(), silent).await
                            }
                            Miss::Other => {}
                        }
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|e| CacheError::clone(&e))
    }

    /// Looks a known name up again: the hub's answer replaces it; a 404 forgets it; any other
    /// failure keeps it in service until the next refresh interval. Changes the entry only if
    /// it is still the one checked (a newer one may have come meanwhile).
    async fn check(&self, name: Name, checking: Checking) -> Result<Arc<Resolution>, CacheError> {
        let known = &checking.0;
        let (op, answer) = match self.lookup(&name).await {
            Ok(r) => {
                let r = Arc::new(r);
                let fresh = Named::new(r.clone(), Instant::now(), self.refresh);
                (Op::Put(fresh), Ok(r))
            }
            Err((e, Miss::Gone)) => {
                tracing::warn!(reference = name.reference, error = %e, "the hub no longer knows this name");
                self.unknown.insert(name.reference.clone(), e.clone()).await;
                (Op::Remove, Err(e))
            }
            Err((e, _)) => {
                tracing::warn!(
                    reference = name.reference,
                    error = %e,
                    "hub lookup failed; serving the name's last resolution"
                );
                let kept = Named::new(known.resolution.clone(), known.confirmed, self.refresh);
                (Op::Put(kept), Ok(known.resolution.clone()))
            }
        };
        self.known
            .entry(name.reference)
            .and_compute_with(|current| {
                std::future::ready(match current {
                    Some(c) if Arc::ptr_eq(c.value(), known) => op,
                    _ => Op::Nop,
                })
            })
            .await;
        answer
    }

    /// The hub's resolution of `name`, within the lookup timeout ([`HUB_LOOKUP_TIMEOUT`]); on
    /// failure, why.
    async fn lookup(&self, name: &Name) -> Result<Resolution, (CacheError, Miss)> {
        let reference = &name.reference;
        let _permit = self.permits.try_acquire().map_err(|_| {
            let e = CacheError::HubUnavailable(format!(
                "this node is looking up {MAX_LOOKUPS} names at the hub already; \
                 try `{reference}` again shortly, or call it by CID"
            ));
            (e, Miss::Other)
        })?;
        let call = self
            .hub
            .resolve(&name.repo, name.version, name.path.as_ref());
        let resolved = tokio::time::timeout(self.lookup_timeout, call)
            .await
            .map_err(|_| {
                let e = CacheError::HubUnavailable(format!(
                    "the hub did not resolve `{reference}` within {:?}; try again in a few seconds, or call it by CID",
                    self.lookup_timeout
                ));
                (e, Miss::Silent)
            })?
            .map_err(|e| {
                // Only the hub's 404 says the name is not there; another refusal (a proxy, a
                // gateway's configuration) must not make a node forget a name it serves.
                let gone = matches!(&e, ClientError::Api { status, .. } if status.as_u16() == 404);
                let miss = if gone { Miss::Gone } else { Miss::Other };
                (hub_error(reference, e), miss)
            })?;
        Ok(Resolution {
            cid: resolved.file.cid,
            version: Some(resolved.version),
            signature: resolved.file.onnx,
            gguf: resolved.file.gguf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{BlobId, ModelRef};
    use std::sync::Mutex;

    /// What the scripted hub answers a lookup with, after `delay`.
    struct Script {
        answer: Result<BlobId, u16>,
        delay: Duration,
        asked: usize,
    }

    /// A hub whose `/v1/resolve` answers as `script` says (the real hub is in the end-to-end
    /// tests; this one can be slow, fail or change its answer on cue).
    async fn scripted(answer: Result<BlobId, u16>) -> (HubClient, Arc<Mutex<Script>>) {
        let script = Arc::new(Mutex::new(Script {
            answer,
            delay: Duration::ZERO,
            asked: 0,
        }));
        let state = script.clone();
        let app = axum::Router::new().fallback(move || {
            let state = state.clone();
            async move {
                let (answer, delay) = {
                    let mut s = state.lock().unwrap();
                    s.asked += 1;
                    (s.answer, s.delay)
                };
                tokio::time::sleep(delay).await;
                use axum::response::IntoResponse;
                match answer {
                    Ok(cid) => axum::Json(cairn_hub_api::Resolved {
                        repo: "digits".parse().unwrap(),
                        version: "1.0".parse().unwrap(),
                        file: cairn_hub_api::FileEntry {
                            path: "model.onnx".parse().unwrap(),
                            cid,
                            size: 1,
                            media_type: "application/onnx".into(),
                            onnx: None,
                            gguf: None,
                        },
                    })
                    .into_response(),
                    Err(status) => (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        axum::Json(cairn_core::ErrorBody::new("no", "scripted refusal")),
                    )
                        .into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (HubClient::new(&url, None).unwrap(), script)
    }

    async fn resolve(names: &Names, reference: &str) -> Result<Arc<Resolution>, CacheError> {
        let ModelRef::Named {
            repo,
            version,
            path,
        } = reference.parse().unwrap()
        else {
            panic!("{reference} is not a name")
        };
        names.resolve(reference, repo, version, path).await
    }

    fn cid(n: u8) -> BlobId {
        BlobId::of(&[n])
    }

    /// Waits until the background check has settled what the hub answered.
    async fn settled(names: &Names, reference: &str) {
        for _ in 0..200 {
            let checking = names
                .known
                .get(reference)
                .await
                .is_some_and(|n| n.checking.load(Ordering::Acquire));
            if !checking {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the check of {reference} never ended");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_first_calls_share_one_lookup() {
        let (hub, script) = scripted(Ok(cid(1))).await;
        script.lock().unwrap().delay = Duration::from_millis(200);
        let names = Names::new(hub);
        let calls = (0..16).map(|_| resolve(&names, "digits@1.0"));
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap().cid, cid(1));
        }
        assert_eq!(script.lock().unwrap().asked, 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stale_name_serves_while_one_check_runs_and_follows_the_hub() {
        let (hub, script) = scripted(Ok(cid(1))).await;
        let mut names = Names::new(hub);
        names.set_refresh(Duration::from_millis(50));
        assert_eq!(resolve(&names, "digits").await.unwrap().cid, cid(1));
        // A new release, behind a slow hub: the calls past the interval get the old file at
        // once, and one check runs for all of them.
        {
            let mut s = script.lock().unwrap();
            s.answer = Ok(cid(2));
            s.delay = Duration::from_millis(300);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let started = Instant::now();
        for _ in 0..20 {
            assert_eq!(resolve(&names, "digits").await.unwrap().cid, cid(1));
        }
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        settled(&names, "digits").await;
        assert_eq!(script.lock().unwrap().asked, 2);
        assert_eq!(resolve(&names, "digits").await.unwrap().cid, cid(2));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_hub_keeps_a_name_and_only_a_404_forgets_it() {
        for (status, kept) in [(503, true), (500, true), (403, true), (404, false)] {
            let (hub, script) = scripted(Ok(cid(1))).await;
            let mut names = Names::new(hub);
            names.set_refresh(Duration::from_millis(20));
            resolve(&names, "digits@1.0").await.unwrap();
            script.lock().unwrap().answer = Err(status);
            tokio::time::sleep(Duration::from_millis(30)).await;
            // This call starts the check and still gets the known file.
            assert_eq!(resolve(&names, "digits@1.0").await.unwrap().cid, cid(1));
            settled(&names, "digits@1.0").await;
            let after = resolve(&names, "digits@1.0").await;
            assert_eq!(after.is_ok(), kept, "{status}: {after:?}");
            if !kept {
                assert!(matches!(after, Err(CacheError::NotFound(_))), "{after:?}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_bare_name_long_unconfirmed_waits_for_the_hub_unless_it_is_down() {
        let (hub, script) = scripted(Ok(cid(1))).await;
        let mut names = Names::new(hub);
        names.set_refresh(Duration::from_millis(10));
        names.max_unconfirmed = Duration::from_millis(40);
        resolve(&names, "digits").await.unwrap();
        script.lock().unwrap().answer = Ok(cid(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Unconfirmed too long: this very call gets the new release.
        assert_eq!(resolve(&names, "digits").await.unwrap().cid, cid(2));
        // The hub down: the old resolution, and the next check an interval later.
        script.lock().unwrap().answer = Err(503);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(resolve(&names, "digits").await.unwrap().cid, cid(2));
        let asked = script.lock().unwrap().asked;
        assert_eq!(resolve(&names, "digits").await.unwrap().cid, cid(2));
        assert_eq!(
            script.lock().unwrap().asked,
            asked,
            "asked again within the interval"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lookups_at_once_are_bounded() {
        let (hub, script) = scripted(Ok(cid(1))).await;
        script.lock().unwrap().delay = Duration::from_millis(300);
        let names = Names::new(hub);
        let calls = (0..MAX_LOOKUPS + 8).map(|i| {
            let names = names.clone();
            async move { resolve(&names, &format!("m{i}@1.0")).await }
        });
        let results = futures::future::join_all(calls).await;
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(CacheError::HubUnavailable(_))))
            .count();
        assert_eq!(refused, 8, "{results:?}");
        assert_eq!(script.lock().unwrap().asked, MAX_LOOKUPS);
    }

    /// A new name the hub leaves unanswered costs its callers one timeout, then is refused at
    /// once for a few seconds; a name the hub knows is not held back by another's silence.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_hub_costs_a_new_name_one_timeout_not_one_per_call() {
        let (hub, script) = scripted(Ok(cid(1))).await;
        let mut names = Names::new(hub);
        names.lookup_timeout = Duration::from_millis(200);
        script.lock().unwrap().delay = Duration::from_secs(3);
        for _ in 0..6 {
            let e = resolve(&names, "silent@1.0").await.unwrap_err();
            assert!(matches!(e, CacheError::HubUnavailable(_)), "{e:?}");
        }
        // One lookup waited out the timeout; the calls after it were refused without one, and
        // the first of them started one lookup behind the refusals (still waiting on the hub).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(script.lock().unwrap().asked, 2);
        // The hub answers again: the name serves once that lookup is through, well before its
        // refusal would have expired.
        script.lock().unwrap().delay = Duration::ZERO;
        let back = Instant::now();
        while resolve(&names, "silent@1.0").await.is_err() {
            assert!(
                back.elapsed() < SILENT_TTL / 2,
                "served only once the refusal expired"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(resolve(&names, "other@1.0").await.unwrap().cid, cid(1));
    }
}
