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
        println!("  {}", r.description.replace('\n', "\n  "));
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
                f.cid, f.path, f.size, f.media_type
            );
            if let Some(sig) = &f.onnx {
                for (dir, list) in [("in ", &sig.inputs), ("out", &sig.outputs)] {
                    for v in list {
                        println!(
                            "      {dir} {} {} {}",
                            v.name,
                            v.type_name,
                            serde_json::to_string(&v.shape)?
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
