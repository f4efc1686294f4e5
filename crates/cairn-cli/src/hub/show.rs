//! `cairn hub show`: a repository or one release.

use super::*;

/// Show a repository, or one release: NAME[@VERSION].
#[derive(Args)]
pub(crate) struct ShowArgs {
    /// NAME or NAME@VERSION.
    pub(crate) reference: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Runs it.
pub(crate) async fn run(a: ShowArgs) -> anyhow::Result<()> {
    let ShowArgs {
        reference,
        json,
        client: args,
    } = a;
    let hub = client(&args, false)?;
    let (name, version) = match reference.split_once('@') {
        Some((n, v)) => (n.parse::<RepoName>()?, Some(v.parse::<Version>()?)),
        None => (reference.parse()?, None),
    };
    let mut detail = hub.repo(&name).await?;
    if let Some(v) = version {
        detail.releases.retain(|r| r.version == v);
        if detail.releases.is_empty() {
            bail!("no release {v} in `{name}`");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(());
    }
    let r = &detail.repo;
    println!("{}  owner {}", r.name, r.owner);
    println!(
        "  task: {}  license: {}  tags: {}",
        r.task.as_deref().unwrap_or("-"),
        r.license.as_deref().unwrap_or("-"),
        r.tags.join(",")
    );
    if !r.description.is_empty() {
        let description: String = r
            .description
            .chars()
            .map(|c| {
                if c.is_control() && c != '\n' {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect();
        println!("  {}", description.replace('\n', "\n  "));
    }
    for rel in &detail.releases {
        let state = if rel.published_at.is_some() {
            ""
        } else {
            " (draft)"
        };
        let latest = if detail.latest == Some(rel.version) {
            " (latest)"
        } else {
            ""
        };
        println!("  {}{state}{latest}", rel.version);
        for f in &rel.files {
            println!(
                "    {}  {}  {} bytes  {}",
                f.cid,
                f.path,
                f.size,
                shown(&f.media_type)
            );
            if let Some(sig) = &f.onnx {
                for (dir, list) in [("in ", &sig.inputs), ("out", &sig.outputs)] {
                    for v in list {
                        println!(
                            "      {dir} {} {} {}",
                            shown(&v.name),
                            shown(&v.type_name),
                            serde_json::to_string(&v.shape)?
                        );
                    }
                }
            }
            if let Some(m) = &f.gguf {
                for line in gguf_lines(m) {
                    println!("      {line}");
                }
            }
        }
    }
    Ok(())
}

/// An uploader's string made safe for a terminal: control characters (escape sequences
/// included) become U+FFFD and it is cut at 120 characters.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(120)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// A GGUF model's metadata as `cairn hub show` prints it.
fn gguf_lines(m: &cairn_gguf::GgufMetadata) -> Vec<String> {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let mut lines = vec![
        format!(
            "{} {}, {} parameters, {} (GGUF v{})",
            shown(&m.architecture),
            shown(m.name.as_deref().unwrap_or("(unnamed)")),
            m.parameter_count,
            shown(&m.quantization),
            m.version
        ),
        format!(
            "context {} tokens, {} layers, width {}, {} heads ({} key/value), vocabulary {}",
            opt(m.context_length),
            opt(m.block_count),
            opt(m.embedding_length),
            opt(m.head_count),
            opt(m.head_count_kv),
            opt(m.vocab_size)
        ),
        format!(
            "tensors: {}",
            m.tensor_types
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    lines.push(match &m.tokenizer {
        Some(t) => format!(
            "tokenizer: embedded ({}{}, {} tokens, {} merges, bos {}, eos {})",
            t.model,
            t.pre
                .as_deref()
                .map(|p| format!("/{p}"))
                .unwrap_or_default(),
            t.tokens,
            t.merges,
            t.bos_token_id.map_or("-".into(), |i| i.to_string()),
            t.eos_token_id.map_or("-".into(), |i| i.to_string()),
        ),
        None => "tokenizer: none embedded".into(),
    });
    lines.push(match &m.chat_template {
        Some(t) => format!("chat template: {} bytes", t.len()),
        None => "chat template: none".into(),
    });
    lines
}
