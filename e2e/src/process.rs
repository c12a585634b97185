//! Real lanemesh binaries as child processes, for tests and benchmarks:
//! free loopback ports, a plain HTTP/1.0 probe for their admin endpoints,
//! the child killed when its guard drops, and its resource use read from
//! `/proc`.
//!
//! Everything here is synchronous (std sockets, `std::thread::sleep`): callers
//! inside a tokio runtime run it with `spawn_blocking`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starting, probing or reading a child failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} exited before it was ready ({status}); see its log {log}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("{name} was not ready within {timeout:?} (probe {probe}); see its log {log}")]
    NotReady {
        name: String,
        timeout: Duration,
        probe: String,
        log: String,
    },
    #[error("cannot read {path}: {source}")]
    Proc {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected content in {path}: {what}")]
    ProcFormat { path: PathBuf, what: &'static str },
    #[error("cargo build of {bins}: {reason}")]
    Build { bins: String, reason: String },
}

/// An address on 127.0.0.1 nothing listens on right now. The port is free
/// only until someone else binds it; good enough for one test machine.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// One HTTP/1.0 exchange: `(status, body)`, or `None` while nothing answers.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: lanemesh\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Builds binaries of workspace packages with the cargo that built this
/// crate (`$CARGO`, else `cargo` on the PATH), in the same target directory
/// and profile as the caller (`--release` when built without debug
/// assertions), and returns their paths by binary name, as cargo's JSON
/// messages report them. `bins` are `(package, binary)` pairs.
///
/// This is how tests reach binaries of other packages: `CARGO_BIN_EXE_*`
/// only names the test's own package. Running cargo from inside `cargo test`
/// works because cargo releases the build directory lock before it runs
/// the test binaries; when the binaries are fresh the build is a no-op.
pub fn cargo_build(
    bins: &[(&str, &str)],
    timeout: Duration,
) -> Result<std::collections::BTreeMap<String, PathBuf>, ProcessError> {
    let label = bins.iter().map(|(_, b)| *b).collect::<Vec<_>>().join(", ");
    let fail = |reason: String| ProcessError::Build {
        bins: label.clone(),
        reason,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--message-format=json-render-diagnostics"]);
    for (package, bin) in bins {
        command.args(["-p", package, "--bin", bin]);
    }
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", cargo.to_string_lossy())))?;
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = match done_rx.recv_timeout(timeout) {
        Ok(output) => output.map_err(|e| fail(e.to_string()))?,
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            return Err(fail(format!("still running after {timeout:?}")));
        }
    };
    if !output.status.success() {
        return Err(fail(format!("{} (its errors are above)", output.status)));
    }
    let mut found = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && let (Some(name), Some(exe)) = (
                message["target"]["name"].as_str(),
                message["executable"].as_str(),
            )
        {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    for (_, bin) in bins {
        if !found.contains_key(*bin) {
            return Err(fail(format!("cargo reported no executable {bin}")));
        }
    }
    Ok(found)
}

/// The two lanemesh binaries the end-to-end tests run.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub pilot: PathBuf,
    pub proxy: PathBuf,
    pub ctl: PathBuf,
}

/// Builds `lanemesh-pilot`, `lanemesh-proxy` and `lanemeshctl` with [`cargo_build`]. Every
/// test asks for the same set: cargo unifies features over the packages of
/// one build, so asking for different sets would rebuild shared
/// dependencies and relink the binaries back and forth.
pub fn lanemesh_binaries(timeout: Duration) -> Result<Binaries, ProcessError> {
    let mut built = cargo_build(
        &[
            ("lanemesh-control-plane", "lanemesh-pilot"),
            ("lanemesh-sidecar", "lanemesh-proxy"),
            ("lanemesh-ctl", "lanemeshctl"),
        ],
        timeout,
    )?;
    let mut take = |bin: &str| {
        built.remove(bin).ok_or_else(|| ProcessError::Build {
            bins: bin.to_owned(),
            reason: "not reported".into(),
        })
    };
    Ok(Binaries {
        pilot: take("lanemesh-pilot")?,
        proxy: take("lanemesh-proxy")?,
        ctl: take("lanemeshctl")?,
    })
}

/// A running child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, ProcessError> {
        let program = PathBuf::from(command.get_program());
        let spawn_err = |source| ProcessError::Spawn {
            program: program.clone(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        // Tests run with RUST_BACKTRACE=1, which makes anyhow attach a backtrace to a binary's
        // startup error: the error line itself then falls out of the log tail a failing test
        // prints. Panics keep their backtraces (RUST_BACKTRACE still applies to them).
        command.env("RUST_LIB_BACKTRACE", "0");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(spawn_err)?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The child's pid; `None` once it has been killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Polls `probe` (an HTTP GET) until it answers 200, the child exits, or
    /// `timeout` passes.
    pub fn wait_ready(
        &mut self,
        probe: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(), ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(ProcessError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log.display().to_string(),
                });
            }
            if http(probe, "GET", path).is_some_and(|(status, _)| status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    timeout,
                    probe: format!("http://{probe}{path}"),
                    log: self.log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the child to stop with SIGTERM, waits up to `grace`, then kills
    /// it. Returns whether it exited on its own with success.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        // std has no signal API and the workspace forbids unsafe: the `kill`
        // utility sends SIGTERM.
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + grace;
        while sent && Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return status.success();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        self.kill();
        false
    }

    /// SIGKILL and reap, as a crash would end it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of the child's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resource use of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Peak resident set size (VmHWM), bytes.
    pub peak_rss: u64,
    /// Current resident set size (VmRSS), bytes.
    pub rss: u64,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// Reads the usage of `pid` (`"self"` works too).
pub fn usage(pid: &str, clock_ticks: u64) -> Result<Usage, ProcessError> {
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&status_path).map_err(|source| ProcessError::Proc {
        path: status_path.clone(),
        source,
    })?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    };
    let missing = |what| ProcessError::ProcFormat {
        path: status_path.clone(),
        what,
    };
    let peak_rss = kib("VmHWM:").ok_or_else(|| missing("no VmHWM line"))? * 1024;
    let rss = kib("VmRSS:").ok_or_else(|| missing("no VmRSS line"))? * 1024;

    let stat_path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat = std::fs::read_to_string(&stat_path).map_err(|source| ProcessError::Proc {
        path: stat_path.clone(),
        source,
    })?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or(ProcessError::ProcFormat {
        path: stat_path,
        what: "no utime/stime fields",
    })?;
    #[allow(clippy::cast_precision_loss)] // tick counts stay far below 2^52
    let cpu_seconds = ticks as f64 / clock_ticks.max(1) as f64;
    Ok(Usage {
        peak_rss,
        rss,
        cpu_seconds,
    })
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`), in clock ticks.
/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted from the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`);
/// Linux exposes USER_HZ = 100 on every common architecture, the fallback.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// The soft limit on open files of this process (from `/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_cpu_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as `comm` allows.
        let stat = "4242 (pilot (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    731 269 0 0 20 0 8 0 1234 5678 910 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(731 + 269));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_usage_is_readable_and_plausible() {
        let u = usage("self", clock_ticks()).unwrap();
        assert!(u.peak_rss >= u.rss && u.rss > 1024 * 1024, "{u:?}");
        assert!(open_files_limit().unwrap() > 0);
    }
}
