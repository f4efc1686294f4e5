//! `cairn entry serve` (the chat entry), `cairn chat` (a conversation with it) and
//! `cairn run verify|show` (a turn's signed run record, checked).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::U256;
use anyhow::{Context, bail};
use cairn_node_api::openai::SseItem;
use clap::{Args, Subcommand};

/// Where `cairn chat` finds the entry by default (the devnet's).
pub const DEFAULT_ENTRY: &str = "http://127.0.0.1:7405";

/// `cairn entry serve`.
#[derive(Args, Clone, Debug)]
pub struct EntryServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7405")]
    pub listen: SocketAddr,
    /// The hub, where models for skills are found.
    #[arg(long, env = "CAIRN_HUB", default_value = crate::DEFAULT_HUB)]
    pub hub: String,
    /// The language model that labels messages and writes answers (`name@version`); none: the
    /// rules alone parse, and answers are the results.
    #[arg(long)]
    pub llm: Option<String>,
    /// A node to route to besides the registry's active ones (repeat).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub chain: crate::chain_cmd::ChainArgs,
    /// The entry's key file (signs run records; created on first use).
    #[arg(long, env = "CAIRN_ENTRY_KEY")]
    pub key: Option<PathBuf>,
    /// The key that pays nodes (its channel accounts are kept beside it).
    #[arg(long, env = "CAIRN_PAYER_KEY")]
    pub payer_key: Option<PathBuf>,
    /// Without a chain (--rpc/--deployment), pay nodes only in this token (CAIP-19,
    /// `eip155:31337/erc20:0x…`); without it, a payer key beside a `deployment.json` pays in
    /// that deployment's token, otherwise nothing is paid. With a chain, its token.
    #[arg(long)]
    pub pay_asset: Option<crate::node_cmd::PayAsset>,
    /// Deposit this many token units into an x402 `batch-settlement` channel with a node
    /// whenever it runs low (what pays language-model calls without a prepaid deposit).
    #[arg(long, default_value = "1000000")]
    pub batch_deposit: U256,
    /// Where run records are kept.
    #[arg(long, env = "CAIRN_ENTRY_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Turns taken at once (more wait with a 503).
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// The most one turn may be charged in all, token units.
    #[arg(long, default_value = "100000")]
    pub max_spend: U256,
    /// The most all turns together may spend in an hour, token units (charged, plus what
    /// failed attempts may have cost); beyond it turns are refused until the hour ends.
    #[arg(long)]
    pub budget_per_hour: Option<U256>,
    /// Deadline of one step on one node, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub step_deadline_ms: u64,
    /// Name of an environment variable holding a bearer token every turn must carry.
    #[arg(long)]
    pub token_env: Option<String>,
    /// An origin whose pages may call the entry (the explorer's chat page; repeat).
    #[arg(long = "origin")]
    pub origins: Vec<String>,
    /// Only hub repositories owned by this address compute skills (repeat; without it, any
    /// repository tagged `skill-<name>` with a fitting signature is used).
    #[arg(long = "skill-publisher")]
    pub skill_publishers: Vec<alloy_primitives::Address>,
    /// Reach registered nodes on private, loopback or link-local addresses (a local network);
    /// by default such endpoints are skipped, so a registration cannot make the entry probe
    /// the network it runs in.
    #[arg(long)]
    pub allow_private_nodes: bool,
    /// Callers pay their turns: each with an x402 `upto` permit (Permit2) for --max-spend,
    /// settled by the entry's key for what the turn's steps were charged before the answer
    /// leaves. Needs the chain (--rpc/--deployment, or the devnet's).
    #[arg(long)]
    pub charge_callers: bool,
    /// With --charge-callers, token units worth one transaction at the entry's gas: a caller's
    /// `batch-settlement` channel must be charged this between two deposits or refunds the entry
    /// sends for it (a channel's first is free), and its count is claimed once it reaches this,
    /// when the caller withdraws, or after 5 minutes. 0: any charge.
    #[arg(long, default_value_t = U256::from(cairn_x402::batch::DEFAULT_GAS_ALLOWANCE))]
    pub gas_allowance: U256,
}

impl EntryServeArgs {
    /// What `cairn entry serve` uses when given no flags (environment variables still apply).
    pub fn defaults() -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Bare {
            #[command(flatten)]
            args: EntryServeArgs,
        }
        Ok(<Bare as clap::Parser>::try_parse_from(["cairn-entry"])?.args)
    }
}

