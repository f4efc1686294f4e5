//! The methods: parameters read by position into alloy's types, answered from the ledger.

use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B256, Bytes, TxKind, U64, U256};
use alloy_rpc_types_eth::{FeeHistory, Filter, FilterBlockOption, TransactionRequest};
use cairn_ledger::Ledger;
use cairn_ledger::embedded::{BlockRef, CallRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::filters::Watch;
use crate::{Rpc, RpcError};

type Answer = Result<Value, RpcError>;

/// The most blocks one `eth_getFilterChanges` poll covers (the filter catches up over polls).
const MAX_FILTER_SPAN: u64 = 10_000;

/// The most addresses, and topics per position, a filter may name.
const MAX_FILTER_TERMS: usize = 100;

/// A block bound as a number: `earliest` is 0, a number itself; other tags follow the head.
fn bound(b: BlockNumberOrTag) -> Option<u64> {
    match b {
        BlockNumberOrTag::Earliest => Some(0),
        BlockNumberOrTag::Number(n) => Some(n),
        _ => None,
    }
}

/// Refuses a filter naming more than [`MAX_FILTER_TERMS`] addresses or topics in a position
/// (kept in memory for as long as it is polled).
fn check_filter_size(filter: &Filter) -> Result<(), RpcError> {
    if filter.address.len() > MAX_FILTER_TERMS
        || filter.topics.iter().any(|t| t.len() > MAX_FILTER_TERMS)
    {
        return Err(RpcError::params(format!(
            "a filter names at most {MAX_FILTER_TERMS} addresses and {MAX_FILTER_TERMS} topics per position"
        )));
    }
    Ok(())
}

/// The most blocks one `eth_feeHistory` covers (geth's cap).
const MAX_FEE_HISTORY: u64 = 1024;

/// Runs `method`; the label it is counted under (a known method's name, else `other`).
pub(crate) fn dispatch(rpc: &Rpc, method: &str, params: Vec<Value>) -> (&'static str, Answer) {
    let p = Params(params);
    let l = &rpc.ledger;
    macro_rules! known {
        ($($name:literal => $body:expr),* $(,)?) => {
            match method {
                $($name => ($name, run(|| -> Answer { $body })),)*
                _ => ("other", Err(RpcError::new(-32601, format!("the method {method:?} does not exist or is not available")))),
            }
        };
    }
    known! {
        "web3_clientVersion" => Ok(Value::String(format!("cairn/{}/embedded-revm", env!("CARGO_PKG_VERSION")))),
        "net_version" => Ok(Value::String(l.chain_id().to_string())),
        "net_listening" => Ok(Value::Bool(true)),
        "net_peerCount" => json(U64::ZERO),
        "eth_chainId" => json(U64::from(l.chain_id())),
        "eth_syncing" => Ok(Value::Bool(false)),
        "eth_mining" => Ok(Value::Bool(false)),
        "eth_accounts" => Ok(Value::Array(vec![])),
        "eth_blockNumber" => json(U64::from(head(rpc)?)),
        "eth_gasPrice" => json(U64::ZERO),
        "eth_maxPriorityFeePerGas" => json(U64::ZERO),
        "eth_blobBaseFee" => json(U64::ZERO),
        "eth_feeHistory" => fee_history(rpc, &p),
        "eth_getBalance" => {
            let who: Address = p.get(0, "address")?;
            state_at(rpc, &p, 1)?;
            json(l.account(who).balance)
        },
        "eth_getCode" => {
            let who: Address = p.get(0, "address")?;
            state_at(rpc, &p, 1)?;
            json(l.account(who).code)
        },
        "eth_getTransactionCount" => {
            let who: Address = p.get(0, "address")?;
            state_at(rpc, &p, 1)?;
            json(U64::from(l.account(who).nonce))
        },
        "eth_getStorageAt" => {
            let who: Address = p.get(0, "address")?;
            let slot: U256 = p.get(1, "storage slot")?;
            state_at(rpc, &p, 2)?;
            json(B256::from(l.storage_at(who, slot)))
        },
        "eth_call" => {
            let req = call_request(&p)?;
            state_at(rpc, &p, 1)?;
            no_overrides(&p, 2)?;
            json(l.call_as(&req)?)
        },
        "eth_estimateGas" => {
            let req = call_request(&p)?;
            state_at(rpc, &p, 1)?;
            no_overrides(&p, 2)?;
            json(U64::from(l.estimate_gas(&req)?))
        },
        "eth_sendRawTransaction" => {
            let raw: Bytes = p.get(0, "signed transaction")?;
            let out = l.send_raw(&raw)?;
            json(out.hash)
        },
        "eth_getTransactionByHash" => json(l.transaction(p.get(0, "transaction hash")?)?),
        "eth_getTransactionReceipt" => json(l.receipt(p.get(0, "transaction hash")?)?),
        "eth_getBlockByNumber" => {
            let at = by_number(p.get(0, "block number")?);
            json(l.block(at, p.get(1, "full transactions flag")?)?)
        },
        "eth_getBlockByHash" => {
            let at = BlockRef::Hash(p.get(0, "block hash")?);
            json(l.block(at, p.get(1, "full transactions flag")?)?)
        },
        "eth_getBlockTransactionCountByNumber" => {
            let at = by_number(p.get(0, "block number")?);
            json(l.block(at, false)?.map(|b| U64::from(b.transactions.len())))
        },
        "eth_getBlockTransactionCountByHash" => {
            json(l.block(BlockRef::Hash(p.get(0, "block hash")?), false)?.map(|b| U64::from(b.transactions.len())))
        },
        "eth_getBlockReceipts" => {
            let id: BlockId = p.get(0, "block")?;
            let at = match id {
                BlockId::Hash(h) => BlockRef::Hash(h.block_hash),
                BlockId::Number(n) => by_number(n),
            };
            match l.block(at, false)? {
                None => Ok(Value::Null),
                Some(b) => {
                    let receipts = b
                        .transactions
                        .hashes()
                        .map(|h| l.receipt(h))
                        .collect::<Result<Vec<_>, _>>()?;
                    json(receipts.into_iter().flatten().collect::<Vec<_>>())
                }
            }
        },
        "eth_getLogs" => get_logs(rpc, p.get(0, "filter")?),
        "eth_newFilter" => {
            let filter: Filter = p.get(0, "filter")?;
            check_filter_size(&filter)?;
            new_filter(rpc, Watch::Logs(Box::new(filter)))
        },
        "eth_newBlockFilter" => new_filter(rpc, Watch::Blocks),
        "eth_getFilterChanges" => {
            let id = filter_id(&p)?;
            let (watch, seen) = rpc.filters.peek(id).ok_or_else(filter_not_found)?;
            // At most this many blocks per poll: the filter moves only past what it answered.
            let head = head(rpc)?.min(seen.saturating_add(MAX_FILTER_SPAN));
            let answer = match watch {
                Watch::Blocks => {
                    let hashes = ((seen + 1)..=head)
                        .map(|n| Ok(l.block(BlockRef::Number(n), false)?.map(|b| b.header.hash)))
                        .collect::<Result<Vec<_>, RpcError>>()?;
                    json(hashes.into_iter().flatten().collect::<Vec<_>>())
                }
                Watch::Logs(filter) => {
                    // New blocks since the last poll, within the filter's numbered bounds (a
                    // tag bound means "as the chain grows").
                    let (from, to) = match filter.block_option {
                        FilterBlockOption::AtBlockHash(_) => log_range(rpc, &filter)?,
                        FilterBlockOption::Range {
                            from_block,
                            to_block,
                        } => (
                            from_block.and_then(bound).unwrap_or(0),
                            to_block.and_then(bound).unwrap_or(u64::MAX),
                        ),
                    };
                    logs_in(rpc, &filter, from.max(seen + 1), to.min(head))
                }
            }?;
            rpc.filters.advance(id, head);
            Ok(answer)
        },
        "eth_getFilterLogs" => {
            let id = filter_id(&p)?;
            match rpc.filters.peek(id).ok_or_else(filter_not_found)?.0 {
                Watch::Logs(filter) => {
                    let (from, to) = log_range(rpc, &filter)?;
                    logs_in(rpc, &filter, from, to.min(head(rpc)?))
                }
                Watch::Blocks => Err(RpcError::new(-32000, "filter is a block filter; poll it with eth_getFilterChanges")),
            }
        },
        "eth_uninstallFilter" => Ok(Value::Bool(rpc.filters.remove(filter_id(&p)?))),
        "evm_increaseTime" => {
            dev(rpc)?;
            let secs = p.quantity(0, "seconds")?;
            if secs > 10 * 365 * 86_400 {
                return Err(RpcError::params("seconds: more than ten years at once"));
            }
            block_on(l.advance_time(secs))?;
            json(U64::from(secs))
        },
        "anvil_setCode" => {
            dev(rpc)?;
            let who: Address = p.get(0, "address")?;
            let code: Bytes = p.get(1, "code")?;
            block_on(l.dev_set_code(who, code))?;
            Ok(Value::Null)
        },
        "evm_mine" => {
            dev(rpc)?;
            l.mine_empty()?;
            Ok(Value::String("0x0".into()))
        },
    }
}

/// Runs a method's body (a closure, so `?` returns from the body, not from `dispatch`).
fn run(body: impl FnOnce() -> Answer) -> Answer {
    body()
}

fn json(v: impl serde::Serialize) -> Answer {
    serde_json::to_value(v).map_err(|e| RpcError::new(-32603, format!("internal error: {e}")))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    // Called on a blocking-pool thread (see `handle`), where waiting is allowed.
    tokio::runtime::Handle::current().block_on(f)
}

struct Params(Vec<Value>);

impl Params {
    /// Parameter `i`, required.
    fn get<T: DeserializeOwned>(&self, i: usize, what: &str) -> Result<T, RpcError> {
        match self.0.get(i) {
            None => Err(RpcError::params(format!("missing parameter {i} ({what})"))),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| RpcError::params(format!("parameter {i} ({what}): {e}"))),
        }
    }

    /// Parameter `i`, a quantity: a hex string (the standard) or a JSON number (what anvil's dev
    /// methods and some clients send).
    fn quantity(&self, i: usize, what: &str) -> Result<u64, RpcError> {
        match self.0.get(i) {
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                RpcError::params(format!("parameter {i} ({what}): not a whole number"))
            }),
            _ => {
                let q: U64 = self.get(i, what)?;
                u64::try_from(q)
                    .map_err(|_| RpcError::params(format!("parameter {i} ({what}): too large")))
            }
        }
    }

    /// Parameter `i`, when present and not null.
    fn opt<T: DeserializeOwned>(&self, i: usize, what: &str) -> Result<Option<T>, RpcError> {
        match self.0.get(i) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.get(i, what).map(Some),
        }
    }
}

