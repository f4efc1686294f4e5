//! The settlement layer's Rust side.
//!
//! [`Ledger`] is the seam every role uses to reach the chain. It has two implementations that run
//! the same contract bytecode: [`EmbeddedLedger`] (revm in-process, state in SQLite, one block per
//! transaction) and [`RpcLedger`] (any EVM JSON-RPC endpoint through alloy). [`Chain`] puts the
//! contract bindings ([`contracts`]) on top of either.

pub mod active;
pub mod anvil;
pub mod chain;
pub mod contracts;
pub mod deploy;
pub mod devnet;
pub mod embedded;
pub mod rpc;

use alloy_primitives::{Address, B256, Bytes, Log, U256};
use alloy_signer_local::PrivateKeySigner;
use async_trait::async_trait;

pub use active::ActiveVerifiers;
pub use chain::{
    AuthorizationUse, BatchInfo, BatchStatus, Chain, Challenged, ChannelState, NodeInfo,
    RegistrationRequest, Role, TokenPermit, UptoAuthorization, permit2_domain,
};
pub use deploy::{
    BatchContracts, DeployParams, Deployment, UptoContracts, dev_signer, dev_signers,
};
pub use embedded::EmbeddedLedger;
pub use rpc::RpcLedger;

/// What a mined transaction did.
#[derive(Clone, Debug)]
pub struct TxOutcome {
    /// Transaction hash (on the embedded chain: keccak over its canonical fields).
    pub hash: B256,
    /// The block that includes it.
    pub block: u64,
    /// Gas used, as a receipt reports it.
    pub gas_used: u64,
    /// Logs emitted, in order.
    pub logs: Vec<Log>,
    /// The created contract, for a deployment.
    pub contract_address: Option<Address>,
}

/// The head of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Block number.
    pub number: u64,
    /// Block timestamp, Unix seconds.
    pub timestamp: u64,
}

/// A block by number: what an indexer records to notice a reorganization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStamp {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Block timestamp, Unix seconds.
    pub timestamp: u64,
}

/// A log found by [`Ledger::logs`], with where it was emitted.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// Block number.
    pub block: u64,
    /// Transaction hash.
    pub tx: B256,
    /// Its position among the block's logs.
    pub index: u64,
    /// The log itself.
    pub log: Log,
}

/// Errors from either ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The call or transaction reverted; nothing changed. `reason` is the decoded custom error
    /// when it is one of ours.
    #[error("reverted: {reason}")]
    Reverted {
        /// Human-readable revert reason.
        reason: String,
        /// Raw revert data.
        data: Bytes,
    },
    /// A transaction was sent but is not mined yet. It is tracked; its call is never sent
    /// again under another nonce (only its own signed bytes again, if the chain does not know
    /// it, or the same call and nonce with higher fees, when the base fee priced it out).
    #[error(
        "transaction {hash} (nonce {nonce}) is sent but not mined yet; it is tracked and its call never sent again under another nonce"
    )]
    Pending {
        /// Transaction hash.
        hash: B256,
        /// Its nonce.
        nonce: u64,
    },
    /// Nothing was sent: the signer's earlier transaction is still unmined (sending another
    /// would race its nonce). Retry once it is mined.
    #[error(
        "nothing was sent: the signer's earlier transaction {hash} (nonce {nonce}) is not mined yet, or was mined just now; read the chain again and retry"
    )]
    Busy {
        /// The earlier transaction's hash.
        hash: B256,
        /// Its nonce.
        nonce: u64,
        /// The earlier transaction is out no longer (mined just now, or its nonce went to
        /// another): a send now goes out. Otherwise it is still out after a whole wait.
        cleared: bool,
    },
    /// The endpoint could not be reached or answered badly.
    #[error("rpc: {0}")]
    Rpc(String),
    /// The embedded chain's store failed.
    #[error("ledger store: {0}")]
    Store(#[from] rusqlite::Error),
    /// The EVM refused the transaction before running it (bad nonce, out of funds, …).
    #[error("evm: {0}")]
    Evm(String),
    /// Not supported by this ledger (e.g. moving time on a production chain).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A deployment file, artifact or parameter is wrong.
    #[error("{0}")]
    Invalid(String),
}

impl LedgerError {
    /// The revert data, when the error is a revert.
    pub fn revert_data(&self) -> Option<&Bytes> {
        match self {
            Self::Reverted { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// A transaction to send.
#[derive(Clone, Debug, Default)]
pub struct TxRequest {
    /// Destination; `None` deploys `data` as init code.
    pub to: Option<Address>,
    /// Calldata or init code.
    pub data: Bytes,
    /// Wei sent along.
    pub value: U256,
}

/// Filter for [`Ledger::logs`].
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    /// Only logs of this contract.
    pub address: Option<Address>,
    /// Only logs with this first topic (event signature).
    pub topic0: Option<B256>,
    /// Only logs with this second topic (an event's first indexed field).
    pub topic1: Option<B256>,
    /// Only logs with this third topic (an event's second indexed field).
    pub topic2: Option<B256>,
    /// From this block on (inclusive).
    pub from_block: u64,
    /// Up to this block (inclusive); the head when `None`.
    pub to_block: Option<u64>,
}

/// The chain as every Cairn role sees it: read, send, list events.
///
/// Both implementations execute the same bytecode; only where state lives and how time moves
/// differ.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// EIP-155 chain id.
    fn chain_id(&self) -> u64;

    /// Human-readable kind and location, for logs and `cairn chain status`.
    fn describe(&self) -> String;

    /// Executes a read-only call against the latest state.
    async fn call(&self, to: Address, data: Bytes) -> Result<Bytes, LedgerError>;

    /// Sends a transaction from `signer` and waits (bounded) until it is mined.
    async fn send(
        &self,
        signer: &PrivateKeySigner,
        tx: TxRequest,
    ) -> Result<TxOutcome, LedgerError>;

    /// Looks after `signer`'s transaction still out, if any, without sending a new call: noted
    /// mined when it is, sent again when the chain lost it, its fees raised when the base fee
    /// priced it out. The loops of a role that sends (a facilitator's reconciler, a node's
    /// settler) call it each round, so a stuck payment or batch moves without waiting for the
    /// next send. A chain that mines every send at once has nothing to look after.
    async fn tend(&self, _signer: &PrivateKeySigner) -> Result<(), LedgerError> {
        Ok(())
    }

    /// The latest block.
    async fn head(&self) -> Result<BlockInfo, LedgerError>;

    /// Block `number`'s hash and time; `None` past the head.
    async fn block_at(&self, number: u64) -> Result<Option<BlockStamp>, LedgerError>;

    /// Native-coin balance.
    async fn balance(&self, who: Address) -> Result<U256, LedgerError>;

    /// Logs matching `filter`, oldest first.
    async fn logs(&self, filter: LogFilter) -> Result<Vec<LogRecord>, LedgerError>;

    /// The state root of the latest block.
    async fn state_root(&self) -> Result<B256, LedgerError>;

    /// Moves the chain's clock forward (dev chains only); the next block and calls see it.
    async fn advance_time(&self, secs: u64) -> Result<(), LedgerError>;

    /// The code at `who` (empty when none).
    async fn code(&self, who: Address) -> Result<Bytes, LedgerError>;

    /// Places runtime `code` at `who` without a transaction, as a genesis does (dev chains only:
    /// the embedded chain, anvil's `anvil_setCode`); how contracts that must sit at fixed
    /// addresses (Permit2, the x402 proxies) reach a dev chain.
    async fn dev_set_code(&self, who: Address, code: Bytes) -> Result<(), LedgerError>;
}
