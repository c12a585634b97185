#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The user's story on the local cluster (root only): `helm install` of the chart, the seed's
//! Deployments injected by the webhook, the examples' lanes and policies applied with `kubectl`,
//! traffic from a caller pod through the sidecars ([`lanemesh_e2e::seed`] has the steps and what
//! each must show), then a teardown that leaves nothing behind.

use std::time::Duration;

use lanemesh_e2e::cluster::{self, LocalMesh, is_root, leftovers};
use lanemesh_e2e::process::lanemesh_binaries;
use lanemesh_e2e::seed::{self, Story};

const TIMEOUT: Duration = Duration::from_secs(25 * 60);

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
        let story = Story::deploy(mesh).await.unwrap();
        if let Err(e) = seed::run(&story, &mut |line| println!("{line}")).await {
            panic!("{e:#}\n{}", story.mesh().diagnostics(seed::NS).await);
        }
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
