//! `cairn receipt verify|reexec`: a receipt checked alone, against files, or by running its model again.

use super::*;

pub fn load_receipt(path: &Path) -> anyhow::Result<SignedReceipt> {
    use serde_json::value::RawValue;
    /// The bare receipt, or what GET /v1/receipts/{id} and the infer response wrap it in; kept
    /// as the text written, so the receipt is checked as text (a key given twice is refused).
    #[derive(serde::Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow, rename = "typedData")]
        typed_data: Option<&'a RawValue>,
        #[serde(borrow)]
        receipt: Option<&'a RawValue>,
        #[serde(borrow)]
        parameters: Option<Parameters<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Parameters<'a> {
        #[serde(borrow)]
        receipt: Option<&'a RawValue>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let w: Wrapped<'_> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    let inner = match (
        w.typed_data,
        w.receipt,
        w.parameters.and_then(|p| p.receipt),
    ) {
        (None, Some(r), _) | (None, None, Some(r)) => r.get(),
        _ => text.as_str(),
    };
    Ok(cairn_receipt::ReceiptJson::from_text(inner.to_owned())?.verify()?)
}

/// `cairn receipt verify`.
pub fn verify(
    receipt: &Path,
    input: Option<&Path>,
    output: Option<&Path>,
    model: Option<&Path>,
) -> anyhow::Result<()> {
    let r =
        load_receipt(receipt).with_context(|| format!("{} does not verify", receipt.display()))?;
    match &r.seal {
        cairn_receipt::Seal::Own(_) => println!("signature: ok, signed by {}", r.signer),
        cairn_receipt::Seal::Batch(b) => println!(
            "signature: ok, signed by {} over batch root {} ({} receipts; proof of {} hashes)",
            r.signer,
            b.root,
            b.count,
            b.proof.len()
        ),
    }
    println!("model:     {}", r.claims.model);
    println!(
        "profile:   {} ({:?})",
        r.claims.profile,
        r.claims.profile.reproducibility()
    );
    if let Some(u) = &r.claims.llm {
        println!(
            "tokens:    {} prompt, {} completion; {}",
            u.prompt_tokens,
            u.completion_tokens,
            if u.complete {
                "delivered whole"
            } else {
                "the answer broke off: the response is what was sent before it did"
            }
        );
    }
    // A language-model receipt binds the SHA-256 of the exact request and response bytes; a
    // tensor receipt the canonical hash of the tensors.
    let hash_of = |p: &Path| -> anyhow::Result<B256> {
        if r.claims.llm.is_some() {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(B256::from(*BlobId::of(&bytes).digest()))
        } else {
            Ok(tensors_hash(&read_tensors(p)?))
        }
    };
    if let Some(p) = input {
        let h = hash_of(p)?;
        if h != r.claims.input_hash {
            bail!(
                "input hash mismatch: {} hashes to {h}, the receipt binds {}",
                p.display(),
                r.claims.input_hash
            );
        }
        println!("input:     ok ({h})");
    }
    if let Some(p) = output {
        let h = hash_of(p)?;
        if h != r.claims.output_hash {
            bail!(
                "output hash mismatch: {} hashes to {h}, the receipt binds {}",
                p.display(),
                r.claims.output_hash
            );
        }
        println!("output:    ok ({h})");
    }
    if let Some(p) = model {
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let (cid, _) = cairn_core::BlobHasher::hash_reader(std::io::BufReader::new(f))?;
        if cid != r.claims.model {
            bail!(
                "model mismatch: {} is {cid}, the receipt names {}",
                p.display(),
                r.claims.model
            );
        }
        println!("model:     ok ({cid})");
    }
    Ok(())
}

/// The `TRACT_CPU_ISA` a re-execution of `receipt` needs, when this machine can provide it.
pub fn reexec_isa_env(receipt: &Path) -> Option<String> {
    let r = load_receipt(receipt).ok()?;
    if r.claims.profile.engine != "tract" {
        return None;
    }
    cairn_engine::isa_env_for(&r.claims.profile.isa).ok()
}

