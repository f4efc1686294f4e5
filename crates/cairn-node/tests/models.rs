//! Real models through both engines: the digits MLP's held-out accuracy against onnxruntime's
//! predictions, magika, MiniLM-L3 and squeezenet agreeing across engines, and the onnx package's
//! operator test cases as a coverage suite.

use std::path::PathBuf;
use std::sync::Arc;

use cairn_core::{DataType, Tensor};
use cairn_engine::{Engine, TractEngine};
use cairn_node_api::safetensors_io;

fn models() -> Option<PathBuf> {
    match std::env::var_os("CAIRN_TEST_MODELS") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                "CAIRN_TEST_MODELS is not set; run scripts/test.sh"
            );
            eprintln!("SKIPPED: CAIRN_TEST_MODELS is not set");
            None
        }
    }
}

/// One ONNX Runtime engine for the whole test process (its environment is per process).
#[cfg(feature = "ort")]
fn ort() -> Option<Arc<dyn Engine>> {
    static ENGINE: std::sync::OnceLock<Option<Arc<dyn Engine>>> = std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let lib = std::env::var_os("ORT_DYLIB_PATH")?;
            Some(Arc::new(
                cairn_engine::OrtEngine::new(cairn_engine::OrtOptions {
                    library: lib.into(),
                    threads: 1,
                    parallel: 1,
                })
                .unwrap(),
            ) as Arc<dyn Engine>)
        })
        .clone()
}

#[cfg(not(feature = "ort"))]
fn ort() -> Option<Arc<dyn Engine>> {
    None
}

/// Why the onnxruntime comparison cannot run (a failure when services are required).
const ORT_MISSING: &str = if cfg!(feature = "ort") {
    "ORT_DYLIB_PATH is not set (scripts/test.sh sets it)"
} else {
    "built without the `ort` feature (`cargo test --workspace` enables it through cairn-cli)"
};

