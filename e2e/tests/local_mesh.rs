#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The user's story on the local cluster (root only): `helm install` of the chart, the seed's
//! Deployments (`examples/canary/apps.yaml`: A in Go, B in Java, C in Python, gray A and C) injected
//! by the webhook because they carry `msePilotAutoEnable: "on"`, then the examples' lanes and
//! policies applied with `kubectl`, and requests from a caller pod with a sidecar. None of the apps
//! forwards any header.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lanemesh_e2e::cluster::{self, LocalMesh, is_root, leftovers};
use lanemesh_e2e::process::lanemesh_binaries;

const TIMEOUT: Duration = Duration::from_secs(25 * 60);
const NS: &str = "canary-demo";
/// How long a configuration change may take to reach every sidecar.
const CONVERGE: Duration = Duration::from_secs(40);

/// A caller with a sidecar (the requests are made by [`LOAD`] inside its network namespace, so
/// its sidecar captures them), and a Job without one.
const CALLERS: &str = r#"
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

const JOB: &str = r#"
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
/// second until the stop file exists (at most 100 s, within kubectl's deadline). Prints a JSON object: each distinct answer
/// (status and body with the `[podIP][config=..]` parts removed, or the client error) -> count.
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

type Answers = BTreeMap<String, u64>;

struct Story {
    mesh: LocalMesh,
    client: String,
}

impl Story {
    /// `count` sequential requests from the client pod.
    async fn send(&self, path: &str, count: u32, headers: &[&str]) -> Answers {
        self.load(path, count, 0.0, "/nonexistent", headers).await
    }

    async fn load(
        &self,
        path: &str,
        count: u32,
        rps: f64,
        stop: &str,
        headers: &[&str],
    ) -> Answers {
        let url = format!("http://spring-cloud-a:20001{path}");
        let (count, rps) = (count.to_string(), rps.to_string());
        // `kubectl exec`: inside the client container, with the pod's DNS configuration; its
        // requests leave through the pod's sidecar.
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
        let out = self.mesh.kubectl(&cmd).await.unwrap();
        serde_json::from_str(&out).unwrap()
    }

    /// Sends batches of 5 until every answer is `want`, then 10 more that must all be `want`.
    async fn converge(&self, what: &str, path: &str, headers: &[&str], want: &str) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let got = self.send(path, 5, headers).await;
            if got.keys().eq([want]) {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: still {got:?} after {CONVERGE:?}, want all {want:?}\n{}",
                    self.mesh.diagnostics(NS).await
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let got = self.send(path, 10, headers).await;
        assert_eq!(got, Answers::from([(want.to_owned(), 10)]), "{what}");
        println!("{what}: 10 x {want}");
    }

    /// `kubectl get <kind> <name> -o jsonpath=<path>`.
    async fn get(&self, kind: &str, name: &str, path: &str) -> String {
        self.mesh
            .kubectl([
                "get",
                kind,
                name,
                "-n",
                NS,
                "-o",
                &format!("jsonpath={path}"),
            ])
            .await
            .unwrap()
    }

