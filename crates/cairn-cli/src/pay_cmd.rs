//! `cairn pay deposit|balance|withdraw|approve-permit2` (prepaid balances with a node, the
//! one-time approval `upto` needs) and
//! `cairn facilitator serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use alloy_signer_local::PrivateKeySigner;
use alloy_sol_types::Eip712Domain;
use anyhow::{Context, bail};
use cairn_node_api::{NodeClient, NodeClientError, PaymentTerms, PrepaidChannel};
use clap::{Args, Subcommand};

use crate::args::ChainArgs;

/// Who pays and with which node.
#[derive(Args, Clone, Debug)]
pub struct PayerArgs {
    /// The node's URL.
    #[arg(long, env = "CAIRN_NODE", default_value = crate::DEFAULT_NODE)]
    pub node: String,
    /// The payer's key file (on the devnet: DATA_DIR/chain/payer.key).
    #[arg(long, env = "CAIRN_PAYER_KEY")]
    pub payer_key: PathBuf,
    /// The channel's salt.
    #[arg(
        long,
        default_value = "0x0000000000000000000000000000000000000000000000000000000000000000"
    )]
    pub salt: B256,
}

#[derive(Subcommand)]
pub enum PayCommand {
    /// Deposit into your prepaid channel with a node. Without --rpc the deposit is gasless: you
    /// sign an EIP-3009 authorization and the node submits it.
    Deposit {
        #[command(flatten)]
        payer: PayerArgs,
        /// Amount in token units (cUSD has 6 decimals: 1000000 = 1 cUSD).
        #[arg(long)]
        amount: U256,
        /// Send the deposit yourself on this chain instead (approve + deposit, you pay gas).
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Show your prepaid channel with a node.
    Balance {
        #[command(flatten)]
        payer: PayerArgs,
    },
    /// Let Permit2 move your tokens (once), so you can pay with x402 `upto` permits: a
    /// transaction you send on the node's chain (the devnet's: its `chain rpc`).
    ApprovePermit2 {
        #[command(flatten)]
        payer: PayerArgs,
        /// The chain's JSON-RPC endpoint.
        #[arg(long, env = "CAIRN_RPC")]
        rpc: String,
        /// The token you mean to approve Permit2 on; refused when the node names another (it
        /// is the node's word otherwise: check what is printed).
        #[arg(long)]
        token: Option<Address>,
    },
    /// Take back what the node has not earned: the first call asks (a delay starts, the node
    /// redeems its last vouchers meanwhile), a call after the delay withdraws. Sent by you, so it
    /// needs --rpc/--deployment.
    Withdraw {
        #[command(flatten)]
        payer: PayerArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
}

#[derive(Subcommand)]
pub enum FacilitatorCommand {
    /// Serve `POST /verify`, `POST /settle` and `GET /supported` for one chain and token.
    Serve {
        /// Listen address; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:7402")]
        listen: SocketAddr,
        /// The key that sends settlement transactions (pays the gas).
        #[arg(long)]
        key: PathBuf,
        /// Where the payment store lives.
        #[arg(long)]
        data_dir: PathBuf,
        #[command(flatten)]
        chain: ChainArgs,
        /// The API key resource servers send (`Authorization: Bearer …`): one token per line;
        /// created with a random token (mode 0600) when missing. Default: DATA_DIR/api-keys.
        #[arg(long)]
        api_keys: Option<PathBuf>,
        /// The only payees it settles to (your resource servers' payTo; repeatable, required):
        /// it pays the gas, so nobody may point it elsewhere.
        #[arg(long = "pay-to", required = true)]
        pay_to: Vec<Address>,
        /// The smallest amount it settles, in token units.
        #[arg(long, default_value = "1000")]
        min_amount: U256,
    },
}

/// The facilitator's API keys file: tokens one per line; a random one is created when missing.
fn api_keys(path: &std::path::Path) -> anyhow::Result<Vec<[u8; 32]>> {
    use sha2::Digest;
    if !path.exists() {
        let token = B256::random().to_string();
        let line = format!("{}\n", token.trim_start_matches("0x"));
        crate::keyfile::create_secret(path, line.as_bytes())?;
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let keys: Vec<[u8; 32]> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| sha2::Sha256::digest(l.as_bytes()).into())
        .collect();
    if keys.is_empty() {
        bail!("{} holds no API key", path.display());
    }
    Ok(keys)
}

/// The deployment the payer trusts: `given` (`--deployment`), else the `deployment.json`
/// beside the payer key (the devnet's), else none.
fn trusted_deployment(
    payer: &PayerArgs,
    given: Option<&std::path::Path>,
) -> anyhow::Result<Option<cairn_ledger::Deployment>> {
    let beside = payer.payer_key.with_file_name("deployment.json");
    match given {
        Some(path) => Ok(Some(cairn_ledger::Deployment::load(path)?)),
        None if beside.is_file() => Ok(Some(cairn_ledger::Deployment::load(&beside)?)),
        None => Ok(None),
    }
}

/// Terms naming another chain, token or escrow than the trusted deployment are refused.
fn terms_match(t: &PaymentTerms, d: &cairn_ledger::Deployment, node: &str) -> anyhow::Result<()> {
    let network = cairn_x402::wire::caip2(d.chain_id);
    if t.network != network || t.asset != d.token || t.escrow != d.escrow {
        bail!(
            "the node at {node} names token {} and escrow {} on {}; the deployment you trust has token {} and escrow {} on {network}: nothing was signed",
            t.asset,
            t.escrow,
            t.network,
            d.token,
            d.escrow
        );
    }
    Ok(())
}

/// The node's payment terms (`/v1/node` → `payments`).
async fn terms(node: &str) -> anyhow::Result<PaymentTerms> {
    NodeClient::new(node)
        .payment_terms()
        .await
        .with_context(|| format!("asking {node} for its payment terms"))?
        .with_context(|| format!("the node at {node} does not take payments"))
}

fn print_channel(c: &PrepaidChannel) {
    if !c.known {
        println!("no deposit with this node yet (payee {})", c.payee);
        return;
    }
    let deposited = c.deposited.unwrap_or_default();
    println!("payer:     {}", c.payer);
    println!("payee:     {} (the node's payment vault)", c.payee);
    println!("deposited: {deposited}");
    println!("spent:     {} (vouchers the node accepted)", c.accepted);
    println!(
        "redeemed:  {} (claimed on chain so far)",
        c.redeemed.unwrap_or_default()
    );
    println!("available: {}", deposited.saturating_sub(c.accepted));
    if c.closing == Some(true) {
        println!("closing:   a withdrawal was requested; the node takes no more vouchers on it");
    }
}

pub async fn run(c: PayCommand) -> anyhow::Result<()> {
    match c {
        PayCommand::Deposit {
            payer,
            amount,
            chain,
        } => deposit(payer, amount, chain).await,
        PayCommand::Balance { payer } => {
            let key = crate::keyfile::load(&payer.payer_key)?;
            balance(&payer, key.address()).await
        }
        PayCommand::Withdraw { payer, chain } => withdraw(payer, chain).await,
        PayCommand::ApprovePermit2 { payer, rpc, token } => {
            approve_permit2(payer, rpc, token).await
        }
    }
}

/// `cairn pay approve-permit2`: the token's `approve(Permit2, max)`, sent by the payer.
async fn approve_permit2(
    payer: PayerArgs,
    rpc: String,
    token: Option<Address>,
) -> anyhow::Result<()> {
    use alloy_sol_types::SolCall;
    use cairn_ledger::Ledger;
    let key = crate::keyfile::load(&payer.payer_key)?;
    let t = terms(&payer.node).await?;
    // Never the node's word alone: Permit2 may then move every unit of that token.
    let trusted = trusted_deployment(&payer, None)?;
    let token = match (token, &trusted) {
        (Some(token), _) => token,
        (None, Some(d)) => d.token,
        (None, None) => bail!(
            "the node at {} names token {} on {}: name the token you mean to let Permit2 move with --token ADDRESS, checked against your own records of that chain, not the node's (nothing approved)",
            payer.node,
            t.asset,
            t.network
        ),
    };
    if token != t.asset {
        bail!(
            "the node at {} is paid in {}, not the token {token} you named: nothing approved",
            payer.node,
            t.asset
        );
    }
    let ledger = cairn_ledger::RpcLedger::connect(&rpc, Duration::from_secs(60))
        .await
        .with_context(|| format!("connecting to {rpc}"))?;
    let network = cairn_x402::wire::caip2(ledger.chain_id());
    if let Some(d) = &trusted
        && d.chain_id != ledger.chain_id()
    {
        bail!(
            "{rpc} is chain {network}; the deployment beside your key is on chain {}: nothing approved",
            d.chain_id
        );
    }
    if network != t.network {
        bail!(
            "{rpc} is chain {network}; the node at {} is paid on {}",
            payer.node,
            t.network
        );
    }
    let permit2 = cairn_ledger::contracts::x402_addresses::PERMIT2;
    let call = cairn_ledger::contracts::CairnToken::approveCall {
        spender: permit2,
        value: U256::MAX,
    };
    let out = ledger
        .send(
            &key,
            cairn_ledger::TxRequest {
                to: Some(t.asset),
                data: call.abi_encode().into(),
                value: U256::ZERO,
            },
        )
        .await?;
    println!(
        "approved Permit2 ({permit2}) to move {}'s tokens ({}) on {network} (tx {}); the node's x402 upto offers are now payable",
        key.address(),
        t.asset,
        out.hash
    );
    Ok(())
}

/// `cairn pay deposit`: on chain with --rpc, else gasless through the node.
async fn deposit(payer: PayerArgs, amount: U256, chain: ChainArgs) -> anyhow::Result<()> {
    let key = crate::keyfile::load(&payer.payer_key)?;
    let t = terms(&payer.node).await?;
    let payee = t.pay_to;
    if chain.rpc.is_some() {
        let chain = chain.connect().await?;
        // The payer's own deployment pays; its account below is kept under the node's terms,
        // so they must name the same escrow.
        terms_match(&t, chain.deployment(), &payer.node)?;
        chain.deposit(&key, payee, payer.salt, amount).await?;
    } else {
        // The node names the escrow the authorization pays into: only one the payer trusts.
        let Some(d) = trusted_deployment(&payer, chain.deployment.as_deref())? else {
            bail!(
                "a gasless deposit pays into the escrow the node names ({} on {}, token {}): name the deployment you trust with --deployment FILE (the devnet's DATA_DIR/chain/deployment.json, found by itself beside DATA_DIR/chain/payer.key); nothing was signed",
                t.escrow,
                t.network,
                t.asset
            );
        };
        terms_match(&t, &d, &payer.node)?;
        deposit_gasless(&key, &t, &payer, amount).await?;
    }
    println!("deposited {amount} token units with {}", payer.node);
    // This machine's own account of the channel: vouchers are signed from it, never from
    // the node's word. A new channel starts from what the node reports as owed.
    let path = account_path(&payer, key.address(), &t)?;
    if cairn_x402::client::PrepaidAccount::load(&path)?.is_none() {
        let c = channel(&payer, key.address()).await?;
        cairn_x402::client::PrepaidAccount::create(&path, c.accepted)?;
    }
    balance(&payer, key.address()).await
}

/// A deposit signed as an EIP-3009 authorization that the node relays (and pays the gas for).
async fn deposit_gasless(
    key: &PrivateKeySigner,
    t: &PaymentTerms,
    payer: &PayerArgs,
    amount: U256,
) -> anyhow::Result<()> {
    let chain_id = cairn_x402::wire::chain_id_of(&t.network)
        .context("the node's network is not an EVM chain")?;
    let domain = Eip712Domain::new(
        Some(t.token_name.clone().into()),
        Some(t.token_version.clone().into()),
        Some(U256::from(chain_id)),
        Some(t.asset),
        None,
    );
    let valid_before = cairn_core::clock::now_secs() + 600;
    let d = cairn_x402::prepaid::sign_deposit(
        key,
        t.escrow,
        t.pay_to,
        payer.salt,
        amount,
        valid_before,
        &domain,
    )?;
    match NodeClient::new(&payer.node).prepaid_deposit(&d).await {
        Ok(_) => {}
        // Taken, but the answer does not read as a channel: the deposit stands.
        Err(NodeClientError::Protocol(m)) => {
            eprintln!("note: the node took the deposit; its answer did not read: {m}")
        }
        Err(e) => return Err(e).context("the node refused the deposit"),
    }
    Ok(())
}

/// `cairn pay withdraw`: request, then after the delay take back what was not redeemed.
async fn withdraw(payer: PayerArgs, chain: ChainArgs) -> anyhow::Result<()> {
    let key = crate::keyfile::load(&payer.payer_key)?;
    let payee = terms(&payer.node).await?.pay_to;
    let chain = chain.connect().await?;
    let st = chain
        .channel_state(key.address(), payee, payer.salt)
        .await?;
    if st.deposited == st.claimed {
        bail!("nothing to withdraw: everything deposited was paid out");
    }
    if st.withdrawable_at == 0 {
        chain.request_withdrawal(&key, payee, payer.salt).await?;
        let st = chain
            .channel_state(key.address(), payee, payer.salt)
            .await?;
        println!(
            "withdrawal requested: run this again after Unix time {} to take back what the node has not redeemed",
            st.withdrawable_at
        );
        return Ok(());
    }
    let before = chain.token_balance(key.address()).await?;
    chain.withdraw(&key, payee, payer.salt).await?;
    let after = chain.token_balance(key.address()).await?;
    println!("withdrew {} token units", after - before);
    Ok(())
}

async fn channel(payer: &PayerArgs, who: Address) -> anyhow::Result<PrepaidChannel> {
    NodeClient::new(&payer.node)
        .prepaid_channel(who, payer.salt)
        .await
        .with_context(|| format!("asking {} for the channel", payer.node))
}

/// The payer's own account file of its channel with the node whose terms are `t`.
fn account_path(payer: &PayerArgs, who: Address, t: &PaymentTerms) -> anyhow::Result<PathBuf> {
    let chain_id = cairn_x402::wire::chain_id_of(&t.network)
        .context("the node's network is not an EVM chain")?;
    let channel = cairn_ledger::Chain::channel_id(who, t.pay_to, payer.salt);
    Ok(cairn_x402::client::PrepaidAccount::path(
        &crate::keyfile::prepaid_accounts(&payer.payer_key),
        chain_id,
        t.escrow,
        channel,
    ))
}

async fn balance(payer: &PayerArgs, who: Address) -> anyhow::Result<()> {
    let c = channel(payer, who).await?;
    print_channel(&c);
    let t = terms(&payer.node).await?;
    let path = account_path(payer, who, &t)?;
    match cairn_x402::client::PrepaidAccount::load(&path)? {
        Some(a) => {
            println!("your account: {} paid ({})", a.paid, path.display());
            let node = c.accepted;
            if node > a.paid {
                println!(
                    "warning: the node counts {node}, more than your own account; your next vouchers follow your account"
                );
            }
        }
        None => println!(
            "your account: none on this machine ({}); `cairn infer` pays this node with exact until you deposit from here",
            path.display()
        ),
    }
    Ok(())
}

pub async fn facilitator(c: FacilitatorCommand) -> anyhow::Result<()> {
    let FacilitatorCommand::Serve {
        listen,
        key,
        data_dir,
        chain,
        api_keys: keys_path,
        pay_to,
        min_amount,
    } = c;
    let key = crate::keyfile::load(&key)?;
    let chain = chain.connect().await?;
    let store = cairn_x402::PaymentStore::open(
        &data_dir.join("payments.sqlite"),
        cairn_node::Durability::Full,
    )?;
    let keys_path = keys_path.unwrap_or_else(|| data_dir.join("api-keys"));
    let policy = cairn_x402::facilitator::Policy {
        api_key_hashes: api_keys(&keys_path)?,
        pay_to,
        min_amount,
    };
    let f = Arc::new(
        cairn_x402::Facilitator::new(chain, key, store)
            .await?
            .with_policy(policy),
    );
    tokio::spawn(f.clone().reconcile_loop(Duration::from_secs(5)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("facilitator: http://{}", listener.local_addr()?);
    println!("  api keys: {}", keys_path.display());
    println!("  network:  {}", f.network());
    println!("  asset:    {}", f.token());
    axum::serve(cairn_serve::LingeringListener::new(listener), f.router())
        .with_graceful_shutdown(crate::shutdown_signal())
        .await?;
    Ok(())
}
