//! `lanemesh-cluster-demo` (`make cluster-demo`, root): the user's story, live, on this machine.
//!
//! Starts the local cluster (real Kubernetes components, pods as processes in network
//! namespaces), installs lanemesh with `helm install` of `charts/lanemesh`, deploys the seed's
//! Go, Java and Python apps from `examples/canary/apps.yaml`, then applies the examples' lanes and
//! policies one by one and prints what requests through the sidecars show after each. With
//! `--keep` the cluster stays up until Ctrl-C, for `kubectl`; then everything is torn down.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use lanemesh_e2e::cluster::{LocalMesh, is_root, leftovers};
use lanemesh_e2e::process::lanemesh_binaries;
use lanemesh_e2e::seed::{self, Story};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "lanemesh on a local cluster: helm install, the seed apps, lanes and policies"
)]
struct Args {
    /// Keep the cluster running after the scenarios, until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("{line}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match demo(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("lanemesh-cluster-demo: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: &Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the local cluster needs root (network namespaces, iptables): run as root");
    }
    say("==> building lanemesh-pilot and lanemesh-proxy");
    let bins = tokio::task::spawn_blocking(|| lanemesh_binaries(Duration::from_secs(30 * 60)))
        .await?
        .context("building the lanemesh binaries")?;
    say(
        "==> starting the local cluster, then: helm install lanemesh charts/lanemesh -n lanemesh-system --create-namespace --wait",
    );
    let mesh = LocalMesh::install(&bins.pilot, &bins.proxy).await?;
    say(&mesh
        .kubectl(["get", "pods", "-n", "lanemesh-system", "-o", "wide"])
        .await?);
    say(
        "==> kubectl apply -f examples/canary/apps.yaml (A: Go, B: Java, C: Python; gray A and C), and a client pod",
    );
    let story = Story::deploy(mesh).await?;
    say(&story
        .mesh()
        .kubectl(["get", "pods", "-n", seed::NS, "-o", "wide"])
        .await?);
    say("==> the scenarios (requests from the client pod, through its sidecar)");
    let outcome = seed::run(&story, &mut |line| say(&format!("  {line}"))).await;
    if let Err(e) = &outcome {
        say(&format!(
            "step failed: {e:#}\n{}",
            story.mesh().diagnostics(seed::NS).await
        ));
    }
    say(&story
        .mesh()
        .kubectl([
            "get",
            "lanes,ratelimitpolicies,circuitbreakerpolicies",
            "-n",
            seed::NS,
        ])
        .await?);
    if args.keep {
        let kubeconfig = story
            .mesh()
            .cluster()
            .api()
            .kubeconfig_path()
            .display()
            .to_string();
        say(&format!(
            "==> the cluster keeps running until Ctrl-C; try:\n  \
             export KUBECONFIG={kubeconfig}\n  \
             kubectl get pods -A\n  \
             kubectl get lanes -n {ns}\n  \
             kubectl exec -n {ns} deploy/client -c client -- python3 -c \
             \"import urllib.request as u; print(u.urlopen(u.Request('http://spring-cloud-a:20001/a', headers={{'canary': 'gray'}})).read().decode())\"",
            ns = seed::NS
        ));
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    say("==> teardown");
    drop(story);
    let left = leftovers();
    if !left.is_empty() {
        bail!("teardown left {left:?}");
    }
    say("nothing left behind: no network namespaces, bridge or kube-proxy rules");
    outcome
}
