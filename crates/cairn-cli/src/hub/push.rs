//! `cairn hub push`: files published as a release.

use super::*;

/// Publish files as a release: creates the repository on first push.
#[derive(Args)]
pub(crate) struct PushArgs {
    /// Files to publish.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Repository name.
    #[arg(long)]
    pub(crate) repo: RepoName,
    /// Release version, MAJOR.MINOR.
    #[arg(long)]
    pub(crate) version: Version,
    /// Path inside the release (one file only; default: the file's name).
    #[arg(long)]
    pub(crate) path: Option<FilePath>,
    /// Release notes.
    #[arg(long, default_value = "")]
    pub(crate) notes: String,
    /// Repository description (Markdown), when creating it.
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    /// Repository task, when creating it.
    #[arg(long)]
    pub(crate) task: Option<String>,
    /// Repository license, when creating it.
    #[arg(long)]
    pub(crate) license: Option<String>,
    /// Repository tags, when creating it.
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Leave the release as a draft instead of publishing it.
    #[arg(long)]
    pub(crate) draft: bool,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Runs it.
pub(crate) async fn run(a: PushArgs) -> anyhow::Result<()> {
    let PushArgs {
        files,
        repo,
        version,
        path,
        notes,
        description,
        task,
        license,
        tags,
        draft,
        client: args,
    } = a;
    if path.is_some() && files.len() != 1 {
        bail!(
            "--path names the one file being pushed; with several files each keeps its file name"
        );
    }
    let hub = client(&args, true)?;
    ensure_repo(
        &hub,
        NewRepo {
            name: repo.clone(),
            description,
            task,
            license,
            tags,
        },
    )
    .await?;
    let (_, created) = hub.create_release(&repo, version, &notes).await?;
    if !created {
        eprintln!("resuming the draft of {repo}@{version}");
    }
    for file in &files {
        let release_path = match &path {
            Some(p) => p.clone(),
            None => file
                .file_name()
                .and_then(|n| n.to_str())
                .context("file has no usable name; give one with --path")?
                .parse()?,
        };
        let len = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        let pb = bar(len, format!("hashing {release_path}"));
        let (cid, _) = cairn_hub::client::hash_file(file).await?;
        pb.set_message(format!("pushing {release_path}"));
        pb.set_position(0);
        let progress = pb.clone();
        let entry = hub
            .upload_declared(
                &repo,
                version,
                &release_path,
                file,
                cid,
                media_type_for(file),
                move |n| progress.set_position(n),
            )
            .await?;
        pb.finish_and_clear();
        println!(
            "{}  {repo}@{version}/{}  {} bytes",
            entry.cid, entry.path, entry.size
        );
    }
    if draft {
        println!("draft {repo}@{version} (not published)");
    } else {
        hub.publish(&repo, version).await?;
        println!("published {repo}@{version}");
    }
    Ok(())
}
