//! Private calls end to end: `cairn infer --private` seals its requests to the devnet node's
//! attested gateway key and sends them through a relay (a real `cairn relay serve` process);
//! the call is paid (the x402 headers inside the envelope), receipted, and the relay's memory
//! never holds the plaintext. A replayed envelope charges nothing; a gateway whose key the
//! registry's evidence does not bind is refused before anything is sent.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{Server, cairn, cairn_ok, examples, failure, stdout};
use serde_json::Value;

/// An input no other test sends: 64 distinctive floats, whose bytes are searched for.
fn marked_input(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let values: Vec<f32> = (0..64).map(|i| 5.432_1 + i as f32 * 0.013_579_1).collect();
    let path = dir.join("marked.json");
    let body = serde_json::json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": values}]});
    std::fs::write(&path, body.to_string()).unwrap();
    let bytes = values[..16].iter().flat_map(|v| v.to_le_bytes()).collect();
    (path, bytes)
}

/// Whether `pattern` is anywhere in the readable memory of process `pid` (a child of this one).
fn in_memory(pid: u32, pattern: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if buf.windows(pattern.len()).any(|w| w == pattern) {
            return true;
        }
    }
    false
}

/// A pass-through in front of `relay` that keeps every request body it forwards, as an
/// on-path observer of the client's traffic would.
type Kept = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn recording_proxy(rt: &tokio::runtime::Runtime, relay: &str) -> (String, Kept) {
    let seen: Kept = Default::default();
    let (relay, kept) = (relay.to_owned(), seen.clone());
    let url = rt.block_on(async move {
        let http = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (http, relay, kept) = (http.clone(), relay.clone(), kept.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
                if parts.method == "POST" {
                    let media = parts.headers["content-type"].to_str().unwrap().to_owned();
                    kept.lock().unwrap().push((media, body.to_vec()));
                }
                let mut r = http.request(parts.method, format!("{relay}{}", parts.uri.path()));
                if let Some(ct) = parts.headers.get("content-type") {
                    r = r.header("content-type", ct);
                }
                let resp = r.body(body).send().await.unwrap();
                let status = resp.status();
                let ct = resp.headers().get("content-type").cloned();
                let bytes = resp.bytes().await.unwrap();
                let mut out = axum::response::Response::builder().status(status);
                if let Some(ct) = ct {
                    out = out.header("content-type", ct);
                }
                out.body(axum::body::Body::from(bytes)).unwrap()
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    });
    (url, seen)
}

/// One HTTP exchange: the status, the content type and the body.
fn exchange(method: &str, url: &str, media: Option<&str>, body: Vec<u8>) -> (u16, String, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = reqwest::Client::new().request(method.parse().unwrap(), url);
        if let Some(m) = media {
            r = r.header("content-type", m);
        }
        let resp = r.body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, resp.bytes().await.unwrap().to_vec())
    })
}

fn get_json(url: &str) -> Value {
    serde_json::from_slice(&exchange("GET", url, None, Vec::new()).2).unwrap()
}

fn receipts(node: &str) -> i64 {
    get_json(&format!("{node}/v1/node"))["receipts"]
        .as_i64()
        .unwrap()
}

