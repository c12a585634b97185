#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real sidecar against the real control plane: `lanemesh-proxy run
//! --discovery-addr` connected to `lanemesh-pilot --source local`, both as
//! processes on loopback.
//!
//! The binaries belong to other packages, so `CARGO_BIN_EXE_*` cannot name
//! them; `process::lanemesh_binaries` builds them with the cargo that runs the test
//! (same target directory and profile, a no-op when they are fresh) and
//! takes their paths from cargo's JSON messages rather than guessing the
//! target layout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lanemesh_e2e::process::{Binaries, ChildGuard, free_addr, http, lanemesh_binaries};
use lanemesh_e2e::scale::fixture::write_atomically;
use serde_json::Value;

const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const READY: Duration = Duration::from_secs(30);
/// Covers the sidecar's reconnect backoff after the restart (100 ms doubling,
/// full jitter) plus the pilot's poll and debounce.
const CONVERGE: Duration = Duration::from_secs(30);

fn binaries() -> &'static Binaries {
    static BUILT: OnceLock<Binaries> = OnceLock::new();
    BUILT.get_or_init(|| lanemesh_binaries(BUILD_TIMEOUT).unwrap())
}

const APPS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: front, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: front}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: back, namespace: shop}
spec: {clusterIP: 10.96.0.11, selector: {app: back}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: front-1, namespace: shop, labels: {app: front, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: back-1, namespace: shop, labels: {app: back, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "True", lastTransitionTime: "2026-12-07T10:00:00Z"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: back-2, namespace: shop, labels: {app: back, msePilotAutoEnable: "on", alicloud.service.tag: gray}}
status: {podIP: 10.0.0.3, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: unrelated, namespace: elsewhere}
spec: {clusterIP: 10.96.1.1, selector: {app: unrelated}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: unrelated-1, namespace: elsewhere, labels: {app: unrelated, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.1.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: back-breakers, namespace: shop}
spec:
  app: back
  dryRun: true
  rules:
  - {name: errors, strategy: ErrorRatio, threshold: 0.5}
---
apiVersion: lanemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: back-traffic, namespace: shop}
spec:
  app: back
  timeout: 1s
  retries: {attempts: 1}
  warmup: {duration: 120s}
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: unrelated-breakers, namespace: elsewhere}
spec:
  app: unrelated
  rules:
  - {name: errors, strategy: ErrorRatio, threshold: 0.5}
"#;

fn lanes(canary_value: &str) -> String {
    format!(
        r#"
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {{name: flow, namespace: shop}}
spec: {{apps: [front, back], entryApps: [front]}}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {{name: gray, namespace: shop}}
spec:
  group: flow
  tag: gray
  match:
    conditions: [{{source: Header, name: canary, operator: Equal, value: "{canary_value}"}}]
"#
    )
}

fn limits(threshold: u32) -> String {
    format!(
        r#"
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: front-limit, namespace: shop}}
spec:
  app: front
  rules:
  - name: all
    qps: {{threshold: {threshold}}}
"#
    )
}

/// The resource kinds as both planes name them: (config_dump, /debug/snapshot).
const KINDS: [(&str, &str); 5] = [
    ("Service", "services"),
    ("LaneGroup", "laneGroups"),
    ("InboundPolicy", "inboundPolicies"),
    ("OutboundPolicy", "outboundPolicies"),
    ("Workload", "workloads"),
];

/// name -> version, per config_dump kind.
type Held = BTreeMap<&'static str, BTreeMap<String, String>>;

