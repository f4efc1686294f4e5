//! `cairn`: the one binary. `cairn devnet` runs the network on embedded defaults; each role also
//! runs alone (`cairn hub serve`), and the client commands talk to a running hub.

mod chain_cmd;
mod keyfile;
mod node_cmd;
mod pay_cmd;
mod verify_cmd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cairn_catalog::{NewRepo, Search};
use cairn_core::{BlobHasher, FilePath, ModelRef, RepoName, Version};
use cairn_hub::{ClientError, HubClient, HubConfig};
use cairn_store::Location;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

const DEFAULT_NODE: &str = "http://127.0.0.1:7401";
const DEFAULT_HUB: &str = "http://127.0.0.1:7400";

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: verifiable AI inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole network in one process on embedded defaults (SQLite, a local blob dir).
    Devnet {
        /// Where the network keeps its state.
        #[arg(long, env = "CAIRN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Address for the hub; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: SocketAddr,
        /// Address for the inference node; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:7401")]
        node_listen: SocketAddr,
        #[command(flatten)]
        engine: node_cmd::EngineArgs,
        /// Chain id of the embedded chain (fixed when the data dir is first created).
        #[arg(long, default_value_t = 31337)]
        chain_id: u64,
        /// Price per inference in token units (cUSD has 6 decimals: 1000 = 0.001).
        #[arg(long, default_value = "1000")]
        price: alloy_primitives::U256,
        /// Seal a receipt batch once the oldest waiting receipt is this many seconds old.
        #[arg(long, default_value_t = 5)]
        batch_max_age_secs: u64,
        /// Challenge window of batches in seconds (fixed when the chain is first deployed).
        #[arg(long, default_value_t = 10)]
        challenge_window: u64,
        /// Seconds a batch may wait for its attestation before anyone may expire it (its fees
        /// go back to the node's vault; fixed when the chain is first deployed).
        #[arg(long, default_value_t = 300)]
        attestation_timeout: u64,
        /// Serve inference without asking for payment (receipts still carry --price; the node
        /// escrows their fees itself).
        #[arg(long)]
        free: bool,
        #[command(flatten)]
        verifiers: DevnetVerifiers,
        #[command(flatten)]
        faults: node_cmd::FaultArgs,
    },
    /// The inference node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run a model on a node and keep its receipt.
    Infer {
        /// Model: a CID or name@version.
        reference: String,
        /// Inputs: a KServe v2 JSON request file or a safetensors file.
        #[arg(long)]
        input: PathBuf,
        /// The node's URL.
        #[arg(long, env = "CAIRN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        /// Send tensors as JSON numbers instead of binary.
        #[arg(long)]
        json: bool,
        /// Write the outputs here (`.json`, else safetensors).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Write the receipt here.
        #[arg(long)]
        receipt_out: Option<PathBuf>,
        /// Pay the node's 402 answers with this key file (prepaid when you have a deposit with
        /// the node, else an EIP-3009 `exact` payment). On the devnet: DATA_DIR/chain/payer.key.
        #[arg(long, env = "CAIRN_PAYER_KEY")]
        payer_key: Option<PathBuf>,
        /// The prepaid channel's salt (one payer can hold several channels with a node).
        #[arg(
            long,
            default_value = "0x0000000000000000000000000000000000000000000000000000000000000000"
        )]
        salt: alloy_primitives::B256,
    },
    /// Prepaid balances with a node: deposit, show, withdraw.
    #[command(subcommand)]
    Pay(pay_cmd::PayCommand),
    /// An x402 facilitator (`/verify`, `/settle`, `/supported`) for other resource servers.
    #[command(subcommand)]
    Facilitator(pay_cmd::FacilitatorCommand),
    /// Check receipts.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// The Model Hub: serve it, or use one.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Your signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The settlement contracts: deploy, inspect, register.
    #[command(subcommand)]
    Chain(chain_cmd::ChainCommand),
    /// A verifier: checks batches, re-executes a sample, co-signs or proves fraud.
    #[command(subcommand)]
    Verifier(VerifierCommand),
    /// Registered nodes and verifiers with their evidence status (active ones unless --all).
    Nodes(verify_cmd::NodesArgs),
}

