//! Which node runs a step: among the active inference nodes the registry lists (and any the
//! entry was given by URL), by price for the model, then recent latency, skipping nodes that
//! failed lately; a step that fails on one node is sent to the next, each attempt under the
//! step's deadline. A node's failure is recorded as an attempt, never charged: the node client
//! pays only inside the exchange that returns the answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use cairn_core::{BlobId, Tensor};
use cairn_node_api::{NodeClient, NodeClientError, PaymentMade};
use cairn_receipt::SignedReceipt;
use serde::{Deserialize, Serialize};

/// How long a node that failed is passed over.
const BACKOFF: Duration = Duration::from_secs(30);
/// How long a node's info is trusted before it is asked again.
const INFO_TTL: Duration = Duration::from_secs(30);
/// How long the registry's list of nodes is trusted.
const REGISTRY_TTL: Duration = Duration::from_secs(15);
/// How long asking a node who it is may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(3);

/// How the entry pays nodes.
#[derive(Clone)]
pub struct Payer {
    /// The payer's key.
    pub key: alloy_signer_local::PrivateKeySigner,
    /// Where the payer's own channel accounts are kept.
    pub accounts: std::path::PathBuf,
    /// What an x402 `batch-settlement` deposit puts in when a channel runs low (`None`: pay
    /// prepaid or `exact` only).
    pub batch_deposit: Option<U256>,
    /// The only asset paid in when the router knows no chain: (CAIP-2 network, token, and the
    /// escrow prepaid vouchers may be signed on, when known). With a chain, its token and
    /// escrow; with neither, nothing is paid (a node must not choose the payer's token, chain or
    /// escrow).
    pub asset: Option<(String, Address, Option<Address>)>,
}

/// The salt of the entry's own channels: apart from the payer's other channels with the same
/// nodes, so the entry's vouchers and the payer's own never race for one cumulative count.
pub fn channel_salt() -> alloy_primitives::B256 {
    alloy_primitives::keccak256(b"cairn-entry")
}

/// A node as the router knows it.
#[derive(Debug, Clone)]
struct Known {
    address: Option<Address>,
    default_price: U256,
    model_prices: Vec<(String, U256)>,
    llm_prices: Vec<(String, cairn_node_api::openai::TokenPrice)>,
    info_at: Option<Instant>,
    ewma_ms: Option<f64>,
    down_until: Option<Instant>,
    successes: u64,
    failures: u64,
}

impl Default for Known {
    fn default() -> Self {
        Self {
            address: None,
            default_price: U256::ZERO,
            model_prices: Vec::new(),
            llm_prices: Vec::new(),
            info_at: None,
            ewma_ms: None,
            down_until: None,
            successes: 0,
            failures: 0,
        }
    }
}

/// A failed attempt, kept in the run record: the entry's account of it, not evidence against
/// the node (a transient fault looks the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    /// The node's URL.
    pub node: String,
    /// What went wrong.
    pub error: String,
    /// The most it may have cost (token units): whether a payment was taken before it failed
    /// is not known.
    pub at_risk: String,
}

/// A node's standing, for `GET /v1/entry` and the explorer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStanding {
    /// URL.
    pub url: String,
    /// Address, once known.
    pub address: Option<Address>,
    /// Recent latency (exponentially weighted), milliseconds.
    pub latency_ms: Option<f64>,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Whether it is passed over for now.
    pub resting: bool,
}

/// Why a step could not run on any node.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No node to try.
    #[error("no active node is reachable")]
    NoNode,
    /// Every node tried failed.
    #[error("every node tried failed: {summary}")]
    AllFailed {
        /// The failures, in words.
        summary: String,
        /// Each attempt.
        attempts: Vec<Attempt>,
        /// The most they may have cost.
        at_risk: U256,
    },
}

/// A model step's result.
pub struct Ran<T> {
    /// What came back.
    pub value: T,
    /// The node that answered.
    pub node: String,
    /// Its address (the receipt's signer).
    pub address: Address,
    /// What was paid.
    pub payment: Option<PaymentMade>,
    /// Failed attempts before it.
    pub attempts: Vec<Attempt>,
    /// The most those attempts may have cost.
    pub at_risk: U256,
}

