//! lanemesh end-to-end harness: local cluster, demo apps, scenario tests and benchmarks.
//!
//! # Layout
//!
//! - [`cluster`]: a throwaway control plane for tests — real `etcd` and `kube-apiserver`
//!   processes on loopback, built from Go modules by `e2e/cluster/build.sh` and cached outside
//!   the checkout; a `kube::Client` and the matching `kubectl` come with it.
//! - [`seed`]: the seed story (the examples' apps, lanes and policies) on a local cluster with
//!   lanemesh installed by its chart; run by `tests/local_mesh.rs` and `make cluster-demo`.
//! - [`concurrency`]: lane carrying under concurrency on a local cluster: a burst of mixed
//!   gray/base requests through a base pod B that is Go, Go with `otelhttp`, or Java / Python
//!   with the webhook's injected context; run by `tests/lane_context.rs`.
//! - [`demo`]: `make demo`, the product live without Kubernetes: pilot on a directory, the
//!   gateway and the seed's apps in network namespaces behind real capture rules.
//! - [`console`]: the pilot's web console checked in a real headless chromium
//!   (`console/check.cjs`, playwright-core), screenshots kept as artefacts.
//! - [`otlp`]: an OTLP/gRPC trace receiver (the published collector service, served by tonic)
//!   that keeps what it receives as flat spans, for the trace tests and the demo.
//! - [`process`]: real lanemesh binaries as child processes (free ports, HTTP probes, kill on
//!   drop, peak RSS and CPU from `/proc`).
//! - [`scale`]: the control-plane scale benchmark (`lanemesh-scale-bench`,
//!   `make bench-control-plane`): generated cluster, simulated sidecar streams, report.
//! - `tests/`: integration tests; `tests/cluster.rs` checks the CRDs in `charts/lanemesh/crds`
//!   against a real API server; `tests/pilot_sidecar.rs` runs the real `lanemesh-proxy`
//!   against the real `lanemesh-pilot`.

pub mod cluster;
pub mod concurrency;
pub mod console;
pub mod demo;
pub mod otlp;
pub mod process;
pub mod scale;
pub mod seed;
