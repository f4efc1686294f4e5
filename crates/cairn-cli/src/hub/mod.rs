//! `cairn hub …`: push, pull, show, search and serve the Model Hub.

use super::*;

mod id;
mod ls;
mod pull;
mod push;
mod serve;
mod show;

pub(crate) use id::IdArgs;
pub(crate) use ls::LsArgs;
pub(crate) use pull::PullArgs;
pub(crate) use push::PushArgs;
pub(crate) use serve::ServeArgs;
pub(crate) use show::ShowArgs;

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
    Serve(ServeArgs),
    /// Print a file's CID, offline (streams; constant memory).
    Id(IdArgs),
    /// Publish files as a release: creates the repository on first push.
    Push(PushArgs),
    /// List or search repositories.
    Ls(LsArgs),
    /// Show a repository, or one release: NAME[@VERSION].
    Show(ShowArgs),
    /// Download a file by CID or NAME[@VERSION][/PATH], verified against its CID.
    Pull(PullArgs),
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
        Some("gguf") => cairn_gguf::GGUF_MEDIA_TYPE,
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
        HubCommand::Serve(a) => serve::run(a).await,
        HubCommand::Id(a) => id::run(a).await,
        HubCommand::Push(a) => push::run(a).await,
        HubCommand::Ls(a) => ls::run(a).await,
        HubCommand::Show(a) => show::run(a).await,
        HubCommand::Pull(a) => pull::run(a).await,
    }
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
