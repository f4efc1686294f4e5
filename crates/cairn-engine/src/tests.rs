//! Engine tests on real models (the test models from `scripts/test-deps.sh`).

use std::path::PathBuf;

use super::*;

fn models() -> Option<PathBuf> {
    match std::env::var_os("CAIRN_TEST_MODELS") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_some() => {
            panic!("CAIRN_TEST_MODELS is not set; run scripts/test.sh")
        }
        None => {
            eprintln!("SKIPPED: CAIRN_TEST_MODELS is not set");
            None
        }
    }
}

#[test]
fn tract_runs_the_digits_mlp() {
    let Some(dir) = models() else { return };
    let bytes = std::fs::read(dir.join("digits_mlp.onnx")).unwrap();
    let engine = TractEngine::new();
    let plan = engine.load(&bytes).unwrap();
    assert_eq!(plan.input_names(), ["X"]);
    assert_eq!(plan.output_names(), ["label", "probabilities"]);
    let x = Tensor::new("X", DataType::Fp32, vec![1, 64], vec![0; 256]).unwrap();
    let out = plan.run(&[x]).unwrap();
    assert_eq!(out[0].dtype(), DataType::Int64);
    assert_eq!(out[1].shape(), [1, 10]);
}

#[test]
fn refuses_bad_models_and_inputs() {
    let engine = TractEngine::new();
    let err = engine.load(b"definitely not onnx").err().unwrap();
    assert!(matches!(err, EngineError::Load(_)), "{err}");
    let Some(dir) = models() else { return };
    let bytes = std::fs::read(dir.join("digits_mlp.onnx")).unwrap();
    let plan = engine.load(&bytes).unwrap();
    let wrong = Tensor::new("Y", DataType::Fp32, vec![1, 64], vec![0; 256]).unwrap();
    let err = plan.run(&[wrong]).unwrap_err();
    assert!(err.to_string().contains("no input `Y`"), "{err}");
    assert!(plan.run(&[]).unwrap_err().to_string().contains("missing"));
    let truncated = &bytes[..bytes.len() / 2];
    assert!(engine.load(truncated).is_err());
}

#[test]
fn tiers_pin_exact_isa_lists() {
    let generic = tier_env(CpuTier::Generic).unwrap().unwrap();
    assert!(
        generic.contains("-avx2") && generic.contains("-fma"),
        "{generic}"
    );
    // A profile's list and the tier it came from pin the same set.
    assert_eq!(isa_env_for("x86_64").unwrap(), generic);
    assert!(tier_env(CpuTier::Native).unwrap().is_none());
    assert!(matches!(
        isa_env_for("x86_64,warp9"),
        Err(TierError::UnknownIsa(_))
    ));
    assert!("turbo".parse::<CpuTier>().is_err());
}
