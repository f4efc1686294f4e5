//! The follower against real chains (the embedded one; anvil for a reorganization) and a node
//! endpoint that lies, on SQLite and on a real PostgreSQL.

use super::*;
use alloy_primitives::{Address, B256, U256};
use axum::routing::get;
use cairn_core::{BlobId, ExecutionProfile};
use cairn_ledger::deploy::{TOKEN_UNIT, deploy};
use cairn_ledger::{
    Chain, DeployParams, EmbeddedLedger, Ledger, RegistrationRequest, Role, RpcLedger, dev_signer,
};
use cairn_receipt::{Claims, ReceiptDomain, SignedReceipt};
use sqlx::Row;
use std::sync::{Arc, Mutex};

async fn each_backend<F, Fut>(test: &str, f: F)
where
    F: Fn(Index) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("index.db").display());
    f(Index::connect(&url).await.unwrap()).await;
    if let Some(url) = fresh_pg_database(test).await {
        f(Index::connect(&url).await.unwrap()).await;
    }
}

use cairn_sql::fresh_pg_database;

async fn deployed(ledger: Arc<dyn Ledger>) -> Chain {
    let gov = dev_signer(0);
    let d = deploy(
        ledger.as_ref(),
        &gov,
        &DeployParams::devnet(gov.address(), gov.address()),
    )
    .await
    .unwrap();
    Chain::new(ledger, d).unwrap()
}

async fn register(chain: &Chain, account: usize, role: Role, endpoint: &str) {
    let key = dev_signer(account);
    let stake = U256::from(100 * TOKEN_UNIT);
    chain
        .mint(&dev_signer(0), key.address(), stake)
        .await
        .unwrap();
    chain
        .register(
            &key,
            &RegistrationRequest::dev(key.address(), role, endpoint),
            stake,
            vec![],
        )
        .await
        .unwrap();
}

fn follower(chain: &Chain, index: &Index) -> Follower {
    Follower::new(
        chain.clone(),
        index.clone(),
        FollowConfig {
            hub: None,
            every: std::time::Duration::from_millis(100),
            timeout: std::time::Duration::from_secs(5),
            allow_private: true,
            hub_every: std::time::Duration::from_secs(30),
            nodes_every: std::time::Duration::from_secs(10),
        },
        Arc::default(),
    )
}

