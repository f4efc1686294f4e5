//! A private call's payloads are kept sealed to the active verifiers' payload keys
//! ([`cairn_ohttp::sealed`]), never in plaintext: the node's disk and its payload routes hold
//! ciphertext only, and a verifier opens a payload only to re-execute it.
//!
//! Each verifier announces its key in `GET /v1/verifier`, signed by its registered address;
//! keys are read again at most every minute. A private call is refused (503) unless the node
//! can seal to at least the settlement quorum of active verifiers: with fewer, a batch holding
//! its receipt could not be checked, and a verifier left out treats the receipt as not its to
//! check only when enough others can (see the verifier's sampling).

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, Signature};
use cairn_ledger::{Chain, Role};
use cairn_node_api::fetch::{Fetcher, registered_publicly};
use cairn_ohttp::KeyConfig;
use cairn_verifier_api::{PayloadKey, VerifierInfo};

/// How long a set of keys is used before it is read again.
const REFRESH: Duration = Duration::from_secs(60);
/// How long a set short of the quorum is used before it is read again (calls are refused
/// meanwhile, at no cost to the verifiers' endpoints).
const RETRY: Duration = Duration::from_secs(10);
/// The most verifiers a payload is sealed to.
const MAX_RECIPIENTS: usize = 255;
/// Longest a read of the verifiers' keys takes (the chain's, then every verifier's at once).
const READ_DEADLINE: Duration = Duration::from_secs(8);
/// Largest `GET /v1/verifier` body read.
const MAX_INFO_BYTES: usize = 64 << 10;

/// The active verifiers' payload keys, as last read.
pub struct VerifierKeys {
    chain: Chain,
    /// The node's address: verifiers are reached as its registered endpoint is.
    me: Address,
    /// Reaches public addresses only.
    public: Fetcher,
    /// Reaches any address (a node registered on a local network).
    local: Fetcher,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Keys>)>>,
}

/// Verifiers' keys and how many a payload must be sealed to.
pub struct Keys {
    /// Each active verifier reached, with its checked key.
    pub keys: Vec<(Address, KeyConfig)>,
    /// The settlement quorum: the fewest a private call's payloads are sealed to.
    pub quorum: usize,
}

