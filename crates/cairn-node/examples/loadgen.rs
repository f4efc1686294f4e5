//! A closed-loop HTTP load generator for a node's KServe endpoint (scripts/bench-node.sh).
//!
//! Usage: loadgen URL INPUT.safetensors CONCURRENCY SECONDS
//! Sends the tensors in KServe binary form over keep-alive connections, CONCURRENCY requests in
//! flight, and prints JSON `{"rps", "p50_us", "p99_us", "ok", "errors"}`.

use std::time::{Duration, Instant};

use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, input, conc, secs) = (
        args[1].clone(),
        &args[2],
        args[3].parse::<usize>().unwrap(),
        args[4].parse::<f64>().unwrap(),
    );
    let tensors = cairn_node::safetensors_io::decode(&std::fs::read(input).unwrap()).unwrap();
    let (body, json_len) = cairn_node::client::binary_request(&tensors);
    let body = bytes::Bytes::from(body);
    // LOADGEN_GET=1 measures a bare GET on URL instead: the HTTP floor of this machine.
    let get = std::env::var_os("LOADGEN_GET").is_some();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (lat, errors, elapsed) = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(conc)
            .build()
            .unwrap();
        // Warm up: load the model, open connections.
        for _ in 0..conc.max(4) {
            let _ = client
                .post(&url)
                .header("inference-header-content-length", json_len)
                .body(body.clone())
                .send()
                .await;
        }
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..conc)
            .map(|_| {
                let (client, url, body, hl) = (client.clone(), url.clone(), body.clone(), json_len);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    while Instant::now() < until {
                        let t = Instant::now();
                        let r = if get {
                            client.get(&url).send().await
                        } else {
                            client
                                .post(&url)
                                .header("inference-header-content-length", hl)
                                .body(body.clone())
                                .send()
                                .await
                        };
                        match r {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes().await;
                                lat.push(t.elapsed().as_nanos() as u64);
                            }
                            _ => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errs = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            all.extend(l);
            errs += e;
        }
        (all, errs, start.elapsed())
    });
    let mut lat = lat;
    lat.sort_unstable();
    let n = lat.len().max(1);
    println!(
        "{}",
        json!({
            "rps": lat.len() as f64 / elapsed.as_secs_f64(),
            "p50_us": lat.get(n / 2).copied().unwrap_or(0) as f64 / 1e3,
            "p99_us": lat.get(n * 99 / 100).copied().unwrap_or(0) as f64 / 1e3,
            "ok": lat.len(),
            "errors": errors,
        })
    );
}