fn f32s(t: &Tensor) -> Vec<f32> {
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn digits_mlp_matches_onnxruntime_predictions_on_held_out_digits() {
    let Some(dir) = models() else { return };
    let data = safetensors_io::decode(&std::fs::read(dir.join("digits_test.safetensors")).unwrap())
        .unwrap();
    let get = |n: &str| data.iter().find(|t| t.name() == n).unwrap();
    let (x, y, ort_label) = (get("X"), i64s(get("y")), i64s(get("ort_label")));
    let plan = TractEngine::new()
        .load(&std::fs::read(dir.join("digits_mlp.onnx")).unwrap())
        .unwrap();
    // The whole held-out set as one batch (the model's batch dim is symbolic).
    let out = plan.run(std::slice::from_ref(x)).unwrap();
    let labels = i64s(&out[0]);
    assert_eq!(labels.len(), y.len());
    let agree = labels
        .iter()
        .zip(&ort_label)
        .filter(|(a, b)| a == b)
        .count();
    let correct = labels.iter().zip(&y).filter(|(a, b)| a == b).count();
    let ort_correct = ort_label.iter().zip(&y).filter(|(a, b)| a == b).count();
    eprintln!(
        "digits: tract accuracy {correct}/{n}, onnxruntime {ort_correct}/{n}, agreement {agree}/{n}",
        n = y.len()
    );
    assert_eq!(
        agree,
        y.len(),
        "tract and onnxruntime disagree on some digits"
    );
    assert!(correct as f64 / y.len() as f64 > 0.95);
}

fn sample_inputs(name: &str) -> Vec<Tensor> {
    match name {
        "magika" => {
            let v: Vec<u8> = (0..2048i32).flat_map(|i| (i % 257).to_le_bytes()).collect();
            vec![Tensor::new("bytes", DataType::Int32, vec![1, 2048], v).unwrap()]
        }
        "minilm_l3" => {
            let ids: Vec<i64> = vec![101, 7592, 2088, 2003, 1037, 3231, 102, 0];
            let mask: Vec<i64> = vec![1, 1, 1, 1, 1, 1, 1, 0];
            let b = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            vec![
                Tensor::new("input_ids", DataType::Int64, vec![1, 8], b(&ids)).unwrap(),
                Tensor::new("attention_mask", DataType::Int64, vec![1, 8], b(&mask)).unwrap(),
            ]
        }
        "light_squeezenet" => {
            let v: Vec<u8> = (0..3 * 224 * 224)
                .flat_map(|i| (((i * 7919) % 1000) as f32 / 500.0 - 1.0).to_le_bytes())
                .collect();
            vec![Tensor::new("data_0", DataType::Fp32, vec![1, 3, 224, 224], v).unwrap()]
        }
        _ => unreachable!(),
    }
}

#[test]
fn real_models_run_and_engines_agree() {
    let Some(dir) = models() else { return };
    let tract = TractEngine::new();
    let ort = ort();
    if ort.is_none() {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
            "{}",
            ORT_MISSING
        );
        eprintln!("SKIPPED the onnxruntime half: {ORT_MISSING}");
    }
    for name in ["magika", "minilm_l3", "light_squeezenet"] {
        let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
        let inputs = sample_inputs(name);
        let t_out = tract.load(&bytes).unwrap().run(&inputs).unwrap();
        // Same plan, same input: same bits (the verifiable engine's promise within a process).
        let again = tract.load(&bytes).unwrap().run(&inputs).unwrap();
        assert_eq!(t_out, again, "{name}");
        let Some(ort) = &ort else { continue };
        let o_out = ort.load(&bytes).unwrap().run(&inputs).unwrap();
        assert_eq!(t_out.len(), o_out.len(), "{name}");
        for (a, b) in t_out.iter().zip(&o_out) {
            assert_eq!(
                (a.name(), a.dtype(), a.shape()),
                (b.name(), b.dtype(), b.shape()),
                "{name}"
            );
            if a.dtype() == DataType::Fp32 {
                let max = f32s(a)
                    .iter()
                    .zip(f32s(b))
                    .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                    .fold(0f32, f32::max);
                eprintln!(
                    "{name}/{}: max relative difference tract vs onnxruntime {max:e}",
                    a.name()
                );
                assert!(max < 1e-3, "{name}/{}: {max}", a.name());
            } else {
                assert_eq!(a.data(), b.data(), "{name}/{}", a.name());
            }
        }
    }
}

