//! `cairn devnet`: the whole network in one process on embedded defaults, and the demo model
//! it publishes.

use super::*;

/// The devnet's chain settings.
pub(crate) struct DevnetChain {
    pub(crate) chain_id: u64,
    pub(crate) price: alloy_primitives::U256,
    pub(crate) llm_price: cairn_node::TokenPrice,
    pub(crate) batch_max_age_secs: u64,
    pub(crate) challenge_window: u64,
    pub(crate) attestation_timeout: u64,
    pub(crate) free: bool,
    pub(crate) verifiers: DevnetVerifiers,
    pub(crate) faults: node_cmd::FaultArgs,
    /// Where the devnet's Oblivious HTTP relay listens.
    pub(crate) relay_listen: SocketAddr,
    /// Where the devnet's explorer listens.
    pub(crate) explorer_listen: SocketAddr,
    /// Where the devnet's chat entry listens.
    pub(crate) entry_listen: SocketAddr,
    /// The file-type skill's model.
    pub(crate) magika: crate::devnet_skills::ModelSource,
    /// The text-similarity skill's model.
    pub(crate) minilm: crate::devnet_skills::ModelSource,
    pub(crate) llm: LlmSource,
    pub(crate) rpc: crate::args::RpcServeArgs,
}

/// The data dir given, or `cairn devnet`'s default.
pub(crate) fn data_dir_or_default(data_dir: Option<PathBuf>) -> PathBuf {
    data_dir.unwrap_or_else(|| {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cairn")
            .join("devnet")
    })
}

/// The devnet's verifiers.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct DevnetVerifiers {
    /// Fraction of each batch's receipts each verifier re-executes.
    #[arg(long, default_value_t = 0.25)]
    pub(crate) sample_rate: f64,
    /// Seconds over which each verifier keeps trying to fetch a sampled payload before it holds
    /// the node to have withheld it.
    #[arg(long, default_value_t = 20)]
    pub(crate) payload_window_secs: u64,
    /// Fetch attempts spread over that window (all must fail).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub(crate) payload_attempts: u32,
    /// How many of the three registered verifiers run (quorum stays two).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub(crate) verifiers: u8,
}

