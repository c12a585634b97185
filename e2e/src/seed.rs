//! The seed story on a [`LocalMesh`]: the seed's Deployments (`examples/canary/apps.yaml`: A in
//! Go, B in Java, C in Python, gray A and C, MSE labels verbatim) and a caller pod with a sidecar,
//! then the examples' lanes and policies applied with `kubectl`, each step checked by requests
//! from the caller. Shared by the `local_mesh` test, which asserts that [`run`] succeeds, and
//! `make cluster-demo`, which prints what each step shows. None of the apps forwards any header.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cluster::LocalMesh;

/// The examples' namespace.
pub const NS: &str = "canary-demo";
/// How long a configuration change may take to reach every sidecar.
const CONVERGE: Duration = Duration::from_secs(40);
/// The answers of the chain `/a` in the base lane and in the gray lane (see [`LOAD`]).
pub const BASE: &str = "200 A -> B -> C";
pub const GRAY: &str = "200 Agray -> B -> Cgray";

/// The Deployments of `examples/canary/apps.yaml`.
pub const APPS: [&str; 5] = [
    "spring-cloud-a",
    "spring-cloud-a-gray",
    "spring-cloud-b",
    "spring-cloud-c",
    "spring-cloud-c-gray",
];

/// A caller with a sidecar: requests made by [`LOAD`] inside its container leave through it.
const CLIENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: canary-demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata:
      labels: {app: client, msePilotAutoEnable: "on", msePilotCreateAppName: client}
    spec:
      containers:
      - name: client
        image: python:3
        args: ["-c", "import signal; signal.pause()"]
"#;

/// A caller without a sidecar.
const NO_SIDECAR_JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: no-sidecar, namespace: canary-demo}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: caller
        image: python:3
        args:
        - -c
        - |
          import urllib.request
          body = urllib.request.urlopen("http://spring-cloud-c:20003/c", timeout=10).read().decode()
          # kube-proxy picks any pod of the Service, base or gray: no sidecar chose.
          assert body.startswith(("C[10.244.0.", "Cgray[10.244.0.")), body
          print(body)
"#;

