//! End to end: the hub as a real process, driven through the CLI, the Rust client and raw HTTP.

mod common;

use std::path::Path;

use alloy_signer_local::PrivateKeySigner;
use cairn_catalog::NewRepo;
use cairn_core::BlobId;
use cairn_core::auth::RequestToSign;
use cairn_hub::{ClientError, HubClient};
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn api_code(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Api { status, code, .. } => (status.as_u16(), code),
        other => panic!("expected an API error, got {other}"),
    }
}

#[test]
fn push_list_show_pull_round_trip_through_the_cli() {
    let hub = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let file = random_file(dir.path(), "weights.bin", 3 << 20);

    // `hub id` agrees with sha256sum, an independent implementation.
    let cid = stdout(&cairn(
        &hub.url,
        &key,
        &["hub", "id", file.to_str().unwrap()],
    ))
    .trim()
    .to_owned();
    let sum = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .unwrap();
    let hex = String::from_utf8(sum.stdout).unwrap()[..64].to_owned();
    assert_eq!(
        cid.parse::<BlobId>().unwrap(),
        format!("sha256:{hex}").parse::<BlobId>().unwrap()
    );

    let out = stdout(&cairn(
        &hub.url,
        &key,
        &[
            "hub",
            "push",
            file.to_str().unwrap(),
            "--repo",
            "demo",
            "--version",
            "1.0",
            "--task",
            "regression",
            "--tag",
            "test",
            "--description",
            "A demo",
            "--notes",
            "first",
        ],
    ));
    assert!(
        out.contains(&cid) && out.contains("demo@1.0/weights.bin"),
        "{out}"
    );
    assert!(out.contains("published demo@1.0"), "{out}");

    let ls = stdout(&cairn(&hub.url, &key, &["hub", "ls"]));
    assert!(ls.contains("demo") && ls.contains("regression"), "{ls}");
    assert!(
        stdout(&cairn(
            &hub.url,
            &key,
            &["hub", "ls", "dem", "--tag", "test"]
        ))
        .contains("demo")
    );
    assert!(!stdout(&cairn(&hub.url, &key, &["hub", "ls", "--tag", "other"])).contains("demo"));
    let show = stdout(&cairn(&hub.url, &key, &["hub", "show", "demo@1.0"]));
    assert!(show.contains(&cid) && show.contains("(latest)"), "{show}");

    for reference in [
        cid.as_str(),
        "demo@1.0/weights.bin",
        "demo",
        &format!("sha256:{hex}"),
    ] {
        let out_file = dir.path().join("pulled");
        let got = stdout(&cairn(
            &hub.url,
            &key,
            &["hub", "pull", reference, "-o", out_file.to_str().unwrap()],
        ));
        assert!(got.contains("verified"), "{got}");
        assert!(
            std::fs::read(&out_file).unwrap() == std::fs::read(&file).unwrap(),
            "{reference}"
        );
        std::fs::remove_file(&out_file).unwrap();
    }

    // A second publish of the same version is refused; a new version is fine and becomes latest.
    let err = failure(&cairn(
        &hub.url,
        &key,
        &[
            "hub",
            "push",
            file.to_str().unwrap(),
            "--repo",
            "demo",
            "--version",
            "1.0",
        ],
    ));
    assert!(
        err.contains("409") && err.contains("already published"),
        "{err}"
    );
    let small = random_file(dir.path(), "weights2.bin", 10);
    stdout(&cairn(
        &hub.url,
        &key,
        &[
            "hub",
            "push",
            small.to_str().unwrap(),
            "--repo",
            "demo",
            "--version",
            "1.10",
        ],
    ));
    let latest = dir.path().join("latest");
    stdout(&cairn(
        &hub.url,
        &key,
        &["hub", "pull", "demo", "-o", latest.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(&latest).unwrap(),
        std::fs::read(&small).unwrap()
    );

    // Pulling an unknown model fails with the hub's reason and leaves no file behind.
    let missing = dir.path().join("missing");
    let err = failure(&cairn(
        &hub.url,
        &key,
        &["hub", "pull", "demo@7.0", "-o", missing.to_str().unwrap()],
    ));
    assert!(err.contains("release_not_found"), "{err}");
    let err = failure(&cairn(
        &hub.url,
        &key,
        &[
            "hub",
            "pull",
            &BlobId::of(b"nothing").to_string(),
            "-o",
            missing.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("blob_not_found"), "{err}");
    assert!(!missing.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
            })
            .count(),
        0
    );
}

#[test]
fn only_the_owner_writes() {
    let hub = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    let (owner_key, other_key) = (dir.path().join("owner"), dir.path().join("other"));
    let file = random_file(dir.path(), "m.bin", 1000);
    stdout(&cairn(
        &hub.url,
        &owner_key,
        &[
            "hub",
            "push",
            file.to_str().unwrap(),
            "--repo",
            "mine",
            "--version",
            "1.0",
            "--draft",
        ],
    ));
    let err = failure(&cairn(
        &hub.url,
        &other_key,
        &[
            "hub",
            "push",
            file.to_str().unwrap(),
            "--repo",
            "mine",
            "--version",
            "1.0",
        ],
    ));
    assert!(err.contains("belongs to"), "{err}");

    // The hub itself refuses, whatever the client does.
    runtime().block_on(async {
        let intruder = HubClient::new(&hub.url, Some(PrivateKeySigner::random())).unwrap();
        let (name, v) = ("mine".parse().unwrap(), "1.0".parse().unwrap());
        assert_eq!(
            api_code(
                intruder
                    .create_release(&name, "2.0".parse().unwrap(), "")
                    .await
                    .unwrap_err()
            ),
            (403, "not_owner".into())
        );
        let err = intruder
            .upload_file(
                &name,
                v,
                &"x.bin".parse().unwrap(),
                &file,
                "application/octet-stream",
                |_| {},
            )
            .await;
        assert_eq!(api_code(err.unwrap_err()), (403, "not_owner".into()));
        assert_eq!(
            api_code(intruder.publish(&name, v).await.unwrap_err()),
            (403, "not_owner".into())
        );
        let anonymous = HubClient::new(&hub.url, None).unwrap();
        assert!(matches!(
            anonymous.publish(&name, v).await,
            Err(ClientError::NoKey)
        ));
    });
}

/// Signed headers for a hand-made request.
fn sign(
    hub: &str,
    key: &PrivateKeySigner,
    method: &str,
    target: &str,
    body_sha256: [u8; 32],
    timestamp: u64,
) -> Vec<(&'static str, String)> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    let (host, _) = cairn_core::auth::host_and_target(hub).unwrap();
    RequestToSign {
        host: &host,
        method,
        target,
        body_sha256,
        timestamp,
        nonce,
    }
    .sign(key)
    .to_pairs()
    .to_vec()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sends a request that must be refused with `expected` (status, code); returns the error body.
async fn refused(
    expected: (u16, &str),
    hub: &str,
    method: reqwest::Method,
    target: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> serde_json::Value {
    let (status, err) = raw_json(hub, method, target, headers, body).await;
    assert_eq!(
        (status, err["code"].as_str().unwrap()),
        expected,
        "{target}: {err}"
    );
    err
}

async fn raw_json(
    hub: &str,
    method: reqwest::Method,
    target: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{hub}{target}"))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body.get("code").is_some() || status < 400,
        "error without a code: {body}"
    );
    (status, body)
}

#[test]
fn forged_stale_replayed_and_tampered_signatures_are_refused() {
    let hub = Server::devnet();
    runtime().block_on(async {
        let key = PrivateKeySigner::random();
        let body = serde_json::to_vec(&serde_json::json!({"name": "sig-test"})).unwrap();
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let post = reqwest::Method::POST;

        refused(
            (401, "signature_missing"),
            &hub.url,
            post.clone(),
            "/v1/repos",
            &[],
            body.clone(),
        )
        .await;

        let stale = sign(&hub.url, &key, "POST", "/v1/repos", digest, now() - 3600);
        refused(
            (401, "signature_stale"),
            &hub.url,
            post.clone(),
            "/v1/repos",
            &stale,
            body.clone(),
        )
        .await;

        let mut forged = sign(&hub.url, &key, "POST", "/v1/repos", digest, now());
        forged[0].1 = PrivateKeySigner::random().address().to_string();
        refused(
            (401, "signature_invalid"),
            &hub.url,
            post.clone(),
            "/v1/repos",
            &forged,
            body.clone(),
        )
        .await;

        let good = sign(&hub.url, &key, "POST", "/v1/repos", digest, now());
        let tampered = serde_json::to_vec(&serde_json::json!({"name": "sig-evil"})).unwrap();
        refused(
            (401, "body_digest_mismatch"),
            &hub.url,
            post.clone(),
            "/v1/repos",
            &good,
            tampered,
        )
        .await;

        let good = sign(&hub.url, &key, "POST", "/v1/repos", digest, now());
        let (status, repo) =
            raw_json(&hub.url, post.clone(), "/v1/repos", &good, body.clone()).await;
        assert_eq!(status, 201, "{repo}");
        assert_eq!(
            repo["owner"].as_str().unwrap(),
            key.address().to_checksum(None)
        );
        refused(
            (401, "signature_replayed"),
            &hub.url,
            post.clone(),
            "/v1/repos",
            &good,
            body.clone(),
        )
        .await;
        // Signed for one path, sent to another.
        let other = sign(
            &hub.url,
            &key,
            "POST",
            "/v1/repos/sig-test/releases",
            digest,
            now(),
        );
        refused(
            (401, "signature_invalid"),
            &hub.url,
            post,
            "/v1/repos",
            &other,
            body,
        )
        .await;
    });
}

/// A new, empty database `name` on the PostgreSQL server of `admin`; its URL.
async fn fresh_database(admin: &str, name: &str) -> String {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(admin).await.unwrap();
    pool.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// One HTTP/1.1 request on a raw socket, target sent exactly as given; returns status and body.
async fn raw_http(
    hub: &str,
    method: &str,
    target: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
) -> (u16, String) {
    let addr = hub.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, answer)
}

/// A signed `PUT` of `body` to `target` that sends its headers and only the first half of the
/// body; the open connection.
async fn half_upload(
    hub: &str,
    key: &PrivateKeySigner,
    target: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> tokio::net::TcpStream {
    let headers = sign(hub, key, "PUT", target, Sha256::digest(body).into(), now());
    let addr = hub.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "PUT {target} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(t) = content_type {
        head.push_str(&format!("content-type: {t}\r\n"));
    }
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body[..body.len() / 2]).await.unwrap();
    sock
}

async fn draft(hub: &str, key: &PrivateKeySigner, name: &str) -> HubClient {
    let client = HubClient::new(hub, Some(key.clone())).unwrap();
    let new = NewRepo {
        name: name.parse().unwrap(),
        description: String::new(),
        task: None,
        license: None,
        tags: vec![],
    };
    client.create_repo(&new).await.unwrap();
    client
        .create_release(&new.name, "1.0".parse().unwrap(), "")
        .await
        .unwrap();
    client
}

#[test]
fn bad_uploads_store_nothing_and_say_why() {
    let hub = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let key = PrivateKeySigner::random();
        let client = draft(&hub.url, &key, "uploads").await;
        let (name, v) = ("uploads".parse().unwrap(), "1.0".parse().unwrap());
        let file = random_file(dir.path(), "data.bin", 2 << 20);
        let real = BlobId::of(&std::fs::read(&file).unwrap());
        // Drafts' blobs are served only to their owner (a signed request): what is stored.
        let blob_status = |id: BlobId| {
            let target = format!("/v1/blobs/{id}");
            let url = format!("{}{target}", hub.url);
            let h = sign(
                &hub.url,
                &key,
                "GET",
                &target,
                Sha256::digest(b"").into(),
                now(),
            );
            async move {
                let mut r = reqwest::Client::new().get(url);
                for (k, v) in h {
                    r = r.header(k, v);
                }
                r.send().await.unwrap().status().as_u16()
            }
        };

        // Declared CID differs from the bytes (a corrupted upload): nothing stored or listed.
        let wrong = BlobId::of(b"something else");
        let err = client
            .upload_declared(
                &name,
                v,
                &"data.bin".parse().unwrap(),
                &file,
                wrong,
                "application/octet-stream",
                |_| {},
            )
            .await;
        let (status, code) = api_code(err.unwrap_err());
        assert_eq!((status, code.as_str()), (422, "cid_mismatch"));
        assert_eq!(blob_status(real).await, 404);
        assert_eq!(blob_status(wrong).await, 404);

        // Truncated: the connection closes halfway through the declared length.
        let bytes = std::fs::read(&file).unwrap();
        let target = "/v1/repos/uploads/releases/1.0/files/data.bin";
        let mut sock = half_upload(&hub.url, &key, target, &bytes, None).await;
        sock.shutdown().await.unwrap();
        let mut answer = Vec::new();
        sock.read_to_end(&mut answer).await.unwrap();
        drop(sock);
        // The hub says what went wrong, as JSON, and that nothing was kept.
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let body: serde_json::Value =
            serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
        assert_eq!(body["code"], "upload_interrupted", "{answer}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("nothing was stored"),
            "{answer}"
        );
        assert_eq!(blob_status(real).await, 404);
        assert!(
            client.repo(&name).await.unwrap().releases[0]
                .files
                .is_empty()
        );

        // A retry of the same file is not blocked by either failure.
        let entry = client
            .upload_file(
                &name,
                v,
                &"data.bin".parse().unwrap(),
                &file,
                "application/octet-stream",
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!((entry.cid, entry.size), (real, bytes.len() as u64));
        assert_eq!(blob_status(real).await, 200);

        // Not ONNX, though the name says so: refused with the parser's reason.
        let fake = dir.path().join("fake.onnx");
        std::fs::write(&fake, b"this is a text file pretending to be a model\n").unwrap();
        let err = client
            .upload_file(
                &name,
                v,
                &"fake.onnx".parse().unwrap(),
                &fake,
                "application/onnx",
                |_| {},
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        let (status, code) = api_code(err);
        assert_eq!((status, code.as_str()), (422, "invalid_onnx"), "{msg}");
        assert!(msg.contains("not a valid ONNX model"), "{msg}");
        assert_eq!(
            blob_status(BlobId::of(&std::fs::read(&fake).unwrap())).await,
            404
        );
        let files = &client.repo(&name).await.unwrap().releases[0].files;
        assert_eq!(files.len(), 1, "only data.bin");

        // Path traversal, sent on a raw socket: URL libraries normalise `%2e%2e` away.
        for target in [
            "/v1/repos/uploads/releases/1.0/files/a/%2e%2e/b",
            "/v1/repos/uploads/releases/1.0/files/%2e%2e/etc",
            "/v1/repos/uploads/releases/1.0/files/%2Fetc%2Fpasswd",
            "/v1/repos/uploads/releases/1.0/files/a%5C..%5Cb",
        ] {
            let h = sign(
                &hub.url,
                &key,
                "PUT",
                target,
                *BlobId::of(b"x").digest(),
                now(),
            );
            let (status, body) = raw_http(&hub.url, "PUT", target, &h, b"x").await;
            assert_eq!(status, 400, "{target}: {body}");
            assert!(body.contains("invalid_path"), "{target}: {body}");
        }

        // Publishing, then writing into the published release.
        client.publish(&name, v).await.unwrap();
        assert_eq!(
            api_code(client.publish(&name, v).await.unwrap_err()),
            (409, "release_published".into())
        );
        let err = client
            .upload_file(
                &name,
                v,
                &"late.bin".parse().unwrap(),
                &file,
                "application/octet-stream",
                |_| {},
            )
            .await;
        assert_eq!(
            api_code(err.unwrap_err()),
            (409, "release_published".into())
        );
        assert_eq!(
            api_code(client.create_release(&name, v, "").await.unwrap_err()),
            (409, "release_published".into())
        );
    });
}

#[test]
fn blobs_are_served_with_ranges_etags_and_immutable_caching() {
    let hub = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let key = PrivateKeySigner::random();
        let client = draft(&hub.url, &key, "ranges").await;
        let file = random_file(dir.path(), "r.bin", 100_000);
        let bytes = std::fs::read(&file).unwrap();
        let entry = client
            .upload_file(
                &"ranges".parse().unwrap(),
                "1.0".parse().unwrap(),
                &"r.bin".parse().unwrap(),
                &file,
                "application/octet-stream",
                |_| {},
            )
            .await
            .unwrap();
        // Anyone reads the files of a published release.
        client
            .publish(&"ranges".parse().unwrap(), "1.0".parse().unwrap())
            .await
            .unwrap();
        let url = format!("{}/v1/blobs/{}", hub.url, entry.cid);
        let http = reqwest::Client::new();

        let full = http.get(&url).send().await.unwrap();
        assert_eq!(full.status(), 200);
        let etag = full.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", entry.cid));
        assert!(
            full.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        assert_eq!(full.bytes().await.unwrap(), bytes);

        let part = http
            .get(&url)
            .header("range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.headers()["content-range"], "bytes 1000-1999/100000");
        assert_eq!(part.bytes().await.unwrap(), bytes[1000..2000]);
        let tail = http
            .get(&url)
            .header("range", "bytes=-10")
            .send()
            .await
            .unwrap();
        assert_eq!(tail.bytes().await.unwrap(), bytes[99_990..]);
        let bad = http
            .get(&url)
            .header("range", "bytes=200000-")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 416);
        assert_eq!(bad.headers()["content-range"], "bytes */100000");

        let cached = http
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(cached.status(), 304);
        let head = http.head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], "100000");
        // The OCI spelling names the same blob.
        let oci = http
            .get(format!(
                "{}/v1/blobs/{}",
                hub.url,
                entry.cid.to_sha256_string()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(oci.status(), 200);

        let err = refused(
            (400, "invalid_blob_id"),
            &hub.url,
            reqwest::Method::GET,
            "/v1/blobs/not-a-cid",
            &[],
            vec![],
        )
        .await;
        assert!(err["message"].as_str().unwrap().contains("bafkrei"));
        refused(
            (404, "blob_not_found"),
            &hub.url,
            reqwest::Method::GET,
            &format!("/v1/blobs/{}", BlobId::of(b"?")),
            &[],
            vec![],
        )
        .await;
    });
}

#[test]
fn api_is_documented_and_errors_are_json() {
    let hub = Server::devnet();
    runtime().block_on(async {
        let spec: serde_json::Value = reqwest::get(format!("{}/openapi.json", hub.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let paths = spec["paths"].as_object().unwrap();
        for p in [
            "/v1/repos",
            "/v1/repos/{name}/releases/{version}/files/{path}",
            "/v1/blobs/{cid}",
            "/v1/resolve/{reference}",
            "/health",
        ] {
            assert!(paths.contains_key(p), "{p} undocumented");
        }
        let docs = reqwest::get(format!("{}/docs/", hub.url)).await.unwrap();
        assert_eq!(docs.status(), 200);
        assert!(docs.text().await.unwrap().contains("swagger"));
        let health = HubClient::new(&hub.url, None)
            .unwrap()
            .health()
            .await
            .unwrap();
        assert_eq!(health.status, "ok");
        for (expected, target) in [
            ((404, "no_such_route"), "/nope"),
            ((400, "invalid_repo_name"), "/v1/repos/BAD%20NAME"),
            ((404, "repo_not_found"), "/v1/resolve/ghost@1.0"),
        ] {
            refused(
                expected,
                &hub.url,
                reqwest::Method::GET,
                target,
                &[],
                vec![],
            )
            .await;
        }
    });
}

/// onnxruntime's view of a model (written by scripts/make_test_models.py) against the hub's.
fn assert_signature_matches_onnxruntime(
    models: &Path,
    name: &str,
    sig: &cairn_onnx::OnnxSignature,
) {
    let ort: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models.join(format!("{name}.ort.json"))).unwrap(),
    )
    .unwrap();
    for (side, ours) in [("inputs", &sig.inputs), ("outputs", &sig.outputs)] {
        let theirs = ort[side].as_array().unwrap();
        assert_eq!(theirs.len(), ours.len(), "{name} {side}");
        for (t, o) in theirs.iter().zip(ours) {
            assert_eq!(t["name"], o.name.as_str(), "{name}");
            assert_eq!(t["type"], o.type_name.as_str(), "{name} {}", o.name);
            // onnxruntime prints a symbolic dim as its name, a fixed one as a number, an unknown as None.
            assert_eq!(
                t["shape"],
                serde_json::to_value(o.shape.as_ref().unwrap()).unwrap(),
                "{name} {}",
                o.name
            );
        }
    }
}

#[test]
fn real_models_publish_with_signatures_matching_onnxruntime() {
    let Some(models) = models_dir("real_models_publish_with_signatures_matching_onnxruntime")
    else {
        return;
    };
    let hub = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    for name in ["light_squeezenet", "digits_mlp"] {
        let file = models.join(format!("{name}.onnx"));
        let repo = name.replace('_', "-");
        stdout(&cairn(
            &hub.url,
            &key,
            &[
                "hub",
                "push",
                file.to_str().unwrap(),
                "--repo",
                &repo,
                "--version",
                "1.0",
                "--task",
                "classification",
            ],
        ));
        let show = stdout(&cairn(&hub.url, &key, &["hub", "show", &repo, "--json"]));
        let detail: cairn_catalog::RepoDetail = serde_json::from_str(&show).unwrap();
        let entry = &detail.releases[0].files[0];
        assert_eq!(entry.media_type, "application/onnx");
        let sig = entry.onnx.as_ref().expect("signature extracted");
        assert!(!sig.opsets.is_empty() && sig.ir_version > 0);
        assert_signature_matches_onnxruntime(&models, name, sig);
        let pulled = dir.path().join(format!("{name}.pulled"));
        stdout(&cairn(
            &hub.url,
            &key,
            &[
                "hub",
                "pull",
                &format!("{repo}@1.0"),
                "-o",
                pulled.to_str().unwrap(),
            ],
        ));
        assert!(std::fs::read(&pulled).unwrap() == std::fs::read(&file).unwrap());
    }
}

#[test]
fn a_language_model_publishes_with_its_gguf_metadata_and_a_cut_one_is_refused() {
    let test = "a_language_model_publishes_with_its_gguf_metadata_and_a_cut_one_is_refused";
    let Some(model) = llm_model(test) else {
        return;
    };
    let hub = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let push = |file: &std::path::Path, repo: &str| {
        cairn(
            &hub.url,
            &key,
            &[
                "hub",
                "push",
                file.to_str().unwrap(),
                "--repo",
                repo,
                "--version",
                "1.0",
                "--task",
                "text-generation",
            ],
        )
    };
    stdout(&push(&model, "smollm2"));
    let show = stdout(&cairn(
        &hub.url,
        &key,
        &["hub", "show", "smollm2", "--json"],
    ));
    let detail: cairn_catalog::RepoDetail = serde_json::from_str(&show).unwrap();
    let entry = &detail.releases[0].files[0];
    assert_eq!(entry.media_type, "application/x-gguf");
    assert_eq!(entry.onnx, None);
    let meta = entry.gguf.as_ref().expect("GGUF metadata extracted");
    assert_eq!(
        (
            meta.architecture.as_str(),
            meta.parameter_count,
            meta.quantization.as_str()
        ),
        ("llama", 134_515_008, "Q4_1")
    );
    assert_eq!(
        (meta.context_length, meta.vocab_size),
        (Some(8192), Some(49152))
    );
    let tokenizer = meta.tokenizer.as_ref().expect("the tokenizer is embedded");
    assert_eq!(
        (tokenizer.model.as_str(), tokenizer.eos_token_id),
        ("gpt2", Some(2))
    );
    assert!(
        meta.chat_template
            .as_ref()
            .unwrap()
            .contains("<|im_start|>")
    );
    let text = stdout(&cairn(&hub.url, &key, &["hub", "show", "smollm2"]));
    for line in [
        "llama Smollm2 135M 8k Lc100K Mix1 Ep2, 134515008 parameters, Q4_1 (GGUF v3)",
        "context 8192 tokens, 30 layers, width 576, 9 heads (3 key/value), vocabulary 49152",
        "tensors: 61 F32, 210 Q4_1, 1 Q8_0",
        "tokenizer: embedded (gpt2/smollm, 49152 tokens, 48900 merges, bos 1, eos 2)",
    ] {
        assert!(text.contains(line), "`{line}` missing from:\n{text}");
    }

    // Cut inside the tensor data: nothing is stored, and the reason names the shortfall.
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = failure(&push(&cut, "cut"));
    assert!(
        err.contains("invalid_gguf") && err.contains("is truncated"),
        "{err}"
    );
    assert!(err.contains("needs bytes up to"), "{err}");
    let status = runtime().block_on(async {
        reqwest::get(format!(
            "{}/v1/blobs/{}",
            hub.url,
            BlobId::of(&bytes[..bytes.len() / 2])
        ))
        .await
        .unwrap()
        .status()
    });
    assert_eq!(status, 404);

    // Refused by its first bytes and 64 MiB long: the hub stops storing and parsing soon after
    // the refusal and lingers on the connection (cairn-serve), so the client still sending
    // reads the reason, not a reset.
    let mut fake = b"GGUX".to_vec();
    fake.resize(64 << 20, 0);
    let fake_path = dir.path().join("fake.gguf");
    std::fs::write(&fake_path, &fake).unwrap();
    let err = failure(&push(&fake_path, "fake"));
    assert!(
        err.contains("invalid_gguf") && err.contains("not the magic `GGUF`"),
        "{err}"
    );
}

/// A model upload holds a blocking thread while its body arrives: a client that sends half a
/// body and waits would otherwise pin one thread per connection until the pool is gone. Reads
/// are bounded in number, and an upload that goes quiet is cut off.
#[test]
fn model_uploads_read_at_once_are_bounded_and_an_idle_one_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let blobs = dir.path().join("blobs");
    let hub = Server::hub(
        &catalog,
        blobs.to_str().unwrap(),
        &[
            ("CAIRN_HUB_MAX_MODEL_PARSES", "1".into()),
            ("CAIRN_HUB_UPLOAD_IDLE_SECS", "2".into()),
        ],
    );
    runtime().block_on(async {
        let key = PrivateKeySigner::random();
        let client = draft(&hub.url, &key, "slow").await;
        // The slow upload: headers and half of a 1 MiB body, then nothing. Its start is a
        // well-formed GGUF header, so the reader waits for the rest.
        let mut body = b"GGUF".to_vec();
        body.extend(3u32.to_le_bytes());
        body.extend([0u8; 16]);
        body.resize(1 << 20, 0);
        let target = "/v1/repos/slow/releases/1.0/files/slow.gguf";

        // Another model upload is told to retry, at once and before its body is read. Which of
        // two requests the hub takes up first is not ours to order: if the probe got there
        // first (and held the one permit), the slow upload starts over.
        let small = dir.path().join("other.gguf");
        std::fs::write(&small, b"not a model").unwrap();
        let (name, v) = ("slow".parse().unwrap(), "1.0".parse().unwrap());
        let other: cairn_core::FilePath = "other.gguf".parse().unwrap();
        let upload = || client.upload_file(&name, v, &other, &small, "application/x-gguf", |_| {});
        let mut answer = None;
        let mut slow = None;
        for _ in 0..20 {
            let sock = half_upload(&hub.url, &key, target, &body, Some("application/x-gguf")).await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let (status, code) = api_code(upload().await.unwrap_err());
            if status == 503 {
                (answer, slow) = (Some(code), Some(sock));
                break;
            }
        }
        assert_eq!(answer.as_deref(), Some("busy"));
        let mut slow = slow.expect("the slow upload holds the permit");
        // Other files are not held up.
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"plain").unwrap();
        client
            .upload_file(
                &name,
                v,
                &"notes.txt".parse().unwrap(),
                &text,
                "text/plain",
                |_| {},
            )
            .await
            .unwrap();

        // The slow client sends nothing more: it is cut off after the idle time, told why, and
        // its permit comes back.
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            slow.read_to_end(&mut answer),
        )
        .await
        .expect("the idle upload is answered")
        .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains("upload_interrupted") && answer.contains("no upload data for 2 s"),
            "{answer}"
        );
        let mut code = String::new();
        for _ in 0..50 {
            code = api_code(upload().await.unwrap_err()).1;
            if code != "busy" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(code, "invalid_gguf");
    });
}

