//! `cairn node serve`, `cairn infer`, `cairn receipt verify|reexec`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use anyhow::{Context, anyhow, bail};
use cairn_core::tensor::tensors_hash;
use cairn_core::{BlobId, Reproducibility, Tensor};
use cairn_engine::{CpuTier, Engine, TractEngine};
use cairn_node::{Limits, NodeConfig};
use cairn_node_api::{NodeClient, safetensors_io};
use cairn_receipt::{ReceiptDomain, SignedReceipt};
use clap::Args;

pub use crate::args::{EngineArgs, EngineKind};

mod receipt;
pub use receipt::*;

mod infer;
pub use infer::*;

mod chat;
pub use chat::*;

/// `cairn node serve` options.
#[derive(Args, Clone, Debug)]
pub struct NodeServeArgs {
    /// Listen address; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub listen: SocketAddr,
    /// Where the model cache, receipt log and node key live.
    #[arg(long, env = "CAIRN_NODE_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The hub models are fetched from.
    #[arg(long, env = "CAIRN_HUB", default_value = crate::DEFAULT_HUB)]
    pub hub: String,
    /// The node's key file (created with mode 0600 on first start). Default: DATA_DIR/node.key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// EIP-712 domain chain id of receipts.
    #[arg(long, default_value_t = 31337)]
    pub chain_id: u64,
    /// EIP-712 domain verifying contract of receipts (the settlement contract).
    #[arg(long, default_value = "0x0000000000000000000000000000000000000000")]
    pub verifying_contract: Address,
    /// Price per inference, in the payment token's smallest unit.
    #[arg(long, default_value = "0")]
    pub price: U256,
    /// Model cache size in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    pub cache_bytes: u64,
    /// Largest model file fetched and loaded, in bytes (larger ones are refused while
    /// downloading).
    #[arg(long, default_value_t = 2 << 30)]
    pub max_model_bytes: u64,
    /// Seconds a model name's resolution (`digits`, `digits@1.0`) is served before the hub is
    /// asked again; a stale one keeps serving meanwhile, and while the hub is unreachable.
    #[arg(long, default_value_t = 10)]
    pub name_refresh_secs: u64,
    /// Seconds request/response payloads are kept for verifiers.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub retention_secs: u64,
    /// What a receipt (and the prepaid voucher that paid for it) survives once the answer has
    /// left: `process` (the node process dying, kill -9 included; no fsync per commit) or
    /// `power` (the machine losing power too: every commit waits for the disk, which costs
    /// latency). With `process`, a power cut may lose the last receipts and the voucher counts
    /// since the last billing round: the payers keep their answers and receipts, those vouchers
    /// are given back, and the node forgoes their fees. `exact` payments are fsynced either way.
    #[arg(long, value_enum, default_value_t = ReceiptDurability::Process)]
    pub receipt_durability: ReceiptDurability,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Most input elements per request.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_elements: u64,
    /// Per-inference timeout in milliseconds (waiting included).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Requests admitted per model (queued or running); more get 503 with `Retry-After`
    /// (default: 16 per worker, so that under a flood the admitted still answer quickly).
    #[arg(long)]
    pub queue_per_model: Option<usize>,
    /// Requests admitted overall.
    #[arg(long, default_value_t = 1024)]
    pub queue_total: usize,
    /// Inferences running at once (default: CPU count).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Milliseconds a request refused for a full queue waits before its 503 (with
    /// `Retry-After`): clients that re-send at once cannot make refusing the node's main work.
    /// Longer while many are held at once (up to 5 s); 0 answers at once.
    #[arg(long, default_value_t = 250)]
    pub overload_hold_ms: u64,
    /// Microseconds a group of batch-signed receipts (`cairn-receipt-seal: batch`) waits at
    /// most for the other batch-signed requests being served, so that one signature covers
    /// them (the runtime's timer rounds up to the next millisecond); 0 signs each group as it
    /// comes; at most 100000 (100 ms). Never waits with none being served, and own-signed
    /// receipts never wait.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub batch_linger_us: u64,
    /// Milliseconds a request body may take to arrive (a slow sender is cut off with 504).
    #[arg(long, default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// Bytes of request bodies read at once; more wait with 503 (a body without a length
    /// counts as --max-body-bytes).
    #[arg(long, default_value_t = 256 << 20)]
    pub body_budget_bytes: usize,
    /// Language-model calls generating at once (each also takes a worker; the rest wait up to
    /// --timeout-ms, then get 503).
    #[arg(long, default_value_t = 1)]
    pub llm_sessions: usize,
    /// A language model `GET /v1/models` lists (a CID or name@version; repeatable). Any other
    /// GGUF model on the hub can still be called by name.
    #[arg(long = "llm-model")]
    pub llm_models: Vec<String>,
    /// Serve language-model calls unpaid (price 0) on a node that takes payments. Relayed
    /// calls (--upstream) are never charged per token, so a paid node relays only with this.
    #[arg(long)]
    pub llm_free: bool,
    /// Price of language-model calls without their own: PROMPT/COMPLETION token units per
    /// 1,000 tokens (`20/60`). Paid with prepaid vouchers: a call's voucher covers its most
    /// (from its body's length and max_tokens), and only its signed usage is charged. Without
    /// it (or --llm-free) a node that takes payments refuses language-model calls.
    #[arg(long, value_name = "PROMPT/COMPLETION")]
    pub llm_price: Option<cairn_node::TokenPrice>,
    /// Price of one language model, MODEL=PROMPT/COMPLETION (a CID or name@version;
    /// repeatable).
    #[arg(long = "llm-model-price", value_parser = parse_llm_price, value_name = "MODEL=PROMPT/COMPLETION")]
    pub llm_model_prices: Vec<(String, cairn_node::TokenPrice)>,
    /// Relay calls naming model NAME to another OpenAI-compatible server (llama.cpp's server,
    /// vLLM, Ollama, a hosted API, another Cairn node): `NAME=URL[,key-env=VAR]`, URL its API
    /// base (`http://127.0.0.1:8080/v1`), VAR an environment variable holding its bearer key
    /// (repeatable). Their receipts say `relayed` and are never batched.
    #[arg(long = "upstream", value_name = "NAME=URL[,key-env=VAR]")]
    pub upstreams: Vec<String>,
    /// Settle receipts on this chain (with --deployment; the receipt domain then comes from the
    /// deployment and --chain-id/--verifying-contract are ignored).
    #[command(flatten)]
    pub chain: crate::chain_cmd::ChainArgs,
    /// Seal a receipt batch once this many receipts wait (at most 65,536: verifiers refuse
    /// larger batches).
    #[arg(long, default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=cairn_node_api::MAX_BATCH_RECEIPTS))]
    pub batch_max_receipts: u64,
    /// Seal whatever waits once the oldest receipt is this many seconds old.
    #[arg(long, default_value_t = 60)]
    pub batch_max_age_secs: u64,
    /// Serve without asking for payment even when settling on a chain (receipts then carry
    /// --price and the node escrows their fees itself).
    #[arg(long)]
    pub free: bool,
    /// Price of one model, MODEL=UNITS (a CID or name@version; repeatable). Others cost --price.
    #[arg(long = "model-price", value_parser = parse_model_price)]
    pub model_prices: Vec<(String, U256)>,
    /// Do not offer the prepaid (escrow voucher) scheme, only `exact`.
    #[arg(long)]
    pub no_prepaid: bool,
    /// Seconds between voucher redemptions (and reconciliations of pending settlements).
    #[arg(long, default_value_t = 30)]
    pub redeem_every_secs: u64,
    /// Token units worth one transaction at the node's gas (what one costs you): a
    /// `batch-settlement` channel must be charged this between two deposits or refunds the node
    /// sends for it (a channel's first is free); a channel's count is claimed (batch-settlement)
    /// or redeemed (prepaid) once it reaches this, when its payer withdraws, or after 5 minutes.
    /// 0: any charge.
    #[arg(long, default_value_t = U256::from(cairn_x402::batch::DEFAULT_GAS_ALLOWANCE))]
    pub gas_allowance: U256,
    /// The key id of the node's Oblivious HTTP gateway key (derived from the node's key; a new
    /// id is a rotation, which needs a new attestation: `cairn node register` with the same id).
    #[arg(long, default_value_t = 1)]
    pub ohttp_key_id: u8,
    /// Serve evidence from this attester at `GET /v1/attestation`, binding the node's key and its
    /// gateway key (what private clients check against the registry).
    #[arg(long, value_enum)]
    pub attester: Option<crate::verify_cmd::AttesterArg>,
    /// Serve this evidence at `GET /v1/attestation` (written by `cairn node register
    /// --evidence-out`): the one whose digest the registry records, which private clients check.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// The chain id of local development chains (anvil's, the devnet's): the only one a node with
/// deliberate faults runs on.
const DEV_CHAIN_ID: u64 = 31337;

/// Deliberate misbehaviour, to show the verification network catching it (hidden flags).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FaultArgs {
    /// Alter the output of this fraction of inferences (the receipt lies about it).
    #[arg(long, hide = true, default_value_t = 0.0)]
    pub fault_wrong_output: f64,
    /// Refuse to hand out kept payloads, so samples cannot be re-executed.
    #[arg(long, hide = true)]
    pub fault_withhold_payloads: bool,
    /// Refuse a batch's payloads for this many seconds after it is sealed, then serve them.
    #[arg(long, hide = true, default_value_t = 0)]
    pub fault_payload_outage_secs: u64,
    /// Serve batch listings with every receipt's seal spoiled (the signed content unchanged).
    #[arg(long, hide = true)]
    pub fault_forge_seals: bool,
}

