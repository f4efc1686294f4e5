//! `cairn infer`: tensors read from files, sent to a node, paid for, and the receipt checked.

use super::*;

/// Reads tensors from a KServe JSON request file or a safetensors file.
pub fn read_tensors(path: &Path) -> anyhow::Result<Vec<Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !is_json {
        return safetensors_io::decode(&bytes)
            .with_context(|| format!("reading {}", path.display()));
    }
    // A request file holds `inputs`; an output file written by `cairn infer --output x.json`
    // holds `outputs`.
    let head: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let tensors = if head.get("inputs").is_none() && head.get("outputs").is_some() {
        cairn_node_api::client::parse_outputs(&bytes)
            .with_context(|| format!("reading {}", path.display()))?
    } else {
        let limits = cairn_node_api::kserve::DecodeLimits {
            max_elements: u64::MAX,
        };
        cairn_node_api::kserve::decode(&bytes, None, limits)
            .with_context(|| format!("reading {}", path.display()))?
            .inputs
    };
    Ok(tensors)
}

/// Who pays a node's 402 answers (`cairn infer`, `cairn llm`).
#[derive(clap::Args, Clone, Debug)]
pub struct PayerArgs {
    /// Pay the node's 402 answers with this key file: prepaid when you have a deposit with the
    /// node that covers the call, else an EIP-3009 `exact` payment (a language-model call is
    /// paid only prepaid). On the devnet: DATA_DIR/chain/payer.key.
    #[arg(long, env = "CAIRN_PAYER_KEY")]
    pub payer_key: Option<PathBuf>,
    /// The prepaid channel's salt (one payer can hold several channels with a node).
    #[arg(
        long,
        default_value = "0x0000000000000000000000000000000000000000000000000000000000000000"
    )]
    pub salt: alloy_primitives::B256,
    /// Pay from your x402 `batch-settlement` channel with the node (same salt) when it offers
    /// one and no prepaid deposit covers the call, depositing this many token units (at least the
    /// node's minDeposit) with a payment whenever the channel runs low: gasless, you sign an
    /// EIP-3009 authorization the node submits. Take back what is left with any x402 client's
    /// refund, or withdraw on chain.
    #[arg(long)]
    pub batch_deposit: Option<alloy_primitives::U256>,
    /// The most one call may cost you, token units: a node asking more is not paid.
    #[arg(long, default_value = "100000")]
    pub max_pay: alloy_primitives::U256,
    /// Pay only in this token on this chain, as a CAIP-19 asset id
    /// (`eip155:31337/erc20:0x…`; the devnet prints its token): a node naming another token or
    /// chain is not paid. Without it, a payer key beside a deployment's `deployment.json` (the
    /// devnet's DATA_DIR/chain/payer.key) pays in that deployment's token; otherwise nothing is
    /// paid.
    #[arg(long)]
    pub pay_asset: Option<PayAsset>,
}

/// `client` paying only in the asset the payer agreed to: `--pay-asset`, else the token (and
/// escrow) of the `deployment.json` beside the payer key, else none at all (every 402 refused,
/// naming the flag that agrees to the asset asked for): a node must not choose which of the
/// payer's tokens, or which chain, it is paid from.
pub fn pin_asset(
    client: NodeClient,
    pay_asset: Option<&PayAsset>,
    payer_key: &Path,
) -> anyhow::Result<NodeClient> {
    Ok(match agreed_asset(pay_asset, payer_key)? {
        Some((network, token, escrow)) => {
            let c = client.with_asset(&network, token);
            match escrow {
                Some(e) => c.with_escrow(e),
                None => c,
            }
        }
        None => client.paying_only_named_assets(),
    })
}

/// The asset a payer agreed to pay in: (CAIP-2 network, token, and the escrow when a
/// deployment names it) from `--pay-asset`, else from the `deployment.json` beside the payer
/// key, else none.
pub fn agreed_asset(
    pay_asset: Option<&PayAsset>,
    payer_key: &Path,
) -> anyhow::Result<
    Option<(
        String,
        alloy_primitives::Address,
        Option<alloy_primitives::Address>,
    )>,
