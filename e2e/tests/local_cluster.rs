#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The local cluster itself (root only): real controller-manager, scheduler, kube-proxy,
//! CoreDNS and the virtual-kubelet node. A Deployment becomes ready pods, a Job in another
//! namespace reaches it by its DNS name through kube-proxy's iptables rules, and the teardown
//! leaves nothing on the machine.

use std::time::Duration;

use lanemesh_e2e::cluster::{self, Image, LocalCluster, is_root, leftovers};

const TIMEOUT: Duration = Duration::from_secs(10 * 60);

const WEB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: http
        image: python:3
        args: ["-m", "http.server", "8080", "--bind", "0.0.0.0"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// Resolves the Service by name with the pod's resolv.conf and fetches it through its
/// cluster IP; exits non-zero (and the Job fails) otherwise.
const CLIENT: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: client, namespace: default}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: client
        image: python:3
        args:
        - -c
        - |
          import socket, time, urllib.error, urllib.request
          ip = socket.gethostbyname("web.web")
          assert ip.startswith("10.96."), ip
          # kube-proxy programs the Service's endpoints a moment after the EndpointSlice has
          # them (until then it rejects): a client retries a refused connection, for 30 s.
          deadline = time.monotonic() + 30
          while True:
              try:
                  body = urllib.request.urlopen("http://web.web/", timeout=10).read()
                  break
              except urllib.error.URLError as e:
                  if not isinstance(e.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                      raise
                  time.sleep(0.5)
          assert b"Directory listing" in body, body[:200]
          print("ok", ip)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_run_and_services_resolve_and_route_then_nothing_is_left() {
    if cluster::skip_requested(
        "deployments_run_and_services_resolve_and_route_then_nothing_is_left",
    ) {
        return;
    }
    assert!(
        is_root(),
        "the local cluster tier needs root (network namespaces, iptables); run as root or set {}=1",
        cluster::SKIP_ENV
    );
    tokio::time::timeout(TIMEOUT, async {
        let cluster = LocalCluster::start(&[Image::new("python", &["python3"])])
            .await
            .unwrap();
        let ok = |out: std::process::Output, what: &str| {
            assert!(
                out.status.success(),
                "{what}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                cluster.log_tails(30)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        ok(
            cluster
                .api()
                .kubectl_stdin(["apply", "-f", "-"], WEB)
                .await
                .unwrap(),
            "apply",
        );
        ok(
            cluster
                .kubectl([
                    "rollout",
                    "status",
                    "deployment/web",
                    "-n",
                    "web",
                    "--timeout=180s",
                ])
                .await
                .unwrap(),
            "rollout",
        );
        let ips = ok(
            cluster
                .kubectl([
                    "get",
                    "pods",
                    "-n",
                    "web",
                    "-l",
                    "app=web",
                    "-o",
                    "jsonpath={.items[*].status.podIP}",
                ])
                .await
                .unwrap(),
            "pod IPs",
        );
        let ips: Vec<&str> = ips.split_whitespace().collect();
        assert_eq!(ips.len(), 2, "{ips:?}");
        assert!(ips.iter().all(|ip| ip.starts_with("10.244.0.")), "{ips:?}");
        // The EndpointSlice controller published both.
        let endpoints = ok(
            cluster
                .kubectl([
                    "get",
                    "endpointslices",
                    "-n",
                    "web",
                    "-l",
                    "kubernetes.io/service-name=web",
                    "-o",
                    "jsonpath={.items[*].endpoints[*].addresses[0]}",
                ])
                .await
                .unwrap(),
            "endpoint slices",
        );
        for ip in &ips {
            assert!(endpoints.contains(ip), "{ip} not in {endpoints}");
        }

        ok(
            cluster
                .api()
                .kubectl_stdin(["apply", "-f", "-"], CLIENT)
                .await
                .unwrap(),
            "apply job",
        );
        let done = cluster
            .kubectl([
                "wait",
                "--for=condition=complete",
                "job/client",
                "--timeout=90s",
            ])
            .await
            .unwrap();
        if !done.status.success() {
            let pods = cluster
                .kubectl(["get", "pods", "-A", "-o", "wide"])
                .await
                .unwrap();
            let logs = cluster.kubectl(["logs", "job/client"]).await.unwrap();
            panic!(
                "the client Job did not complete: {}\npods:\n{}\njob logs:\n{}{}\n{}",
                String::from_utf8_lossy(&done.stderr),
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr),
                cluster.log_tails(40)
            );
        }
        drop(cluster);
        assert_eq!(
            leftovers(),
            Vec::<String>::new(),
            "teardown left things behind"
        );
    })
    .await
    .expect("test timed out");
}
