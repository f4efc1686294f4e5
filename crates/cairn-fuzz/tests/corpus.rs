//! Replays the committed seed corpus (`fuzz/corpus/<target>/`) through every target: each file
//! must be handled without a panic, and every target must have seeds.

use std::path::Path;

#[test]
fn every_committed_input_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in cairn_fuzz::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(
                run.is_ok(),
                "{name}: {} makes the target panic",
                path.display()
            );
            n += 1;
        }
        assert!(n > 0, "{name} has no seeds in {}", dir.display());
        eprintln!("{name}: {n} inputs replayed");
    }
}
