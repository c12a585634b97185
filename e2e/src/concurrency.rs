//! Lane carrying under concurrency on a [`LocalMesh`]: for each kind of app B, a namespace with
//! A -> B -> C (gray A and C, base B only), a caller pod, and a burst of concurrent mixed
//! gray/base requests whose every answer is checked. B is the pod that serves both lanes at once;
//! whether its outbound calls keep their lanes depends on what B's app forwards:
//! - `go`: the Go demo app, forwarding nothing (in-flight and node-colour rules only);
//! - `go-otel`: the same app built with OpenTelemetry's `otelhttp` (`-tags otel`);
//! - `java`, `python`: the Java and Python demo apps, unchanged, with the context the webhook
//!   injects for `lanemesh.io/inject-context`.
//!
//! A and C are the Go demo app. Shared by the `lane_context` test (which asserts no misroute
//! where B forwards context) and anyone who wants the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::LocalMesh;

/// Requests in one burst, half gray.
pub const BURST: usize = 200;
/// How long B holds each request before calling C, so the burst's requests overlap there.
const B_DELAY_MS: u32 = 300;

/// One kind of app B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// The namespace's suffix and the table's row name.
    pub name: &'static str,
    /// B's image.
    pub image: &'static str,
    /// `lanemesh.io/inject-context` on B, if any.
    pub context: Option<&'static str>,
    /// Whether B's app forwards context (so 0 misroutes is required).
    pub forwards: bool,
}

/// Every kind of B the test measures.
pub const VARIANTS: [Variant; 4] = [
    Variant {
        name: "go",
        image: "lanemesh/demo-go:latest",
        context: None,
        forwards: false,
    },
    Variant {
        name: "go-otel",
        image: "lanemesh/demo-go-otel:latest",
        context: None,
        forwards: true,
    },
    Variant {
        name: "java",
        image: "lanemesh/demo-java:latest",
        context: Some("java"),
        forwards: true,
    },
    Variant {
        name: "python",
        image: "lanemesh/demo-python:latest",
        context: Some("python"),
        forwards: true,
    },
];

impl Variant {
    /// The variant's namespace.
    pub fn namespace(&self) -> String {
        format!("lanes-{}", self.name)
    }

    /// Namespace, Services, Deployments, lane group, gray lane and caller of this variant.
    pub fn manifests(&self) -> String {
        let ns = self.namespace();
        let mut out = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
        for (svc, port) in [("a", 20001), ("b", 20002), ("c", 20003)] {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {ns}}}\n\
                 spec:\n  selector: {{app: {svc}}}\n  ports: [{{name: http, port: {port}, targetPort: {port}}}]\n"
            );
        }
        let context = self.context.map_or(String::new(), |lang| {
            format!("\n      annotations: {{lanemesh.io/inject-context: {lang}}}")
        });
        let apps = [
            (
                "a",
                "base",
                "A",
                "lanemesh/demo-go:latest",
                20001,
                "http://b:20002",
                "",
            ),
            (
                "a",
                "gray",
                "Agray",
                "lanemesh/demo-go:latest",
                20001,
                "http://b:20002",
                "",
            ),
            (
                "b",
                "base",
                "B",
                self.image,
                20002,
                "http://c:20003",
                context.as_str(),
            ),
            ("c", "base", "C", "lanemesh/demo-go:latest", 20003, "", ""),
            (
                "c",
                "gray",
                "Cgray",
                "lanemesh/demo-go:latest",
                20003,
                "",
                "",
            ),
        ];
        for (app, version, name, image, port, next, annotations) in apps {
            let tag = if version == "gray" {
                ", alicloud.service.tag: gray"
            } else {
                ""
            };
            let next = if next.is_empty() {
                String::new()
            } else {
                format!(", \"--next={next}\"")
            };
            let _ = write!(
                out,
                "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {app}-{version}, namespace: {ns}}}\n\
                 spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {app}, version: {version}}}}}\n\
                 \x20 template:\n    metadata:\n      labels: {{app: {app}, version: {version}, msePilotAutoEnable: \"on\", msePilotCreateAppName: {app}{tag}}}{annotations}\n\
                 \x20   spec:\n      containers: [{{name: app, image: \"{image}\", args: [\"--name={name}\", \"--port={port}\"{next}], \
                 readinessProbe: {{httpGet: {{path: /healthz, port: {port}}}, periodSeconds: 1}}}}]\n"
            );
        }
        let _ = write!(
            out,
            "---\napiVersion: lanemesh.io/v1alpha1\nkind: LaneGroup\nmetadata: {{name: flow, namespace: {ns}}}\n\
             spec:\n  apps: [a, b, c]\n  entryApps: [a]\n  routingMode: Content\n  tagHeader: x-mse-tag\n\
             \x20 propagation: {{traceHeaders: [traceparent], inflight: true, colorByNode: true}}\n\
             ---\napiVersion: lanemesh.io/v1alpha1\nkind: Lane\nmetadata: {{name: gray, namespace: {ns}}}\n\
             spec:\n  group: flow\n  tag: gray\n  enabled: true\n  match:\n    logic: All\n    conditions:\n\
             \x20   - {{source: Header, name: canary, operator: Equal, value: gray}}\n\
             ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: client, namespace: {ns}}}\n\
             spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: client}}}}\n  template:\n    metadata:\n\
             \x20     labels: {{app: client, msePilotAutoEnable: \"on\", msePilotCreateAppName: client}}\n\
             \x20   spec:\n      containers: [{{name: client, image: \"python:3\", args: [\"-c\", \"import signal; signal.pause()\"]}}]\n"
        );
        out
    }
}

