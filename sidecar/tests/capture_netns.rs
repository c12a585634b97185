//! Transparent capture for real (root only): two network namespaces joined by a veth pair, the
//! `lanemesh-proxy` binary running as UID 1337 behind its own `init` rules in the "client pod",
//! and an unmodified app there (Python's urllib) calling a Service cluster IP that exists
//! nowhere. Only the iptables capture plus lanemesh's routing can deliver that request to the
//! server pod in the other namespace.
//!
//! A second test attacks a pod with a sidecar from a pod without one: the sidecar's own ports
//! and the app's loopback-only ports must not be reachable through inbound capture.
//!
//! Skips with a message without root; as root a missing tool (`ip`, `iptables`, `setpriv`,
//! `python3`, all installed by `make test`) fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const CLUSTER_IP: &str = "10.96.77.77";
const GREETING: &str = "hello from the server pod";

/// The tools the tests run; `make test` installs them.
const TOOLS: &[&str] = &[
    "ip",
    "iptables-save",
    "ip6tables-save",
    "setpriv",
    "python3",
];

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces `client` and `server` on a /30 veth link; deleted on drop.
struct Pods {
    client: String,
    server: String,
    client_ip: String,
    server_ip: String,
    /// The server pod's IPv6 address (the pods are dual-stack).
    server_ip6: String,
    children: Vec<Child>,
}

