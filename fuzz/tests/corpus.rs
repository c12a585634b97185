//! Every seed of every target passes its invariants without afl, so `cargo test` catches a
//! parser change that breaks one before the fuzzer runs (and a seed afl-fuzz would refuse as
//! crashing at startup).

use std::path::Path;

#[test]
fn every_seed_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in lanemesh_fuzz::TARGETS {
        let mut files = Vec::new();
        if let Err(error) = lanemesh_fuzz::collect(&corpus.join(name), &mut files) {
            panic!("{name}: {error}");
        }
        assert!(!files.is_empty(), "{name}: no seeds");
        for file in files {
            match std::fs::read(&file) {
                Ok(data) => target(&data),
                Err(error) => panic!("{}: {error}", file.display()),
            }
        }
    }
}

/// Every recorded finding (fuzz/regressions) is fixed: it passes its target's invariants.
#[test]
fn every_recorded_finding_passes_its_target() {
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut replayed = 0;
    for (name, target) in lanemesh_fuzz::TARGETS {
        let dir = regressions.join(name);
        if !dir.exists() {
            continue;
        }
        let mut files = Vec::new();
        if let Err(error) = lanemesh_fuzz::collect(&dir, &mut files) {
            panic!("{name}: {error}");
        }
        for file in files {
            match std::fs::read(&file) {
                Ok(data) => target(&data),
                Err(error) => panic!("{}: {error}", file.display()),
            }
            replayed += 1;
        }
    }
    assert!(replayed >= 5, "only {replayed} recorded findings replayed");
}
