//! A transaction sent to a JSON-RPC chain but not mined within the wait is reported as pending,
//! tracked, and never re-sent: later sends from that signer are refused until it is mined, then go
//! out with the next nonce. Uses anvil with automine off.

use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use cairn_ledger::anvil::Anvil;
use cairn_ledger::{Ledger, LedgerError, RpcLedger, TxRequest, dev_signer};
use serde_json::json;

fn pay(to: Address) -> TxRequest {
    TxRequest {
        to: Some(to),
        data: Default::default(),
        value: U256::from(1u64),
    }
}

/// How many transactions of `who` are mined, as the node spells it (`"0x3"`).
async fn mined_count(ledger: &RpcLedger, who: Address) -> serde_json::Value {
    ledger
        .dev_rpc("eth_getTransactionCount", json!([who, "latest"]))
        .await
        .unwrap()
}

/// Dev account 0 funded and one payment of it to account 1 mined: (its signer, account 1).
async fn funded_with_one_send(
    ledger: &RpcLedger,
) -> (alloy_signer_local::PrivateKeySigner, Address) {
    let alice = dev_signer(0);
    let bob = dev_signer(1).address();
    ledger
        .dev_set_balance(alice.address(), U256::from(10u128.pow(20)))
        .await
        .unwrap();
    ledger.send(&alice, pay(bob)).await.unwrap();
    (alice, bob)
}

