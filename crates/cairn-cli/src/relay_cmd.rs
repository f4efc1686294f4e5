//! `cairn relay serve`, and the private route `cairn infer --private` / `cairn llm --private`
//! take.

use anyhow::{Context, anyhow, bail};
use cairn_relay::client::PrivateRoute;
use std::net::SocketAddr;

/// `cairn relay …`.
#[derive(clap::Subcommand)]
pub enum RelayCommand {
    /// An Oblivious HTTP relay: forwards sealed requests to the gateways named here, stripping
    /// who sent them; learns who sends, never what.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7403")]
        listen: SocketAddr,
        /// A gateway, NAME=URL (a node's base URL, or its full `/.well-known/ohttp-gateway`);
        /// clients send to `/gateways/NAME`. Repeatable.
        #[arg(long = "gateway", value_parser = parse_gateway, required_unless_present = "registry")]
        gateways: Vec<cairn_relay::Gateway>,
        /// Also forward to every active inference node in the registry (--rpc, --deployment),
        /// named by its address (`/gateways/0x…`), the list read again every 30 s.
        #[arg(long)]
        registry: bool,
        #[command(flatten)]
        chain: crate::args::ChainArgs,
        /// Forward to registered nodes on private, loopback or link-local addresses (a local
        /// network); by default a registered endpoint is reached only at public addresses, so a
        /// registration cannot make the relay reach the network it runs in.
        #[arg(long)]
        allow_private_endpoints: bool,
        /// Largest sealed request, bytes.
        #[arg(long, default_value_t = (64 << 20) + (64 << 10))]
        max_body_bytes: usize,
        /// Requests forwarded at once per client address.
        #[arg(long, default_value_t = 16)]
        max_per_client: usize,
        /// Longest a forwarded request may take, from sending it on to its answer's last byte
        /// (a streamed language-model answer included), seconds.
        #[arg(long, default_value_t = 600)]
        answer_timeout_secs: u64,
    },
}

/// `NAME=URL`, the URL completed to the gateway resource.
pub fn parse_gateway(s: &str) -> Result<cairn_relay::Gateway, String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s}: expected NAME=URL"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?}: a gateway name is letters, digits, '-', '_' or '.'"
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url}: not an http(s) URL"));
    }
    Ok(cairn_relay::Gateway {
        name: name.to_owned(),
        url: gateway_url(url),
        public_only: false,
    })
}

/// A node's base URL completed to its gateway resource.
pub fn gateway_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(cairn_ohttp::GATEWAY_PATH) {
        base.to_owned()
    } else {
        format!("{base}{}", cairn_ohttp::GATEWAY_PATH)
    }
}

/// `cairn relay serve`.
pub async fn run(cmd: RelayCommand) -> anyhow::Result<()> {
    let RelayCommand::Serve {
        listen,
        gateways,
        registry,
        chain,
        allow_private_endpoints,
        max_body_bytes,
        max_per_client,
        answer_timeout_secs,
    } = cmd;
    let defaults = cairn_relay::RelayConfig::default();
    let public_http = cairn_node_api::fetch::public_only(
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(defaults.gateway_timeout),
    )
    .build()
    .context("building the relay's client for registered gateways")?;
    let relay = cairn_relay::Relay::new(cairn_relay::RelayConfig {
        gateways: gateways.clone(),
        max_body_bytes,
        max_per_client,
        answer_timeout: std::time::Duration::from_secs(answer_timeout_secs.max(1)),
        public_http: Some(public_http),
        ..defaults
    })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    if registry {
        let chain = chain
            .connect()
            .await
            .context("--registry reads the active nodes from the chain")?;
        let private = allow_private_endpoints;
        let listed = registered_gateways(&chain, private).await?;
        relay.set_gateways(gateways.iter().cloned().chain(listed).collect());
        let (relay, fixed) = (relay.clone(), gateways.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                match registered_gateways(&chain, private).await {
                    Ok(listed) => relay.set_gateways(fixed.iter().cloned().chain(listed).collect()),
                    // The last list stays: a chain that is down does not empty the relay.
                    Err(e) => tracing::warn!(error = %e, "reading the registry's nodes"),
                }
            }
        });
    }
    println!("relay: http://{}", listener.local_addr()?);
    for g in &gateways {
        println!("  /gateways/{} -> {}", g.name, g.url);
    }
    if registry {
        println!("  /gateways/0x… -> each active inference node in the registry");
    }
    cairn_relay::serve(listener, relay, crate::shutdown_signal()).await?;
    Ok(())
}

