//! `make demo`: the product, live, without Kubernetes. The pilot serves a local directory, the
//! gateway (`lanemesh-proxy gateway`) and the seed's apps A, A-gray, B, C and C-gray run each in
//! a network namespace of their own, the apps (the Go demo app, which forwards no header) behind
//! the real `lanemesh-proxy init` rules and a sidecar running as UID 1337. The steps of seed 002
//! and 003 are then walked through the gateway: each prints the command and what came back, and
//! is checked, so the same code is the demo (`lanemesh-demo`) and its test (`tests/demo.rs`).
//!
//! # Layout
//! - [`net`]: pods as network namespaces on one bridge.
//! - [`topology`]: the pods and the YAML the pilot's directory holds.

pub mod net;
pub mod topology;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::otlp::{OtlpReceiver, ReceivedSpan};
use crate::process::{Binaries, ChildGuard, free_addr, http};
use net::Net;
use topology::{APPS, Topology};

/// How long a configuration change may take to reach every proxy (the pilot polls its
/// directory every 200 ms and debounces 50 ms).
const CONVERGE: Duration = Duration::from_secs(20);
/// Requests of the percentage step: 30 % of 300 is 90, standard deviation 7.9.
pub const PERCENT_REQUESTS: u32 = 300;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `lanemesh-pilot` and `lanemesh-proxy`.
    pub binaries: Binaries,
    /// The Go demo app (`e2e/apps/build.sh go`).
    pub app: PathBuf,
    /// The repository's `examples/` directory.
    pub examples: PathBuf,
    /// Where the pilot's directory and the logs go.
    pub work_dir: PathBuf,
}

/// Everything the demo started; dropping it (or [`Teardown::run`]) stops the processes and
/// removes the namespaces and the bridge.
#[derive(Debug, Default)]
pub struct Running {
    children: Vec<ChildGuard>,
    net: Option<Net>,
}

/// A handle that tears the demo down from another thread (Ctrl-C).
#[derive(Debug, Clone, Default)]
pub struct Teardown(Arc<Mutex<Running>>);

impl Teardown {
    /// Stops every process, then removes the namespaces and the bridge. Idempotent.
    pub fn run(&self) {
        let mut running = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for child in &mut running.children {
            child.kill();
        }
        running.children.clear();
        running.net = None;
    }

    fn push(&self, child: ChildGuard) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .children
            .push(child);
    }
}

/// The running demo.
#[derive(Debug)]
pub struct Demo {
    topology: Topology,
    dir: PathBuf,
    gateway: SocketAddr,
    gateway_metrics: SocketAddr,
    /// Receives every proxy's request spans (OTLP/gRPC on the host's bridge address).
    spans: Spans,
    /// The pilot's admin address (debug endpoints on loopback).
    pilot_admin: SocketAddr,
    /// The pilot's web console.
    console: SocketAddr,
    /// `lanemeshctl`.
    ctl: PathBuf,
    teardown: Teardown,
}

/// The OTLP receiver and the runtime it is served on (the demo itself is blocking code).
#[derive(Debug)]
struct Spans {
    receiver: Option<OtlpReceiver>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Spans {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.teardown.run();
    }
}

impl Demo {
    /// Creates the pods, starts the pilot, the sidecars, the apps and the gateway, and waits
    /// until every one is ready. Root only.
    pub fn start(options: &Options, teardown: Teardown) -> Result<Self> {
        ensure!(
            crate::cluster::is_root(),
            "the live demo needs root (network namespaces, iptables), as `make test` does"
        );
        for tool in ["ip", "iptables-restore", "setpriv"] {
            ensure!(
                which(tool),
                "{tool} is missing (packages iproute2, iptables, util-linux)"
            );
        }
        let dir = options.work_dir.join("pilot");
        let logs = options.work_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&logs)?;
        let topology = Topology::new(&options.examples)?;
        topology.write_initial(&dir)?;

        // Handed to the teardown at once, so a Ctrl-C while the pods are created removes them.
        teardown
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .net = Some(Net::create()?);
        let host = Net::host_ip();
        let mut pods = BTreeMap::new();
        for app in APPS.iter().chain([&topology::GATEWAY]) {
            let pod = teardown
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .net
                .as_mut()
                .context("torn down while starting")?
                .pod(app.pod, app.host)?;
            pods.insert(app.pod, pod);
        }

