//! Drain: the phases a SIGTERM walks through, and the count of connections and
//! tunnels still open, so `app` knows when the last one is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// Where the process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// `/readyz` fails; everything else goes on (`--drain-delay`).
    Draining,
    /// Listeners closed; connections finish their requests and close.
    Closing,
}

/// Shared drain state.
#[derive(Debug)]
pub struct Drain {
    phase: watch::Sender<Phase>,
    active: AtomicUsize,
    idle: Notify,
    /// Requests in flight now, for the count of requests cut at the deadline.
    pub requests: AtomicUsize,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            requests: AtomicUsize::new(0),
        }
    }
}

/// Held by each open connection or tunnel.
#[derive(Debug)]
pub struct Guard(Arc<Drain>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts one more connection or tunnel until the guard drops.
    pub fn track(self: &Arc<Self>) -> Guard {
        self.active.fetch_add(1, Ordering::AcqRel);
        Guard(self.clone())
    }

    /// Connections and tunnels open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to a later phase (never back).
    pub fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|p| {
            if to > *p {
                *p = to;
                true
            } else {
                false
            }
        });
    }

    /// Watches the phase.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Resolves when no connection or tunnel is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Resolves once `rx` reaches `phase` (or its sender is gone).
pub async fn reached(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    let _ = rx.wait_for(|p| *p >= phase).await;
}
