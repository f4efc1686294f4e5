//! The embedded ledger survives `kill -9`: a child process (this test binary, re-run in writer
//! mode) mines token transfers and prints the head and state root after each one; the parent
//! kills it (parked at a known head, then mid-stream), reopens the store, finds every reported
//! block with its root, and sends a transaction on the reopened chain.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use cairn_ledger::deploy::{TOKEN_UNIT, deploy};
use cairn_ledger::{Chain, DeployParams, Deployment, EmbeddedLedger, Ledger, dev_signer};

const CHAIN_ID: u64 = 31337;

fn genesis() -> Vec<(Address, U256)> {
    (0..4)
        .map(|i| (dev_signer(i).address(), U256::from(10u128.pow(22))))
        .collect()
}

/// Deploys, then mines one token transfer per block and prints `mined <head> <root>` after
/// each; with `park` it stops after block `park` and waits to be killed.
async fn writer(path: &str, park: Option<u64>) {
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
    let chain = Chain::new(ledger.clone(), d.clone()).unwrap();
    chain
        .mint(&gov, gov.address(), U256::from(1_000_000 * TOKEN_UNIT))
        .await
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "deployment {}", serde_json::to_string(&d).unwrap()).unwrap();
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
        if park.is_some_and(|p| head.number >= p) {
            writeln!(out, "parked").unwrap();
            out.flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        // Leave the parent a quiet moment to kill us between blocks as well as during one.
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the writer reported before it was killed.
struct Reported {
    deployment: Deployment,
    roots: BTreeMap<u64, B256>,
}

/// Runs the writer on `path` until it reports block `until` (parked there when `park`), then
/// SIGKILLs it: no destructor, no flush.
fn run_writer_and_kill(path: &Path, until: u64, park: bool) -> Reported {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "kill_9_loses_no_mined_block",
        "--nocapture",
        "--quiet",
    ])
    .env("CAIRN_LEDGER_WRITER", path)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if park {
        cmd.env("CAIRN_LEDGER_PARK", until.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut deployment = None;
    let mut roots = BTreeMap::new();
    while let Some(Ok(line)) = lines.next() {
        if let Some(d) = line.strip_prefix("deployment ") {
            deployment = Some(serde_json::from_str(d).unwrap());
        } else if let Some(rest) = line.strip_prefix("mined ") {
            let (n, root) = rest.split_once(' ').unwrap();
            roots.insert(n.parse().unwrap(), root.parse().unwrap());
        } else if line == "parked" {
            break;
        }
        if !park && roots.keys().last() >= Some(&until) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever the writer flushed before it died counts as reported too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("mined ") {
            let (n, root) = rest.split_once(' ').unwrap();
            roots.insert(n.parse().unwrap(), root.parse().unwrap());
        }
    }
    Reported {
        deployment: deployment.expect("the writer deployed"),
        roots,
    }
}

/// The reopened ledger accepts a new transaction, and it survives another reopen.
async fn keeps_working(path: &Path, d: &Deployment) {
    let ledger: Arc<dyn Ledger> = Arc::new(EmbeddedLedger::open(path, CHAIN_ID, &[]).unwrap());
    let head = ledger.head().await.unwrap().number;
    let chain = Chain::new(ledger.clone(), d.clone()).unwrap();
    let to = dev_signer(3).address();
    let was = chain.token_balance(to).await.unwrap();
    chain
        .transfer(&dev_signer(0), to, U256::from(777u64))
        .await
        .unwrap();
    assert_eq!(ledger.head().await.unwrap().number, head + 1);
    let root = ledger.state_root().await.unwrap();
    drop((chain, ledger));
    let again: Arc<dyn Ledger> = Arc::new(EmbeddedLedger::open(path, CHAIN_ID, &[]).unwrap());
    assert_eq!(again.head().await.unwrap().number, head + 1);
    assert_eq!(again.state_root().await.unwrap(), root);
    let chain = Chain::new(again, d.clone()).unwrap();
    assert_eq!(
        chain.token_balance(to).await.unwrap(),
        was + U256::from(777u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_mined_block() {
    if let Ok(path) = std::env::var("CAIRN_LEDGER_WRITER") {
        let park = std::env::var("CAIRN_LEDGER_PARK")
            .ok()
            .map(|p| p.parse().unwrap());
        writer(&path, park).await;
        return;
    }
    // Killed at a known head (between blocks): exactly that head, with exactly its root.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parked.sqlite");
    let r = run_writer_and_kill(&path, 30, true);
    let (&reported, &root_then) = r.roots.last_key_value().unwrap();
    assert_eq!(reported, 30);
    let reopened = EmbeddedLedger::open(&path, CHAIN_ID, &[]).unwrap();
    assert_eq!(reopened.head().await.unwrap().number, reported);
    assert_eq!(reopened.state_root().await.unwrap(), root_then);
    drop(reopened);
    keeps_working(&path, &r.deployment).await;

    // Killed mid-stream (perhaps during a block): every reported block is there with the root
    // reported for it; at most the one being mined when the kill landed is beyond them.
    let path = dir.path().join("streaming.sqlite");
    let r = run_writer_and_kill(&path, 40, false);
    let (&reported, _) = r.roots.last_key_value().unwrap();
    let reopened = EmbeddedLedger::open(&path, CHAIN_ID, &[]).unwrap();
    let head = reopened.head().await.unwrap().number;
    eprintln!("reported {reported}, reopened head {head}");
    assert!(
        head == reported || head == reported + 1,
        "block {reported} was reported mined; the reopened head is {head}"
    );
    if let Some(root) = r.roots.get(&head) {
        assert_eq!(reopened.state_root().await.unwrap(), *root);
    }
    drop(reopened);
    keeps_working(&path, &r.deployment).await;
    assert!(
        EmbeddedLedger::open(&path, 1, &[]).is_err(),
        "chain id mismatch accepted"
    );
}
