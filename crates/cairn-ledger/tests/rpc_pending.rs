//! A transaction sent to a JSON-RPC chain but not mined within the wait is reported as pending,
//! tracked, and never re-sent: later sends from that signer are refused until it is mined, then go
//! out with the next nonce. Uses anvil with automine off.

use std::time::Duration;

use alloy_primitives::{Address, U256};
use cairn_ledger::anvil::Anvil;
use cairn_ledger::{Ledger, LedgerError, RpcLedger, TxRequest, dev_signer};
use serde_json::{Value, json};

async fn rpc(url: &str, method: &str, params: Value) -> Value {
    reqwest::Client::new()
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["result"]
        .clone()
}

fn pay(to: Address) -> TxRequest {
    TxRequest {
        to: Some(to),
        data: Default::default(),
        value: U256::from(1u64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmined_transactions_are_tracked_not_resent() {
    let Some(anvil) = Anvil::from_env(31337).unwrap() else {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
            "CAIRN_ANVIL is required (scripts/npm-deps.sh installs it)"
        );
        eprintln!("SKIPPED: CAIRN_ANVIL not set");
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

    rpc(&url, "evm_setAutomine", json!([false])).await;
    let (hash, nonce) = match ledger.send(&alice, pay(bob)).await {
        Err(LedgerError::Pending { hash, nonce }) => (hash, nonce),
        other => panic!("expected pending, got {other:?}"),
    };
    assert_eq!(nonce, 1);
    // The next send from alice is refused without sending anything.
    match ledger.send(&alice, pay(bob)).await {
        Err(LedgerError::Pending { hash: h, .. }) => assert_eq!(h, hash),
        other => panic!("expected the same pending transaction, got {other:?}"),
    }
    let pool = rpc(&url, "txpool_status", json!([])).await;
    assert_eq!(pool["pending"], "0x1", "a transaction was re-sent: {pool}");

    // Once mined, alice goes on with the next nonce.
    rpc(&url, "evm_setAutomine", json!([true])).await;
    rpc(&url, "evm_mine", json!([])).await;
    ledger.reconcile(alice.address()).await.unwrap();
    ledger.send(&alice, pay(bob)).await.unwrap();
    let count = rpc(
        &url,
        "eth_getTransactionCount",
        json!([alice.address(), "latest"]),
    )
    .await;
    assert_eq!(count, "0x3");
}
