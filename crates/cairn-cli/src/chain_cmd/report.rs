//! What the chain says, read and printed (`cairn chain status`, `cairn receipt settled`), and
//! the devnet's chain opened and shown.

use super::*;

/// `cairn receipt settled`: the node's inclusion proof, checked locally and on chain.
pub async fn settled(
    chain: &Chain,
    node: &str,
    receipt: &cairn_receipt::SignedReceipt,
) -> anyhow::Result<()> {
    let d = chain.deployment();
    if receipt.domain.chain_id != d.chain_id || receipt.domain.verifying_contract != d.settlement {
        bail!(
            "the receipt is addressed to chain {} contract {}, not this deployment's settlement {} on chain {}",
            receipt.domain.chain_id,
            receipt.domain.verifying_contract,
            d.settlement,
            d.chain_id
        );
    }
    let stored = cairn_node_api::NodeClient::new(node)
        .receipt(receipt.id())
        .await
        .with_context(|| format!("asking {node} for the receipt's batch"))?;
    let Some(batch) = stored.batch else {
        bail!("the node has not put this receipt in a batch yet; try again after its batch age");
    };
    let id = batch
        .id
        .context("the node sealed the batch but has not submitted it yet; try again shortly")?;
    let (root, proof) = (batch.root, batch.proof);
    let digest = receipt.signing_hash();
    if !cairn_receipt::merkle::verify(root, digest, &proof) {
        bail!("the node's proof does not lead from the receipt to its root");
    }
    let on_chain = chain.batch(id).await?;
    if on_chain.root != root {
        bail!(
            "batch {id} on chain has root {}, the node says {root}",
            on_chain.root
        );
    }
    if on_chain.node != receipt.signer {
        bail!(
            "batch {id} was submitted by {}, the receipt is signed by {}",
            on_chain.node,
            receipt.signer
        );
    }
    if !chain.verify_inclusion(id, digest, proof).await? {
        bail!("Settlement.verifyInclusion refused the proof");
    }
    println!(
        "receipt {} is in batch {id} on chain {}",
        receipt.id(),
        d.chain_id
    );
    println!("  root:   {root}");
    println!("  status: {:?}", on_chain.status);
    println!(
        "  proof:  verified locally and by Settlement.verifyInclusion at {}",
        d.settlement
    );
    Ok(())
}

/// Everything `cairn chain status` shows, as JSON.
pub async fn status(chain: &Chain) -> anyhow::Result<Value> {
    let d = chain.deployment();
    let ledger = chain.ledger();
    let head = ledger.head().await?;
    let mut nodes = Vec::new();
    for who in chain.registered_nodes().await? {
        let n = chain.node(who).await?;
        let mut v = serde_json::to_value(&n)?;
        v["tokenBalance"] = json!(chain.token_balance(who).await?.to_string());
        if n.role == Some(Role::Inference) {
            // Where callers' payments wait until they become batch fees.
            let vault = chain.vault_of(who).await?;
            v["vault"] = json!(vault);
            v["vaultBalance"] = json!(chain.token_balance(vault).await?.to_string());
        }
        nodes.push(v);
    }
    let count = chain.batch_count().await?;
    let mut batches = Vec::new();
    for id in (count.saturating_sub(20) + 1..=count).rev() {
        batches.push(serde_json::to_value(chain.batch(id).await?)?);
    }
    Ok(json!({
        "ledger": ledger.describe(),
        "chainId": d.chain_id,
        "head": {"number": head.number, "timestamp": head.timestamp},
        "stateRoot": ledger.state_root().await?.to_string(),
        "contracts": d,
        "quorum": chain.quorum().await?,
        "challengeWindowSecs": chain.challenge_window().await?,
        "treasuryBalance": chain.token_balance(d.treasury).await?.to_string(),
        "settlementBalance": chain.token_balance(d.settlement).await?.to_string(),
        "nodes": nodes,
        "batchCount": count,
        "batches": batches,
    }))
}

pub(super) fn print_status(s: &Value) {
    let str_of = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    println!("{}", str_of(&s["ledger"]));
    println!(
        "  head {} at {}  state root {}",
        s["head"]["number"],
        s["head"]["timestamp"],
        str_of(&s["stateRoot"])
    );
    let c = &s["contracts"];
    for name in [
        "token",
        "registry",
        "settlement",
        "escrow",
        "governor",
        "treasury",
    ] {
        println!("  {name:<11}{}", str_of(&c[name]));
    }
    println!(
        "  quorum {}  challenge window {} s  treasury balance {}",
        s["quorum"],
        s["challengeWindowSecs"],
        str_of(&s["treasuryBalance"])
    );
    println!("nodes:");
    for n in s["nodes"].as_array().into_iter().flatten() {
        println!(
            "  {} {:<9} stake {:>14} balance {:>16} {} {}",
            str_of(&n["address"]),
            str_of(&n["role"]),
            str_of(&n["stake"]),
            str_of(&n["tokenBalance"]),
            if n["active"].as_bool() == Some(true) {
                "active"
            } else {
                "inactive"
            },
            str_of(&n["endpoint"]),
        );
    }
    println!("batches: {}", s["batchCount"]);
    for b in s["batches"].as_array().into_iter().flatten() {
        println!(
            "  #{} {:<9} {} receipts, fees {}, node {}",
            b["id"],
            str_of(&b["status"]),
            b["count"],
            str_of(&b["fees"]),
            str_of(&b["node"]),
        );
    }
}

/// Opens (or creates) the devnet's embedded chain in `data_dir`, approving the portable tract
/// profile at genesis.
pub async fn devnet_chain(
    data_dir: &Path,
    chain_id: u64,
    challenge_window: u64,
    attestation_timeout: u64,
) -> anyhow::Result<(Chain, std::sync::Arc<cairn_ledger::EmbeddedLedger>)> {
    let (ledger, deployment) = devnet_paths(data_dir);
    cairn_ledger::devnet::open(&cairn_ledger::devnet::Genesis {
        ledger_path: ledger,
        deployment_path: deployment,
        chain_id,
        challenge_window,
        attestation_timeout,
        approved_profiles: vec![cairn_engine::TractEngine::portable_profile().hash()],
    })
    .await
    .context("setting up the devnet's chain")
}

/// Prints the devnet's contracts and accounts (keys are public dev keys).
pub async fn print_devnet(chain: &Chain) -> anyhow::Result<()> {
    let d = chain.deployment();
    println!(
        "  chain:    {} (chain id {})",
        chain.ledger().describe(),
        d.chain_id
    );
    println!(
        "  token:    {} (cUSD, 6 decimals, EIP-2612 + EIP-3009; pay only in it: --pay-asset eip155:{}/erc20:{})",
        d.token, d.chain_id, d.token
    );
    println!("  registry: {}", d.registry);
    println!("  settlement (receipt domain): {}", d.settlement);
    println!("  escrow:   {}", d.escrow);
    if let Some(u) = d.upto {
        println!(
            "  x402 upto: Permit2 {}, proxy {} (where the x402 clients expect them)",
            u.permit2, u.proxy
        );
    }
    println!("  accounts (public dev keys: never use them on a real chain):");
    for (i, role) in cairn_ledger::devnet::ACCOUNTS {
        let s = dev_signer(i);
        let balance = chain.token_balance(s.address()).await?;
        println!(
            "    {i} {} 0x{} {:>16} cUSD-units  {role}",
            s.address(),
            alloy_primitives::hex::encode(s.to_bytes()),
            balance.to_string()
        );
    }
    Ok(())
}
