//! `lanemesh-proxy wait`: blocks until the proxy's health endpoint says ready.
//!
//! The injected `postStart` hook of a classic (non-native) sidecar runs it, so the kubelet
//! starts the app's containers only once the proxy has its first snapshot (what Istio calls
//! `holdApplicationUntilProxyStarts`). A blocking HTTP/1.0 GET every `--period`: no runtime is
//! needed for one request to loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use humantime::Duration as Human;

/// `lanemesh-proxy wait` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// The health listener to ask (`GET /healthz/ready`).
    #[arg(long, env = "LANEMESH_HEALTH_ADDR", default_value = "127.0.0.1:15021")]
    pub health_addr: SocketAddr,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "120s")]
    pub timeout: Human,
    /// Time between two checks.
    #[arg(long, default_value = "200ms")]
    pub period: Human,
}

/// The proxy did not become ready.
#[derive(Debug, thiserror::Error)]
#[error("the proxy at {addr} was not ready within {timeout:?} (last: {last})")]
pub struct NotReady {
    pub addr: SocketAddr,
    pub timeout: Duration,
    /// The last answer, or why there was none.
    pub last: String,
}

/// Returns once `GET /healthz/ready` answers 200, or fails after the timeout.
pub fn wait(args: &WaitArgs) -> Result<(), NotReady> {
    let deadline = Instant::now() + *args.timeout;
    loop {
        let last = match ready(args.health_addr, *args.period) {
            Ok(true) => return Ok(()),
            Ok(false) => "not ready".to_owned(),
            Err(error) => error.to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(NotReady {
                addr: args.health_addr,
                timeout: *args.timeout,
                last,
            });
        }
        std::thread::sleep((*args.period).min(deadline - now));
    }
}

/// One check: whether the status line is `HTTP/1.x 200`.
fn ready(addr: SocketAddr, timeout: Duration) -> std::io::Result<bool> {
    let timeout = timeout.max(Duration::from_millis(100));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /healthz/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    let head = &head[..read];
    Ok(head.starts_with(b"HTTP/1.") && head.get(8..13) == Some(b" 200 "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;

    fn args(addr: SocketAddr, timeout_ms: u64) -> WaitArgs {
        WaitArgs {
            health_addr: addr,
            timeout: Duration::from_millis(timeout_ms).into(),
            period: Duration::from_millis(20).into(),
        }
    }

    /// A health endpoint that answers 503 `not_ready` times, then 200.
    fn health(not_ready: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 256];
                let _ = stream.read(&mut buf);
                let status = if i < not_ready {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            }
        });
        addr
    }

    #[test]
    fn returns_once_ready() {
        wait(&args(health(3), 5_000)).unwrap();
    }

    #[test]
    fn fails_after_the_timeout_saying_why() {
        let error = wait(&args(health(usize::MAX), 200)).unwrap_err();
        assert_eq!(error.last, "not ready");
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = wait(&args(closed, 100)).unwrap_err();
        assert!(
            error.to_string().contains("was not ready within"),
            "{error}"
        );
        assert_ne!(error.last, "not ready");
    }
}
