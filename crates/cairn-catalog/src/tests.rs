//! One suite, run against SQLite and, when the test script provides one, a real PostgreSQL.

use super::*;
use cairn_core::BlobId;

async fn each_backend<F, Fut>(test: &str, f: F)
where
    F: Fn(Catalog) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
    f(Catalog::connect(&url).await.unwrap()).await;
    if let Some(url) = fresh_pg_database(test).await {
        f(Catalog::connect(&url).await.unwrap()).await;
    }
}

pub(crate) use cairn_sql::fresh_pg_database;

fn new_repo(name: &str) -> NewRepo {
    NewRepo {
        name: name.parse().unwrap(),
        description: format!("The **{name}** model"),
        task: Some("image-classification".into()),
        license: Some("Apache-2.0".into()),
        tags: vec!["vision".into(), "small".into(), "vision".into()],
    }
}

fn file(path: &str, content: &[u8]) -> FileEntry {
    FileEntry {
        path: path.parse().unwrap(),
        cid: BlobId::of(content),
        size: content.len() as u64,
        media_type: "application/octet-stream".into(),
        onnx: None,
        gguf: None,
    }
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

#[tokio::test]
async fn repos_are_unique_and_searchable() {
    each_backend("repos", |cat| async move {
        let owner: Address = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
            .parse()
            .unwrap();
        let repo = cat
            .create_repo(owner, &new_repo("squeezenet"), 100)
            .await
            .unwrap();
        assert_eq!(repo.tags, vec!["small", "vision"]);
        assert!(matches!(
            cat.create_repo(owner, &new_repo("squeezenet"), 101).await,
            Err(CatalogError::RepoExists(_))
        ));
        let mut other = new_repo("digits-mlp");
        other.task = Some("tabular-classification".into());
        other.tags = vec!["sklearn".into()];
        other.description = "100% handwritten_digits".into();
        cat.create_repo(owner, &other, 102).await.unwrap();
        assert_eq!(
            cat.repo(&"squeezenet".parse().unwrap()).await.unwrap(),
            repo
        );

        let names = |rs: Vec<Repo>| {
            rs.into_iter()
                .map(|r| r.name.to_string())
                .collect::<Vec<_>>()
        };
        let search = |q: Option<&str>, task: Option<&str>, tag: Option<&str>| Search {
            q: q.map(Into::into),
            task: task.map(Into::into),
            tag: tag.map(Into::into),
            ..Default::default()
        };
        assert_eq!(
            names(cat.search(&Search::default()).await.unwrap()),
            ["digits-mlp", "squeezenet"]
        );
        assert_eq!(
            names(
                cat.search(&search(Some("SQUEEZE"), None, None))
                    .await
                    .unwrap()
            ),
            ["squeezenet"]
        );
        assert_eq!(
            names(
                cat.search(&search(Some("model"), None, None))
                    .await
                    .unwrap()
            ),
            ["squeezenet"]
        );
        assert_eq!(
            names(
                cat.search(&search(None, Some("tabular-classification"), None))
                    .await
                    .unwrap()
            ),
            ["digits-mlp"]
        );
        assert_eq!(
            names(
                cat.search(&search(None, None, Some("vision")))
                    .await
                    .unwrap()
            ),
            ["squeezenet"]
        );
        // LIKE wildcards in the query are literal.
        assert_eq!(
            names(cat.search(&search(Some("100%"), None, None)).await.unwrap()),
            ["digits-mlp"]
        );
        assert!(
            cat.search(&search(Some("%"), None, Some("vision")))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            cat.search(&search(Some("s_ueeze"), None, None))
                .await
                .unwrap()
                .is_empty()
        );
        let page = Search {
            limit: Some(1),
            offset: Some(1),
            ..Default::default()
        };
        assert_eq!(names(cat.search(&page).await.unwrap()), ["squeezenet"]);

        let mut bad = new_repo("bad");
        bad.tags = vec!["Not A Tag".into()];
        assert!(matches!(
            cat.create_repo(owner, &bad, 1).await,
            Err(CatalogError::Invalid(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn releases_are_immutable_once_published_and_latest_is_highest() {
    each_backend("releases", |cat| async move {
        let owner = Address::repeat_byte(7);
        let name: RepoName = "m".parse().unwrap();
        cat.create_repo(owner, &new_repo("m"), 1).await.unwrap();
        assert!(matches!(
            cat.resolve(&name, None, None).await,
            Err(CatalogError::NoPublishedRelease(_))
        ));
        for ver in ["1.9", "1.10", "0.1"] {
            let (draft, created) = cat.create_release(&name, v(ver), "notes", 2).await.unwrap();
            assert!(created && draft.published_at.is_none());
            assert!(matches!(
                cat.publish(&name, v(ver), 3).await,
                Err(CatalogError::EmptyRelease { .. })
            ));
            cat.put_file(&name, v(ver), &file("model.onnx", ver.as_bytes()))
                .await
                .unwrap();
            // Replacing a file in a draft is allowed.
            cat.put_file(
                &name,
                v(ver),
                &file("model.onnx", format!("{ver}!").as_bytes()),
            )
            .await
            .unwrap();
            let published = cat.publish(&name, v(ver), 4).await.unwrap();
            assert_eq!(published.published_at, Some(4));
            assert_eq!(published.files.len(), 1);
        }
        // A draft of a higher version does not become latest.
        cat.create_release(&name, v("2.0"), "", 5).await.unwrap();
        let latest = cat.resolve(&name, None, None).await.unwrap();
        assert_eq!(latest.version, v("1.10"));
        assert_eq!(latest.file.cid, BlobId::of(b"1.10!"));
        let detail = cat.repo_detail(&name).await.unwrap();
        assert_eq!(detail.latest, Some(v("1.10")));
        let order: Vec<_> = detail
            .releases
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        assert_eq!(order, ["2.0", "1.10", "1.9", "0.1"]);

        // Immutable: no second publish, no new files, no re-creation.
        assert!(matches!(
            cat.publish(&name, v("1.9"), 6).await,
            Err(CatalogError::ReleasePublished { .. })
        ));
        assert!(matches!(
            cat.put_file(&name, v("1.9"), &file("extra.bin", b"x"))
                .await,
            Err(CatalogError::ReleasePublished { .. })
        ));
        assert!(matches!(
            cat.create_release(&name, v("1.9"), "", 7).await,
            Err(CatalogError::ReleasePublished { .. })
        ));
        cat.ensure_draft(&name, v("2.0")).await.unwrap();
        assert!(matches!(
            cat.ensure_draft(&name, v("1.9")).await,
            Err(CatalogError::ReleasePublished { .. })
        ));
        assert!(matches!(
            cat.ensure_draft(&name, v("9.0")).await,
            Err(CatalogError::ReleaseNotFound { .. })
        ));
        // Re-creating a draft resumes it.
        let (_, created) = cat.create_release(&name, v("2.0"), "", 8).await.unwrap();
        assert!(!created);
        assert!(matches!(
            cat.put_file(&name, v("3.0"), &file("a", b"a")).await,
            Err(CatalogError::ReleaseNotFound { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn resolve_by_path_and_main_file() {
    each_backend("resolve", |cat| async move {
        let name: RepoName = "multi".parse().unwrap();
        cat.create_repo(Address::ZERO, &new_repo("multi"), 1)
            .await
            .unwrap();
        cat.create_release(&name, v("1.0"), "", 1).await.unwrap();
        for (p, c) in [
            ("onnx/model.onnx", b"m".as_slice()),
            ("README.md", b"r"),
            ("labels.txt", b"l"),
        ] {
            cat.put_file(&name, v("1.0"), &file(p, c)).await.unwrap();
        }
        cat.publish(&name, v("1.0"), 2).await.unwrap();
        let main = cat.resolve(&name, Some(v("1.0")), None).await.unwrap();
        assert_eq!(main.file.path.as_str(), "onnx/model.onnx");
        let readme = cat
            .resolve(&name, None, Some(&"README.md".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(readme.file.cid, BlobId::of(b"r"));
        assert!(matches!(
            cat.resolve(&name, None, Some(&"nope".parse().unwrap()))
                .await,
            Err(CatalogError::FileNotFound { .. })
        ));
        assert!(matches!(
            cat.resolve(&name, Some(v("9.9")), None).await,
            Err(CatalogError::ReleaseNotFound { .. })
        ));
        assert!(matches!(
            cat.resolve(&"ghost".parse().unwrap(), None, None).await,
            Err(CatalogError::RepoNotFound(_))
        ));

        // A language model's release: its GGUF file is the main file, and its metadata is kept.
        let llm: RepoName = "llm".parse().unwrap();
        cat.create_repo(Address::ZERO, &new_repo("llm"), 1)
            .await
            .unwrap();
        cat.create_release(&llm, v("1.0"), "", 1).await.unwrap();
        let meta = cairn_gguf::GgufMetadata {
            version: 3,
            architecture: "llama".into(),
            name: Some("tiny".into()),
            size_label: None,
            license: Some("apache-2.0".into()),
            parameter_count: 176,
            quantization: "Q4_1".into(),
            tensor_types: [("F32".into(), 2), ("Q4_1".into(), 1)].into(),
            tensor_count: 3,
            context_length: Some(2048),
            embedding_length: Some(8),
            block_count: Some(1),
            head_count: Some(2),
            head_count_kv: Some(1),
            vocab_size: Some(5),
            tokenizer: Some(cairn_gguf::GgufTokenizer {
                model: "gpt2".into(),
                pre: None,
                tokens: 5,
                merges: 1,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                add_bos_token: Some(false),
            }),
            chat_template: Some("{{ messages }}".into()),
            data_offset: 1024,
            data_bytes: 288,
        };
        let gguf = FileEntry {
            media_type: cairn_gguf::GGUF_MEDIA_TYPE.into(),
            gguf: Some(meta),
            ..file("model.Q4_1.gguf", b"g")
        };
        cat.put_file(&llm, v("1.0"), &gguf).await.unwrap();
        cat.put_file(&llm, v("1.0"), &file("README.md", b"r"))
            .await
            .unwrap();
        cat.publish(&llm, v("1.0"), 2).await.unwrap();
        let main = cat.resolve(&llm, None, None).await.unwrap();
        assert_eq!(main.file, gguf);

        cat.create_release(&name, v("1.1"), "", 3).await.unwrap();
        cat.put_file(&name, v("1.1"), &file("a.onnx", b"a"))
            .await
            .unwrap();
        cat.put_file(&name, v("1.1"), &file("b.onnx", b"b"))
            .await
            .unwrap();
        cat.publish(&name, v("1.1"), 4).await.unwrap();
        let err = cat
            .resolve(&name, None, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.onnx, b.onnx"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn nonces_are_single_use_per_signer() {
    each_backend("nonces", |cat| async move {
        let (a, b) = (Address::repeat_byte(1), Address::repeat_byte(2));
        assert!(cat.use_nonce(a, &[9; 16], now_secs() + 600).await.unwrap());
        assert!(!cat.use_nonce(a, &[9; 16], now_secs() + 600).await.unwrap());
        assert!(cat.use_nonce(b, &[9; 16], now_secs() + 600).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn migrations_are_idempotent_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let cat = Catalog::connect(&url).await.unwrap();
    cat.create_repo(Address::ZERO, &new_repo("kept"), 1)
        .await
        .unwrap();
    drop(cat);
    let cat = Catalog::connect(&url).await.unwrap();
    assert_eq!(
        cat.repo(&"kept".parse().unwrap()).await.unwrap().created_at,
        1
    );
}

#[tokio::test]
async fn concurrent_hubs_on_one_postgres_act_as_one() {
    let Some(url) = fresh_pg_database("concurrent").await else {
        return;
    };
    // Two catalogs = two hub processes' pools, migrating at the same moment.
    let (a, b) = tokio::join!(Catalog::connect(&url), Catalog::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let race = new_repo("race");
    let (ra, rb) = tokio::join!(
        a.create_repo(Address::repeat_byte(1), &race, 1),
        b.create_repo(Address::repeat_byte(2), &race, 1)
    );
    // Exactly one wins; the loser is told the name is taken (not a deadlock or database error).
    let lost = match (ra, rb) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("exactly one creator must win: {other:?}"),
    };
    assert!(
        matches!(&lost, CatalogError::RepoExists(n) if n.to_string() == "race"),
        "{lost:?}"
    );
    let name: RepoName = "race".parse().unwrap();
    a.create_release(&name, v("1.0"), "", 1).await.unwrap();
    a.put_file(&name, v("1.0"), &file("m.onnx", b"m"))
        .await
        .unwrap();
    let (pa, pb) = tokio::join!(a.publish(&name, v("1.0"), 2), b.publish(&name, v("1.0"), 2));
    let lost = match (pa, pb) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("exactly one publish must win: {other:?}"),
    };
    assert!(
        matches!(&lost, CatalogError::ReleasePublished { repo, version }
            if repo.to_string() == "race" && version.to_string() == "1.0"),
        "{lost:?}"
    );
    assert_eq!(
        b.resolve(&name, None, None).await.unwrap().file.cid,
        BlobId::of(b"m")
    );
    // A nonce used through one hub is a replay through the other.
    assert!(
        b.use_nonce(Address::ZERO, &[1; 16], i64::MAX)
            .await
            .unwrap()
    );
    assert!(
        !a.use_nonce(Address::ZERO, &[1; 16], i64::MAX)
            .await
            .unwrap()
    );
}
