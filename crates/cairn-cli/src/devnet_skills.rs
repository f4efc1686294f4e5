//! The devnet's skill models for the chat entry: the digits classifier (the demo model, tagged
//! `skill:digit-recognition`) and magika 1.0.3's file-type classifier with its label list
//! (`skill:file-type`), fetched from the PyPI wheel that ships them when not on disk.

use super::*;

const MAGIKA_PACKAGE: &str = "magika==1.0.3";
const MAGIKA_WHEEL: &str = "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl";
const MAGIKA_WHEEL_SHA256: &str =
    "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529";
const MODEL_IN_WHEEL: &str = "magika/models/standard_v3_3/model.onnx";
const CONFIG_IN_WHEEL: &str = "magika/models/standard_v3_3/config.min.json";
/// File names in a models dir (the devnet's, or the tests' `CAIRN_TEST_MODELS`).
pub(crate) const MAGIKA_MODEL: &str = "magika.onnx";
pub(crate) const MAGIKA_CONFIG: &str = "magika_config.min.json";
const MODEL_SHA256: &str = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c";
const CONFIG_SHA256: &str = "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db";

/// Where the devnet's file-type model comes from (`--magika`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MagikaSource {
    /// The copy in the data dir, fetched from PyPI first when absent.
    Fetch,
    /// A dir holding `magika.onnx` and `magika_config.min.json`.
    Dir(PathBuf),
    /// No file-type skill.
    None,
}

impl std::str::FromStr for MagikaSource {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "fetch" => Self::Fetch,
            "none" => Self::None,
            dir => Self::Dir(PathBuf::from(dir)),
        })
    }
}

fn no_check(
    _: &Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + '_>> {
    Box::pin(async { Ok(()) })
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (cid, _) = BlobHasher::hash_reader(std::io::BufReader::new(f))?;
    Ok(cid
        .to_sha256_string()
        .trim_start_matches("sha256:")
        .to_owned())
}

/// Publishes magika 1.0.3 as `magika@1.0` (model and label list) unless it already is; a model
/// that cannot be had is reported, and the devnet starts without the skill.
pub(crate) async fn publish_magika(hub_url: &str, data_dir: &Path, source: &MagikaSource) {
    if let Err(e) = try_publish(hub_url, data_dir, source).await {
        eprintln!(
            "cairn devnet: starting without the file-type skill: {e:#}; pass --magika DIR (holding {MAGIKA_MODEL} and {MAGIKA_CONFIG}) or --magika none"
        );
    }
}

async fn try_publish(hub_url: &str, data_dir: &Path, source: &MagikaSource) -> anyhow::Result<()> {
    let dir = match source {
        MagikaSource::None => return Ok(()),
        MagikaSource::Dir(d) => d.clone(),
        MagikaSource::Fetch => data_dir.join("models"),
    };
    let key = keyfile::load_or_create(&data_dir.join("devnet.key"))?;
    let hub = HubClient::new(hub_url, Some(key))?;
    let repo: RepoName = "magika".parse()?;
    let version: Version = "1.0".parse()?;
    if hub.resolve(&repo, Some(version), None).await.is_ok() {
        return Ok(());
    }
    let (model, config) = (dir.join(MAGIKA_MODEL), dir.join(MAGIKA_CONFIG));
    if *source == MagikaSource::Fetch && !(model.exists() && config.exists()) {
        println!(
            "  skills:   fetching magika's file-type model from PyPI ({MAGIKA_PACKAGE}, 16 MB)…"
        );
        crate::devnet_llm::fetch_wheel(
            &dir,
            MAGIKA_PACKAGE,
            MAGIKA_WHEEL,
            MAGIKA_WHEEL_SHA256,
            &[(MODEL_IN_WHEEL, &model), (CONFIG_IN_WHEEL, &config)],
            no_check,
        )
        .await?;
    }
    for (path, want) in [(&model, MODEL_SHA256), (&config, CONFIG_SHA256)] {
        let got = sha256_file(path)?;
        if got != want {
            bail!(
                "{} is not magika 1.0.3's (sha256 {got}, expected {want})",
                path.display()
            );
        }
    }
    ensure_repo(
        &hub,
        NewRepo {
            name: repo.clone(),
            description: "Magika standard_v3_3 by Google (Apache-2.0): a trained file-type classifier over 214 content types, from 1 KiB at each end of a file. The release holds its label list (config.min.json). The chat entry's file-type skill.".into(),
            task: Some("file-type-classification".into()),
            license: Some("Apache-2.0".into()),
            tags: vec![cairn_entry::skills::tag(cairn_entry::task::Skill::FileType), "magika".into()],
        },
    )
    .await?;
    hub.create_release(
        &repo,
        version,
        "magika 1.0.3 standard_v3_3, from the PyPI package",
    )
    .await?;
    hub.upload_file(
        &repo,
        version,
        &"model.onnx".parse()?,
        &model,
        cairn_hub::server::ONNX_MEDIA_TYPE,
        |_| {},
    )
    .await?;
    hub.upload_file(
        &repo,
        version,
        &"config.min.json".parse()?,
        &config,
        "application/json",
        |_| {},
    )
    .await?;
    hub.publish(&repo, version).await?;
    Ok(())
}