/// The active inference nodes' gateways, named by address (`allow_private`: on a local
/// network).
pub async fn registered_gateways(
    chain: &cairn_ledger::Chain,
    allow_private: bool,
) -> anyhow::Result<Vec<cairn_relay::Gateway>> {
    let mut out = Vec::new();
    for a in chain.active_nodes(cairn_ledger::Role::Inference).await? {
        let endpoint = chain.node(a).await?.endpoint;
        match registered_gateway(a, &endpoint, allow_private) {
            Ok(g) => out.push(g),
            Err(e) => tracing::debug!(node = %a, error = e, "not forwarded to"),
        }
    }
    Ok(out)
}

/// The gateway of node `a` registered at `endpoint`: a plain http(s) base URL (no user info,
/// query or fragment, which would rewrite the gateway path the relay adds), reached at public
/// addresses only unless `allow_private`.
fn registered_gateway(
    a: alloy_primitives::Address,
    endpoint: &str,
    allow_private: bool,
) -> Result<cairn_relay::Gateway, String> {
    let url = cairn_node_api::fetch::check_url(endpoint, allow_private)?;
    if url.query().is_some() || url.fragment().is_some() || endpoint.contains(['?', '#']) {
        return Err(format!("`{endpoint}` carries a query or fragment"));
    }
    Ok(cairn_relay::Gateway {
        name: gateway_name(a),
        url: gateway_url(url.as_str()),
        public_only: !allow_private,
    })
}

/// A node's gateway name at a relay that reads the registry: its address, lower-case hex.
pub fn gateway_name(node: alloy_primitives::Address) -> String {
    format!("{node:#x}")
}

/// Sending a call privately (`--private`).
#[derive(clap::Args, Clone, Debug)]
pub struct PrivateArgs {
    /// Send every request sealed to the node's gateway key (Oblivious HTTP, RFC 9458) through
    /// --relay: the relay sees your address but not what you ask, the node sees what you ask
    /// but not your address (a payment still names your account to the node). The node is the
    /// one registered at --node; its gateway key is checked against the evidence the registry
    /// records for it before anything is sent.
    #[arg(long, requires = "relay")]
    pub private: bool,
    /// The relay (`cairn relay serve`; the devnet prints its own).
    #[arg(long, env = "CAIRN_RELAY")]
    pub relay: Option<String>,
    /// The node's gateway name at the relay (default: the node's address, as relays that read
    /// the registry name it; the devnet's relay names it both that and `node`).
    #[arg(long)]
    pub gateway: Option<String>,
    /// Accept the node's dev evidence (a software key, not a TEE): devnets only.
    #[arg(long)]
    pub allow_dev_evidence: bool,
    /// The chain whose registry the node's evidence is checked against (`--private` needs it:
    /// a gateway is trusted only as the registered node it attests to be).
    #[command(flatten)]
    pub chain: crate::args::ChainArgs,
}

/// A loopback proxy sealing every request through the relay; dropped with the call.
pub struct Proxy(tokio::task::JoinHandle<std::io::Result<()>>);