impl FaultArgs {
    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        self.fault_wrong_output > 0.0
            || self.fault_withhold_payloads
            || self.fault_payload_outage_secs > 0
            || self.fault_forge_seals
    }
}

fn parse_llm_price(s: &str) -> Result<(String, cairn_node::TokenPrice), String> {
    let (model, price) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not MODEL=PROMPT/COMPLETION"))?;
    Ok((model.to_string(), price.parse()?))
}

fn parse_model_price(s: &str) -> Result<(String, U256), String> {
    let (model, price) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not MODEL=UNITS"))?;
    let price = U256::from_str_radix(price, 10)
        .map_err(|e| format!("price {price:?} is not a whole number of token units: {e}"))?;
    Ok((model.to_string(), price))
}

impl NodeServeArgs {
    /// What `cairn node serve` uses when given no flags (environment variables still apply).
    pub fn defaults() -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Bare {
            #[command(flatten)]
            args: NodeServeArgs,
        }
        Ok(<Bare as clap::Parser>::try_parse_from(["cairn-node"])?.args)
    }
}

/// Builds the engine chosen by `args` (after the tier was pinned at start-up).
pub fn engine(args: &EngineArgs, parallel: usize) -> anyhow::Result<Arc<dyn Engine>> {
    match args.engine {
        EngineKind::Tract => Ok(Arc::new(TractEngine::new())),
        EngineKind::Onnxruntime => ort_engine(args, parallel),
    }
}

