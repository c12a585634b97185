#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `lanemeshctl status` and `lanemeshctl proxy-config` against a real pilot (`--source local`)
//! with a real sidecar connected to it, both as processes on loopback.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use lanemesh_e2e::process::{ChildGuard, free_addr, lanemesh_binaries};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: front, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: front}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: front-1, namespace: shop, labels: {app: front, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: broken, namespace: shop}
spec:
  app: front
  rules: [{name: all, qps: {threshold: -1}}]
"#;

fn lanemeshctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lanemeshctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn status_and_proxy_config_show_what_the_pilot_serves_its_sidecars() {
    let bins = lanemesh_binaries(Duration::from_secs(20 * 60)).unwrap();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("source");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("objects.yaml"), OBJECTS).unwrap();
    let (grpc, admin): (SocketAddr, SocketAddr) = (free_addr().unwrap(), free_addr().unwrap());
    let mut pilot = Command::new(&bins.pilot);
    pilot.args(["--source", "local", "--dir"]).arg(&dir).args([
        "--grpc-addr",
        &grpc.to_string(),
        "--admin-addr",
        &admin.to_string(),
    ]);
    let mut pilot =
        ChildGuard::spawn("lanemesh-pilot", pilot, &temp.path().join("pilot.log")).unwrap();
    if let Err(e) = pilot.wait_ready(admin, "/readyz", Duration::from_secs(30)) {
        panic!("{e}\n{}", pilot.log_tail(30));
    }
    let mut proxy = Command::new(&bins.proxy);
    proxy
        .args([
            "run",
            "--bind-address",
            "127.0.0.1",
            "--drain-duration",
            "0s",
        ])
        .args(["--outbound-port", &free_addr().unwrap().port().to_string()])
        .args(["--inbound-port", &free_addr().unwrap().port().to_string()])
        .args(["--admin-addr", &free_addr().unwrap().to_string()])
        .args(["--health-addr", &free_addr().unwrap().to_string()])
        .args(["--metrics-addr", &free_addr().unwrap().to_string()])
        .args(["--discovery-addr", &grpc.to_string()])
        .args([
            "--pod-name",
            "front-1",
            "--pod-namespace",
            "shop",
            "--pod-ip",
            "10.0.0.1",
        ]);
    let proxy = ChildGuard::spawn("lanemesh-proxy", proxy, &temp.path().join("proxy.log")).unwrap();
    let pilot_arg = admin.to_string();

    // Until the sidecar has answered every response.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let (code, out, err) = lanemeshctl(&["status", "--pilot", &pilot_arg]);
        assert_eq!(code, 0, "{err}");
        if out.contains("shop/front-1") && out.contains("ACKed") {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no ACKed sidecar:\n{out}\n{}",
            proxy.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.starts_with(&format!("pilot {admin}: ready\n")), "{out}");
    let node = out.lines().find(|l| l.starts_with("shop/front-1")).unwrap();
    assert!(
        node.contains("front (sidecar)") && node.contains("Service=1"),
        "{out}"
    );
    let refused = out
        .lines()
        .find(|l| l.starts_with("RateLimitPolicy shop/broken"))
        .unwrap();
    assert!(refused.contains("spec.rules[0].qps.threshold"), "{out}");

    let (code, json, err) = lanemeshctl(&["status", "--pilot", &pilot_arg, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["sidecars"][0]["node"], "shop/front-1", "{json}");
    assert_eq!(
        status["sidecars"][0]["types"]["Service"]["pending"], 0,
        "{json}"
    );
    assert_eq!(
        status["sidecars"][0]["types"]["Workload"]["resources"], 1,
        "{json}"
    );

    let (code, out, err) = lanemeshctl(&["proxy-config", "shop/front-1", "--pilot", &pilot_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("services") && l.contains("shop/front")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("workloads") && l.contains("shop/front-1")),
        "{out}"
    );
    let (code, _, err) = lanemeshctl(&["proxy-config", "shop/nobody", "--pilot", &pilot_arg]);
    assert_eq!(code, 2);
    assert!(err.contains("no such governed pod"), "{err}");

    // Nobody at the address: a clear error, exit code 2.
    drop(proxy);
    drop(pilot);
    let (code, _, err) = lanemeshctl(&["status", "--pilot", &pilot_arg]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be reached"), "{err}");
}