impl Proxy {
    /// Owns the proxy's task (aborted on drop).
    pub fn new(task: tokio::task::JoinHandle<std::io::Result<()>>) -> Self {
        Self(task)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PrivateArgs {
    /// The URL to call `node` at: itself, or (`--private`) a loopback proxy that seals every
    /// request through the relay, once the gateway's key is checked against the node's
    /// evidence.
    pub async fn route(&self, node: &str) -> anyhow::Result<(String, Option<Proxy>)> {
        if !self.private {
            return Ok((node.to_owned(), None));
        }
        let relay = self.relay.as_deref().expect("clap requires --relay");
        // The node meant is the one registered at `node`: the relay picks the gateway, so
        // whatever answers there must prove to be that node, not just any registered one.
        let chain = self
            .chain
            .connect()
            .await
            .context("--private checks the node against the registry")?;
        let expected = registered_at(&chain, node).await?;
        let gateway = self
            .gateway
            .clone()
            .unwrap_or_else(|| gateway_name(expected));
        let route = PrivateRoute::open(relay, &gateway)
            .await
            .context("fetching the gateway's key configuration through the relay")?;
        let info: cairn_node_api::NodeInfo = get_json(&route, "/v1/node").await?;
        let evidence: cairn_attest::Evidence = get_json(&route, "/v1/attestation").await?;
        if info.address != expected {
            bail!(
                "the gateway `{gateway}` at the relay speaks for {}, not for {expected}, the node registered at {node}",
                info.address
            );
        }
        let entry = chain.node(info.address).await?;
        if !entry.active || entry.role != Some(cairn_ledger::Role::Inference) {
            bail!(
                "the gateway speaks for {}, which is not an active inference node in the registry",
                info.address
            );
        }
        cairn_relay::client::check_key(
            route.key_config(),
            info.address,
            &evidence,
            Some(entry.evidence_digest),
            cairn_core::clock::now_secs(),
            cairn_attest::Policy {
                allow_dev: self.allow_dev_evidence,
            },
        )?;
        let (addr, task) = route.local_proxy((64 << 20) + (64 << 10)).await?;
        eprintln!(
            "private: sealed to {}'s attested gateway key through {relay}",
            info.address
        );
        Ok((format!("http://{addr}"), Some(Proxy(task))))
    }
}

/// The active inference node whose registered endpoint is `node`.
async fn registered_at(
    chain: &cairn_ledger::Chain,
    node: &str,
) -> anyhow::Result<alloy_primitives::Address> {
    let want = node.trim_end_matches('/');
    for a in chain.active_nodes(cairn_ledger::Role::Inference).await? {
        if chain.node(a).await?.endpoint.trim_end_matches('/') == want {
            return Ok(a);
        }
    }
    bail!(
        "no active inference node is registered at {node}; pass --node as the registry lists it (cairn nodes)"
    )
}

async fn get_json<T: serde::de::DeserializeOwned>(
    route: &PrivateRoute,
    path: &str,
) -> anyhow::Result<T> {
    let req = http::Request::get(path).body(bytes::Bytes::new())?;
    let resp = route.send(req).await?;
    if !resp.status().is_success() {
        return Err(anyhow!(
            "GET {path} through the relay: {} {}",
            resp.status(),
            String::from_utf8_lossy(resp.body())
        ));
    }
    serde_json::from_slice(resp.body())
        .with_context(|| format!("GET {path}: not the expected JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered endpoint is a plain base URL: what would point the relay inside its own
    /// network (a private literal, user info, a query or fragment that swallows the gateway
    /// path) is not forwarded to; names are checked when they resolve (`public_only`).
    #[test]
    fn a_registered_endpoint_cannot_point_the_relay_inside() {
        let a = alloy_primitives::Address::repeat_byte(1);
        for bad in [
            "http://127.0.0.1:9100/",
            "http://10.0.0.7/",
            "http://[::1]:80/",
            "http://localhost/",
            "http://169.254.169.254/latest",
            "http://node.example/metrics#",
            "http://node.example/metrics?",
            "http://node.example/?x=1",
            "http://user@node.example/",
            "ftp://node.example/",
            "not a url",
        ] {
            assert!(registered_gateway(a, bad, false).is_err(), "{bad}");
        }
        let g = registered_gateway(a, "https://node.example:7401/", false).unwrap();
        assert_eq!(
            g.url,
            format!("https://node.example:7401{}", cairn_ohttp::GATEWAY_PATH)
        );
        assert!(g.public_only);
        // On a local network (--allow-private-endpoints) loopback is allowed, reached plainly.
        let g = registered_gateway(a, "http://127.0.0.1:7401", true).unwrap();
        assert!(!g.public_only);
        assert!(registered_gateway(a, "http://127.0.0.1:7401/#", true).is_err());
    }
}
