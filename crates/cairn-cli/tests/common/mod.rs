//! Starts real `cairn` processes on 127.0.0.1 with OS-assigned ports, and cleans up.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// A running `cairn` server process; killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    /// The inference node's URL (devnet and `node serve`).
    pub node_url: String,
    /// The chain's Ethereum JSON-RPC URL (devnet).
    pub rpc_url: String,
    /// The Oblivious HTTP relay's URL (devnet).
    pub relay_url: String,
    /// The explorer's URL (devnet).
    pub explorer_url: String,
    /// The chat entry's URL (devnet).
    pub entry_url: String,
    pub dir: tempfile::TempDir,
}

impl Server {
    /// `cairn devnet` in a fresh data dir, serving without payment (for tests about inference;
    /// `devnet_with` gives the paying default).
    pub fn devnet() -> Self {
        Self::devnet_with(&["--free"])
    }

    /// `cairn devnet` in a fresh data dir, with extra arguments.
    pub fn devnet_with(extra: &[&str]) -> Self {
        Self::devnet_resume(tempfile::tempdir().unwrap(), extra)
    }

    /// Any long-running `cairn` command; waits for a stdout line starting with `marker` and
    /// keeps its last word as `url`.
    pub fn command(args: &[&str], marker: &str) -> Self {
        Self::command_env(args, &[], marker)
    }

    /// [`Server::command`] with extra environment variables.
    pub fn command_env(args: &[&str], env: &[(&str, String)], marker: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(args, env, &[marker], dir)
    }

    /// `cairn node serve` against `hub`, with extra arguments.
    pub fn node(hub: &str, extra: &[&str]) -> Self {
        Self::node_resume(hub, tempfile::tempdir().unwrap(), extra)
    }

    /// `cairn node serve` on the state a killed node left in `dir` ([`Server::kill_9`]).
    pub fn node_resume(hub: &str, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let data = dir.path().join("node");
        let mut args = vec![
            "node",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--hub",
            hub,
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut s = Self::spawn(&args, &[], &["node:"], dir);
        s.node_url = s.url.clone();
        s
    }

    /// `cairn hub serve` against the given catalog and blob location.
    pub fn hub(catalog: &str, blobs: &str, env: &[(&str, String)]) -> Self {
        Self::hub_with(catalog, blobs, env, false)
    }

    /// Like [`Server::hub`], with the hub's log (stderr) kept in a file read by [`Server::log`].
    pub fn hub_logged(catalog: &str, blobs: &str, env: &[(&str, String)]) -> Self {
        Self::hub_with(catalog, blobs, env, true)
    }

    fn hub_with(catalog: &str, blobs: &str, env: &[(&str, String)], keep_log: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = keep_log.then(|| dir.path().join("stderr.log"));
        Self::spawn_with(
            BIN,
            &[
                "hub",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--catalog",
                catalog,
                "--blobs",
                blobs,
            ],
            env,
            &["hub:"],
            dir,
            log.as_deref(),
        )
    }

    /// What the process wrote to stderr so far (servers started with a kept log only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Another long-running program (`node script …`); waits for a line starting with `marker`.
    pub fn spawn_program(program: &str, args: &[String], marker: &str) -> Self {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn_with(
            program,
            &args,
            &[],
            &[marker],
            tempfile::tempdir().unwrap(),
            None,
        )
    }

    fn spawn(
        args: &[&str],
        env: &[(&str, String)],
        markers: &[&str],
        dir: tempfile::TempDir,
    ) -> Self {
        Self::spawn_with(BIN, args, env, markers, dir, None)
    }

    fn spawn_with(
        program: &str,
        args: &[&str],
        env: &[(&str, String)],
        markers: &[&str],
        dir: tempfile::TempDir,
        stderr_to: Option<&Path>,
    ) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(Stdio::piped());
        // A devnet publishes no language model and no file-type model unless the test asks
        // for one (`env` may).
        cmd.env("CAIRN_DEVNET_LLM", "none");
        cmd.env("CAIRN_DEVNET_MAGIKA", "none");
        cmd.env("CAIRN_DEVNET_MINILM", "none");
        match stderr_to {
            Some(p) => cmd.stderr(std::fs::File::create(p).unwrap()),
            None => cmd.stderr(Stdio::inherit()),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the server process");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(m) = wanted.iter().position(|m| line.starts_with(m.as_str())) {
                    let url = line.split_whitespace().last().unwrap().to_owned();
                    let _ = tx.send((m, url));
                }
            }
        });
        let mut urls = vec![String::new(); markers.len()];
        for _ in 0..markers.len() {
            let (m, url) = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("server printed its URL");
            urls[m] = url;
        }
        let node_url = urls.get(1).cloned().unwrap_or_default();
        let rpc_url = urls.get(2).cloned().unwrap_or_default();
        let relay_url = urls.get(3).cloned().unwrap_or_default();
        let explorer_url = urls.get(4).cloned().unwrap_or_default();
        let entry_url = urls.get(5).cloned().unwrap_or_default();
        Self {
            child,
            url: urls.swap_remove(0),
            node_url,
            rpc_url,
            relay_url,
            explorer_url,
            entry_url,
            dir,
        }
    }

    /// SIGKILLs the process (no clean shutdown) and hands back its data dir.
    pub fn kill_9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// `cairn devnet` on an existing data dir (`dir/data`), with extra arguments.
    pub fn devnet_resume(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let data = dir.path().join("data");
        let mut args = vec![
            "devnet",
            "--listen",
            "127.0.0.1:0",
            "--node-listen",
            "127.0.0.1:0",
            "--rpc-listen",
            "127.0.0.1:0",
            "--relay-listen",
            "127.0.0.1:0",
            "--explorer-listen",
            "127.0.0.1:0",
            "--entry-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Self::spawn(
            &args,
            &[],
            &[
                "  hub:",
                "  node:",
                "  chain rpc:",
                "  relay:",
                "  explorer:",
                "  entry:",
            ],
            dir,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI against `hub` with `key` as the key file.
pub fn cairn(hub: &str, key: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CAIRN_HUB", hub)
        .env("CAIRN_KEY_FILE", key)
        .output()
        .expect("run cairn")
}

pub fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "cairn failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn failure(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "cairn unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr.clone()).unwrap()
}