        let grpc: SocketAddr = format!("{host}:15010").parse()?;
        let spans = {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let receiver = runtime
                .block_on(OtlpReceiver::start(format!("{host}:4317").parse()?))
                .context("the OTLP receiver")?;
            Spans {
                receiver: Some(receiver),
                runtime: Some(runtime),
            }
        };
        let trace_endpoint = format!("http://{host}:4317");
        let pilot_admin = free_addr()?;
        let console = free_addr()?;
        let pilot = ChildGuard::spawn(
            "lanemesh-pilot",
            {
                let mut command = std::process::Command::new(&options.binaries.pilot);
                command
                    .args(["--source", "local", "--dir"])
                    .arg(&dir)
                    .args(["--grpc-addr", &grpc.to_string()])
                    .args(["--admin-addr", &pilot_admin.to_string()])
                    // The traffic view of `lanemeshctl lanes` and the console.
                    .args(["--scrape-interval", "1s"])
                    // The console, with lane switches (they rewrite the Lane's file).
                    .args(["--console-addr", &console.to_string(), "--console-writes"])
                    .env("RUST_LOG", "info");
                command
            },
            &logs.join("pilot.log"),
        )?;
        // Every child goes to the teardown as soon as it exists, so Ctrl-C stops it.
        teardown.push(pilot);
        wait(Instant::now() + CONVERGE, "the pilot ready", || {
            http(pilot_admin, "GET", "/readyz").is_some_and(|(s, _)| s == 200)
        })?;

        let discovery = format!("http://{grpc}");
        let proxy = &options.binaries.proxy;
        for app in &APPS {
            let pod = &pods[app.pod];
            pod.run(proxy, &["init"])?;
            let sidecar = pod.spawn(
                &format!("sidecar of {}", app.pod),
                proxy,
                &[
                    "run",
                    "--discovery-addr",
                    &discovery,
                    "--pod-name",
                    app.pod,
                    "--pod-namespace",
                    topology::NS,
                    "--pod-ip",
                    &pod.ip,
                    "--grace-period",
                    "1s",
                ],
                &[
                    ("LANEMESH_LOG", "info"),
                    ("LANEMESH_TRACE_ENDPOINT", &trace_endpoint),
                    ("LANEMESH_TRACE_SAMPLING", "1"),
                    // What the webhook sets from the pod's app label.
                    ("LANEMESH_TRACE_SERVICE_NAME", app.service),
                ],
                Some(1337),
                &logs.join(format!("{}-proxy.log", app.pod)),
            )?;
            teardown.push(sidecar);
            let mut args = vec![
                format!("--name={}", app.name),
                format!("--port={}", app.port),
            ];
            if let Some(next) = app.next {
                let next = APPS
                    .iter()
                    .find(|a| a.service == next)
                    .context("next app")?;
                args.push(format!(
                    "--next=http://{}:{}",
                    topology::cluster_ip(next),
                    next.port
                ));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let app_child = pod.spawn(
                app.name,
                &options.app,
                &args,
                &[("POD_IP", &pod.ip)],
                None,
                &logs.join(format!("{}.log", app.pod)),
            )?;
            teardown.push(app_child);
        }
        let gateway_pod = &pods[topology::GATEWAY.pod];
        let gateway: SocketAddr = format!("{}:8080", gateway_pod.ip).parse()?;
        let gateway_metrics: SocketAddr = format!("{}:15020", gateway_pod.ip).parse()?;
        let gateway_child = gateway_pod.spawn(
            "lanemesh-gateway",
            proxy,
            &[
                "gateway",
                "--port",
                "8080",
                "--discovery-addr",
                &discovery,
                "--pod-name",
                topology::GATEWAY.pod,
                "--pod-namespace",
                "lanemesh-system",
                "--app-name",
                "lanemesh-gateway",
                "--grace-period",
                "1s",
                // A fixed seed for the lane draws: the percentage step is one reproducible
                // sample for the same sequence of requests.
                "--lane-seed",
                "30",
            ],
            &[
                ("LANEMESH_LOG", "info"),
                ("LANEMESH_TRACE_ENDPOINT", &trace_endpoint),
                ("LANEMESH_TRACE_SAMPLING", "1"),
            ],
            None,
            &logs.join("gateway.log"),
        )?;
        teardown.push(gateway_child);

        let demo = Self {
            topology,
            dir,
            gateway,
            gateway_metrics,
            spans,
            pilot_admin,
            console,
            ctl: options.binaries.ctl.clone(),
            teardown,
        };
        // Every proxy holds its configuration, every app answers through its sidecar.
        let deadline = Instant::now() + CONVERGE;
        for (name, pod) in &pods {
            let health: SocketAddr = format!("{}:15021", pod.ip).parse()?;
            wait(deadline, &format!("the proxy of {name} ready"), || {
                http(health, "GET", "/healthz/ready").is_some_and(|(s, _)| s == 200)
            })?;
        }
        for app in &APPS {
            let addr: SocketAddr = format!("{}:{}", pods[app.pod].ip, app.port).parse()?;
            wait(deadline, &format!("{} answering", app.name), || {
                http(addr, "GET", "/healthz").is_some_and(|(s, _)| s == 200)
            })?;
        }
        Ok(demo)
    }