pub(crate) async fn devnet(
    data_dir: Option<PathBuf>,
    listen: SocketAddr,
    node_listen: SocketAddr,
    engine: node_cmd::EngineArgs,
    c: DevnetChain,
) -> anyhow::Result<()> {
    let data_dir = data_dir_or_default(data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (url, hub_task) = start_hub(&data_dir, listen, stopped(stop_rx.clone())).await?;

    let demo = publish_demo(&url, &data_dir)
        .await
        .context("publishing the demo model")?;
    let llm = publish_llm(&url, &data_dir, &c.llm).await;
    crate::devnet_skills::publish_skills(&url, &data_dir, &c.magika, &c.minilm).await;
    let (chain, ledger) = chain_cmd::devnet_chain(
        &data_dir,
        c.chain_id,
        c.challenge_window,
        c.attestation_timeout,
    )
    .await?;
    // The explorer's address first: its pages may read the chain's RPC (nothing more).
    let explorer_listener = tokio::net::TcpListener::bind(c.explorer_listen)
        .await
        .with_context(|| format!("binding {}", c.explorer_listen))?;
    let explorer_port = explorer_listener.local_addr()?.port();
    let explorer_origins = [
        format!("http://{}", explorer_listener.local_addr()?),
        format!("http://localhost:{explorer_port}"),
    ];
    let (rpc_url, rpc_task) = c.rpc.start(ledger, explorer_origins.to_vec()).await?;
    // The entry's address too: the explorer's chat page talks to it.
    let entry_listener = tokio::net::TcpListener::bind(c.entry_listen)
        .await
        .with_context(|| format!("binding {}", c.entry_listen))?;
    let entry_url = format!("http://{}", entry_listener.local_addr()?);
    let gov = cairn_ledger::dev_signer(0);
    let (node_key, payer_key) = write_keys(&data_dir)?;
    let node_args = node_cmd::NodeServeArgs {
        listen: node_listen,
        hub: url.clone(),
        engine,
        key: Some(node_key),
        price: c.price,
        batch_max_age_secs: c.batch_max_age_secs,
        redeem_every_secs: 5,
        free: c.free,
        faults: c.faults.clone(),
        llm_models: llm
            .map(|_| vec![crate::devnet_llm::LLM_REF.to_owned()])
            .unwrap_or_default(),
        llm_price: Some(c.llm_price),
        upstreams: Vec::new(),
        attester: Some(crate::verify_cmd::AttesterArg::Dev),
        ..node_cmd::NodeServeArgs::defaults()?
    };
    let node_listener = cairn_node::bind(node_listen)
        .await
        .with_context(|| format!("binding {node_listen}"))?;
    let node_url = format!("http://{}", node_listener.local_addr()?);
    let verifier_urls = start_verifiers(&chain, &data_dir, &url, &c.verifiers, &gov).await?;
    register_node(&chain, &node_url).await?;
    let node_state = node_cmd::open_node(
        &node_args,
        &data_dir.join("node"),
        Some(chain.clone()),
        Some(&gov),
    )
    .await?;
    print_banner(&Banner {
        data_dir: &data_dir,
        hub: &url,
        node: &node_url,
        node_state: &node_state,
        demo,
        llm,
        verifiers: &verifier_urls,
        rpc: &rpc_url,
        c: &c,
    });
    chain_cmd::print_devnet(&chain).await?;
    // The relay private calls go through, forwarding to the node's gateway and the entry's
    // (`cairn chat --private`) only.
    let relay = cairn_relay::Relay::new(cairn_relay::RelayConfig {
        gateways: [
            "node".to_owned(),
            crate::relay_cmd::gateway_name(node_state.address()),
        ]
        .map(|name| cairn_relay::Gateway {
            name,
            url: crate::relay_cmd::gateway_url(&node_url),
            public_only: false,
        })
        .into_iter()
        .chain([cairn_relay::Gateway {
            name: "entry".into(),
            url: crate::relay_cmd::gateway_url(&entry_url),
            public_only: false,
        }])
        .collect(),
        ..Default::default()
    })?;
    let relay_listener = tokio::net::TcpListener::bind(c.relay_listen)
        .await
        .with_context(|| format!("binding {}", c.relay_listen))?;
    let relay_url = format!("http://{}", relay_listener.local_addr()?);
    println!("  relay:    {relay_url}");
    let relay_task = tokio::spawn(cairn_relay::serve(
        relay_listener,
        relay,
        stopped(stop_rx.clone()),
    ));
    let (explorer_url, explorer_task) = crate::explorer_cmd::start_devnet(
        explorer_listener,
        &data_dir,
        chain.clone(),
        &url,
        &rpc_url,
        &entry_url,
        stopped(stop_rx.clone()),
    )
    .await?;
    println!("  explorer: {explorer_url}");
    let (entry_task, entry_address) = start_entry(
        entry_listener,
        &c,
        &data_dir,
        &url,
        &node_url,
        &payer_key,
        llm.is_some(),
        chain.clone(),
        &explorer_origins,
        stopped(stop_rx.clone()),
    )
    .await?;
    println!("  entry:    {entry_url}");
    println!("  entry key: {entry_address} (signs run records and vouches for its OHTTP key)");
    println!(
        "Chat (OpenAI-compatible at {entry_url}/v1/chat/completions): cairn chat --entry {entry_url}"
    );
    println!(
        "Private chat (through the relay): cairn chat --private --relay {relay_url} --entry-address {entry_address}"
    );
    print_try(&payer_key, &node_url, &relay_url, &rpc_url);
    let node_task = tokio::spawn(cairn_node::serve(
        node_listener,
        node_state,
        stopped(stop_rx),
    ));
    tokio::select! {
        r = rpc_task => r?.context("serving the chain's JSON-RPC")?,
        _ = shutdown_signal() => {}
    }
    let _ = stop_tx.send(true);
    hub_task.await??;
    node_task.await??;
    relay_task.await??;
    explorer_task.await??;
    entry_task.await??;
    Ok(())
}

/// Starts the chat entry: the devnet's language model, its node and the registry's, paid by
/// the first user's key from a `batch-settlement` channel of its own.
#[allow(clippy::too_many_arguments)]
async fn start_entry(
    listener: tokio::net::TcpListener,
    c: &DevnetChain,
    data_dir: &Path,
    hub: &str,
    node_url: &str,
    payer_key: &Path,
    llm: bool,
    chain: cairn_ledger::Chain,
    origins: &[String],
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    tokio::task::JoinHandle<std::io::Result<()>>,
    alloy_primitives::Address,
)> {
    let args = crate::entry_cmd::EntryServeArgs {
        listen: c.entry_listen,
        hub: hub.to_owned(),
        llm: llm.then(|| crate::devnet_llm::LLM_REF.to_owned()),
        nodes: vec![node_url.to_owned()],
        payer_key: Some(payer_key.to_owned()),
        data_dir: Some(data_dir.join("entry")),
        origins: origins.to_vec(),
        // The devnet's services all listen on loopback.
        allow_private_nodes: true,
        // Skills run on the models the devnet itself published.
        skill_publishers: vec![keyfile::load_or_create(&data_dir.join("devnet.key"))?.address()],
        ..crate::entry_cmd::EntryServeArgs::defaults()?
    };
    let entry =
        crate::entry_cmd::open_entry(&args, &data_dir.join("entry"), Some(chain.clone())).await?;
    let config =
        crate::entry_cmd::server_config(&args, &data_dir.join("entry"), Some(chain)).await?;
    let address = entry.address();
    Ok((
        tokio::spawn(cairn_entry::server::serve(listener, entry, config, stop)),
        address,
    ))
}

/// Starts the hub on SQLite and a blob dir under `data_dir`; its URL and task.
async fn start_hub(
    data_dir: &Path,
    listen: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    String,
    tokio::task::JoinHandle<Result<(), cairn_hub::HubError>>,
)> {
    let config = HubConfig::new(
        format!("sqlite://{}", data_dir.join("catalog.db").display()),
        Location::Dir(data_dir.join("blobs")),
    );
    let (listener, state) = serve_hub(config, listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((url, tokio::spawn(cairn_hub::serve(listener, state, stop))))
}

/// The node registers like any other: dev evidence approved by two verifiers.
async fn register_node(chain: &cairn_ledger::Chain, node_url: &str) -> anyhow::Result<()> {
    let key = cairn_ledger::dev_signer(cairn_ledger::devnet::NODE);
    cairn_node::registration::register(
        chain,
        &key,
        cairn_ledger::Role::Inference,
        node_url,
        alloy_primitives::U256::from(1_000u64 * cairn_ledger::deploy::TOKEN_UNIT),
        &cairn_attest::DevAttester::new(key.clone()),
        Some(cairn_node::gateway_key(&key, 1).config().encoded()),
    )
    .await
    .context("registering the devnet node through its verifiers")?;
    // Dev evidence is deterministic: what the node makes at start is what was registered.
    Ok(())
}

/// The first user's account and a command to try.
fn print_try(payer_key: &Path, node_url: &str, relay_url: &str, rpc_url: &str) {
    println!(
        "  payer:    {} (account {}, key file {})",
        cairn_ledger::dev_signer(cairn_ledger::devnet::PAYER).address(),
        cairn_ledger::devnet::PAYER,
        payer_key.display()
    );
    println!(
        "Try: cairn infer digits@1.0 --input examples/digit.json --node {node_url} --payer-key {} --receipt-out receipt.json",
        payer_key.display()
    );
    println!(
        "Privately (through the relay): cairn infer digits@1.0 --input examples/digit.json --payer-key {} --private --relay {relay_url} --allow-dev-evidence --rpc {rpc_url} --deployment {}",
        payer_key.display(),
        payer_key.with_file_name("deployment.json").display()
    );
}

/// Writes the devnet node's key and the first user's (ready to pay with `cairn infer
/// --payer-key`) into the data dir.
fn write_keys(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let node_key = data_dir.join("chain").join("node.key");
    keyfile::write(
        &node_key,
        &cairn_ledger::dev_signer(cairn_ledger::devnet::NODE),
    )?;
    let payer_key = data_dir.join("chain").join("payer.key");
    keyfile::write(
        &payer_key,
        &cairn_ledger::dev_signer(cairn_ledger::devnet::PAYER),
    )?;
    Ok((node_key, payer_key))
}

/// Starts the devnet's verifiers in this process; returns each one's address and URL.
async fn start_verifiers(
    chain: &cairn_ledger::Chain,
    data_dir: &Path,
    url: &str,
    c: &DevnetVerifiers,
    gov: &alloy_signer_local::PrivateKeySigner,
) -> anyhow::Result<Vec<(alloy_primitives::Address, String)>> {
    // Three verifiers in this process, each with its own API (verdicts, fraud confirmations,
    // registration approvals) and state dir; dev evidence is accepted (devnet only).
    let checks = cairn_verifier::assemble::Checks {
        sample_rate: c.sample_rate,
        payload_window_secs: c.payload_window_secs,
        payload_attempts: c.payload_attempts,
        allow_private_endpoints: true,
        max_model_bytes: 2 << 30,
        tolerance: 1e-4,
        allow_dev_evidence: true,
    };
    // Verifiers re-execute on tract: bit-exact for tract receipts, a tolerance check otherwise.
    let v_engine: std::sync::Arc<dyn cairn_engine::Engine> =
        std::sync::Arc::new(cairn_engine::TractEngine::new());
    let mut verifier_urls = Vec::new();
    for i in cairn_ledger::devnet::VERIFIERS
        .into_iter()
        .take(c.verifiers as usize)
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let v_url = format!("http://{}", l.local_addr()?);
        let dir = data_dir.join(format!("verifier-{i}"));
        let v = cairn_verifier::assemble::start(cairn_verifier::assemble::Setup {
            chain: chain.clone(),
            key: cairn_ledger::dev_signer(i),
            dir: &dir,
            hub: url,
            checks: &checks,
            secret: verify_cmd::dir_secret(&dir)?,
            engine: v_engine.clone(),
            listener: l,
            url: &v_url,
            tick: std::time::Duration::from_millis(500),
            endpoint_update: cairn_verifier::assemble::EndpointUpdate::Governor(gov),
        })
        .await?;
        verifier_urls.push((v.address(), v_url));
    }
    Ok(verifier_urls)
}

/// What the devnet prints about itself.
struct Banner<'a> {
    data_dir: &'a Path,
    hub: &'a str,
    node: &'a str,
    node_state: &'a cairn_node::NodeState,
    demo: cairn_core::BlobId,
    llm: Option<cairn_core::BlobId>,
    verifiers: &'a [(alloy_primitives::Address, String)],
    rpc: &'a str,
    c: &'a DevnetChain,
}

