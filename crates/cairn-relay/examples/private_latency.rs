//! What a private call adds, side by side in one run against a running node and relay (the
//! devnet's, started `--free`): `scripts/bench-private.sh` runs it.
//!
//! usage: private_latency NODE_URL RELAY_URL INPUT_JSON [CALLS] [LLM_MODEL]
//!
//! - tensor calls at c=1: direct, through the relay sealed whole (`message/ohttp-req`), and
//!   sealed in chunks (what `--private` sends): p50 and p99, and their ratios to direct;
//! - with LLM_MODEL: time to the first token of a streamed chat answer (its second event), direct
//!   and through the relay in chunked OHTTP.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_relay::client::PrivateRoute;
use futures::StreamExt;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Complete SSE events in `b`.
fn events(b: &[u8]) -> usize {
    b.windows(2).filter(|w| w == b"\n\n").count()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (node, relay, input) = (&args[1], &args[2], &args[3]);
    let calls: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(200);
    let llm = args.get(5).cloned();
    let body = Bytes::from(std::fs::read(input).expect("the input file"));
    let http = reqwest::Client::new();
    let route = PrivateRoute::open(relay, "node").await.expect("the relay");
    let path = "/v2/models/digits@1.0/infer";
    let request = || {
        http::Request::post(path)
            .header("content-type", "application/json")
            .body(body.clone())
            .unwrap()
    };
    let mut direct = Vec::new();
    let mut whole = Vec::new();
    let mut chunked = Vec::new();
    // Warm up every path, then take turns so drift hits all three alike.
    for i in 0..calls + 20 {
        let t = Instant::now();
        let r = http
            .post(format!("{node}{path}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.bytes().await.unwrap();
        let d = t.elapsed();
        let t = Instant::now();
        assert!(route.send(request()).await.unwrap().status().is_success());
        let w = t.elapsed();
        let t = Instant::now();
        let mut a = route.send_streamed(request()).await.unwrap();
        while let Some(p) = a.body.next().await {
            p.unwrap();
        }
        let c = t.elapsed();
        if i >= 20 {
            direct.push(d);
            whole.push(w);
            chunked.push(c);
        }
    }
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    println!("tensor call, c=1, {calls} calls each       p50 µs    p99 µs   p50/direct");
    for (name, v) in [
        ("direct", &mut direct),
        ("private, sealed whole", &mut whole),
        ("private, chunked", &mut chunked),
    ] {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "  {name:32} {:9.0} {:9.0}   {:.2}x",
            micros(p50),
            micros(p99),
            micros(p50) / micros(d50)
        );
    }
    let _ = d99;
    let Some(model) = llm else { return };
    let chat = serde_json::to_vec(&serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Count from one to ten."}],
        "max_tokens": 16, "temperature": 0, "stream": true
    }))
    .unwrap();
    let rounds = 10;
    let (mut direct, mut private) = (Vec::new(), Vec::new());
    for _ in 0..rounds + 2 {
        let t = Instant::now();
        let mut s = http
            .post(format!("{node}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat.clone())
            .send()
            .await
            .unwrap()
            .bytes_stream();
        // The first token: the second event (the first names the role only).
        let mut seen = Vec::new();
        while events(&seen) < 2 {
            seen.extend_from_slice(&s.next().await.unwrap().unwrap());
        }
        direct.push(t.elapsed());
        while s.next().await.is_some() {}
        let t = Instant::now();
        let req = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Bytes::from(chat.clone()))
            .unwrap();
        let mut a = route.send_streamed(req).await.unwrap();
        let mut seen = Vec::new();
        while events(&seen) < 2 {
            seen.extend_from_slice(&a.body.next().await.unwrap().unwrap());
        }
        private.push(t.elapsed());
        while a.body.next().await.is_some() {}
    }
    let (d, p) = (
        percentile(&mut direct[2..], 0.5),
        percentile(&mut private[2..], 0.5),
    );
    println!(
        "LLM time to the first token, {rounds} calls: direct {:.1} ms, private chunked {:.1} ms ({:.2}x)",
        d.as_secs_f64() * 1e3,
        p.as_secs_f64() * 1e3,
        p.as_secs_f64() / d.as_secs_f64()
    );
}