impl VerifierKeys {
    /// Keys of `chain`'s active verifiers, for node `me`. A verifier's endpoint is reached at
    /// public addresses only, unless `me` is registered at a private IP (a local network):
    /// a registered endpoint must not make the node fetch from the network it runs in.
    pub fn new(chain: Chain, me: Address) -> Self {
        let idle = Duration::from_secs(5);
        Self {
            chain,
            me,
            public: Fetcher::new(idle, MAX_INFO_BYTES, false),
            local: Fetcher::new(idle, MAX_INFO_BYTES, true),
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The keys to seal to now; an error says why a private call cannot be served.
    pub async fn current(&self) -> Result<Arc<Keys>, String> {
        let mut cache = self.cache.lock().await;
        let fresh = |at: &Instant, keys: &Keys| {
            let ttl = if keys.keys.len() >= keys.quorum {
                REFRESH
            } else {
                RETRY
            };
            at.elapsed() < ttl
        };
        let keys = match cache.as_ref() {
            Some((at, keys)) if fresh(at, keys) => keys.clone(),
            _ => {
                // One deadline over the whole read: calls wait on it, so nothing (a chain
                // endpoint, a verifier) holds them longer.
                let keys = tokio::time::timeout(READ_DEADLINE, self.read())
                    .await
                    .map_err(|_| {
                        format!(
                            "reading the verifiers' payload keys took over {READ_DEADLINE:?}; retry"
                        )
                    })??;
                let keys = Arc::new(keys);
                *cache = Some((Instant::now(), keys.clone()));
                keys
            }
        };
        drop(cache);
        if keys.keys.len() < keys.quorum {
            return Err(format!(
                "the node reached the payload keys of {} verifiers, fewer than the {} a private call's payloads must be sealed to; retry later",
                keys.keys.len(),
                keys.quorum
            ));
        }
        Ok(keys)
    }

    async fn read(&self) -> Result<Keys, String> {
        let quorum = self
            .chain
            .quorum()
            .await
            .map_err(|e| format!("reading the settlement quorum: {e}"))?;
        let active = self
            .chain
            .active_nodes(Role::Verifier)
            .await
            .map_err(|e| format!("reading the active verifiers: {e}"))?;
        let own = self
            .chain
            .node(self.me)
            .await
            .map_err(|e| format!("reading the node's own registration: {e}"))?
            .endpoint;
        let http = if registered_publicly(&own) {
            &self.public
        } else {
            &self.local
        };
        // All at once, under one deadline: a slow verifier delays no call past it.
        let reads = futures::future::join_all(active.into_iter().map(|v| async move {
            let key = tokio::time::timeout(Duration::from_secs(5), key_of(&self.chain, http, v))
                .await
                .unwrap_or_else(|_| Err("no answer within 5 s".into()));
            (v, key)
        }))
        .await;
        let mut keys = Vec::new();
        for (v, key) in reads {
            match key {
                Ok(k) if keys.len() < MAX_RECIPIENTS => keys.push((v, k)),
                Ok(_) => {}
                // A verifier that is down, or announces a key nothing can be sealed to, is
                // left out: its own fault, not the node's.
                Err(e) => tracing::warn!(verifier = %v, error = %e, "no payload key"),
            }
        }
        Ok(Keys {
            keys,
            quorum: usize::from(quorum.max(1)),
        })
    }
}

/// Verifier `v`'s payload key, signed by `v`, read through `http`.
async fn key_of(chain: &Chain, http: &Fetcher, v: Address) -> Result<KeyConfig, String> {
    let endpoint = chain.node(v).await.map_err(|e| e.to_string())?.endpoint;
    let url = cairn_verifier_api::VerifierUrls::new(&endpoint).info();
    let req = http.client().get(http.check_url(&url)?);
    let (status, body) = http.send(&url, req).await?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let info: VerifierInfo = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    check_payload_key(v, info.payload_key.as_ref())
}

/// The key configuration `key` announces, if it is signed by `v`.
pub fn check_payload_key(v: Address, key: Option<&PayloadKey>) -> Result<KeyConfig, String> {
    let key = key.ok_or("it announces no payload key")?;
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(key.key_config.as_bytes())
        .map_err(|e| format!("its key configuration: {e}"))?;
    let config = KeyConfig::decode(&bytes).map_err(|e| e.to_string())?;
    // A key nothing can be sealed to (a low-order point) would fail every private call.
    cairn_ohttp::sealed::seal_payload(
        &[cairn_ohttp::sealed::Recipient {
            id: v.0.0,
            key: &config,
        }],
        b"probe",
        b"",
    )
    .map_err(|e| format!("its payload key does not take a seal: {e}"))?;
    let sig: Signature = key
        .signature
        .parse()
        .map_err(|e| format!("its key's signature: {e}"))?;
    let signer = cairn_core::sig::recover_message(&sig, &PayloadKey::message(&config.hash()))
        .map_err(|e| e.to_string())?;
    if signer != v {
        return Err(format!("its payload key is signed by {signer}, not by {v}"));
    }
    Ok(config)
}

/// What a sealed payload is bound to: its receipt and which payload it is.
pub fn context(receipt: &str, output: bool) -> Vec<u8> {
    [
        receipt.as_bytes(),
        if output { b"/output" } else { b"/input" },
    ]
    .concat()
}

/// The key a private call's answer is also kept under for its caller: derived from the
/// request's plaintext (its inputs as the log encodes them, or a language-model call's body),
/// which only the caller (and the node, while it serves the call) has; the receipt binds a
/// different hash of it. A caller asking again with the same request and payment (a payment
/// whose settlement was pending) gets its answer back.
pub fn kept_key(input: &[u8]) -> cairn_ohttp::sealed::DataKey {
    use sha2::Digest;
    let h = sha2::Sha256::digest([b"cairn.kept-answer.v1\0".as_slice(), input].concat());
    h[..16].try_into().expect("16 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use alloy_primitives::U256;
    use alloy_signer_local::PrivateKeySigner;
    use cairn_ledger::deploy::TOKEN_UNIT;
    use cairn_ledger::{EmbeddedLedger, RegistrationRequest, dev_signer};

    use super::*;

    /// A node registered at a public endpoint never reaches a verifier registered at a private
    /// one (a literal loopback IP, or a name resolving to it); registered on a local network,
    /// it does.
    #[tokio::test]
    async fn a_node_reaches_verifiers_only_where_it_is_reached_itself() {
        let dir = tempfile::tempdir().unwrap();
        let ledger =
            Arc::new(EmbeddedLedger::open(&dir.path().join("chain.sqlite"), 31337, &[]).unwrap());
        let chain = cairn_ledger::devnet::deployed(ledger).await.unwrap();
        let gov = dev_signer(0);
        // Whatever listens inside the network: every connection counted.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        let join = |key: PrivateKeySigner, role: Role, endpoint: String| {
            let (chain, gov) = (chain.clone(), gov.clone());
            async move {
                chain
                    .mint(&gov, key.address(), U256::from(10_000 * TOKEN_UNIT))
                    .await
                    .unwrap();
                chain
                    .register(
                        &key,
                        &RegistrationRequest::dev(key.address(), role, &endpoint),
                        U256::from(1_000 * TOKEN_UNIT),
                        vec![],
                    )
                    .await
                    .unwrap();
            }
        };
        join(
            dev_signer(5),
            Role::Verifier,
            format!("http://127.0.0.1:{port}"),
        )
        .await;
        join(
            dev_signer(6),
            Role::Verifier,
            format!("http://localhost:{port}"),
        )
        .await;
        let node = dev_signer(2);
        // Registered at a public IP, or under a name (whatever it resolves to inside the
        // network: here the machine's own name, loopback where /etc/hosts says so): public.
        join(node.clone(), Role::Inference, "http://8.8.8.8:7401".into()).await;
        let e = VerifierKeys::new(chain.clone(), node.address())
            .current()
            .await
            .err()
            .expect("no verifier reached");
        assert!(e.contains("reached the payload keys of 0 verifiers"), "{e}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "a private endpoint was fetched"
        );
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        chain
            .set_endpoint_for(
                &gov,
                node.address(),
                &format!("http://{}:7401", host.trim()),
            )
            .await
            .unwrap();
        let _ = VerifierKeys::new(chain.clone(), node.address())
            .current()
            .await;
        assert_eq!(hits.load(Ordering::SeqCst), 0, "fetched inside the network");
        // The same node on a local network reaches both.
        chain
            .set_endpoint_for(&gov, node.address(), "http://127.0.0.1:7401")
            .await
            .unwrap();
        let _ = VerifierKeys::new(chain.clone(), node.address())
            .current()
            .await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
