//! Gate for the root-only tiers (real iptables in network namespaces).
//!
//! Without root a test skips, and says so on the terminal: libtest captures `eprintln!` of a
//! passing test, so the message goes to a fresh handle on the process's stderr instead. As root
//! (as `make test` runs in CI) a missing tool is a failure, never a silent skip.

use std::io::Write;
use std::process::Command;

/// `true` when the test can run: root with every tool in `tools` on the `PATH`. `false` (after
/// printing why) when not root. Panics when root but a tool is missing.
pub(crate) fn can_run_as_root(test: &str, tools: &[&str]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if !root {
        let message = format!("{test}: skipped, needs root (make test runs as root in CI)\n");
        match std::fs::OpenOptions::new().write(true).open("/dev/stderr") {
            Ok(mut stderr) => {
                let _ = stderr.write_all(message.as_bytes());
            }
            Err(_) => eprint!("{message}"),
        }
        return false;
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{test}: running as root but {missing:?} missing (make test installs them)"
    );
    true
}
