//! Whether every task of this replica is still running: the supervisor records the first task
//! that stopped, the admin server reports it (`/healthz`, `/readyz` answer 503 naming it) and
//! `lanemesh-pilot` exits non-zero on it.

use std::sync::Arc;

use tokio::sync::watch;

/// The first task of the control plane that ended while it should still
/// run, and why. Shared with the admin server, so `/readyz` and `/healthz`
/// say so, and with `lanemesh-pilot`, which then exits non-zero.
#[derive(Debug, Clone)]
pub struct Health(Arc<watch::Sender<Option<String>>>);

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }
}

impl Health {
    /// Records that `task` stopped; only the first failure is kept (the
    /// others usually follow from it: the index ends when its source does).
    pub fn fail(&self, task: &str, why: &str) {
        let message = format!("the {task} task {why}");
        self.0.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            tracing::error!(%message, "control plane task failed; this replica is no longer healthy");
            *failure = Some(message.clone());
            true
        });
    }

    /// The failure, if any task failed.
    pub fn failure(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves with the first failure.
    pub async fn failed(&self) -> String {
        let mut rx = self.0.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(failure) => failure.clone().unwrap_or_default(),
            // The sender lives in `self`: cannot happen while we wait.
            Err(_) => std::future::pending().await,
        }
    }
}