> {
    if let Some(a) = pay_asset {
        return Ok(Some((a.network.clone(), a.token, None)));
    }
    let beside = payer_key.with_file_name("deployment.json");
    if !beside.is_file() {
        return Ok(None);
    }
    let d = cairn_ledger::Deployment::load(&beside)?;
    Ok(Some((
        format!("eip155:{}", d.chain_id),
        d.token,
        Some(d.escrow),
    )))
}

/// What to do when a node asks for an asset nobody agreed to.
pub fn explain_asset(e: cairn_node_api::client::NodeClientError) -> anyhow::Error {
    match e {
        cairn_node_api::client::NodeClientError::AssetNotAgreed {
            network,
            asset,
            scheme,
        } => anyhow!(
            "the node asks to be paid in token {asset} on {network} ({scheme}), and no asset to pay in was named: nothing was paid\n  pass --pay-asset {network}/erc20:{asset} if that is the token you mean to pay in"
        ),
        other => other.into(),
    }
}

/// A token on an EVM chain, spelled as a CAIP-19 asset id: `eip155:<chain id>/erc20:<address>`.
#[derive(Clone, Debug)]
pub struct PayAsset {
    /// The chain, CAIP-2 (`eip155:31337`), as x402 offers name it.
    pub network: String,
    /// The token contract.
    pub token: alloy_primitives::Address,
}

impl std::str::FromStr for PayAsset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a CAIP-19 token id like eip155:8453/erc20:0x…");
        let (network, token) = s.split_once('/').ok_or_else(bad)?;
        let chain = network.strip_prefix("eip155:").ok_or_else(bad)?;
        let chain: u64 = chain.parse().map_err(|_| bad())?;
        let token = token
            .strip_prefix("erc20:")
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        Ok(Self {
            // As offers spell it.
            network: format!("eip155:{chain}"),
            token,
        })
    }
}

/// How a call is made: who pays and how its receipt is signed.
pub struct CallArgs {
    /// Who pays.
    pub payer: PayerArgs,
    /// The receipt's seal.
    pub seal: cairn_node_api::SealChoice,
    /// Whether (and how) the call goes sealed through a relay.
    pub private: crate::relay_cmd::PrivateArgs,
}

impl CallArgs {
    /// A client for `node` that pays with the payer key, when one is given (its prepaid
    /// accounts beside it).
    pub fn client(&self, node: &str) -> anyhow::Result<NodeClient> {
        let mut client = NodeClient::new(node).with_seal(self.seal);
        if let Some(path) = &self.payer.payer_key {
            client = client
                .with_payer(crate::keyfile::load(path)?, self.payer.salt)
                .with_accounts(crate::keyfile::prepaid_accounts(path))
                .with_max_price(self.payer.max_pay);
            client = pin_asset(client, self.payer.pay_asset.as_ref(), path)?;
            if let Some(amount) = self.payer.batch_deposit {
                client = client.with_batch_deposit(amount);
            }
        }
        Ok(client)
    }

    /// `e` as the CLI says it: a 402 without a payer key explains how to pay (`how`).
    pub fn explain(&self, e: cairn_node_api::client::NodeClientError, how: &str) -> anyhow::Error {
        match e {
            cairn_node_api::client::NodeClientError::Api {
                status,
                code,
                message,
            } if status == reqwest::StatusCode::PAYMENT_REQUIRED
                && self.payer.payer_key.is_none() =>
            {
                anyhow!(
                    "the node asks for payment ({code}): {message}\n  pass --payer-key FILE (env CAIRN_PAYER_KEY) {how}; on the devnet: DATA_DIR/chain/payer.key"
                )
            }
            cairn_node_api::client::NodeClientError::Api {
                status,
                code,
                message,
            } if status == reqwest::StatusCode::PAYMENT_REQUIRED
                && code == "permit2_allowance_required" =>
            {
                anyhow!(
                    "the node refused the x402 upto permit ({code}): {message}\n  approve Permit2 once (cairn pay approve-permit2 --rpc URL; the devnet's chain RPC is printed as `chain rpc`), or deposit with the node (cairn pay deposit) to pay with prepaid vouchers"
                )
            }
            other => explain_asset(other),
        }
    }
}

