//! A closed-loop HTTP load generator for a node's KServe endpoint (scripts/bench-node.sh).
//!
//! Usage: loadgen URL INPUT.safetensors CONCURRENCY SECONDS
//! Sends the tensors in KServe binary form over keep-alive connections, CONCURRENCY requests in
//! flight, and prints JSON `{"rps", "p50_us", "p99_us", "ok", "errors"}`.
//!
//! LOADGEN_PAY=exact|upto|prepaid|batch-settlement (with LOADGEN_PAYER_KEY, a hex secret key)
//! pays every request: `exact` signs a fresh EIP-3009 authorization per request, `upto` a fresh
//! Permit2 permit (the payer has approved Permit2), `prepaid` deposits once per connection (its
//! own channel salt) and then sends a cumulative voucher per request, `batch-settlement` opens an
//! x402 channel per connection with its first request (a deposit) and then sends a cumulative
//! voucher per request. Payments
//! are signed ahead of the run (the client's signing would compete with the node for the CPU):
//! the latency is the node's.
//!
//! LOADGEN_WARMUP=0 skips the warm-up calls (a probe joining a flood would otherwise spend its
//! time on them, held as the flood's refusals are); each connection's first answer is then
//! not timed (it waited for the connection to open). LOADGEN_ANNOUNCE=1 prints "loadgen:
//! measuring" to stderr when the clock starts.

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
    let tensors = cairn_node_api::safetensors_io::decode(&std::fs::read(input).unwrap()).unwrap();
    let (body, json_len) = cairn_node_api::client::binary_request(&tensors);
    let body = bytes::Bytes::from(body);
    // LOADGEN_GET=1 measures a bare GET on URL instead: the HTTP floor of this machine.
    let get = std::env::var_os("LOADGEN_GET").is_some();
    let pay = std::env::var("LOADGEN_PAY").ok();
    let payer: Option<alloy_signer_local::PrivateKeySigner> =
        std::env::var("LOADGEN_PAYER_KEY").ok().map(|k| {
            k.trim_start_matches("0x")
                .parse()
                .expect("LOADGEN_PAYER_KEY")
        });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (lat, errors, elapsed) = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(conc)
            .build()
            .unwrap();
        let payment = match (&pay, &payer) {
            (Some(mode), Some(payer)) => {
                Some(Payment::setup(&client, &url, &body, json_len, mode, payer, conc).await)
            }
            _ => None,
        };
        // Warm up: load the model, open connections.
        let warm = std::env::var("LOADGEN_WARMUP").map_or(true, |v| v != "0");
        for i in (0..conc.max(4)).filter(|_| warm) {
            let mut req = client
                .post(&url)
                .header("inference-header-content-length", json_len)
                .body(body.clone());
            if let Some(p) = &payment {
                req = req.header("payment-signature", p.header(i % conc));
            }
            let _ = req.send().await;
        }
        // Sign ahead (vouchers in order per connection), before the clock starts: the client's
        // signing would otherwise compete with the node for this machine's two cores. Enough
        // for 8,000 answers a second; past that, the client signs as it goes.
        let presigned: Vec<std::sync::Mutex<std::collections::VecDeque<String>>> = (0..conc)
            .map(|task| {
                let n = match &payment {
                    Some(_) => ((secs * 8000.0) as usize).div_ceil(conc).min(100_000),
                    None => 0,
                };
                let q = (0..n)
                    .map(|_| payment.as_ref().unwrap().header(task))
                    .collect();
                std::sync::Mutex::new(q)
            })
            .collect();
        let presigned = std::sync::Arc::new(presigned);
        // LOADGEN_ANNOUNCE=1: a profiler or CPU meter beside the run waits for this line.
        if std::env::var_os("LOADGEN_ANNOUNCE").is_some() {
            eprintln!("loadgen: measuring");
        }
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        let payment = std::sync::Arc::new(payment);
        let tasks: Vec<_> = (0..conc)
            .map(|task| {
                let (client, url, body, hl) = (client.clone(), url.clone(), body.clone(), json_len);
                let payment = payment.clone();
                let presigned = presigned.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0u64;
                    // Without a warm-up, the first answer also waited for the connection.
                    let mut untimed = usize::from(!warm);
                    while Instant::now() < until {
                        let header = payment.as_ref().as_ref().map(|p| {
                            let next = presigned[task].lock().unwrap().pop_front();
                            next.unwrap_or_else(|| p.header(task))
                        });
                        let t = Instant::now();
                        let r = if get {
                            client.get(&url).send().await
                        } else {
                            let mut req = client
                                .post(&url)
                                .header("inference-header-content-length", hl)
                                .body(body.clone());
                            if let Some(h) = header {
                                req = req.header("payment-signature", h);
                            }
                            req.send().await
                        };
                        match r {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes().await;
                                if untimed > 0 {
                                    untimed -= 1;
                                } else {
                                    lat.push(t.elapsed().as_nanos() as u64);
                                }
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

/// What a paying load generator needs: the node's offers and, for prepaid, one channel per
/// connection with its running cumulative amount.
struct Payment {
    payer: alloy_signer_local::PrivateKeySigner,
    required: cairn_x402::wire::PaymentRequired,
    offer: cairn_x402::wire::PaymentRequirements,
    prepaid: bool,
    cumulative: Vec<std::sync::Mutex<alloy_primitives::U256>>,
    channels: Vec<std::sync::Mutex<cairn_x402::client::BatchChannel>>,
}

impl Payment {
    async fn setup(
        client: &reqwest::Client,
        url: &str,
        body: &bytes::Bytes,
        json_len: usize,
        mode: &str,
        payer: &alloy_signer_local::PrivateKeySigner,
        conc: usize,
    ) -> Self {
        use alloy_primitives::{B256, U256};
        let r = client
            .post(url)
            .header("inference-header-content-length", json_len)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402, "the node does not ask for payment");
        let required = cairn_x402::client::offers(r.headers()).unwrap();
        let prepaid = mode == "prepaid";
        let offer = required
            .accepts
            .iter()
            .find(|o| o.scheme == mode)
            .unwrap_or_else(|| panic!("the node offers no {mode}"))
            .clone();
        let mut cumulative = Vec::new();
        if prepaid {
            let base = url.split("/v2/").next().unwrap();
            let info: serde_json::Value = client
                .get(format!("{base}/v1/node"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let t = &info["payments"];
            let domain = alloy_sol_types::Eip712Domain::new(
                Some(t["tokenName"].as_str().unwrap().to_string().into()),
                Some(t["tokenVersion"].as_str().unwrap().to_string().into()),
                Some(U256::from(
                    cairn_x402::wire::chain_id_of(t["network"].as_str().unwrap()).unwrap(),
                )),
                Some(t["asset"].as_str().unwrap().parse().unwrap()),
                None,
            );
            let escrow = t["escrow"].as_str().unwrap().parse().unwrap();
            for i in 0..conc {
                let salt = B256::from(U256::from(i as u64 + 1));
                let d = cairn_x402::prepaid::sign_deposit(
                    payer,
                    escrow,
                    t["payTo"].as_str().unwrap().parse().unwrap(),
                    salt,
                    offer.amount * U256::from(10_000_000u64),
                    u64::MAX / 2,
                    &domain,
                )
                .unwrap();
                let r = client
                    .post(format!("{base}/v1/prepaid/deposits"))
                    .json(&d)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "deposit refused: {}", r.status());
                let ch: serde_json::Value = r.json().await.unwrap();
                // Go on from what the node already accepted on this channel (earlier runs).
                let accepted = U256::from_str_radix(ch["accepted"].as_str().unwrap(), 10).unwrap();
                cumulative.push(std::sync::Mutex::new(accepted));
            }
        }
        let mut channels = Vec::new();
        if mode == cairn_x402::batch::SCHEME {
            // A fresh channel per connection and run, opened by a paid request (its deposit).
            let run = B256::random();
            for i in 0..conc {
                let mut salt = run;
                salt.0[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let mut ch =
                    cairn_x402::client::BatchChannel::new(payer.address(), &offer, salt).unwrap();
                let header = ch
                    .pay(
                        payer,
                        &required,
                        &offer,
                        offer.amount * U256::from(100_000u64),
                    )
                    .unwrap();
                let r = client
                    .post(url)
                    .header("inference-header-content-length", json_len)
                    .header("payment-signature", header)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "deposit refused: {}", r.status());
                ch.charged(
                    &cairn_x402::client::settle_response(r.headers()).unwrap(),
                    offer.amount,
                );
                channels.push(std::sync::Mutex::new(ch));
            }
        }
        Self {
            payer: payer.clone(),
            required,
            offer,
            prepaid,
            cumulative,
            channels,
        }
    }

    /// A fresh payment header for connection `task`.
    fn header(&self, task: usize) -> String {
        use alloy_primitives::{B256, U256};
        if self.prepaid {
            let mut c = self.cumulative[task].lock().unwrap();
            *c += self.offer.amount;
            let salt = B256::from(U256::from(task as u64 + 1));
            cairn_x402::client::pay_prepaid(&self.payer, &self.required, &self.offer, salt, *c)
                .unwrap()
        } else if let Some(ch) = self.channels.get(task) {
            let mut ch = ch.lock().unwrap();
            let h = ch
                .pay(&self.payer, &self.required, &self.offer, U256::ZERO)
                .unwrap();
            // Each call costs the offer's price: the next voucher goes on from there.
            ch.charged += self.offer.amount;
            h
        } else if self.offer.scheme == "upto" {
            cairn_x402::client::pay_upto(&self.payer, &self.required, &self.offer).unwrap()
        } else {
            cairn_x402::client::pay_exact(&self.payer, &self.required, &self.offer).unwrap()
        }
    }
}