fn print_banner(b: &Banner<'_>) {
    let c = b.c;
    println!("Cairn devnet");
    println!("  data dir: {}", b.data_dir.display());
    println!("  hub:      {}", b.hub);
    println!("  API docs: {}/docs", b.hub);
    println!("  node:     {}", b.node);
    println!(
        "  chain rpc: Ethereum JSON-RPC for cast, web3.py, viem and wallets at {}",
        b.rpc
    );
    println!("  node key: {}", b.node_state.address());
    println!("  profile:  {}", b.node_state.profile());
    println!("  demo:     digits@1.0 = {}", b.demo);
    if let Some(llm) = b.llm {
        println!(
            "  llm:      smollm2-135m-instruct@1.0 = {llm} ({}/v1/chat/completions, OpenAI-compatible)",
            b.node
        );
    }
    for (a, u) in b.verifiers {
        println!("  verifier: {u} ({a}), samples {}", c.verifiers.sample_rate);
    }
    if c.faults.any() {
        println!("  FAULTS:   the node cheats on purpose: {:?}", c.faults);
    }
    if c.free {
        println!(
            "  price:    {} token units per inference (not charged: --free)",
            c.price
        );
    } else {
        println!(
            "  price:    {} token units per inference (x402: exact or prepaid)",
            c.price
        );
        if b.llm.is_some() {
            println!(
                "  llm price: {} token units per 1,000 prompt/completion tokens (prepaid: cairn pay deposit, then cairn llm)",
                c.llm_price
            );
        }
    }
}

