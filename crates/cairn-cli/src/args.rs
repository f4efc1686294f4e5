//! Argument groups more than one command takes, turned into what they name once: where the
//! chain is, a registry role, which engine runs models.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_ledger::{Chain, Deployment, EmbeddedLedger, Role, RpcLedger};
use clap::{Args, ValueEnum};

/// Where the chain is.
#[derive(Args, Clone, Debug)]
pub struct ChainArgs {
    /// JSON-RPC endpoint of an EVM chain (anvil, Base, …).
    #[arg(long, env = "CAIRN_RPC")]
    pub rpc: Option<String>,
    /// Deployment file written by `cairn chain deploy`.
    #[arg(long, env = "CAIRN_DEPLOYMENT")]
    pub deployment: Option<PathBuf>,
    /// Longest wait for a transaction to be mined, in seconds.
    #[arg(long, default_value_t = 60)]
    pub rpc_wait_secs: u64,
    /// Most blocks one `eth_getLogs` request spans (public endpoints cap it).
    #[arg(long, default_value_t = cairn_ledger::rpc::DEFAULT_LOG_WINDOW)]
    pub rpc_log_window: u64,
}

impl ChainArgs {
    /// The RPC ledger and the deployment on it.
    pub async fn connect(&self) -> anyhow::Result<Chain> {
        let (Some(rpc), Some(deployment)) = (&self.rpc, &self.deployment) else {
            bail!("settling on a chain needs both --rpc URL and --deployment FILE");
        };
        let ledger = RpcLedger::connect(rpc, Duration::from_secs(self.rpc_wait_secs))
            .await
            .with_context(|| format!("connecting to {rpc}"))?
            .with_log_window(self.rpc_log_window);
        let d = Deployment::load(deployment)?;
        Ok(Chain::new(Arc::new(ledger), d)?)
    }
}

/// Paths of a devnet's embedded chain inside its data dir.
pub fn devnet_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("chain");
    (dir.join("ledger.sqlite"), dir.join("deployment.json"))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Inference,
    Verifier,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Inference => Role::Inference,
            RoleArg::Verifier => Role::Verifier,
        }
    }
}

/// The chain named by `--rpc/--deployment`, or a devnet's embedded chain read-only.
pub async fn open_chain(args: &ChainArgs, devnet_dir: Option<&Path>) -> anyhow::Result<Chain> {
    match devnet_dir {
        Some(dir) => {
            let (ledger, deployment) = devnet_paths(dir);
            let d = Deployment::load(&deployment)?;
            let l = EmbeddedLedger::open_read_only(&ledger, d.chain_id)?;
            Ok(Chain::new(Arc::new(l), d)?)
        }
        None => args.connect().await,
    }
}

/// Which engine runs models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// tract: bit-exact per profile (the verifiable default).
    Tract,
    /// ONNX Runtime, loaded from --ort-library (results checked with a tolerance).
    Onnxruntime,
}

/// Engine choice, shared by `node serve`, `devnet` and `receipt reexec`.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Engine.
    #[arg(long, value_enum, default_value = "tract")]
    pub engine: EngineKind,
    /// CPU kernel tier for tract: generic (portable: any verifier reproduces it), avx2,
    /// avx512, native (fastest; reproducible only on CPUs with the same features). Pinned at
    /// process start (the process re-executes itself with TRACT_CPU_ISA set).
    #[arg(long, default_value = "generic", env = "CAIRN_CPU_TIER")]
    pub cpu_tier: String,
    /// ONNX Runtime shared library (from scripts/install-onnxruntime.sh).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<PathBuf>,
    /// Threads per inference for ONNX Runtime (tract always uses one).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Where an embedded chain serves Ethereum JSON-RPC.
#[derive(Args, Clone, Debug)]
pub struct RpcServeArgs {
    /// Address for the chain's Ethereum JSON-RPC (cast, web3.py, viem, wallets); port 0 picks
    /// a free one. Keep it on loopback: the devnet's keys are public.
    #[arg(long, default_value = "127.0.0.1:8545")]
    pub rpc_listen: std::net::SocketAddr,
    /// Also serve `evm_increaseTime` and `evm_mine` (lets any local process move the chain's
    /// clock past challenge windows: tests and local tools only).
    #[arg(long)]
    pub rpc_dev_methods: bool,
    /// A web origin (`http://127.0.0.1:7404`) whose pages may read the chain (CORS, read
    /// methods only; never sending), e.g. an explorer's. Repeatable.
    #[arg(long = "rpc-read-origin")]
    pub rpc_read_origins: Vec<String>,
}

impl RpcServeArgs {
    /// Binds the port and serves `ledger` in a task (pages of `read_origins` may read it); the
    /// URL it answers on.
    pub async fn start(
        &self,
        ledger: Arc<EmbeddedLedger>,
        read_origins: Vec<String>,
    ) -> anyhow::Result<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
        if !self.rpc_listen.ip().is_loopback() {
            anyhow::bail!(
                "--rpc-listen {} is not a loopback address: the devnet's keys are public, so anyone who can reach its RPC can spend them; listen on 127.0.0.1 and forward the port if you must",
                self.rpc_listen
            );
        }
        let listener = tokio::net::TcpListener::bind(self.rpc_listen)
            .await
            .with_context(|| format!("binding the chain's JSON-RPC to {}", self.rpc_listen))?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = cairn_chain_rpc::RpcConfig {
            dev_methods: self.rpc_dev_methods,
            read_origins: read_origins
                .into_iter()
                .chain(self.rpc_read_origins.iter().cloned())
                .collect(),
        };
        Ok((
            url,
            tokio::spawn(cairn_chain_rpc::serve(listener, ledger, config)),
        ))
    }
}
