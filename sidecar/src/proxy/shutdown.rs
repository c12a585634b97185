//! Graceful shutdown: one trigger (SIGTERM, SIGINT, or a programmatic call
//! such as the admin `POST /shutdown`) makes every listener stop accepting;
//! in-flight requests then get the grace period to finish.

use tokio::sync::watch;

/// Fires the shutdown; cheap to clone, safe to call more than once.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: watch::Sender<bool>,
}

/// Waits for the shutdown; one per task that must react.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

/// A connected trigger and signal.
pub fn channel() -> (ShutdownHandle, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (ShutdownHandle { tx }, ShutdownSignal { rx })
}

impl ShutdownHandle {
    /// Starts the shutdown.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// A new signal observing this handle.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
        }
    }

    /// Whether the shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// A plain watch of the trigger, for parts that do not depend on the proxy core (the
    /// health endpoint fails readiness from the first moment of the drain).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

impl ShutdownSignal {
    /// Whether the shutdown has started (or every handle is gone).
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Resolves once the shutdown has started (at once if it already has).
    /// Also resolves when every handle is dropped: nobody can stop us cleanly
    /// any more, so treat it as a shutdown.
    pub async fn triggered(&mut self) {
        // An error means the sender is gone, which we treat as "shut down".
        let _ = self.rx.wait_for(|fired| *fired).await;
    }
}

/// Triggers `handle` on SIGTERM or SIGINT. Runs until one arrives.
pub async fn trigger_on_signals(handle: ShutdownHandle) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
    handle.trigger();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn signal_fires_for_late_and_early_subscribers() {
        let (handle, mut early) = channel();
        let waiter = tokio::spawn(async move { early.triggered().await });
        assert!(!handle.is_triggered());
        handle.trigger();
        handle.trigger();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("early subscriber did not see the trigger"));
        let mut late = handle.signal();
        tokio::time::timeout(Duration::from_secs(1), late.triggered())
            .await
            .unwrap_or_else(|_| panic!("late subscriber did not see the trigger"));
    }
}