#[test]
fn a_truncated_real_model_is_refused() {
    let Some(models) = models_dir("a_truncated_real_model_is_refused") else {
        return;
    };
    let hub = Server::devnet();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(models.join("light_squeezenet.onnx")).unwrap();
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = failure(&cairn(
        &hub.url,
        &dir.path().join("key"),
        &[
            "hub",
            "push",
            cut.to_str().unwrap(),
            "--repo",
            "cut",
            "--version",
            "1.0",
        ],
    ));
    assert!(
        err.contains("invalid_onnx") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn two_hubs_on_one_postgres_and_one_s3_bucket_act_as_one() {
    let (Ok(pg), Ok(s3)) = (
        std::env::var("CAIRN_TEST_PG_URL"),
        std::env::var("CAIRN_TEST_S3_ENDPOINT"),
    ) else {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
            "PostgreSQL and S3 are required (run scripts/test.sh)"
        );
        eprintln!(
            "SKIPPED two_hubs_on_one_postgres_and_one_s3_bucket_act_as_one: no PostgreSQL/S3"
        );
        return;
    };
    let bucket = std::env::var("CAIRN_TEST_S3_BUCKET").unwrap_or_else(|_| "cairn-test".into());
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).unwrap();
    let prefix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let blobs = format!("s3://{bucket}/e2e-{prefix}");
    // The migration line is logged at `info`, whatever the caller's RUST_LOG.
    let env = [("CAIRN_S3_ENDPOINT", s3), ("RUST_LOG", "info".to_string())];
    // Both start at once on a fresh database: the catalog migration must be taken by exactly
    // one (the other waits on the lock, then finds the schema current).
    let pg = runtime().block_on(fresh_database(&pg, &format!("e2e_{prefix}")));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::hub_logged(&pg, &blobs, &env));
        let b = s.spawn(|| Server::hub_logged(&pg, &blobs, &env));
        (a.join().unwrap(), b.join().unwrap())
    });
    let migrated: Vec<bool> = [&a, &b]
        .iter()
        .map(|h| h.log().contains("applying catalog migration"))
        .collect();
    assert_eq!(
        migrated.iter().filter(|m| **m).count(),
        1,
        "hub a:\n{}\nhub b:\n{}",
        a.log(),
        b.log()
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let repo = format!("shared-{prefix}");
    // 20 MiB: several S3 multipart parts.
    let file = random_file(dir.path(), "big.bin", 20 << 20);
    stdout(&cairn(
        &a.url,
        &key,
        &[
            "hub",
            "push",
            file.to_str().unwrap(),
            "--repo",
            &repo,
            "--version",
            "1.0",
        ],
    ));
    let pulled = dir.path().join("pulled");
    stdout(&cairn(
        &b.url,
        &key,
        &[
            "hub",
            "pull",
            &format!("{repo}@1.0/big.bin"),
            "-o",
            pulled.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&pulled).unwrap() == std::fs::read(&file).unwrap());
    assert!(stdout(&cairn(&b.url, &key, &["hub", "ls", &repo])).contains(&repo));
    let err = failure(&cairn(
        &b.url,
        &key,
        &[
            "hub",
            "push",
            file.to_str().unwrap(),
            "--repo",
            &repo,
            "--version",
            "1.0",
        ],
    ));
    assert!(err.contains("already published"), "{err}");

    if let Some(models) = models_dir("two_hubs (ONNX over S3)") {
        let model = models.join("digits_mlp.onnx");
        let onnx_repo = format!("digits-{prefix}");
        stdout(&cairn(
            &b.url,
            &key,
            &[
                "hub",
                "push",
                model.to_str().unwrap(),
                "--repo",
                &onnx_repo,
                "--version",
                "1.0",
            ],
        ));
        let show: cairn_catalog::RepoDetail = serde_json::from_str(&stdout(&cairn(
            &a.url,
            &key,
            &["hub", "show", &onnx_repo, "--json"],
        )))
        .unwrap();
        assert_signature_matches_onnxruntime(
            &models,
            "digits_mlp",
            show.releases[0].files[0].onnx.as_ref().unwrap(),
        );
    }

    runtime().block_on(async {
        let (ka, kb) = (PrivateKeySigner::random(), PrivateKeySigner::random());
        let ca = HubClient::new(&a.url, Some(ka)).unwrap();
        let cb = HubClient::new(&b.url, Some(kb)).unwrap();
        let new = NewRepo {
            name: format!("race-{prefix}").parse().unwrap(),
            description: String::new(),
            task: None,
            license: None,
            tags: vec![],
        };
        let (ra, rb) = tokio::join!(ca.create_repo(&new), cb.create_repo(&new));
        assert!(
            ra.is_ok() != rb.is_ok(),
            "exactly one hub creates the repository"
        );
        let loser = ra.err().or(rb.err()).unwrap();
        assert_eq!(api_code(loser), (409, "repo_exists".into()));
    });
}
