//! `cairn hub ls`: repositories listed or searched.

use super::*;

/// List or search repositories.
#[derive(Args)]
pub(crate) struct LsArgs {
    /// Text in the name or description.
    pub(crate) query: Option<String>,
    /// Only this task.
    #[arg(long)]
    pub(crate) task: Option<String>,
    /// Only this tag.
    #[arg(long)]
    pub(crate) tag: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Runs it.
pub(crate) async fn run(a: LsArgs) -> anyhow::Result<()> {
    let LsArgs {
        query,
        task,
        tag,
        client: args,
    } = a;
    let hub = client(&args, false)?;
    let repos = hub
        .search(&Search {
            q: query,
            task,
            tag,
            ..Default::default()
        })
        .await?;
    for r in &repos {
        println!(
            "{:<32} {:<24} {:<42} {}",
            r.name,
            r.task.as_deref().unwrap_or("-"),
            r.owner,
            r.tags.join(",")
        );
    }
    if repos.is_empty() {
        eprintln!("no repositories match");
    }
    Ok(())
}
