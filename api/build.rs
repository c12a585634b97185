//! Generates the discovery protocol's Rust code with tonic-prost-build.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine
//! builds without installing anything; `PROTOC` in the environment still wins
//! for those who want their own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Map fields as BTreeMaps: prost encodes a HashMap in its iteration order, so the same
    // resource would encode to different bytes (and versions) on every build of it.
    config.btree_map(["."]);
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &[
                PathBuf::from("proto/lanemesh/v1/discovery.proto"),
                PathBuf::from("proto/lanemesh/v1/resources.proto"),
            ],
            &[PathBuf::from("proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
