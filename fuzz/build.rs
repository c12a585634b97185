//! Declares the `fuzzing` cfg that `cargo afl build` sets, so `unexpected_cfgs` stays quiet
//! in ordinary builds.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