async fn count(index: &Index, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(index.pool())
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

fn receipts(chain: &Chain, from: u8, n: u8) -> Vec<SignedReceipt> {
    let d = chain.deployment();
    let domain = ReceiptDomain {
        chain_id: d.chain_id,
        verifying_contract: d.settlement,
    };
    (from..from + n)
        .map(|i| {
            Claims {
                request_id: B256::repeat_byte(i),
                model: BlobId::of(b"model"),
                input_hash: B256::repeat_byte(2),
                output_hash: B256::repeat_byte(3),
                profile: ExecutionProfile {
                    engine: "tract".into(),
                    engine_version: "0.23.9".into(),
                    isa: "x86_64".into(),
                    threads: 1,
                },
                timestamp: 1_796_000_000,
                price: U256::from(1000u64),
                payment_ref: B256::ZERO,
                llm: None,
            }
            .sign(domain, &dev_signer(2))
            .unwrap()
        })
        .collect()
}

fn root_of(rs: &[SignedReceipt]) -> B256 {
    let digests: Vec<B256> = rs.iter().map(|r| r.signing_hash()).collect();
    cairn_receipt::merkle::ReceiptTree::new(&digests)
        .unwrap()
        .root()
}

/// What the test node answers for a batch: a status and a body.
type Listings = Arc<Mutex<std::collections::HashMap<u64, (u16, String)>>>;

/// The node's batch route, answering what the test says (it plays a node that lies or is
/// down; the receipts in it are real signed ones).
async fn lying_node() -> (String, Listings) {
    let listings: Listings = Arc::default();
    let served = listings.clone();
    let app = axum::Router::new().route(
        "/v1/batches/{id}",
        get(move |axum::extract::Path(id): axum::extract::Path<u64>| {
            let served = served.clone();
            async move {
                let (status, body) = served
                    .lock()
                    .unwrap()
                    .get(&id)
                    .cloned()
                    .unwrap_or((404, "{}".into()));
                (axum::http::StatusCode::from_u16(status).unwrap(), body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, listings)
}

fn listing(rs: &[SignedReceipt]) -> String {
    serde_json::json!({ "receipts": rs.iter().map(|r| r.to_json()).collect::<Vec<_>>() })
        .to_string()
}

async fn listing_state(index: &Index, id: u64) -> (String, i64) {
    let r = sqlx::query("SELECT listing, tries FROM idx_batches WHERE id = $1")
        .bind(id as i64)
        .fetch_one(index.pool())
        .await
        .unwrap();
    (r.try_get("listing").unwrap(), r.try_get("tries").unwrap())
}

/// A node's word is never taken: a listing with a tampered receipt, one that makes another
/// root, or one signed by someone else stores nothing and is marked invalid; a node that is
/// down is asked again later (never held to have lied) and its listing stored once it answers.
/// Rounds read twice add nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_listings_are_stored_only_when_they_make_the_root_on_chain() {
    each_backend("explorer_listings", |index| async move {
        let dir = tempfile::tempdir().unwrap();
        let gov = dev_signer(0);
        let ledger = EmbeddedLedger::open(
            &dir.path().join("chain.sqlite"),
            31337,
            &[
                gov.address(),
                dev_signer(2).address(),
                dev_signer(3).address(),
            ]
            .map(|a| (a, U256::from(10u128.pow(22)))),
        )
        .unwrap();
        let chain = deployed(Arc::new(ledger)).await;
        let (url, listings) = lying_node().await;
        register(&chain, 2, Role::Inference, &url).await;
        // The node escrows its batches' fees itself here (no vault income).
        chain
            .mint(&gov, dev_signer(2).address(), U256::from(TOKEN_UNIT))
            .await
            .unwrap();
        let node = dev_signer(2);
        let good = receipts(&chain, 1, 3);
        let submit = |rs: Vec<SignedReceipt>| {
            let chain = chain.clone();
            let node = node.clone();
            async move {
                let fees = U256::from(1000 * rs.len());
                chain
                    .submit_batch(&node, root_of(&rs), rs.len() as u32, fees)
                    .await
                    .unwrap()
                    .0
            }
        };
        // 1: a receipt's price changed after signing.
        let b1 = submit(good.clone()).await;
        let mut tampered: serde_json::Value = serde_json::from_str(&listing(&good)).unwrap();
        tampered["receipts"][1]["typedData"]["message"]["price"] = "1".into();
        // 2: real receipts, but not the ones the root commits to.
        let b2 = submit(receipts(&chain, 10, 3)).await;
        // 3: the node is down at first.
        let b3 = submit(receipts(&chain, 20, 2)).await;
        {
            let mut l = listings.lock().unwrap();
            l.insert(b1, (200, tampered.to_string()));
            l.insert(b2, (200, listing(&receipts(&chain, 30, 3))));
            l.insert(b3, (503, "{}".into()));
        }
        let f = follower(&chain, &index);
        let r = f.round().await.unwrap();
        assert_eq!(r.listings, 0);
        assert_eq!(listing_state(&index, b1).await.0, "invalid");
        assert_eq!(listing_state(&index, b2).await.0, "invalid");
        assert_eq!(listing_state(&index, b3).await, ("pending".into(), 1));
        assert_eq!(count(&index, "SELECT COUNT(*) FROM idx_receipts").await, 0);
        let errors: Vec<String> = sqlx::query("SELECT error FROM idx_batches ORDER BY id")
            .fetch_all(index.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get("error").unwrap())
            .collect();
        assert!(errors[0].contains("make root"), "{errors:?}");
        assert!(errors[1].contains("make root"), "{errors:?}");
        assert!(errors[2].contains("503"), "{errors:?}");

        // The node comes back: after its backoff the listing is read and stored. Its first
        // receipt's seal is spoiled (a digit of the signature's `r` changed): the content is
        // what the node committed on chain, so it is stored, its seal shown as invalid.
        let mut spoiled: serde_json::Value =
            serde_json::from_str(&listing(&receipts(&chain, 20, 2))).unwrap();
        let sig = spoiled["receipts"][0]["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        let flipped = if &sig[10..11] == "0" { "1" } else { "0" };
        spoiled["receipts"][0]["signature"] =
            format!("{}{flipped}{}", &sig[..10], &sig[11..]).into();
        listings
            .lock()
            .unwrap()
            .insert(b3, (200, spoiled.to_string()));
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let r = f.round().await.unwrap();
        assert_eq!(r.listings, 1);
        assert_eq!(listing_state(&index, b3).await.0, "indexed");
        assert_eq!(count(&index, "SELECT COUNT(*) FROM idx_receipts").await, 2);
        let seals: Vec<String> =
            sqlx::query("SELECT seal FROM idx_receipts WHERE batch_id = $1 ORDER BY leaf_index")
                .bind(b3 as i64)
                .fetch_all(index.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get("seal").unwrap())
                .collect();
        assert_eq!(seals, ["invalid", "own"]);
        // A listing checked against a root the batch no longer has (a reorganization replaced
        // it while the listing was fetched), or a batch already read, stores nothing.
        let replaced = crate::store::NewBatch {
            id: b3,
            node: node.address().to_checksum(None),
            root: B256::repeat_byte(9),
            count: 2,
            fees: "2000".into(),
            block: 0,
            ts: 0,
            tx: B256::ZERO,
        };
        assert!(!index.store_listing(&replaced, &[]).await.unwrap());

        // 4: receipts signed by another key, listed as this node's.
        let other = receipts(&chain, 40, 2)
            .into_iter()
            .map(|r| r.claims.sign(r.domain, &dev_signer(3)).unwrap())
            .collect::<Vec<_>>();
        let b4 = submit(other.clone()).await;
        listings.lock().unwrap().insert(b4, (200, listing(&other)));
        f.round().await.unwrap();
        assert_eq!(listing_state(&index, b4).await.0, "invalid");

        // 5: a batch that carries no fees is not fetched: its receipts cost nothing to make up.
        let free = receipts(&chain, 50, 2);
        let b5 = chain
            .submit_batch(&node, root_of(&free), 2, U256::ZERO)
            .await
            .unwrap()
            .0;
        listings.lock().unwrap().insert(b5, (200, listing(&free)));
        f.round().await.unwrap();
        assert_eq!(listing_state(&index, b5).await, ("unpaid".into(), 1));

        // Reading again adds nothing.
        let events = count(&index, "SELECT COUNT(*) FROM idx_events").await;
        let r = f.round().await.unwrap();
        assert_eq!((r.events, r.listings), (0, 0));
        assert_eq!(
            count(&index, "SELECT COUNT(*) FROM idx_events").await,
            events
        );
        assert_eq!(
            count(
                &index,
                "SELECT COUNT(*) FROM idx_events WHERE name = 'BatchSubmitted'"
            )
            .await,
            5
        );
        api_reads(&index, &chain, b3).await;
    })
    .await;
}

/// Every API route answers from this backend's index (the same SQL text on both).
async fn api_reads(index: &Index, chain: &Chain, indexed: u64) {
    let state = api::ApiState::new(index.clone(), chain.deployment().clone());
    let heavy = state.heavy.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state, Arc::default());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(&url).await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{url}: {body}");
            body
        }
    };
    let status = get("/api/v1/status".into()).await;
    assert_eq!(status["calls"], 2, "{status}");
    assert_eq!(status["batches"]["submitted"], 5, "{status}");
    let batches = get("/api/v1/batches?limit=2".into()).await;
    assert_eq!(batches["total"], 5);
    assert_eq!(batches["batches"].as_array().unwrap().len(), 2);
    // By node: its own, and none for a node with no batch (each its own statement).
    let node = batches["batches"][0]["node"].as_str().unwrap().to_owned();
    let mine = get(format!("/api/v1/batches?node={node}")).await;
    assert_eq!(mine["total"], 5);
    let other = get(format!(
        "/api/v1/batches?node={}",
        Address::repeat_byte(0x77)
    ))
    .await;
    assert_eq!(
        (
            other["total"].as_u64(),
            other["batches"].as_array().unwrap().len()
        ),
        (Some(0), 0)
    );
    let page = get(format!("/api/v1/batches/{indexed}")).await;
    assert_eq!(page["receipts"].as_array().unwrap().len(), 2);
    let id = page["receipts"][0]["requestId"]
        .as_str()
        .unwrap()
        .to_owned();
    let receipt = get(format!("/api/v1/receipts/{id}")).await;
    let digest: B256 = receipt["digest"].as_str().unwrap().parse().unwrap();
    let proof: Vec<B256> = serde_json::from_value(receipt["proof"].clone()).unwrap();
    let root: B256 = receipt["batch"]["root"].as_str().unwrap().parse().unwrap();
    assert!(cairn_receipt::merkle::verify(root, digest, &proof));
    let node = dev_signer(2).address();
    let nodes = get("/api/v1/nodes?role=inference".into()).await;
    assert_eq!(nodes["nodes"][0]["receipts"], 2, "{nodes}");
    get(format!("/api/v1/nodes/{node}")).await;
    let by_node = get(format!(
        "/api/v1/receipts?node={node}&model={}",
        BlobId::of(b"model")
    ))
    .await;
    assert_eq!(by_node["receipts"].as_array().unwrap().len(), 2);
    // Each filter alone, none, and one that matches nothing (each its own statement).
    for (query, n) in [
        (format!("node={node}"), 2),
        (format!("model={}", BlobId::of(b"model")), 2),
        (String::new(), 2),
        (format!("model={}", BlobId::of(b"no such model")), 0),
    ] {
        let listed = get(format!("/api/v1/receipts?{query}")).await;
        assert_eq!(listed["receipts"].as_array().unwrap().len(), n, "{query}");
    }
    let activity = get("/api/v1/activity?bucket=day&buckets=500".into()).await;
    assert!(activity["callsByModel"].is_array());
    let models = get("/api/v1/models?q=x%25_".into()).await;
    assert_eq!(models["total"], 0);
    // The queries over a stretch of the whole index take turns: while one runs (the turn
    // held here), another is answered 503 and the other routes still answer; an activity
    // counted a moment ago is answered again without a turn.
    let turn = heavy.acquire().await.unwrap();
    for path in [
        "/api/v1/nodes",
        "/api/v1/models",
        "/api/v1/activity?bucket=hour",
    ] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("busy")),
            "{path}"
        );
    }
    get("/api/v1/status".into()).await;
    get("/api/v1/batches?limit=2".into()).await;
    let again = get("/api/v1/activity?bucket=day&buckets=500".into()).await;
    assert_eq!(again, activity);
    drop(turn);
    get("/api/v1/activity?bucket=hour".into()).await;
}

