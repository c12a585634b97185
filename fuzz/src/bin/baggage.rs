//! Fuzz target: see [`lanemesh_fuzz::targets::baggage`].

lanemesh_fuzz::fuzz_main!(lanemesh_fuzz::targets::baggage::run);