/// The burst tool: `python3 -c BURST_TOOL <url> <n> [delay-url]`. Sets B's delay (when given),
/// then sends `n` requests at once (even ones with `canary: gray`) from `n` threads released
/// by one barrier and prints one line per request: `<i> <gray|base> <status> <body without the
/// [ip][config] parts>`.
const BURST_TOOL: &str = r#"
import re, sys, threading, urllib.error, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
if len(sys.argv) > 3:
    opener.open(urllib.request.Request(sys.argv[3], method="POST"), timeout=10).read()
barrier, lines, lock = threading.Barrier(n), [None] * n, threading.Lock()
def one(i):
    gray = i % 2 == 0
    headers = {"canary": "gray"} if gray else {}
    barrier.wait()
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    except Exception as e:
        status, body = "error", "%s: %s" % (type(e).__name__, e)
    body = re.sub(r"\[[^\]]*\]", "", body).replace("\n", " ").strip()
    lines[i] = "%d %s %s %s" % (i, "gray" if gray else "base", status, body)
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print("\n".join(lines))
"#;

/// What one burst gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub variant: Variant,
    pub requests: usize,
    /// Gray requests answered by base C (or any other wrong chain).
    pub gray_misrouted: usize,
    /// Base requests answered by gray A or C.
    pub base_misrouted: usize,
    /// Requests without a 200.
    pub failed: usize,
    /// A few offending lines, for the report.
    pub examples: Vec<String>,
    /// How B's sidecar chose the lane of its outbound calls during the burst: rule -> calls
    /// (`lanemesh_lane_propagations_total`).
    pub rules: BTreeMap<String, u64>,
}

impl Outcome {
    /// Every request answered, each by its own lane's chain.
    pub fn exact(&self) -> bool {
        self.requests == BURST
            && self.gray_misrouted == 0
            && self.base_misrouted == 0
            && self.failed == 0
    }
}

/// Checks the burst tool's output line by line.
pub fn judge(variant: Variant, output: &str) -> Result<Outcome> {
    let mut outcome = Outcome {
        variant,
        requests: 0,
        gray_misrouted: 0,
        base_misrouted: 0,
        failed: 0,
        examples: Vec::new(),
        rules: BTreeMap::new(),
    };
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(4, ' ');
        let (Some(_), Some(lane), Some(status), body) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("the burst tool printed {line:?}");
        };
        outcome.requests += 1;
        let body = body.unwrap_or("").trim();
        let wrong = if status != "200" {
            outcome.failed += 1;
            true
        } else {
            match lane {
                "gray" if body != "Agray -> B -> Cgray" => {
                    outcome.gray_misrouted += 1;
                    true
                }
                "base" if body != "A -> B -> C" => {
                    outcome.base_misrouted += 1;
                    true
                }
                "gray" | "base" => false,
                other => bail!("the burst tool printed lane {other:?}"),
            }
        };
        if wrong && outcome.examples.len() < 3 {
            outcome.examples.push(line.to_owned());
        }
    }
    Ok(outcome)
}

/// Applies every variant's manifests and waits for their rollouts.
pub async fn deploy(mesh: &LocalMesh, variants: &[Variant]) -> Result<()> {
    for v in variants {
        mesh.apply(&v.manifests())
            .await
            .with_context(|| v.namespace())?;
    }
    for v in variants {
        for d in ["a-base", "a-gray", "b-base", "c-base", "c-gray", "client"] {
            mesh.rollout(&v.namespace(), d, Duration::from_secs(240))
                .await?;
        }
    }
    Ok(())
}

