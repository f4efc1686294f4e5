//! The follower: reads the chain's events into the index block range by block range (undoing a
//! reorganization first), then what the chain points at: each submitted batch's receipts from
//! its node (verified against the root on chain before one is stored), each verifier's
//! verdicts, each registered node's state, and the hub's models.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, Log};
use alloy_sol_types::SolEventInterface;
use cairn_ledger::contracts::{Escrow, NodeRegistry, Settlement};
use cairn_ledger::{BlockStamp, Chain, Ledger, LedgerError, LogFilter, Role};
use cairn_receipt::{ReceiptJson, Seal, SealCache};

use crate::metrics::IndexerMetrics;
use crate::store::{EventRow, Index, IndexError, ModelRow, NewBatch, ReceiptRow, VerdictRow};

/// Blocks read per range.
const WINDOW: u64 = 500;
/// How far back a reorganization is looked for among the stored blocks before starting over.
const REORG_SEARCH: u64 = 4096;
/// A batch listing's most bytes: the receipt bound (65,536) at up to ~4 KB each (a
/// batch-signed receipt carries its seal and its proof).
const MAX_LISTING_BYTES: usize = 256 << 20;
/// Any other answer's most bytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Fetches of a batch's receipts before the index calls it unavailable (it is still asked
/// again, hourly).
const LISTING_TRIES: u64 = 8;
/// How long one batch listing may take to arrive.
const LISTING_DEADLINE: Duration = Duration::from_secs(120);
/// Listings fetched at once (each may be large), and at most this many per node per round.
const LISTINGS_AT_ONCE: usize = 2;
const LISTINGS_PER_NODE: usize = 4;
/// Nodes and verifiers asked at once.
const NODES_AT_ONCE: usize = 8;
/// A verdict's most bytes as stored (a verifier reports its own samples; more is cut).
const MAX_VERDICT_BYTES: usize = 64 << 10;
/// How far a receipt's own time may lie after the block that submitted its batch.
const CLOCK_SLACK_SECS: u64 = 600;

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The chain failed.
    #[error("chain: {0}")]
    Ledger(#[from] LedgerError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// The follower's settings.
#[derive(Clone, Debug)]
pub struct FollowConfig {
    /// The hub whose models are indexed (none: no models).
    pub hub: Option<String>,
    /// Time between rounds.
    pub every: Duration,
    /// Deadline of each request to a node, verifier or the hub.
    pub timeout: Duration,
    /// Whether registered endpoints may be private, loopback or link-local addresses (a local
    /// network such as the devnet); otherwise such endpoints are never fetched, so a registered
    /// endpoint cannot make the indexer probe the network it runs in.
    pub allow_private: bool,
    /// How often the hub's models are read again (each read lists every repository).
    pub hub_every: Duration,
    /// How often registered nodes and verifiers are read again (each read asks every active
    /// one for its info and, for verifiers, its verdicts).
    pub nodes_every: Duration,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self {
            hub: None,
            every: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            allow_private: false,
            hub_every: Duration::from_secs(30),
            nodes_every: Duration::from_secs(10),
        }
    }
}

/// Follows one deployment into one index.
pub struct Follower {
    chain: Chain,
    index: Index,
    fetch: cairn_node_api::fetch::Fetcher,
    config: FollowConfig,
    metrics: Arc<IndexerMetrics>,
    hub_read: std::sync::Mutex<Option<std::time::Instant>>,
    nodes_read: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Whether a step last run at `*last` is due again after `every`; if so, it is marked run now.
fn due(last: &std::sync::Mutex<Option<std::time::Instant>>, every: Duration) -> bool {
    let mut last = last.lock().expect("not poisoned");
    let due = last.is_none_or(|at| at.elapsed() >= every);
    if due {
        *last = Some(std::time::Instant::now());
    }
    due
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Events written.
    pub events: u64,
    /// Blocks forgotten because a reorganization replaced them.
    pub rolled_back: u64,
    /// Batch listings stored.
    pub listings: u64,
}

impl Follower {
    /// A follower of `chain` into `index`.
    pub fn new(
        chain: Chain,
        index: Index,
        config: FollowConfig,
        metrics: Arc<IndexerMetrics>,
    ) -> Self {
        let fetch = cairn_node_api::fetch::Fetcher::new(
            config.timeout,
            MAX_LISTING_BYTES,
            config.allow_private,
        );
        Self {
            chain,
            index,
            fetch,
            config,
            metrics,
            hub_read: std::sync::Mutex::new(None),
            nodes_read: std::sync::Mutex::new(None),
        }
    }