    /// The gateway's address, for the user's own curl.
    pub fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    /// The web console's address: `http://<this>/`.
    pub fn console_url(&self) -> String {
        format!("http://{}/", self.console)
    }

    /// Where the proxies export their spans.
    pub fn otlp_endpoint(&self) -> Option<String> {
        self.spans.receiver.as_ref().map(OtlpReceiver::endpoint)
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans
            .receiver
            .as_ref()
            .map(|r| r.spans())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// The gateway's metrics address.
    pub fn gateway_metrics(&self) -> SocketAddr {
        self.gateway_metrics
    }

    /// The pilot's directory: the YAML it serves.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `count` requests `GET path` to the gateway with `headers`: each distinct answer (status
    /// and body without the `[ip][config=..]` parts) -> count.
    pub fn send(&self, host: &str, path: &str, headers: &[(&str, &str)], count: u32) -> Answers {
        let mut answers = Answers::new();
        for _ in 0..count {
            let key = match get(self.gateway, host, path, headers) {
                Ok((status, body)) => format!("{status} {}", strip_details(&body)),
                Err(error) => format!("error {error:#}"),
            };
            *answers.entry(key).or_default() += 1;
        }
        answers
    }

    /// Sends until 30 answers in a row are `want` (a configuration change reached every proxy;
    /// so many that a Percentage lane still in force is noticed: 0.7^30 is 2e-5).
    fn converge(&self, host: &str, path: &str, headers: &[(&str, &str)], want: &str) -> Result<()> {
        let deadline = Instant::now() + CONVERGE;
        let mut streak = 0;
        loop {
            let answers = self.send(host, path, headers, 10);
            if answers.len() == 1 && answers.contains_key(want) {
                streak += 1;
                if streak == 3 {
                    return Ok(());
                }
                continue;
            }
            streak = 0;
            if Instant::now() > deadline {
                bail!("still {answers:?} after {CONVERGE:?}, expected only {want:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Each distinct answer -> how many times it came.
pub type Answers = BTreeMap<String, u32>;

/// The answers of the chain in the base and gray lanes.
pub const BASE: &str = "200 A -> B -> C";
pub const GRAY: &str = "200 Agray -> B -> Cgray";

/// What one step printed.
#[derive(Debug, Clone)]
pub struct Step {
    pub title: String,
    pub command: String,
    pub shown: String,
}

/// Walks the steps, calling `report` as each one completes; the first step that does not show
/// what it should is the error.
pub fn run(demo: &Demo, report: &mut dyn FnMut(&Step)) -> Result<()> {
    let gw = demo.gateway();
    let curl = |headers: &str, path: &str| format!("curl {headers}http://{gw}{path}");
    let mut step = |title: &str, command: String, shown: String| {
        report(&Step {
            title: title.to_owned(),
            command,
            shown,
        });
    };

    // Seed 002, base: no lane yet.
    let (status, body) = get(gw, "shop.example.com", "/a", &[])?;
    ensure!(
        status == 200 && strip_details(&body) == "A -> B -> C",
        "base: {status} {body}"
    );
    step("base traffic through the gateway", curl("", "/a"), body);

    // The Lane: `canary: gray` enters lane gray at the gateway, the first hop.
    demo.topology
        .write_lane(demo.dir(), topology::LaneMode::Content)?;
    demo.converge("shop.example.com", "/a", &[("canary", "gray")], GRAY)?;
    let gray = demo.send("shop.example.com", "/a", &[("canary", "gray")], 10);
    let base = demo.send("shop.example.com", "/a", &[], 10);
    ensure!(gray.get(GRAY) == Some(&10), "gray lane: {gray:?}");
    ensure!(base.get(BASE) == Some(&10), "beside it, base: {base:?}");
    let (_, body) = get(gw, "shop.example.com", "/a", &[("canary", "gray")])?;
    step(
        "Lane gray created (examples/canary/lanes.yaml): the gateway decides",
        curl("-H 'canary: gray' ", "/a"),
        format!("{body}\n10 x canary: gray -> {gray:?}\n10 x no header  -> {base:?}"),
    );

    // Edge trust: a client's own tag is removed; a trusted route keeps it.
    let spoofed = demo.send("shop.example.com", "/a", &[("x-mse-tag", "gray")], 5);
    let baggage = demo.send(
        "shop.example.com",
        "/a",
        &[("baggage", "x-mse-tag=gray")],
        5,
    );
    ensure!(spoofed.get(BASE) == Some(&5), "spoofed tag: {spoofed:?}");
    ensure!(
        baggage.get(BASE) == Some(&5),
        "spoofed baggage: {baggage:?}"
    );
    let trusted = demo.send("partner.example.com", "/a", &[("x-mse-tag", "gray")], 5);
    ensure!(trusted.get(GRAY) == Some(&5), "trusted route: {trusted:?}");
    traced_gray_request(demo, &mut step)?;
    lanes_with_qps(demo, &mut step)?;
    console(demo, &mut step)?;

    step(
        "a lane tag sent from outside is removed, unless the route trusts its clients",
        format!(
            "{}\n{}",
            curl("-H 'x-mse-tag: gray' ", "/a"),
            curl("-H 'Host: partner.example.com' -H 'x-mse-tag: gray' ", "/a")
        ),
        format!("untrusted: {spoofed:?}\ntrusted route partner: {trusted:?}"),
    );

    // Percentage lane: 30 %.
    demo.topology
        .write_lane(demo.dir(), topology::LaneMode::Percentage(30))?;
    wait(Instant::now() + CONVERGE, "the percentage lane", || {
        demo.send("shop.example.com", "/a", &[("canary", "gray")], 20)
            .len()
            > 1
    })?;
    let split = demo.send("shop.example.com", "/a", &[], PERCENT_REQUESTS);
    let in_gray = split.get(GRAY).copied().unwrap_or(0);
    let in_base = split.get(BASE).copied().unwrap_or(0);
    ensure!(
        in_gray + in_base == PERCENT_REQUESTS,
        "percentage: unexpected answers {split:?}"
    );
    // 90 +- 30 is beyond 3.8 standard deviations.
    ensure!(
        (60..=120).contains(&in_gray),
        "percentage: {in_gray} of {PERCENT_REQUESTS} in gray, expected about 90"
    );
    step(
        "routingMode Percentage, lane gray weight 30",
        format!(
            "for i in $(seq {PERCENT_REQUESTS}); do {}; done",
            curl("", "/a")
        ),
        format!(
            "gray {in_gray} ({:.0} %), base {in_base} ({:.0} %)",
            f64::from(in_gray) * 100.0 / f64::from(PERCENT_REQUESTS),
            f64::from(in_base) * 100.0 / f64::from(PERCENT_REQUESTS)
        ),
    );

    // The lane disabled: everything base.
    demo.topology
        .write_lane(demo.dir(), topology::LaneMode::Disabled)?;
    demo.converge("shop.example.com", "/a", &[("canary", "gray")], BASE)?;
    let disabled = demo.send("shop.example.com", "/a", &[("canary", "gray")], 10);
    ensure!(
        disabled.get(BASE) == Some(&10),
        "lane disabled: {disabled:?}"
    );
    step(
        "Lane gray disabled (enabled: false)",
        curl("-H 'canary: gray' ", "/a"),
        format!("{disabled:?}"),
    );

    // Gray C gone: gray requests fall back to base C.
    demo.topology
        .write_lane(demo.dir(), topology::LaneMode::Content)?;
    demo.topology
        .write_pods(demo.dir(), &["spring-cloud-c-gray-0"])?;
    demo.converge(
        "shop.example.com",
        "/a",
        &[("canary", "gray")],
        "200 Agray -> B -> C",
    )?;
    let fallback = demo.send("shop.example.com", "/a", &[("canary", "gray")], 10);
    ensure!(
        fallback.get("200 Agray -> B -> C") == Some(&10),
        "gray C gone: {fallback:?}"
    );
    step(
        "Lane gray enabled again, gray C scaled to 0: base fallback",
        curl("-H 'canary: gray' ", "/a"),
        format!("{fallback:?}"),
    );
    demo.topology.write_pods(demo.dir(), &[])?;
    demo.converge("shop.example.com", "/a", &[("canary", "gray")], GRAY)?;

    // Seed 003: /greet1a at 1 QPS per pod with its custom 429.
    std::thread::sleep(Duration::from_millis(1100));
    let limited = demo.send("shop.example.com", "/greet1a", &[], 6);
    let free = demo.send("shop.example.com", "/greet1b", &[], 6);
    let rejected = "429 greet1a is limited to 1 request per second, please retry";
    ensure!(
        limited.get(rejected) == Some(&5) && limited.len() == 2,
        "greet1a: {limited:?}"
    );
    ensure!(
        free.len() == 1 && free.keys().all(|k| k.starts_with("200 ")),
        "greet1b: {free:?}"
    );
    step(
        "RateLimitPolicy (examples/rate-limit.yaml): /greet1a at 1 QPS",
        format!("for i in 1 2 3 4 5 6; do {}; done", curl("", "/greet1a")),
        format!("/greet1a: {limited:?}\n/greet1b: {free:?}"),
    );

    // Seed: "timeout=1s, maxRetries=1, circuit break after 50% errors" towards B.
    resilience(demo, &mut step)?;

    // The gateway's metrics: MSE's Total QPS, Exception QPS and GrayQPS.
    let (status, metrics) =
        http(demo.gateway_metrics(), "GET", "/metrics").context("gateway metrics")?;
    ensure!(status == 200, "gateway /metrics answered {status}");
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("lanemesh_gateway_requests_total{") && !l.ends_with(" 0"))
        .collect();
    ensure!(
        lines
            .iter()
            .any(|l| l.contains("app=\"spring-cloud-a\",lane=\"gray\",status=\"2xx\"")),
        "no gray requests counted: {lines:?}"
    );
    step(
        "gateway metrics (GrayQPS: sum by (app) (rate(lanemesh_gateway_requests_total{lane!=\"\"}[1m])))",
        format!("curl http://{}/metrics", demo.gateway_metrics()),
        lines.join("\n"),
    );
    Ok(())
}

/// `lanemeshctl lanes --pilot`: the gray lane with its matched pods and its QPS over the last
/// minute, from the sidecars' metrics the pilot scrapes every second, while gray requests flow.
fn lanes_with_qps(demo: &Demo, step: &mut dyn FnMut(&str, String, String)) -> Result<()> {
    let pilot = demo.pilot_admin.to_string();
    let ctl = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&demo.ctl).args(args).output()?;
        ensure!(
            out.status.success(),
            "lanemeshctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sent = demo.send("shop.example.com", "/a", &[("canary", "gray")], 30);
        ensure!(sent.get(GRAY) == Some(&30), "gray traffic: {sent:?}");
        let json: serde_json::Value =
            serde_json::from_str(&ctl(&["lanes", "--pilot", &pilot, "-o", "json"])?)?;
        let gray = json
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["tag"] == "gray"))
            .cloned()
            .unwrap_or_default();
        let qps = gray["qps"].as_f64().unwrap_or(0.0);
        let matched = &gray["matchedPods"];
        if qps > 0.0
            && matched["spring-cloud-a"] == 1
            && matched["spring-cloud-c"] == 1
            && gray["accepted"] == "True"
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "lanemeshctl lanes shows no gray QPS or matched pods: {gray}"
        );
    }
    let table = ctl(&["lanes", "--pilot", &pilot])?;
    step(
        "lanemeshctl lanes: the gray lane, its pods and its QPS (the pilot scrapes the sidecars)",
        format!("lanemeshctl lanes --pilot {pilot}"),
        table.trim_end().to_owned(),
    );
    Ok(())
}

/// The console's data: the gray lane listed and GrayQPS of the entry app above zero in the
/// pilot's traffic view (what the page draws; `tests/demo.rs` also loads the page in chromium).
fn console(demo: &Demo, step: &mut dyn FnMut(&str, String, String)) -> Result<()> {
    let (status, body) = http(demo.console, "GET", "/api/overview").context("the console")?;
    ensure!(status == 200, "console /api/overview answered {status}");
    let overview: serde_json::Value = serde_json::from_str(&body)?;
    let lanes: Vec<String> = overview["lanes"]["lanes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        lanes.contains(&"gray".to_owned()),
        "console lanes: {lanes:?}"
    );
    let gray: Vec<f64> = overview["traffic"]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["apps"]["spring-cloud-a"]["gray"].as_f64().unwrap_or(0.0))
        .collect();
    let peak = gray.iter().copied().fold(0.0, f64::max);
    ensure!(
        peak > 0.0,
        "no GrayQPS of spring-cloud-a in the console's data"
    );
    step(
        "the console: lanes, Total / Exception / Gray QPS per app and lane, rule hits, refused objects",
        format!("open {}", demo.console_url()),
        format!(
            "lanes {lanes:?}; GrayQPS of spring-cloud-a over {} points, peak {peak:.1}/s",
            gray.len()
        ),
    );
    Ok(())
}