/// The digits MLP shipped in the binary, published as `digits@1.0` by the devnet's own key.
pub(crate) const DEMO_MODEL: &[u8] = include_bytes!("../assets/digits_mlp.onnx");

pub(crate) async fn publish_demo(
    hub_url: &str,
    data_dir: &Path,
) -> anyhow::Result<cairn_core::BlobId> {
    let key = keyfile::load_or_create(&data_dir.join("devnet.key"))?;
    let hub = HubClient::new(hub_url, Some(key))?;
    let repo: RepoName = "digits".parse()?;
    let version: Version = "1.0".parse()?;
    if let Ok(r) = hub.resolve(&repo, Some(version), None).await {
        return Ok(r.file.cid);
    }
    ensure_repo(
        &hub,
        NewRepo {
            name: repo.clone(),
            description: "Handwritten digit classifier (8x8 images, 64 floats 0-16): a scikit-learn MLP trained on sklearn's digits, converted with skl2onnx. Cairn's demo model.".into(),
            task: Some("image-classification".into()),
            license: Some("BSD-3-Clause".into()),
            tags: vec![
                "demo".into(),
                "sklearn".into(),
                cairn_entry::skills::tag(cairn_entry::task::Skill::DigitRecognition),
            ],
        },
    )
    .await?;
    hub.create_release(&repo, version, "demo model").await?;
    let file = data_dir.join("digits_mlp.onnx");
    std::fs::write(&file, DEMO_MODEL)?;
    let entry = hub
        .upload_file(
            &repo,
            version,
            &"digits_mlp.onnx".parse()?,
            &file,
            cairn_hub::server::ONNX_MEDIA_TYPE,
            |_| {},
        )
        .await?;
    hub.publish(&repo, version).await?;
    Ok(entry.cid)
}