    /// Runs until `stop` resolves: the chain, nodes and hub in one loop, batch listings (which
    /// may be large and slow) in another, so a node serving its listing slowly never delays
    /// the chain's indexing. A failed step is logged and retried. Stopping drops a step
    /// midway, which is safe: every write is one transaction.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let failed = |e: FollowError| {
            self.metrics.round_errors.inc();
            tracing::warn!("indexer step failed (retried): {e}");
        };
        let chain = async {
            loop {
                let mut round = Round::default();
                if let Err(e) = self.chain_round(&mut round).await {
                    failed(e);
                }
                tokio::time::sleep(self.config.every).await;
            }
        };
        let listings = async {
            loop {
                if let Err(e) = self.fetch_listings().await {
                    failed(e);
                }
                tokio::time::sleep(self.config.every).await;
            }
        };
        tokio::select! {
            _ = stop => {}
            _ = futures::future::join(chain, listings) => {}
        }
    }

    /// One round of every step in turn (what [`Follower::run`] does in two loops).
    pub async fn round(&self) -> Result<Round, FollowError> {
        let mut round = Round::default();
        self.follow_chain(&mut round).await?;
        round.listings = self.fetch_listings().await?;
        self.refresh_nodes().await?;
        self.refresh_hub_if_due().await;
        Ok(round)
    }

    /// The chain, then the nodes and the hub when each is due.
    async fn chain_round(&self, round: &mut Round) -> Result<(), FollowError> {
        self.follow_chain(round).await?;
        if due(&self.nodes_read, self.config.nodes_every) {
            self.refresh_nodes().await?;
        }
        self.refresh_hub_if_due().await;
        Ok(())
    }

    async fn refresh_hub_if_due(&self) {
        if let Some(hub) = &self.config.hub
            && due(&self.hub_read, self.config.hub_every)
        {
            // The hub is the operator's own, but a hung one must not stop the chain's indexing.
            let limit = self.config.hub_every.max(Duration::from_secs(30));
            match tokio::time::timeout(limit, self.refresh_models(hub)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("reading the hub's models: {e}"),
                Err(_) => tracing::warn!("reading the hub's models took over {limit:?}"),
            }
        }
    }

    fn ledger(&self) -> &Arc<dyn Ledger> {
        self.chain.ledger()
    }

    async fn stamp(&self, n: u64) -> Result<BlockStamp, FollowError> {
        self.ledger()
            .block_at(n)
            .await?
            .ok_or_else(|| LedgerError::Rpc(format!("block {n} is past the head")).into())
    }

    /// Undoes what a reorganization replaced: keeps the newest stored block the chain still
    /// has, forgets everything above it.
    async fn undo_reorg(&self, round: &mut Round) -> Result<(), FollowError> {
        let Some((at, hash)) = self.index.cursor().await? else {
            return Ok(());
        };
        // A block the endpoint does not have (yet) is a lagging endpoint, not a reorganization:
        // nothing is forgotten on its word; the round waits.
        let lagging =
            || LedgerError::Rpc(format!("the chain endpoint does not have block {at} (yet)"));
        match self.ledger().block_at(at).await? {
            Some(b) if b.hash == hash => return Ok(()),
            Some(_) => {}
            None => return Err(lagging().into()),
        }
        let mut keep = None;
        for (n, h) in self.index.blocks_below(at, REORG_SEARCH).await? {
            match self.ledger().block_at(n).await? {
                Some(b) if b.hash == h => {
                    keep = Some((n, h));
                    break;
                }
                Some(_) => {}
                None => return Err(lagging().into()),
            }
        }
        tracing::warn!(
            from = at,
            to = ?keep.map(|k| k.0),
            "the chain reorganized: forgetting what the replaced blocks said"
        );
        round.rolled_back += at - keep.map_or(0, |k| k.0);
        self.metrics.reorgs.inc();
        self.index.rollback(keep).await?;
        Ok(())
    }

    async fn follow_chain(&self, round: &mut Round) -> Result<(), FollowError> {
        self.undo_reorg(round).await?;
        let head = self.ledger().head().await?.number;
        let d = self.chain.deployment();
        let mut from = match self.index.cursor().await? {
            Some((n, _)) => n + 1,
            None => d.block,
        };
        while from <= head {
            let to = head.min(from + WINDOW - 1);
            let before = self.stamp(to).await?;
            let mut logs = Vec::new();
            for address in [d.registry, d.settlement, d.escrow] {
                logs.extend(
                    self.ledger()
                        .logs(LogFilter {
                            address: Some(address),
                            from_block: from,
                            to_block: Some(to),
                            ..Default::default()
                        })
                        .await?,
                );
            }
            // The range's last block must be the same one before and after the logs were read,
            // or a reorganization ran between: read the range again next round.
            let after = self.stamp(to).await?;
            if before != after {
                return Ok(());
            }
            logs.sort_by_key(|l| (l.block, l.index));
            let mut blocks: Vec<BlockStamp> = Vec::new();
            let mut events = Vec::new();
            let mut batches = Vec::new();
            for l in &logs {
                let stamp = match blocks.iter().find(|b| b.number == l.block) {
                    Some(b) => *b,
                    None => {
                        let b = self.stamp(l.block).await?;
                        blocks.push(b);
                        b
                    }
                };
                let Some(mut e) = decode(&l.log, d) else {
                    continue;
                };
                e.block = l.block;
                e.log_index = l.index;
                e.tx = l.tx;
                e.ts = stamp.timestamp;
                if e.name == "BatchSubmitted" {
                    batches.push(NewBatch {
                        id: e.batch_id.unwrap_or_default(),
                        node: e.subject.clone().unwrap_or_default(),
                        root: e.data["root"]
                            .as_str()
                            .unwrap_or_default()
                            .parse()
                            .unwrap_or_default(),
                        count: e.data["count"].as_u64().unwrap_or_default(),
                        fees: e.data["fees"].as_str().unwrap_or("0").to_owned(),
                        block: l.block,
                        ts: stamp.timestamp,
                        tx: l.tx,
                    });
                }
                events.push(e);
            }
            self.index.apply(&events, &batches, &blocks, after).await?;
            round.events += events.len() as u64;
            self.metrics.events.inc_by(events.len() as u64);
            self.metrics
                .block
                .set(i64::try_from(to).unwrap_or(i64::MAX));
            from = to + 1;
        }
        self.metrics
            .head
            .set(i64::try_from(head).unwrap_or(i64::MAX));
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        max: usize,
    ) -> Result<T, String> {
        self.get_json_within(url, max, self.config.timeout).await
    }

    /// [`Follower::get_json`] with its own overall deadline: the fetcher's limit is on idle
    /// time, and a trickling answer must not hold a step.
    async fn get_json_within<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        max: usize,
        deadline: Duration,
    ) -> Result<T, String> {
        let checked = self.fetch.check_url(url)?;
        let req = self.fetch.client().get(checked);
        let (status, body) = tokio::time::timeout(deadline, self.fetch.send_at_most(url, req, max))
            .await
            .map_err(|_| format!("{url} took over {deadline:?}"))??;
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url} answered malformed JSON: {e}"))
    }

    /// The endpoint the registry lists for `node` now.
    async fn endpoint(&self, node: Address) -> Result<String, FollowError> {
        Ok(self.chain.node(node).await?.endpoint)
    }

    /// Fetches and checks the receipts of batches not read yet, a few at once and a few per
    /// node. A node that is down is asked again later (backing off, then hourly), never held
    /// to have lied; a listing that does not match the root on chain is recorded as invalid
    /// and none of it is stored. Batches that carry no fees are not fetched: their receipts
    /// cost nothing to make up.
    async fn fetch_listings(&self) -> Result<u64, FollowError> {
        use futures::StreamExt;
        let now = cairn_core::clock::now_secs();
        let mut per_node = std::collections::HashMap::<String, usize>::new();
        let due: Vec<_> = self
            .index
            .pending_listings(now, 64)
            .await?
            .into_iter()
            .filter(|p| {
                let n = per_node.entry(p.batch.node.clone()).or_default();
                *n += 1;
                *n <= LISTINGS_PER_NODE
            })
            .take(16)
            .collect();
        let outcomes: Vec<_> = futures::stream::iter(due)
            .map(|p| async move {
                let outcome = self.listing(&p.batch).await;
                (p, outcome)
            })
            .buffer_unordered(LISTINGS_AT_ONCE)
            .collect()
            .await;
        let mut stored = 0;
        for (p, outcome) in outcomes {
            let b = &p.batch;
            match outcome {
                Ok(rows) => {
                    if self.index.store_listing(b, &rows).await? {
                        self.metrics.receipts.inc_by(rows.len() as u64);
                        stored += 1;
                    }
                }
                Err(Refused::Skipped(why)) => {
                    self.index.listing_failed(b, &why, None, "unpaid").await?;
                }
                Err(Refused::Invalid(e)) => {
                    self.metrics.listing_failures.inc();
                    tracing::info!(batch = b.id, "batch listing refused: {e}");
                    self.index.listing_failed(b, &e, None, "invalid").await?;
                }
                Err(Refused::Unreachable(e)) => {
                    self.metrics.listing_failures.inc();
                    tracing::info!(batch = b.id, "batch listing not fetched: {e}");
                    let state = if p.tries + 1 < LISTING_TRIES {
                        "pending"
                    } else {
                        "unavailable"
                    };
                    let wait = if state == "pending" {
                        2u64 << p.tries.min(10)
                    } else {
                        3600
                    };
                    self.index
                        .listing_failed(b, &e, Some(now + wait), state)
                        .await?;
                }
            }
        }
        Ok(stored)
    }

    /// One batch's receipts from its node, checked.
    async fn listing(&self, b: &NewBatch) -> Result<Vec<ReceiptRow>, Refused> {
        if b.fees
            .parse::<alloy_primitives::U256>()
            .unwrap_or_default()
            .is_zero()
        {
            return Err(Refused::Skipped(
                "the batch carries no fees, so its receipts are not indexed (they cost nothing to make up)".into(),
            ));
        }
        let node: Address = b
            .node
            .parse()
            .map_err(|_| Refused::Invalid(format!("`{}` is not an address", b.node)))?;
        let endpoint = self
            .endpoint(node)
            .await
            .map_err(|e| Refused::Unreachable(e.to_string()))?;
        let url = cairn_node_api::NodeUrls::new(&endpoint).batch(b.id);
        // A full batch is large: it gets more time than other answers (listings have a loop
        // of their own, so this delays only other listings).
        let deadline = self.config.timeout.max(LISTING_DEADLINE);
        let listing = self
            .get_json_within::<cairn_node_api::BatchReceipts>(&url, MAX_LISTING_BYTES, deadline)
            .await
            .map_err(Refused::Unreachable)?;
        let chain = self.chain.deployment().clone();
        let b = b.clone();
        // Up to 65,536 signature recoveries: off the async workers.
        tokio::task::spawn_blocking(move || check_listing(&chain, &b, node, &listing.receipts))
            .await
            .map_err(|e| Refused::Unreachable(format!("check task: {e}")))?
            .map_err(Refused::Invalid)
    }

    /// Every registered node's registry state; for active ones what their own API says (and
    /// how fast), and for active verifiers their recent verdicts. A few at once, each bounded
    /// by the request deadline.
    async fn refresh_nodes(&self) -> Result<(), FollowError> {
        use futures::StreamExt;
        let registered = self.index.registered().await?;
        let results: Vec<Result<(), FollowError>> = futures::stream::iter(registered)
            .map(|(address, role)| async move { self.refresh_node(&address, &role).await })
            .buffer_unordered(NODES_AT_ONCE)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn refresh_node(&self, address: &str, role: &str) -> Result<(), FollowError> {
        let Ok(addr) = address.parse::<Address>() else {
            return Ok(());
        };
        let now = cairn_core::clock::now_secs();
        let info = self.chain.node(addr).await?;
        let snapshot = serde_json::to_value(&info).unwrap_or_default();
        // Retired and inactive nodes are shown from the registry alone: only active ones (who
        // staked to be) are asked anything.
        let asked = std::time::Instant::now();
        let live = if !info.active || info.endpoint.is_empty() {
            None
        } else if role == "verifier" {
            let urls = cairn_verifier_api::VerifierUrls::new(&info.endpoint);
            // Read as the verifier's typed info: only its fields are ever shown.
            self.get_json::<cairn_verifier_api::VerifierInfo>(&urls.info(), MAX_ANSWER_BYTES)
                .await
                .ok()
                .filter(|v| v.address == addr)
                .and_then(|v| serde_json::to_value(v).ok())
        } else {
            let urls = cairn_node_api::NodeUrls::new(&info.endpoint);
            self.get_json::<cairn_node_api::NodeInfo>(&urls.info(), MAX_ANSWER_BYTES)
                .await
                .ok()
                .filter(|n| n.address == addr)
                .and_then(|n| serde_json::to_value(n).ok())
        };
        // How long its info route took, as the indexer saw it.
        let ms = asked.elapsed().as_millis() as u64;
        if role == "verifier" && live.is_some() {
            self.index_verdicts(&info.endpoint, addr).await;
        }
        // The kind of evidence it registered with: what it serves, if that is the evidence
        // whose digest the registry records (the verifiers checked it when they approved it).
        // Read once per registered digest, not every round.
        let known = self.index.attestation_digest(address).await?;
        let attestation =
            if live.is_some() && role == "inference" && known != Some(info.evidence_digest) {
                let url = format!("{}/v1/attestation", info.endpoint.trim_end_matches('/'));
                self.get_json::<cairn_attest::Evidence>(&url, cairn_attest::MAX_EVIDENCE_BYTES * 2)
                    .await
                    .ok()
                    .filter(|e| e.digest() == info.evidence_digest)
                    .map(|e| (e.kind.to_string(), info.evidence_digest))
            } else {
                None
            };
        self.index
            .upsert_node(&crate::store::NodeRow {
                address,
                role,
                active: info.active,
                snapshot: &snapshot,
                live: live.as_ref().map(|l| (l, ms)),
                attestation: attestation.as_ref().map(|(k, d)| (k.as_str(), *d)),
                now,
            })
            .await?;
        Ok(())
    }

    /// A verifier's latest verdicts, as it reports them: only on batches the index has, naming
    /// those batches' nodes, and cut to a bounded size. A verifier that is down is skipped.
    async fn index_verdicts(&self, endpoint: &str, verifier: Address) {
        let url = format!("{}/v1/verdicts?limit=100", endpoint.trim_end_matches('/'));
        let list = match self
            .get_json::<cairn_verifier_api::VerdictList>(&url, MAX_ANSWER_BYTES)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("verdicts of {verifier}: {e}");
                return;
            }
        };
        let now = cairn_core::clock::now_secs();
        for v in list.verdicts {
            // A verifier speaks for itself only, and about batches that exist.
            if v.verifier != verifier {
                continue;
            }
            match self.index.batch_node(v.batch_id).await {
                Ok(Some(node)) if node == v.node.to_checksum(None) => {}
                _ => continue,
            }
            let samples = v.samples.as_deref().unwrap_or_default();
            let count = |f: fn(&cairn_verifier_api::Outcome) -> bool| {
                samples.iter().filter(|s| f(&s.outcome)).count() as u64
            };
            use cairn_verifier_api::Outcome as O;
            let mut json = serde_json::to_string(&v).unwrap_or_default();
            if json.len() > MAX_VERDICT_BYTES {
                let mut cut = v.clone();
                cut.samples = None;
                cut.peers = None;
                cut.frauds = None;
                json = serde_json::to_string(&cut).unwrap_or_default();
                json.truncate(MAX_VERDICT_BYTES);
                if serde_json::from_str::<serde_json::Value>(&json).is_err() {
                    json = "{}".into();
                }
            }
            let row = VerdictRow {
                verifier: verifier.to_checksum(None),
                batch_id: v.batch_id,
                node: v.node.to_checksum(None),
                outcome: v.outcome.map_or("pending", |o| o.as_str()).to_owned(),
                sampled: v.sampled.unwrap_or(samples.len()) as u64,
                confirmed: count(|o| matches!(o, O::Confirmed { .. })),
                faults: count(|o| {
                    matches!(
                        o,
                        O::Mismatch { .. } | O::Withheld { .. } | O::WrongPayload { .. }
                    )
                }),
                unverifiable: count(|o| matches!(o, O::Unverifiable { .. })),
                frauds: v.frauds.as_ref().map_or(0, |f| f.len() as u64)
                    + u64::from(v.fraud.is_some() && v.frauds.is_none()),
                seen: now,
                json,
            };
            if let Err(e) = self.index.upsert_verdict(&row).await {
                tracing::warn!("storing a verdict: {e}");
            }
        }
    }

    /// The hub's repositories with their releases and files.
    async fn refresh_models(&self, hub: &str) -> Result<(), String> {
        let client = cairn_hub_api::HubClient::new(hub, None).map_err(|e| e.to_string())?;
        let mut models = Vec::new();
        let mut offset = 0;
        loop {
            let page = client
                .search(&cairn_hub_api::Search {
                    limit: Some(100),
                    offset: Some(offset),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let n = page.len() as u32;
            for repo in page {
                // A repository seen on two pages (the hub changed between them) is kept once.
                if models
                    .iter()
                    .any(|m: &ModelRow| m.name == repo.name.as_str())
                {
                    continue;
                }
                let detail = client.repo(&repo.name).await.map_err(|e| e.to_string())?;
                let files = detail
                    .releases
                    .iter()
                    .filter(|r| r.published_at.is_some())
                    .flat_map(|r| {
                        r.files
                            .iter()
                            .map(|f| (f.cid.to_string(), r.version.to_string(), f.path.to_string()))
                    })
                    .collect();
                models.push(ModelRow {
                    name: repo.name.to_string(),
                    owner: repo.owner.to_checksum(None),
                    task: repo.task.clone(),
                    description: repo.description.clone(),
                    created_at: repo.created_at,
                    tags: repo.tags.clone(),
                    detail: serde_json::to_string(&detail).map_err(|e| e.to_string())?,
                    files,
                });
            }
            if n < 100 {
                break;
            }
            offset += n;
        }
        self.index
            .replace_models(&models)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The role a registry event names, spelled as the index keeps it.
fn role_name(code: u8) -> &'static str {
    match Role::from_code(code) {
        Some(Role::Verifier) => "verifier",
        _ => "inference",
    }
}

fn event(
    contract: &'static str,
    name: &'static str,
    subject: Option<Address>,
    batch_id: Option<u64>,
    data: serde_json::Value,
) -> Option<EventRow> {
    Some(EventRow {
        block: 0,
        log_index: 0,
        tx: B256::ZERO,
        ts: 0,
        contract,
        name,
        subject: subject.map(|a| a.to_checksum(None)),
        batch_id,
        data,
    })
}

/// The events the explorer shows, decoded; others (parameter changes, heartbeats, whose
/// latest value the node snapshot carries) are not kept.
fn decode(log: &Log, d: &cairn_ledger::Deployment) -> Option<EventRow> {
    use serde_json::json;
    let id = |v: alloy_primitives::U256| Some(v.saturating_to::<u64>());
    if log.address == d.registry {
        use NodeRegistry::NodeRegistryEvents as E;
        let r = "registry";
        return match E::decode_log(log).ok()?.data {
            E::NodeRegistered(e) => event(
                r,
                "NodeRegistered",
                Some(e.node),
                None,
                json!({"role": role_name(e.role), "endpoint": e.endpoint, "stake": e.stake.to_string()}),
            ),
            E::StakeAdded(e) => event(
                r,
                "StakeAdded",
                Some(e.node),
                None,
                json!({"amount": e.amount.to_string(), "stake": e.stake.to_string()}),
            ),
            E::UnbondRequested(e) => event(
                r,
                "UnbondRequested",
                Some(e.node),
                None,
                json!({"amount": e.amount.to_string(), "endsAt": e.endsAt}),
            ),
            E::UnbondWithdrawn(e) => event(
                r,
                "UnbondWithdrawn",
                Some(e.node),
                None,
                json!({"amount": e.amount.to_string()}),
            ),
            E::EndpointUpdated(e) => event(
                r,
                "EndpointUpdated",
                Some(e.node),
                None,
                json!({"endpoint": e.endpoint}),
            ),
            E::AttestationUpdated(e) => event(
                r,
                "AttestationUpdated",
                Some(e.node),
                None,
                json!({"digest": e.digest.to_string(), "measurement": e.measurement.to_string()}),
            ),
            E::NodeEnabled(e) => event(
                r,
                "NodeEnabled",
                Some(e.node),
                None,
                json!({"enabled": e.enabled}),
            ),
            E::Slashed(e) => event(
                r,
                "Slashed",
                Some(e.node),
                None,
                json!({"amount": e.amount.to_string(), "to": e.to.to_checksum(None)}),
            ),
            _ => None,
        };
    }
    if log.address == d.settlement {
        use Settlement::SettlementEvents as E;
        let s = "settlement";
        return match E::decode_log(log).ok()?.data {
            E::BatchSubmitted(e) => event(
                s,
                "BatchSubmitted",
                Some(e.node),
                id(e.id),
                json!({"root": e.root.to_string(), "count": e.count, "fees": e.fees.to_string()}),
            ),
            E::BatchAttested(e) => event(
                s,
                "BatchAttested",
                None,
                id(e.id),
                json!({"verifiers": e.verifiers.iter().map(|v| v.to_checksum(None)).collect::<Vec<_>>()}),
            ),
            E::BatchFinalized(e) => event(
                s,
                "BatchFinalized",
                None,
                id(e.id),
                json!({"toNode": e.toNode.to_string(), "toVerifiers": e.toVerifiers.to_string(), "toTreasury": e.toTreasury.to_string()}),
            ),
            E::BatchExpired(e) => event(
                s,
                "BatchExpired",
                None,
                id(e.id),
                json!({"refunded": e.refunded.to_string()}),
            ),
            E::BatchLapsed(e) => event(s, "BatchLapsed", None, id(e.id), json!({})),
            E::BatchChallenged(e) => event(
                s,
                "BatchChallenged",
                Some(e.challenger),
                id(e.id),
                json!({"receiptHash": e.receiptHash.to_string(), "slashed": e.slashed.to_string(), "reward": e.reward.to_string()}),
            ),
            E::VaultDeployed(e) => event(
                s,
                "VaultDeployed",
                Some(e.node),
                None,
                json!({"vault": e.vault.to_checksum(None)}),
            ),
            E::FeeSplitSet(e) => event(
                s,
                "FeeSplitSet",
                None,
                None,
                json!({"verifierBps": e.verifierBps, "treasuryBps": e.treasuryBps}),
            ),
            _ => None,
        };
    }
    if log.address == d.escrow {
        use Escrow::EscrowEvents as E;
        let x = "escrow";
        return match E::decode_log(log).ok()?.data {
            E::Deposited(e) => event(
                x,
                "Deposited",
                Some(e.payer),
                None,
                json!({"channel": e.channel.to_string(), "payee": e.payee.to_checksum(None), "amount": e.amount.to_string()}),
            ),
            E::Redeemed(e) => event(
                x,
                "Redeemed",
                Some(e.payee),
                None,
                json!({"channel": e.channel.to_string(), "claimed": e.claimed.to_string(), "paid": e.paid.to_string()}),
            ),
            E::Withdrawn(e) => event(
                x,
                "Withdrawn",
                Some(e.payer),
                None,
                json!({"channel": e.channel.to_string(), "amount": e.amount.to_string()}),
            ),
            _ => None,
        };
    }
    None
}

/// Every receipt parses, is the batch node's under this deployment's domain, and the receipts
/// make exactly the root on chain. A seal that does not verify is shown as `invalid`, not a
/// reason to hide the batch: the node committed the content on chain whatever its listing's
/// seals say (verifiers prove a lie in it all the same), and hiding it would let a node keep
/// its batches off the explorer by spoiling seals.
fn check_listing(
    d: &cairn_ledger::Deployment,
    b: &NewBatch,
    node: Address,
    receipts: &[ReceiptJson],
) -> Result<Vec<ReceiptRow>, String> {
    if receipts.len() as u64 != b.count {
        return Err(format!(
            "the node lists {} receipts; the batch on chain holds {}",
            receipts.len(),
            b.count
        ));
    }
    let mut cache = SealCache::default();
    let mut digests = Vec::with_capacity(receipts.len());
    let mut rows = Vec::with_capacity(receipts.len());
    for (n, r) in receipts.iter().enumerate() {
        let read = r
            .read()
            .map_err(|e| format!("receipt {n} does not parse: {e}"))?;
        let sealed = r.verify_cached(&mut cache).is_ok();
        let (sr, digest) = (read.receipt, read.digest);
        if sr.signer != node {
            return Err(format!(
                "receipt {n} is signed by {}, not the batch's node",
                sr.signer
            ));
        }
        if sr.domain.chain_id != d.chain_id || sr.domain.verifying_contract != d.settlement {
            return Err(format!(
                "receipt {n} is addressed to another chain or contract"
            ));
        }
        if sr.claims.timestamp > b.ts + CLOCK_SLACK_SECS {
            return Err(format!(
                "receipt {n} is dated {}, after the block that submitted its batch ({})",
                sr.claims.timestamp, b.ts
            ));
        }
        digests.push(digest);
        let c = &sr.claims;
        rows.push(ReceiptRow {
            leaf_index: n as u64,
            request_id: c.request_id,
            node: node.to_checksum(None),
            model: c.model.to_string(),
            kind: if c.llm.is_some() { "llm" } else { "tensor" },
            ts: c.timestamp,
            price: c.price.to_string(),
            payment_ref: c.payment_ref,
            profile_hash: c.profile.hash(),
            digest,
            proof: Vec::new(),
            seal: match sr.seal {
                _ if !sealed => "invalid",
                Seal::Own(_) => "own",
                Seal::Batch(_) => "batch",
            },
            json: r.as_str().to_owned(),
        });
    }
    let tree = cairn_receipt::merkle::ReceiptTree::new(&digests).map_err(|e| e.to_string())?;
    if tree.root() != b.root {
        return Err(format!(
            "the listed receipts make root {}, the batch on chain has {}",
            tree.root(),
            b.root
        ));
    }
    for row in &mut rows {
        row.proof = tree.proof(row.digest).unwrap_or_default();
    }
    Ok(rows)
}

/// Why a batch listing was not stored.
enum Refused {
    /// Not fetched, by policy.
    Skipped(String),
    /// Fetched and wrong: never stored.
    Invalid(String),
    /// Not fetched (down, slow, too big): asked again later.
    Unreachable(String),
}