/// The load tool: `python3 -c LOAD <url> <count> <rps> <stop-file> [header:value...]`. With a
/// count, sends that many requests one after the other; with count 0, sends `rps` requests a
/// second until the stop file exists (at most 100 s, within kubectl's deadline). Prints a JSON
/// object: each distinct answer (status and body with the `[podIP][config=..]` parts removed, or
/// the client error) -> count.
const LOAD: &str = r#"
import json, os, re, sys, threading, time, urllib.error, urllib.request
url, count, rps, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
headers = dict(h.split(":", 1) for h in sys.argv[5:])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
counts, lock = {}, threading.Lock()
def one():
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as r:
            key = "%d %s" % (r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        key = "%d %s" % (e.code, e.read().decode())
    except Exception as e:
        key = "error %s: %s" % (type(e).__name__, e)
    key = re.sub(r"\[[^\]]*\]", "", key).strip()
    with lock:
        counts[key] = counts.get(key, 0) + 1
if count:
    for _ in range(count):
        one()
else:
    threads, start, i = [], time.monotonic(), 0
    while not os.path.exists(stop) and time.monotonic() - start < 100:
        i += 1
        time.sleep(max(0.0, start + i / rps - time.monotonic()))
        threads = [t for t in threads if t.is_alive()]
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
print(json.dumps(counts, sort_keys=True))
"#;

/// The pace of the load during the rolling restart of B: at least 200 requests a second must
/// hold over the whole rollout, `kubectl exec` start included.
const ROLLOUT_RPS: f64 = 220.0;

/// Each distinct answer -> how many times it came.
pub type Answers = BTreeMap<String, u64>;

/// The seed's apps and the caller, deployed on a mesh.
#[derive(Debug)]
pub struct Story {
    mesh: LocalMesh,
    client: String,
}

impl Story {
    /// Applies `examples/canary/apps.yaml` and the caller, waits for their rollouts, and checks
    /// that the webhook injected the proxy as a native sidecar.
    pub async fn deploy(mesh: LocalMesh) -> Result<Self> {
        mesh.apply_file("examples/canary/apps.yaml").await?;
        mesh.apply(CLIENT).await?;
        for deploy in APPS.iter().chain(&["client"]) {
            mesh.rollout(NS, deploy, Duration::from_secs(180)).await?;
        }
        let client = first(mesh.pods(NS, "app=client").await?, "client")?;
        let story = Self { mesh, client };
        Ok(story)
    }

    /// The mesh the story runs on.
    pub fn mesh(&self) -> &LocalMesh {
        &self.mesh
    }

    /// `count` requests of `path` on A, one after the other, from the caller pod.
    pub async fn send(&self, path: &str, count: u32, headers: &[&str]) -> Result<Answers> {
        self.load(path, count, 0.0, "/nonexistent", headers).await
    }

    async fn load(
        &self,
        path: &str,
        count: u32,
        rps: f64,
        stop: &str,
        headers: &[&str],
    ) -> Result<Answers> {
        let url = format!("http://spring-cloud-a:20001{path}");
        let (count, rps) = (count.to_string(), rps.to_string());
        // `kubectl exec`: inside the caller's container, with the pod's DNS configuration.
        let mut cmd = vec![
            "exec",
            "-n",
            NS,
            &self.client,
            "-c",
            "client",
            "--",
            "python3",
            "-c",
            LOAD,
            &url,
            &count,
            &rps,
            stop,
        ];
        cmd.extend_from_slice(headers);
        let out = self.mesh.kubectl(&cmd).await?;
        serde_json::from_str(&out).with_context(|| format!("the load tool printed {out:?}"))
    }

    /// Sends batches of 5 until every answer is `want`, then 10 more that must all be `want`.
    pub async fn converge(&self, path: &str, headers: &[&str], want: &str) -> Result<Answers> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let got = self.send(path, 5, headers).await?;
            if got.keys().eq([want]) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{path} {headers:?}: still {got:?} after {CONVERGE:?}, want all {want:?}\n{}",
                    self.mesh.diagnostics(NS).await
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let got = self.send(path, 10, headers).await?;
        ensure!(
            got == Answers::from([(want.to_owned(), 10)]),
            "{path} {headers:?}: {got:?}, want 10 x {want:?}"
        );
        Ok(got)
    }

    /// [`Story::converge`], then reports it as step `what`.
    pub async fn expect(
        &self,
        report: &mut dyn FnMut(String),
        what: &str,
        path: &str,
        headers: &[&str],
        want: &str,
    ) -> Result<()> {
        self.converge(path, headers, want)
            .await
            .with_context(|| what.to_owned())?;
        report(format!("{what}: GET {path} {headers:?} -> 10 x {want}"));
        Ok(())
    }

    /// Waits until `kubectl get <kind> <name>` shows `want` at JSONPath `path`.
    pub async fn status(&self, kind: &str, name: &str, path: &str, want: &str) -> Result<String> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let got = self
                .mesh
                .kubectl([
                    "get",
                    kind,
                    name,
                    "-n",
                    NS,
                    "-o",
                    &format!("jsonpath={path}"),
                ])
                .await?;
            if got == want {
                return Ok(format!("{kind}/{name} {path}: {got}"));
            }
            ensure!(
                Instant::now() < deadline,
                "{kind}/{name} {path}: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `kubectl patch` of Lane `name`'s `spec.enabled`, as an operator switches a lane.
    pub async fn set_lane_enabled(&self, name: &str, enabled: bool) -> Result<()> {
        let patch = format!(r#"{{"spec":{{"enabled":{enabled}}}}}"#);
        self.mesh
            .kubectl([
                "patch",
                "lane",
                name,
                "-n",
                NS,
                "--type=merge",
                "-p",
                &patch,
            ])
            .await?;
        Ok(())
    }

    /// Sets the delay of every chain answer of the pods of `app`, through each pod's loopback.
    pub async fn set_delay(&self, app: &str, port: u16, ms: u64) -> Result<()> {
        for pod in self.mesh.pods(NS, &format!("app={app}")).await? {
            let url = format!("http://127.0.0.1:{port}/admin/delay?ms={ms}");
            let out = self
                .mesh
                .cluster()
                .exec_in_pod(NS, &pod, &["curl", "-sSf", "-X", "POST", &url])
                .await?;
            ensure!(
                out.status.success(),
                "{pod}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Steady load of `rps` requests a second on `/a` while `during` runs; the answers.
    pub async fn under_load<F>(&self, rps: f64, during: F) -> Result<Answers>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let stop = tempfile::Builder::new()
            .prefix("lanemesh-load-stop-")
            .tempdir()
            .context("creating the stop file's directory")?;
        let stop_file = stop.path().join("stop");
        let stop_arg = stop_file.display().to_string();
        let load = self.load("/a", 0, rps, &stop_arg, &[]);
        let work = async {
            let done = during.await;
            // The load tool stops at the next request it would send.
            std::fs::write(&stop_file, b"").context("writing the stop file")?;
            done
        };
        let (answers, done) = tokio::join!(load, work);
        done?;
        answers
    }
}

fn first(mut names: Vec<String>, what: &str) -> Result<String> {
    ensure!(!names.is_empty(), "no running pod of {what}");
    Ok(names.swap_remove(0))
}

/// Runs the seed scenarios in order, reporting what each step shows through `report`; the first
/// step that does not show what it should is the error.
pub async fn run(story: &Story, report: &mut dyn FnMut(String)) -> Result<()> {
    let mesh = story.mesh();

    // Injected by the webhook (the API server is 1.34: the proxy is a native sidecar), and
    // Ready only after the sidecar's startup probe, i.e. once it held its configuration from
    // the pilot over TLS with its token reviewed.
    let b = first(mesh.pods(NS, "app=spring-cloud-b").await?, "spring-cloud-b")?;
    let inits = mesh
        .kubectl([
            "get",
            "pod",
            &b,
            "-n",
            NS,
            "-o",
            "jsonpath={range .spec.initContainers[*]}{.name}={.restartPolicy};{end}",
        ])
        .await?;
    ensure!(
        inits == "lanemesh-init=;lanemesh-proxy=Always;",
        "init containers of {b}: {inits}"
    );
    report(format!("injected: {b} has init containers {inits}"));

    // A pod without a sidecar reaches C through its Service; C's sidecar serves it.
    mesh.apply(NO_SIDECAR_JOB).await?;
    mesh.wait_job(NS, "no-sidecar", Duration::from_secs(60))
        .await?;
    report("a pod without a sidecar reaches C through its Service".into());

    // No lanes yet: every request is base, gray pods take none.
    story
        .expect(report, "before any lane", "/a", &[], BASE)
        .await?;
    story
        .expect(report, "no lane yet", "/a", &["canary:gray"], BASE)
        .await?;

    // The lane: `canary: gray` goes Agray -> B (no gray B: base, lane kept) -> Cgray.
    mesh.apply_file("examples/canary/lanes.yaml").await?;
    story
        .expect(report, "gray lane", "/a", &["canary:gray"], GRAY)
        .await?;
    story
        .expect(report, "beside the gray lane", "/a", &[], BASE)
        .await?;
    let matched = r#"{"spring-cloud-a":1,"spring-cloud-b":0,"spring-cloud-c":1}"#;
    report(
        story
            .status("lane", "gray", "{.status.matchedPods}", matched)
            .await?,
    );
    report(story.status("lane", "gray", ACCEPTED, "True").await?);

    // Lane disabled: all base. Enabled again: gray again.
    story.set_lane_enabled("gray", false).await?;
    story
        .expect(report, "lane gray disabled", "/a", &["canary:gray"], BASE)
        .await?;
    story.set_lane_enabled("gray", true).await?;
    story
        .expect(
            report,
            "lane gray enabled again",
            "/a",
            &["canary:gray"],
            GRAY,
        )
        .await?;

    // Gray C scaled to 0: gray requests fall back to base C, without an error.
    mesh.kubectl([
        "scale",
        "deployment/spring-cloud-c-gray",
        "-n",
        NS,
        "--replicas=0",
    ])
    .await?;
    let fallback = "200 Agray -> B -> C";
    story
        .expect(
            report,
            "gray C scaled to 0",
            "/a",
            &["canary:gray"],
            fallback,
        )
        .await?;
    let matched = r#"{"spring-cloud-a":1,"spring-cloud-b":0,"spring-cloud-c":0}"#;
    report(
        story
            .status("lane", "gray", "{.status.matchedPods}", matched)
            .await?,
    );

    // /greet1a limited to 1 QPS with the policy's 429 and message; /greet1b unaffected.
    mesh.apply_file("examples/rate-limit.yaml").await?;
    report(
        story
            .status("ratelimitpolicy", "spring-cloud-a-limits", ACCEPTED, "True")
            .await?,
    );
    let limited = "429 greet1a is limited to 1 request per second, please retry";
    let deadline = Instant::now() + CONVERGE;
    let greet1a = loop {
        let got = story.send("/greet1a", 6, &[]).await?;
        if got.contains_key(limited) || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Six requests well within 3 s: at most 3 pass, the rest get the policy's answer.
    ensure!(
        greet1a.get(limited).copied().unwrap_or(0) >= 3
            && greet1a.values().sum::<u64>() == 6
            && greet1a.keys().all(|k| k == limited || k == "200 A greet1a"),
        "/greet1a limited to 1 QPS: {greet1a:?}"
    );
    report(format!("6 x GET /greet1a -> {greet1a:?}"));
    let greet1b = story.send("/greet1b", 6, &[]).await?;
    ensure!(
        greet1b == Answers::from([("200 A greet1b".to_owned(), 6)]),
        "/greet1b has no limit: {greet1b:?}"
    );
    report(format!("6 x GET /greet1b -> {greet1b:?}"));

    // A slow C trips the slow-ratio breaker at B's sidecar: callers get its fallback; once C is
    // fast again, the breaker closes after its open duration.
    mesh.apply_file("examples/circuit-breaker.yaml").await?;
    report(
        story
            .status(
                "circuitbreakerpolicy",
                "spring-cloud-c-breakers",
                ACCEPTED,
                "True",
            )
            .await?,
    );
    story.set_delay("spring-cloud-c", 20003, 400).await?;
    let tripped = story.send("/a", 16, &[]).await?;
    let degraded = "502 A -> error: 502 B -> error: 503 degraded";
    ensure!(
        tripped.get(degraded).copied().unwrap_or(0) >= 1
            && tripped.keys().all(|k| k == degraded || k == BASE),
        "slow C, breaker at B: {tripped:?}"
    );
    report(format!("C answers in 400 ms, 16 x GET /a -> {tripped:?}"));
    story.set_delay("spring-cloud-c", 20003, 0).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    story
        .expect(
            report,
            "C fast again, after the open duration",
            "/a",
            &[],
            BASE,
        )
        .await?;

    // A rolling restart of B under steady load (lossless offline: the pilot pushes the old
    // pod's removal, its app's preStop sleep and the sidecar's drain cover the propagation).
    let started = Instant::now();
    let answers = story
        .under_load(ROLLOUT_RPS, async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            mesh.kubectl(["rollout", "restart", "deployment/spring-cloud-b", "-n", NS])
                .await?;
            mesh.rollout(NS, "spring-cloud-b", Duration::from_secs(90))
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        })
        .await?;
    let failed: u64 = answers
        .iter()
        .filter(|(k, _)| *k != BASE)
        .map(|(_, n)| n)
        .sum();
    let total: u64 = answers.values().sum();
    let rate = total as f64 / started.elapsed().as_secs_f64();
    report(format!(
        "rolling restart of B at {ROLLOUT_RPS} rps: {total} requests ({rate:.0}/s over the rollout), {failed} failed: {answers:?}"
    ));
    ensure!(
        failed == 0 && rate >= 200.0,
        "rolling restart of B at {rate:.0} requests/s: {answers:?}"
    );
    Ok(())
}

/// The `Accepted` condition's status, as `kubectl get` shows it.
const ACCEPTED: &str = r#"{.status.conditions[?(@.type=="Accepted")].status}"#;