/// Builds the entry from its arguments (`chain`: the devnet's, when it runs in-process).
pub async fn open_entry(
    a: &EntryServeArgs,
    data_dir: &Path,
    chain: Option<cairn_ledger::Chain>,
) -> anyhow::Result<Arc<cairn_entry::Entry>> {
    let key = entry_key(a, data_dir)?;
    let chain = match chain {
        Some(c) => Some(c),
        None if a.chain.rpc.is_some() || a.chain.deployment.is_some() => {
            Some(a.chain.connect().await?)
        }
        None => None,
    };
    if chain.is_none() && a.nodes.is_empty() {
        bail!(
            "the entry needs nodes to route to: --node URL, or --rpc and --deployment for the registry's"
        );
    }
    let payer = match &a.payer_key {
        Some(p) => Some(cairn_entry::Payer {
            key: crate::keyfile::load(p)?,
            accounts: crate::keyfile::prepaid_accounts(p),
            batch_deposit: Some(a.batch_deposit),
            asset: crate::node_cmd::agreed_asset(a.pay_asset.as_ref(), p)?,
        }),
        None => None,
    };
    let router = cairn_entry::Router::new(
        chain,
        a.nodes.clone(),
        payer,
        Duration::from_millis(a.step_deadline_ms.max(1)),
    )
    .allow_private(a.allow_private_nodes);
    let entry = cairn_entry::Entry::open(cairn_entry::EntryConfig {
        key,
        hub: cairn_hub::HubClient::new(&a.hub, None)?,
        router,
        llm: a.llm.clone(),
        data_dir: data_dir.to_owned(),
        max_spend: a.max_spend,
        publishers: a.skill_publishers.clone(),
    })?;
    Ok(Arc::new(entry))
}

fn entry_key(
    a: &EntryServeArgs,
    data_dir: &Path,
) -> anyhow::Result<alloy_signer_local::PrivateKeySigner> {
    let key_path = a.key.clone().unwrap_or_else(|| data_dir.join("entry.key"));
    crate::keyfile::load_or_create(&key_path)
}

/// The paywall callers pay turns through (`--charge-callers`): `upto` permits to the entry's
/// address, settled by its key.
async fn caller_payments(
    a: &EntryServeArgs,
    data_dir: &Path,
    chain: Option<cairn_ledger::Chain>,
) -> anyhow::Result<Option<cairn_entry::server::CallerPayments>> {
    if !a.charge_callers {
        return Ok(None);
    }
    let chain = match chain {
        Some(c) => c,
        None => a
            .chain
            .connect()
            .await
            .context("--charge-callers settles callers' permits on the chain")?,
    };
    if chain.deployment().upto.is_none() {
        bail!(
            "--charge-callers: the chain has no x402 `upto` contracts (Permit2 and its proxy); `cairn chain deploy` places them"
        );
    }
    let key = entry_key(a, data_dir)?;
    let store = cairn_x402::PaymentStore::open(
        &data_dir.join("payments.sqlite"),
        cairn_node::Durability::Full,
    )?;
    let facilitator =
        Arc::new(cairn_x402::Facilitator::new(chain.clone(), key.clone(), store.clone()).await?);
    tokio::spawn(facilitator.clone().reconcile_loop(Duration::from_secs(5)));
    let mut wall = cairn_x402::Paywall::new(
        facilitator,
        None,
        Arc::new(cairn_entry::server::PricedPerTurn),
        key.address(),
    );
    // Channels whose deposits are escrowed on chain (x402 `batch-settlement`), wherever the
    // chain has the contract: a caller cannot take back what a turn already spent.
    if let Some(b) = cairn_x402::batch::Batch::new(chain, store, key.clone(), key.address()).await?
    {
        let b = Arc::new(b.with_gas_allowance(a.gas_allowance));
        tokio::spawn(b.clone().run(Duration::from_secs(5)));
        wall = wall.with_batch(b);
    }
    Ok(Some(cairn_entry::server::CallerPayments(Arc::new(wall))))
}

/// The server settings from the arguments (`chain`: the devnet's, when it runs in-process).
pub async fn server_config(
    a: &EntryServeArgs,
    data_dir: &Path,
    chain: Option<cairn_ledger::Chain>,
) -> anyhow::Result<cairn_entry::server::ServerConfig> {
    let token = match &a.token_env {
        Some(var) => Some(
            std::env::var(var)
                .with_context(|| format!("--token-env {var}: the variable is not set"))?,
        ),
        None => None,
    };
    Ok(cairn_entry::server::ServerConfig {
        turns: a.turns,
        token,
        origins: a.origins.clone(),
        budget_per_hour: a.budget_per_hour,
        payments: caller_payments(a, data_dir, chain).await?,
    })
}

