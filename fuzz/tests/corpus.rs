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