pub fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The path in environment variable `var` (set by scripts/test.sh), or `None` (loudly; a
/// failure when the services are required).
fn test_input(var: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                "{var} is not set but services are required (run scripts/test.sh)"
            );
            eprintln!("SKIPPED {test}: {var} not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// The test models directory built by scripts/test-deps.sh, or `None` (loudly).
pub fn models_dir(test: &str) -> Option<PathBuf> {
    test_input("CAIRN_TEST_MODELS", test)
}

/// The devnet's language model (SmolLM2-135M-Instruct GGUF, fetched by `scripts/llm-model.sh`).
pub fn llm_model(test: &str) -> Option<PathBuf> {
    test_input("CAIRN_LLM_MODEL", test)
}

/// Waits until `f` is true or panics after `secs`.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "condition not met in {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The repository's `examples/` dir.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `cairn` with `CAIRN_HUB` set.
pub fn run(hub: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CAIRN_HUB", hub)
        .output()
        .unwrap()
}

/// `cairn infer digits@1.0` with the example digit on `node`, writing `receipt{tag}.json` and
/// `out{tag}.safetensors` into `dir`; checks the label and returns (receipt, output) paths.
pub fn infer_digit(hub: &str, node: &str, dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    infer_digit_with(hub, node, dir, tag, &[])
}

/// [`infer_digit`] with `extra` arguments to `cairn infer`.
pub fn infer_digit_with(
    hub: &str,
    node: &str,
    dir: &Path,
    tag: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf) {
    let receipt = dir.join(format!("receipt{tag}.json"));
    let output = dir.join(format!("out{tag}.safetensors"));
    let input = examples().join("digit.json");
    let args = [
        "infer",
        "digits@1.0",
        "--input",
        input.to_str().unwrap(),
        "--node",
        node,
        "--receipt-out",
        receipt.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    // On a paying devnet, pay with its payer key.
    let payer = dir.join("data").join("chain").join("payer.key");
    let mut args = args.to_vec();
    if payer.exists() {
        args.extend_from_slice(&["--payer-key", payer.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    let out = stdout(&run(hub, &args));
    assert!(out.contains("label INT64 [1]: [2]"), "{out}");
    (receipt, output)
}

/// Runs `cairn args…`, which must succeed; its stdout.
pub fn cairn_ok(args: &[&str]) -> String {
    stdout(&Command::new(BIN).args(args).output().unwrap())
}

/// Runs a client script that must succeed and print one JSON line; that JSON.
pub fn json_report(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
}

/// A fresh key file funded with ETH on anvil; returns (path, address).
pub fn funded_key(anvil: &str, dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let addr = cairn_ok(&["key", "address", "--key", path.to_str().unwrap()])
        .trim()
        .to_owned();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let ledger =
                cairn_ledger::RpcLedger::connect(anvil, std::time::Duration::from_secs(30))
                    .await
                    .unwrap();
            ledger
                .dev_set_balance(
                    addr.parse().unwrap(),
                    alloy_primitives::U256::from(10u128.pow(22)),
                )
                .await
                .unwrap();
        });
    (path, addr)
}

/// Cairn's contracts deployed on a running anvil by a funded governor key, and the CLI against it.
pub struct AnvilChain {
    /// The JSON-RPC URL.
    pub url: String,
    /// The deployment file.
    pub dep: PathBuf,
    /// The governor's key file (deployer and token minter).
    pub gov: PathBuf,
}

impl AnvilChain {
    /// `cairn chain deploy` on `url` (with `extra` deploy options), files in `dir`.
    pub fn deploy(url: &str, dir: &Path, extra: &[&str]) -> Self {
        let (gov, _) = funded_key(url, dir, "gov.key");
        let dep = dir.join("deployment.json");
        let mut args = vec![
            "chain",
            "deploy",
            "--rpc",
            url,
            "--key",
            gov.to_str().unwrap(),
        ];
        args.extend_from_slice(&["--out", dep.to_str().unwrap(), "--approve-dev-evidence"]);
        args.extend_from_slice(extra);
        cairn_ok(&args);
        Self {
            url: url.to_owned(),
            dep,
            gov,
        }
    }

    /// `--rpc URL --deployment FILE`.
    pub fn args(&self) -> [&str; 4] {
        [
            "--rpc",
            &self.url,
            "--deployment",
            self.dep.to_str().unwrap(),
        ]
    }

    /// `cairn ARGS --rpc URL --deployment FILE`, which must succeed; its stdout.
    pub fn cairn(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend_from_slice(&self.args());
        cairn_ok(&all)
    }

    /// Mints `amount` token units to `to`.
    pub fn mint(&self, to: &str, amount: &str) {
        let gov = self.gov.to_str().unwrap();
        self.cairn(&[
            "chain", "mint", "--key", gov, "--to", to, "--amount", amount,
        ]);
    }

    /// Registers `key` as `role` with `stake` at `endpoint`.
    pub fn register(&self, key: &Path, role: &str, stake: &str, endpoint: &str) {
        let key = key.to_str().unwrap();
        self.cairn(&[
            "chain",
            "register",
            "--key",
            key,
            "--role",
            role,
            "--stake",
            stake,
            "--endpoint",
            endpoint,
        ]);
    }
}

/// GETs `url` and reads its JSON body.
pub fn get(url: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
}

/// One Ethereum JSON-RPC call to `url`; its result (panics on an error answer).
pub fn json_rpc(url: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v: serde_json::Value = rt.block_on(async {
        let r = reqwest::Client::new().post(url).json(&body).send().await;
        r.unwrap().json().await.unwrap()
    });
    assert!(v.get("error").is_none(), "{method}: {v}");
    v["result"].clone()
}

/// The receipt `id` once the node at `node` has stored it (waits up to `secs`).
pub fn receipt_when_stored(node: &str, id: &str, secs: u64) -> cairn_receipt::SignedReceipt {
    let url = format!("{node}/v1/receipts/{id}");
    let mut stored = serde_json::Value::Null;
    eventually(secs, || {
        stored = get(&url);
        stored.get("receipt").is_some()
    });
    serde_json::from_value(stored["receipt"].clone()).unwrap()
}

/// Each URL's `/metrics` as Prometheus' Python parser reads it: samples by URL.
pub fn scrape_metrics(urls: &[String]) -> serde_json::Map<String, serde_json::Value> {
    let py = std::env::var("CAIRN_PY").expect("CAIRN_PY (scripts/test.sh sets it)");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/metrics_parse.py");
    let v = json_report(std::process::Command::new(py).arg(script).args(urls));
    v.as_object().unwrap().clone()
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn metric_sum(samples: &serde_json::Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

/// Tokens a node may make for a streaming client between the client's leaving and the node
/// seeing it (written to a socket the client already closed): a handful at most.
pub const GONE_SLACK: u32 = 16;

/// A streaming client that POSTs `body` (JSON, with `headers`) to `url`, reads `events`
/// server-sent events of a 200 answer and leaves (its runtime, and with it the connection, is
/// gone on return). The receipt id the answer named, the answer's headers, and how many events
/// it read (at least `events`: a chunk may hold more).
pub fn leave_stream_after(
    url: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
    events: usize,
) -> (String, reqwest::header::HeaderMap, u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().post(url).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let head = resp.headers().clone();
        let id = head["cairn-receipt-id"].to_str().unwrap().to_owned();
        let mut seen = 0;
        while seen < events {
            let chunk = resp.chunk().await.unwrap().expect("the stream goes on");
            seen += chunk.windows(2).filter(|w| w == b"\n\n").count();
        }
        (id, head, seen as u32)
    })
}

/// Runs `tests/python/SCRIPT` with the test venv's Python (`CAIRN_PY`) and `args`; its stdout,
/// after checking it succeeded (stdout and stderr shown when not).
pub fn python_script(script: &str, args: &[&str]) -> String {
    let py = std::env::var("CAIRN_PY").expect("CAIRN_PY (scripts/test.sh sets it)");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(py).arg(path).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Runs a page test of the explorer's (`crates/cairn-explorer/web/test/SCRIPT`) in Debian's
/// Chromium against `explorer`, screenshots into `out`, with `extra` environment; its output,
/// asserting it passed. `None` (loudly) when the front-end packages are not installed.
pub fn browser_script(
    test: &str,
    script: &str,
    explorer: &str,
    out: &Path,
    extra: &[(&str, String)],
) -> Option<String> {
    let Ok(modules) = std::env::var("CAIRN_EXPLORER_MODULES") else {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
            "CAIRN_EXPLORER_MODULES is not set but services are required (run scripts/test.sh)"
        );
        eprintln!("SKIPPED {test}: CAIRN_EXPLORER_MODULES not set (scripts/test.sh)");
        return None;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cairn-explorer/web/test")
        .join(script);
    let mut cmd = Command::new("node");
    cmd.arg(path)
        .env("MODULES", &modules)
        .env("EXPLORER", explorer)
        .env("OUT", out)
        .env(
            "CHROMIUM",
            std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        );
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let run = cmd.output().unwrap();
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{printed}\nscreenshots in {}", out.display());
    assert!(
        run.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    Some(printed)
}

/// Runs a future to its end on a runtime of its own.
pub fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A read-only view of a running devnet's chain under `data` (its data dir; a fresh snapshot
/// each call).
/// The devnet's payment token as `--pay-asset` spells it (CAIP-19).
pub fn pay_asset(data: &Path) -> String {
    let d = cairn_ledger::Deployment::load(&data.join("chain/deployment.json")).unwrap();
    format!("eip155:{}/erc20:{}", d.chain_id, d.token)
}

pub fn devnet_chain(data: &Path) -> cairn_ledger::Chain {
    let d = cairn_ledger::Deployment::load(&data.join("chain/deployment.json")).unwrap();
    let l =
        cairn_ledger::EmbeddedLedger::open_read_only(&data.join("chain/ledger.sqlite"), d.chain_id)
            .unwrap();
    cairn_ledger::Chain::new(std::sync::Arc::new(l), d).unwrap()
}

/// `who`'s token balance on `chain`.
pub fn balance(
    chain: &cairn_ledger::Chain,
    who: alloy_primitives::Address,
) -> alloy_primitives::U256 {
    block(chain.token_balance(who)).unwrap()
}