/// The spans of one gray request: gateway -> A (gray) -> B -> C (gray), one trace, each hop's
/// span the child of the previous one, though the demo app forwards no header (each sidecar
/// continues the trace of the one request its app is serving).
fn traced_gray_request(demo: &Demo, step: &mut dyn FnMut(&str, String, String)) -> Result<()> {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{TRACE}-b7ad6b7169203331-01");
    let (status, body) = get(
        demo.gateway(),
        "shop.example.com",
        "/a",
        &[("canary", "gray"), ("traceparent", &traceparent)],
    )?;
    ensure!(
        status == 200 && strip_details(&body) == "Agray -> B -> Cgray",
        "traced request: {status} {body}"
    );
    // gateway; A inbound and outbound; B inbound and outbound; C inbound.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spans = demo.trace(TRACE);
    while spans.len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        spans = demo.trace(TRACE);
    }
    let hops: Vec<(&str, &str, &str)> = crate::otlp::chain(&spans)
        .iter()
        .map(|s| (s.kind, s.service.as_str(), s.attr("lanemesh.lane")))
        .collect();
    ensure!(
        hops == [
            ("server", "lanemesh-gateway", "gray"),
            ("server", "spring-cloud-a", "gray"),
            ("client", "spring-cloud-a", "gray"),
            ("server", "spring-cloud-b", "gray"),
            ("client", "spring-cloud-b", "gray"),
            ("server", "spring-cloud-c", "gray"),
        ],
        "the trace of one gray request: {hops:?}\n{}",
        crate::otlp::tree(&spans)
    );
    step(
        &format!(
            "one gray request, traced (every proxy exports OTLP to {})",
            demo.otlp_endpoint().unwrap_or_default()
        ),
        format!(
            "curl -H 'canary: gray' -H 'traceparent: {traceparent}' http://{}/a",
            demo.gateway()
        ),
        crate::otlp::tree(&spans),
    );
    Ok(())
}

