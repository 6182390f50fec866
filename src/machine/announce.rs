//! The supervisor's announcements (phase changes and drains) to whoever subscribes, and how many
//! of the agent's own connections listen: the supervisor sends, the control socket subscribes.
//!
//! Only a subscription from the agent's processes counts as a listener: a drain then waits for
//! the agent to answer. An observer (an operator's `ctl subscribe`, a drill) hears the same
//! announcements without making the guard wait for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use crate::model::run::Announcement;

/// How far a subscriber may fall behind before it misses announcements (it is told so).
const BACKLOG: usize = 64;

/// The sending side, shared by the supervisor (which announces) and the control socket (which
/// subscribes its connections).
#[derive(Clone)]
pub struct Announcer {
    tx: broadcast::Sender<Announcement>,
    listeners: Arc<AtomicUsize>,
}

impl Default for Announcer {
    fn default() -> Self {
        Announcer {
            tx: broadcast::channel(BACKLOG).0,
            listeners: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Announcer {
    /// Sends `a` to every subscriber; none is fine.
    pub fn announce(&self, a: Announcement) {
        let _ = self.tx.send(a);
    }

    /// A new subscription; one from the agent's own processes (`agent`) counts as a listener
    /// until it is dropped.
    pub fn subscribe(&self, agent: bool) -> Subscription {
        if agent {
            self.listeners.fetch_add(1, Ordering::SeqCst);
        }
        Subscription {
            rx: self.tx.subscribe(),
            counted: agent.then(|| self.listeners.clone()),
        }
    }

    /// How many of the agent's connections are subscribed.
    pub fn listeners(&self) -> usize {
        self.listeners.load(Ordering::SeqCst)
    }
}

/// A live subscription; the listener count drops with it.
pub struct Subscription {
    pub rx: broadcast::Receiver<Announcement>,
    counted: Option<Arc<AtomicUsize>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(listeners) = &self.counted {
            listeners.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
