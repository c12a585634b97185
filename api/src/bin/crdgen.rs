//! `crdgen`: writes the CRDs to `charts/lanemesh/crds/`, or checks them.
//!
//! `crdgen [DIR]` writes one `<plural>.<group>.yaml` per CRD;
//! `crdgen --check [DIR]` exits non-zero when a file differs.

use std::path::PathBuf;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    args.retain(|a| a != "--check");
    let dir = PathBuf::from(args.first().map_or("charts/lanemesh/crds", String::as_str));
    let mut stale = Vec::new();
    for (file, yaml) in lanemesh_api::crd::render()? {
        let path = dir.join(&file);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != yaml {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if !stale.is_empty() {
        bail!(
            "CRDs out of date (run `cargo run -p lanemesh-api --bin crdgen`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