/// `examples/resilience.yaml` applied to B's callers (A and A-gray): B slowed to 2 s answers
/// A's sidecar with a 504 after about 1 s (two attempts of 500 ms); B failing with 503 is tried
/// twice per request; at 50 % errors the breaker opens and B sees nothing more.
fn resilience(demo: &Demo, step: &mut dyn FnMut(&str, String, String)) -> Result<()> {
    let gw = demo.gateway();
    let b = pod_addr("spring-cloud-b-0", 20002)?;
    let a_metrics = pod_addr("spring-cloud-a-0", 15020)?;
    let metric = |series: &str| -> u64 {
        http(a_metrics, "GET", "/metrics")
            .and_then(|(_, text)| {
                text.lines()
                    .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            })
            .map_or(0, |v| v as u64)
    };
    let admin = |what: &str| -> Result<()> {
        let (status, body) = http(b, "POST", what).context("B's admin endpoint")?;
        ensure!(status == 200, "POST {what}: {status} {body}");
        Ok(())
    };
    let attempts = r#"lanemesh_retry_policy_attempts_total{app="spring-cloud-b"}"#;
    demo.topology.write_resilience(demo.dir())?;
    wait(Instant::now() + CONVERGE, "the TrafficPolicy at A", || {
        let _ = get(gw, "shop.example.com", "/a", &[]);
        metric(attempts) > 0
    })?;

    admin("/admin/delay?ms=2000")?;
    let started = Instant::now();
    let (status, body) = get(gw, "shop.example.com", "/a", &[])?;
    let took = started.elapsed();
    admin("/admin/delay?ms=0")?;
    ensure!(
        status == 502 && body.contains("-> error: 504"),
        "B slowed: {status} {body}"
    );
    ensure!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "B slowed: answered after {took:?}, expected about 1 s"
    );

    admin("/admin/fail?status=503")?;
    let before = metric(r#"lanemesh_retries_total{app="spring-cloud-b",result="retried"}"#);
    let (_, failed) = get(gw, "shop.example.com", "/a", &[])?;
    let retried =
        metric(r#"lanemesh_retries_total{app="spring-cloud-b",result="retried"}"#) - before;
    ensure!(retried == 1, "B failing: {retried} retries for one request");
    let answers = demo.send("shop.example.com", "/a", &[], 20);
    let breaker =
        r#"lanemesh_breaker_state{app="spring-cloud-b",rule="spring-cloud-b-errors/errors"}"#;
    let state = metric(breaker);
    admin("/admin/fail?status=0")?;
    ensure!(state == 2, "the breaker did not open: {answers:?}");
    ensure!(
        answers.keys().any(|k| k.contains("circuit")),
        "no answer came from the open breaker: {answers:?}"
    );
    step(
        "TrafficPolicy + CircuitBreakerPolicy (examples/resilience.yaml): timeout 1s, 1 retry, break at 50 % errors",
        format!(
            "curl -X POST http://{b}/admin/delay?ms=2000; {curl}\ncurl -X POST http://{b}/admin/fail?status=503; for i in $(seq 21); do {curl}; done",
            curl = format!("curl http://{gw}/a")
        ),
        format!(
            "B slowed to 2 s: {status} after {took:.1?}: {}\nB failing: 1 retry per request: {}\nthen {answers:?}\n{breaker} {state}",
            strip_details(&body),
            strip_details(&failed),
        ),
    );
    Ok(())
}

/// `pod`'s address on the demo bridge at `port`.
fn pod_addr(pod: &str, port: u16) -> Result<SocketAddr> {
    let app = APPS
        .iter()
        .find(|a| a.pod == pod)
        .with_context(|| format!("no pod {pod}"))?;
    Ok(format!("{}.{}:{port}", net::SUBNET, app.host).parse()?)
}

/// Polls `ready` every 100 ms until it holds or `deadline` passes.
fn wait(deadline: Instant, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    loop {
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` over HTTP/1.0 with `Host: host` and `headers`: (status, body).
pub fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `Agray[10.78.0.12][config=default] -> B[..]` -> `Agray -> B`.
fn strip_details(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut depth = 0u32;
    for c in body.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim().to_owned()
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_stripped_from_chain_answers() {
        assert_eq!(
            strip_details(
                "Agray[10.78.0.12][config=default] -> B[10.78.0.13][config=default] -> Cgray[10.78.0.15][config=default]"
            ),
            "Agray -> B -> Cgray"
        );
    }
}
