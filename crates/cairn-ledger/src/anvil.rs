//! A throwaway anvil (npm `@foundry-rs/anvil-linux-amd64`, installed by `scripts/npm-deps.sh`)
//! on an OS-assigned loopback port, for tests and benchmarks; killed on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::LedgerError;

/// A running anvil.
pub struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    /// Starts `bin` with `chain_id` on 127.0.0.1 and a free port; waits until it listens.
    pub fn spawn(bin: &Path, chain_id: u64) -> Result<Self, LedgerError> {
        let err = |e: String| LedgerError::Rpc(format!("starting anvil ({}): {e}", bin.display()));
        let mut child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--gas-limit",
                "60000000",
            ])
            .args(["--chain-id", &chain_id.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("Listening on ") {
                    let _ = tx.send(format!("http://{}", addr.trim()));
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => Ok(Self { child, url }),
            Err(_) => {
                let _ = child.kill();
                Err(err("it did not print its address within 30 s".into()))
            }
        }
    }

    /// Starts the anvil named by `CAIRN_ANVIL`; `None` when the variable is unset.
    pub fn from_env(chain_id: u64) -> Result<Option<Self>, LedgerError> {
        match std::env::var_os("CAIRN_ANVIL") {
            Some(bin) => Self::spawn(Path::new(&bin), chain_id).map(Some),
            None => Ok(None),
        }
    }

    /// For tests: the anvil named by `CAIRN_ANVIL`, or `None` after printing `SKIPPED`. Panics
    /// instead of skipping when `CAIRN_TEST_REQUIRE_SERVICES` is set (the test command sets it).
    pub fn for_test(test: &str, chain_id: u64) -> Option<Self> {
        match Self::from_env(chain_id) {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                assert!(
                    std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                    "{test}: CAIRN_ANVIL is required (scripts/npm-deps.sh installs it)"
                );
                eprintln!("SKIPPED {test}: CAIRN_ANVIL not set");
                None
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    /// Its JSON-RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
