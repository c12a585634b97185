//! Fuzz target: see [`lanemesh_fuzz::targets::discovery`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::discovery::run);
