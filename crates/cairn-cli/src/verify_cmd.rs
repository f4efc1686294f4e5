//! `cairn verifier serve`, `cairn node register`, `cairn nodes`, and the pieces the devnet
//! shares with them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{B256, U256};
use alloy_signer_local::PrivateKeySigner;
use anyhow::{Context, bail};
use cairn_attest::{Attester, DevAttester, EvidenceKind};
use cairn_ledger::{Chain, Role};
use serde_json::{Value, json};

use crate::args::{ChainArgs, RoleArg};

/// How a verifier checks (shared by `verifier serve` and the devnet).
#[derive(clap::Args, Clone, Debug)]
pub struct CheckArgs {
    /// Fraction of each batch's receipts re-executed.
    #[arg(long, default_value_t = 0.05)]
    pub sample_rate: f64,
    /// Seconds over which a verifier keeps trying to fetch a sampled payload before it holds
    /// the node to have withheld it (a node restart or overload shorter than this costs the
    /// node nothing).
    #[arg(long, default_value_t = 600)]
    pub payload_window_secs: u64,
    /// Fetch attempts spread evenly over the window; all must fail (at least 2).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub payload_attempts: u32,
    /// Let node endpoints be loopback or private addresses: local test networks only.
    #[arg(long)]
    pub allow_private_endpoints: bool,
    /// Largest |difference| accepted when re-checking tolerance (onnxruntime) receipts.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Largest model file re-executed, in bytes (a receipt naming a larger one is abstained
    /// from).
    #[arg(long, default_value_t = 2 << 30)]
    pub max_model_bytes: u64,
    /// Accept `dev` (software-key, not a TEE) evidence in registrations: for local networks only.
    #[arg(long)]
    pub allow_dev_evidence: bool,
}

/// `cairn verifier serve`.
#[derive(clap::Args)]
pub struct VerifierServeArgs {
    #[command(flatten)]
    pub chain: ChainArgs,
    /// The verifier's key file (registered as a verifier).
    #[arg(long)]
    pub key: PathBuf,
    /// Listen address of the verdict/challenge/registration API; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7402")]
    pub listen: SocketAddr,
    /// The URL peers and nodes reach this verifier at (default: http:// + the bound address);
    /// the registry's endpoint is updated to it.
    #[arg(long)]
    pub advertise: Option<String>,
    /// The hub models are fetched from.
    #[arg(long, env = "CAIRN_HUB", default_value = crate::DEFAULT_HUB)]
    pub hub: String,
    /// CPU kernel tier tract re-executes on (receipts of other bit-exact tiers are abstained
    /// from): generic (portable), avx2, avx512, native.
    #[arg(long, default_value = "generic", env = "CAIRN_CPU_TIER")]
    pub cpu_tier: String,
    /// Where verdicts, the sampling secret and the model cache live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub check: CheckArgs,
    /// Milliseconds between passes over the chain.
    #[arg(long, default_value_t = 1_000)]
    pub tick_ms: u64,
    /// Where the verifier's evidence comes from, when its endpoint changes and other verifiers
    /// must approve the move.
    #[arg(long, value_enum, default_value = "dev")]
    pub attester: AttesterArg,
}

/// Reads the sampling secret at `path`, creating a random one (mode 0600) on first use.
fn sampling_secret(path: &Path) -> anyhow::Result<B256> {
    if let Ok(b) = std::fs::read(path) {
        if b.len() != 32 {
            bail!("{} is not a 32-byte sampling secret", path.display());
        }
        return Ok(B256::from_slice(&b));
    }
    let s = B256::random();
    crate::keyfile::create_secret(path, s.as_slice())?;
    Ok(s)
}

/// How `cairn verifier serve` and the devnet's verifiers check.
impl From<&CheckArgs> for cairn_verifier::assemble::Checks {
    fn from(c: &CheckArgs) -> Self {
        Self {
            sample_rate: c.sample_rate,
            payload_window_secs: c.payload_window_secs,
            payload_attempts: c.payload_attempts,
            allow_private_endpoints: c.allow_private_endpoints,
            tolerance: c.tolerance,
            max_model_bytes: c.max_model_bytes,
            allow_dev_evidence: c.allow_dev_evidence,
        }
    }
}

/// The sampling secret kept in `dir` (created on first use).
pub fn dir_secret(dir: &Path) -> anyhow::Result<B256> {
    std::fs::create_dir_all(dir)?;
    sampling_secret(&dir.join("sampling.secret"))
}

/// `cairn verifier serve`.
pub async fn serve(args: VerifierServeArgs) -> anyhow::Result<()> {
    let key = crate::keyfile::load_or_create(&args.key)?;
    let chain = args.chain.connect().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let url = args
        .advertise
        .clone()
        .unwrap_or(format!("http://{}", listener.local_addr()?));
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cairn")
            .join(format!("verifier-{}", key.address()))
    });
    // Tract: bit-exact for tract receipts of this machine's tier, a tolerance check otherwise.
    let engine: Arc<dyn cairn_engine::Engine> = Arc::new(cairn_engine::TractEngine::new());
    let att = attester(args.attester, &key)?;
    let v = cairn_verifier::assemble::start(cairn_verifier::assemble::Setup {
        chain,
        key,
        dir: &dir,
        hub: &args.hub,
        checks: &(&args.check).into(),
        secret: dir_secret(&dir)?,
        engine,
        listener,
        url: &url,
        tick: Duration::from_millis(args.tick_ms),
        endpoint_update: cairn_verifier::assemble::EndpointUpdate::Approved(att.as_ref()),
    })
    .await?;
    println!("verifier: {url}");
    println!("address:  {}", v.address());
    println!("checks:   {}", serde_json::to_string(&v.info())?);
    crate::shutdown_signal().await;
    Ok(())
}