/// On a chain that reorganizes (anvil: a snapshot reverted, other transactions mined at the
/// same heights) the index forgets what the replaced blocks said and reads the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorganization_is_undone() {
    let Some(anvil) = cairn_ledger::anvil::Anvil::from_env(31337).unwrap() else {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
            "CAIRN_ANVIL is not set but services are required (run scripts/test.sh)"
        );
        eprintln!("SKIPPED a_reorganization_is_undone: CAIRN_ANVIL not set");
        return;
    };
    let rpc = Arc::new(
        RpcLedger::connect(anvil.url(), std::time::Duration::from_secs(30))
            .await
            .unwrap(),
    );
    for i in [0, 2, 3, 4] {
        rpc.dev_rpc(
            "anvil_setBalance",
            serde_json::json!([dev_signer(i).address(), "0x21e19e0c9bab2400000"]),
        )
        .await
        .unwrap();
    }
    let chain = deployed(rpc.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let index = Index::connect(&format!("sqlite://{}", dir.path().join("i.db").display()))
        .await
        .unwrap();
    let f = follower(&chain, &index);
    f.round().await.unwrap();
    let snapshot = rpc
        .dev_rpc("evm_snapshot", serde_json::json!([]))
        .await
        .unwrap();
    register(&chain, 3, Role::Verifier, "http://127.0.0.1:9").await;
    f.round().await.unwrap();
    let registered = |index: Index| async move {
        sqlx::query("SELECT subject FROM idx_events WHERE name = 'NodeRegistered'")
            .fetch_all(index.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>("subject").unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        registered(index.clone()).await,
        [dev_signer(3).address().to_checksum(None)]
    );
    // The other branch: the same heights, another registration.
    rpc.dev_rpc("evm_revert", serde_json::json!([snapshot]))
        .await
        .unwrap();
    // A fresh connection: the first one remembers the nonces of the branch that is gone.
    let other = RpcLedger::connect(anvil.url(), std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let branch = Chain::new(Arc::new(other), chain.deployment().clone()).unwrap();
    register(&branch, 4, Role::Verifier, "http://127.0.0.1:9").await;
    let r = f.round().await.unwrap();
    assert!(r.rolled_back > 0, "{r:?}");
    assert_eq!(
        registered(index.clone()).await,
        [dev_signer(4).address().to_checksum(None)]
    );
    let (at, hash) = index.cursor().await.unwrap().unwrap();
    assert_eq!(
        Some(hash),
        chain.ledger().block_at(at).await.unwrap().map(|b| b.hash)
    );
}

#[test]
fn every_route_is_in_the_openapi_document() {
    use utoipa::OpenApi;
    cairn_core::api::assert_routes_documented(include_str!("api.rs"), &api::ApiDoc::openapi());
}

/// A publisher names a model's input and an operator its endpoint: the usage lines quote both,
/// so a copied line runs only the command it shows.
#[test]
fn usage_lines_quote_what_publishers_and_operators_wrote() {
    let hostile = "x'; touch PWNED; echo '\"$(touch PWNED2)";
    let detail = serde_json::json!({"latest": "1.0", "releases": [{"version": "1.0", "files": [
        {"onnx": {"inputs": [{"name": hostile, "elem_type": "float", "shape": [null, 3]}]}, "gguf": null}
    ]}]});
    let node = "http://127.0.0.1:1/a'b;c";
    let ex = api::examples("digits", &detail, node);
    let dir = tempfile::tempdir().unwrap();
    let line = ex.curl.replacen("curl -s", "printf '%s\\n'", 1);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&line)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{line}");
    assert!(!dir.path().join("PWNED").exists() && !dir.path().join("PWNED2").exists());
    let words: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(words[0], format!("{node}/v2/models/digits@1.0/infer"));
    assert_eq!(words[1..4], ["-H", "content-type: application/json", "-d"]);
    let body: serde_json::Value = serde_json::from_str(&words[4]).unwrap();
    assert_eq!(body["inputs"][0]["name"], hostile);
    assert_eq!(body["inputs"][0]["shape"], serde_json::json!([1, 3]));
    let cli = ex.cli.replacen("cairn infer", "printf '%s\\n'", 1);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cli)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().nth(2),
        Some(node)
    );
    // Python reads a JSON string literal as the same string.
    assert!(ex.python.contains(&serde_json::to_string(hostile).unwrap()));
}