/// Dev account 0 funded, one payment mined, automine off, and a second payment sent and left
/// pending: (its signer, the payee, the pending transaction's hash and nonce).
async fn left_pending(
    ledger: &RpcLedger,
) -> (alloy_signer_local::PrivateKeySigner, Address, B256, u64) {
    let (alice, bob) = funded_with_one_send(ledger).await;
    ledger
        .dev_rpc("evm_setAutomine", json!([false]))
        .await
        .unwrap();
    match ledger.send(&alice, pay(bob)).await {
        Err(LedgerError::Pending { hash, nonce }) => (alice, bob, hash, nonce),
        other => panic!("expected pending, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmined_transactions_are_tracked_not_resent() {
    let Some(anvil) = Anvil::for_test("unmined_transactions_are_tracked_not_resent", 31337) else {
        return;
    };
    let ledger = RpcLedger::connect(anvil.url(), Duration::from_millis(500))
        .await
        .unwrap();
    let (alice, bob, hash, nonce) = left_pending(&ledger).await;
    assert_eq!(nonce, 1);
    // The next send from alice is refused without sending anything, naming the earlier one
    // (not as if it were this send's own transaction).
    match ledger.send(&alice, pay(bob)).await {
        Err(LedgerError::Busy { hash: h, .. }) => assert_eq!(h, hash),
        other => panic!("expected busy behind the same pending transaction, got {other:?}"),
    }
    let pool = ledger.dev_rpc("txpool_status", json!([])).await.unwrap();
    assert_eq!(pool["pending"], "0x1", "a transaction was re-sent: {pool}");

    // Once mined, alice goes on with the next nonce.
    ledger
        .dev_rpc("evm_setAutomine", json!([true]))
        .await
        .unwrap();
    ledger.dev_rpc("evm_mine", json!([])).await.unwrap();
    ledger.reconcile(alice.address()).await.unwrap();
    ledger.send(&alice, pay(bob)).await.unwrap();
    let count = mined_count(&ledger, alice.address()).await;
    assert_eq!(count, "0x3");
}

/// The contracts deployed through `ledger` by dev account 0, then seven token mints to account
/// 1, one per block (seven `Transfer` logs).
async fn deployed_with_seven_mints(
    ledger: RpcLedger,
) -> (std::sync::Arc<dyn Ledger>, cairn_ledger::Deployment) {
    let gov = dev_signer(0);
    ledger
        .dev_set_balance(gov.address(), U256::from(10u128.pow(20)))
        .await
        .unwrap();
    let ledger: std::sync::Arc<dyn Ledger> = std::sync::Arc::new(ledger);
    let d = cairn_ledger::deploy::deploy(
        ledger.as_ref(),
        &gov,
        &cairn_ledger::DeployParams::devnet(gov.address(), gov.address()),
    )
    .await
    .unwrap();
    let chain = cairn_ledger::Chain::new(ledger.clone(), d.clone()).unwrap();
    for i in 0..7u64 {
        chain
            .mint(&gov, dev_signer(1).address(), U256::from(i + 1))
            .await
            .unwrap();
    }
    (ledger, d)
}

/// Log queries walk the chain in windows (public endpoints cap `eth_getLogs` spans) and a range
/// starting past the head is simply empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_read_in_windows() {
    let Some(anvil) = Anvil::for_test("logs_are_read_in_windows", 31337) else {
        return;
    };
    let ledger = RpcLedger::connect(anvil.url(), Duration::from_secs(30))
        .await
        .unwrap()
        .with_log_window(2);
    let (ledger, d) = deployed_with_seven_mints(ledger).await;
    let transfer = alloy_primitives::keccak256("Transfer(address,address,uint256)");
    let logs = ledger
        .logs(cairn_ledger::LogFilter {
            address: Some(d.token),
            topic0: Some(transfer),
            from_block: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logs.len(), 7);
    assert!(logs.windows(2).all(|w| w[0].block < w[1].block));
    let head = ledger.head().await.unwrap().number;
    let none = ledger
        .logs(cairn_ledger::LogFilter {
            from_block: head + 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    // Topic and block-range filters reach the node: mints come from the zero address, so
    // topic1 = 0 keeps all seven, topic2 = someone else keeps none, and a range of the first
    // three mint blocks keeps three.
    let by = |topic1: Option<B256>, topic2: Option<B256>, to_block: Option<u64>| {
        let ledger = ledger.clone();
        let token = d.token;
        let first = logs[0].block;
        async move {
            ledger
                .logs(cairn_ledger::LogFilter {
                    address: Some(token),
                    topic0: Some(transfer),
                    topic1,
                    topic2,
                    from_block: first,
                    to_block,
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(by(Some(B256::ZERO), None, None).await.len(), 7);
    let to = dev_signer(1).address().into_word();
    assert_eq!(by(None, Some(to), None).await.len(), 7);
    assert!(by(None, Some(B256::repeat_byte(1)), None).await.is_empty());
    assert_eq!(by(None, None, Some(logs[2].block)).await.len(), 3);
    // One mint per block: each is its block's first log.
    assert!(logs.iter().all(|l| l.index == 0));
}

/// What the proxy does with one request.
#[derive(Clone, Copy, PartialEq)]
enum Spoil {
    /// Passes it on and answers.
    Pass,
    /// Passes it on, then holds the answer past the client's timeout: the call lands, the
    /// client cannot know.
    AnsweredLate,
    /// Never passes it on: the call is lost on the way (or the endpoint hangs on it).
    Lost,
}

/// A JSON-RPC proxy in front of `upstream` that spoils each request as `decide` says given its
/// body.
async fn spoiling_proxy(
    upstream: String,
    decide: impl Fn(&str) -> Spoil + Send + Sync + 'static,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let decide = std::sync::Arc::new(decide);
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (upstream, decide, http) = (upstream.clone(), decide.clone(), http.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then as many body bytes as it announces.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    let spoil = decide(&String::from_utf8_lossy(&body));
                    if spoil == Spoil::Lost {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let answer = http
                        .post(&upstream)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    if spoil == Spoil::AnsweredLate {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    if conn.write_all(head.as_bytes()).await.is_err()
                        || conn.write_all(&answer).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Spoils the second `eth_sendRawTransaction` as `second` says.
fn second_send(second: Spoil) -> impl Fn(&str) -> Spoil + Send + Sync + 'static {
    let sends = std::sync::atomic::AtomicUsize::new(0);
    move |body| {
        if body.contains("eth_sendRawTransaction")
            && sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1
        {
            second
        } else {
            Spoil::Pass
        }
    }
}

/// The chain endpoint is slow or drops a send: the call gives up within the request timeout as
/// pending, and the signer goes on without a clashing nonce or a second transaction, whether
/// the send landed (its answer came too late) or was lost on the way (the same signed bytes
/// go out again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_off_by_the_timeout_neither_clashes_nor_doubles() {
    for second in [Spoil::AnsweredLate, Spoil::Lost] {
        let Some(anvil) = Anvil::for_test("a_send_cut_off_by_the_timeout", 31337) else {
            return;
        };
        let url = spoiling_proxy(anvil.url().to_owned(), second_send(second)).await;
        let ledger = RpcLedger::connect_with_timeout(
            &url,
            Duration::from_secs(5),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
        // One send answered: the signer's count is now this process's own.
        let (alice, bob) = funded_with_one_send(&ledger).await;
        let started = std::time::Instant::now();
        let (hash, nonce) = match ledger.send(&alice, pay(bob)).await {
            Err(LedgerError::Pending { hash, nonce }) => (hash, nonce),
            other => panic!("expected pending, got {other:?}"),
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        // The next send settles the earlier one (sent again as the same bytes if it was lost)
        // and sends nothing: the earlier one may have done what it was for. The one after goes
        // out with the next nonce.
        match ledger.send(&alice, pay(bob)).await {
            Err(LedgerError::Busy { hash: h, .. }) => assert_eq!(h, hash),
            other => panic!("expected busy behind the settled one, got {other:?}"),
        }
        let next = ledger.send(&alice, pay(bob)).await.unwrap();
        assert_ne!(next.hash, hash);
        let count = mined_count(&ledger, alice.address()).await;
        assert_eq!(
            count,
            json!(format!("{:#x}", nonce + 2)),
            "one transaction each"
        );
        let earlier = ledger
            .dev_rpc("eth_getTransactionReceipt", json!([hash]))
            .await
            .unwrap();
        assert_eq!(earlier["status"], "0x1", "the cut-off send was mined once");
    }
}

/// A pending transaction whose nonce another transaction of the same key took (the key used
/// from elsewhere, or a node that dropped ours) can never be mined: its signer drops it and
/// goes on, instead of refusing every send after it until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_transaction_whose_nonce_was_taken_does_not_block_its_signer() {
    let Some(anvil) = Anvil::for_test("a_pending_transaction_whose_nonce_was_taken", 31337) else {
        return;
    };
    let ledger = RpcLedger::connect(anvil.url(), Duration::from_millis(500))
        .await
        .unwrap();
    let (alice, bob, hash, nonce) = left_pending(&ledger).await;
    // The node forgets it; the same key, used elsewhere, mines another with that nonce.
    ledger
        .dev_rpc("anvil_dropTransaction", json!([hash]))
        .await
        .unwrap();
    ledger
        .dev_rpc("evm_setAutomine", json!([true]))
        .await
        .unwrap();
    let elsewhere = RpcLedger::connect(anvil.url(), Duration::from_millis(500))
        .await
        .unwrap();
    elsewhere
        .send(&alice, pay(Address::repeat_byte(9)))
        .await
        .unwrap();
    assert_eq!(
        mined_count(&ledger, alice.address()).await,
        json!(format!("{:#x}", nonce + 1))
    );
    // Busy while the chain is seen past its nonce only once, and once more when it drops it
    // (nothing sent: the other transaction may have done what this send is for), then on with
    // the chain's next nonce.
    for _ in 0..2 {
        match ledger.send(&alice, pay(bob)).await {
            Err(LedgerError::Busy { hash: h, .. }) => assert_eq!(h, hash),
            other => panic!("expected busy behind the dropped one, got {other:?}"),
        }
    }
    ledger.send(&alice, pay(bob)).await.unwrap();
    assert_eq!(
        mined_count(&ledger, alice.address()).await,
        json!(format!("{:#x}", nonce + 2))
    );
    let never = ledger
        .dev_rpc("eth_getTransactionReceipt", json!([hash]))
        .await
        .unwrap();
    assert!(never.is_null(), "{never}");
}

/// A pending transaction the base fee priced out (it rose past its cap, and stays there) is
/// signed again with the same nonce and the fees the chain asks, instead of its signer
/// answering busy for as long as the fee stays up; the payment is made once. (One priced as the
/// chain asks is never replaced: see `unmined_transactions_are_tracked_not_resent`, whose busy
/// answers name the first transaction.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_transaction_under_a_risen_base_fee_goes_out_again_with_higher_fees() {
    let Some(anvil) = Anvil::for_test("a_pending_transaction_under_a_risen_base_fee", 31337) else {
        return;
    };
    let ledger = RpcLedger::connect(anvil.url(), Duration::from_millis(500))
        .await
        .unwrap();
    let (alice, bob, hash, nonce) = left_pending(&ledger).await;
    let paid_before = ledger.balance(bob).await.unwrap();
    let miner = pricing_out(&anvil, &ledger, hash).await;
    let mut tries = 0;
    loop {
        match ledger.send(&alice, pay(bob)).await {
            Ok(_) => break,
            // Busy behind the pending one; pending, the last send on a slow machine.
            Err(LedgerError::Busy { .. } | LedgerError::Pending { .. }) if tries < 8 => tries += 1,
            other => panic!("still refused after {tries} tries: {other:?}"),
        }
    }
    assert!(!miner.is_finished(), "the miner stopped: {:?}", miner.await);
    miner.abort();
    ledger.reconcile(alice.address()).await.unwrap();
    assert_eq!(
        mined_count(&ledger, alice.address()).await,
        json!(format!("{:#x}", nonce + 2)),
        "the pending payment (replaced) and the last one"
    );
    never_mined(&ledger, hash).await;
    assert_eq!(
        ledger.balance(bob).await.unwrap(),
        paid_before + U256::from(2u8),
        "each payment made once"
    );
}

/// Asserts that transaction `hash` (a priced-out one, replaced) has no receipt.
async fn never_mined(ledger: &RpcLedger, hash: B256) {
    let receipt = ledger
        .dev_rpc("eth_getTransactionReceipt", json!([hash]))
        .await
        .unwrap();
    assert!(
        receipt.is_null(),
        "the priced-out one was never mined: {receipt}"
    );
}

/// Mines a block every 100 ms, each with a base fee three times the cap of pending transaction
/// `hash` (what the chain then asks stays under the bump's limit of 8 times), until aborted.
async fn pricing_out(anvil: &Anvil, ledger: &RpcLedger, hash: B256) -> tokio::task::JoinHandle<()> {
    let sent = ledger
        .dev_rpc("eth_getTransactionByHash", json!([hash]))
        .await
        .unwrap();
    let cap = u128::from_str_radix(
        sent["maxFeePerGas"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let high = cap * 3;
    let chain = RpcLedger::connect(anvil.url(), Duration::from_millis(500))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            chain
                .dev_rpc(
                    "anvil_setNextBlockBaseFeePerGas",
                    json!([format!("{high:#x}")]),
                )
                .await
                .unwrap();
            chain.dev_rpc("evm_mine", json!([])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A transaction the base fee priced out while its signer has nothing more to send is
/// re-priced by its owner's rounds ([`Ledger::tend`]: a look each, never a wait), not left
/// until a next send that may never come (a facilitator's last transfer of the day, its
/// authorization expiring meanwhile). It is mined once; the first hash never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priced_out_transaction_moves_on_its_owners_rounds_without_another_send() {
    let Some(anvil) = Anvil::for_test("a_priced_out_transaction_moves_on_rounds", 31337) else {
        return;
    };
    let ledger = RpcLedger::connect(anvil.url(), Duration::from_secs(2))
        .await
        .unwrap();
    let (alice, bob, hash, nonce) = left_pending(&ledger).await;
    let paid_before = ledger.balance(bob).await.unwrap();
    let miner = pricing_out(&anvil, &ledger, hash).await;
    let mined = json!(format!("{:#x}", nonce + 1));
    let mut rounds = 0;
    while mined_count(&ledger, alice.address()).await != mined {
        assert!(
            rounds < 150,
            "still unmined after {rounds} rounds: nothing re-priced it"
        );
        let t = std::time::Instant::now();
        ledger.tend(&alice).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "a round looks, it does not wait for the receipt: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        rounds += 1;
    }
    assert!(!miner.is_finished(), "the miner stopped: {:?}", miner.await);
    miner.abort();
    never_mined(&ledger, hash).await;
    assert_eq!(
        ledger.balance(bob).await.unwrap(),
        paid_before + U256::from(1u8),
        "the payment made once"
    );
    // A round saw it mined: the next send is told so (busy: it reads the chain again first,
    // as after a send that saw it mined), and the one after goes out.
    ledger
        .dev_rpc("evm_setAutomine", json!([true]))
        .await
        .unwrap();
    ledger.tend(&alice).await.unwrap();
    match ledger.send(&alice, pay(bob)).await {
        Err(LedgerError::Busy { nonce: n, .. }) => assert_eq!(n, nonce),
        other => panic!("expected busy for the transaction a round saw mined, got {other:?}"),
    }
    ledger.send(&alice, pay(bob)).await.unwrap();
    assert_eq!(
        ledger.balance(bob).await.unwrap(),
        paid_before + U256::from(2u8)
    );
}

/// The blocks an `eth_getLogs` request spans (0 for any other request).
fn logs_span(body: &str) -> u64 {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return 0;
    };
    if v["method"] != "eth_getLogs" {
        return 0;
    }
    let block = |k: &str| {
        let s = v["params"][0][k].as_str().unwrap_or("0x0");
        u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
    };
    block("toBlock") - block("fromBlock") + 1
}

/// An endpoint that cannot answer a wide `eth_getLogs` span in time (it hangs on one of 4
/// blocks or more) is walked in spans it answers: the query returns every log after a couple
/// of timeouts instead of failing on the same window on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_queries_shrink_a_span_the_endpoint_cannot_answer() {
    let Some(anvil) = Anvil::for_test("log_queries_shrink_a_span", 31337) else {
        return;
    };
    let direct = RpcLedger::connect(anvil.url(), Duration::from_secs(30))
        .await
        .unwrap();
    let (direct, d) = deployed_with_seven_mints(direct).await;
    let head = direct.head().await.unwrap().number;
    assert!(head >= 8, "{head} blocks: too few for two failed spans");
    let url = spoiling_proxy(anvil.url().to_owned(), |body| {
        if logs_span(body) >= 4 {
            Spoil::Lost
        } else {
            Spoil::Pass
        }
    })
    .await;
    let slow =
        RpcLedger::connect_with_timeout(&url, Duration::from_secs(5), Duration::from_secs(1))
            .await
            .unwrap()
            .with_log_window(8);
    let transfers = cairn_ledger::LogFilter {
        address: Some(d.token),
        topic0: Some(alloy_primitives::keccak256(
            "Transfer(address,address,uint256)",
        )),
        from_block: 0,
        ..Default::default()
    };
    let at = |logs: Vec<cairn_ledger::LogRecord>| -> Vec<(u64, u64, B256)> {
        logs.iter().map(|l| (l.block, l.index, l.tx)).collect()
    };
    let logs = at(slow.logs(transfers.clone()).await.unwrap());
    assert_eq!(logs, at(direct.logs(transfers.clone()).await.unwrap()));
    assert_eq!(logs.len(), 7);
    // The smaller span is kept: the next query times out nowhere.
    let started = std::time::Instant::now();
    assert_eq!(slow.logs(transfers).await.unwrap().len(), 7);
    assert!(started.elapsed() < Duration::from_secs(1));
}