/// `cairn infer`.
pub async fn infer(
    node: &str,
    reference: &str,
    input: &Path,
    json_body: bool,
    output: Option<PathBuf>,
    receipt_out: Option<PathBuf>,
    pay: CallArgs,
) -> anyhow::Result<()> {
    let inputs = read_tensors(input)?;
    let (node, _proxy) = pay.private.route(node).await?;
    let client = pay.client(&node)?;
    let outcome = client
        .infer(reference, &inputs, json_body)
        .await
        .map_err(|e| pay.explain(e, "to pay automatically"))?;
    print_outputs(&outcome.outputs);
    // The client reads only receipts that verify.
    let receipt = &outcome.receipt;
    if receipt.claims.output_hash != tensors_hash(&outcome.outputs) {
        eprintln!(
            "note: the receipt's output hash covers every model output; this call returned a subset"
        );
    }
    if let Some(p) = &outcome.payment {
        println!("{}", describe_payment(p));
    }
    println!("model:    {}", outcome.model_name);
    println!("receipt:  {} signed by {}", receipt.id(), receipt.signer);
    if let Some(path) = output {
        write_outputs(&path, &outcome.outputs)?;
    }
    if let Some(path) = receipt_out {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&outcome.receipt)? + "\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        println!("receipt written to {}", path.display());
    }
    Ok(())
}

/// Each output, its first values.
fn print_outputs(outputs: &[Tensor]) {
    for t in outputs {
        let values = cairn_node_api::kserve::bytes_to_json(t.dtype(), t.data());
        let shown = match &values {
            serde_json::Value::Array(a) if a.len() > 16 => {
                format!(
                    "{} … ({} values)",
                    serde_json::Value::Array(a[..16].to_vec()),
                    a.len()
                )
            }
            v => v.to_string(),
        };
        println!("{} {} {:?}: {shown}", t.name(), t.dtype(), t.shape());
    }
}

/// One line on what the call cost and how it was paid.
fn describe_payment(p: &cairn_node_api::client::PaymentMade) -> String {
    let how = match &p.settlement {
        Some(s) if s.success && p.scheme == "exact" => {
            format!("settled in transaction {}", s.transaction)
        }
        Some(s) if s.success && p.scheme == cairn_x402::batch::SCHEME => {
            let extra = s.extra.clone().unwrap_or_default();
            let field = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
            format!(
                "charged {} from the channel (it holds {}, {} charged in all)",
                field(&extra["chargedAmount"]),
                field(&extra["channelState"]["balance"]),
                field(&extra["channelState"]["chargedCumulativeAmount"]),
            )
        }
        Some(s) if s.success => format!("voucher accepted, payment ref {}", s.transaction),
        Some(s) => format!(
            "not settled: {}",
            s.error_reason.as_deref().unwrap_or("unknown")
        ),
        None => "no settlement answer".to_string(),
    };
    format!(
        "paid:     {} token units ({}) to {}, {how}",
        p.amount, p.scheme, p.pay_to
    )
}

/// Writes the outputs as KServe JSON (`.json`) or safetensors.
fn write_outputs(path: &Path, outputs: &[Tensor]) -> anyhow::Result<()> {
    let bytes = if path.extension().is_some_and(|e| e == "json") {
        let outs: Vec<_> = outputs
            .iter()
            .map(|t| serde_json::json!({"name": t.name(), "datatype": t.dtype().name(), "shape": t.shape(), "data": cairn_node_api::kserve::bytes_to_json(t.dtype(), t.data())}))
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({"outputs": outs}))?
    } else {
        safetensors_io::encode(outputs)
    };
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::PayAsset;

    #[test]
    fn a_pay_asset_is_a_caip19_token_id() {
        let a: PayAsset = "eip155:31337/erc20:0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap();
        assert_eq!(a.network, "eip155:31337");
        let a: PayAsset = "eip155:031337/erc20:0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap();
        assert_eq!(a.network, "eip155:31337");
        assert_eq!(
            a.token,
            "0x5FbDB2315678afecb367f032d93F642f64180aa3"
                .parse::<alloy_primitives::Address>()
                .unwrap()
        );
        for bad in [
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "eip155:x/erc20:0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "solana:1/erc20:0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "eip155:1/erc721:0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "eip155:1/erc20:0x5F",
        ] {
            let e = bad.parse::<PayAsset>().unwrap_err();
            assert!(e.contains("CAIP-19"), "{bad}: {e}");
        }
    }
}