/// The registry's nodes (URL, registered address) as last read, and when.
type Registered = (Option<Instant>, Vec<(String, Address)>);

/// The router.
pub struct Router {
    chain: Option<cairn_ledger::Chain>,
    fixed: Vec<String>,
    payer: Option<Payer>,
    deadline: Duration,
    /// How many nodes a step may be tried on.
    tries: usize,
    known: Mutex<HashMap<String, Known>>,
    registry: tokio::sync::Mutex<Registered>,
    /// How nodes the registry names are reached: endpoints are chosen by whoever registered, so
    /// no redirects and, unless `allow_private`, no private, loopback or link-local address.
    guarded: reqwest::Client,
    /// How the nodes the operator gave are reached (no redirects either).
    trusted: reqwest::Client,
    allow_private: bool,
}

impl Router {
    /// A router over the registry's active nodes (when a chain is given) and `fixed` URLs.
    pub fn new(
        chain: Option<cairn_ledger::Chain>,
        fixed: Vec<String>,
        payer: Option<Payer>,
        deadline: Duration,
    ) -> Self {
        Self {
            chain,
            fixed: fixed
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            payer,
            deadline,
            tries: 2,
            known: Mutex::new(HashMap::new()),
            registry: tokio::sync::Mutex::new((None, Vec::new())),
            guarded: cairn_node_api::fetch::Fetcher::new(deadline, 16 << 20, false)
                .client()
                .clone(),
            trusted: cairn_node_api::fetch::Fetcher::new(deadline, 16 << 20, true)
                .client()
                .clone(),
            allow_private: false,
        }
    }