/// Which attester a node uses.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AttesterArg {
    /// The node's own software key: not a TEE; only devnets approve it.
    Dev,
    /// AWS Nitro Enclaves (through /dev/nsm; needs the `nitro` build feature).
    Nitro,
}

/// `cairn node register`.
#[derive(clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub chain: ChainArgs,
    /// The node's key file.
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, value_enum, default_value = "inference")]
    pub role: RoleArg,
    /// Stake in the token's smallest unit.
    #[arg(long)]
    pub stake: U256,
    /// Where the node is reached.
    #[arg(long)]
    pub endpoint: String,
    /// Where the node's evidence comes from.
    #[arg(long, value_enum, default_value = "dev")]
    pub attester: AttesterArg,
    /// The key id of the Oblivious HTTP gateway key (`cairn node serve --ohttp-key-id`; a
    /// verifier's is 1): its key configuration is bound in the evidence.
    #[arg(long, default_value_t = 1)]
    pub ohttp_key_id: u8,
    /// Write the evidence the registry now records here, for `cairn node serve --evidence`
    /// (TEE evidence differs each time it is made; clients check the registered one).
    #[arg(long)]
    pub evidence_out: Option<PathBuf>,
}

pub(crate) fn attester(
    kind: AttesterArg,
    key: &PrivateKeySigner,
) -> anyhow::Result<Box<dyn Attester>> {
    match kind {
        AttesterArg::Dev => Ok(Box::new(DevAttester::new(key.clone()))),
        #[cfg(feature = "nitro")]
        AttesterArg::Nitro => Ok(Box::new(cairn_attest::NsmAttester::new(
            cairn_attest::NsmDevice::open()?,
        ))),
        #[cfg(not(feature = "nitro"))]
        AttesterArg::Nitro => bail!(
            "this cairn was built without the `nitro` feature; build with `--features nitro` inside the enclave image"
        ),
    }
}

/// `cairn node register`.
pub async fn register_cmd(args: RegisterArgs) -> anyhow::Result<()> {
    let key = crate::keyfile::load_or_create(&args.key)?;
    let chain = args.chain.connect().await?;
    let att = attester(args.attester, &key)?;
    let role: Role = args.role.into();
    let done = cairn_node::registration::register(
        &chain,
        &key,
        role,
        &args.endpoint,
        args.stake,
        att.as_ref(),
        Some(
            cairn_node::gateway_key(&key, args.ohttp_key_id)
                .config()
                .encoded(),
        ),
    )
    .await?;
    match &done.tx {
        Some(tx) => println!(
            "registered {} as {role:?} at {} with {} evidence (tx {})",
            key.address(),
            args.endpoint,
            att.kind(),
            tx.hash
        ),
        None => println!(
            "{} is already registered at {} with this evidence",
            key.address(),
            args.endpoint
        ),
    }
    if let (Some(path), Some(evidence)) = (&args.evidence_out, &done.evidence) {
        std::fs::write(path, serde_json::to_vec_pretty(evidence)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "evidence written to {} (serve it: cairn node serve --evidence {})",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// `cairn nodes`.
#[derive(clap::Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub chain: ChainArgs,
    /// Read a devnet's embedded chain instead.
    #[arg(long, conflicts_with = "rpc")]
    pub devnet_dir: Option<PathBuf>,
    /// Also list nodes that are not active (with why).
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Registered nodes with their evidence status and, for inactive ones, why.
pub async fn nodes(chain: &Chain, all: bool) -> anyhow::Result<Vec<Value>> {
    let head = chain.ledger().head().await?;
    let timeout = chain.heartbeat_timeout().await?;
    let mut out = Vec::new();
    for who in chain.registered_nodes().await? {
        let n = chain.node(who).await?;
        if !all && !n.active {
            continue;
        }
        let evidence = if n.measurement == cairn_core::DEV_MEASUREMENT {
            format!("{} (software key, not a TEE)", EvidenceKind::Dev)
        } else {
            format!("TEE measurement {}", n.measurement)
        };
        let why = n.inactive_because(head.timestamp, timeout);
        let mut v = serde_json::to_value(&n)?;
        v["evidence"] = evidence.into();
        v["inactiveBecause"] = json!(why);
        out.push(v);
    }
    Ok(out)
}

/// `cairn nodes`.
pub async fn nodes_cmd(args: NodesArgs) -> anyhow::Result<()> {
    let chain = crate::args::open_chain(&args.chain, args.devnet_dir.as_deref()).await?;
    let list = nodes(&chain, args.all).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no {}nodes", if args.all { "" } else { "active " });
    }
    for n in &list {
        let why = n["inactiveBecause"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        println!(
            "{} {:<9} {:<8} stake {:>14} {} evidence: {}{}",
            n["address"].as_str().unwrap_or("?"),
            n["role"].as_str().unwrap_or("-"),
            if n["active"].as_bool() == Some(true) {
                "active"
            } else {
                "inactive"
            },
            n["stake"].as_str().unwrap_or("?"),
            n["endpoint"].as_str().unwrap_or(""),
            n["evidence"].as_str().unwrap_or(""),
            if why.is_empty() {
                String::new()
            } else {
                format!(" [{why}]")
            }
        );
    }
    Ok(())
}