fn private_infer(
    dir: &Path,
    data: &Path,
    node: &str,
    relay: &str,
    rpc: &str,
    input: &Path,
    extra: &[&str],
) -> std::process::Output {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let mut args: Vec<String> = [
        "infer",
        "digits@1.0",
        "--input",
        &path(input),
        "--payer-key",
        &path(&data.join("chain/payer.key")),
        "--node",
        node,
        "--private",
        "--relay",
        relay,
        "--rpc",
        rpc,
        "--deployment",
        &path(&data.join("chain/deployment.json")),
        "--receipt-out",
        &path(&dir.join("receipt.json")),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cairn("", Path::new("/nonexistent"), &args)
}

#[test]
fn a_private_call_is_paid_through_the_relay_which_never_holds_the_plaintext() {
    let devnet = Server::devnet_with(&["--batch-max-age-secs", "2"]);
    let data = devnet.dir.path().join("data");
    let dir = tempfile::tempdir().unwrap();
    let (input, pattern) = marked_input(dir.path());
    let relay = relay_to(&[&format!("node={}", devnet.node_url)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (observer, seen) = recording_proxy(&rt, &relay.url);
    let before = receipts(&devnet.node_url);

    // Paid, receipted, the receipt written and valid; the 402 and its payment went sealed.
    let out = stdout(&private_infer(
        dir.path(),
        &data,
        &devnet.node_url,
        &observer,
        &devnet.rpc_url,
        &input,
        &["--allow-dev-evidence", "--gateway", "node"],
    ));
    assert!(out.contains("paid:     1000 token units (exact)"), "{out}");
    assert!(out.contains("receipt:  0x"), "{out}");
    let after = receipts(&devnet.node_url);
    assert_eq!(after, before + 1);
    cairn_ok(&[
        "receipt",
        "verify",
        dir.path().join("receipt.json").to_str().unwrap(),
    ]);
    // Settled: the paid receipt's batch is attested by the verifiers, who open its sealed
    // payloads to check it.
    let receipt: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("receipt.json")).unwrap())
            .unwrap();
    let id = cairn_receipt::SignedReceipt::verify_json(&receipt)
        .unwrap()
        .id();
    common::eventually(90, || {
        let stored = get_json(&format!("{}/v1/receipts/{id}", devnet.node_url));
        matches!(
            stored["batch"]["status"].as_str(),
            Some("attested" | "finalized")
        )
    });

    // What went over the wire was sealed: neither the tensor nor the payment's words show.
    let kept = seen.lock().unwrap().clone();
    assert!(
        kept.len() >= 3,
        "node info, evidence, the 402, the paid call: {}",
        kept.len()
    );
    for (_, body) in &kept {
        assert!(!body.windows(pattern.len()).any(|w| w == pattern));
        assert!(!body.windows(7).any(|w| w == b"payload"));
    }
    // Nor does the relay's memory hold it.
    assert!(
        !in_memory(relay.pid(), &pattern),
        "the relay's memory holds the plaintext input"
    );

    // A replayed envelope is opened again (OHTTP has no replay protection) but its payment is
    // spent: nothing more is charged, no receipt is signed.
    let relayed = format!("{}/gateways/node", relay.url);
    for (media, body) in &kept {
        let (status, ..) = exchange("POST", &relayed, Some(media), body.clone());
        assert_eq!(status, 200, "the gateway opens a replayed envelope");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        receipts(&devnet.node_url),
        after,
        "a replayed envelope made the node sign again"
    );

    // The memory check can fail: plaintext sent to the relay is found there.
    let plain: Vec<u8> = [b"not sealed ".as_slice(), &pattern].concat();
    let (_, _, e) = exchange("POST", &relayed, Some(cairn_ohttp::REQUEST_TYPE), plain);
    let e: Value = serde_json::from_slice(&e).unwrap();
    assert_eq!(e["code"], "ohttp_key_id", "{e}");
    assert!(
        in_memory(relay.pid(), &pattern),
        "the memory search finds what the relay held"
    );
}

#[test]
fn a_gateway_key_the_registry_does_not_bind_is_refused_before_anything_is_sent() {
    let devnet = Server::devnet_with(&[]);
    let data = devnet.dir.path().join("data");
    let dir = tempfile::tempdir().unwrap();
    let input = examples().join("digit.json");
    let infer_via = |node: &str, relay: &str, extra: &[&str]| {
        private_infer(
            dir.path(),
            &data,
            node,
            relay,
            &devnet.rpc_url,
            &input,
            extra,
        )
    };
    // The devnet's node key serving a rotated gateway key (id 2): its evidence binds that key,
    // not the one whose evidence the registry holds.
    let stale = Server::node(
        &devnet.url,
        &[
            "--key",
            data.join("chain/node.key").to_str().unwrap(),
            "--ohttp-key-id",
            "2",
            "--attester",
            "dev",
        ],
    );
    let relay = relay_to(&[
        &format!("node={}", devnet.node_url),
        &format!("stale={}", stale.node_url),
    ]);
    let before = receipts(&devnet.node_url);
    // Another node's gateway (a key of its own) where the registered node's is expected.
    let other = Server::node(&devnet.url, &["--attester", "dev"]);
    let relay2 = relay_to(&[&format!("node={}", other.node_url)]);
    // The refused gateways' nodes would count a call sealed to them: none may be.
    let (stale_before, other_before) = (receipts(&stale.node_url), receipts(&other.node_url));
    let e = failure(&infer_via(
        &devnet.node_url,
        &relay2.url,
        &["--allow-dev-evidence", "--gateway", "node"],
    ));
    assert!(e.contains("speaks for"), "{e}");
    let e = failure(&infer_via(
        &devnet.node_url,
        &relay.url,
        &["--allow-dev-evidence", "--gateway", "stale"],
    ));
    assert!(e.contains("not the one the registry records"), "{e}");
    // Dev evidence is refused unless asked for.
    let e = failure(&infer_via(
        &devnet.node_url,
        &relay.url,
        &["--gateway", "node"],
    ));
    assert!(e.contains("dev"), "{e}");
    // The key configuration the node publishes is the one its evidence binds.
    let info = get_json(&format!("{}/v1/node", devnet.node_url));
    let (_, media, keys) = exchange(
        "GET",
        &format!("{}{}", devnet.node_url, cairn_ohttp::GATEWAY_PATH),
        None,
        Vec::new(),
    );
    assert_eq!(media, cairn_ohttp::KEYS_TYPE);
    let config = cairn_ohttp::KeyConfig::decode_list(&keys)
        .unwrap()
        .remove(0);
    assert_eq!(
        info["ohttp"]["key_config_hash"].as_str().unwrap(),
        format!("0x{}", data_encoding::HEXLOWER.encode(&config.hash()))
    );
    assert_eq!(
        receipts(&devnet.node_url),
        before,
        "nothing was sent to the node"
    );
    assert_eq!(
        (receipts(&stale.node_url), receipts(&other.node_url)),
        (stale_before, other_before),
        "nothing was sent to the gateways refused"
    );
    // A relay that reads the registry names the node by its address, the client's default.
    let listed = Server::command(
        &[
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--registry",
            "--allow-private-endpoints",
            "--rpc",
            &devnet.rpc_url,
            "--deployment",
            data.join("chain/deployment.json").to_str().unwrap(),
        ],
        "relay:",
    );
    let out = stdout(&infer_via(
        &devnet.node_url,
        &listed.url,
        &["--allow-dev-evidence"],
    ));
    assert!(out.contains("label INT64 [1]: [2]"), "{out}");
    // Through the good gateway it works (the devnet's own relay).
    let out = stdout(&infer_via(
        &devnet.node_url,
        &devnet.relay_url,
        &["--allow-dev-evidence"],
    ));
    assert!(out.contains("label INT64 [1]: [2]"), "{out}");
    // Rotation: the node renews its evidence for key 2 through the verifiers (its endpoint
    // now the rotated process's), and the same private call through `stale` goes through.
    let evidence = dir.path().join("evidence.json");
    let renewed = cairn_ok(&[
        "node",
        "register",
        "--rpc",
        &devnet.rpc_url,
        "--deployment",
        data.join("chain/deployment.json").to_str().unwrap(),
        "--key",
        data.join("chain/node.key").to_str().unwrap(),
        "--stake",
        "0",
        "--endpoint",
        &stale.node_url,
        "--ohttp-key-id",
        "2",
        "--evidence-out",
        evidence.to_str().unwrap(),
    ]);
    assert!(renewed.contains("registered"), "{renewed}");
    let out = stdout(&infer_via(
        &stale.node_url,
        &relay.url,
        &["--allow-dev-evidence", "--gateway", "stale"],
    ));
    assert!(out.contains("label INT64 [1]: [2]"), "{out}");
    // The evidence written is the one the node serves (dev evidence is deterministic).
    let served = get_json(&format!("{}/v1/attestation", stale.node_url));
    let written: Value = serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(served, written);
}

#[test]
fn bad_envelopes_get_clear_errors_and_cost_nothing() {
    let devnet = Server::devnet();
    let url = format!("{}{}", devnet.node_url, cairn_ohttp::GATEWAY_PATH);
    let keys = exchange("GET", &url, None, Vec::new()).2;
    let config = cairn_ohttp::KeyConfig::decode_list(&keys)
        .unwrap()
        .remove(0);
    let req = cairn_ohttp::message::encode_request(
        &http::Request::get("/v1/node")
            .body(bytes::Bytes::new())
            .unwrap(),
    );
    let (good, _) = cairn_ohttp::encapsulate(&config, &req).unwrap();
    let post = |body: Vec<u8>, media: &str| -> (u16, Value) {
        let (status, _, body) = exchange("POST", &url, Some(media), body);
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    };
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let mut wrong_id = good.clone();
    wrong_id[0] ^= 0x80;
    let mut suite = good.clone();
    suite[5..7].copy_from_slice(&0x0002u16.to_be_bytes());
    for (body, code) in [
        (good[..20].to_vec(), "ohttp_truncated"),
        (tampered, "ohttp_decrypt"),
        (wrong_id, "ohttp_key_id"),
        (suite, "ohttp_unsupported_suite"),
    ] {
        let (status, e) = post(body, cairn_ohttp::REQUEST_TYPE);
        assert_eq!((status, e["code"].as_str().unwrap()), (400, code), "{e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    let (status, e) = post(good.clone(), "application/json");
    assert_eq!(
        (status, e["code"].as_str().unwrap()),
        (415, "unsupported_media_type")
    );
    let (status, _) = post(vec![0; 80 << 20], cairn_ohttp::REQUEST_TYPE);
    assert_eq!(status, 413);
    // An envelope inside an envelope is not served.
    let inner = cairn_ohttp::message::encode_request(
        &http::Request::post(cairn_ohttp::GATEWAY_PATH)
            .header("content-type", cairn_ohttp::REQUEST_TYPE)
            .body(bytes::Bytes::from(good.clone()))
            .unwrap(),
    );
    let (nested, opener) = cairn_ohttp::encapsulate(&config, &inner).unwrap();
    let (_, _, sealed) = exchange("POST", &url, Some(cairn_ohttp::REQUEST_TYPE), nested);
    let answer = cairn_ohttp::message::decode_response(&opener.open(&sealed).unwrap()).unwrap();
    assert_eq!(answer.status(), 404);
}

/// A second implementation: a client on PyPI's pyhpke, with OHTTP's framing and Binary HTTP
/// written apart from Cairn's, calls the node through the devnet's relay.
#[test]
fn an_independent_ohttp_client_calls_the_node_through_the_relay() {
    let devnet = Server::devnet();
    let input = examples().join("digit.json");
    let text = common::python_script(
        "ohttp_client.py",
        &[&devnet.relay_url, "node", input.to_str().unwrap()],
    );
    assert!(text.contains("pyhpke: node 0x"), "{text}");
    assert!(text.contains("pyhpke: digits label 2"), "{text}");
}

/// A `cairn relay serve` process forwarding to `gateways` (each NAME=URL).
fn relay_to(gateways: &[&str]) -> Server {
    let mut args = vec!["relay", "serve", "--listen", "127.0.0.1:0"];
    for g in gateways {
        args.extend(["--gateway", g]);
    }
    // Dumpable, so the test (not root, or without CAP_SYS_PTRACE) may read its memory.
    Server::command_env(&args, &[("CAIRN_ALLOW_CORE_DUMPS", "1".into())], "relay:")
}

/// The devnet's registered nodes and verifiers (`cairn nodes --all --json`).
fn registered(data: &Path) -> Value {
    let out = cairn_ok(&[
        "nodes",
        "--all",
        "--json",
        "--devnet-dir",
        data.to_str().unwrap(),
    ]);
    serde_json::from_str(&out).unwrap()
}

/// Whether `pattern` is in any of the node's store files (the log and its WAL).
fn on_disk(dir: &Path, pattern: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
        bytes.windows(pattern.len()).any(|w| w == pattern)
    })
}

/// A private call's payloads are kept sealed to the verifiers: not on the node's disk, not
/// served to anyone in the clear, and every verifier opens them and confirms the receipt.
#[test]
fn a_private_calls_payloads_are_sealed_to_the_verifiers_who_open_them_to_reexecute() {
    let devnet =
        Server::devnet_with(&["--free", "--sample-rate", "1", "--batch-max-age-secs", "2"]);
    let data = devnet.dir.path().join("data");
    let dir = tempfile::tempdir().unwrap();
    let (input, pattern) = marked_input(dir.path());
    let out = stdout(&private_infer(
        dir.path(),
        &data,
        &devnet.node_url,
        &devnet.relay_url,
        &devnet.rpc_url,
        &input,
        &["--allow-dev-evidence"],
    ));
    assert!(out.contains("receipt:  0x"), "{out}");
    let receipt: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("receipt.json")).unwrap())
            .unwrap();
    let receipt = cairn_receipt::SignedReceipt::verify_json(&receipt).unwrap();
    let id = receipt.id();
    // Served to no one in the clear (and to an unauthenticated caller, not at all).
    let (status, ..) = exchange(
        "GET",
        &format!("{}/v1/receipts/{id}/input", devnet.node_url),
        None,
        Vec::new(),
    );
    assert!(status == 401 || status == 404, "{status}");
    assert!(
        !on_disk(&data.join("node"), &pattern),
        "the node's disk holds the private input"
    );

    // Every verifier opens it and re-executes it bit for bit.
    let nodes = registered(&data);
    let verifiers: Vec<String> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "verifier")
        .filter_map(|n| n["endpoint"].as_str().map(str::to_owned))
        .filter(|u| u.starts_with("http"))
        .collect();
    assert_eq!(verifiers.len(), 3);
    for v in &verifiers {
        common::eventually(90, || {
            let found = get_json(&format!("{v}/v1/verdicts/receipts/{id}"));
            found["verdicts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["outcome"] == "confirmed"))
        });
    }

    // And its batch is attested on chain by them.
    common::eventually(90, || {
        let stored = get_json(&format!("{}/v1/receipts/{id}", devnet.node_url));
        matches!(
            stored["batch"]["status"].as_str(),
            Some("attested" | "finalized")
        )
    });
    // The disk check can fail: the same input sent directly is kept as it came.
    let direct = cairn_ok(&[
        "infer",
        "digits@1.0",
        "--input",
        input.to_str().unwrap(),
        "--node",
        &devnet.node_url,
    ]);
    assert!(direct.contains("receipt:"), "{direct}");
    common::eventually(10, || on_disk(&data.join("node"), &pattern));
}