/// `cairn entry serve`.
pub async fn serve(a: EntryServeArgs) -> anyhow::Result<()> {
    let dir = a.data_dir.clone().unwrap_or_else(|| {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cairn")
            .join("entry")
    });
    let entry = open_entry(&a, &dir, None).await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    println!("entry:    http://{}", listener.local_addr()?);
    println!("address:  {}", entry.address());
    cairn_entry::server::serve(
        listener,
        entry,
        server_config(&a, &dir, None).await?,
        crate::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// `cairn entry eval`.
#[derive(Args, Clone, Debug)]
pub struct EntryEvalArgs {
    /// The set (JSON lines); the committed one when not given.
    #[arg(long)]
    pub set: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where the entry's scratch state goes (a temporary dir when not given).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// The entry's language model and nodes (without --llm the rules alone are evaluated).
    #[command(flatten)]
    pub entry: EntryServeArgs,
}

/// `cairn entry eval`.
pub async fn eval(a: EntryEvalArgs) -> anyhow::Result<()> {
    use cairn_entry::eval;
    let text = match &a.set {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => eval::SET.to_owned(),
    };
    let items = eval::read_set(&text).map_err(anyhow::Error::msg)?;
    let (title, report) = match &a.entry.llm {
        None => ("rules only".to_owned(), eval::rules_only(&items)),
        Some(model) => {
            let dir = a.scratch.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("cairn-entry-eval-{}", std::process::id()))
            });
            let entry = open_entry(&a.entry, &dir, None).await?;
            let mut r = eval::Report::default();
            for (i, item) in items.iter().enumerate() {
                eprint!("\r{}/{}", i + 1, items.len());
                let parse = |text: String| {
                    let entry = entry.clone();
                    async move { entry.parse(&text).await.ok().map(|(t, _)| t) }
                };
                let Some(t) = parse(item.input.clone()).await else {
                    r.misses.push(format!("{}: refused", item.id));
                    continue;
                };
                let re = match eval::reordered(&item.input) {
                    Some(x) => parse(x).await,
                    None => None,
                };
                let pa = match eval::padded(&item.input) {
                    Some(x) => parse(x).await,
                    None => None,
                };
                r.add(item, &t, re.as_ref(), pa.as_ref());
            }
            eprintln!();
            if a.scratch.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            (format!("rules + {model}"), r)
        }
    };
    // Items written after the rules were, never tuned against: the figures to trust.
    let held: Vec<_> = items
        .iter()
        .filter(|i| i.kind.starts_with("heldout"))
        .cloned()
        .collect();
    let held_report = match &a.entry.llm {
        None => Some(eval::rules_only(&held)),
        Some(_) => None,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"title": title, "all": report, "heldout": held_report})
            )?
        );
    } else {
        println!("{}", report.table(&title));
        if let Some(h) = &held_report {
            println!("{}", h.table(&format!("{title}, held-out items only")));
        }
        for m in &report.misses {
            println!("  miss: {m}");
        }
    }
    Ok(())
}

/// `cairn chat`.
#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    /// The entry's URL.
    #[arg(long, env = "CAIRN_ENTRY", default_value = DEFAULT_ENTRY)]
    pub entry: String,
    /// Send this one message and exit (otherwise: a conversation on stdin).
    #[arg(long)]
    pub message: Option<String>,
    /// Bearer token for an entry that asks for one.
    #[arg(long, env = "CAIRN_ENTRY_TOKEN")]
    pub token: Option<String>,
    /// Write each turn's signed run record into this directory.
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// Print each turn's summary as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Send everything through the Oblivious HTTP relay (RFC 9458), sealed to the entry's
    /// gateway key: the relay sees your address but not what you write, the entry sees what you
    /// write but not your address. The key is checked first against the entry's signature,
    /// which --entry-address names (the entry then calls nodes as itself, never as you).
    #[arg(long, requires_all = ["relay", "entry_address"])]
    pub private: bool,
    /// The relay (`cairn relay serve`; the devnet prints its own).
    #[arg(long, env = "CAIRN_RELAY")]
    pub relay: Option<String>,
    /// The entry's gateway name at the relay.
    #[arg(long, default_value = "entry")]
    pub gateway: String,
    /// The entry's address (its run records' signer; `GET /v1/entry` and the devnet's banner
    /// show it): the key a private chat seals to must be vouched for by it.
    #[arg(long, env = "CAIRN_ENTRY_ADDRESS")]
    pub entry_address: Option<alloy_primitives::Address>,
    /// Pay an entry that charges for turns from this key: an x402 `upto` permit per turn for
    /// the most the entry says a turn costs, charged what the turn's steps were (approve
    /// Permit2 once first: `cairn pay approve-permit2`).
    #[arg(long, env = "CAIRN_PAYER_KEY")]
    pub payer_key: Option<PathBuf>,
    /// The most one turn may cost you, token units: a permit or voucher for more is not signed.
    #[arg(long, default_value = "100000")]
    pub max_pay: U256,
    /// Pay only in this token on this chain, as a CAIP-19 asset id (`eip155:31337/erc20:0x…`):
    /// an entry naming another is not paid. Without it, a payer key beside a deployment's
    /// `deployment.json` pays in that deployment's token; otherwise nothing is paid.
    #[arg(long)]
    pub pay_asset: Option<crate::node_cmd::PayAsset>,
    /// Pay from an x402 `batch-settlement` channel with the entry, depositing this many token
    /// units whenever it runs low (escrowed on chain; each turn then costs a signed voucher,
    /// not a transaction). Without it, each turn is paid with an `upto` permit.
    #[arg(long)]
    pub batch_deposit: Option<U256>,
}

