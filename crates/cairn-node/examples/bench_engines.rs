//! Per-model inference latency of the engines (used by scripts/bench-engines.sh).
//!
//! Usage: bench_engines MODELS_DIR INPUTS_DIR [ORT_LIBRARY]
//! Prints JSON `{engine: {model: {"p50_us", "p99_us", "n"}}}`; one thread per inference.

use std::sync::Arc;
use std::time::Instant;

use cairn_engine::{Engine, TractEngine};
use serde_json::{Value, json};

const CASES: [(&str, usize); 4] = [
    ("digits_mlp", 20000),
    ("magika", 1000),
    ("minilm_l3", 300),
    ("light_squeezenet", 300),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (models, inputs) = (&args[1], &args[2]);
    #[cfg_attr(not(feature = "ort"), allow(unused_mut))]
    let mut engines: Vec<(&str, Arc<dyn Engine>)> = vec![("tract", Arc::new(TractEngine::new()))];
    #[cfg(feature = "ort")]
    if let Some(lib) = args.get(3) {
        engines.push((
            "cairn-ort",
            Arc::new(
                cairn_engine::OrtEngine::new(cairn_engine::OrtOptions {
                    library: lib.into(),
                    threads: 1,
                    parallel: 1,
                })
                .expect("onnxruntime library"),
            ),
        ));
    }
    let mut out = serde_json::Map::new();
    for (label, engine) in engines {
        let mut per = serde_json::Map::new();
        for (name, n) in CASES {
            let bytes = std::fs::read(format!("{models}/{name}.onnx")).unwrap();
            let feeds = cairn_node_api::safetensors_io::decode(
                &std::fs::read(format!("{inputs}/{name}.safetensors")).unwrap(),
            )
            .unwrap();
            let plan = engine.load(&bytes).unwrap();
            for _ in 0..(n / 20).max(10) {
                plan.run(&feeds).unwrap();
            }
            let mut times: Vec<u128> = (0..n)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(plan.run(&feeds).unwrap());
                    t.elapsed().as_nanos()
                })
                .collect();
            times.sort_unstable();
            per.insert(
                name.into(),
                json!({"p50_us": times[n / 2] as f64 / 1e3, "p99_us": times[n * 99 / 100] as f64 / 1e3, "n": n}),
            );
        }
        out.insert(label.into(), Value::Object(per));
    }
    println!("{}", Value::Object(out));
}
