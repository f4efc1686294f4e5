//! The embedded ledger survives `kill -9`: a child process (this test binary, re-run in writer
//! mode) mines token transfers and prints the head and state root after each one; the parent
//! kills it mid-stream and reopens the store: the head it reported is there, with the same root.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use cairn_ledger::deploy::{TOKEN_UNIT, deploy};
use cairn_ledger::{Chain, DeployParams, EmbeddedLedger, Ledger, dev_signer};

const CHAIN_ID: u64 = 31337;

fn genesis() -> Vec<(Address, U256)> {
    (0..4)
        .map(|i| (dev_signer(i).address(), U256::from(10u128.pow(22))))
        .collect()
}

async fn writer(path: &str) {
    let ledger: Arc<dyn Ledger> =
        Arc::new(EmbeddedLedger::open(path.as_ref(), CHAIN_ID, &genesis()).unwrap());
    let gov = dev_signer(0);
    let d = deploy(
        ledger.as_ref(),
        &gov,
        &DeployParams::devnet(gov.address(), dev_signer(1).address()),
    )
    .await
    .unwrap();
    let chain = Chain::new(ledger.clone(), d).unwrap();
    chain
        .mint(&gov, gov.address(), U256::from(1_000_000 * TOKEN_UNIT))
        .await
        .unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        chain
            .transfer(
                &gov,
                dev_signer(2 + (i as usize % 2)).address(),
                U256::from(i + 1),
            )
            .await
            .unwrap();
        let head = ledger.head().await.unwrap();
        let root = ledger.state_root().await.unwrap();
        writeln!(out, "mined {} {root}", head.number).unwrap();
        out.flush().unwrap();
        // Leave the parent a quiet moment to kill us between blocks as well as during one.
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_mined_block() {
    if let Ok(path) = std::env::var("CAIRN_LEDGER_WRITER") {
        writer(&path).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.sqlite");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_loses_no_mined_block",
            "--nocapture",
            "--quiet",
        ])
        .env("CAIRN_LEDGER_WRITER", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last: Option<(u64, B256)> = None;
    while let Some(Ok(line)) = lines.next() {
        let Some(rest) = line.strip_prefix("mined ") else {
            continue;
        };
        let (n, root) = rest.split_once(' ').unwrap();
        last = Some((n.parse().unwrap(), root.parse().unwrap()));
        if last.unwrap().0 >= 40 {
            break;
        }
    }
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    let (reported, root_then) = last.expect("the writer mined blocks");

    let reopened = EmbeddedLedger::open(&path, CHAIN_ID, &[]).unwrap();
    let head = reopened.head().await.unwrap().number;
    assert!(
        head >= reported,
        "block {reported} was reported mined but is gone (head {head})"
    );
    eprintln!("reported {reported}, reopened head {head}");
    if head == reported {
        assert_eq!(reopened.state_root().await.unwrap(), root_then);
    }
    // Whatever the head, the reopened chain keeps working and its root is stable across reopen.
    let root_now = reopened.state_root().await.unwrap();
    drop(reopened);
    let again = EmbeddedLedger::open(&path, CHAIN_ID, &[]).unwrap();
    assert_eq!(again.state_root().await.unwrap(), root_now);
    assert!(
        EmbeddedLedger::open(&path, 1, &[]).is_err(),
        "chain id mismatch accepted"
    );
}
