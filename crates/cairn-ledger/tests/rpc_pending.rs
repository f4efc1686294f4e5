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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmined_transactions_are_tracked_not_resent() {
    let Some(anvil) = Anvil::for_test("unmined_transactions_are_tracked_not_resent", 31337) else {
        return;
    };
    let url = anvil.url().to_owned();
    let ledger = RpcLedger::connect(&url, Duration::from_millis(500))
        .await
        .unwrap();
    let alice = dev_signer(0);
    let bob = dev_signer(1).address();
    ledger
        .dev_set_balance(alice.address(), U256::from(10u128.pow(20)))
        .await
        .unwrap();
    ledger.send(&alice, pay(bob)).await.unwrap();

    ledger
        .dev_rpc("evm_setAutomine", json!([false]))
        .await
        .unwrap();
    let (hash, nonce) = match ledger.send(&alice, pay(bob)).await {
        Err(LedgerError::Pending { hash, nonce }) => (hash, nonce),
        other => panic!("expected pending, got {other:?}"),
    };
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
    let count = ledger
        .dev_rpc(
            "eth_getTransactionCount",
            json!([alice.address(), "latest"]),
        )
        .await
        .unwrap();
    assert_eq!(count, "0x3");
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
