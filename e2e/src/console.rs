//! The console's browser check: `e2e/console/check.cjs` run by node with playwright-core
//! (installed by `e2e/console/install.sh` into `$LANEMESH_CACHE/console-check`) driving Debian's
//! chromium. Missing tools are errors that say how to install them, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// `$LANEMESH_CACHE` (default `~/.cache/lanemesh`).
fn cache() -> Result<PathBuf> {
    Ok(crate::cluster::Binaries::default_dir()?
        .parent()
        .context("the binaries directory has no parent")?
        .to_path_buf())
}

/// Where the screenshots of a check go: `$LANEMESH_CACHE/artifacts/console`.
pub fn artifacts_dir() -> Result<PathBuf> {
    let dir = cache()?.join("artifacts/console");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Loads the console at `url` in headless chromium: the page lists `lane` (`namespace/name`)
/// and draws a GrayQPS chart with data; with `switch`, the lane's Disable button switches it
/// off and Enable back on. Screenshots go to `out`. Returns what the page showed (one JSON
/// line).
pub fn browser_check(url: &str, out: &Path, lane: &str, switch: bool) -> Result<String> {
    let modules = cache()?.join("console-check/node_modules");
    ensure!(
        modules.join("playwright-core").is_dir(),
        "{} missing: run e2e/console/install.sh (make test does)",
        modules.display()
    );
    ensure!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium missing: run e2e/console/install.sh as root (apt-get install chromium)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("console/check.cjs");
    let mut command = Command::new("node");
    command
        .arg(&script)
        .arg(url)
        .arg(out)
        .arg(lane)
        .env("NODE_PATH", &modules);
    if switch {
        command.arg("--switch");
    }
    let output = command
        .output()
        .context("running node (the console check needs Node.js)")?;
    ensure!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