fn head(rpc: &Rpc) -> Result<u64, RpcError> {
    Ok(rpc
        .ledger
        .block_number(BlockRef::Latest)?
        .unwrap_or_default())
}

fn dev(rpc: &Rpc) -> Result<(), RpcError> {
    if rpc.config.dev_methods {
        Ok(())
    } else {
        Err(RpcError::new(
            -32601,
            "dev methods are off on this chain (start it with --rpc-dev-methods)",
        ))
    }
}

/// A block by number or tag. Every mined block is final here, so `safe` and `finalized` are
/// the head, as is `pending` (nothing waits to be mined).
fn by_number(n: BlockNumberOrTag) -> BlockRef {
    match n {
        BlockNumberOrTag::Earliest => BlockRef::Number(0),
        BlockNumberOrTag::Number(n) => BlockRef::Number(n),
        BlockNumberOrTag::Latest
        | BlockNumberOrTag::Pending
        | BlockNumberOrTag::Safe
        | BlockNumberOrTag::Finalized => BlockRef::Latest,
    }
}

/// Refuses a state query at a block named by number or hash other than the head (only its state
/// is kept). A tag always means the head, and is never compared: the head may move between
/// reading it and answering.
fn state_at(rpc: &Rpc, p: &Params, i: usize) -> Result<(), RpcError> {
    let Some(id) = p.opt::<BlockId>(i, "block")? else {
        return Ok(());
    };
    let at = match id {
        BlockId::Hash(h) => BlockRef::Hash(h.block_hash),
        BlockId::Number(n) => match by_number(n) {
            BlockRef::Latest => return Ok(()),
            at => at,
        },
    };
    let head = head(rpc)?;
    match rpc.ledger.block_number(at)? {
        Some(n) if n == head => Ok(()),
        Some(n) => Err(RpcError::new(
            -32000,
            format!(
                "the state at block {n} is not kept: this chain keeps only the head's (block {head}); ask for \"latest\""
            ),
        )),
        None => Err(RpcError::new(-32000, "header not found")),
    }
}