    /// Lets registry endpoints on private, loopback or link-local addresses be reached (a
    /// local network, the devnet).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        if allow {
            self.guarded = self.trusted.clone();
        }
        self
    }

    /// Tries a step on at most this many nodes (default 2).
    pub fn with_tries(mut self, tries: usize) -> Self {
        self.tries = tries.max(1);
        self
    }

    /// The per-step deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn client(&self, url: &str) -> NodeClient {
        let http = if self.fixed.iter().any(|f| f == url) {
            &self.trusted
        } else {
            &self.guarded
        };
        let mut c = NodeClient::new(url).with_http(http.clone());
        // With the chain known, its token is the only one paid in: a node naming another
        // token the payer holds, or another chain, is not paid.
        if let Some(chain) = &self.chain {
            let d = chain.deployment();
            c = c
                .with_asset(&format!("eip155:{}", d.chain_id), d.token)
                .with_escrow(d.escrow);
        } else {
            c = match self.payer.as_ref().and_then(|p| p.asset.as_ref()) {
                Some((network, token, escrow)) => {
                    let c = c.with_asset(network, *token);
                    match escrow {
                        Some(e) => c.with_escrow(*e),
                        None => c,
                    }
                }
                None => c.paying_only_named_assets(),
            };
        }
        match &self.payer {
            Some(p) => {
                let c = c
                    .with_payer(p.key.clone(), channel_salt())
                    .with_accounts(p.accounts.clone());
                match p.batch_deposit {
                    Some(amount) => c.with_batch_deposit(amount),
                    None => c,
                }
            }
            None => c,
        }
    }

    /// Every node URL: the fixed ones first, then the registry's active inference nodes (with
    /// the address each registered under).
    async fn urls(&self) -> Vec<(String, Vec<Address>)> {
        let mut out: Vec<(String, Vec<Address>)> =
            self.fixed.iter().map(|u| (u.clone(), Vec::new())).collect();
        if let Some(chain) = &self.chain {
            let mut reg = self.registry.lock().await;
            let stale = reg.0.is_none_or(|t| t.elapsed() > REGISTRY_TTL);
            if stale {
                match registry_urls(chain).await {
                    Ok(nodes) => {
                        let allowed = nodes
                            .into_iter()
                            .filter(|(u, _)| {
                                let ok = cairn_node_api::fetch::check_url(u, self.allow_private);
                                if let Err(e) = &ok {
                                    tracing::warn!("skipping a registered node: {e}");
                                }
                                ok.is_ok()
                            })
                            .collect();
                        *reg = (Some(Instant::now()), allowed)
                    }
                    Err(e) => tracing::warn!("reading the registry's active nodes: {e}"),
                }
            }
            // One URL, every address registered at it: another registration naming an honest
            // node's URL cannot push that node out.
            for (u, a) in &reg.1 {
                match out.iter_mut().find(|(x, _)| x == u) {
                    Some((_, addrs)) if !addrs.is_empty() => addrs.push(*a),
                    Some(_) => {}
                    None => out.push((u.clone(), vec![*a])),
                }
            }
        }
        out
    }

    fn resting(&self, url: &str) -> bool {
        self.known
            .lock()
            .expect("router lock")
            .get(url)
            .and_then(|k| k.down_until)
            .is_some_and(|t| t > Instant::now())
    }

    /// Refreshes a node's info when stale; `false` when it cannot be reached, or answers with
    /// another address than the one it registered under.
    async fn refresh(&self, url: &str, registered: &[Address]) -> bool {
        let fresh = self
            .known
            .lock()
            .expect("router lock")
            .get(url)
            .and_then(|k| k.info_at)
            .is_some_and(|t| t.elapsed() < INFO_TTL);
        if fresh {
            return true;
        }
        let info = tokio::time::timeout(
            INFO_TIMEOUT,
            self.client(url).with_max_body(64 * 1024).info(),
        )
        .await;
        let mut known = self.known.lock().expect("router lock");
        let k = known.entry(url.to_owned()).or_default();
        match info {
            Ok(Ok(info)) if registered.is_empty() || registered.contains(&info.address) => {
                k.address = Some(info.address);
                k.default_price = info
                    .payments
                    .as_ref()
                    .map_or(info.price, |p| p.default_price);
                k.model_prices = info
                    .payments
                    .as_ref()
                    .map(|p| {
                        p.model_prices
                            .iter()
                            .map(|m| (m.model.clone(), m.price))
                            .collect()
                    })
                    .unwrap_or_default();
                k.llm_prices = info
                    .payments
                    .as_ref()
                    .map(|p| {
                        p.llm_prices
                            .iter()
                            .map(|l| {
                                (
                                    l.model.clone(),
                                    cairn_node_api::openai::TokenPrice {
                                        prompt_per_1k: l.prompt_per_1k,
                                        completion_per_1k: l.completion_per_1k,
                                    },
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                k.info_at = Some(Instant::now());
                true
            }
            other => {
                if let Ok(Ok(info)) = other {
                    tracing::warn!(
                        "{url} answers as {}, not an address registered there: skipped",
                        info.address
                    );
                }
                k.failures += 1;
                k.down_until = Some(Instant::now() + BACKOFF);
                false
            }
        }
    }

    /// Nodes to try, best first, with what a call may cost at each (`cost`, from the node's
    /// published prices). Resting nodes are not asked again, and the others are asked at once.
    async fn candidates(
        &self,
        cost: &(dyn Fn(&Known) -> U256 + Sync),
    ) -> Vec<(String, Address, U256)> {
        let urls = self.urls().await;
        let awake: Vec<_> = urls.iter().filter(|(u, _)| !self.resting(u)).collect();
        let reachable: std::collections::HashSet<String> = futures::future::join_all(
            awake
                .iter()
                .map(|(u, r)| async move { self.refresh(u, r).await.then(|| u.clone()) }),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        let known = self.known.lock().expect("router lock");
        let mut scored = Vec::new();
        for (order, (url, _)) in urls.iter().enumerate() {
            let Some(k) = known.get(url) else { continue };
            let Some(address) = k.address else { continue };
            let resting = !reachable.contains(url);
            scored.push((
                resting,
                cost(k),
                k.ewma_ms.unwrap_or(0.0),
                order,
                url.clone(),
                address,
            ));
        }
        // Ties go to the order given: the fixed nodes first, then the registry's.
        scored.sort_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then(a.2.total_cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        scored.into_iter().map(|s| (s.4, s.5, s.1)).collect()
    }

    /// A node's answer: `Some(true)` it worked, `Some(false)` it failed (it rests), `None` it
    /// said no to this request (a 4xx: not held against it, which a user could otherwise
    /// provoke to push honest nodes out of the rotation).
    fn record(&self, url: &str, ok: Option<bool>, took: Duration) {
        let mut known = self.known.lock().expect("router lock");
        let k = known.entry(url.to_owned()).or_default();
        match ok {
            Some(true) => {
                let ms = took.as_secs_f64() * 1e3;
                k.ewma_ms = Some(k.ewma_ms.map_or(ms, |e| 0.8 * e + 0.2 * ms));
                k.successes += 1;
                k.down_until = None;
            }
            Some(false) => {
                k.failures += 1;
                k.down_until = Some(Instant::now() + BACKOFF);
            }
            None => {}
        }
    }

    /// How many nodes the router knows and how many rest.
    pub fn counts(&self) -> (usize, usize) {
        let known = self.known.lock().expect("router lock");
        let resting = known
            .values()
            .filter(|k| k.down_until.is_some_and(|t| t > Instant::now()))
            .count();
        (known.len(), resting)
    }

    /// The nodes the router has seen (for operators; not served publicly).
    pub fn standings(&self) -> Vec<NodeStanding> {
        let known = self.known.lock().expect("router lock");
        let mut out: Vec<_> = known
            .iter()
            .map(|(url, k)| NodeStanding {
                url: url.clone(),
                address: k.address,
                latency_ms: k.ewma_ms,
                successes: k.successes,
                failures: k.failures,
                resting: k.down_until.is_some_and(|t| t > Instant::now()),
            })
            .collect();
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out
    }

    /// Runs `f` on the best node, then the next on failure. A node whose call may cost more
    /// than `budget` is not asked (nor held to have failed). Each attempt runs under the step
    /// deadline and before `until`; `f` gets the node's client (paying at most that node's
    /// cost), its address and that cost. Every failed attempt is kept with the most it could
    /// have cost: whether it took a payment before failing is not knowable here.
    async fn route<T, F, Fut>(
        &self,
        cost: &(dyn Fn(&Known) -> U256 + Sync),
        budget: U256,
        until: Instant,
        f: F,
    ) -> Result<Ran<T>, RouteError>
    where
        F: Fn(NodeClient, Address, U256) -> Fut,
        Fut: std::future::Future<Output = Result<(T, Option<PaymentMade>), NodeClientError>>,
    {
        let nodes: Vec<_> = self
            .candidates(cost)
            .await
            .into_iter()
            .filter(|(_, _, c)| *c <= budget)
            .collect();
        if nodes.is_empty() {
            return Err(RouteError::NoNode);
        }
        let mut attempts = Vec::new();
        let mut at_risk = U256::ZERO;
        for (url, address, max) in nodes.into_iter().take(self.tries) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let started = Instant::now();
            let client = self
                .client(&url)
                .with_max_price(max)
                .with_max_body(MAX_ANSWER_BYTES);
            let outcome =
                tokio::time::timeout(self.deadline.min(left), f(client, address, max)).await;
            let error = match outcome {
                Ok(Ok((value, payment))) => {
                    self.record(&url, Some(true), started.elapsed());
                    return Ok(Ran {
                        value,
                        node: url,
                        address,
                        payment,
                        attempts,
                        at_risk,
                    });
                }
                Ok(Err(e)) => {
                    // "Not served here" and "too large for this node" are not faults; anything
                    // else (a 402 for a payment made, a 400 for inputs the entry built to the
                    // model's signature, a 5xx, a broken answer) rests the node.
                    let neutral = matches!(&e, NodeClientError::Api { status, .. } if matches!(status.as_u16(), 404 | 413));
                    self.record(&url, (!neutral).then_some(false), started.elapsed());
                    e.to_string()
                }
                Err(_) => {
                    self.record(&url, Some(false), started.elapsed());
                    format!("no answer within {:?}", self.deadline.min(left))
                }
            };
            at_risk = at_risk.saturating_add(max);
            attempts.push(Attempt {
                node: url,
                error,
                at_risk: max.to_string(),
            });
        }
        if attempts.is_empty() {
            return Err(RouteError::NoNode);
        }
        Err(RouteError::AllFailed {
            summary: format!(
                "{} nodes tried, each failed (see the step's attempts)",
                attempts.len()
            ),
            attempts,
            at_risk,
        })
    }

    /// Runs a hub model on the best node it can afford within `budget`, paying at most the
    /// node's published price for it. The receipt must be signed by the node chosen, bind this
    /// model, these inputs and these outputs, and charge what was paid (nothing when unpaid).
    pub async fn infer(
        &self,
        reference: &str,
        cid: &BlobId,
        inputs: &[Tensor],
        budget: U256,
        until: Instant,
    ) -> Result<Ran<(Vec<Tensor>, SignedReceipt)>, RouteError> {
        let cid_text = cid.to_string();
        let cid_ref = cid_text.as_str();
        let name = reference.split('@').next().unwrap_or(reference);
        // A node prices a model by CID, `name@version` or bare name.
        let cost = move |k: &Known| {
            k.model_prices
                .iter()
                .find(|(m, _)| m == cid_ref || m == reference || m == name)
                .map_or(k.default_price, |(_, p)| *p)
        };
        self.route(&cost, budget, until, |client, address, _| async move {
            let out = client.infer(cid_ref, inputs, false).await?;
            let r = &out.receipt;
            let p = NodeClientError::Protocol;
            if r.signer != address {
                return Err(p(format!(
                    "the receipt is signed by {}, not the node {address}",
                    r.signer
                )));
            }
            if &r.claims.model != cid {
                return Err(p(format!(
                    "the receipt names model {}, not {cid}",
                    r.claims.model
                )));
            }
            if r.claims.input_hash != cairn_core::tensor::tensors_hash(inputs)
                || r.claims.output_hash != cairn_core::tensor::tensors_hash(&out.outputs)
            {
                return Err(p(
                    "the receipt does not bind these inputs and outputs".into()
                ));
            }
            let paid = out.payment.as_ref().map_or(U256::ZERO, |m| m.amount);
            if paid != r.claims.price {
                return Err(p(format!(
                    "the node was paid {paid} but its receipt charges {}",
                    r.claims.price
                )));
            }
            Ok(((out.outputs, out.receipt), out.payment))
        })
        .await
    }

    /// A chat completion on the best node serving `model` it can afford within `budget`: the
    /// most a call may cost at a node is its published per-token price for the model (or, not
    /// naming it, its dearest) over the request's bytes and `max_tokens` (`TokenPrice::most`,
    /// what the node's 402 may ask), and the client pays no more. The receipt is checked
    /// against the exact request and answer bytes and must be the chosen node's.
    pub async fn chat(
        &self,
        model: &str,
        request: &serde_json::Value,
        budget: U256,
        until: Instant,
        delta: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Ran<cairn_node_api::ChatOutcome>, RouteError> {
        let body_len = serde_json::to_vec(request).map_or(0, |b| b.len());
        let max_tokens = request["max_tokens"]
            .as_u64()
            .map(|m| m.min(u64::from(u32::MAX)) as u32);
        let cost = move |k: &Known| {
            let own = k
                .llm_prices
                .iter()
                .find(|(m, _)| m == model)
                .map(|(_, p)| *p);
            let price = own.unwrap_or_else(|| cairn_node_api::openai::TokenPrice {
                prompt_per_1k: k
                    .llm_prices
                    .iter()
                    .map(|(_, p)| p.prompt_per_1k)
                    .max()
                    .unwrap_or_default(),
                completion_per_1k: k
                    .llm_prices
                    .iter()
                    .map(|(_, p)| p.completion_per_1k)
                    .max()
                    .unwrap_or_default(),
            });
            price.most(body_len, max_tokens)
        };
        self.route(&cost, budget, until, |client, address, _| async move {
            let mut out = client.chat_streaming(request, delta).await?;
            if out.receipt.signer != address {
                return Err(NodeClientError::Protocol(format!(
                    "the receipt is signed by {}, not the node {address}",
                    out.receipt.signer
                )));
            }
            let payment = out.payment.take();
            Ok((out, payment))
        })
        .await
    }
}

/// The largest answer read from a node.
const MAX_ANSWER_BYTES: usize = 4 << 20;

async fn registry_urls(
    chain: &cairn_ledger::Chain,
) -> Result<Vec<(String, Address)>, cairn_ledger::LedgerError> {
    let mut out = Vec::new();
    for a in chain.active_nodes(cairn_ledger::Role::Inference).await? {
        let n = chain.node(a).await?;
        if n.active && !n.endpoint.is_empty() {
            out.push((n.endpoint.trim_end_matches('/').to_owned(), a));
        }
    }
    Ok(out)
}
