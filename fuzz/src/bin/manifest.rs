//! Fuzz target: see [`lanemesh_fuzz::targets::manifest`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::manifest::run);
