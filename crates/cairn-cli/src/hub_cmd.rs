//! `cairn hub …`: push, pull, show, search and serve the Model Hub.

use super::*;

#[derive(Args, Clone)]
pub(crate) struct ClientArgs {
    /// The hub's URL.
    #[arg(long, env = "CAIRN_HUB", default_value = DEFAULT_HUB)]
    pub(crate) hub: String,
    /// Key file for signed writes (created on first use).
    #[arg(long, env = "CAIRN_KEY_FILE")]
    pub(crate) key: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum HubCommand {
    /// Serve a hub against the given catalog and blob store.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: SocketAddr,
        /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
        #[arg(long, env = "CAIRN_CATALOG")]
        catalog: String,
        /// A directory, or `s3://BUCKET[/PREFIX]` (credentials from AWS_* variables).
        #[arg(long, env = "CAIRN_BLOBS")]
        blobs: String,
        /// Endpoint of an S3-compatible service (MinIO, moto, …).
        #[arg(long, env = "CAIRN_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        /// Largest accepted file, in bytes.
        #[arg(long, default_value_t = 16 << 30)]
        max_upload_bytes: u64,
        /// Most bytes one owner's repositories may hold, drafts included.
        #[arg(long, default_value_t = 64 << 30)]
        owner_quota_bytes: u64,
        /// Seconds a draft release may stay unpublished before it and its files are deleted.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        draft_ttl_secs: u64,
        /// The `host[:port]` clients reach this hub by (repeatable): signed writes must name
        /// one. Default: the listen address when it is a concrete one.
        #[arg(long = "public-host")]
        public_hosts: Vec<String>,
        /// Seconds between collections of expired drafts and unattached blobs.
        #[arg(long, hide = true, default_value_t = 600)]
        gc_every_secs: u64,
        /// Seconds a blob no release holds is kept before it is collected.
        #[arg(long, hide = true, default_value_t = 3600)]
        orphan_grace_secs: u64,
    },
    /// Print a file's CID, offline (streams; constant memory).
    Id {
        /// The file.
        file: PathBuf,
    },
    /// Publish files as a release: creates the repository on first push.
    Push {
        /// Files to publish.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Repository name.
        #[arg(long)]
        repo: RepoName,
        /// Release version, MAJOR.MINOR.
        #[arg(long)]
        version: Version,
        /// Path inside the release (one file only; default: the file's name).
        #[arg(long)]
        path: Option<FilePath>,
        /// Release notes.
        #[arg(long, default_value = "")]
        notes: String,
        /// Repository description (Markdown), when creating it.
        #[arg(long, default_value = "")]
        description: String,
        /// Repository task, when creating it.
        #[arg(long)]
        task: Option<String>,
        /// Repository license, when creating it.
        #[arg(long)]
        license: Option<String>,
        /// Repository tags, when creating it.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Leave the release as a draft instead of publishing it.
        #[arg(long)]
        draft: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List or search repositories.
    Ls {
        /// Text in the name or description.
        query: Option<String>,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Only this tag.
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a repository, or one release: NAME[@VERSION].
    Show {
        /// NAME or NAME@VERSION.
        reference: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download a file by CID or NAME[@VERSION][/PATH], verified against its CID.
    Pull {
        /// A CID or NAME[@VERSION][/PATH].
        reference: ModelRef,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn serve_hub(
    mut config: HubConfig,
    listen: SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, cairn_hub::HubState)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    // Without --public-host, a hub on a concrete address is known by it (and `localhost`).
    let bound = listener.local_addr()?;
    if config.public_hosts.is_empty() && !bound.ip().is_unspecified() {
        config.public_hosts.push(bound.to_string());
        if bound.ip().is_loopback() {
            config
                .public_hosts
                .push(format!("localhost:{}", bound.port()));
        }
    }
    if config.public_hosts.is_empty() {
        tracing::warn!(
            "the hub does not know its public names (--public-host): a signed write relayed from another hub with a forged Host header would be taken"
        );
    }
    let state = cairn_hub::open(&config).await.context("opening the hub")?;
    Ok((listener, state))
}

pub(crate) fn client(args: &ClientArgs, signed: bool) -> anyhow::Result<HubClient> {
    let signer = match signed {
        true => Some(keyfile::load_or_create(
            &args.key.clone().unwrap_or_else(keyfile::default_path),
        )?),
        false => None,
    };
    Ok(HubClient::new(&args.hub, signer)?)
}

pub(crate) fn media_type_for(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("onnx") => cairn_hub::server::ONNX_MEDIA_TYPE,
        Some("json") => "application/json",
        Some("md") => "text/markdown",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

pub(crate) fn bar(len: u64, label: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(label);
    pb
}

pub(crate) async fn hub(cmd: HubCommand) -> anyhow::Result<()> {
    match cmd {
        HubCommand::Serve {
            listen,
            catalog,
            blobs,
            s3_endpoint,
            max_upload_bytes,
            owner_quota_bytes,
            draft_ttl_secs,
            gc_every_secs,
            orphan_grace_secs,
            public_hosts,
        } => {
            let config = HubConfig {
                max_upload_bytes,
                owner_quota_bytes,
                draft_ttl: std::time::Duration::from_secs(draft_ttl_secs),
                gc_every: std::time::Duration::from_secs(gc_every_secs.max(1)),
                orphan_grace: std::time::Duration::from_secs(orphan_grace_secs),
                public_hosts,
                ..HubConfig::new(catalog, Location::parse(&blobs, s3_endpoint))
            };
            let (listener, state) = serve_hub(config, listen).await?;
            println!("hub: http://{}", listener.local_addr()?);
            cairn_hub::serve(listener, state, shutdown_signal()).await?;
        }
        HubCommand::Id { file } => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let (id, _) = BlobHasher::hash_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
            println!("{id}");
        }
        HubCommand::Push {
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
        } => {
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
        }
        HubCommand::Ls {
            query,
            task,
            tag,
            client: args,
        } => {
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
        }
        HubCommand::Show {
            reference,
            json,
            client: args,
        } => {
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
        }
        HubCommand::Pull {
            reference,
            output,
            client: args,
        } => {
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
        }
    }
    Ok(())
}

/// Creates the repository, or checks that this key owns the existing one.
pub(crate) async fn ensure_repo(hub: &HubClient, new: NewRepo) -> anyhow::Result<()> {
    match hub.repo(&new.name).await {
        Ok(existing) => {
            let me = hub.signer_address();
            if Some(existing.repo.owner) != me {
                bail!(
                    "repository `{}` belongs to {}, not to your key",
                    new.name,
                    existing.repo.owner
                );
            }
            Ok(())
        }
        Err(ClientError::Api { code, .. }) if code == "repo_not_found" => {
            hub.create_repo(&new).await?;
            eprintln!("created repository {}", new.name);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
