//! lanemesh end-to-end harness: local cluster, demo apps, scenario tests and benchmarks.
//!
//! # Layout
//!
//! - [`cluster`]: a throwaway control plane for tests — real `etcd` and `kube-apiserver`
//!   processes on loopback, built from Go modules by `e2e/cluster/build.sh` and cached outside
//!   the checkout; a `kube::Client` and the matching `kubectl` come with it.
//! - `tests/`: integration tests; `tests/cluster.rs` checks the CRDs in `charts/lanemesh/crds`
//!   against a real API server.

pub mod cluster;
