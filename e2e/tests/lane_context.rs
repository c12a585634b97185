#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! Lane carrying under concurrency on the local cluster (root only): `helm install` of the
//! chart, then for each kind of base pod B (Go forwarding nothing, Go built with `otelhttp`,
//! the Java and Python demo apps with the context the webhook injects) a burst of 200 concurrent
//! mixed gray/base requests through A -> B -> C, every answer checked
//! ([`lanemesh_e2e::concurrency`]). Where B forwards context no request may leave its lane; the
//! Go app without it is measured and reported.

use std::time::Duration;

use lanemesh_e2e::cluster::local_mesh_test;
use lanemesh_e2e::concurrency::{self, VARIANTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_lanes_through_a_base_pod_stay_in_their_lanes() {
    local_mesh_test(
        "concurrent_mixed_lanes_through_a_base_pod_stay_in_their_lanes",
        Duration::from_secs(20 * 60),
        |mesh| async move {
            concurrency::deploy(&mesh, &VARIANTS).await.unwrap();
            // The webhook injected the context into B only, where asked.
            for v in VARIANTS {
                let b = mesh.pods(&v.namespace(), "app=b").await.unwrap();
                let inits = mesh
                    .kubectl([
                        "get",
                        "pod",
                        "-n",
                        &v.namespace(),
                        &b[0],
                        "-o",
                        "jsonpath={.spec.initContainers[*].name}",
                    ])
                    .await
                    .unwrap();
                assert_eq!(
                    inits.contains("lanemesh-context"),
                    v.context.is_some(),
                    "{}: init containers {inits}",
                    v.name
                );
            }
            let mut outcomes = Vec::new();
            for v in VARIANTS {
                let outcome = concurrency::burst(&mesh, v).await.unwrap();
                println!("{}: {outcome:?}", v.name);
                outcomes.push(outcome);
            }
            println!(
                "{} concurrent requests (half gray) through A -> B -> C, B a base pod:\n{}",
                concurrency::BURST,
                concurrency::table(&outcomes)
            );
            for o in &outcomes {
                assert_eq!(o.requests, concurrency::BURST, "{o:?}");
                if o.variant.forwards {
                    assert!(o.exact(), "{} left its lanes: {o:?}", o.variant.name);
                }
            }
        },
    )
    .await;
}
