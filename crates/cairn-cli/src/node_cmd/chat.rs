//! `cairn llm`: one chat completion from a node's language model, paid per token with a
//! prepaid voucher when the node asks, its receipt checked against the exact bytes.

use super::*;

/// What `cairn llm` asks.
pub struct ChatArgs {
    /// The model: a CID or name@version.
    pub model: String,
    /// The user's message.
    pub message: String,
    /// A system message before it.
    pub system: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature (absent: the node's default).
    pub temperature: Option<f64>,
    /// Sampling seed.
    pub seed: Option<u64>,
}

/// `cairn llm`.
pub async fn chat(
    node: &str,
    args: ChatArgs,
    receipt_out: Option<PathBuf>,
    pay: CallArgs,
) -> anyhow::Result<()> {
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(serde_json::json!({"role": "system", "content": s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": args.message}));
    let mut request = serde_json::json!({"model": args.model, "messages": messages});
    if let Some(m) = args.max_tokens {
        request["max_tokens"] = m.into();
    }
    if let Some(t) = args.temperature {
        request["temperature"] = t.into();
    }
    if let Some(s) = args.seed {
        request["seed"] = s.into();
    }
    let (node, _proxy) = pay.private.route(node).await?;
    let client = pay.client(&node)?;
    let outcome = client
        .chat(&request)
        .await
        .map_err(|e| pay.explain(e, "with a prepaid deposit at the node (cairn pay deposit)"))?;
    let a = &outcome.answer;
    let choice = &a["choices"][0];
    match choice["message"]["content"].as_str() {
        Some(text) => println!("{text}"),
        None => println!("{}", choice["message"]),
    }
    let r = &outcome.receipt;
    let usage = r.claims.llm.as_ref();
    println!(
        "usage:    {} prompt + {} completion tokens, finish {}",
        usage.map_or(0, |u| u.prompt_tokens),
        usage.map_or(0, |u| u.completion_tokens),
        choice["finish_reason"].as_str().unwrap_or("?")
    );
    if let Some(p) = &outcome.payment {
        println!(
            "charged:  {} token units of at most {} (prepaid voucher to {}, payment ref {})",
            r.claims.price, p.amount, p.pay_to, r.claims.payment_ref
        );
    }
    println!("receipt:  {} signed by {}", r.id(), r.signer);
    if let Some(path) = receipt_out {
        let stored = client.receipt(r.id()).await?;
        std::fs::write(&path, serde_json::to_string_pretty(&stored.receipt)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("receipt written to {}", path.display());
    }
    Ok(())
}
