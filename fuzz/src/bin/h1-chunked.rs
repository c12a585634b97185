//! Fuzz target: see [`lanemesh_fuzz::targets::h1_chunked`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::h1_chunked::run);
