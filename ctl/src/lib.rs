//! `lanemeshctl`: the operator's command line for lanemesh.
//!
//! It validates manifests offline (`lanemeshctl check -f`), with exactly the conversion the
//! control plane runs, so CI can refuse a bad Lane or policy before it reaches a cluster, and
//! switches lanes on and off through the API server (`lanemeshctl lane enable|disable`).
//!
//! # Layout
//! 1. Pure logic, no I/O:
//!    - [`check`]: manifests (file name and text) -> every problem, with object and field path.
//! 2. Presentation:
//!    - [`output`]: problems as a table, JSON or YAML.
//! 3. Cluster access:
//!    - [`lanes`]: Lane actions through the API server (kube-rs, kubeconfig like kubectl).

pub mod check;
pub mod lanes;
pub mod output;
