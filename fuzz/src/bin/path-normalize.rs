//! Fuzz target: see [`lanemesh_fuzz::targets::path_normalize`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::path_normalize::run);
