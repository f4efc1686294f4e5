//! What checking a run record needs the network for: that each receipt sits in a batch on chain
//! (its node's proof, the chain's root, the batch's state), and running a model step again.

use alloy_primitives::B256;
use cairn_core::Tensor;
use cairn_node_api::NodeClient;
use cairn_receipt::ReceiptJson;

use crate::record::{RunRecord, Step};

/// Where a receipt stands on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The step (`parse`, `s1`, `answer`).
    pub step: String,
    /// The receipt id.
    pub receipt: B256,
    /// The batch, once submitted.
    pub batch: Option<u64>,
    /// What was found (`finalized`, `attested`, `sealed`, `not batched`, …).
    pub state: String,
    /// Whether the batch is finalized on chain with this receipt proven in it.
    pub settled: bool,
}

/// The node a step's receipt came from.
pub fn node_of<'a>(r: &'a RunRecord, step: &str) -> Option<&'a str> {
    match step {
        "parse" => r.parse.as_ref().map(|c| c.node.url.as_str()),
        "answer" => r.answer.llm.as_ref().map(|c| c.node.url.as_str()),
        id => r
            .steps
            .iter()
            .find(|s| s.id == id)?
            .run
            .as_ref()
            .map(|m| m.node.url.as_str()),
    }
}

/// Finds each receipt's batch: the node's inclusion proof, checked against the chain's root for
/// that batch, the batch's node and the contract's own inclusion check. Nodes are reached with
/// `http` (a [`cairn_node_api::fetch::Fetcher`]'s client: no redirects, public addresses unless
/// allowed).
pub async fn settlement(
    r: &RunRecord,
    receipts: &[(String, ReceiptJson)],
    chain: &cairn_ledger::Chain,
    http: &reqwest::Client,
    allow_private: bool,
) -> Vec<Standing> {
    let mut out = Vec::new();
    for (step, json) in receipts {
        let Ok((rc, digest)) = json.verify_with_digest() else {
            continue;
        };
        let mut s = Standing {
            step: step.clone(),
            receipt: rc.id(),
            batch: None,
            state: String::new(),
            settled: false,
        };
        let Some(url) = node_of(r, step) else {
            s.state = "no node to ask".into();
            out.push(s);
            continue;
        };
        // The URL is the record's word: reached as any node-chosen URL is (`http`; a literal
        // private address is refused here, names when resolved), read within a cap.
        if let Err(e) = cairn_node_api::fetch::check_url(url, allow_private) {
            s.state = format!("its node cannot be asked: {e}");
            out.push(s);
            continue;
        }
        let client = NodeClient::new(url)
            .with_http(http.clone())
            .with_max_body(1 << 20);
        let stored = match client.receipt(rc.id()).await {
            Ok(x) => x,
            Err(e) => {
                s.state = format!("its node cannot be asked: {e}");
                out.push(s);
                continue;
            }
        };
        let Some(inc) = stored.batch else {
            s.state = "not in a batch yet".into();
            out.push(s);
            continue;
        };
        if !cairn_receipt::merkle::verify(inc.root, digest, &inc.proof) {
            s.state = "the node's proof does not lead to its batch root".into();
            out.push(s);
            continue;
        }
        let Some(id) = inc.id else {
            s.state = format!("in a batch the node has not submitted yet ({})", inc.status);
            out.push(s);
            continue;
        };
        s.batch = Some(id);
        match chain.batch(id).await {
            Ok(b) if b.root != inc.root || b.node != rc.signer => {
                s.state = format!("batch {id} on chain is not the one the node names");
            }
            Ok(b) => {
                let proven = chain
                    .verify_inclusion(id, digest, inc.proof.clone())
                    .await
                    .unwrap_or(false);
                s.state = format!("{:?}", b.status).to_lowercase();
                s.settled = proven && b.status == cairn_ledger::BatchStatus::Finalized;
                if !proven {
                    s.state = format!("batch {id}: the contract does not prove the receipt in it");
                }
            }
            Err(e) => s.state = format!("the chain cannot be read: {e}"),
        }
        out.push(s);
    }
    out
}

/// Runs a model step again on the node at `url` (paid by `client`'s payer, if any); returns the
/// outputs and the profile they were computed on.
pub async fn rerun(
    client: &NodeClient,
    step: &Step,
) -> Result<(Vec<Tensor>, cairn_core::ExecutionProfile), String> {
    let run = step.run.as_ref().ok_or("not a model step")?;
    let inputs = crate::skills::build_inputs(step.skill, &step.inputs, &run.model, &run.tokens)
        .map_err(|e| e.to_string())?;
    let out = client
        .infer(&run.model.cid.to_string(), &inputs, false)
        .await
        .map_err(|e| e.to_string())?;
    Ok((out.outputs, out.receipt.claims.profile))
}