/// The onnx package's operator and small-model test cases, each run through tract and compared
/// with its reference outputs (rtol 1e-3, atol 1e-5 as the onnx backend tests use). The cases
/// that pass are exactly those listed in `optest_passing.txt`: a regression fails the test, and
/// so does a newly passing case until it is listed (so one cannot hide the other).
#[test]
fn operator_coverage() {
    let Some(dir) = models() else { return };
    let engine = TractEngine::new();
    let mut cases: Vec<_> = std::fs::read_dir(dir.join("optest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let result = (|| -> Result<(), String> {
            let bytes = std::fs::read(case.join("model.onnx")).map_err(|e| e.to_string())?;
            let inputs =
                safetensors_io::decode(&std::fs::read(case.join("inputs.safetensors")).unwrap())
                    .map_err(|e| e.to_string())?;
            let expected =
                safetensors_io::decode(&std::fs::read(case.join("outputs.safetensors")).unwrap())
                    .map_err(|e| e.to_string())?;
            let plan = engine.load(&bytes).map_err(|e| e.to_string())?;
            let out = plan.run(&inputs).map_err(|e| e.to_string())?;
            for want in &expected {
                let got = out
                    .iter()
                    .find(|t| t.name() == want.name())
                    .ok_or(format!("no output {}", want.name()))?;
                if got.shape() != want.shape() {
                    return Err(format!(
                        "{}: shape {:?} != {:?}",
                        want.name(),
                        got.shape(),
                        want.shape()
                    ));
                }
                match want.dtype() {
                    DataType::Fp32 => {
                        for (g, w) in f32s(got).iter().zip(f32s(want)) {
                            if !((g - w).abs() <= 1e-5 + 1e-3 * w.abs()
                                || (g.is_nan() && w.is_nan()))
                            {
                                return Err(format!("{}: {g} != {w}", want.name()));
                            }
                        }
                    }
                    _ if got.dtype() == want.dtype() && got.data() == want.data() => {}
                    _ => return Err(format!("{}: values or type differ", want.name())),
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => passed.push(name),
            Err(e) => failed.push(format!(
                "{name}: {}",
                e.chars().take(160).collect::<String>()
            )),
        }
    }
    eprintln!(
        "operator coverage: {} of {} cases pass on tract",
        passed.len(),
        cases.len()
    );
    for f in &failed {
        eprintln!("  FAIL {f}");
    }
    assert!(
        cases.len() >= 130,
        "expected the onnx test cases, found {}",
        cases.len()
    );
    let listed: std::collections::BTreeSet<&str> = include_str!("optest_passing.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let passing: std::collections::BTreeSet<&str> = passed.iter().map(String::as_str).collect();
    let regressed: Vec<_> = listed.difference(&passing).collect();
    let new: Vec<_> = passing.difference(&listed).collect();
    assert!(
        regressed.is_empty() && new.is_empty(),
        "listed cases that no longer pass: {regressed:?}; passing cases not listed in \
         tests/optest_passing.txt (add them): {new:?}"
    );
}

/// Protobuf by hand (no ONNX writer in the workspace): a length-delimited field.
fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = varint(n << 3 | 2);
    out.extend(varint(bytes.len() as u64));
    out.extend_from_slice(bytes);
    out
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn int_field(n: u64, v: u64) -> Vec<u8> {
    let mut out = varint(n << 3);
    out.extend(varint(v));
    out
}

/// `y = Identity(w)`, where the initializer `w` (2 floats) keeps its data in the file at
/// `location`: a runtime that honours ONNX external data returns that file's bytes as output.
fn model_reading(location: &str) -> Vec<u8> {
    let entry = [field(1, b"location"), field(2, location.as_bytes())].concat();
    let init = [
        int_field(1, 2),   // dims
        int_field(2, 1),   // float
        field(8, b"w"),    // name
        field(13, &entry), // external_data
        int_field(14, 1),  // data_location = EXTERNAL
    ]
    .concat();
    let node = [field(1, b"w"), field(2, b"y"), field(4, b"Identity")].concat();
    let dim = field(1, &int_field(1, 2));
    let ty = field(1, &[int_field(1, 1), field(2, &dim)].concat());
    let output = [field(1, b"y"), field(2, &ty)].concat();
    let graph = [
        field(1, &node),
        field(2, b"g"),
        field(5, &init),
        field(12, &output),
    ]
    .concat();
    [
        int_field(1, 8),
        field(7, &graph),
        field(8, &int_field(2, 13)),
    ]
    .concat()
}

#[test]
fn no_engine_loads_a_model_that_reads_files_beside_it() {
    // The attack: a model whose weight is "the node's key file", run to get it back as output.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("node.key");
    std::fs::write(&secret, [0x5au8; 8]).unwrap();
    let bytes = model_reading(secret.to_str().unwrap());
    let mut engines: Vec<(&str, Arc<dyn Engine>)> = vec![("tract", Arc::new(TractEngine::new()))];
    match ort() {
        Some(o) => engines.push(("onnxruntime", o)),
        None => {
            assert!(
                std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                "{}",
                ORT_MISSING
            );
            eprintln!("SKIPPED the onnxruntime half: {ORT_MISSING}");
        }
    }
    for (name, engine) in engines {
        let err = match engine.load(&bytes) {
            Ok(plan) => panic!(
                "{name} loaded it; running it gives {:?}",
                plan.run(&[]).map(|o| o[0].data().to_vec())
            ),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("not self-contained"), "{name}: {err}");
    }
}