/// A streamed language-model call through the relay in chunked OHTTP: the answer arrives piece
/// by piece as the node generates it, and its receipt (fetched privately too) binds the exact
/// request and answer bytes.
#[test]
fn a_private_streamed_chat_arrives_in_pieces_and_its_receipt_binds_every_byte() {
    let test = "a_private_streamed_chat_arrives_in_pieces_and_its_receipt_binds_every_byte";
    let Some(model) = common::llm_model(test) else {
        return;
    };
    let devnet = Server::devnet_with(&["--free", "--llm", model.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::StreamExt;
        use sha2::Digest;
        let route = cairn_relay::client::PrivateRoute::open(&devnet.relay_url, "node")
            .await
            .unwrap();
        let body = serde_json::to_vec(&serde_json::json!({
            "model": "smollm2-135m-instruct@1.0",
            "messages": [{"role": "user", "content": "Count from one to ten."}],
            "max_tokens": 24,
            "temperature": 0,
            "stream": true
        }))
        .unwrap();
        let req = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(bytes::Bytes::from(body.clone()))
            .unwrap();
        let mut answer = route.send_streamed(req).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-type"], "text/event-stream");
        let id = answer.headers["cairn-receipt-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut pieces = 0;
        let mut text = Vec::new();
        while let Some(piece) = answer.body.next().await {
            text.extend_from_slice(&piece.unwrap());
            pieces += 1;
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(
            pieces > 3,
            "the answer came in {pieces} pieces, not as it was generated"
        );
        // The receipt, through the relay as well.
        let r = route
            .send(
                http::Request::get(format!("/v1/receipts/{id}"))
                    .body(bytes::Bytes::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let stored: Value = serde_json::from_slice(r.body()).unwrap();
        let receipt = cairn_receipt::SignedReceipt::verify_json(&stored["receipt"]).unwrap();
        let hash = |b: &[u8]| {
            format!(
                "{:#x}",
                alloy_primitives::B256::from_slice(&sha2::Sha256::digest(b))
            )
        };
        assert_eq!(format!("{:#x}", receipt.claims.input_hash), hash(&body));
        assert_eq!(
            format!("{:#x}", receipt.claims.output_hash),
            hash(text.as_bytes())
        );
    });
}

/// A paid private call asked again with the same payment gets its answer back (the node keeps
/// it sealed for the caller as well as for the verifiers), and is not charged twice.
#[test]
fn a_paid_private_call_asked_again_gets_its_kept_answer_once_charged() {
    let devnet = Server::devnet_with(&[]);
    let body = std::fs::read(examples().join("digit.json")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = receipts(&devnet.node_url);
    rt.block_on(async {
        let route = cairn_relay::client::PrivateRoute::open(&devnet.relay_url, "node")
            .await
            .unwrap();
        let call = |payment: Option<String>| {
            let mut r = http::Request::post("/v2/models/digits@1.0/infer")
                .header("content-type", "application/json");
            if let Some(p) = payment {
                r = r.header("payment-signature", p);
            }
            r.body(bytes::Bytes::from(body.clone())).unwrap()
        };
        let asked = route.send(call(None)).await.unwrap();
        assert_eq!(asked.status(), 402);
        let required = cairn_x402::client::offers(asked.headers()).unwrap();
        let offer = required
            .accepts
            .iter()
            .find(|o| o.scheme == "exact")
            .unwrap();
        let payer = cairn_ledger::dev_signer(cairn_ledger::devnet::PAYER);
        let payment = cairn_x402::client::pay_exact(&payer, &required, offer).unwrap();
        let first = route.send(call(Some(payment.clone()))).await.unwrap();
        assert_eq!(first.status(), 200, "{:?}", first.body());
        let again = route.send(call(Some(payment))).await.unwrap();
        assert_eq!(again.status(), 200, "{:?}", again.body());
        let outputs = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap()["outputs"].clone();
        assert_eq!(outputs(first.body()), outputs(again.body()));
    });
    assert_eq!(
        receipts(&devnet.node_url),
        before + 1,
        "charged and signed once"
    );
}

/// Verifiers run a gateway too: a client asks a verifier about verdicts through the relay.
#[test]
fn a_verifier_answers_through_its_gateway_too() {
    let devnet = Server::devnet();
    let data = devnet.dir.path().join("data");
    let nodes = registered(&data);
    let verifier = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "verifier" && n["endpoint"].as_str().unwrap().starts_with("http"))
        .unwrap();
    let url = verifier["endpoint"].as_str().unwrap();
    let relay = relay_to(&[&format!("v={url}")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let route = cairn_relay::client::PrivateRoute::open(&relay.url, "v")
            .await
            .unwrap();
        let r = route
            .send(
                http::Request::get("/v1/verifier")
                    .body(bytes::Bytes::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let info: Value = serde_json::from_slice(r.body()).unwrap();
        assert!(
            info["address"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(verifier["address"].as_str().unwrap())
        );
        assert!(info["payloadKey"]["key_config"].is_string(), "{info}");
    });
}

/// A paid private chat: `cairn llm --private` pays the node per token with a prepaid voucher
/// inside the envelope, and the receipt it checks binds the answer.
#[test]
fn a_paid_private_chat_is_charged_per_token_through_the_relay() {
    let test = "a_paid_private_chat_is_charged_per_token_through_the_relay";
    let Some(model) = common::llm_model(test) else {
        return;
    };
    let devnet = Server::devnet_with(&["--llm", model.to_str().unwrap(), "--llm-price", "100/400"]);
    let data = devnet.dir.path().join("data");
    let payer = data.join("chain/payer.key");
    let deposited = cairn_ok(&[
        "pay",
        "deposit",
        "--node",
        &devnet.node_url,
        "--payer-key",
        payer.to_str().unwrap(),
        "--amount",
        "100000",
    ]);
    assert!(deposited.contains("available: 100000"), "{deposited}");
    let out = cairn_ok(&[
        "llm",
        "smollm2-135m-instruct@1.0",
        "Name a color.",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--node",
        &devnet.node_url,
        "--payer-key",
        payer.to_str().unwrap(),
        "--private",
        "--relay",
        &devnet.relay_url,
        "--rpc",
        &devnet.rpc_url,
        "--deployment",
        data.join("chain/deployment.json").to_str().unwrap(),
        "--allow-dev-evidence",
    ]);
    assert!(out.contains("charged:  "), "{out}");
    assert!(out.contains("(prepaid voucher"), "{out}");
    assert!(out.contains("receipt:  0x"), "{out}");
}
