//! Any EVM JSON-RPC chain, through alloy.
//!
//! Transactions of one signer go out one at a time under that signer's lock, with nonces this
//! process hands out. A transaction that was sent (or might have been: a transport error after
//! sending) but is not mined within the wait is remembered as pending; the next send from that
//! signer first looks for its receipt (sending the same signed bytes again when the chain does
//! not know the transaction: a request cut off before it arrived) and refuses to go on while it
//! is still out, so nothing is ever sent as a second call or with a clashing nonce.
//! One whose nonce the chain shows taken by another transaction of the key is dropped. One the
//! base fee has priced out (its cap no longer covers the base fee and its tip), found so by a
//! send a whole wait after it was signed, is signed again with the same nonce and call and the
//! fees the chain asks ([`MAX_BUMP`] times its first at most): only one transaction per nonce
//! can be mined, and whichever of them is settles the nonce. [`Ledger::tend`] does the same
//! between sends (a look, not a wait), so a transaction priced out moves on the owner's next
//! round even when nothing else is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_network::{Ethereum, EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_provider::{DynProvider, Provider, ProviderBuilder};
use alloy_rpc_types_eth::{BlockNumberOrTag, Filter, TransactionReceipt, TransactionRequest};
use alloy_signer_local::PrivateKeySigner;
use async_trait::async_trait;

use crate::{BlockInfo, Ledger, LedgerError, LogFilter, LogRecord, TxOutcome, TxRequest};

/// A JSON-RPC chain.
pub struct RpcLedger {
    url: String,
    provider: DynProvider<Ethereum>,
    chain_id: u64,
    wait: Duration,
    /// Most blocks one `eth_getLogs` may span (public endpoints cap the range).
    log_window: u64,
    /// What the next `eth_getLogs` spans, at most `log_window`: halved after a window fails (an
    /// endpoint that times out on a span, or refuses it as too large), doubled back after
    /// [`LOG_SPAN_GROWTH_AFTER`] windows in a row succeed.
    log_span: LogSpan,
    signers: Mutex<HashMap<Address, Arc<tokio::sync::Mutex<SignerState>>>>,
}

/// How many times the fee cap a transaction was first signed with a fee bump raises it to at
/// most: an endpoint that asks more without end (lying, or a fee spike) costs a send this much
/// at worst, and a transaction priced out past it waits for the base fee to fall.
pub const MAX_BUMP: u128 = 8;

/// Transactions of one nonce whose receipts are looked for at most: the first and the latest
/// replacements.
const MAX_WATCHED: usize = 16;

/// Default block span of one `eth_getLogs` request.
pub const DEFAULT_LOG_WINDOW: u64 = 5_000;

/// Whether a failed `eth_getLogs` may have failed for its span: a timeout, a JSON-RPC error (a
/// range or result limit), or an HTTP status a proxy answers a slow or large request with (408,
/// 413, 504, Cloudflare's 524); not a rate limit (429) or a gateway that is down (502, 503).
fn about_the_span(e: &RpcErr) -> bool {
    use alloy_transport::TransportErrorKind as K;
    let status = match e {
        alloy_json_rpc::RpcError::Transport(K::HttpError(h))
        | alloy_json_rpc::RpcError::Transport(K::HttpErrorWithRetryAfter { error: h, .. }) => {
            h.status
        }
        _ => return true,
    };
    matches!(status, 408 | 413 | 504 | 524)
}

/// How many times one log query halves a window that failed before it gives up (the caller
/// retries on its schedule, starting from the smaller span).
const MAX_LOG_SPLITS: u32 = 4;

/// After how many windows in a row succeed the span doubles back toward `log_window`.
const LOG_SPAN_GROWTH_AFTER: u32 = 32;

/// The span of the next `eth_getLogs` (0: the configured window) and the successes since it
/// last changed.
#[derive(Default)]
struct LogSpan(Mutex<(u64, u32)>);

impl LogSpan {
    fn current(&self, window: u64) -> u64 {
        let (span, _) = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        if span == 0 { window } else { span.min(window) }
    }

