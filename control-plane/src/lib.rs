//! lanemesh control plane: watches Kubernetes and streams lanes and policies to sidecars.
