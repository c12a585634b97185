//! Fuzz target: see [`lanemesh_fuzz::targets::h1_request`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::h1_request::run);