    fn failed(&self, tried: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ((tried / 2).max(1), 0);
    }

    fn succeeded(&self, window: u64) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (span, ok) = *g;
        if span == 0 {
            return;
        }
        *g = if ok + 1 >= LOG_SPAN_GROWTH_AFTER {
            let next = span.saturating_mul(2);
            (if next >= window { 0 } else { next }, 0)
        } else {
            (span, ok + 1)
        };
    }
}

/// Longest one JSON-RPC request may take by default: an endpoint that accepts and never
/// answers must fail the call (the settler, a verifier, the indexer then retry on their own
/// schedule) rather than hold it, and everything waiting behind it, forever.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct SignerState {
    next_nonce: Option<u64>,
    pending: Option<Pending>,
    /// A pending transaction a round ([`Ledger::tend`]) saw mined, not yet told to a send: the
    /// next send answers busy, as it would have had it seen it mined itself (its call may have
    /// done what that send is for, and the caller reads the chain again first).
    mined_untold: Option<(B256, u64)>,
}

/// A transaction that was sent, or may have been, and is not known to be mined.
struct Pending {
    /// The latest signed with this nonce (a fee bump's replacement, after one).
    hash: B256,
    nonce: u64,
    /// Its signed bytes: sent again as they are when the chain does not know it (a request cut
    /// off before it arrived), which is the same transaction, never a second one.
    raw: Bytes,
    /// Every transaction sent with this nonce, the latest last: any one of them may be mined.
    sent: Vec<B256>,
    /// What the latest was signed from: a fee bump signs it again with other fees.
    request: TransactionRequest,
    /// When the latest was signed, or its fees last looked at: the next look waits a whole wait
    /// after it (a transaction that cannot be raised enough is not looked at every round).
    signed_at: std::time::Instant,
    /// The fee cap it was first signed with: a bump goes to [`MAX_BUMP`] times it at most.
    first_cap: u128,
    /// When the chain was first seen past its nonce with no receipt for it.
    passed_at: Option<std::time::Instant>,
}

type RpcErr = alloy_json_rpc::RpcError<alloy_transport::TransportErrorKind>;

fn rpc_error(e: RpcErr) -> LedgerError {
    if let Some(resp) = e.as_error_resp()
        && let Some(data) = resp.as_revert_data()
    {
        return LedgerError::Reverted {
            reason: crate::contracts::decode_revert(&data),
            data,
        };
    }
    LedgerError::Rpc(e.to_string())
}

impl RpcLedger {
    /// Connects to `url` and reads its chain id. `wait` bounds how long a send waits for its
    /// receipt; each request gives up after [`DEFAULT_REQUEST_TIMEOUT`].
    pub async fn connect(url: &str, wait: Duration) -> Result<Self, LedgerError> {
        Self::connect_with_timeout(url, wait, DEFAULT_REQUEST_TIMEOUT).await
    }

