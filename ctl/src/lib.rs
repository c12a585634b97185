//! `lanemeshctl`: the operator's command line for lanemesh.
//!
//! Today it validates manifests offline (`lanemeshctl check -f`), with exactly the conversion
//! the control plane runs, so CI can refuse a bad Lane or policy before it reaches a cluster.
//!
//! # Layout
//! 1. Pure logic, no I/O:
//!    - [`check`]: manifests (file name and text) -> every problem, with object and field path.
//! 2. Presentation:
//!    - [`output`]: problems as a table, JSON or YAML.

pub mod check;
pub mod output;
