//! The `lanemesh-proxy` binary end to end: started with `--config-file` on
//! free loopback ports it becomes ready, serves metrics and its config, and
//! exits cleanly on `POST /shutdown`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanemesh_e2e::process::http;

fn free_addr() -> SocketAddr {
    lanemesh_e2e::process::free_addr().unwrap()
}

/// Kills the proxy if the test fails before it exits.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn config_file_proxy_gets_ready_serves_admin_and_stops_on_post_shutdown() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut yaml = String::new();
    for file in ["canary/apps.yaml", "canary/lanes.yaml", "rate-limit.yaml"] {
        yaml.push_str(&std::fs::read_to_string(format!("{root}/{file}")).unwrap());
        yaml.push_str("\n---\n");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml).unwrap();

    let (admin, health, metrics) = (free_addr(), free_addr(), free_addr());
    let (outbound, inbound) = (free_addr(), free_addr());
    let mut proxy = Proxy(
        Command::new(env!("CARGO_BIN_EXE_lanemesh-proxy"))
            .args(["run", "--bind-address", "127.0.0.1"])
            .args(["--outbound-port", &outbound.port().to_string()])
            .args(["--inbound-port", &inbound.port().to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--health-addr", &health.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--config-file", config.to_str().unwrap()])
            .args([
                "--app-name",
                "spring-cloud-a",
                "--pod-name",
                "a-1",
                "--pod-namespace",
                "canary-demo",
            ])
            .args(["--grace-period", "2s"])
            .env("LANEMESH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        match http(health, "GET", "/healthz/ready") {
            Some((200, body)) => break body,
            _ if Instant::now() > deadline => panic!("not ready within 20 s"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert!(ready.contains("ready"), "{ready}");

    let (status, text) = http(metrics, "GET", "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("lanemesh_lane_propagations_total{rule=\"trace_id\"} 0"),
        "{text}"
    );
    assert!(text.contains("lanemesh_config_ready 1"), "{text}");

    let (status, dump) = http(admin, "GET", "/config_dump").unwrap();
    assert_eq!(status, 200);
    assert!(
        dump.contains("canary-demo/order-flow") && dump.contains("canary-demo/spring-cloud-b"),
        "{dump}"
    );

    let (status, _) = http(admin, "POST", "/shutdown").unwrap();
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after POST /shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
}