struct Pilot {
    guard: ChildGuard,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl Pilot {
    fn start(dir: &Path, log: &Path, grpc: SocketAddr, admin: SocketAddr) -> Self {
        Self::start_with(dir, log, grpc, admin, &[])
    }

    fn start_with(
        dir: &Path,
        log: &Path,
        grpc: SocketAddr,
        admin: SocketAddr,
        extra: &[String],
    ) -> Self {
        let mut command = Command::new(&binaries().pilot);
        command
            .args(["--source", "local", "--dir"])
            .arg(dir)
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(extra)
            .env("RUST_LOG", "info");
        let mut guard = ChildGuard::spawn("lanemesh-pilot", command, log).unwrap();
        if let Err(e) = guard.wait_ready(admin, "/readyz", READY) {
            panic!("{e}\n{}", guard.log_tail(30));
        }
        Self { guard, grpc, admin }
    }

    /// What the pilot serves `shop/front-1`, in config_dump's terms.
    fn serves(&self) -> (Held, Value) {
        let (status, body) = http(self.admin, "GET", "/debug/snapshot?node=shop/front-1")
            .expect("pilot admin answers");
        assert_eq!(status, 200, "{body}");
        let snapshot: Value = serde_json::from_str(&body).unwrap();
        let mut held = Held::new();
        for (dump_kind, snap_kind) in KINDS {
            let list = snapshot[snap_kind].as_array().cloned().unwrap_or_default();
            held.insert(
                dump_kind,
                list.iter()
                    .map(|r| {
                        (
                            r["name"].as_str().unwrap().to_owned(),
                            r["version"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect(),
            );
        }
        (held, snapshot)
    }
}

struct Proxy {
    guard: ChildGuard,
    admin: SocketAddr,
    health: SocketAddr,
}

impl Proxy {
    fn start(discovery: SocketAddr, log: &Path) -> Self {
        Self::start_with(&discovery.to_string(), log, &[])
    }

    fn start_with(discovery: &str, log: &Path, extra: &[String]) -> Self {
        let (admin, health, metrics) = (
            free_addr().unwrap(),
            free_addr().unwrap(),
            free_addr().unwrap(),
        );
        let (outbound, inbound) = (free_addr().unwrap(), free_addr().unwrap());
        let mut command = Command::new(&binaries().proxy);
        command
            .args(["run", "--bind-address", "127.0.0.1"])
            .args(["--outbound-port", &outbound.port().to_string()])
            .args(["--inbound-port", &inbound.port().to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--health-addr", &health.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--discovery-addr", discovery])
            // No app or lane: the pilot knows the pod's labels (DESIGN §6, Workload).
            .args(["--pod-name", "front-1", "--pod-namespace", "shop"])
            .args(["--pod-ip", "10.0.0.1"])
            .args(["--grace-period", "2s"])
            .args(extra)
            .env("LANEMESH_LOG", "info");
        let guard = ChildGuard::spawn("lanemesh-proxy", command, log).unwrap();
        Self {
            guard,
            admin,
            health,
        }
    }

    fn ready(&self) -> bool {
        http(self.health, "GET", "/healthz/ready").is_some_and(|(s, _)| s == 200)
    }

    fn dump(&self) -> Value {
        let (status, body) = http(self.admin, "GET", "/config_dump").expect("proxy admin answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn held(&self) -> Held {
        let dump = self.dump();
        KINDS
            .iter()
            .map(|(kind, _)| {
                let list = dump["resources"][kind]["resources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                (
                    *kind,
                    list.iter()
                        .map(|r| {
                            (
                                r["name"].as_str().unwrap().to_owned(),
                                r["version"].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    }
}

fn names(held: &Held, kind: &str) -> Vec<String> {
    held[kind].keys().cloned().collect()
}

/// Polls until the sidecar holds exactly what the pilot serves and `check`
/// accepts it; returns what it holds.
fn converge(proxy: &Proxy, pilot: &Pilot, what: &str, check: impl Fn(&Held) -> bool) -> Held {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let held = proxy.held();
        let (served, _) = pilot.serves();
        if held == served && check(&held) {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not converged within {CONVERGE:?}\nsidecar holds {held:#?}\npilot serves {served:#?}\n\
             proxy log:\n{}\npilot log:\n{}",
            proxy.guard.log_tail(30),
            pilot.guard.log_tail(30),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sidecar_follows_the_pilot_and_survives_its_restart() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("source");
    std::fs::create_dir(&dir).unwrap();
    write_atomically(&dir, "apps.yaml", APPS).unwrap();
    write_atomically(&dir, "lanes.yaml", &lanes("gray")).unwrap();
    write_atomically(&dir, "limits.yaml", &limits(100)).unwrap();
    let (pilot_log, proxy_log) = (temp.path().join("pilot.log"), temp.path().join("proxy.log"));

    let mut pilot = Pilot::start(&dir, &pilot_log, free_addr().unwrap(), free_addr().unwrap());
    let proxy = Proxy::start(pilot.grpc, &proxy_log);
    let deadline = Instant::now() + READY;
    while !proxy.ready() {
        assert!(
            Instant::now() < deadline,
            "sidecar not ready within {READY:?}\n{}",
            proxy.guard.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // DESIGN §6: its namespace's Services (not `elsewhere`), its lane group,
    // its own inbound policy, and the outbound policy of the app it reaches.
    let held = converge(&proxy, &pilot, "first snapshot", |_| true);
    assert_eq!(names(&held, "Service"), ["shop/back", "shop/front"]);
    assert_eq!(names(&held, "LaneGroup"), ["shop/flow"]);
    assert_eq!(names(&held, "InboundPolicy"), ["shop/front"]);
    assert!(
        held["OutboundPolicy"].contains_key("shop/back"),
        "{held:#?}"
    );
    assert!(
        !held["OutboundPolicy"]
            .keys()
            .any(|n| n.starts_with("elsewhere/")),
        "{held:#?}"
    );
    // The TrafficPolicy and the endpoints' ready times, as the pilot serves them (and the
    // sidecar accepted: it holds the same versions).
    let (_, served) = pilot.serves();
    let back = served["outboundPolicies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "shop/back")
        .unwrap();
    assert_eq!(back["trafficPolicy"], "back-traffic", "{back}");
    assert_eq!(back["routes"][0]["timeout"], "1s0ns", "{back}");
    assert_eq!(back["routes"][0]["retries"], 1, "{back}");
    assert_eq!(back["warmup"], "120s0ns", "{back}");
    assert_eq!(back["breakers"][0], "back-breakers/errors", "{back}");
    assert_eq!(back["dryRunBreakers"][0], "back-breakers/errors", "{back}");
    let endpoints = served["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "shop/back")
        .unwrap()["endpoints"]
        .clone();
    let since = |pod: &str| {
        endpoints
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["pod"] == pod)
            .unwrap()["readySince"]
            .clone()
    };
    assert_eq!(since("back-1"), 1_796_637_600, "{endpoints}");
    assert_eq!(since("back-2"), Value::Null, "{endpoints}");
    let dump = proxy.dump();
    assert_eq!(dump["ready"], true, "{dump}");
    assert_eq!(dump["node"]["pod_name"], "front-1", "{dump}");
    assert_eq!(names(&held, "Workload"), ["shop/front-1"]);
    assert_eq!(
        dump["node"]["app"], "front",
        "from the pod's labels: {dump}"
    );
    assert_eq!(dump["node"]["lane_tag"], "", "{dump}");

    // Relabelled into the gray lane: the running sidecar follows, no restart.
    let gray = APPS.replace(
        "labels: {app: front, msePilotAutoEnable: \"on\"}",
        "labels: {app: front, msePilotAutoEnable: \"on\", alicloud.service.tag: gray}",
    );
    assert_ne!(gray, APPS);
    write_atomically(&dir, "apps.yaml", &gray).unwrap();
    let relabelled = converge(&proxy, &pilot, "relabel", |h| {
        h["Workload"] != held["Workload"]
    });
    assert_eq!(proxy.dump()["node"]["lane_tag"], "gray");
    write_atomically(&dir, "apps.yaml", APPS).unwrap();
    let held = converge(&proxy, &pilot, "label removed", |h| {
        h["Workload"] != relabelled["Workload"]
    });
    assert_eq!(proxy.dump()["node"]["lane_tag"], "");

    // A policy change in the directory reaches the running sidecar.
    write_atomically(&dir, "limits.yaml", &limits(7)).unwrap();
    let changed = converge(&proxy, &pilot, "rate limit change", |h| {
        h["InboundPolicy"] != held["InboundPolicy"]
    });
    let (_, snapshot) = pilot.serves();
    assert_eq!(
        snapshot["inboundPolicies"][0]["rules"][0]["qps"].as_f64(),
        Some(7.0),
        "the pilot serves the new threshold: {snapshot}"
    );
    assert_eq!(
        changed["LaneGroup"], held["LaneGroup"],
        "only the policy changed"
    );

    // The control plane crashes: the sidecar keeps serving its last snapshot.
    let (grpc, admin) = (pilot.grpc, pilot.admin);
    assert_eq!(proxy.dump()["discovery"]["connected"], true);
    pilot.guard.kill();
    // First the sidecar must notice (the killed process's sockets are reset),
    // else "still ready" would prove nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.dump()["discovery"]["connected"] != false {
        assert!(
            Instant::now() < deadline,
            "the sidecar did not notice the pilot was gone\n{}",
            proxy.guard.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(proxy.ready(), "the sidecar stays ready without its pilot");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(proxy.held(), changed, "the last snapshot stays in force");
    let dump = proxy.dump();
    assert_eq!(dump["ready"], true, "{dump}");
    assert!(
        dump["discovery"]["reconnect_attempts"].as_u64().unwrap() > 0,
        "it keeps trying: {dump}"
    );
    let connects_before = dump["discovery"]["connects"].as_u64().unwrap();

    // A change made while the pilot is down arrives after it restarts.
    write_atomically(&dir, "lanes.yaml", &lanes("blue")).unwrap();
    let pilot_log2 = temp.path().join("pilot-2.log");
    let pilot = Pilot::start(&dir, &pilot_log2, grpc, admin);
    let after = converge(
        &proxy,
        &pilot,
        "change made while the pilot was down",
        |h| h["LaneGroup"] != changed["LaneGroup"],
    );
    assert_eq!(after["InboundPolicy"], changed["InboundPolicy"]);
    assert!(proxy.ready());
    let dump = proxy.dump();
    assert_eq!(dump["discovery"]["connected"], true, "{dump}");
    assert!(
        dump["discovery"]["connects"].as_u64().unwrap() > connects_before,
        "the sidecar reconnected: {dump}"
    );

    let (status, _) = http(proxy.admin, "POST", "/shutdown").unwrap();
    assert_eq!(status, 200);
}

#[test]
fn discovery_over_tls_is_served_only_to_sidecars_that_trust_its_ca() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("source");
    std::fs::create_dir(&dir).unwrap();
    write_atomically(&dir, "apps.yaml", APPS).unwrap();
    let sans = ["localhost".to_owned()];
    let pki = lanemesh_e2e::cluster::ServingPki::new(&sans, "lanemesh-pilot").unwrap();
    let stranger = lanemesh_e2e::cluster::ServingPki::new(&sans, "lanemesh-pilot").unwrap();
    let file = |name: &str, text: &str| {
        let path = temp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key) = (
        file("tls.crt", &pki.cert_pem),
        file("tls.key", &pki.key_pem),
    );
    // The untrusted CA as a file path, the other form --discovery-ca takes.
    let other_ca = file("other.crt", &stranger.ca_pem);
    let pilot = Pilot::start_with(
        &dir,
        &temp.path().join("pilot.log"),
        free_addr().unwrap(),
        free_addr().unwrap(),
        &[
            format!("--grpc-tls-cert={cert}"),
            format!("--grpc-tls-key={key}"),
        ],
    );
    // The certificate names localhost, so the sidecar dials that name.
    let addr = format!("localhost:{}", pilot.grpc.port());
    // The CA as PEM text, the way injection passes it in LANEMESH_DISCOVERY_CA.
    let trusted = Proxy::start_with(
        &addr,
        &temp.path().join("trusted.log"),
        &[format!("--discovery-ca={}", pki.ca_pem)],
    );
    let untrusted = Proxy::start_with(
        &addr,
        &temp.path().join("untrusted.log"),
        &[format!("--discovery-ca={other_ca}")],
    );
    let plaintext = Proxy::start_with(&addr, &temp.path().join("plaintext.log"), &[]);
    let deadline = Instant::now() + READY;
    while !trusted.ready() {
        assert!(
            Instant::now() < deadline,
            "sidecar with the CA not ready within {READY:?}\n{}\npilot:\n{}",
            trusted.guard.log_tail(30),
            pilot.guard.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        names(&trusted.held(), "Service"),
        ["shop/back", "shop/front"]
    );
    // The others have had as long (and a few reconnects more) and got nothing.
    std::thread::sleep(Duration::from_secs(2));
    for (what, proxy) in [("another CA", &untrusted), ("no TLS", &plaintext)] {
        assert!(!proxy.ready(), "{what}: ready");
        assert!(
            proxy.held().values().all(BTreeMap::is_empty),
            "{what}: holds {:?}",
            proxy.held()
        );
    }
    assert!(
        untrusted.guard.log_tail(50).contains("certificate"),
        "{}",
        untrusted.guard.log_tail(50)
    );
}