fn no_overrides(p: &Params, i: usize) -> Result<(), RpcError> {
    match p.0.get(i) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(o)) if o.is_empty() => Ok(()),
        Some(_) => Err(RpcError::params(
            "state overrides are not supported on this chain",
        )),
    }
}

fn call_request(p: &Params) -> Result<CallRequest, RpcError> {
    let req: TransactionRequest = p.get(0, "transaction")?;
    let to = match req.to {
        None | Some(TxKind::Create) => None,
        Some(TxKind::Call(a)) => Some(a),
    };
    let gas = req.gas;
    let from = req.from;
    let value = req.value.unwrap_or_default();
    let data = req
        .input
        .try_into_unique_input()
        .map_err(|e| RpcError::params(format!("parameter 0 (transaction): {e}")))?
        .unwrap_or_default();
    Ok(CallRequest {
        from,
        to,
        data,
        value,
        gas,
    })
}

fn fee_history(rpc: &Rpc, p: &Params) -> Answer {
    let count = p.quantity(0, "block count")?.min(MAX_FEE_HISTORY);
    let newest = match by_number(p.get(1, "newest block")?) {
        BlockRef::Number(n) => n,
        _ => head(rpc)?,
    };
    let head = head(rpc)?;
    if newest > head {
        return Err(RpcError::new(
            -32000,
            format!("block {newest} is past the head ({head})"),
        ));
    }
    let percentiles: Vec<f64> = p.opt(2, "reward percentiles")?.unwrap_or_default();
    if percentiles.len() > 100
        || percentiles.windows(2).any(|w| w[0] > w[1])
        || percentiles.iter().any(|x| !(0.0..=100.0).contains(x))
    {
        return Err(RpcError::params(
            "reward percentiles: at most 100, ascending, each within 0..=100",
        ));
    }
    if count == 0 {
        return json(FeeHistory::default());
    }
    let oldest = newest.saturating_sub(count - 1);
    let used = rpc.ledger.gas_used(oldest, newest)?;
    let n = used.len();
    json(FeeHistory {
        base_fee_per_gas: vec![0; n + 1],
        gas_used_ratio: used
            .iter()
            .map(|g| *g as f64 / cairn_ledger::embedded::BLOCK_GAS_LIMIT as f64)
            .collect(),
        base_fee_per_blob_gas: vec![0; n + 1],
        blob_gas_used_ratio: vec![0.0; n],
        oldest_block: oldest,
        reward: (!percentiles.is_empty()).then(|| vec![vec![0; percentiles.len()]; n]),
    })
}

