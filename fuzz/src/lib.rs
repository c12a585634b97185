//! Coverage-guided fuzz targets for every parser that reads hostile input: HTTP/1 heads and
//! chunked bodies from clients and upstreams, protocol detection, the discovery resources a
//! control plane streams, the YAML users apply, metrics text and the lane in `baggage`.
//!
//! Each target is a function `fn(&[u8])` in [`targets`] that feeds the bytes to the real code
//! and panics when an invariant breaks (a panic is what the fuzzer reports as a crash). The
//! binaries in `src/bin/` wrap one target each with [`fuzz_main!`]: built by `cargo afl build`
//! (`--cfg fuzzing`) they run under afl-fuzz in persistent mode; built by plain cargo they replay
//! files, which is how a finding is reproduced:
//!
//! ```text
//! cargo run -p lanemesh-fuzz --bin h1-request -- fuzz/regressions/h1-request
//! ```
//!
//! `scripts/fuzz.sh` builds and runs them; `fuzz/corpus/<target>/` holds the seeds.

pub mod targets;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A fuzz target: takes the fuzzer's bytes, panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by the name of its binary and of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("h1-request", targets::h1_request::run),
    ("h1-response", targets::h1_response::run),
    ("h1-chunked", targets::h1_chunked::run),
    ("detect", targets::detect::run),
    ("discovery", targets::discovery::run),
    ("manifest", targets::manifest::run),
    ("path-normalize", targets::path_normalize::run),
    ("exposition", targets::exposition::run),
    ("baggage", targets::baggage::run),
];

/// The `main` of a fuzz target binary: afl's persistent loop under `cargo afl build`, a replay
/// of the files and directories named on the command line (stdin when none) otherwise.
#[macro_export]
macro_rules! fuzz_main {
    ($target:path) => {
        #[cfg(fuzzing)]
        fn main() {
            afl::fuzz!(|data: &[u8]| $target(data));
        }

        #[cfg(not(fuzzing))]
        fn main() -> std::process::ExitCode {
            $crate::replay(std::env::args_os().skip(1), $target)
        }
    };
}

/// Runs `target` on every file named in `args` (directories: every file in them, sorted), or
/// on stdin when `args` is empty. A broken invariant panics, as under the fuzzer.
pub fn replay(args: impl Iterator<Item = OsString>, target: Target) -> ExitCode {
    let mut files = Vec::new();
    let mut stdin = true;
    for arg in args {
        stdin = false;
        if let Err(error) = collect(Path::new(&arg), &mut files) {
            eprintln!("{}: {error}", Path::new(&arg).display());
            return ExitCode::FAILURE;
        }
    }
    if stdin {
        let mut data = Vec::new();
        if let Err(error) = std::io::stdin().read_to_end(&mut data) {
            eprintln!("stdin: {error}");
            return ExitCode::FAILURE;
        }
        target(&data);
        return ExitCode::SUCCESS;
    }
    for file in &files {
        match std::fs::read(file) {
            Ok(data) => target(&data),
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("{} inputs replayed", files.len());
    ExitCode::SUCCESS
}

/// `path` itself, or the files below it in name order (a stable replay order makes a failure
/// easy to find again).
pub fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    for entry in entries {
        collect(&entry, out)?;
    }
    Ok(())
}