impl Pods {
    fn new() -> Self {
        // Unique per test in this process too: the tests of this file run in parallel.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = (std::process::id() % 1_000) * 10 + NEXT.fetch_add(1, Ordering::SeqCst) % 10;
        let octet = 1 + id % 250;
        let pods = Self {
            client: format!("lm-cap-c-{id}"),
            server: format!("lm-cap-s-{id}"),
            client_ip: format!("10.209.{octet}.1"),
            server_ip: format!("10.209.{octet}.2"),
            server_ip6: format!("fd00:209:{octet}::2"),
            children: Vec::new(),
        };
        let (veth_c, veth_s) = (format!("lmcc{id}"), format!("lmcs{id}"));
        run("ip", &["netns", "add", &pods.client]);
        run("ip", &["netns", "add", &pods.server]);
        run(
            "ip",
            &[
                "link", "add", &veth_c, "type", "veth", "peer", "name", &veth_s,
            ],
        );
        run("ip", &["link", "set", &veth_c, "netns", &pods.client]);
        run("ip", &["link", "set", &veth_s, "netns", &pods.server]);
        for (ns, veth, ip, ip6) in [
            (
                &pods.client,
                &veth_c,
                &pods.client_ip,
                format!("fd00:209:{octet}::1"),
            ),
            (
                &pods.server,
                &veth_s,
                &pods.server_ip,
                pods.server_ip6.clone(),
            ),
        ] {
            let cidr = format!("{ip}/30");
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", veth]);
            // nodad: usable at once, without duplicate address detection's wait.
            let cidr6 = format!("{ip6}/64");
            run(
                "ip",
                &["-n", ns, "-6", "addr", "add", &cidr6, "dev", veth, "nodad"],
            );
            run("ip", &["-n", ns, "link", "set", veth, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // The app resolves the cluster IP to a route like any pod would (kube-proxy's job here
        // is done by the sidecar).
        run(
            "ip",
            &[
                "-n",
                &pods.client,
                "route",
                "add",
                "default",
                "via",
                &pods.server_ip,
            ],
        );
        pods
    }

    /// Starts `program` in `ns`; returns its index in `children`.
    fn spawn(&mut self, ns: &str, program: &str, args: &[&str]) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// Whether the child at `index` is still running.
    fn running(&mut self, index: usize) -> bool {
        self.children[index].try_wait().unwrap().is_none()
    }

    /// The body of `GET url` made by Python's urllib inside `ns` as root (so it is captured).
    fn fetch(&self, ns: &str, url: &str) -> Result<String, String> {
        self.request(ns, "GET", url)
    }

    /// The body of `method url` made by Python's urllib inside `ns` as root.
    fn request(&self, ns: &str, method: &str, url: &str) -> Result<String, String> {
        let script = format!(
            "import urllib.request\n\
             req = urllib.request.Request('{url}', method='{method}', data=b'' if '{method}' == 'POST' else None)\n\
             print(urllib.request.urlopen(req, timeout=5).read().decode())"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn wait_for(&self, ns: &str, url: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.fetch(ns, url) {
                Ok(body) => return body,
                Err(error) if Instant::now() > deadline => panic!("{what}: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The client pod's view of the world: Service `web` (cluster IP [`CLUSTER_IP`], port 80)
/// backed by the server pod on 8080.
fn config(server_ip: &str, client_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  clusterIP: {CLUSTER_IP}
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  labels: {{app: web, msePilotAutoEnable: "on"}}
spec:
  containers: [{{name: app, image: example.invalid/web:1}}]
status: {{podIP: {server_ip}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: client-1
  namespace: demo
  labels: {{app: client, msePilotAutoEnable: "on"}}
spec:
  containers: [{{name: app, image: example.invalid/client:1}}]
status: {{podIP: {client_ip}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [{server_ip}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: web-1, namespace: demo}}
"#
    )
}

#[test]
fn an_app_call_to_a_cluster_ip_is_captured_and_reaches_the_other_pod() {
    if !support::root::can_run_as_root("capture_netns", TOOLS) {
        return;
    }
    let mut pods = Pods::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), GREETING).unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        config(&pods.server_ip, &pods.client_ip),
    )
    .unwrap();
    // The proxy (UID 1337) must read its config file.
    run("chmod", &["755", dir.path().to_str().unwrap()]);
    run(
        "chmod",
        &["644", dir.path().join("config.yaml").to_str().unwrap()],
    );

    let server = pods.server.clone();
    let server_ip = pods.server_ip.clone();
    let web_root = dir.path().to_str().unwrap().to_owned();
    pods.spawn(
        &server,
        "python3",
        &[
            "-m",
            "http.server",
            "8080",
            "--bind",
            &server_ip,
            "--directory",
            &web_root,
        ],
    );

    let client = pods.client.clone();
    let config_file = dir.path().join("config.yaml");
    spawn_sidecar(
        &mut pods,
        &client,
        config_file.to_str().unwrap(),
        "client",
        "client-1",
    );

    // Direct to the server pod: the server is up (the proxy passes this through once running).
    let direct = format!("http://{}:8080/index.html", pods.server_ip);
    pods.wait_for(&client, &direct, "the server pod never answered");
    pods.wait_for(
        &client,
        "http://127.0.0.1:15021/healthz/ready",
        "the sidecar never became ready",
    );

    let body = pods.wait_for(
        &client,
        &format!("http://{CLUSTER_IP}/index.html"),
        "the cluster IP call was not captured and routed",
    );
    assert_eq!(body.trim(), GREETING);

    // The sidecar saw it: its metrics count the outbound request to app `web` (recorded when
    // the proxy drops the request, which may be just after the client read the body).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = pods
            .fetch(&client, "http://127.0.0.1:15020/metrics")
            .unwrap();
        let counted = metrics
            .lines()
            .any(|l| l.starts_with("lanemesh_requests_total{direction=\"outbound\",app=\"web\""));
        if counted {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `lanemesh-proxy` as UID 1337 in `ns` with `config_file`, as pod `pod` of app `app`.
fn spawn_sidecar(pods: &mut Pods, ns: &str, config_file: &str, app: &str, pod: &str) -> usize {
    let proxy = env!("CARGO_BIN_EXE_lanemesh-proxy");
    run("ip", &["netns", "exec", ns, proxy, "init"]);
    pods.spawn(
        ns,
        "setpriv",
        &[
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            proxy,
            "run",
            "--config-file",
            config_file,
            "--app-name",
            app,
            "--pod-name",
            pod,
            "--pod-namespace",
            "demo",
            "--grace-period",
            "1s",
        ],
    )
}

#[test]
fn another_pod_reaches_the_app_but_not_the_sidecars_ports_or_loopback_only_apps() {
    if !support::root::can_run_as_root("capture_netns", TOOLS) {
        return;
    }
    let mut pods = Pods::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), GREETING).unwrap();
    let config_file = dir.path().join("config.yaml");
    std::fs::write(&config_file, config(&pods.server_ip, &pods.client_ip)).unwrap();
    run("chmod", &["755", dir.path().to_str().unwrap()]);
    run("chmod", &["644", config_file.to_str().unwrap()]);

    // The server pod: an app on every address (8080), a debug port bound to loopback only
    // (9090, like pprof or an actuator), and the sidecar behind its capture rules.
    let (server, server_ip) = (pods.server.clone(), pods.server_ip.clone());
    let web_root = dir.path().to_str().unwrap().to_owned();
    // `::` serves IPv4 and IPv6 (Python's dual-stack server).
    for (port, bind) in [("8080", "::"), ("9090", "127.0.0.1")] {
        pods.spawn(
            &server,
            "python3",
            &[
                "-m",
                "http.server",
                port,
                "--bind",
                bind,
                "--directory",
                &web_root,
            ],
        );
    }
    let sidecar = spawn_sidecar(
        &mut pods,
        &server,
        config_file.to_str().unwrap(),
        "web",
        "web-1",
    );
    pods.wait_for(
        &server,
        "http://127.0.0.1:15021/healthz/ready",
        "the sidecar never became ready",
    );
    pods.wait_for(
        &server,
        "http://127.0.0.1:9090/index.html",
        "the loopback-only app never answered inside its pod",
    );

    // The client pod has no sidecar: its requests leave as they are.
    let client = pods.client.clone();
    let app = format!("http://{server_ip}:8080/index.html");
    let body = pods.wait_for(
        &client,
        &app,
        "the app is not reachable through the sidecar",
    );
    assert_eq!(body.trim(), GREETING);

    // The pod is dual-stack: `init` captured IPv6 as well, and the sidecar serves it.
    let server_ip6 = format!("[{}]", pods.server_ip6);
    let app6 = format!("http://{server_ip6}:8080/index.html");
    let body = pods.wait_for(&client, &app6, "the app is not reachable over IPv6");
    assert_eq!(body.trim(), GREETING);

    for ip in [&server_ip, &server_ip6] {
        let attacks = [
            ("GET", format!("http://{ip}:15000/config_dump")),
            ("POST", format!("http://{ip}:15000/logging?level=trace")),
            ("POST", format!("http://{ip}:15000/shutdown")),
            ("GET", format!("http://{ip}:15001/")),
            ("GET", format!("http://{ip}:15006/")),
            ("GET", format!("http://{ip}:9090/index.html")),
        ];
        for (method, url) in &attacks {
            let answer = pods.request(&client, method, url);
            assert!(answer.is_err(), "{method} {url} answered: {answer:?}");
        }
    }

    // The sidecar is still running and serving, and it did deliver the app's requests.
    std::thread::sleep(Duration::from_millis(500));
    assert!(pods.running(sidecar), "the sidecar stopped");
    let body = pods.fetch(&client, &app).unwrap();
    assert_eq!(body.trim(), GREETING);
    let metrics = pods
        .fetch(&server, "http://127.0.0.1:15020/metrics")
        .unwrap();
    let inbound: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("lanemesh_requests_total{direction=\"inbound\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        inbound >= 3.0,
        "the app's IPv4 and IPv6 requests did not all go through the sidecar:\n{metrics}"
    );
}