/// `cairn chat`: a conversation with history; each turn streams its progress and answer, then
/// its task summary, steps, costs and run record id.
pub async fn chat(mut a: ChatArgs) -> anyhow::Result<()> {
    // Kept while the chat runs: the loopback proxy that seals each request.
    let _proxy = if a.private {
        let (url, proxy) = private_route(&a).await?;
        a.entry = url;
        Some(proxy)
    } else {
        None
    };
    let http = reqwest::Client::new();
    let mut history: Vec<serde_json::Value> = Vec::new();
    if let Some(m) = &a.message {
        turn(&http, &a, &mut history, m).await?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    eprintln!("chat with {} (empty line or Ctrl-D to leave)", a.entry);
    loop {
        eprint!("> ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Err(e) = turn(&http, &a, &mut history, line.trim_end()).await {
            eprintln!("error: {e:#}");
        }
    }
    Ok(())
}

/// A loopback proxy that seals every request to the entry's gateway key through the relay,
/// once the key is checked against the entry's signature.
async fn private_route(a: &ChatArgs) -> anyhow::Result<(String, crate::relay_cmd::Proxy)> {
    let relay = a.relay.as_deref().expect("clap requires --relay");
    let entry = a.entry_address.expect("clap requires --entry-address");
    if a.token.is_some() {
        bail!(
            "--private with --token: a bearer token tells the entry who you are, and the private route does not carry one; use one or the other"
        );
    }
    if a.payer_key.is_some() {
        eprintln!(
            "private: a paid turn's permit names your account to the entry (the relay still hides your address)"
        );
    }
    let route = cairn_relay::client::PrivateRoute::open(relay, &a.gateway)
        .await
        .context("fetching the entry's key configuration through the relay")?;
    // Asked sealed to the key just fetched: a relay that swapped in its own key could answer,
    // but not with the entry's signature over that key.
    let req = http::Request::get("/v1/entry")
        .header(http::header::DATE, http_date())
        .body(bytes::Bytes::new())?;
    let resp = route
        .send(req)
        .await
        .context("GET /v1/entry through the relay")?;
    #[derive(serde::Deserialize)]
    struct Info {
        address: alloy_primitives::Address,
        ohttp: Ohttp,
    }
    #[derive(serde::Deserialize)]
    struct Ohttp {
        signature: String,
    }
    let info: Info = serde_json::from_slice(resp.body()).with_context(|| {
        format!(
            "GET /v1/entry through the relay: {} {}",
            resp.status(),
            String::from_utf8_lossy(&resp.body()[..resp.body().len().min(300)])
        )
    })?;
    if info.address != entry {
        bail!(
            "the gateway `{}` at the relay is the entry {}, not {entry}",
            a.gateway,
            info.address
        );
    }
    cairn_entry::entry::check_ohttp_keys(
        route.key_config().encoded(),
        &info.ohttp.signature,
        entry,
    )
    .map_err(|e| anyhow::anyhow!("the gateway's key is not the entry's: {e}"))?;
    let (addr, task) = route
        .local_proxy(cairn_entry::server::MAX_BODY_BYTES)
        .await?;
    eprintln!("private: sealed to the entry {entry}'s gateway key through {relay}");
    Ok((format!("http://{addr}"), crate::relay_cmd::Proxy::new(task)))
}

async fn turn(
    http: &reqwest::Client,
    a: &ChatArgs,
    history: &mut Vec<serde_json::Value>,
    message: &str,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut messages = history.clone();
    messages.push(serde_json::json!({"role": "user", "content": message}));
    let url = format!("{}/v1/chat/completions", a.entry.trim_end_matches('/'));
    let body = serde_json::json!({
        "model": cairn_entry::server::MODEL,
        "messages": messages,
        "stream": true,
    });
    let mut req = http
        .post(&url)
        .json(&body)
        .header(reqwest::header::DATE, http_date());
    if let Some(t) = &a.token {
        req = req.bearer_auth(t);
    }
    // A turn the entry asks to be paid for is paid from --payer-key (a batch-settlement voucher,
    // or an upto permit), within --max-pay, to the entry named by --entry-address when given.
    let (resp, payment) = match payer_client(a, http)? {
        Some(client) => client
            .send_paid(&url, req, true)
            .await
            .map_err(|e| crate::node_cmd::explain_asset(e).context("paying the entry"))?,
        None => (
            req.send()
                .await
                .with_context(|| format!("cannot reach the entry at {url}"))?,
            None,
        ),
    };
    if resp.status() == reqwest::StatusCode::PAYMENT_REQUIRED && a.payer_key.is_none() {
        let most = cairn_x402::client::offers(resp.headers())
            .ok()
            .and_then(|r| r.accepts.first().map(|o| o.amount.to_string()))
            .unwrap_or_else(|| "?".into());
        bail!(
            "the entry charges for turns (at most {most} token units each): pass --payer-key (with --batch-deposit N, or after `cairn pay approve-permit2` with that key)"
        );
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        match cairn_core::api::ErrorBody::parse(&body) {
            Some(e) => bail!("the entry refused ({status}): {}", e.message),
            None => bail!("the entry answered {status}"),
        }
    }
    let mut stream = resp.bytes_stream();
    let mut sse = cairn_node_api::openai::SseReader::default();
    let mut answer = String::new();
    let mut summary = None;
    let mut out = std::io::stdout();
    'read: while let Some(chunk) = stream.next().await {
        let items = sse.feed(&chunk.context("the entry's stream broke off")?);
        if let Some(why) = sse.broken() {
            bail!("the entry's stream cannot be read: {why}");
        }
        for item in items {
            let data = match item {
                SseItem::Comment(c) => {
                    if let Some(c) = c.strip_prefix(" cairn ")
                        && !a.json
                    {
                        eprintln!("  · {c}");
                    }
                    continue;
                }
                SseItem::Event(data) => data,
            };
            if data.starts_with("[DONE]") {
                break 'read;
            }
            let v: serde_json::Value =
                serde_json::from_str(&data).context("the entry sent a malformed chunk")?;
            if let Some(e) = v.get("error") {
                bail!("the turn failed: {}", e["message"].as_str().unwrap_or("?"));
            }
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                answer.push_str(t);
                if !a.json {
                    write!(out, "{t}")?;
                    out.flush()?;
                }
            }
            if let Some(s) = v.get("cairn") {
                summary = Some(s.clone());
            }
        }
    }
    let summary = summary.context("the entry's answer ended without its run record")?;
    // The record's answer is the turn's; what streamed live is only its beginning when a
    // model's text broke off (the entry says so in the stream).
    if let Some(whole) = summary["answer"].as_str() {
        answer = whole.to_owned();
    }
    // The channel's own account learns what the turn was charged (the voucher allowed more).
    if let Some(m) = &payment {
        let charged = summary["paid_by"]["charged"]
            .as_str()
            .and_then(|c| c.parse::<U256>().ok())
            .context("a paid turn's answer does not say what it charged")?;
        cairn_node_api::NodeClient::record_charge(m, charged)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"answer": answer, "cairn": summary}))?
        );
    } else {
        println!();
        print_summary(&summary);
    }
    if let Some(dir) = &a.records {
        // The id names the file: only a record id (no path of the entry's choosing).
        let id: alloy_primitives::B256 = summary["run"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .context("the turn's summary names no run record id")?;
        let url = format!("{}/v1/runs/{id}", a.entry.trim_end_matches('/'));
        let body = http
            .get(&url)
            .header(reqwest::header::DATE, http_date())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        // Kept only if it is the record named, signed by the entry it names (by --entry-address
        // when given), and holds the answer shown.
        let signed: cairn_entry::record::SignedRecord =
            serde_json::from_slice(&body).context("the entry's run record is malformed")?;
        let record = cairn_entry::record::open(&signed)
            .map_err(|e| anyhow::anyhow!("the entry's run record {id}: {e}"))?;
        if signed.id != id {
            bail!("the entry sent record {} for run {id}", signed.id);
        }
        if let Some(e) = a.entry_address
            && record.entry != e
        {
            bail!("run record {id} is signed by {}, not {e}", record.entry);
        }
        if record.answer.text != answer {
            bail!("run record {id} holds another answer than the one shown");
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{id}.json"));
        std::fs::write(&path, &body)?;
        if !a.json {
            println!("  record:  {}", path.display());
        }
    }
    history.push(serde_json::json!({"role": "user", "content": message}));
    history.push(serde_json::json!({"role": "assistant", "content": answer}));
    Ok(())
}

/// The client that pays the entry's turns, when the chat has a payer key.
fn payer_client(
    a: &ChatArgs,
    http: &reqwest::Client,
) -> anyhow::Result<Option<cairn_node_api::NodeClient>> {
    let Some(key) = &a.payer_key else {
        return Ok(None);
    };
    let mut c = cairn_node_api::NodeClient::new(&a.entry)
        .with_http(http.clone())
        .with_payer(crate::keyfile::load(key)?, alloy_primitives::B256::ZERO)
        .with_accounts(crate::keyfile::prepaid_accounts(key))
        .with_max_price(a.max_pay);
    c = crate::node_cmd::pin_asset(c, a.pay_asset.as_ref(), key)?;
    if let Some(d) = a.batch_deposit {
        c = c.with_batch_deposit(d);
    }
    if let Some(e) = a.entry_address {
        c = c.with_payee(e);
    }
    Ok(Some(c))
}

/// Now, as an HTTP date (a sealed request carries one: the entry refuses stale ones).
fn http_date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

fn print_summary(s: &serde_json::Value) {
    let t = &s["task"];
    println!("  ── task: {}", t["goal"].as_str().unwrap_or(""));
    let noise = t["noise"].as_array().map_or(0, Vec::len);
    println!(
        "     {} sub-tasks, {} noise spans ignored, parsed by {}",
        t["subtasks"],
        noise,
        t["parsed_by"]["llm"].as_str().unwrap_or("rules only")
    );
    for n in t["noise"].as_array().into_iter().flatten() {
        println!(
            "     noise ({}): {}",
            n["reason"].as_str().unwrap_or(""),
            n["text"].as_str().unwrap_or("")
        );
    }
    for st in s["steps"].as_array().into_iter().flatten() {
        let what = st["result"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| st["error"].as_str().map(|e| format!("failed: {e}")))
            .unwrap_or_default();
        let mut line = format!(
            "  [{}] {}: {what}",
            st["id"].as_str().unwrap_or(""),
            st["skill"].as_str().unwrap_or("")
        );
        if let Some(m) = st["model"].as_str() {
            line.push_str(&format!(
                "  ({m} on {}, receipt {}, charged {} via {})",
                st["node"].as_str().unwrap_or("?"),
                st["receipt"].as_str().unwrap_or("?"),
                st["charged"].as_str().unwrap_or("0"),
                st["scheme"].as_str().unwrap_or("?")
            ));
        }
        println!("{line}");
        for at in st["attempts"].as_array().into_iter().flatten() {
            println!(
                "       rerouted after {}: {}",
                at["node"].as_str().unwrap_or("?"),
                at["error"].as_str().unwrap_or("?")
            );
        }
    }
    println!(
        "  total charged: {} token units",
        s["total_charged"].as_str().unwrap_or("0")
    );
    if let Some(p) = s.get("paid_by") {
        println!(
            "  you paid:      {} token units ({} permit for at most {}, from {})",
            p["charged"].as_str().unwrap_or("?"),
            p["scheme"].as_str().unwrap_or("?"),
            p["most"].as_str().unwrap_or("?"),
            p["payer"].as_str().unwrap_or("?")
        );
    }
    println!("  run record:    {}", s["run"].as_str().unwrap_or(""));
}

/// `cairn run …`.
#[derive(Subcommand)]
pub enum RunCommand {
    /// Check a turn's signed run record: its signature and every hash, that the task object
    /// follows from its parse, every exact step recomputes, every receipt is its node's and binds
    /// its step, and (with a chain) that each receipt is in a finalized batch; `--reexec` runs
    /// each model step again on a node.
    Verify(Box<RunVerifyArgs>),
    /// Print a run record's turn: task, steps, answer.
    Show {
        /// A record file, or a URL (`http://127.0.0.1:7405/v1/runs/0x…`).
        record: String,
    },
}

/// `cairn run verify`.
#[derive(Args)]
pub struct RunVerifyArgs {
    /// A record file, or a URL (`http://127.0.0.1:7405/v1/runs/0x…`).
    pub record: String,
    /// The user's message, to check the record's input hash.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The entry that must have signed it (its address, `GET /v1/entry`): without it, any key's
    /// record verifies as that key's.
    #[arg(long = "entry")]
    pub entry: Option<alloy_primitives::Address>,
    #[command(flatten)]
    pub chain: crate::chain_cmd::ChainArgs,
    /// Read a devnet's embedded chain instead of --rpc/--deployment.
    #[arg(long, conflicts_with = "rpc")]
    pub devnet_dir: Option<PathBuf>,
    /// Accept receipts whose batches are not finalized yet (they are still reported).
    #[arg(long)]
    pub allow_unsettled: bool,
    /// Run each model step again on this node and compare.
    #[arg(long)]
    pub reexec: Option<String>,
    /// Pay the re-execution with this key.
    #[arg(long, env = "CAIRN_PAYER_KEY")]
    pub payer_key: Option<PathBuf>,
    /// The most one re-executed step may cost you, token units.
    #[arg(long, default_value = "100000")]
    pub max_pay: U256,
    /// Pay only in this token on this chain (CAIP-19, `eip155:31337/erc20:0x…`); without it, a
    /// payer key beside a `deployment.json` pays in that deployment's token, otherwise nothing
    /// is paid.
    #[arg(long)]
    pub pay_asset: Option<crate::node_cmd::PayAsset>,
    /// Largest |difference| accepted when the re-execution ran on another profile.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Ask nodes named in the record at private, loopback or link-local addresses (a local
    /// network, the devnet); by default a record cannot make verify probe the network it runs in.
    #[arg(long)]
    pub allow_private_nodes: bool,
    /// A hub to read each step's label list from again, by the CID the record names.
    #[arg(long)]
    pub hub: Option<String>,
}

async fn load(record: &str) -> anyhow::Result<cairn_entry::SignedRecord> {
    let text = if record.starts_with("http://") || record.starts_with("https://") {
        let resp = reqwest::get(record)
            .await
            .with_context(|| format!("fetching {record}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("{record}: {status}: {body}");
        }
        body
    } else {
        std::fs::read_to_string(record).with_context(|| format!("reading {record}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("{record} is not a signed run record"))
}

/// `cairn run …`.
pub async fn run(cmd: RunCommand) -> anyhow::Result<()> {
    match cmd {
        RunCommand::Show { record } => {
            let signed = load(&record).await?;
            let r = cairn_entry::record::open(&signed)?;
            println!("run {} by entry {} at {}", signed.id, r.entry, r.created_at);
            print_summary(&cairn_entry::server::summary(&signed, &r));
            println!("\n{}", r.answer.text);
            Ok(())
        }
        RunCommand::Verify(a) => verify(*a).await,
    }
}

async fn verify(a: RunVerifyArgs) -> anyhow::Result<()> {
    let signed = load(&a.record).await?;
    let r = cairn_entry::record::open(&signed)?;
    if let Some(want) = a.entry
        && want != r.entry
    {
        bail!("the record is signed by {}, not the entry {want}", r.entry);
    }
    println!(
        "signature: ok, run {} signed by entry {}{}",
        signed.id,
        r.entry,
        if a.entry.is_some() {
            ""
        } else {
            " (not pinned: pass --entry ADDRESS)"
        }
    );
    if let Some(p) = &a.input {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        if cairn_entry::sha256(&bytes) != r.input_sha256 {
            bail!(
                "input hash mismatch: {} is not the message this run answered",
                p.display()
            );
        }
        // The segments the task object stands on must be this message's.
        let text = String::from_utf8(bytes).context("the message is not UTF-8")?;
        if cairn_entry::task::segment(&text).ok().as_ref() != Some(&r.task.segments) {
            bail!("the record's segments are not {}'s", p.display());
        }
        println!("input:     ok");
    }
    let receipts = cairn_entry::record::check_offline(&r)?;

    println!(
        "content:   ok (task object re-derived, {} steps, {} receipts, {} token units charged)",
        r.steps.len(),
        receipts.len(),
        r.total_charged
    );
    if a.hub.is_none() {
        for s in r
            .steps
            .iter()
            .filter(|s| s.run.as_ref().is_some_and(|run| !run.tokens.is_empty()))
        {
            println!(
                "tokens:    {} NOT checked: pass --hub to encode its texts again by the release's vocabulary",
                s.id
            );
        }
    }
    if let Some(hub) = &a.hub {
        let hub = cairn_hub::HubClient::new(hub, None)?;
        let scratch = std::env::temp_dir().join(format!("cairn-verify-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        for (id, inputs, run) in r
            .steps
            .iter()
            .filter_map(|s| Some((s.id.as_str(), &s.inputs, s.run.as_ref()?)))
        {
            // The files the record names are the release's own.
            let (name, version) = run
                .model
                .reference
                .split_once('@')
                .with_context(|| format!("step {id}: model {}", run.model.reference))?;
            let detail = hub.repo(&name.parse()?).await?;
            let files: Vec<_> = detail
                .releases
                .iter()
                .filter(|x| x.version.to_string() == version && x.published_at.is_some())
                .flat_map(|x| x.files.iter().map(|f| f.cid))
                .collect();
            for cid in std::iter::once(run.model.cid)
                .chain(run.model.labels_cid)
                .chain(run.model.vocab_cid)
            {
                if !files.contains(&cid) {
                    bail!(
                        "step {id}: {cid} is not a file of {}'s published release",
                        run.model.reference
                    );
                }
            }
            if let cairn_entry::task::SubtaskInputs::Texts { texts } = inputs {
                let Some(cid) = run.model.vocab_cid else {
                    bail!("step {id}: its tokens name no vocabulary to check them against");
                };
                let vocab = cairn_entry::skills::read_vocab(&hub, &cid, &scratch)
                    .await
                    .map_err(|e| anyhow::anyhow!("step {id}: {e}"))?;
                if texts.iter().map(|t| vocab.encode(t)).collect::<Vec<_>>() != run.tokens {
                    bail!("step {id}: the token ids are not the texts' by {cid}");
                }
                println!("tokens:    {id} ok ({cid})");
            }
            if run.model.labels.is_empty() {
                continue;
            }
            let Some(cid) = run.model.labels_cid else {
                bail!("step {id}: its labels name no file to check them against");
            };
            let labels = cairn_entry::skills::magika_labels(&hub, &cid, &scratch).await;
            if labels.map_err(|e| anyhow::anyhow!("step {id}: {e}"))? != run.model.labels {
                bail!("step {id}: the labels are not those of {cid}");
            }
            println!("labels:    {id} ok ({cid})");
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let chain = if a.devnet_dir.is_some() || a.chain.rpc.is_some() {
        Some(crate::args::open_chain(&a.chain, a.devnet_dir.as_deref()).await?)
    } else {
        None
    };
    let mut unsettled = Vec::new();
    match &chain {
        Some(chain) => {
            let http = cairn_node_api::fetch::Fetcher::new(
                Duration::from_secs(20),
                1 << 20,
                a.allow_private_nodes,
            );
            for s in cairn_entry::verify::settlement(
                &r,
                &receipts,
                chain,
                http.client(),
                a.allow_private_nodes,
            )
            .await
            {
                println!(
                    "receipt:   {} [{}] {}{}",
                    s.receipt,
                    s.step,
                    s.state,
                    s.batch.map(|b| format!(" (batch {b})")).unwrap_or_default()
                );
                if !s.settled {
                    unsettled.push(s.step);
                }
            }
        }
        None => {
            if !receipts.is_empty() {
                println!("settled:   not checked (give --rpc/--deployment or --devnet-dir)");
                unsettled.push("all".into());
            }
        }
    }
    if let Some(node) = &a.reexec {
        let mut client = cairn_node_api::NodeClient::new(node);
        if let Some(p) = &a.payer_key {
            client = client
                .with_payer(
                    crate::keyfile::load(p)?,
                    cairn_entry::router::channel_salt(),
                )
                .with_accounts(crate::keyfile::prepaid_accounts(p))
                .with_max_price(a.max_pay);
            client = crate::node_cmd::pin_asset(client, a.pay_asset.as_ref(), p)?;
        }
        for step in r.steps.iter().filter(|s| s.run.is_some()) {
            let run = step.run.as_ref().expect("filtered");
            let recorded: Vec<cairn_core::Tensor> = run
                .outputs
                .iter()
                .map(|t| t.tensor().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?;
            let original = run.receipt.verify()?;
            let (outputs, profile) = cairn_entry::verify::rerun(&client, step)
                .await
                .map_err(|e| anyhow::anyhow!("re-running {}: {e}", step.id))?;
            if profile == original.claims.profile {
                if cairn_core::tensor::tensors_hash(&outputs) != original.claims.output_hash {
                    bail!(
                        "re-execution of {} on the same profile gave other bits",
                        step.id
                    );
                }
                println!("reexec:    {} ok, identical bits on {profile}", step.id);
            } else {
                let d = cairn_verifier::max_abs_diff(&recorded, &outputs)
                    .map_err(anyhow::Error::msg)?;
                if d > a.tolerance {
                    bail!(
                        "re-execution of {} differs by {d} (> {}) on {profile}",
                        step.id,
                        a.tolerance
                    );
                }
                println!(
                    "reexec:    {} ok, within {d} on {profile} (recorded on {})",
                    step.id, original.claims.profile
                );
            }
        }
    }
    if !unsettled.is_empty() && !a.allow_unsettled {
        bail!(
            "not every receipt is in a finalized batch yet ({}); batches settle after attestation and the challenge window: try again later, or pass --allow-unsettled",
            unsettled.join(", ")
        );
    }
    println!("verified");
    Ok(())
}
