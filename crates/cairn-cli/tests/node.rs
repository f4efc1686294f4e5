//! End-to-end tests of the inference node: real `cairn` processes (devnet, hub, nodes) on
//! 127.0.0.1, real models, receipts checked by the CLI and by Python's eth_account, and a real
//! KServe client (tritonclient).

mod common;

use std::path::Path;
use std::process::Command;

use cairn_core::BlobId;
use common::{
    Server, cairn, examples, failure, get, infer_digit, llm_model, models_dir, run, stdout,
};
use serde_json::{Value, json};

fn post(
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().post(url).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
            headers,
        )
    })
}

fn infer_json(node: &str, model: &str, body: Value) -> (u16, Value) {
    let (s, v, _) = post(
        &format!("{node}/v2/models/{model}/infer"),
        body.to_string().into_bytes(),
        &[("content-type", "application/json".into())],
    );
    (s, v)
}

/// Pushes `file` to `hub` as `repo@1.0`; returns its CID.
fn push(hub: &str, key: &Path, file: &Path, repo: &str) -> String {
    stdout(&cairn(
        hub,
        key,
        &[
            "hub",
            "push",
            file.to_str().unwrap(),
            "--repo",
            repo,
            "--version",
            "1.0",
        ],
    ));
    let out = stdout(&cairn(hub, key, &["hub", "id", file.to_str().unwrap()]));
    out.trim().to_owned()
}

