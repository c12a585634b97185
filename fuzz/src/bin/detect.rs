//! Fuzz target: see [`lanemesh_fuzz::targets::detect`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::detect::run);
