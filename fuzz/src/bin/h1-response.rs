//! Fuzz target: see [`lanemesh_fuzz::targets::h1_response`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::h1_response::run);
