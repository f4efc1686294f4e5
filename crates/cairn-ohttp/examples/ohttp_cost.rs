//! CPU per request of Oblivious HTTP for a 1 KiB request and a 1 KiB answer, one core:
//! `cargo run --release -p cairn-ohttp --example ohttp_cost [ROUNDS]`. Prints the median over
//! rounds of 500 requests each, per step.

use std::time::Instant;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let gateway = cairn_ohttp::GatewayKey::derive(1, &[7; 32]);
    let config = gateway.config().clone();
    let (request, answer) = (vec![b'r'; 1024], vec![b'a'; 1024]);
    let n = 500;
    let mut steps: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        let mut t = [0f64; 4];
        for _ in 0..n {
            let s = Instant::now();
            let (sealed, opener) = cairn_ohttp::encapsulate(&config, &request).unwrap();
            let a = Instant::now();
            let (plain, sealer) = gateway.decapsulate(&sealed).unwrap();
            let b = Instant::now();
            let back = sealer.seal(&answer);
            let c = Instant::now();
            let opened = opener.open(&back).unwrap();
            let d = Instant::now();
            assert_eq!((plain.len(), opened.len()), (1024, 1024));
            for (i, (x, y)) in [(s, a), (a, b), (b, c), (c, d)].into_iter().enumerate() {
                t[i] += (y - x).as_secs_f64() * 1e6 / n as f64;
            }
        }
        for i in 0..4 {
            steps[i].push(t[i]);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let names = [
        "client: seal request",
        "gateway: open request",
        "gateway: seal answer",
        "client: open answer",
    ];
    let mut gateway_total = 0.0;
    for (i, name) in names.iter().enumerate() {
        let m = median(&mut steps[i]);
        if i == 1 || i == 2 {
            gateway_total += m;
        }
        println!("{name:24} {m:8.1} µs");
    }
    println!(
        "{:24} {gateway_total:8.1} µs per request (target ≤ 300)",
        "gateway: both"
    );
}