/// Waits until one gray and one base request, one at a time, take their lanes' chains (the
/// configuration reached every sidecar), then sends the burst through `variant`'s B.
pub async fn burst(mesh: &LocalMesh, variant: Variant) -> Result<Outcome> {
    let ns = variant.namespace();
    let client = first_pod(mesh, &ns, "app=client").await?;
    let exec = |n: usize, delay: Option<u32>| {
        let ns = ns.clone();
        let client = client.clone();
        async move {
            let n = n.to_string();
            let delay = delay.map(|ms| format!("http://b:20002/admin/delay?ms={ms}"));
            let mut args = vec![
                "exec",
                "-n",
                &ns,
                &client,
                "-c",
                "client",
                "--",
                "python3",
                "-c",
                BURST_TOOL,
                "http://a:20001/a",
                &n,
            ];
            if let Some(url) = &delay {
                args.push(url);
            }
            mesh.kubectl(&args).await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Two requests at once would overlap at B: one at a time, twice each lane.
        let mut ok = true;
        for _ in 0..2 {
            let out = exec(1, Some(0)).await.unwrap_or_default();
            let gray = judge(variant, &out)?;
            ok &= gray.requests == 1 && gray.failed == 0 && gray.gray_misrouted == 0;
        }
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{ns}: a lone gray request never took Agray -> B -> Cgray\n{}",
                mesh.diagnostics(&ns).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let b = first_pod(mesh, &ns, "app=b").await?;
    let b_ip = mesh
        .kubectl([
            "get",
            "pod",
            "-n",
            &ns,
            &b,
            "-o",
            "jsonpath={.status.podIP}",
        ])
        .await?;
    let metrics_url = format!("http://{}:15020/metrics", b_ip.trim());
    let rules = || async {
        let text = mesh
            .kubectl([
                "exec", "-n", &ns, &client, "-c", "client", "--", "python3", "-c",
                "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
                &metrics_url,
            ])
            .await?;
        Ok::<_, anyhow::Error>(propagation_rules(&text))
    };
    let before = rules().await?;
    let out = exec(BURST, Some(B_DELAY_MS)).await?;
    let mut outcome = judge(variant, &out)?;
    for (rule, after) in rules().await? {
        let delta = after.saturating_sub(before.get(&rule).copied().unwrap_or(0));
        if delta > 0 {
            outcome.rules.insert(rule, delta);
        }
    }
    Ok(outcome)
}

/// The first running pod matching `selector`.
async fn first_pod(mesh: &LocalMesh, ns: &str, selector: &str) -> Result<String> {
    mesh.pods(ns, selector)
        .await?
        .into_iter()
        .next()
        .with_context(|| format!("no pod {selector} in {ns}"))
}

/// `lanemesh_lane_propagations_total{rule="…"} N` lines of a sidecar's metrics: rule -> N.
fn propagation_rules(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("lanemesh_lane_propagations_total{rule=\""))
        .filter_map(|l| {
            let (rule, rest) = l.split_once('"')?;
            let n = rest.rsplit(' ').next()?.trim().parse().ok()?;
            Some((rule.to_owned(), n))
        })
        .collect()
}

/// The table of outcomes (markdown).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| B's app | context | requests | gray misrouted | base misrouted | failed | B's outbound lane rules |\n|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            o.variant.name,
            o.variant.context.map_or_else(
                || if o.variant.forwards {
                    "otelhttp (build tag)"
                } else {
                    "none"
                }
                .to_owned(),
                |c| format!("injected ({c})")
            ),
            o.requests,
            o.gray_misrouted,
            o.base_misrouted,
            o.failed,
            o.rules
                .iter()
                .map(|(rule, n)| format!("{rule} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn judge_counts_each_line_against_its_lane() {
        let out = "0 gray 200 Agray -> B -> Cgray\n1 base 200 A -> B -> C\n\
                   2 gray 200 Agray -> B -> C\n3 base 200 A -> B -> Cgray\n4 gray error timeout\n";
        let o = judge(VARIANTS[0], out).unwrap();
        assert_eq!(
            (o.requests, o.gray_misrouted, o.base_misrouted, o.failed),
            (5, 1, 1, 1)
        );
        assert_eq!(o.examples.len(), 3);
        assert!(!o.exact());
        assert!(judge(VARIANTS[0], "garbage").is_err());
    }

    #[test]
    fn propagation_rules_are_read_from_the_metrics_text() {
        let text = "# TYPE lanemesh_lane_propagations counter\n\
                    lanemesh_lane_propagations_total{rule=\"baggage\"} 100\n\
                    lanemesh_lane_propagations_total{rule=\"base\"} 7\n\
                    lanemesh_requests_total{rule=\"x\"} 1\n";
        assert_eq!(
            propagation_rules(text),
            BTreeMap::from([("baggage".to_owned(), 100), ("base".to_owned(), 7)])
        );
    }

    #[test]
    fn manifests_parse_as_yaml_with_the_context_annotation_only_on_b() {
        let yaml = VARIANTS[2].manifests();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 1 + 3 + 5 + 2 + 1);
        let annotated: Vec<_> = docs
            .iter()
            .filter(|d| {
                d["spec"]["template"]["metadata"]["annotations"]["lanemesh.io/inject-context"]
                    == "java"
            })
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(annotated, ["b-base"]);
    }
}
