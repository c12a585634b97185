//! Child processes that cannot outlive the test that started them.
//!
//! Two mechanisms, because `Drop` alone does not run when the test binary is killed (a CI
//! timeout, Ctrl-C, `panic = "abort"`):
//! - [`Supervisor`]'s drop kills and reaps every child (this covers ordinary ends and panics);
//! - each child is started through `setpriv --pdeathsig KILL`, so the kernel kills it when its
//!   parent goes away. The parent-death signal fires when the *thread* that forked exits, so all
//!   children are forked from one supervisor thread that lives exactly as long as the
//!   [`Supervisor`]; forking from a tokio worker or blocking-pool thread could kill the cluster
//!   mid-test when that thread retires.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, anyhow};

/// One started child: its name (for messages), pid and log file.
#[derive(Debug, Clone)]
pub(crate) struct Started {
    pub(crate) name: String,
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
}

enum Request {
    Spawn {
        name: String,
        // Boxed: a Command is ~200 bytes, the other variant a pointer.
        command: Box<Command>,
        reply: mpsc::Sender<io::Result<u32>>,
    },
    /// Which children have exited, with their status.
    Exited {
        reply: mpsc::Sender<Vec<(String, ExitStatus)>>,
    },
}

#[derive(Debug)]
pub(crate) struct Supervisor {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    started: Vec<Started>,
    setpriv: Option<PathBuf>,
}

impl Supervisor {
    pub(crate) fn new() -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("lanemesh-cluster-supervisor".into())
            .spawn(move || supervise(rx))
            .context("starting the process supervisor thread")?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
            started: Vec::new(),
            setpriv: find_on_path("setpriv"),
        })
    }

    /// Starts `program args...` with stdout and stderr appended to `log`.
    pub(crate) fn spawn<I, S>(
        &mut self,
        name: &str,
        program: &Path,
        args: I,
        log: &Path,
    ) -> Result<Started>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);

        let (reply, answer) = mpsc::channel();
        self.send(Request::Spawn {
            name: name.to_owned(),
            command: Box::new(command),
            reply,
        })?;
        let pid = answer
            .recv()
            .map_err(|_| anyhow!("process supervisor thread is gone"))?
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let started = Started {
            name: name.to_owned(),
            pid,
            log: log.to_owned(),
        };
        self.started.push(started.clone());
        Ok(started)
    }

    /// Children that have exited so far (a healthy cluster has none).
    pub(crate) fn exited(&self) -> Result<Vec<(String, ExitStatus)>> {
        let (reply, answer) = mpsc::channel();
        self.send(Request::Exited { reply })?;
        answer
            .recv()
            .map_err(|_| anyhow!("process supervisor thread is gone"))
    }

    pub(crate) fn started(&self) -> &[Started] {
        &self.started
    }

    fn send(&self, request: Request) -> Result<()> {
        self.requests
            .as_ref()
            .and_then(|tx| tx.send(request).ok())
            .ok_or_else(|| anyhow!("process supervisor thread is gone"))
    }

    /// Kills and reaps all children; idempotent.
    pub(crate) fn shutdown(&mut self) {
        // Closing the channel is the supervisor's signal to tear down.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn supervise(requests: mpsc::Receiver<Request>) {
    let mut children: Vec<(String, Child)> = Vec::new();
    for request in requests {
        match request {
            Request::Spawn {
                name,
                mut command,
                reply,
            } => {
                let result = command.spawn().map(|child| {
                    let pid = child.id();
                    children.push((name, child));
                    pid
                });
                let _ = reply.send(result);
            }
            Request::Exited { reply } => {
                let exited = children
                    .iter_mut()
                    .filter_map(|(name, child)| {
                        child
                            .try_wait()
                            .ok()
                            .flatten()
                            .map(|status| (name.clone(), status))
                    })
                    .collect();
                let _ = reply.send(exited);
            }
        }
    }
    // SIGKILL rather than a graceful stop: the data directory is deleted next anyway, and a
    // graceful kube-apiserver shutdown waits for in-flight watches (seconds per test).
    // Reverse order so the API server goes before the etcd it talks to.
    for (_, child) in children.iter_mut().rev() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The last `lines` lines of a log file (best effort, for error messages).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
