//! Regenerates the seeds of the targets whose inputs are not written by hand: the `manifest`
//! corpus from `examples/` (each file, and all of them as one multi-document manifest) and
//! the `discovery` corpus from what those examples convert to (each resource encoded alone,
//! and all of them as one record sequence).
//!
//! ```text
//! cargo run -p lanemesh-fuzz --bin fuzz-seeds -- examples fuzz/corpus
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lanemesh_api::convert;
use lanemesh_api::manifest::Manifest;
use prost::Message;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(examples), Some(corpus)) = (args.next(), args.next()) else {
        eprintln!("usage: fuzz-seeds EXAMPLES_DIR CORPUS_DIR");
        return ExitCode::FAILURE;
    };
    match write_seeds(&examples, &corpus) {
        Ok(count) => {
            eprintln!("{count} seeds written under {}", corpus.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("fuzz-seeds: {error}");
            ExitCode::FAILURE
        }
    }
}

fn write_seeds(examples: &Path, corpus: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    lanemesh_fuzz::collect(examples, &mut files)?;
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml"));

    let manifest_dir = corpus.join("manifest");
    std::fs::create_dir_all(&manifest_dir)?;
    let mut count = 0;
    let mut all = String::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let name = file
            .strip_prefix(examples)?
            .to_string_lossy()
            .replace('/', "-");
        std::fs::write(manifest_dir.join(name), &text)?;
        count += 1;
        all.push_str("---\n");
        all.push_str(&text);
    }
    std::fs::write(manifest_dir.join("all.yaml"), &all)?;
    count += 1;

    let manifest = Manifest::from_yaml(&all)?;
    let converted = convert::manifest(&manifest, &|_, _| 1);
    // Kind bytes of the record sequence, as `targets::discovery` reads them.
    let mut encoded: Vec<(u8, String, Vec<u8>)> = Vec::new();
    let named = |kind: u8, name: &str, m: &dyn Fn() -> Vec<u8>| (kind, name.replace('/', "-"), m());
    for r in &converted.services.resources {
        encoded.push(named(0, &r.name, &|| r.encode_to_vec()));
    }
    for r in &converted.lane_groups.resources {
        encoded.push(named(1, &r.name, &|| r.encode_to_vec()));
    }
    for r in &converted.inbound.resources {
        encoded.push(named(2, &r.name, &|| r.encode_to_vec()));
    }
    for r in &converted.outbound.resources {
        encoded.push(named(3, &r.name, &|| r.encode_to_vec()));
    }
    // Who the pod is: a gray pod of the canary's entry app.
    let workload = lanemesh_api::proto::Workload {
        name: "canary-demo/spring-cloud-a-gray-0".into(),
        namespace: "canary-demo".into(),
        pod_name: "spring-cloud-a-gray-0".into(),
        app: "spring-cloud-a".into(),
        lane_tag: "gray".into(),
        terminating: false,
    };
    encoded.push(named(4, &workload.name, &|| workload.encode_to_vec()));
    let discovery_dir = corpus.join("discovery");
    std::fs::create_dir_all(&discovery_dir)?;
    let mut records = Vec::new();
    for (kind, name, bytes) in &encoded {
        std::fs::write(discovery_dir.join(format!("{kind}-{name}")), bytes)?;
        count += 1;
        let len = u16::try_from(bytes.len())?;
        records.push(*kind);
        records.extend_from_slice(&len.to_le_bytes());
        records.extend_from_slice(bytes);
    }
    std::fs::write(discovery_dir.join("all-records"), &records)?;
    Ok(count + 1)
}