/// The official `openai` Python and TypeScript clients list, chat (whole and streamed),
/// complete and get errors from the devnet's language model, and each answer's LLM receipt, recovered by
/// eth_account, binds the exact bytes the client sent and received. A client that leaves
/// mid-stream gets a receipt that says so, counting only the tokens it was sent, and the node
/// serves the next call.
#[test]
fn openai_clients_call_the_devnet_language_model_and_receipts_bind_every_byte() {
    let test = "openai_clients_call_the_devnet_language_model_and_receipts_bind_every_byte";
    let Some(model) = llm_model(test) else { return };
    let net = Server::devnet_with(&["--free", "--llm", model.to_str().unwrap()]);
    let text = common::python_script(
        "openai_clients.py",
        &[&net.node_url, "smollm2-135m-instruct@1.0"],
    );
    for step in [
        "models:",
        "chat:",
        "stream:",
        "openai stream parser",
        "seeded:",
        "completion:",
        "errors:",
        "parse:",
        "json_object: parses",
        "tool call:",
        "streamed tool call:",
        "after the tool:",
        "structured: done",
    ] {
        assert!(text.contains(step), "{step} missing from:\n{text}");
    }

    // The official TypeScript package on the same node.
    let modules =
        std::env::var("CAIRN_NPM_INTEROP").expect("CAIRN_NPM_INTEROP (scripts/test.sh sets it)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/npm/openai.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(&net.node_url)
        .arg("smollm2-135m-instruct@1.0")
        .env("CAIRN_NPM_INTEROP", modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ts: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ts["models"], json!(["smollm2-135m-instruct@1.0"]), "{ts}");
    assert!(ts["chat"].as_str().unwrap().contains("Paris"), "{ts}");
    assert_eq!(ts["streamed"], ts["chat"], "{ts}");
    assert_eq!(ts["streamFirstRole"], "assistant", "{ts}");
    assert_eq!(ts["streamUsage"], ts["usage"], "{ts}");
    assert_eq!(ts["streamFinish"], ts["finishReason"], "{ts}");
    assert!(
        ts["completion"].as_str().unwrap().starts_with(" 5, 6,"),
        "{ts}"
    );
    // The schema held: its keys in its order, the year in range; the forced call validates.
    assert_eq!(ts["filmKeys"], json!(["title", "year"]), "{ts}");
    assert!(
        (1900..=2030).contains(&ts["film"]["year"].as_i64().unwrap()),
        "{ts}"
    );
    assert_eq!(ts["toolFinish"], "tool_calls", "{ts}");
    assert_eq!(ts["toolName"], "get_weather", "{ts}");
    let args = ts["toolArguments"].as_object().unwrap();
    assert!(args["city"].is_string() && args.len() == 2, "{ts}");
    assert!(
        matches!(args["unit"].as_str(), Some("celsius" | "fahrenheit")),
        "{ts}"
    );
    assert_eq!(ts["notFound"]["status"], 404, "{ts}");
    assert_eq!(ts["notFound"]["code"], "model_not_found", "{ts}");
    let receipt_id = ts["receiptId"].as_str().unwrap();
    let stored = get(&format!("{}/v1/receipts/{receipt_id}", net.node_url));
    let r: cairn_receipt::SignedReceipt =
        serde_json::from_value(stored["receipt"].clone()).unwrap();
    assert_eq!(
        u64::from(r.claims.llm.unwrap().completion_tokens),
        ts["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // A client that reads two events of a long stream and leaves (its runtime, and with it the
    // connection, is gone when the block ends).
    let url = format!("{}/v1/chat/completions", net.node_url);
    let body = json!({
        "model": "smollm2-135m-instruct@1.0",
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": 400,
        "temperature": 0,
        "stream": true,
    });
    let (receipt_id, _, read) = common::leave_stream_after(&url, &body, &[], 2);
    let receipt = common::receipt_when_stored(&net.node_url, &receipt_id, 60);
    let usage = receipt.claims.llm.expect("an LLM receipt");
    assert!(!usage.complete, "{usage:?}");
    // What it was sent: the events it read, and the few made while its leaving reached the
    // node (an event is a token or less), never the rest of the 400.
    assert!(
        usage.completion_tokens >= 1 && usage.completion_tokens <= read + common::GONE_SLACK,
        "{usage:?} after {read} events read"
    );
    // The worker it held is free again: the next call is answered.
    let (status, v, _) = post(
        &url,
        json!({"model": "smollm2-135m-instruct@1.0", "prompt": "Hi", "max_tokens": 2})
            .to_string()
            .into_bytes(),
        &[("content-type", "application/json".into())],
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "prompt", "{v}");
    let (status, v, _) = post(
        &url,
        json!({"model": "smollm2-135m-instruct@1.0",
               "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        .to_string()
        .into_bytes(),
        &[("content-type", "application/json".into())],
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");

    // Another process replays a seeded call from its receipt and request alone, bit for bit,
    // and `cairn receipt verify` checks the saved bytes against the receipt.
    let dir = tempfile::tempdir().unwrap();
    let request = json!({
        "model": "smollm2-135m-instruct@1.0",
        "messages": [{"role": "user", "content": "Name three birds."}],
        "max_tokens": 16, "temperature": 0.8, "top_p": 0.9, "seed": 11,
    })
    .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (answer, id) = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(request.clone())
            .send()
            .await
            .unwrap();
        let id = resp.headers()["cairn-receipt-id"]
            .to_str()
            .unwrap()
            .to_owned();
        (resp.bytes().await.unwrap().to_vec(), id)
    });
    drop(rt);
    let files = [
        ("request.json", request.into_bytes()),
        ("answer.json", answer),
        (
            "receipt.json",
            get(&format!("{}/v1/receipts/{id}", net.node_url))
                .to_string()
                .into_bytes(),
        ),
    ];
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let out = stdout(&run(
        &net.url,
        &[
            "receipt",
            "verify",
            &path("receipt.json"),
            "--input",
            &path("request.json"),
            "--output",
            &path("answer.json"),
        ],
    ));
    assert!(
        out.contains("output:    ok") && out.contains("delivered whole"),
        "{out}"
    );
    let out = stdout(&run(
        &net.url,
        &[
            "receipt",
            "reexec",
            &path("receipt.json"),
            "--input",
            &path("request.json"),
        ],
    ));
    assert!(out.contains("result: bit-identical"), "{out}");
    // A request other than the one signed is refused.
    std::fs::write(dir.path().join("other.json"), b"{}").unwrap();
    let e = failure(&run(
        &net.url,
        &[
            "receipt",
            "reexec",
            &path("receipt.json"),
            "--input",
            &path("other.json"),
        ],
    ));
    assert!(e.contains("requestHash mismatch"), "{e}");
}

#[test]
fn devnet_publishes_its_language_model_once_and_starts_without_one_it_cannot_have() {
    let test = "devnet_publishes_its_language_model_once_and_starts_without_one_it_cannot_have";
    let Some(model) = llm_model(test) else { return };
    let model = model.to_str().unwrap();
    let show = |net: &Server| {
        let key = net.dir.path().join("reader.key");
        cairn(
            &net.url,
            &key,
            &["hub", "show", "smollm2-135m-instruct", "--json"],
        )
    };
    let net = Server::devnet_with(&["--free", "--llm", model]);
    let detail: Value = serde_json::from_str(&stdout(&show(&net))).unwrap();
    let file = &detail["releases"][0]["files"][0];
    assert_eq!(file["path"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(
        file["cid"],
        BlobId::of(&std::fs::read(model).unwrap()).to_string()
    );
    assert_eq!(file["gguf"]["architecture"], "llama");
    assert!(detail["releases"][0]["published_at"].is_number());

    // Restarted on the same data dir with a path that does not exist: the published model
    // stands and nothing is read.
    let dir = net.kill_9();
    let net = Server::devnet_resume(dir, &["--free", "--llm", "/nonexistent/model.gguf"]);
    let again: Value = serde_json::from_str(&stdout(&show(&net))).unwrap();
    assert_eq!(again["releases"][0]["files"][0]["cid"], file["cid"]);

    // A fresh devnet given a file that is not the model starts without one.
    let bogus = net.dir.path().join("not-a-model.gguf");
    std::fs::write(&bogus, b"GGUF but not really").unwrap();
    let fresh = Server::devnet_with(&["--free", "--llm", bogus.to_str().unwrap()]);
    let out = show(&fresh);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("repo_not_found"),
        "{out:?}"
    );
}

#[test]
fn devnet_demo_model_infers_verifies_and_reexecutes() {
    let net = Server::devnet();
    let dir = net.dir.path();
    let (receipt, output) = infer_digit(&net.url, &net.node_url, dir, "");
    let input = examples().join("digit.json");
    let run = |args: &[&str]| run(&net.url, args);
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/digits_mlp.onnx");
    let out = stdout(&run(&[
        "receipt",
        "verify",
        receipt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]));
    assert!(out.contains("output:    ok"), "{out}");
    let out = stdout(&run(&[
        "receipt",
        "reexec",
        receipt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]));
    assert!(out.contains("bit-identical"), "{out}");

    // The same call as JSON gives the same input hash as binary.
    let bin_receipt: Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    let json_receipt = dir.join("receipt-json.json");
    stdout(&run(&[
        "infer",
        "digits@1.0",
        "--json",
        "--input",
        input.to_str().unwrap(),
        "--node",
        &net.node_url,
        "--receipt-out",
        json_receipt.to_str().unwrap(),
    ]));
    let json_receipt: Value =
        serde_json::from_slice(&std::fs::read(&json_receipt).unwrap()).unwrap();
    let msg = |r: &Value, f: &str| r["typedData"]["message"][f].clone();
    assert_eq!(
        msg(&bin_receipt, "inputHash"),
        msg(&json_receipt, "inputHash")
    );
    assert_eq!(
        msg(&bin_receipt, "outputHash"),
        msg(&json_receipt, "outputHash")
    );
    assert_ne!(
        msg(&bin_receipt, "requestId"),
        msg(&json_receipt, "requestId")
    );

    // The node serves the receipt and its payloads.
    let id = msg(&bin_receipt, "requestId");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let served: Value = rt.block_on(async {
        reqwest::get(format!(
            "{}/v1/receipts/{}",
            net.node_url,
            id.as_str().unwrap()
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    });
    assert_eq!(served["receipt"], bin_receipt);
    assert_eq!(served["payloadsKept"], true);

    // The outputs written as JSON verify too (the same tensors, another file form).
    let json_out = dir.join("out.json");
    stdout(&run(&[
        "infer",
        "digits@1.0",
        "--input",
        input.to_str().unwrap(),
        "--node",
        &net.node_url,
        "--output",
        json_out.to_str().unwrap(),
    ]));
    let out = stdout(&run(&[
        "receipt",
        "verify",
        receipt.to_str().unwrap(),
        "--output",
        json_out.to_str().unwrap(),
    ]));
    assert!(out.contains("output:    ok"), "{out}");

    // A flipped output value fails verification.
    let mut bytes = std::fs::read(&output).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&output, bytes).unwrap();
    let err = failure(&run(&[
        "receipt",
        "verify",
        receipt.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]));
    assert!(err.contains("output hash mismatch"), "{err}");

    // Every single-bit flip of the receipt file fails verification (sampled: every 7th byte).
    let text = std::fs::read(&receipt).unwrap();
    let tampered = dir.join("tampered.json");
    for i in (0..text.len()).step_by(7) {
        let mut t = text.clone();
        t[i] ^= 1 << (i % 8);
        std::fs::write(&tampered, &t).unwrap();
        let o = run(&["receipt", "verify", tampered.to_str().unwrap()]);
        assert!(!o.status.success(), "flip at byte {i} verified");
    }
    // A key given twice is refused, not settled by whichever copy a JSON reader keeps.
    let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let compact = serde_json::to_string(&value).unwrap();
    let signer = format!("\"signer\":{}", value["signer"]);
    let twice = compact.replacen(&signer, &format!("{signer},{signer}"), 1);
    assert_ne!(twice, compact);
    std::fs::write(&tampered, twice).unwrap();
    let err = failure(&run(&["receipt", "verify", tampered.to_str().unwrap()]));
    assert!(err.contains("duplicate field"), "{err}");

    // A validly signed receipt that lies about the output fails re-execution.
    let mut lie = cairn_receipt::SignedReceipt::verify_json(&bin_receipt).unwrap();
    lie.claims.output_hash = alloy_primitives::B256::repeat_byte(0xab);
    let key = alloy_signer_local::PrivateKeySigner::random();
    let lie = lie.claims.sign(lie.domain, &key).unwrap();
    std::fs::write(&tampered, lie.to_json().to_string()).unwrap();
    stdout(&run(&["receipt", "verify", tampered.to_str().unwrap()]));
    let err = failure(&run(&[
        "receipt",
        "reexec",
        tampered.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]));
    assert!(err.contains("the receipt's output is wrong"), "{err}");
}

/// A devnet with onnx's light_squeezenet pushed as `squeezenet@1.0`, and its CID.
fn devnet_with_squeezenet(test: &str) -> Option<(Server, String)> {
    let models = models_dir(test)?;
    let net = Server::devnet();
    let key = net.dir.path().join("key");
    let cid = push(
        &net.url,
        &key,
        &models.join("light_squeezenet.onnx"),
        "squeezenet",
    );
    Some((net, cid))
}

#[test]
fn same_profile_is_bit_identical_across_processes_and_tiers_differ() {
    let Some((net, cid)) = devnet_with_squeezenet("determinism") else {
        return;
    };
    let key = net.dir.path().join("key");
    let a = Server::node(&net.url, &["--cpu-tier", "generic"]);
    let b = Server::node(&net.url, &["--cpu-tier", "generic"]);
    let c = Server::node(&net.url, &["--cpu-tier", "avx2"]);
    // A deterministic pseudo-random image.
    let data: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 7919 % 1000) as f32) / 500.0 - 1.0)
        .collect();
    let body = json!({"inputs": [{"name": "data_0", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": data}]});
    let results: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|n| {
            let (s, v) = infer_json(&n.node_url, &cid, body.clone());
            assert_eq!(s, 200, "{v}");
            v["parameters"]["receipt"].clone()
        })
        .collect();
    let field = |r: &Value, f: &str| r["typedData"]["message"][f].clone();
    assert_eq!(
        field(&results[0], "outputHash"),
        field(&results[1], "outputHash")
    );
    assert_eq!(
        field(&results[0], "profileHash"),
        field(&results[1], "profileHash")
    );
    assert_ne!(
        field(&results[0], "profileHash"),
        field(&results[2], "profileHash")
    );
    assert_eq!(results[0]["profile"]["isa"], "x86_64");
    assert_eq!(results[2]["profile"]["isa"], "x86_64,avx,avx2,fma,f16c");
    // Re-execution reproduces the generic tier bit for bit (the CLI pins itself to the receipt's ISA).
    let dir = net.dir.path();
    let receipt = dir.join("r.json");
    std::fs::write(&receipt, results[0].to_string()).unwrap();
    let input = dir.join("in.json");
    std::fs::write(&input, body.to_string()).unwrap();
    let out = stdout(&cairn(
        &net.url,
        &key,
        &[
            "receipt",
            "reexec",
            receipt.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("result: bit-identical (output hash"), "{out}");
}

/// The default receipt durability (`process`): an answer leaves only once its receipt is
/// committed, and a commit survives the process being killed (SIGKILL, no shutdown).
#[test]
fn an_answered_receipt_survives_kill_9_of_the_node() {
    let net = Server::devnet();
    let node = Server::node(&net.url, &[]);
    let body = json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": vec![3.0; 64]}]});
    let ids: Vec<String> = (0..20)
        .map(|_| {
            let (s, v) = infer_json(&node.node_url, "digits@1.0", body.clone());
            assert_eq!(s, 200, "{v}");
            let receipt = cairn_receipt::SignedReceipt::verify_json(&v["parameters"]["receipt"]);
            receipt.unwrap().id().to_string()
        })
        .collect();
    let node = Server::node_resume(&net.url, node.kill_9(), &[]);
    for id in ids {
        let kept = get(&format!("{}/v1/receipts/{id}", node.node_url));
        let receipt = cairn_receipt::SignedReceipt::verify_json(&kept["receipt"]).unwrap();
        assert_eq!(receipt.id().to_string(), id, "{kept}");
    }
}

/// A hub that stops answering (its process stopped: connections open, nothing comes back)
/// costs a node nothing for the names it knows: their last resolution serves, and one
/// background lookup at a time tries the hub. A name it has never seen gets a 502
/// (`hub_unavailable`) within the lookup's bound instead of a call that hangs.
#[test]
fn a_silent_hub_does_not_stall_calls_by_name() {
    let net = Server::devnet();
    let node = Server::node(&net.url, &["--name-refresh-secs", "1"]);
    let body = json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": vec![3.0; 64]}]});
    let (s, v) = infer_json(&node.node_url, "digits@1.0", body.clone());
    assert_eq!(s, 200, "{v}");
    let cid = v["model_name"].as_str().unwrap().to_owned();
    let call = |model: &str| {
        common::block(async {
            let resp = reqwest::Client::new()
                .post(format!("{}/v2/models/{model}/infer", node.node_url))
                .json(&body)
                .timeout(std::time::Duration::from_secs(20))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{model}: no answer while the hub is silent: {e}"));
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let stop = |signal: &str| {
        let ok = Command::new("kill")
            .args([signal, &net.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    stop("-STOP");
    // Past the refresh interval: each call below would look the name up again.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let (s, v) = call("digits@1.0");
        assert_eq!(s, 200, "{v}");
    }
    // The refresh's lookup is still waiting for the hub (5 s), or has given up: the calls
    // did not wait for it.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "calls by a known name waited for the silent hub: {:?}",
        started.elapsed()
    );
    let (s, v) = call("digits");
    assert_eq!(s, 502, "a name never resolved, with the hub silent: {v}");
    assert_eq!(v["code"], "hub_unavailable", "{v}");
    let (s, v) = call(&cid);
    assert_eq!(s, 200, "by CID: {v}");
    stop("-CONT");
    // The name's refusal is remembered for a moment while a lookup goes on behind it: it
    // serves again as soon as the hub answers.
    let back = std::time::Instant::now();
    loop {
        let (s, v) = call("digits");
        if s == 200 {
            break;
        }
        assert_eq!(v["code"], "hub_unavailable", "{v}");
        assert!(
            back.elapsed() < std::time::Duration::from_secs(10),
            "the hub is back, the name is not: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn bad_input_gets_clear_errors_and_the_node_survives() {
    let net = Server::devnet();
    let node = Server::node(&net.url, &["--max-body-bytes", "100000"]);
    let n = &node.node_url;
    let ok = json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": vec![1.0; 64]}]});
    let cases = [
        (
            json!({"inputs": [{"name": "Y", "shape": [1, 64], "datatype": "FP32", "data": vec![1.0; 64]}]}),
            400,
            "wrong_input",
        ),
        (
            json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "INT64", "data": vec![1; 64]}]}),
            400,
            "wrong_datatype",
        ),
        (
            json!({"inputs": [{"name": "X", "shape": [2, 32], "datatype": "FP32", "data": vec![1.0; 64]}]}),
            400,
            "invalid_shape",
        ),
        (
            json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "INT64", "data": [1.5]}]}),
            400,
            "invalid_shape",
        ),
        (
            json!({"inputs": [{"name": "X", "shape": [1, 2], "datatype": "INT32", "data": [1, "NaN"]}]}),
            400,
            "invalid_data",
        ),
        (json!({"inputs": []}), 400, "wrong_input"),
        (
            json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": vec![1.0; 64]}], "outputs": [{"name": "nope"}]}),
            400,
            "unknown_output",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = infer_json(n, "digits@1.0", body.clone());
        assert_eq!(
            (s, v["code"].as_str().unwrap_or("")),
            (status, code),
            "{body}: {v}"
        );
        assert!(v["message"].as_str().unwrap().len() > 10, "{v}");
    }
    // Unknown CID, unknown name, not a reference.
    let unknown = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(
        infer_json(n, unknown, ok.clone()).1["code"],
        "model_not_found"
    );
    assert_eq!(
        infer_json(n, "nosuch@1.0", ok.clone()).1["code"],
        "model_not_found"
    );
    assert_eq!(
        infer_json(n, "Not%20A%20Ref", ok.clone()).1["code"],
        "bad_model_ref"
    );
    // Truncated binary body.
    let head = json!({"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}).to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&[0u8; 100]);
    let (s, v, _) = post(
        &format!("{n}/v2/models/digits@1.0/infer"),
        body,
        &[("inference-header-content-length", head.len().to_string())],
    );
    assert_eq!(
        (s, v["code"].as_str().unwrap()),
        (400, "bad_request"),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("truncated"), "{v}");
    // Oversized body.
    let (s, v, _) = post(
        &format!("{n}/v2/models/digits@1.0/infer"),
        vec![b' '; 200_000],
        &[],
    );
    assert_eq!(
        (s, v["code"].as_str().unwrap()),
        (413, "body_too_large"),
        "{v}"
    );
    // A receipt seal the node does not know, refused before anything runs.
    let (s, v, _) = post(
        &format!("{n}/v2/models/digits@1.0/infer"),
        ok.to_string().into_bytes(),
        &[
            ("content-type", "application/json".into()),
            ("cairn-receipt-seal", "both".into()),
        ],
    );
    assert_eq!(
        (s, v["code"].as_str().unwrap()),
        (400, "bad_request"),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("`own` or `batch`"),
        "{v}"
    );
    // A file on the hub that is not ONNX.
    let key = net.dir.path().join("key");
    let junk = common::random_file(net.dir.path(), "junk.bin", 1000);
    let cid = push(&net.url, &key, &junk, "junk");
    let (s, v) = infer_json(n, &cid, ok.clone());
    assert_eq!(
        (s, v["code"].as_str().unwrap()),
        (422, "invalid_model"),
        "{v}"
    );
    // Still serving.
    let (s, v) = infer_json(n, "digits@1.0", ok);
    assert_eq!(s, 200, "{v}");
}

#[test]
fn overload_answers_503_with_retry_after_and_recovers() {
    let Some((net, cid)) = devnet_with_squeezenet("overload") else {
        return;
    };
    let node = Server::node(
        &net.url,
        &[
            "--workers",
            "1",
            "--queue-per-model",
            "2",
            "--queue-total",
            "4",
        ],
    );
    let url = format!("{}/v2/models/{cid}/infer", node.node_url);
    let head = json!({"inputs": [{"name": "data_0", "shape": [1, 3, 224, 224], "datatype": "FP32", "parameters": {"binary_data_size": 3 * 224 * 224 * 4}}]}).to_string();
    let mut body = head.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, 3 * 224 * 224 * 4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let statuses: Vec<(u16, Option<String>)> = rt.block_on(async {
        let client = reqwest::Client::new();
        let calls = (0..24).map(|_| {
            let req = client
                .post(&url)
                .header("inference-header-content-length", head.len())
                .body(body.clone());
            async move {
                // A request the node sheds before reading its 600 KB body may see the connection
                // close while still uploading (EPIPE) instead of the 503: count it as shed.
                let r = match req.send().await {
                    Ok(r) => r,
                    Err(e) if e.is_request() && !e.is_connect() => return (0, None),
                    Err(e) => panic!("{e}"),
                };
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry)
            }
        });
        futures::future::join_all(calls).await
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert!(ok >= 1 && !busy.is_empty(), "{statuses:?}");
    assert!(
        busy.iter().all(|(_, r)| r.as_deref() == Some("1")),
        "{statuses:?}"
    );
    let shed_in_upload = statuses.iter().filter(|(s, _)| *s == 0).count();
    assert_eq!(
        ok + busy.len() + shed_in_upload,
        statuses.len(),
        "{statuses:?}"
    );
    let (s, _, _) = post(
        &url,
        body,
        &[("inference-header-content-length", head.len().to_string())],
    );
    assert_eq!(s, 200);
}

/// Python's eth_account verifies the receipt unaided; tritonclient (JSON and binary) runs the
/// model through the node's KServe v2 API.
#[test]
fn python_eth_account_and_tritonclient() {
    let Some(_) = models_dir("python clients") else {
        return;
    };
    let net = Server::devnet();
    let text = common::python_script("clients.py", &[&net.node_url]);
    assert!(text.contains("the node's address"), "{text}");
    assert!(text.contains("tritonclient: binary ok"), "{text}");
    assert!(
        text.contains("batch-signed: eth_account recovered"),
        "{text}"
    );
}

/// The onnxruntime engine serves the same API; its receipts say they are tolerance-checked, and
/// re-execution on tract reports the largest difference instead of bit-equality.
#[test]
fn onnxruntime_engine_receipts_are_marked_tolerance() {
    let Some(_) = models_dir("onnxruntime engine") else {
        return;
    };
    let lib = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (scripts/test.sh sets it)");
    let net = Server::devnet();
    let node = Server::node(
        &net.url,
        &["--engine", "onnxruntime", "--ort-library", &lib],
    );
    let (receipt, output) = infer_digit(&net.url, &node.node_url, net.dir.path(), "");
    let input = examples().join("digit.json");
    let run = |args: &[&str]| run(&net.url, args);
    let r: Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    assert_eq!(r["profile"]["engine"], "onnxruntime");
    assert_eq!(r["profile"]["engine_version"], "1.31.1");
    assert_eq!(r["reproducibility"], "tolerance");
    let reexec = |tolerance: &str| {
        run(&[
            "receipt",
            "reexec",
            receipt.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--tolerance",
            tolerance,
        ])
    };
    // onnxruntime and tract sum in different orders: the outputs differ, slightly.
    let out = stdout(&reexec("1e-4"));
    let diff: f64 = out
        .lines()
        .find_map(|l| l.split_once("max |difference| = "))
        .unwrap_or_else(|| panic!("no difference reported: {out}"))
        .1
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("unparsable difference ({e}): {out}"));
    assert!(diff > 0.0 && diff <= 1e-4, "difference {diff:e}: {out}");
    assert!(out.contains("within tolerance 1e-4"), "{out}");
    // Past the tolerance the re-execution is a failure, not a report.
    let tight = format!("{:e}", diff / 2.0);
    let err = failure(&reexec(&tight));
    assert!(err.contains("more than the tolerance"), "{err}");
}

#[test]
fn node_api_is_documented_and_answers_its_documented_types() {
    let net = Server::devnet();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spec: Value = reqwest::get(format!("{}/openapi.json", net.node_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let paths = spec["paths"].as_object().unwrap();
        for p in [
            "/v2/models/{model}/infer",
            "/v1/node",
            "/v1/receipts/{id}/input",
            "/v1/batches/{id}/attestations",
            "/v1/prepaid/{payer}",
        ] {
            assert!(paths.contains_key(p), "{p} undocumented");
        }
        let docs = reqwest::get(format!("{}/docs/", net.node_url))
            .await
            .unwrap();
        assert_eq!(docs.status(), 200);
        assert!(docs.text().await.unwrap().contains("swagger"));
        // The typed client reads the devnet node's info: it settles on the devnet's chain.
        let info = cairn_node_api::NodeClient::new(&net.node_url)
            .info()
            .await
            .unwrap();
        let settlement = info.settlement.as_ref().expect("the devnet node settles");
        assert_eq!(
            settlement.deployment.settlement,
            info.domain.verifying_contract
        );
        assert_eq!(info.domain.name, "Cairn");
    });
}

/// POSTs JSON `body` and returns the status, the headers and the raw answer bytes.
fn post_raw(url: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    })
}

fn sha256(bytes: &[u8]) -> alloy_primitives::B256 {
    alloy_primitives::B256::from(*BlobId::of(bytes).digest())
}

/// A node relays a model name to another OpenAI-compatible server (here a real Cairn node):
/// the bytes go up and come back unchanged, whole and streamed; its receipt says `relayed`,
/// binds exactly those bytes (the upstream's own receipt binds the same) and cannot be
/// re-executed; the upstream's refusals pass through, and an upstream that is down is a 502.
#[test]
fn a_node_relays_model_names_upstream_under_relayed_receipts() {
    let test = "a_node_relays_model_names_upstream_under_relayed_receipts";
    let Some(model) = llm_model(test) else { return };
    let net = Server::devnet_with(&["--free", "--llm", model.to_str().unwrap()]);
    let name = "smollm2-135m-instruct@1.0";
    let relay = Server::node(
        &net.url,
        &[
            "--upstream",
            &format!("{name}={}/v1/", net.node_url),
            "--upstream",
            "down=http://127.0.0.1:9/v1",
        ],
    );
    let models = get(&format!("{}/v1/models", relay.node_url));
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [name, "down"], "{models}");
    assert_eq!(models["data"][0]["owned_by"], "upstream");

    let chat = format!("{}/v1/chat/completions", relay.node_url);
    let receipt = |node: &str, headers: &reqwest::header::HeaderMap, header: &str| {
        common::receipt_when_stored(node, headers[header].to_str().unwrap(), 30)
    };
    for stream in [false, true] {
        let body = json!({
            "model": name,
            "messages": [{"role": "user", "content": "Name two rivers."}],
            "max_tokens": 12, "temperature": 0, "stream": stream,
            "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
        });
        let (status, headers, answer) = post_raw(&chat, &body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        if stream {
            assert!(answer.ends_with(b"data: [DONE]\n\n"));
        }
        let ours = receipt(&relay.node_url, &headers, "cairn-receipt-id");
        let theirs = receipt(&net.node_url, &headers, "cairn-upstream-receipt-id");
        let c = &ours.claims;
        assert_eq!(c.profile.engine, "relayed");
        assert_eq!(
            c.profile.reproducibility(),
            cairn_core::Reproducibility::Relayed
        );
        // Exactly the bytes sent and received, which the upstream's own receipt binds too.
        assert_eq!(c.input_hash, sha256(body.to_string().as_bytes()));
        assert_eq!(c.output_hash, sha256(&answer));
        assert_eq!(c.output_hash, theirs.claims.output_hash);
        assert_eq!(c.input_hash, theirs.claims.input_hash);
        let (u, t) = (c.llm.unwrap(), theirs.claims.llm.unwrap());
        assert!(u.complete);
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens),
            (t.prompt_tokens, t.completion_tokens)
        );
    }

    // Nothing to re-execute.
    let (_, headers, _) = post_raw(
        &chat,
        &json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    let id = headers["cairn-receipt-id"].to_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("receipt.json");
    std::fs::write(
        &saved,
        get(&format!("{}/v1/receipts/{id}", relay.node_url)).to_string(),
    )
    .unwrap();
    let e = failure(&run(
        &net.url,
        &[
            "receipt",
            "reexec",
            saved.to_str().unwrap(),
            "--input",
            saved.to_str().unwrap(),
        ],
    ));
    assert!(
        e.contains("relayed") && e.contains("nothing to re-execute"),
        "{e}"
    );

    // The upstream's refusal, as it gave it.
    let (status, _, answer) = post_raw(
        &chat,
        &json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100000}),
    );
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    // An upstream that is down: 502 with the reason, not its address.
    let (status, _, answer) = post_raw(
        &chat,
        &json!({"model": "down", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "upstream_failed", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("upstream `down`: not reachable"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1:9"), "{message}");
}

/// An upstream that lies or misbehaves, served from this test: a redirect to an address of its
/// choosing, a refusal whose words carry account details, a stream without `[DONE]`, and a
/// stream that stalls after two events. Returns its base URL and how often the redirect's
/// target was reached.
fn hostile_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::response::IntoResponse;
    use futures::StreamExt;
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = reached.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let target = format!("{base}/internal");
            let sse = |body: axum::body::Body| {
                ([("content-type", "text/event-stream")], body).into_response()
            };
            let app = axum::Router::new()
                .route(
                    "/internal",
                    axum::routing::any(move || {
                        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async { "internal secret" }
                    }),
                )
                .route(
                    "/redirect/v1/chat/completions",
                    axum::routing::post(move || {
                        let target = target.clone();
                        async move {
                            (axum::http::StatusCode::FOUND, [("location", target)]).into_response()
                        }
                    }),
                )
                .route(
                    "/key/v1/chat/completions",
                    axum::routing::post(|| async {
                        (
                            axum::http::StatusCode::UNAUTHORIZED,
                            r#"{"error":{"message":"Incorrect API key sk-live-1234 for org-SECRET"}}"#,
                        )
                    }),
                )
                .route(
                    "/nodone/v1/chat/completions",
                    axum::routing::post(move || async move {
                        sse(axum::body::Body::from("data: {\"choices\":[]}\n\n"))
                    }),
                )
                .route(
                    "/stall/v1/chat/completions",
                    axum::routing::post(move || async move {
                        let events = futures::stream::iter([
                            "data: {\"n\":1}\n\n".to_string(),
                            "data: {\"n\":2}\n\n".to_string(),
                        ])
                        .map(Ok::<_, std::convert::Infallible>)
                        .chain(futures::stream::pending());
                        sse(axum::body::Body::from_stream(events))
                    }),
                );
            tx.send(base).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), reached)
}

/// A relaying node against a lying upstream: it follows no redirect, repeats none of the
/// upstream's words about keys or accounts, signs no stream without `[DONE]` as whole, and a
/// client that leaves a stalled stream frees the relay at once, its receipt binding only what
/// was delivered.
#[test]
fn a_lying_upstream_cannot_redirect_the_node_leak_its_account_or_pass_off_a_broken_stream() {
    use futures::StreamExt;
    let (up, reached) = hostile_upstream();
    let net = Server::devnet_with(&["--free", "--llm", "none"]);
    let mut args = Vec::new();
    for name in ["redirect", "key", "nodone", "stall"] {
        args.push("--upstream".to_string());
        args.push(format!("{name}={up}/{name}/v1"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Server::node(&net.url, &args);
    let chat = format!("{}/v1/chat/completions", relay.node_url);
    let ask = |model: &str, stream: bool| json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream});

    let (status, _, answer) = post_raw(&chat, &ask("redirect", false));
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (502, Some("upstream_failed")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("302"),
        "{v}"
    );
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(!String::from_utf8_lossy(&answer).contains("internal secret"));

    let (status, _, answer) = post_raw(&chat, &ask("key", false));
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status, 502, "{text}");
    assert!(
        !text.contains("sk-live") && !text.contains("org-SECRET"),
        "{text}"
    );

    // No `[DONE]`: what came is delivered, then an error event; the receipt is not whole.
    let (status, headers, answer) = post_raw(&chat, &ask("nodone", true));
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("data: {\"choices\":[]}\n\n"), "{text}");
    assert!(
        text.contains("upstream_failed") && text.contains("[DONE]`"),
        "{text}"
    );
    let id = headers["cairn-receipt-id"].to_str().unwrap();
    let r = common::receipt_when_stored(&relay.node_url, id, 30);
    assert!(!r.claims.llm.unwrap().complete);
    assert_eq!(r.claims.output_hash, sha256(b"data: {\"choices\":[]}\n\n"));

    // A stalled stream: the client reads the first event and leaves; the relay notices at
    // once (not at the upstream's deadline) and binds the one event it delivered.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&chat)
            .header("content-type", "application/json")
            .body(ask("stall", true).to_string())
            .send()
            .await
            .unwrap();
        let id = resp.headers()["cairn-receipt-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut body = resp.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"data: {\"n\":1}\n\n");
        id
    });
    drop(rt);
    let r = common::receipt_when_stored(&relay.node_url, &id, 15);
    assert!(!r.claims.llm.unwrap().complete);
    assert_eq!(r.claims.output_hash, sha256(b"data: {\"n\":1}\n\n"));
}
