//! `lanemeshctl`: the operator's command line for lanemesh.
//!
//! It validates manifests offline (`lanemeshctl check -f`), with exactly the conversion the
//! control plane runs, so CI can refuse a bad Lane or policy before it reaches a cluster, and
//! lists and switches lanes through the API server (`lanemeshctl lanes`, `lanemeshctl lane
//! enable|disable`).
//!
//! # Layout
//! 1. Pure logic, no I/O:
//!    - [`check`]: manifests (file name and text) -> every problem, with object and field path.
//!    - [`view`]: lane groups and lanes -> the rows of `lanemeshctl lanes`.
//! 2. Presentation:
//!    - [`output`]: problems and rows as a table, JSON or YAML.
//! 3. Cluster access:
//!    - [`cluster`]: the pilot replicas, the status Lease's holder and the refused objects as
//!      the API server has them (`lanemeshctl status` without `--pilot`).
//!    - [`lanes`]: listing and switching lanes through the API server (kube-rs, kubeconfig
//!      like kubectl).
//!    - [`pilot`]: the pilot's admin endpoints (`status`, `proxy-config`).

pub mod check;
pub mod cluster;
pub mod lanes;
pub mod output;
pub mod pilot;
pub mod view;