fn new_filter(rpc: &Rpc, watch: Watch) -> Answer {
    let id = rpc.filters.install(watch, head(rpc)?).ok_or_else(|| {
        RpcError::new(
            -32005,
            format!(
                "{} filters are installed; uninstall some (or let them expire after {} s unpolled)",
                crate::filters::MAX_FILTERS,
                crate::filters::IDLE.as_secs()
            ),
        )
    })?;
    json(id)
}

fn filter_id(p: &Params) -> Result<U256, RpcError> {
    p.get(0, "filter id")
}

fn filter_not_found() -> RpcError {
    RpcError::new(-32000, "filter not found")
}

/// The blocks a log filter names (tags resolved at the head; a range past the head refused).
fn log_range(rpc: &Rpc, filter: &Filter) -> Result<(u64, u64), RpcError> {
    Ok(match filter.block_option {
        FilterBlockOption::AtBlockHash(h) => match rpc.ledger.block_number(BlockRef::Hash(h))? {
            Some(n) => (n, n),
            None => return Err(RpcError::new(-32000, "unknown block")),
        },
        FilterBlockOption::Range {
            from_block,
            to_block,
        } => {
            let resolve = |b: Option<BlockNumberOrTag>| -> Result<u64, RpcError> {
                match by_number(b.unwrap_or_default()) {
                    BlockRef::Number(n) => Ok(n),
                    _ => head(rpc),
                }
            };
            let (from, to) = (resolve(from_block)?, resolve(to_block)?);
            if from > to {
                return Err(RpcError::params(format!(
                    "invalid block range: fromBlock {from} is after toBlock {to}"
                )));
            }
            (from, to)
        }
    })
}

fn get_logs(rpc: &Rpc, filter: Filter) -> Answer {
    let (from, to) = log_range(rpc, &filter)?;
    let head = head(rpc)?;
    if to > head {
        return Err(RpcError::params(format!(
            "block range extends beyond current head block: toBlock {to}, head {head}"
        )));
    }
    logs_in(rpc, &filter, from, to)
}

/// The logs of blocks `from..=to` that `filter` matches (none when the range is empty).
fn logs_in(rpc: &Rpc, filter: &Filter, from: u64, to: u64) -> Answer {
    if from > to {
        return json(Vec::<Value>::new());
    }
    let address = (filter.address.len() == 1)
        .then(|| filter.address.iter().next().copied())
        .flatten();
    let topic0 = (filter.topics[0].len() == 1)
        .then(|| filter.topics[0].iter().next().copied())
        .flatten();
    json(
        rpc.ledger
            .logs_matching(from, to, (address, topic0), |log| filter.matches(log))?,
    )
}