    /// [`RpcLedger::connect`], each request (connecting included) given up after `timeout`.
    /// A send whose request timed out may still have reached the chain: it is remembered as
    /// pending like any transport error after sending.
    pub async fn connect_with_timeout(
        url: &str,
        wait: Duration,
        timeout: Duration,
    ) -> Result<Self, LedgerError> {
        let parsed = url
            .parse()
            .map_err(|e| LedgerError::Invalid(format!("rpc url {url:?}: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| LedgerError::Invalid(format!("an HTTP client for {url:?}: {e}")))?;
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_reqwest(client, parsed)
            .erased();
        let chain_id = provider.get_chain_id().await.map_err(rpc_error)?;
        Ok(Self {
            url: url.to_string(),
            provider,
            chain_id,
            wait,
            log_window: DEFAULT_LOG_WINDOW,
            log_span: LogSpan::default(),
            signers: Mutex::new(HashMap::new()),
        })
    }

    /// Splits log queries into spans of at most `blocks` blocks.
    pub fn with_log_window(mut self, blocks: u64) -> Self {
        self.log_window = blocks.max(1);
        self
    }

    fn state_for(&self, who: Address) -> Arc<tokio::sync::Mutex<SignerState>> {
        self.signers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(who)
            .or_default()
            .clone()
    }

    /// The receipt of whichever of `hashes` is mined, waiting for one within the wait.
    async fn wait_receipt(
        &self,
        hashes: &[B256],
    ) -> Result<Option<TransactionReceipt>, LedgerError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        // Dev chains mine in milliseconds, L2s in a second or two: start fast, back off.
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(r) = self.any_receipt(hashes).await? {
                return Ok(Some(r));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    async fn any_receipt(
        &self,
        hashes: &[B256],
    ) -> Result<Option<TransactionReceipt>, LedgerError> {
        for &hash in hashes.iter().rev() {
            if let Some(r) = self
                .provider
                .get_transaction_receipt(hash)
                .await
                .map_err(rpc_error)?
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Signs `p` again with higher fees when the chain's base fee has risen past what its cap
    /// leaves for its tip (it would wait for as long as the fee stays up): the fees the chain
    /// asks now, each at least an eighth above its own (what nodes ask of a replacement), the
    /// cap at most [`MAX_BUMP`] times the one it was first signed with. A failure is logged, not
    /// returned: the caller still hears that its transaction is pending.
    async fn bump_fees(&self, key: &PrivateKeySigner, p: &mut Pending) {
        if let Err(e) = self.try_bump_fees(key, p).await {
            tracing::warn!(error = %e, nonce = p.nonce, "raising a pending transaction's fees failed");
        }
        p.signed_at = std::time::Instant::now();
    }

    async fn try_bump_fees(
        &self,
        key: &PrivateKeySigner,
        p: &mut Pending,
    ) -> Result<(), LedgerError> {
        let Some(base) = self.latest_block().await?.header.base_fee_per_gas else {
            // No base fee (a chain without EIP-1559): nothing it was priced under moved.
            return Ok(());
        };
        let cap = p.request.max_fee_per_gas.unwrap_or_default();
        let tip = p.request.max_priority_fee_per_gas.unwrap_or_default();
        if u128::from(base).saturating_add(tip) <= cap {
            // Includable as it is: it waits its turn.
            return Ok(());
        }
        let asked = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(rpc_error)?;
        let up = |x: u128| x.saturating_add(x.div_ceil(8));
        // The cap alone bounds what it can cost (the tip is paid out of it).
        let most = p.first_cap.saturating_mul(MAX_BUMP);
        let new_cap = asked.max_fee_per_gas.max(up(cap)).min(most);
        let new_tip = asked.max_priority_fee_per_gas.max(up(tip)).min(new_cap);
        if new_cap < up(cap) || new_cap <= u128::from(base) {
            tracing::error!(
                nonce = p.nonce,
                base_fee = base,
                max_fee_per_gas = cap,
                first_max_fee_per_gas = p.first_cap,
                "a pending transaction is priced out, and raising its fees enough would take them over {MAX_BUMP} times those it was first signed with: it is left as it is, to go out when the base fee falls"
            );
            return Ok(());
        }
        let request = p
            .request
            .clone()
            .with_max_fee_per_gas(new_cap)
            .with_max_priority_fee_per_gas(new_tip);
        let envelope = request
            .clone()
            .build(&EthereumWallet::from(key.clone()))
            .await
            .map_err(|e| LedgerError::Invalid(format!("building the transaction: {e}")))?;
        let hash = *envelope.tx_hash();
        let raw: Bytes = alloy_eips::eip2718::Encodable2718::encoded_2718(&envelope).into();
        let before = (
            p.hash,
            p.raw.clone(),
            std::mem::replace(&mut p.request, request),
        );
        // From here on the node may have it: remember it before sending (kept in `sent` even
        // if refused: an endpoint may refuse what it passed on all the same). The first one
        // is always kept; past [`MAX_WATCHED`], the oldest replacement goes.
        (p.hash, p.raw, p.signed_at) = (hash, raw.clone(), std::time::Instant::now());
        if !p.sent.contains(&hash) {
            if p.sent.len() >= MAX_WATCHED {
                p.sent.remove(1);
            }
            p.sent.push(hash);
        }
        match self.provider.send_raw_transaction(&raw).await {
            Ok(_) => {
                tracing::info!(%hash, replaces = %before.0, nonce = p.nonce, max_fee_per_gas = new_cap, "a pending transaction priced out by the base fee was sent again with higher fees");
            }
            Err(e) if e.is_error_resp() => {
                // Refused (a replacement priced too low for this node, funds short of the
                // new fees): the earlier one stays the one sent again if lost. The next try
                // waits a whole wait from this one.
                tracing::warn!(error = %e, nonce = p.nonce, "raising a pending transaction's fees was refused");
                (p.hash, p.raw, p.request) = before;
            }
            Err(_) => {}
        }
        Ok(())
    }

    async fn latest_block(&self) -> Result<alloy_rpc_types_eth::Block, LedgerError> {
        self.provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(rpc_error)?
            .ok_or_else(|| LedgerError::Rpc("no latest block".into()))
    }

    /// Calls a dev-chain method (`evm_mine`, `anvil_setBalance`, `txpool_status`, …); on a
    /// production chain these fail with [`LedgerError::Unsupported`].
    pub async fn dev_rpc(
        &self,
        method: &'static str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, LedgerError> {
        self.provider
            .raw_request(method.into(), params)
            .await
            .map_err(|e| LedgerError::Unsupported(format!("{method} (dev chains only): {e}")))
    }

    /// Sets `who`'s native balance (anvil's `anvil_setBalance`; dev chains only).
    pub async fn dev_set_balance(&self, who: Address, wei: U256) -> Result<(), LedgerError> {
        self.dev_rpc("anvil_setBalance", serde_json::json!([who, wei]))
            .await
            .map(drop)
    }

    /// Blocks until the pending transaction of `who`, if any, is mined (within the wait).
    pub async fn reconcile(&self, who: Address) -> Result<(), LedgerError> {
        let state = self.state_for(who);
        let mut st = state.lock().await;
        self.reconcile_locked(who, None, &mut st, true).await
    }

    /// Looks for the pending transaction's receipt (within the wait when `patient`, else once);
    /// with its `key`, one still unmined a wait after it was signed has its fees raised when the
    /// base fee priced it out. Only a patient look drops one whose nonce another transaction
    /// took (that needs a wait for its receipt between two sightings).
    async fn reconcile_locked(
        &self,
        from: Address,
        key: Option<&PrivateKeySigner>,
        st: &mut SignerState,
        patient: bool,
    ) -> Result<(), LedgerError> {
        if let Some(p) = &mut st.pending {
            let nonce = p.nonce;
            // Its nonce taken by another transaction of the same key (sent from elsewhere, or
            // a node that dropped ours and mined a later one): it can never be mined. The count
            // is read before the receipt, so a receipt mined meanwhile is still seen. Dropped
            // only when seen so again at least a whole wait later, with a wait for its receipt
            // between: one lagging backend behind a load balancer, answering the receipt while
            // another answers the count, must not make a mined transaction look lost (a
            // `submitBatch` thought lost is sent again).
            let mined = self
                .provider
                .get_transaction_count(from)
                .latest()
                .await
                .map_err(rpc_error)?;
            let passed = mined > nonce && self.any_receipt(&p.sent).await?.is_none();
            match (passed, p.passed_at) {
                (true, Some(at)) if patient && at.elapsed() >= self.wait => {
                    tracing::warn!(hash = %p.hash, nonce, mined, "a pending transaction's nonce was taken by another transaction: it will never be mined");
                    st.pending = None;
                    st.next_nonce = None;
                    return Ok(());
                }
                (true, None) => p.passed_at = Some(std::time::Instant::now()),
                // Not reset when a backend says otherwise: behind a load balancer, answers
                // that flip would otherwise keep the signer busy forever.
                _ => {}
            }
            if passed && !patient {
                // Its nonce went to another transaction: nothing to send again or re-price;
                // the next send decides whether it is gone.
                return Err(LedgerError::Pending {
                    hash: p.hash,
                    nonce,
                });
            }
            let known = self
                .provider
                .get_transaction_by_hash(p.hash)
                .await
                .map_err(rpc_error)?
                .is_some();
            if !known {
                // Whatever the node answers (it may have taken it meanwhile, or have mined
                // another with this nonce), the receipt below decides.
                if let Err(e) = self.provider.send_raw_transaction(&p.raw).await
                    && !e.is_error_resp()
                {
                    return Err(LedgerError::Pending {
                        hash: p.hash,
                        nonce,
                    });
                }
            }
            let receipt = if patient {
                self.wait_receipt(&p.sent).await?
            } else {
                self.any_receipt(&p.sent).await?
            };
            match receipt {
                Some(_) => {
                    st.pending = None;
                    // The count this process kept may be behind: the send that left it
                    // pending never moved it. The chain says where it stands.
                    st.next_nonce = None;
                }
                None => {
                    if let Some(key) = key
                        && p.signed_at.elapsed() >= self.wait
                    {
                        self.bump_fees(key, p).await;
                    }
                    return Err(LedgerError::Pending {
                        hash: p.hash,
                        nonce,
                    });
                }
            }
        }
        Ok(())
    }
}

fn outcome(r: TransactionReceipt) -> Result<TxOutcome, LedgerError> {
    if !r.status() {
        return Err(LedgerError::Reverted {
            reason: format!("transaction {} was mined but reverted", r.transaction_hash),
            data: Bytes::new(),
        });
    }
    Ok(TxOutcome {
        hash: r.transaction_hash,
        block: r.block_number.unwrap_or_default(),
        gas_used: r.gas_used,
        logs: r.logs().iter().map(|l| l.inner.clone()).collect(),
        contract_address: r.contract_address,
    })
}

#[async_trait]
impl Ledger for RpcLedger {
    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn describe(&self) -> String {
        format!("JSON-RPC chain {} at {}", self.chain_id, self.url)
    }

    async fn call(&self, to: Address, data: Bytes) -> Result<Bytes, LedgerError> {
        let req = TransactionRequest::default().with_to(to).with_input(data);
        // Mined state only: without a block tag some nodes (anvil) answer from the pending
        // block, which would count an unmined transfer as done.
        self.provider
            .call(req)
            .block(BlockNumberOrTag::Latest.into())
            .await
            .map_err(rpc_error)
    }

    async fn tend(&self, signer: &PrivateKeySigner) -> Result<(), LedgerError> {
        let from = signer.address();
        let state = self.state_for(from);
        // A send holding the signer looks after its transaction itself: never wait behind it.
        let Ok(mut st) = state.try_lock() else {
            return Ok(());
        };
        let out = st.pending.as_ref().map(|p| (p.hash, p.nonce));
        let looked = self
            .reconcile_locked(from, Some(signer), &mut st, false)
            .await;
        if out.is_some() && st.pending.is_none() {
            st.mined_untold = out;
        }
        match looked {
            Err(LedgerError::Pending { .. }) => Ok(()),
            r => r,
        }
    }

    async fn send(
        &self,
        signer: &PrivateKeySigner,
        tx: TxRequest,
    ) -> Result<TxOutcome, LedgerError> {
        let from = signer.address();
        let state = self.state_for(from);
        let mut st = state.lock().await;
        // The earlier transaction's hash is not this one's: say nothing was sent.
        let earlier = st
            .pending
            .as_ref()
            .map(|p| (p.hash, p.nonce))
            .or(st.mined_untold.take());
        self.reconcile_locked(from, Some(signer), &mut st, true)
            .await
            .map_err(|e| match e {
                LedgerError::Pending { hash, nonce } => LedgerError::Busy {
                    hash,
                    nonce,
                    cleared: false,
                },
                e => e,
            })?;
        if let Some((hash, nonce)) = earlier {
            // Mined just now: it may have done what this send is for (a batch submitted
            // while its sender thought it lost). Or its nonce went to another transaction of
            // this key, which may have. Nothing is sent; the caller reads the chain again first.
            return Err(LedgerError::Busy {
                hash,
                nonce,
                cleared: true,
            });
        }

        let nonce = match st.next_nonce {
            Some(n) => n,
            None => self
                .provider
                .get_transaction_count(from)
                .pending()
                .await
                .map_err(rpc_error)?,
        };
        let mut req = TransactionRequest::default()
            .with_from(from)
            .with_input(tx.data)
            .with_value(tx.value)
            .with_nonce(nonce)
            .with_chain_id(self.chain_id);
        req.to = Some(match tx.to {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        });
        let gas = self
            .provider
            .estimate_gas(req.clone())
            .await
            .map_err(rpc_error)?;
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(rpc_error)?;
        // Headroom over the estimate: state can move between estimate and inclusion.
        let req = req
            .with_gas_limit(gas + gas / 5)
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let wallet = EthereumWallet::from(signer.clone());
        let envelope = req
            .clone()
            .build(&wallet)
            .await
            .map_err(|e| LedgerError::Invalid(format!("building the transaction: {e}")))?;
        let hash = *envelope.tx_hash();
        let raw = alloy_eips::eip2718::Encodable2718::encoded_2718(&envelope);

        // From here on the node may have it: remember it before sending.
        st.pending = Some(Pending {
            hash,
            nonce,
            raw: raw.clone().into(),
            sent: vec![hash],
            first_cap: req.max_fee_per_gas.unwrap_or_default(),
            request: req,
            signed_at: std::time::Instant::now(),
            passed_at: None,
        });
        match self.provider.send_raw_transaction(&raw).await {
            Ok(_) => {}
            Err(e) if e.is_error_resp() => {
                // The node answered and refused it: it is not out there.
                st.pending = None;
                st.next_nonce = None;
                return Err(rpc_error(e));
            }
            Err(_) => return Err(LedgerError::Pending { hash, nonce }),
        }
        st.next_nonce = Some(nonce + 1);
        // It is out: whatever goes wrong while waiting, the outcome is unknown, not a refusal.
        match self.wait_receipt(&[hash]).await {
            Ok(Some(r)) => {
                st.pending = None;
                outcome(r)
            }
            Ok(None) | Err(_) => Err(LedgerError::Pending { hash, nonce }),
        }
    }

    async fn head(&self) -> Result<BlockInfo, LedgerError> {
        let block = self.latest_block().await?;
        Ok(BlockInfo {
            number: block.header.number,
            timestamp: block.header.timestamp,
        })
    }

    async fn block_at(&self, number: u64) -> Result<Option<crate::BlockStamp>, LedgerError> {
        Ok(self
            .provider
            .get_block_by_number(number.into())
            .await
            .map_err(rpc_error)?
            .map(|b| crate::BlockStamp {
                number: b.header.number,
                hash: b.header.hash,
                timestamp: b.header.timestamp,
            }))
    }

    async fn balance(&self, who: Address) -> Result<U256, LedgerError> {
        self.provider.get_balance(who).await.map_err(rpc_error)
    }

    async fn logs(&self, filter: LogFilter) -> Result<Vec<LogRecord>, LedgerError> {
        let head = self.provider.get_block_number().await.map_err(rpc_error)?;
        let head = filter.to_block.map_or(head, |t| t.min(head));
        let mut out = Vec::new();
        let mut start = filter.from_block;
        let mut failures = 0;
        // This query's own smaller span after a failure (the shared one moves only on whole
        // windows: a short window near the head failing says nothing about spans).
        let mut narrowed: Option<u64> = None;
        // Nodes refuse ranges past their head and public ones cap the span: walk in windows.
        while start <= head {
            let shared = self.log_span.current(self.log_window);
            let span = narrowed.map_or(shared, |n| n.min(shared));
            let end = head.min(start.saturating_add(span - 1));
            let mut f = Filter::new().from_block(start).to_block(end);
            if let Some(a) = filter.address {
                f = f.address(a);
            }
            if let Some(t) = filter.topic0 {
                f = f.event_signature(t);
            }
            if let Some(t) = filter.topic1 {
                f = f.topic1(t);
            }
            if let Some(t) = filter.topic2 {
                f = f.topic2(t);
            }
            let logs = match self.provider.get_logs(&f).await {
                Ok(logs) => logs,
                Err(e) => {
                    // A span the endpoint cannot serve in time (or refuses as too large) is
                    // tried smaller, a few times per call; a whole window that failed also
                    // shrinks the span later queries start from, so a slow endpoint is walked
                    // in windows it answers instead of the same window failing forever. An
                    // HTTP status that is not about the span (a rate limit, a gateway down) is
                    // returned as it is.
                    let tried = end - start + 1;
                    failures += 1;
                    if tried == 1 || failures > MAX_LOG_SPLITS || !about_the_span(&e) {
                        return Err(rpc_error(e));
                    }
                    tracing::debug!(start, end, error = %e, "eth_getLogs failed: trying a smaller span");
                    narrowed = Some((tried / 2).max(1));
                    if tried == shared {
                        self.log_span.failed(tried);
                    }
                    continue;
                }
            };
            self.log_span.succeeded(self.log_window);
            out.extend(logs.into_iter().map(|l| LogRecord {
                block: l.block_number.unwrap_or_default(),
                tx: l.transaction_hash.unwrap_or_default(),
                index: l.log_index.unwrap_or_default(),
                log: l.inner,
            }));
            start = end + 1;
        }
        Ok(out)
    }

    async fn state_root(&self) -> Result<B256, LedgerError> {
        let block = self.latest_block().await?;
        Ok(block.header.state_root)
    }

    async fn code(&self, who: Address) -> Result<Bytes, LedgerError> {
        self.provider.get_code_at(who).await.map_err(rpc_error)
    }

    async fn dev_set_code(&self, who: Address, code: Bytes) -> Result<(), LedgerError> {
        self.dev_rpc("anvil_setCode", serde_json::json!([who, code]))
            .await
            .map(drop)
    }

    async fn advance_time(&self, secs: u64) -> Result<(), LedgerError> {
        self.dev_rpc("evm_increaseTime", serde_json::json!([secs]))
            .await?;
        self.dev_rpc("evm_mine", serde_json::json!([])).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain endpoint that accepts connections and never answers (hung, or hostile): the
    /// call fails within the request timeout instead of holding its caller forever.
    #[tokio::test]
    async fn an_endpoint_that_never_answers_fails_the_call_instead_of_holding_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            // Every connection accepted and kept open, nothing read, nothing answered.
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        let started = std::time::Instant::now();
        let connected = tokio::time::timeout(
            Duration::from_secs(20),
            RpcLedger::connect_with_timeout(
                &url,
                Duration::from_secs(1),
                Duration::from_millis(300),
            ),
        )
        .await
        .expect("the call must not hang on an endpoint that never answers");
        let Err(e) = connected else {
            panic!("nothing answered, yet the connect succeeded")
        };
        assert!(matches!(e, LedgerError::Rpc(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    }

    /// A log query shrinks its span on what a span can cause (a JSON-RPC range error, a
    /// timeout, a proxy's 408/413/504/524) and not on a rate limit or a gateway that is down.
    #[test]
    fn only_failures_a_span_can_cause_shrink_it() {
        use alloy_transport::TransportErrorKind as K;
        let http = |status| -> RpcErr { K::http_error(status, "<html>".into()) };
        for status in [408, 413, 504, 524] {
            assert!(about_the_span(&http(status)), "{status}");
        }
        for status in [429, 502, 503, 401] {
            assert!(!about_the_span(&http(status)), "{status}");
        }
        let range: RpcErr = alloy_json_rpc::RpcError::ErrorResp(alloy_json_rpc::ErrorPayload {
            code: -32005,
            message: "query returned more than 10000 results".into(),
            data: None,
        });
        assert!(about_the_span(&range));
        assert!(about_the_span(&K::custom_str("operation timed out")));
    }
}
