//! Fuzz target: see [`lanemesh_fuzz::targets::exposition`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::exposition::run);
