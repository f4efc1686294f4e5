//! `cairn hub pull`: a file downloaded and verified against its CID.

use super::*;

/// Download a file by CID or NAME[@VERSION][/PATH], verified against its CID.
#[derive(Args)]
pub(crate) struct PullArgs {
    /// A CID or NAME[@VERSION][/PATH].
    pub(crate) reference: ModelRef,
    /// Output file.
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Runs it.
pub(crate) async fn run(a: PullArgs) -> anyhow::Result<()> {
    let PullArgs {
        reference,
        output,
        client: args,
    } = a;
    let hub = client(&args, false)?;
    let cid = match &reference {
        ModelRef::Blob(id) => *id,
        ModelRef::Named {
            repo,
            version,
            path,
        } => hub.resolve(repo, *version, path.as_ref()).await?.file.cid,
    };
    let pb = bar(0, format!("pulling {reference}"));
    let progress = pb.clone();
    let n = hub
        .download(&cid, &output, move |got, total| {
            progress.set_length(total);
            progress.set_position(got);
        })
        .await?;
    pb.finish_and_clear();
    println!("{cid}  {}  {n} bytes (verified)", output.display());
    Ok(())
}