/// A language model's page offers the `openai` client's lines, aimed at the node's `/v1`.
#[test]
fn a_language_model_gets_openai_lines() {
    let detail = serde_json::json!({"latest": "1.0", "releases": [{"version": "1.0", "files": [
        {"onnx": null, "gguf": {"architecture": "llama"}}
    ]}]});
    let ex = api::examples("smollm2-135m-instruct", &detail, "http://127.0.0.1:7401");
    assert!(
        ex.cli
            .starts_with("cairn llm 'smollm2-135m-instruct@1.0' --node 'http://127.0.0.1:7401'"),
        "{}",
        ex.cli
    );
    let openai = ex.openai.expect("an LLM has openai lines");
    assert!(
        openai.contains("OpenAI(base_url=\"http://127.0.0.1:7401/v1\""),
        "{openai}"
    );
    assert!(
        openai.contains("model=\"smollm2-135m-instruct@1.0\""),
        "{openai}"
    );
    let onnx = serde_json::json!({"latest": "1.0", "releases": [{"version": "1.0", "files": [
        {"onnx": {"inputs": []}, "gguf": null}
    ]}]});
    assert!(api::examples("digits", &onnx, "http://n").openai.is_none());
}

/// The batch listing and count filtered by node search the node's index (with the
/// `($1 = '' OR node = $1)` form SQLite scanned every batch).
#[tokio::test]
async fn batches_by_node_search_the_node_index() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::connect(&format!("sqlite://{}", dir.path().join("i.db").display()))
        .await
        .unwrap();
    for (sql, paged) in [
        (crate::api::batch_sql(true), true),
        (crate::api::batch_count_sql(true).to_owned(), false),
    ] {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = sqlx::query(&explain).bind("0x00");
        if paged {
            q = q.bind(1i64).bind(0i64);
        }
        let plan: Vec<String> = q
            .fetch_all(index.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>("detail").unwrap())
            .collect();
        assert!(
            plan.iter().any(|d| d.contains("idx_batches_node"))
                && !plan
                    .iter()
                    .any(|d| d == "SCAN b" || d.starts_with("SCAN idx_batches")),
            "{sql}: {plan:?}"
        );
    }
}