    /// Waits until `kubectl get` shows `want` at `path`.
    async fn status(&self, kind: &str, name: &str, path: &str, want: &str) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let got = self.get(kind, name, path).await;
            if got == want {
                println!("{kind}/{name} {path}: {got}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{kind}/{name} {path}: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sets the delay of every chain answer of the pods of Deployment `name`.
    async fn set_delay(&self, app: &str, port: u16, ms: u64) {
        for pod in self.mesh.pods(NS, &format!("app={app}")).await.unwrap() {
            let url = format!("http://127.0.0.1:{port}/admin/delay?ms={ms}");
            let out = self
                .mesh
                .cluster()
                .exec_in_pod(NS, &pod, &["curl", "-sSf", "-X", "POST", &url])
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{pod}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

const BASE: &str = "200 A -> B -> C";
const GRAY: &str = "200 Agray -> B -> Cgray";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_the_seed_scenarios_on_go_java_and_python_apps() {
    if cluster::skip_requested("helm_install_then_the_seed_scenarios_on_go_java_and_python_apps") {
        return;
    }
    assert!(
        is_root(),
        "the local cluster tier needs root (network namespaces, iptables); run as root or set {}=1",
        cluster::SKIP_ENV
    );
    tokio::time::timeout(TIMEOUT, async {
        let bins = tokio::task::spawn_blocking(|| lanemesh_binaries(Duration::from_secs(15 * 60)))
            .await
            .unwrap()
            .unwrap();
        let mesh = LocalMesh::install(&bins.pilot, &bins.proxy).await.unwrap();

        // The seed's Deployments, verbatim MSE labels, and a caller with a sidecar.
        mesh.apply_file("examples/canary/apps.yaml").await.unwrap();
        mesh.apply(CALLERS).await.unwrap();
        for deploy in [
            "spring-cloud-a",
            "spring-cloud-a-gray",
            "spring-cloud-b",
            "spring-cloud-c",
            "spring-cloud-c-gray",
            "client",
        ] {
            mesh.rollout(NS, deploy, Duration::from_secs(180))
                .await
                .unwrap();
        }
        let client = mesh.pods(NS, "app=client").await.unwrap().remove(0);

        // Injected by the webhook (this API server is 1.34: the proxy is a native sidecar), and
        // Ready only after the sidecar's startup probe, i.e. once it held its configuration from
        // the pilot over TLS with its token reviewed.
        let b = mesh.pods(NS, "app=spring-cloud-b").await.unwrap().remove(0);
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
            .await
            .unwrap();
        assert_eq!(inits, "lanemesh-init=;lanemesh-proxy=Always;");
        let story = Story { mesh, client };

        // A pod without a sidecar reaches C through its Service; C's sidecar serves it.
        story.mesh.apply(JOB).await.unwrap();
        story
            .mesh
            .wait_job(NS, "no-sidecar", Duration::from_secs(60))
            .await
            .unwrap();

        // No lanes yet: every request is base, gray pods take none.
        story.converge("before any lane", "/a", &[], BASE).await;
        story
            .converge("canary header, no lane", "/a", &["canary:gray"], BASE)
            .await;

        // The lane: `canary: gray` goes Agray -> B (no gray B: base, lane kept) -> Cgray.
        story
            .mesh
            .apply_file("examples/canary/lanes.yaml")
            .await
            .unwrap();
        story
            .converge("gray lane", "/a", &["canary:gray"], GRAY)
            .await;
        story
            .converge("base beside the gray lane", "/a", &[], BASE)
            .await;
        story
            .status(
                "lane",
                "gray",
                "{.status.matchedPods}",
                r#"{"spring-cloud-a":1,"spring-cloud-b":0,"spring-cloud-c":1}"#,
            )
            .await;
        story
            .status(
                "lane",
                "gray",
                r#"{.status.conditions[?(@.type=="Accepted")].status}"#,
                "True",
            )
            .await;

        // Lane disabled: all base. Enabled again: gray again.
        let patch = |enabled: bool| format!(r#"{{"spec":{{"enabled":{enabled}}}}}"#);
        story
            .mesh
            .kubectl([
                "patch",
                "lane",
                "gray",
                "-n",
                NS,
                "--type=merge",
                "-p",
                &patch(false),
            ])
            .await
            .unwrap();
        story
            .converge("lane disabled", "/a", &["canary:gray"], BASE)
            .await;
        story
            .mesh
            .kubectl([
                "patch",
                "lane",
                "gray",
                "-n",
                NS,
                "--type=merge",
                "-p",
                &patch(true),
            ])
            .await
            .unwrap();
        story
            .converge("lane enabled again", "/a", &["canary:gray"], GRAY)
            .await;

        // Gray C scaled to 0: gray requests fall back to base C, without an error.
        story
            .mesh
            .kubectl([
                "scale",
                "deployment/spring-cloud-c-gray",
                "-n",
                NS,
                "--replicas=0",
            ])
            .await
            .unwrap();
        story
            .converge(
                "gray C scaled to 0",
                "/a",
                &["canary:gray"],
                "200 Agray -> B -> C",
            )
            .await;
        story
            .status(
                "lane",
                "gray",
                "{.status.matchedPods}",
                r#"{"spring-cloud-a":1,"spring-cloud-b":0,"spring-cloud-c":0}"#,
            )
            .await;

        // /greet1a limited to 1 QPS with the policy's 429 and message; /greet1b unaffected.
        story
            .mesh
            .apply_file("examples/rate-limit.yaml")
            .await
            .unwrap();
        story
            .status(
                "ratelimitpolicy",
                "spring-cloud-a-limits",
                r#"{.status.conditions[?(@.type=="Accepted")].status}"#,
                "True",
            )
            .await;
        let limited = "429 greet1a is limited to 1 request per second, please retry";
        let deadline = Instant::now() + CONVERGE;
        let greet1a = loop {
            let got = story.send("/greet1a", 6, &[]).await;
            if got.contains_key(limited) || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        println!("6 x /greet1a: {greet1a:?}");
        // Six requests within well under 3 s: at most 3 pass, the rest get the fallback.
        assert!(
            greet1a.get(limited).copied().unwrap_or(0) >= 3,
            "{greet1a:?}"
        );
        assert_eq!(greet1a.values().sum::<u64>(), 6);
        assert!(
            greet1a.keys().all(|k| k == limited || k == "200 A greet1a"),
            "{greet1a:?}"
        );
        let greet1b = story.send("/greet1b", 6, &[]).await;
        assert_eq!(greet1b, Answers::from([("200 A greet1b".to_owned(), 6)]));

        // A slow C trips the slow-ratio breaker at B's sidecar: callers get its fallback; once C
        // is fast again, the breaker closes after its open duration.
        story
            .mesh
            .apply_file("examples/circuit-breaker.yaml")
            .await
            .unwrap();
        story
            .status(
                "circuitbreakerpolicy",
                "spring-cloud-c-breakers",
                r#"{.status.conditions[?(@.type=="Accepted")].status}"#,
                "True",
            )
            .await;
        story.set_delay("spring-cloud-c", 20003, 400).await;
        let tripped = story.send("/a", 16, &[]).await;
        println!("C slow, 16 requests: {tripped:?}");
        let fallback = "502 A -> error: 502 B -> error: 503 degraded";
        assert!(
            tripped.get(fallback).copied().unwrap_or(0) >= 1,
            "{tripped:?}"
        );
        assert!(
            tripped.keys().all(|k| k == fallback || k == BASE),
            "{tripped:?}"
        );
        story.set_delay("spring-cloud-c", 20003, 0).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        story
            .converge("C fast again, breaker closed", "/a", &[], BASE)
            .await;

        // A rolling restart of B under steady load.
        let stop = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let stop_file = stop.to_path_buf();
        std::fs::remove_file(&stop_file).unwrap();
        let load = story.load("/a", 0, 20.0, stop_file.to_str().unwrap(), &[]);
        let restart = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            story
                .mesh
                .kubectl(["rollout", "restart", "deployment/spring-cloud-b", "-n", NS])
                .await
                .unwrap();
            story
                .mesh
                .rollout(NS, "spring-cloud-b", Duration::from_secs(120))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            std::fs::write(&stop_file, b"").unwrap();
        };
        let (answers, ()) = tokio::join!(load, restart);
        let failed: u64 = answers
            .iter()
            .filter(|(k, _)| *k != BASE)
            .map(|(_, n)| n)
            .sum();
        let total: u64 = answers.values().sum();
        println!("rolling restart of B at 20 rps: {total} requests, {failed} failed: {answers:?}");
        assert!(total >= 100, "{answers:?}");
        assert_eq!(failed, 0, "{answers:?}");

        drop(story);
        assert_eq!(
            leftovers(),
            Vec::<String>::new(),
            "teardown left things behind"
        );
    })
    .await
    .expect("test timed out");
}
