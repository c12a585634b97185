#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The user's story on the local cluster (root only): `helm install` of the chart, the seed's
//! Deployments injected by the webhook, the examples' lanes and policies applied with `kubectl`,
//! traffic from a caller pod through the sidecars ([`lanemesh_e2e::seed`] has the steps and what
//! each must show), then a teardown that leaves nothing behind.

use std::time::Duration;

use lanemesh_e2e::cluster::local_mesh_test;
use lanemesh_e2e::seed::{self, Story};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_the_seed_scenarios_on_go_java_and_python_apps() {
    local_mesh_test(
        "helm_install_then_the_seed_scenarios_on_go_java_and_python_apps",
        Duration::from_secs(25 * 60),
        |mesh| async move {
            let story = Story::deploy(mesh).await.unwrap();
            if let Err(e) = seed::run(&story, &mut |line| println!("{line}")).await {
                panic!("{e:#}\n{}", story.mesh().diagnostics(seed::NS).await);
            }
        },
    )
    .await;
}