#[cfg(feature = "ort")]
fn ort_engine(args: &EngineArgs, parallel: usize) -> anyhow::Result<Arc<dyn Engine>> {
    let library = args
        .ort_library
        .clone()
        .context("--engine onnxruntime needs --ort-library (or ORT_DYLIB_PATH); scripts/install-onnxruntime.sh installs it")?;
    Ok(Arc::new(cairn_engine::OrtEngine::new(
        cairn_engine::OrtOptions {
            library,
            threads: args.threads,
            parallel,
        },
    )?))
}

#[cfg(not(feature = "ort"))]
fn ort_engine(_: &EngineArgs, _: usize) -> anyhow::Result<Arc<dyn Engine>> {
    bail!("this cairn was built without the `ort` feature; rebuild with default features")
}

/// The `TRACT_CPU_ISA` value a command needs, for the re-exec in `main`.
pub fn wanted_isa_env(tier: &str) -> anyhow::Result<Option<String>> {
    let tier: CpuTier = tier.parse()?;
    Ok(cairn_engine::tier_env(tier)?)
}

/// Verifiers attest only receipts on approved profiles: settling on another one would escrow
/// fees that can never be attested. With the governor's key (the devnet) it is approved.
async fn ensure_profile_approved(
    c: &cairn_ledger::Chain,
    profile: &cairn_core::ExecutionProfile,
    governor: Option<&alloy_signer_local::PrivateKeySigner>,
) -> anyhow::Result<()> {
    if !c.profile_approved(profile.hash()).await? {
        match governor {
            Some(gov) => {
                c.set_profile(gov, profile.hash(), true).await?;
            }
            None => bail!(
                "execution profile {profile} ({}) is not approved on this deployment, so no verifier would attest its receipts; run on an approved profile (--cpu-tier generic) or ask governance (`cairn chain profile`)",
                profile.hash()
            ),
        }
    }
    Ok(())
}

impl NodeServeArgs {
    /// The request limits these flags set.
    fn limits(&self) -> Limits {
        let workers = self.workers.unwrap_or_else(|| Limits::default().workers);
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_elements: self.max_elements,
            timeout: Duration::from_millis(self.timeout_ms),
            queue_per_model: self
                .queue_per_model
                .unwrap_or(cairn_node::QUEUE_PER_WORKER.saturating_mul(workers.max(1))),
            queue_total: self.queue_total,
            workers,
            overload_hold: Duration::from_millis(self.overload_hold_ms),
            max_output_bytes: Limits::default().max_output_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            body_budget_bytes: self.body_budget_bytes.max(self.max_body_bytes),
            llm_sessions: self.llm_sessions.max(1),
            batch_linger: Duration::from_micros(self.batch_linger_us),
        }
    }
}