#[derive(Subcommand)]
enum VerifierCommand {
    /// Follow a deployment: check and sample batches, co-sign or challenge, serve verdicts.
    Serve(Box<verify_cmd::VerifierServeArgs>),
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// The hub's URL.
    #[arg(long, env = "CAIRN_HUB", default_value = DEFAULT_HUB)]
    hub: String,
    /// Key file for signed writes (created on first use).
    #[arg(long, env = "CAIRN_KEY_FILE")]
    key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum HubCommand {
    /// Serve a hub against the given catalog and blob store.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: SocketAddr,
        /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
        #[arg(long, env = "CAIRN_CATALOG")]
        catalog: String,
        /// A directory, or `s3://BUCKET[/PREFIX]` (credentials from AWS_* variables).
        #[arg(long, env = "CAIRN_BLOBS")]
        blobs: String,
        /// Endpoint of an S3-compatible service (MinIO, moto, …).
        #[arg(long, env = "CAIRN_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        /// Largest accepted file, in bytes.
        #[arg(long, default_value_t = 16 << 30)]
        max_upload_bytes: u64,
        /// Most bytes one owner's repositories may hold, drafts included.
        #[arg(long, default_value_t = 64 << 30)]
        owner_quota_bytes: u64,
        /// Seconds a draft release may stay unpublished before it and its files are deleted.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        draft_ttl_secs: u64,
        /// The `host[:port]` clients reach this hub by (repeatable): signed writes must name
        /// one. Default: the listen address when it is a concrete one.
        #[arg(long = "public-host")]
        public_hosts: Vec<String>,
        /// Seconds between collections of expired drafts and unattached blobs.
        #[arg(long, hide = true, default_value_t = 600)]
        gc_every_secs: u64,
        /// Seconds a blob no release holds is kept before it is collected.
        #[arg(long, hide = true, default_value_t = 3600)]
        orphan_grace_secs: u64,
    },
    /// Print a file's CID, offline (streams; constant memory).
    Id {
        /// The file.
        file: PathBuf,
    },
    /// Publish files as a release: creates the repository on first push.
    Push {
        /// Files to publish.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Repository name.
        #[arg(long)]
        repo: RepoName,
        /// Release version, MAJOR.MINOR.
        #[arg(long)]
        version: Version,
        /// Path inside the release (one file only; default: the file's name).
        #[arg(long)]
        path: Option<FilePath>,
        /// Release notes.
        #[arg(long, default_value = "")]
        notes: String,
        /// Repository description (Markdown), when creating it.
        #[arg(long, default_value = "")]
        description: String,
        /// Repository task, when creating it.
        #[arg(long)]
        task: Option<String>,
        /// Repository license, when creating it.
        #[arg(long)]
        license: Option<String>,
        /// Repository tags, when creating it.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Leave the release as a draft instead of publishing it.
        #[arg(long)]
        draft: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List or search repositories.
    Ls {
        /// Text in the name or description.
        query: Option<String>,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Only this tag.
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a repository, or one release: NAME[@VERSION].
    Show {
        /// NAME or NAME@VERSION.
        reference: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download a file by CID or NAME[@VERSION][/PATH], verified against its CID.
    Pull {
        /// A CID or NAME[@VERSION][/PATH].
        reference: ModelRef,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

// Parsed once per process: boxing the serve arguments would only complicate matching on them.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum NodeCommand {
    /// Serve an inference node.
    Serve(node_cmd::NodeServeArgs),
    /// Register in the registry: fresh evidence, approved by a quorum of verifiers.
    Register(verify_cmd::RegisterArgs),
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Check a receipt's signature and every hash it can recompute; non-zero exit on mismatch.
    Verify {
        /// Receipt JSON file.
        receipt: PathBuf,
        /// The inputs (KServe JSON or safetensors).
        #[arg(long)]
        input: Option<PathBuf>,
        /// The outputs (as written by `cairn infer --output`).
        #[arg(long)]
        output: Option<PathBuf>,
        /// The model file.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Check that a receipt is settled: its inclusion proof (from the node) against the batch
    /// root on chain, locally and by the settlement contract.
    Settled {
        /// Receipt JSON file.
        receipt: PathBuf,
        /// The node that signed it.
        #[arg(long, env = "CAIRN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        #[command(flatten)]
        chain: chain_cmd::ChainArgs,
        /// Read a devnet's embedded chain instead of --rpc/--deployment.
        #[arg(long, conflicts_with = "rpc")]
        devnet_dir: Option<PathBuf>,
    },
    /// Fetch the model by CID, re-run it on the receipt's profile and compare.
    Reexec {
        /// Receipt JSON file.
        receipt: PathBuf,
        /// The inputs the receipt binds.
        #[arg(long)]
        input: PathBuf,
        /// The node's outputs, to report the largest difference when profiles differ.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Largest |difference| accepted when profiles differ (as a verifier's `--tolerance`).
        #[arg(long, default_value_t = 1e-4, value_parser = parse_tolerance)]
        tolerance: f64,
        /// The hub to fetch the model from.
        #[arg(long, env = "CAIRN_HUB", default_value = DEFAULT_HUB)]
        hub: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the key's address (creating the key on first use).
    Address {
        /// Key file.
        #[arg(long, env = "CAIRN_KEY_FILE")]
        key: Option<PathBuf>,
    },
}

/// tract reads `TRACT_CPU_ISA` once per process, so a command that needs a pinned kernel tier
/// re-executes itself with the variable set before anything else runs.
fn pin_cpu_isa(cli: &Cli) -> anyhow::Result<()> {
    let wanted = match &cli.command {
        Command::Devnet { engine, .. }
        | Command::Node(NodeCommand::Serve(node_cmd::NodeServeArgs { engine, .. })) => {
            node_cmd::wanted_isa_env(&engine.cpu_tier)?
        }
        Command::Verifier(VerifierCommand::Serve(args)) => {
            node_cmd::wanted_isa_env(&args.cpu_tier)?
        }
        Command::Receipt(ReceiptCommand::Reexec { receipt, .. }) => {
            node_cmd::reexec_isa_env(receipt)
        }
        _ => None,
    };
    let Some(wanted) = wanted else { return Ok(()) };
    if std::env::var("TRACT_CPU_ISA").ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    if std::env::var_os("CAIRN_ISA_PINNED").is_some() {
        bail!("TRACT_CPU_ISA was changed after the re-exec; unset CAIRN_ISA_PINNED");
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("TRACT_CPU_ISA", &wanted)
        .env("CAIRN_ISA_PINNED", "1")
        .exec();
    Err(err).context("re-executing with TRACT_CPU_ISA pinned")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = pin_cpu_isa(&cli) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let serving = matches!(
        cli.command,
        Command::Devnet { .. }
            | Command::Hub(HubCommand::Serve { .. })
            | Command::Node(NodeCommand::Serve(_))
            | Command::Verifier(_)
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        if serving {
            "info,tower_http=warn"
        } else {
            "warn"
        }
        .into()
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Devnet {
            data_dir,
            listen,
            node_listen,
            engine,
            chain_id,
            price,
            batch_max_age_secs,
            challenge_window,
            attestation_timeout,
            free,
            verifiers,
            faults,
        } => {
            devnet(
                data_dir,
                listen,
                node_listen,
                engine,
                DevnetChain {
                    chain_id,
                    price,
                    batch_max_age_secs,
                    challenge_window,
                    attestation_timeout,
                    free,
                    verifiers,
                    faults,
                },
            )
            .await
        }
        Command::Hub(cmd) => hub(cmd).await,
        Command::Node(NodeCommand::Serve(args)) => node_cmd::serve(args).await,
        Command::Infer {
            reference,
            input,
            node,
            json,
            output,
            receipt_out,
            payer_key,
            salt,
        } => {
            let pay = node_cmd::PayArgs { payer_key, salt };
            node_cmd::infer(&node, &reference, &input, json, output, receipt_out, pay).await
        }
        Command::Pay(c) => pay_cmd::run(c).await,
        Command::Facilitator(c) => pay_cmd::facilitator(c).await,
        Command::Receipt(ReceiptCommand::Verify {
            receipt,
            input,
            output,
            model,
        }) => node_cmd::verify(
            &receipt,
            input.as_deref(),
            output.as_deref(),
            model.as_deref(),
        ),
        Command::Receipt(ReceiptCommand::Settled {
            receipt,
            node,
            chain,
            devnet_dir,
        }) => {
            let r = node_cmd::load_receipt(&receipt)
                .with_context(|| format!("{} does not verify", receipt.display()))?;
            let chain = chain_cmd::open_chain(&chain, devnet_dir.as_deref()).await?;
            chain_cmd::settled(&chain, &node, &r).await
        }
        Command::Receipt(ReceiptCommand::Reexec {
            receipt,
            input,
            output,
            tolerance,
            hub,
        }) => {
            let cache = dirs::cache_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("cairn")
                .join("models");
            node_cmd::reexec(&receipt, &input, output.as_deref(), tolerance, &hub, &cache).await
        }
        Command::Chain(cmd) => chain_cmd::run(cmd).await,
        Command::Verifier(VerifierCommand::Serve(args)) => verify_cmd::serve(*args).await,
        Command::Node(NodeCommand::Register(args)) => verify_cmd::register_cmd(args).await,
        Command::Nodes(args) => verify_cmd::nodes_cmd(args).await,
        Command::Key(KeyCommand::Address { key }) => {
            println!(
                "{}",
                keyfile::load_or_create(&key.unwrap_or_else(keyfile::default_path))?.address()
            );
            Ok(())
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

async fn serve_hub(
    mut config: HubConfig,
    listen: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, cairn_hub::HubState)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    // Without --public-host, a hub on a concrete address is known by it (and `localhost`).
    let bound = listener.local_addr()?;
    if config.public_hosts.is_empty() && !bound.ip().is_unspecified() {
        config.public_hosts.push(bound.to_string());
        if bound.ip().is_loopback() {
            config
                .public_hosts
                .push(format!("localhost:{}", bound.port()));
        }
    }
    if config.public_hosts.is_empty() {
        tracing::warn!(
            "the hub does not know its public names (--public-host): a signed write relayed from another hub with a forged Host header would be taken"
        );
    }
    let state = cairn_hub::open(&config).await.context("opening the hub")?;
    Ok((listener, state))
}

/// The devnet's chain settings.
struct DevnetChain {
    chain_id: u64,
    price: alloy_primitives::U256,
    batch_max_age_secs: u64,
    challenge_window: u64,
    attestation_timeout: u64,
    free: bool,
    verifiers: DevnetVerifiers,
    faults: node_cmd::FaultArgs,
}

/// The devnet's verifiers.
#[derive(clap::Args, Clone, Debug)]
struct DevnetVerifiers {
    /// Fraction of each batch's receipts each verifier re-executes.
    #[arg(long, default_value_t = 0.25)]
    sample_rate: f64,
    /// Seconds over which each verifier keeps trying to fetch a sampled payload before it holds
    /// the node to have withheld it.
    #[arg(long, default_value_t = 20)]
    payload_window_secs: u64,
    /// Fetch attempts spread over that window (all must fail).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=100))]
    payload_attempts: u32,
    /// How many of the three registered verifiers run (quorum stays two).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    verifiers: u8,
}

async fn devnet(
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    node_listen: SocketAddr,
    engine: node_cmd::EngineArgs,
    c: DevnetChain,
) -> anyhow::Result<()> {
    let data_dir = data_dir.unwrap_or_else(|| {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cairn")
            .join("devnet")
    });
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = HubConfig::new(
        format!("sqlite://{}", data_dir.join("catalog.db").display()),
        Location::Dir(data_dir.join("blobs")),
    );
    let (listener, state) = serve_hub(config, listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let hub_task = tokio::spawn(cairn_hub::serve(listener, state, stopped(stop_rx.clone())));

    let demo = publish_demo(&url, &data_dir)
        .await
        .context("publishing the demo model")?;
    let chain = chain_cmd::devnet_chain(
        &data_dir,
        c.chain_id,
        c.challenge_window,
        c.attestation_timeout,
    )
    .await?;
    let gov = cairn_ledger::dev_signer(0);
    let node_key = data_dir.join("chain").join("node.key");
    keyfile::write(&node_key, &cairn_ledger::dev_signer(chain_cmd::DEVNET_NODE))?;
    // The first user account, ready to pay with `cairn infer --payer-key`.
    let payer_key = data_dir.join("chain").join("payer.key");
    keyfile::write(
        &payer_key,
        &cairn_ledger::dev_signer(chain_cmd::DEVNET_PAYER),
    )?;
    let node_args = node_cmd::NodeServeArgs {
        listen: node_listen,
        hub: url.clone(),
        engine,
        key: Some(node_key),
        price: c.price,
        batch_max_age_secs: c.batch_max_age_secs,
        redeem_every_secs: 5,
        free: c.free,
        faults: c.faults.clone(),
        ..node_cmd::NodeServeArgs::defaults()?
    };
    let node_listener = cairn_node::bind(node_listen)
        .await
        .with_context(|| format!("binding {node_listen}"))?;
    let node_url = format!("http://{}", node_listener.local_addr()?);
    // Three verifiers in this process, each with its own API (verdicts, fraud confirmations,
    // registration approvals) and state dir; dev evidence is accepted (devnet only).
    let check = verify_cmd::CheckArgs {
        sample_rate: c.verifiers.sample_rate,
        payload_window_secs: c.verifiers.payload_window_secs,
        payload_attempts: c.verifiers.payload_attempts,
        allow_private_endpoints: true,
        max_model_bytes: 2 << 30,
        tolerance: 1e-4,
        allow_dev_evidence: true,
    };
    // Verifiers re-execute on tract: bit-exact for tract receipts, a tolerance check otherwise.
    let v_engine: std::sync::Arc<dyn cairn_engine::Engine> =
        std::sync::Arc::new(cairn_engine::TractEngine::new());
    let mut verifier_urls = Vec::new();
    for i in chain_cmd::DEVNET_VERIFIERS
        .into_iter()
        .take(c.verifiers.verifiers as usize)
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let v_url = format!("http://{}", l.local_addr()?);
        let v = verify_cmd::start_verifier(verify_cmd::VerifierSetup {
            chain: chain.clone(),
            key: cairn_ledger::dev_signer(i),
            dir: &data_dir.join(format!("verifier-{i}")),
            hub: &url,
            check: &check,
            engine: v_engine.clone(),
            listener: l,
            url: &v_url,
            tick: std::time::Duration::from_millis(500),
            endpoint_update: verify_cmd::EndpointUpdate::Governor(&gov),
        })
        .await?;
        verifier_urls.push((v.address(), v_url));
    }
    // The node registers like any other: dev evidence approved by two verifiers.
    verify_cmd::register(
        &chain,
        &cairn_ledger::dev_signer(chain_cmd::DEVNET_NODE),
        cairn_ledger::Role::Inference,
        &node_url,
        alloy_primitives::U256::from(1_000u64 * cairn_ledger::deploy::TOKEN_UNIT),
        &cairn_attest::DevAttester::new(cairn_ledger::dev_signer(chain_cmd::DEVNET_NODE)),
    )
    .await
    .context("registering the devnet node through its verifiers")?;
    let node_state = node_cmd::open_node(
        &node_args,
        &data_dir.join("node"),
        Some(chain.clone()),
        Some(&gov),
    )
    .await?;
    println!("Cairn devnet");
    println!("  data dir: {}", data_dir.display());
    println!("  hub:      {url}");
    println!("  API docs: {url}/docs");
    println!("  node:     {node_url}");
    println!("  node key: {}", node_state.address());
    println!("  profile:  {}", node_state.profile());
    println!("  demo:     digits@1.0 = {demo}");
    for (a, u) in &verifier_urls {
        println!("  verifier: {u} ({a}), samples {}", c.verifiers.sample_rate);
    }
    if c.faults.any() {
        println!("  FAULTS:   the node cheats on purpose: {:?}", c.faults);
    }
    if c.free {
        println!(
            "  price:    {} token units per inference (not charged: --free)",
            c.price
        );
    } else {
        println!(
            "  price:    {} token units per inference (x402: exact or prepaid)",
            c.price
        );
    }
    chain_cmd::print_devnet(&chain).await?;
    println!(
        "  payer:    {} (account {}, key file {})",
        cairn_ledger::dev_signer(chain_cmd::DEVNET_PAYER).address(),
        chain_cmd::DEVNET_PAYER,
        payer_key.display()
    );
    println!(
        "Try: cairn infer digits@1.0 --input examples/digit.json --node {node_url} --payer-key {} --receipt-out receipt.json",
        payer_key.display()
    );
    let node_task = tokio::spawn(cairn_node::serve(
        node_listener,
        node_state,
        stopped(stop_rx),
    ));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    hub_task.await??;
    node_task.await??;
    Ok(())
}

/// The digits MLP shipped in the binary, published as `digits@1.0` by the devnet's own key.
const DEMO_MODEL: &[u8] = include_bytes!("../assets/digits_mlp.onnx");

async fn publish_demo(hub_url: &str, data_dir: &Path) -> anyhow::Result<cairn_core::BlobId> {
    let key = keyfile::load_or_create(&data_dir.join("devnet.key"))?;
    let hub = HubClient::new(hub_url, Some(key))?;
    let repo: RepoName = "digits".parse()?;
    let version: Version = "1.0".parse()?;
    if let Ok(r) = hub.resolve(&repo, Some(version), None).await {
        return Ok(r.file.cid);
    }
    ensure_repo(
        &hub,
        NewRepo {
            name: repo.clone(),
            description: "Handwritten digit classifier (8x8 images, 64 floats 0-16): a scikit-learn MLP trained on sklearn's digits, converted with skl2onnx. Cairn's demo model.".into(),
            task: Some("image-classification".into()),
            license: Some("BSD-3-Clause".into()),
            tags: vec!["demo".into(), "sklearn".into()],
        },
    )
    .await?;
    hub.create_release(&repo, version, "demo model").await?;
    let file = data_dir.join("digits_mlp.onnx");
    std::fs::write(&file, DEMO_MODEL)?;
    let entry = hub
        .upload_file(
            &repo,
            version,
            &"digits_mlp.onnx".parse()?,
            &file,
            cairn_hub::server::ONNX_MEDIA_TYPE,
            |_| {},
        )
        .await?;
    hub.publish(&repo, version).await?;
    Ok(entry.cid)
}

fn client(args: &ClientArgs, signed: bool) -> anyhow::Result<HubClient> {
    let signer = match signed {
        true => Some(keyfile::load_or_create(
            &args.key.clone().unwrap_or_else(keyfile::default_path),
        )?),
        false => None,
    };
    Ok(HubClient::new(&args.hub, signer)?)
}

fn media_type_for(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("onnx") => cairn_hub::server::ONNX_MEDIA_TYPE,
        Some("json") => "application/json",
        Some("md") => "text/markdown",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

fn bar(len: u64, label: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(label);
    pb
}

async fn hub(cmd: HubCommand) -> anyhow::Result<()> {
    match cmd {
        HubCommand::Serve {
            listen,
            catalog,
            blobs,
            s3_endpoint,
            max_upload_bytes,
            owner_quota_bytes,
            draft_ttl_secs,
            gc_every_secs,
            orphan_grace_secs,
            public_hosts,
        } => {
            let config = HubConfig {
                max_upload_bytes,
                owner_quota_bytes,
                draft_ttl: std::time::Duration::from_secs(draft_ttl_secs),
                gc_every: std::time::Duration::from_secs(gc_every_secs.max(1)),
                orphan_grace: std::time::Duration::from_secs(orphan_grace_secs),
                public_hosts,
                ..HubConfig::new(catalog, Location::parse(&blobs, s3_endpoint))
            };
            let (listener, state) = serve_hub(config, listen).await?;
            println!("hub: http://{}", listener.local_addr()?);
            cairn_hub::serve(listener, state, shutdown_signal()).await?;
        }
        HubCommand::Id { file } => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let (id, _) = BlobHasher::hash_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
            println!("{id}");
        }
        HubCommand::Push {
            files,
            repo,
            version,
            path,
            notes,
            description,
            task,
            license,
            tags,
            draft,
            client: args,
        } => {
            if path.is_some() && files.len() != 1 {
                bail!(
                    "--path names the one file being pushed; with several files each keeps its file name"
                );
            }
            let hub = client(&args, true)?;
            ensure_repo(
                &hub,
                NewRepo {
                    name: repo.clone(),
                    description,
                    task,
                    license,
                    tags,
                },
            )
            .await?;
            let (_, created) = hub.create_release(&repo, version, &notes).await?;
            if !created {
                eprintln!("resuming the draft of {repo}@{version}");
            }
            for file in &files {
                let release_path = match &path {
                    Some(p) => p.clone(),
                    None => file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .context("file has no usable name; give one with --path")?
                        .parse()?,
                };
                let len = std::fs::metadata(file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .len();
                let pb = bar(len, format!("hashing {release_path}"));
                let (cid, _) = cairn_hub::client::hash_file(file).await?;
                pb.set_message(format!("pushing {release_path}"));
                pb.set_position(0);
                let progress = pb.clone();
                let entry = hub
                    .upload_declared(
                        &repo,
                        version,
                        &release_path,
                        file,
                        cid,
                        media_type_for(file),
                        move |n| progress.set_position(n),
                    )
                    .await?;
                pb.finish_and_clear();
                println!(
                    "{}  {repo}@{version}/{}  {} bytes",
                    entry.cid, entry.path, entry.size
                );
            }
            if draft {
                println!("draft {repo}@{version} (not published)");
            } else {
                hub.publish(&repo, version).await?;
                println!("published {repo}@{version}");
            }
        }
        HubCommand::Ls {
            query,
            task,
            tag,
            client: args,
        } => {
            let hub = client(&args, false)?;
            let repos = hub
                .search(&Search {
                    q: query,
                    task,
                    tag,
                    ..Default::default()
                })
                .await?;
            for r in &repos {
                println!(
                    "{:<32} {:<24} {:<42} {}",
                    r.name,
                    r.task.as_deref().unwrap_or("-"),
                    r.owner,
                    r.tags.join(",")
                );
            }
            if repos.is_empty() {
                eprintln!("no repositories match");
            }
        }
        HubCommand::Show {
            reference,
            json,
            client: args,
        } => {
            let hub = client(&args, false)?;
            let (name, version) = match reference.split_once('@') {
                Some((n, v)) => (n.parse::<RepoName>()?, Some(v.parse::<Version>()?)),
                None => (reference.parse()?, None),
            };
            let mut detail = hub.repo(&name).await?;
            if let Some(v) = version {
                detail.releases.retain(|r| r.version == v);
                if detail.releases.is_empty() {
                    bail!("no release {v} in `{name}`");
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(());
            }
            let r = &detail.repo;
            println!("{}  owner {}", r.name, r.owner);
            println!(
                "  task: {}  license: {}  tags: {}",
                r.task.as_deref().unwrap_or("-"),
                r.license.as_deref().unwrap_or("-"),
                r.tags.join(",")
            );
            if !r.description.is_empty() {
                println!("  {}", r.description.replace('\n', "\n  "));
            }
            for rel in &detail.releases {
                let state = if rel.published_at.is_some() {
                    ""
                } else {
                    " (draft)"
                };
                let latest = if detail.latest == Some(rel.version) {
                    " (latest)"
                } else {
                    ""
                };
                println!("  {}{state}{latest}", rel.version);
                for f in &rel.files {
                    println!(
                        "    {}  {}  {} bytes  {}",
                        f.cid, f.path, f.size, f.media_type
                    );
                    if let Some(sig) = &f.onnx {
                        for (dir, list) in [("in ", &sig.inputs), ("out", &sig.outputs)] {
                            for v in list {
                                println!(
                                    "      {dir} {} {} {}",
                                    v.name,
                                    v.type_name,
                                    serde_json::to_string(&v.shape)?
                                );
                            }
                        }
                    }
                }
            }
        }
        HubCommand::Pull {
            reference,
            output,
            client: args,
        } => {
            let hub = client(&args, false)?;
            let cid = match &reference {
                ModelRef::Blob(id) => *id,
                ModelRef::Named {
                    repo,
                    version,
                    path,
                } => hub.resolve(repo, *version, path.as_ref()).await?.file.cid,
            };
            let pb = bar(0, format!("pulling {reference}"));
            let progress = pb.clone();
            let n = hub
                .download(&cid, &output, move |got, total| {
                    progress.set_length(total);
                    progress.set_position(got);
                })
                .await?;
            pb.finish_and_clear();
            println!("{cid}  {}  {n} bytes (verified)", output.display());
        }
    }
    Ok(())
}

/// Creates the repository, or checks that this key owns the existing one.
async fn ensure_repo(hub: &HubClient, new: NewRepo) -> anyhow::Result<()> {
    match hub.repo(&new.name).await {
        Ok(existing) => {
            let me = hub.signer_address();
            if Some(existing.repo.owner) != me {
                bail!(
                    "repository `{}` belongs to {}, not to your key",
                    new.name,
                    existing.repo.owner
                );
            }
            Ok(())
        }
        Err(ClientError::Api { code, .. }) if code == "repo_not_found" => {
            hub.create_repo(&new).await?;
            eprintln!("created repository {}", new.name);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A tolerance: a finite, non-negative number.
fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!(
            "{s:?} is not a tolerance: give a finite number ≥ 0, e.g. 1e-4"
        )),
    }
}
