//! CRD status: the `Accepted` condition of every lanemesh object and
//! `Lane.status.matchedPods`, written only by the holder of a
//! `coordination.k8s.io/v1` Lease (every replica serves discovery).
//!
//! `Accepted` is `False` when conversion refuses the object (reason from the
//! conversion error, e.g. `WeightSumExceeded`; its last good version stays
//! served) or when a sidecar NACKs a resource built from it
//! (`RefusedBySidecar`); otherwise `True` (`Accepted`).
//!
//! # Layout
//! - `desired`: the status each object should have (pure).
//! - `nack`: sidecar NACKs traced back to objects (pure).
//! - `limit`: at most one write per object per second (pure).
//! - `writer`: leader election (kube-lease-manager) and the writes (I/O).

pub mod desired;
pub mod limit;
pub mod nack;
pub mod writer;

use std::time::Duration;

pub use writer::StatusWriter;

/// Default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "lanemesh-pilot";
/// Default Lease duration (as Kubernetes' own controllers).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default renew margin: the holder renews this long before expiry.
pub const DEFAULT_LEASE_GRACE: Duration = Duration::from_secs(5);

/// Which Lease elects the status writer, and its timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's `holderIdentity` (the pod name in a cluster).
    pub identity: String,
    pub duration: Duration,
    pub grace: Duration,
}

/// Why a [`LeaseConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLease {
    #[error("lease duration and grace must be whole seconds >= 1s, got {duration:?} and {grace:?}")]
    NotWholeSeconds { duration: Duration, grace: Duration },
    #[error("lease grace ({grace:?}) must be shorter than its duration ({duration:?})")]
    GraceTooLong { duration: Duration, grace: Duration },
    #[error("lease name, namespace and identity must not be empty")]
    Empty,
}

impl LeaseConfig {
    /// Checks what the Lease API and the lease manager need (it panics on
    /// a grace >= duration, so that never reaches it).
    pub fn validate(&self) -> Result<(), InvalidLease> {
        let (duration, grace) = (self.duration, self.grace);
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return Err(InvalidLease::Empty);
        }
        let whole = |d: Duration| d.subsec_nanos() == 0 && d.as_secs() >= 1;
        if !whole(duration) || !whole(grace) {
            return Err(InvalidLease::NotWholeSeconds { duration, grace });
        }
        if grace >= duration {
            return Err(InvalidLease::GraceTooLong { duration, grace });
        }
        Ok(())
    }

    fn duration_secs(&self) -> u64 {
        self.duration.as_secs()
    }

    fn grace_secs(&self) -> u64 {
        self.grace.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(duration: u64, grace_ms: u64) -> LeaseConfig {
        LeaseConfig {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration: Duration::from_secs(duration),
            grace: Duration::from_millis(grace_ms),
        }
    }

    #[test]
    fn lease_timing_is_checked_before_it_can_panic_the_manager() {
        assert_eq!(config(15, 5000).validate(), Ok(()));
        assert!(matches!(
            config(5, 5000).validate(),
            Err(InvalidLease::GraceTooLong { .. })
        ));
        assert!(matches!(
            config(5, 1500).validate(),
            Err(InvalidLease::NotWholeSeconds { .. })
        ));
        assert!(matches!(
            config(5, 0).validate(),
            Err(InvalidLease::NotWholeSeconds { .. })
        ));
        let mut empty = config(15, 5000);
        empty.identity.clear();
        assert_eq!(empty.validate(), Err(InvalidLease::Empty));
    }
}