/// Starts a node on `listener`; returns its state (the caller serves it).
pub async fn open_node(
    args: &NodeServeArgs,
    data_dir: &Path,
    chain: Option<cairn_ledger::Chain>,
    governor: Option<&alloy_signer_local::PrivateKeySigner>,
) -> anyhow::Result<cairn_node::NodeState> {
    let key_path = args
        .key
        .clone()
        .unwrap_or_else(|| data_dir.join("node.key"));
    let key = crate::keyfile::load_or_create(&key_path)?;
    let limits = args.limits();
    let engine = engine(&args.engine, limits.workers)?;
    if let Some(c) = &chain {
        ensure_profile_approved(c, engine.profile(), governor).await?;
        // The language-model profile: approved by a governor at hand (the devnet); elsewhere
        // the node settles its LLM receipts only once governance has approved it.
        let llm = cairn_node::llm::profile();
        if let Some(gov) = governor
            && !c.profile_approved(llm.hash()).await?
        {
            c.set_profile(gov, llm.hash(), true).await?;
        }
    }
    let domain = match &chain {
        Some(c) => ReceiptDomain {
            chain_id: c.deployment().chain_id,
            verifying_contract: c.deployment().settlement,
        },
        None => ReceiptDomain {
            chain_id: args.chain_id,
            verifying_contract: args.verifying_contract,
        },
    };
    // Deliberate misbehaviour is for demonstrations on a dev chain, never a node others rely on.
    if args.faults.any() && domain.chain_id != DEV_CHAIN_ID {
        bail!(
            "the --fault-* flags make a node lie on purpose; they run only on a dev chain (chain id {DEV_CHAIN_ID}), and this node's receipts are for chain {}",
            domain.chain_id
        );
    }
    let payments = (chain.is_some() && !args.free).then(|| cairn_node::PaymentConfig {
        model_prices: args.model_prices.clone(),
        llm_prices: cairn_node::LlmPrices {
            default: args.llm_price,
            models: args.llm_model_prices.clone(),
        },
        prepaid: !args.no_prepaid,
        redeem_every: Duration::from_secs(args.redeem_every_secs.max(1)),
        gas_allowance: args.gas_allowance,
    });
    let settlement = chain.map(|chain| cairn_node::SettlementConfig {
        chain,
        policy: cairn_node::BatchPolicy {
            max_receipts: args.batch_max_receipts as usize,
            max_age: Duration::from_secs(args.batch_max_age_secs),
            tick: Duration::from_millis(500),
        },
    });
    let attester = args
        .attester
        .map(|a| crate::verify_cmd::attester(a, &key))
        .transpose()?
        .map(Arc::from);
    let evidence = match &args.evidence {
        Some(path) => Some(
            serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{} is not evidence JSON", path.display()))?,
        ),
        None => None,
    };
    let state = cairn_node::open(NodeConfig {
        data_dir: data_dir.to_owned(),
        hub_url: args.hub.clone(),
        key,
        engine,
        domain,
        price: args.price,
        limits,
        cache_bytes: args.cache_bytes,
        max_model_bytes: args.max_model_bytes,
        name_refresh: Duration::from_secs(args.name_refresh_secs),
        retention: Duration::from_secs(args.retention_secs),
        receipt_durability: match args.receipt_durability {
            ReceiptDurability::Process => cairn_node::Durability::Normal,
            ReceiptDurability::Power => cairn_node::Durability::Full,
        },
        settlement,
        payments,
        llm_models: args.llm_models.clone(),
        llm_upstreams: args
            .upstreams
            .iter()
            .map(|spec| {
                cairn_node::upstream::Upstream::parse(spec, |var| std::env::var(var).ok())
                    .map_err(|e| anyhow::anyhow!("--upstream {spec}: {e}"))
            })
            .collect::<anyhow::Result<_>>()?,
        llm_free: args.llm_free,
        ohttp_key_id: args.ohttp_key_id,
        attester,
        evidence,
        faults: cairn_node::Faults {
            wrong_output_rate: args.faults.fault_wrong_output,
            withhold_payloads: args.faults.fault_withhold_payloads,
            payload_outage: Duration::from_secs(args.faults.fault_payload_outage_secs),
            forge_listing_seals: args.faults.fault_forge_seals,
        },
    })
    .await?;
    Ok(state)
}

/// `cairn node serve`.
pub async fn serve(args: NodeServeArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cairn")
            .join("node")
    });
    let chain = match (&args.chain.rpc, &args.chain.deployment) {
        (None, None) => None,
        _ => Some(args.chain.connect().await?),
    };
    let state = open_node(&args, &data_dir, chain, None).await?;
    let listener = cairn_node::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("node:     http://{}", listener.local_addr()?);
    println!("address:  {}", state.address());
    println!("profile:  {}", state.profile());
    cairn_node::serve(listener, state, crate::shutdown_signal()).await?;
    Ok(())
}

/// What a committed receipt survives (`--receipt-durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiptDurability {
    /// The node process dying (kill -9): the receipt journal reaches the OS, no fsync per group.
    Process,
    /// The machine losing power: every group is fdatasynced before its answers go.
    Power,
}