/// `cairn receipt reexec` on a language-model receipt: the request body (`input`) run again as a
/// verifier replays it; `output`, the bytes the node sent, is needed for an answer that broke off.
async fn reexec_llm(
    r: &SignedReceipt,
    input: &Path,
    output: Option<&Path>,
    hub: &str,
    cache: &Path,
) -> anyhow::Result<()> {
    let sha = |b: &[u8]| B256::from(*BlobId::of(b).digest());
    let request = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    if sha(&request) != r.claims.input_hash {
        bail!(
            "{} is not the request this receipt binds (requestHash mismatch)",
            input.display()
        );
    }
    let kept = match output {
        Some(p) => {
            let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            if sha(&b) != r.claims.output_hash {
                bail!(
                    "{} is not the answer this receipt binds (responseHash mismatch)",
                    p.display()
                );
            }
            Some(b)
        }
        None => None,
    };
    let usage = r.claims.llm.expect("an LLM receipt");
    if !usage.complete && kept.is_none() {
        bail!("the answer broke off: pass the bytes the node sent with --output");
    }
    let here = cairn_node::llm::profile();
    println!("receipt profile: {}", r.claims.profile);
    println!("this run:        {here}");
    if here != r.claims.profile {
        bail!("this cairn runs another language-model profile; replay with the receipt's version");
    }
    let models = cairn_node::cache::ModelCache::new(
        cache.to_path_buf(),
        cairn_hub::HubClient::new(hub, None)?,
        Arc::new(TractEngine::new()),
        u64::MAX,
        u64::MAX,
    );
    let loaded = models
        .get(r.claims.model)
        .await
        .with_context(|| format!("loading model {} (from {hub})", r.claims.model))?;
    let model = loaded.llm()?.clone();
    let claims = r.claims.clone();
    let replay = tokio::task::spawn_blocking(move || {
        cairn_node::llm::replay(&model, &request, &claims, kept.as_deref())
    })
    .await?;
    match replay {
        cairn_node::llm::Replay::Same { tokens } => {
            println!(
                "result: bit-identical ({} prompt tokens, the same {tokens} tokens and answer bytes)",
                usage.prompt_tokens
            );
            Ok(())
        }
        cairn_node::llm::Replay::Differs { what, .. } => {
            bail!("the replay differs from the receipt: {what}")
        }
        cairn_node::llm::Replay::CannotRun(why) => bail!("cannot replay here: {why}"),
    }
}

/// `cairn receipt reexec`.
pub async fn reexec(
    receipt: &Path,
    input: &Path,
    output: Option<&Path>,
    tolerance: f64,
    hub: &str,
    cache: &Path,
) -> anyhow::Result<()> {
    let r =
        load_receipt(receipt).with_context(|| format!("{} does not verify", receipt.display()))?;
    if r.claims.profile.reproducibility() == Reproducibility::Relayed {
        bail!(
            "this receipt is relayed: its node forwarded the call to an upstream server and computed nothing, so there is nothing to re-execute (`cairn receipt verify` checks the bytes it binds)"
        );
    }
    if r.claims.llm.is_some() {
        return reexec_llm(&r, input, output, hub, cache).await;
    }
    let inputs = read_tensors(input)?;
    if tensors_hash(&inputs) != r.claims.input_hash {
        bail!(
            "{} is not the input this receipt binds (input hash mismatch)",
            input.display()
        );
    }
    let engine: Arc<dyn Engine> = Arc::new(TractEngine::new());
    let here = engine.profile().clone();
    // The loader verifiers use: the file hashed to the receipt's CID, parsed, prepared once.
    let models = cairn_node::cache::ModelCache::new(
        cache.to_path_buf(),
        cairn_hub::HubClient::new(hub, None)?,
        engine,
        u64::MAX,
        u64::MAX,
    );
    let loaded = models
        .get(r.claims.model)
        .await
        .with_context(|| format!("loading model {} (from {hub})", r.claims.model))?;
    let plan = loaded.onnx()?.1.clone();
    let outputs = tokio::task::spawn_blocking(move || plan.run(&inputs)).await??;
    let outputs: Vec<Tensor> = outputs;
    let h = tensors_hash(&outputs);
    println!("receipt profile: {}", r.claims.profile);
    println!("this run:        {here}");
    if here == r.claims.profile {
        if h == r.claims.output_hash {
            println!("result: bit-identical (output hash {h})");
            return Ok(());
        }
        bail!(
            "re-execution on the receipt's own profile gives output hash {h}, but the receipt binds {}: the receipt's output is wrong",
            r.claims.output_hash
        );
    }
    if h == r.claims.output_hash {
        println!("result: bit-identical although the profiles differ (output hash {h})");
        return Ok(());
    }
    compare_across_profiles(&r, output, &outputs, tolerance)
}

/// Profiles differ and the bytes do too: with the node's output, how far apart the values are.
fn compare_across_profiles(
    r: &SignedReceipt,
    output: Option<&Path>,
    outputs: &[Tensor],
    tolerance: f64,
) -> anyhow::Result<()> {
    let kind = match r.claims.profile.reproducibility() {
        Reproducibility::Exact => "a different kernel tier",
        Reproducibility::Tolerance => "a tolerance-checked engine",
        Reproducibility::Relayed => "a relayed call (nothing the node computed)",
    };
    if let Some(p) = output {
        let claimed = read_tensors(p)?;
        if tensors_hash(&claimed) != r.claims.output_hash {
            bail!(
                "{} is not the output this receipt binds (output hash mismatch)",
                p.display()
            );
        }
        let diff = cairn_verifier::max_abs_diff(&claimed, outputs).map_err(|e| anyhow!(e))?;
        println!(
            "result: not bit-identical (profiles differ: {kind}); max |difference| = {diff:e}"
        );
        if diff <= tolerance {
            println!("within tolerance {tolerance:e}");
            return Ok(());
        }
        bail!(
            "the node's output differs from this re-execution by {diff:e}, more than the tolerance {tolerance:e}"
        );
    }
    println!(
        "result: not bit-identical; the receipt comes from {kind}, so only a tolerance check is possible here. \
         Fetch the node's output (GET /v1/receipts/{}/output) and compare values.",
        r.id()
    );
    bail!("cannot confirm bit-exactly on this machine's profile")
}
