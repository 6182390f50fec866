//! What the lifecycle work shows of itself (`/status`, `/metrics`): one snapshot, written only
//! here in `aws`, read by everyone else through a `watch`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::hooks::HookStatus;
use crate::model::lifecycle::LifecycleStatus;

/// The writer of the lifecycle snapshot, shared by the aws tasks (lifecycle, protection, the
/// calls they make). Readers take [`LifecycleBoard::subscribe`].
#[derive(Clone)]
pub struct LifecycleBoard {
    tx: Arc<watch::Sender<LifecycleStatus>>,
}

impl Default for LifecycleBoard {
    fn default() -> Self {
        LifecycleBoard {
            tx: Arc::new(watch::channel(LifecycleStatus::default()).0),
        }
    }
}

impl LifecycleBoard {
    /// Changes the snapshot; readers see the change at once.
    pub fn update<R>(&self, f: impl FnOnce(&mut LifecycleStatus) -> R) -> R {
        let mut out = None;
        self.tx.send_modify(|status| out = Some(f(status)));
        out.expect("send_modify runs the closure once")
    }

    /// Changes the termination hook's status, if that hook is configured.
    pub fn terminate(&self, f: impl FnOnce(&mut HookStatus)) {
        self.update(|s| s.terminate.as_mut().map(f));
    }

    /// Changes the launch hook's status, if that hook is configured.
    pub fn launch(&self, f: impl FnOnce(&mut HookStatus)) {
        self.update(|s| s.launch.as_mut().map(f));
    }

    /// The snapshot now.
    pub fn get(&self) -> LifecycleStatus {
        self.tx.borrow().clone()
    }

    /// A reader's handle.
    pub fn subscribe(&self) -> watch::Receiver<LifecycleStatus> {
        self.tx.subscribe()
    }
}
